//! PromQL (`log_cache::promql::Engine`): parsing and evaluation of any query, instant and range, on a
//! small store of counters, gauges and timers of two source ids, under a tight timeout and sample
//! budget so that one input stays cheap. A query either answers or fails with an error; it never
//! panics, and a range result holds at most one point per step per series.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use log_cache::promql::{instant_result_to_json, range_result_to_json, Engine, MetricSource};
use loggregator_proto::bytes::Bytes;
use loggregator_proto::logcache::v1::prom_ql::range_query_result;
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{envelope::Message, Counter, Envelope, Gauge, GaugeValue, Timer};

/// The store's first sample: 2023-11-14T22:13:20Z, in seconds.
const T0: i64 = 1_700_000_000;
/// Samples every 15 s for three minutes.
const SAMPLES: i64 = 12;

struct SmallStore(Vec<Envelope>);

impl MetricSource for SmallStore {
    fn read_metric_envelopes(&self, source_id: &str, start_ns: i64, end_ns: i64, _max: usize) -> Vec<Bytes> {
        self.0
            .iter()
            .filter(|e| e.source_id == source_id && (start_ns..=end_ns).contains(&e.timestamp))
            .map(|e| Bytes::from(e.encode_to_vec()))
            .collect()
    }
}

fn store() -> Vec<Envelope> {
    let mut out = Vec::new();
    for i in 0..SAMPLES {
        let timestamp = (T0 + 15 * i) * 1_000_000_000;
        for (source, instance) in [("a", "0"), ("a", "1"), ("b", "0")] {
            let envelope = |message| Envelope {
                timestamp,
                source_id: source.to_owned(),
                instance_id: instance.to_owned(),
                tags: [("deployment".to_owned(), "cf".to_owned()), ("job".to_owned(), source.to_owned())].into(),
                message: Some(message),
                ..Default::default()
            };
            let n = i as f64;
            out.push(envelope(Message::Counter(Counter { name: "requests".into(), delta: 3, total: 3 * i as u64 })));
            out.push(envelope(Message::Gauge(Gauge {
                metrics: [
                    ("cpu".to_owned(), GaugeValue { unit: "percentage".into(), value: n * 1.5 - 4.0 }),
                    ("memory".to_owned(), GaugeValue { unit: "bytes".into(), value: 1e9 / (n + 1.0) }),
                ]
                .into(),
            })));
            out.push(envelope(Message::Timer(Timer {
                name: "http".into(),
                start: timestamp,
                stop: timestamp + 5_000,
            })));
        }
    }
    out
}

fn engine() -> &'static Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| Engine::new(Arc::new(SmallStore(store())), Duration::from_millis(200), 20_000))
}

/// The input (lossily UTF-8) is `query[\0time[\0start\0end\0step]]`; missing parameters are fixed
/// instants inside the store's range.
pub fn fuzz(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.split('\0');
    let query = parts.next().unwrap_or_default();
    let t_mid = (T0 + 120).to_string();
    let time = parts.next().unwrap_or(&t_mid);
    if let Ok(result) = engine().instant_query(query, time) {
        let _ = instant_result_to_json(&result);
    }
    let (start, end) = (T0.to_string(), (T0 + 150).to_string());
    let start = parts.next().unwrap_or(&start);
    let end = parts.next().unwrap_or(&end);
    let step = parts.next().unwrap_or("15");
    if let Ok(result) = engine().range_query(query, start, end, step) {
        let _ = range_result_to_json(&result);
        if let Some(range_query_result::Result::Matrix(matrix)) = &result.result {
            for series in &matrix.series {
                assert!(series.points.len() <= 11_000, "more points than a range query may have");
            }
        }
    }
}
