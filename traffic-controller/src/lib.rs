//! The egress edge: what firehose nozzles, `cf logs`-style clients and older client libraries
//! connect to. Three listeners, one fan-in from every Doppler:
//!
//! - the **reverse log proxy** (gRPC `loggregator.v2.Egress`, 127.0.0.1:8090; server name
//!   `reverselogproxy` under mutual TLS): each client stream subscribes to every Doppler and
//!   merges what they send (§2.3–2.6);
//! - the **RLP gateway** (HTTP, 127.0.0.1:8088): `GET /v2/read` as Server-Sent Events, reading the
//!   RLP in process or a configured remote RLP (§5);
//! - the **traffic controller** (HTTP/WebSocket, 127.0.0.1:8081): the v1 `/apps/{guid}/stream` and
//!   `/firehose/{id}` WebSockets of dropsonde envelopes, `recentlogs` and `containermetrics` from
//!   Log Cache, and `/set-cookie` (§4).
//!
//! Envelopes travel as the encoded slices they arrived in; the RLP re-encodes only the envelopes
//! `use_preferred_tags` changes, and the WebSockets convert each envelope to v1 once per app, not
//! once per viewer.
//!
//! Layout:
//! - [`config`]: `Config` with loopback defaults.
//! - [`upstream`]: the Doppler set (static and DNS) and the per-consumer fan-in.
//! - [`envelopes`]: batch slicing and the `use_preferred_tags` rewrite.
//! - [`rlp`]: the RLP's streams and its gRPC service.
//! - [`gateway`]: the `/v2/read` route.
//! - [`hub`]: shared v1 conversion for the WebSockets.
//! - [`websocket`]: the WebSocket routes and connections; [`recent`]: the historic HTTP routes.
//! - [`announce`]: events sent through the local agent; [`http`]: plain or HTTPS listeners.
//!
//! Metrics (`component="reverse-log-proxy"`, `"rlp-gateway"`, `"traffic-controller"`): see README.

