//! log-cache's PromQL engine against Prometheus' own, on the same generated series: every function,
//! aggregation, operator and modifier log-cache supports is evaluated by both at several instants,
//! and the answers must agree.
//!
//! Prometheus' engine is `promtool test rules` (the Prometheus 2.x release `scripts/test` installs,
//! Debian package `prometheus`). The series are generated once, seeded, both as envelopes for a
//! log-cache engine and in promtool's series notation. log-cache's answer to each (query, instant)
//! is written into a promtool unit test as the expected samples; promtool evaluates the same query
//! on the same series and prints, for every case whose answer differs, its own answer in full
//! precision. A reported case still passes when both answers hold the same label sets with values
//! equal within a relative 1e-9 (NaN equal to NaN): the two engines sum in different orders and Go's
//! and Rust's `exp`, `ln` and trigonometry differ in the last bit. Prometheus' answers carry
//! `__name__` where log-cache's never do (PROTOCOLS.md §6.6), so it is set aside. A case promtool
//! refuses or cannot run fails the test, and so does a missing promtool.
//!
//! `PROMQL_COMPARISON_KEEP=1` keeps the promtool unit test file (its path is printed) to rerun
//! `promtool test rules` on it by hand.
//!
//! Every label of the generated series other than `source_id` and `instance_id` is an envelope tag,
//! so the same query text runs on both. Matchers other than `source_id` use `=` only: log-cache
//! compares the others by equality (a documented quirk), Prometheus does not.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::ErrorKind;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use log_cache::promql::{Engine, MetricSource};
use loggregator_proto::logcache::v1::prom_ql::{instant_query_result, range_query_result, InstantQueryResult};
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{envelope, Envelope, Gauge, GaugeValue};

/// Set to keep the promtool unit test file.
const KEEP_FILE_VAR: &str = "PROMQL_COMPARISON_KEEP";

/// Seconds between two generated samples.
const INTERVAL_SECS: i64 = 15;
/// Samples per series: 20 minutes.
const POINTS: usize = 80;
/// The instants (seconds) every query is evaluated at: the first sample, inside the data, between
/// samples, at the last sample, within the lookback after it, and after everything.
const EVAL_SECS: [i64; 9] = [0, 60, 300, 453, 600, 901, 1185, 1400, 2000];

// === generated series ===

/// One generated series: its metric name, labels (with `source_id`) and values; `None` is no sample.
struct GeneratedSeries {
    name: &'static str,
    labels: Vec<(&'static str, String)>,
    values: Vec<Option<f64>>,
}

/// xorshift64*: deterministic, so that a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n`.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn series(name: &'static str, labels: &[(&'static str, &str)], values: Vec<Option<f64>>) -> GeneratedSeries {
    GeneratedSeries { name, labels: labels.iter().map(|(k, v)| (*k, v.to_string())).collect(), values }
}

