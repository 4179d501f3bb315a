//! Command line: subcommands, flags and environment variables, layered over TOML config files.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use plumbing::telemetry::Health;
use plumbing::tls::TlsFiles;
use plumbing::Registry;
use serde::de::DeserializeOwned;

use loggregator::pipeline::DEFAULT_METRICS_ADDR;

#[derive(Parser, Debug)]
#[command(
    name = "loggregator",
    version,
    about = "A logging and metrics pipeline in the style of Cloud Foundry's Loggregator"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// The components' own log lines: `text` (coloured only on a terminal) or `json`, one object
    /// a line, for log shippers.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value = "text", global = true)]
    pub log_format: LogFormat,
    /// With no subcommand: also run a built-in emitter of demo traffic (apps writing logs, gauges
    /// and counters, and one noisy neighbour).
    #[arg(long)]
    demo: bool,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Every component in one process on loopback (the default with no subcommand).
    All(AllArgs),
    /// The agent: v2 gRPC and v1 UDP ingress, batching to every Doppler.
    Agent(AgentArgs),
    /// A Doppler: the sharded middle tier fanning envelopes out to subscribers.
    Doppler(DopplerArgs),
    /// A Log Cache node: the in-memory store of recent envelopes with its gRPC and HTTP APIs.
    LogCache(LogCacheArgs),
    /// The egress edge: reverse log proxy (gRPC), RLP gateway (SSE) and v1 WebSockets.
    TrafficController(TrafficControllerArgs),
    /// Send log lines, gauges, counters or events through an agent.
    Emit(crate::client::emit::EmitArgs),
    /// A source's logs, like `cf logs`: the recent ones, then live.
    Logs(crate::client::logs::LogsArgs),
    /// A source's envelopes of every type, like `cf tail`.
    Tail(crate::client::tail::TailArgs),
    /// Every source log-cache holds, like `cf log-meta`.
    Meta(crate::client::meta::MetaArgs),
    /// A PromQL query against log-cache.
    Query(crate::client::query::QueryArgs),
    /// The noisiest sources and each hop's throughput and drops, refreshing.
    Top(crate::client::top::TopArgs),
}

/// Flags every component has.
#[derive(Args, Debug, Clone)]
struct Common {
    /// TOML file with the component's configuration (flags and environment override it).
    #[arg(long, env = "LOGGREGATOR_CONFIG")]
    config: Option<PathBuf>,
    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
}

/// Mutual TLS for a server: all three or none.
#[derive(Args, Debug, Clone)]
struct TlsArgs {
    /// CA certificate (PEM) that signs the peers' certificates.
    #[arg(long, env = "TLS_CA_FILE", requires_all = ["tls_cert", "tls_key"])]
    tls_ca: Option<PathBuf>,
    /// This server's certificate (PEM).
    #[arg(long, env = "TLS_CERT_FILE", requires_all = ["tls_ca", "tls_key"])]
    tls_cert: Option<PathBuf>,
    /// This server's private key (PEM).
    #[arg(long, env = "TLS_KEY_FILE", requires_all = ["tls_ca", "tls_cert"])]
    tls_key: Option<PathBuf>,
}

