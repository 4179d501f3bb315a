//! Envelopes as the encoded slices they arrived as, and the one rewrite the RLP makes to them.
//!
//! A Doppler has already checked every envelope it forwards, so the RLP walks only the top level of
//! a batch: where each envelope starts and ends ([`EnvelopeSlices`]), and whether it carries `tags`
//! or `deprecated_tags` at all ([`needs_tag_rewrite`]). Only an envelope that `use_preferred_tags`
//! actually changes (§2.6: deprecated tags present with `true`, any tag with `false`) is decoded,
//! rewritten and encoded again, once ([`rewrite_tags`]); every other one is sent as it came.

use bytes::Bytes;
use loggregator_proto::convert::apply_preferred_tags;
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2;
use loggregator_proto::wire::{read_key, read_len, skip_field, WireType};
use loggregator_proto::ScanError;

/// `EnvelopeBatch.batch`.
const BATCH_FIELD: u32 = 1;
/// `Envelope.deprecated_tags`.
const DEPRECATED_TAGS_FIELD: u32 = 3;
/// `Envelope.tags`.
const TAGS_FIELD: u32 = 9;

/// The envelopes of an encoded `EnvelopeBatch`, each a slice of it.
pub struct EnvelopeSlices;

impl EnvelopeSlices {
    /// Every envelope of `batch`, or the framing error that stops the walk.
    pub fn collect(batch: &Bytes) -> Result<Vec<Bytes>, ScanError> {
        let mut out = Vec::with_capacity(100);
        let mut pos = 0;
        while pos < batch.len() {
            match read_key(batch, &mut pos)? {
                (BATCH_FIELD, WireType::Len) => {
                    let range = read_len(batch, &mut pos)?;
                    out.push(batch.slice(range));
                }
                (field, wire_type) => skip_field(batch, &mut pos, field, wire_type)?,
            }
        }
        Ok(out)
    }
}

/// Whether `use_preferred_tags` changes this encoded envelope (see the module docs). An envelope
/// that does not scan is left as it is.
pub fn needs_tag_rewrite(envelope: &[u8], use_preferred_tags: bool) -> bool {
    let wanted = if use_preferred_tags { DEPRECATED_TAGS_FIELD } else { TAGS_FIELD };
    let mut pos = 0;
    while pos < envelope.len() {
        let Ok((field, wire_type)) = read_key(envelope, &mut pos) else { return false };
        if field == wanted {
            return true;
        }
        if skip_field(envelope, &mut pos, field, wire_type).is_err() {
            return false;
        }
    }
    false
}

/// The envelope with §2.6 applied, encoded again; `None` if it does not decode (it is then sent
/// unchanged, as it was received).
pub fn rewrite_tags(envelope: &[u8], use_preferred_tags: bool) -> Option<Bytes> {
    let mut decoded = v2::Envelope::decode(envelope).ok()?;
    apply_preferred_tags(&mut decoded, use_preferred_tags);
    Some(Bytes::from(decoded.encode_to_vec()))
}

/// Applies `use_preferred_tags` to every envelope of `batch` that it changes; returns how many
/// were rewritten.
pub fn apply_to_batch(batch: &mut [Bytes], use_preferred_tags: bool) -> usize {
    let mut rewritten = 0;
    for envelope in batch.iter_mut() {
        if needs_tag_rewrite(envelope, use_preferred_tags) {
            if let Some(bytes) = rewrite_tags(envelope, use_preferred_tags) {
                *envelope = bytes;
                rewritten += 1;
            }
        }
    }
    rewritten
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggregator_proto::v2::{envelope, value, Envelope, EnvelopeBatch, Log, Value};

    fn envelope(tags: &[(&str, &str)], deprecated: &[(&str, i64)]) -> Envelope {
        Envelope {
            source_id: "app".into(),
            timestamp: 7,
            tags: tags.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            deprecated_tags: deprecated
                .iter()
                .map(|(k, v)| (k.to_string(), Value { data: Some(value::Data::Integer(*v)) }))
                .collect(),
            message: Some(envelope::Message::Log(Log { payload: bytes::Bytes::from_static(b"hi"), r#type: 0 })),
            ..Default::default()
        }
    }

    #[test]
    fn slices_are_the_envelopes_of_the_batch() {
        let envelopes = vec![envelope(&[("a", "b")], &[]), envelope(&[], &[("n", 3)])];
        let batch = Bytes::from(EnvelopeBatch { batch: envelopes.clone() }.encode_to_vec());
        let slices = EnvelopeSlices::collect(&batch).unwrap();
        let decoded: Vec<Envelope> = slices.iter().map(|s| Envelope::decode(&s[..]).unwrap()).collect();
        assert_eq!(decoded, envelopes);
        let mut cut = batch.to_vec();
        cut.pop();
        assert!(EnvelopeSlices::collect(&Bytes::from(cut)).is_err());
    }

    #[test]
    fn only_envelopes_the_option_changes_are_rewritten() {
        let plain = envelope(&[("a", "b")], &[]).encode_to_vec();
        let deprecated = envelope(&[], &[("n", 3)]).encode_to_vec();
        let none = envelope(&[], &[]).encode_to_vec();
        assert!(!needs_tag_rewrite(&plain, true));
        assert!(needs_tag_rewrite(&deprecated, true));
        assert!(needs_tag_rewrite(&plain, false));
        assert!(!needs_tag_rewrite(&deprecated, false));
        assert!(!needs_tag_rewrite(&none, true) && !needs_tag_rewrite(&none, false));
    }

    #[test]
    fn a_batch_is_rewritten_as_section_2_6_says() {
        let mut batch = vec![
            Bytes::from(envelope(&[("a", "b")], &[]).encode_to_vec()),
            Bytes::from(envelope(&[("a", "b")], &[("n", 3)]).encode_to_vec()),
        ];
        let untouched = batch[0].clone();
        assert_eq!(apply_to_batch(&mut batch, true), 1);
        // The first is the very same bytes (not re-encoded).
        assert_eq!(batch[0].as_ptr(), untouched.as_ptr());
        let second = Envelope::decode(&batch[1][..]).unwrap();
        assert!(second.deprecated_tags.is_empty());
        assert_eq!(second.tags.get("n").map(String::as_str), Some("3"));
        assert_eq!(second.tags.get("a").map(String::as_str), Some("b"));

        assert_eq!(apply_to_batch(&mut batch, false), 2);
        let first = Envelope::decode(&batch[0][..]).unwrap();
        assert!(first.tags.is_empty());
        assert_eq!(first.deprecated_tags.get("a"), Some(&Value { data: Some(value::Data::Text("b".into())) }));
    }
}
