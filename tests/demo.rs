//! `loggregator --demo`'s traffic, as a newcomer sees it: every demo app in log-cache's meta, logs
//! with ERR lines and multi-line stack traces, the gauges and counter the console charts, and the
//! noisy neighbour the noisiest.

mod common;

use common::{http_get, DEADLINE};
use loggregator::pipeline::{Pipeline, PipelineConfig};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

async fn get_json(url: &str) -> serde_json::Value {
    let (status, body) = http_get(url).await;
    assert_eq!(status, 200, "{url}: {body}");
    serde_json::from_str(&body).expect("JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_traffic_fills_every_view() {
    let pipeline = Pipeline::bind(PipelineConfig::ephemeral()).await.expect("pipeline binds");
    let endpoints = pipeline.endpoints().clone();
    let stop = CancellationToken::new();
    tokio::spawn(pipeline.serve(stop.clone().cancelled_owned()));
    tokio::spawn(loggregator::demo::run(endpoints.agent_grpc, stop.clone()));
    let lc = format!("http://{}", endpoints.log_cache_http);

    // Every app appears, and the noisy one leads by count (it writes 300 lines a second).
    let apps: Vec<&str> = loggregator::demo::APPS.iter().map(|(a, _)| *a).collect();
    let deadline = Instant::now() + DEADLINE;
    let meta = loop {
        let meta = get_json(&format!("{lc}/api/v1/meta")).await;
        let count = |s: &str| meta["meta"][s]["count"].as_str().and_then(|c| c.parse::<u64>().ok()).unwrap_or(0);
        let all_there = apps.iter().all(|a| count(a) > 0) && count(loggregator::demo::NOISY_APP) > 0;
        if all_there && apps.iter().all(|a| count(loggregator::demo::NOISY_APP) > count(a)) {
            break meta;
        }
        assert!(Instant::now() < deadline, "demo apps in meta: {meta}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    drop(meta);

    // The checkout app's logs have several instances, an ERR stack trace of several lines, and
    // access log lines.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let read = get_json(&format!("{lc}/api/v1/read/checkout?envelope_types=LOG&limit=1000&descending=true")).await;
        let batch = read["envelopes"]["batch"].as_array().cloned().unwrap_or_default();
        let instances: std::collections::HashSet<&str> =
            batch.iter().filter_map(|e| e["instance_id"].as_str()).collect();
        let err_traces = batch
            .iter()
            .filter(|e| e["log"]["type"] == "ERR")
            .filter_map(|e| e["log"]["payload"].as_str())
            .filter_map(base64_decode)
            .filter(|text| text.lines().count() >= 3)
            .count();
        if instances.len() == 3 && err_traces > 0 && batch.len() > 50 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "checkout logs: {} envelopes, instances {instances:?}, ERR traces {err_traces}",
            batch.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The gauges and the counter the console charts answer PromQL, per instance.
    for (query, series) in [("cpu", 3), ("memory", 3), ("disk", 3), ("requests", 3)] {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let url = format!("{lc}/api/v1/query?query={query}%7Bsource_id%3D%22checkout%22%7D");
            let answer = get_json(&url).await;
            let result = answer["data"]["result"].as_array().cloned().unwrap_or_default();
            if result.len() == series {
                let value: f64 = result[0]["value"][1].as_str().unwrap().parse().unwrap();
                assert!(value.is_finite() && value > 0.0, "{query}: {answer}");
                break;
            }
            assert!(Instant::now() < deadline, "{query}: {answer}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    stop.cancel();
}

fn base64_decode(text: &str) -> Option<String> {
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD.decode(text).ok()?;
    String::from_utf8(bytes).ok()
}
