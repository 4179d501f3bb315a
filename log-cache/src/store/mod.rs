//! The in-memory envelope store: per-source, timestamp-ordered, bounded by count and by bytes.
//!
//! Envelopes are kept in their encoded form (`Bytes`) next to the few fields a read needs
//! (timestamp, type, counter/timer name); a payload is decoded only to answer a gauge `name_filter`
//! that keeps some keys of an envelope but not all (§6.2).
//!
//! Bounds (§6.4, issue 5):
//! - at most `max_per_source` envelopes per source: inserting into a full source evicts its oldest
//!   envelope (`expired += 1`);
//! - a global memory cap, accounted from the stored bytes plus a fixed per-entry and per-source
//!   overhead. An insert that takes the total over the cap prunes the globally oldest envelopes until
//!   the total is back under [`LOW_WATER_PERCENT`] of the cap. The inserting thread does the pruning
//!   itself, so the cap holds under any load, with no background task and no pause.
//!
//! Ingest (BENCHMARKS.md §4.2): [`Store::insert_batch`] stores a received batch with the outcome of
//! inserting its envelopes one by one, but takes each shard's lock once, looks each source up once
//! per run of its envelopes, updates the pruning index once per source and the counters once per
//! batch.
//!
//! Concurrency: sources are spread over [`SHARDS`] shards by a hash of the source id, each behind a
//! `parking_lot::RwLock`: writers to different shards, and readers of the same shard, proceed in
//! parallel. No thread ever holds two shard locks, and no lock is held across an `.await` (the store
//! has no async code). Each shard publishes the oldest timestamp it holds in an atomic, so the pruner
//! finds the globally oldest envelope without locking every shard.

mod filter;
#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use filter::{ReadError, ReadFilter, TypeSet, DEFAULT_READ_LIMIT, MAX_READ_LIMIT};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use plumbing::{Counter, Gauge, Registry};
use std::sync::Arc;

use bytes::Bytes;
use loggregator_proto::logcache::v1::MetaInfo;
use loggregator_proto::{EnvelopeKind, RawEnvelope};
use parking_lot::RwLock;

use filter::NameMatch;

/// Default bound on envelopes per source (§6.4).
pub const DEFAULT_MAX_PER_SOURCE: usize = 100_000;

/// Number of lock shards. A power of two well above the core count keeps contention negligible.
pub const SHARDS: usize = 64;

/// Bytes accounted for each stored envelope on top of its encoded length: the [`Entry`] itself, the
/// allocator's header of the copied bytes, and the shared header `Bytes` adds on its first clone.
pub const ENTRY_OVERHEAD_BYTES: u64 = 112;

/// Bytes accounted for each source on top of its envelopes: map slot, id, index entry.
pub const SOURCE_OVERHEAD_BYTES: u64 = 256;

/// After pruning, the accounted total is at most this percentage of the cap, so that pruning does
/// not run on every insert once the store is full.
pub const LOW_WATER_PERCENT: u64 = 99;

/// Sentinel published by an empty shard.
const EMPTY_SHARD: i64 = i64::MAX;

/// Bounds of a [`Store`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreLimits {
    /// Envelopes kept per source; at least 1.
    pub max_per_source: usize,
    /// Cap on the accounted bytes of the whole store.
    pub memory_limit_bytes: u64,
}

impl Default for StoreLimits {
    fn default() -> Self {
        Self { max_per_source: DEFAULT_MAX_PER_SOURCE, memory_limit_bytes: 1 << 30 }
    }
}

/// Running totals of the store, registered in the telemetry registry (see the crate README).
#[derive(Debug, Clone, Default)]
pub struct StoreStats {
    /// Envelopes stored.
    pub ingress: Counter,
    /// Envelopes handed out by reads.
    pub egress: Counter,
    /// Envelopes evicted by the per-source cap.
    pub expired_by_source_cap: Counter,
    /// Envelopes evicted by memory pruning.
    pub pruned_by_memory: Counter,
    /// Envelopes not stored because they could not be scanned.
    pub dropped: Counter,
    /// Sources currently held.
    pub sources: Gauge,
    /// Envelopes currently held.
    pub envelopes: Gauge,
    /// Accounted bytes currently held.
    pub memory_bytes: Gauge,
}

