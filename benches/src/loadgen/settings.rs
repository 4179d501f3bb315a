//! Load generator settings: command-line flags over a named scenario file over defaults.
//!
//! A scenario is a TOML file in `benches/scenarios/` (or any path) with the same keys as the
//! long flags, in snake_case (`batch_size = 100`, `rate = "max"`, `mix = "log=9,counter=1"`). Flags
//! given on the command line win over the file.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{bail, Context};
use clap::Parser;
use plumbing::tls::TlsFiles;
use serde::{Deserialize, Serialize};

use crate::workload::Mix;

/// Envelopes per second across all senders, or as fast as the target accepts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Rate {
    Max,
    Fixed(f64),
}

impl FromStr for Rate {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim().to_ascii_lowercase();
        if s == "max" {
            return Ok(Rate::Max);
        }
        let (digits, scale) = match s.strip_suffix('k') {
            Some(d) => (d, 1e3),
            None => match s.strip_suffix('m') {
                Some(d) => (d, 1e6),
                None => (s.as_str(), 1.0),
            },
        };
        let value: f64 =
            digits.parse().map_err(|_| format!("invalid rate `{s}` (a number like 50000 or 50k, or max)"))?;
        if !(value > 0.0 && value.is_finite()) {
            return Err(format!("rate must be positive: `{s}`"));
        }
        Ok(Rate::Fixed(value * scale))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rate::Max => f.write_str("max"),
            Rate::Fixed(r) => write!(f, "{r}"),
        }
    }
}

