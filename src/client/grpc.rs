//! gRPC channels of the client commands (the agent's ingress, the RLP's egress), plain or with the
//! mutual TLS of a real deployment's internal hops.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;
use plumbing::tls::TlsFiles;
use tonic::transport::{Channel, Endpoint};

/// Mutual TLS towards a gRPC server: all three files or none.
#[derive(Args, Debug, Clone, Default)]
pub struct GrpcTlsArgs {
    /// CA certificate (PEM) that signs the server's certificate.
    #[arg(long = "grpc-ca", env = "LOGGREGATOR_GRPC_CA_FILE", requires_all = ["grpc_cert", "grpc_key"])]
    pub grpc_ca: Option<PathBuf>,
    /// Client certificate (PEM).
    #[arg(long = "grpc-cert", env = "LOGGREGATOR_GRPC_CERT_FILE", requires_all = ["grpc_ca", "grpc_key"])]
    pub grpc_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long = "grpc-key", env = "LOGGREGATOR_GRPC_KEY_FILE", requires_all = ["grpc_ca", "grpc_cert"])]
    pub grpc_key: Option<PathBuf>,
    /// The name the server's certificate must carry (the original's: `metron` for the agent,
    /// `reverselogproxy` for the RLP).
    #[arg(long = "grpc-server-name", env = "LOGGREGATOR_GRPC_SERVER_NAME")]
    pub grpc_server_name: Option<String>,
}

/// Connects to `addr` (`host:port`); `what` names it in errors, `default_name` is the TLS server
/// name unless `--grpc-server-name` says otherwise.
pub async fn connect(what: &str, addr: &str, tls: &GrpcTlsArgs, default_name: &str) -> anyhow::Result<Channel> {
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|_| anyhow!("invalid {what} address `{addr}`: expected host:port"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(20));
    let tls = match (&tls.grpc_ca, &tls.grpc_cert, &tls.grpc_key) {
        (Some(ca), Some(cert), Some(key)) => {
            let files = TlsFiles {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
                tls_engine: Default::default(),
            };
            let name = tls.grpc_server_name.as_deref().unwrap_or(default_name);
            Some(files.grpc_client_config(name).context("client TLS")?)
        }
        _ => None,
    };
    plumbing::grpc::connect(&endpoint, tls).await.map_err(|e| {
        let mut why = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            why = c.to_string();
            cause = c.source();
        }
        anyhow!("cannot reach {what} at {addr}: {why}")
    })
}
