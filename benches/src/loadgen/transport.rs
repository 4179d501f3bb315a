//! gRPC channels to the targets, plaintext or mutual TLS.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

use super::settings::ClientTls;

/// Connects to `addr` (`host:port`), with mutual TLS when `tls` is set.
pub async fn connect(addr: &str, tls: Option<&ClientTls>) -> anyhow::Result<Channel> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .with_context(|| format!("invalid address {addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE)
        .initial_stream_window_size(plumbing::grpc::SUBSCRIBER_WINDOW)
        .initial_connection_window_size(plumbing::grpc::SUBSCRIBER_WINDOW)
        .keep_alive_timeout(Duration::from_secs(20));
    if let Some(tls) = tls {
        let config = tls.files.client_config(&tls.server_name).context("client TLS")?;
        endpoint = endpoint.tls_config(config).context("client TLS")?;
    }
    plumbing::grpc::connect(&endpoint).await.with_context(|| format!("cannot connect to {addr}"))
}
