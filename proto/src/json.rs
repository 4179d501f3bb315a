//! The protojson mapping of PROTOCOLS.md §1.5 for v2 envelopes and batches, and for the Log Cache
//! `ReadResponse` and `MetaResponse` bodies of §6.7/§6.8, in both directions.
//!
//! Encoding matches Go's `protojson` with `EmitUnpopulated` and proto field names, because Go
//! clients (go-loggregator, go-log-cache) decode these bodies strictly: every non-oneof field is
//! present, only the set oneof member appears, 64-bit integers are decimal strings, doubles are
//! numbers (`"NaN"`, `"Infinity"`, `"-Infinity"` as strings), bytes are padded standard base64,
//! enums are names, and no other key is ever written. Encoders append to a `Vec<u8>` without
//! building a JSON tree, since the RLP gateway encodes every batch it streams. Map entries are
//! written in byte order of their keys, as Go's protojson writes them (JSON object order is not
//! significant, but a deterministic order lets both writers below produce identical bytes).
//!
//! Two writers produce an envelope's JSON: [`write_envelope_json`] from a decoded `v2::Envelope`, and
//! [`EncodedEnvelopeJson`] straight from its protobuf encoding (Log Cache keeps envelopes encoded):
//! the same bytes for the same envelope, without a `String` per field or a `HashMap` per map.
//!
//! Decoding accepts what `protojson.Unmarshal` accepts: 64-bit integers as strings or numbers, enums
//! as names or numbers, base64 with either alphabet and optional padding, `null` for "not set", and
//! both proto and lowerCamelCase field names. Unknown keys are rejected, as Go does.
//!
//! Decoding parses with `serde_json`, whose default float parser can be one ULP off for some
//! 17-digit doubles; enabling its `float_roundtrip` feature makes double decoding exact.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use bytes::Bytes;
use serde_json::{Map, Value as Json};

use crate::logcache::v1::{MetaInfo, MetaResponse, ReadResponse};
use crate::scan::ScanError;
use crate::v2;
use crate::v2::envelope::Message;
use crate::v2::value::Data;
use crate::wire::{self, WireType};

/// Why a JSON body could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum JsonError {
    /// The input is not JSON at all.
    #[error("malformed JSON: {0}")]
    Syntax(#[from] serde_json::Error),
    /// A key that the message does not define; Go clients reject these too.
    #[error("unknown field `{field}` in {message}")]
    UnknownField { message: &'static str, field: String },
    /// A value of the wrong JSON type or out of range for its field.
    #[error("invalid value for `{field}`: expected {expected}")]
    InvalidValue { field: &'static str, expected: &'static str },
    /// Two members of the same oneof are set.
    #[error("`{field}` sets oneof `{oneof}`, which is already set")]
    OneofAlreadySet { oneof: &'static str, field: &'static str },
}

fn invalid(field: &'static str, expected: &'static str) -> JsonError {
    JsonError::InvalidValue { field, expected }
}

fn unknown(message: &'static str, field: &str) -> JsonError {
    JsonError::UnknownField { message, field: field.to_owned() }
}

// === Encoding: public API ===

/// Appends the protojson form of `env` to `out`.
pub fn write_envelope_json(out: &mut Vec<u8>, env: &v2::Envelope) {
    out.extend_from_slice(b"{\"timestamp\":");
    write_int64(out, env.timestamp);
    out.extend_from_slice(b",\"source_id\":");
    write_string(out, &env.source_id);
    out.extend_from_slice(b",\"instance_id\":");
    write_string(out, &env.instance_id);
    out.extend_from_slice(b",\"deprecated_tags\":");
    write_map(out, &env.deprecated_tags, write_value);
    out.extend_from_slice(b",\"tags\":");
    write_map(out, &env.tags, |out, value| write_string(out, value));
    match &env.message {
        Some(Message::Log(log)) => {
            out.extend_from_slice(b",\"log\":{\"payload\":");
            write_base64(out, &log.payload);
            out.extend_from_slice(b",\"type\":");
            write_log_type(out, log.r#type);
            out.push(b'}');
        }
        Some(Message::Counter(counter)) => {
            out.extend_from_slice(b",\"counter\":{\"name\":");
            write_string(out, &counter.name);
            out.extend_from_slice(b",\"delta\":");
            write_uint64(out, counter.delta);
            out.extend_from_slice(b",\"total\":");
            write_uint64(out, counter.total);
            out.push(b'}');
        }
        Some(Message::Gauge(gauge)) => {
            out.extend_from_slice(b",\"gauge\":{\"metrics\":");
            write_map(out, &gauge.metrics, |out, metric| {
                out.extend_from_slice(b"{\"unit\":");
                write_string(out, &metric.unit);
                out.extend_from_slice(b",\"value\":");
                write_double(out, metric.value);
                out.push(b'}');
            });
            out.push(b'}');
        }
        Some(Message::Timer(timer)) => {
            out.extend_from_slice(b",\"timer\":{\"name\":");
            write_string(out, &timer.name);
            out.extend_from_slice(b",\"start\":");
            write_int64(out, timer.start);
            out.extend_from_slice(b",\"stop\":");
            write_int64(out, timer.stop);
            out.push(b'}');
        }
        Some(Message::Event(event)) => {
            out.extend_from_slice(b",\"event\":{\"title\":");
            write_string(out, &event.title);
            out.extend_from_slice(b",\"body\":");
            write_string(out, &event.body);
            out.push(b'}');
        }
        None => {}
    }
    out.push(b'}');
}

/// The protojson form of `env`, on one line.
pub fn envelope_to_json_string(env: &v2::Envelope) -> String {
    let mut out = Vec::new();
    write_envelope_json(&mut out, env);
    into_string(out)
}

/// Appends `{"batch":[...]}` to `out` (the RLP gateway's SSE `data:` payload, §5.4).
pub fn write_batch_json(out: &mut Vec<u8>, batch: &v2::EnvelopeBatch) {
    out.extend_from_slice(b"{\"batch\":[");
    for (position, env) in batch.batch.iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        write_envelope_json(out, env);
    }
    out.extend_from_slice(b"]}");
}

/// The protojson form of `batch`, on one line.
pub fn batch_to_json_string(batch: &v2::EnvelopeBatch) -> String {
    let mut out = Vec::new();
    write_batch_json(&mut out, batch);
    into_string(out)
}

/// The body of the Log Cache gateway's `GET /api/v1/read` (§6.7), without the trailing newline.
///
/// A response without `envelopes` is written as an empty batch: the log-cache server always sets
/// it, and clients index into it.
pub fn read_response_to_json(response: &ReadResponse) -> String {
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"envelopes\":");
    match &response.envelopes {
        Some(batch) => write_batch_json(&mut out, batch),
        None => out.extend_from_slice(b"{\"batch\":[]}"),
    }
    out.push(b'}');
    into_string(out)
}

/// The body of the Log Cache gateway's `GET /api/v1/meta` (§6.7): proto field names, every field
/// present. Without the trailing newline.
pub fn meta_response_to_json(response: &MetaResponse) -> String {
    let mut out = Vec::new();
    out.extend_from_slice(b"{\"meta\":");
    write_map(&mut out, &response.meta, |out, info| {
        out.extend_from_slice(b"{\"count\":");
        write_int64(out, info.count);
        out.extend_from_slice(b",\"expired\":");
        write_int64(out, info.expired);
        out.extend_from_slice(b",\"oldest_timestamp\":");
        write_int64(out, info.oldest_timestamp);
        out.extend_from_slice(b",\"newest_timestamp\":");
        write_int64(out, info.newest_timestamp);
        out.push(b'}');
    });
    out.push(b'}');
    into_string(out)
}

/// The `/api/v1/meta` body as the cf-auth-proxy writes it (§6.8): `protojson` default options, so
/// lowerCamelCase names (`oldestTimestamp`) and zero fields, including an empty `meta`, omitted.
pub fn meta_response_to_json_default_options(response: &MetaResponse) -> String {
    let mut out = Vec::new();
    out.push(b'{');
    if !response.meta.is_empty() {
        out.extend_from_slice(b"\"meta\":");
        write_map(&mut out, &response.meta, |out, info| {
            let fields = [
                ("count", info.count),
                ("expired", info.expired),
                ("oldestTimestamp", info.oldest_timestamp),
                ("newestTimestamp", info.newest_timestamp),
            ];
            out.push(b'{');
            for (position, (name, value)) in fields.into_iter().filter(|(_, value)| *value != 0).enumerate() {
                if position > 0 {
                    out.push(b',');
                }
                write_string(out, name);
                out.push(b':');
                write_int64(out, value);
            }
            out.push(b'}');
        });
    }
    out.push(b'}');
    into_string(out)
}

// === Encoding: scalars ===

/// Writes a map with its keys in byte order (as Go's protojson, and as [`EncodedEnvelopeJson`]).
fn write_map<V>(out: &mut Vec<u8>, map: &HashMap<String, V>, mut write_value: impl FnMut(&mut Vec<u8>, &V)) {
    let mut entries: Vec<(&String, &V)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
    out.push(b'{');
    for (position, (key, value)) in entries.into_iter().enumerate() {
        if position > 0 {
            out.push(b',');
        }
        write_string(out, key);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &v2::Value) {
    match &value.data {
        Some(Data::Text(text)) => {
            out.extend_from_slice(b"{\"text\":");
            write_string(out, text);
        }
        Some(Data::Integer(integer)) => {
            out.extend_from_slice(b"{\"integer\":");
            write_int64(out, *integer);
        }
        Some(Data::Decimal(decimal)) => {
            out.extend_from_slice(b"{\"decimal\":");
            write_double(out, *decimal);
        }
        None => out.push(b'{'),
    }
    out.push(b'}');
}

/// Known values by name; protojson writes values outside the enum (proto3 enums are open) as numbers.
fn write_log_type(out: &mut Vec<u8>, value: i32) {
    match v2::log::Type::try_from(value) {
        Ok(known) => write_string(out, known.as_str_name()),
        Err(_) => write_fmt(out, format_args!("{value}")),
    }
}

fn write_int64(out: &mut Vec<u8>, value: i64) {
    write_fmt(out, format_args!("\"{value}\""));
}

fn write_uint64(out: &mut Vec<u8>, value: u64) {
    write_fmt(out, format_args!("\"{value}\""));
}

/// Writes a double the way Go's protojson does: shortest round-trip digits, positional notation for
/// magnitudes in [1e-6, 1e21), otherwise exponent notation with a signed exponent (`1e+21`, `5e-324`).
fn write_double(out: &mut Vec<u8>, value: f64) {
    if value.is_nan() {
        out.extend_from_slice(b"\"NaN\"");
    } else if value.is_infinite() {
        out.extend_from_slice(if value > 0.0 { b"\"Infinity\"" } else { b"\"-Infinity\"" });
    } else if value == 0.0 || (1e-6..1e21).contains(&value.abs()) {
        // Rust's `Display` for f64 is the shortest round-trip form and never uses an exponent.
        write_fmt(out, format_args!("{value}"));
    } else {
        let start = out.len();
        write_fmt(out, format_args!("{value:e}"));
        // Rust writes `1e21` where Go writes `1e+21`.
        if let Some(e) = out.iter().skip(start).position(|&b| b == b'e') {
            let exponent = start + e + 1;
            if out.get(exponent) != Some(&b'-') {
                out.insert(exponent, b'+');
            }
        }
    }
}

fn write_base64(out: &mut Vec<u8>, data: &[u8]) {
    out.push(b'"');
    let start = out.len();
    // `encoded_len` is `None` only for inputs close to `usize::MAX` bytes.
    let len = base64::encoded_len(data.len(), true).unwrap_or(0);
    out.resize(start + len, 0);
    let written = out.get_mut(start..).and_then(|buf| STANDARD.encode_slice(data, buf).ok()).unwrap_or(0);
    out.truncate(start + written);
    out.push(b'"');
}

/// Writes a JSON string, escaping exactly what Go's protojson escapes: `"`, `\` and control
/// characters (`\b \f \n \r \t` by name, others as `\u00XX` in lowercase hex).
fn write_string(out: &mut Vec<u8>, text: &str) {
    write_utf8(out, text.as_bytes());
}

/// [`write_string`] of bytes already checked to be UTF-8.
fn write_utf8(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    let mut unescaped_from = 0;
    for (position, &byte) in bytes.iter().enumerate() {
        let named_escape: Option<&[u8]> = match byte {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0x08 => Some(b"\\b"),
            0x0c => Some(b"\\f"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.extend_from_slice(bytes.get(unescaped_from..position).unwrap_or_default());
        match named_escape {
            Some(escape) => out.extend_from_slice(escape),
            None => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(byte >> 4)]);
                out.push(HEX[usize::from(byte & 0x0f)]);
            }
        }
        unescaped_from = position + 1;
    }
    out.extend_from_slice(bytes.get(unescaped_from..).unwrap_or_default());
    out.push(b'"');
}

