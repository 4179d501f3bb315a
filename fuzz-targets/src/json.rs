//! Protojson (`proto::json`): decoding never panics; what decodes encodes to JSON that decodes to the
//! same JSON again; and the writer from the protobuf encoding writes exactly what the writer from the
//! decoded envelope writes, failing exactly when prost's decode fails.

use loggregator_proto::json::{
    batch_from_json, batch_to_json_string, envelope_from_json, envelope_to_json_string, meta_response_from_json,
    meta_response_to_json, read_response_from_json, read_response_to_json, write_envelope_json, EncodedEnvelopeJson,
};
use loggregator_proto::v2;
use prost::Message as _;

use crate::split;

/// Option bit 0 clear: the payload is JSON text; set: it is an encoded v2 envelope.
pub fn fuzz(data: &[u8]) {
    let payload = split::payload(data);
    if split::options(data) & 1 == 0 {
        if let Ok(text) = std::str::from_utf8(payload) {
            json_text(text);
        }
    } else {
        encoded(payload);
    }
}

fn json_text(text: &str) {
    if let Ok(envelope) = envelope_from_json(text) {
        let json = envelope_to_json_string(&envelope);
        let again = envelope_from_json(&json).expect("an envelope's own JSON decodes");
        assert_eq!(envelope_to_json_string(&again), json, "envelope JSON round trip");
        writers_agree(&envelope);
    }
    if let Ok(batch) = batch_from_json(text) {
        let json = batch_to_json_string(&batch);
        let again = batch_from_json(&json).expect("a batch's own JSON decodes");
        assert_eq!(batch_to_json_string(&again), json, "batch JSON round trip");
    }
    if let Ok(response) = read_response_from_json(text) {
        let json = read_response_to_json(&response);
        let again = read_response_from_json(&json).expect("a ReadResponse's own JSON decodes");
        assert_eq!(read_response_to_json(&again), json, "ReadResponse JSON round trip");
    }
    if let Ok(response) = meta_response_from_json(text) {
        let json = meta_response_to_json(&response);
        let again = meta_response_from_json(&json).expect("a MetaResponse's own JSON decodes");
        assert_eq!(meta_response_to_json(&again), json, "MetaResponse JSON round trip");
    }
}

/// Both writers on an envelope that prost can encode.
fn writers_agree(envelope: &v2::Envelope) {
    let mut from_decoded = Vec::new();
    write_envelope_json(&mut from_decoded, envelope);
    let mut from_encoded = Vec::new();
    EncodedEnvelopeJson::default()
        .write(&mut from_encoded, &envelope.encode_to_vec())
        .expect("the encoded writer refused prost's own encoding");
    assert_eq!(
        String::from_utf8_lossy(&from_encoded),
        String::from_utf8_lossy(&from_decoded),
        "the two writers disagree"
    );
}

fn encoded(bytes: &[u8]) {
    let mut out = b"kept".to_vec();
    let written = EncodedEnvelopeJson::default().write(&mut out, bytes);
    match v2::Envelope::decode(bytes) {
        Ok(envelope) => {
            assert!(written.is_ok(), "the encoded writer refused what prost decodes: {written:?}");
            let mut reference = b"kept".to_vec();
            write_envelope_json(&mut reference, &envelope);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(&reference), "the two writers disagree");
            let text = std::str::from_utf8(&out[4..]).expect("protojson is UTF-8");
            let again = envelope_from_json(text).expect("an envelope's own JSON decodes");
            assert_eq!(envelope_to_json_string(&again), text, "envelope JSON round trip");
        }
        Err(error) => {
            assert!(written.is_err(), "the encoded writer accepted what prost refuses ({error})");
            assert_eq!(out, b"kept", "a failing writer left output behind");
        }
    }
}
