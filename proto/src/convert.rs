//! v2→v1 and v1→v2 envelope conversions (PROTOCOLS.md §3.3–§3.5), and the tag rewriting that the RLP
//! applies before sending (`use_preferred_tags`, §2.6).
//!
//! Doppler converts v2 envelopes down for v1 subscribers ([`to_v1`]); the agent's UDP path and the
//! v1 Doppler ingress convert dropsonde envelopes up ([`to_v2`]). Both directions follow the Go
//! `conversion` package that real clients were tested against, including its quirks: v2 events never
//! reach v1, one v2 gauge can become several v1 `ValueMetric`s, and v1 `Error`s survive a round trip
//! through v2 as logs tagged `__v1_type=Error`.
//!
//! Conversions never fail loudly: input that cannot be represented yields no envelope (`Vec::new()` or
//! `None`), mirroring Doppler, which drops such envelopes.

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;

use crate::events::envelope::EventType;
use crate::events::log_message::MessageType;
use crate::v2::envelope::Message;
use crate::v2::value::Data;
use crate::{events, v2};

/// Tag that records the v1 event type of an envelope converted up to v2 (§1.3).
const V1_TYPE_TAG: &str = "__v1_type";

/// v1 header fields that travel as v2 tags; [`to_v1`] lifts them back out of the tag map (§3.4).
const HEADER_TAGS: [&str; 5] = ["origin", "deployment", "job", "index", "ip"];

/// Gauge metrics that make a v2 gauge a v1 `ContainerMetric` (§3.4).
const CONTAINER_METRIC_KEYS: [&str; 5] = ["cpu", "memory", "disk", "memory_quota", "disk_quota"];

/// Tags that carry `HttpStartStop` fields in v2; they are removed from the v1 tag map (§3.4).
const HTTP_TAGS: [&str; 10] = [
    "request_id",
    "peer_type",
    "method",
    "uri",
    "remote_address",
    "user_agent",
    "status_code",
    "content_length",
    "routing_instance_id",
    "forwarded",
];

// === UUIDs (§3.2) ===

/// Parses a GUID (`8-4-4-4-12` hex digits, either case) into a dropsonde UUID: `low` is the
/// little-endian u64 of the first 8 bytes in textual order, `high` of the last 8.
/// Returns `None` for anything that is not a GUID.
pub fn uuid_from_str(text: &str) -> Option<events::Uuid> {
    const DASH_POSITIONS: [usize; 4] = [8, 13, 18, 23];
    if text.len() != 36 {
        return None;
    }
    let mut bytes = [0u8; 16];
    let mut nibble_count = 0usize;
    for (position, &c) in text.as_bytes().iter().enumerate() {
        if DASH_POSITIONS.contains(&position) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let nibble = hex_value(c)?;
        let byte = bytes.get_mut(nibble_count / 2)?;
        *byte = (*byte << 4) | nibble;
        nibble_count += 1;
    }
    let (low, high) = bytes.split_at(8);
    Some(events::Uuid {
        low: u64::from_le_bytes(low.try_into().ok()?),
        high: u64::from_le_bytes(high.try_into().ok()?),
    })
}

/// Formats a dropsonde UUID as a lowercase `8-4-4-4-12` GUID, the inverse of [`uuid_from_str`].
pub fn uuid_to_string(uuid: &events::Uuid) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(36);
    let bytes = uuid.low.to_le_bytes().into_iter().chain(uuid.high.to_le_bytes());
    for (position, byte) in bytes.enumerate() {
        if matches!(position, 4 | 6 | 8 | 10) {
            text.push('-');
        }
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0x0f)]));
    }
    text
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

// === Tags ===

/// "Get v2 tag" (§3.3): `tags[key]` if present, else `deprecated_tags[key]` rendered as text
/// (integers in decimal, decimals with six fixed decimals like Go's `%f`), else `""`.
pub fn v2_tag<'a>(env: &'a v2::Envelope, key: &str) -> Cow<'a, str> {
    if let Some(value) = env.tags.get(key) {
        return Cow::Borrowed(value);
    }
    env.deprecated_tags.get(key).and_then(deprecated_value_as_v1_text).unwrap_or(Cow::Borrowed(""))
}

/// Renders a deprecated tag value the way the v2→v1 conversion does (§3.3); `None` when the value
/// has no member set, which Go's conversion skips.
fn deprecated_value_as_v1_text(value: &v2::Value) -> Option<Cow<'_, str>> {
    match &value.data {
        Some(Data::Text(text)) => Some(Cow::Borrowed(text)),
        Some(Data::Integer(integer)) => Some(Cow::Owned(integer.to_string())),
        Some(Data::Decimal(decimal)) => Some(Cow::Owned(format_fixed6(*decimal))),
        None => None,
    }
}

/// Go's `fmt.Sprintf("%f", x)`: six fixed decimals, with Go's spelling of the non-finite values.
fn format_fixed6(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_owned()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        format!("{x:.6}")
    }
}

