//! The Prometheus-style JSON bodies of `/api/v1/query` and `/api/v1/query_range` (PROTOCOLS.md §6.7).
//!
//! Times are raw JSON numbers with three decimals; values are strings in Go's shortest `'f'` format
//! (`"0.5"`, `"NaN"`, `"+Inf"`, `"-Inf"`); an empty result is `[]`; `metric` is `{}` when empty and its
//! keys are sorted. Every body ends with `\n`, as the gateway's responses do.

use std::collections::HashMap;

use loggregator_proto::logcache::v1::prom_ql::{
    instant_query_result, range_query_result, InstantQueryResult, Matrix, Point, RangeQueryResult, Vector,
};

use super::params::format_time;
use super::PromQLError;

/// The body of a successful instant query. A result without a value is an empty vector.
pub fn instant_result_to_json(r: &InstantQueryResult) -> String {
    match &r.result {
        Some(instant_query_result::Result::Scalar(scalar)) => {
            let mut result = String::from("[");
            push_time_value(&mut result, &scalar.time, scalar.value);
            result.push(']');
            success_body("scalar", &result)
        }
        Some(instant_query_result::Result::Vector(vector)) => success_body("vector", &vector_json(vector)),
        Some(instant_query_result::Result::Matrix(matrix)) => success_body("matrix", &matrix_json(matrix)),
        None => success_body("vector", "[]"),
    }
}

/// The body of a successful range query. A result without a value is an empty matrix.
pub fn range_result_to_json(r: &RangeQueryResult) -> String {
    match &r.result {
        Some(range_query_result::Result::Matrix(matrix)) => success_body("matrix", &matrix_json(matrix)),
        None => success_body("matrix", "[]"),
    }
}

/// The body of a failed query: `{"status":"error","errorType":…,"error":…}`.
pub fn error_to_json(e: &PromQLError) -> String {
    format!(
        "{{\"status\":\"error\",\"errorType\":{},\"error\":{}}}\n",
        json_string(e.error_type()),
        json_string(&e.to_string())
    )
}

fn success_body(result_type: &str, result: &str) -> String {
    format!("{{\"status\":\"success\",\"data\":{{\"resultType\":\"{result_type}\",\"result\":{result}}}}}\n")
}

fn vector_json(vector: &Vector) -> String {
    let mut out = String::from("[");
    for (i, sample) in vector.samples.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"metric\":");
        push_metric(&mut out, &sample.metric);
        out.push_str(",\"value\":[");
        match &sample.point {
            Some(point) => push_time_value(&mut out, &point.time, point.value),
            None => push_time_value(&mut out, "0", f64::NAN),
        }
        out.push_str("]}");
    }
    out.push(']');
    out
}

fn matrix_json(matrix: &Matrix) -> String {
    let mut out = String::from("[");
    for (i, series) in matrix.series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"metric\":");
        push_metric(&mut out, &series.metric);
        out.push_str(",\"values\":[");
        for (j, Point { time, value }) in series.points.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            out.push('[');
            push_time_value(&mut out, time, *value);
            out.push(']');
        }
        out.push_str("]}");
    }
    out.push(']');
    out
}

fn push_metric(out: &mut String, metric: &HashMap<String, String>) {
    let mut pairs: Vec<(&String, &String)> = metric.iter().collect();
    pairs.sort();
    out.push('{');
    for (i, (name, value)) in pairs.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&json_string(name));
        out.push(':');
        out.push_str(&json_string(value));
    }
    out.push('}');
}

/// `<time>,"<value>"`: the two elements of a Prometheus sample pair.
fn push_time_value(out: &mut String, time: &str, value: f64) {
    out.push_str(&json_time(time));
    out.push(',');
    out.push_str(&json_string(&format_value(value)));
}

/// A point's time string as a raw JSON number. The engine always produces `"<secs>.<millis>"`; any
/// other string is re-formatted (or becomes `0.000`), so the body stays valid JSON.
fn json_time(time: &str) -> String {
    let plain_number = !time.is_empty()
        && time.starts_with(|c: char| c.is_ascii_digit() || c == '-')
        && time.ends_with(|c: char| c.is_ascii_digit())
        && time.chars().all(|c| c.is_ascii_digit() || c == '.' || c == '-')
        && time.parse::<f64>().is_ok();
    if plain_number {
        return time.to_owned();
    }
    let millis = time
        .parse::<f64>()
        .ok()
        .map(|secs| (secs * 1000.0).round())
        .filter(|ms| ms.is_finite() && ms.abs() < i64::MAX as f64)
        // In range by the filter above.
        .map_or(0, |ms| ms as i64);
    format_time(millis)
}

/// A sample value as Prometheus formats it: Go's `strconv.FormatFloat(v, 'f', -1, 64)`, which like
/// Rust's `Display` is the shortest round-tripping decimal without exponent.
pub(crate) fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".to_owned()
    } else if v == f64::INFINITY {
        "+Inf".to_owned()
    } else if v == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        v.to_string()
    }
}

fn json_string(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}
