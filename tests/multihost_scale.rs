//! Scale figures across hosts (issue 17, BENCHMARKS.md §1.3): the multi-host harness's network
//! namespaces, each component a release-built process on a host of its own with mutual TLS on
//! every hop, driven by the load generator (`target/release/loadgen`) from the root namespace.
//!
//! For each shape (2 agents in front of 1, 2 or 3 Dopplers read by one RLP subscriber; 2 agents,
//! one Doppler and 1 or 2 log-cache nodes whose nozzles read it, their stores filled to a 256 MiB
//! cap first) it measures the CPU cost of every
//! component at one fixed rate (the same for every shape, so what a hop or host adds is the
//! difference), and then searches the highest rate delivered with < 0.1 % loss, as
//! `benches/find-max.sh` does. It prints one `scale:` line per run and a Markdown table at the end.
//!
//! A benchmark, not a test: it is `#[ignore]`d so `cargo test` (a debug build) does not run it;
//! `benches/multihost-scale.sh` builds the release binaries and runs it as root. Knobs (environment):
//! `SCALE_SHAPES` (comma-separated names, default all), `SCALE_DURATION` (s, default 8),
//! `SCALE_FIXED_RATE` (default 50000), `SCALE_LOW` / `SCALE_HIGH` (the search's bracket, default
//! 20000 / 1600000: above what a fast 2-core machine reaches, so the search is never capped).

#[path = "multihost/netns.rs"]
mod netns;
#[path = "faults/support.rs"]
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;

use netns::*;
use plumbing::test_support::TestPki;
use serde_json::Value;
use support::*;

/// The workload of the one-host scenarios (`benches/scenarios/three-dopplers.toml`), so the figures
/// compare: two senders (one per agent), batches of 100, 1000 sources, 200-byte payloads, 5 tags.
const WORKLOAD: [&str; 12] = [
    "--senders",
    "2",
    "--batch-size",
    "100",
    "--source-ids",
    "1000",
    "--payload-bytes",
    "200",
    "--tags",
    "5",
    "--mix",
    "log=8,counter=1,gauge=1",
];

/// Each log-cache node's store cap: small, so that a warm-up fills it and every measured run
/// writes into a full store (pruning as it goes), as a node in production does, and so that the
/// figures do not depend on how full the store happened to be when a run began.
const STORE_BYTES: u64 = 256 << 20;
/// The warm-up that fills the stores: 2 M envelopes, at least 330 MB over two nodes.
const WARM_UP_RATE: u64 = 200_000;
const WARM_UP_SECONDS: u64 = 10;

/// One deployment to measure.
#[derive(Clone, Copy, Debug)]
struct Shape {
    name: &'static str,
    dopplers: usize,
    /// Log-cache nodes (their nozzles read the Dopplers, as in `deploy/kubernetes`); 0 = an RLP
    /// (traffic controller) read by the load generator's subscriber instead.
    caches: usize,
}

const SHAPES: [Shape; 5] = [
    Shape { name: "2a-1d-rlp", dopplers: 1, caches: 0 },
    Shape { name: "2a-2d-rlp", dopplers: 2, caches: 0 },
    Shape { name: "2a-3d-rlp", dopplers: 3, caches: 0 },
    Shape { name: "2a-1d-1lc", dopplers: 1, caches: 1 },
    Shape { name: "2a-1d-2lc", dopplers: 1, caches: 2 },
];

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The load generator next to the `loggregator` binary this test runs (same profile).
fn loadgen_binary() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_loggregator"));
    let path = bin.with_file_name("loadgen");
    assert!(path.exists(), "{} is missing: benches/multihost-scale.sh builds it", path.display());
    path
}

/// The hosts of the largest shape, made once: each shape runs on its own subset of them.
struct Hosts {
    dns: Host,
    agents: [Host; 2],
    dopplers: Vec<Host>,
    tc: Host,
    caches: Vec<Host>,
}