impl StoreStats {
    /// Registers the store's metrics.
    pub fn register(registry: &Registry) -> Self {
        Self {
            // metric-documentation: envelopes stored (every ingest path).
            ingress: registry.counter("ingress", "Envelopes stored by log-cache", &[]),
            // metric-documentation: envelopes returned by reads.
            egress: registry.counter("egress", "Envelopes read out of log-cache", &[]),
            // metric-documentation: envelopes evicted because their source held max_per_source.
            expired_by_source_cap: registry.counter(
                "expired",
                "Envelopes evicted from the store",
                &[("reason", "max_per_source")],
            ),
            // metric-documentation: envelopes evicted to keep the store under its memory cap.
            pruned_by_memory: registry.counter("expired", "Envelopes evicted from the store", &[("reason", "memory")]),
            // metric-documentation: envelopes refused at ingress (malformed).
            dropped: registry.counter("dropped", "Envelopes dropped by log-cache", &[("direction", "ingress")]),
            // metric-documentation: source ids currently held.
            sources: registry.gauge("sources", "Source ids held by the store", &[]),
            // metric-documentation: envelopes currently held.
            envelopes: registry.gauge("store_size", "Envelopes held by the store", &[]),
            // metric-documentation: bytes accounted by the store (encoded envelopes plus overhead).
            memory_bytes: registry.gauge("memory_bytes", "Bytes accounted by the store", &[]),
        }
    }
}

/// One stored envelope.
#[derive(Debug, Clone)]
struct Entry {
    timestamp: i64,
    bytes: Bytes,
    kind: Option<EnvelopeKind>,
    /// Counter or timer name, as a range of `bytes` (empty for other kinds).
    name_start: u32,
    name_len: u32,
}

impl Entry {
    fn new(envelope: &RawEnvelope, bytes: Bytes) -> Self {
        let (name_start, name_len) = name_range(envelope);
        Entry { timestamp: envelope.meta.timestamp, bytes, kind: envelope.meta.kind, name_start, name_len }
    }

    fn name(&self) -> &str {
        let start = self.name_start as usize;
        let end = start + self.name_len as usize;
        self.bytes.get(start..end).and_then(|b| std::str::from_utf8(b).ok()).unwrap_or_default()
    }

    fn accounted_size(&self) -> u64 {
        self.bytes.len() as u64 + ENTRY_OVERHEAD_BYTES
    }
}

/// The envelopes of one source, ascending by timestamp; equal timestamps keep insertion order.
#[derive(Debug)]
struct Source {
    /// The source id, shared with the shard's map key and pruning index.
    id: Arc<str>,
    /// Mutated only through [`Source::insert`] and [`Source::pop_oldest`], which keep `oldest` true.
    entries: VecDeque<Entry>,
    /// Timestamp of the front entry (meaningless when `entries` is empty). Kept here because every
    /// insert asks for it (has the pruning index changed?) and the front entry itself is cold memory:
    /// reading it was a cache miss per insert, the largest single cost of the store's ingest.
    oldest: i64,
    /// This source's growth step, 0..16 (see [`Source::reserve_one`]).
    growth: u8,
    expired: u64,
    newest: i64,
}

/// How far back from the newest entry an out-of-order insert looks before it falls back to a binary
/// search: envelopes from several emitters arrive a few positions out of order, not far.
const BACKWARD_PROBE: usize = 16;

impl Source {
    fn new(id: Arc<str>) -> Self {
        let growth = (source_hash(&id) % 16) as u8;
        Self { id, entries: VecDeque::new(), oldest: 0, growth, expired: 0, newest: 0 }
    }

