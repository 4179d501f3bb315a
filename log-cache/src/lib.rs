//! Log Cache: a bounded in-memory store of recent envelopes, read back by time range, with PromQL.
//!
//! It sits at the end of the pipeline: a nozzle subscribes to every Doppler (or an RLP), a syslog
//! server accepts RFC 5424 from syslog agents' aggregate drains, and `logcache.v1.Ingress/Send` takes
//! batches directly. Clients (the cf CLI, Cloud Controller, Grafana) read over gRPC or the HTTP JSON
//! gateway (PROTOCOLS.md §6). Several nodes split the source ids by a consistent hash (§6.5).
//!
//! Layout:
//! - [`config`]: `Config` with loopback defaults.
//! - [`store`]: per-source timestamp-ordered envelopes, bounded by count and memory (§6.2–§6.4).
//! - [`cluster`]: which node owns a source id, and the clients to the other nodes.
//! - [`service`]: read / meta / send answered locally or by the owner node; shared by every API.
//! - [`grpc`]: `logcache.v1.Egress` and `Ingress`.
//! - [`query`]: `logcache.v1.PromQLQuerier` and the data source of the [`promql`] engine.
//! - [`gateway`]: the HTTP JSON gateway (`/api/v1/read`, `meta`, `query`, `query_range`, `info`, §6.7).
//! - [`query_auth`]: PromQL source-id expansion and rewrite for the HTTP API's optional
//!   authorization (§6.8); tokens and access checks are the `auth` crate's.
//! - [`nozzle`]: `BatchedReceiver` subscriptions to Dopplers / RLPs.
//! - [`syslog`]: the RFC 5424 octet-counting syslog server (§6.10).
//!
//! Metrics (`component="log-cache"`): see the crate README.

pub mod cluster;
pub mod config;
pub mod forward;
pub mod gateway;
pub mod grpc;
pub mod nozzle;
pub mod promql;
pub mod query;
pub mod query_auth;
pub mod service;
pub mod store;
pub mod syslog;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use loggregator_proto::logcache::v1::prom_ql_querier_server::PromQlQuerierServer;
use loggregator_proto::raw::server::logcache_egress::egress_server::EgressServer;
use loggregator_proto::raw::server::logcache_ingress::ingress_server::IngressServer;
use plumbing::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::Config;
pub use service::Service;
pub use store::Store;

/// Why a log-cache could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid log-cache configuration: {0}")]
    Config(#[from] config::ConfigError),
    #[error("cannot bind log-cache {what} address {addr}: {source}")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("log-cache TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
    #[error("log-cache cluster: {0}")]
    Cluster(#[from] cluster::ClusterError),
    #[error("log-cache auth: {0}")]
    Auth(#[from] auth::AuthError),
}

/// Why a log-cache stopped serving with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("log-cache gRPC server: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error("log-cache HTTP server: {0}")]
    Http(std::io::Error),
    #[error("log-cache TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
}

/// The addresses a bound log-cache listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Addrs {
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// `None` when the syslog server is disabled.
    pub syslog: Option<SocketAddr>,
}

/// Listeners bound by the caller (a test that must know a cluster's addresses before configuring
/// it); whatever is `None` is bound from the config.
#[derive(Debug, Default)]
pub struct Listeners {
    pub grpc: Option<TcpListener>,
    pub http: Option<TcpListener>,
    pub syslog: Option<TcpListener>,
}

/// A bound log-cache, ready to serve.
pub struct LogCache {
    config: Config,
    grpc: TcpListener,
    http: TcpListener,
    syslog: Option<TcpListener>,
    addrs: Addrs,
    service: Arc<Service>,
    querier: Arc<query::Querier>,
    authorizer: Option<Arc<auth::Authorizer>>,
    registry: Registry,
}

impl LogCache {
    /// Validates the config, binds every listener (so `127.0.0.1:0` works) and registers metrics;
    /// serves nothing yet.
    pub async fn bind(config: Config, registry: &Registry) -> Result<Self, StartError> {
        Self::bind_with(config, registry, Listeners::default()).await
    }

