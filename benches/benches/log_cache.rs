//! Log Cache: store write into a full source, a nozzle batch of 100 envelopes over 100 sources, a
//! 5-minute range read of 1000 envelopes, the JSON body of an HTTP read of 100 envelopes, meta over
//! 10k sources, and a PromQL `rate()` over 10k points (issue 5; the original measures ~19 µs per
//! write and ~980 µs per 5-minute read on this machine type).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use log_cache::promql::{Engine, MetricSource};
use log_cache::store::{ReadFilter, StoreLimits, TypeSet};
use log_cache::Store;
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{self, envelope::Message, Envelope};
use loggregator_proto::{BatchScanner, RawEnvelope};

use benches::workload::{self, BatchTemplate, Kind, Shape};

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

/// 100 sources of 1000 envelopes each, every source full (`max_per_source` 1000), and templates of
/// nozzle batches holding one envelope of each source (8 tags, 200-byte payload), each template with
/// the sources in another order: a Doppler's batches interleave sources as their envelopes arrived,
/// and a fixed order would favour whichever insert order matches the order the store was filled in.
fn full_sources_and_batches() -> (Store, Vec<BatchTemplate>, i64) {
    let store = Store::new(StoreLimits { max_per_source: PER_SOURCE as usize, memory_limit_bytes: 8 << 30 });
    let start = workload::now_nanos();
    let templates = batch_templates("6f1c2a44-0000-4000-8000-", start);
    fill(&store, &templates, start);
    (store, templates, start + PER_SOURCE)
}

const SOURCES: usize = 100;
const PER_SOURCE: i64 = 1000;

/// Batch templates over `SOURCES` source ids starting with `prefix`, in 16 orders.
fn batch_templates(prefix: &str, timestamp: i64) -> Vec<BatchTemplate> {
    const ORDERS: usize = 16;
    let shape = Shape { payload_bytes: 200, tags: 8 };
    let mut sources: Vec<String> = (0..SOURCES).map(|s| format!("{prefix}{s:012}")).collect();
    let mut rng = fastrand::Rng::with_seed(5);
    (0..ORDERS)
        .map(|_| {
            rng.shuffle(&mut sources);
            let envelopes: Vec<Envelope> = sources
                .iter()
                .enumerate()
                .map(|(i, source)| workload::envelope(Kind::Log, source, i as u32 % 8, timestamp, &shape))
                .collect();
            BatchTemplate::new(&envelopes)
        })
        .collect()
}

/// Fills every source of the templates up to `PER_SOURCE` envelopes, timestamps from `start`.
fn fill(store: &Store, templates: &[BatchTemplate], start: i64) {
    for i in 0..PER_SOURCE {
        for envelope in scan(templates, start + i) {
            store.insert(&envelope);
        }
    }
}

/// The batch stamped `timestamp`, in the order of the template that timestamp picks.
fn scan(templates: &[BatchTemplate], timestamp: i64) -> Vec<RawEnvelope> {
    let template = &templates[timestamp as usize % templates.len()];
    BatchScanner::collect_all(template.stamp(timestamp).to_bytes()).expect("valid batch")
}

