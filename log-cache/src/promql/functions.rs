//! The numeric kernels of PromQL functions and operators, each a pure function over samples so that
//! its arithmetic can be proofread against Prometheus' `promql/functions.go` and `engine.go`.

use super::plan::BinOp;
use super::series::Point;

/// `rate`, `increase` and `delta`: Prometheus' `extrapolatedRate`. The samples of the range
/// `[range_start, range_end]` (ms) give a raw increase (with counter resets corrected when
/// `is_counter`), which is extrapolated towards the range's edges when the first or last sample lies
/// within 1.1 average sample intervals of them, and otherwise by half an interval; counters are not
/// extrapolated below zero. `is_rate` divides by the range in seconds. Fewer than two samples: no value.
pub(crate) fn extrapolated_rate(
    points: &[Point],
    range_start: i64,
    range_end: i64,
    is_counter: bool,
    is_rate: bool,
) -> Option<f64> {
    let (first, last) = match points {
        [first, .., last] => (*first, *last),
        _ => return None,
    };
    let mut result = last.v - first.v;
    if is_counter {
        let mut previous = first.v;
        for p in points {
            if p.v < previous {
                result += previous;
            }
            previous = p.v;
        }
    }
    let mut duration_to_start = ms_to_seconds(first.t.saturating_sub(range_start));
    let duration_to_end = ms_to_seconds(range_end.saturating_sub(last.t));
    let sampled_interval = ms_to_seconds(last.t.saturating_sub(first.t));
    if sampled_interval == 0.0 {
        // Every sample in the same second: no slope to extrapolate (Prometheus divides by zero here).
        return None;
    }
    let intervals = (points.len() - 1) as f64;
    let average_interval = sampled_interval / intervals;

    if is_counter && result > 0.0 && first.v >= 0.0 {
        // Counters cannot go negative: do not extrapolate past the point where it would reach zero.
        let duration_to_zero = sampled_interval * (first.v / result);
        if duration_to_zero < duration_to_start {
            duration_to_start = duration_to_zero;
        }
    }

    let threshold = average_interval * 1.1;
    let mut extrapolate_to = sampled_interval;
    extrapolate_to += if duration_to_start < threshold { duration_to_start } else { average_interval / 2.0 };
    extrapolate_to += if duration_to_end < threshold { duration_to_end } else { average_interval / 2.0 };
    result *= extrapolate_to / sampled_interval;
    if is_rate {
        result /= ms_to_seconds(range_end.saturating_sub(range_start));
    }
    Some(result)
}

/// `irate` and `idelta`: Prometheus' `instantValue`, from the last two samples of the range.
pub(crate) fn instant_value(points: &[Point], is_rate: bool) -> Option<f64> {
    let (previous, last) = match points {
        [.., previous, last] => (*previous, *last),
        _ => return None,
    };
    let mut result = if is_rate && last.v < previous.v {
        // A counter reset: the counter restarted from zero.
        last.v
    } else {
        last.v - previous.v
    };
    let interval = last.t.saturating_sub(previous.t);
    if interval == 0 {
        return None;
    }
    if is_rate {
        result /= ms_to_seconds(interval);
    }
    Some(result)
}

/// The `*_over_time` aggregations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverTime {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
}

/// Aggregates the samples of a range; `None` when there are none.
pub(crate) fn over_time(kind: OverTime, points: &[Point]) -> Option<f64> {
    let last = points.last()?;
    let values = points.iter().map(|p| p.v);
    Some(match kind {
        OverTime::Avg => values.sum::<f64>() / points.len() as f64,
        OverTime::Min => values.fold(f64::NAN, |min, v| if v < min || min.is_nan() { v } else { min }),
        OverTime::Max => values.fold(f64::NAN, |max, v| if v > max || max.is_nan() { v } else { max }),
        OverTime::Sum => values.sum(),
        OverTime::Count => points.len() as f64,
        OverTime::Last => last.v,
    })
}

/// `round(v, to_nearest)`: Prometheus rounds half up, to a multiple of `to_nearest`.
pub(crate) fn round_to_nearest(v: f64, to_nearest: f64) -> f64 {
    let inverse = 1.0 / to_nearest;
    (v * inverse + 0.5).floor() / inverse
}

/// Go's `math.Max`: NaN if either side is NaN (Rust's `f64::max` ignores NaN).
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN if either side is NaN.
pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// Applies an arithmetic or comparison operator to two values, as Prometheus' `vectorElemBinop`:
/// returns the value and whether to keep it. Comparisons keep the left value when true.
pub(crate) fn apply_binop(op: BinOp, lhs: f64, rhs: f64) -> (f64, bool) {
    match op {
        BinOp::Add => (lhs + rhs, true),
        BinOp::Sub => (lhs - rhs, true),
        BinOp::Mul => (lhs * rhs, true),
        BinOp::Div => (lhs / rhs, true),
        // Rust's float `%` is C's fmod, like Go's `math.Mod`.
        BinOp::Mod => (lhs % rhs, true),
        BinOp::Pow => (lhs.powf(rhs), true),
        BinOp::Eq => (lhs, lhs == rhs),
        BinOp::Ne => (lhs, lhs != rhs),
        BinOp::Gt => (lhs, lhs > rhs),
        BinOp::Lt => (lhs, lhs < rhs),
        BinOp::Ge => (lhs, lhs >= rhs),
        BinOp::Le => (lhs, lhs <= rhs),
        // Set operators never reach here: they select samples and compute nothing.
        BinOp::And | BinOp::Or | BinOp::Unless => (lhs, true),
    }
}

fn ms_to_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}
