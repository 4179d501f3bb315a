//! The store against a simple model under random inserts, evictions and reads.
//!
//! The model keeps, per source, a `Vec` sorted by timestamp (ties in insertion order), applies the
//! per-source cap by dropping the first element, and prunes memory by repeatedly removing the
//! globally smallest `(oldest timestamp, shard, source id)` until under the low-water mark: the
//! order the store documents for single-threaded use. Reads are filtered, limited and ordered by
//! brute force. A batch (`Store::insert_batch`, the nozzle's path) must leave the store exactly as
//! inserting its envelopes one by one does: the model inserts them one by one.

use std::collections::BTreeMap;

use bytes::Bytes;
use loggregator_proto::logcache::v1::{EnvelopeType, ReadRequest};
use loggregator_proto::prost::Message;
use loggregator_proto::v2::{envelope, Counter, Envelope, Log};
use proptest::prelude::*;

use super::tests::encode;
use super::*;

/// One generated envelope: source, timestamp, counter (else log), payload length.
type Spec = (u8, i64, bool, usize);

#[derive(Debug, Clone)]
enum Op {
    Insert { source: u8, ts: i64, counter: bool, payload: usize },
    InsertBatch(Vec<Spec>),
    Read { source: u8, start: i64, end: i64, limit: i64, descending: bool, only: Option<bool> },
    Meta,
}

fn spec() -> impl Strategy<Value = Spec> {
    (0u8..4, 0i64..40, any::<bool>(), 0usize..64)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => spec().prop_map(|(source, ts, counter, payload)| Op::Insert { source, ts, counter, payload }),
        // Up to 8 envelopes over at most 4 sources: runs of one source, equal and decreasing
        // timestamps inside a batch, several sources per shard or not.
        2 => prop::collection::vec(spec(), 0..8).prop_map(Op::InsertBatch),
        2 => (0u8..5, -5i64..45, 0i64..45, 0i64..8, any::<bool>(), prop::option::of(any::<bool>()))
            .prop_map(|(source, start, end, limit, descending, only)| {
                Op::Read { source, start, end, limit, descending, only }
            }),
        1 => Just(Op::Meta),
    ]
}

