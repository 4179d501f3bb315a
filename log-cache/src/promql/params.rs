//! Query parameters as the HTTP and gRPC APIs carry them (PROTOCOLS.md §6.6): `time`, `start` and `end`
//! as float unix seconds or RFC 3339, `step` as float seconds or a Prometheus duration, and the
//! `"<seconds>.<millis>"` strings of result points. Inside the engine every instant is whole
//! milliseconds since the epoch (`i64`), as in Prometheus.

use std::time::{SystemTime, UNIX_EPOCH};

use super::PromQLError;

/// The largest instant accepted, in ms: its nanoseconds must still fit the `i64` of envelope timestamps.
const MAX_ABS_TIME_MS: i64 = i64::MAX / 1_000_000;

/// Prometheus' bound on the points of one series in a range query.
pub(crate) const MAX_POINTS_PER_SERIES: i64 = 11_000;

/// Parses `time`, `start` or `end`: float unix seconds (`1700000000`, `1700000000.5`) or RFC 3339 with
/// optional fraction (`2023-11-14T22:13:20.5Z`). Sub-millisecond precision is dropped, as Prometheus does.
pub(crate) fn parse_time(param: &'static str, raw: &str) -> Result<i64, PromQLError> {
    let invalid = || PromQLError::BadParameter { param, reason: format!("cannot parse {raw:?} to a valid timestamp") };
    let millis = if let Ok(seconds) = raw.parse::<f64>() {
        let millis = (seconds * 1000.0).round();
        if !millis.is_finite() || millis.abs() > MAX_ABS_TIME_MS as f64 {
            return Err(invalid());
        }
        // In range by the check above, so the cast is exact up to float rounding.
        millis as i64
    } else {
        chrono::DateTime::parse_from_rfc3339(raw).map_err(|_| invalid())?.timestamp_millis()
    };
    if millis.abs() > MAX_ABS_TIME_MS {
        return Err(invalid());
    }
    Ok(millis)
}

/// Parses `step`: float seconds (`15`, `0.5`) or a Prometheus duration (`30s`, `1m30s`). Returns
/// whole milliseconds, at least 1.
pub(crate) fn parse_step(raw: &str) -> Result<i64, PromQLError> {
    let invalid = |reason: String| PromQLError::BadParameter { param: "step", reason };
    let millis = if let Ok(seconds) = raw.parse::<f64>() {
        let millis = (seconds * 1000.0).trunc();
        if !millis.is_finite() || millis.abs() > MAX_ABS_TIME_MS as f64 {
            return Err(invalid(format!("cannot parse {raw:?} to a valid duration")));
        }
        // In range by the check above.
        millis as i64
    } else {
        // Float strings never reach `parse_duration` (its float branch panics on negative input).
        let duration = promql_parser::util::parse_duration(raw)
            .map_err(|_| invalid(format!("cannot parse {raw:?} to a valid duration")))?;
        i64::try_from(duration.as_millis()).map_err(|_| invalid(format!("cannot parse {raw:?} to a valid duration")))?
    };
    if millis <= 0 {
        return Err(PromQLError::BadQuery(
            "zero or negative query resolution step widths are not accepted. Try a positive integer".to_owned(),
        ));
    }
    Ok(millis)
}

/// Checks the `start`/`end`/`step` triple of a range query as the Prometheus API does.
pub(crate) fn check_range(start_ms: i64, end_ms: i64, step_ms: i64) -> Result<(), PromQLError> {
    if end_ms < start_ms {
        return Err(PromQLError::BadParameter {
            param: "end",
            reason: "end timestamp must not be before start time".to_owned(),
        });
    }
    if (end_ms - start_ms) / step_ms > MAX_POINTS_PER_SERIES {
        return Err(PromQLError::BadQuery(
            "exceeded maximum resolution of 11,000 points per timeseries. Try decreasing the query \
             resolution (?step=XX)"
                .to_owned(),
        ));
    }
    Ok(())
}

/// Now, truncated to whole seconds: the instant of a query whose `time` is empty (§6.6).
pub(crate) fn now_truncated_to_second_ms() -> i64 {
    let seconds = match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(since_epoch) => i64::try_from(since_epoch.as_secs()).unwrap_or(0),
        Err(before_epoch) => -i64::try_from(before_epoch.duration().as_secs()).unwrap_or(0),
    };
    seconds.saturating_mul(1000)
}

/// Formats an instant as seconds with exactly three decimals: `1700000000.000` (§6.1).
pub(crate) fn format_time(millis: i64) -> String {
    let sign = if millis < 0 { "-" } else { "" };
    let abs = millis.unsigned_abs();
    format!("{sign}{}.{:03}", abs / 1000, abs % 1000)
}

/// Envelope nanoseconds to the truncated whole second, in ms, that is a sample's timestamp (§6.6).
pub(crate) fn sample_time_ms(timestamp_ns: i64) -> i64 {
    timestamp_ns.div_euclid(1_000_000_000) * 1000
}