    /// As [`LogCache::bind`], with some listeners already bound by the caller.
    pub async fn bind_with(config: Config, registry: &Registry, listeners: Listeners) -> Result<Self, StartError> {
        config.validate()?;
        let memory_limit_bytes = config.memory_limit()?;
        if let Some(tls) = &config.tls {
            tls.grpc_server_config()?;
        }
        if let Some(tls) = &config.syslog.tls {
            tls.rustls_server_config()?;
        }
        let grpc = bind_or_use(listeners.grpc, config.grpc_addr, "gRPC").await?;
        let http = bind_or_use(listeners.http, config.http_addr, "HTTP").await?;
        let syslog = match (listeners.syslog, config.syslog.enabled) {
            (Some(listener), _) => Some(listener),
            (None, true) => Some(bind_or_use(None, config.syslog.addr, "syslog").await?),
            (None, false) => None,
        };
        let addrs = Addrs {
            grpc: local_addr(&grpc, config.grpc_addr, "gRPC")?,
            http: local_addr(&http, config.http_addr, "HTTP")?,
            syslog: match &syslog {
                Some(listener) => Some(local_addr(listener, config.syslog.addr, "syslog")?),
                None => None,
            },
        };
        {
            use plumbing::exposure::{warn_if_exposed, Protection};
            let tls = config.tls.is_some();
            warn_if_exposed("log-cache gRPC", addrs.grpc, Protection { tls, auth: None });
            // The HTTP API has no TLS of its own: the original puts it behind the gorouter.
            warn_if_exposed("log-cache HTTP", addrs.http, Protection { tls: false, auth: Some(config.auth.enabled) });
            if let Some(addr) = addrs.syslog {
                warn_if_exposed("log-cache syslog", addr, Protection { tls: config.syslog.tls.is_some(), auth: None });
            }
        }
        let registry = registry.scoped("log-cache");
        let limits = store::StoreLimits { max_per_source: config.max_per_source.get(), memory_limit_bytes };
        let store = Arc::new(Store::with_stats(limits, store::StoreStats::register(&registry)));
        let cluster = cluster::Cluster::from_config(&config)?;
        let service = Arc::new(Service::new(store, cluster, service::ServiceMetrics::register(&registry)));
        let querier = Arc::new(query::Querier::new(Arc::clone(&service), &config));
        let authorizer =
            if config.auth.enabled { Some(Arc::new(auth::Authorizer::from_config(&config.auth)?)) } else { None };
        Ok(Self { config, grpc, http, syslog, addrs, service, querier, authorizer, registry })
    }

    pub fn local_addrs(&self) -> Addrs {
        self.addrs
    }

    /// The store, for benchmarks, tests and in-process embedding.
    pub fn store(&self) -> Arc<Store> {
        Arc::clone(self.service.store())
    }

    /// The shared operations (read, meta, send), for in-process embedding.
    pub fn service(&self) -> Arc<Service> {
        Arc::clone(&self.service)
    }

    /// Serves every API and runs the nozzle until `shutdown` completes; then stops accepting, lets
    /// in-flight requests finish (bounded by `shutdown_grace`) and returns.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), ServeError> {
        let token = plumbing::shutdown::token_from(shutdown);
        let tracker = TaskTracker::new();
        let grace = self.config.shutdown_grace;

        let started = std::time::Instant::now();
        let http_app = gateway::router(gateway::HttpState {
            service: Arc::clone(&self.service),
            querier: Arc::clone(&self.querier),
            authorizer: self.authorizer.clone(),
            started,
            promql_unimplemented: self.config.promql_unimplemented,
        });
        let http_token = token.clone();
        let http_listener = self.http;
        let http_metrics = plumbing::http_server::HttpMetrics::register(&self.registry, "http");
        let http_task = tracker.spawn(async move {
            let limits = plumbing::http_server::HttpLimits::default();
            plumbing::http_server::serve(
                http_listener,
                None,
                http_app,
                limits,
                http_metrics,
                http_token.cancelled_owned(),
            )
            .await
            .map_err(ServeError::Http)
        });

        if let Some(listener) = self.syslog {
            let server = syslog::SyslogServer::new(
                self.config.syslog.clone(),
                Arc::clone(&self.service),
                syslog::SyslogMetrics::register(&self.registry),
            );
            let server = match server {
                Ok(server) => Some(server),
                Err(e) => {
                    tracing::error!(error = %e, "syslog TLS configuration; syslog server not started");
                    None
                }
            };
            if let Some(server) = server {
                tracker.spawn(server.run(listener, token.clone(), tracker.clone()));
            }
        }

