//! The load generator through a spawned traffic controller, one test per subscriber kind, at a low
//! rate: every envelope must arrive (no timings asserted).

use std::process::Command;

fn loadgen(args: &[&str]) -> serde_json::Value {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report: serde_json::Value =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("JSON report ({e}); stderr:\n{stderr}"));
    assert!(output.status.success(), "{report:#}\nstderr:\n{stderr}");
    report
}

/// Every subscriber received everything sent, and the traffic controller counted it.
fn assert_every_copy(report: &serde_json::Value, subscribers: usize) {
    let phase = &report["phases"][0];
    let sent = phase["sent"].as_u64().expect("sent");
    assert!(sent > 0, "{phase:#}");
    let subs = phase["subscribers"].as_array().expect("subscribers");
    assert_eq!(subs.len(), subscribers, "{phase:#}");
    for sub in subs {
        assert_eq!(sub["received"], sent, "{phase:#}");
        assert_eq!(sub["errors"], 0, "{phase:#}");
        assert_eq!(sub["malformed"], 0, "{phase:#}");
        assert!(sub["latency"]["count"].as_u64() == Some(sent), "{phase:#}");
    }
    let sources: Vec<&str> =
        phase["hops"].as_array().expect("hops").iter().filter_map(|h| h["source"].as_str()).collect();
    assert!(sources.contains(&"traffic-controller"), "{phase:#}");
}

fn run(kind: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "--spawn",
        "--subscriber-kind",
        kind,
        "--rate",
        "1000",
        "--duration",
        "1",
        "--batch-size",
        "10",
        "--assert-lossless",
        "--json",
    ];
    args.extend_from_slice(extra);
    loadgen(&args)
}

#[test]
fn grpc_through_the_rlp_over_mutual_tls() {
    let report = run("grpc", &["--traffic-controller", "--tls", "--mix", "log=8,counter=1,gauge=1"]);
    assert!(report["phases"][0]["target"].as_str().is_some_and(|t| t.contains("traffic controller")), "{report:#}");
    assert_every_copy(&report, 1);
}

#[test]
fn sse_through_the_rlp_gateway() {
    let report = run("sse", &["--tls", "--mix", "log=6,counter=1,gauge=1,timer=1,event=1"]);
    assert_every_copy(&report, 1);
}

#[test]
fn websocket_firehose() {
    let report = run("ws-firehose", &["--tls", "--mix", "log=9,counter=1", "--subscribers", "2"]);
    assert_every_copy(&report, 2);
}

#[test]
fn websocket_app_streams_of_one_app() {
    let report = run("ws-app", &["--mix", "log", "--source-ids", "1", "--subscribers", "3"]);
    assert_every_copy(&report, 3);
}