impl Serialize for Rate {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Rate::Max => s.serialize_str("max"),
            Rate::Fixed(r) => s.serialize_f64(*r),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(f64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Number(n) => format!("{n}").parse().map_err(serde::de::Error::custom),
            Raw::Text(t) => t.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// What the subscribers speak, and so which endpoint `--egress` names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum SubscriberKind {
    /// `loggregator.v2.Egress/BatchedReceiver` of a Doppler or an RLP.
    #[default]
    Grpc,
    /// The RLP gateway's `GET /v2/read` (Server-Sent Events, plain HTTP).
    Sse,
    /// The traffic controller's `/firehose/{subscription-id}` WebSocket (v1 envelopes).
    WsFirehose,
    /// The traffic controller's `/apps/{guid}/stream` WebSocket: every subscriber watches one app,
    /// whose GUID is the run's only source id.
    WsApp,
}

/// The workload and the pipeline shape: what a scenario file may set.
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Knobs {
    /// Envelopes per second over all senders (`50000`, `50k`), or `max`.
    #[arg(long)]
    pub rate: Option<Rate>,
    /// Seconds of sending.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Concurrent senders (one gRPC connection and `BatchSender` stream each).
    #[arg(long)]
    pub senders: Option<usize>,
    /// Envelopes per batch.
    #[arg(long)]
    pub batch_size: Option<usize>,
    /// Distinct source ids.
    #[arg(long)]
    pub source_ids: Option<usize>,
    /// Log payload (and event body) size in bytes.
    #[arg(long)]
    pub payload_bytes: Option<usize>,
    /// Tags per envelope.
    #[arg(long)]
    pub tags: Option<usize>,
    /// Envelope types and weights, e.g. `log=90,counter=5,gauge=5` (log, counter, gauge, timer, event).
    #[arg(long)]
    pub mix: Option<Mix>,
    /// Subscribers; each subscribes to every `--egress` address with a firehose selector set.
    #[arg(long)]
    pub subscribers: Option<usize>,
    /// What subscribers speak: grpc (Doppler or RLP), sse (RLP gateway), ws-firehose or ws-app
    /// (traffic controller). With --spawn, the non-gRPC kinds start a traffic controller.
    #[arg(long, value_enum)]
    pub subscriber_kind: Option<SubscriberKind>,
    /// Distinct shard ids among subscribers (round robin); 0 = every subscriber has its own copy.
    #[arg(long)]
    pub shard_ids: Option<usize>,
    /// Seconds to wait for envelopes still in flight after sending stops.
    #[arg(long)]
    pub drain: Option<f64>,
    /// With --spawn: number of Dopplers.
    #[arg(long)]
    pub dopplers: Option<usize>,
    /// With --spawn: start a traffic controller (RLP, RLP gateway, WebSockets) reading every
    /// Doppler; subscribers then read it (gRPC subscribers the RLP).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub traffic_controller: Option<bool>,
    /// With --spawn: put an agent in front of the Dopplers (the load generator sends to it).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub agent: Option<bool>,
    /// With --spawn: mutual TLS on every hop, with a generated CA (as the original deploys).
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub tls: Option<bool>,
    /// With --spawn: tokio worker threads of each component's runtime (default 1). With three or
    /// four components and the load generator on a 2-core machine, one worker each behaves like one
    /// process per component: more workers only add work-stealing migrations and cross-thread
    /// wake-ups (`git show 0a113bb:BENCHMARKS.md`, §0.2).
    #[arg(long)]
    pub pipeline_threads: Option<usize>,
    /// With --spawn: envelopes buffered per Doppler subscription (the original: 1000).
    #[arg(long)]
    pub subscription_buffer: Option<usize>,
    /// With --spawn: the agent's ingress buffer in envelopes (default: the agent's, 100000; the
    /// original's is 10000).
    #[arg(long)]
    pub agent_buffer: Option<usize>,
    /// With --spawn: the agent's connections to Dopplers (the original: 5).
    #[arg(long)]
    pub agent_connections: Option<usize>,
    /// Worker threads of the load generator's own runtime.
    #[arg(long)]
    pub loadgen_threads: Option<usize>,
    /// Start the project's pipeline in-process (on 127.0.0.1) and drive it.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub spawn: Option<bool>,
    /// Also measure a null pipeline (a `BatchSender` server that discards) in the same run.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub baseline: Option<bool>,
    /// With --spawn: also start a log-cache whose nozzle subscribes to every Doppler (shard id
    /// `log-cache`); what it stores is the "log-cache" group of the report.
    #[arg(long = "spawn-log-cache", num_args = 0..=1, default_missing_value = "true")]
    pub log_cache: Option<bool>,
    /// After the run, read back every source id of the run from the log-cache over HTTP (pages of
    /// 1000, as go-log-cache's Walk) and report read vs sent. Default: on with --log-cache URL.
    #[arg(long, num_args = 0..=1, default_missing_value = "true")]
    pub read_back: Option<bool>,
    /// After the run, measure log-cache HTTP reads/s with this many concurrent readers (0 = off).
    #[arg(long)]
    pub readers: Option<usize>,
    /// Seconds of the HTTP read-throughput phase.
    #[arg(long)]
    pub read_duration: Option<f64>,
    /// Envelopes per read of the HTTP read-throughput phase (log-cache's maximum is 1000).
    #[arg(long)]
    pub read_limit: Option<usize>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    #[serde(default)]
    description: String,
    #[serde(flatten)]
    knobs: Knobs,
}

/// Drives a Loggregator-compatible pipeline and reports what arrived, how late, and where the rest went.
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Cli {
    /// A scenario name (a file in benches/scenarios/) or a path to a scenario TOML file.
    #[arg(long, short)]
    pub scenario: Option<String>,
    /// Ingress addresses (`host:port` of an agent or a Doppler); senders are spread over them.
    #[arg(long, value_delimiter = ',')]
    pub ingress: Vec<String>,
    /// Egress addresses (Dopplers or an RLP; an RLP gateway with --subscriber-kind sse; a traffic
    /// controller with ws-firehose or ws-app); every subscriber subscribes to each.
    #[arg(long, value_delimiter = ',')]
    pub egress: Vec<String>,
    /// `/metrics` URLs of the components (http://host:port/metrics), read before and after.
    #[arg(long, value_delimiter = ',')]
    pub metrics: Vec<String>,
    /// A log-cache's HTTP base URL (`http://127.0.0.1:8083`): what it stores of this run is the
    /// "log-cache" group (from `/api/v1/meta`), and it is read back after the run.
    #[arg(long = "log-cache")]
    pub log_cache_url: Option<String>,
    /// Component processes to account CPU and peak RSS for, as NAME=PID.
    #[arg(long = "pid", value_delimiter = ',')]
    pub pids: Vec<String>,
    #[command(flatten)]
    pub knobs: Knobs,
    /// Mutual TLS for both sides: CA, certificate and key files.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    #[arg(long)]
    pub cert: Option<PathBuf>,
    #[arg(long)]
    pub key: Option<PathBuf>,
    /// Server name to verify (both sides; default `metron` for ingress, `doppler` for egress).
    #[arg(long)]
    pub server_name: Option<String>,
    #[arg(long)]
    pub ingress_ca: Option<PathBuf>,
    #[arg(long)]
    pub ingress_cert: Option<PathBuf>,
    #[arg(long)]
    pub ingress_key: Option<PathBuf>,
    #[arg(long)]
    pub ingress_server_name: Option<String>,
    #[arg(long)]
    pub egress_ca: Option<PathBuf>,
    #[arg(long)]
    pub egress_cert: Option<PathBuf>,
    #[arg(long)]
    pub egress_key: Option<PathBuf>,
    #[arg(long)]
    pub egress_server_name: Option<String>,
    /// Print the report as JSON on stdout (instead of the table).
    #[arg(long)]
    pub json: bool,
    /// Exit with status 1 if any envelope was lost or dropped.
    #[arg(long)]
    pub assert_lossless: bool,
    /// Print the scenario names found in benches/scenarios/ and exit.
    #[arg(long)]
    pub list_scenarios: bool,
}

/// One side's client TLS: files and the server name to verify.
#[derive(Clone, Debug, Serialize)]
pub struct ClientTls {
    #[serde(skip)]
    pub files: TlsFiles,
    pub server_name: String,
}

/// Fully resolved settings.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    pub scenario: Option<String>,
    pub description: String,
    pub rate: Rate,
    pub duration_s: f64,
    pub senders: usize,
    pub batch_size: usize,
    pub source_ids: usize,
    pub payload_bytes: usize,
    pub tags: usize,
    pub mix: Mix,
    pub subscribers: usize,
    pub subscriber_kind: SubscriberKind,
    pub shard_ids: usize,
    pub drain_s: f64,
    pub spawn: bool,
    pub dopplers: usize,
    pub agent: bool,
    pub traffic_controller: bool,
    pub tls: bool,
    pub pipeline_threads: usize,
    pub subscription_buffer: usize,
    pub agent_buffer: usize,
    pub agent_connections: usize,
    pub loadgen_threads: usize,
    pub baseline: bool,
    pub log_cache: bool,
    pub read_back: bool,
    pub readers: usize,
    pub read_duration_s: f64,
    pub read_limit: usize,
    pub log_cache_url: Option<String>,
    pub ingress: Vec<String>,
    pub egress: Vec<String>,
    pub metrics: Vec<String>,
    pub pids: Vec<(String, u32)>,
    pub ingress_tls: Option<ClientTls>,
    pub egress_tls: Option<ClientTls>,
}