/// The series both engines read. Values are multiples of 1/4 where they can be, so that most sums
/// are exact in any order.
fn generate() -> Vec<GeneratedSeries> {
    let mut rng = Rng(0x5eed_1e55_ca5c_ade0);
    let mut out = Vec::new();

    // Gauges: random walks with repeated values; instance 2 has gaps, instance 3 starts late.
    for instance in ["0", "1", "2", "3"] {
        let mut v = 40.0 + 10.0 * rng.below(4) as f64;
        let values = (0..POINTS)
            .map(|i| {
                v = f64::clamp(v + [-2.5, 0.0, 0.0, 1.25, 3.75, -6.0][rng.below(6) as usize], 0.0, 100.0);
                let gap = (instance == "2" && i % 9 >= 6) || (instance == "3" && i < 20);
                (!gap).then_some(v)
            })
            .collect();
        out.push(series("cpu", &[("source_id", "app"), ("instance_id", instance), ("job", "api")], values));
    }

    // Counters with resets, two paths per instance.
    for instance in ["0", "1"] {
        for path in ["/v1/apps", "/v2/logs"] {
            let mut total = rng.below(100) as f64;
            let values = (0..POINTS)
                .map(|_| {
                    total = if rng.below(25) == 0 { rng.below(5) as f64 } else { total + rng.below(20) as f64 };
                    Some(total)
                })
                .collect();
            let labels = [("source_id", "app"), ("instance_id", instance), ("path", path), ("job", "api")];
            out.push(series("requests", &labels, values));
        }
    }

    // A classic histogram per instance: cumulative bucket counts that only grow.
    let bounds = ["0.1", "0.5", "1", "+Inf"];
    for instance in ["0", "1"] {
        let mut counts = [0.0f64; 4];
        let mut per_bucket: Vec<Vec<Option<f64>>> = vec![Vec::new(); bounds.len()];
        for _ in 0..POINTS {
            let mut cumulative = 0.0;
            for (b, count) in counts.iter_mut().enumerate() {
                *count += rng.below(4) as f64;
                cumulative += *count;
                per_bucket[b].push(Some(cumulative));
            }
        }
        for (le, values) in bounds.iter().zip(per_bucket) {
            out.push(series("latency_bucket", &[("source_id", "app"), ("instance_id", instance), ("le", le)], values));
        }
    }

    // Broken histograms: counts that dip, no +Inf bucket, one bound written twice, a bucket with
    // an unparsable bound, no observations at all, NaN counts, and negative bounds.
    let constant = |v: f64| vec![Some(v); POINTS];
    for (le, v) in [("0.5", 4.0), ("1", 2.0), ("2", 8.0), ("+Inf", 9.0)] {
        out.push(series("broken_bucket", &[("source_id", "app"), ("case", "dip"), ("le", le)], constant(v)));
    }
    for (le, v) in [("0.5", 4.0), ("1", 6.0)] {
        out.push(series("broken_bucket", &[("source_id", "app"), ("case", "noinf"), ("le", le)], constant(v)));
    }
    for (le, v) in [("1", 3.0), ("1.0", 2.0), ("2", 8.0), ("+Inf", 8.0), ("bad", 100.0)] {
        out.push(series("broken_bucket", &[("source_id", "app"), ("case", "twice"), ("le", le)], constant(v)));
    }
    for (le, v) in [("1", 0.0), ("+Inf", 0.0)] {
        out.push(series("broken_bucket", &[("source_id", "app"), ("case", "empty"), ("le", le)], constant(v)));
    }
    for (le, v) in [("0.5", f64::NAN), ("1", 3.0), ("+Inf", f64::NAN)] {
        out.push(series("broken_bucket", &[("source_id", "app"), ("case", "nan"), ("le", le)], constant(v)));
    }
    for (le, v) in [("-1", 2.0), ("0", 5.0), ("+Inf", 10.0)] {
        out.push(series("broken_bucket", &[("source_id", "app"), ("case", "negative"), ("le", le)], constant(v)));
    }

    // Special values: NaN, infinities, negatives and zeros. (Not −0: an envelope cannot carry it, as
    // proto3 does not encode a double equal to 0.)
    let odd = |rng: &mut Rng, specials: &[f64]| -> Vec<Option<f64>> {
        (0..POINTS)
            .map(|_| match rng.below(5) {
                0 => Some(specials[rng.below(specials.len() as u64) as usize]),
                _ => Some((rng.below(41) as f64 - 20.0) / 4.0),
            })
            .collect()
    };
    let specials: [(&str, &[f64]); 3] =
        [("nan", &[f64::NAN]), ("inf", &[f64::INFINITY, f64::NEG_INFINITY]), ("zero", &[0.0])];
    for (kind, values) in specials {
        let values = odd(&mut rng, values);
        out.push(series("odd", &[("source_id", "app"), ("kind", kind)], values));
    }

    // For vector matching: usage and quota per instance, an info-style series, and a second source.
    for instance in ["0", "1", "2"] {
        let values = (0..POINTS).map(|_| Some(100.0 + rng.below(900) as f64)).collect();
        out.push(series("memory", &[("source_id", "app"), ("instance_id", instance), ("job", "api")], values));
        out.push(series(
            "memory_quota",
            &[("source_id", "app"), ("instance_id", instance), ("job", "api")],
            constant(1024.0),
        ));
    }
    for (instance, version) in [("0", "1.2.0"), ("1", "1.3.0")] {
        out.push(series(
            "build_info",
            &[("source_id", "app"), ("instance_id", instance), ("version", version)],
            constant(1.0),
        ));
    }
    let values = (0..POINTS).map(|i| Some(i as f64 * 0.5)).collect();
    out.push(series("memory", &[("source_id", "db"), ("instance_id", "0"), ("job", "db")], values));
    out
}

// === log-cache ===

/// The generated series as the store would hand them out: one gauge envelope per sample.
struct GeneratedSource {
    /// Per source id, (timestamp ns, encoded envelope), ascending.
    envelopes: HashMap<String, Vec<(i64, Bytes)>>,
}

