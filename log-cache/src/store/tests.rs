//! One test per rule of §6.2 (reads), §6.3 (meta) and §6.4 (bounds).

use std::collections::HashMap;

use bytes::Bytes;
use loggregator_proto::logcache::v1::{EnvelopeType, ReadRequest};
use loggregator_proto::prost::Message;
use loggregator_proto::v2::{envelope, Counter, Envelope, Event, Gauge, GaugeValue, Log, Timer};
use loggregator_proto::RawEnvelope;

use super::*;

pub(crate) fn encode(envelope: &Envelope) -> RawEnvelope {
    RawEnvelope::scan(Bytes::from(envelope.encode_to_vec())).expect("valid envelope")
}

pub(crate) fn log(source: &str, ts: i64) -> Envelope {
    Envelope {
        timestamp: ts,
        source_id: source.into(),
        message: Some(envelope::Message::Log(Log { payload: Bytes::from(format!("log {ts}")), r#type: 0 })),
        ..Default::default()
    }
}

fn counter(source: &str, ts: i64, name: &str) -> Envelope {
    Envelope {
        timestamp: ts,
        source_id: source.into(),
        message: Some(envelope::Message::Counter(Counter { name: name.into(), delta: 1, total: ts as u64 })),
        ..Default::default()
    }
}

fn timer(source: &str, ts: i64, name: &str) -> Envelope {
    Envelope {
        timestamp: ts,
        source_id: source.into(),
        message: Some(envelope::Message::Timer(Timer { name: name.into(), start: 1, stop: 2 })),
        ..Default::default()
    }
}

fn event(source: &str, ts: i64) -> Envelope {
    Envelope {
        timestamp: ts,
        source_id: source.into(),
        message: Some(envelope::Message::Event(Event { title: "t".into(), body: "b".into() })),
        ..Default::default()
    }
}

fn gauge(source: &str, ts: i64, keys: &[&str]) -> Envelope {
    let metrics =
        keys.iter().map(|k| (k.to_string(), GaugeValue { unit: "u".into(), value: 1.5 })).collect::<HashMap<_, _>>();
    Envelope {
        timestamp: ts,
        source_id: source.into(),
        message: Some(envelope::Message::Gauge(Gauge { metrics })),
        ..Default::default()
    }
}

fn store() -> Store {
    Store::new(StoreLimits { max_per_source: 1000, memory_limit_bytes: 1 << 30 })
}

fn put(store: &Store, envelopes: &[Envelope]) {
    for e in envelopes {
        store.insert(&encode(e));
    }
}

fn request(source: &str) -> ReadRequest {
    ReadRequest { source_id: source.into(), end_time: 1_000_000, ..Default::default() }
}

fn read(store: &Store, req: &ReadRequest) -> Vec<Envelope> {
    let filter = ReadFilter::from_request(req, 1_000_000_000).expect("valid request");
    store.read(&req.source_id, &filter).iter().map(|b| Envelope::decode(&b[..]).expect("decodes")).collect()
}

fn timestamps(envelopes: &[Envelope]) -> Vec<i64> {
    envelopes.iter().map(|e| e.timestamp).collect()
}

// === §6.2 validation ===

#[test]
fn start_after_end_is_an_error_with_the_original_message() {
    let req = ReadRequest { start_time: 10, end_time: 5, ..Default::default() };
    let err = ReadFilter::from_request(&req, 100).unwrap_err();
    assert_eq!(err.to_string(), "StartTime (10) must be before EndTime (5)");
}

#[test]
fn start_after_now_with_end_zero_is_not_an_error_and_reads_nothing() {
    let store = store();
    put(&store, &[log("a", 50)]);
    let req = ReadRequest { source_id: "a".into(), start_time: 2_000_000_000, ..Default::default() };
    assert!(read(&store, &req).is_empty());
}

#[test]
fn limit_above_1000_is_an_error() {
    let req = ReadRequest { limit: 1001, ..Default::default() };
    assert_eq!(ReadFilter::from_request(&req, 1).unwrap_err().to_string(), "limit (1001) must be 1000 or less");
    let req = ReadRequest { limit: 1000, ..Default::default() };
    assert_eq!(ReadFilter::from_request(&req, 1).expect("1000 is allowed").limit, 1000);
}

#[test]
fn negative_limit_is_an_error() {
    let req = ReadRequest { limit: -1, ..Default::default() };
    assert_eq!(ReadFilter::from_request(&req, 1).unwrap_err().to_string(), "limit (-1) must be greater than zero");
}

#[test]
fn zero_limit_defaults_to_100() {
    let store = store();
    let envelopes: Vec<_> = (0..150).map(|i| log("a", i)).collect();
    put(&store, &envelopes);
    let got = read(&store, &request("a"));
    assert_eq!(timestamps(&got), (0..100).collect::<Vec<_>>());
}

#[test]
fn invalid_name_filter_is_an_error() {
    let req = ReadRequest { name_filter: "(".into(), ..Default::default() };
    let err = ReadFilter::from_request(&req, 1).unwrap_err().to_string();
    assert!(err.starts_with("name filter must be a valid regular expression: "), "{err}");
}

// === §6.2 interval and order ===

#[test]
fn end_zero_means_now() {
    let store = store();
    put(&store, &[log("a", 10), log("a", 20), log("a", 30)]);
    let req = ReadRequest { source_id: "a".into(), ..Default::default() };
    let filter = ReadFilter::from_request(&req, 25).expect("valid");
    assert_eq!(filter.end, 25);
    assert_eq!(store.read("a", &filter).len(), 2);
}

#[test]
fn interval_is_start_inclusive_end_exclusive() {
    let store = store();
    put(&store, &[log("a", 9), log("a", 10), log("a", 15), log("a", 20), log("a", 21)]);
    let req = ReadRequest { start_time: 10, end_time: 20, ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![10, 15]);
}

#[test]
fn negative_start_time_reads_from_the_beginning() {
    let store = store();
    put(&store, &[log("a", -5), log("a", 0), log("a", 7)]);
    // The cf CLI sends Go's zero time.
    let req = ReadRequest { start_time: -6_795_364_578_871_345_152, ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![-5, 0, 7]);
}

#[test]
fn reads_are_ascending_unless_descending() {
    let store = store();
    put(&store, &[log("a", 3), log("a", 1), log("a", 2)]);
    assert_eq!(timestamps(&read(&store, &request("a"))), vec![1, 2, 3]);
    let req = ReadRequest { descending: true, ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![3, 2, 1]);
}

#[test]
fn descending_with_limit_returns_the_newest() {
    let store = store();
    put(&store, &(0..10).map(|i| log("a", i)).collect::<Vec<_>>());
    let req = ReadRequest { descending: true, limit: 3, ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![9, 8, 7]);
}

#[test]
fn equal_timestamps_are_all_kept() {
    let store = store();
    put(&store, &[log("a", 5), counter("a", 5, "c"), log("a", 5)]);
    let got = read(&store, &request("a"));
    assert_eq!(got.len(), 3);
    assert!(matches!(got[1].message, Some(envelope::Message::Counter(_))), "insertion order kept");
}

#[test]
fn unknown_source_reads_an_empty_batch() {
    let store = store();
    put(&store, &[log("a", 5)]);
    assert!(read(&store, &request("b")).is_empty());
}

// === §6.2 envelope_types ===

fn one_of_each(store: &Store) {
    put(store, &[log("a", 1), counter("a", 2, "c"), gauge("a", 3, &["g"]), timer("a", 4, "t"), event("a", 5)]);
}

#[test]
fn empty_or_any_envelope_types_read_every_type() {
    let store = store();
    one_of_each(&store);
    assert_eq!(read(&store, &request("a")).len(), 5);
    let req = ReadRequest { envelope_types: vec![EnvelopeType::Any as i32], ..request("a") };
    assert_eq!(read(&store, &req).len(), 5);
}

#[test]
fn envelope_types_are_a_union() {
    let store = store();
    one_of_each(&store);
    let req =
        ReadRequest { envelope_types: vec![EnvelopeType::Log as i32, EnvelopeType::Timer as i32], ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![1, 4]);
    for (ty, ts) in [(EnvelopeType::Counter, 2), (EnvelopeType::Gauge, 3), (EnvelopeType::Event, 5)] {
        let req = ReadRequest { envelope_types: vec![ty as i32], ..request("a") };
        assert_eq!(timestamps(&read(&store, &req)), vec![ts], "{ty:?}");
    }
}

// === §6.2 name_filter ===

#[test]
fn name_filter_matches_counter_and_timer_names() {
    let store = store();
    put(&store, &[counter("a", 1, "requests"), counter("a", 2, "errors"), timer("a", 3, "http_req")]);
    let req = ReadRequest { name_filter: "req".into(), ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![1, 3]);
}

#[test]
fn name_filter_never_matches_logs_or_events() {
    let store = store();
    put(&store, &[log("a", 1), event("a", 2)]);
    let req = ReadRequest { name_filter: ".*".into(), ..request("a") };
    assert!(read(&store, &req).is_empty());
}

#[test]
fn name_filter_keeps_only_matching_gauge_keys_in_a_copy() {
    let store = store();
    put(&store, &[gauge("a", 1, &["cpu", "memory", "disk"]), gauge("a", 2, &["disk"]), gauge("a", 3, &["cpu"])]);
    let req = ReadRequest { name_filter: "^(cpu|memory)$".into(), ..request("a") };
    let got = read(&store, &req);
    assert_eq!(timestamps(&got), vec![1, 3]);
    let Some(envelope::Message::Gauge(g)) = &got[0].message else { panic!("a gauge") };
    let mut keys: Vec<_> = g.metrics.keys().cloned().collect();
    keys.sort();
    assert_eq!(keys, vec!["cpu", "memory"]);
    // The stored envelope is untouched.
    let all = read(&store, &request("a"));
    let Some(envelope::Message::Gauge(g)) = &all[0].message else { panic!("a gauge") };
    assert_eq!(g.metrics.len(), 3);
}

#[test]
fn gauge_whose_keys_all_match_is_returned_byte_for_byte() {
    let store = store();
    let original = gauge("a", 1, &["cpu", "cpu_entitlement"]);
    put(&store, std::slice::from_ref(&original));
    let filter =
        ReadFilter::from_request(&ReadRequest { name_filter: "cpu".into(), ..request("a") }, 0).expect("valid");
    let got = store.read("a", &filter);
    assert_eq!(got, vec![Bytes::from(original.encode_to_vec())]);
}

// === §6.2 limit ===

#[test]
fn limit_counts_envelopes_after_filtering() {
    let store = store();
    let mut envelopes = Vec::new();
    for i in 0..20 {
        envelopes.push(log("a", i * 2));
        envelopes.push(counter("a", i * 2 + 1, "c"));
    }
    put(&store, &envelopes);
    let req = ReadRequest { envelope_types: vec![EnvelopeType::Counter as i32], limit: 5, ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![1, 3, 5, 7, 9]);
}

#[test]
fn limit_never_splits_a_group_of_equal_timestamps() {
    let store = store();
    put(&store, &[log("a", 1), log("a", 2), log("a", 2), log("a", 2), log("a", 3)]);
    let req = ReadRequest { limit: 2, ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![1, 2, 2, 2]);
    let req = ReadRequest { limit: 2, descending: true, ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![3, 2, 2, 2]);
    let req = ReadRequest { limit: 1, ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![1]);
}

#[test]
fn the_equal_timestamp_group_respects_the_filters() {
    let store = store();
    put(&store, &[log("a", 1), counter("a", 1, "c"), log("a", 1), log("a", 2)]);
    let req = ReadRequest { limit: 1, envelope_types: vec![EnvelopeType::Log as i32], ..request("a") };
    assert_eq!(timestamps(&read(&store, &req)), vec![1, 1]);
}

// === §6.3 meta ===

#[test]
fn meta_reports_count_expired_oldest_and_newest() {
    let store = Store::new(StoreLimits { max_per_source: 3, memory_limit_bytes: 1 << 30 });
    put(&store, &[log("a", 10), log("a", 40), log("a", 20), log("a", 30), log("b", 7)]);
    let meta = store.meta();
    assert_eq!(meta.len(), 2);
    let a = meta["a"];
    assert_eq!((a.count, a.expired, a.oldest_timestamp, a.newest_timestamp), (3, 1, 20, 40));
    let b = meta["b"];
    assert_eq!((b.count, b.expired, b.oldest_timestamp, b.newest_timestamp), (1, 0, 7, 7));
}

#[test]
fn newest_is_the_largest_timestamp_ever_inserted_even_once_evicted() {
    let store = Store::new(StoreLimits { max_per_source: 1, memory_limit_bytes: 1 << 30 });
    put(&store, &[log("a", 50), log("a", 10)]);
    // 10 went in, then the oldest (10 itself) went out: 50 stays; newest is 50.
    let a = store.meta()["a"];
    assert_eq!((a.count, a.expired, a.oldest_timestamp, a.newest_timestamp), (1, 1, 50, 50));
}

#[test]
fn a_source_disappears_from_meta_when_pruned_empty() {
    let one = encode(&log("a", 1)).bytes.len() as u64 + ENTRY_OVERHEAD_BYTES + SOURCE_OVERHEAD_BYTES;
    let store = Store::new(StoreLimits { max_per_source: 100, memory_limit_bytes: one * 3 / 2 });
    put(&store, &[log("a", 1)]);
    assert!(store.meta().contains_key("a"));
    put(&store, &[log("b", 2)]);
    let meta = store.meta();
    assert!(!meta.contains_key("a"), "a was the globally oldest: {meta:?}");
    assert_eq!(meta["b"].count, 1);
    assert_eq!(store.stats().sources.get(), 1);
}

// === §6.4 bounds ===

#[test]
fn full_source_evicts_its_oldest_and_counts_it_expired() {
    let store = Store::new(StoreLimits { max_per_source: 5, memory_limit_bytes: 1 << 30 });
    put(&store, &(0..8).map(|i| log("a", i)).collect::<Vec<_>>());
    assert_eq!(timestamps(&read(&store, &request("a"))), vec![3, 4, 5, 6, 7]);
    assert_eq!(store.meta()["a"].expired, 3);
    assert_eq!(store.stats().expired_by_source_cap.get(), 3);
}

#[test]
fn memory_cap_prunes_the_globally_oldest_first() {
    let size = encode(&log("a", 1)).bytes.len() as u64 + ENTRY_OVERHEAD_BYTES;
    let limit = 2 * SOURCE_OVERHEAD_BYTES + 10 * size;
    let store = Store::new(StoreLimits { max_per_source: 1000, memory_limit_bytes: limit });
    for i in 0..10 {
        put(&store, &[log("a", i * 2), log("b", i * 2 + 1)]);
    }
    assert!(store.used_bytes() <= limit, "{} > {limit}", store.used_bytes());
    let a = timestamps(&read(&store, &request("a")));
    let b = timestamps(&read(&store, &request("b")));
    let mut all: Vec<_> = a.iter().chain(b.iter()).copied().collect();
    all.sort();
    let kept = all.len() as i64;
    assert_eq!(all, (20 - kept..20).collect::<Vec<_>>(), "exactly the newest survive");
    let pruned = store.stats().pruned_by_memory.get() as i64;
    assert_eq!(pruned + kept, 20);
}

#[test]
fn accounting_returns_to_zero_when_everything_is_pruned() {
    let store = Store::new(StoreLimits { max_per_source: 1000, memory_limit_bytes: 1 });
    put(&store, &[log("a", 1), log("b", 2), log("c", 3)]);
    assert_eq!(store.used_bytes(), 0);
    assert!(store.meta().is_empty());
    assert_eq!(store.stats().envelopes.get(), 0);
    assert_eq!(store.stats().sources.get(), 0);
}

#[test]
fn stored_bytes_do_not_pin_the_receive_buffer() {
    let store = store();
    let raw = encode(&log("a", 1));
    let batch = Bytes::from([raw.bytes.to_vec(), vec![0u8; 4096]].concat());
    let slice = RawEnvelope::scan(batch.slice(0..raw.bytes.len())).expect("valid");
    store.insert(&slice);
    drop(slice);
    // Only `batch` holds the big buffer now: it is unique again.
    assert!(batch.is_unique());
}

#[test]
fn metric_envelopes_are_gauges_counters_and_timers_in_a_closed_interval() {
    let store = store();
    one_of_each(&store);
    put(&store, &[counter("a", 6, "c")]);
    let got: Vec<i64> = store
        .metric_envelopes("a", 2, 6)
        .iter()
        .map(|b| Envelope::decode(&b[..]).expect("decodes").timestamp)
        .collect();
    assert_eq!(got, vec![2, 3, 4, 6]);
}

// === batches (the nozzle's path) ===

/// Two stores fed the same envelopes, one by batches and one envelope at a time, hold the same.
fn assert_same_contents(batched: &Store, one_by_one: &Store, sources: &[&str]) {
    assert_eq!(batched.used_bytes(), one_by_one.used_bytes());
    assert_eq!(batched.meta(), one_by_one.meta());
    for source in sources {
        let req = ReadRequest { limit: 1000, ..request(source) };
        assert_eq!(read(batched, &req), read(one_by_one, &req), "{source}");
    }
    let (a, b) = (batched.stats(), one_by_one.stats());
    assert_eq!(a.ingress.get(), b.ingress.get());
    assert_eq!(a.envelopes.get(), b.envelopes.get());
    assert_eq!(a.sources.get(), b.sources.get());
    assert_eq!(a.memory_bytes.get(), b.memory_bytes.get());
    assert_eq!(a.expired_by_source_cap.get(), b.expired_by_source_cap.get());
    assert_eq!(a.pruned_by_memory.get(), b.pruned_by_memory.get());
}

/// A batch with runs of one source, sources interleaved, equal and decreasing timestamps, and more
/// envelopes for one source than its cap.
fn mixed_batch(round: i64) -> Vec<Envelope> {
    let t = round * 10;
    let mut batch = Vec::new();
    for i in 0..7 {
        batch.push(log("a", t + i));
    }
    batch.extend([log("b", t + 5), counter("c", t + 3, "x"), log("b", t + 5), log("a", t + 2), gauge("b", t, &["k"])]);
    batch.extend([event("d", t + 1), timer("c", t + 3, "y"), log("b", t + 4)]);
    batch
}

#[test]
fn a_batch_stores_exactly_what_one_by_one_inserts_store() {
    let limits = StoreLimits { max_per_source: 5, memory_limit_bytes: 1 << 30 };
    let (batched, one_by_one) = (Store::new(limits), Store::new(limits));
    for round in 0..3 {
        let batch = mixed_batch(round);
        let scanned: Vec<RawEnvelope> = batch.iter().map(encode).collect();
        batched.insert_batch(&scanned);
        put(&one_by_one, &batch);
    }
    assert_same_contents(&batched, &one_by_one, &["a", "b", "c", "d"]);
    // "b" got 25, 25, 20 (gauge), 24 in the last round: the cap of 5 keeps those and one 15.
    assert_eq!(timestamps(&read(&batched, &request("b"))), vec![15, 20, 24, 25, 25]);
    assert_eq!(batched.stats().ingress.get(), 45);
    assert_eq!(batched.meta()["a"].expired, 3 * 8 - 5);
}

#[test]
fn a_batch_near_the_memory_cap_prunes_where_one_by_one_inserts_would() {
    let size = encode(&log("a", 10)).bytes.len() as u64 + ENTRY_OVERHEAD_BYTES;
    // The first batches are far enough from the cap to take the grouped path; later ones are not.
    let limit = 4 * SOURCE_OVERHEAD_BYTES + 100 * size;
    let limits = StoreLimits { max_per_source: 1000, memory_limit_bytes: limit };
    let (batched, one_by_one) = (Store::new(limits), Store::new(limits));
    for round in 0..12 {
        let batch = mixed_batch(round);
        let scanned: Vec<RawEnvelope> = batch.iter().map(encode).collect();
        batched.insert_batch(&scanned);
        put(&one_by_one, &batch);
        assert_same_contents(&batched, &one_by_one, &["a", "b", "c", "d"]);
    }
    assert!(batched.stats().pruned_by_memory.get() > 0, "the cap was reached");
    assert!(batched.used_bytes() <= limit);
}

#[test]
fn an_empty_batch_changes_nothing() {
    let store = store();
    store.insert_batch(&[]);
    assert_eq!(store.used_bytes(), 0);
    assert_eq!(store.stats().ingress.get(), 0);
    assert!(store.meta().is_empty());
}

#[test]
fn batched_copies_do_not_pin_the_receive_buffer() {
    let store = store();
    let envelopes = [log("a", 1), log("b", 2)];
    let encoded: Vec<u8> = envelopes.iter().flat_map(|e| e.encode_to_vec()).collect();
    let buffer = Bytes::from(encoded);
    let first_len = envelopes[0].encoded_len();
    let scanned = vec![
        RawEnvelope::scan(buffer.slice(..first_len)).expect("valid"),
        RawEnvelope::scan(buffer.slice(first_len..)).expect("valid"),
    ];
    store.insert_batch(&scanned);
    drop(scanned);
    assert!(buffer.is_unique());
    assert_eq!(store.stats().ingress.get(), 2);
}

/// Four writers (one by one, or by batches of 10) and a reader on one store: afterwards the
/// counters, the meta and the accounting agree, and the cap holds.
fn concurrent_writers_and_a_reader(batched: bool) {
    let store = std::sync::Arc::new(Store::new(StoreLimits { max_per_source: 500, memory_limit_bytes: 200_000 }));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let store = store.clone();
            std::thread::spawn(move || {
                let scanned: Vec<RawEnvelope> =
                    (0..5000).map(|i| encode(&log(&format!("s{}", (i + w) % 17), i))).collect();
                if batched {
                    for batch in scanned.chunks(10) {
                        store.insert_batch(batch);
                    }
                } else {
                    for envelope in &scanned {
                        store.insert(envelope);
                    }
                }
            })
        })
        .collect();
    let reader = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..2000 {
                let filter = ReadFilter::from_request(&request(&format!("s{}", i % 17)), 0).expect("valid");
                let got = store.read(&format!("s{}", i % 17), &filter);
                assert!(got.len() <= 100);
                let _ = store.meta();
            }
        })
    };
    for w in writers {
        w.join().expect("writer");
    }
    reader.join().expect("reader");
    let limit = store.limits().memory_limit_bytes;
    assert!(store.used_bytes() <= limit, "{} > {limit}", store.used_bytes());
    let meta = store.meta();
    let count: i64 = meta.values().map(|m| m.count).sum();
    assert_eq!(count, store.stats().envelopes.get());
    assert_eq!(meta.len() as i64, store.stats().sources.get());
    let ingress = store.stats().ingress.get() as i64;
    let gone = store.stats().pruned_by_memory.get() as i64 + store.stats().expired_by_source_cap.get() as i64;
    assert_eq!(ingress, 20_000);
    assert_eq!(ingress - gone, count);
}