/// Where scenario files live in the source tree.
pub fn scenarios_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios")
}

pub fn list_scenarios() -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(scenarios_dir()) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "toml") {
                let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                let description =
                    load_scenario(&path).map(|s| s.description).unwrap_or_else(|e| format!("invalid: {e:#}"));
                out.push((name, description));
            }
        }
    }
    out.sort();
    out
}

fn load_scenario(path: &Path) -> anyhow::Result<ScenarioFile> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read scenario {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid scenario {}", path.display()))
}

fn scenario_path(name: &str) -> PathBuf {
    let as_path = Path::new(name);
    if as_path.extension().is_some() || name.contains('/') {
        as_path.to_path_buf()
    } else {
        scenarios_dir().join(format!("{name}.toml"))
    }
}

fn side_tls(
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    name: Option<String>,
    side: &str,
) -> anyhow::Result<Option<ClientTls>> {
    match (ca, cert, key) {
        (None, None, None) => Ok(None),
        (Some(ca), Some(cert), Some(key)) => Ok(Some(ClientTls {
            files: TlsFiles {
                ca_file: ca.clone(),
                cert_file: cert.clone(),
                key_file: key.clone(),
                tls_engine: Default::default(),
            },
            server_name: name.unwrap_or_default(),
        })),
        _ => bail!("{side} TLS needs all of --ca, --cert and --key (or the --{side}-* variants)"),
    }
}