impl GeneratedSource {
    fn new(all: &[GeneratedSeries]) -> Self {
        let mut envelopes: HashMap<String, Vec<(i64, Bytes)>> = HashMap::new();
        for s in all {
            let label = |name: &str| s.labels.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone());
            let source_id = label("source_id").unwrap_or_default();
            let tags: HashMap<String, String> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "source_id" && *k != "instance_id")
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            for (i, value) in s.values.iter().enumerate() {
                let Some(value) = value else { continue };
                let timestamp = i as i64 * INTERVAL_SECS * 1_000_000_000;
                let envelope = Envelope {
                    timestamp,
                    source_id: source_id.clone(),
                    instance_id: label("instance_id").unwrap_or_default(),
                    tags: tags.clone(),
                    message: Some(envelope::Message::Gauge(Gauge {
                        metrics: HashMap::from([(
                            s.name.to_owned(),
                            GaugeValue { unit: String::new(), value: *value },
                        )]),
                    })),
                    ..Default::default()
                };
                envelopes
                    .entry(source_id.clone())
                    .or_default()
                    .push((timestamp, Bytes::from(envelope.encode_to_vec())));
            }
        }
        for list in envelopes.values_mut() {
            list.sort_by_key(|(t, _)| *t);
        }
        Self { envelopes }
    }
}

impl MetricSource for GeneratedSource {
    fn read_metric_envelopes(&self, source_id: &str, start_ns: i64, end_ns: i64, _max: usize) -> Vec<Bytes> {
        self.envelopes
            .get(source_id)
            .map(|list| list.iter().filter(|(t, _)| (start_ns..=end_ns).contains(t)).map(|(_, e)| e.clone()).collect())
            .unwrap_or_default()
    }
}

fn engine_over(series: &[GeneratedSeries]) -> Engine {
    Engine::new(Arc::new(GeneratedSource::new(series)), Duration::from_secs(60), 50_000_000)
}

type Answer = Vec<(BTreeMap<String, String>, f64)>;

/// log-cache's answer to an instant query: a scalar is one sample without labels, as promtool has it.
fn log_cache_answer(engine: &Engine, query: &str, secs: i64) -> Answer {
    match engine.instant_query(query, &secs.to_string()) {
        Ok(InstantQueryResult { result: Some(instant_query_result::Result::Vector(vector)) }) => vector
            .samples
            .iter()
            .map(|s| (s.metric.clone().into_iter().collect(), s.point.as_ref().map_or(f64::NAN, |p| p.value)))
            .collect(),
        Ok(InstantQueryResult { result: Some(instant_query_result::Result::Scalar(scalar)) }) => {
            vec![(BTreeMap::new(), scalar.value)]
        }
        other => panic!("log-cache: {query} at {secs}s: expected a vector or a scalar, got {other:?}"),
    }
}

// === promtool ===

/// A value in promtool's series notation.
fn series_value(v: Option<f64>) -> String {
    match v {
        None => "_".to_owned(),
        Some(v) if v.is_nan() => "NaN".to_owned(),
        Some(v) if v == f64::INFINITY => "Inf".to_owned(),
        Some(v) if v == f64::NEG_INFINITY => "-Inf".to_owned(),
        Some(v) => v.to_string(),
    }
}

/// A value as a YAML float that Go reads back to the same bits.
fn yaml_float(v: f64) -> String {
    if v.is_nan() {
        ".nan".to_owned()
    } else if v == f64::INFINITY {
        ".inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-.inf".to_owned()
    } else {
        // Shortest round-tripping form, always in a syntax YAML resolves to a float.
        format!("{v:e}")
    }
}

