//! `loggregator query 'PROMQL'`: log-cache's PromQL API from the terminal. An instant query prints
//! a table; a range query a table of each series' points, min, max and last value, and, on a
//! terminal (or with `--chart always`), a small Unicode chart per series.

use std::io::IsTerminal as _;

use anyhow::{anyhow, bail, Context as _};
use clap::{Args, ValueEnum};
use serde_json::Value as Json;

use super::format::table;
use super::http::{Http, HttpArgs};
use super::logcache::LogCache;

/// Characters of the charts, lowest to highest.
const BARS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
/// Columns of a chart at most: longer series are resampled (each column the mean of its points).
const CHART_WIDTH: usize = 60;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Chart {
    Auto,
    Always,
    Never,
}

#[derive(Args, Debug)]
#[command(after_help = "Times are Unix seconds, RFC 3339, `now`, or relative to now (`-5m`, `now-1h`);
steps and offsets are durations (`15s`, `1m30s`) or seconds.

Examples:
  loggregator query 'cpu{source_id=\"my-app\"}'
  loggregator query 'rate(requests{source_id=\"my-app\"}[1m])' --start -10m --end now --step 15s
  loggregator query 'avg_over_time(memory{source_id=\"my-app\"}[5m])' --time 2026-11-22T14:00:00Z")]
pub struct QueryArgs {
    /// The PromQL expression; every selector needs a `source_id` matcher.
    pub query: String,
    /// Evaluation time of an instant query (default now).
    #[arg(long, allow_hyphen_values = true, conflicts_with_all = ["start", "end", "step"])]
    pub time: Option<String>,
    /// Start of a range query.
    #[arg(long, allow_hyphen_values = true, requires = "end")]
    pub start: Option<String>,
    /// End of a range query.
    #[arg(long, allow_hyphen_values = true, requires = "start")]
    pub end: Option<String>,
    /// Step of a range query (default: the range / 60, at least 1 s).
    #[arg(long)]
    pub step: Option<String>,
    /// Charts of a range query: on a terminal only (auto), always, or never.
    #[arg(long, value_enum, default_value = "auto")]
    pub chart: Chart,
    /// log-cache's HTTP API.
    #[arg(long, env = "LOG_CACHE_ADDR", default_value = "http://127.0.0.1:8083")]
    pub log_cache: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// `15s`, `1m30s`, `500ms`, `2h`, or plain seconds (`2.5`), in seconds.
pub fn parse_duration(text: &str) -> anyhow::Result<f64> {
    let text = text.trim();
    if let Ok(secs) = text.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(secs);
        }
    }
    let invalid = || anyhow!("invalid duration `{text}`: expected e.g. 15s, 1m30s, 500ms or seconds");
    let mut total = 0.0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(invalid());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(invalid)?;
        let number: f64 = rest[..digits].parse().map_err(|_| invalid())?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ms" => 0.001,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "d" => 86400.0,
            "w" => 7.0 * 86400.0,
            "y" => 365.0 * 86400.0,
            _ => return Err(invalid()),
        };
        total += number * scale;
        rest = &rest[unit_len..];
    }
    Ok(total)
}

/// A time argument in Unix seconds: `now`, `now-5m`, `-5m`, Unix seconds, or RFC 3339.
pub fn parse_time(text: &str, now: f64) -> anyhow::Result<f64> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix("now-").or_else(|| text.strip_prefix('-')) {
        return Ok(now - parse_duration(ago)?);
    }
    if let Ok(secs) = text.parse::<f64>() {
        return Ok(secs);
    }
    let at = chrono::DateTime::parse_from_rfc3339(text)
        .map_err(|_| anyhow!("invalid time `{text}`: expected Unix seconds, RFC 3339, now, or -5m"))?;
    Ok(at.timestamp() as f64 + f64::from(at.timestamp_subsec_nanos()) / 1e9)
}

