//! PromQL over the metrics held by Log Cache (PROTOCOLS.md §6.6, §6.7).
//!
//! Queries are parsed by the `promql-parser` crate and evaluated here, with Prometheus 2.x
//! semantics and Log Cache's own rules: every selector names its source ids (`source_id="a"` or
//! `source_id=~"a|b"`, a literal list), metric names are matched against sanitized envelope names,
//! series carry the envelope's tags plus `source_id` and `instance_id` and no `__name__`, and sample
//! timestamps are truncated to whole seconds.
//!
//! The engine is synchronous and CPU-bound: async callers run it on a blocking thread. It bounds each
//! query by a timeout, checked throughout evaluation, and by the number of samples it touches (samples
//! loaded from the store plus samples selected at each evaluation step plus result points).
//!
//! Layout:
//! - `error`: [`PromQLError`] and its one mapping to gRPC codes, HTTP statuses and `errorType`.
//! - `guard`: a bound on query nesting, checked before parsing so that recursion cannot overflow.
//! - `params`: `time`, `start`, `end`, `step` parsing and point time formatting.
//! - `plan`: syntax tree → evaluation tree; rejects unsupported features and selectors without a
//!   source id before any read.
//! - `series`, `load`: envelopes → labelled series, read once per source id.
//! - `eval`: evaluation at one instant (selectors, subqueries, functions); `aggregate`, `binary`:
//!   the aggregation and binary operators; `functions`, `histogram`, `calendar`: the numeric kernels
//!   (range functions, `histogram_quantile`'s buckets, the date functions' Go-compatible calendar).
//! - `json`: the Prometheus-style HTTP bodies.

mod aggregate;
mod binary;
mod calendar;
mod error;
mod eval;
mod functions;
pub(crate) mod guard;
mod histogram;
mod json;
mod load;
mod params;
mod plan;
mod series;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loggregator_proto::logcache::v1::prom_ql::{
    self, instant_query_result, range_query_result, InstantQueryResult, RangeQueryResult,
};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::Expr;

pub use error::PromQLError;
pub use guard::{MAX_CHECKED_SOURCES_PER_QUERY, MAX_SOURCES_PER_QUERY};
pub use json::{error_to_json, instant_result_to_json, range_result_to_json};

use eval::{Deadline, Evaluator, SampleBudget, Value};
use load::{load_series, QueryWindow};
use params::{check_range, format_time, now_truncated_to_second_ms, parse_step, parse_time};
use plan::{AggOp, Func, Node};
use series::{Labels, Point};

/// Log Cache's query timeout (`QUERY_TIMEOUT`, §6.4).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Log Cache's sample bound (Prometheus `MaxSamples`, §6.6).
pub const DEFAULT_MAX_SAMPLES: usize = 50_000_000;
/// How far back an instant selector looks for a sample (Prometheus' default lookback delta).
pub const LOOKBACK_DELTA: Duration = Duration::from_secs(5 * 60);

/// Where the engine reads metrics from: the Log Cache store.
pub trait MetricSource: Send + Sync {
    /// GAUGE, COUNTER and TIMER envelopes of `source_id` with timestamp in [start_ns, end_ns],
    /// ascending, still encoded: the engine charges them to the query's sample budget before it
    /// decodes any, and then decodes them one at a time. A source may stop after `max` + 1
    /// envelopes (the query fails then anyway), so a hostile query costs no more than its budget.
    fn read_metric_envelopes(&self, source_id: &str, start_ns: i64, end_ns: i64, max: usize) -> Vec<Bytes>;
}

/// Evaluates PromQL queries against a [`MetricSource`].
pub struct Engine {
    source: Arc<dyn MetricSource>,
    timeout: Duration,
    max_samples: usize,
}

impl Engine {
    /// An engine reading from `source`, failing queries that run longer than `timeout` or touch more
    /// than `max_samples` samples.
    pub fn new(source: Arc<dyn MetricSource>, timeout: Duration, max_samples: usize) -> Self {
        Self { source, timeout, max_samples }
    }

    /// Evaluates `query` at `time` (float unix seconds or RFC 3339; empty means now, truncated to the
    /// second). The result is a scalar, an instant vector, or a range vector for a bare matrix selector.
    pub fn instant_query(&self, query: &str, time: &str) -> Result<InstantQueryResult, PromQLError> {
        let deadline = Deadline::after(self.timeout);
        let t = if time.is_empty() { now_truncated_to_second_ms() } else { parse_time("time", time)? };
        let expr = parse_query(query)?;
        if expr.value_type() == ValueType::String {
            return Err(PromQLError::BadQuery("string results are not supported by log-cache".to_owned()));
        }
        let mut plan = plan::plan(&expr, t, t)?;
        let mut budget = SampleBudget::new(self.max_samples);
        let window = QueryWindow { lookback_ms: lookback_ms() };
        load_series(&mut plan, &*self.source, &window, deadline, &mut budget)?;

        let keep_order = keeps_order(&plan.root);
        let mut evaluator = Evaluator::new(&plan, lookback_ms(), deadline, budget);
        let result = match evaluator.eval(&plan.root, t)? {
            Value::Scalar(value) => {
                instant_query_result::Result::Scalar(prom_ql::Scalar { time: format_time(t), value })
            }
            Value::Vector(mut samples) => {
                if !keep_order {
                    samples.sort_by(|a, b| a.labels.cmp(&b.labels));
                }
                let time = format_time(t);
                instant_query_result::Result::Vector(prom_ql::Vector {
                    samples: samples
                        .into_iter()
                        .map(|s| prom_ql::Sample {
                            metric: metric_map(&s.labels),
                            point: Some(prom_ql::Point { time: time.clone(), value: s.v }),
                        })
                        .collect(),
                })
            }
            Value::Matrix(series) => instant_query_result::Result::Matrix(prom_ql::Matrix {
                series: series.into_iter().map(|s| proto_series(&s.labels, &s.points)).collect(),
            }),
            Value::String => {
                return Err(PromQLError::BadQuery("string results are not supported by log-cache".to_owned()))
            }
        };
        Ok(InstantQueryResult { result: Some(result) })
    }