/// A YAML single-quoted scalar.
fn yaml_quoted(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

fn label_set(labels: &BTreeMap<String, String>) -> String {
    let pairs: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// One evaluation both engines make.
struct Case {
    query: &'static str,
    secs: i64,
    ours: Answer,
}

/// The query as promtool's Prometheus 2 names it: `double_exponential_smoothing` was `holt_winters`.
fn prometheus_2_spelling(query: &str) -> String {
    query.replace("double_exponential_smoothing", "holt_winters")
}

/// The promtool unit test file: the series, then every case with log-cache's answer as expected. The
/// case's index rides in a PromQL comment, so that promtool's report names it.
fn unit_test_file(all: &[GeneratedSeries], cases: &[Case]) -> String {
    let mut out = String::from("evaluation_interval: 1m\ntests:\n  - interval: 15s\n    input_series:\n");
    for s in all {
        let labels: Vec<String> = s.labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
        let values: Vec<String> = s.values.iter().map(|v| series_value(*v)).collect();
        let _ = writeln!(out, "      - series: {}", yaml_quoted(&format!("{}{{{}}}", s.name, labels.join(", "))));
        let _ = writeln!(out, "        values: {}", yaml_quoted(&values.join(" ")));
    }
    out.push_str("    promql_expr_test:\n");
    for (i, case) in cases.iter().enumerate() {
        // A comment runs to the end of the line, which is the end of the query.
        let expr = format!("{} # case {i}", prometheus_2_spelling(case.query));
        let _ = writeln!(out, "      - expr: {}", yaml_quoted(&expr));
        let _ = writeln!(out, "        eval_time: {}s", case.secs);
        if case.ours.is_empty() {
            out.push_str("        exp_samples: []\n");
            continue;
        }
        out.push_str("        exp_samples:\n");
        for (labels, v) in &case.ours {
            let _ = writeln!(out, "          - labels: {}", yaml_quoted(&label_set(labels)));
            let _ = writeln!(out, "            value: {}", yaml_float(*v));
        }
    }
    out
}

/// What promtool reported about one case.
enum Reported {
    Got(Answer),
    Error(String),
}

/// Runs promtool on `file`; `None` when every case matched exactly.
fn run_promtool(file: &std::path::Path) -> Option<String> {
    let output = match Command::new("promtool").arg("test").arg("rules").arg(file).output() {
        Ok(output) => output,
        Err(e) if e.kind() == ErrorKind::NotFound => panic!(
            "promtool is not installed: this test compares log-cache with Prometheus' engine and needs it \
             (apt-get install prometheus, or run scripts/test, which installs it)"
        ),
        Err(e) => panic!("promtool did not run: {e}"),
    };
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        assert!(text.contains("SUCCESS"), "promtool exited 0 without SUCCESS:\n{text}");
        return None;
    }
    Some(text)
}

/// promtool's report of failed cases, by case index. Each reads
/// `expr: "<query># case N", time: 1m,` then `exp: …` and `got: …`, or `…, err: <message>`.
fn parse_report(text: &str) -> HashMap<usize, Reported> {
    let mut out = HashMap::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let Some(at) = line.find("# case ") else { continue };
        let digits: String = line[at + 7..].chars().take_while(char::is_ascii_digit).collect();
        let Ok(case) = digits.parse::<usize>() else { continue };
        if let Some(err) = line.find(", err: ") {
            out.insert(case, Reported::Error(line[err + 7..].to_owned()));
            continue;
        }
        // `exp:` then `got:`.
        let got = lines.by_ref().take(2).find_map(|l| l.trim_start().strip_prefix("got: ").map(str::to_owned));
        let Some(got) = got else {
            panic!("promtool's report of case {case} has no `got:` line:\n{text}");
        };
        let answer = parse_samples(&got).unwrap_or_else(|| panic!("cannot read promtool's answer {got:?}"));
        out.insert(case, Reported::Got(answer));
    }
    out
}

/// `nil`, or `{a="b", c="d"} 1.5E+00, {…} NaN`: label sets as Prometheus prints them (values
/// Go-quoted) and values in Go's `%E`.
fn parse_samples(text: &str) -> Option<Answer> {
    if text.trim() == "nil" {
        return Some(Vec::new());
    }
    let mut out = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        rest = rest.strip_prefix('{')?;
        let mut labels = BTreeMap::new();
        loop {
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = rest.find('=')?;
            let name = rest[..eq].trim_start_matches([',', ' ']).to_owned();
            let (value, after) = go_unquote(&rest[eq + 1..])?;
            labels.insert(name, value);
            rest = after.strip_prefix(", ").unwrap_or(after);
        }
        rest = rest.strip_prefix(' ')?;
        let end = rest.find(", {").unwrap_or(rest.len());
        let value = match &rest[..end] {
            "NaN" => f64::NAN,
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            number => number.parse().ok()?,
        };
        labels.remove("__name__");
        out.push((labels, value));
        rest = rest.get(end + 2..).unwrap_or("");
    }
    Some(out)
}

/// A Go-quoted string at the start of `s` (simple escapes only, which is all generated labels
/// need), and what follows it.
fn go_unquote(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 2..])),
            '\\' => out.push(chars.next()?.1),
            c => out.push(c),
        }
    }
    None
}

fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
}

/// Whether two answers hold the same label sets with close values.
fn same_answer(ours: &Answer, theirs: &Answer) -> bool {
    let sorted = |a: &Answer| {
        let mut a = a.clone();
        a.sort_by(|x, y| x.0.cmp(&y.0));
        a
    };
    let (ours, theirs) = (sorted(ours), sorted(theirs));
    ours.len() == theirs.len() && ours.iter().zip(&theirs).all(|(o, t)| o.0 == t.0 && close(o.1, t.1))
}

// === the queries ===

