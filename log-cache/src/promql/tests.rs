//! Tests of the PromQL engine against hand-computed values, over an in-memory [`MetricSource`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use loggregator_proto::logcache::v1::prom_ql::{
    instant_query_result, range_query_result, InstantQueryResult, Matrix, Point, RangeQueryResult, Sample, Scalar,
    Series, Vector,
};
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{envelope, Counter, Envelope, Event, Gauge, GaugeValue, Log, Timer};

use super::params::{format_time, parse_step, parse_time};
use super::series::sanitize_metric_name;
use super::*;

/// An arbitrary whole-second instant all test data hangs off: 2023-11-14T22:13:20Z.
const T0: i64 = 1_700_000_000;

// === fixtures ===

#[derive(Default)]
struct FakeSource {
    envelopes: Vec<Envelope>,
    reads: Mutex<Vec<(String, i64, i64)>>,
}

impl MetricSource for FakeSource {
    fn read_metric_envelopes(&self, source_id: &str, start_ns: i64, end_ns: i64, _max: usize) -> Vec<Bytes> {
        if let Ok(mut reads) = self.reads.lock() {
            reads.push((source_id.to_owned(), start_ns, end_ns));
        }
        let mut out: Vec<Envelope> = self
            .envelopes
            .iter()
            .filter(|e| e.source_id == source_id && e.timestamp >= start_ns && e.timestamp <= end_ns)
            .filter(|e| {
                matches!(
                    e.message,
                    Some(envelope::Message::Counter(_))
                        | Some(envelope::Message::Gauge(_))
                        | Some(envelope::Message::Timer(_))
                )
            })
            .cloned()
            .collect();
        out.sort_by_key(|e| e.timestamp);
        out.iter().map(|e| Bytes::from(e.encode_to_vec())).collect()
    }
}

/// Nanoseconds of `T0 + offset_secs` (fractional offsets allowed).
fn ns(offset_secs: f64) -> i64 {
    T0 * 1_000_000_000 + (offset_secs * 1e9).round() as i64
}

