//! The client commands as a user runs them: the `loggregator` binary against a real pipeline on
//! ephemeral ports, its stdout and stderr read back.

mod common;

use std::io::{BufRead as _, BufReader, Write as _};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{now_ns, DEADLINE};
use loggregator::pipeline::{Endpoints, Pipeline, PipelineConfig};
use loggregator_proto::bytes::Bytes;
use loggregator_proto::tonic::transport::Endpoint;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, Envelope, EnvelopeBatch};
use plumbing::test_support::wait_until;
use plumbing::Registry;
use tokio_util::sync::CancellationToken;

struct Running {
    endpoints: Endpoints,
    registry: Registry,
    stop: CancellationToken,
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn pipeline() -> Running {
    let pipeline = Pipeline::bind(PipelineConfig::ephemeral()).await.expect("pipeline binds");
    let endpoints = pipeline.endpoints().clone();
    let registry = pipeline.registry();
    let stop = CancellationToken::new();
    tokio::spawn(pipeline.serve(stop.clone().cancelled_owned()));
    // Log-cache's nozzle and the RLP's own subscriptions reach the Doppler.
    assert!(
        wait_until(DEADLINE, || registry.sum("subscriptions", &[("component", "doppler")]) >= 1).await,
        "log-cache subscribed"
    );
    Running { endpoints, registry, stop }
}

/// The binary with the pipeline's addresses in the environment, as a user would export them.
fn cli(p: &Running) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_loggregator"));
    command
        .env("TZ", "UTC")
        .env("LOG_CACHE_ADDR", format!("http://{}", p.endpoints.log_cache_http))
        .env("LOGGREGATOR_GATEWAY", format!("http://{}", p.endpoints.rlp_gateway))
        .env("LOGGREGATOR_AGENT", p.endpoints.agent_grpc.to_string())
        .env("LOGGREGATOR_RLP", p.endpoints.rlp_grpc.to_string())
        .env("LOGGREGATOR_METRICS", format!("http://{}/metrics", p.endpoints.metrics))
        .env_remove("LOGGREGATOR_TOKEN")
        .env_remove("RUST_LOG");
    command
}

async fn run(mut command: Command) -> Output {
    tokio::task::spawn_blocking(move || command.output().expect("the binary runs")).await.unwrap()
}