impl TlsArgs {
    fn files(&self) -> Option<TlsFiles> {
        Some(TlsFiles {
            ca_file: self.tls_ca.clone()?,
            cert_file: self.tls_cert.clone()?,
            key_file: self.tls_key.clone()?,
            tls_engine: Default::default(),
        })
    }
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator                      every component on loopback (this command)
  loggregator all --demo           plus demo traffic: logs, gauges, counters, a noisy app
  loggregator all --console-addr 127.0.0.1:9000")]
struct AllArgs {
    /// Address of the Prometheus `/metrics` endpoint of every component.
    #[arg(long, env = "METRICS_ADDR", default_value = DEFAULT_METRICS_ADDR)]
    metrics_addr: SocketAddr,
    /// Address of the web console.
    #[arg(long, env = "CONSOLE_ADDR", default_value = loggregator::console::DEFAULT_ADDR)]
    console_addr: SocketAddr,
    /// Also run a built-in emitter of demo traffic.
    #[arg(long)]
    demo: bool,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator agent --doppler 127.0.0.1:8082
  loggregator agent --doppler doppler.internal:8082 --tag deployment=cf --tag job=diego-cell \\
    --doppler-ca ca.pem --doppler-cert agent.pem --doppler-key agent-key.pem")]
struct AgentArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    tls: TlsArgs,
    /// v2 gRPC ingress address.
    #[arg(long, env = "AGENT_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// v1 UDP ingress address.
    #[arg(long, env = "AGENT_UDP_ADDR")]
    udp_addr: Option<SocketAddr>,
    /// Turns the v1 UDP ingress off.
    #[arg(long, env = "AGENT_DISABLE_UDP")]
    disable_udp: bool,
    /// Doppler `host:port`, repeatable or comma-separated; a DNS name may resolve to many Dopplers.
    #[arg(long = "doppler", env = "AGENT_DOPPLERS", value_delimiter = ',')]
    dopplers: Vec<String>,
    /// Default tag `key=value` added where absent (deployment, job, index, ip, ...), repeatable.
    #[arg(long = "tag", env = "AGENT_TAGS", value_delimiter = ',')]
    tags: Vec<String>,
    /// CA, certificate and key (PEM) for mutual TLS towards the Dopplers.
    #[arg(long, env = "AGENT_DOPPLER_CA_FILE", requires_all = ["doppler_cert", "doppler_key"])]
    doppler_ca: Option<PathBuf>,
    #[arg(long, env = "AGENT_DOPPLER_CERT_FILE", requires_all = ["doppler_ca", "doppler_key"])]
    doppler_cert: Option<PathBuf>,
    #[arg(long, env = "AGENT_DOPPLER_KEY_FILE", requires_all = ["doppler_ca", "doppler_cert"])]
    doppler_key: Option<PathBuf>,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator doppler --grpc-addr 127.0.0.1:8082 --metrics-addr 127.0.0.1:14825
  loggregator doppler --grpc-addr 0.0.0.0:8082 --tls-ca ca.pem --tls-cert doppler.pem --tls-key doppler-key.pem")]
struct DopplerArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    tls: TlsArgs,
    /// gRPC address (v2 Ingress and Egress).
    #[arg(long, env = "DOPPLER_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Envelopes buffered per subscription before the oldest is dropped.
    #[arg(long, env = "DOPPLER_SUBSCRIPTION_BUFFER")]
    subscription_buffer: Option<std::num::NonZeroUsize>,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator log-cache --doppler 127.0.0.1:8082 --memory-limit-percent 25
  loggregator log-cache --config log-cache.toml --node-addr lc-0:8080,lc-1:8080 --node-index 0")]
struct LogCacheArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    tls: TlsArgs,
    /// gRPC address (Egress Read/Meta, Ingress Send, PromQLQuerier).
    #[arg(long, env = "LOG_CACHE_GRPC_ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// HTTP API address (`/api/v1/read`, `/meta`, `/query`, `/query_range`, `/info`).
    #[arg(long, env = "LOG_CACHE_HTTP_ADDR")]
    http_addr: Option<SocketAddr>,
    /// Doppler (or RLP) `host:port` the nozzle subscribes to, repeatable or comma-separated.
    #[arg(long = "doppler", env = "LOG_CACHE_DOPPLERS", value_delimiter = ',')]
    dopplers: Vec<String>,
    /// Most envelopes kept per source id.
    #[arg(long, env = "MAX_PER_SOURCE")]
    max_per_source: Option<std::num::NonZeroUsize>,
    /// Memory cap in bytes (overrides the percentage).
    #[arg(long, env = "MEMORY_LIMIT_BYTES")]
    memory_limit_bytes: Option<u64>,
    /// Memory cap as a percentage of the machine's memory.
    #[arg(long, env = "MEMORY_LIMIT_PERCENT")]
    memory_limit_percent: Option<f64>,
    /// gRPC addresses of every node of the cluster, in the same order on every node.
    #[arg(long = "node-addr", env = "NODE_ADDRS", value_delimiter = ',')]
    node_addrs: Vec<String>,
    /// This node's index in `--node-addr`.
    #[arg(long, env = "NODE_INDEX")]
    node_index: Option<usize>,
    /// Answer `/api/v1/query` and `/api/v1/query_range` with 501 "Metrics not available".
    #[arg(long, env = "PROMQL_UNIMPLEMENTED", num_args = 0..=1, default_missing_value = "true")]
    promql_unimplemented: Option<bool>,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator traffic-controller --doppler 127.0.0.1:8082 --log-cache 127.0.0.1:8080 --agent 127.0.0.1:3458
  loggregator traffic-controller --config tc.toml     (TLS and auth: see traffic-controller/README.md)")]
struct TrafficControllerArgs {
    #[command(flatten)]
    common: Common,
    /// Mutual TLS of the RLP's gRPC server (clients verify the name `reverselogproxy`).
    #[command(flatten)]
    tls: TlsArgs,
    /// Doppler `host:port`, repeatable or comma-separated; a DNS name may resolve to many Dopplers.
    #[arg(long = "doppler", env = "TC_DOPPLERS", value_delimiter = ',')]
    dopplers: Vec<String>,
    /// CA, certificate and key (PEM) for mutual TLS towards the Dopplers (server name `doppler`).
    #[arg(long, env = "TC_DOPPLER_CA_FILE", requires_all = ["doppler_cert", "doppler_key"])]
    doppler_ca: Option<PathBuf>,
    #[arg(long, env = "TC_DOPPLER_CERT_FILE", requires_all = ["doppler_ca", "doppler_key"])]
    doppler_cert: Option<PathBuf>,
    #[arg(long, env = "TC_DOPPLER_KEY_FILE", requires_all = ["doppler_ca", "doppler_cert"])]
    doppler_key: Option<PathBuf>,
    /// Reverse log proxy gRPC address.
    #[arg(long, env = "RLP_ADDR")]
    rlp_addr: Option<SocketAddr>,
    /// RLP gateway HTTP address.
    #[arg(long, env = "RLP_GATEWAY_ADDR")]
    gateway_addr: Option<SocketAddr>,
    /// The RLP the gateway reads (`host:port`); by default this process's own, over gRPC, as the
    /// original gateway reads its local RLP.
    #[arg(long, env = "RLP_GATEWAY_RLP")]
    gateway_rlp: Option<String>,
    /// Traffic controller HTTP/WebSocket address.
    #[arg(long, env = "TC_ADDR")]
    websocket_addr: Option<SocketAddr>,
    /// Log Cache gRPC address for `recentlogs` and `containermetrics`.
    #[arg(long, env = "TC_LOG_CACHE")]
    log_cache: Option<String>,
    /// The local agent's gRPC address, where events (slow consumers) are sent.
    #[arg(long, env = "TC_AGENT")]
    agent: Option<String>,
    /// Certificate and key (PEM) of the public HTTPS/WSS listeners.
    #[arg(long, env = "TC_PUBLIC_CERT_FILE", requires = "public_key")]
    public_cert: Option<PathBuf>,
    #[arg(long, env = "TC_PUBLIC_KEY_FILE", requires = "public_cert")]
    public_key: Option<PathBuf>,
    /// Serve public listeners off loopback without authentication anyway.
    #[arg(long, env = "TRAFFIC_CONTROLLER_DISABLE_ACCESS_CONTROL")]
    allow_unauthenticated_public: bool,
}

/// Completes on SIGINT or SIGTERM, after turning `/health` to draining: a Kubernetes readiness
/// probe then takes the pod out of its Service while the component drains.
pub fn draining(registry: &Registry) -> impl std::future::Future<Output = ()> + Send + 'static {
    let registry = registry.clone();
    async move {
        crate::shutdown_signal().await;
        registry.set_health(Health::Draining);
    }
}

/// Reads a component's TOML config, or its defaults when no file is given.
fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

/// Serves `/metrics` in the background until shutdown.
pub async fn spawn_metrics(
    addr: SocketAddr,
    registry: Registry,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener =
        plumbing::telemetry::bind_metrics(addr).await.with_context(|| format!("binding metrics address {addr}"))?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        if let Err(error) = plumbing::telemetry::serve_metrics(listener, registry, shutdown.cancelled_owned()).await {
            tracing::error!(%error, "metrics server failed");
        }
    });
    Ok((bound, handle))
}