/// Appends formatted text to a byte buffer.
fn write_fmt(out: &mut Vec<u8>, args: fmt::Arguments<'_>) {
    struct Sink<'a>(&'a mut Vec<u8>);
    impl fmt::Write for Sink<'_> {
        fn write_str(&mut self, text: &str) -> fmt::Result {
            self.0.extend_from_slice(text.as_bytes());
            Ok(())
        }
    }
    // Cannot fail: the sink never errors, and only integers and floats are formatted here.
    let _ = fmt::write(&mut Sink(out), args);
}

/// The encoders only ever append `&str` contents and ASCII, so the buffer is always UTF-8.
fn into_string(out: Vec<u8>) -> String {
    String::from_utf8(out).unwrap_or_else(|err| String::from_utf8_lossy(err.as_bytes()).into_owned())
}

// === Encoding straight from the wire format ===
//
// One pass over the encoded envelope checks everything prost checks when decoding it (wire types of
// known fields, UTF-8 of every string, lengths, groups and prost's recursion limit) and records
// where the values that decoding would keep are; a second step writes them. Decoding rules
// reproduced: the last occurrence of a scalar field wins; map entries with the same key replace
// each other (last wins), a missing key or value is the default, and several value fields of one
// entry merge; repeated occurrences of the same `message` oneof member merge, another member
// replaces it; unknown fields are skipped.

/// prost's recursion limit (`prost::RECURSION_LIMIT`): unknown groups nest at most this deep, less
/// the depth of the message holding them.
const RECURSION_LIMIT: u32 = 100;

/// Writes envelopes' protojson straight from their protobuf encoding: byte for byte what
/// [`write_envelope_json`] writes for the decoded envelope. Holds the scratch space of map entries,
/// so that one writer reused over many envelopes allocates nothing once warm.
#[derive(Debug, Default)]
pub struct EncodedEnvelopeJson {
    deprecated_tags: Vec<MapEntry<ValueData>>,
    tags: Vec<MapEntry<Range<usize>>>,
    metrics: Vec<MapEntry<GaugeValueData>>,
}

/// The body of the Log Cache gateway's `GET /api/v1/read` (§6.7), without the trailing newline,
/// from stored encoded envelopes: what [`read_response_to_json`] writes for a response holding them
/// decoded. An envelope that does not decode is left out, as decoding them first would leave it out.
pub fn write_read_response_json_from_encoded<B: AsRef<[u8]>>(out: &mut Vec<u8>, envelopes: &[B]) {
    out.extend_from_slice(b"{\"envelopes\":");
    EncodedEnvelopeJson::default().write_batch(out, envelopes);
    out.push(b'}');
}

/// Appends the protojson form of the envelope encoded in `encoded` to `out`; see
/// [`EncodedEnvelopeJson::write`]. Reuse an [`EncodedEnvelopeJson`] to write many.
pub fn write_envelope_json_from_encoded(out: &mut Vec<u8>, encoded: &[u8]) -> Result<(), ScanError> {
    EncodedEnvelopeJson::default().write(out, encoded)
}

impl EncodedEnvelopeJson {
    /// Appends `{"batch":[...]}` of the encoded envelopes: what [`write_batch_json`] writes for
    /// them decoded (the RLP gateway's SSE `data:` payload, §5.4). An envelope that does not decode
    /// is left out, as decoding them first would leave it out.
    pub fn write_batch<B: AsRef<[u8]>>(&mut self, out: &mut Vec<u8>, envelopes: &[B]) {
        out.extend_from_slice(b"{\"batch\":[");
        let mut written = 0;
        for encoded in envelopes {
            let before = out.len();
            if written > 0 {
                out.push(b',');
            }
            match self.write(out, encoded.as_ref()) {
                Ok(()) => written += 1,
                Err(_) => out.truncate(before),
            }
        }
        out.extend_from_slice(b"]}");
    }

    /// Appends the protojson form of the envelope encoded in `encoded` to `out`: exactly what
    /// [`write_envelope_json`] appends for `v2::Envelope::decode(encoded)`. Fails exactly when that
    /// decode fails (the error says why), and then leaves `out` as it was.
    pub fn write(&mut self, out: &mut Vec<u8>, encoded: &[u8]) -> Result<(), ScanError> {
        let envelope = self.scan(encoded)?;
        self.write_scanned(out, encoded, &envelope);
        Ok(())
    }

    /// Pass one: checks the whole envelope and records what decoding would keep.
    fn scan(&mut self, buf: &[u8]) -> Result<ScannedEnvelope, ScanError> {
        self.deprecated_tags.clear();
        self.tags.clear();
        self.metrics.clear();
        let mut envelope = ScannedEnvelope::default();
        let depth = RECURSION_LIMIT;
        let mut fields = Fields::of(buf, 0..buf.len());
        while let Some((field, wire_type)) = fields.next_key()? {
            match field {
                1 => envelope.timestamp = fields.varint(wire_type)? as i64,
                2 => envelope.source_id = fields.string(wire_type)?,
                8 => envelope.instance_id = fields.string(wire_type)?,
                3 => {
                    let entry = fields.message(wire_type)?;
                    self.deprecated_tags.push(scan_value_entry(buf, entry, depth - 1)?);
                }
                9 => {
                    let entry = fields.message(wire_type)?;
                    self.tags.push(scan_tag_entry(buf, entry, depth - 1)?);
                }
                4..=7 | 10 => {
                    let body = fields.message(wire_type)?;
                    let current = envelope.message.as_ref().map(Member::field);
                    if current != Some(field) {
                        envelope.message = Some(Member::empty(field));
                        self.metrics.clear();
                    }
                    if let Some(member) = &mut envelope.message {
                        member.merge(buf, body, depth - 1, &mut self.metrics)?;
                    }
                }
                _ => fields.skip(field, wire_type, depth)?,
            }
        }
        Ok(envelope)
    }

    /// Pass two: writes what pass one recorded, in [`write_envelope_json`]'s order.
    fn write_scanned(&mut self, out: &mut Vec<u8>, buf: &[u8], envelope: &ScannedEnvelope) {
        out.extend_from_slice(b"{\"timestamp\":");
        write_int64(out, envelope.timestamp);
        out.extend_from_slice(b",\"source_id\":");
        write_utf8(out, slice(buf, &envelope.source_id));
        out.extend_from_slice(b",\"instance_id\":");
        write_utf8(out, slice(buf, &envelope.instance_id));
        out.extend_from_slice(b",\"deprecated_tags\":");
        write_map_entries(out, buf, &mut self.deprecated_tags, |out, value| write_value_data(out, buf, value));
        out.extend_from_slice(b",\"tags\":");
        write_map_entries(out, buf, &mut self.tags, |out, value| write_utf8(out, slice(buf, value)));
        match &envelope.message {
            Some(Member::Log { payload, log_type }) => {
                out.extend_from_slice(b",\"log\":{\"payload\":");
                write_base64(out, slice(buf, payload));
                out.extend_from_slice(b",\"type\":");
                write_log_type(out, *log_type);
                out.push(b'}');
            }
            Some(Member::Counter { name, delta, total }) => {
                out.extend_from_slice(b",\"counter\":{\"name\":");
                write_utf8(out, slice(buf, name));
                out.extend_from_slice(b",\"delta\":");
                write_uint64(out, *delta);
                out.extend_from_slice(b",\"total\":");
                write_uint64(out, *total);
                out.push(b'}');
            }
            Some(Member::Gauge) => {
                out.extend_from_slice(b",\"gauge\":{\"metrics\":");
                write_map_entries(out, buf, &mut self.metrics, |out, metric| {
                    out.extend_from_slice(b"{\"unit\":");
                    write_utf8(out, slice(buf, &metric.unit));
                    out.extend_from_slice(b",\"value\":");
                    write_double(out, metric.value);
                    out.push(b'}');
                });
                out.push(b'}');
            }
            Some(Member::Timer { name, start, stop }) => {
                out.extend_from_slice(b",\"timer\":{\"name\":");
                write_utf8(out, slice(buf, name));
                out.extend_from_slice(b",\"start\":");
                write_int64(out, *start);
                out.extend_from_slice(b",\"stop\":");
                write_int64(out, *stop);
                out.push(b'}');
            }
            Some(Member::Event { title, body }) => {
                out.extend_from_slice(b",\"event\":{\"title\":");
                write_utf8(out, slice(buf, title));
                out.extend_from_slice(b",\"body\":");
                write_utf8(out, slice(buf, body));
                out.push(b'}');
            }
            None => {}
        }
        out.push(b'}');
    }
}

/// What decoding an envelope keeps; strings are ranges of the encoded envelope, checked UTF-8.
#[derive(Debug, Default)]
struct ScannedEnvelope {
    timestamp: i64,
    source_id: Range<usize>,
    instance_id: Range<usize>,
    message: Option<Member>,
}

/// The `message` oneof member decoding keeps (a gauge's metrics are in the writer's scratch).
#[derive(Debug)]
enum Member {
    Log { payload: Range<usize>, log_type: i32 },
    Counter { name: Range<usize>, delta: u64, total: u64 },
    Gauge,
    Timer { name: Range<usize>, start: i64, stop: i64 },
    Event { title: Range<usize>, body: Range<usize> },
}

