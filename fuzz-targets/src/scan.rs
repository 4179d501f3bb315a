//! The zero-copy scanner (`proto::scan`) against prost: its module promises agreement with a full
//! decode on every well-formed envelope, so wherever prost decodes the input, the scanner must
//! succeed too and report the same routing key. Where prost refuses, the scanner may still accept
//! (it does not look inside tags or payloads) but must not panic.

use bytes::Bytes;
use loggregator_proto::scan::{crc64_ecma, scan_envelope, BatchScanner, EnvelopeKind, RawEnvelope};
use loggregator_proto::v2::{envelope::Message, Envelope, EnvelopeBatch};
use prost::Message as _;

/// The input as one encoded `EnvelopeBatch`, and as one encoded `Envelope`.
pub fn fuzz(data: &[u8]) {
    let input = Bytes::copy_from_slice(data);
    let scanned: Vec<_> = BatchScanner::new(input.clone()).collect();
    if let Ok(batch) = EnvelopeBatch::decode(data) {
        assert_eq!(scanned.len(), batch.batch.len(), "scanner and prost disagree on the batch's length");
        for (raw, decoded) in scanned.iter().zip(&batch.batch) {
            let raw = raw.as_ref().expect("the scanner refused an envelope prost decoded");
            check_agrees(raw, decoded);
        }
    }
    let single = scan_envelope(data);
    if let Ok(decoded) = Envelope::decode(data) {
        let meta = single.expect("the scanner refused an envelope prost decoded");
        check_agrees(&RawEnvelope { bytes: input, meta }, &decoded);
    }
}

/// Asserts that the scanner's view of an envelope is prost's.
pub fn check_agrees(raw: &RawEnvelope, decoded: &Envelope) {
    let meta = &raw.meta;
    assert_eq!(meta.timestamp, decoded.timestamp, "timestamp");
    assert_eq!(raw.source_id(), decoded.source_id, "source id");
    assert_eq!(raw.instance_id(), decoded.instance_id, "instance id");
    assert_eq!(meta.has_tags, !decoded.tags.is_empty(), "has_tags");
    assert_eq!(meta.has_deprecated_tags, !decoded.deprecated_tags.is_empty(), "has_deprecated_tags");
    let (kind, name) = match &decoded.message {
        None => (None, ""),
        Some(Message::Log(_)) => (Some(EnvelopeKind::Log), ""),
        Some(Message::Counter(c)) => (Some(EnvelopeKind::Counter), c.name.as_str()),
        Some(Message::Gauge(_)) => (Some(EnvelopeKind::Gauge), ""),
        Some(Message::Timer(t)) => (Some(EnvelopeKind::Timer), t.name.as_str()),
        Some(Message::Event(_)) => (Some(EnvelopeKind::Event), ""),
    };
    assert_eq!(meta.kind, kind, "kind");
    assert_eq!(raw.name(), name, "counter or timer name");
    let (hash, count) = match &decoded.message {
        Some(Message::Gauge(g)) => {
            (g.metrics.keys().fold(0u64, |sum, k| sum.wrapping_add(crc64_ecma(k.as_bytes()))), g.metrics.len())
        }
        _ => (0, 0),
    };
    assert_eq!(meta.gauge_keys_hash, hash, "gauge key hash");
    assert_eq!(meta.gauge_key_count as usize, count, "gauge key count");
}