/// Every query, evaluated at every instant of [`EVAL_SECS`].
const QUERIES: &[&str] = &[
    // Selectors and their modifiers.
    r#"cpu{source_id="app"}"#,
    r#"cpu{source_id="app", instance_id="1"}"#,
    r#"memory{source_id=~"app|db"}"#,
    r#"{source_id="db"}"#,
    r#"cpu{source_id="app"} offset 1m"#,
    r#"cpu{source_id="app"} @ 300"#,
    r#"cpu{source_id="app"} @ 300 offset 1m"#,
    // Range functions over gauges, counters with resets, and special values.
    r#"rate(requests{source_id="app"}[5m])"#,
    r#"rate(cpu{source_id="app"}[1m])"#,
    r#"increase(requests{source_id="app"}[2m])"#,
    r#"delta(cpu{source_id="app"}[3m])"#,
    r#"irate(requests{source_id="app"}[1m])"#,
    r#"idelta(cpu{source_id="app"}[2m])"#,
    r#"rate(requests{source_id="app"}[5m] offset 2m)"#,
    r#"deriv(cpu{source_id="app"}[5m])"#,
    r#"deriv(requests{source_id="app"}[2m])"#,
    r#"deriv(odd{source_id="app"}[2m])"#,
    r#"predict_linear(cpu{source_id="app"}[5m], 600)"#,
    r#"predict_linear(requests{source_id="app"}[3m] offset 2m, 60)"#,
    r#"predict_linear(cpu{source_id="app"}[10m] @ 600, -30)"#,
    r#"changes(cpu{source_id="app"}[5m])"#,
    r#"changes(odd{source_id="app"}[5m])"#,
    r#"resets(requests{source_id="app"}[10m])"#,
    r#"resets(odd{source_id="app"}[5m])"#,
    r#"avg_over_time(cpu{source_id="app"}[2m])"#,
    r#"avg_over_time(odd{source_id="app"}[2m])"#,
    r#"min_over_time(cpu{source_id="app"}[2m])"#,
    r#"min_over_time(odd{source_id="app"}[2m])"#,
    r#"max_over_time(odd{source_id="app"}[3m])"#,
    r#"sum_over_time(requests{source_id="app"}[5m])"#,
    r#"sum_over_time(odd{source_id="app"}[4m])"#,
    r#"count_over_time(cpu{source_id="app"}[3m])"#,
    r#"last_over_time(cpu{source_id="app"}[1m])"#,
    r#"stddev_over_time(cpu{source_id="app"}[5m])"#,
    r#"stddev_over_time(odd{source_id="app"}[3m])"#,
    r#"stdvar_over_time(requests{source_id="app"}[5m])"#,
    r#"stdvar_over_time(odd{source_id="app"}[5m])"#,
    r#"quantile_over_time(0.5, cpu{source_id="app"}[5m])"#,
    r#"quantile_over_time(0.9, requests{source_id="app"}[3m])"#,
    r#"quantile_over_time(0, cpu{source_id="app"}[5m])"#,
    r#"quantile_over_time(1, cpu{source_id="app"}[5m])"#,
    r#"quantile_over_time(-1, cpu{source_id="app"}[5m])"#,
    r#"quantile_over_time(1.5, cpu{source_id="app"}[5m])"#,
    r#"quantile_over_time(0.25, odd{source_id="app"}[5m])"#,
    r#"present_over_time(cpu{source_id="app"}[1m])"#,
    r#"absent_over_time(cpu{source_id="app"}[1m])"#,
    r#"absent_over_time(nothing{source_id="app", job="x"}[1m])"#,
    r#"double_exponential_smoothing(cpu{source_id="app"}[5m], 0.5, 0.3)"#,
    r#"double_exponential_smoothing(requests{source_id="app"}[3m], 0.1, 0.9)"#,
    // Value by value.
    r#"abs(odd{source_id="app"})"#,
    r#"ceil(cpu{source_id="app"} / 3)"#,
    r#"floor(odd{source_id="app"} / 3)"#,
    r#"round(cpu{source_id="app"} / 3)"#,
    r#"round(cpu{source_id="app"}, 5)"#,
    r#"round(odd{source_id="app"}, 0.3)"#,
    r#"exp(odd{source_id="app"})"#,
    r#"ln(cpu{source_id="app"})"#,
    r#"ln(odd{source_id="app"})"#,
    r#"log2(requests{source_id="app"})"#,
    r#"log10(odd{source_id="app"})"#,
    r#"sqrt(odd{source_id="app"})"#,
    r#"sgn(odd{source_id="app"})"#,
    r#"clamp(cpu{source_id="app"}, 40, 50)"#,
    r#"clamp_min(odd{source_id="app"}, 0)"#,
    r#"clamp_max(odd{source_id="app"}, 1)"#,
    r#"acos(cpu{source_id="app"} / 100)"#,
    r#"asin(odd{source_id="app"} / 5)"#,
    r#"atan(odd{source_id="app"})"#,
    r#"acosh(cpu{source_id="app"})"#,
    r#"asinh(odd{source_id="app"})"#,
    r#"atanh(odd{source_id="app"} / 5)"#,
    r#"cos(odd{source_id="app"})"#,
    r#"cosh(odd{source_id="app"})"#,
    r#"sin(cpu{source_id="app"})"#,
    r#"sinh(odd{source_id="app"})"#,
    r#"tan(odd{source_id="app"})"#,
    r#"tanh(odd{source_id="app"})"#,
    r#"deg(odd{source_id="app"})"#,
    r#"rad(cpu{source_id="app"})"#,
    r#"pi()"#,
    // Time.
    r#"time()"#,
    r#"timestamp(cpu{source_id="app"})"#,
    r#"timestamp(cpu{source_id="app"} offset 40s)"#,
    r#"timestamp(abs(cpu{source_id="app"}))"#,
    r#"day_of_month()"#,
    r#"day_of_week()"#,
    r#"day_of_year()"#,
    r#"days_in_month()"#,
    r#"hour()"#,
    r#"minute()"#,
    r#"month()"#,
    r#"year()"#,
    r#"minute(requests{source_id="app"} * 1000)"#,
    r#"hour(requests{source_id="app"} * 10000)"#,
    r#"day_of_week(requests{source_id="app"} * 100000)"#,
    r#"day_of_month(requests{source_id="app"} * 1000000)"#,
    r#"day_of_year(memory{source_id="app"} * 3000000)"#,
    r#"days_in_month(requests{source_id="app"} * 1000000)"#,
    r#"month(memory{source_id="app"} * 1000000)"#,
    r#"year(memory{source_id="app"} * -20000000)"#,
    r#"year(odd{source_id="app"})"#,
    r#"day_of_week(odd{source_id="app"} * 1e18)"#,
    r#"vector(1)"#,
    r#"vector(time())"#,
    r#"scalar(cpu{source_id="app", instance_id="0"})"#,
    r#"scalar(cpu{source_id="app"})"#,
    r#"cpu{source_id="app"} * scalar(cpu{source_id="app", instance_id="0"})"#,
    // Aggregations.
    r#"sum(cpu{source_id="app"})"#,
    r#"avg(cpu{source_id="app"})"#,
    r#"min(odd{source_id="app"})"#,
    r#"max(odd{source_id="app"})"#,
    r#"count(cpu{source_id="app"})"#,
    r#"group(cpu{source_id="app"})"#,
    r#"stddev(cpu{source_id="app"})"#,
    r#"stdvar(requests{source_id="app"})"#,
    r#"stddev(odd{source_id="app"})"#,
    r#"avg(odd{source_id="app"})"#,
    r#"sum by (path) (requests{source_id="app"})"#,
    r#"avg without (instance_id) (requests{source_id="app"})"#,
    r#"group by (job) (requests{source_id="app"})"#,
    r#"stddev by (path) (requests{source_id="app"})"#,
    r#"stdvar without (path) (requests{source_id="app"})"#,
    r#"count by (le) (latency_bucket{source_id="app"})"#,
    r#"quantile(0.5, cpu{source_id="app"})"#,
    r#"quantile by (path) (0.9, requests{source_id="app"})"#,
    r#"quantile(0, odd{source_id="app"})"#,
    r#"quantile(2, cpu{source_id="app"})"#,
    r#"quantile(-1, cpu{source_id="app"})"#,
    r#"count_values("value", round(cpu{source_id="app"} / 10))"#,
    r#"count_values by (path) ("bucket", floor(requests{source_id="app"} / 100))"#,
    r#"count_values without (instance_id) ("v", round(cpu{source_id="app"} / 20))"#,
    r#"count_values("v", odd{source_id="app"})"#,
    r#"topk(2, cpu{source_id="app"})"#,
    r#"bottomk by (path) (1, requests{source_id="app"})"#,
    r#"topk(1, odd{source_id="app"})"#,
    r#"sort(cpu{source_id="app"})"#,
    r#"sort_desc(odd{source_id="app"})"#,
    // Label functions and absent.
    r#"label_replace(cpu{source_id="app"}, "inst", "i-$1", "instance_id", "(.*)")"#,
    r#"label_replace(cpu{source_id="app"}, "job", "", "job", ".*")"#,
    r#"label_replace(requests{source_id="app"}, "version", "$1", "path", "/(v[0-9])/.*")"#,
    r#"label_replace(requests{source_id="app"}, "version", "$1", "path", "v[0-9]")"#,
    r#"label_replace(requests{source_id="app"}, "p", "${1}x$2", "path", "/(?P<first>[a-z0-9]+)/(.*)")"#,
    r#"label_replace(cpu{source_id="app"}, "missing", "was $1", "nowhere", "(.*)")"#,
    r#"label_join(requests{source_id="app"}, "joined", "-", "instance_id", "path")"#,
    r#"label_join(cpu{source_id="app"}, "empty", ",", "nowhere", "nothing")"#,
    r#"label_join(cpu{source_id="app"}, "job", "", "instance_id")"#,
    r#"absent(cpu{source_id="app"})"#,
    r#"absent(nothing{source_id="app", job="x"})"#,
    r#"absent(nothing{source_id="app", job="x", job="y"})"#,
    r#"absent(nothing{source_id="app", path="", job="api"})"#,
    r#"absent(sum(nothing{source_id="app"}))"#,
    // histogram_quantile over bucket-labelled gauges.
    r#"histogram_quantile(0.5, latency_bucket{source_id="app"})"#,
    r#"histogram_quantile(0.99, latency_bucket{source_id="app"})"#,
    r#"histogram_quantile(0, latency_bucket{source_id="app"})"#,
    r#"histogram_quantile(1, latency_bucket{source_id="app"})"#,
    r#"histogram_quantile(-0.5, latency_bucket{source_id="app"})"#,
    r#"histogram_quantile(1.5, latency_bucket{source_id="app"})"#,
    r#"histogram_quantile(NaN, latency_bucket{source_id="app"})"#,
    r#"histogram_quantile(0.9, rate(latency_bucket{source_id="app"}[5m]))"#,
    r#"histogram_quantile(0.9, sum by (le) (rate(latency_bucket{source_id="app"}[5m])))"#,
    r#"histogram_quantile(0.5, broken_bucket{source_id="app"})"#,
    r#"histogram_quantile(0.1, broken_bucket{source_id="app"})"#,
    r#"histogram_quantile(0.95, broken_bucket{source_id="app"})"#,
    // Binary operators, vector matching, bool and set operators.
    r#"1 + 2 * 3 - 4 / 8 % 3 ^ 2"#,
    r#"2 > bool 1"#,
    r#"-cpu{source_id="app"}"#,
    r#"cpu{source_id="app"} + 1"#,
    r#"100 - cpu{source_id="app"}"#,
    r#"cpu{source_id="app"} * cpu{source_id="app"}"#,
    r#"odd{source_id="app"} / 0"#,
    r#"cpu{source_id="app"} % 7"#,
    r#"odd{source_id="app"} % 1.5"#,
    r#"cpu{source_id="app"} ^ 0.5"#,
    r#"odd{source_id="app"} ^ odd{source_id="app"}"#,
    r#"cpu{source_id="app"} atan2 10"#,
    r#"odd{source_id="app"} atan2 odd{source_id="app"}"#,
    r#"cpu{source_id="app"} > 50"#,
    r#"50 < cpu{source_id="app"}"#,
    r#"cpu{source_id="app"} > bool 50"#,
    r#"odd{source_id="app"} == bool 0"#,
    r#"odd{source_id="app"} != 0"#,
    r#"cpu{source_id="app"} <= memory{source_id="app"} / 10"#,
    r#"memory{source_id="app"} / memory_quota{source_id="app"}"#,
    r#"memory{source_id="app"} / on (instance_id) memory_quota{source_id="app"}"#,
    r#"memory{source_id="app"} / ignoring (job) memory_quota{source_id="app"}"#,
    r#"memory{source_id="app"} > bool on (instance_id) memory_quota{source_id="app"} / 2"#,
    r#"requests{source_id="app"} * on (instance_id) group_left (version) build_info{source_id="app"}"#,
    r#"build_info{source_id="app"} * on (instance_id) group_right (version) requests{source_id="app"}"#,
    r#"sum by (instance_id) (requests{source_id="app"}) / on (instance_id) group_left cpu{source_id="app"}"#,
    r#"requests{source_id="app"} > on (instance_id) group_left memory{source_id="app"} / 4"#,
    r#"cpu{source_id="app"} and memory{source_id="app"}"#,
    r#"cpu{source_id="app"} or memory{source_id="app"}"#,
    r#"cpu{source_id="app"} unless memory{source_id="app"}"#,
    r#"cpu{source_id="app"} and on (instance_id) (memory{source_id="app"} > 500)"#,
    r#"requests{source_id="app"} unless ignoring (path) build_info{source_id="app"}"#,
    r#"memory{source_id=~"app|db"} or on (job) cpu{source_id="app"}"#,
    // Subqueries: aligned to absolute multiples of their step, default step, offsets, @, nesting.
    r#"max_over_time(cpu{source_id="app"}[5m:1m])"#,
    r#"count_over_time(cpu{source_id="app"}[5m:])"#,
    r#"sum_over_time(cpu{source_id="app"}[3m:7s])"#,
    r#"avg_over_time(rate(requests{source_id="app"}[2m])[10m:30s])"#,
    r#"min_over_time(cpu{source_id="app"}[5m:1m] offset 2m)"#,
    r#"max_over_time(cpu{source_id="app"}[5m:1m] @ 600)"#,
    r#"max_over_time(avg_over_time(cpu{source_id="app"}[2m:30s])[6m:1m])"#,
    r#"deriv(sum(cpu{source_id="app"})[5m:30s])"#,
    r#"rate(requests{source_id="app"}[5m:1m])"#,
    r#"quantile_over_time(0.5, cpu{source_id="app"}[5m:20s])"#,
    r#"absent_over_time(nothing{source_id="app"}[5m:1m])"#,
    r#"absent_over_time(cpu{source_id="app"}[1m:1m])"#,
    r#"changes(round(cpu{source_id="app"} / 10)[10m:15s])"#,
    r#"predict_linear(cpu{source_id="app"}[5m:30s], 120)"#,
    r#"last_over_time(timestamp(cpu{source_id="app"})[2m:45s])"#,
    r#"count_over_time(vector(1)[2m:10s])"#,
];