impl Settings {
    pub fn resolve(cli: &Cli) -> anyhow::Result<Self> {
        let file = match &cli.scenario {
            Some(name) => load_scenario(&scenario_path(name))?,
            None => ScenarioFile::default(),
        };
        let f = file.knobs;
        let c = &cli.knobs;
        macro_rules! pick {
            ($field:ident, $default:expr) => {
                c.$field.clone().or(f.$field.clone()).unwrap_or($default)
            };
        }
        let spawn = pick!(spawn, false);
        let mut pids = Vec::new();
        for entry in &cli.pids {
            let (name, pid) = entry.split_once('=').context("--pid takes NAME=PID")?;
            pids.push((name.to_string(), pid.parse().with_context(|| format!("invalid pid in {entry}"))?));
        }
        let pick_path = |side: &Option<PathBuf>, common: &Option<PathBuf>| side.clone().or_else(|| common.clone());
        let ingress_tls = side_tls(
            &pick_path(&cli.ingress_ca, &cli.ca),
            &pick_path(&cli.ingress_cert, &cli.cert),
            &pick_path(&cli.ingress_key, &cli.key),
            Some(cli.ingress_server_name.clone().or(cli.server_name.clone()).unwrap_or_else(|| "metron".into())),
            "ingress",
        )?;
        let egress_tls = side_tls(
            &pick_path(&cli.egress_ca, &cli.ca),
            &pick_path(&cli.egress_cert, &cli.cert),
            &pick_path(&cli.egress_key, &cli.key),
            Some(cli.egress_server_name.clone().or(cli.server_name.clone()).unwrap_or_else(|| "doppler".into())),
            "egress",
        )?;
        let mut settings = Settings {
            scenario: cli.scenario.clone(),
            description: file.description,
            rate: pick!(rate, Rate::Fixed(10_000.0)),
            duration_s: pick!(duration, 10.0),
            senders: pick!(senders, 2).max(1),
            batch_size: pick!(batch_size, 100).max(1),
            source_ids: pick!(source_ids, 100).max(1),
            payload_bytes: pick!(payload_bytes, 200),
            tags: pick!(tags, 5),
            mix: pick!(mix, Mix::default()),
            subscribers: pick!(subscribers, 1),
            subscriber_kind: pick!(subscriber_kind, SubscriberKind::Grpc),
            shard_ids: pick!(shard_ids, 0),
            drain_s: pick!(drain, 5.0),
            spawn,
            dopplers: pick!(dopplers, 1).max(1),
            agent: pick!(agent, false),
            traffic_controller: false,
            tls: pick!(tls, false),
            pipeline_threads: pick!(pipeline_threads, 1).max(1),
            subscription_buffer: pick!(subscription_buffer, 1000).max(1),
            agent_buffer: pick!(agent_buffer, agent::Config::default().ingress_buffer.get()).max(1),
            agent_connections: pick!(agent_connections, 5).max(1),
            loadgen_threads: pick!(loadgen_threads, 2).max(1),
            baseline: pick!(baseline, false),
            log_cache: pick!(log_cache, false),
            read_back: pick!(read_back, cli.log_cache_url.is_some()),
            readers: pick!(readers, 0),
            read_duration_s: pick!(read_duration, 5.0),
            read_limit: pick!(read_limit, 100).clamp(1, 1000),
            log_cache_url: cli.log_cache_url.clone(),
            ingress: cli.ingress.clone(),
            egress: cli.egress.clone(),
            metrics: cli.metrics.clone(),
            pids,
            ingress_tls,
            egress_tls,
        };
        if !settings.spawn && settings.ingress.is_empty() {
            bail!("nothing to drive: give --ingress ADDR (and --egress ADDR), or --spawn");
        }
        if settings.spawn && !(settings.ingress.is_empty() && settings.egress.is_empty()) {
            bail!("--spawn starts its own pipeline: do not combine it with --ingress/--egress");
        }
        settings.traffic_controller =
            settings.spawn && pick!(traffic_controller, settings.subscriber_kind != SubscriberKind::Grpc);
        if settings.spawn && settings.subscriber_kind != SubscriberKind::Grpc && !settings.traffic_controller {
            bail!("--subscriber-kind {:?} reads a traffic controller: do not turn it off", settings.subscriber_kind);
        }
        if c.traffic_controller.or(f.traffic_controller).unwrap_or(false) && !settings.spawn {
            bail!("--traffic-controller needs --spawn (for an external one, give --egress ADDR)");
        }
        settings.check_v1_mix()?;
        if settings.log_cache && !settings.spawn {
            bail!("--spawn-log-cache needs --spawn (for an external log-cache, give --log-cache URL)");
        }
        if settings.log_cache && settings.log_cache_url.is_some() {
            bail!("--spawn-log-cache starts its own log-cache: do not combine it with --log-cache URL");
        }
        let has_log_cache = settings.log_cache || settings.log_cache_url.is_some();
        if (settings.read_back || settings.readers > 0) && !has_log_cache {
            bail!("--read-back and --readers need a log-cache: --spawn --spawn-log-cache, or --log-cache URL");
        }
        if !(settings.read_duration_s > 0.0 && settings.read_duration_s <= 3600.0) {
            bail!("read duration must be between 0 and 1 h");
        }
        if !(settings.duration_s > 0.0 && settings.duration_s <= 24.0 * 3600.0) {
            bail!("duration must be between 0 and 24 h");
        }
        Ok(settings)
    }

