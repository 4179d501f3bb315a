//! v2 → v1 (§3.4) written straight from the v2 encoding, for the two types that make up nearly all
//! of a v1 firehose: logs and counters.
//!
//! The traffic controller converts every envelope a WebSocket receives. Decoding it into a
//! `v2::Envelope`, converting to an `events::Envelope` and encoding that costs a `String` per field
//! and two `HashMap`s of tags per envelope: most of the traffic controller's CPU. [`V1Writer`] reads
//! the v2 fields where they lie and writes the v1 encoding in one pass, with no allocation once its
//! scratch space is warm. It handles exactly the envelopes whose conversion needs nothing but
//! `tags` (a log that is not a v1 `Error`, or a counter, with no `deprecated_tags`); for anything
//! else it declines and the caller uses [`crate::convert::to_v1`]. What it writes decodes to what
//! `to_v1` returns (tests check the two against each other).

use std::ops::Range;

use bytes::{BufMut, BytesMut};

use crate::wire::{is_utf8, put_varint, read_key, read_len, read_varint, skip_field, varint_len, WireType};

/// v1 `Envelope.EventType`.
const LOG_MESSAGE: u64 = 5;
const COUNTER_EVENT: u64 = 7;
/// Tags that become v1 header fields (or are dropped) rather than v1 tags (§3.4).
const HEADER_TAGS: [&[u8]; 6] = [b"__v1_type", b"origin", b"deployment", b"job", b"index", b"ip"];

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Log { payload: (usize, usize), out: bool },
    Counter { name: (usize, usize), delta: u64, total: u64 },
}

/// What [`V1Writer::write`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// A v1 `LogMessage` (else a `CounterEvent`).
    pub is_log: bool,
    /// The v2 source id (a log's v1 app id), as a range of the v2 encoding.
    pub source_id: Range<usize>,
}

/// Converts logs and counters from their v2 encoding (see the module docs). Reuse one writer for
/// many envelopes.
#[derive(Default)]
pub struct V1Writer {
    /// `tags` entries as (key, value) ranges of the envelope, a later duplicate key replacing the
    /// earlier (as decoding a map does).
    tags: Vec<(Range<usize>, Range<usize>)>,
    scratch: Vec<u8>,
}

fn span(range: Range<usize>) -> (usize, usize) {
    (range.start, range.end)
}

impl V1Writer {
    /// Appends the v1 encoding of the v2 envelope `v2` to `out` and says what it was; or returns
    /// `None`, leaving `out` as it was, when the envelope needs the general conversion.
    pub fn write(&mut self, v2: &[u8], out: &mut BytesMut) -> Option<Written> {
        self.tags.clear();
        let (timestamp, source_id, instance_id, kind) = self.scan(v2)?;
        let tag = |key: &[u8]| -> &[u8] {
            self.tags.iter().find(|(k, _)| &v2[k.clone()] == key).map_or(&[][..], |(_, v)| &v2[v.clone()])
        };
        if matches!(kind, Kind::Log { .. }) && tag(b"__v1_type") == b"Error" {
            return None;
        }
        let bytes = |(start, end): (usize, usize)| &v2[start..end];
        let source_range = source_id.0..source_id.1;
        let source_id = bytes(source_id);
        let instance_id = bytes(instance_id);

        // The message first, into scratch, so its length is known.
        let mut message = std::mem::take(&mut self.scratch);
        message.clear();
        let source_type = tag(b"source_type");
        match kind {
            Kind::Log { payload, out: is_out } => {
                put_bytes(&mut message, 1, bytes(payload));
                put_varint_field(&mut message, 2, if is_out { 1 } else { 2 });
                put_varint_field(&mut message, 3, timestamp);
                put_bytes(&mut message, 4, source_id);
                put_bytes(&mut message, 5, source_type);
                put_bytes(&mut message, 6, instance_id);
            }
            Kind::Counter { name, delta, total } => {
                put_bytes(&mut message, 1, bytes(name));
                put_varint_field(&mut message, 2, delta);
                put_varint_field(&mut message, 3, total);
            }
        }

        put_bytes(out, 1, tag(b"origin"));
        let (event_type, message_field) = match kind {
            Kind::Log { .. } => (LOG_MESSAGE, 8),
            Kind::Counter { .. } => (COUNTER_EVENT, 10),
        };
        put_varint_field(out, 2, event_type);
        put_varint_field(out, 6, timestamp);
        put_bytes(out, message_field, &message);
        for (field, key) in [(13, &b"deployment"[..]), (14, b"job"), (15, b"index"), (16, b"ip")] {
            put_bytes(out, field, tag(key));
        }
        let is_log = matches!(kind, Kind::Log { .. });
        for (key, value) in &self.tags {
            let key = &v2[key.clone()];
            let replaced = (key == b"source_id" && !source_id.is_empty())
                || (key == b"instance_id" && !is_log && !instance_id.is_empty());
            if HEADER_TAGS.contains(&key) || (is_log && key == b"source_type") || replaced {
                continue;
            }
            put_map_entry(out, key, &v2[value.clone()]);
        }
        if !source_id.is_empty() {
            put_map_entry(out, b"source_id", source_id);
        }
        if !is_log && !instance_id.is_empty() {
            put_map_entry(out, b"instance_id", instance_id);
        }
        self.scratch = message;
        Some(Written { is_log, source_id: source_range })
    }

