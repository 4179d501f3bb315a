//! `loggregator --demo`: an emitter of realistic traffic into the all-in-one, so one command shows
//! logs in the terminal and charts in the console at once. It talks to the agent's public v2 gRPC
//! ingress like any emitter.
//!
//! Three apps with several instances write access logs (some ERR, some multi-line stack traces),
//! gauges (`cpu`, `memory`, `disk`) and a `requests` counter every second; one noisy app floods
//! logs at [`NOISY_RATE`] so `loggregator top` has a neighbour to find.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use loggregator_proto::bytes::Bytes;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, Envelope, EnvelopeBatch};
use tokio_util::sync::CancellationToken;

/// Apps and their instance counts.
pub const APPS: &[(&str, u32)] = &[("checkout", 3), ("catalog", 2), ("payments", 2)];
/// The noisy neighbour.
pub const NOISY_APP: &str = "chatty-batch";
/// Lines per second of the noisy app.
const NOISY_RATE: u32 = 300;
/// Ticks per second: logs spread over the second instead of arriving in one burst.
const TICKS: u32 = 10;

const PATHS: &[&str] = &["/", "/cart", "/api/items", "/api/items/42", "/checkout", "/health", "/api/pay"];

fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn envelope(source: &str, instance: u32, message: Message) -> Envelope {
    let mut tags = std::collections::HashMap::new();
    if matches!(message, Message::Log(_)) {
        tags.insert("source_type".to_string(), "APP/PROC/WEB".to_string());
    }
    tags.insert("app_name".to_string(), source.to_string());
    Envelope {
        timestamp: now_nanos(),
        source_id: source.to_string(),
        instance_id: instance.to_string(),
        tags,
        message: Some(message),
        ..Default::default()
    }
}

fn log(source: &str, instance: u32, text: String, err: bool) -> Envelope {
    envelope(source, instance, Message::Log(v2::Log { payload: Bytes::from(text), r#type: i32::from(err) }))
}

/// One instance's state: what its gauges drift around.
struct Instance {
    app: &'static str,
    index: u32,
    cpu: f64,
    memory: f64,
    disk: f64,
}

/// The envelopes of one tick of one instance.
fn tick(rng: &mut fastrand::Rng, instance: &mut Instance, second_boundary: bool, out: &mut Vec<Envelope>) {
    let (app, i) = (instance.app, instance.index);
    let requests = rng.u32(1..6);
    for _ in 0..requests {
        let path = PATHS[rng.usize(..PATHS.len())];
        let ms = rng.u32(3..250);
        let status = match rng.u32(..100) {
            0..=1 => 500,
            2..=5 => 404,
            _ => 200,
        };
        let line = format!(
            "10.0.{}.{} - - \"GET {path} HTTP/1.1\" {status} {} {ms}ms vcap_request_id:{:08x}",
            rng.u8(..),
            rng.u8(1..255),
            rng.u32(200..9000),
            rng.u32(..)
        );
        out.push(log(app, i, line, false));
        if status == 500 {
            let trace = format!(
                "ERROR handling {path}: upstream timed out\n    at {app}.handlers.serve ({app}/handlers.go:{})\n    at net/http.HandlerFunc.ServeHTTP (server.go:2136)",
                rng.u32(20..400)
            );
            out.push(log(app, i, trace, true));
        }
    }
    if second_boundary {
        instance.cpu = (instance.cpu + rng.f64() * 10.0 - 5.0).clamp(1.0, 99.0);
        instance.memory = (instance.memory + (rng.f64() - 0.48) * 8.0e6).clamp(64.0e6, 900.0e6);
        instance.disk = (instance.disk + rng.f64() * 2.0e5).min(1.0e9);
        let metrics = [
            ("cpu", "percentage", instance.cpu),
            ("memory", "bytes", instance.memory.round()),
            ("disk", "bytes", instance.disk.round()),
        ]
        .into_iter()
        .map(|(name, unit, value)| (name.to_string(), v2::GaugeValue { unit: unit.to_string(), value }))
        .collect();
        out.push(envelope(app, i, Message::Gauge(v2::Gauge { metrics })));
        let delta = u64::from(rng.u32(10..60));
        out.push(envelope(app, i, Message::Counter(v2::Counter { name: "requests".into(), delta, total: 0 })));
    }
}

/// Sends demo traffic to the agent at `agent` until `stop`; reconnects if the agent goes away.
pub async fn run(agent: std::net::SocketAddr, stop: CancellationToken) {
    let mut rng = fastrand::Rng::with_seed(0x10662e9a7);
    let mut instances: Vec<Instance> = APPS
        .iter()
        .flat_map(|&(app, count)| {
            (0..count).map(move |index| Instance { app, index, cpu: 20.0, memory: 256.0e6, disk: 100.0e6 })
        })
        .collect();
    let mut interval = tokio::time::interval(Duration::from_secs(1) / TICKS);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut ticks = 0u64;
    let mut noisy_line = 0u64;
    let mut client: Option<IngressClient<tonic::transport::Channel>> = None;
    loop {
        tokio::select! {
            _ = interval.tick() => {}
            () = stop.cancelled() => return,
        }
        let second_boundary = ticks.is_multiple_of(u64::from(TICKS));
        ticks += 1;
        let mut batch = Vec::new();
        for instance in &mut instances {
            tick(&mut rng, instance, second_boundary, &mut batch);
        }
        for _ in 0..NOISY_RATE / TICKS {
            noisy_line += 1;
            batch.push(log(NOISY_APP, 0, format!("processed record {noisy_line} of batch job nightly-export"), false));
        }
        if client.is_none() {
            match tonic::transport::Endpoint::from_shared(format!("http://{agent}")) {
                Ok(endpoint) => match endpoint.connect().await {
                    Ok(channel) => client = Some(IngressClient::new(channel)),
                    Err(error) => tracing::debug!(%error, "demo: agent not reachable yet"),
                },
                Err(error) => {
                    tracing::warn!(%error, "demo: invalid agent address");
                    return;
                }
            }
        }
        if let Some(c) = client.as_mut() {
            if let Err(status) = c.send(EnvelopeBatch { batch }).await {
                tracing::debug!(%status, "demo: send failed, reconnecting");
                client = None;
            }
        }
    }
}
