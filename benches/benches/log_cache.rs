//! Log Cache: store write into a full source, a 5-minute range read of 1000 envelopes, meta over 10k
//! sources, and a PromQL `rate()` over 10k points (issue 5; the original measures ~19 µs per write
//! and ~980 µs per 5-minute read on this machine type).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use log_cache::promql::{Engine, MetricSource};
use log_cache::store::{ReadFilter, StoreLimits, TypeSet};
use log_cache::Store;
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{self, envelope::Message, Envelope};
use loggregator_proto::RawEnvelope;

const SECOND: i64 = 1_000_000_000;
const SOURCE: &str = "6f1c2a44-0000-4000-8000-000000000001";

fn log(timestamp: i64) -> RawEnvelope {
    let envelope = Envelope {
        timestamp,
        source_id: SOURCE.into(),
        instance_id: "0".into(),
        tags: (0..8).map(|i| (format!("tag{i}"), format!("value-{i}"))).collect(),
        message: Some(Message::Log(v2::Log { payload: Bytes::from(vec![b'x'; 200]), r#type: 0 })),
        ..Default::default()
    };
    RawEnvelope::scan(Bytes::from(envelope.encode_to_vec())).expect("valid envelope")
}

fn counter(source: &str, timestamp: i64, total: u64) -> RawEnvelope {
    let envelope = Envelope {
        timestamp,
        source_id: source.into(),
        message: Some(Message::Counter(v2::Counter { name: "requests".into(), delta: 1, total })),
        ..Default::default()
    };
    RawEnvelope::scan(Bytes::from(envelope.encode_to_vec())).expect("valid envelope")
}

fn limits() -> StoreLimits {
    StoreLimits { max_per_source: 100_000, memory_limit_bytes: 8 << 30 }
}

/// One source of 100k envelopes, one every 300 ms: a 5-minute window holds 1000 of them.
fn full_source() -> Store {
    let store = Store::new(limits());
    for i in 0..100_000 {
        store.insert(&log(i * 300_000_000));
    }
    store
}

fn write(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_cache/store");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(3)).sample_size(30);
    let store = full_source();
    let mut t = 100_000 * 300_000_000;
    group.bench_function("write_into_full_source_of_100k", |b| {
        b.iter_batched(
            || {
                t += 300_000_000;
                log(t)
            },
            |envelope| store.insert(black_box(&envelope)),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

fn read(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_cache/store");
    group.throughput(Throughput::Elements(1000)).measurement_time(Duration::from_secs(3)).sample_size(30);
    let store = full_source();
    let start = 50_000 * 300_000_000;
    let filter = ReadFilter {
        start,
        end: start + 300 * SECOND,
        limit: 1000,
        descending: false,
        types: TypeSet::from_request(&[]),
        name: None,
    };
    group.bench_function("read_5_minutes_1000_envelopes", |b| {
        b.iter(|| {
            let got = store.read(SOURCE, black_box(&filter));
            assert_eq!(got.len(), 1000);
            got
        })
    });
    group.finish();
}

fn meta(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_cache/store");
    group.throughput(Throughput::Elements(10_000)).measurement_time(Duration::from_secs(3)).sample_size(20);
    let store = Store::new(limits());
    for s in 0..10_000 {
        let source = format!("source-{s}");
        for i in 0..10 {
            store.insert(&counter(&source, i * SECOND, i as u64));
        }
    }
    group.bench_function("meta_10k_sources", |b| b.iter(|| black_box(store.meta()).len()));
    group.finish();
}

/// The local data path the engine uses in production: stored bytes, decoded for the query.
struct StoreSource(Arc<Store>);

impl MetricSource for StoreSource {
    fn read_metric_envelopes(&self, source_id: &str, start_ns: i64, end_ns: i64) -> Vec<Envelope> {
        self.0
            .metric_envelopes(source_id, start_ns, end_ns)
            .iter()
            .filter_map(|bytes| Envelope::decode(bytes.clone()).ok())
            .collect()
    }
}

fn promql_rate(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_cache/promql");
    group.throughput(Throughput::Elements(10_000)).measurement_time(Duration::from_secs(3)).sample_size(20);
    let store = Arc::new(Store::new(limits()));
    // 10k points, one a second, all inside the queried range.
    let base = 1_700_000_000 * SECOND;
    for i in 0..10_000 {
        store.insert(&counter(SOURCE, base + i * SECOND, i as u64 * 3));
    }
    let engine = Engine::new(Arc::new(StoreSource(store)), Duration::from_secs(10), 50_000_000);
    let query = format!("rate(requests{{source_id=\"{SOURCE}\"}}[3h])");
    let time = format!("{}", 1_700_000_000 + 10_000);
    group.bench_function("rate_over_10k_points", |b| {
        b.iter(|| engine.instant_query(black_box(&query), &time).expect("query succeeds"))
    });
    group.finish();
}

criterion_group!(benches, write, read, meta, promql_rate);
criterion_main!(benches);