#[test]
fn concurrent_writers_and_readers_keep_the_store_consistent() {
    concurrent_writers_and_a_reader(false);
}

#[test]
fn concurrent_batch_writers_and_readers_keep_the_store_consistent() {
    concurrent_writers_and_a_reader(true);
}

#[test]
fn out_of_order_inserts_land_in_timestamp_order_near_and_far_from_the_newest() {
    let store = Store::new(StoreLimits::default());
    for ts in (0..200).step_by(2) {
        store.insert(&encode(&log("a", ts)));
    }
    // 197: one position back (the short backward walk); 3: far back (the binary-search fallback);
    // -1: before everything, so the source's oldest timestamp moves; 198 again: an equal timestamp
    // goes after the one already held.
    for ts in [197, 3, -1, 198] {
        store.insert(&encode(&log("a", ts)));
    }
    let mut source = None;
    for shard in store.shards.iter() {
        if let Some(s) = shard.inner.read().sources.get("a") {
            source = Some(s.entries.iter().map(|e| e.timestamp).collect::<Vec<_>>());
            assert_eq!(s.oldest(), Some(-1));
        }
    }
    let held = source.expect("source a is stored");
    let mut expected: Vec<i64> = (0..200).step_by(2).chain([197, 3, -1, 198]).collect();
    expected.sort();
    assert_eq!(held, expected);
    let meta = store.meta();
    assert_eq!(meta["a"].oldest_timestamp, -1);
    assert_eq!(meta["a"].newest_timestamp, 198);
}

#[test]
fn sources_grow_by_their_own_factor_so_that_they_do_not_grow_in_step() {
    let mut capacities = std::collections::BTreeSet::new();
    for i in 0..64 {
        let mut source = Source::new(Arc::from(format!("app-{i}")));
        for ts in 0..3000 {
            let before = source.entries.capacity();
            source.insert(Entry { timestamp: ts, bytes: Bytes::new(), kind: None, name_start: 0, name_len: 0 });
            let after = source.entries.capacity();
            if after != before {
                // Never more than doubling (plus the first few slots).
                assert!(after <= (2 * before).max(8), "{before} -> {after}");
            }
        }
        assert!(source.entries.len() <= source.entries.capacity());
        capacities.insert(source.entries.capacity());
    }
    // After 3000 inserts the sources sit at many different capacities: their growths are not in step.
    assert!(capacities.len() > 8, "capacities barely spread: {capacities:?}");
}