impl Hosts {
    fn create(net: &mut Network) -> Hosts {
        let max_dopplers = SHAPES.iter().map(|s| s.dopplers).max().unwrap_or(1);
        let max_caches = SHAPES.iter().map(|s| s.caches).max().unwrap_or(1);
        Hosts {
            dns: net.host("ns", 2),
            agents: [net.host("a1", 11), net.host("a2", 12)],
            dopplers: (0..max_dopplers).map(|i| net.host(&format!("d{}", i + 1), 21 + i as u8)).collect(),
            tc: net.host("tc", 31),
            caches: (0..max_caches).map(|i| net.host(&format!("c{}", i + 1), 41 + i as u8)).collect(),
        }
    }
}

/// A running deployment of one shape; dropping it stops every process (and the DNS server).
struct Deployment {
    procs: Vec<Proc>,
    agents: Vec<SocketAddr>,
    rlp: Option<SocketAddr>,
    log_cache_http: Option<SocketAddr>,
    _dns: Dns,
}

async fn deploy(shape: Shape, hosts: &Hosts, dir: &TempDir, pki: &TestPki) -> Deployment {
    let agent_hosts = &hosts.agents;
    let doppler_hosts = &hosts.dopplers[..shape.dopplers];
    let entries: Vec<_> = doppler_hosts.iter().map(|h| (h.ip, DOPPLER_NAME)).collect();
    let dns = Dns::start(&hosts.dns, dir.0.join(format!("{}.hosts", shape.name)), &entries);
    let all: Vec<_> = doppler_hosts.iter().map(|h| h.ip).collect();
    let answered = eventually(DEADLINE, || async { netns::resolve_in(&agent_hosts[0], DOPPLER_NAME) == all }).await;
    assert!(answered, "dnsmasq does not answer {DOPPLER_NAME} with {all:?}");

    let mut procs = Vec::new();
    let file = |name: &str, text: &str| dir.file(&format!("{}-{name}.toml", shape.name), text);
    let config_args = |component: &str, path: PathBuf| {
        let mut args = strings(&[component, "--config", path.to_str().expect("utf-8 path")]);
        if component == "agent" {
            args.push("--disable-udp".into());
        }
        args
    };
    for (i, host) in doppler_hosts.iter().enumerate() {
        let name = format!("doppler-{}", i + 1);
        let config = format!("grpc_addr = \"{}\"\n{}", at(host, GRPC), tls_table("tls", &pki.server_files()));
        let args = config_args("doppler", file(&name, &config));
        procs.push(Proc::start_with(&name, &host.exec(), &args, &[at(host, GRPC)], at(host, METRICS)).await);
    }
    let mut rlp = None;
    if shape.caches == 0 {
        let host = &hosts.tc;
        let config = format!(
            "dopplers = [\"{DOPPLER_NAME}:{GRPC}\"]\nallow_unauthenticated_public = true\n{}[rlp]\naddr = \"{}\"\n{}\
             [gateway]\naddr = \"{}:8088\"\n[websocket]\naddr = \"{}:8081\"\n",
            tls_table("doppler_tls", &pki.client_files()),
            at(host, RLP),
            tls_table("rlp.tls", &pki.server_files()),
            host.ip,
            host.ip,
        );
        let args = config_args("traffic-controller", file("tc", &config));
        procs.push(
            Proc::start_with("traffic-controller", &host.exec(), &args, &[at(host, RLP)], at(host, METRICS)).await,
        );
        rlp = Some(at(host, RLP));
    }
    let cache_hosts = &hosts.caches[..shape.caches];
    let node_addrs: Vec<String> = cache_hosts.iter().map(|h| format!("\"{}\"", at(h, LOG_CACHE))).collect();
    for (i, host) in cache_hosts.iter().enumerate() {
        let name = format!("log-cache-{i}");
        let config = format!(
            "grpc_addr = \"{}\"\nhttp_addr = \"{}\"\nnode_addrs = [{}]\nnode_index = {i}\n\
             memory_limit_bytes = {STORE_BYTES}\n{}[nozzle]\naddrs = [\"{DOPPLER_NAME}:{GRPC}\"]\n{}[syslog]\nenabled = false\n",
            at(host, LOG_CACHE),
            at(host, LOG_CACHE_HTTP),
            node_addrs.join(", "),
            tls_table("tls", &pki.server_files()),
            tls_table("nozzle.tls", &pki.client_files()),
        );
        let args = config_args("log-cache", file(&name, &config));
        let listens = [at(host, LOG_CACHE), at(host, LOG_CACHE_HTTP)];
        procs.push(Proc::start_with(&name, &host.exec(), &args, &listens, at(host, METRICS)).await);
    }
    let mut agents = Vec::new();
    for (i, host) in agent_hosts.iter().enumerate() {
        let name = format!("agent-{}", i + 1);
        let config = format!(
            "grpc_addr = \"{}\"\ndopplers = [\"{DOPPLER_NAME}:{GRPC}\"]\n{}{}",
            at(host, AGENT),
            tls_table("tls", &pki.server_files()),
            tls_table("doppler_tls", &pki.client_files())
        );
        let args = config_args("agent", file(&name, &config));
        procs.push(Proc::start_with(&name, &host.exec(), &args, &[at(host, AGENT)], at(host, METRICS)).await);
        agents.push(at(host, AGENT));
    }
    // Ready when every Doppler holds its readers' subscriptions: the RLP's (one per stream, made
    // when the load generator subscribes) come later, so only the nozzles' are awaited here.
    if shape.caches > 0 {
        for doppler in procs.iter().filter(|p| p.name.starts_with("doppler")) {
            let (ok, m) = doppler.scrape_until(|m| m.sum("subscriptions", &[]) >= shape.caches as u64).await;
            assert!(ok, "{} has no nozzle subscriptions:\n{}", doppler.name, m.0);
        }
    }
    let log_cache_http = cache_hosts.first().map(|h| at(h, LOG_CACHE_HTTP));
    Deployment { procs, agents, rlp, log_cache_http, _dns: dns }
}