/// `name{a="b", c="d"}` as Prometheus prints a series.
fn series_name(metric: &Json) -> String {
    let Some(labels) = metric.as_object() else { return "{}".into() };
    let name = labels.get("__name__").and_then(Json::as_str).unwrap_or("");
    let mut pairs: Vec<_> = labels.iter().filter(|(k, _)| *k != "__name__").collect();
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    let inner: Vec<String> = pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", serde_json::to_string(v.as_str().unwrap_or("")).unwrap_or_default()))
        .collect();
    if inner.is_empty() && !name.is_empty() {
        name.to_string()
    } else {
        format!("{name}{{{}}}", inner.join(", "))
    }
}

/// A `[time, "value"]` pair's value.
fn sample_value(pair: &Json) -> Option<f64> {
    let text = pair.get(1)?.as_str()?;
    match text {
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        other => other.parse().ok(),
    }
}

fn sample_text(pair: &Json) -> String {
    pair.get(1).and_then(Json::as_str).unwrap_or("?").to_string()
}

/// The chart of a series: up to [`CHART_WIDTH`] columns scaled between its min and max.
pub fn sparkline(values: &[f64]) -> String {
    let finite: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if finite.is_empty() {
        return String::new();
    }
    let columns = values.len().min(CHART_WIDTH);
    let buckets: Vec<Option<f64>> = (0..columns)
        .map(|c| {
            let (from, to) =
                (c * values.len() / columns, ((c + 1) * values.len() / columns).max(c * values.len() / columns + 1));
            let points: Vec<f64> = values[from..to].iter().copied().filter(|v| v.is_finite()).collect();
            (!points.is_empty()).then(|| points.iter().sum::<f64>() / points.len() as f64)
        })
        .collect();
    let min = finite.iter().copied().fold(f64::INFINITY, f64::min);
    let max = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    buckets
        .iter()
        .map(|b| match b {
            None => ' ',
            Some(_) if max == min => BARS[3],
            Some(v) => BARS[(((v - min) / (max - min)) * 7.0).round().clamp(0.0, 7.0) as usize],
        })
        .collect()
}

/// Renders a query's `data` (vector, scalar, string or matrix) for the terminal.
pub fn render(data: &Json, chart: bool) -> anyhow::Result<String> {
    let kind = data.get("resultType").and_then(Json::as_str).context("the answer has no resultType")?;
    let result = data.get("result").context("the answer has no result")?;
    let mut out = String::new();
    match kind {
        "scalar" | "string" => out.push_str(&format!("{}\n", sample_text(result))),
        "vector" => {
            let series = result.as_array().context("a vector result is not a list")?;
            if series.is_empty() {
                return Ok("(no data)\n".into());
            }
            let mut rows = vec![vec!["Series".to_string(), "Value".to_string()]];
            for s in series {
                rows.push(vec![series_name(&s["metric"]), sample_text(&s["value"])]);
            }
            out.push_str(&table(&rows));
        }
        "matrix" => {
            let series = result.as_array().context("a matrix result is not a list")?;
            if series.is_empty() {
                return Ok("(no data)\n".into());
            }
            let mut rows = vec![["Series", "Points", "Min", "Max", "Last"].map(String::from).to_vec()];
            let mut charts = Vec::new();
            for s in series {
                let points = s["values"].as_array().map(Vec::as_slice).unwrap_or_default();
                let values: Vec<f64> = points.iter().filter_map(sample_value).collect();
                let finite = values.iter().copied().filter(|v| v.is_finite());
                let min = finite.clone().fold(f64::INFINITY, f64::min);
                let max = finite.fold(f64::NEG_INFINITY, f64::max);
                let shown = |v: f64| if v.is_finite() { format!("{v}") } else { "-".into() };
                let name = series_name(&s["metric"]);
                rows.push(vec![
                    name.clone(),
                    points.len().to_string(),
                    shown(min),
                    shown(max),
                    points.last().map(sample_text).unwrap_or_default(),
                ]);
                charts.push((name, sparkline(&values)));
            }
            out.push_str(&table(&rows));
            if chart {
                for (name, line) in charts {
                    out.push_str(&format!("\n{name}\n  {line}\n"));
                }
            }
        }
        other => bail!("log-cache answered an unknown resultType `{other}`"),
    }
    Ok(out)
}

