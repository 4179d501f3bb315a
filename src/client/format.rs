//! How the client commands print envelopes: `cf logs` lines (cf CLI v8's `DisplayLogMessage`) and
//! `cf tail` lines (log-cache-cli's pretty formatter), timestamps in the local time zone.

use chrono::{DateTime, TimeZone};
use loggregator_proto::v2::envelope::Message;
use loggregator_proto::v2::{self, log::Type as LogType};

/// cf CLI's `LogTimestampFormat`, `2006-01-02T15:04:05.00-0700`: centiseconds truncated (Go's `.00`
/// does not round) and the numeric offset without a colon.
pub fn timestamp<Tz: TimeZone>(nanos: i64, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let at: DateTime<Tz> = tz.timestamp_nanos(nanos);
    let centis = at.timestamp_subsec_nanos() / 10_000_000;
    format!("{}.{centis:02}{}", at.format("%Y-%m-%dT%H:%M:%S"), at.format("%z"))
}

/// `OUT` or `ERR`, as the cf CLI names a log's stream.
pub fn log_type(log: &v2::Log) -> &'static str {
    if log.r#type == LogType::Err as i32 {
        "ERR"
    } else {
        "OUT"
    }
}

/// The `source_type` tag (`APP/PROC/WEB`, `STG`, `RTR`, ...); the cf CLI shows an empty one as is.
fn source_type(env: &v2::Envelope) -> String {
    if let Some(tag) = env.tags.get("source_type") {
        return tag.clone();
    }
    match env.deprecated_tags.get("source_type").and_then(|v| v.data.as_ref()) {
        Some(v2::value::Data::Text(text)) => text.clone(),
        _ => String::new(),
    }
}

/// Wraps a line in red for a terminal, as the cf CLI colours ERR lines.
fn red(line: String) -> String {
    format!("\x1b[31m{line}\x1b[0m")
}

/// The lines `cf logs` prints for a log envelope, each with its own header, or nothing for any
/// other envelope: `   2026-11-22T14:00:00.12+0000 [APP/PROC/WEB/0] OUT text`. The three leading
/// spaces are the cf CLI's own (`fmt.Fprintf(ui.Out, "   %s\n", logLine)`); a payload of several
/// lines is split at `\n` and each part loses trailing `\r`, as there.
pub fn cf_log_lines<Tz: TimeZone>(env: &v2::Envelope, tz: &Tz, colour: bool) -> Vec<String>
where
    Tz::Offset: std::fmt::Display,
{
    let Some(Message::Log(log)) = &env.message else { return Vec::new() };
    let kind = log_type(log);
    let header = format!("{} [{}/{}] {kind} ", timestamp(env.timestamp, tz), source_type(env), env.instance_id);
    let payload = String::from_utf8_lossy(&log.payload);
    payload
        .split('\n')
        .map(|line| {
            let line = format!("{header}{}", line.trim_end_matches(['\r', '\n']));
            let line = if colour && kind == "ERR" { red(line) } else { line };
            format!("   {line}")
        })
        .collect()
}

/// The line `cf tail` (log-cache-cli) prints for any envelope. Metrics show `source` (the name the
/// user gave) where logs show their source type, as there; gauges list `name:value unit` sorted by
/// name with Go's `%f` (six decimals). Timers also show their name, which log-cache-cli leaves out.
pub fn tail_line<Tz: TimeZone>(env: &v2::Envelope, source: &str, tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let ts = timestamp(env.timestamp, tz);
    let instance = &env.instance_id;
    match &env.message {
        Some(Message::Log(log)) => format!(
            "   {ts} [{}/{instance}] {} {}",
            match source_type(env).as_str() {
                "" => "unknown".to_string(),
                other => other.to_string(),
            },
            log_type(log),
            String::from_utf8_lossy(&log.payload)
        ),
        Some(Message::Counter(c)) => format!("   {ts} [{source}/{instance}] COUNTER {}:{}", c.name, c.total),
        Some(Message::Gauge(g)) => {
            let mut values: Vec<String> =
                g.metrics.iter().map(|(name, v)| format!("{name}:{:.6} {}", v.value, v.unit)).collect();
            values.sort();
            format!("   {ts} [{source}/{instance}] GAUGE {}", values.join(" "))
        }
        Some(Message::Timer(t)) => format!(
            "   {ts} [{source}/{instance}] TIMER {} {:.6} ms",
            t.name,
            t.stop.saturating_sub(t.start) as f64 / 1_000_000.0
        ),
        Some(Message::Event(e)) => format!("   {ts} [{source}/{instance}] EVENT {}:{}", e.title, e.body),
        None => format!("   {ts} [{source}/{instance}] (empty envelope)"),
    }
}

/// Go's `time.Duration.String()` of whole seconds (`0s`, `45s`, `1m5s`, `2h0m0s`), as `cf log-meta`
/// prints cache durations.
pub fn go_duration_secs(secs: i64) -> String {
    let (sign, secs) = if secs < 0 { ("-", secs.unsigned_abs()) } else { ("", secs as u64) };
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    if h > 0 {
        format!("{sign}{h}h{m}m{s}s")
    } else if m > 0 {
        format!("{sign}{m}m{s}s")
    } else {
        format!("{sign}{s}s")
    }
}