        // Forwarding outlives the APIs and the nozzles that queue for it: it is stopped (and sends
        // what it still holds) only once they have stopped.
        let forwarding = CancellationToken::new();
        for task in self.service.forwarding_tasks(self.config.max_message_bytes, &forwarding) {
            tracker.spawn(task);
        }

        for addr in &self.config.nozzle.addrs {
            let nozzle = nozzle::Nozzle::new(
                addr.clone(),
                self.config.nozzle.clone(),
                self.config.max_message_bytes,
                Arc::clone(&self.service),
                nozzle::NozzleMetrics::register(&self.registry, addr),
            );
            tracker.spawn(nozzle.run(token.clone()));
        }

        let grpc = GrpcParts {
            config: self.config.clone(),
            listener: self.grpc,
            addrs: self.addrs,
            service: Arc::clone(&self.service),
            querier: Arc::clone(&self.querier),
        };
        let grpc_result = grpc.serve(token.clone()).await;
        token.cancel();
        let http_result = match tokio::time::timeout(grace, http_task).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "log-cache HTTP task failed");
                Ok(())
            }
            Err(_) => {
                tracing::warn!("log-cache HTTP connections did not close within the grace period");
                Ok(())
            }
        };
        forwarding.cancel();
        plumbing::shutdown::drain(&tracker, grace, "log-cache").await;
        grpc_result?;
        http_result
    }
}

/// What the gRPC server needs, split off a `LogCache` being served.
struct GrpcParts {
    config: Config,
    listener: TcpListener,
    addrs: Addrs,
    service: Arc<Service>,
    querier: Arc<query::Querier>,
}

impl GrpcParts {
    async fn serve(self, token: CancellationToken) -> Result<(), ServeError> {
        let max = self.config.max_message_bytes;
        let api = grpc::LogCacheGrpc { service: Arc::clone(&self.service) };
        let egress = EgressServer::new(api.clone()).max_decoding_message_size(max).max_encoding_message_size(max);
        let ingress = IngressServer::new(api).max_decoding_message_size(max).max_encoding_message_size(max);
        let promql = PromQlQuerierServer::new(query::PromQlGrpc { querier: Arc::clone(&self.querier) })
            .max_decoding_message_size(max)
            .max_encoding_message_size(max);
        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE)
            .max_concurrent_streams(self.config.max_streams_per_connection);
        // Validated in bind; if a file changed since, refuse to serve rather than serve plaintext.
        let tls = self.config.tls.as_ref().map(|tls| tls.grpc_server_config()).transpose()?;
        let incoming = plumbing::grpc::incoming(self.listener, tls);
        tracing::info!(grpc = %self.addrs.grpc, http = %self.addrs.http, syslog = ?self.addrs.syslog, "log-cache serving");
        let grace = self.config.shutdown_grace;
        let serve = builder
            .add_service(egress)
            .add_service(ingress)
            .add_service(promql)
            .serve_with_incoming_shutdown(incoming, token.clone().cancelled_owned());
        tokio::select! {
            result = serve => result?,
            _ = async { token.cancelled().await; tokio::time::sleep(grace * 2).await } => {
                tracing::warn!("log-cache gRPC connections did not close within the grace period");
            }
        }
        Ok(())
    }
}

async fn bind_or_use(
    listener: Option<TcpListener>,
    addr: SocketAddr,
    what: &'static str,
) -> Result<TcpListener, StartError> {
    match listener {
        Some(listener) => Ok(listener),
        None => TcpListener::bind(addr).await.map_err(|source| StartError::Bind { what, addr, source }),
    }
}

fn local_addr(listener: &TcpListener, addr: SocketAddr, what: &'static str) -> Result<SocketAddr, StartError> {
    listener.local_addr().map_err(|source| StartError::Bind { what, addr, source })
}

/// Binds and serves until `shutdown`.
pub async fn run(
    config: Config,
    registry: &Registry,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    LogCache::bind(config, registry).await?.serve(shutdown).await?;
    Ok(())
}