fn make(source: u8, ts: i64, counter: bool, payload: usize, seq: usize) -> Envelope {
    let message = if counter {
        envelope::Message::Counter(Counter { name: format!("c{seq}"), delta: 1, total: 0 })
    } else {
        envelope::Message::Log(Log { payload: Bytes::from(vec![b'x'; payload]), r#type: 0 })
    };
    Envelope {
        timestamp: ts,
        source_id: format!("source-{source}"),
        instance_id: seq.to_string(),
        message: Some(message),
        ..Default::default()
    }
}

/// Per source: entries `(timestamp, is_counter, bytes)`, expired, newest.
type ModelSource = (Vec<(i64, bool, Bytes)>, i64, i64);

#[derive(Default)]
struct Model {
    sources: BTreeMap<String, ModelSource>,
    used: u64,
}

impl Model {
    fn insert(&mut self, limits: StoreLimits, e: &Envelope) {
        let bytes = Bytes::from(e.encode_to_vec());
        let counter = matches!(e.message, Some(envelope::Message::Counter(_)));
        let size = bytes.len() as u64 + ENTRY_OVERHEAD_BYTES;
        if !self.sources.contains_key(&e.source_id) {
            self.used += SOURCE_OVERHEAD_BYTES;
        }
        let (entries, expired, newest) = self.sources.entry(e.source_id.clone()).or_insert((Vec::new(), 0, 0));
        if entries.is_empty() || e.timestamp > *newest {
            *newest = e.timestamp;
        }
        let at = entries.partition_point(|(ts, _, _)| *ts <= e.timestamp);
        entries.insert(at, (e.timestamp, counter, bytes));
        self.used += size;
        while entries.len() > limits.max_per_source {
            let (_, _, gone) = entries.remove(0);
            self.used -= gone.len() as u64 + ENTRY_OVERHEAD_BYTES;
            *expired += 1;
        }
        if self.used > limits.memory_limit_bytes {
            let target = limits.memory_limit_bytes / 100 * LOW_WATER_PERCENT;
            while self.used > target {
                let Some(victim) = self
                    .sources
                    .iter()
                    .filter_map(|(id, (entries, _, _))| entries.first().map(|f| (f.0, Store::shard_of(id), id.clone())))
                    .min()
                else {
                    break;
                };
                let id = victim.2;
                let (entries, expired, _) = self.sources.get_mut(&id).expect("victim exists");
                let (_, _, gone) = entries.remove(0);
                *expired += 1;
                self.used -= gone.len() as u64 + ENTRY_OVERHEAD_BYTES;
                if entries.is_empty() {
                    self.sources.remove(&id);
                    self.used -= SOURCE_OVERHEAD_BYTES;
                }
            }
        }
    }

    fn read(&self, source: &str, filter: &ReadFilter) -> Vec<Bytes> {
        let Some((entries, _, _)) = self.sources.get(source) else {
            return Vec::new();
        };
        let mut matching: Vec<&(i64, bool, Bytes)> = entries
            .iter()
            .filter(|(ts, counter, _)| {
                *ts >= filter.start
                    && *ts < filter.end
                    && filter.types.contains(Some(if *counter { EnvelopeKind::Counter } else { EnvelopeKind::Log }))
            })
            .collect();
        if filter.descending {
            matching.reverse();
        }
        let mut out: Vec<Bytes> = Vec::new();
        for (i, (ts, _, bytes)) in matching.iter().enumerate() {
            if i >= filter.limit && matching[filter.limit - 1].0 != *ts {
                break;
            }
            out.push(bytes.clone());
        }
        out
    }
}

/// The store's counters and gauges against the model's totals.
fn check_stats(store: &Store, model: &Model, inserted: u64) -> Result<(), TestCaseError> {
    let stats = store.stats();
    let held: usize = model.sources.values().map(|(entries, _, _)| entries.len()).sum();
    let expired: i64 = model.sources.values().map(|(_, expired, _)| *expired).sum();
    prop_assert_eq!(store.used_bytes(), model.used);
    prop_assert_eq!(stats.memory_bytes.get(), model.used as i64);
    prop_assert_eq!(stats.envelopes.get(), held as i64);
    prop_assert_eq!(stats.sources.get(), model.sources.len() as i64);
    prop_assert_eq!(stats.ingress.get(), inserted);
    let evicted = stats.expired_by_source_cap.get() + stats.pruned_by_memory.get();
    prop_assert_eq!(evicted, inserted - held as u64);
    // A source pruned away takes its `expired` history with it, so this bounds rather than equals.
    prop_assert!(evicted as i64 >= expired);
    Ok(())
}

fn check(ops: Vec<Op>, limits: StoreLimits) -> Result<(), TestCaseError> {
    let store = Store::new(limits);
    let mut model = Model::default();
    let mut inserted = 0;
    for (seq, op) in ops.into_iter().enumerate() {
        match op {
            Op::Insert { source, ts, counter, payload } => {
                let e = make(source, ts, counter, payload, seq);
                store.insert(&encode(&e));
                model.insert(limits, &e);
                inserted += 1;
                check_stats(&store, &model, inserted)?;
            }
            Op::InsertBatch(specs) => {
                let envelopes: Vec<Envelope> = specs
                    .iter()
                    .enumerate()
                    .map(|(i, &(source, ts, counter, payload))| make(source, ts, counter, payload, seq * 100 + i))
                    .collect();
                let scanned: Vec<RawEnvelope> = envelopes.iter().map(encode).collect();
                store.insert_batch(&scanned);
                for e in &envelopes {
                    model.insert(limits, e);
                }
                inserted += envelopes.len() as u64;
                check_stats(&store, &model, inserted)?;
            }
            Op::Read { source, start, end, limit, descending, only } => {
                let envelope_types = match only {
                    None => vec![],
                    Some(true) => vec![EnvelopeType::Counter as i32],
                    Some(false) => vec![EnvelopeType::Log as i32],
                };
                let req = ReadRequest {
                    source_id: format!("source-{source}"),
                    start_time: start,
                    end_time: end,
                    limit,
                    descending,
                    envelope_types,
                    name_filter: String::new(),
                };
                match ReadFilter::from_request(&req, 41) {
                    Ok(filter) => {
                        prop_assert_eq!(store.read(&req.source_id, &filter), model.read(&req.source_id, &filter));
                    }
                    Err(err) => prop_assert!(end != 0 && start > end, "unexpected {}", err),
                }
            }
            Op::Meta => {
                let meta = store.meta();
                prop_assert_eq!(meta.len(), model.sources.len());
                for (id, (entries, expired, newest)) in &model.sources {
                    let m = meta.get(id).copied().unwrap_or_default();
                    prop_assert_eq!(m.count, entries.len() as i64);
                    prop_assert_eq!(m.expired, *expired);
                    prop_assert_eq!(m.oldest_timestamp, entries[0].0);
                    prop_assert_eq!(m.newest_timestamp, *newest);
                }
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn store_matches_model_under_the_per_source_cap(ops in prop::collection::vec(op(), 1..120)) {
        check(ops, StoreLimits { max_per_source: 7, memory_limit_bytes: 1 << 30 })?;
    }

    #[test]
    fn store_matches_model_under_memory_pruning(
        ops in prop::collection::vec(op(), 1..120),
        cap in 600u64..3000,
    ) {
        check(ops, StoreLimits { max_per_source: 10, memory_limit_bytes: cap })?;
    }

    /// A cap large enough that batches take the grouped path for a while and then meet pruning,
    /// which must find the pruning index as one-by-one inserts would have left it.
    #[test]
    fn store_matches_model_when_batches_fill_the_store_up_to_the_cap(
        ops in prop::collection::vec(op(), 1..160),
        cap in 3000u64..12_000,
    ) {
        check(ops, StoreLimits { max_per_source: 40, memory_limit_bytes: cap })?;
    }
}
