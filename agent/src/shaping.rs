//! Envelope shaping at the agent (PROTOCOLS.md §1.4): source id from `origin`, deprecated tags copied
//! into tags, default tags added where absent, and counter totals aggregated.
//!
//! Most envelopes need nothing but missing default tags, and map entries can simply be appended to
//! an encoded message (a map is a repeated entry field), so the common case copies the envelope's
//! bytes once and appends the missing entries: no decode, no re-encode. Counters are handled on the
//! bytes too: their tags are read for the aggregation key and, when a total must be filled in, the
//! counter field is re-emitted at the end with it. Only envelopes that need a real change (no source
//! id, deprecated tags, or an odd counter such as one split over several fields) are decoded,
//! changed and re-encoded.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};

use bytes::{BufMut, Bytes, BytesMut};
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{envelope::Message, value::Data, Envelope};
use loggregator_proto::wire::{is_utf8, put_varint, read_key, read_len, read_varint, skip_field, varint_len, WireType};
use loggregator_proto::{EnvelopeKind, RawEnvelope};
use parking_lot::Mutex;

/// The counter map is reset beyond this many keys, as the original's (§1.4).
const MAX_COUNTER_KEYS: usize = 10_000;
/// `Envelope.tags` (field 9, length-delimited).
const TAGS_KEY: u8 = (9 << 3) | 2;
/// A tag's key and value, as encoded.
type TagPair<'a> = (&'a [u8], &'a [u8]);
/// `Envelope.counter` (field 5, length-delimited).
const COUNTER_KEY: u8 = (5 << 3) | 2;