impl Member {
    /// The member of envelope field `field` (one of 4–7, 10), with default values.
    fn empty(field: u32) -> Self {
        match field {
            4 => Member::Log { payload: 0..0, log_type: 0 },
            5 => Member::Counter { name: 0..0, delta: 0, total: 0 },
            6 => Member::Gauge,
            7 => Member::Timer { name: 0..0, start: 0, stop: 0 },
            _ => Member::Event { title: 0..0, body: 0..0 },
        }
    }

    fn field(&self) -> u32 {
        match self {
            Member::Log { .. } => 4,
            Member::Counter { .. } => 5,
            Member::Gauge => 6,
            Member::Timer { .. } => 7,
            Member::Event { .. } => 10,
        }
    }

    /// Merges one occurrence of the member (the message at `body` of `buf`), as prost merges a
    /// repeated message field: each field present replaces the value kept so far; gauge metrics
    /// are appended to `metrics`. `depth` is prost's remaining recursion budget inside the member.
    fn merge(
        &mut self,
        buf: &[u8],
        body: Range<usize>,
        depth: u32,
        metrics: &mut Vec<MapEntry<GaugeValueData>>,
    ) -> Result<(), ScanError> {
        let mut fields = Fields::of(buf, body);
        while let Some((field, wire_type)) = fields.next_key()? {
            match (&mut *self, field) {
                (Member::Log { payload, .. }, 1) => *payload = fields.bytes(wire_type)?,
                (Member::Log { log_type, .. }, 2) => *log_type = fields.varint(wire_type)? as i32,
                (Member::Counter { name, .. }, 1) => *name = fields.string(wire_type)?,
                (Member::Counter { delta, .. }, 2) => *delta = fields.varint(wire_type)?,
                (Member::Counter { total, .. }, 3) => *total = fields.varint(wire_type)?,
                (Member::Gauge, 1) => {
                    let entry = fields.message(wire_type)?;
                    metrics.push(scan_gauge_entry(buf, entry, depth - 1)?);
                }
                (Member::Timer { name, .. }, 1) => *name = fields.string(wire_type)?,
                (Member::Timer { start, .. }, 2) => *start = fields.varint(wire_type)? as i64,
                (Member::Timer { stop, .. }, 3) => *stop = fields.varint(wire_type)? as i64,
                (Member::Event { title, .. }, 1) => *title = fields.string(wire_type)?,
                (Member::Event { body, .. }, 2) => *body = fields.string(wire_type)?,
                _ => fields.skip(field, wire_type, depth)?,
            }
        }
        Ok(())
    }
}

/// One map entry as decoding reads it: the last key (empty if none) and the merged value.
#[derive(Debug)]
struct MapEntry<V> {
    key: Range<usize>,
    /// The key's first 8 bytes, big-endian and zero-padded: orders most keys without comparing
    /// slices (keys often share a prefix, `tag-1`, `tag-2`, … and `memcmp` is a call).
    key_prefix: u64,
    /// Where the entry starts: orders entries with equal keys by arrival.
    at: usize,
    value: V,
}

/// A `Value`'s oneof `data`.
#[derive(Debug)]
enum ValueData {
    None,
    Text(Range<usize>),
    Integer(i64),
    Decimal(f64),
}

#[derive(Debug)]
struct GaugeValueData {
    unit: Range<usize>,
    value: f64,
}

/// A `deprecated_tags` entry (`map<string, Value>`) at `entry`; `depth` is the budget inside it.
fn scan_value_entry(buf: &[u8], entry: Range<usize>, depth: u32) -> Result<MapEntry<ValueData>, ScanError> {
    let mut scanned = MapEntry { key: 0..0, key_prefix: 0, at: entry.start, value: ValueData::None };
    let mut fields = Fields::of(buf, entry);
    while let Some((field, wire_type)) = fields.next_key()? {
        match field {
            1 => scanned.key = fields.string(wire_type)?,
            2 => {
                // Several value fields of one entry merge into one `Value`.
                let mut value = Fields::of(buf, fields.message(wire_type)?);
                while let Some((field, wire_type)) = value.next_key()? {
                    match field {
                        1 => scanned.value = ValueData::Text(value.string(wire_type)?),
                        2 => scanned.value = ValueData::Integer(value.varint(wire_type)? as i64),
                        3 => scanned.value = ValueData::Decimal(f64::from_bits(value.fixed64(wire_type)?)),
                        _ => value.skip(field, wire_type, depth - 1)?,
                    }
                }
            }
            _ => fields.skip(field, wire_type, depth)?,
        }
    }
    Ok(scanned)
}

/// A `tags` entry (`map<string, string>`) at `entry`.
fn scan_tag_entry(buf: &[u8], entry: Range<usize>, depth: u32) -> Result<MapEntry<Range<usize>>, ScanError> {
    let mut scanned = MapEntry { key: 0..0, key_prefix: 0, at: entry.start, value: 0..0 };
    let mut fields = Fields::of(buf, entry);
    while let Some((field, wire_type)) = fields.next_key()? {
        match field {
            1 => scanned.key = fields.string(wire_type)?,
            2 => scanned.value = fields.string(wire_type)?,
            _ => fields.skip(field, wire_type, depth)?,
        }
    }
    Ok(scanned)
}

/// A `Gauge.metrics` entry (`map<string, GaugeValue>`) at `entry`.
fn scan_gauge_entry(buf: &[u8], entry: Range<usize>, depth: u32) -> Result<MapEntry<GaugeValueData>, ScanError> {
    let mut scanned =
        MapEntry { key: 0..0, key_prefix: 0, at: entry.start, value: GaugeValueData { unit: 0..0, value: 0.0 } };
    let mut fields = Fields::of(buf, entry);
    while let Some((field, wire_type)) = fields.next_key()? {
        match field {
            1 => scanned.key = fields.string(wire_type)?,
            2 => {
                let mut value = Fields::of(buf, fields.message(wire_type)?);
                while let Some((field, wire_type)) = value.next_key()? {
                    match field {
                        1 => scanned.value.unit = value.string(wire_type)?,
                        2 => scanned.value.value = f64::from_bits(value.fixed64(wire_type)?),
                        _ => value.skip(field, wire_type, depth - 1)?,
                    }
                }
            }
            _ => fields.skip(field, wire_type, depth)?,
        }
    }
    Ok(scanned)
}

/// Writes map entries as [`write_map`] writes the decoded map: keys in byte order, and of entries
/// with equal keys only the last to arrive (the one a decoded map keeps).
fn write_map_entries<V>(
    out: &mut Vec<u8>,
    buf: &[u8],
    entries: &mut [MapEntry<V>],
    mut write_value: impl FnMut(&mut Vec<u8>, &V),
) {
    for entry in entries.iter_mut() {
        entry.key_prefix = key_prefix(slice(buf, &entry.key));
    }
    // Byte order of the keys: the prefixes compare as the keys' first 8 bytes do, and equal
    // prefixes fall back to the whole keys. `at` is distinct per entry: the unstable sort is
    // deterministic and needs no buffer.
    entries.sort_unstable_by(|a, b| {
        a.key_prefix.cmp(&b.key_prefix).then_with(|| slice(buf, &a.key).cmp(slice(buf, &b.key))).then(a.at.cmp(&b.at))
    });
    out.push(b'{');
    let mut written = 0;
    for (position, entry) in entries.iter().enumerate() {
        let key = slice(buf, &entry.key);
        let same_key = |next: &MapEntry<V>| next.key_prefix == entry.key_prefix && slice(buf, &next.key) == key;
        if entries.get(position + 1).is_some_and(same_key) {
            continue; // replaced by a later entry with the same key
        }
        if written > 0 {
            out.push(b',');
        }
        write_utf8(out, key);
        out.push(b':');
        write_value(out, &entry.value);
        written += 1;
    }
    out.push(b'}');
}

/// The first 8 bytes of `key` as a big-endian integer, zero-padded: if two keys' prefixes differ,
/// they order as the keys do (a shorter key's padding sorts before any byte but 0, and a tie falls
/// back to comparing the keys).
fn key_prefix(key: &[u8]) -> u64 {
    let mut first = [0u8; 8];
    let len = key.len().min(8);
    first[..len].copy_from_slice(&key[..len]);
    u64::from_be_bytes(first)
}

/// [`write_value`] of a scanned `Value`.
fn write_value_data(out: &mut Vec<u8>, buf: &[u8], value: &ValueData) {
    match value {
        ValueData::Text(text) => {
            out.extend_from_slice(b"{\"text\":");
            write_utf8(out, slice(buf, text));
        }
        ValueData::Integer(integer) => {
            out.extend_from_slice(b"{\"integer\":");
            write_int64(out, *integer);
        }
        ValueData::Decimal(decimal) => {
            out.extend_from_slice(b"{\"decimal\":");
            write_double(out, *decimal);
        }
        ValueData::None => out.push(b'{'),
    }
    out.push(b'}');
}

/// `range` of `buf`; ranges come from [`wire::read_len`] on `buf`, so always in bounds.
fn slice<'a>(buf: &'a [u8], range: &Range<usize>) -> &'a [u8] {
    buf.get(range.clone()).unwrap_or_default()
}

/// The fields of one message of an encoded envelope, read with prost's checks. Positions are
/// offsets in the whole envelope, so that ranges can be kept; `buf` ends where the message ends.
struct Fields<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Fields<'a> {
    /// The message at `range` of `envelope`.
    fn of(envelope: &'a [u8], range: Range<usize>) -> Self {
        Fields { buf: envelope.get(..range.end).unwrap_or_default(), pos: range.start }
    }

    fn next_key(&mut self) -> Result<Option<(u32, WireType)>, ScanError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        wire::read_key(self.buf, &mut self.pos).map(Some)
    }

    fn varint(&mut self, wire_type: WireType) -> Result<u64, ScanError> {
        expect_wire_type(wire_type, WireType::Varint)?;
        wire::read_varint(self.buf, &mut self.pos)
    }

    fn fixed64(&mut self, wire_type: WireType) -> Result<u64, ScanError> {
        expect_wire_type(wire_type, WireType::Fixed64)?;
        let bytes = self.buf.get(self.pos..self.pos + 8).ok_or(ScanError::Truncated)?;
        let mut le = [0u8; 8];
        le.copy_from_slice(bytes);
        self.pos += 8;
        Ok(u64::from_le_bytes(le))
    }

    /// A `bytes` field, or a message to read with another [`Fields`].
    fn bytes(&mut self, wire_type: WireType) -> Result<Range<usize>, ScanError> {
        expect_wire_type(wire_type, WireType::Len)?;
        wire::read_len(self.buf, &mut self.pos)
    }

    fn message(&mut self, wire_type: WireType) -> Result<Range<usize>, ScanError> {
        self.bytes(wire_type)
    }

    /// A `string` field: its bytes, checked UTF-8 as prost checks them.
    fn string(&mut self, wire_type: WireType) -> Result<Range<usize>, ScanError> {
        let range = self.bytes(wire_type)?;
        std::str::from_utf8(slice(self.buf, &range)).map_err(|_| ScanError::InvalidUtf8)?;
        Ok(range)
    }

    /// Skips an unknown field as prost's `skip_field` does, with `depth` of its recursion budget
    /// left: each nested group takes one (the wire helper's own limit does not count the depth of
    /// the enclosing messages).
    fn skip(&mut self, field: u32, wire_type: WireType, depth: u32) -> Result<(), ScanError> {
        skip_unknown(self.buf, &mut self.pos, field, wire_type, depth)
    }
}

