//! The web console: a page served by the all-in-one (default <http://127.0.0.1:8000/>) that shows
//! the sources log-cache holds, a live tail of one source's logs, charts of its gauges and counter
//! rates, and the pipeline's throughput and drops per hop.
//!
//! The page talks to this server only (one origin, so no CORS): the server reaches the pipeline's
//! endpoints itself and passes the page's `Authorization` header on. When log-cache or the gateway
//! refuses the token the answer is a 401, and the page asks for one.
//!
//! Layout:
//! - [`assets`]: the page's files, embedded in the binary (uPlot vendored as a built file).
//! - [`api`]: `/api/meta`, `/api/read`, `/api/query_range`, proxied to log-cache's HTTP API.
//! - [`tail`]: `/api/tail`, the RLP gateway's SSE stream of a source's logs, passed through.
//! - [`hops`]: `/api/pipeline`, envelopes/s and drops per hop from the components' `/metrics`.
//! - [`upstream`]: the bounded HTTP client towards all of them.
//! - [`params`], [`error`]: query strings in, JSON errors out, each in one place.
//!
//! Bounds: every upstream call has a deadline and every answer read whole a size limit; at most
//! `max_proxied` upstream calls and `max_tails` live tails are in flight, the next one is a 503 that
//! says why; the listener is `plumbing::http_server` with its connection limits.
//!
//! Metrics (`component="console"`): `tails` (open live tails), `tails_refused` (refused at the cap),
//! and the listener's `http_connections_refused` / `http_pending_evicted{listener="console"}`.

