//! RFC 5424 messages as syslog agents write them (§7), and their conversion to envelopes (§6.10).
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID SD [SP MSG]`:
//! APP-NAME is the source id (required); PROCID is required and the instance id is its last
//! `/`-segment inside `[...]`; an SD element `gauge*`, `counter*`, `timer*` or `event*` makes the
//! envelope that type (params of §7), `tags*` elements become tags; otherwise MSG (trimmed) is a log,
//! of type ERR iff PRI is 11.

use std::collections::HashMap;

use bytes::Bytes;
use loggregator_proto::v2::{envelope, log, Counter, Envelope, Event, Gauge, GaugeValue, Log, Timer};

/// Why a message was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyslogError {
    #[error("invalid PRI")]
    Pri,
    #[error("unsupported version")]
    Version,
    #[error("invalid timestamp")]
    Timestamp,
    #[error("missing {0}")]
    Missing(&'static str),
    #[error("invalid structured data")]
    StructuredData,
    #[error("invalid {element} parameter {param}")]
    Param { element: &'static str, param: &'static str },
}

/// One SD element: its id and parameters in order.
#[derive(Debug, Clone, PartialEq)]
pub struct SdElement {
    pub id: String,
    pub params: Vec<(String, String)>,
}

impl SdElement {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
}

/// The parts of a message log-cache uses.
#[derive(Debug, Clone, PartialEq)]
pub struct SyslogMessage {
    pub priority: u8,
    /// Nanoseconds since the epoch; `None` for the nil timestamp `-`.
    pub timestamp: Option<i64>,
    pub app_name: String,
    pub proc_id: String,
    pub structured_data: Vec<SdElement>,
    pub message: Vec<u8>,
}

/// Splits off the next space-separated header field.
fn field<'a>(rest: &mut &'a [u8], name: &'static str) -> Result<&'a [u8], SyslogError> {
    let end = rest.iter().position(|&b| b == b' ').ok_or(SyslogError::Missing(name))?;
    let value = &rest[..end];
    *rest = &rest[end + 1..];
    if value.is_empty() {
        return Err(SyslogError::Missing(name));
    }
    Ok(value)
}

fn utf8(bytes: &[u8], name: &'static str) -> Result<String, SyslogError> {
    std::str::from_utf8(bytes).map(str::to_string).map_err(|_| SyslogError::Missing(name))
}

/// Parses one RFC 5424 message (without framing).
pub fn parse(input: &[u8]) -> Result<SyslogMessage, SyslogError> {
    let mut rest = input;
    // <PRI>VERSION
    if rest.first() != Some(&b'<') {
        return Err(SyslogError::Pri);
    }
    let close = rest.iter().position(|&b| b == b'>').ok_or(SyslogError::Pri)?;
    let pri_text = std::str::from_utf8(&rest[1..close]).map_err(|_| SyslogError::Pri)?;
    if pri_text.is_empty() || pri_text.len() > 3 || !pri_text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SyslogError::Pri);
    }
    let priority: u8 = pri_text.parse().map_err(|_| SyslogError::Pri)?;
    if priority > 191 {
        return Err(SyslogError::Pri);
    }
    rest = &rest[close + 1..];
    if field(&mut rest, "version")? != b"1" {
        return Err(SyslogError::Version);
    }
    let timestamp = match field(&mut rest, "timestamp")? {
        b"-" => None,
        text => Some(parse_rfc3339_nanos(text).ok_or(SyslogError::Timestamp)?),
    };
    let _hostname = field(&mut rest, "hostname")?;
    let app_name = utf8(field(&mut rest, "app name")?, "app name")?;
    let proc_id = utf8(field(&mut rest, "proc id")?, "proc id")?;
    let _msg_id = field(&mut rest, "msg id")?;
    let (structured_data, after) = parse_structured_data(rest)?;
    let message = match after {
        [] => Vec::new(),
        [b' ', msg @ ..] => msg.strip_prefix(b"\xEF\xBB\xBF".as_slice()).unwrap_or(msg).to_vec(),
        _ => return Err(SyslogError::StructuredData),
    };
    Ok(SyslogMessage { priority, timestamp, app_name, proc_id, structured_data, message })
}

/// Parses `-` or a sequence of `[id k="v" …]`, returning the elements and the rest of the input.
fn parse_structured_data(input: &[u8]) -> Result<(Vec<SdElement>, &[u8]), SyslogError> {
    if let Some(rest) = input.strip_prefix(b"-") {
        return Ok((Vec::new(), rest));
    }
    let mut elements = Vec::new();
    let mut pos = 0;
    while input.get(pos) == Some(&b'[') {
        pos += 1;
        let id_end = input[pos..].iter().position(|&b| b == b' ' || b == b']').ok_or(SyslogError::StructuredData)?;
        let id = utf8(&input[pos..pos + id_end], "sd id")?;
        pos += id_end;
        let mut params = Vec::new();
        loop {
            match input.get(pos) {
                Some(b']') => {
                    pos += 1;
                    break;
                }
                Some(b' ') => pos += 1,
                _ => return Err(SyslogError::StructuredData),
            }
            if input.get(pos) == Some(&b']') {
                continue;
            }
            let eq = input[pos..].iter().position(|&b| b == b'=').ok_or(SyslogError::StructuredData)?;
            let name = utf8(&input[pos..pos + eq], "sd param")?;
            pos += eq + 1;
            if input.get(pos) != Some(&b'"') {
                return Err(SyslogError::StructuredData);
            }
            pos += 1;
            let mut value = Vec::new();
            loop {
                match input.get(pos) {
                    Some(b'\\') => {
                        match input.get(pos + 1) {
                            Some(&c @ (b'"' | b'\\' | b']')) => value.push(c),
                            Some(&c) => value.extend_from_slice(&[b'\\', c]),
                            None => return Err(SyslogError::StructuredData),
                        }
                        pos += 2;
                    }
                    Some(b'"') => {
                        pos += 1;
                        break;
                    }
                    Some(&c) => {
                        value.push(c);
                        pos += 1;
                    }
                    None => return Err(SyslogError::StructuredData),
                }
            }
            params.push((name, utf8(&value, "sd value")?));
        }
        elements.push(SdElement { id, params });
    }
    if elements.is_empty() {
        return Err(SyslogError::StructuredData);
    }
    Ok((elements, &input[pos..]))
}

/// `YYYY-MM-DDTHH:MM:SS[.frac](Z|±HH:MM)` to nanoseconds since the epoch.
pub fn parse_rfc3339_nanos(text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let num = |s: &str| -> Option<i64> {
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        s.parse().ok()
    };
    let (date, time) = text.split_once(['T', 't'])?;
    let mut date_parts = date.splitn(3, '-');
    let year = num(date_parts.next()?)?;
    let month = num(date_parts.next()?)?;
    let day = num(date_parts.next()?)?;
    let (clock, offset_seconds) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let at = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(at);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (h, m) = offset[1..].split_once(':')?;
        let (h, m) = (num(h)?, num(m)?);
        if h > 23 || m > 59 {
            return None;
        }
        (clock, sign * (h * 3600 + m * 60))
    };
    let (hms, fraction) = match clock.split_once('.') {
        Some((hms, fraction)) => (hms, Some(fraction)),
        None => (clock, None),
    };
    let mut hms_parts = hms.splitn(3, ':');
    let hour = num(hms_parts.next()?)?;
    let minute = num(hms_parts.next()?)?;
    let second = num(hms_parts.next()?)?;
    // RFC 3339 years have four digits, which keeps the day and second arithmetic below in range;
    // only the final scaling to nanoseconds can overflow (before 1678, after 2262): it is checked.
    if !(0..=9999).contains(&year)
        || !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let nanos = match fraction {
        Some(f) if !f.is_empty() && f.len() <= 9 => num(f)? * 10i64.pow(9 - f.len() as u32),
        Some(_) => return None,
        None => 0,
    };
    let days = days_from_civil(year, month, day);
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_seconds;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The instance id of a PROCID: the last `/`-segment inside `[...]` (`[APP/PROC/WEB/0]` ⇒ `0`).
pub fn instance_id_of(proc_id: &str) -> String {
    let inner = proc_id.trim_matches(|c| c == '[' || c == ']');
    inner.rsplit('/').next().unwrap_or_default().to_string()
}

fn number<T: std::str::FromStr>(
    element: &SdElement,
    kind: &'static str,
    param: &'static str,
) -> Result<T, SyslogError> {
    element.param(param).and_then(|v| v.parse().ok()).ok_or(SyslogError::Param { element: kind, param })
}

fn text(element: &SdElement, kind: &'static str, param: &'static str) -> Result<String, SyslogError> {
    element.param(param).map(str::to_string).ok_or(SyslogError::Param { element: kind, param })
}

/// Converts a parsed message to an envelope (§6.10). `now` stands in for a nil timestamp.
pub fn to_envelope(message: SyslogMessage, now: i64) -> Result<Envelope, SyslogError> {
    if message.app_name == "-" {
        return Err(SyslogError::Missing("app name"));
    }
    if message.proc_id == "-" {
        return Err(SyslogError::Missing("proc id"));
    }
    let mut tags = HashMap::new();
    let mut body: Option<envelope::Message> = None;
    for element in &message.structured_data {
        let id = element.id.as_str();
        if id.starts_with("tags") {
            tags.extend(element.params.iter().cloned());
        } else if id.starts_with("gauge") {
            let name = text(element, "gauge", "name")?;
            let value = number(element, "gauge", "value")?;
            let unit = element.param("unit").unwrap_or_default().to_string();
            body = Some(envelope::Message::Gauge(Gauge {
                metrics: [(name, GaugeValue { unit, value })].into_iter().collect(),
            }));
        } else if id.starts_with("counter") {
            body = Some(envelope::Message::Counter(Counter {
                name: text(element, "counter", "name")?,
                total: number(element, "counter", "total")?,
                delta: element.param("delta").and_then(|d| d.parse().ok()).unwrap_or(0),
            }));
        } else if id.starts_with("timer") {
            body = Some(envelope::Message::Timer(Timer {
                name: text(element, "timer", "name")?,
                start: number(element, "timer", "start")?,
                stop: number(element, "timer", "stop")?,
            }));
        } else if id.starts_with("event") {
            body = Some(envelope::Message::Event(Event {
                title: text(element, "event", "title")?,
                body: text(element, "event", "body")?,
            }));
        }
    }
    let body = match body {
        Some(body) => body,
        None => {
            let payload = message.message.trim_ascii();
            let r#type = if message.priority == 11 { log::Type::Err } else { log::Type::Out };
            envelope::Message::Log(Log { payload: Bytes::copy_from_slice(payload), r#type: r#type as i32 })
        }
    };
    Ok(Envelope {
        timestamp: message.timestamp.unwrap_or(now),
        source_id: message.app_name,
        instance_id: instance_id_of(&message.proc_id),
        deprecated_tags: HashMap::new(),
        tags,
        message: Some(body),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convert(frame: &str) -> Envelope {
        to_envelope(parse(frame.as_bytes()).expect("parses"), 7).expect("converts")
    }

    #[test]
    fn an_app_log_line_from_the_syslog_agent() {
        let e = convert(concat!(
            "<14>1 2024-05-01T12:00:00.123456+00:00 org.space.app 6f1c-guid [APP/PROC/WEB/0] - ",
            "[tags@47450 source_type=\"APP/PROC/WEB\" app_name=\"my app\"] hello world\n"
        ));
        assert_eq!(e.timestamp, 1_714_564_800_123_456_000);
        assert_eq!(e.source_id, "6f1c-guid");
        assert_eq!(e.instance_id, "0");
        assert_eq!(e.tags["source_type"], "APP/PROC/WEB");
        assert_eq!(e.tags["app_name"], "my app");
        let Some(envelope::Message::Log(log)) = e.message else { panic!("a log") };
        assert_eq!(&log.payload[..], b"hello world");
        assert_eq!(log.r#type, log::Type::Out as i32);
    }

    #[test]
    fn pri_11_is_stderr() {
        let e = convert("<11>1 2024-05-01T12:00:00Z h src [RTR] - - oops");
        let Some(envelope::Message::Log(log)) = e.message else { panic!("a log") };
        assert_eq!(log.r#type, log::Type::Err as i32);
        assert_eq!(e.instance_id, "RTR");
    }

    #[test]
    fn metrics_elements_make_metric_envelopes() {
        let gauge = convert(
            "<14>1 2024-05-01T12:00:00Z h src [3] - [gauge@47450 name=\"cpu\" value=\"0.5\" unit=\"percentage\"][tags@47450 a=\"b\"] \n",
        );
        let Some(envelope::Message::Gauge(g)) = gauge.message else { panic!("a gauge") };
        assert_eq!(g.metrics["cpu"], GaugeValue { unit: "percentage".into(), value: 0.5 });
        assert_eq!(gauge.tags["a"], "b");
        assert_eq!(gauge.instance_id, "3");

        let counter =
            convert("<14>1 2024-05-01T12:00:00Z h src [3] - [counter@47450 name=\"req\" total=\"10\" delta=\"2\"]");
        assert!(matches!(counter.message, Some(envelope::Message::Counter(Counter { total: 10, delta: 2, .. }))));

        let timer =
            convert("<14>1 2024-05-01T12:00:00Z h src [3] - [timer@47450 name=\"http\" start=\"5\" stop=\"9\"]");
        assert!(matches!(timer.message, Some(envelope::Message::Timer(Timer { start: 5, stop: 9, .. }))));

        let event = convert("<14>1 2024-05-01T12:00:00Z h src [3] - [event@47450 title=\"t\" body=\"b \\] \\\" x\"]");
        let Some(envelope::Message::Event(ev)) = event.message else { panic!("an event") };
        assert_eq!(ev.body, "b ] \" x");
    }

    #[test]
    fn nil_timestamp_is_now() {
        assert_eq!(convert("<14>1 - h src [0] - - x").timestamp, 7);
    }

    #[test]
    fn missing_app_name_or_procid_is_refused() {
        let msg = parse(b"<14>1 2024-05-01T12:00:00Z h - [0] - - x").expect("parses");
        assert_eq!(to_envelope(msg, 0).unwrap_err(), SyslogError::Missing("app name"));
        let msg = parse(b"<14>1 2024-05-01T12:00:00Z h src - - - x").expect("parses");
        assert_eq!(to_envelope(msg, 0).unwrap_err(), SyslogError::Missing("proc id"));
    }

    #[test]
    fn malformed_messages_are_errors() {
        for bad in [
            "14>1 - h a p - - x",
            "<14>2 - h a p - - x",
            "<999>1 - h a p - - x",
            "<14>1 notatime h a p - - x",
            "<14>1 - h a p - [unterminated",
            "<14>1 - h a",
            "<14>1 - h a p - [gauge@1 name=\"x\" value=\"notanumber\"]",
        ] {
            let result = parse(bad.as_bytes()).and_then(|m| to_envelope(m, 0));
            assert!(result.is_err(), "{bad}");
        }
    }

    #[test]
    fn out_of_range_timestamps_are_refused_not_overflowed() {
        // Each of these overflowed i64 arithmetic (a panic in debug builds) before being bounded.
        for text in [
            "99999999999999-01-01T00:00:00Z",
            "2024-01-01T00:00:00+99999999999999:00",
            "2024-01-01T00:00:00-00:99999999999999",
            "9999-12-31T23:59:59Z",
            "0000-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339_nanos(text.as_bytes()), None, "{text}");
        }
        assert_eq!(parse_rfc3339_nanos(b"2262-04-11T23:47:16Z"), Some(9_223_372_036_000_000_000));
    }

    #[test]
    fn timestamps_with_offsets() {
        assert_eq!(parse_rfc3339_nanos(b"1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339_nanos(b"1970-01-01T01:00:00+01:00"), Some(0));
        assert_eq!(parse_rfc3339_nanos(b"1969-12-31T23:59:59.5Z"), Some(-500_000_000));
        assert_eq!(parse_rfc3339_nanos(b"2000-02-29T00:00:00Z"), Some(951_782_400_000_000_000));
    }
}