    /// Reads the fields the conversion needs; `None` if this envelope is not for the fast path or
    /// does not decode.
    #[allow(clippy::type_complexity)]
    fn scan(&mut self, v2: &[u8]) -> Option<(u64, (usize, usize), (usize, usize), Kind)> {
        let (mut timestamp, mut source_id, mut instance_id, mut kind) = (0u64, (0, 0), (0, 0), None);
        let mut pos = 0;
        while pos < v2.len() {
            let (field, wire_type) = read_key(v2, &mut pos).ok()?;
            match (field, wire_type) {
                (1, WireType::Varint) => timestamp = read_varint(v2, &mut pos).ok()?,
                (2, WireType::Len) => source_id = span(utf8(v2, &mut pos)?),
                (8, WireType::Len) => instance_id = span(utf8(v2, &mut pos)?),
                (9, WireType::Len) => {
                    let entry = read_len(v2, &mut pos).ok()?;
                    let (key, value) = map_entry(v2, entry)?;
                    self.tags.retain(|(k, _)| v2[k.clone()] != v2[key.clone()]);
                    self.tags.push((key, value));
                }
                (4, WireType::Len) if kind.is_none() => kind = Some(log(v2, read_len(v2, &mut pos).ok()?)?),
                (5, WireType::Len) if kind.is_none() => kind = Some(counter(v2, read_len(v2, &mut pos).ok()?)?),
                // deprecated_tags, gauges, timers, events, a second message: the general path.
                (3 | 4 | 5 | 6 | 7 | 10, _) => return None,
                (1 | 2 | 8 | 9, _) => return None,
                (field, wire_type) => skip_field(v2, &mut pos, field, wire_type).ok()?,
            }
        }
        Some((timestamp, source_id, instance_id, kind?))
    }
}

fn utf8(buf: &[u8], pos: &mut usize) -> Option<Range<usize>> {
    let range = read_len(buf, pos).ok()?;
    is_utf8(&buf[range.clone()]).then_some(range)
}

/// The key and value of a `map<string, string>` entry (either may be absent: empty).
fn map_entry(buf: &[u8], entry: Range<usize>) -> Option<(Range<usize>, Range<usize>)> {
    let (mut key, mut value) = (entry.start..entry.start, entry.start..entry.start);
    let mut pos = entry.start;
    let end = entry.end;
    let sub = &buf[..end];
    while pos < end {
        match read_key(sub, &mut pos).ok()? {
            (1, WireType::Len) => key = utf8(sub, &mut pos)?,
            (2, WireType::Len) => value = utf8(sub, &mut pos)?,
            (1 | 2, _) => return None,
            (field, wire_type) => skip_field(sub, &mut pos, field, wire_type).ok()?,
        }
    }
    Some((key, value))
}

