//! The store against a simple model under random inserts, evictions and reads.
//!
//! The model keeps, per source, a `Vec` sorted by timestamp (ties in insertion order), applies the
//! per-source cap by dropping the first element, and prunes memory by repeatedly removing the
//! globally smallest `(oldest timestamp, shard, source id)` until under the low-water mark: the
//! order the store documents for single-threaded use. Reads are filtered, limited and ordered by
//! brute force.

use std::collections::BTreeMap;

use bytes::Bytes;
use loggregator_proto::logcache::v1::{EnvelopeType, ReadRequest};
use loggregator_proto::prost::Message;
use loggregator_proto::v2::{envelope, Counter, Envelope, Log};
use proptest::prelude::*;

use super::tests::encode;
use super::*;

#[derive(Debug, Clone)]
enum Op {
    Insert { source: u8, ts: i64, counter: bool, payload: usize },
    Read { source: u8, start: i64, end: i64, limit: i64, descending: bool, only: Option<bool> },
    Meta,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..4, 0i64..40, any::<bool>(), 0usize..64)
            .prop_map(|(source, ts, counter, payload)| Op::Insert { source, ts, counter, payload }),
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

fn check(ops: Vec<Op>, limits: StoreLimits) -> Result<(), TestCaseError> {
    let store = Store::new(limits);
    let mut model = Model::default();
    for (seq, op) in ops.into_iter().enumerate() {
        match op {
            Op::Insert { source, ts, counter, payload } => {
                let e = make(source, ts, counter, payload, seq);
                store.insert(&encode(&e));
                model.insert(limits, &e);
                prop_assert_eq!(store.used_bytes(), model.used);
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
}