/// Left-aligned columns, each as wide as its widest cell plus two spaces, the last unpadded: what
/// Go's `tabwriter.NewWriter(w, 0, 2, 2, ' ', 0)` prints (the log-cache CLI's tables).
pub fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut widths = vec![0; columns];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                widths[i] = widths[i].max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            out.push_str(cell);
            if i + 1 < row.len() {
                out.extend(std::iter::repeat_n(' ', widths[i] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use loggregator_proto::bytes::Bytes;

    fn log(payload: &str, err: bool) -> v2::Envelope {
        v2::Envelope {
            // 2016-07-19T23:08:12.129Z, the instant of the cf CLI's own test plus 129 ms.
            timestamp: 1_468_969_692_129_999_999,
            source_id: "app".into(),
            instance_id: "12".into(),
            tags: [("source_type".to_string(), "APP/PROC/WEB".to_string())].into(),
            message: Some(Message::Log(v2::Log {
                payload: Bytes::copy_from_slice(payload.as_bytes()),
                r#type: if err { LogType::Err as i32 } else { LogType::Out as i32 },
            })),
            ..Default::default()
        }
    }

    #[test]
    fn cf_log_lines_match_the_cf_cli_in_its_own_test_time_zone() {
        let pdt = FixedOffset::west_opt(7 * 3600).unwrap();
        let lines = cf_log_lines(&log("This is a log message\r\n", false), &pdt, false);
        // The trailing "\r\n" splits into the message and an empty last line, as strings.Split does.
        assert_eq!(
            lines,
            [
                "   2016-07-19T16:08:12.12-0700 [APP/PROC/WEB/12] OUT This is a log message",
                "   2016-07-19T16:08:12.12-0700 [APP/PROC/WEB/12] OUT ",
            ]
        );
        let utc = FixedOffset::east_opt(0).unwrap();
        let lines = cf_log_lines(&log("one\ntwo", true), &utc, false);
        assert_eq!(
            lines,
            [
                "   2016-07-19T23:08:12.12+0000 [APP/PROC/WEB/12] ERR one",
                "   2016-07-19T23:08:12.12+0000 [APP/PROC/WEB/12] ERR two",
            ]
        );
        let coloured = cf_log_lines(&log("boom", true), &utc, true);
        assert_eq!(coloured, ["   \x1b[31m2016-07-19T23:08:12.12+0000 [APP/PROC/WEB/12] ERR boom\x1b[0m"]);
        assert!(!cf_log_lines(&log("fine", false), &utc, true)[0].contains('\x1b'));
    }

    #[test]
    fn timestamps_truncate_to_centiseconds_and_handle_times_before_1970() {
        let utc = FixedOffset::east_opt(0).unwrap();
        assert_eq!(timestamp(999_999_999, &utc), "1970-01-01T00:00:00.99+0000");
        assert_eq!(timestamp(-1, &utc), "1969-12-31T23:59:59.99+0000");
        let ist = FixedOffset::east_opt(5 * 3600 + 1800).unwrap();
        assert_eq!(timestamp(0, &ist), "1970-01-01T05:30:00.00+0530");
    }

    #[test]
    fn tail_lines_of_every_type() {
        let utc = FixedOffset::east_opt(0).unwrap();
        let at = |message| v2::Envelope {
            timestamp: 1_000_000_000,
            source_id: "guid".into(),
            instance_id: "1".into(),
            message: Some(message),
            ..Default::default()
        };
        let ts = "1970-01-01T00:00:01.00+0000";
        assert_eq!(
            tail_line(&at(Message::Counter(v2::Counter { name: "requests".into(), delta: 2, total: 40 })), "app", &utc),
            format!("   {ts} [app/1] COUNTER requests:40")
        );
        let gauge = v2::Gauge {
            metrics: [
                ("memory".to_string(), v2::GaugeValue { unit: "bytes".into(), value: 1024.0 }),
                ("cpu".to_string(), v2::GaugeValue { unit: "percentage".into(), value: 12.5 }),
            ]
            .into(),
        };
        assert_eq!(
            tail_line(&at(Message::Gauge(gauge)), "app", &utc),
            format!("   {ts} [app/1] GAUGE cpu:12.500000 percentage memory:1024.000000 bytes")
        );
        let timer = v2::Timer { name: "http".into(), start: 1_000_000, stop: 3_500_000 };
        assert_eq!(
            tail_line(&at(Message::Timer(timer)), "app", &utc),
            format!("   {ts} [app/1] TIMER http 2.500000 ms")
        );
        let event = v2::Event { title: "crash".into(), body: "exit 1".into() };
        assert_eq!(tail_line(&at(Message::Event(event)), "app", &utc), format!("   {ts} [app/1] EVENT crash:exit 1"));
        let mut untagged = log("hi", false);
        untagged.tags.clear();
        assert!(tail_line(&untagged, "app", &utc).ends_with("[unknown/12] OUT hi"));
    }

    #[test]
    fn durations_and_tables_print_as_the_go_cli_does() {
        assert_eq!(go_duration_secs(0), "0s");
        assert_eq!(go_duration_secs(65), "1m5s");
        assert_eq!(go_duration_secs(7200), "2h0m0s");
        assert_eq!(go_duration_secs(-3), "-3s");
        let rows = vec![
            vec!["Source".to_string(), "Count".to_string(), "Cache Duration".to_string()],
            vec!["a-long-name".to_string(), "5".to_string(), "1m0s".to_string()],
        ];
        assert_eq!(table(&rows), "Source       Count  Cache Duration\na-long-name  5      1m0s\n");
    }
}