async fn run_ok(command: Command) -> String {
    let output = run(command).await;
    assert!(output.status.success(), "exit {:?}: {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("utf-8 output")
}

fn args(mut command: Command, args: &[&str]) -> Command {
    command.args(args);
    command
}

/// A child whose stdout lines arrive on a channel.
struct Streaming {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Streaming {
    fn spawn(mut command: Command) -> Self {
        let mut child = command.stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().expect("the binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self { child, lines }
    }

    /// Collects lines until `done` says so, or the deadline passes.
    fn collect_until(&self, deadline: Duration, mut done: impl FnMut(&[String]) -> bool) -> Vec<String> {
        let end = Instant::now() + deadline;
        let mut got = Vec::new();
        while !done(&got) {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left.max(Duration::from_millis(1))) {
                Ok(line) => got.push(line),
                Err(_) if Instant::now() >= end => break,
                Err(_) => {}
            }
        }
        got
    }
}

impl Drop for Streaming {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn log(source: &str, text: &str, err: bool) -> Envelope {
    Envelope {
        timestamp: now_ns(),
        source_id: source.into(),
        instance_id: "0".into(),
        tags: [("source_type".to_string(), "APP/PROC/WEB".to_string())].into(),
        message: Some(Message::Log(v2::Log { payload: Bytes::from(text.to_string()), r#type: i32::from(err) })),
        ..Default::default()
    }
}

async fn send(p: &Running, envelopes: Vec<Envelope>) {
    let channel = Endpoint::from_shared(format!("http://{}", p.endpoints.agent_grpc)).unwrap().connect().await.unwrap();
    IngressClient::new(channel)
        .batch_sender(futures::stream::iter([EnvelopeBatch { batch: envelopes }]))
        .await
        .unwrap();
}

/// Waits until log-cache has stored `n` envelopes in all.
async fn stored(p: &Running, n: u64) {
    let registry = p.registry.clone();
    assert!(
        wait_until(DEADLINE, || registry.sum("ingress", &[("component", "log-cache")]) >= n).await,
        "log-cache stored {n} envelopes"
    );
}

fn is_cf_line(line: &str, kind: &str, text: &str) -> bool {
    let re = regex::Regex::new(&format!(
        r"^   \d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d\d\+0000 \[APP/PROC/WEB/0\] {kind} {}$",
        regex::escape(text)
    ))
    .unwrap();
    re.is_match(line)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_then_logs_recent_prints_the_cf_cli_lines() {
    let p = pipeline().await;
    // From stdin, one envelope a line.
    let mut emit = args(cli(&p), &["emit", "app-1"]);
    let mut child = emit.stdin(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"first line\nsecond line\n").unwrap();
    assert!(child.wait().unwrap().success());
    // From the arguments: an ERR line and a payload of two lines.
    run_ok(args(cli(&p), &["emit", "app-1", "--err", "disk", "full"])).await;
    run_ok(args(cli(&p), &["emit", "app-1", "multi\nline"])).await;
    stored(&p, 4).await;

    let out = run_ok(args(cli(&p), &["logs", "app-1", "--recent"])).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 5, "{out}");
    assert!(is_cf_line(lines[0], "OUT", "first line"), "{out}");
    assert!(is_cf_line(lines[1], "OUT", "second line"), "{out}");
    assert!(is_cf_line(lines[2], "ERR", "disk full"), "{out}");
    assert!(is_cf_line(lines[3], "OUT", "multi"), "{out}");
    assert!(is_cf_line(lines[4], "OUT", "line"), "{out}");
    // The two parts of one envelope carry the same header.
    assert_eq!(lines[3][..48], lines[4][..48]);
    // A pipe gets no colour codes.
    assert!(!out.contains('\x1b'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follows_live_and_loses_or_repeats_nothing_at_the_seam() {
    let p = pipeline().await;
    // An emitter writes numbered lines before, while and after `logs` starts, so some are only in
    // log-cache, some only on the stream, and some in both.
    const LINES: usize = 1500;
    let agent = p.endpoints.agent_grpc;
    let emitter = tokio::spawn(async move {
        let channel = Endpoint::from_shared(format!("http://{agent}")).unwrap().connect().await.unwrap();
        let mut client = IngressClient::new(channel);
        for chunk in 0..LINES / 10 {
            let batch: Vec<Envelope> =
                (0..10).map(|i| log("app-2", &format!("line {}", chunk * 10 + i), false)).collect();
            client.batch_sender(futures::stream::iter([EnvelopeBatch { batch }])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    stored(&p, 200).await;
    let logs = Streaming::spawn(args(cli(&p), &["logs", "app-2"]));
    let got = tokio::task::spawn_blocking(move || {
        let got = logs.collect_until(DEADLINE, |got| got.iter().filter(|l| l.contains("] OUT line ")).count() >= LINES);
        // Anything repeated would arrive within the catch-up; wait for the seam to pass.
        let more = logs.collect_until(Duration::from_secs(4), |_| false);
        got.into_iter().chain(more).collect::<Vec<_>>()
    })
    .await
    .unwrap();
    emitter.await.unwrap();
    let mut counts = vec![0; LINES];
    for line in &got {
        let n: usize = line.rsplit(' ').next().unwrap().parse().expect("a numbered line");
        counts[n] += 1;
    }
    let missing: Vec<usize> = (0..LINES).filter(|&i| counts[i] == 0).collect();
    let repeated: Vec<usize> = (0..LINES).filter(|&i| counts[i] > 1).collect();
    assert!(missing.is_empty(), "missing lines {missing:?}");
    assert!(repeated.is_empty(), "repeated lines {repeated:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_prints_every_type_and_follows_as_json() {
    let p = pipeline().await;
    run_ok(args(cli(&p), &["emit", "app-3", "--type", "gauge", "cpu=12.5%", "memory=2048bytes"])).await;
    run_ok(args(cli(&p), &["emit", "app-3", "--type", "counter", "requests=3"])).await;
    run_ok(args(cli(&p), &["emit", "app-3", "--type", "event", "deploy", "v42", "rolled", "out"])).await;
    run_ok(args(cli(&p), &["emit", "app-3", "hello"])).await;
    stored(&p, 4).await;

    let out = run_ok(args(cli(&p), &["tail", "app-3"])).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[0].ends_with("[app-3/0] GAUGE cpu:12.500000 % memory:2048.000000 bytes"), "{out}");
    assert!(lines[1].ends_with("[app-3/0] COUNTER requests:3"), "the agent totals the delta: {out}");
    assert!(lines[2].ends_with("[app-3/0] EVENT deploy:v42 rolled out"), "{out}");
    assert!(lines[3].ends_with("[APP/PROC/WEB/0] OUT hello"), "{out}");

    let metrics = run_ok(args(cli(&p), &["tail", "app-3", "-c", "metrics", "--name-filter", "^req"])).await;
    assert_eq!(metrics.lines().count(), 1, "{metrics}");
    let one = run_ok(args(cli(&p), &["tail", "app-3", "-n", "1", "-t", "gauge"])).await;
    assert!(one.contains("GAUGE cpu"), "{one}");

    // Follow: what arrives later prints once each, as protojson.
    let follow = Streaming::spawn(args(cli(&p), &["tail", "app-3", "-f", "-n", "1", "--json"]));
    // The last envelope so far comes first; only then is what follows "later".
    let (follow, mut got) = tokio::task::spawn_blocking(move || {
        let first = follow.collect_until(DEADLINE, |got| !got.is_empty());
        (follow, first)
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 1, "{got:?}");
    run_ok(args(cli(&p), &["emit", "app-3", "after", "one"])).await;
    run_ok(args(cli(&p), &["emit", "app-3", "after", "two"])).await;
    got.extend(
        tokio::task::spawn_blocking(move || follow.collect_until(DEADLINE, |got| got.len() >= 2)).await.unwrap(),
    );
    assert_eq!(got.len(), 3, "{got:?}");
    let payloads: Vec<String> = got
        .iter()
        .map(|line| {
            let json: serde_json::Value = serde_json::from_str(line).expect("a protojson envelope");
            assert_eq!(json["source_id"], "app-3");
            json["log"]["payload"].as_str().unwrap().to_string()
        })
        .collect();
    // base64 of "hello", "after one", "after two"
    assert_eq!(payloads, ["aGVsbG8=", "YWZ0ZXIgb25l", "YWZ0ZXIgdHdv"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_lists_sources_and_their_noise() {
    let p = pipeline().await;
    send(&p, (0..30).map(|i| log("noisy", &format!("n{i}"), false)).collect()).await;
    send(&p, vec![log("quiet", "q", false)]).await;
    stored(&p, 31).await;
    let out = run_ok(args(cli(&p), &["meta"])).await;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "Source  Count  Expired  Cache Duration", "{out}");
    assert!(lines.iter().any(|l| l.starts_with("noisy   30     0        ")), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("quiet   1      0        0s")), "{out}");

    let out = run_ok(args(cli(&p), &["meta", "--noise", "--sort-by", "rate"])).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].ends_with("Cache Duration  Rate"), "{out}");
    assert!(lines[1].starts_with("noisy") && lines[1].ends_with(" 30"), "{out}");
    assert!(lines[2].starts_with("quiet") && lines[2].ends_with(" 1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_prints_instant_and_range_results_and_the_servers_errors() {
    let p = pipeline().await;
    run_ok(args(cli(&p), &["emit", "app-4", "--type", "gauge", "cpu=12.5%"])).await;
    stored(&p, 1).await;
    let out = run_ok(args(cli(&p), &["query", r#"cpu{source_id="app-4"}"#])).await;
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("Series") && lines[0].ends_with("Value"), "{out}");
    assert!(lines[1].contains(r#"source_id="app-4""#), "{out}");
    assert!(lines[1].ends_with(" 12.5"), "{out}");

    let out = run_ok(args(
        cli(&p),
        &["query", r#"cpu{source_id="app-4"}"#, "--start", "-1m", "--end", "now", "--step", "10s", "--chart", "always"],
    ))
    .await;
    assert!(out.starts_with("Series"), "{out}");
    assert!(out.contains("12.5"), "{out}");
    assert!(out.chars().any(|c| ('▁'..='█').contains(&c)), "a chart: {out}");

    let bad = run(args(cli(&p), &["query", "cpu{"])).await;
    assert!(!bad.status.success());
    let stderr = String::from_utf8(bad.stderr).unwrap();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.starts_with(&format!("loggregator: log-cache at http://{}: ", p.endpoints.log_cache_http)),
        "{stderr}"
    );
    assert!(stderr.contains("(HTTP 400)"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_one_line_naming_it() {
    // A port nothing listens on: bind one, note it, close it.
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    for argv in [
        vec!["logs", "x", "--recent", "--log-cache"],
        vec!["tail", "x", "--log-cache"],
        vec!["meta", "--log-cache"],
        vec!["logs", "x", "--gateway"],
    ] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_loggregator"));
        command.args(&argv).arg(format!("http://{free}"));
        let out = run(command).await;
        assert!(!out.status.success(), "{argv:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{argv:?}: {stderr}");
        assert!(stderr.starts_with("loggregator: cannot reach ") && stderr.contains(&free.to_string()), "{stderr}");
    }
    let mut command = Command::new(env!("CARGO_BIN_EXE_loggregator"));
    command.args(["emit", "x", "hi", "--agent", &free.to_string()]);
    let out = run(command).await;
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(stderr.starts_with(&format!("loggregator: cannot reach the agent at {free}: ")), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_ranks_the_noisiest_source_and_shows_each_hop() {
    let p = pipeline().await;
    let agent = p.endpoints.agent_grpc;
    let stop = CancellationToken::new();
    let emitting = stop.clone();
    let emitter = tokio::spawn(async move {
        let channel = Endpoint::from_shared(format!("http://{agent}")).unwrap().connect().await.unwrap();
        let mut client = IngressClient::new(channel);
        while !emitting.is_cancelled() {
            let mut batch: Vec<Envelope> = (0..20).map(|i| log("loud-app", &format!("l{i}"), false)).collect();
            batch.push(log("calm-app", "c", false));
            client.batch_sender(futures::stream::iter([EnvelopeBatch { batch }])).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let out = run_ok(args(cli(&p), &["top", "--count", "3", "--interval", "1"])).await;
    stop.cancel();
    emitter.await.unwrap();
    // The last frame: the loud source first, and the Doppler's ingress counted.
    let frames: Vec<&str> = out.split("loggregator top: ").filter(|f| !f.is_empty()).collect();
    assert_eq!(frames.len(), 3, "{out}");
    let last = frames[2];
    let rows: Vec<&str> = last.lines().skip_while(|l| !l.starts_with("Source")).skip(1).take(2).collect();
    assert!(rows[0].starts_with("loud-app"), "{last}");
    assert!(rows[1].starts_with("calm-app"), "{last}");
    assert!(last.lines().any(|l| l.starts_with("doppler") && l.contains("ingress")), "{last}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn component_logs_are_plain_text_in_a_pipe_and_json_on_request() {
    for (format, check) in [("text", false), ("json", true)] {
        let mut command = Command::new(env!("CARGO_BIN_EXE_loggregator"));
        command.args([
            "doppler",
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "127.0.0.1:0",
            "--log-format",
            format,
        ]);
        command.env_remove("RUST_LOG");
        let doppler = Streaming::spawn(command);
        let got =
            tokio::task::spawn_blocking(move || doppler.collect_until(DEADLINE, |got| !got.is_empty())).await.unwrap();
        let first = got.first().expect("the doppler logs its configuration");
        assert!(!first.contains('\x1b'), "no colour codes in a pipe: {first}");
        if check {
            let json: serde_json::Value = serde_json::from_str(first).expect("one JSON object a line");
            assert_eq!(json["level"], "INFO", "{first}");
            assert!(json["message"].is_string(), "{first}");
        } else {
            assert!(serde_json::from_str::<serde_json::Value>(first).is_err(), "{first}");
            assert!(first.contains("INFO"), "{first}");
        }
    }
}