fn skip_unknown(buf: &[u8], pos: &mut usize, field: u32, wire_type: WireType, depth: u32) -> Result<(), ScanError> {
    if depth == 0 {
        return Err(ScanError::TooDeep);
    }
    if wire_type != WireType::StartGroup {
        return wire::skip_field(buf, pos, field, wire_type);
    }
    loop {
        let (inner, inner_type) = wire::read_key(buf, pos)?;
        if inner_type == WireType::EndGroup {
            return if inner == field { Ok(()) } else { Err(ScanError::UnexpectedEndGroup) };
        }
        skip_unknown(buf, pos, inner, inner_type, depth - 1)?;
    }
}

fn expect_wire_type(actual: WireType, expected: WireType) -> Result<(), ScanError> {
    if actual == expected {
        Ok(())
    } else {
        Err(ScanError::WrongWireType)
    }
}

// === Decoding: public API ===

/// Decodes one envelope from its protojson form.
pub fn envelope_from_json(input: &str) -> Result<v2::Envelope, JsonError> {
    decode_envelope(&serde_json::from_str(input)?)
}

/// Decodes `{"batch":[...]}`.
pub fn batch_from_json(input: &str) -> Result<v2::EnvelopeBatch, JsonError> {
    decode_batch(&serde_json::from_str(input)?)
}

/// Decodes a Log Cache `ReadResponse` (`{"envelopes":{"batch":[...]}}`).
pub fn read_response_from_json(input: &str) -> Result<ReadResponse, JsonError> {
    let json: Json = serde_json::from_str(input)?;
    let mut response = ReadResponse::default();
    for (key, value) in object(&json, "ReadResponse")? {
        match key.as_str() {
            "envelopes" if value.is_null() => response.envelopes = None,
            "envelopes" => response.envelopes = Some(decode_batch(value)?),
            _ => return Err(unknown("ReadResponse", key)),
        }
    }
    Ok(response)
}

/// Decodes a Log Cache `MetaResponse`, written with either proto names or lowerCamelCase names.
pub fn meta_response_from_json(input: &str) -> Result<MetaResponse, JsonError> {
    let json: Json = serde_json::from_str(input)?;
    let mut response = MetaResponse::default();
    for (key, value) in object(&json, "MetaResponse")? {
        match key.as_str() {
            "meta" => response.meta = map(value, "MetaResponse.meta", decode_meta_info)?,
            _ => return Err(unknown("MetaResponse", key)),
        }
    }
    Ok(response)
}

// === Decoding: messages ===

fn decode_batch(json: &Json) -> Result<v2::EnvelopeBatch, JsonError> {
    let mut batch = v2::EnvelopeBatch::default();
    for (key, value) in object(json, "EnvelopeBatch")? {
        match key.as_str() {
            "batch" => batch.batch = list(value, "EnvelopeBatch.batch", decode_envelope)?,
            _ => return Err(unknown("EnvelopeBatch", key)),
        }
    }
    Ok(batch)
}

fn decode_envelope(json: &Json) -> Result<v2::Envelope, JsonError> {
    const ONEOF: &str = "Envelope.message";
    let mut env = v2::Envelope::default();
    for (key, value) in object(json, "Envelope")? {
        let message = &mut env.message;
        match key.as_str() {
            "timestamp" => env.timestamp = integer(value, "Envelope.timestamp")?,
            // The camelCase spellings are what pre-2018 gateways wrote (§1.5); Go no longer accepts
            // them, but reading them costs nothing.
            "source_id" | "sourceId" => env.source_id = string(value, "Envelope.source_id")?,
            "instance_id" | "instanceId" => env.instance_id = string(value, "Envelope.instance_id")?,
            "deprecated_tags" | "deprecatedTags" => {
                env.deprecated_tags = map(value, "Envelope.deprecated_tags", decode_value)?;
            }
            "tags" => env.tags = map(value, "Envelope.tags", |v| string(v, "Envelope.tags"))?,
            "log" => set_oneof(message, value, ONEOF, "log", |v| decode_log(v).map(Message::Log))?,
            "counter" => set_oneof(message, value, ONEOF, "counter", |v| decode_counter(v).map(Message::Counter))?,
            "gauge" => set_oneof(message, value, ONEOF, "gauge", |v| decode_gauge(v).map(Message::Gauge))?,
            "timer" => set_oneof(message, value, ONEOF, "timer", |v| decode_timer(v).map(Message::Timer))?,
            "event" => set_oneof(message, value, ONEOF, "event", |v| decode_event(v).map(Message::Event))?,
            _ => return Err(unknown("Envelope", key)),
        }
    }
    Ok(env)
}

fn decode_value(json: &Json) -> Result<v2::Value, JsonError> {
    const ONEOF: &str = "Value.data";
    let mut value = v2::Value::default();
    for (key, member) in object(json, "Value")? {
        let data = &mut value.data;
        match key.as_str() {
            "text" => set_oneof(data, member, ONEOF, "text", |v| string(v, "Value.text").map(Data::Text))?,
            "integer" => set_oneof(data, member, ONEOF, "integer", |v| integer(v, "Value.integer").map(Data::Integer))?,
            "decimal" => set_oneof(data, member, ONEOF, "decimal", |v| double(v, "Value.decimal").map(Data::Decimal))?,
            _ => return Err(unknown("Value", key)),
        }
    }
    Ok(value)
}

fn decode_log(json: &Json) -> Result<v2::Log, JsonError> {
    let mut log = v2::Log::default();
    for (key, value) in object(json, "Log")? {
        match key.as_str() {
            "payload" => log.payload = base64_bytes(value, "Log.payload")?,
            "type" => log.r#type = log_type(value)?,
            _ => return Err(unknown("Log", key)),
        }
    }
    Ok(log)
}

fn decode_counter(json: &Json) -> Result<v2::Counter, JsonError> {
    let mut counter = v2::Counter::default();
    for (key, value) in object(json, "Counter")? {
        match key.as_str() {
            "name" => counter.name = string(value, "Counter.name")?,
            "delta" => counter.delta = integer(value, "Counter.delta")?,
            "total" => counter.total = integer(value, "Counter.total")?,
            _ => return Err(unknown("Counter", key)),
        }
    }
    Ok(counter)
}

fn decode_gauge(json: &Json) -> Result<v2::Gauge, JsonError> {
    let mut gauge = v2::Gauge::default();
    for (key, value) in object(json, "Gauge")? {
        match key.as_str() {
            "metrics" => gauge.metrics = map(value, "Gauge.metrics", decode_gauge_value)?,
            _ => return Err(unknown("Gauge", key)),
        }
    }
    Ok(gauge)
}

fn decode_gauge_value(json: &Json) -> Result<v2::GaugeValue, JsonError> {
    let mut metric = v2::GaugeValue::default();
    for (key, value) in object(json, "GaugeValue")? {
        match key.as_str() {
            "unit" => metric.unit = string(value, "GaugeValue.unit")?,
            "value" => metric.value = double(value, "GaugeValue.value")?,
            _ => return Err(unknown("GaugeValue", key)),
        }
    }
    Ok(metric)
}

fn decode_timer(json: &Json) -> Result<v2::Timer, JsonError> {
    let mut timer = v2::Timer::default();
    for (key, value) in object(json, "Timer")? {
        match key.as_str() {
            "name" => timer.name = string(value, "Timer.name")?,
            "start" => timer.start = integer(value, "Timer.start")?,
            "stop" => timer.stop = integer(value, "Timer.stop")?,
            _ => return Err(unknown("Timer", key)),
        }
    }
    Ok(timer)
}

fn decode_event(json: &Json) -> Result<v2::Event, JsonError> {
    let mut event = v2::Event::default();
    for (key, value) in object(json, "Event")? {
        match key.as_str() {
            "title" => event.title = string(value, "Event.title")?,
            "body" => event.body = string(value, "Event.body")?,
            _ => return Err(unknown("Event", key)),
        }
    }
    Ok(event)
}

fn decode_meta_info(json: &Json) -> Result<MetaInfo, JsonError> {
    let mut info = MetaInfo::default();
    for (key, value) in object(json, "MetaInfo")? {
        match key.as_str() {
            "count" => info.count = integer(value, "MetaInfo.count")?,
            "expired" => info.expired = integer(value, "MetaInfo.expired")?,
            "oldest_timestamp" | "oldestTimestamp" => {
                info.oldest_timestamp = integer(value, "MetaInfo.oldest_timestamp")?;
            }
            "newest_timestamp" | "newestTimestamp" => {
                info.newest_timestamp = integer(value, "MetaInfo.newest_timestamp")?;
            }
            _ => return Err(unknown("MetaInfo", key)),
        }
    }
    Ok(info)
}

// === Decoding: fields ===
//
// Field decoders take `null` as "not set" (the default value), as protojson does; `null` inside a
// map or a list is an error.

fn object<'a>(json: &'a Json, message: &'static str) -> Result<&'a Map<String, Json>, JsonError> {
    json.as_object().ok_or(invalid(message, "an object"))
}

/// Sets one member of a oneof. A `null` member counts as absent; a second member is an error.
fn set_oneof<T>(
    slot: &mut Option<T>,
    json: &Json,
    oneof: &'static str,
    field: &'static str,
    decode: impl FnOnce(&Json) -> Result<T, JsonError>,
) -> Result<(), JsonError> {
    if json.is_null() {
        return Ok(());
    }
    if slot.is_some() {
        return Err(JsonError::OneofAlreadySet { oneof, field });
    }
    *slot = Some(decode(json)?);
    Ok(())
}

fn map<T>(
    json: &Json,
    field: &'static str,
    decode: impl Fn(&Json) -> Result<T, JsonError>,
) -> Result<HashMap<String, T>, JsonError> {
    match json {
        Json::Null => Ok(HashMap::new()),
        Json::Object(entries) => entries
            .iter()
            .map(|(key, value)| match value {
                Json::Null => Err(invalid(field, "a non-null map value")),
                value => Ok((key.clone(), decode(value)?)),
            })
            .collect(),
        _ => Err(invalid(field, "an object")),
    }
}

fn list<T>(
    json: &Json,
    field: &'static str,
    decode: impl Fn(&Json) -> Result<T, JsonError>,
) -> Result<Vec<T>, JsonError> {
    match json {
        Json::Null => Ok(Vec::new()),
        Json::Array(items) => items
            .iter()
            .map(|item| match item {
                Json::Null => Err(invalid(field, "a non-null list element")),
                item => decode(item),
            })
            .collect(),
        _ => Err(invalid(field, "an array")),
    }
}

fn string(json: &Json, field: &'static str) -> Result<String, JsonError> {
    match json {
        Json::Null => Ok(String::new()),
        Json::String(text) => Ok(text.clone()),
        _ => Err(invalid(field, "a string")),
    }
}