pub mod announce;
pub mod config;
pub mod envelopes;
pub mod gateway;
pub mod http;
pub mod hub;
pub mod recent;
pub mod rlp;
pub mod upstream;
pub mod websocket;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use loggregator_proto::raw::server::egress::egress_server::EgressServer;
use plumbing::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot bind {what} address {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
    #[error("{0}")]
    PublicTls(#[from] http::HttpsError),
    #[error("auth: {0}")]
    Auth(#[from] auth::AuthError),
    #[error("auth config: {0}")]
    AuthConfig(#[from] auth::config::ConfigError),
    #[error("invalid address: {0}")]
    Address(#[from] tonic::transport::Error),
    #[error(
        "{what} would listen on {addr}, off loopback, with auth off: enable auth or set allow_unauthenticated_public"
    )]
    Unauthenticated { what: &'static str, addr: SocketAddr },
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("RLP gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("HTTP server: {0}")]
    Http(#[from] std::io::Error),
}

/// Where a bound traffic controller listens.
#[derive(Clone, Copy, Debug)]
pub struct Addrs {
    pub rlp: SocketAddr,
    pub gateway: SocketAddr,
    pub websocket: SocketAddr,
}

/// A bound traffic controller (RLP, gateway, WebSockets), ready to serve.
pub struct TrafficController {
    config: Config,
    rlp_listener: TcpListener,
    gateway_listener: TcpListener,
    tc_listener: TcpListener,
    addrs: Addrs,
    rlp_tls: Option<plumbing::tls::ServerTls>,
    public_tls: Option<Arc<rustls::ServerConfig>>,
    authorizer: Option<Arc<auth::Authorizer>>,
    registry: Registry,
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source })?;
    let bound = listener.local_addr().map_err(|source| StartError::Bind { what, addr, source })?;
    Ok((listener, bound))
}

impl TrafficController {
    /// Binds every listener (so `127.0.0.1:0` works) and checks the configuration; serves nothing
    /// yet. `registry` is the process's; each part counts under its own `component` label.
    pub async fn bind(config: Config, registry: &Registry) -> Result<Self, StartError> {
        if !config.auth.enabled && !config.allow_unauthenticated_public {
            for (what, addr) in [("RLP gateway", config.gateway.addr), ("traffic controller", config.websocket.addr)] {
                if !addr.ip().is_loopback() {
                    return Err(StartError::Unauthenticated { what, addr });
                }
            }
        }
        config.auth.validate()?;
        let authorizer =
            if config.auth.enabled { Some(Arc::new(auth::Authorizer::from_config(&config.auth)?)) } else { None };
        let rlp_tls = config.rlp.tls.as_ref().map(|files| files.grpc_server_config()).transpose()?;
        let public_tls = config.public_tls.as_ref().map(http::server_config).transpose()?;
        let (rlp_listener, rlp) = bind("RLP", config.rlp.addr).await?;
        let (gateway_listener, gateway) = bind("RLP gateway", config.gateway.addr).await?;
        let (tc_listener, websocket) = bind("traffic controller", config.websocket.addr).await?;
        {
            use plumbing::exposure::{warn_if_exposed, Protection};
            warn_if_exposed("RLP", rlp, Protection { tls: rlp_tls.is_some(), auth: None });
            let public = Protection { tls: public_tls.is_some(), auth: Some(authorizer.is_some()) };
            warn_if_exposed("RLP gateway", gateway, public);
            warn_if_exposed("traffic controller", websocket, public);
        }
        Ok(Self {
            config,
            rlp_listener,
            gateway_listener,
            tc_listener,
            addrs: Addrs { rlp, gateway, websocket },
            rlp_tls,
            public_tls,
            authorizer,
            registry: registry.clone(),
        })
    }

    pub fn local_addrs(&self) -> Addrs {
        self.addrs
    }

    /// Serves until `shutdown` completes; then ends every stream (flushing what the RLP holds)
    /// and returns within the grace period.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let token = plumbing::shutdown::token_from(shutdown);
        let config = self.config;
        let grace = config.shutdown_grace;
        let doppler_tls = config.doppler_tls.as_ref().map(|t| t.grpc_client_config("doppler")).transpose();
        let doppler_tls = doppler_tls.map_err(|e| std::io::Error::other(e.to_string()))?;
        let dopplers = upstream::Dopplers::new(doppler_tls);
        tokio::spawn(dopplers.clone().run_resolver(config.dopplers.clone(), config.resolve_interval, token.clone()));

        let rlp_registry = self.registry.scoped("reverse-log-proxy");
        let rlp = rlp::ReverseLogProxy::new(
            dopplers.clone(),
            config.rlp.clone(),
            config.max_message_bytes,
            &rlp_registry,
            token.clone(),
        );

        let source = match &config.gateway.rlp_addr {
            None => gateway::RlpSource::Local(rlp.clone()),
            Some(addr) => {
                let tls = config.gateway.rlp_tls.as_ref().map(|t| t.grpc_client_config("reverselogproxy")).transpose();
                let tls = tls.map_err(|e| std::io::Error::other(e.to_string()))?;
                let channel = plumbing::subscriber::lazy_channel(addr, tls).map_err(std::io::Error::other)?;
                gateway::RlpSource::Remote { addr: addr.clone(), channel, max_message: config.max_message_bytes }
            }
        };
        let gateway_registry = self.registry.scoped("rlp-gateway");
        let gateway_state = gateway::GatewayState {
            source,
            config: config.gateway.clone(),
            auth: self.authorizer.clone(),
            metrics: gateway::GatewayMetrics {
                // metric-documentation: envelopes written to SSE clients.
                egress: gateway_registry.counter("egress", "Envelopes sent by the component", &[]),
                // metric-documentation: SSE streams opened.
                streams: gateway_registry.counter("streams", "Streams opened", &[]),
            },
        };

        let tc_state = websocket_state(&config, &self.registry, dopplers, self.authorizer, token.clone())?;

        let max = config.max_message_bytes;
        let egress =
            EgressServer::new(rlp::EgressService { rlp }).max_decoding_message_size(max).max_encoding_message_size(max);
        let grpc = tonic::transport::Server::builder()
            .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE)
            .tcp_nodelay(true)
            .max_concurrent_streams(config.max_streams_per_connection)
            .add_service(egress)
            .serve_with_incoming_shutdown(
                plumbing::grpc::incoming(self.rlp_listener, self.rlp_tls),
                token.clone().cancelled_owned(),
            );
        use plumbing::http_server::{serve, HttpLimits, HttpMetrics};
        let gateway = serve(
            self.gateway_listener,
            self.public_tls.clone(),
            gateway::router(gateway_state),
            HttpLimits::default(),
            HttpMetrics::register(&gateway_registry, "gateway"),
            token.clone().cancelled_owned(),
        );
        let tc = serve(
            self.tc_listener,
            self.public_tls,
            websocket::router(tc_state),
            HttpLimits::default(),
            HttpMetrics::register(&self.registry.scoped("traffic-controller"), "websocket"),
            token.clone().cancelled_owned(),
        );
        tracing::info!(rlp = %self.addrs.rlp, gateway = %self.addrs.gateway, websocket = %self.addrs.websocket, "traffic controller serving");
        let all = async {
            let (grpc, gateway, tc) = tokio::join!(grpc, gateway, tc);
            grpc?;
            gateway?;
            tc?;
            Ok::<(), ServeError>(())
        };
        tokio::select! {
            result = all => result?,
            _ = async { token.cancelled().await; tokio::time::sleep(grace).await } => {
                tracing::warn!("traffic controller connections did not close within the grace period");
            }
        }
        Ok(())
    }
}

fn websocket_state(
    config: &Config,
    registry: &Registry,
    dopplers: upstream::Dopplers,
    authorizer: Option<Arc<auth::Authorizer>>,
    token: CancellationToken,
) -> Result<websocket::TcState, std::io::Error> {
    let registry = registry.scoped("traffic-controller");
    let hub_metrics = hub::HubMetrics {
        fan_in: upstream::FanInMetrics {
            // metric-documentation: envelopes the traffic controller received from Dopplers.
            ingress: registry.counter("ingress", "Envelopes received by the component", &[]),
            // metric-documentation: Doppler batches that did not scan (dropped whole).
            malformed: registry.counter("malformed", "Malformed batches received", &[("transport", "grpc")]),
        },
        // metric-documentation: v2 envelopes that did not decode for v1 conversion.
        undecodable: registry.counter("undecodable", "Envelopes that did not decode", &[]),
        // metric-documentation: envelopes lost before conversion (the hub fell behind).
        dropped: registry.counter("dropped", "Envelopes dropped by the component", &[("direction", "ingress")]),
    };
    let metrics = websocket::TcMetrics {
        // metric-documentation: v1 envelopes written to WebSocket clients.
        egress: registry.counter("egress", "Envelopes sent by the component", &[]),
        // metric-documentation: frames a slow WebSocket client lost.
        dropped: registry.counter("dropped", "Envelopes dropped by the component", &[("direction", "egress")]),
        // metric-documentation: connections closed as slow consumers (v1 `doppler_proxy.slow_consumer`).
        slow_consumers: registry.counter("doppler_proxy_slow_consumer", "Slow consumers disconnected", &[]),
        // metric-documentation: open WebSocket connections.
        connections: registry.gauge("websocket_connections", "Open WebSocket connections", &[]),
    };
    let other = |e: plumbing::tls::TlsError| std::io::Error::other(e.to_string());
    let log_cache = match &config.log_cache_addr {
        None => None,
        Some(addr) => {
            let tls =
                config.log_cache_tls.as_ref().map(|t| t.grpc_client_config("log-cache")).transpose().map_err(other)?;
            Some(plumbing::subscriber::lazy_channel(addr, tls).map_err(std::io::Error::other)?)
        }
    };
    let agent = match &config.agent_addr {
        None => None,
        Some(addr) => {
            let tls = config.agent_tls.as_ref().map(|t| t.grpc_client_config("metron")).transpose().map_err(other)?;
            Some(plumbing::subscriber::lazy_channel(addr, tls).map_err(std::io::Error::other)?)
        }
    };
    // metric-documentation: events (slow-consumer announcements) that could not be sent to the agent.
    let failed = registry.counter("announce_failed", "Events that could not be sent", &[]);
    Ok(websocket::TcState {
        hubs: Arc::new(hub::Hubs::new(dopplers, config.clone(), hub_metrics, token.clone())),
        config: config.websocket.clone(),
        auth: authorizer,
        recent: Arc::new(recent::RecentLogs::new(log_cache, config.max_message_bytes)),
        announcer: announce::Announcer::new(agent, failed),
        metrics,
        connection_slots: Arc::new(tokio::sync::Semaphore::new(config.websocket.max_connections)),
        shutdown: token,
    })
}