    /// v1 WebSockets carry no events, turn a gauge into one envelope per metric and a timer into
    /// an HttpStartStop: the accounting is one to one only for logs and counters, and an app
    /// stream carries only its app's logs.
    fn check_v1_mix(&self) -> anyhow::Result<()> {
        use crate::workload::Kind;
        match self.subscriber_kind {
            SubscriberKind::WsFirehose => {
                if let Some((kind, _)) = self.mix.0.iter().find(|(k, _)| !matches!(k, Kind::Log | Kind::Counter)) {
                    bail!(
                        "--subscriber-kind ws-firehose counts v1 envelopes one to one: mix only log and counter \
                         (a {} has no single v1 image)",
                        kind.name()
                    );
                }
            }
            SubscriberKind::WsApp => {
                if self.mix.0.iter().any(|(k, _)| *k != Kind::Log) {
                    bail!("--subscriber-kind ws-app: an app stream carries the app's logs: --mix log");
                }
                if self.source_ids != 1 {
                    bail!("--subscriber-kind ws-app: every envelope is from the one app: --source-ids 1");
                }
            }
            SubscriberKind::Grpc | SubscriberKind::Sse => {}
        }
        Ok(())
    }

    /// Shard id of subscriber `index`: empty (own copy) or one of `shard_ids` shared ids.
    pub fn shard_id(&self, index: usize) -> String {
        if self.shard_ids == 0 {
            String::new()
        } else {
            format!("loadgen-{}", index % self.shard_ids)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse() {
        assert_eq!("max".parse::<Rate>(), Ok(Rate::Max));
        assert_eq!("50k".parse::<Rate>(), Ok(Rate::Fixed(50_000.0)));
        assert_eq!("1.5m".parse::<Rate>(), Ok(Rate::Fixed(1_500_000.0)));
        assert_eq!("2000".parse::<Rate>(), Ok(Rate::Fixed(2000.0)));
        assert!("-1".parse::<Rate>().is_err());
        assert!("fast".parse::<Rate>().is_err());
    }

    #[test]
    fn every_scenario_in_the_repo_parses() {
        let scenarios = list_scenarios();
        assert!(scenarios.iter().any(|(name, _)| name == "smoke"), "{scenarios:?}");
        for (name, description) in scenarios {
            assert!(!description.starts_with("invalid"), "{name}: {description}");
            let cli = Cli::parse_from(["loadgen", "--scenario", &name]);
            Settings::resolve(&cli).unwrap_or_else(|e| panic!("{name}: {e:#}"));
        }
    }

    #[test]
    fn log_cache_flags() {
        let cli = Cli::parse_from(["loadgen", "--scenario", "agent-doppler-logcache"]);
        let settings = Settings::resolve(&cli).expect("valid");
        assert!(settings.spawn && settings.log_cache && settings.agent);
        let cli = Cli::parse_from(["loadgen", "--ingress", "127.0.0.1:1", "--log-cache", "http://127.0.0.1:2"]);
        let settings = Settings::resolve(&cli).expect("valid");
        assert!(settings.read_back, "read back by default with --log-cache URL");
        let cli = Cli::parse_from(["loadgen", "--ingress", "127.0.0.1:1", "--readers", "2"]);
        assert!(Settings::resolve(&cli).is_err(), "readers need a log-cache");
        let cli = Cli::parse_from(["loadgen", "--ingress", "127.0.0.1:1", "--spawn-log-cache"]);
        assert!(Settings::resolve(&cli).is_err(), "a spawned log-cache needs --spawn");
    }

    #[test]
    fn edge_subscribers_start_a_traffic_controller_and_check_the_mix() {
        let resolve = |args: &[&str]| Settings::resolve(&Cli::parse_from([&["loadgen"], args].concat()));
        let settings = resolve(&["--scenario", "doppler-tc-firehose"]).expect("valid");
        assert!(settings.traffic_controller && settings.subscriber_kind == SubscriberKind::WsFirehose);
        let settings = resolve(&["--spawn", "--subscriber-kind", "sse"]).expect("valid");
        assert!(settings.traffic_controller);
        assert!(!resolve(&["--spawn"]).expect("valid").traffic_controller, "gRPC reads the Dopplers by default");
        assert!(resolve(&["--spawn", "--subscriber-kind", "ws-firehose", "--mix", "log=1,gauge=1"]).is_err());
        assert!(resolve(&["--spawn", "--subscriber-kind", "ws-app", "--source-ids", "2"]).is_err());
        assert!(resolve(&["--spawn", "--subscriber-kind", "ws-app", "--source-ids", "1"]).is_ok());
        assert!(resolve(&["--spawn", "--subscriber-kind", "sse", "--traffic-controller", "false"]).is_err());
        assert!(resolve(&["--ingress", "127.0.0.1:1", "--traffic-controller"]).is_err());
        let external = resolve(&["--ingress", "127.0.0.1:1", "--egress", "127.0.0.1:2", "--subscriber-kind", "sse"]);
        assert!(!external.expect("valid").traffic_controller);
    }

    #[test]
    fn flags_override_the_scenario() {
        let cli = Cli::parse_from(["loadgen", "--scenario", "smoke", "--rate", "max", "--duration", "1"]);
        let settings = Settings::resolve(&cli).expect("valid");
        assert_eq!(settings.rate, Rate::Max);
        assert_eq!(settings.duration_s, 1.0);
        assert!(settings.spawn);
    }
}
