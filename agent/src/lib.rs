//! The agent: runs beside every app host and carries its envelopes to the Dopplers.
//!
//! It accepts v2 envelopes over gRPC (`loggregator.v2.Ingress`) and v1 dropsonde over UDP, shapes
//! them (PROTOCOLS.md §1.4), buffers them in one bounded diode, and streams them in batches to every
//! Doppler it knows, failing over when one dies. It never blocks an emitter: when it must, it drops
//! the oldest envelope and counts it.
//!
//! Layout:
//! - [`config`]: `Config` with loopback defaults.
//! - [`shaping`]: §1.4 envelope shaping, with a no-decode fast path.
//! - [`ingress`]: the gRPC service and the UDP reader, feeding the diode.
//! - [`egress`]: the Doppler pool (static and DNS, with backoff), the dispatcher, the connections.
//!
//! Metrics (`component="agent"`): `ingress`, `egress`, `dropped{direction="ingress"}` (diode full),
//! `dropped{direction="egress"}` (still buffered when a shutdown's grace expired),
//! `malformed{transport="udp"}`, `dopplers` (known Doppler addresses).

pub mod config;
pub mod egress;
pub mod ingress;
pub mod shaping;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use loggregator_proto::stream::IngressRouter;
use plumbing::exposure::{warn_if_exposed, Protection};
use plumbing::{Counter, Diode, Gauge, Registry};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;

