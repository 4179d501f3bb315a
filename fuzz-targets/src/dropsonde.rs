//! Dropsonde (v1) decoding and the conversions between v1 and v2 (`proto::convert`), and the encoded
//! v2→v1 writer (`proto::v1_encoded::V1Writer`), whose output must decode to what `to_v1` returns.

use bytes::{Bytes, BytesMut};
use loggregator_proto::convert::{to_v1, to_v2};
use loggregator_proto::events;
use loggregator_proto::scan::RawEnvelope;
use loggregator_proto::v1_encoded::V1Writer;
use loggregator_proto::v2;
use prost::Message as _;

/// The input as an encoded dropsonde envelope (v1 → v2 → v1), and as an encoded v2 envelope (v2 → v1,
/// both ways).
pub fn fuzz(data: &[u8]) {
    if let Ok(v1) = events::Envelope::decode(data) {
        for use_preferred_tags in [false, true] {
            if let Some(v2) = to_v2(&v1, use_preferred_tags) {
                check_v2(&v2.encode_to_vec());
            }
        }
    }
    check_v2(data);
}

/// v2 → v1 of an encoded v2 envelope, by the writer and by `to_v1`.
fn check_v2(encoded: &[u8]) {
    let decoded = v2::Envelope::decode(encoded).ok();
    if let Some(envelope) = &decoded {
        // What the Doppler routes by must be what was converted.
        let raw = RawEnvelope::scan(Bytes::copy_from_slice(encoded)).expect("the scanner refused a decodable envelope");
        crate::scan::check_agrees(&raw, envelope);
        for v1 in to_v1(envelope) {
            let bytes = v1.encode_to_vec();
            let again = events::Envelope::decode(&bytes[..]).expect("a converted v1 envelope decodes");
            assert_eq!(again.event_type, v1.event_type);
            for use_preferred_tags in [false, true] {
                let _ = to_v2(&again, use_preferred_tags);
            }
        }
    }
    let mut out = BytesMut::from(&b"kept"[..]);
    let Some(written) = V1Writer::default().write(encoded, &mut out) else {
        assert_eq!(&out[..], b"kept", "a declining writer left output behind");
        return;
    };
    let fast = events::Envelope::decode(&out[4..]).expect("the writer's v1 encoding decodes");
    let Some(envelope) = decoded else {
        return;
    };
    assert_eq!(written.is_log, matches!(envelope.message, Some(v2::envelope::Message::Log(_))));
    assert_eq!(encoded.get(written.source_id), Some(envelope.source_id.as_bytes()), "source id range");
    let reference = to_v1(&envelope);
    assert_eq!(reference.len(), 1, "the writer converted what to_v1 drops");
    assert_eq!(fast, reference[0], "the writer and to_v1 disagree");
}