/// One load generator run at `rate` (envelopes/s or `max`; `--json`), or `None` when it failed.
/// With `baseline`, the run starts with the same workload into the load generator's null sink.
fn run_loadgen(d: &Deployment, pki: &TestPki, rate: &str, duration: u64, baseline: bool) -> Option<Value> {
    let join = |addrs: &[String]| addrs.join(",");
    let client = pki.client_files();
    let mut command = Command::new(loadgen_binary());
    command
        .args(["--rate", rate, "--duration", &duration.to_string(), "--json"])
        .args(WORKLOAD)
        .arg("--ingress")
        .arg(join(&d.agents.iter().map(ToString::to_string).collect::<Vec<_>>()))
        .arg("--metrics")
        .arg(join(&d.procs.iter().map(|p| format!("http://{}/metrics", p.metrics)).collect::<Vec<_>>()))
        .arg("--pid")
        .arg(join(&d.procs.iter().map(|p| format!("{}={}", p.name, p.pid())).collect::<Vec<_>>()))
        .arg("--ca")
        .arg(&client.ca_file)
        .arg("--cert")
        .arg(&client.cert_file)
        .arg("--key")
        .arg(&client.key_file)
        .args(["--ingress-server-name", "metron", "--egress-server-name", "reverselogproxy"]);
    if let Some(rlp) = d.rlp {
        command.args(["--egress", &rlp.to_string(), "--subscribers", "1"]);
    } else {
        command.args(["--subscribers", "0"]);
    }
    if let Some(http) = d.log_cache_http {
        command.args(["--log-cache", &format!("http://{http}")]);
    }
    if baseline {
        command.arg("--baseline");
    }
    let output = command.output().expect("runs the load generator");
    if !output.status.success() {
        eprintln!("scale: loadgen failed at {rate}/s: {}", String::from_utf8_lossy(&output.stderr));
        return None;
    }
    serde_json::from_slice(&output.stdout).ok()
}

