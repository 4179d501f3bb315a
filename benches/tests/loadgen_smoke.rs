//! The load generator end to end, at a low rate: every envelope must arrive (no timings asserted).

use std::process::Command;

fn loadgen(args: &[&str]) -> (bool, serde_json::Value) {
    let output = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(args).output().expect("loadgen runs");
    let stderr = String::from_utf8_lossy(&output.stderr);
    let report =
        serde_json::from_slice(&output.stdout).unwrap_or_else(|e| panic!("JSON report ({e}); stderr:\n{stderr}"));
    (output.status.success(), report)
}

#[test]
fn smoke_scenario_is_lossless_through_a_spawned_doppler() {
    let (ok, report) = loadgen(&["--scenario", "smoke", "--duration", "1", "--assert-lossless", "--json"]);
    let phase = &report["phases"][0];
    assert!(ok, "{report:#}");
    // At most 2000 (1 s at 2000/s); fewer only if a loaded machine delays the sender.
    let sent = phase["sent"].as_u64().expect("sent");
    assert!(sent > 0 && sent <= 2000, "{phase:#}");
    assert_eq!(phase["subscribers"][0]["received"], sent, "{phase:#}");
    assert_eq!(phase["hops"][0]["ingress"], sent, "{phase:#}");
}

#[test]
fn agent_and_two_dopplers_over_mutual_tls_with_a_baseline() {
    let (ok, report) = loadgen(&[
        "--spawn",
        "--agent",
        "--dopplers",
        "2",
        "--tls",
        "--subscribers",
        "2",
        "--shard-ids",
        "1",
        "--rate",
        "1000",
        "--duration",
        "1",
        "--baseline",
        "--assert-lossless",
        "--json",
    ]);
    assert!(ok, "{report:#}");
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 2);
    assert_eq!(phases[0]["phase"], "baseline");
    assert_eq!(phases[0]["groups"][0]["received"], phases[0]["sent"]);
    // Two subscribers sharing one shard id split one copy between them.
    let pipeline = &phases[1];
    assert_eq!(pipeline["groups"].as_array().map(Vec::len), Some(1), "{pipeline:#}");
    assert_eq!(pipeline["groups"][0]["received"], pipeline["sent"], "{pipeline:#}");
    assert!(report["fraction_of_baseline"].is_number());
}

#[test]
fn full_path_into_a_spawned_log_cache_is_read_back_and_read() {
    let (ok, report) = loadgen(&[
        "--scenario",
        "agent-doppler-logcache",
        "--rate",
        "2000",
        "--duration",
        "1",
        "--source-ids",
        "20",
        "--read-back",
        "--readers",
        "2",
        "--read-duration",
        "0.5",
        "--assert-lossless",
        "--json",
    ]);
    assert!(ok, "{report:#}");
    let phase = &report["phases"][0];
    let sent = phase["sent"].as_u64().expect("sent");
    assert!(sent > 0, "{phase:#}");
    assert_eq!(phase["groups"][0]["group"], "log-cache", "{phase:#}");
    assert_eq!(phase["groups"][0]["received"], sent, "{phase:#}");
    assert_eq!(phase["read_back"]["read"], sent, "{phase:#}");
    assert_eq!(phase["read_back"]["errors"], 0, "{phase:#}");
    let reads = &phase["http_reads"];
    assert!(reads["reads"].as_u64().is_some_and(|n| n > 0), "{phase:#}");
    assert_eq!(reads["errors"], 0, "{phase:#}");
}