fn log(buf: &[u8], message: Range<usize>) -> Option<Kind> {
    let (mut payload, mut out) = ((message.start, message.start), true);
    let mut pos = message.start;
    let sub = &buf[..message.end];
    while pos < message.end {
        match read_key(sub, &mut pos).ok()? {
            (1, WireType::Len) => payload = span(read_len(sub, &mut pos).ok()?),
            (2, WireType::Varint) => out = read_varint(sub, &mut pos).ok()? == 0,
            (1 | 2, _) => return None,
            (field, wire_type) => skip_field(sub, &mut pos, field, wire_type).ok()?,
        }
    }
    Some(Kind::Log { payload, out })
}

fn counter(buf: &[u8], message: Range<usize>) -> Option<Kind> {
    let (mut name, mut delta, mut total) = ((message.start, message.start), 0, 0);
    let mut pos = message.start;
    let sub = &buf[..message.end];
    while pos < message.end {
        match read_key(sub, &mut pos).ok()? {
            (1, WireType::Len) => name = span(utf8(sub, &mut pos)?),
            (2, WireType::Varint) => delta = read_varint(sub, &mut pos).ok()?,
            (3, WireType::Varint) => total = read_varint(sub, &mut pos).ok()?,
            (1..=3, _) => return None,
            (field, wire_type) => skip_field(sub, &mut pos, field, wire_type).ok()?,
        }
    }
    Some(Kind::Counter { name, delta, total })
}

fn put_key(out: &mut impl BufMut, field: u64, wire_type: u64) {
    put_varint(out, (field << 3) | wire_type);
}

fn put_varint_field(out: &mut impl BufMut, field: u64, value: u64) {
    put_key(out, field, 0);
    put_varint(out, value);
}