/// An integer field (`int64`, `uint64`, `int32`): a JSON number or a decimal string, as protojson
/// accepts both. Exponent or fraction forms are accepted when they denote an exact integer.
fn integer<T>(json: &Json, field: &'static str) -> Result<T, JsonError>
where
    T: Default + std::str::FromStr + TryFrom<i64> + TryFrom<u64>,
{
    let parsed = match json {
        Json::Null => Some(T::default()),
        Json::Number(number) => {
            if let Some(signed) = number.as_i64() {
                T::try_from(signed).ok()
            } else if let Some(unsigned) = number.as_u64() {
                T::try_from(unsigned).ok()
            } else {
                number.as_f64().and_then(exact_integer)
            }
        }
        Json::String(text) => integer_from_text(text),
        _ => None,
    };
    parsed.ok_or(invalid(field, "an integer in range, as a number or a decimal string"))
}

fn integer_from_text<T: std::str::FromStr + TryFrom<i64>>(text: &str) -> Option<T> {
    // JSON numbers have no leading `+`, but Rust's integer parser would accept one.
    if text.starts_with('+') {
        return None;
    }
    match text.parse() {
        Ok(value) => Some(value),
        Err(_) => text.parse::<f64>().ok().and_then(exact_integer),
    }
}

/// `value` as an integer if it is integral and small enough (|value| ≤ 2^53) that the double held
/// the written integer exactly; larger values must be written as plain digits.
fn exact_integer<T: TryFrom<i64>>(value: f64) -> Option<T> {
    const EXACT_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    if value.fract() != 0.0 || value.abs() > EXACT_LIMIT {
        return None;
    }
    // In range and integral, so the cast is exact.
    T::try_from(value as i64).ok()
}

fn double(json: &Json, field: &'static str) -> Result<f64, JsonError> {
    let parsed = match json {
        Json::Null => Some(0.0),
        Json::Number(number) => number.as_f64(),
        Json::String(text) => match text.as_str() {
            "NaN" => Some(f64::NAN),
            "Infinity" => Some(f64::INFINITY),
            "-Infinity" => Some(f64::NEG_INFINITY),
            // protojson also accepts a number written as a string; Rust's parser would take "inf"
            // and "nan" too, hence the finiteness check.
            number => number.parse::<f64>().ok().filter(|value| value.is_finite()),
        },
        _ => None,
    };
    parsed.ok_or(invalid(field, "a number, or \"NaN\", \"Infinity\" or \"-Infinity\""))
}

/// Standard base64 with optional padding; like Go's protojson, the URL-safe alphabet when the text
/// contains `-` or `_`.
fn base64_bytes(json: &Json, field: &'static str) -> Result<Bytes, JsonError> {
    const LENIENT: GeneralPurposeConfig =
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    const STANDARD_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::STANDARD, LENIENT);
    const URL_SAFE_LENIENT: GeneralPurpose = GeneralPurpose::new(&alphabet::URL_SAFE, LENIENT);
    match json {
        Json::Null => Ok(Bytes::new()),
        Json::String(text) => {
            let engine = if text.contains(['-', '_']) { &URL_SAFE_LENIENT } else { &STANDARD_LENIENT };
            engine.decode(text).map(Bytes::from).map_err(|_| invalid(field, "base64"))
        }
        _ => Err(invalid(field, "a base64 string")),
    }
}