    /// Makes room for one more entry, growing by this source's own factor.
    ///
    /// A deque left to itself doubles when full. Sources fed at the same rate (a firehose of similar
    /// apps) would then all double at the same moment: 1000 sources × 2048 entries copying 115 MB at
    /// once, a stall of the ingest long enough to overflow the Doppler's buffer (seen in the loadgen
    /// full path at ~2M envelopes). A growth factor between 1.5 and 2, picked by the id's hash, makes
    /// sources drift apart after a few growths, so the same copying is spread over time. (Never more
    /// than doubling, so the unused capacity stays within what a plain deque would leave.)
    fn reserve_one(&mut self) {
        let capacity = self.entries.capacity();
        if self.entries.len() == capacity {
            let extra = (capacity * (16 + usize::from(self.growth)) / 32).max(4);
            self.entries.reserve_exact(extra);
        }
    }

    fn oldest(&self) -> Option<i64> {
        (!self.entries.is_empty()).then_some(self.oldest)
    }

    /// Inserts after every entry with a timestamp ≤ the new one: appends in the common in-order case.
    fn insert(&mut self, entry: Entry) {
        self.reserve_one();
        let ts = entry.timestamp;
        if self.entries.is_empty() {
            self.oldest = ts;
            self.newest = ts;
            self.entries.push_back(entry);
            return;
        }
        if ts >= self.newest {
            self.newest = ts;
            self.entries.push_back(entry);
            return;
        }
        // Out of order: the newest entries are hot in cache, so walk back over a few of them
        // before paying for a binary search over the whole source.
        let len = self.entries.len();
        let mut at = len;
        while at > 0 && len - at < BACKWARD_PROBE && self.entries[at - 1].timestamp > ts {
            at -= 1;
        }
        if at > 0 && self.entries[at - 1].timestamp > ts {
            at = self.entries.partition_point(|e| e.timestamp <= ts);
        }
        if at == 0 {
            self.oldest = ts;
        }
        self.entries.insert(at, entry);
    }

    /// Removes the oldest entry.
    fn pop_oldest(&mut self) -> Option<Entry> {
        let entry = self.entries.pop_front()?;
        if let Some(next) = self.entries.front() {
            self.oldest = next.timestamp;
        }
        Some(entry)
    }
}

#[derive(Default)]
struct ShardInner {
    sources: HashMap<Arc<str>, Source>,
    /// (oldest timestamp, source id) of every source of the shard: the pruner's order.
    by_oldest: BTreeSet<(i64, Arc<str>)>,
}

impl ShardInner {
    /// Stores `entries`, all of `source_id` and in insertion order, evicting that source's oldest
    /// beyond `max_per_source`; the source and the pruning index are updated once for the run.
    /// Answers whether the pruning index changed.
    fn store_run(
        &mut self,
        source_id: &str,
        entries: impl Iterator<Item = Entry>,
        max_per_source: usize,
        totals: &mut InsertTotals,
    ) -> bool {
        if !self.sources.contains_key(source_id) {
            let key: Arc<str> = Arc::from(source_id);
            self.sources.insert(key.clone(), Source::new(key));
            totals.new_sources += 1;
            totals.added += SOURCE_OVERHEAD_BYTES;
        }
        let Some(source) = self.sources.get_mut(source_id) else {
            return false; // just inserted under the same lock
        };
        let oldest_before = source.oldest();
        for entry in entries {
            totals.stored += 1;
            totals.added += entry.accounted_size();
            source.insert(entry);
            while source.entries.len() > max_per_source {
                if let Some(evicted) = source.pop_oldest() {
                    totals.freed += evicted.accounted_size();
                    totals.expired += 1;
                    source.expired += 1;
                }
            }
        }
        let oldest_after = source.oldest();
        if oldest_before == oldest_after {
            return false;
        }
        if let Some(ts) = oldest_before {
            self.by_oldest.remove(&(ts, source.id.clone()));
        }
        if let Some(ts) = oldest_after {
            self.by_oldest.insert((ts, source.id.clone()));
        }
        true
    }
}