fn put_bytes(out: &mut impl BufMut, field: u64, bytes: &[u8]) {
    put_key(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

fn put_map_entry(out: &mut impl BufMut, key: &[u8], value: &[u8]) {
    let len = 1 + varint_len(key.len() as u64) + key.len() + 1 + varint_len(value.len() as u64) + value.len();
    put_key(out, 17, 2);
    put_varint(out, len as u64);
    put_bytes(out, 1, key);
    put_bytes(out, 2, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::convert::to_v1;
    use crate::events;
    use crate::v2::{self, envelope::Message};
    use proptest::prelude::*;
    use prost::Message as _;

    fn check(envelope: &v2::Envelope) -> bool {
        let encoded = envelope.encode_to_vec();
        let mut out = BytesMut::new();
        let Some(written) = V1Writer::default().write(&encoded, &mut out) else {
            assert!(out.is_empty());
            return false;
        };
        assert_eq!(written.is_log, matches!(envelope.message, Some(Message::Log(_))));
        assert_eq!(&encoded[written.source_id], envelope.source_id.as_bytes());
        let fast = events::Envelope::decode(&out[..]).expect("decodes as a dropsonde envelope");
        let reference = to_v1(envelope);
        assert_eq!(reference.len(), 1, "{envelope:?}");
        assert_eq!(fast, reference[0], "{envelope:?}");
        true
    }

    fn tags(pairs: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn logs_and_counters_convert_as_to_v1_does() {
        let header = tags(&[
            ("origin", "rep"),
            ("deployment", "cf"),
            ("job", "cell"),
            ("index", "3"),
            ("ip", "10.0.0.1"),
            ("source_type", "APP/PROC/WEB"),
            ("source_id", "overridden"),
            ("instance_id", "overridden too"),
            ("custom", "kept"),
        ]);
        let log = |r#type, source_id: &str, instance: &str| v2::Envelope {
            timestamp: 1_700_000_000_000_000_123,
            source_id: source_id.into(),
            instance_id: instance.into(),
            tags: header.clone(),
            message: Some(Message::Log(v2::Log { payload: bytes::Bytes::from_static(b"hello"), r#type })),
            ..Default::default()
        };
        assert!(check(&log(0, "app", "2")));
        assert!(check(&log(1, "", "")));
        let counter = |source_id: &str, instance: &str| v2::Envelope {
            source_id: source_id.into(),
            instance_id: instance.into(),
            tags: header.clone(),
            message: Some(Message::Counter(v2::Counter { name: "requests".into(), delta: 3, total: 99 })),
            ..Default::default()
        };
        assert!(check(&counter("app", "7")));
        assert!(check(&counter("", "")));
        assert!(check(&v2::Envelope { message: Some(Message::Log(Default::default())), ..Default::default() }));
    }

    #[test]
    fn what_needs_the_general_path_is_declined() {
        let mut error = v2::Envelope {
            tags: tags(&[("__v1_type", "Error")]),
            message: Some(Message::Log(Default::default())),
            ..Default::default()
        };
        assert!(!check(&error));
        error.tags.clear();
        error.deprecated_tags = [("k".to_string(), v2::Value { data: Some(v2::value::Data::Text("v".into())) })].into();
        assert!(!check(&error));
        let gauge = v2::Envelope { message: Some(Message::Gauge(Default::default())), ..Default::default() };
        assert!(!check(&gauge));
        let none = v2::Envelope::default();
        assert!(V1Writer::default().write(&none.encode_to_vec(), &mut BytesMut::new()).is_none());
        // Truncated input is declined, not misread.
        let mut cut = error.encode_to_vec();
        cut.pop();
        assert!(V1Writer::default().write(&cut, &mut BytesMut::new()).is_none());
    }

    #[test]
    fn a_repeated_tag_key_keeps_the_last_value_as_decoding_does() {
        let mut encoded =
            v2::Envelope { message: Some(Message::Log(Default::default())), ..Default::default() }.encode_to_vec();
        for value in ["first", "last"] {
            let entry = [&[0x0a, 1, b'k', 0x12, value.len() as u8][..], value.as_bytes()].concat();
            encoded.extend_from_slice(&[0x4a, entry.len() as u8]);
            encoded.extend_from_slice(&entry);
        }
        let mut out = BytesMut::new();
        assert!(V1Writer::default().write(&encoded, &mut out).is_some());
        let fast = events::Envelope::decode(&out[..]).unwrap();
        assert_eq!(fast, to_v1(&v2::Envelope::decode(&encoded[..]).unwrap())[0]);
        assert_eq!(fast.tags.get("k").map(String::as_str), Some("last"));
    }

    proptest! {
        #[test]
        fn any_log_or_counter_converts_as_to_v1_does(
            keys in proptest::collection::vec(
                prop_oneof![Just("origin"), Just("job"), Just("source_type"), Just("source_id"),
                            Just("instance_id"), Just("__v1_type"), Just("x"), Just("")], 0..6),
            values in proptest::collection::vec("[a-z]{0,3}", 6),
            source_id in "[a-z]{0,2}",
            instance_id in "[0-9]{0,2}",
            is_log: bool,
            timestamp: i64,
            delta: u64,
        ) {
            let tags = keys.iter().zip(&values).map(|(k, v)| (k.to_string(), v.clone())).collect();
            let message = if is_log {
                Message::Log(v2::Log { payload: bytes::Bytes::from(values[0].clone()), r#type: (delta % 2) as i32 })
            } else {
                Message::Counter(v2::Counter { name: values[1].clone(), delta, total: delta / 2 })
            };
            let envelope = v2::Envelope { timestamp, source_id, instance_id, tags, message: Some(message), ..Default::default() };
            check(&envelope);
        }
    }
}