    /// Evaluates `query` at every `step` from `start` to `end` (inclusive). `start` and `end` are float
    /// unix seconds or RFC 3339; `step` is float seconds or a duration such as `30s`. The query must
    /// yield a scalar or an instant vector; series come out sorted by labels.
    pub fn range_query(
        &self,
        query: &str,
        start: &str,
        end: &str,
        step: &str,
    ) -> Result<RangeQueryResult, PromQLError> {
        let deadline = Deadline::after(self.timeout);
        let start_ms = parse_time("start", start)?;
        let end_ms = parse_time("end", end)?;
        let step_ms = parse_step(step)?;
        check_range(start_ms, end_ms, step_ms)?;
        let expr = parse_query(query)?;
        match expr.value_type() {
            ValueType::Scalar | ValueType::Vector => {}
            other => {
                return Err(PromQLError::BadQuery(format!(
                    "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                    match other {
                        ValueType::Matrix => "range vector",
                        _ => "string",
                    }
                )))
            }
        }
        let mut plan = plan::plan(&expr, start_ms, end_ms)?;
        let mut budget = SampleBudget::new(self.max_samples);
        let window = QueryWindow { lookback_ms: lookback_ms() };
        load_series(&mut plan, &*self.source, &window, deadline, &mut budget)?;

        let mut evaluator = Evaluator::new(&plan, lookback_ms(), deadline, budget);
        let mut by_labels: BTreeMap<Labels, Vec<Point>> = BTreeMap::new();
        let mut t = start_ms;
        while t <= end_ms {
            let samples = match evaluator.eval(&plan.root, t)? {
                Value::Scalar(v) => vec![eval::Sample { labels: Labels::default(), v }],
                Value::Vector(samples) => samples,
                Value::Matrix(_) | Value::String => {
                    return Err(PromQLError::Execution(
                        "range query step did not yield a scalar or an instant vector".to_owned(),
                    ))
                }
            };
            evaluator.budget.charge(samples.len())?;
            let mut seen: HashSet<&Labels> = HashSet::with_capacity(samples.len());
            for sample in &samples {
                if !seen.insert(&sample.labels) {
                    return Err(PromQLError::Execution(
                        "vector cannot contain metrics with the same labelset".to_owned(),
                    ));
                }
            }
            for sample in samples {
                by_labels.entry(sample.labels).or_default().push(Point { t, v: sample.v });
            }
            t = t.saturating_add(step_ms);
        }
        Ok(RangeQueryResult {
            result: Some(range_query_result::Result::Matrix(prom_ql::Matrix {
                series: by_labels.iter().map(|(labels, points)| proto_series(labels, points)).collect(),
            })),
        })
    }
}

fn lookback_ms() -> i64 {
    // Five minutes in ms fits easily.
    LOOKBACK_DELTA.as_millis() as i64
}

/// Parses a query, after bounding its nesting (see `guard`). `promql-parser` panics on some out-of-range durations (`x[1e400]`); that panic is
/// caught and reported as the parse error it is.
fn parse_query(query: &str) -> Result<Expr, PromQLError> {
    guard::check_nesting(query)?;
    match std::panic::catch_unwind(|| promql_parser::parser::parse(query)) {
        Ok(Ok(expr)) => Ok(expr),
        Ok(Err(message)) => Err(PromQLError::BadQuery(format!("parse error: {message}"))),
        Err(_) => Err(PromQLError::BadQuery("parse error: number or duration out of range".to_owned())),
    }
}

/// Whether the outermost operation is `topk`, `bottomk`, `sort` or `sort_desc`, whose output order
/// is meaningful (an instant query keeps it, as Prometheus does).
fn keeps_order(node: &Node) -> bool {
    matches!(
        node,
        Node::Aggregate { op: AggOp::Topk | AggOp::Bottomk, .. } | Node::Call { func: Func::Sort | Func::SortDesc, .. }
    )
}

fn metric_map(labels: &Labels) -> HashMap<String, String> {
    labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn proto_series(labels: &Labels, points: &[Point]) -> prom_ql::Series {
    prom_ql::Series {
        metric: metric_map(labels),
        points: points.iter().map(|p| prom_ql::Point { time: format_time(p.t), value: p.v }).collect(),
    }
}