/// What one insert or one batch changed, applied to the shared counters once.
#[derive(Debug, Default)]
struct InsertTotals {
    stored: u64,
    expired: u64,
    new_sources: u64,
    /// Accounted bytes of the stored entries and new sources.
    added: u64,
    /// Accounted bytes of the entries evicted by the per-source cap.
    freed: u64,
}

/// Where one envelope of a batch sorts: by shard, then source, then arrival.
#[derive(Clone, Copy)]
struct BatchSlot {
    shard: usize,
    /// The full hash of the source id ([`source_hash`]), so that a source's envelopes sort together.
    source_hash: u64,
    /// Position in the batch: keeps a source's envelopes in arrival order.
    index: usize,
}

struct Shard {
    inner: RwLock<ShardInner>,
    /// Oldest timestamp held by the shard, or [`EMPTY_SHARD`]; written under the write lock.
    oldest: AtomicI64,
}

impl Shard {
    fn publish_oldest(&self, inner: &ShardInner) {
        let oldest = inner.by_oldest.first().map_or(EMPTY_SHARD, |(ts, _)| *ts);
        self.oldest.store(oldest, Ordering::Release);
    }
}

/// What a read returns for one envelope before the gauge-key filtering done outside the lock.
enum Hit {
    Whole(Bytes),
    /// A gauge some of whose keys match the name filter: decoded and filtered after the lock.
    FilterGaugeKeys(Bytes),
}

/// The store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    shards: Box<[Shard]>,
    limits: StoreLimits,
    /// Accounted bytes of the whole store; may briefly exceed the cap by what concurrent inserters
    /// add before their own pruning runs.
    used_bytes: AtomicU64,
    stats: StoreStats,
}

impl Store {
    pub fn new(limits: StoreLimits) -> Self {
        Self::with_stats(limits, StoreStats::default())
    }

    pub fn with_stats(limits: StoreLimits, stats: StoreStats) -> Self {
        let shards = (0..SHARDS)
            .map(|_| Shard { inner: RwLock::new(ShardInner::default()), oldest: AtomicI64::new(EMPTY_SHARD) })
            .collect();
        let limits = StoreLimits { max_per_source: limits.max_per_source.max(1), ..limits };
        Self { shards, limits, used_bytes: AtomicU64::new(0), stats }
    }

    pub fn limits(&self) -> StoreLimits {
        self.limits
    }

    pub fn stats(&self) -> &StoreStats {
        &self.stats
    }