#[test]
fn every_supported_query_agrees_with_prometheus() {
    let all = generate();
    let engine = engine_over(&all);
    let mut cases = Vec::new();
    for &query in QUERIES {
        let answers: Vec<Case> =
            EVAL_SECS.iter().map(|&secs| Case { query, secs, ours: log_cache_answer(&engine, query, secs) }).collect();
        // A query empty at every instant would compare nothing.
        assert!(answers.iter().any(|c| !c.ours.is_empty()), "{query} is empty at every instant");
        cases.extend(answers);
    }

    let file = std::env::temp_dir().join(format!("log-cache-promql-{}.yml", std::process::id()));
    std::fs::write(&file, unit_test_file(&all, &cases)).expect("writes the promtool unit test");
    let report = run_promtool(&file);
    if std::env::var_os(KEEP_FILE_VAR).is_some() {
        eprintln!("promtool unit test kept at {}", file.display());
    } else {
        std::fs::remove_file(&file).ok();
    }
    let Some(report) = report else {
        return;
    };

    let reported = parse_report(&report);
    assert!(!reported.is_empty(), "promtool failed without reporting a case:\n{report}");
    let mut disagreements = Vec::new();
    let mut within_tolerance = 0;
    for (index, outcome) in &reported {
        let case = &cases[*index];
        match outcome {
            Reported::Error(message) => {
                disagreements.push(format!("{} at {}s: Prometheus failed: {message}", case.query, case.secs))
            }
            Reported::Got(theirs) if same_answer(&case.ours, theirs) => within_tolerance += 1,
            Reported::Got(theirs) => disagreements.push(format!(
                "{} at {}s:\n    log-cache:  {:?}\n    Prometheus: {:?}",
                case.query, case.secs, case.ours, theirs
            )),
        }
    }
    disagreements.sort();
    eprintln!(
        "{} cases; promtool reported {} and {within_tolerance} agree within tolerance",
        cases.len(),
        reported.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} of {} cases disagree with Prometheus ({within_tolerance} more differ within tolerance):\n{}",
        disagreements.len(),
        cases.len(),
        disagreements.join("\n")
    );
}

