//! Envelope shaping at the agent (PROTOCOLS.md §1.4): source id from `origin`, deprecated tags copied
//! into tags, default tags added where absent, and counter totals aggregated.
//!
//! Most envelopes need nothing but missing default tags, and map entries can simply be appended to
//! an encoded message (a map is a repeated entry field), so the common case copies the envelope's
//! bytes once and appends the missing entries: no decode, no re-encode. Only envelopes that need a
//! real change (no source id, deprecated tags, counters) are decoded, changed and re-encoded.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hash, Hasher};

use bytes::{BufMut, Bytes, BytesMut};
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{envelope::Message, value::Data, Envelope};
use loggregator_proto::wire::{put_varint, read_key, read_len, skip_field, varint_len, WireType};
use loggregator_proto::{EnvelopeKind, RawEnvelope};
use parking_lot::Mutex;

/// The counter map is reset beyond this many keys, as the original's (§1.4).
const MAX_COUNTER_KEYS: usize = 10_000;
/// `Envelope.tags` (field 9, length-delimited).
const TAGS_KEY: u8 = (9 << 3) | 2;

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
        Self {
            default_tags: default_tags.into_iter().collect(),
            counter_totals: Mutex::new(HashMap::default()),
            key_hasher: ahash::RandomState::new(),
        }
    }

    pub fn default_tags(&self) -> &[(String, String)] {
        &self.default_tags
    }

    /// Returns the envelope as it should leave the agent.
    pub fn shape(&self, envelope: RawEnvelope) -> Result<Bytes, ShapeError> {
        let needs_decode = envelope.source_id().is_empty()
            || envelope.meta.has_deprecated_tags
            || envelope.meta.kind == Some(EnvelopeKind::Counter);
        if needs_decode {
            return self.shape_decoded(&envelope.bytes);
        }
        if self.default_tags.is_empty() {
            return Ok(envelope.bytes);
        }
        self.append_missing_tags(envelope.bytes)
    }

    fn append_missing_tags(&self, bytes: Bytes) -> Result<Bytes, ShapeError> {
        let present = tag_keys(&bytes)?;
        let missing: Vec<&(String, String)> =
            self.default_tags.iter().filter(|(k, _)| !present.contains(&k.as_bytes())).collect();
        if missing.is_empty() {
            return Ok(bytes);
        }
        let extra: usize = missing.iter().map(|(k, v)| map_entry_len(k, v)).sum();
        let mut out = BytesMut::with_capacity(bytes.len() + extra);
        out.put_slice(&bytes);
        for (k, v) in missing {
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
        Ok(out.freeze())
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
            let key = counter_key(&self.key_hasher, &counter.name, &envelope.source_id, &envelope.tags);
            let mut totals = self.counter_totals.lock();
            if totals.len() > MAX_COUNTER_KEYS {
                totals.clear();
            }
            let total = totals.entry(key).or_insert(0);
            if counter.total == 0 && counter.delta != 0 {
                *total = total.wrapping_add(counter.delta);
                counter.total = *total;
            } else {
                *total = counter.total;
            }
        }
    }
}

fn counter_key(state: &ahash::RandomState, name: &str, source_id: &str, tags: &HashMap<String, String>) -> u64 {
    let mut sorted: Vec<(&String, &String)> = tags.iter().collect();
    sorted.sort();
    let mut hasher = state.build_hasher();
    name.hash(&mut hasher);
    source_id.hash(&mut hasher);
    sorted.hash(&mut hasher);
    hasher.finish()
}

fn map_entry_len(k: &str, v: &str) -> usize {
    let inner = 2 + varint_len(k.len() as u64) + k.len() + varint_len(v.len() as u64) + v.len();
    1 + varint_len(inner as u64) + inner
}

/// The keys of the `tags` map of an encoded envelope.
fn tag_keys(buf: &[u8]) -> Result<Vec<&[u8]>, loggregator_proto::ScanError> {
    let mut keys = Vec::new();
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
        while p < entry.end {
            let (f, wt) = read_key(msg, &mut p)?;
            if f == 1 && wt == WireType::Len {
                let r = read_len(msg, &mut p)?;
                keys.push(&buf[r]);
            } else {
                skip_field(msg, &mut p, f, wt)?;
            }
        }
    }
    Ok(keys)
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
}