/// Shortest decimal rendering that reads back as the same f64, without exponent (Go's
/// `strconv.FormatFloat(x, 'f', -1, 64)`), used where §1.4/§2.6 ask for "shortest" formatting.
fn format_shortest(x: f64) -> String {
    if x.is_nan() {
        "NaN".to_owned()
    } else if x.is_infinite() {
        if x > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else {
        x.to_string()
    }
}

/// Applies the RLP's `use_preferred_tags` rewrite (§2.6).
///
/// `true`: every `deprecated_tags` entry is copied into `tags` (text as-is, integers in decimal,
/// decimals in shortest form; an entry without a value becomes `""`) and `deprecated_tags` is
/// cleared. `false`: every `tags` entry is copied into `deprecated_tags` as a text value and `tags`
/// is cleared. On a key present in both maps, the copied entry wins.
pub fn apply_preferred_tags(env: &mut v2::Envelope, use_preferred_tags: bool) {
    if use_preferred_tags {
        for (key, value) in std::mem::take(&mut env.deprecated_tags) {
            let text = match value.data {
                Some(Data::Text(text)) => text,
                Some(Data::Integer(integer)) => integer.to_string(),
                Some(Data::Decimal(decimal)) => format_shortest(decimal),
                None => String::new(),
            };
            env.tags.insert(key, text);
        }
    } else {
        for (key, text) in std::mem::take(&mut env.tags) {
            env.deprecated_tags.insert(key, text_value(text));
        }
    }
}

fn text_value(text: String) -> v2::Value {
    v2::Value { data: Some(Data::Text(text)) }
}

// === v2 → v1 (§3.4) ===

/// Converts a v2 envelope to the v1 envelopes a v1 subscriber sees (§3.4): none for events, for
/// timers whose `request_id` tag is not a GUID (the required v1 field would be missing) and for
/// envelopes without a message; one per metric for ordinary gauges; one otherwise.
pub fn to_v1(env: &v2::Envelope) -> Vec<events::Envelope> {
    let Some(message) = &env.message else {
        return Vec::new();
    };
    let header = v1_header(env);
    let mut converted = match message {
        Message::Log(log) => vec![log_to_v1(env, log, header)],
        Message::Counter(counter) => vec![counter_to_v1(env, counter, header)],
        Message::Gauge(gauge) => gauge_to_v1(env, gauge, header),
        Message::Timer(timer) => timer_to_v1(env, timer, header).into_iter().collect(),
        Message::Event(_) => Vec::new(),
    };
    for v1 in &mut converted {
        v1.tags.remove(V1_TYPE_TAG);
        for key in HEADER_TAGS {
            v1.tags.remove(key);
        }
    }
    converted
}

/// The header shared by every v1 envelope produced from `env` (§3.4); `event_type` is set by the
/// per-type conversion.
fn v1_header(env: &v2::Envelope) -> events::Envelope {
    let mut tags = HashMap::with_capacity(env.tags.len() + env.deprecated_tags.len() + 1);
    for (key, value) in &env.tags {
        tags.insert(key.clone(), value.clone());
    }
    // Deprecated tags are inserted second so that they win on a key conflict, as in Go.
    for (key, value) in &env.deprecated_tags {
        if let Some(text) = deprecated_value_as_v1_text(value) {
            tags.insert(key.clone(), text.into_owned());
        }
    }
    if !env.source_id.is_empty() {
        tags.insert("source_id".to_owned(), env.source_id.clone());
    }
    events::Envelope {
        origin: v2_tag(env, "origin").into_owned(),
        event_type: 0,
        timestamp: Some(env.timestamp),
        deployment: Some(v2_tag(env, "deployment").into_owned()),
        job: Some(v2_tag(env, "job").into_owned()),
        index: Some(v2_tag(env, "index").into_owned()),
        ip: Some(v2_tag(env, "ip").into_owned()),
        tags,
        ..Default::default()
    }
}

fn log_to_v1(env: &v2::Envelope, log: &v2::Log, mut v1: events::Envelope) -> events::Envelope {
    // A v1 Error converted up to v2 is a log tagged `__v1_type=Error`; recover it (§3.4).
    if v2_tag(env, V1_TYPE_TAG) == "Error" {
        v1.event_type = EventType::Error as i32;
        v1.error = Some(events::Error {
            source: v2_tag(env, "source").into_owned(),
            code: parse_or_zero(&v2_tag(env, "code")),
            message: String::from_utf8_lossy(&log.payload).into_owned(),
        });
        v1.tags.remove("source");
        v1.tags.remove("code");
        return v1;
    }
    let message_type = if log.r#type == v2::log::Type::Out as i32 { MessageType::Out } else { MessageType::Err };
    v1.event_type = EventType::LogMessage as i32;
    v1.log_message = Some(events::LogMessage {
        message: log.payload.clone(),
        message_type: message_type as i32,
        timestamp: env.timestamp,
        app_id: Some(env.source_id.clone()),
        source_type: Some(v2_tag(env, "source_type").into_owned()),
        source_instance: Some(env.instance_id.clone()),
    });
    v1.tags.remove("source_type");
    v1
}

fn counter_to_v1(env: &v2::Envelope, counter: &v2::Counter, mut v1: events::Envelope) -> events::Envelope {
    v1.event_type = EventType::CounterEvent as i32;
    v1.counter_event =
        Some(events::CounterEvent { name: counter.name.clone(), delta: counter.delta, total: Some(counter.total) });
    if !env.instance_id.is_empty() {
        v1.tags.insert("instance_id".to_owned(), env.instance_id.clone());
    }
    v1
}

fn gauge_to_v1(env: &v2::Envelope, gauge: &v2::Gauge, mut header: events::Envelope) -> Vec<events::Envelope> {
    if is_container_metric(gauge) {
        header.event_type = EventType::ContainerMetric as i32;
        header.container_metric = Some(container_metric_to_v1(env, gauge));
        return vec![header];
    }
    // Go also yields nothing when a metric value is nil; prost map values cannot be absent, so that
    // case does not exist here.
    if !env.instance_id.is_empty() {
        header.tags.insert("instance_id".to_owned(), env.instance_id.clone());
    }
    header.event_type = EventType::ValueMetric as i32;
    gauge
        .metrics
        .iter()
        .map(|(name, metric)| events::Envelope {
            value_metric: Some(events::ValueMetric {
                name: name.clone(),
                value: metric.value,
                unit: metric.unit.clone(),
            }),
            ..header.clone()
        })
        .collect()
}

/// A gauge is a container metric when it has more than one metric and each of
/// [`CONTAINER_METRIC_KEYS`] is present and not the zero value (§3.4).
fn is_container_metric(gauge: &v2::Gauge) -> bool {
    gauge.metrics.len() > 1
        && CONTAINER_METRIC_KEYS
            .iter()
            .all(|key| gauge.metrics.get(*key).is_some_and(|metric| !(metric.unit.is_empty() && metric.value == 0.0)))
}

fn container_metric_to_v1(env: &v2::Envelope, gauge: &v2::Gauge) -> events::ContainerMetric {
    let metric = |key: &str| gauge.metrics.get(key).map_or(0.0, |metric| metric.value);
    // Float-to-integer `as` casts saturate (NaN becomes 0), which is the most sensible reading of
    // Go's implementation-defined conversions for out-of-range values.
    let instance_index = match gauge.metrics.get("instance_index") {
        Some(index) => index.value as i32,
        None => parse_or_zero(&env.instance_id),
    };
    events::ContainerMetric {
        application_id: env.source_id.clone(),
        instance_index,
        cpu_percentage: metric("cpu"),
        memory_bytes: metric("memory") as u64,
        disk_bytes: metric("disk") as u64,
        memory_bytes_quota: Some(metric("memory_quota") as u64),
        disk_bytes_quota: Some(metric("disk_quota") as u64),
    }
}

fn timer_to_v1(env: &v2::Envelope, timer: &v2::Timer, mut v1: events::Envelope) -> Option<events::Envelope> {
    // `requestId` is a required v1 field: without a GUID there is nothing valid to send, and Doppler
    // drops such envelopes (§3.4, §9 item 9).
    let request_id = uuid_from_str(&v2_tag(env, "request_id"))?;
    let peer_type = events::PeerType::from_str_name(&v2_tag(env, "peer_type")).map_or(0, |p| p as i32);
    let method = events::Method::from_str_name(&v2_tag(env, "method")).map_or(0, |m| m as i32);
    v1.event_type = EventType::HttpStartStop as i32;
    v1.http_start_stop = Some(events::HttpStartStop {
        start_timestamp: timer.start,
        stop_timestamp: timer.stop,
        request_id,
        peer_type,
        method,
        uri: v2_tag(env, "uri").into_owned(),
        remote_address: v2_tag(env, "remote_address").into_owned(),
        user_agent: v2_tag(env, "user_agent").into_owned(),
        status_code: parse_or_zero(&v2_tag(env, "status_code")),
        content_length: parse_or_zero(&v2_tag(env, "content_length")),
        application_id: uuid_from_str(&env.source_id),
        instance_index: Some(parse_or_zero(&env.instance_id)),
        instance_id: Some(v2_tag(env, "routing_instance_id").into_owned()),
        // An absent tag splits into `[""]`, as Go's `strings.Split` does.
        forwarded: v2_tag(env, "forwarded").split('\n').map(str::to_owned).collect(),
    });
    for key in HTTP_TAGS {
        v1.tags.remove(key);
    }
    Some(v1)
}

/// Parses a decimal integer tag; 0 when it does not parse or does not fit (§3.4 "0 on parse error").
fn parse_or_zero<T: std::str::FromStr + Default>(text: &str) -> T {
    text.parse().unwrap_or_default()
}

// === v1 → v2 (§3.5) ===

/// Converts a dropsonde envelope to v2 (§3.5). With `use_preferred_tags` the v1 tags and header
/// fields become `tags`, otherwise text `deprecated_tags`. Returns `None` when `event_type` is unknown
/// or its payload is missing.
pub fn to_v2(env: &events::Envelope, use_preferred_tags: bool) -> Option<v2::Envelope> {
    let event_type = EventType::try_from(env.event_type).ok()?;
    let mut out = v2::Envelope { timestamp: env.timestamp.unwrap_or_default(), ..Default::default() };
    let mut tags = V2TagWriter { env: &mut out, use_preferred_tags };
    for (key, value) in &env.tags {
        tags.set(key, value.clone());
    }
    let deployment = env.deployment.as_deref().unwrap_or_default();
    let job = env.job.as_deref().unwrap_or_default();
    tags.set("origin", env.origin.clone());
    tags.set("deployment", deployment.to_owned());
    tags.set("job", job.to_owned());
    tags.set("index", env.index.clone().unwrap_or_default());
    tags.set("ip", env.ip.clone().unwrap_or_default());
    tags.set(V1_TYPE_TAG, event_type.as_str_name().to_owned());
    tags.unset("source_id");

    tags.env.source_id = match env.tags.get("source_id") {
        Some(source_id) => source_id.clone(),
        None => format!("{deployment}/{job}"),
    };

    match event_type {
        EventType::LogMessage => log_message_to_v2(env.log_message.as_ref()?, &mut tags),
        EventType::HttpStartStop => http_start_stop_to_v2(env.http_start_stop.as_ref()?, &mut tags),
        EventType::ValueMetric => value_metric_to_v2(env.value_metric.as_ref()?, env, &mut tags),
        EventType::CounterEvent => counter_event_to_v2(env.counter_event.as_ref()?, env, &mut tags),
        EventType::Error => error_to_v2(env.error.as_ref()?, &mut tags),
        EventType::ContainerMetric => container_metric_to_v2(env.container_metric.as_ref()?, &mut tags),
    }
    Some(out)
}

/// Writes v2 tags to `tags` or, as text values, to `deprecated_tags` (§3.5).
struct V2TagWriter<'a> {
    env: &'a mut v2::Envelope,
    use_preferred_tags: bool,
}