pub mod api;
pub mod assets;
pub mod error;
pub mod hops;
pub mod params;
pub mod tail;
pub mod upstream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use parking_lot::Mutex;
use plumbing::{Counter, Gauge, Registry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub use error::ConsoleError;

/// The console's default address (README.md's endpoint table).
pub const DEFAULT_ADDR: &str = "127.0.0.1:8000";

/// Where the console listens, where it finds the pipeline, and its bounds.
#[derive(Debug, Clone)]
pub struct Config {
    pub addr: SocketAddr,
    /// Base URL of log-cache's HTTP API, e.g. `http://127.0.0.1:8083`.
    pub log_cache_url: String,
    /// Base URL of the RLP gateway, e.g. `http://127.0.0.1:8088`.
    pub gateway_url: String,
    /// The components' Prometheus `/metrics` URLs, scraped for the pipeline page.
    pub metrics_urls: Vec<String>,
    /// Deadline of an upstream call (connect, head and, unless streamed, body). log-cache's own
    /// PromQL timeout is 10 s (§6.4), so a slow query is its error, not ours.
    pub upstream_timeout: Duration,
    /// Largest upstream answer read whole (a read of 1000 envelopes, a scrape).
    pub max_answer_bytes: usize,
    /// Upstream calls in flight at once, live tails apart.
    pub max_proxied: usize,
    /// Live tails open at once.
    pub max_tails: usize,
    /// A live tail ends when the gateway sends nothing for this long (it heartbeats every 15 s).
    pub tail_idle_timeout: Duration,
}

impl Config {
    /// The console of a pipeline whose log-cache HTTP API, RLP gateway and `/metrics` listen at
    /// these addresses.
    pub fn for_pipeline(
        addr: SocketAddr,
        log_cache_http: SocketAddr,
        gateway: SocketAddr,
        metrics: SocketAddr,
    ) -> Self {
        Self {
            addr,
            log_cache_url: format!("http://{log_cache_http}"),
            gateway_url: format!("http://{gateway}"),
            metrics_urls: vec![format!("http://{metrics}/metrics")],
            upstream_timeout: Duration::from_secs(15),
            max_answer_bytes: 8 << 20,
            max_proxied: 32,
            max_tails: 16,
            tail_idle_timeout: Duration::from_secs(45),
        }
    }

    fn validate(&self) -> Result<(), StartError> {
        let urls = [&self.log_cache_url, &self.gateway_url].into_iter().chain(&self.metrics_urls);
        if let Some(url) = urls.into_iter().find(|url| !url.starts_with("http://")) {
            // The upstream client speaks plain HTTP: the all-in-one's endpoints are on loopback.
            return Err(StartError::Url(url.clone()));
        }
        if self.max_tails == 0 || self.max_proxied == 0 || self.max_answer_bytes == 0 {
            return Err(StartError::ZeroLimit);
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("console upstream `{0}` must be an http:// URL")]
    Url(String),
    #[error("console limits max_tails, max_proxied and max_answer_bytes must be positive")]
    ZeroLimit,
    #[error("binding the console address {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// What the console counts.
#[derive(Clone)]
pub struct ConsoleMetrics {
    pub open_tails: Gauge,
    pub tails_refused: Counter,
}

impl ConsoleMetrics {
    fn register(registry: &Registry) -> Self {
        Self {
            // metric-documentation: live tails open through the console.
            open_tails: registry.gauge("tails", "Live tails open through the console", &[]),
            // metric-documentation: live tails refused because max_tails were open.
            tails_refused: registry.counter("tails_refused", "Live tails refused: max_tails were open", &[]),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    config: Arc<Config>,
    upstream: upstream::Upstream,
    /// Permits for upstream calls other than tails; a call that finds none is a 503 `busy`.
    proxy_slots: Arc<Semaphore>,
    /// Permits for live tails, each held by its stream until it ends.
    tail_slots: Arc<Semaphore>,
    /// The pipeline page's baseline scrape (see [`hops`]).
    rates: Arc<Mutex<hops::RateMemo>>,
    /// Cancelled at shutdown: live tails watch it, since a stream would otherwise hold the drain.
    shutdown: CancellationToken,
    metrics: ConsoleMetrics,
}

/// The console's routes. `shutdown` ends the live tails.
pub fn router(config: Config, registry: &Registry, shutdown: CancellationToken) -> Result<Router, StartError> {
    config.validate()?;
    let state = AppState {
        upstream: upstream::Upstream::new(config.upstream_timeout),
        proxy_slots: Arc::new(Semaphore::new(config.max_proxied)),
        tail_slots: Arc::new(Semaphore::new(config.max_tails)),
        rates: Arc::default(),
        config: Arc::new(config),
        shutdown,
        metrics: ConsoleMetrics::register(registry),
    };
    Ok(Router::new()
        .route("/", get(assets::index))
        .route("/assets/{name}", get(assets::asset))
        .route("/api/meta", get(api::meta))
        .route("/api/read", get(api::read))
        .route("/api/query_range", get(api::query_range))
        .route("/api/tail", get(tail::tail))
        .route("/api/pipeline", get(hops::pipeline))
        .fallback(not_found)
        .with_state(state))
}

async fn not_found(uri: axum::http::Uri) -> ConsoleError {
    ConsoleError::NotFound(uri.path().to_string())
}

/// A bound console, ready to serve.
pub struct Console {
    listener: TcpListener,
    config: Config,
    registry: Registry,
}

impl Console {
    /// Checks `config` and binds its address; `registry` should be scoped `component="console"`.
    pub async fn bind(config: Config, registry: &Registry) -> Result<Self, StartError> {
        config.validate()?;
        let listener =
            TcpListener::bind(config.addr).await.map_err(|source| StartError::Bind { addr: config.addr, source })?;
        Ok(Self { listener, config, registry: registry.clone() })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`; then ends the live tails and lets requests in flight finish.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let token = plumbing::shutdown::token_from(shutdown);
        let addr = self.listener.local_addr()?;
        let (log_cache, gateway) = (self.config.log_cache_url.clone(), self.config.gateway_url.clone());
        let router = router(self.config, &self.registry, token.clone())?;
        let metrics = plumbing::http_server::HttpMetrics::register(&self.registry, "console");
        tracing::info!(%addr, %log_cache, %gateway, "web console serving");
        let limits = plumbing::http_server::HttpLimits::default();
        plumbing::http_server::serve(self.listener, None, router, limits, metrics, token.cancelled_owned()).await?;
        Ok(())
    }
}