fn base(source_id: &str, instance_id: &str, offset_secs: f64, tags: &[(&str, &str)]) -> Envelope {
    Envelope {
        timestamp: ns(offset_secs),
        source_id: source_id.to_owned(),
        instance_id: instance_id.to_owned(),
        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

fn gauge(source_id: &str, instance_id: &str, offset_secs: f64, metrics: &[(&str, f64)]) -> Envelope {
    gauge_tagged(source_id, instance_id, offset_secs, metrics, &[])
}

fn gauge_tagged(
    source_id: &str,
    instance_id: &str,
    offset_secs: f64,
    metrics: &[(&str, f64)],
    tags: &[(&str, &str)],
) -> Envelope {
    let mut e = base(source_id, instance_id, offset_secs, tags);
    e.message = Some(envelope::Message::Gauge(Gauge {
        metrics: metrics
            .iter()
            .map(|(name, value)| (name.to_string(), GaugeValue { unit: "unit".to_owned(), value: *value }))
            .collect(),
    }));
    e
}

fn counter(source_id: &str, offset_secs: f64, name: &str, total: u64) -> Envelope {
    let mut e = base(source_id, "", offset_secs, &[]);
    e.message = Some(envelope::Message::Counter(Counter { name: name.to_owned(), delta: 1, total }));
    e
}

fn engine_over(envelopes: Vec<Envelope>) -> (Engine, Arc<FakeSource>) {
    let source = Arc::new(FakeSource { envelopes, reads: Mutex::new(Vec::new()) });
    let engine = Engine::new(source.clone(), Duration::from_secs(10), 1_000_000);
    (engine, source)
}

fn engine(envelopes: Vec<Envelope>) -> Engine {
    engine_over(envelopes).0
}

/// `T0 + offset` as the float-seconds string the APIs take.
fn at(offset_secs: i64) -> String {
    (T0 + offset_secs).to_string()
}

type Labelled = Vec<(BTreeMap<String, String>, f64)>;

fn sorted(metric: &HashMap<String, String>) -> BTreeMap<String, String> {
    metric.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn instant_vector(engine: &Engine, query: &str, offset_secs: i64) -> Labelled {
    match engine.instant_query(query, &at(offset_secs)) {
        Ok(InstantQueryResult { result: Some(instant_query_result::Result::Vector(v)) }) => {
            v.samples.iter().map(|s| (sorted(&s.metric), s.point.as_ref().map_or(f64::NAN, |p| p.value))).collect()
        }
        other => panic!("{query}: expected a vector, got {other:?}"),
    }
}

/// The values of a vector result, in result order.
fn values(engine: &Engine, query: &str, offset_secs: i64) -> Vec<f64> {
    instant_vector(engine, query, offset_secs).into_iter().map(|(_, v)| v).collect()
}

/// The value of a vector result that must hold exactly one sample.
fn single(engine: &Engine, query: &str, offset_secs: i64) -> f64 {
    match values(engine, query, offset_secs).as_slice() {
        [v] => *v,
        other => panic!("{query}: expected one sample, got {other:?}"),
    }
}

fn scalar(engine: &Engine, query: &str) -> f64 {
    match engine.instant_query(query, &at(0)) {
        Ok(InstantQueryResult { result: Some(instant_query_result::Result::Scalar(s)) }) => s.value,
        other => panic!("{query}: expected a scalar, got {other:?}"),
    }
}

fn assert_close(actual: f64, expected: f64) {
    assert!((actual - expected).abs() < 1e-9, "expected {expected}, got {actual}");
}

fn error_of(result: Result<impl std::fmt::Debug, PromQLError>) -> PromQLError {
    match result {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

// === metric names, labels and values (§6.6) ===

#[test]
fn metric_names_are_sanitized_like_log_cache() {
    assert_eq!(sanitize_metric_name("cpu"), "cpu");
    assert_eq!(sanitize_metric_name("http.requests-total"), "http_requests_total");
    assert_eq!(sanitize_metric_name("1xx_count"), "_xx_count");
    assert_eq!(sanitize_metric_name("_private9"), "_private9");
    assert_eq!(sanitize_metric_name("a1:b/é"), "a1_b__");
    assert_eq!(sanitize_metric_name(""), "");
}

#[test]
fn sanitized_envelope_names_match_the_query_name() {
    let engine = engine(vec![counter("app", 0.0, "http.requests-total", 7)]);
    assert_eq!(single(&engine, r#"http_requests_total{source_id="app"}"#, 0), 7.0);
}

#[test]
fn gauge_keys_are_separate_series_and_labels_come_from_tags_source_and_instance() {
    let engine = engine(vec![gauge_tagged(
        "app",
        "3",
        0.0,
        &[("cpu", 0.25), ("memory", 1024.0)],
        &[("deployment", "cf"), ("source_id", "spoofed")],
    )]);
    assert_eq!(
        instant_vector(&engine, r#"memory{source_id="app"}"#, 0),
        vec![(labels(&[("deployment", "cf"), ("instance_id", "3"), ("source_id", "app")]), 1024.0)]
    );
    assert_eq!(single(&engine, r#"cpu{source_id="app"}"#, 0), 0.25);
}

#[test]
fn empty_instance_id_is_not_a_label() {
    let engine = engine(vec![counter("app", 0.0, "requests", 5)]);
    assert_eq!(
        instant_vector(&engine, r#"requests{source_id="app"}"#, 0),
        vec![(labels(&[("source_id", "app")]), 5.0)]
    );
}

#[test]
fn counter_is_total_timer_is_duration_and_logs_and_events_are_never_data() {
    let mut timer = base("app", "", 0.0, &[]);
    timer.message = Some(envelope::Message::Timer(Timer { name: "http".to_owned(), start: 1_000, stop: 251_000 }));
    let mut log = base("app", "", 0.0, &[]);
    log.message = Some(envelope::Message::Log(Log { payload: b"http".to_vec().into(), r#type: 0 }));
    let mut event = base("app", "", 0.0, &[]);
    event.message = Some(envelope::Message::Event(Event { title: "http".to_owned(), body: "http".to_owned() }));
    let engine = engine(vec![counter("app", 0.0, "requests", 42), timer, log, event]);
    assert_eq!(single(&engine, r#"requests{source_id="app"}"#, 0), 42.0);
    assert_eq!(single(&engine, r#"http{source_id="app"}"#, 0), 250_000.0);
}

#[test]
fn sample_timestamps_are_truncated_to_whole_seconds() {
    // An envelope at T0+10.9 s is a sample at T0+10: visible at T0+10, and a matrix shows it there.
    let engine = engine(vec![gauge("app", "0", 10.9, &[("cpu", 3.0)])]);
    assert_eq!(single(&engine, r#"cpu{source_id="app"}"#, 10), 3.0);
    assert!(values(&engine, r#"cpu{source_id="app"}"#, 9).is_empty());
    let matrix = engine.instant_query(r#"cpu{source_id="app"}[1m]"#, &at(30)).expect("query");
    let Some(instant_query_result::Result::Matrix(m)) = matrix.result else {
        panic!("expected a matrix, got {matrix:?}");
    };
    assert_eq!(m.series[0].points[0].time, format!("{}.000", T0 + 10));
}

#[test]
fn instant_selector_looks_back_five_minutes_inclusive() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("cpu", 1.0)]), gauge("app", "0", 100.0, &[("cpu", 2.0)])]);
    assert_eq!(single(&engine, r#"cpu{source_id="app"}"#, 50), 1.0);
    assert_eq!(single(&engine, r#"cpu{source_id="app"}"#, 100), 2.0);
    assert_eq!(single(&engine, r#"cpu{source_id="app"}"#, 400), 2.0);
    assert!(values(&engine, r#"cpu{source_id="app"}"#, 401).is_empty());
    assert!(values(&engine, r#"cpu{source_id="app"}"#, -1).is_empty());
}

#[test]
fn offset_and_at_modifiers_shift_the_selected_instant() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("cpu", 1.0)]), gauge("app", "0", 60.0, &[("cpu", 2.0)])]);
    assert_eq!(single(&engine, r#"cpu{source_id="app"} offset 1m"#, 90), 1.0);
    let query = format!(r#"cpu{{source_id="app"}} @ {}"#, T0 + 30);
    assert_eq!(single(&engine, &query, 200), 1.0);
}

// === source_id rules (§6.6) ===

#[test]
fn selector_without_source_id_is_rejected_with_log_cache_message() {
    let engine = engine(Vec::new());
    for (query, name) in [
        ("cpu", "cpu"),
        (r#"cpu{instance_id="0"}"#, "cpu"),
        (r#"cpu{source_id!="app"}"#, "cpu"),
        (r#"cpu{source_id!~"app"}"#, "cpu"),
        (r#"sum(rate(requests[1m]))"#, "requests"),
        (r#"cpu{source_id="a"} + memory"#, "memory"),
        (r#"{__name__="disk"}"#, "disk"),
    ] {
        let err = error_of(engine.instant_query(query, &at(0)));
        assert_eq!(err, PromQLError::MissingSourceId(name.to_owned()), "{query}");
        assert_eq!(err.to_string(), format!("metric '{name}' does not have a 'source_id' label"));
        assert_eq!(err.http_status(), 400);
    }
}

#[test]
fn source_id_regex_is_a_literal_list_of_ids() {
    let (engine, source) = engine_over(vec![
        gauge("a", "0", 0.0, &[("cpu", 1.0)]),
        gauge("b", "0", 0.0, &[("cpu", 2.0)]),
        gauge("c", "0", 0.0, &[("cpu", 3.0)]),
    ]);
    assert_eq!(values(&engine, r#"cpu{source_id=~"a|b"}"#, 0), vec![1.0, 2.0]);
    // Not a regex: `.*` is an id of its own, and matches nothing.
    assert!(values(&engine, r#"cpu{source_id=~".*"}"#, 0).is_empty());
    let read_ids: Vec<String> = source.reads.lock().expect("reads").iter().map(|(id, _, _)| id.clone()).collect();
    assert_eq!(read_ids, vec!["a", "b", ".*"]);
}

#[test]
fn negative_source_id_matcher_excludes_ids_from_the_list() {
    let engine = engine(vec![gauge("a", "0", 0.0, &[("cpu", 1.0)]), gauge("b", "0", 0.0, &[("cpu", 2.0)])]);
    assert_eq!(values(&engine, r#"cpu{source_id=~"a|b", source_id!="a"}"#, 0), vec![2.0]);
}

#[test]
fn each_source_is_read_once_over_lookback_or_range_plus_one_second() {
    let (engine, source) = engine_over(Vec::new());
    engine.instant_query(r#"cpu{source_id="a"}"#, &at(0)).expect("query");
    engine.instant_query(r#"rate(cpu{source_id="a"}[2m]) + cpu{source_id="a"}"#, &at(0)).expect("query");
    let reads = source.reads.lock().expect("reads").clone();
    let end = ns(1.0) - 1; // every envelope whose truncated second is T0
    assert_eq!(
        reads,
        vec![
            ("a".to_owned(), ns(-301.0), end),
            // One read covering both selectors: the lookback reaches further back than 2m.
            ("a".to_owned(), ns(-301.0), end),
        ]
    );
}

#[test]
fn other_label_matchers_compare_by_equality_whatever_the_operator() {
    let engine = engine(vec![
        gauge_tagged("app", "0", 0.0, &[("cpu", 1.0)], &[("zone", "a")]),
        gauge_tagged("app", "1", 0.0, &[("cpu", 2.0)], &[("zone", "b")]),
    ]);
    // The original Log Cache treats `!=`, `=~` and `!~` like `=` on labels other than source_id.
    for query in [
        r#"cpu{source_id="app", zone="a"}"#,
        r#"cpu{source_id="app", zone!="a"}"#,
        r#"cpu{source_id="app", zone=~"a"}"#,
        r#"cpu{source_id="app", zone!~"a"}"#,
    ] {
        assert_eq!(values(&engine, query, 0), vec![1.0], "{query}");
    }
    assert!(values(&engine, r#"cpu{source_id="app", zone=~"a|b"}"#, 0).is_empty());
    assert_eq!(values(&engine, r#"cpu{source_id="app", instance_id="1"}"#, 0), vec![2.0]);
    // An absent label equals the empty string.
    assert_eq!(values(&engine, r#"cpu{source_id="app", missing=""}"#, 0), vec![1.0, 2.0]);
}

// === range functions ===

/// A counter with a reset: 10 @+5 s, 30 @+20 s, 5 @+35 s (reset), 20 @+50 s.
fn counter_with_reset() -> Engine {
    engine(vec![
        counter("app", 5.0, "requests", 10),
        counter("app", 20.0, "requests", 30),
        counter("app", 35.0, "requests", 5),
        counter("app", 50.0, "requests", 20),
    ])
}

#[test]
fn rate_and_increase_extrapolate_to_the_range_edges() {
    // Totals 100..140 every 10 s from +10 to +50; at +60 over 1m the range is [+0, +60].
    // Raw increase 40 over 40 s; both edges are 10 s away (< 1.1 × 10 s), so extrapolate to 60 s:
    // increase = 40 × 60/40 = 60, rate = 60 / 60 s = 1.
    let engine =
        engine((1..=5u32).map(|i| counter("app", f64::from(i * 10), "requests", 90 + 10 * u64::from(i))).collect());
    assert_close(single(&engine, r#"increase(requests{source_id="app"}[1m])"#, 60), 60.0);
    assert_close(single(&engine, r#"rate(requests{source_id="app"}[1m])"#, 60), 1.0);
}

#[test]
fn rate_corrects_counter_resets() {
    // Raw increase: 20 − 10 + 30 (reset after 30) = 40 over 45 s; average interval 15 s, threshold
    // 16.5 s. Zero point: 45 × 10/40 = 11.25 s before the first sample, farther than the 5 s to the
    // range start, so extrapolate 5 s back and 10 s forward: 40 × 60/45 = 160/3; rate = 160/3/60 = 8/9.
    let engine = counter_with_reset();
    assert_close(single(&engine, r#"increase(requests{source_id="app"}[1m])"#, 60), 160.0 / 3.0);
    assert_close(single(&engine, r#"rate(requests{source_id="app"}[1m])"#, 60), 8.0 / 9.0);
}

#[test]
fn increase_does_not_extrapolate_a_counter_below_zero() {
    // 2 @+30, 12 @+40, 22 @+50; at +60 over 1m: raw 20 over 20 s, the start edge is 30 s away but the
    // counter would reach zero 20 × 2/20 = 2 s before the first sample, so extrapolate 2 s back and
    // 10 s forward: 20 × 32/20 = 32.
    let engine = engine(vec![
        counter("app", 30.0, "requests", 2),
        counter("app", 40.0, "requests", 12),
        counter("app", 50.0, "requests", 22),
    ]);
    assert_close(single(&engine, r#"increase(requests{source_id="app"}[1m])"#, 60), 32.0);
}

#[test]
fn delta_extrapolates_by_half_an_interval_when_far_from_the_edges() {
    // Gauge 5 @+20, 3 @+30, 8 @+40; at +60 over 1m: raw 3 over 20 s; both edges are 20 s away
    // (≥ 1.1 × 10 s), so add half an interval on each side: 3 × 30/20 = 4.5.
    let engine = engine(vec![
        gauge("app", "0", 20.0, &[("temp", 5.0)]),
        gauge("app", "0", 30.0, &[("temp", 3.0)]),
        gauge("app", "0", 40.0, &[("temp", 8.0)]),
    ]);
    assert_close(single(&engine, r#"delta(temp{source_id="app"}[1m])"#, 60), 4.5);
}

#[test]
fn rate_needs_two_samples() {
    let engine = engine(vec![counter("app", 0.0, "requests", 1)]);
    assert!(values(&engine, r#"rate(requests{source_id="app"}[1m])"#, 30).is_empty());
}

#[test]
fn irate_and_idelta_use_the_last_two_samples() {
    let engine = counter_with_reset();
    // 5 → 20 over 15 s.
    assert_close(single(&engine, r#"irate(requests{source_id="app"}[1m])"#, 60), 1.0);
    assert_close(single(&engine, r#"idelta(requests{source_id="app"}[1m])"#, 60), 15.0);
    // At +40 the last two are 30 → 5: a reset, so the increase is 5, over 15 s.
    assert_close(single(&engine, r#"irate(requests{source_id="app"}[1m])"#, 40), 1.0 / 3.0);
}

#[test]
fn over_time_functions_aggregate_the_range_inclusively() {
    let engine = engine(vec![
        gauge("app", "0", 10.0, &[("cpu", 4.0)]),
        gauge("app", "0", 20.0, &[("cpu", 1.0)]),
        gauge("app", "0", 30.0, &[("cpu", 7.0)]),
    ]);
    let q = |f: &str| format!(r#"{f}(cpu{{source_id="app"}}[1m])"#);
    assert_eq!(single(&engine, &q("avg_over_time"), 30), 4.0);
    assert_eq!(single(&engine, &q("min_over_time"), 30), 1.0);
    assert_eq!(single(&engine, &q("max_over_time"), 30), 7.0);
    assert_eq!(single(&engine, &q("sum_over_time"), 30), 12.0);
    assert_eq!(single(&engine, &q("count_over_time"), 30), 3.0);
    assert_eq!(single(&engine, &q("last_over_time"), 30), 7.0);
    // [t − 1m, t] includes both ends: at +70 the sample at +10 is still in.
    assert_eq!(single(&engine, &q("count_over_time"), 70), 3.0);
    assert_eq!(single(&engine, &q("count_over_time"), 71), 2.0);
}

// === instant-vector functions ===

fn one_gauge(value: f64) -> Engine {
    engine(vec![gauge("app", "0", 0.0, &[("x", value)])])
}

#[test]
fn math_functions_follow_prometheus() {
    let x = r#"x{source_id="app"}"#;
    let e = one_gauge(-2.5);
    assert_eq!(single(&e, &format!("abs({x})"), 0), 2.5);
    assert_eq!(single(&e, &format!("ceil({x})"), 0), -2.0);
    assert_eq!(single(&e, &format!("floor({x})"), 0), -3.0);
    // Half rounds up: round(-2.5) = floor(-2.5 + 0.5) = -2.
    assert_eq!(single(&e, &format!("round({x})"), 0), -2.0);
    let e = one_gauge(7.3);
    assert_eq!(single(&e, &format!("round({x}, 0.5)"), 0), 7.5);
    assert_eq!(single(&e, &format!("round({x}, 5)"), 0), 5.0);
    assert_eq!(single(&e, &format!("clamp({x}, 0, 5)"), 0), 5.0);
    assert_eq!(single(&e, &format!("clamp({x}, 8, 9)"), 0), 8.0);
    assert_eq!(single(&e, &format!("clamp_min({x}, 10)"), 0), 10.0);
    assert_eq!(single(&e, &format!("clamp_max({x}, 1)"), 0), 1.0);
    assert_eq!(single(&e, &format!("clamp_max({x}, 100)"), 0), 7.3);
    // min > max selects nothing.
    assert!(values(&e, &format!("clamp({x}, 5, 1)"), 0).is_empty());
}

#[test]
fn function_labels_are_kept() {
    let engine = engine(vec![gauge_tagged("app", "0", 0.0, &[("x", -1.0)], &[("zone", "a")])]);
    assert_eq!(
        instant_vector(&engine, r#"abs(x{source_id="app"})"#, 0),
        vec![(labels(&[("instance_id", "0"), ("source_id", "app"), ("zone", "a")]), 1.0)]
    );
}

#[test]
fn time_vector_and_scalar_functions() {
    let engine = one_gauge(4.0);
    match engine.instant_query("time()", &at(5)).expect("query").result {
        Some(instant_query_result::Result::Scalar(s)) => {
            assert_eq!(s.value, (T0 + 5) as f64)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(instant_vector(&engine, "vector(3)", 0), vec![(BTreeMap::new(), 3.0)]);
    assert_eq!(scalar(&engine, r#"scalar(x{source_id="app"}) * 2"#), 8.0);
    assert!(scalar(&engine, r#"scalar(nothing{source_id="app"})"#).is_nan());
}

// === aggregations ===

/// cpu 10, 20, 30 on instances 0, 1, 2 of `app`, in zones a, a, b; memory 100, 200, 300 alongside.
fn three_instances() -> Engine {
    engine(vec![
        gauge_tagged("app", "0", 0.0, &[("cpu", 10.0), ("memory", 100.0)], &[("zone", "a")]),
        gauge_tagged("app", "1", 0.0, &[("cpu", 20.0), ("memory", 200.0)], &[("zone", "a")]),
        gauge_tagged("app", "2", 0.0, &[("cpu", 30.0), ("memory", 300.0)], &[("zone", "b")]),
    ])
}

const CPU: &str = r#"cpu{source_id="app"}"#;
const MEMORY: &str = r#"memory{source_id="app"}"#;

#[test]
fn sum_avg_min_max_count_over_all_series() {
    let engine = three_instances();
    let q = |op: &str| format!("{op}({CPU})");
    assert_eq!(instant_vector(&engine, &q("sum"), 0), vec![(BTreeMap::new(), 60.0)]);
    assert_eq!(single(&engine, &q("avg"), 0), 20.0);
    assert_eq!(single(&engine, &q("min"), 0), 10.0);
    assert_eq!(single(&engine, &q("max"), 0), 30.0);
    assert_eq!(single(&engine, &q("count"), 0), 3.0);
}

#[test]
fn aggregation_by_and_without_group_labels() {
    let engine = three_instances();
    assert_eq!(
        instant_vector(&engine, &format!("sum by (zone) ({CPU})"), 0),
        vec![(labels(&[("zone", "a")]), 30.0), (labels(&[("zone", "b")]), 30.0)]
    );
    assert_eq!(
        instant_vector(&engine, &format!("avg without (instance_id) ({CPU})"), 0),
        vec![
            (labels(&[("source_id", "app"), ("zone", "a")]), 15.0),
            (labels(&[("source_id", "app"), ("zone", "b")]), 30.0),
        ]
    );
    assert_eq!(
        instant_vector(&engine, &format!("max by (zone, nonexistent) ({CPU})"), 0),
        vec![(labels(&[("zone", "a")]), 20.0), (labels(&[("zone", "b")]), 30.0)]
    );
    assert_eq!(
        instant_vector(&engine, &format!("count by (source_id) ({CPU})"), 0),
        vec![(labels(&[("source_id", "app")]), 3.0)]
    );
}

#[test]
fn topk_and_bottomk_keep_full_labels_in_value_order() {
    let engine = three_instances();
    let top = instant_vector(&engine, &format!("topk(2, {CPU})"), 0);
    assert_eq!(
        top.iter().map(|(l, v)| (l["instance_id"].as_str(), *v)).collect::<Vec<_>>(),
        vec![("2", 30.0), ("1", 20.0)]
    );
    assert_eq!(top[0].0, labels(&[("instance_id", "2"), ("source_id", "app"), ("zone", "b")]));
    assert_eq!(values(&engine, &format!("bottomk(1, {CPU})"), 0), vec![10.0]);
    assert_eq!(values(&engine, &format!("bottomk by (zone) (1, {CPU})"), 0), vec![10.0, 30.0]);
    assert_eq!(values(&engine, &format!("topk(10, {CPU})"), 0), vec![30.0, 20.0, 10.0]);
    assert!(values(&engine, &format!("topk(0, {CPU})"), 0).is_empty());
}

// === binary operators ===

#[test]
fn scalar_arithmetic_and_comparisons() {
    let engine = engine(Vec::new());
    assert_eq!(scalar(&engine, "1 + 2 * 3"), 7.0);
    assert_eq!(scalar(&engine, "(1 + 2) * 3"), 9.0);
    assert_eq!(scalar(&engine, "10 - 4 - 3"), 3.0);
    assert_eq!(scalar(&engine, "7 / 2"), 3.5);
    assert_eq!(scalar(&engine, "7 % 3"), 1.0);
    assert_eq!(scalar(&engine, "-7 % 3"), -1.0);
    assert_eq!(scalar(&engine, "2 ^ 3 ^ 2"), 512.0);
    assert_eq!(scalar(&engine, "-(1 + 2)"), -3.0);
    assert_eq!(scalar(&engine, "1 / 0"), f64::INFINITY);
    assert!(scalar(&engine, "0 / 0").is_nan());
    assert_eq!(scalar(&engine, "1 > bool 2"), 0.0);
    assert_eq!(scalar(&engine, "2 >= bool 2"), 1.0);
    assert_eq!(scalar(&engine, "1 == bool 1"), 1.0);
    assert_eq!(scalar(&engine, "1 != bool 1"), 0.0);
    assert_eq!(scalar(&engine, "1 < bool 2"), 1.0);
    assert_eq!(scalar(&engine, "3 <= bool 2"), 0.0);
    assert_eq!(scalar(&engine, "42"), 42.0);
}

#[test]
fn vector_scalar_arithmetic_keeps_labels() {
    let engine = three_instances();
    assert_eq!(values(&engine, &format!("{CPU} * 2"), 0), vec![20.0, 40.0, 60.0]);
    assert_eq!(values(&engine, &format!("100 - {CPU}"), 0), vec![90.0, 80.0, 70.0]);
    assert_eq!(values(&engine, &format!("{CPU} / 4"), 0), vec![2.5, 5.0, 7.5]);
    assert_eq!(values(&engine, &format!("{CPU} % 7"), 0), vec![3.0, 6.0, 2.0]);
    assert_eq!(values(&engine, &format!("{CPU} ^ 2"), 0), vec![100.0, 400.0, 900.0]);
    assert_eq!(values(&engine, &format!("-{CPU}"), 0), vec![-10.0, -20.0, -30.0]);
    assert_eq!(
        instant_vector(&engine, &format!("{CPU} + 1"), 0)[0].0,
        labels(&[("instance_id", "0"), ("source_id", "app"), ("zone", "a")])
    );
}

#[test]
fn vector_scalar_comparisons_filter_or_return_bool() {
    let engine = three_instances();
    assert_eq!(values(&engine, &format!("{CPU} > 15"), 0), vec![20.0, 30.0]);
    assert_eq!(values(&engine, &format!("{CPU} < 15"), 0), vec![10.0]);
    assert_eq!(values(&engine, &format!("{CPU} >= 20"), 0), vec![20.0, 30.0]);
    assert_eq!(values(&engine, &format!("{CPU} <= 20"), 0), vec![10.0, 20.0]);
    assert_eq!(values(&engine, &format!("{CPU} == 20"), 0), vec![20.0]);
    assert_eq!(values(&engine, &format!("{CPU} != 20"), 0), vec![10.0, 30.0]);
    assert_eq!(values(&engine, &format!("{CPU} > bool 15"), 0), vec![0.0, 1.0, 1.0]);
    // With the scalar on the left, the kept value is still the vector's.
    assert_eq!(values(&engine, &format!("15 < {CPU}"), 0), vec![20.0, 30.0]);
    assert_eq!(values(&engine, &format!("15 < bool {CPU}"), 0), vec![0.0, 1.0, 1.0]);
}

#[test]
fn vector_vector_one_to_one_matching() {
    let engine = three_instances();
    assert_eq!(values(&engine, &format!("{MEMORY} / {CPU}"), 0), vec![10.0, 10.0, 10.0]);
    assert_eq!(values(&engine, &format!("{MEMORY} - {CPU}"), 0), vec![90.0, 180.0, 270.0]);
    assert_eq!(values(&engine, &format!("{CPU} > {MEMORY} / 15"), 0), vec![10.0, 20.0, 30.0]);
    assert_eq!(values(&engine, &format!("{CPU} > bool {MEMORY} / 10"), 0), vec![0.0, 0.0, 0.0]);
    assert_eq!(values(&engine, &format!("{CPU} == {MEMORY} / 10"), 0), vec![10.0, 20.0, 30.0]);
    // `on` keeps only the listed labels; `ignoring` drops the listed ones.
    assert_eq!(
        instant_vector(&engine, &format!("{MEMORY} + on(instance_id) {CPU}"), 0),
        vec![
            (labels(&[("instance_id", "0")]), 110.0),
            (labels(&[("instance_id", "1")]), 220.0),
            (labels(&[("instance_id", "2")]), 330.0),
        ]
    );
    assert_eq!(
        instant_vector(&engine, &format!("{MEMORY} + ignoring(zone) {CPU}"), 0)[0].0,
        labels(&[("instance_id", "0"), ("source_id", "app")])
    );
    // Unmatched samples are dropped.
    let only_zero = r#"cpu{source_id="app", instance_id="0"}"#;
    assert_eq!(values(&engine, &format!("{MEMORY} * {only_zero}"), 0), vec![1000.0]);
}

#[test]
fn ambiguous_vector_matching_is_an_error() {
    let engine = three_instances();
    let err = error_of(engine.instant_query(&format!("{MEMORY} + on(zone) {CPU}"), &at(0)));
    assert!(
        err.to_string().starts_with(r#"found duplicate series for the match group {zone="a"} on the right hand-side"#),
        "{err}"
    );
    assert_eq!(err.http_status(), 422);
    let err = error_of(engine.instant_query(&format!("{MEMORY} + on(zone) sum by (zone) ({CPU})"), &at(0)));
    assert_eq!(
        err.to_string(),
        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)"
    );
}

#[test]
fn group_left_and_group_right_match_many_to_one() {
    let engine = three_instances();
    assert_eq!(
        values(&engine, &format!("{CPU} / on(zone) group_left sum by (zone) ({CPU})"), 0),
        vec![10.0 / 30.0, 20.0 / 30.0, 1.0]
    );
    assert_eq!(
        values(&engine, &format!("sum by (zone) ({CPU}) - on(zone) group_right {CPU}"), 0),
        vec![20.0, 10.0, 0.0]
    );
}

#[test]
fn set_operators() {
    let engine = three_instances();
    assert_eq!(values(&engine, &format!("{CPU} and {CPU} > 15"), 0), vec![20.0, 30.0]);
    assert_eq!(values(&engine, &format!("{CPU} unless {CPU} > 15"), 0), vec![10.0]);
    assert_eq!(values(&engine, &format!("{CPU} > 25 or {CPU} < 15"), 0), vec![10.0, 30.0]);
}

// === instant and range queries ===

#[test]
fn instant_query_of_a_matrix_selector_returns_points_at_their_own_times() {
    let engine = engine(vec![gauge("app", "0", 10.0, &[("cpu", 1.0)]), gauge("app", "0", 20.5, &[("cpu", 2.0)])]);
    let result = engine.instant_query(r#"cpu{source_id="app"}[1m]"#, &at(30)).expect("query");
    assert_eq!(
        result,
        InstantQueryResult {
            result: Some(instant_query_result::Result::Matrix(Matrix {
                series: vec![Series {
                    metric: HashMap::from([
                        ("source_id".to_owned(), "app".to_owned()),
                        ("instance_id".to_owned(), "0".to_owned()),
                    ]),
                    points: vec![
                        Point { time: "1700000010.000".to_owned(), value: 1.0 },
                        Point { time: "1700000020.000".to_owned(), value: 2.0 },
                    ],
                }],
            })),
        }
    );
}

#[test]
fn instant_query_with_empty_time_uses_now_truncated_to_the_second() {
    let engine = engine(Vec::new());
    let result = engine.instant_query("1", "").expect("query");
    let Some(instant_query_result::Result::Scalar(Scalar { time, .. })) = result.result else {
        panic!("expected a scalar, got {result:?}");
    };
    assert!(time.ends_with(".000"), "{time}");
    let secs: i64 = time.trim_end_matches(".000").parse().expect("seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs() as i64;
    assert!((now - secs).abs() <= 2, "{secs} vs {now}");
}

#[test]
fn range_query_evaluates_every_step() {
    let engine = engine(vec![
        gauge("app", "0", 0.0, &[("cpu", 1.0)]),
        gauge("app", "0", 40.0, &[("cpu", 2.0)]),
        gauge("app", "1", 40.0, &[("cpu", 5.0)]),
    ]);
    let result = engine.range_query(r#"cpu{source_id="app"}"#, &at(0), &at(60), "30s").expect("query");
    let point = |offset: i64, value: f64| Point { time: format!("{}.000", T0 + offset), value };
    assert_eq!(
        result,
        RangeQueryResult {
            result: Some(range_query_result::Result::Matrix(Matrix {
                series: vec![
                    Series {
                        metric: HashMap::from([
                            ("source_id".to_owned(), "app".to_owned()),
                            ("instance_id".to_owned(), "0".to_owned()),
                        ]),
                        points: vec![point(0, 1.0), point(30, 1.0), point(60, 2.0)],
                    },
                    Series {
                        metric: HashMap::from([
                            ("source_id".to_owned(), "app".to_owned()),
                            ("instance_id".to_owned(), "1".to_owned()),
                        ]),
                        points: vec![point(60, 5.0)],
                    },
                ],
            })),
        }
    );
}

#[test]
fn range_query_of_rate_and_sum() {
    // A counter growing by 1 per second, sampled every 10 s: rate is 1 everywhere inside.
    let engine =
        engine((0..=12u32).map(|i| counter("app", f64::from(i * 10), "requests", 1000 + 10 * u64::from(i))).collect());
    let result =
        engine.range_query(r#"sum(rate(requests{source_id="app"}[1m]))"#, &at(60), &at(120), "1m").expect("query");
    let Some(range_query_result::Result::Matrix(m)) = result.result else {
        panic!("expected a matrix");
    };
    assert_eq!(m.series.len(), 1);
    assert!(m.series[0].metric.is_empty());
    let values: Vec<f64> = m.series[0].points.iter().map(|p| p.value).collect();
    assert_eq!(values.len(), 2);
    for v in values {
        assert_close(v, 1.0);
    }
}

#[test]
fn range_query_of_a_scalar_is_one_series_without_labels() {
    let engine = engine(Vec::new());
    let result = engine.range_query("time() - 1", &at(0), &at(10), "5").expect("query");
    let Some(range_query_result::Result::Matrix(m)) = result.result else {
        panic!("expected a matrix");
    };
    assert_eq!(m.series.len(), 1);
    let points: Vec<(String, f64)> = m.series[0].points.iter().map(|p| (p.time.clone(), p.value)).collect();
    assert_eq!(
        points,
        vec![
            ("1700000000.000".to_owned(), (T0 - 1) as f64),
            ("1700000005.000".to_owned(), (T0 + 4) as f64),
            ("1700000010.000".to_owned(), (T0 + 9) as f64),
        ]
    );
}

#[test]
fn range_query_rejects_bad_ranges_and_types() {
    let engine = engine(Vec::new());
    let err = error_of(engine.range_query("1", &at(10), &at(0), "1"));
    assert_eq!(err.to_string(), r#"invalid parameter "end": end timestamp must not be before start time"#);
    let err = error_of(engine.range_query("1", &at(0), &at(20_000), "1"));
    assert!(err.to_string().starts_with("exceeded maximum resolution of 11,000 points"));
    let err = error_of(engine.range_query("1", &at(0), &at(10), "0"));
    assert_eq!(err.http_status(), 400);
    let err = error_of(engine.range_query(r#"cpu{source_id="a"}[1m]"#, &at(0), &at(10), "1"));
    assert_eq!(
        err.to_string(),
        r#"invalid expression type "range vector" for range query, must be Scalar or instant Vector"#
    );
}

#[test]
fn range_query_rejects_duplicate_label_sets_in_one_step() {
    // Without a name the selector matches both gauge keys, whose label sets are equal.
    let engine = engine(vec![gauge("app", "0", 0.0, &[("cpu", 1.0), ("memory", 2.0)])]);
    let err = error_of(engine.range_query(r#"{source_id="app"}"#, &at(0), &at(10), "5"));
    assert_eq!(err.to_string(), "vector cannot contain metrics with the same labelset");
    // An instant query just returns both.
    assert_eq!(values(&engine, r#"{source_id="app"}"#, 0).len(), 2);
}

// === limits and errors ===

#[test]
fn timeout_is_checked_during_evaluation() {
    let source = Arc::new(FakeSource::default());
    let engine = Engine::new(source, Duration::ZERO, 1_000_000);
    let err = error_of(engine.instant_query(r#"cpu{source_id="a"}"#, &at(0)));
    assert_eq!(err, PromQLError::Timeout);
    assert_eq!(err.http_status(), 503);
    assert_eq!(err.grpc_code(), tonic::Code::DeadlineExceeded);
}

#[test]
fn sample_bound_fails_the_query() {
    let envelopes = (0..10).map(|i| gauge("app", "0", f64::from(i), &[("cpu", 1.0)])).collect();
    let source = Arc::new(FakeSource { envelopes, reads: Mutex::new(Vec::new()) });
    let engine = Engine::new(source.clone(), Duration::from_secs(10), 15);
    // 10 loaded + 10 selected by the range > 15.
    let err = error_of(engine.instant_query(r#"count_over_time(cpu{source_id="app"}[1m])"#, &at(10)));
    assert_eq!(err, PromQLError::TooManySamples);
    assert_eq!(err.http_status(), 422);
    // 10 loaded + 1 selected fits.
    let engine = Engine::new(source, Duration::from_secs(10), 15);
    assert_eq!(single(&engine, r#"cpu{source_id="app"}"#, 10), 1.0);
}

#[test]
fn a_query_over_its_budget_fails_before_decoding_anything() {
    let envelopes = (0..1000).map(|i| counter("big", f64::from(i) / 10.0, "requests", i as u64)).collect();
    let source = Arc::new(FakeSource { envelopes, reads: Mutex::new(Vec::new()) });
    let engine = Engine::new(source, Duration::from_secs(10), 999);
    let before = super::series::DECODED.with(|d| d.get());
    let err = error_of(engine.instant_query(r#"count_over_time(requests{source_id="big"}[5m])"#, &at(100)));
    assert_eq!(err, PromQLError::TooManySamples);
    assert_eq!(super::series::DECODED.with(|d| d.get()), before, "not one envelope was decoded");
}

#[test]
fn a_query_names_a_bounded_number_of_sources() {
    let engine = engine(Vec::new());
    let ids: Vec<String> = (0..=MAX_SOURCES_PER_QUERY).map(|i| format!("s{i}")).collect();
    let query = format!(r#"up{{source_id=~"{}"}}"#, ids.join("|"));
    let err = error_of(engine.instant_query(&query, &at(0)));
    assert!(matches!(&err, PromQLError::BadQuery(m) if m.contains("at most 2000")), "{err:?}");
    let fits = format!(r#"up{{source_id=~"{}"}}"#, ids[1..].join("|"));
    engine.instant_query(&fits, &at(0)).expect("at the bound");
}

#[test]
fn bad_queries_are_bad_data_and_never_panic() {
    let engine = engine(Vec::new());
    for query in [
        "",
        "sum(",
        "cpu{",
        r#"foo{source_id="a"}[1e400]"#,
        r#"foo{source_id="a"} offset 1e30"#,
        r#"foo{source_id="a"}[Inf]"#,
        r#"mad_over_time(foo{source_id="a"}[5m])"#,
        r#"histogram_count(foo{source_id="a"})"#,
        r#"limitk(1, foo{source_id="a"})"#,
        r#"foo{source_id="a"}[5m:1us]"#,
        r#""a string""#,
        r#"foo{source_id="a" or source_id="b"}"#,
        "1 > 2",
    ] {
        let err = error_of(engine.instant_query(query, &at(0)));
        assert_eq!(err.error_type(), "bad_data", "{query}: {err}");
        assert_eq!(err.grpc_code(), tonic::Code::InvalidArgument, "{query}");
    }
    let err = error_of(engine.instant_query("sum(", &at(0)));
    assert!(err.to_string().starts_with("parse error: "), "{err}");
}

// === parameters ===

#[test]
fn times_parse_as_float_seconds_or_rfc3339() {
    assert_eq!(parse_time("time", "1700000000"), Ok(1_700_000_000_000));
    assert_eq!(parse_time("time", "1700000000.123"), Ok(1_700_000_000_123));
    assert_eq!(parse_time("time", "1700000000.5"), Ok(1_700_000_000_500));
    assert_eq!(parse_time("time", "-1.5"), Ok(-1500));
    assert_eq!(parse_time("time", "2023-11-14T22:13:20Z"), Ok(1_700_000_000_000));
    assert_eq!(parse_time("time", "2023-11-14T22:13:20.123456789Z"), Ok(1_700_000_000_123));
    assert_eq!(parse_time("time", "2023-11-14T23:13:20.5+01:00"), Ok(1_700_000_000_500));
    for bad in ["", "abc", "NaN", "Inf", "1e300", "2023-11-14"] {
        let err = error_of(parse_time("start", bad));
        assert_eq!(err.to_string(), format!("invalid parameter \"start\": cannot parse {bad:?} to a valid timestamp"));
    }
}

#[test]
fn steps_parse_as_float_seconds_or_durations() {
    assert_eq!(parse_step("15"), Ok(15_000));
    assert_eq!(parse_step("0.5"), Ok(500));
    assert_eq!(parse_step("30s"), Ok(30_000));
    assert_eq!(parse_step("1m"), Ok(60_000));
    assert_eq!(parse_step("1m30s"), Ok(90_000));
    assert_eq!(parse_step("1h"), Ok(3_600_000));
    assert_eq!(parse_step("250ms"), Ok(250));
    for bad in ["0", "-1", "0.0001", "0s"] {
        assert_eq!(error_of(parse_step(bad)).error_type(), "bad_data", "{bad}");
    }
    assert_eq!(
        error_of(parse_step("abc")).to_string(),
        r#"invalid parameter "step": cannot parse "abc" to a valid duration"#
    );
    assert_eq!(error_of(parse_step("NaN")).error_type(), "bad_data");
}

#[test]
fn point_times_have_exactly_three_decimals() {
    assert_eq!(format_time(1_700_000_000_000), "1700000000.000");
    assert_eq!(format_time(1_700_000_000_123), "1700000000.123");
    assert_eq!(format_time(1_234), "1.234");
    assert_eq!(format_time(5), "0.005");
    assert_eq!(format_time(-1_500), "-1.500");
    assert_eq!(format_time(0), "0.000");
}

#[test]
fn rfc3339_and_float_times_give_the_same_result() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("cpu", 1.0)])]);
    let float = engine.instant_query(CPU, "1700000000").expect("query");
    let rfc = engine.instant_query(CPU, "2023-11-14T22:13:20Z").expect("query");
    assert_eq!(float, rfc);
}

// === JSON bodies (§6.7) ===

#[test]
fn json_scalar_body() {
    let r = InstantQueryResult {
        result: Some(instant_query_result::Result::Scalar(Scalar { time: "1700000000.000".to_owned(), value: 99.0 })),
    };
    assert_eq!(
        instant_result_to_json(&r),
        "{\"status\":\"success\",\"data\":{\"resultType\":\"scalar\",\"result\":[1700000000.000,\"99\"]}}\n"
    );
}

#[test]
fn json_vector_body_sorts_metric_keys_and_formats_values() {
    let sample = |metric: &[(&str, &str)], value: f64| Sample {
        metric: metric.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        point: Some(Point { time: "1700000000.500".to_owned(), value }),
    };
    let r = InstantQueryResult {
        result: Some(instant_query_result::Result::Vector(Vector {
            samples: vec![
                sample(&[("source_id", "app"), ("instance_id", "0")], 0.5),
                sample(&[], f64::NAN),
                sample(&[("q", "a\"b\\c\n")], f64::INFINITY),
                sample(&[], f64::NEG_INFINITY),
                sample(&[], 1e21),
                sample(&[], -0.000001),
            ],
        })),
    };
    assert_eq!(
        instant_result_to_json(&r),
        concat!(
            r#"{"status":"success","data":{"resultType":"vector","result":["#,
            r#"{"metric":{"instance_id":"0","source_id":"app"},"value":[1700000000.500,"0.5"]},"#,
            r#"{"metric":{},"value":[1700000000.500,"NaN"]},"#,
            r#"{"metric":{"q":"a\"b\\c\n"},"value":[1700000000.500,"+Inf"]},"#,
            r#"{"metric":{},"value":[1700000000.500,"-Inf"]},"#,
            r#"{"metric":{},"value":[1700000000.500,"1000000000000000000000"]},"#,
            r#"{"metric":{},"value":[1700000000.500,"-0.000001"]}"#,
            "]}}\n"
        )
    );
}

#[test]
fn json_empty_results_are_empty_arrays() {
    let empty_vector = InstantQueryResult { result: Some(instant_query_result::Result::Vector(Vector::default())) };
    assert_eq!(
        instant_result_to_json(&empty_vector),
        "{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[]}}\n"
    );
    let empty_matrix = RangeQueryResult { result: Some(range_query_result::Result::Matrix(Matrix::default())) };
    assert_eq!(
        range_result_to_json(&empty_matrix),
        "{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[]}}\n"
    );
    assert_eq!(
        range_result_to_json(&RangeQueryResult::default()),
        "{\"status\":\"success\",\"data\":{\"resultType\":\"matrix\",\"result\":[]}}\n"
    );
}

#[test]
fn json_matrix_body_from_a_real_range_query() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("cpu", 0.25)]), gauge("app", "0", 10.0, &[("cpu", 1.5)])]);
    let r = engine.range_query(CPU, &at(0), &at(10), "10s").expect("query");
    assert_eq!(
        range_result_to_json(&r),
        concat!(
            r#"{"status":"success","data":{"resultType":"matrix","result":["#,
            r#"{"metric":{"instance_id":"0","source_id":"app"},"values":"#,
            r#"[[1700000000.000,"0.25"],[1700000010.000,"1.5"]]}"#,
            "]}}\n"
        )
    );
    let r = engine.instant_query(&format!("{CPU}[1m]"), &at(10)).expect("query");
    assert_eq!(
        instant_result_to_json(&r),
        concat!(
            r#"{"status":"success","data":{"resultType":"matrix","result":["#,
            r#"{"metric":{"instance_id":"0","source_id":"app"},"values":"#,
            r#"[[1700000000.000,"0.25"],[1700000010.000,"1.5"]]}"#,
            "]}}\n"
        )
    );
}

#[test]
fn json_error_bodies() {
    assert_eq!(
        error_to_json(&PromQLError::MissingSourceId("cpu".to_owned())),
        "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"metric 'cpu' does not have a 'source_id' label\"}\n"
    );
    assert_eq!(
        error_to_json(&PromQLError::Timeout),
        "{\"status\":\"error\",\"errorType\":\"timeout\",\"error\":\"query timed out in expression evaluation\"}\n"
    );
    assert_eq!(
        error_to_json(&PromQLError::BadQuery("parse error: \"x\"".to_owned())),
        "{\"status\":\"error\",\"errorType\":\"bad_data\",\"error\":\"parse error: \\\"x\\\"\"}\n"
    );
}

#[test]
fn error_mapping_is_one_table() {
    let cases = [
        (PromQLError::BadQuery("x".into()), tonic::Code::InvalidArgument, 400, "bad_data"),
        (
            PromQLError::BadParameter { param: "time", reason: "x".into() },
            tonic::Code::InvalidArgument,
            400,
            "bad_data",
        ),
        (PromQLError::MissingSourceId("x".into()), tonic::Code::InvalidArgument, 400, "bad_data"),
        (PromQLError::Timeout, tonic::Code::DeadlineExceeded, 503, "timeout"),
        (PromQLError::TooManySamples, tonic::Code::ResourceExhausted, 422, "execution"),
        (PromQLError::Execution("x".into()), tonic::Code::Unknown, 422, "execution"),
    ];
    for (err, code, status, kind) in cases {
        assert_eq!(err.grpc_code(), code, "{err:?}");
        assert_eq!(err.http_status(), status, "{err:?}");
        assert_eq!(err.error_type(), kind, "{err:?}");
    }
}

// === query nesting bound ===

#[test]
fn deeply_nested_queries_are_rejected_before_parsing() {
    let engine = engine(Vec::new());
    let deep = format!("1{}", "+1".repeat(1000));
    let err = error_of(engine.instant_query(&deep, &at(0)));
    assert_eq!(err.to_string(), "query is too complex: 1000 operators and parentheses, at most 200 allowed");
    let deep = format!("{}x{{source_id=\"a\"}}", "-".repeat(5000));
    assert_eq!(error_of(engine.instant_query(&deep, &at(0))).error_type(), "bad_data");
    // Just inside the bound, on a test thread's 2 MiB stack.
    let nested = format!("{}vector(1){}", "abs(".repeat(199), ")".repeat(199));
    assert_eq!(values(&engine, &nested, 0), vec![1.0]);
    let chain = format!("1{}", "+1".repeat(199));
    assert_eq!(scalar(&engine, &chain), 200.0);
}

#[test]
fn strings_comments_matchers_and_ranges_do_not_count_towards_nesting() {
    let query = r#"count_over_time(cpu{source_id=~"a+(|b", a!="(", b=~'((', c!~`(`}[5m]) # ((((+++
        + 1"#;
    assert_eq!(super::guard::count_inner_nodes(query), 2);
    assert_eq!(super::guard::count_inner_nodes("a and b or c unless d"), 3);
    assert_eq!(super::guard::count_inner_nodes(r#"x{a="\"(("} - -1"#), 2);
}

#[test]
fn a_long_source_id_list_is_a_simple_query() {
    // Cloud Controller lists many app GUIDs in one selector (§6.6).
    let ids: Vec<String> = (0..2000).map(|i| format!("{i:08x}-0000-4000-8000-000000000000")).collect();
    let engine = engine(vec![gauge(&ids[1999], "0", 0.0, &[("memory", 5.0)])]);
    let query = format!("memory{{source_id=~\"{}\"}}", ids.join("|"));
    assert_eq!(values(&engine, &query, 0), vec![5.0]);
}

#[test]
fn extreme_ranges_offsets_and_times_do_not_panic() {
    let engine = counter_with_reset();
    for query in [
        r#"rate(requests{source_id="app"}[292000000y])"#,
        r#"increase(requests{source_id="app"}[4294967295ms])"#,
        r#"requests{source_id="app"} offset 292000000y"#,
        r#"requests{source_id="app"} offset -292000000y"#,
        r#"rate(requests{source_id="app"}[1m] offset -292000000y)"#,
        r#"requests{source_id="app"} @ 1e300"#,
        r#"requests{source_id="app"} @ -9000000000"#,
        r#"topk(1e300, requests{source_id="app"})"#,
        r#"topk(NaN, requests{source_id="app"})"#,
        r#"round(requests{source_id="app"}, 0)"#,
        r#"requests{source_id="app"} ^ 1e308 * 1e308 % 0"#,
    ] {
        // Any answer will do, as long as it is an answer.
        let _ = engine.instant_query(query, &at(60));
        let _ = engine.range_query(query, &at(0), &at(60), "1");
    }
    for time in ["9223372036.854", "-9223372036.854", "1e18", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"] {
        let _ = engine.instant_query(r#"rate(requests{source_id="app"}[5m])"#, time);
        let _ = engine.range_query(r#"requests{source_id="app"}"#, time, time, "1e12");
    }
}

// === functions added for Grafana's queries (compared with Prometheus in tests/promql_vs_prometheus.rs) ===

fn scalar_at(engine: &Engine, query: &str, offset_secs: i64) -> f64 {
    match engine.instant_query(query, &at(offset_secs)) {
        Ok(InstantQueryResult { result: Some(instant_query_result::Result::Scalar(s)) }) => s.value,
        other => panic!("{query}: expected a scalar, got {other:?}"),
    }
}

#[test]
fn subquery_steps_are_absolute_multiples_of_the_step_inclusive_both_ends() {
    let engine = engine(Vec::new());
    // T0 ≡ 5 (mod 15 s), so [T0 + 7 − 1m, T0 + 7] holds the multiples T0 − 50, −35, −20, −5.
    let q = |f: &str| format!("{f}(timestamp(vector(1))[1m:15s])");
    assert_eq!(single(&engine, &q("count_over_time"), 7), 4.0);
    assert_eq!(single(&engine, &q("min_over_time"), 7), (T0 - 50) as f64);
    assert_eq!(single(&engine, &q("max_over_time"), 7), (T0 - 5) as f64);
    // At T0 + 10, T0 + 10 itself is a multiple and in the range; T0 − 50 is its start, also in.
    assert_eq!(single(&engine, &q("count_over_time"), 10), 5.0);
    // Offset and @ move the range, not the alignment.
    let offset = "max_over_time(timestamp(vector(1))[1m:15s] offset 1m)";
    assert_eq!(single(&engine, offset, 7), (T0 - 65) as f64);
    let pinned = format!("max_over_time(timestamp(vector(1))[1m:15s] @ {})", T0 + 100);
    assert_eq!(single(&engine, &pinned, 7), (T0 + 100) as f64);
    // A range shorter than the step can hold no multiple: no series, and no panic.
    assert!(values(&engine, "count_over_time(vector(1)[5s:1m])", 7).is_empty());
}

#[test]
fn a_subquery_reads_the_data_its_steps_need() {
    // A sample 20 minutes before the query instant: outside the lookback, inside the subquery's range.
    let (engine, source) = engine_over(vec![gauge("app", "0", -1200.0, &[("cpu", 3.0)])]);
    assert_eq!(single(&engine, r#"max_over_time(cpu{source_id="app"}[30m:1m])"#, 0), 3.0);
    let reads = source.reads.lock().expect("reads").clone();
    // From 30 minutes + the lookback + 1 s before, to the end of the query's second.
    assert_eq!(reads, vec![("app".to_owned(), ns(-1800.0 - 300.0 - 1.0), ns(1.0) - 1)]);
}

#[test]
fn subqueries_are_charged_per_step_and_bounded() {
    let source = Arc::new(FakeSource::default());
    let engine = Engine::new(source, Duration::from_secs(10), 10_000);
    // 86 400 steps cost four samples each, whatever they select.
    let err = error_of(engine.instant_query("count_over_time(vector(1)[1d:1s])", &at(0)));
    assert_eq!(err, PromQLError::TooManySamples);
    // 601 steps: 4 + 1 each, and the 601 points of the range vector: 3606 samples.
    assert_eq!(single(&engine, "count_over_time(vector(1)[10m:1s])", 0), 601.0);
    let source = Arc::new(FakeSource::default());
    let engine = Engine::new(source, Duration::from_secs(10), 3605);
    let err = error_of(engine.instant_query("count_over_time(vector(1)[10m:1s])", &at(0)));
    assert_eq!(err, PromQLError::TooManySamples);
}

#[test]
fn range_query_over_a_subquery_shares_the_inner_steps() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("cpu", 1.0)]), gauge("app", "0", 60.0, &[("cpu", 5.0)])]);
    let result = engine
        .range_query(r#"max_over_time(cpu{source_id="app"}[2m:10s])"#, &at(0), &at(300), "30")
        .expect("range query");
    let Some(range_query_result::Result::Matrix(matrix)) = result.result else { panic!("matrix") };
    let values: Vec<f64> = matrix.series.iter().flat_map(|s| s.points.iter().map(|p| p.value)).collect();
    // The 1 until +60, then 5 for as long as +60 is within the range and the lookback of a step.
    assert_eq!(values, vec![1.0, 1.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0]);
}

#[test]
fn stddev_stdvar_and_quantile_over_time() {
    let engine = engine(vec![
        gauge("app", "0", 0.0, &[("cpu", 2.0)]),
        gauge("app", "0", 10.0, &[("cpu", 4.0)]),
        gauge("app", "0", 20.0, &[("cpu", 4.0)]),
        gauge("app", "0", 30.0, &[("cpu", 4.0)]),
        gauge("app", "0", 40.0, &[("cpu", 5.0)]),
        gauge("app", "0", 50.0, &[("cpu", 5.0)]),
        gauge("app", "0", 60.0, &[("cpu", 7.0)]),
        gauge("app", "0", 70.0, &[("cpu", 9.0)]),
    ]);
    let q = |f: &str| format!(r#"{f}(cpu{{source_id="app"}}[2m])"#);
    assert_close(single(&engine, &q("stddev_over_time"), 70), 2.0);
    assert_close(single(&engine, &q("stdvar_over_time"), 70), 4.0);
    // Ranks 0..7: φ = 0.5 is rank 3.5, halfway between 4 and 5.
    assert_eq!(single(&engine, r#"quantile_over_time(0.5, cpu{source_id="app"}[2m])"#, 70), 4.5);
    assert_eq!(single(&engine, r#"quantile_over_time(0, cpu{source_id="app"}[2m])"#, 70), 2.0);
    assert_eq!(single(&engine, r#"quantile_over_time(2, cpu{source_id="app"}[2m])"#, 70), f64::INFINITY);
    assert!(single(&engine, r#"quantile_over_time(NaN, cpu{source_id="app"}[2m])"#, 70).is_nan());
    // One sample: no spread; a sample alone is every quantile.
    assert_eq!(single(&engine, &q("stddev_over_time"), 0), 0.0);
    assert_eq!(single(&engine, r#"quantile_over_time(0.9, cpu{source_id="app"}[2m])"#, 0), 2.0);
    // No sample in the range: no series.
    assert!(values(&engine, r#"quantile_over_time(0.5, cpu{source_id="app"}[5s])"#, 76).is_empty());
}

#[test]
fn changes_resets_deriv_and_predict_linear() {
    let engine = engine(vec![
        gauge("app", "0", 0.0, &[("x", 1.0)]),
        gauge("app", "0", 10.0, &[("x", 3.0)]),
        gauge("app", "0", 20.0, &[("x", 3.0)]),
        gauge("app", "0", 30.0, &[("x", 2.0)]),
        gauge("app", "0", 40.0, &[("x", f64::NAN)]),
        gauge("app", "0", 50.0, &[("x", f64::NAN)]),
    ]);
    let x = r#"x{source_id="app"}"#;
    // 1→3, 3→2, 2→NaN; NaN→NaN is no change. Resets: 3→2 only (NaN compares false).
    assert_eq!(single(&engine, &format!("changes({x}[1m])"), 50), 3.0);
    assert_eq!(single(&engine, &format!("resets({x}[1m])"), 50), 1.0);
    // One sample: no changes, and no slope.
    assert_eq!(single(&engine, &format!("changes({x}[5s])"), 0), 0.0);
    assert!(values(&engine, &format!("deriv({x}[5s])"), 0).is_empty());
    assert!(values(&engine, &format!("predict_linear({x}[5s], 60)"), 0).is_empty());
    // Exactly linear, 0.2 per second: 1 at +0, 3 at +10.
    assert_close(single(&engine, &format!("deriv({x}[10s])"), 10), 0.2);
    // The fit's intercept is at the evaluation instant, +10: 3, then 60 s on, 15.
    assert_close(single(&engine, &format!("predict_linear({x}[10s], 60)"), 10), 15.0);
    // Constant values fit a flat line exactly.
    assert_eq!(single(&engine, &format!("deriv({x}[10s])"), 20), 0.0);
    assert_eq!(single(&engine, &format!("predict_linear({x}[10s], 600)"), 20), 3.0);
}

#[test]
fn absent_and_present_over_time() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("x", 1.0)])]);
    let absent = |q: &str| instant_vector(&engine, q, 0);
    assert!(absent(r#"absent(x{source_id="app"})"#).is_empty());
    assert_eq!(
        absent(r#"absent(nope{source_id="app", zone="a"})"#),
        vec![(labels(&[("source_id", "app"), ("zone", "a")]), 1.0)]
    );
    // A label named twice, or by another operator than `=`, is not derived; neither is an empty one.
    assert_eq!(
        absent(r#"absent(nope{source_id=~"app|b", zone="a", zone="b", rack!="1", row=""})"#),
        vec![(BTreeMap::new(), 1.0)]
    );
    assert_eq!(absent(r#"absent(sum(nope{source_id="app"}))"#), vec![(BTreeMap::new(), 1.0)]);
    assert!(absent(r#"absent_over_time(x{source_id="app"}[1m])"#).is_empty());
    assert_eq!(absent(r#"absent_over_time(nope{source_id="app"}[1m])"#), vec![(labels(&[("source_id", "app")]), 1.0)]);
    assert_eq!(single(&engine, r#"present_over_time(x{source_id="app"}[1m])"#, 30), 1.0);
    assert!(values(&engine, r#"present_over_time(x{source_id="app"}[1m])"#, 61).is_empty());
}

#[test]
fn new_aggregations() {
    let engine = three_instances();
    let cpu = r#"cpu{source_id="app"}"#;
    assert_eq!(instant_vector(&engine, &format!("group by (zone) ({cpu})"), 0).len(), 2);
    assert!(values(&engine, &format!("group({cpu})"), 0) == vec![1.0]);
    // 10, 20, 30: population variance 200/3.
    assert_close(single(&engine, &format!("stdvar({cpu})"), 0), 200.0 / 3.0);
    assert_close(single(&engine, &format!("stddev({cpu})"), 0), (200.0f64 / 3.0).sqrt());
    assert_eq!(single(&engine, &format!("quantile(0.25, {cpu})"), 0), 15.0);
    assert_eq!(
        instant_vector(&engine, &format!(r#"count_values("cpu", {cpu} > 15)"#), 0),
        vec![(labels(&[("cpu", "20")]), 1.0), (labels(&[("cpu", "30")]), 1.0)]
    );
    let by_zone = instant_vector(&engine, &format!(r#"count_values by (zone) ("v", {cpu} * 0)"#), 0);
    assert_eq!(by_zone, vec![(labels(&[("v", "0"), ("zone", "a")]), 2.0), (labels(&[("v", "0"), ("zone", "b")]), 1.0)]);
    let err = error_of(engine.instant_query(&format!(r#"count_values("not a label", {cpu})"#), &at(0)));
    assert!(matches!(&err, PromQLError::Execution(m) if m.contains("invalid label name")), "{err}");
}

#[test]
fn sort_and_sort_desc_keep_their_order_nan_last() {
    let engine = engine(vec![
        gauge("app", "a", 0.0, &[("x", 2.0)]),
        gauge("app", "b", 0.0, &[("x", f64::NAN)]),
        gauge("app", "c", 0.0, &[("x", -1.0)]),
        gauge("app", "d", 0.0, &[("x", 5.0)]),
    ]);
    let asc = values(&engine, r#"sort(x{source_id="app"})"#, 0);
    assert_eq!(&asc[..3], &[-1.0, 2.0, 5.0]);
    assert!(asc[3].is_nan());
    let desc = values(&engine, r#"sort_desc(x{source_id="app"})"#, 0);
    assert_eq!(&desc[..3], &[5.0, 2.0, -1.0]);
    assert!(desc[3].is_nan());
}

#[test]
fn label_replace_and_label_join() {
    let engine = engine(vec![gauge_tagged("app", "0", 0.0, &[("x", 1.0)], &[("path", "/v1/apps")])]);
    let got = |q: &str| instant_vector(&engine, q, 0);
    assert_eq!(
        got(r#"label_replace(x{source_id="app"}, "version", "$1-${1}", "path", "/(v[0-9])/.*")"#),
        vec![(labels(&[("instance_id", "0"), ("path", "/v1/apps"), ("source_id", "app"), ("version", "v1-v1")]), 1.0)]
    );
    // Anchored: a partial match is no match, and leaves the sample alone.
    assert_eq!(
        got(r#"label_replace(x{source_id="app"}, "version", "$1", "path", "v[0-9]")"#),
        vec![(labels(&[("instance_id", "0"), ("path", "/v1/apps"), ("source_id", "app")]), 1.0)]
    );
    // An empty result removes the label.
    assert_eq!(
        got(r#"label_replace(x{source_id="app"}, "path", "", "path", ".*")"#),
        vec![(labels(&[("instance_id", "0"), ("source_id", "app")]), 1.0)]
    );
    assert_eq!(
        got(r#"label_join(x{source_id="app"}, "id", ":", "source_id", "instance_id", "nope")"#),
        vec![(labels(&[("id", "app:0:"), ("instance_id", "0"), ("path", "/v1/apps"), ("source_id", "app")]), 1.0)]
    );
    for (query, message) in [
        (r#"label_replace(x{source_id="app"}, "1bad", "", "path", ".*")"#, "invalid destination label name"),
        (r#"label_replace(x{source_id="app"}, "ok", "", "path", "(")"#, "invalid regular expression"),
        (r#"label_join(x{source_id="app"}, "ok", "", "bad-name")"#, "invalid source label name"),
    ] {
        let err = error_of(engine.instant_query(query, &at(0)));
        assert!(matches!(&err, PromQLError::Execution(m) if m.contains(message)), "{query}: {err}");
    }
}

#[test]
fn label_functions_refuse_duplicate_label_sets() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("x", 1.0)]), gauge("app", "1", 0.0, &[("x", 2.0)])]);
    let err = error_of(
        engine.instant_query(r#"label_replace(x{source_id="app"}, "instance_id", "", "instance_id", ".*")"#, &at(0)),
    );
    assert!(matches!(&err, PromQLError::Execution(m) if m.contains("same labelset")), "{err}");
}

#[test]
fn label_values_built_by_a_query_are_charged() {
    let path = "p".repeat(1000);
    let envelopes = vec![gauge_tagged("app", "0", 0.0, &[("x", 1.0)], &[("path", path.as_str())])];
    let source = Arc::new(FakeSource { envelopes, reads: Mutex::new(Vec::new()) });
    let engine = Engine::new(source, Duration::from_secs(10), 1000);
    // 100 copies of a 1000-byte value: 100 kB, over a budget of 1000 samples (16 kB).
    let query = format!(r#"label_replace(x{{source_id="app"}}, "big", "{}", "path", "(.*)")"#, "$1".repeat(100));
    assert_eq!(error_of(engine.instant_query(&query, &at(0))), PromQLError::TooManySamples);
}

#[test]
fn histogram_quantile_over_bucket_labelled_gauges() {
    let bucket = |le: &str, count: f64| gauge_tagged("app", "0", 0.0, &[("latency_bucket", count)], &[("le", le)]);
    let engine = engine(vec![bucket("0.5", 4.0), bucket("1", 8.0), bucket("+Inf", 10.0), bucket("x", 3.0)]);
    assert_eq!(
        instant_vector(&engine, r#"histogram_quantile(0.5, latency_bucket{source_id="app"})"#, 0),
        vec![(labels(&[("instance_id", "0"), ("source_id", "app")]), 0.625)]
    );
    // Series without a bucket bound are no histogram.
    assert!(values(&engine, r#"histogram_quantile(0.5, nothing{source_id="app"})"#, 0).is_empty());
}

#[test]
fn math_and_date_functions_and_atan2() {
    let e = one_gauge(1.0);
    let x = r#"x{source_id="app"}"#;
    // sgn keeps the sign of zero, as Go's.
    assert!(single(&e, &format!("sgn({x} * -0)"), 0).is_sign_negative());
    assert_close(single(&e, &format!("exp({x})"), 0), std::f64::consts::E);
    assert_close(single(&e, &format!("deg({x} * pi())"), 0), 180.0);
    assert_close(single(&e, &format!("{x} atan2 1"), 0), std::f64::consts::FRAC_PI_4);
    assert_close(scalar(&e, "1 atan2 1"), std::f64::consts::FRAC_PI_4);
    // T0 is 2023-11-14T22:13:20Z; without an argument, the evaluation instant.
    assert_eq!(single(&e, "hour()", 0), 22.0);
    assert_eq!(single(&e, "day_of_week()", 0), 2.0);
    assert_eq!(single(&e, &format!("year({x} * 0)"), 0), 1970.0);
    assert_eq!(single(&e, &format!("days_in_month({x} * 0 + 1709164800)"), 0), 29.0);
    // timestamp of a selector is the sample's time; of anything else, the evaluation instant.
    assert_eq!(single(&e, &format!("timestamp({x})"), 30), T0 as f64);
    assert_eq!(single(&e, &format!("timestamp(abs({x}))"), 30), (T0 + 30) as f64);
    assert_eq!(scalar_at(&e, "pi()", 0), std::f64::consts::PI);
}

#[test]
fn double_exponential_smoothing_checks_its_factors() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("x", 1.0)]), gauge("app", "0", 10.0, &[("x", 3.0)])]);
    // Two samples: s1 = 0.5·3 + 0.5·(1 + 2) = 3.
    assert_eq!(single(&engine, r#"double_exponential_smoothing(x{source_id="app"}[1m], 0.5, 0.5)"#, 10), 3.0);
    let err =
        error_of(engine.instant_query(r#"double_exponential_smoothing(x{source_id="app"}[1m], 1, 0.5)"#, &at(10)));
    assert!(matches!(&err, PromQLError::Execution(m) if m.contains("invalid smoothing factor")), "{err}");
}

#[test]
fn refused_functions_say_why() {
    let engine = engine(Vec::new());
    let err = error_of(engine.instant_query(r#"histogram_count(x{source_id="a"})"#, &at(0)));
    assert!(err.to_string().contains("native histograms"), "{err}");
    let err = error_of(engine.instant_query(r#"mad_over_time(x{source_id="a"}[1m])"#, &at(0)));
    assert!(err.to_string().contains("not supported by log-cache"), "{err}");
}

#[test]
fn every_kind_of_nesting_fits_a_test_thread_stack_at_the_bound() {
    let engine = engine(vec![gauge("app", "0", 0.0, &[("x", 1.0)])]);
    let x = r#"x{source_id="app"}"#;
    let nest = |open: &str, inner: &str, close: &str, levels: usize| {
        format!("{}{inner}{}", open.repeat(levels), close.repeat(levels))
    };
    for query in [
        nest("sum(", x, ")", 199),
        nest("absent(", x, ")", 199),
        nest("label_replace(", x, r#", "a", "b", "source_id", ".*")"#, 199),
        nest("label_join(", x, r#", "a", "-", "source_id")"#, 199),
        nest("round(", x, ", 2)", 199),
        nest("histogram_quantile(0.5, ", x, ")", 199),
        nest("sort_desc(", x, ")", 199),
        nest("count_values(\"v\", ", x, ")", 199),
        nest("day_of_week(", x, ")", 199),
        // Each level evaluates the next at its steps; the steps the levels share are evaluated once.
        nest("max_over_time(", x, "[1m:30s])", 199),
        nest("quantile_over_time(0.5, ", x, "[1m:30s])", 199),
        nest("absent_over_time(", x, "[1m:30s])", 199),
    ] {
        let result = engine.instant_query(&query, &at(0));
        assert!(result.is_ok(), "{}…: {result:?}", &query[..40]);
    }
}

/// Behind auth the query is printed again after its source ids are rewritten (`query_auth`): the
/// printed text of every new feature must mean what the original meant.
#[test]
fn printed_queries_evaluate_as_the_originals() {
    let engine = engine(vec![
        gauge_tagged("app", "0", 0.0, &[("x", 1.5)], &[("path", r#"/v1/"q"\d"#)]),
        gauge_tagged("app", "0", 30.0, &[("x", 4.0)], &[("path", r#"/v1/"q"\d"#)]),
    ]);
    for query in [
        r#"max_over_time(x{source_id="app"}[2m:15s] offset 10s)"#,
        &format!(r#"max_over_time(x{{source_id="app"}}[2m:] @ {})"#, T0 + 40),
        r#"label_replace(x{source_id="app"}, "v", "<$1>", "path", "/v1/\"(.*)\"\\\\d")"#,
        r#"label_join(x{source_id="app"}, "j", "\t", "path", "source_id")"#,
        r#"count_values("v", x{source_id="app"})"#,
        r#"quantile_over_time(0.5, x{source_id="app"}[1m])"#,
        r#"double_exponential_smoothing(x{source_id="app"}[1m], 0.5, 0.5)"#,
        r#"x{source_id="app"} atan2 2"#,
        r#"absent(nope{source_id="app", zone="a"})"#,
    ] {
        let printed = promql_parser::parser::parse(query).expect("parses").to_string();
        assert_eq!(
            instant_vector(&engine, &printed, 40),
            instant_vector(&engine, query, 40),
            "{query} printed as {printed}"
        );
    }
    // The regex above does match: the comparison is not of two unchanged vectors.
    let replace = r#"label_replace(x{source_id="app"}, "v", "<$1>", "path", "/v1/\"(.*)\"\\\\d")"#;
    let replaced = instant_vector(&engine, replace, 40);
    assert_eq!(replaced.first().and_then(|(labels, _)| labels.get("v")).map(String::as_str), Some("<q>"));
}