impl V2TagWriter<'_> {
    fn set(&mut self, key: &str, value: String) {
        if self.use_preferred_tags {
            self.env.tags.insert(key.to_owned(), value);
        } else {
            self.env.deprecated_tags.insert(key.to_owned(), text_value(value));
        }
    }

    fn unset(&mut self, key: &str) {
        self.env.tags.remove(key);
        self.env.deprecated_tags.remove(key);
    }
}

fn log_message_to_v2(log: &events::LogMessage, tags: &mut V2TagWriter<'_>) {
    tags.set("source_type", log.source_type.clone().unwrap_or_default());
    let env = &mut *tags.env;
    env.instance_id = log.source_instance.clone().unwrap_or_default();
    if let Some(app_id) = log.app_id.as_ref().filter(|id| !id.is_empty()) {
        env.source_id = app_id.clone();
    }
    // The v2 type is chosen by name, so anything but ERR is OUT (Go's name lookup defaults to 0).
    let log_type = if log.message_type == MessageType::Err as i32 { v2::log::Type::Err } else { v2::log::Type::Out };
    env.message = Some(Message::Log(v2::Log { payload: log.message.clone(), r#type: log_type as i32 }));
}

fn http_start_stop_to_v2(http: &events::HttpStartStop, tags: &mut V2TagWriter<'_>) {
    tags.set("request_id", uuid_to_string(&http.request_id));
    tags.set("peer_type", enum_name(http.peer_type, |v| events::PeerType::try_from(v).map(|p| p.as_str_name())));
    tags.set("method", enum_name(http.method, |v| events::Method::try_from(v).map(|m| m.as_str_name())));
    tags.set("uri", http.uri.clone());
    tags.set("remote_address", http.remote_address.clone());
    tags.set("user_agent", http.user_agent.clone());
    tags.set("status_code", http.status_code.to_string());
    tags.set("content_length", http.content_length.to_string());
    tags.set("routing_instance_id", http.instance_id.clone().unwrap_or_default());
    tags.set("forwarded", http.forwarded.join("\n"));

    let env = &mut *tags.env;
    // An all-zero application id means "unset" in Go, which keeps the source id from the header.
    if let Some(app_id) = http.application_id.filter(|id| id.low != 0 || id.high != 0) {
        env.source_id = uuid_to_string(&app_id);
    }
    env.instance_id = http.instance_index.unwrap_or_default().to_string();
    env.message = Some(Message::Timer(v2::Timer {
        name: "http".to_owned(),
        start: http.start_timestamp,
        stop: http.stop_timestamp,
    }));
}

/// The name of a known enum value, or its number, as Go's `String()` does for unknown values.
fn enum_name<E>(value: i32, name: impl Fn(i32) -> Result<&'static str, E>) -> String {
    name(value).map_or_else(|_| value.to_string(), str::to_owned)
}

fn value_metric_to_v2(metric: &events::ValueMetric, v1: &events::Envelope, tags: &mut V2TagWriter<'_>) {
    let env = &mut *tags.env;
    // Unlike counters, Go leaves the `instance_id` tag in place for value metrics.
    env.instance_id = v1.tags.get("instance_id").cloned().unwrap_or_default();
    let value = v2::GaugeValue { unit: metric.unit.clone(), value: metric.value };
    env.message = Some(Message::Gauge(v2::Gauge { metrics: HashMap::from([(metric.name.clone(), value)]) }));
}

fn counter_event_to_v2(counter: &events::CounterEvent, v1: &events::Envelope, tags: &mut V2TagWriter<'_>) {
    tags.unset("instance_id");
    let env = &mut *tags.env;
    env.instance_id = v1.tags.get("instance_id").cloned().unwrap_or_default();
    env.message = Some(Message::Counter(v2::Counter {
        name: counter.name.clone(),
        delta: counter.delta,
        total: counter.total.unwrap_or_default(),
    }));
}

fn error_to_v2(error: &events::Error, tags: &mut V2TagWriter<'_>) {
    tags.set("source", error.source.clone());
    tags.set("code", error.code.to_string());
    tags.env.message = Some(Message::Log(v2::Log {
        payload: Bytes::from(error.message.clone().into_bytes()),
        r#type: v2::log::Type::Out as i32,
    }));
}

fn container_metric_to_v2(metric: &events::ContainerMetric, tags: &mut V2TagWriter<'_>) {
    let env = &mut *tags.env;
    if !metric.application_id.is_empty() {
        env.source_id = metric.application_id.clone();
    }
    env.instance_id = metric.instance_index.to_string();
    let gauge_value = |unit: &str, value: f64| v2::GaugeValue { unit: unit.to_owned(), value };
    // Byte counts above 2^53 lose precision as doubles, exactly as in Go's `float64(...)`.
    let metrics = HashMap::from([
        ("cpu".to_owned(), gauge_value("percentage", metric.cpu_percentage)),
        ("memory".to_owned(), gauge_value("bytes", metric.memory_bytes as f64)),
        ("disk".to_owned(), gauge_value("bytes", metric.disk_bytes as f64)),
        ("memory_quota".to_owned(), gauge_value("bytes", metric.memory_bytes_quota.unwrap_or_default() as f64)),
        ("disk_quota".to_owned(), gauge_value("bytes", metric.disk_bytes_quota.unwrap_or_default() as f64)),
    ]);
    env.message = Some(Message::Gauge(v2::Gauge { metrics }));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const APP_GUID: &str = "f47ac10b-58cc-4372-a567-0e02b2c3d479";
    const REQUEST_GUID: &str = "b3015d69-09cd-476d-aace-ad2d824d5ab7";

    fn string_map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn text(value: &str) -> v2::Value {
        text_value(value.to_owned())
    }

    fn gauge_value(unit: &str, value: f64) -> v2::GaugeValue {
        v2::GaugeValue { unit: unit.to_owned(), value }
    }

    /// A v2 envelope as the agent would send it: header fields as tags, plus one of each value kind
    /// among the deprecated tags.
    fn v2_envelope(message: Message) -> v2::Envelope {
        v2::Envelope {
            timestamp: 1_700_000_000_000_000_000,
            source_id: APP_GUID.to_owned(),
            instance_id: "3".to_owned(),
            tags: string_map(&[
                ("origin", "rep"),
                ("deployment", "cf"),
                ("job", "diego-cell"),
                ("index", "0c6e"),
                ("ip", "10.0.0.7"),
                ("source_type", "APP/PROC/WEB"),
                ("conflict", "from-tags"),
            ]),
            deprecated_tags: HashMap::from([
                ("conflict".to_owned(), text("from-deprecated")),
                ("count".to_owned(), v2::Value { data: Some(Data::Integer(-42)) }),
                ("ratio".to_owned(), v2::Value { data: Some(Data::Decimal(1.5)) }),
            ]),
            message: Some(message),
        }
    }

    fn log(payload: &'static str, log_type: v2::log::Type) -> Message {
        Message::Log(v2::Log { payload: Bytes::from_static(payload.as_bytes()), r#type: log_type as i32 })
    }

    /// The five metrics that make a gauge a container metric, plus `extra`.
    fn container_metrics(extra: &[(&str, v2::GaugeValue)]) -> v2::Gauge {
        let mut metrics: HashMap<String, v2::GaugeValue> = HashMap::from([
            ("cpu".to_owned(), gauge_value("percentage", 12.5)),
            ("memory".to_owned(), gauge_value("bytes", 1024.0)),
            ("disk".to_owned(), gauge_value("bytes", 2048.9)),
            ("memory_quota".to_owned(), gauge_value("bytes", 4096.0)),
            ("disk_quota".to_owned(), gauge_value("bytes", 8192.0)),
        ]);
        for (key, value) in extra {
            metrics.insert((*key).to_owned(), value.clone());
        }
        v2::Gauge { metrics }
    }

    fn container_gauge(extra: &[(&str, v2::GaugeValue)]) -> Message {
        Message::Gauge(container_metrics(extra))
    }

    fn only(mut converted: Vec<events::Envelope>) -> events::Envelope {
        assert_eq!(converted.len(), 1, "expected exactly one v1 envelope: {converted:?}");
        converted.remove(0)
    }

    // --- UUIDs ---

    #[test]
    fn uuid_packs_bytes_little_endian_in_textual_order() {
        let uuid = uuid_from_str(APP_GUID).expect("valid GUID");
        assert_eq!(uuid.low, 0x7243_cc58_0bc1_7af4);
        assert_eq!(uuid.high, 0x79d4_c3b2_020e_67a5);
        assert_eq!(uuid_to_string(&uuid), APP_GUID);
    }

    #[test]
    fn uuid_accepts_uppercase_and_formats_lowercase() {
        let uuid = uuid_from_str(&APP_GUID.to_uppercase()).expect("valid GUID");
        assert_eq!(uuid_to_string(&uuid), APP_GUID);
    }

    #[test]
    fn uuid_rejects_anything_but_a_guid() {
        for bad in [
            "",
            "f47ac10b58cc4372a5670e02b2c3d479",
            "f47ac10b-58cc-4372-a567-0e02b2c3d47",
            "f47ac10b-58cc-4372-a567-0e02b2c3d4790",
            "f47ac10b-58cc-4372-a567-0e02b2c3d47g",
            "f47ac10b58-cc-4372-a567-0e02b2c3d479",
            "f47ac10b-58cc-4372-a567+0e02b2c3d479",
            "f47ac10b-58cc-4372-a567-0e02b2c3d4é",
        ] {
            assert_eq!(uuid_from_str(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn uuid_zero_formats_as_all_zero_guid() {
        let zero = events::Uuid { low: 0, high: 0 };
        assert_eq!(uuid_to_string(&zero), "00000000-0000-0000-0000-000000000000");
    }

    // --- tags ---

    #[test]
    fn v2_tag_prefers_tags_then_renders_deprecated_values() {
        let env = v2_envelope(log("x", v2::log::Type::Out));
        assert_eq!(v2_tag(&env, "conflict"), "from-tags");
        assert_eq!(v2_tag(&env, "count"), "-42");
        assert_eq!(v2_tag(&env, "ratio"), "1.500000");
        assert_eq!(v2_tag(&env, "absent"), "");
    }

    #[test]
    fn v2_tag_renders_non_finite_decimals_like_go() {
        let mut env = v2::Envelope::default();
        for (key, value) in [("nan", f64::NAN), ("inf", f64::INFINITY), ("neg_inf", f64::NEG_INFINITY)] {
            env.deprecated_tags.insert(key.to_owned(), v2::Value { data: Some(Data::Decimal(value)) });
        }
        env.deprecated_tags.insert("empty".to_owned(), v2::Value { data: None });
        assert_eq!(v2_tag(&env, "nan"), "NaN");
        assert_eq!(v2_tag(&env, "inf"), "+Inf");
        assert_eq!(v2_tag(&env, "neg_inf"), "-Inf");
        assert_eq!(v2_tag(&env, "empty"), "");
    }

    #[test]
    fn preferred_tags_moves_deprecated_tags_into_tags_with_shortest_decimals() {
        let mut env = v2_envelope(log("x", v2::log::Type::Out));
        env.deprecated_tags.insert("big".to_owned(), v2::Value { data: Some(Data::Decimal(1e21)) });
        apply_preferred_tags(&mut env, true);
        assert!(env.deprecated_tags.is_empty());
        assert_eq!(env.tags["conflict"], "from-deprecated");
        assert_eq!(env.tags["count"], "-42");
        assert_eq!(env.tags["ratio"], "1.5");
        assert_eq!(env.tags["big"], "1000000000000000000000");
        assert_eq!(env.tags["origin"], "rep");
        assert_eq!(env.tags.len(), 10);
    }

    #[test]
    fn not_preferred_tags_moves_tags_into_deprecated_text_and_clears_tags() {
        let mut env = v2_envelope(log("x", v2::log::Type::Out));
        apply_preferred_tags(&mut env, false);
        assert!(env.tags.is_empty());
        assert_eq!(env.deprecated_tags["conflict"], text("from-tags"));
        assert_eq!(env.deprecated_tags["origin"], text("rep"));
        assert_eq!(
            env.deprecated_tags["count"].data,
            Some(Data::Integer(-42)),
            "existing deprecated values keep their type"
        );
        assert_eq!(env.deprecated_tags.len(), 9);
    }

    // --- v2 → v1 ---

    #[test]
    fn v1_header_comes_from_tags_and_tag_union_drops_header_keys() {
        let v1 = only(to_v1(&v2_envelope(log("hello", v2::log::Type::Out))));
        assert_eq!(v1.origin, "rep");
        assert_eq!(v1.deployment.as_deref(), Some("cf"));
        assert_eq!(v1.job.as_deref(), Some("diego-cell"));
        assert_eq!(v1.index.as_deref(), Some("0c6e"));
        assert_eq!(v1.ip.as_deref(), Some("10.0.0.7"));
        assert_eq!(v1.timestamp, Some(1_700_000_000_000_000_000));
        assert_eq!(
            v1.tags,
            string_map(&[
                ("conflict", "from-deprecated"),
                ("count", "-42"),
                ("ratio", "1.500000"),
                ("source_id", APP_GUID),
            ])
        );
    }

    #[test]
    fn v1_header_reads_deprecated_tags_and_defaults_to_empty() {
        let env = v2::Envelope {
            deprecated_tags: HashMap::from([
                ("origin".to_owned(), text("gorouter")),
                ("__v1_type".to_owned(), text("LogMessage")),
                ("index".to_owned(), v2::Value { data: Some(Data::Integer(2)) }),
            ]),
            message: Some(log("x", v2::log::Type::Out)),
            ..Default::default()
        };
        let v1 = only(to_v1(&env));
        assert_eq!(v1.origin, "gorouter");
        assert_eq!(v1.index.as_deref(), Some("2"));
        assert_eq!(v1.deployment.as_deref(), Some(""));
        assert_eq!(v1.ip.as_deref(), Some(""));
        assert!(v1.tags.is_empty(), "empty source id adds no tag: {:?}", v1.tags);
    }

    #[test]
    fn log_becomes_log_message() {
        let v1 = only(to_v1(&v2_envelope(log("hello", v2::log::Type::Err))));
        assert_eq!(v1.event_type, EventType::LogMessage as i32);
        assert_eq!(
            v1.log_message,
            Some(events::LogMessage {
                message: Bytes::from_static(b"hello"),
                message_type: MessageType::Err as i32,
                timestamp: 1_700_000_000_000_000_000,
                app_id: Some(APP_GUID.to_owned()),
                source_type: Some("APP/PROC/WEB".to_owned()),
                source_instance: Some("3".to_owned()),
            })
        );
        assert!(!v1.tags.contains_key("source_type"));
    }

    #[test]
    fn log_tagged_as_v1_error_recovers_the_error() {
        let mut env = v2_envelope(log("connection refused", v2::log::Type::Out));
        env.tags.insert("__v1_type".to_owned(), "Error".to_owned());
        env.tags.insert("source".to_owned(), "doppler".to_owned());
        env.tags.insert("code".to_owned(), "503".to_owned());
        let v1 = only(to_v1(&env));
        assert_eq!(v1.event_type, EventType::Error as i32);
        assert_eq!(
            v1.error,
            Some(events::Error { source: "doppler".to_owned(), code: 503, message: "connection refused".to_owned() })
        );
        assert_eq!(v1.log_message, None);
        for removed in ["source", "code", "__v1_type"] {
            assert!(!v1.tags.contains_key(removed), "{removed}");
        }
        assert_eq!(v1.tags["source_type"], "APP/PROC/WEB", "only LogMessage drops it");
    }

    #[test]
    fn error_code_that_does_not_parse_is_zero() {
        let mut env = v2_envelope(log("x", v2::log::Type::Out));
        env.tags.insert("__v1_type".to_owned(), "Error".to_owned());
        env.tags.insert("code".to_owned(), "five".to_owned());
        let error = only(to_v1(&env)).error.expect("an Error");
        assert_eq!(error.code, 0);
        assert_eq!(error.source, "");
    }

    #[test]
    fn counter_becomes_counter_event_with_instance_id_tag() {
        let env = v2_envelope(Message::Counter(v2::Counter { name: "requests".to_owned(), delta: 5, total: 105 }));
        let v1 = only(to_v1(&env));
        assert_eq!(v1.event_type, EventType::CounterEvent as i32);
        assert_eq!(
            v1.counter_event,
            Some(events::CounterEvent { name: "requests".to_owned(), delta: 5, total: Some(105) })
        );
        assert_eq!(v1.tags["instance_id"], "3");
        assert_eq!(v1.tags["source_type"], "APP/PROC/WEB");
    }

    #[test]
    fn counter_without_instance_id_adds_no_tag() {
        let mut env = v2_envelope(Message::Counter(v2::Counter::default()));
        env.instance_id.clear();
        assert!(!only(to_v1(&env)).tags.contains_key("instance_id"));
    }

    #[test]
    fn gauge_becomes_one_value_metric_per_key() {
        let env = v2_envelope(Message::Gauge(v2::Gauge {
            metrics: HashMap::from([
                ("latency".to_owned(), gauge_value("ms", 12.5)),
                ("queue".to_owned(), gauge_value("", 0.0)),
                ("cpu".to_owned(), gauge_value("percentage", 40.0)),
            ]),
        }));
        let converted = to_v1(&env);
        let mut metrics: Vec<events::ValueMetric> = converted
            .iter()
            .map(|v1| {
                assert_eq!(v1.event_type, EventType::ValueMetric as i32);
                assert_eq!(v1.origin, "rep");
                assert_eq!(v1.tags["instance_id"], "3");
                assert_eq!(v1.tags["source_id"], APP_GUID);
                v1.value_metric.clone().expect("a ValueMetric")
            })
            .collect();
        metrics.sort_by(|a, b| a.name.cmp(&b.name));
        let metric = |name: &str, value: f64, unit: &str| events::ValueMetric {
            name: name.to_owned(),
            value,
            unit: unit.to_owned(),
        };
        assert_eq!(
            metrics,
            vec![metric("cpu", 40.0, "percentage"), metric("latency", 12.5, "ms"), metric("queue", 0.0, ""),]
        );
    }

    #[test]
    fn gauge_without_metrics_yields_nothing() {
        let env = v2_envelope(Message::Gauge(v2::Gauge::default()));
        assert_eq!(to_v1(&env), Vec::new());
    }

    #[test]
    fn container_gauge_becomes_exactly_one_container_metric() {
        let env = v2_envelope(container_gauge(&[("extra", gauge_value("x", 1.0))]));
        let v1 = only(to_v1(&env));
        assert_eq!(v1.event_type, EventType::ContainerMetric as i32);
        assert_eq!(v1.value_metric, None);
        assert_eq!(
            v1.container_metric,
            Some(events::ContainerMetric {
                application_id: APP_GUID.to_owned(),
                instance_index: 3,
                cpu_percentage: 12.5,
                memory_bytes: 1024,
                disk_bytes: 2048,
                memory_bytes_quota: Some(4096),
                disk_bytes_quota: Some(8192),
            })
        );
        assert!(!v1.tags.contains_key("instance_id"), "only value metrics get the tag");
    }

    #[test]
    fn container_metric_instance_index_prefers_the_metric() {
        let env = v2_envelope(container_gauge(&[("instance_index", gauge_value("index", 7.0))]));
        let metric = only(to_v1(&env)).container_metric.expect("a ContainerMetric");
        assert_eq!(metric.instance_index, 7);

        let mut env = v2_envelope(container_gauge(&[]));
        env.instance_id = "not-a-number".to_owned();
        let metric = only(to_v1(&env)).container_metric.expect("a ContainerMetric");
        assert_eq!(metric.instance_index, 0);
    }

    #[test]
    fn gauge_missing_or_zero_container_key_is_not_a_container_metric() {
        let full = container_metrics(&[]);
        for key in CONTAINER_METRIC_KEYS {
            let mut missing = full.clone();
            missing.metrics.remove(key);
            let converted = to_v1(&v2_envelope(Message::Gauge(missing)));
            assert_eq!(converted.len(), 4, "without {key}");
            assert!(converted.iter().all(|v1| v1.value_metric.is_some()));

            let mut zeroed = full.clone();
            zeroed.metrics.insert(key.to_owned(), gauge_value("", 0.0));
            let converted = to_v1(&v2_envelope(Message::Gauge(zeroed)));
            assert_eq!(converted.len(), 5, "with zero {key}");
            assert!(converted.iter().all(|v1| v1.value_metric.is_some()));
        }
        // A zero value with a unit still counts as present.
        let mut zero_with_unit = full.clone();
        zero_with_unit.metrics.insert("memory".to_owned(), gauge_value("bytes", 0.0));
        let metric =
            only(to_v1(&v2_envelope(Message::Gauge(zero_with_unit)))).container_metric.expect("a ContainerMetric");
        assert_eq!(metric.memory_bytes, 0);
    }

    fn timer_envelope() -> v2::Envelope {
        let mut env = v2_envelope(Message::Timer(v2::Timer { name: "http".to_owned(), start: 100, stop: 250 }));
        env.tags.extend(string_map(&[
            ("request_id", REQUEST_GUID),
            ("peer_type", "Server"),
            ("method", "POST"),
            ("uri", "https://app.example.com/x"),
            ("remote_address", "10.0.0.1:5000"),
            ("user_agent", "curl/8"),
            ("status_code", "201"),
            ("content_length", "12345"),
            ("routing_instance_id", "router-0"),
            ("forwarded", "1.1.1.1\n2.2.2.2"),
        ]));
        env
    }

    #[test]
    fn timer_becomes_http_start_stop() {
        let v1 = only(to_v1(&timer_envelope()));
        assert_eq!(v1.event_type, EventType::HttpStartStop as i32);
        assert_eq!(
            v1.http_start_stop,
            Some(events::HttpStartStop {
                start_timestamp: 100,
                stop_timestamp: 250,
                request_id: uuid_from_str(REQUEST_GUID).expect("valid GUID"),
                peer_type: events::PeerType::Server as i32,
                method: events::Method::Post as i32,
                uri: "https://app.example.com/x".to_owned(),
                remote_address: "10.0.0.1:5000".to_owned(),
                user_agent: "curl/8".to_owned(),
                status_code: 201,
                content_length: 12345,
                application_id: uuid_from_str(APP_GUID),
                instance_index: Some(3),
                instance_id: Some("router-0".to_owned()),
                forwarded: vec!["1.1.1.1".to_owned(), "2.2.2.2".to_owned()],
            })
        );
        for key in HTTP_TAGS {
            assert!(!v1.tags.contains_key(key), "{key}");
        }
        assert_eq!(v1.tags["source_type"], "APP/PROC/WEB");
    }

    #[test]
    fn timer_with_unknown_names_and_numbers_falls_back_to_zero() {
        let mut env = timer_envelope();
        env.source_id = "gorouter".to_owned();
        env.instance_id = "z".to_owned();
        for (key, value) in [("peer_type", "Proxy"), ("method", "get"), ("status_code", "OK"), ("content_length", "-")]
        {
            env.tags.insert(key.to_owned(), value.to_owned());
        }
        env.tags.remove("forwarded");
        let http = only(to_v1(&env)).http_start_stop.expect("an HttpStartStop");
        assert_eq!(http.peer_type, 0);
        assert_eq!(http.method, 0);
        assert_eq!(http.status_code, 0);
        assert_eq!(http.content_length, 0);
        assert_eq!(http.instance_index, Some(0));
        assert_eq!(http.application_id, None, "source id is not a GUID");
        assert_eq!(http.forwarded, vec![String::new()], "absent tag splits to [\"\"]");
    }

    #[test]
    fn timer_without_guid_request_id_yields_nothing() {
        let mut env = timer_envelope();
        env.tags.insert("request_id".to_owned(), "abc".to_owned());
        assert_eq!(to_v1(&env), Vec::new());
        env.tags.remove("request_id");
        assert_eq!(to_v1(&env), Vec::new());
    }

    #[test]
    fn events_and_empty_envelopes_never_reach_v1() {
        let event = v2_envelope(Message::Event(v2::Event { title: "t".to_owned(), body: "b".to_owned() }));
        assert_eq!(to_v1(&event), Vec::new());
        assert_eq!(to_v1(&v2::Envelope::default()), Vec::new());
    }

    // --- v1 → v2 ---

    fn v1_envelope(event_type: EventType) -> events::Envelope {
        events::Envelope {
            origin: "gorouter".to_owned(),
            event_type: event_type as i32,
            timestamp: Some(1_600_000_000_000_000_000),
            deployment: Some("cf".to_owned()),
            job: Some("router".to_owned()),
            index: Some("a1".to_owned()),
            ip: Some("10.0.1.2".to_owned()),
            tags: string_map(&[("zone", "z1")]),
            ..Default::default()
        }
    }

    #[test]
    fn log_message_becomes_log_with_preferred_tags() {
        let mut v1 = v1_envelope(EventType::LogMessage);
        v1.log_message = Some(events::LogMessage {
            message: Bytes::from_static(b"hi"),
            message_type: MessageType::Err as i32,
            timestamp: 5,
            app_id: Some(APP_GUID.to_owned()),
            source_type: Some("APP/PROC/WEB".to_owned()),
            source_instance: Some("2".to_owned()),
        });
        let env = to_v2(&v1, true).expect("payload matches");
        assert_eq!(
            env,
            v2::Envelope {
                timestamp: 1_600_000_000_000_000_000,
                source_id: APP_GUID.to_owned(),
                instance_id: "2".to_owned(),
                deprecated_tags: HashMap::new(),
                tags: string_map(&[
                    ("zone", "z1"),
                    ("origin", "gorouter"),
                    ("deployment", "cf"),
                    ("job", "router"),
                    ("index", "a1"),
                    ("ip", "10.0.1.2"),
                    ("__v1_type", "LogMessage"),
                    ("source_type", "APP/PROC/WEB"),
                ]),
                message: Some(Message::Log(v2::Log {
                    payload: Bytes::from_static(b"hi"),
                    r#type: v2::log::Type::Err as i32,
                })),
            }
        );
    }

    #[test]
    fn without_preferred_tags_everything_goes_to_deprecated_text() {
        let mut v1 = v1_envelope(EventType::CounterEvent);
        v1.counter_event = Some(events::CounterEvent { name: "n".to_owned(), delta: 1, total: None });
        let env = to_v2(&v1, false).expect("payload matches");
        assert!(env.tags.is_empty());
        assert_eq!(env.deprecated_tags["zone"], text("z1"));
        assert_eq!(env.deprecated_tags["origin"], text("gorouter"));
        assert_eq!(env.deprecated_tags["__v1_type"], text("CounterEvent"));
        assert_eq!(env.deprecated_tags.len(), 7);
    }

    #[test]
    fn source_id_comes_from_tag_else_deployment_slash_job() {
        let mut v1 = v1_envelope(EventType::ValueMetric);
        v1.value_metric = Some(events::ValueMetric { name: "m".to_owned(), value: 1.0, unit: "u".to_owned() });
        assert_eq!(to_v2(&v1, true).expect("payload").source_id, "cf/router");

        v1.tags.insert("source_id".to_owned(), "my-source".to_owned());
        let env = to_v2(&v1, true).expect("payload");
        assert_eq!(env.source_id, "my-source");
        assert!(!env.tags.contains_key("source_id"));
    }

    #[test]
    fn log_message_without_app_id_keeps_header_source_id() {
        let mut v1 = v1_envelope(EventType::LogMessage);
        v1.log_message = Some(events::LogMessage {
            message: Bytes::new(),
            message_type: MessageType::Out as i32,
            timestamp: 0,
            app_id: Some(String::new()),
            source_type: None,
            source_instance: None,
        });
        let env = to_v2(&v1, true).expect("payload matches");
        assert_eq!(env.source_id, "cf/router");
        assert_eq!(env.tags["source_type"], "");
        assert_eq!(env.instance_id, "");
    }

    #[test]
    fn http_start_stop_becomes_timer_with_tags() {
        let mut v1 = v1_envelope(EventType::HttpStartStop);
        v1.http_start_stop = Some(events::HttpStartStop {
            start_timestamp: 10,
            stop_timestamp: 20,
            request_id: uuid_from_str(REQUEST_GUID).expect("valid GUID"),
            peer_type: events::PeerType::Client as i32,
            method: events::Method::VersionControl as i32,
            uri: "/x".to_owned(),
            remote_address: "1.2.3.4".to_owned(),
            user_agent: "ua".to_owned(),
            status_code: 404,
            content_length: -1,
            application_id: uuid_from_str(APP_GUID),
            instance_index: Some(4),
            instance_id: Some("r-1".to_owned()),
            forwarded: vec!["a".to_owned(), "b".to_owned()],
        });
        let env = to_v2(&v1, true).expect("payload matches");
        assert_eq!(env.source_id, APP_GUID);
        assert_eq!(env.instance_id, "4");
        assert_eq!(env.message, Some(Message::Timer(v2::Timer { name: "http".to_owned(), start: 10, stop: 20 })));
        for (key, value) in [
            ("request_id", REQUEST_GUID),
            ("peer_type", "Client"),
            ("method", "VERSION_CONTROL"),
            ("uri", "/x"),
            ("remote_address", "1.2.3.4"),
            ("user_agent", "ua"),
            ("status_code", "404"),
            ("content_length", "-1"),
            ("routing_instance_id", "r-1"),
            ("forwarded", "a\nb"),
            ("__v1_type", "HttpStartStop"),
        ] {
            assert_eq!(env.tags[key], value, "{key}");
        }
    }

    #[test]
    fn http_start_stop_with_zero_application_id_keeps_header_source_id() {
        let mut v1 = v1_envelope(EventType::HttpStartStop);
        v1.http_start_stop = Some(events::HttpStartStop {
            application_id: Some(events::Uuid { low: 0, high: 0 }),
            method: 99,
            ..Default::default()
        });
        let env = to_v2(&v1, true).expect("payload matches");
        assert_eq!(env.source_id, "cf/router");
        assert_eq!(env.instance_id, "0");
        assert_eq!(env.tags["method"], "99", "unknown enum values print as numbers");
        assert_eq!(env.tags["request_id"], "00000000-0000-0000-0000-000000000000");
        assert_eq!(env.tags["forwarded"], "");
    }

    #[test]
    fn value_metric_becomes_single_metric_gauge() {
        let mut v1 = v1_envelope(EventType::ValueMetric);
        v1.tags.insert("instance_id".to_owned(), "7".to_owned());
        v1.value_metric = Some(events::ValueMetric { name: "latency".to_owned(), value: 0.25, unit: "s".to_owned() });
        let env = to_v2(&v1, true).expect("payload matches");
        assert_eq!(env.instance_id, "7");
        assert_eq!(env.tags["instance_id"], "7", "value metrics keep the tag");
        assert_eq!(
            env.message,
            Some(Message::Gauge(v2::Gauge {
                metrics: HashMap::from([("latency".to_owned(), gauge_value("s", 0.25))]),
            }))
        );
    }

    #[test]
    fn counter_event_becomes_counter_and_moves_instance_id() {
        let mut v1 = v1_envelope(EventType::CounterEvent);
        v1.tags.insert("instance_id".to_owned(), "7".to_owned());
        v1.counter_event = Some(events::CounterEvent { name: "ingress".to_owned(), delta: 3, total: Some(30) });
        let env = to_v2(&v1, false).expect("payload matches");
        assert_eq!(env.instance_id, "7");
        assert!(!env.deprecated_tags.contains_key("instance_id"));
        assert_eq!(
            env.message,
            Some(Message::Counter(v2::Counter { name: "ingress".to_owned(), delta: 3, total: 30 }))
        );
    }

    #[test]
    fn error_becomes_out_log_with_source_and_code_tags() {
        let mut v1 = v1_envelope(EventType::Error);
        v1.error = Some(events::Error { source: "doppler".to_owned(), code: -3, message: "boom".to_owned() });
        let env = to_v2(&v1, true).expect("payload matches");
        assert_eq!(env.tags["source"], "doppler");
        assert_eq!(env.tags["code"], "-3");
        assert_eq!(env.tags["__v1_type"], "Error");
        assert_eq!(
            env.message,
            Some(Message::Log(v2::Log { payload: Bytes::from_static(b"boom"), r#type: v2::log::Type::Out as i32 }))
        );
    }

    #[test]
    fn container_metric_becomes_five_metric_gauge() {
        let mut v1 = v1_envelope(EventType::ContainerMetric);
        v1.container_metric = Some(events::ContainerMetric {
            application_id: APP_GUID.to_owned(),
            instance_index: 2,
            cpu_percentage: 33.3,
            memory_bytes: 100,
            disk_bytes: 200,
            memory_bytes_quota: Some(300),
            disk_bytes_quota: None,
        });
        let env = to_v2(&v1, true).expect("payload matches");
        assert_eq!(env.source_id, APP_GUID);
        assert_eq!(env.instance_id, "2");
        let expected: HashMap<String, v2::GaugeValue> = HashMap::from([
            ("cpu".to_owned(), gauge_value("percentage", 33.3)),
            ("memory".to_owned(), gauge_value("bytes", 100.0)),
            ("disk".to_owned(), gauge_value("bytes", 200.0)),
            ("memory_quota".to_owned(), gauge_value("bytes", 300.0)),
            ("disk_quota".to_owned(), gauge_value("bytes", 0.0)),
        ]);
        assert_eq!(env.message, Some(Message::Gauge(v2::Gauge { metrics: expected })));
    }

    #[test]
    fn payload_not_matching_event_type_is_rejected() {
        let mut v1 = v1_envelope(EventType::LogMessage);
        v1.error = Some(events::Error::default());
        assert_eq!(to_v2(&v1, true), None);
        for event_type in [0, 1, 3, 10, -1] {
            let mut v1 = v1_envelope(EventType::LogMessage);
            v1.log_message = Some(events::LogMessage::default());
            v1.event_type = event_type;
            assert_eq!(to_v2(&v1, true), None, "event type {event_type}");
        }
    }

    // --- v1 → v2 → v1 round trips ---

    /// Doubles that compare equal to themselves.
    fn comparable_f64() -> impl Strategy<Value = f64> {
        proptest::num::f64::ANY.prop_filter("NaN never compares equal", |x| !x.is_nan())
    }

    /// Header fields and tags whose keys cannot collide with the tags the conversions own. The
    /// `source_id` tag is set by each payload strategy, as the agent always sets one (§3.6).
    fn v1_header() -> impl Strategy<Value = events::Envelope> {
        (
            any::<String>(),
            ".*",
            ".*",
            ".*",
            ".*",
            any::<i64>(),
            proptest::collection::hash_map("t_[a-z]{1,6}", any::<String>(), 0..4),
        )
            .prop_map(|(origin, deployment, job, index, ip, timestamp, tags)| events::Envelope {
                origin,
                event_type: 0,
                timestamp: Some(timestamp),
                deployment: Some(deployment),
                job: Some(job),
                index: Some(index),
                ip: Some(ip),
                tags,
                ..Default::default()
            })
    }

    /// A source id that is not a GUID, so that it cannot turn into an HttpStartStop application id.
    const PLAIN_SOURCE_ID: &str = "[a-z/]{1,12}";

    fn assert_round_trip(v1: &events::Envelope, use_preferred_tags: bool) -> Result<(), TestCaseError> {
        let v2 = to_v2(v1, use_preferred_tags);
        prop_assert!(v2.is_some(), "payload matches event type");
        let back = v2.as_ref().map(to_v1).unwrap_or_default();
        prop_assert_eq!(back, vec![v1.clone()]);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn log_message_survives_v2(
            mut v1 in v1_header(),
            message in proptest::collection::vec(any::<u8>(), 0..32),
            err in any::<bool>(),
            app_id in "[a-z0-9-]{1,12}",
            source_type in any::<String>(),
            source_instance in any::<String>(),
            preferred in any::<bool>(),
        ) {
            v1.event_type = EventType::LogMessage as i32;
            v1.tags.insert("source_id".to_owned(), app_id.clone());
            v1.log_message = Some(events::LogMessage {
                message: Bytes::from(message),
                message_type: if err { MessageType::Err } else { MessageType::Out } as i32,
                timestamp: v1.timestamp.unwrap_or_default(),
                app_id: Some(app_id),
                source_type: Some(source_type),
                source_instance: Some(source_instance),
            });
            assert_round_trip(&v1, preferred)?;
        }

        #[test]
        fn http_start_stop_survives_v2(
            mut v1 in v1_header(),
            (start_timestamp, stop_timestamp) in (any::<i64>(), any::<i64>()),
            (low, high) in (any::<u64>(), any::<u64>()),
            peer_type in 1..=2i32,
            method in 1..=44i32,
            (uri, remote_address, user_agent) in (any::<String>(), any::<String>(), any::<String>()),
            (status_code, content_length) in (any::<i32>(), any::<i64>()),
            application_id in proptest::option::of((any::<u64>(), 1..u64::MAX)),
            source_id in PLAIN_SOURCE_ID,
            instance_index in any::<i32>(),
            instance_id in any::<String>(),
            forwarded in proptest::collection::vec("[^\n]{0,8}", 1..3),
            preferred in any::<bool>(),
        ) {
            let application_id = application_id.map(|(low, high)| events::Uuid { low, high });
            let source_id = application_id.as_ref().map_or(source_id, uuid_to_string);
            v1.event_type = EventType::HttpStartStop as i32;
            v1.tags.insert("source_id".to_owned(), source_id);
            v1.http_start_stop = Some(events::HttpStartStop {
                start_timestamp,
                stop_timestamp,
                request_id: events::Uuid { low, high },
                peer_type,
                method,
                uri,
                remote_address,
                user_agent,
                status_code,
                content_length,
                application_id,
                instance_index: Some(instance_index),
                instance_id: Some(instance_id),
                forwarded,
            });
            assert_round_trip(&v1, preferred)?;
        }

        #[test]
        fn value_metric_survives_v2(
            mut v1 in v1_header(),
            name in any::<String>(),
            value in comparable_f64(),
            unit in any::<String>(),
            source_id in PLAIN_SOURCE_ID,
            instance_id in proptest::option::of("[0-9]{1,3}"),
            preferred in any::<bool>(),
        ) {
            v1.event_type = EventType::ValueMetric as i32;
            v1.tags.insert("source_id".to_owned(), source_id);
            if let Some(instance_id) = instance_id {
                v1.tags.insert("instance_id".to_owned(), instance_id);
            }
            v1.value_metric = Some(events::ValueMetric { name, value, unit });
            assert_round_trip(&v1, preferred)?;
        }

        #[test]
        fn counter_event_survives_v2(
            mut v1 in v1_header(),
            name in any::<String>(),
            delta in any::<u64>(),
            total in any::<u64>(),
            source_id in PLAIN_SOURCE_ID,
            instance_id in proptest::option::of("[0-9]{1,3}"),
            preferred in any::<bool>(),
        ) {
            v1.event_type = EventType::CounterEvent as i32;
            v1.tags.insert("source_id".to_owned(), source_id);
            if let Some(instance_id) = instance_id {
                v1.tags.insert("instance_id".to_owned(), instance_id);
            }
            v1.counter_event = Some(events::CounterEvent { name, delta, total: Some(total) });
            assert_round_trip(&v1, preferred)?;
        }

        #[test]
        fn error_survives_v2(
            mut v1 in v1_header(),
            source in any::<String>(),
            code in any::<i32>(),
            message in any::<String>(),
            source_id in PLAIN_SOURCE_ID,
            preferred in any::<bool>(),
        ) {
            v1.event_type = EventType::Error as i32;
            v1.tags.insert("source_id".to_owned(), source_id);
            v1.error = Some(events::Error { source, code, message });
            assert_round_trip(&v1, preferred)?;
        }

        #[test]
        fn container_metric_survives_v2(
            mut v1 in v1_header(),
            application_id in "[a-z0-9-]{1,12}",
            instance_index in any::<i32>(),
            cpu_percentage in comparable_f64(),
            // Byte counts travel as doubles in v2, exact up to 2^53.
            bytes in proptest::array::uniform4(0..=(1u64 << 53)),
            preferred in any::<bool>(),
        ) {
            let [memory_bytes, disk_bytes, memory_quota, disk_quota] = bytes;
            v1.event_type = EventType::ContainerMetric as i32;
            v1.tags.insert("source_id".to_owned(), application_id.clone());
            v1.container_metric = Some(events::ContainerMetric {
                application_id,
                instance_index,
                cpu_percentage,
                memory_bytes,
                disk_bytes,
                memory_bytes_quota: Some(memory_quota),
                disk_bytes_quota: Some(disk_quota),
            });
            assert_round_trip(&v1, preferred)?;
        }
    }
}