#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("malformed envelope: {0}")]
    Decode(#[from] loggregator_proto::prost::DecodeError),
    #[error("malformed envelope: {0}")]
    Scan(#[from] loggregator_proto::ScanError),
}

pub struct Shaper {
    default_tags: Vec<(String, String)>,
    counter_totals: Mutex<HashMap<u64, u64, ahash::RandomState>>,
    /// Hashes (name, source id, tags) into the counter key; ahash, as SipHash showed in profiles.
    key_hasher: ahash::RandomState,
}

impl Shaper {
    pub fn new(default_tags: impl IntoIterator<Item = (String, String)>) -> Self {
        // A key given twice keeps its first value (as `or_insert` would on a map).
        let mut unique: Vec<(String, String)> = Vec::new();
        for (key, value) in default_tags {
            if !unique.iter().any(|(k, _)| *k == key) {
                unique.push((key, value));
            }
        }
        Self {
            default_tags: unique,
            counter_totals: Mutex::new(HashMap::default()),
            key_hasher: ahash::RandomState::new(),
        }
    }

    pub fn default_tags(&self) -> &[(String, String)] {
        &self.default_tags
    }

    /// Returns the envelope as it should leave the agent.
    pub fn shape(&self, envelope: RawEnvelope) -> Result<Bytes, ShapeError> {
        if envelope.source_id_bytes().is_empty() || envelope.meta.has_deprecated_tags || self.default_tags.len() > 64 {
            return self.shape_decoded(&envelope.bytes);
        }
        if envelope.meta.kind == Some(EnvelopeKind::Counter) {
            return self.shape_counter(envelope);
        }
        if self.default_tags.is_empty() {
            return Ok(envelope.bytes);
        }
        let tags = tag_pairs(&envelope.bytes, false)?;
        let missing = self.missing_defaults(&tags);
        if missing == 0 {
            return Ok(envelope.bytes);
        }
        Ok(self.rewrite(&envelope.bytes, missing, None))
    }

    /// Which default tags `tags` lacks, as a bit set over `default_tags` (an agent with more than 64
    /// default tags shapes on the decoding path instead, see [`Self::shape`]).
    fn missing_defaults(&self, tags: &[TagPair<'_>]) -> u64 {
        let mut missing = 0u64;
        for (i, (key, _)) in self.default_tags.iter().enumerate() {
            if !tags.iter().any(|(k, _)| *k == key.as_bytes()) {
                missing |= 1 << i;
            }
        }
        missing
    }

    /// The counter rules of §1.4 on the encoded envelope. Falls back to decoding for a counter
    /// split over several `counter` fields (proto merges them; rare enough not to re-implement).
    fn shape_counter(&self, envelope: RawEnvelope) -> Result<Bytes, ShapeError> {
        let bytes = &envelope.bytes;
        let Some(counter) = counter_fields(bytes)? else {
            return self.shape_decoded(bytes);
        };
        let mut tags = tag_pairs(bytes, true)?;
        let missing = self.missing_defaults(&tags);
        for (i, (k, v)) in self.default_tags.iter().enumerate() {
            if missing & (1 << i) != 0 {
                tags.push((k.as_bytes(), v.as_bytes()));
            }
        }
        let key = counter_key(&self.key_hasher, &bytes[counter.name.clone()], envelope.source_id_bytes(), tags);
        let new_total = self.aggregate(key, counter.delta, counter.total);
        if new_total.is_none() && missing == 0 {
            return Ok(envelope.bytes);
        }
        Ok(self.rewrite(bytes, missing, new_total.map(|total| (counter, total))))
    }

    /// Updates the running total of counter `key`; returns the total to fill in, if any.
    fn aggregate(&self, key: u64, delta: u64, total: u64) -> Option<u64> {
        let mut totals = self.counter_totals.lock();
        if totals.len() > MAX_COUNTER_KEYS {
            totals.clear();
        }
        let running = totals.entry(key).or_insert(0);
        if total == 0 && delta != 0 {
            *running = running.wrapping_add(delta);
            Some(*running)
        } else {
            *running = total;
            None
        }
    }

    /// A copy of `bytes` with the `missing` default tags appended and, given a counter and its new
    /// total, every `counter` field replaced by one at the end that carries the total.
    fn rewrite(&self, bytes: &[u8], missing: u64, counter: Option<(CounterFields, u64)>) -> Bytes {
        let defaults = || self.default_tags.iter().enumerate().filter(move |(i, _)| missing & (1 << i) != 0);
        let extra: usize = defaults().map(|(_, (k, v))| map_entry_len(k, v)).sum::<usize>() + 32;
        let mut out = BytesMut::with_capacity(bytes.len() + extra);
        match &counter {
            // Everything but the counter field: the fields before it and the fields after it.
            Some((fields, _)) => {
                out.put_slice(&bytes[..fields.field.start]);
                out.put_slice(&bytes[fields.field.end..]);
            }
            None => out.put_slice(bytes),
        }
        for (_, (k, v)) in defaults() {
            let inner = 2 + varint_len(k.len() as u64) + k.len() + varint_len(v.len() as u64) + v.len();
            out.put_u8(TAGS_KEY);
            put_varint(&mut out, inner as u64);
            out.put_u8((1 << 3) | 2);
            put_varint(&mut out, k.len() as u64);
            out.put_slice(k.as_bytes());
            out.put_u8((2 << 3) | 2);
            put_varint(&mut out, v.len() as u64);
            out.put_slice(v.as_bytes());
        }
        if let Some((fields, total)) = counter {
            let name = &bytes[fields.name];
            let mut inner = 0;
            if !name.is_empty() {
                inner += 1 + varint_len(name.len() as u64) + name.len();
            }
            if fields.delta != 0 {
                inner += 1 + varint_len(fields.delta);
            }
            inner += 1 + varint_len(total);
            out.put_u8(COUNTER_KEY);
            put_varint(&mut out, inner as u64);
            if !name.is_empty() {
                out.put_u8((1 << 3) | 2);
                put_varint(&mut out, name.len() as u64);
                out.put_slice(name);
            }
            if fields.delta != 0 {
                out.put_u8(2 << 3);
                put_varint(&mut out, fields.delta);
            }
            out.put_u8(3 << 3);
            put_varint(&mut out, total);
        }
        out.freeze()
    }

    fn shape_decoded(&self, bytes: &[u8]) -> Result<Bytes, ShapeError> {
        let mut envelope = Envelope::decode(bytes)?;
        self.apply(&mut envelope);
        Ok(Bytes::from(envelope.encode_to_vec()))
    }

    /// Applies §1.4 to a decoded envelope.
    pub fn apply(&self, envelope: &mut Envelope) {
        if envelope.source_id.is_empty() {
            if let Some(origin) = envelope.tags.get("origin") {
                envelope.source_id = origin.clone();
            } else if let Some(Data::Text(origin)) =
                envelope.deprecated_tags.get("origin").and_then(|v| v.data.as_ref())
            {
                envelope.source_id = origin.clone();
            }
        }
        for (key, value) in &envelope.deprecated_tags {
            let text = match &value.data {
                Some(Data::Text(t)) => t.clone(),
                Some(Data::Integer(i)) => i.to_string(),
                // Rust's `Display` for f64 is the shortest representation that round-trips.
                Some(Data::Decimal(d)) => d.to_string(),
                None => String::new(),
            };
            envelope.tags.insert(key.clone(), text);
        }
        for (key, value) in &self.default_tags {
            envelope.tags.entry(key.clone()).or_insert_with(|| value.clone());
        }
        if let Some(Message::Counter(counter)) = &mut envelope.message {
            let tags: Vec<(&[u8], &[u8])> = envelope.tags.iter().map(|(k, v)| (k.as_bytes(), v.as_bytes())).collect();
            let key = counter_key(&self.key_hasher, counter.name.as_bytes(), envelope.source_id.as_bytes(), tags);
            if let Some(total) = self.aggregate(key, counter.delta, counter.total) {
                counter.total = total;
            }
        }
    }
}

/// The aggregation key of a counter: its name, source id and tags (as a set: sorted, and for a key
/// given twice the last value, as a decoded map keeps it). Both shaping paths use this, so a counter
/// keeps its running total whichever path its envelopes take.
fn counter_key(state: &ahash::RandomState, name: &[u8], source_id: &[u8], mut tags: Vec<TagPair<'_>>) -> u64 {
    // Stable sort, then keep the last of each run of equal keys.
    tags.sort_by(|a, b| a.0.cmp(b.0));
    let mut hasher = state.build_hasher();
    hasher.write(name);
    hasher.write_u8(0xff);
    hasher.write(source_id);
    hasher.write_u8(0xff);
    for (i, (k, v)) in tags.iter().enumerate() {
        if tags.get(i + 1).is_some_and(|next| next.0 == *k) {
            continue;
        }
        hasher.write_usize(k.len());
        hasher.write(k);
        hasher.write_usize(v.len());
        hasher.write(v);
    }
    hasher.finish()
}

/// Where the one `counter` field of an envelope is, and what it holds.
#[derive(Debug)]
struct CounterFields {
    /// The whole field: key, length and message.
    field: std::ops::Range<usize>,
    name: std::ops::Range<usize>,
    delta: u64,
    total: u64,
}

/// Finds the `counter` field (5) of an encoded envelope; `None` if it occurs more than once.
fn counter_fields(buf: &[u8]) -> Result<Option<CounterFields>, loggregator_proto::ScanError> {
    let mut found: Option<CounterFields> = None;
    let mut pos = 0;
    while pos < buf.len() {
        let start = pos;
        let (field, wire_type) = read_key(buf, &mut pos)?;
        if field != 5 || wire_type != WireType::Len {
            skip_field(buf, &mut pos, field, wire_type)?;
            continue;
        }
        if found.is_some() {
            return Ok(None);
        }
        let body = read_len(buf, &mut pos)?;
        let msg = &buf[..body.end];
        let mut fields = CounterFields { field: start..body.end, name: 0..0, delta: 0, total: 0 };
        let mut p = body.start;
        while p < body.end {
            let (f, wt) = read_key(msg, &mut p)?;
            match (f, wt) {
                (1, WireType::Len) => fields.name = read_len(msg, &mut p)?,
                (2, WireType::Varint) => fields.delta = read_varint(msg, &mut p)?,
                (3, WireType::Varint) => fields.total = read_varint(msg, &mut p)?,
                _ => skip_field(msg, &mut p, f, wt)?,
            }
        }
        found = Some(fields);
    }
    Ok(found)
}

fn map_entry_len(k: &str, v: &str) -> usize {
    let inner = 2 + varint_len(k.len() as u64) + k.len() + varint_len(v.len() as u64) + v.len();
    1 + varint_len(inner as u64) + inner
}

/// The (key, value) entries of the `tags` map of an encoded envelope, in wire order; with
/// `check_utf8` both are checked to be UTF-8, as a decode would.
fn tag_pairs(buf: &[u8], check_utf8: bool) -> Result<Vec<TagPair<'_>>, ShapeError> {
    // Room for a typical envelope's tags and the defaults, so one allocation.
    let mut pairs = Vec::with_capacity(16);
    let mut pos = 0;
    while pos < buf.len() {
        let (field, wire_type) = read_key(buf, &mut pos)?;
        if field != 9 || wire_type != WireType::Len {
            skip_field(buf, &mut pos, field, wire_type)?;
            continue;
        }
        let entry = read_len(buf, &mut pos)?;
        let msg = &buf[..entry.end];
        let mut p = entry.start;
        let (mut key, mut value): (&[u8], &[u8]) = (&[], &[]);
        while p < entry.end {
            let (f, wt) = read_key(msg, &mut p)?;
            match (f, wt) {
                (1, WireType::Len) => key = &buf[read_len(msg, &mut p)?],
                (2, WireType::Len) => value = &buf[read_len(msg, &mut p)?],
                _ => skip_field(msg, &mut p, f, wt)?,
            }
        }
        if check_utf8 && !(is_utf8(key) && is_utf8(value)) {
            return Err(loggregator_proto::ScanError::InvalidUtf8.into());
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggregator_proto::v2::{self, Value};

    fn raw(envelope: &Envelope) -> RawEnvelope {
        RawEnvelope::scan(Bytes::from(envelope.encode_to_vec())).unwrap()
    }

    fn shaped(shaper: &Shaper, envelope: &Envelope) -> Envelope {
        Envelope::decode(shaper.shape(raw(envelope)).unwrap()).unwrap()
    }

    fn tags(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn default_tags_are_added_only_where_absent_without_decoding() {
        let shaper = Shaper::new(tags(&[("deployment", "cf"), ("job", "diego")]));
        let envelope = Envelope {
            source_id: "app".into(),
            tags: HashMap::from([("job".to_string(), "mine".to_string())]),
            message: Some(Message::Log(v2::Log::default())),
            ..Default::default()
        };
        let out = shaped(&shaper, &envelope);
        assert_eq!(out.tags.get("deployment").map(String::as_str), Some("cf"));
        assert_eq!(out.tags.get("job").map(String::as_str), Some("mine"));
        assert_eq!(out.source_id, "app");
    }

    #[test]
    fn untouched_envelopes_pass_through_as_the_same_bytes() {
        let shaper = Shaper::new(Vec::new());
        let envelope = Envelope { source_id: "a".into(), ..Default::default() };
        let input = raw(&envelope);
        let bytes = input.bytes.clone();
        let out = shaper.shape(input).unwrap();
        assert_eq!(out.as_ptr(), bytes.as_ptr());
    }

    #[test]
    fn source_id_comes_from_origin_tag_then_deprecated_origin() {
        let shaper = Shaper::new(Vec::new());
        let from_tag = Envelope { tags: HashMap::from([("origin".into(), "rtr".into())]), ..Default::default() };
        assert_eq!(shaped(&shaper, &from_tag).source_id, "rtr");
        let from_deprecated = Envelope {
            deprecated_tags: HashMap::from([("origin".into(), Value { data: Some(Data::Text("cc".into())) })]),
            ..Default::default()
        };
        assert_eq!(shaped(&shaper, &from_deprecated).source_id, "cc");
    }

    #[test]
    fn deprecated_tags_are_copied_into_tags_and_kept() {
        let shaper = Shaper::new(Vec::new());
        let envelope = Envelope {
            source_id: "s".into(),
            deprecated_tags: HashMap::from([
                ("t".into(), Value { data: Some(Data::Text("x".into())) }),
                ("i".into(), Value { data: Some(Data::Integer(-7)) }),
                ("d".into(), Value { data: Some(Data::Decimal(0.5)) }),
            ]),
            ..Default::default()
        };
        let out = shaped(&shaper, &envelope);
        assert_eq!(out.tags.get("t").map(String::as_str), Some("x"));
        assert_eq!(out.tags.get("i").map(String::as_str), Some("-7"));
        assert_eq!(out.tags.get("d").map(String::as_str), Some("0.5"));
        assert_eq!(out.deprecated_tags.len(), 3);
    }

    #[test]
    fn counter_totals_accumulate_deltas_per_name_source_and_tags() {
        let shaper = Shaper::new(Vec::new());
        let counter = |name: &str, delta: u64, total: u64| Envelope {
            source_id: "s".into(),
            message: Some(Message::Counter(v2::Counter { name: name.into(), delta, total })),
            ..Default::default()
        };
        let total = |e: Envelope| match e.message {
            Some(Message::Counter(c)) => c.total,
            _ => panic!("counter expected"),
        };
        assert_eq!(total(shaped(&shaper, &counter("a", 2, 0))), 2);
        assert_eq!(total(shaped(&shaper, &counter("a", 3, 0))), 5);
        assert_eq!(total(shaped(&shaper, &counter("b", 1, 0))), 1);
        // An explicit total is taken as-is and becomes the base.
        assert_eq!(total(shaped(&shaper, &counter("a", 1, 100))), 100);
        assert_eq!(total(shaped(&shaper, &counter("a", 1, 0))), 101);
    }

    fn counter_env(source: &str, name: &str, delta: u64, total: u64, tags: &[(&str, &str)]) -> Envelope {
        Envelope {
            source_id: source.into(),
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            message: Some(Message::Counter(v2::Counter { name: name.into(), delta, total })),
            ..Default::default()
        }
    }

    #[test]
    fn counters_are_shaped_without_decoding_when_nothing_changes() {
        let shaper = Shaper::new(Vec::new());
        // An explicit total: the envelope passes through as the same bytes.
        let input = raw(&counter_env("s", "c", 1, 10, &[("a", "b")]));
        let bytes = input.bytes.clone();
        assert_eq!(shaper.shape(input).unwrap().as_ptr(), bytes.as_ptr());
    }

    #[test]
    fn a_counter_split_over_two_fields_is_merged_as_a_decode_would() {
        let shaper = Shaper::new(Vec::new());
        let mut bytes = counter_env("s", "c", 0, 0, &[]).encode_to_vec();
        // A second `counter` field carrying only the delta: proto merges it into the first.
        bytes.extend_from_slice(&[COUNTER_KEY, 2, 2 << 3, 7]);
        let out = Envelope::decode(shaper.shape(RawEnvelope::scan(Bytes::from(bytes)).unwrap()).unwrap()).unwrap();
        assert_eq!(out.message, Some(Message::Counter(v2::Counter { name: "c".into(), delta: 7, total: 7 })));
    }

    #[test]
    fn counter_tags_with_invalid_utf8_are_refused_as_a_decode_would() {
        let shaper = Shaper::new(Vec::new());
        let mut bytes = counter_env("s", "c", 1, 0, &[]).encode_to_vec();
        bytes.extend_from_slice(&[TAGS_KEY, 6, (1 << 3) | 2, 1, 0xff, (2 << 3) | 2, 1, b'v']);
        assert!(shaper.shape(RawEnvelope::scan(Bytes::from(bytes)).unwrap()).is_err());
    }

    proptest::proptest! {
        /// The byte-level path (default tags appended, counters aggregated on the encoded form)
        /// gives the same envelopes, and the same running totals, as decoding every envelope.
        #[test]
        fn byte_path_agrees_with_the_decoding_path(
            defaults in proptest::collection::vec(("[a-c]{1,2}", "[x-z]{0,3}"), 0..4),
            envelopes in proptest::collection::vec(
                (
                    0u8..3,
                    "[a-b]{1,2}",
                    proptest::option::of("[a-c]{0,2}"),
                    proptest::prop_oneof![proptest::strategy::Just(0u64), 1u64..5, proptest::strategy::Just(u64::MAX)],
                    proptest::prop_oneof![proptest::strategy::Just(0u64), 1u64..100],
                    proptest::collection::vec(("[a-d]{1,2}", "[u-w]{0,2}"), 0..4),
                ),
                1..30,
            ),
        ) {
            let fast = Shaper::new(defaults.clone());
            let slow = Shaper::new(defaults);
            for (kind, source, name, delta, total, tags) in envelopes {
                let tags: Vec<(&str, &str)> = tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
                let envelope = match (kind, name) {
                    (0, Some(name)) | (1, Some(name)) => counter_env(&source, &name, delta, total, &tags),
                    _ => Envelope {
                        source_id: source.clone(),
                        tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                        message: Some(Message::Log(v2::Log { payload: Bytes::from_static(b"p"), r#type: 0 })),
                        ..Default::default()
                    },
                };
                let a = Envelope::decode(fast.shape(raw(&envelope)).unwrap()).unwrap();
                let b = Envelope::decode(slow.shape_decoded(&envelope.encode_to_vec()).unwrap()).unwrap();
                proptest::prop_assert_eq!(a, b);
            }
        }
    }
}
