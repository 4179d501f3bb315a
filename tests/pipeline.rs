//! The whole pipeline in one process, as `cargo run` starts it: agent → Doppler → Log Cache nozzle →
//! store, read back over the Log Cache HTTP API, with every hop's counters adding up.

mod common;

use common::{http_get, now_ns, DEADLINE};
use loggregator::pipeline::{Pipeline, PipelineConfig};
use loggregator_proto::bytes::Bytes;
use loggregator_proto::tonic::transport::Endpoint;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, Envelope, EnvelopeBatch};
use plumbing::test_support::wait_until;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_sent_to_the_agent_is_read_back_from_log_cache_and_counters_add_up() {
    let pipeline = Pipeline::bind(PipelineConfig::ephemeral()).await.expect("pipeline binds");
    let endpoints = pipeline.endpoints().clone();
    let registry = pipeline.registry();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(pipeline.serve(stop.clone().cancelled_owned()));

    // The Log Cache nozzle has subscribed to the Doppler.
    let subscribed = || registry.sum("subscriptions", &[("component", "doppler")]) >= 1;
    assert!(wait_until(DEADLINE, subscribed).await, "nozzle subscribed");

    const LOGS: i64 = 500;
    let base = now_ns() - 60_000_000_000;
    let mut envelopes: Vec<Envelope> = (0..LOGS)
        .map(|i| Envelope {
            timestamp: base + i,
            source_id: "app-guid".into(),
            instance_id: "0".into(),
            tags: [("source_type".to_string(), "APP/PROC/WEB".to_string())].into(),
            message: Some(Message::Log(v2::Log { payload: Bytes::from(format!("hello {i}")), r#type: 0 })),
            ..Default::default()
        })
        .collect();
    envelopes.push(Envelope {
        timestamp: base,
        source_id: "app-guid".into(),
        message: Some(Message::Gauge(v2::Gauge {
            metrics: [("memory".to_string(), v2::GaugeValue { unit: "bytes".into(), value: 1024.0 })].into(),
        })),
        ..Default::default()
    });
    let total = envelopes.len() as u64;
    let channel = Endpoint::from_shared(format!("http://{}", endpoints.agent_grpc)).unwrap().connect().await.unwrap();
    let batches: Vec<EnvelopeBatch> = envelopes.chunks(100).map(|c| EnvelopeBatch { batch: c.to_vec() }).collect();
    IngressClient::new(channel).batch_sender(futures::stream::iter(batches)).await.expect("agent accepts");

    let stored = || registry.sum("ingress", &[("component", "log-cache")]) >= total;
    assert!(wait_until(DEADLINE, stored).await, "log-cache stored everything");

    // Read the logs back as `cf logs --recent` does (§6.9), newest first.
    let url = format!(
        "http://{}/api/v1/read/app-guid?start_time=-6795364578871345152&envelope_types=LOG&limit=1000&descending=true",
        endpoints.log_cache_http
    );
    let (status, body) = http_get(&url).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("json body");
    let batch = json["envelopes"]["batch"].as_array().expect("batch array");
    assert_eq!(batch.len(), LOGS as usize);
    let newest = &batch[0];
    assert_eq!(newest["timestamp"], serde_json::json!((base + LOGS - 1).to_string()));
    assert_eq!(newest["source_id"], "app-guid");
    assert_eq!(newest["tags"]["source_type"], "APP/PROC/WEB");
    // base64 of "hello 499"
    assert_eq!(newest["log"]["payload"], "aGVsbG8gNDk5");
    assert_eq!(newest["log"]["type"], "OUT");

    // The gauge is queryable with PromQL.
    let query = format!(
        "http://{}/api/v1/query?query=memory%7Bsource_id%3D%22app-guid%22%7D&time={}",
        endpoints.log_cache_http,
        (base / 1_000_000_000) + 1
    );
    let (status, body) = http_get(&query).await;
    assert_eq!(status, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["data"]["resultType"], "vector", "{body}");
    assert_eq!(json["data"]["result"][0]["value"][1], "1024", "{body}");

    // Every hop counted every envelope, and nothing was dropped.
    let hop = |component: &str, name: &str| registry.sum(name, &[("component", component)]);
    assert_eq!(hop("agent", "ingress"), total);
    assert_eq!(hop("agent", "egress"), total);
    assert_eq!(hop("doppler", "ingress"), total);
    assert_eq!(hop("doppler", "egress"), total);
    assert_eq!(hop("log-cache", "ingress"), total);
    assert_eq!(hop("agent", "dropped") + hop("doppler", "dropped"), 0);

    // /metrics serves all of it.
    let (status, metrics) = http_get(&format!("http://{}/metrics", endpoints.metrics)).await;
    assert_eq!(status, 200);
    assert!(metrics.contains(&format!("ingress{{component=\"doppler\"}} {total}")), "{metrics}");

    stop.cancel();
    tokio::time::timeout(DEADLINE, serving).await.expect("stops in time").expect("no panic").expect("clean shutdown");
}
