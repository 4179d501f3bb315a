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

/// The `*_over_time` aggregations and the other functions of one range's values alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OverTime {
    Avg,
    Min,
    Max,
    Sum,
    Count,
    Last,
    Stddev,
    Stdvar,
    Present,
    Changes,
    Resets,
}

/// Aggregates the samples of a range; `None` when there are none.
pub(crate) fn over_time(kind: OverTime, points: &[Point]) -> Option<f64> {
    let last = points.last()?;
    let values = points.iter().map(|p| p.v);
    Some(match kind {
        OverTime::Avg => incremental_mean(values),
        OverTime::Min => values.fold(f64::NAN, |min, v| if v < min || min.is_nan() { v } else { min }),
        OverTime::Max => values.fold(f64::NAN, |max, v| if v > max || max.is_nan() { v } else { max }),
        OverTime::Sum => {
            let (sum, c) = values.fold((0.0, 0.0), |(sum, c), v| kahan_sum_inc(v, sum, c));
            if sum.is_infinite() {
                sum
            } else {
                sum + c
            }
        }
        OverTime::Count => points.len() as f64,
        OverTime::Last => last.v,
        OverTime::Stddev => welford_variance(values).sqrt(),
        OverTime::Stdvar => welford_variance(values),
        OverTime::Present => 1.0,
        OverTime::Changes => {
            // NaN to NaN is no change.
            let changes = points
                .windows(2)
                .filter(|w| matches!(w, [a, b] if a.v != b.v && !(a.v.is_nan() && b.v.is_nan())))
                .count();
            changes as f64
        }
        OverTime::Resets => points.windows(2).filter(|w| matches!(w, [a, b] if b.v < a.v)).count() as f64,
    })
}

/// The mean as Prometheus computes `avg_over_time`: incrementally, so that large values do not
/// overflow, and an infinite mean stays what it is unless an opposite infinity or a NaN arrives.
fn incremental_mean(values: impl Iterator<Item = f64>) -> f64 {
    let (mut mean, mut c, mut count) = (0.0f64, 0.0f64, 0.0f64);
    for v in values {
        count += 1.0;
        if mean.is_infinite() {
            if v.is_infinite() && (mean > 0.0) == (v > 0.0) {
                continue;
            }
            if !v.is_infinite() && !v.is_nan() {
                continue;
            }
        }
        (mean, c) = kahan_sum_inc(v / count - mean / count, mean, c);
    }
    if mean.is_infinite() {
        mean
    } else {
        mean + c
    }
}

/// The population variance, by Welford's online algorithm with compensated sums (Prometheus'
/// `stdvar_over_time`).
fn welford_variance(values: impl Iterator<Item = f64>) -> f64 {
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for v in values {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    (aux + c_aux) / count
}

/// One step of Kahan–Neumaier compensated summation: the new sum and compensation.
pub(crate) fn kahan_sum_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if sum.abs() >= inc.abs() { c + ((sum - t) + inc) } else { c + ((inc - t) + sum) };
    (t, c)
}

/// The `φ`-quantile of `values`, interpolating linearly between the two nearest ranks (Prometheus'
/// `quantile`, shared by `quantile` and `quantile_over_time`). NaN values sort first, as there.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        (false, false) => a.total_cmp(b),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    // Both indexes are in [0, n − 1] by construction.
    let at = |i: f64| values.get(i as usize).copied().unwrap_or(f64::NAN);
    at(lower) * (1.0 - weight) + at(upper) * weight
}

/// Least-squares fit of the range's values against time in seconds from `intercept_ms`: the slope
/// and the value at `intercept_ms` (Prometheus' `linearRegression`). Constant values fit exactly.
pub(crate) fn linear_regression(points: &[Point], intercept_ms: i64) -> (f64, f64) {
    let Some(first) = points.first() else {
        return (f64::NAN, f64::NAN);
    };
    let init_y = first.v;
    let mut const_y = true;
    let (mut n, mut sum_x, mut c_x, mut sum_y, mut c_y) = (0.0f64, 0.0f64, 0.0f64, 0.0f64, 0.0f64);
    let (mut sum_xy, mut c_xy, mut sum_x2, mut c_x2) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (i, p) in points.iter().enumerate() {
        if const_y && i > 0 && p.v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = p.t.saturating_sub(intercept_ms) as f64 / 1e3;
        (sum_x, c_x) = kahan_sum_inc(x, sum_x, c_x);
        (sum_y, c_y) = kahan_sum_inc(p.v, sum_y, c_y);
        (sum_xy, c_xy) = kahan_sum_inc(x * p.v, sum_xy, c_xy);
        (sum_x2, c_x2) = kahan_sum_inc(x * x, sum_x2, c_x2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sum_x, sum_y, sum_xy, sum_x2) = (sum_x + c_x, sum_y + c_y, sum_xy + c_xy, sum_x2 + c_x2);
    let cov_xy = sum_xy - sum_x * sum_y / n;
    let var_x = sum_x2 - sum_x * sum_x / n;
    let slope = cov_xy / var_x;
    let intercept = sum_y / n - slope * sum_x / n;
    (slope, intercept)
}

/// `deriv`: the slope of the least-squares fit, per second; fewer than two samples: no value.
pub(crate) fn deriv(points: &[Point]) -> Option<f64> {
    let [first, _, ..] = points else {
        return None;
    };
    // Times relative to the first sample keep the sums small (Prometheus issue 2674).
    Some(linear_regression(points, first.t).0)
}

/// `predict_linear`: the fit's value `seconds` after the evaluation instant `t_ms`.
pub(crate) fn predict_linear(points: &[Point], t_ms: i64, seconds: f64) -> Option<f64> {
    if points.len() < 2 {
        return None;
    }
    let (slope, intercept) = linear_regression(points, t_ms);
    Some(slope * seconds + intercept)
}

/// `double_exponential_smoothing` (Prometheus 2's `holt_winters`): the smoothed value after the
/// range's last sample, with smoothing factor `sf` and trend factor `tf`, both in (0, 1).
pub(crate) fn double_exponential_smoothing(points: &[Point], sf: f64, tf: f64) -> Result<Option<f64>, String> {
    // The comparisons are written so that NaN passes, as in Prometheus.
    if sf <= 0.0 || sf >= 1.0 {
        return Err(format!("invalid smoothing factor. Expected: 0 < sf < 1, got: {sf:.6}"));
    }
    if tf <= 0.0 || tf >= 1.0 {
        return Err(format!("invalid trend factor. Expected: 0 < tf < 1, got: {tf:.6}"));
    }
    let [first, second, ..] = points else {
        return Ok(None);
    };
    let (mut s0, mut s1) = (0.0, first.v);
    let mut trend = second.v - first.v;
    for (i, p) in points.iter().enumerate().skip(1) {
        let x = sf * p.v;
        if i > 1 {
            trend = tf * (s1 - s0) + (1.0 - tf) * trend;
        }
        let y = (1.0 - sf) * (s1 + trend);
        (s0, s1) = (s1, x + y);
    }
    Ok(Some(s1))
}

/// Go's `math.Signbit`-respecting `sgn`: −1, +1, or the value itself for ±0 and NaN.
pub(crate) fn sgn(v: f64) -> f64 {
    if v < 0.0 {
        -1.0
    } else if v > 0.0 {
        1.0
    } else {
        v
    }
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
        BinOp::Atan2 => (lhs.atan2(rhs), true),
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
