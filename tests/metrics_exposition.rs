//! The all-in-one's `/metrics` as Prometheus reads it: the whole exposition, with every component's
//! counters non-zero, checked by `promtool check metrics`, the parser of the Prometheus release. A
//! series Prometheus would refuse to scrape (a label name twice, as once every log-cache series
//! carried `component`) fails this test.
//!
//! promtool's *lint* findings are accepted: the original's counter names are kept on purpose
//! (`ingress`, not `ingress_total`; telemetry.rs). promtool tells them apart from parse errors by
//! its exit status (0 clean, 3 lint findings only, 1 an error) and prints parse errors as
//! `error while linting: text format parsing error in line N: …`. `scripts/test` installs promtool.

mod common;

use std::io::ErrorKind;
use std::process::{Command, Stdio};

use common::{http_get, now_ns, DEADLINE};
use loggregator::pipeline::{Pipeline, PipelineConfig};
use loggregator_proto::bytes::Bytes;
use loggregator_proto::tonic::transport::Endpoint;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, Envelope, EnvelopeBatch};
use plumbing::test_support::wait_until;
use tokio_util::sync::CancellationToken;

/// promtool's exit status when it found lint problems and nothing worse.
const PROMTOOL_LINT_ONLY: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_metrics_exposition_parses_as_prometheus_text() {
    let pipeline = Pipeline::bind(PipelineConfig::ephemeral()).await.expect("pipeline binds");
    let endpoints = pipeline.endpoints().clone();
    let registry = pipeline.registry();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(pipeline.serve(stop.clone().cancelled_owned()));
    let subscribed = || registry.sum("subscriptions", &[("component", "doppler")]) >= 1;
    assert!(wait_until(DEADLINE, subscribed).await, "nozzle subscribed");

    // Logs and a counter through the agent, so every hop's counters are non-zero.
    let base = now_ns();
    let mut envelopes: Vec<Envelope> = (0..20)
        .map(|i| Envelope {
            timestamp: base + i,
            source_id: "metrics-app".into(),
            message: Some(Message::Log(v2::Log { payload: Bytes::from(format!("line {i}")), r#type: 0 })),
            ..Default::default()
        })
        .collect();
    envelopes.push(Envelope {
        timestamp: base,
        source_id: "metrics-app".into(),
        message: Some(Message::Counter(v2::Counter { name: "requests".into(), delta: 1, total: 0 })),
        ..Default::default()
    });
    let total = envelopes.len() as u64;
    let channel = Endpoint::from_shared(format!("http://{}", endpoints.agent_grpc))
        .expect("valid endpoint")
        .connect()
        .await
        .expect("agent reachable");
    let batch = EnvelopeBatch { batch: envelopes };
    IngressClient::new(channel).batch_sender(futures::stream::iter([batch])).await.expect("agent accepts");
    let stored = || registry.sum("ingress", &[("component", "log-cache")]) >= total;
    assert!(wait_until(DEADLINE, stored).await, "log-cache stored everything");

    let (status, metrics) = http_get(&format!("http://{}/metrics", endpoints.metrics)).await;
    stop.cancel();
    tokio::time::timeout(DEADLINE, serving).await.expect("stops in time").expect("no panic").expect("clean shutdown");
    assert_eq!(status, 200, "{metrics}");

    let file = std::env::temp_dir().join(format!("loggregator-metrics-{}.prom", std::process::id()));
    std::fs::write(&file, &metrics).expect("writes the exposition");
    let verdict = promtool_check_metrics(&file);
    std::fs::remove_file(&file).ok();
    if let Err(problem) = verdict {
        panic!("{problem}\n--- /metrics ---\n{metrics}");
    }
    // What was checked is the whole pipeline's, counters included.
    for component in ["agent", "doppler", "log-cache"] {
        let series = format!("\ningress{{component=\"{component}\"}} {total}\n");
        assert!(metrics.contains(&series), "no{series}in:\n{metrics}");
    }
}

/// Runs `promtool check metrics` on `file`: `Ok` when it parsed, lint findings aside.
fn promtool_check_metrics(file: &std::path::Path) -> Result<(), String> {
    let stdin = std::fs::File::open(file).expect("reopens the exposition");
    let output = match Command::new("promtool").args(["check", "metrics"]).stdin(stdin).stderr(Stdio::piped()).output()
    {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => panic!(
            "promtool is not installed: this test checks /metrics with it. Run `scripts/test`, which \
             installs it (Debian package `prometheus`), or `apt-get install prometheus`"
        ),
        Err(error) => panic!("cannot run promtool: {error}"),
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    // Lint findings are one line per metric (`dropped counter metrics should have "_total" suffix`);
    // a parse error says "error", whatever promtool's version.
    let parsed = matches!(output.status.code(), Some(0 | PROMTOOL_LINT_ONLY));
    let error_lines: Vec<&str> = stderr.lines().filter(|line| line.to_ascii_lowercase().contains("error")).collect();
    if parsed && error_lines.is_empty() {
        return Ok(());
    }
    Err(format!("promtool check metrics refused /metrics ({}):\n{stderr}{stdout}", output.status))
}