impl Cli {
    /// Whether the command is a client (its own logs stay quiet unless asked for).
    pub fn is_client(&self) -> bool {
        matches!(
            self.command,
            Some(
                Command::Emit(_)
                    | Command::Logs(_)
                    | Command::Tail(_)
                    | Command::Meta(_)
                    | Command::Query(_)
                    | Command::Top(_)
            )
        )
    }

    pub async fn run(self) -> anyhow::Result<()> {
        match self.command {
            None => {
                run_all(DEFAULT_METRICS_ADDR.parse()?, loggregator::console::DEFAULT_ADDR.parse()?, self.demo).await
            }
            Some(Command::All(args)) => run_all(args.metrics_addr, args.console_addr, args.demo || self.demo).await,
            Some(Command::Agent(args)) => run_agent(args).await,
            Some(Command::Doppler(args)) => run_doppler(args).await,
            Some(Command::LogCache(args)) => run_log_cache(args).await,
            Some(Command::TrafficController(args)) => run_traffic_controller(args).await,
            Some(Command::Emit(args)) => crate::client::emit::run(args).await,
            Some(Command::Logs(args)) => crate::client::logs::run(args).await,
            Some(Command::Tail(args)) => crate::client::tail::run(args).await,
            Some(Command::Meta(args)) => crate::client::meta::run(args).await,
            Some(Command::Query(args)) => crate::client::query::run(args).await,
            Some(Command::Top(args)) => crate::client::top::run(args).await,
        }
    }
}

