use super::*;
use crate::raw::EncodedBatch;
use crate::v2::{self, envelope::Message, Envelope, EnvelopeBatch};
use proptest::prelude::*;
use prost::Message as _;
use std::collections::HashMap;

fn gauge(keys: &[&str]) -> Message {
    Message::Gauge(v2::Gauge {
        metrics: keys.iter().map(|k| (k.to_string(), v2::GaugeValue { unit: "u".into(), value: 1.5 })).collect(),
    })
}

fn encode_batch(envelopes: &[Envelope]) -> Bytes {
    Bytes::from(EnvelopeBatch { batch: envelopes.to_vec() }.encode_to_vec())
}

#[test]
fn extracts_the_routing_key_of_each_type() {
    let counter = Envelope {
        timestamp: 99,
        source_id: "app-1".into(),
        instance_id: "3".into(),
        message: Some(Message::Counter(v2::Counter { name: "requests".into(), delta: 1, total: 5 })),
        ..Default::default()
    };
    let log = Envelope {
        source_id: "app-2".into(),
        tags: HashMap::from([("a".into(), "b".into())]),
        message: Some(Message::Log(v2::Log { payload: Bytes::from_static(b"hi"), r#type: 1 })),
        ..Default::default()
    };
    let g = Envelope { source_id: "s".into(), message: Some(gauge(&["cpu", "memory"])), ..Default::default() };
    let timer = Envelope {
        message: Some(Message::Timer(v2::Timer { name: "http".into(), start: 1, stop: 2 })),
        ..Default::default()
    };
    let event = Envelope { message: Some(Message::Event(v2::Event::default())), ..Default::default() };
    let none = Envelope::default();
    let scanned = BatchScanner::collect_all(encode_batch(&[counter, log, g, timer, event, none])).unwrap();
    assert_eq!(scanned.len(), 6);

    assert_eq!(scanned[0].meta.timestamp, 99);
    assert_eq!(scanned[0].source_id(), "app-1");
    assert_eq!(scanned[0].instance_id(), "3");
    assert_eq!(scanned[0].meta.kind, Some(EnvelopeKind::Counter));
    assert_eq!(scanned[0].name(), "requests");

    assert_eq!(scanned[1].meta.kind, Some(EnvelopeKind::Log));
    assert!(scanned[1].meta.has_tags);
    assert!(!scanned[1].meta.has_deprecated_tags);

    assert_eq!(scanned[2].meta.kind, Some(EnvelopeKind::Gauge));
    assert_eq!(scanned[2].meta.gauge_key_count, 2);
    assert_eq!(scanned[2].meta.gauge_keys_hash, crc64_ecma(b"cpu").wrapping_add(crc64_ecma(b"memory")));

    assert_eq!(scanned[3].meta.kind, Some(EnvelopeKind::Timer));
    assert_eq!(scanned[3].name(), "http");
    assert_eq!(scanned[4].meta.kind, Some(EnvelopeKind::Event));
    assert_eq!(scanned[5].meta.kind, None);
}

#[test]
fn crc64_matches_go_ecma_checksum() {
    // Go: crc64.Checksum([]byte("123456789"), crc64.MakeTable(crc64.ECMA)) == 0x995dc9bbdf1939fa
    assert_eq!(crc64_ecma(b"123456789"), 0x995d_c9bb_df19_39fa);
}

#[test]
fn scanned_slices_are_views_of_the_input_not_copies() {
    let input = encode_batch(&[Envelope { source_id: "x".into(), ..Default::default() }]);
    let scanned = BatchScanner::collect_all(input.clone()).unwrap();
    let start = input.as_ptr() as usize;
    let slice = scanned[0].bytes.as_ptr() as usize;
    assert!(slice >= start && slice < start + input.len());
}

#[test]
fn repeated_oneof_members_follow_prost_merge_rules() {
    // counter{name:"a"} then counter{delta:1} merges (name stays "a"); then gauge replaces it.
    let mut bytes = Vec::new();
    Envelope {
        message: Some(Message::Counter(v2::Counter { name: "a".into(), ..Default::default() })),
        ..Default::default()
    }
    .encode(&mut bytes)
    .unwrap();
    Envelope { message: Some(Message::Counter(v2::Counter { delta: 1, ..Default::default() })), ..Default::default() }
        .encode(&mut bytes)
        .unwrap();
    let meta = scan_envelope(&bytes).unwrap();
    let decoded = Envelope::decode(&bytes[..]).unwrap();
    let Some(Message::Counter(c)) = decoded.message else { panic!("prost decoded a counter") };
    assert_eq!(meta.kind, Some(EnvelopeKind::Counter));
    assert_eq!(&bytes[meta.name.start as usize..meta.name.end as usize], c.name.as_bytes());

    Envelope { message: Some(gauge(&["k"])), ..Default::default() }.encode(&mut bytes).unwrap();
    let meta = scan_envelope(&bytes).unwrap();
    assert_eq!(meta.kind, Some(EnvelopeKind::Gauge));
    assert_eq!(meta.name, 0..0);
    assert_eq!(meta.gauge_key_count, 1);
}

#[test]
fn duplicate_gauge_keys_count_once_as_in_a_map() {
    let mut bytes = Vec::new();
    Envelope { message: Some(gauge(&["cpu"])), ..Default::default() }.encode(&mut bytes).unwrap();
    Envelope { message: Some(gauge(&["cpu", "disk"])), ..Default::default() }.encode(&mut bytes).unwrap();
    let meta = scan_envelope(&bytes).unwrap();
    assert_eq!(meta.gauge_key_count, 2);
    assert_eq!(meta.gauge_keys_hash, crc64_ecma(b"cpu").wrapping_add(crc64_ecma(b"disk")));
}

#[test]
fn malformed_input_is_an_error_not_a_panic() {
    // batch field with a length past the end
    assert_eq!(BatchScanner::collect_all(Bytes::from_static(&[0x0a, 0x05, 0x08])), Err(ScanError::Truncated));
    // batch field with the wrong wire type
    assert_eq!(BatchScanner::collect_all(Bytes::from_static(&[0x08, 0x01])), Err(ScanError::WrongWireType));
    // timestamp (field 1) sent as length-delimited
    assert_eq!(BatchScanner::collect_all(Bytes::from_static(&[0x0a, 0x02, 0x0a, 0x00])), Err(ScanError::WrongWireType));
    // source_id that is not UTF-8
    assert_eq!(
        BatchScanner::collect_all(Bytes::from_static(&[0x0a, 0x03, 0x12, 0x01, 0xff])),
        Err(ScanError::InvalidUtf8)
    );
    // field number zero
    assert_eq!(BatchScanner::collect_all(Bytes::from_static(&[0x02, 0x00])), Err(ScanError::InvalidKey));
    // a group bomb inside an envelope
    let mut bomb = vec![0x0a];
    let inner = vec![(15u8 << 3) | 3; 200];
    bomb.push(inner.len() as u8 | 0x80);
    bomb.push((inner.len() >> 7) as u8);
    bomb.extend_from_slice(&inner);
    assert_eq!(BatchScanner::collect_all(Bytes::from(bomb)), Err(ScanError::TooDeep));
}

#[test]
fn one_byte_key_fast_path_agrees_with_the_general_key_decode() {
    // The same envelope with canonical one-byte keys and with over-long two-byte keys (legal varints
    // that the fast path does not recognise): timestamp 5, source id "ab", one tag, a log.
    let canonical = [0x08, 0x05, 0x12, 0x02, b'a', b'b', 0x4a, 0x04, 0x0a, 0x00, 0x12, 0x00, 0x22, 0x00];
    let overlong =
        [0x88, 0x00, 0x05, 0x92, 0x00, 0x02, b'a', b'b', 0xca, 0x00, 0x04, 0x0a, 0x00, 0x12, 0x00, 0xa2, 0x00, 0x00];
    let a = scan_envelope(&canonical).unwrap();
    let b = scan_envelope(&overlong).unwrap();
    assert_eq!((a.timestamp, a.kind, a.has_tags), (5, Some(EnvelopeKind::Log), true));
    assert_eq!((b.timestamp, b.kind, b.has_tags), (a.timestamp, a.kind, a.has_tags));
    let a = RawEnvelope { bytes: Bytes::copy_from_slice(&canonical), meta: a };
    let b = RawEnvelope { bytes: Bytes::copy_from_slice(&overlong), meta: b };
    assert_eq!((a.source_id(), b.source_id()), ("ab", "ab"));
    // A one-byte key of a known field with the wrong wire type still fails: source id as a varint,
    // tags as fixed32.
    assert_eq!(scan_envelope(&[0x10, 0x01]), Err(ScanError::WrongWireType));
    assert_eq!(scan_envelope(&[0x4d, 0, 0, 0, 0]), Err(ScanError::WrongWireType));
    // A truncated tag entry is truncation, not a silent skip.
    assert_eq!(scan_envelope(&[0x4a, 0x05, 0x00]), Err(ScanError::Truncated));
}

// === property tests ===

fn arb_string() -> impl Strategy<Value = String> {
    prop_oneof![Just(String::new()), "[a-z0-9/_-]{1,12}", "\\PC{0,6}"]
}

fn arb_value() -> impl Strategy<Value = v2::Value> {
    prop_oneof![
        arb_string().prop_map(v2::value::Data::Text),
        any::<i64>().prop_map(v2::value::Data::Integer),
        any::<f64>().prop_map(v2::value::Data::Decimal),
    ]
    .prop_map(|d| v2::Value { data: Some(d) })
}

fn arb_message() -> impl Strategy<Value = Option<Message>> {
    prop_oneof![
        Just(None),
        (proptest::collection::vec(any::<u8>(), 0..64), 0..2i32)
            .prop_map(|(p, t)| Some(Message::Log(v2::Log { payload: Bytes::from(p), r#type: t }))),
        (arb_string(), any::<u64>(), any::<u64>())
            .prop_map(|(name, delta, total)| Some(Message::Counter(v2::Counter { name, delta, total }))),
        proptest::collection::hash_map(arb_string(), (arb_string(), any::<f64>()), 0..5).prop_map(|m| {
            Some(Message::Gauge(v2::Gauge {
                metrics: m.into_iter().map(|(k, (unit, value))| (k, v2::GaugeValue { unit, value })).collect(),
            }))
        }),
        (arb_string(), any::<i64>(), any::<i64>()).prop_map(|(name, start, stop)| Some(Message::Timer(v2::Timer {
            name,
            start,
            stop
        }))),
        (arb_string(), arb_string()).prop_map(|(title, body)| Some(Message::Event(v2::Event { title, body }))),
    ]
}

fn arb_envelope() -> impl Strategy<Value = Envelope> {
    (
        any::<i64>(),
        arb_string(),
        arb_string(),
        proptest::collection::hash_map(arb_string(), arb_value(), 0..3),
        proptest::collection::hash_map(arb_string(), arb_string(), 0..9),
        arb_message(),
    )
        .prop_map(|(timestamp, source_id, instance_id, deprecated_tags, tags, message)| Envelope {
            timestamp,
            source_id,
            instance_id,
            deprecated_tags,
            tags,
            message,
        })
}

/// Unknown fields of every wire type, appended to an encoded envelope.
fn arb_unknown_fields() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec((11u32..2000, 0..4u8, any::<u64>(), proptest::collection::vec(any::<u8>(), 0..8)), 0..3)
        .prop_map(|fields| {
            let mut out = Vec::new();
            for (field, kind, number, bytes) in fields {
                match kind {
                    0 => {
                        prost::encoding::encode_key(field, prost::encoding::WireType::Varint, &mut out);
                        prost::encoding::encode_varint(number, &mut out);
                    }
                    1 => {
                        prost::encoding::encode_key(field, prost::encoding::WireType::SixtyFourBit, &mut out);
                        out.extend_from_slice(&number.to_le_bytes());
                    }
                    2 => {
                        prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, &mut out);
                        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
                        out.extend_from_slice(&bytes);
                    }
                    _ => {
                        prost::encoding::encode_key(field, prost::encoding::WireType::ThirtyTwoBit, &mut out);
                        out.extend_from_slice(&(number as u32).to_le_bytes());
                    }
                }
            }
            out
        })
}

fn expected_meta(e: &Envelope) -> (Option<EnvelopeKind>, String, u64, u32) {
    match &e.message {
        None => (None, String::new(), 0, 0),
        Some(Message::Log(_)) => (Some(EnvelopeKind::Log), String::new(), 0, 0),
        Some(Message::Event(_)) => (Some(EnvelopeKind::Event), String::new(), 0, 0),
        Some(Message::Counter(c)) => (Some(EnvelopeKind::Counter), c.name.clone(), 0, 0),
        Some(Message::Timer(t)) => (Some(EnvelopeKind::Timer), t.name.clone(), 0, 0),
        Some(Message::Gauge(g)) => {
            let hash = g.metrics.keys().fold(0u64, |acc, k| acc.wrapping_add(crc64_ecma(k.as_bytes())));
            (Some(EnvelopeKind::Gauge), String::new(), hash, g.metrics.len() as u32)
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn scanner_and_encoder_agree_with_prost(
        envelopes in proptest::collection::vec((arb_envelope(), arb_unknown_fields()), 0..6)
    ) {
        // Encode each envelope (plus unknown fields) as a batch member by hand.
        let mut input = Vec::new();
        for (envelope, unknown) in &envelopes {
            let mut bytes = envelope.encode_to_vec();
            bytes.extend_from_slice(unknown);
            prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut input);
            prost::encoding::encode_varint(bytes.len() as u64, &mut input);
            input.extend_from_slice(&bytes);
        }
        let input = Bytes::from(input);
        let decoded = EnvelopeBatch::decode(input.clone()).expect("prost decodes what it encoded");
        let scanned = BatchScanner::collect_all(input.clone()).expect("scanner accepts valid input");
        prop_assert_eq!(scanned.len(), decoded.batch.len());

        let mut reassembled = EncodedBatch::default();
        for (raw, full) in scanned.iter().zip(&decoded.batch) {
            prop_assert_eq!(&Envelope::decode(raw.bytes.clone()).unwrap(), full);
            prop_assert_eq!(raw.meta.timestamp, full.timestamp);
            prop_assert_eq!(raw.source_id(), full.source_id.as_str());
            prop_assert_eq!(raw.instance_id(), full.instance_id.as_str());
            prop_assert_eq!(raw.meta.has_tags, !full.tags.is_empty());
            prop_assert_eq!(raw.meta.has_deprecated_tags, !full.deprecated_tags.is_empty());
            let (kind, name, hash, count) = expected_meta(full);
            prop_assert_eq!(raw.meta.kind, kind);
            prop_assert_eq!(raw.name(), name.as_str());
            prop_assert_eq!(raw.meta.gauge_keys_hash, hash);
            prop_assert_eq!(raw.meta.gauge_key_count, count);
            reassembled.push(raw.bytes.clone());
        }
        // Re-assembly from slices reproduces the input byte for byte (no re-encoding).
        prop_assert_eq!(reassembled.to_bytes(), input);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = BatchScanner::collect_all(Bytes::from(bytes.clone()));
        let _ = scan_envelope(&bytes);
    }

    #[test]
    fn truncated_batches_never_panic(envelopes in proptest::collection::vec(arb_envelope(), 1..4), cut in any::<prop::sample::Index>()) {
        let input = encode_batch(&envelopes);
        let cut = cut.index(input.len());
        let scanned: Vec<_> = BatchScanner::new(input.slice(..cut)).collect();
        prop_assert!(scanned.len() <= envelopes.len());
    }
}

/// Issue 15 gap 1: a gauge of 300,000 distinct keys (6 MB, under the 10 MiB message limit) scans in
/// time linear in its size. With a linear search per key it made 4.5·10^10 comparisons (minutes);
/// the deadline is hundreds of times what a linear scan needs even in a debug build.
#[test]
fn a_gauge_of_many_distinct_keys_scans_in_linear_time() {
    let keys: Vec<String> = (0..300_000).map(|i| format!("k{i:07}")).collect();
    let refs: Vec<&str> = keys.iter().map(String::as_str).collect();
    let mut bytes = Vec::new();
    Envelope { source_id: "s".into(), message: Some(gauge(&refs)), ..Default::default() }.encode(&mut bytes).unwrap();
    // A repeated key still counts once, also past the inline keys.
    Envelope { message: Some(gauge(&["k0000017", "k0299999", "new"])), ..Default::default() }
        .encode(&mut bytes)
        .unwrap();
    let started = std::time::Instant::now();
    let meta = scan_envelope(&bytes).unwrap();
    let took = started.elapsed();
    assert_eq!(meta.gauge_key_count, 300_001);
    let hash = keys.iter().fold(crc64_ecma(b"new"), |h, k| h.wrapping_add(crc64_ecma(k.as_bytes())));
    assert_eq!(meta.gauge_keys_hash, hash);
    assert!(took < std::time::Duration::from_secs(10), "scan took {took:?}");
}
