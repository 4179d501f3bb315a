//! gRPC channels to the targets, plaintext or mutual TLS.

use std::time::Duration;

use anyhow::Context;
use tonic::transport::{Channel, Endpoint};

use super::settings::ClientTls;

/// Connects to `addr` (`host:port`), with mutual TLS when `tls` is set.
pub async fn connect(addr: &str, tls: Option<&ClientTls>) -> anyhow::Result<Channel> {
    // TLS is done by the connector (`plumbing::grpc`, the components' own), so tonic sees a
    // plain endpoint.
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .with_context(|| format!("invalid address {addr}"))?
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE)
        .initial_stream_window_size(plumbing::grpc::SUBSCRIBER_WINDOW)
        .initial_connection_window_size(plumbing::grpc::SUBSCRIBER_WINDOW)
        .keep_alive_timeout(Duration::from_secs(20));
    let tls = tls.map(|tls| tls.files.grpc_client_config(&tls.server_name)).transpose().context("client TLS")?;
    plumbing::grpc::connect(&endpoint, tls).await.with_context(|| format!("cannot connect to {addr}"))
}
