//! Router: routing one envelope among 100k subscriptions over 20k source ids (the original's
//! `BenchmarkDopplerRouter`), and fan-out of a 100-envelope batch to 1, 10 and 100 subscribers.
//!
//! The original's setup (router/internal/server/v2/pubsub_benchmark_test.go): 100,000 log selectors
//! with source ids `i % 20000`, no shard id; 100 log envelopes with source ids 0..99 and 10-byte
//! payloads published in turn, each reaching 5 subscriptions. `Router::subscribe` rebuilds the
//! table per call (O(n) each), so 100k separate subscribe calls would take minutes: here the 100k
//! selectors belong to 5 subscriptions of 20k selectors each, which gives the same table (20k
//! source ids, 5 members per group) and the same work per envelope (5 diode pushes).

use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use loggregator_proto::v2::{self, selector, LogSelector, Selector};
use loggregator_proto::{BatchScanner, RawEnvelope};
use plumbing::{Counter, Diode};
use prost::Message;

use doppler::router::{Staging, Subscriber, SubscriptionSpec};
use doppler::Router;

fn log_selector(source_id: String) -> Selector {
    Selector { source_id, message: Some(selector::Message::Log(LogSelector {})) }
}

fn subscriber(capacity: usize) -> Arc<Subscriber> {
    Arc::new(Subscriber::new(Diode::new(NonZeroUsize::new(capacity).expect("non-zero")), Counter::default()))
}

fn log_envelope(source_id: String, payload: Vec<u8>) -> v2::Envelope {
    v2::Envelope {
        timestamp: benches::workload::now_nanos(),
        source_id,
        message: Some(v2::envelope::Message::Log(v2::Log { payload: Bytes::from(payload), r#type: 0 })),
        ..Default::default()
    }
}

fn scan(envelopes: Vec<v2::Envelope>) -> Vec<RawEnvelope> {
    let bytes = Bytes::from(v2::EnvelopeBatch { batch: envelopes }.encode_to_vec());
    BatchScanner::collect_all(bytes).expect("valid batch")
}

fn doppler_router(c: &mut Criterion) {
    const SUBSCRIPTIONS: usize = 100_000;
    const SOURCE_IDS: usize = 20_000;
    const MEMBERS: usize = SUBSCRIPTIONS / SOURCE_IDS;
    let router = Router::new();
    for _ in 0..MEMBERS {
        router.subscribe(SubscriptionSpec {
            shard_id: String::new(),
            deterministic_name: String::new(),
            selectors: (0..SOURCE_IDS).map(|i| log_selector(i.to_string())).collect(),
            subscriber: subscriber(1000),
        });
    }
    let envelopes = scan((0..100).map(|i| log_envelope((i % SOURCE_IDS).to_string(), vec![i as u8; 10])).collect());
    let mut group = c.benchmark_group("router");
    group.throughput(Throughput::Elements(1));
    group.bench_function("route_1_of_100k_subscriptions_20k_source_ids", |b| {
        let table = router.table();
        let mut i = 0usize;
        b.iter(|| {
            i = (i + 1) % envelopes.len();
            table.route(&envelopes[i]);
        })
    });
    group.finish();
}

fn fanout(c: &mut Criterion) {
    let batch = scan((0..100).map(|i| log_envelope(format!("app-{}", i % 10), vec![b'x'; 200])).collect());
    let mut group = c.benchmark_group("router/fanout_batch_100");
    group.throughput(Throughput::Elements(batch.len() as u64));
    for subscribers in [1usize, 10, 100] {
        let router = Router::new();
        let subs: Vec<Arc<Subscriber>> = (0..subscribers).map(|_| subscriber(1000)).collect();
        for s in &subs {
            router.subscribe(SubscriptionSpec {
                shard_id: String::new(),
                deterministic_name: String::new(),
                selectors: vec![log_selector(String::new())],
                subscriber: Arc::clone(s),
            });
        }
        // Route the batch (staged: one diode write per subscriber, as the Doppler's ingress does),
        // then drain every subscriber's diode as its egress task would.
        group.bench_function(format!("{subscribers}_subscribers_staged"), |b| {
            let mut out = Vec::with_capacity(100);
            let mut staging = Staging::default();
            b.iter_batched(
                || batch.clone(),
                |mut batch| {
                    router.table().route_batch(&mut batch, &mut staging);
                    for s in &subs {
                        out.clear();
                        s.diode.pop_batch(&mut out, 100);
                    }
                },
                BatchSize::SmallInput,
            )
        });
        // The same, one diode write per envelope.
        group.bench_function(format!("{subscribers}_subscribers"), |b| {
            let mut out = Vec::with_capacity(100);
            b.iter_batched(
                || batch.clone(),
                |batch| {
                    let table = router.table();
                    for envelope in &batch {
                        table.route(envelope);
                    }
                    for s in &subs {
                        out.clear();
                        s.diode.pop_batch(&mut out, 100);
                    }
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3)).sample_size(30)
}

criterion_group! {
    name = router_benches;
    config = config();
    targets = doppler_router, fanout
}
criterion_main!(router_benches);