pub async fn run(args: QueryArgs) -> anyhow::Result<()> {
    let log_cache = LogCache::new(Http::new(&args.http)?, &args.log_cache);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let (route, params, range) = match (&args.start, &args.end) {
        (Some(start), Some(end)) => {
            let (start, end) = (parse_time(start, now)?, parse_time(end, now)?);
            if start > end {
                bail!("--start is after --end");
            }
            let step = match &args.step {
                Some(step) => parse_duration(step)?,
                None => ((end - start) / 60.0).max(1.0),
            };
            if step <= 0.0 {
                bail!("--step must be positive");
            }
            let params =
                vec![("query", args.query.clone()), ("start", fmt(start)), ("end", fmt(end)), ("step", fmt(step))];
            ("query_range", params, true)
        }
        _ => {
            if args.step.is_some() {
                bail!("--step needs --start and --end");
            }
            let time = args.time.as_deref().map(|t| parse_time(t, now)).transpose()?.unwrap_or(now);
            ("query", vec![("query", args.query.clone()), ("time", fmt(time))], false)
        }
    };
    let answer = log_cache.promql(route, &params).await?;
    if answer.get("status").and_then(Json::as_str) != Some("success") {
        let message = answer.get("error").and_then(Json::as_str).unwrap_or("the query failed");
        bail!("log-cache: {message}");
    }
    let chart = match args.chart {
        Chart::Always => true,
        Chart::Never => false,
        Chart::Auto => range && std::io::stdout().is_terminal(),
    };
    print!("{}", render(answer.get("data").context("log-cache's answer has no data")?, chart)?);
    Ok(())
}

/// Seconds with millisecond precision, as Prometheus clients send them.
fn fmt(secs: f64) -> String {
    format!("{secs:.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_times_parse_as_prometheus_clients_write_them() {
        assert_eq!(parse_duration("15s").unwrap(), 15.0);
        assert_eq!(parse_duration("1m30s").unwrap(), 90.0);
        assert_eq!(parse_duration("500ms").unwrap(), 0.5);
        assert_eq!(parse_duration("2.5").unwrap(), 2.5);
        assert!(parse_duration("5 minutes").is_err());
        assert!(parse_duration("").is_err());
        let now = 1_700_000_000.0;
        assert_eq!(parse_time("now", now).unwrap(), now);
        assert_eq!(parse_time("-5m", now).unwrap(), now - 300.0);
        assert_eq!(parse_time("now-1h", now).unwrap(), now - 3600.0);
        assert_eq!(parse_time("1699999000.5", now).unwrap(), 1_699_999_000.5);
        assert_eq!(parse_time("2023-11-14T22:13:20Z", now).unwrap(), 1_700_000_000.0);
        assert!(parse_time("yesterday", now).is_err());
    }

    #[test]
    fn results_render_as_tables_and_charts() {
        let vector: Json = serde_json::from_str(
            r#"{"resultType":"vector","result":[{"metric":{"__name__":"cpu","source_id":"app"},"value":[1.0,"12.5"]}]}"#,
        )
        .unwrap();
        assert_eq!(render(&vector, false).unwrap(), "Series                Value\ncpu{source_id=\"app\"}  12.5\n");
        let matrix: Json = serde_json::from_str(
            r#"{"resultType":"matrix","result":[{"metric":{},"values":[[1,"1"],[2,"5"],[3,"NaN"],[4,"9"]]}]}"#,
        )
        .unwrap();
        let text = render(&matrix, true).unwrap();
        assert!(text.starts_with("Series  Points  Min  Max  Last\n{}      4       1    9    9\n"), "{text}");
        // 1, 5, NaN, 9 between 1 and 9: the lowest bar, the middle one rounded up, a gap, the top.
        assert!(text.ends_with("\n{}\n  ▁▅ █\n"), "{text}");
        assert_eq!(render(&serde_json::json!({"resultType":"scalar","result":[1,"2"]}), false).unwrap(), "2\n");
        assert_eq!(sparkline(&[3.0, 3.0]), "▄▄");
    }
}