/// `Log.type`: an enum name, or any int32 number (proto3 enums are open).
fn log_type(json: &Json) -> Result<i32, JsonError> {
    const FIELD: &str = "Log.type";
    match json {
        Json::String(name) => {
            v2::log::Type::from_str_name(name).map(|known| known as i32).ok_or(invalid(FIELD, "\"OUT\" or \"ERR\""))
        }
        Json::Null | Json::Number(_) => integer(json, FIELD),
        _ => Err(invalid(FIELD, "an enum name or number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;

    fn envelope(message: Option<Message>) -> v2::Envelope {
        v2::Envelope {
            timestamp: 1_700_000_000_000_000_000,
            source_id: "6f1c3a52-97a4-4e3c-9d2b-1b2f5e8d7c10".to_owned(),
            instance_id: "0".to_owned(),
            deprecated_tags: HashMap::new(),
            tags: HashMap::from([("source_type".to_owned(), "APP/PROC/WEB".to_owned())]),
            message,
        }
    }

    fn log(payload: &'static [u8], log_type: i32) -> Option<Message> {
        Some(Message::Log(v2::Log { payload: Bytes::from_static(payload), r#type: log_type }))
    }

    /// The envelope prefix shared by the golden strings below.
    const HEADER: &str = r#"{"timestamp":"1700000000000000000","source_id":"6f1c3a52-97a4-4e3c-9d2b-1b2f5e8d7c10","instance_id":"0","deprecated_tags":{},"tags":{"source_type":"APP/PROC/WEB"}"#;

    fn golden(message: &str) -> String {
        format!("{HEADER}{message}}}")
    }

    fn double_json(value: f64) -> String {
        let mut out = Vec::new();
        write_double(&mut out, value);
        into_string(out)
    }

    fn error_text(result: Result<impl fmt::Debug, JsonError>) -> String {
        match result {
            Ok(value) => panic!("expected an error, decoded {value:?}"),
            Err(err) => err.to_string(),
        }
    }

    // --- encoding ---

    #[test]
    fn rlp_gateway_example_is_reproduced_byte_for_byte() {
        let batch = v2::EnvelopeBatch { batch: vec![envelope(log(b"hello", 0))] };
        assert_eq!(
            batch_to_json_string(&batch),
            r#"{"batch":[{"timestamp":"1700000000000000000","source_id":"6f1c3a52-97a4-4e3c-9d2b-1b2f5e8d7c10","instance_id":"0","deprecated_tags":{},"tags":{"source_type":"APP/PROC/WEB"},"log":{"payload":"aGVsbG8=","type":"OUT"}}]}"#
        );
    }

    #[test]
    fn every_message_type_has_its_golden_form() {
        let cases = [
            (log(b"", 1), r#","log":{"payload":"","type":"ERR"}"#),
            (log(b"x", 7), r#","log":{"payload":"eA==","type":7}"#),
            (
                Some(Message::Counter(v2::Counter { name: "requests".to_owned(), delta: 0, total: u64::MAX })),
                r#","counter":{"name":"requests","delta":"0","total":"18446744073709551615"}"#,
            ),
            (
                Some(Message::Gauge(v2::Gauge {
                    metrics: HashMap::from([(
                        "cpu".to_owned(),
                        v2::GaugeValue { unit: "percentage".to_owned(), value: 0.5 },
                    )]),
                })),
                r#","gauge":{"metrics":{"cpu":{"unit":"percentage","value":0.5}}}"#,
            ),
            (Some(Message::Gauge(v2::Gauge::default())), r#","gauge":{"metrics":{}}"#),
            (
                Some(Message::Timer(v2::Timer { name: "http".to_owned(), start: -1, stop: i64::MAX })),
                r#","timer":{"name":"http","start":"-1","stop":"9223372036854775807"}"#,
            ),
            (
                Some(Message::Event(v2::Event { title: "t".to_owned(), body: String::new() })),
                r#","event":{"title":"t","body":""}"#,
            ),
            (None, ""),
        ];
        for (message, expected) in cases {
            assert_eq!(envelope_to_json_string(&envelope(message)), golden(expected));
        }
    }

    #[test]
    fn empty_envelope_emits_every_non_oneof_field() {
        assert_eq!(
            envelope_to_json_string(&v2::Envelope::default()),
            r#"{"timestamp":"0","source_id":"","instance_id":"","deprecated_tags":{},"tags":{}}"#
        );
        assert_eq!(batch_to_json_string(&v2::EnvelopeBatch::default()), r#"{"batch":[]}"#);
    }

    #[test]
    fn deprecated_tag_values_write_only_the_set_member() {
        let cases = [
            (Some(Data::Text("a\"b".to_owned())), r#"{"text":"a\"b"}"#),
            (Some(Data::Integer(i64::MIN)), r#"{"integer":"-9223372036854775808"}"#),
            (Some(Data::Decimal(2.5)), r#"{"decimal":2.5}"#),
            (Some(Data::Decimal(f64::NAN)), r#"{"decimal":"NaN"}"#),
            (None, "{}"),
        ];
        for (data, expected) in cases {
            let env = v2::Envelope {
                deprecated_tags: HashMap::from([("k".to_owned(), v2::Value { data })]),
                ..Default::default()
            };
            let json = envelope_to_json_string(&env);
            assert!(json.contains(&format!(r#""deprecated_tags":{{"k":{expected}}}"#)), "{json}");
        }
    }

    #[test]
    fn doubles_are_formatted_like_go_protojson() {
        let cases = [
            (0.0, "0"),
            (-0.0, "-0"),
            (1.0, "1"),
            (-12.5, "-12.5"),
            (0.1, "0.1"),
            (1e-6, "0.000001"),
            (1.5e-7, "1.5e-7"),
            (1e-10, "1e-10"),
            (1e20, "100000000000000000000"),
            (1e21, "1e+21"),
            (1.7976931348623157e308, "1.7976931348623157e+308"),
            (5e-324, "5e-324"),
            (f64::NAN, "\"NaN\""),
            (f64::INFINITY, "\"Infinity\""),
            (f64::NEG_INFINITY, "\"-Infinity\""),
        ];
        for (value, expected) in cases {
            assert_eq!(double_json(value), expected, "{value:e}");
        }
    }

    #[test]
    fn strings_escape_quotes_backslashes_and_control_characters_only() {
        let env = v2::Envelope {
            source_id: "a\"b\\c\n\r\t\u{8}\u{c}\u{0}\u{1f}<&>é✓\u{7f}".to_owned(),
            ..Default::default()
        };
        let json = envelope_to_json_string(&env);
        assert!(json.contains(r#""source_id":"a\"b\\c\n\r\t\b\f\u0000\u001f<&>é✓"#), "{json}");
        assert_eq!(envelope_from_json(&json).expect("valid").source_id, env.source_id);
    }

    #[test]
    fn payload_is_padded_standard_base64() {
        let env = v2::Envelope { message: log(&[0xfb, 0xff], 0), ..Default::default() };
        assert!(envelope_to_json_string(&env).contains(r#""payload":"+/8=""#));
    }

    #[test]
    fn read_response_wraps_the_batch() {
        let empty = ReadResponse { envelopes: Some(v2::EnvelopeBatch::default()) };
        assert_eq!(read_response_to_json(&empty), r#"{"envelopes":{"batch":[]}}"#);
        assert_eq!(read_response_to_json(&ReadResponse { envelopes: None }), r#"{"envelopes":{"batch":[]}}"#);

        let one = ReadResponse { envelopes: Some(v2::EnvelopeBatch { batch: vec![envelope(log(b"hello", 0))] }) };
        let expected =
            format!(r#"{{"envelopes":{{"batch":[{}]}}}}"#, golden(r#","log":{"payload":"aGVsbG8=","type":"OUT"}"#));
        assert_eq!(read_response_to_json(&one), expected);
    }

    #[test]
    fn meta_response_uses_proto_names_and_emits_zeros() {
        let response = MetaResponse {
            meta: HashMap::from([(
                "app-1".to_owned(),
                MetaInfo { count: 12, expired: 0, oldest_timestamp: 1_700_000_000_000_000_000, newest_timestamp: -1 },
            )]),
        };
        assert_eq!(
            meta_response_to_json(&response),
            r#"{"meta":{"app-1":{"count":"12","expired":"0","oldest_timestamp":"1700000000000000000","newest_timestamp":"-1"}}}"#
        );
        assert_eq!(meta_response_to_json(&MetaResponse::default()), r#"{"meta":{}}"#);
    }

    #[test]
    fn meta_response_with_default_options_uses_camel_case_and_omits_zeros() {
        let response = MetaResponse {
            meta: HashMap::from([(
                "app-1".to_owned(),
                MetaInfo { count: 12, expired: 0, oldest_timestamp: 5, newest_timestamp: 0 },
            )]),
        };
        assert_eq!(
            meta_response_to_json_default_options(&response),
            r#"{"meta":{"app-1":{"count":"12","oldestTimestamp":"5"}}}"#
        );
        let all_zero = MetaResponse { meta: HashMap::from([("s".to_owned(), MetaInfo::default())]) };
        assert_eq!(meta_response_to_json_default_options(&all_zero), r#"{"meta":{"s":{}}}"#);
        assert_eq!(meta_response_to_json_default_options(&MetaResponse::default()), "{}");
    }

    // --- encoding straight from the wire format ---

    /// What the decoding path writes for an encoded envelope; `None` when prost cannot decode it.
    fn decode_then_write(encoded: &[u8]) -> Option<String> {
        v2::Envelope::decode(encoded).ok().map(|env| envelope_to_json_string(&env))
    }

    /// What the wire-format writer appends after a prefix; `None` on error, having checked that the
    /// prefix was left as it was.
    fn write_from_encoded(encoded: &[u8]) -> Option<String> {
        let mut out = b"[prefix]".to_vec();
        match write_envelope_json_from_encoded(&mut out, encoded) {
            Ok(()) => Some(into_string(out.split_off(8))),
            Err(_) => {
                assert_eq!(out, b"[prefix]", "a failed write leaves the buffer as it was");
                None
            }
        }
    }

    fn field(number: u32, wire_type: prost::encoding::WireType, out: &mut Vec<u8>) {
        prost::encoding::encode_key(number, wire_type, out);
    }

    /// `body` as length-delimited field `number`.
    fn wrap(number: u32, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        field(number, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(body.len() as u64, &mut out);
        out.extend_from_slice(body);
        out
    }

    /// `depth` unknown groups (field 15) nested in each other, closed properly.
    fn nested_groups(depth: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..depth {
            field(15, prost::encoding::WireType::StartGroup, &mut out);
        }
        for _ in 0..depth {
            field(15, prost::encoding::WireType::EndGroup, &mut out);
        }
        out
    }

    fn golden_envelopes() -> Vec<v2::Envelope> {
        let mut envelopes = vec![envelope(log(b"hello", 0)), v2::Envelope::default()];
        envelopes.extend(
            [
                log(b"", 1),
                log(&[0xfb, 0xff], 7),
                Some(Message::Counter(v2::Counter { name: "requests".to_owned(), delta: 0, total: u64::MAX })),
                Some(Message::Gauge(v2::Gauge::default())),
                Some(Message::Timer(v2::Timer { name: "http".to_owned(), start: -1, stop: i64::MAX })),
                Some(Message::Event(v2::Event { title: "t".to_owned(), body: String::new() })),
                None,
            ]
            .into_iter()
            .map(envelope),
        );
        let metrics = [0.5, -0.0, 1e21, 5e-324, f64::NAN, f64::INFINITY, f64::NEG_INFINITY]
            .into_iter()
            .enumerate()
            .map(|(i, value)| (format!("m{i}"), v2::GaugeValue { unit: "u\n".to_owned(), value }))
            .collect();
        envelopes.push(envelope(Some(Message::Gauge(v2::Gauge { metrics }))));
        let data = [
            Some(Data::Text("a\"b".to_owned())),
            Some(Data::Integer(i64::MIN)),
            Some(Data::Decimal(2.5)),
            Some(Data::Decimal(f64::NAN)),
            None,
        ];
        envelopes.push(v2::Envelope {
            deprecated_tags: data
                .into_iter()
                .enumerate()
                .map(|(i, data)| (format!("d{i}"), v2::Value { data }))
                .collect(),
            ..Default::default()
        });
        envelopes.push(v2::Envelope {
            source_id: "a\"b\\c\n\r\t\u{8}\u{c}\u{0}\u{1f}<&>é✓\u{7f}".to_owned(),
            tags: HashMap::from([("b".to_owned(), "1".to_owned()), ("a".to_owned(), "2".to_owned())]),
            ..Default::default()
        });
        envelopes
    }

    #[test]
    fn rlp_gateway_example_is_reproduced_byte_for_byte_from_the_encoding() {
        let encoded = envelope(log(b"hello", 0)).encode_to_vec();
        let mut out = Vec::new();
        write_read_response_json_from_encoded(&mut out, &[encoded]);
        assert_eq!(
            into_string(out),
            r#"{"envelopes":{"batch":[{"timestamp":"1700000000000000000","source_id":"6f1c3a52-97a4-4e3c-9d2b-1b2f5e8d7c10","instance_id":"0","deprecated_tags":{},"tags":{"source_type":"APP/PROC/WEB"},"log":{"payload":"aGVsbG8=","type":"OUT"}}]}}"#
        );
    }

    #[test]
    fn golden_envelopes_are_written_identically_from_their_encoding() {
        for env in golden_envelopes() {
            // Against the decoded envelope, not `env`: proto3 does not encode -0.0, which decodes as 0.
            let encoded = env.encode_to_vec();
            let expected = decode_then_write(&encoded);
            assert!(expected.is_some());
            assert_eq!(write_from_encoded(&encoded), expected, "{env:?}");
        }
    }

    #[test]
    fn map_keys_are_written_in_byte_order_by_both_writers() {
        let keys = ["b", "a", "B", "é", "", "ab"];
        let env = v2::Envelope {
            tags: keys.iter().map(|k| (k.to_string(), format!("v{k}"))).collect(),
            ..Default::default()
        };
        let expected = r#""tags":{"":"v","B":"vB","a":"va","ab":"vab","b":"vb","é":"vé"}"#;
        assert!(envelope_to_json_string(&env).contains(expected), "{}", envelope_to_json_string(&env));
        let direct = write_from_encoded(&env.encode_to_vec()).expect("decodes");
        assert!(direct.contains(expected), "{direct}");
    }

    #[test]
    fn repeated_fields_and_map_entries_follow_prost_merge_rules() {
        let tag = |key: &str, value: &str| {
            let mut entry = wrap(1, key.as_bytes());
            entry.extend(wrap(2, value.as_bytes()));
            wrap(9, &entry)
        };
        let mut encoded = Vec::new();
        encoded.extend(wrap(2, b"first-source"));
        encoded.extend(tag("k", "1"));
        encoded.extend(tag("j", "x"));
        encoded.extend(tag("k", "2")); // replaces k=1
        encoded.extend(wrap(9, &wrap(2, b"no key"))); // key ""
        encoded.extend(wrap(9, &[wrap(1, b"two values"), wrap(2, b"a"), wrap(2, b"b")].concat())); // b wins
                                                                                                   // A deprecated tag whose value comes in two fields: they merge, the integer wins.
        let text = v2::Value { data: Some(Data::Text("t".into())) }.encode_to_vec();
        let integer = v2::Value { data: Some(Data::Integer(7)) }.encode_to_vec();
        encoded.extend(wrap(3, &[wrap(1, b"d"), wrap(2, &text), wrap(2, &integer)].concat()));
        encoded.extend(wrap(3, &wrap(1, b"no value")));
        // A log between two counters restarts the member (the name "c" is lost); the counters
        // after it merge.
        encoded.extend(wrap(5, &wrap(1, b"c")));
        encoded.extend(wrap(4, &wrap(1, b"payload")));
        encoded.extend(wrap(5, &[0x10, 0x01]));
        encoded.extend(wrap(5, &[0x18, 0x02]));
        encoded.extend(wrap(2, b"last-source"));
        let expected = concat!(
            r#"{"timestamp":"0","source_id":"last-source","instance_id":"","#,
            r#""deprecated_tags":{"d":{"integer":"7"},"no value":{}},"#,
            r#""tags":{"":"no key","j":"x","k":"2","two values":"b"},"#,
            r#""counter":{"name":"","delta":"1","total":"2"}}"#
        );
        assert_eq!(decode_then_write(&encoded).as_deref(), Some(expected));
        assert_eq!(write_from_encoded(&encoded).as_deref(), Some(expected));
    }

    #[test]
    fn what_prost_refuses_is_an_error_and_left_out_of_a_read_response() {
        let good = envelope(log(b"ok", 0)).encode_to_vec();
        let cases: Vec<(Vec<u8>, ScanError)> = vec![
            (wrap(9, &[wrap(1, b"k"), wrap(2, &[0xff])].concat()), ScanError::InvalidUtf8),
            (wrap(3, &wrap(1, &[0xc3])), ScanError::InvalidUtf8),
            (wrap(6, &wrap(1, &wrap(1, &[0x80]))), ScanError::InvalidUtf8),
            (wrap(1, b""), ScanError::WrongWireType),
            (wrap(4, &[0x12, 0x00]), ScanError::WrongWireType), // Log.type as bytes
            (vec![0x22, 0x05, 0x0a], ScanError::Truncated),
            (vec![0x00], ScanError::InvalidKey),
            (vec![0x7c], ScanError::UnexpectedEndGroup), // end group of field 15 at the top
        ];
        for (encoded, error) in &cases {
            assert!(v2::Envelope::decode(&encoded[..]).is_err(), "prost refuses {encoded:?}");
            assert_eq!(write_envelope_json_from_encoded(&mut Vec::new(), encoded), Err(*error), "{encoded:?}");
        }
        let mut stored = vec![good.clone()];
        stored.extend(cases.into_iter().map(|(encoded, _)| encoded));
        stored.push(good);
        let decoded: Vec<v2::Envelope> = stored.iter().filter_map(|e| v2::Envelope::decode(&e[..]).ok()).collect();
        assert_eq!(decoded.len(), 2);
        let expected = read_response_to_json(&ReadResponse { envelopes: Some(v2::EnvelopeBatch { batch: decoded }) });
        let mut out = Vec::new();
        write_read_response_json_from_encoded(&mut out, &stored);
        assert_eq!(into_string(out), expected);
    }

    #[test]
    fn unknown_groups_nest_as_deep_as_prost_allows_and_no_deeper() {
        // prost's budget is 100 at the top level and one less per enclosing message.
        for depth in 97..=101 {
            let top = nested_groups(depth);
            let in_log = wrap(4, &nested_groups(depth));
            let in_gauge_value = wrap(6, &wrap(1, &wrap(2, &nested_groups(depth))));
            for encoded in [top, in_log, in_gauge_value] {
                assert_eq!(
                    write_from_encoded(&encoded),
                    decode_then_write(&encoded),
                    "depth {depth}: {:?}",
                    v2::Envelope::decode(&encoded[..])
                );
            }
        }
        assert!(write_from_encoded(&nested_groups(100)).is_some());
        assert!(write_from_encoded(&wrap(4, &nested_groups(100))).is_none());
    }

    #[test]
    fn empty_read_response_from_encoded() {
        let mut out = Vec::new();
        write_read_response_json_from_encoded::<Vec<u8>>(&mut out, &[]);
        assert_eq!(into_string(out), r#"{"envelopes":{"batch":[]}}"#);
    }

    // --- decoding ---

    #[test]
    fn rlp_gateway_example_decodes() {
        let batch = batch_from_json(
            r#"{"batch":[{"timestamp":"1700000000000000000","source_id":"6f1c3a52-97a4-4e3c-9d2b-1b2f5e8d7c10","instance_id":"0","deprecated_tags":{},"tags":{"source_type":"APP/PROC/WEB"},"log":{"payload":"aGVsbG8=","type":"OUT"}}]}"#,
        )
        .expect("valid batch");
        assert_eq!(batch, v2::EnvelopeBatch { batch: vec![envelope(log(b"hello", 0))] });
    }

    #[test]
    fn integers_decode_from_strings_and_numbers() {
        let decode = |json: &str| {
            envelope_from_json(&format!(r#"{{"timer":{{"start":{json}}}}}"#)).map(|env| match env.message {
                Some(Message::Timer(timer)) => timer.start,
                other => panic!("expected a timer, got {other:?}"),
            })
        };
        assert_eq!(decode(r#""1532030745755909241""#).expect("string"), 1_532_030_745_755_909_241);
        assert_eq!(decode("1532030745755909241").expect("number"), 1_532_030_745_755_909_241);
        assert_eq!(decode(r#""-9223372036854775808""#).expect("min"), i64::MIN);
        assert_eq!(decode("1e3").expect("exponent number"), 1000);
        assert_eq!(decode(r#""2.0""#).expect("integral fraction"), 2);
        assert_eq!(decode("null").expect("null"), 0);
        for bad in [r#""9223372036854775808""#, "1.5", r#""+1""#, r#""""#, r#"" 1""#, r#""x""#, "true", "1e300"] {
            let message = error_text(decode(bad));
            assert!(message.contains("`Timer.start`"), "{bad}: {message}");
        }
    }

    #[test]
    fn unsigned_integers_reject_negatives_and_accept_the_full_range() {
        let env = envelope_from_json(r#"{"counter":{"delta":18446744073709551615,"total":"18446744073709551615"}}"#)
            .expect("valid");
        assert_eq!(
            env.message,
            Some(Message::Counter(v2::Counter { name: String::new(), delta: u64::MAX, total: u64::MAX }))
        );
        let message = error_text(envelope_from_json(r#"{"counter":{"delta":"-1"}}"#));
        assert!(message.contains("`Counter.delta`"), "{message}");
    }

    #[test]
    fn doubles_decode_from_numbers_and_special_strings() {
        let decode = |json: &str| {
            envelope_from_json(&format!(r#"{{"gauge":{{"metrics":{{"m":{{"value":{json}}}}}}}}}"#)).map(|env| match env
                .message
            {
                Some(Message::Gauge(gauge)) => gauge.metrics["m"].value,
                other => panic!("expected a gauge, got {other:?}"),
            })
        };
        assert_eq!(decode("0.5").expect("number"), 0.5);
        assert_eq!(decode("-2").expect("integer"), -2.0);
        assert_eq!(decode(r#""1.25""#).expect("numeric string"), 1.25);
        assert!(decode(r#""NaN""#).expect("NaN").is_nan());
        assert_eq!(decode(r#""Infinity""#).expect("inf"), f64::INFINITY);
        assert_eq!(decode(r#""-Infinity""#).expect("-inf"), f64::NEG_INFINITY);
        assert!(decode("-0").expect("negative zero").is_sign_negative());
        for bad in [r#""inf""#, r#""nan""#, r#""1e400""#, "[]", r#""""#] {
            let message = error_text(decode(bad));
            assert!(message.contains("`GaugeValue.value`"), "{bad}: {message}");
        }
    }

    #[test]
    fn typical_doubles_round_trip_exactly() {
        for value in [0.1, 0.5, 12.5, 99.99, 2.71, 1e-7, 1024.0, 6.02e23, -273.15] {
            let env = v2::Envelope {
                deprecated_tags: HashMap::from([("d".to_owned(), v2::Value { data: Some(Data::Decimal(value)) })]),
                ..Default::default()
            };
            assert_eq!(envelope_from_json(&envelope_to_json_string(&env)).expect("valid"), env);
        }
    }

    #[test]
    fn bytes_decode_from_standard_or_url_safe_with_or_without_padding() {
        for payload in [r#""+/8=""#, r#""+/8""#, r#""-_8=""#, r#""-_8""#] {
            let env = envelope_from_json(&format!(r#"{{"log":{{"payload":{payload}}}}}"#)).expect(payload);
            assert_eq!(env.message, log(&[0xfb, 0xff], 0), "{payload}");
        }
        let message = error_text(envelope_from_json(r#"{"log":{"payload":"a$=="}}"#));
        assert!(message.contains("`Log.payload`"), "{message}");
    }

    #[test]
    fn enums_decode_from_names_and_numbers() {
        for (json, expected) in [(r#""ERR""#, 1), (r#""OUT""#, 0), ("1", 1), ("5", 5), ("null", 0)] {
            let env = envelope_from_json(&format!(r#"{{"log":{{"type":{json}}}}}"#)).expect(json);
            assert_eq!(env.message, log(b"", expected), "{json}");
        }
        for bad in [r#""err""#, r#""1""#, "1.5", "2147483648"] {
            let message = error_text(envelope_from_json(&format!(r#"{{"log":{{"type":{bad}}}}}"#)));
            assert!(message.contains("`Log.type`"), "{bad}: {message}");
        }
    }

    #[test]
    fn camel_case_names_are_accepted() {
        let env = envelope_from_json(r#"{"sourceId":"s","instanceId":"i","deprecatedTags":{"k":{"text":"v"}}}"#)
            .expect("valid");
        assert_eq!(env.source_id, "s");
        assert_eq!(env.instance_id, "i");
        assert_eq!(env.deprecated_tags["k"].data, Some(Data::Text("v".to_owned())));
    }

    #[test]
    fn nulls_mean_not_set_for_fields_but_not_inside_maps_or_lists() {
        let env = envelope_from_json(
            r#"{"timestamp":null,"source_id":null,"tags":null,"deprecated_tags":null,"log":null,"counter":{"name":null}}"#,
        )
        .expect("valid");
        assert_eq!(env, v2::Envelope { message: Some(Message::Counter(v2::Counter::default())), ..Default::default() });

        let message = error_text(envelope_from_json(r#"{"tags":{"k":null}}"#));
        assert_eq!(message, "invalid value for `Envelope.tags`: expected a non-null map value");
        let message = error_text(batch_from_json(r#"{"batch":[null]}"#));
        assert_eq!(message, "invalid value for `EnvelopeBatch.batch`: expected a non-null list element");
    }

    #[test]
    fn unknown_keys_are_rejected_with_their_name() {
        let cases = [
            (r#"{"batch":[],"next":1}"#, "unknown field `next` in EnvelopeBatch"),
            (r#"{"batch":[{"source":"x"}]}"#, "unknown field `source` in Envelope"),
            (r#"{"batch":[{"log":{"payload":"","kind":"OUT"}}]}"#, "unknown field `kind` in Log"),
            (r#"{"batch":[{"deprecated_tags":{"k":{"bool":true}}}]}"#, "unknown field `bool` in Value"),
        ];
        for (json, expected) in cases {
            assert_eq!(error_text(batch_from_json(json)), expected, "{json}");
        }
    }

    #[test]
    fn two_oneof_members_are_rejected() {
        let message = error_text(envelope_from_json(r#"{"log":{},"counter":{}}"#));
        assert!(message.contains("oneof `Envelope.message`, which is already set"), "{message}");
        let message = error_text(envelope_from_json(r#"{"deprecated_tags":{"k":{"text":"a","integer":"1"}}}"#));
        assert!(message.contains("oneof `Value.data`"), "{message}");
        // A null member does not count.
        let env = envelope_from_json(r#"{"log":null,"counter":{}}"#).expect("valid");
        assert_eq!(env.message, Some(Message::Counter(v2::Counter::default())));
    }

    #[test]
    fn wrong_json_types_and_malformed_input_are_errors() {
        assert!(matches!(batch_from_json("{\"batch\":["), Err(JsonError::Syntax(_))));
        assert!(matches!(batch_from_json(""), Err(JsonError::Syntax(_))));
        assert_eq!(error_text(batch_from_json("[]")), "invalid value for `EnvelopeBatch`: expected an object");
        assert_eq!(error_text(batch_from_json("null")), "invalid value for `EnvelopeBatch`: expected an object");
        assert_eq!(
            error_text(batch_from_json(r#"{"batch":{}}"#)),
            "invalid value for `EnvelopeBatch.batch`: expected an array"
        );
        assert_eq!(
            error_text(envelope_from_json(r#"{"source_id":5}"#)),
            "invalid value for `Envelope.source_id`: expected a string"
        );
        assert_eq!(
            error_text(envelope_from_json(r#"{"gauge":{"metrics":{"m":1}}}"#)),
            "invalid value for `GaugeValue`: expected an object"
        );
    }

    #[test]
    fn read_response_decodes_both_populated_and_empty() {
        let response = read_response_from_json(r#"{"envelopes":{"batch":[]}}"#).expect("valid");
        assert_eq!(response, ReadResponse { envelopes: Some(v2::EnvelopeBatch::default()) });
        assert_eq!(read_response_from_json(r#"{"envelopes":null}"#).expect("valid"), ReadResponse { envelopes: None });
        assert_eq!(read_response_from_json("{}").expect("valid"), ReadResponse { envelopes: None });
        let message = error_text(read_response_from_json(r#"{"envelopes":{"batch":[]},"nextPageToken":""}"#));
        assert_eq!(message, "unknown field `nextPageToken` in ReadResponse");
    }

    #[test]
    fn meta_response_decodes_both_spellings() {
        let expected = MetaResponse {
            meta: HashMap::from([(
                "sid".to_owned(),
                MetaInfo { count: 12, expired: 0, oldest_timestamp: 3, newest_timestamp: 4 },
            )]),
        };
        let proto_names =
            r#"{"meta":{"sid":{"count":"12","expired":"0","oldest_timestamp":"3","newest_timestamp":"4"}}}"#;
        let camel_case = r#"{"meta":{"sid":{"count":"12","oldestTimestamp":"3","newestTimestamp":4}}}"#;
        assert_eq!(meta_response_from_json(proto_names).expect("proto names"), expected);
        assert_eq!(meta_response_from_json(camel_case).expect("camelCase"), expected);
        assert_eq!(meta_response_from_json("{}").expect("empty"), MetaResponse::default());
        let message = error_text(meta_response_from_json(r#"{"meta":{"sid":{"size":"1"}}}"#));
        assert_eq!(message, "unknown field `size` in MetaInfo");
    }

    // --- properties ---

    /// Doubles that compare equal to themselves; NaN is covered by the golden tests.
    fn comparable_f64() -> impl Strategy<Value = f64> {
        proptest::num::f64::ANY.prop_filter("NaN never compares equal", |x| !x.is_nan())
    }

    /// What `serde_json` reads back for the number we wrote: exact once its `float_roundtrip`
    /// feature is on, otherwise occasionally one ULP off for 17-digit values.
    fn as_decoded(value: f64) -> f64 {
        if !value.is_finite() {
            return value;
        }
        serde_json::from_str::<Json>(&double_json(value)).ok().and_then(|json| json.as_f64()).unwrap_or(f64::NAN)
    }

    fn with_decoded_doubles(mut env: v2::Envelope) -> v2::Envelope {
        for value in env.deprecated_tags.values_mut() {
            if let Some(Data::Decimal(decimal)) = &mut value.data {
                *decimal = as_decoded(*decimal);
            }
        }
        if let Some(Message::Gauge(gauge)) = &mut env.message {
            for metric in gauge.metrics.values_mut() {
                metric.value = as_decoded(metric.value);
            }
        }
        env
    }

    fn arb_value() -> impl Strategy<Value = v2::Value> {
        prop_oneof![
            Just(None),
            any::<String>().prop_map(|text| Some(Data::Text(text))),
            any::<i64>().prop_map(|integer| Some(Data::Integer(integer))),
            comparable_f64().prop_map(|decimal| Some(Data::Decimal(decimal))),
        ]
        .prop_map(|data| v2::Value { data })
    }

    fn arb_message() -> impl Strategy<Value = Option<Message>> {
        prop_oneof![
            Just(None),
            (proptest::collection::vec(any::<u8>(), 0..40), prop_oneof![Just(0), Just(1), any::<i32>()])
                .prop_map(|(payload, r#type)| Some(Message::Log(v2::Log { payload: Bytes::from(payload), r#type }))),
            (any::<String>(), any::<u64>(), any::<u64>())
                .prop_map(|(name, delta, total)| Some(Message::Counter(v2::Counter { name, delta, total }))),
            proptest::collection::hash_map(any::<String>(), (any::<String>(), comparable_f64()), 0..4).prop_map(
                |metrics| {
                    let metrics =
                        metrics.into_iter().map(|(k, (unit, value))| (k, v2::GaugeValue { unit, value })).collect();
                    Some(Message::Gauge(v2::Gauge { metrics }))
                }
            ),
            (any::<String>(), any::<i64>(), any::<i64>())
                .prop_map(|(name, start, stop)| Some(Message::Timer(v2::Timer { name, start, stop }))),
            (any::<String>(), any::<String>())
                .prop_map(|(title, body)| Some(Message::Event(v2::Event { title, body }))),
        ]
    }

    /// Map keys from a small set, so that entries collide.
    fn arb_key() -> impl Strategy<Value = String> {
        prop::sample::select(vec!["", "a", "b", "ab", "é"]).prop_map(String::from)
    }

    /// Unknown fields (numbers 11–13 are unknown in every message): every wire type, and groups
    /// holding unknown fields.
    fn arb_unknown() -> impl Strategy<Value = Vec<u8>> {
        use prost::encoding::{encode_varint, WireType};
        let leaf = (11u32..14, 0..4u8, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..6)).prop_map(
            |(number, kind, value, bytes)| {
                let mut out = Vec::new();
                match kind {
                    0 => {
                        field(number, WireType::Varint, &mut out);
                        encode_varint(value, &mut out);
                    }
                    1 => {
                        field(number, WireType::SixtyFourBit, &mut out);
                        out.extend_from_slice(&value.to_le_bytes());
                    }
                    2 => out = wrap(number, &bytes),
                    _ => {
                        field(number, WireType::ThirtyTwoBit, &mut out);
                        out.extend_from_slice(&(value as u32).to_le_bytes());
                    }
                }
                out
            },
        );
        leaf.prop_recursive(2, 8, 3, |inner| {
            (11u32..14, proptest::collection::vec(inner, 0..3)).prop_map(|(number, members)| {
                let mut out = Vec::new();
                field(number, WireType::StartGroup, &mut out);
                out.extend(members.concat());
                field(number, WireType::EndGroup, &mut out);
                out
            })
        })
    }

    /// A map entry's encoding: keys, values (already encoded) and unknown fields in any number
    /// and order, so that keys or values are missing or repeated.
    fn arb_map_entry(value: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
        let part = prop_oneof![
            arb_key().prop_map(|key| wrap(1, key.as_bytes())),
            value.prop_map(|value| wrap(2, &value)),
            arb_unknown(),
        ];
        proptest::collection::vec(part, 0..4).prop_map(|parts| parts.concat())
    }

    fn arb_colliding_envelope() -> impl Strategy<Value = v2::Envelope> {
        (
            any::<i64>(),
            "[ab]{0,2}",
            "[ab]{0,2}",
            proptest::collection::hash_map(arb_key(), arb_value(), 0..3),
            proptest::collection::hash_map(arb_key(), any::<String>(), 0..3),
            arb_message(),
        )
            .prop_map(|(timestamp, source_id, instance_id, deprecated_tags, tags, message)| v2::Envelope {
                timestamp,
                source_id,
                instance_id,
                deprecated_tags,
                tags,
                message,
            })
    }

    /// A piece of an envelope's encoding; concatenated, pieces repeat fields, map keys and oneof
    /// members, which prost merges.
    fn arb_part() -> impl Strategy<Value = Vec<u8>> {
        let gauge_value =
            (any::<String>(), any::<f64>()).prop_map(|(unit, value)| v2::GaugeValue { unit, value }.encode_to_vec());
        prop_oneof![
            3 => arb_colliding_envelope().prop_map(|env| env.encode_to_vec()),
            1 => arb_map_entry(any::<String>().prop_map(String::into_bytes)).prop_map(|entry| wrap(9, &entry)),
            1 => arb_map_entry(arb_value().prop_map(|value| value.encode_to_vec())).prop_map(|entry| wrap(3, &entry)),
            1 => arb_map_entry(gauge_value).prop_map(|entry| wrap(6, &wrap(1, &entry))),
            // A member holding only unknown fields: that member, with default values.
            1 => (prop::sample::select(vec![4u32, 5, 6, 7, 10]), arb_unknown())
                .prop_map(|(member, unknown)| wrap(member, &unknown)),
            1 => arb_unknown(),
        ]
    }

    fn arb_envelope() -> impl Strategy<Value = v2::Envelope> {
        (
            any::<i64>(),
            any::<String>(),
            any::<String>(),
            proptest::collection::hash_map(any::<String>(), arb_value(), 0..4),
            proptest::collection::hash_map(any::<String>(), any::<String>(), 0..4),
            arb_message(),
        )
            .prop_map(|(timestamp, source_id, instance_id, deprecated_tags, tags, message)| v2::Envelope {
                timestamp,
                source_id,
                instance_id,
                deprecated_tags,
                tags,
                message,
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn envelope_survives_json(env in arb_envelope()) {
            let json = envelope_to_json_string(&env);
            let decoded = envelope_from_json(&json);
            prop_assert!(decoded.is_ok(), "{:?} for {}", decoded, json);
            prop_assert_eq!(decoded.ok(), Some(with_decoded_doubles(env)));
        }

        #[test]
        fn batch_and_read_response_survive_json(batch in proptest::collection::vec(arb_envelope(), 0..4)) {
            let batch = v2::EnvelopeBatch { batch };
            let expected = v2::EnvelopeBatch { batch: batch.batch.iter().cloned().map(with_decoded_doubles).collect() };
            let json = batch_to_json_string(&batch);
            prop_assert!(!json.contains('\n'), "single line");
            prop_assert_eq!(batch_from_json(&json).ok(), Some(expected.clone()));
            let response = ReadResponse { envelopes: Some(batch) };
            prop_assert_eq!(
                read_response_from_json(&read_response_to_json(&response)).ok(),
                Some(ReadResponse { envelopes: Some(expected) })
            );
        }

        #[test]
        fn meta_response_survives_both_encodings(
            meta in proptest::collection::hash_map(
                any::<String>(),
                (any::<i64>(), any::<i64>(), any::<i64>(), any::<i64>()),
                0..4,
            )
        ) {
            let meta = meta
                .into_iter()
                .map(|(sid, (count, expired, oldest_timestamp, newest_timestamp))| {
                    (sid, MetaInfo { count, expired, oldest_timestamp, newest_timestamp })
                })
                .collect();
            let response = MetaResponse { meta };
            prop_assert_eq!(meta_response_from_json(&meta_response_to_json(&response)).ok(), Some(response.clone()));
            prop_assert_eq!(
                meta_response_from_json(&meta_response_to_json_default_options(&response)).ok(),
                Some(response)
            );
        }

        #[test]
        fn arbitrary_input_never_panics(input in any::<String>()) {
            let _ = batch_from_json(&input);
            let _ = read_response_from_json(&input);
            let _ = meta_response_from_json(&input);
        }

        #[test]
        fn encoded_json_is_valid_for_serde_json(env in arb_envelope()) {
            let json = envelope_to_json_string(&env);
            prop_assert!(serde_json::from_str::<Json>(&json).is_ok(), "{}", json);
        }

        #[test]
        fn json_from_the_encoding_equals_json_of_the_decoded_envelope(env in arb_envelope()) {
            let encoded = env.encode_to_vec();
            let expected = decode_then_write(&encoded);
            prop_assert!(expected.is_some());
            prop_assert_eq!(write_from_encoded(&encoded), expected);
        }

        #[test]
        fn json_from_the_encoding_follows_prost_merge_rules(parts in proptest::collection::vec(arb_part(), 0..6)) {
            let encoded = parts.concat();
            let expected = decode_then_write(&encoded);
            prop_assert!(expected.is_some(), "prost decodes well-formed pieces");
            prop_assert_eq!(write_from_encoded(&encoded), expected);
        }

        #[test]
        fn json_from_the_encoding_fails_exactly_when_prost_fails(
            parts in proptest::collection::vec(arb_part(), 1..5),
            edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
            cut in proptest::option::of(any::<prop::sample::Index>()),
        ) {
            let mut encoded = parts.concat();
            if encoded.is_empty() {
                encoded.push(0);
            }
            for (at, byte) in edits {
                let at = at.index(encoded.len());
                encoded[at] = byte;
            }
            if let Some(cut) = cut {
                encoded.truncate(cut.index(encoded.len() + 1));
            }
            prop_assert_eq!(write_from_encoded(&encoded), decode_then_write(&encoded));
        }

        #[test]
        fn json_from_arbitrary_bytes_agrees_with_prost(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(write_from_encoded(&bytes), decode_then_write(&bytes));
        }

        #[test]
        fn read_response_from_encoded_equals_read_response_of_decoded(
            batch in proptest::collection::vec(proptest::collection::vec(arb_part(), 0..3), 0..5)
        ) {
            let stored: Vec<Vec<u8>> = batch.into_iter().map(|parts| parts.concat()).collect();
            let decoded = stored.iter().filter_map(|e| v2::Envelope::decode(&e[..]).ok()).collect();
            let expected = read_response_to_json(&ReadResponse { envelopes: Some(v2::EnvelopeBatch { batch: decoded }) });
            let mut out = Vec::new();
            write_read_response_json_from_encoded(&mut out, &stored);
            prop_assert_eq!(into_string(out), expected);
        }
    }
}
