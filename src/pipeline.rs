//! Every component in one process, wired together with the addresses they bound.

use std::net::SocketAddr;

use anyhow::Context as _;
use plumbing::Registry;
use tokio_util::sync::CancellationToken;

use crate::console;

pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:14824";

/// Configuration of each component; the Doppler and agent addresses they connect to are filled in
/// from what was bound.
pub struct PipelineConfig {
    pub doppler: doppler::Config,
    pub agent: agent::Config,
    pub log_cache: log_cache::Config,
    pub traffic_controller: traffic_controller::Config,
    pub metrics_addr: SocketAddr,
    /// The web console (`crate::console`); its upstreams are the addresses the others bound.
    pub console_addr: SocketAddr,
}

impl PipelineConfig {
    /// The all-in-one defaults: the endpoint table of README.md.
    pub fn loopback_defaults() -> Self {
        Self {
            doppler: doppler::Config::default(),
            agent: agent::Config::default(),
            log_cache: log_cache::Config::default(),
            traffic_controller: traffic_controller::Config::default(),
            metrics_addr: DEFAULT_METRICS_ADDR.parse().expect("constant address parses"),
            console_addr: console::DEFAULT_ADDR.parse().expect("constant address parses"),
        }
    }

    /// Every listener on `127.0.0.1:0`, for tests.
    pub fn ephemeral() -> Self {
        let any: SocketAddr = "127.0.0.1:0".parse().expect("constant address parses");
        let mut config = Self::loopback_defaults();
        config.doppler.grpc_addr = any;
        config.agent.grpc_addr = any;
        config.agent.udp_addr = Some(any);
        config.log_cache.grpc_addr = any;
        config.log_cache.http_addr = any;
        config.log_cache.syslog.addr = any;
        config.traffic_controller.rlp.addr = any;
        config.traffic_controller.gateway.addr = any;
        config.traffic_controller.websocket.addr = any;
        config.metrics_addr = any;
        config.console_addr = any;
        config
    }
}

/// Where a bound pipeline listens.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub agent_grpc: SocketAddr,
    pub agent_udp: Option<SocketAddr>,
    pub doppler_grpc: SocketAddr,
    pub rlp_grpc: SocketAddr,
    pub rlp_gateway: SocketAddr,
    pub traffic_controller: SocketAddr,
    pub log_cache_grpc: SocketAddr,
    pub log_cache_http: SocketAddr,
    pub log_cache_syslog: Option<SocketAddr>,
    pub metrics: SocketAddr,
    pub console: SocketAddr,
}

impl Endpoints {
    /// The endpoint table printed at start-up.
    pub fn table(&self) -> Vec<(&'static str, String)> {
        let or_disabled = |a: Option<SocketAddr>| a.map_or("disabled".to_string(), |a| a.to_string());
        vec![
            ("agent v2 gRPC ingress", self.agent_grpc.to_string()),
            ("agent v1 UDP ingress", or_disabled(self.agent_udp)),
            ("doppler gRPC (ingress + egress)", self.doppler_grpc.to_string()),
            ("reverse log proxy gRPC egress", self.rlp_grpc.to_string()),
            ("RLP gateway HTTP (SSE /v2/read)", format!("http://{}", self.rlp_gateway)),
            ("traffic controller HTTP/WebSocket", format!("ws://{}", self.traffic_controller)),
            ("log-cache gRPC", self.log_cache_grpc.to_string()),
            ("log-cache HTTP API", format!("http://{}", self.log_cache_http)),
            ("log-cache syslog (RFC 5424)", or_disabled(self.log_cache_syslog)),
            ("Prometheus /metrics (every component)", format!("http://{}/metrics", self.metrics)),
            ("web console", format!("http://{}/", self.console)),
        ]
    }
}

/// A bound pipeline, ready to serve.
pub struct Pipeline {
    doppler: doppler::Doppler,
    agent: agent::Agent,
    log_cache: log_cache::LogCache,
    traffic_controller: traffic_controller::TrafficController,
    metrics: tokio::net::TcpListener,
    console: console::Console,
    registry: Registry,
    endpoints: Endpoints,
}