async fn run_all(metrics_addr: SocketAddr, console_addr: SocketAddr, demo: bool) -> anyhow::Result<()> {
    let mut config = loggregator::pipeline::PipelineConfig::loopback_defaults();
    config.metrics_addr = metrics_addr;
    config.console_addr = console_addr;
    let pipeline = loggregator::pipeline::Pipeline::bind(config).await?;
    let rows = pipeline.endpoints().table();
    let width = rows.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    println!("loggregator: all components on loopback (Ctrl-C to stop)");
    println!("  {:width$}  address", "endpoint");
    for (name, addr) in &rows {
        println!("  {name:width$}  {addr}");
    }
    let demo_stop = tokio_util::sync::CancellationToken::new();
    if demo {
        tokio::spawn(loggregator::demo::run(pipeline.endpoints().agent_grpc, demo_stop.clone()));
        let apps: Vec<&str> = loggregator::demo::APPS.iter().map(|(app, _)| *app).collect();
        println!();
        println!("demo traffic: apps {} and a noisy {}; try", apps.join(", "), loggregator::demo::NOISY_APP);
        println!("  loggregator logs checkout        (Ctrl-C to stop)");
        println!("  loggregator tail checkout -t gauge -f");
        println!("  loggregator top");
        println!("  loggregator query 'avg_over_time(cpu{{source_id=\"checkout\"}}[1m])'");
    }
    let registry = pipeline.registry();
    registry.set_health(Health::Ready);
    let served = pipeline.serve(draining(&registry)).await;
    demo_stop.cancel();
    served
}

