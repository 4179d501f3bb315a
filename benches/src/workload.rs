//! Envelopes and batches for benchmarks and the load generator.
//!
//! The load generator sends batches that are encoded once, at start-up: each send copies a batch
//! template into tonic's send buffer, writing the current time over the envelopes' `timestamp`s. A timestamp is field 1, which
//! prost writes first, and any time between 1972 and 2262 in nanoseconds is a 9-byte varint, so the
//! patch never changes a length. Receivers compute end-to-end latency as now − timestamp.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use bytes::Bytes;
use loggregator_proto::v2::{self, envelope::Message};
use prost::Message as _;
use serde::{Deserialize, Serialize};

/// The oneof member of a generated envelope.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Log,
    Counter,
    Gauge,
    Timer,
    Event,
}

impl Kind {
    pub const ALL: [Kind; 5] = [Kind::Log, Kind::Counter, Kind::Gauge, Kind::Timer, Kind::Event];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Log => "log",
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Timer => "timer",
            Kind::Event => "event",
        }
    }
}

/// Relative weights of envelope types, written `log=90,counter=5,gauge=5`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mix(pub Vec<(Kind, u32)>);

impl Default for Mix {
    fn default() -> Self {
        Mix(vec![(Kind::Log, 1)])
    }
}

impl fmt::Display for Mix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, w)| format!("{}={w}", k.name())).collect();
        f.write_str(&parts.join(","))
    }
}

impl FromStr for Mix {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, weight) = part.split_once('=').unwrap_or((part, "1"));
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.name() == name.trim())
                .ok_or_else(|| format!("unknown envelope type `{name}` (log, counter, gauge, timer, event)"))?;
            let weight: u32 = weight.trim().parse().map_err(|_| format!("invalid weight in `{part}`"))?;
            if weight > 0 {
                out.push((kind, weight));
            }
        }
        if out.is_empty() {
            return Err("the envelope mix is empty".into());
        }
        Ok(Mix(out))
    }
}