/// The nozzle's unit of work: one received batch of 100 envelopes, one per source, into sources that
/// are full (each insert evicts that source's oldest). Inputs are scanned outside the timing, right
/// before each iteration (`PerIteration`): the nozzle inserts a batch it has just scanned, still in
/// cache, where `SmallInput` would prepare thousands of batches ahead and time cache misses.
fn write_batch(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_cache/store/insert_batch_of_100_envelopes_over_100_sources");
    group.throughput(Throughput::Elements(100)).measurement_time(Duration::from_secs(3)).sample_size(30);
    let (store, templates, mut t) = full_sources_and_batches();
    group.bench_function("one_by_one", |b| {
        b.iter_batched(
            || {
                t += 1;
                scan(&templates, t)
            },
            |batch| {
                for envelope in &batch {
                    store.insert(black_box(envelope));
                }
                batch
            },
            BatchSize::PerIteration,
        )
    });
    group.bench_function("insert_batch", |b| {
        b.iter_batched(
            || {
                t += 1;
                scan(&templates, t)
            },
            |batch| {
                store.insert_batch(black_box(&batch));
                batch
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

/// The same batches into a store held at its memory cap, as a busy log-cache runs: sources are not
/// full, inserts append, and every ~1 % of the cap the inserting thread prunes the globally oldest.
fn write_batch_at_memory_cap(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_cache/store/insert_batch_of_100_envelopes_over_100_sources_at_memory_cap");
    group.throughput(Throughput::Elements(100)).measurement_time(Duration::from_secs(3)).sample_size(30);
    let store = Store::new(StoreLimits { max_per_source: 100_000, memory_limit_bytes: 64 << 20 });
    let mut t = workload::now_nanos();
    let templates = batch_templates("6f1c2a44-0000-4000-8000-", t);
    while store.stats().pruned_by_memory.get() == 0 {
        t += 1;
        store.insert_batch(&scan(&templates, t));
    }
    for batched in [false, true] {
        let name = if batched { "insert_batch" } else { "one_by_one" };
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    t += 1;
                    scan(&templates, t)
                },
                |batch| {
                    if batched {
                        store.insert_batch(black_box(&batch));
                    } else {
                        for envelope in &batch {
                            store.insert(black_box(envelope));
                        }
                    }
                    batch
                },
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// Two nozzles (two Dopplers) feeding one store from two threads, each its own 100 full sources:
/// where per-envelope atomics (counters, accounting, shard locks) bounce between the cores. One
/// iteration is one batch from each writer, scanned inside the timing (the same work either way).
fn write_batch_two_writers(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_cache/store/insert_batch_of_100_envelopes_over_100_sources_two_writers");
    group.throughput(Throughput::Elements(200)).measurement_time(Duration::from_secs(3)).sample_size(30);
    let store = Store::new(StoreLimits { max_per_source: PER_SOURCE as usize, memory_limit_bytes: 8 << 30 });
    let start = workload::now_nanos();
    let writers =
        [batch_templates("6f1c2a44-0000-4000-8000-", start), batch_templates("0b3d9e77-0000-4000-8000-", start)];
    for templates in &writers {
        fill(&store, templates, start);
    }
    let mut t = start + PER_SOURCE;
    for batched in [false, true] {
        let name = if batched { "insert_batch" } else { "one_by_one" };
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let first = t;
                t += iters as i64;
                let began = Instant::now();
                std::thread::scope(|scope| {
                    for templates in &writers {
                        let store = &store;
                        scope.spawn(move || {
                            for i in 0..iters as i64 {
                                let batch = scan(templates, first + i + 1);
                                if batched {
                                    store.insert_batch(black_box(&batch));
                                } else {
                                    for envelope in &batch {
                                        store.insert(black_box(envelope));
                                    }
                                }
                            }
                        });
                    }
                });
                began.elapsed()
            })
        });
    }
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

/// The body of `GET /api/v1/read` for 100 stored log envelopes (8 tags, 200-byte payload): what the
/// gateway spends per read on top of the store read (`git show 0a113bb:BENCHMARKS.md`, §4.2).
fn read_json(c: &mut Criterion) {
    let mut group = c.benchmark_group("log_cache/read_json_100_envelopes");
    group.throughput(Throughput::Elements(100)).measurement_time(Duration::from_secs(3)).sample_size(30);
    let encoded: Vec<Bytes> = (0..100).map(|i| log(i * SECOND).bytes).collect();
    group.bench_function("decode_then_write", |b| {
        b.iter(|| {
            let response = loggregator_proto::logcache::v1::ReadResponse {
                envelopes: Some(v2::EnvelopeBatch { batch: log_cache::service::decode_all(black_box(&encoded)) }),
            };
            loggregator_proto::json::read_response_to_json(&response).len()
        })
    });
    // As the gateway does: one buffer per response, sized from the encoded lengths.
    let encoded_len: usize = encoded.iter().map(|e| e.len()).sum();
    group.bench_function("direct_from_encoded", |b| {
        b.iter(|| {
            let mut body = Vec::with_capacity(64 + encoded_len * 2);
            loggregator_proto::json::write_read_response_json_from_encoded(&mut body, black_box(&encoded));
            body.len()
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
    fn read_metric_envelopes(&self, source_id: &str, start_ns: i64, end_ns: i64, _max: usize) -> Vec<Bytes> {
        self.0.metric_envelopes(source_id, start_ns, end_ns)
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

criterion_group!(
    benches,
    write,
    write_batch,
    write_batch_at_memory_cap,
    write_batch_two_writers,
    read,
    read_json,
    meta,
    promql_rate
);
criterion_main!(benches);