use crate::egress::{Connection, ConnectionSettings, DopplerPool};
use crate::ingress::Intake;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind agent {what} address {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("agent TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
    #[error("agent configuration: {0}")]
    Config(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("agent gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub grpc: SocketAddr,
    pub udp: Option<SocketAddr>,
}

struct Metrics {
    ingress: Counter,
    egress: Counter,
    dropped_ingress: Counter,
    dropped_egress: Counter,
    unconfirmed: Counter,
    malformed_udp: Counter,
    dopplers: Gauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        Self {
            // metric-documentation: envelopes accepted from emitters (gRPC and UDP).
            ingress: registry.counter("ingress", "Envelopes received by the component", &[]),
            // metric-documentation: envelopes handed to Doppler streams.
            egress: registry.counter("egress", "Envelopes sent by the component", &[]),
            // metric-documentation: envelopes the ingress diode dropped because Dopplers fell behind.
            dropped_ingress: registry.counter(
                "dropped",
                "Envelopes dropped by the component",
                &[("direction", "ingress")],
            ),
            // metric-documentation: envelopes still buffered when a shutdown's grace period expired.
            dropped_egress: registry.counter(
                "dropped",
                "Envelopes dropped by the component",
                &[("direction", "egress")],
            ),
            // metric-documentation: envelopes sent on a Doppler stream that failed before the Doppler confirmed it: delivered or lost, unknown (the bound on what a silent Doppler lost).
            unconfirmed: registry.counter(
                "unconfirmed",
                "Envelopes sent on Doppler streams that failed before the Doppler confirmed them",
                &[],
            ),
            // metric-documentation: UDP datagrams that were not valid dropsonde envelopes.
            malformed_udp: registry.counter("malformed", "Malformed input discarded", &[("transport", "udp")]),
            // metric-documentation: Doppler addresses currently known.
            dopplers: registry.gauge("dopplers", "Doppler addresses currently known", &[]),
        }
    }
}

/// A bound agent, ready to serve.
pub struct Agent {
    config: Config,
    tls: Option<plumbing::tls::ServerTls>,
    doppler_tls: Option<plumbing::tls::ClientTls>,
    listener: TcpListener,
    udp: Option<UdpSocket>,
    addrs: Addrs,
    metrics: Metrics,
}

impl Agent {
    /// Binds the gRPC and UDP listeners (so `127.0.0.1:0` works); serves nothing yet.
    pub async fn bind(config: Config, registry: &Registry) -> Result<Self, StartError> {
        if config.dopplers.is_empty() {
            return Err(StartError::Config("dopplers: at least one doppler address is required".into()));
        }
        let tls = config.tls.as_ref().map(|f| f.grpc_server_config()).transpose()?;
        let doppler_tls =
            config.doppler_tls.as_ref().map(|f| f.grpc_client_config(&config.doppler_server_name)).transpose()?;
        let bind_err = |what, addr| move |source| StartError::Bind { what, addr, source };
        let listener = TcpListener::bind(config.grpc_addr).await.map_err(bind_err("gRPC", config.grpc_addr))?;
        let grpc = listener.local_addr().map_err(bind_err("gRPC", config.grpc_addr))?;
        warn_if_exposed("agent gRPC ingress", grpc, Protection { tls: tls.is_some(), auth: None });
        let (udp, udp_addr) = match config.udp_addr {
            Some(addr) => {
                let socket = UdpSocket::bind(addr).await.map_err(bind_err("UDP", addr))?;
                let local = socket.local_addr().map_err(bind_err("UDP", addr))?;
                // Dropsonde over UDP has no TLS at all: emitters are meant to be on the same host.
                warn_if_exposed("agent v1 UDP ingress", local, Protection { tls: false, auth: None });
                (Some(socket), Some(local))
            }
            None => (None, None),
        };
        Ok(Self {
            config,
            tls,
            doppler_tls,
            listener,
            udp,
            addrs: Addrs { grpc, udp: udp_addr },
            metrics: Metrics::new(registry),
        })
    }

    pub fn local_addrs(&self) -> Addrs {
        self.addrs
    }

    /// Serves until `shutdown`; then stops accepting, flushes what is buffered to the Dopplers
    /// (bounded by `shutdown_grace`), counts what could not be flushed as dropped, and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let ingress_token = plumbing::shutdown::token_from(shutdown);
        let egress_token = CancellationToken::new();
        let tracker = TaskTracker::new();
        let config = &self.config;

        let diode =
            Arc::new(Diode::<Bytes>::with_weight_limit(config.ingress_buffer, config.ingress_buffer_bytes, Bytes::len));
        let intake = Arc::new(Intake {
            shaper: shaping::Shaper::new(config.tags.clone()),
            diode: Arc::clone(&diode),
            ingress: self.metrics.ingress.clone(),
            dropped: self.metrics.dropped_ingress.clone(),
        });

        let pool = Arc::new(
            DopplerPool::new(config.backoff_initial, config.backoff_max).with_gauge(self.metrics.dopplers.clone()),
        );
        pool.set_addrs(egress::resolve(&config.dopplers).await);
        tracker.spawn(egress::run_resolver(
            Arc::clone(&pool),
            config.dopplers.clone(),
            config.resolve_interval,
            egress_token.clone(),
        ));

        let connections = config.connections.get();
        let (queue_tx, queue_rx) = async_channel::bounded(connections);
        // Stops the dispatcher and the connections where they stand when a shutdown's flush runs
        // out of time, so that what they still hold can be counted as lost and nothing leaves after.
        let halt = CancellationToken::new();
        tracker.spawn(halt.clone().run_until_cancelled_owned(egress::run_dispatcher(
            Arc::clone(&diode),
            queue_tx.clone(),
            config.batch_size.get(),
            egress_token.clone(),
        )));
        let settings = Arc::new(ConnectionSettings {
            stream_max_age: config.stream_max_age,
            stream_max_envelopes: config.stream_max_envelopes,
            max_message_bytes: config.max_message_bytes,
            tls: self.doppler_tls.clone(),
            grace: config.shutdown_grace,
        });
        for _ in 0..connections {
            let connection = Connection {
                pool: Arc::clone(&pool),
                queue: queue_rx.clone(),
                settings: Arc::clone(&settings),
                egress: self.metrics.egress.clone(),
                dropped: self.metrics.dropped_egress.clone(),
                unconfirmed: self.metrics.unconfirmed.clone(),
            };
            tracker.spawn(halt.clone().run_until_cancelled_owned(connection.run(egress_token.clone())));
        }

        if let Some(socket) = self.udp {
            tracker.spawn(ingress::serve_udp(
                socket,
                Arc::clone(&intake),
                self.metrics.malformed_udp.clone(),
                ingress_token.clone(),
            ));
        }

        let service = IngressRouter::new(ingress::IngressService::new(Arc::clone(&intake)))
            .max_decoding_message_size(config.max_message_bytes);
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE)
            .max_concurrent_streams(config.max_streams_per_connection);
        tracing::info!(grpc = %self.addrs.grpc, udp = ?self.addrs.udp, dopplers = ?pool.addrs(), "agent serving");
        let grace = config.shutdown_grace;
        let served = tokio::select! {
            result = builder
                .add_service(service)
                .serve_with_incoming_shutdown(plumbing::grpc::incoming(self.listener, self.tls), ingress_token.clone().cancelled_owned()) => result,
            _ = async { ingress_token.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("agent ingress streams did not end within the grace period");
                Ok(())
            }
        };

        // Ingress has stopped: flush the diode to the Dopplers, then stop the connections.
        egress_token.cancel();
        if !plumbing::shutdown::drain(&tracker, grace, "agent").await {
            // What was accepted and is neither handed to a Doppler stream nor counted as dropped
            // is lost: in the diode, in the queue, in the dispatcher's hands (the batch it is
            // trying to queue, the envelope it carried over), or recovered by a connection from a
            // failed stream. Counted by conservation once the egress tasks have stopped, so no
            // holder can be missed and nothing is sent after the count.
            halt.cancel();
            if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
                tracing::warn!("agent egress tasks did not stop");
            }
            let m = &self.metrics;
            let accounted = m.egress.get() + m.dropped_ingress.get() + m.dropped_egress.get();
            m.dropped_egress.add(m.ingress.get().saturating_sub(accounted));
        }
        served?;
        Ok(())
    }
}

/// Binds and serves until `shutdown`.
pub async fn run(
    config: Config,
    registry: &Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    Agent::bind(config, registry).await?.serve(shutdown).await?;
    Ok(())
}