impl Serialize for Mix {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Mix {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Shape of generated envelopes.
#[derive(Clone, Debug)]
pub struct Shape {
    pub payload_bytes: usize,
    pub tags: usize,
}

/// Nanoseconds since the Unix epoch.
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

/// One envelope of `kind` from `source_id`, with `shape.tags` tags and a payload of about
/// `shape.payload_bytes` (the log payload, or the event body).
pub fn envelope(kind: Kind, source_id: &str, instance: u32, timestamp: i64, shape: &Shape) -> v2::Envelope {
    let tags: HashMap<String, String> =
        (0..shape.tags).map(|i| (format!("tag-{i}"), format!("value-of-tag-{i}-{}", i * 7919 % 1000))).collect();
    let payload: Vec<u8> = (0..shape.payload_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    let message = match kind {
        Kind::Log => Message::Log(v2::Log { payload: Bytes::from(payload), r#type: 0 }),
        Kind::Counter => {
            Message::Counter(v2::Counter { name: format!("requests-{}", instance % 4), delta: 1, total: 42 })
        }
        Kind::Gauge => Message::Gauge(v2::Gauge {
            metrics: [("cpu", "percentage", 12.5), ("memory", "bytes", 1.5e9), ("disk", "bytes", 2.5e9)]
                .into_iter()
                .map(|(k, unit, value)| (k.to_string(), v2::GaugeValue { unit: unit.to_string(), value }))
                .collect(),
        }),
        Kind::Timer => {
            Message::Timer(v2::Timer { name: "http".to_string(), start: timestamp - 1_000_000, stop: timestamp })
        }
        Kind::Event => Message::Event(v2::Event {
            title: "deploy".to_string(),
            body: String::from_utf8_lossy(&vec![b'e'; shape.payload_bytes]).into_owned(),
        }),
    };
    v2::Envelope {
        timestamp,
        source_id: source_id.to_string(),
        instance_id: instance.to_string(),
        deprecated_tags: HashMap::new(),
        tags,
        message: Some(message),
    }
}

/// Writes `timestamp` into `slot` as a 9-byte varint.
#[inline]
fn patch_varint9(slot: &mut [u8], timestamp: i64) {
    let mut v = timestamp as u64;
    for byte in slot.iter_mut().take(8) {
        *byte = (v as u8 & 0x7f) | 0x80;
        v >>= 7;
    }
    slot[8] = v as u8;
}

/// Whether `timestamp` encodes as exactly 9 varint bytes.
fn is_nine_byte_varint(timestamp: i64) -> bool {
    (1i64 << 56..i64::MAX).contains(&timestamp)
}

/// An encoded `EnvelopeBatch` whose timestamps are stamped as it is sent.
#[derive(Debug, Clone)]
pub struct BatchTemplate {
    /// The batch exactly as prost encodes it: each envelope behind its field key and length.
    body: Bytes,
    /// Where each envelope's 9-byte timestamp varint starts in `body`.
    stamps: Arc<[usize]>,
}

impl BatchTemplate {
    /// Encodes `envelopes`; their timestamps must be 9-byte varints (any current time in ns).
    pub fn new(envelopes: &[v2::Envelope]) -> Self {
        let batch = v2::EnvelopeBatch { batch: envelopes.to_vec() };
        let body = batch.encode_to_vec();
        let mut stamps = Vec::with_capacity(envelopes.len());
        let mut pos = 0;
        for e in envelopes {
            assert!(is_nine_byte_varint(e.timestamp), "template timestamps must be current times in ns");
            // The batch field's key, the envelope's length, then the timestamp's key.
            let len = e.encoded_len();
            pos += 1 + loggregator_proto::wire::varint_len(len as u64);
            debug_assert_eq!(body[pos], 0x08, "timestamp is the first field");
            stamps.push(pos + 1);
            pos += len;
        }
        assert_eq!(pos, body.len());
        Self { body: Bytes::from(body), stamps: stamps.into() }
    }

    pub fn len(&self) -> usize {
        self.stamps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.stamps.is_empty()
    }

    /// Encoded size of the batch on the wire (without gRPC framing).
    pub fn encoded_len(&self) -> usize {
        self.body.len()
    }

    /// The batch with every envelope stamped `timestamp`, to be written as it is encoded: no copy
    /// of its own (a timestamp that is not a 9-byte varint leaves the template's).
    pub fn stamp(&self, timestamp: i64) -> StampedBatch {
        let mut varint = [0u8; 9];
        let stamp = is_nine_byte_varint(timestamp).then(|| {
            patch_varint9(&mut varint, timestamp);
            varint
        });
        StampedBatch { template: self.clone(), stamp }
    }
}

/// A [`BatchTemplate`] and its timestamp: encodes as an `EnvelopeBatch` by copying the template
/// into tonic's send buffer with the timestamp written over each envelope's. The load generator
/// shares the machine it measures, and a copy of every batch before tonic's own was 4 % of its CPU.
#[derive(Debug, Clone, Default)]
pub struct StampedBatch {
    template: BatchTemplate,
    stamp: Option<[u8; 9]>,
}

impl Default for BatchTemplate {
    fn default() -> Self {
        Self { body: Bytes::new(), stamps: Arc::from([]) }
    }
}

impl StampedBatch {
    pub fn len(&self) -> usize {
        self.template.len()
    }

    pub fn is_empty(&self) -> bool {
        self.template.is_empty()
    }

    /// The encoded batch as one buffer.
    pub fn to_bytes(&self) -> Bytes {
        Bytes::from(self.encode_to_vec())
    }
}

impl prost::Message for StampedBatch {
    fn encode_raw(&self, buf: &mut impl bytes::BufMut) {
        let body = &self.template.body[..];
        let Some(stamp) = &self.stamp else {
            return buf.put_slice(body);
        };
        let mut from = 0;
        for &at in self.template.stamps.iter() {
            buf.put_slice(&body[from..at]);
            buf.put_slice(stamp);
            from = at + stamp.len();
        }
        buf.put_slice(&body[from..]);
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        // Only ever sent: decoding skips everything.
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }

    fn encoded_len(&self) -> usize {
        self.template.body.len()
    }

    fn clear(&mut self) {
        *self = Self::default();
    }
}

/// Picks envelope kinds in proportion to a [`Mix`], deterministically (a weighted round robin).
pub fn kinds_for(mix: &Mix, count: usize, offset: usize) -> Vec<Kind> {
    let total: u32 = mix.0.iter().map(|(_, w)| w).sum();
    (0..count)
        .map(|i| {
            // Spread kinds evenly: position i of a cycle of `total` slots.
            let mut slot = ((i + offset) as u64 * 7919 % total as u64) as u32;
            for &(kind, weight) in &mix.0 {
                if slot < weight {
                    return kind;
                }
                slot -= weight;
            }
            mix.0[0].0
        })
        .collect()
}

/// `count` batch templates of `batch_size` envelopes cycling through `source_ids` source ids, named
/// `{prefix}{n}`.
pub fn batch_templates(
    prefix: &str,
    count: usize,
    batch_size: usize,
    source_ids: usize,
    mix: &Mix,
    shape: &Shape,
) -> Vec<BatchTemplate> {
    let now = now_nanos();
    let source_ids = source_ids.max(1);
    (0..count)
        .map(|t| {
            let kinds = kinds_for(mix, batch_size, t * batch_size);
            let envelopes: Vec<v2::Envelope> = kinds
                .iter()
                .enumerate()
                .map(|(i, &kind)| {
                    let n = t * batch_size + i;
                    envelope(kind, &format!("{prefix}{}", n % source_ids), (n % 8) as u32, now, shape)
                })
                .collect();
            BatchTemplate::new(&envelopes)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggregator_proto::BatchScanner;

    #[test]
    fn stamped_batches_decode_with_the_new_timestamp() {
        let shape = Shape { payload_bytes: 50, tags: 3 };
        let mix: Mix = "log=2,counter=1,gauge=1,timer=1,event=1".parse().expect("valid mix");
        let templates = batch_templates("source-", 2, 10, 7, &mix, &shape);
        let ts = now_nanos() + 12345;
        let batch = templates[1].stamp(ts);
        let bytes = batch.to_bytes();
        let decoded = v2::EnvelopeBatch::decode(bytes.clone()).expect("valid batch");
        assert_eq!(decoded.batch.len(), 10);
        assert!(decoded.batch.iter().all(|e| e.timestamp == ts));
        let scanned: Vec<_> = BatchScanner::new(bytes).collect::<Result<_, _>>().expect("scans");
        assert!(scanned.iter().all(|e| e.meta.timestamp == ts));
        assert_eq!(templates[1].encoded_len(), batch.to_bytes().len());
        let kinds: std::collections::HashSet<_> =
            decoded.batch.iter().map(|e| e.message.as_ref().map(std::mem::discriminant)).collect();
        assert!(kinds.len() >= 4, "the mix produces several types");
    }

    #[test]
    fn mix_parses_and_prints() {
        let mix: Mix = "log=90, counter=10".parse().expect("valid");
        assert_eq!(mix.to_string(), "log=90,counter=10");
        assert!("nope=1".parse::<Mix>().is_err());
        assert!("log=0".parse::<Mix>().is_err());
    }
}