    /// Accounted bytes currently held.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes.load(Ordering::Relaxed)
    }

    /// The shard of a source id (exposed for the model test, which mirrors the pruning order).
    pub fn shard_of(source_id: &str) -> usize {
        shard_of_hash(source_hash(source_id))
    }

    /// Stores a copy of the envelope's bytes. The copy gives every stored envelope its own allocation,
    /// so evicting it frees exactly what was accounted (a slice would pin the whole receive buffer).
    pub fn insert(&self, envelope: &RawEnvelope) {
        self.insert_bytes(envelope, Bytes::copy_from_slice(&envelope.bytes));
    }

    /// Stores the envelope's bytes as they are; the caller guarantees they own their allocation
    /// (e.g. freshly encoded), so no copy is needed.
    pub fn insert_owned(&self, envelope: RawEnvelope) {
        let bytes = envelope.bytes.clone();
        self.insert_bytes(&envelope, bytes);
    }

    /// Stores a copy of every envelope of a received batch (the nozzle's unit, §6.10).
    ///
    /// The outcome is exactly that of [`Store::insert`] on each envelope in order: the same entries in
    /// the same order, the same evictions, counters and accounting. When the batch cannot take the
    /// store over its memory cap (the accounted total plus an upper bound of what the batch adds stays
    /// under it, so no insert of the batch would prune), envelopes are grouped by shard and source:
    /// one lock per shard, one lookup and one pruning-index update per source, counters once.
    /// Otherwise they are inserted one by one, so that pruning happens exactly where it would.
    pub fn insert_batch(&self, envelopes: &[RawEnvelope]) {
        let most_added: u64 =
            envelopes.iter().map(|e| e.bytes.len() as u64 + ENTRY_OVERHEAD_BYTES + SOURCE_OVERHEAD_BYTES).sum();
        let used = self.used_bytes.load(Ordering::Acquire);
        if envelopes.len() < 2 || used.saturating_add(most_added) > self.limits.memory_limit_bytes {
            for envelope in envelopes {
                self.insert(envelope);
            }
            return;
        }

        let mut slots: Vec<BatchSlot> = envelopes
            .iter()
            .enumerate()
            .map(|(index, envelope)| {
                let source_hash = source_hash_of_bytes(envelope.source_id_bytes());
                BatchSlot { shard: shard_of_hash(source_hash), source_hash, index }
            })
            .collect();
        // `index` makes every key distinct, so the unstable sort is deterministic and keeps each
        // source's envelopes in arrival order.
        slots.sort_unstable_by_key(|slot| (slot.shard, slot.source_hash, slot.index));

        let mut totals = InsertTotals::default();
        for shard_slots in slots.chunk_by(|a, b| a.shard == b.shard) {
            let shard = &self.shards[shard_slots[0].shard];
            let mut inner = shard.inner.write();
            let mut index_changed = false;
            // Runs of one source: equal hash and id (a hash collision only splits two sources' runs).
            let same_source = |a: &BatchSlot, b: &BatchSlot| {
                a.source_hash == b.source_hash
                    && envelopes[a.index].source_id_bytes() == envelopes[b.index].source_id_bytes()
            };
            for run in shard_slots.chunk_by(same_source) {
                let source_id = envelopes[run[0].index].source_id();
                // Each copy is made under the lock, just before the insert that may free an evicted
                // entry of the same size: the allocator recycles it at once.
                let entries = run.iter().map(|slot| {
                    let envelope = &envelopes[slot.index];
                    Entry::new(envelope, Bytes::copy_from_slice(&envelope.bytes))
                });
                index_changed |= inner.store_run(source_id, entries, self.limits.max_per_source, &mut totals);
            }
            if index_changed {
                shard.publish_oldest(&inner);
            }
        }
        self.account(totals);
    }

    fn insert_bytes(&self, envelope: &RawEnvelope, bytes: Bytes) {
        let entry = Entry::new(envelope, bytes);
        let source_id = envelope.source_id();
        let shard = &self.shards[Self::shard_of(source_id)];
        let mut totals = InsertTotals::default();
        {
            let mut inner = shard.inner.write();
            if inner.store_run(source_id, std::iter::once(entry), self.limits.max_per_source, &mut totals) {
                shard.publish_oldest(&inner);
            }
        }
        self.account(totals);
    }

    /// Applies what an insert or a batch changed to the counters and the accounted total, and prunes
    /// if the total is over the cap.
    fn account(&self, totals: InsertTotals) {
        let InsertTotals { stored, expired, new_sources, added, freed } = totals;
        if new_sources > 0 {
            self.stats.sources.add(new_sources as i64);
        }
        self.stats.ingress.add(stored);
        self.stats.envelopes.add(stored as i64 - expired as i64);
        if expired > 0 {
            self.stats.expired_by_source_cap.add(expired);
        }
        let used = if added >= freed {
            self.used_bytes.fetch_add(added - freed, Ordering::AcqRel) + (added - freed)
        } else {
            self.used_bytes.fetch_sub(freed - added, Ordering::AcqRel) - (freed - added)
        };
        if used > self.limits.memory_limit_bytes {
            self.prune();
        }
        self.stats.memory_bytes.set(self.used_bytes.load(Ordering::Relaxed) as i64);
    }

    /// Evicts the globally oldest envelopes until the accounted total is under the low-water mark.
    ///
    /// Each round picks the shard publishing the smallest oldest timestamp (ties: lowest shard index),
    /// then evicts from it, oldest source first (ties: smallest source id), for as long as its next
    /// candidate still precedes every other shard's oldest. Evictions therefore follow the global
    /// order `(timestamp, shard, source id)` exactly when single-threaded, and within one round's
    /// race window otherwise.
    fn prune(&self) {
        let target = self.limits.memory_limit_bytes / 100 * LOW_WATER_PERCENT;
        while self.used_bytes.load(Ordering::Acquire) > target {
            let mut best: Option<(i64, usize)> = None;
            let mut runner_up: Option<(i64, usize)> = None;
            for (index, shard) in self.shards.iter().enumerate() {
                let oldest = shard.oldest.load(Ordering::Acquire);
                if oldest == EMPTY_SHARD {
                    continue;
                }
                let candidate = (oldest, index);
                if best.is_none_or(|b| candidate < b) {
                    runner_up = best;
                    best = Some(candidate);
                } else if runner_up.is_none_or(|r| candidate < r) {
                    runner_up = Some(candidate);
                }
            }
            let Some((_, index)) = best else {
                return;
            };
            if !self.prune_shard(index, runner_up, target) {
                // The shard emptied under us; look again.
                continue;
            }
        }
    }

    /// Evicts from one shard while its oldest precedes `runner_up` and the total is over `target`.
    /// Answers whether anything was evicted.
    fn prune_shard(&self, index: usize, runner_up: Option<(i64, usize)>, target: u64) -> bool {
        let shard = &self.shards[index];
        let mut inner = shard.inner.write();
        let inner = &mut *inner;
        let mut evicted_any = false;
        let mut freed = 0;
        let mut evicted = 0i64;
        let mut removed_sources = 0i64;
        while let Some((ts, key)) = inner.by_oldest.first().cloned() {
            if evicted_any && runner_up.is_some_and(|r| (ts, index) > r) {
                break;
            }
            let used = self.used_bytes.load(Ordering::Acquire).saturating_sub(freed);
            if used <= target {
                break;
            }
            inner.by_oldest.pop_first();
            let Some(source) = inner.sources.get_mut(&key) else {
                continue;
            };
            if let Some(entry) = source.pop_oldest() {
                freed += entry.accounted_size();
                source.expired += 1;
                evicted += 1;
                evicted_any = true;
            }
            match source.oldest() {
                Some(next) => {
                    inner.by_oldest.insert((next, key));
                }
                None => {
                    inner.sources.remove(&key);
                    freed += SOURCE_OVERHEAD_BYTES;
                    removed_sources += 1;
                }
            }
        }
        shard.publish_oldest(inner);
        self.used_bytes.fetch_sub(freed, Ordering::AcqRel);
        self.stats.pruned_by_memory.add(evicted as u64);
        self.stats.envelopes.add(-evicted);
        self.stats.sources.add(-removed_sources);
        evicted_any
    }

    /// Reads one source as §6.2 says; `filter` is already validated. Returns encoded envelopes.
    pub fn read(&self, source_id: &str, filter: &ReadFilter) -> Vec<Bytes> {
        let hits = self.collect_hits(source_id, filter);
        let mut out = Vec::with_capacity(hits.len());
        for hit in hits {
            match hit {
                Hit::Whole(bytes) => out.push(bytes),
                Hit::FilterGaugeKeys(bytes) => {
                    if let Some(bytes) = filter.retain_matching_gauge_keys(&bytes) {
                        out.push(bytes);
                    }
                }
            }
        }
        self.stats.egress.add(out.len() as u64);
        out
    }

    fn collect_hits(&self, source_id: &str, filter: &ReadFilter) -> Vec<Hit> {
        let shard = &self.shards[Self::shard_of(source_id)];
        let inner = shard.inner.read();
        let Some(source) = inner.sources.get(source_id) else {
            return Vec::new();
        };
        if filter.start >= filter.end {
            return Vec::new();
        }
        let entries = &source.entries;
        let lo = entries.partition_point(|e| e.timestamp < filter.start);
        let hi = entries.partition_point(|e| e.timestamp < filter.end);
        let range = entries.range(lo..hi);
        let mut hits = Vec::with_capacity(filter.limit.min(hi - lo));
        if filter.descending {
            collect_limited(range.rev(), filter, &mut hits);
        } else {
            collect_limited(range, filter, &mut hits);
        }
        hits
    }

    /// Every GAUGE, COUNTER and TIMER envelope of a source with a timestamp in `[start, end]`,
    /// ascending, still encoded (the PromQL data path, §6.6).
    pub fn metric_envelopes(&self, source_id: &str, start: i64, end_inclusive: i64) -> Vec<Bytes> {
        let shard = &self.shards[Self::shard_of(source_id)];
        let inner = shard.inner.read();
        let Some(source) = inner.sources.get(source_id) else {
            return Vec::new();
        };
        let entries = &source.entries;
        let lo = entries.partition_point(|e| e.timestamp < start);
        let hi = entries.partition_point(|e| e.timestamp <= end_inclusive);
        if lo >= hi {
            return Vec::new();
        }
        entries
            .range(lo..hi)
            .filter(|e| matches!(e.kind, Some(EnvelopeKind::Gauge | EnvelopeKind::Counter | EnvelopeKind::Timer)))
            .map(|e| e.bytes.clone())
            .collect()
    }

    /// Meta of every source held (§6.3).
    pub fn meta(&self) -> HashMap<String, MetaInfo> {
        let mut meta = HashMap::new();
        for shard in self.shards.iter() {
            let inner = shard.inner.read();
            for (id, source) in &inner.sources {
                let Some(oldest) = source.oldest() else {
                    continue;
                };
                meta.insert(
                    id.to_string(),
                    MetaInfo {
                        count: source.entries.len() as i64,
                        expired: source.expired as i64,
                        oldest_timestamp: oldest,
                        newest_timestamp: source.newest,
                    },
                );
            }
        }
        meta
    }
}