/// What one run measured of the pipeline phase.
#[derive(Clone, Debug, Default)]
struct Run {
    rate: u64,
    sent_per_second: f64,
    loss_pct: f64,
    p99_ms: f64,
    steal_pct: f64,
    /// (component, CPU µs per envelope sent), in deployment order.
    cpu: Vec<(String, f64)>,
    /// (component, peak RSS MiB).
    rss: Vec<(String, f64)>,
    /// The null pipeline's delivered rate, when asked for.
    baseline: Option<f64>,
}

impl Run {
    fn of(rate: u64, report: &Value) -> Run {
        let phases = report["phases"].as_array().cloned().unwrap_or_default();
        let phase = |name: &str| phases.iter().find(|p| p["phase"] == name).cloned();
        let pipeline = phases.last().cloned().unwrap_or_default();
        let f = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        let named = |key: &str, field: &str| -> Vec<(String, f64)> {
            let list = pipeline[key].as_array().cloned().unwrap_or_default();
            list.iter().map(|c| (c["name"].as_str().unwrap_or("?").to_string(), f(&c[field]))).collect()
        };
        Run {
            rate,
            sent_per_second: f(&pipeline["sent_per_second"]),
            loss_pct: f(&pipeline["loss_pct"]),
            p99_ms: f(&pipeline["latency"]["p99_ms"]),
            steal_pct: pipeline["steal_pct"].as_f64().unwrap_or(0.0),
            cpu: named("cpu", "cpu_s_per_million"),
            rss: named("memory", "peak_rss_mib"),
            baseline: phase("baseline").map(|b| f(&b["delivered_per_second"])),
        }
    }

    /// Lossless (< 0.1 %) at the rate asked for (the load generator offered ≥ 97 % of it).
    fn ok(&self) -> bool {
        self.loss_pct < 0.1 && self.sent_per_second >= 0.97 * self.rate as f64
    }

    fn line(&self, shape: &str, what: &str) -> String {
        let cpu: Vec<String> = self.cpu.iter().map(|(n, c)| format!("{n} {c:.2}")).collect();
        format!(
            "scale: {shape} {what} {:>7}/s: sent {:.0}/s, loss {:.4} %, p99 {:.1} ms, steal {:.1} %, cpu µs/env [{}] -> {}",
            self.rate,
            self.sent_per_second,
            self.loss_pct,
            self.p99_ms,
            self.steal_pct,
            cpu.join(", "),
            if self.ok() { "ok" } else { "fail" }
        )
    }
}

