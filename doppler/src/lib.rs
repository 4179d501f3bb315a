//! The Doppler: the sharded middle tier of the pipeline.
//!
//! Agents send batches to `loggregator.v2.Ingress/BatchSender`; each envelope is fanned out to the
//! subscriptions (reverse log proxies, log-cache nozzles) whose selectors and shard groups ask for it
//! (PROTOCOLS.md §2.4, §2.5), through one bounded diode per subscription that drops the oldest for a
//! slow reader and never stalls the writers. A Doppler never fully decodes an envelope and never
//! re-encodes one: the scanner finds the routing key, and egress batches reuse the received bytes.
//!
//! Layout:
//! - [`config`]: `Config` with loopback defaults.
//! - [`router`]: subscriptions, the lock-free routing table, shard-group choice.
//! - [`ingress`]: the v2 Ingress service (BatchSender, Sender; Send is UNIMPLEMENTED as in the original).
//! - [`egress`]: the v2 Egress service (BatchedReceiver; Receiver is UNIMPLEMENTED as in the original).
//!
//! Metrics (`component="doppler"`): `ingress`, `egress`, `dropped{direction="egress"}` (lost by slow
//! subscribers), `subscriptions`.

pub mod config;
pub mod egress;
pub mod ingress;
pub mod router;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use loggregator_proto::raw::server::egress::egress_server::EgressServer;
use loggregator_proto::stream::IngressRouter;
use plumbing::{Counter, Gauge, Registry};
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use router::Router;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind doppler gRPC address {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("doppler TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("doppler gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// The addresses a bound Doppler listens on.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub grpc: SocketAddr,
}

struct Metrics {
    ingress: Counter,
    egress: Counter,
    dropped: Counter,
    subscriptions: Gauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        Self {
            // metric-documentation: envelopes received from agents.
            ingress: registry.counter("ingress", "Envelopes received by the component", &[]),
            // metric-documentation: envelopes handed to subscribers' streams.
            egress: registry.counter("egress", "Envelopes sent by the component", &[]),
            // metric-documentation: envelopes a slow subscriber lost (its diode dropped the oldest).
            dropped: registry.counter("dropped", "Envelopes dropped by the component", &[("direction", "egress")]),
            // metric-documentation: live egress subscriptions.
            subscriptions: registry.gauge("subscriptions", "Live egress subscriptions", &[]),
        }
    }
}

/// A bound Doppler, ready to serve.
pub struct Doppler {
    config: Config,
    tls: Option<plumbing::tls::ServerTls>,
    listener: TcpListener,
    addrs: Addrs,
    router: Arc<Router>,
    metrics: Metrics,
}

impl Doppler {
    /// Binds the gRPC listener (so `127.0.0.1:0` works) and registers metrics; serves nothing yet.
    pub async fn bind(config: Config, registry: &Registry) -> Result<Self, StartError> {
        let tls = config.tls.as_ref().map(|files| files.grpc_server_config()).transpose()?;
        let listener = TcpListener::bind(config.grpc_addr)
            .await
            .map_err(|source| StartError::Bind { addr: config.grpc_addr, source })?;
        let grpc = listener.local_addr().map_err(|source| StartError::Bind { addr: config.grpc_addr, source })?;
        plumbing::exposure::warn_if_exposed(
            "Doppler gRPC",
            grpc,
            plumbing::exposure::Protection { tls: tls.is_some(), auth: None },
        );
        Ok(Self {
            config,
            tls,
            listener,
            addrs: Addrs { grpc },
            router: Arc::new(Router::new()),
            metrics: Metrics::new(registry),
        })
    }

    pub fn local_addrs(&self) -> Addrs {
        self.addrs
    }

    /// Serves until `shutdown` completes, then stops accepting, lets ingress streams end and egress
    /// buffers flush (bounded by `shutdown_grace`), and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let token = plumbing::shutdown::token_from(shutdown);
        let tracker = TaskTracker::new();
        let active_ingress = Arc::new(ingress::ActiveStreams::default());
        let max_message = self.config.max_message_bytes;
        let ingress = IngressRouter::new(ingress::IngressService::new(
            Arc::clone(&self.router),
            self.metrics.ingress.clone(),
            Arc::clone(&active_ingress),
        ))
        .max_decoding_message_size(max_message);
        let egress = EgressServer::new(egress::EgressService {
            router: Arc::clone(&self.router),
            config: self.config.clone(),
            egress: self.metrics.egress.clone(),
            dropped: self.metrics.dropped.clone(),
            subscriptions: self.metrics.subscriptions.clone(),
            shutdown: token.clone(),
            active_ingress,
            tracker: tracker.clone(),
        })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

        let mut builder = tonic::transport::Server::builder()
            .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE)
            .tcp_nodelay(true)
            .max_concurrent_streams(self.config.max_streams_per_connection);
        let grace = self.config.shutdown_grace;
        let serve = builder.add_service(ingress).add_service(egress).serve_with_incoming_shutdown(
            plumbing::grpc::incoming(self.listener, self.tls),
            token.clone().cancelled_owned(),
        );
        tracing::info!(addr = %self.addrs.grpc, "doppler serving");
        tokio::select! {
            result = serve => result?,
            _ = async { token.cancelled().await; tokio::time::sleep(grace * 2).await } => {
                tracing::warn!("doppler connections did not close within the grace period");
            }
        }
        plumbing::shutdown::drain(&tracker, grace, "doppler").await;
        Ok(())
    }

    /// The router, for benchmarks and in-process embedding.
    pub fn router(&self) -> Arc<Router> {
        Arc::clone(&self.router)
    }
}

/// Binds and serves until `shutdown`.
pub async fn run(
    config: Config,
    registry: &Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Doppler::bind(config, registry).await?.serve(shutdown).await?;
    Ok(())
}
