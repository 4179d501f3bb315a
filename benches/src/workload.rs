//! Envelopes and batches for benchmarks and the load generator.
//!
//! The load generator sends batches that are encoded once, at start-up: each send copies a batch
//! template and patches the envelopes' `timestamp` fields in place. A timestamp is field 1, which
//! prost writes first, and any time between 1972 and 2262 in nanoseconds is a 9-byte varint, so the
//! patch never changes a length. Receivers compute end-to-end latency as now − timestamp.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use loggregator_proto::raw::EncodedBatch;
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

/// Writes `timestamp` as the 9-byte varint at `slot` (which holds one already).
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

/// A batch encoded once, re-stamped on every send.
#[derive(Clone)]
pub struct BatchTemplate {
    /// The envelopes, back to back, each exactly as prost encoded it.
    bytes: Bytes,
    /// Each envelope's range in `bytes`.
    ranges: Vec<(usize, usize)>,
}

impl BatchTemplate {
    /// Encodes `envelopes`; their timestamps must be 9-byte varints (any current time in ns).
    pub fn new(envelopes: &[v2::Envelope]) -> Self {
        let mut buf = Vec::new();
        let mut ranges = Vec::with_capacity(envelopes.len());
        for e in envelopes {
            assert!(is_nine_byte_varint(e.timestamp), "template timestamps must be current times in ns");
            let start = buf.len();
            e.encode(&mut buf).expect("a Vec grows as needed");
            debug_assert_eq!(buf[start], 0x08, "timestamp is the first field");
            ranges.push((start, buf.len()));
        }
        Self { bytes: Bytes::from(buf), ranges }
    }

    pub fn len(&self) -> usize {
        self.ranges.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Encoded size of the batch on the wire (without gRPC framing).
    pub fn encoded_len(&self) -> usize {
        self.ranges.iter().map(|(s, e)| 1 + loggregator_proto::wire::varint_len((e - s) as u64) + (e - s)).sum()
    }

    /// A copy of the batch with every envelope stamped `timestamp` (one allocation and one copy).
    pub fn stamp(&self, timestamp: i64) -> EncodedBatch {
        let mut buf = BytesMut::from(&self.bytes[..]);
        if is_nine_byte_varint(timestamp) {
            for &(start, _) in &self.ranges {
                patch_varint9(&mut buf[start + 1..start + 10], timestamp);
            }
        }
        let buf = buf.freeze();
        EncodedBatch { envelopes: self.ranges.iter().map(|&(s, e)| buf.slice(s..e)).collect() }
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