impl Pipeline {
    /// Binds every listener, Doppler first so the agent and the Log Cache nozzle can point at it.
    pub async fn bind(mut config: PipelineConfig) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let doppler = doppler::Doppler::bind(config.doppler, &registry.scoped("doppler"))
            .await
            .context("starting the doppler")?;
        let doppler_grpc = doppler.local_addrs().grpc;

        config.agent.dopplers = vec![doppler_grpc.to_string()];
        let agent = agent::Agent::bind(config.agent, &registry.scoped("agent")).await.context("starting the agent")?;

        // Log Cache feeds itself from the Doppler through its nozzle (shard id `log-cache`).
        config.log_cache.nozzle.addrs = vec![doppler_grpc.to_string()];
        // log-cache adds its own `component="log-cache"` (its README's metrics).
        let log_cache = log_cache::LogCache::bind(config.log_cache, &registry).await.context("starting log-cache")?;

        // The egress edge reads the Doppler, announces through the agent, and serves recent logs
        // from Log Cache.
        let agent_addrs = agent.local_addrs();
        let log_cache_addrs = log_cache.local_addrs();
        config.traffic_controller.dopplers = vec![doppler_grpc.to_string()];
        config.traffic_controller.agent_addr = Some(agent_addrs.grpc.to_string());
        config.traffic_controller.log_cache_addr = Some(log_cache_addrs.grpc.to_string());
        let traffic_controller = traffic_controller::TrafficController::bind(config.traffic_controller, &registry)
            .await
            .context("starting the traffic controller")?;
        let tc_addrs = traffic_controller.local_addrs();

        let metrics = plumbing::telemetry::bind_metrics(config.metrics_addr)
            .await
            .with_context(|| format!("binding metrics address {}", config.metrics_addr))?;
        let metrics_addr = metrics.local_addr()?;

        // The console reaches log-cache, the gateway and /metrics at the addresses they bound.
        let console_config =
            console::Config::for_pipeline(config.console_addr, log_cache_addrs.http, tc_addrs.gateway, metrics_addr);
        let console = console::Console::bind(console_config, &registry.scoped("console"))
            .await
            .context("starting the web console")?;
        let endpoints = Endpoints {
            agent_grpc: agent_addrs.grpc,
            agent_udp: agent_addrs.udp,
            doppler_grpc,
            rlp_grpc: tc_addrs.rlp,
            rlp_gateway: tc_addrs.gateway,
            traffic_controller: tc_addrs.websocket,
            log_cache_grpc: log_cache_addrs.grpc,
            log_cache_http: log_cache_addrs.http,
            log_cache_syslog: log_cache_addrs.syslog,
            metrics: metrics_addr,
            console: console.local_addr()?,
        };
        Ok(Self { doppler, agent, log_cache, traffic_controller, metrics, console, registry, endpoints })
    }

    pub fn endpoints(&self) -> &Endpoints {
        &self.endpoints
    }

    /// The registry every component counts in (labelled `component=...`).
    pub fn registry(&self) -> Registry {
        self.registry.clone()
    }

    /// Serves every component until `shutdown`; then stops the console (ending its live tails) and
    /// the agent first, so the agent flushes into the Doppler, and waits for every component to
    /// finish.
    pub async fn serve(self, shutdown: impl std::future::Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let token = CancellationToken::new();
        let metrics = tokio::spawn(plumbing::telemetry::serve_metrics(
            self.metrics,
            self.registry.clone(),
            token.clone().cancelled_owned(),
        ));
        let doppler = tokio::spawn(self.doppler.serve(token.clone().cancelled_owned()));
        let agent = tokio::spawn(self.agent.serve(token.clone().cancelled_owned()));
        let log_cache = tokio::spawn(self.log_cache.serve(token.clone().cancelled_owned()));
        let traffic_controller = tokio::spawn(self.traffic_controller.serve(token.clone().cancelled_owned()));
        let console = tokio::spawn(self.console.serve(token.clone().cancelled_owned()));
        shutdown.await;
        token.cancel();
        console.await.context("console task")??;
        agent.await.context("agent task")??;
        doppler.await.context("doppler task")??;
        traffic_controller.await.context("traffic controller task")??;
        log_cache.await.context("log-cache task")??;
        metrics.await.context("metrics task")??;
        Ok(())
    }
}