/// Walks entries in read order, keeping those that pass the filter, up to the limit, and then every
/// further entry with the same timestamp as the last one kept (§6.2: a limit never splits a group).
fn collect_limited<'a>(entries: impl Iterator<Item = &'a Entry>, filter: &ReadFilter, hits: &mut Vec<Hit>) {
    let mut boundary: Option<i64> = None;
    for entry in entries {
        if let Some(ts) = boundary {
            if entry.timestamp != ts {
                break;
            }
        }
        if !filter.types.contains(entry.kind) {
            continue;
        }
        let hit = match filter.name_match(entry.kind, entry.name(), &entry.bytes) {
            NameMatch::No => continue,
            NameMatch::Whole => Hit::Whole(entry.bytes.clone()),
            NameMatch::SomeGaugeKeys => Hit::FilterGaugeKeys(entry.bytes.clone()),
        };
        hits.push(hit);
        if boundary.is_none() && hits.len() >= filter.limit {
            boundary = Some(entry.timestamp);
        }
    }
}

/// The hash that places a source id in a shard.
fn source_hash(source_id: &str) -> u64 {
    source_hash_of_bytes(source_id.as_bytes())
}

fn source_hash_of_bytes(source_id: &[u8]) -> u64 {
    // A seed different from the cluster's hash, so that shards stay balanced within one node.
    xxhash_rust::xxh64::xxh64(source_id, 0x6c6f_6763_6163_6865)
}

fn shard_of_hash(hash: u64) -> usize {
    (hash % SHARDS as u64) as usize
}

/// The counter/timer name of a scanned envelope as an offset and length within its bytes.
fn name_range(envelope: &RawEnvelope) -> (u32, u32) {
    let name = envelope.name();
    if name.is_empty() {
        return (0, 0);
    }
    let base = envelope.bytes.as_ptr() as usize;
    let start = (name.as_ptr() as usize).wrapping_sub(base);
    match start.checked_add(name.len()) {
        Some(end) if end <= envelope.bytes.len() => match (u32::try_from(start), u32::try_from(name.len())) {
            (Ok(start), Ok(len)) => (start, len),
            _ => (0, 0),
        },
        _ => (0, 0),
    }
}
