//! Syslog ingest (`log_cache::syslog`): octet-counting and newline framing must cut the same frames
//! whatever reads the bytes arrive in, and each frame goes through the RFC 5424 parser and the
//! conversion to an envelope, whose encoding the scanner must agree with.

use bytes::{Bytes, BytesMut};
use log_cache::syslog::rfc5424::{parse, parse_rfc3339_nanos, to_envelope};
use log_cache::syslog::{next_frame, FrameError};
use loggregator_proto::scan::RawEnvelope;
use prost::Message as _;

use crate::split;

/// The largest frame accepted: small, so the limit is reached.
const MAX_FRAME: usize = 512;

/// Frames `split`'s chunks as successive reads, and parses every frame.
pub fn fuzz(data: &[u8]) {
    let (chunked, chunked_error) = frames(&split::chunks(data));
    let (whole, whole_error) = frames(&[split::payload(data)]);
    assert_eq!(chunked, whole, "frames depend on how the bytes were read");
    assert_eq!(
        chunked_error.map(|e| std::mem::discriminant(&e)),
        whole_error.map(|e| std::mem::discriminant(&e)),
        "framing errors depend on how the bytes were read"
    );
    for frame in &whole {
        assert!(frame.len() <= MAX_FRAME, "a frame over the limit");
        message(frame);
    }
    // The payload as one unframed message too (the parser sees what a frame holds).
    message(split::payload(data));
}

/// The frames cut from `reads`, until the first error.
fn frames(reads: &[&[u8]]) -> (Vec<Bytes>, Option<FrameError>) {
    let mut buffer = BytesMut::new();
    let mut out = Vec::new();
    for read in reads {
        buffer.extend_from_slice(read);
        loop {
            match next_frame(&mut buffer, MAX_FRAME) {
                Ok(Some(frame)) => out.push(frame.freeze()),
                Ok(None) => break,
                Err(error) => return (out, Some(error)),
            }
        }
    }
    (out, None)
}

fn message(frame: &[u8]) {
    let _ = parse_rfc3339_nanos(frame);
    let Ok(parsed) = parse(frame) else {
        return;
    };
    assert!(parsed.priority <= 191, "PRI out of range: {}", parsed.priority);
    let Ok(envelope) = to_envelope(parsed, 1) else {
        return;
    };
    let encoded = Bytes::from(envelope.encode_to_vec());
    let raw = RawEnvelope::scan(encoded).expect("the scanner refused a converted syslog message");
    crate::scan::check_agrees(&raw, &envelope);
}