/// The CPU µs per envelope of every process whose name starts with `role`, summed.
fn role_cpu(run: &Run, role: &str) -> f64 {
    run.cpu.iter().filter(|(n, _)| n.starts_with(role)).map(|(_, c)| c).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a benchmark in release: benches/multihost-scale.sh runs it (as root)"]
async fn scale_across_hosts() {
    netns::require_root_and_tools();
    let duration = env_u64("SCALE_DURATION", 8);
    let fixed = env_u64("SCALE_FIXED_RATE", 50_000);
    let (low, high) = (env_u64("SCALE_LOW", 20_000), env_u64("SCALE_HIGH", 1_600_000));
    let wanted = std::env::var("SCALE_SHAPES").unwrap_or_default();
    let shapes: Vec<Shape> =
        SHAPES.iter().copied().filter(|s| wanted.is_empty() || wanted.split(',').any(|w| w == s.name)).collect();
    assert!(!shapes.is_empty(), "SCALE_SHAPES names none of {:?}", SHAPES.map(|s| s.name));
    let dir = TempDir::new("multihost-scale");
    let pki = TestPki::new(&["doppler", "reverselogproxy", "log-cache", "metron"]);
    let mut net = Network::create();
    let hosts = Hosts::create(&mut net);
    let (mut table, mut baseline) = (Vec::new(), None);
    for shape in shapes {
        let deployment = deploy(shape, &hosts, &dir, &pki).await;
        if baseline.is_none() {
            // The transport baseline: the same workload into the load generator's null sink, as
            // fast as it goes (benches/find-max.sh's), once.
            let run = run_loadgen(&deployment, &pki, "max", 3, true).map(|r| Run::of(0, &r));
            baseline = run.and_then(|r| r.baseline);
            eprintln!("scale: baseline (null sink, same workload) {baseline:?} envelopes/s");
        }
        if shape.caches > 0 {
            let warm = run_loadgen(&deployment, &pki, &WARM_UP_RATE.to_string(), WARM_UP_SECONDS, false);
            if let Some(warm) = warm.map(|r| Run::of(WARM_UP_RATE, &r)) {
                eprintln!("{}", warm.line(shape.name, "warm-up"));
            }
            for node in deployment.procs.iter().filter(|p| p.name.starts_with("log-cache")) {
                let (full, m) = node.scrape_until(|m| m.sum("expired", &[("reason", "memory")]) > 0).await;
                assert!(full, "{}'s store is not full after the warm-up:\n{}", node.name, m.0);
            }
        }
        let at_fixed = run_loadgen(&deployment, &pki, &fixed.to_string(), duration, false).map(|r| Run::of(fixed, &r));
        let at_fixed = at_fixed.unwrap_or_else(|| panic!("{}: the fixed-rate run failed", shape.name));
        eprintln!("{}", at_fixed.line(shape.name, "fixed"));
        assert!(at_fixed.ok(), "{}: not lossless at {fixed}/s: {at_fixed:?}", shape.name);
        // Bisection between a known-good and a known-bad rate, to within 5 %.
        let (mut lo, mut hi) = (low, high);
        let mut best: Option<Run> = None;
        while hi - lo > lo / 20 {
            let mid = (lo + hi) / 2;
            let run = run_loadgen(&deployment, &pki, &mid.to_string(), duration, false);
            let run = run.map(|r| Run::of(mid, &r)).unwrap_or_default();
            let run = Run { rate: mid, ..run };
            eprintln!("{}", run.line(shape.name, "search"));
            if run.ok() {
                lo = mid;
                best = Some(run);
            } else {
                hi = mid;
            }
        }
        let cpu_at_fixed: Vec<String> = ["agent", "doppler", "traffic-controller", "log-cache"]
            .iter()
            .map(|role| (role, role_cpu(&at_fixed, role)))
            .filter(|(_, c)| *c > 0.0)
            .map(|(role, c)| format!("{role} {c:.2}"))
            .collect();
        let rss: Vec<String> = at_fixed.rss.iter().map(|(n, m)| format!("{n} {m:.1}")).collect();
        let best_text = match &best {
            Some(b) => format!("{} k/s (p99 {:.1} ms, steal {:.1} %)", b.rate / 1000, b.p99_ms, b.steal_pct),
            None => format!("< {} k/s", low / 1000),
        };
        let ratio = |rate: u64| baseline.map(|b| format!("{:.0} %", 100.0 * rate as f64 / b)).unwrap_or_default();
        table.push(format!(
            "| {} | {} | {} {} | {fixed}/s: p99 {:.1} ms; CPU µs/envelope {}; loadgen {:.2} | {} |",
            shape.name,
            shape.dopplers,
            best_text,
            best.as_ref().map(|b| ratio(b.rate)).unwrap_or_default(),
            at_fixed.p99_ms,
            cpu_at_fixed.join(", "),
            at_fixed.cpu.iter().find(|(n, _)| n == "loadgen").map(|(_, c)| *c).unwrap_or(f64::NAN),
            rss.join(", "),
        ));
        drop(deployment);
    }
    eprintln!("scale: baseline {baseline:?}/s");
    eprintln!("scale: | shape | Dopplers | max lossless (of the baseline) | at the fixed rate | peak RSS MiB |");
    for row in table {
        eprintln!("scale: {row}");
    }
}