/// A range query is the instant query at every step: checked for the queries whose evaluation keeps
/// state across steps (each subquery keeps the inner results of the instants still in its range).
#[test]
fn range_queries_over_subqueries_are_the_instant_queries_at_each_step() {
    // Only the series these queries read, so that the many instant queries stay quick.
    let read = generate().into_iter().filter(|s| s.name == "cpu" || s.name == "requests").collect::<Vec<_>>();
    let engine = engine_over(&read);
    let subqueries = QUERIES.iter().filter(|q| q.contains(":") && q.contains(']'));
    for &query in subqueries {
        for step in [15, 37, 60] {
            let result = engine.range_query(query, "0", "1500", &step.to_string()).expect("range query");
            let Some(range_query_result::Result::Matrix(matrix)) = result.result else {
                panic!("{query}: expected a matrix");
            };
            let mut by_step: BTreeMap<i64, Answer> = BTreeMap::new();
            for series in &matrix.series {
                let labels: BTreeMap<String, String> = series.metric.clone().into_iter().collect();
                for point in &series.points {
                    let secs = point.time.parse::<f64>().expect("point time") as i64;
                    by_step.entry(secs).or_default().push((labels.clone(), point.value));
                }
            }
            let mut secs = 0;
            while secs <= 1500 {
                let instant = log_cache_answer(&engine, query, secs);
                let ranged = by_step.remove(&secs).unwrap_or_default();
                assert!(same_answer(&instant, &ranged), "{query} step {step} at {secs}s: {ranged:?} vs {instant:?}");
                secs += step;
            }
            assert!(by_step.is_empty(), "{query}: points off the steps: {by_step:?}");
        }
    }
}