fn parse_tags(tags: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    tags.iter()
        .map(|t| {
            let (k, v) = t.split_once('=').with_context(|| format!("invalid tag `{t}`: expected key=value"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

async fn run_agent(args: AgentArgs) -> anyhow::Result<()> {
    let mut config: agent::Config = load(args.common.config.as_deref())?;
    if let Some(addr) = args.grpc_addr {
        config.grpc_addr = addr;
    }
    if let Some(addr) = args.udp_addr {
        config.udp_addr = Some(addr);
    }
    if args.disable_udp {
        config.udp_addr = None;
    }
    if !args.dopplers.is_empty() {
        config.dopplers = args.dopplers;
    }
    config.tags.extend(parse_tags(&args.tags)?);
    if let Some(tls) = args.tls.files() {
        config.tls = Some(tls);
    }
    if let (Some(ca), Some(cert), Some(key)) = (args.doppler_ca, args.doppler_cert, args.doppler_key) {
        config.doppler_tls =
            Some(TlsFiles { ca_file: ca, cert_file: cert, key_file: key, tls_engine: Default::default() });
    }
    tracing::info!(?config, "agent configuration");
    let registry = Registry::new();
    let token = tokio_util::sync::CancellationToken::new();
    let (_, metrics) = spawn_metrics(args.common.metrics_addr, registry.clone(), token.clone()).await?;
    let agent = agent::Agent::bind(config, &registry.scoped("agent")).await?;
    registry.set_health(Health::Ready);
    agent.serve(draining(&registry)).await?;
    token.cancel();
    let _ = metrics.await;
    Ok(())
}

async fn run_doppler(args: DopplerArgs) -> anyhow::Result<()> {
    let mut config: doppler::Config = load(args.common.config.as_deref())?;
    if let Some(addr) = args.grpc_addr {
        config.grpc_addr = addr;
    }
    if let Some(size) = args.subscription_buffer {
        config.subscription_buffer = size;
    }
    if let Some(tls) = args.tls.files() {
        config.tls = Some(tls);
    }
    tracing::info!(?config, "doppler configuration");
    let registry = Registry::new();
    let token = tokio_util::sync::CancellationToken::new();
    let (_, metrics) = spawn_metrics(args.common.metrics_addr, registry.clone(), token.clone()).await?;
    let doppler = doppler::Doppler::bind(config, &registry.scoped("doppler")).await?;
    registry.set_health(Health::Ready);
    doppler.serve(draining(&registry)).await?;
    token.cancel();
    let _ = metrics.await;
    Ok(())
}

async fn run_log_cache(args: LogCacheArgs) -> anyhow::Result<()> {
    let mut config: log_cache::Config = load(args.common.config.as_deref())?;
    if let Some(addr) = args.grpc_addr {
        config.grpc_addr = addr;
    }
    if let Some(addr) = args.http_addr {
        config.http_addr = addr;
    }
    if !args.dopplers.is_empty() {
        config.nozzle.addrs = args.dopplers;
    }
    if let Some(n) = args.max_per_source {
        config.max_per_source = n;
    }
    if let Some(bytes) = args.memory_limit_bytes {
        config.memory_limit_bytes = Some(bytes);
    }
    if let Some(percent) = args.memory_limit_percent {
        config.memory_limit_percent = percent;
    }
    if !args.node_addrs.is_empty() {
        config.node_addrs = args.node_addrs;
    }
    if let Some(index) = args.node_index {
        config.node_index = index;
    }
    if let Some(off) = args.promql_unimplemented {
        config.promql_unimplemented = off;
    }
    if let Some(tls) = args.tls.files() {
        config.tls = Some(tls);
    }
    tracing::info!(?config, "log-cache configuration");
    let registry = Registry::new();
    let token = tokio_util::sync::CancellationToken::new();
    let (_, metrics) = spawn_metrics(args.common.metrics_addr, registry.clone(), token.clone()).await?;
    // log-cache adds its own `component="log-cache"`.
    let log_cache = log_cache::LogCache::bind(config, &registry).await?;
    registry.set_health(Health::Ready);
    log_cache.serve(draining(&registry)).await?;
    token.cancel();
    let _ = metrics.await;
    Ok(())
}

async fn run_traffic_controller(args: TrafficControllerArgs) -> anyhow::Result<()> {
    let mut config: traffic_controller::Config = load(args.common.config.as_deref())?;
    if !args.dopplers.is_empty() {
        config.dopplers = args.dopplers;
    }
    if let (Some(ca), Some(cert), Some(key)) = (args.doppler_ca, args.doppler_cert, args.doppler_key) {
        config.doppler_tls =
            Some(TlsFiles { ca_file: ca, cert_file: cert, key_file: key, tls_engine: Default::default() });
    }
    if let Some(tls) = args.tls.files() {
        config.rlp.tls = Some(tls);
    }
    if let Some(addr) = args.rlp_addr {
        config.rlp.addr = addr;
    }
    if let Some(addr) = args.gateway_addr {
        config.gateway.addr = addr;
    }
    if let Some(addr) = args.websocket_addr {
        config.websocket.addr = addr;
    }
    if args.gateway_rlp.is_some() {
        config.gateway.rlp_addr = args.gateway_rlp;
    }
    if args.log_cache.is_some() {
        config.log_cache_addr = args.log_cache;
    }
    if args.agent.is_some() {
        config.agent_addr = args.agent;
    }
    if let (Some(cert_file), Some(key_file)) = (args.public_cert, args.public_key) {
        config.public_tls = Some(traffic_controller::config::PublicTls { cert_file, key_file });
    }
    config.allow_unauthenticated_public |= args.allow_unauthenticated_public;
    tracing::info!(?config, "traffic-controller configuration");
    let registry = Registry::new();
    let token = tokio_util::sync::CancellationToken::new();
    let (_, metrics) = spawn_metrics(args.common.metrics_addr, registry.clone(), token.clone()).await?;
    let tc = traffic_controller::TrafficController::bind(config, &registry).await?;
    registry.set_health(Health::Ready);
    tc.serve(draining(&registry)).await?;
    token.cancel();
    let _ = metrics.await;
    Ok(())
}
