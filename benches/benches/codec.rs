//! Codec: the zero-copy scanner against a full prost decode, batch re-assembly from scanned slices
//! against a prost encode, the protojson encoding of a batch, and the v2 → v1 conversion of the
//! traffic controller's WebSockets (straight from the encoding against decode + `to_v1` + encode).
//!
//! Input: one `EnvelopeBatch` of 100 log envelopes, each with 8 tags and a 200-byte payload.

use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loggregator_proto::raw::EncodedBatch;
use loggregator_proto::v2::EnvelopeBatch;
use loggregator_proto::BatchScanner;
use prost::Message;

use benches::workload::{envelope, now_nanos, Kind, Shape};

const BATCH: usize = 100;

fn batch() -> EnvelopeBatch {
    let shape = Shape { payload_bytes: 200, tags: 8 };
    let now = now_nanos();
    EnvelopeBatch {
        batch: (0..BATCH).map(|i| envelope(Kind::Log, &format!("source-{}", i % 10), i as u32, now, &shape)).collect(),
    }
}

fn decode(c: &mut Criterion) {
    let encoded = Bytes::from(batch().encode_to_vec());
    let mut group = c.benchmark_group("codec/decode_batch_100x8tags_200B");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("scanner", |b| {
        b.iter_batched(
            || encoded.clone(),
            |input| {
                let mut n = 0usize;
                for envelope in BatchScanner::new(input) {
                    let envelope = envelope.expect("valid batch");
                    n += envelope.source_id().len();
                    black_box(&envelope);
                }
                n
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("prost_decode", |b| {
        b.iter_batched(
            || encoded.clone(),
            |input| EnvelopeBatch::decode(input).expect("valid batch"),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn encode(c: &mut Criterion) {
    let decoded = batch();
    let encoded = Bytes::from(decoded.encode_to_vec());
    let scanned = EncodedBatch {
        envelopes: BatchScanner::collect_all(encoded.clone())
            .expect("valid batch")
            .into_iter()
            .map(|e| e.bytes)
            .collect(),
    };
    let mut group = c.benchmark_group("codec/encode_batch_100x8tags_200B");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("reassemble_scanned_slices", |b| {
        let mut out = Vec::with_capacity(encoded.len());
        b.iter(|| {
            out.clear();
            scanned.encode_raw(&mut out);
            black_box(out.len())
        })
    });
    group.bench_function("reassemble_from_scan", |b| {
        // The Doppler's whole path: scan the received batch, then re-assemble an egress batch.
        let mut out = Vec::with_capacity(encoded.len());
        b.iter_batched(
            || encoded.clone(),
            |input| {
                let batch = EncodedBatch {
                    envelopes: BatchScanner::new(input).map(|e| e.expect("valid batch").bytes).collect(),
                };
                out.clear();
                batch.encode_raw(&mut out);
                out.len()
            },
            BatchSize::SmallInput,
        )
    });
    group.bench_function("prost_encode", |b| {
        let mut out = Vec::with_capacity(encoded.len());
        b.iter(|| {
            out.clear();
            decoded.encode(&mut out).expect("a Vec grows");
            black_box(out.len())
        })
    });
    group.bench_function("protojson_encode", |b| {
        let mut out = Vec::with_capacity(4 * encoded.len());
        b.iter(|| {
            out.clear();
            loggregator_proto::json::write_batch_json(&mut out, &decoded);
            black_box(out.len())
        })
    });
    group.finish();
}

fn to_v1(c: &mut Criterion) {
    let envelopes: Vec<Bytes> = batch().batch.iter().map(|e| Bytes::from(e.encode_to_vec())).collect();
    let mut group = c.benchmark_group("codec/to_v1_100x8tags_200B");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("decode_convert_encode", |b| {
        b.iter(|| {
            let mut frames = 0;
            for encoded in &envelopes {
                let decoded = loggregator_proto::v2::Envelope::decode(&encoded[..]).expect("decodes");
                for v1 in loggregator_proto::convert::to_v1(&decoded) {
                    frames += Bytes::from(v1.encode_to_vec()).len();
                }
            }
            black_box(frames)
        })
    });
    group.bench_function("from_encoding", |b| {
        let mut writer = loggregator_proto::v1_encoded::V1Writer::default();
        let mut out = bytes::BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            let mut frames = 0;
            for encoded in &envelopes {
                if out.capacity() < 4096 {
                    out.reserve(1 << 16);
                }
                writer.write(encoded, &mut out).expect("a log");
                frames += out.split().freeze().len();
            }
            black_box(frames)
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30)
}

criterion_group! {
    name = codec;
    config = config();
    targets = decode, encode, to_v1
}
criterion_main!(codec);
