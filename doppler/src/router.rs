//! Routing: which subscriptions receive an envelope (PROTOCOLS.md §2.4, §2.5).
//!
//! Subscriptions are grouped by (selector filter, shard id). For each envelope and each matching
//! group, an empty shard id delivers to every member; a non-empty one to exactly one member, chosen by
//! the deterministic-name hash when any member set one (crc64 of the counter name, or the sum of the
//! gauge keys' crc64s), otherwise at random.
//!
//! The routing table is immutable and swapped whole (`ArcSwap`) when a subscription comes or goes, so
//! the ingress path takes no lock: it loads the table once per batch, looks up the envelope's source id
//! and the "any source" groups, and pushes a `Bytes` clone (a reference count) into each chosen
//! subscriber's diode. Rebuilding is O(subscriptions), which is fine for subscription churn measured in
//! streams per second; routing stays O(matching groups) per envelope.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use loggregator_proto::scan::crc64_ecma;
use loggregator_proto::v2::{selector, Selector};
use loggregator_proto::{EnvelopeKind, RawEnvelope};
use parking_lot::Mutex;
use plumbing::{Counter, Diode};

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

/// Identifies one subscription (one egress stream) within this Doppler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SubscriptionId(pub u64);

/// The buffer of one subscription, shared by the router (writers) and its egress stream (reader).
pub struct Subscriber {
    pub diode: Diode<Bytes>,
    /// Doppler-wide `dropped{direction="egress"}`.
    dropped: Counter,
}

impl Subscriber {
    pub fn new(diode: Diode<Bytes>, dropped: Counter) -> Self {
        Self { diode, dropped }
    }

    /// Counts envelopes this subscription lost outside its diode (taken out, but never delivered).
    pub fn count_lost(&self, n: u64) {
        self.dropped.add(n);
    }

    #[inline]
    fn deliver(&self, envelope: &Bytes) {
        let dropped = self.diode.push(envelope.clone());
        if dropped > 0 {
            self.dropped.add(dropped);
        }
    }

    /// One diode write (one fence, one wake-up) for everything a batch routed here.
    fn deliver_many(&self, envelopes: &mut Vec<Bytes>) {
        let dropped = self.diode.push_many(envelopes.drain(..));
        if dropped > 0 {
            self.dropped.add(dropped);
        }
    }
}

/// Per-subscriber staging for [`Table::route_batch`], kept by the caller across batches so routing
/// allocates nothing once warm.
#[derive(Default)]
pub struct Staging {
    per_subscriber: Vec<Vec<Bytes>>,
}

/// What a subscription asked for.
#[derive(Clone)]
pub struct SubscriptionSpec {
    pub shard_id: String,
    pub deterministic_name: String,
    pub selectors: Vec<Selector>,
    pub subscriber: Arc<Subscriber>,
}

/// The type part of a selector, normalized for grouping.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum TypeFilter {
    Log,
    /// Counter with this exact name; empty means every counter.
    Counter(String),
    /// Gauge with exactly this key set, as (sum of crc64, count); `None` means every gauge.
    Gauge(Option<(u64, u32)>),
    Timer,
    Event,
}

fn type_filter(selector: &Selector) -> Option<TypeFilter> {
    Some(match selector.message.as_ref()? {
        selector::Message::Log(_) => TypeFilter::Log,
        selector::Message::Counter(c) => TypeFilter::Counter(c.name.clone()),
        selector::Message::Gauge(g) if g.names.is_empty() => TypeFilter::Gauge(None),
        selector::Message::Gauge(g) => {
            // A set: a name listed twice counts once, as a gauge's map key does.
            let mut names: Vec<&str> = g.names.iter().map(String::as_str).collect();
            names.sort_unstable();
            names.dedup();
            let hash = names.iter().fold(0u64, |acc, n| acc.wrapping_add(crc64_ecma(n.as_bytes())));
            TypeFilter::Gauge(Some((hash, names.len() as u32)))
        }
        selector::Message::Timer(_) => TypeFilter::Timer,
        selector::Message::Event(_) => TypeFilter::Event,
    })
}

/// Members of one (filter, shard id) group.
struct Group {
    /// Empty: every member gets every envelope.
    shard_id: String,
    /// Indexes into [`Table::subscribers`], sorted by deterministic name when `deterministic` (so
    /// every Doppler picks alike).
    members: Vec<usize>,
    deterministic: bool,
}

impl Group {
    /// Calls `to` with the index of every member that receives `envelope`.
    #[inline]
    fn deliver(&self, envelope: &RawEnvelope, to: &mut impl FnMut(usize)) {
        if self.shard_id.is_empty() {
            for &member in &self.members {
                to(member);
            }
            return;
        }
        let n = self.members.len();
        let index = if n == 1 {
            0
        } else if self.deterministic {
            match envelope.meta.kind {
                Some(EnvelopeKind::Counter) => (crc64_ecma(envelope.name().as_bytes()) % n as u64) as usize,
                Some(EnvelopeKind::Gauge) => (envelope.meta.gauge_keys_hash % n as u64) as usize,
                _ => fastrand::usize(..n),
            }
        } else {
            fastrand::usize(..n)
        };
        to(self.members[index]);
    }
}

/// The groups of one source id (or of "any source").
#[derive(Default)]
struct Groups {
    log: Vec<Group>,
    counter_any: Vec<Group>,
    counter_by_name: FastMap<String, Vec<Group>>,
    gauge_any: Vec<Group>,
    gauge_by_keys: FastMap<(u64, u32), Vec<Group>>,
    timer: Vec<Group>,
    event: Vec<Group>,
}

impl Groups {
    fn slot(&mut self, filter: &TypeFilter) -> &mut Vec<Group> {
        match filter {
            TypeFilter::Log => &mut self.log,
            TypeFilter::Counter(name) if name.is_empty() => &mut self.counter_any,
            TypeFilter::Counter(name) => self.counter_by_name.entry(name.clone()).or_default(),
            TypeFilter::Gauge(None) => &mut self.gauge_any,
            TypeFilter::Gauge(Some(keys)) => self.gauge_by_keys.entry(*keys).or_default(),
            TypeFilter::Timer => &mut self.timer,
            TypeFilter::Event => &mut self.event,
        }
    }

    #[inline]
    fn deliver(&self, envelope: &RawEnvelope, to: &mut impl FnMut(usize)) {
        let mut deliver_all = |groups: &[Group]| groups.iter().for_each(|g| g.deliver(envelope, to));
        match envelope.meta.kind {
            Some(EnvelopeKind::Log) => deliver_all(&self.log),
            Some(EnvelopeKind::Counter) => {
                deliver_all(&self.counter_any);
                if !self.counter_by_name.is_empty() {
                    if let Some(groups) = self.counter_by_name.get(envelope.name()) {
                        deliver_all(groups);
                    }
                }
            }
            Some(EnvelopeKind::Gauge) => {
                deliver_all(&self.gauge_any);
                if !self.gauge_by_keys.is_empty() {
                    let key = (envelope.meta.gauge_keys_hash, envelope.meta.gauge_key_count);
                    if let Some(groups) = self.gauge_by_keys.get(&key) {
                        deliver_all(groups);
                    }
                }
            }
            Some(EnvelopeKind::Timer) => deliver_all(&self.timer),
            Some(EnvelopeKind::Event) => deliver_all(&self.event),
            None => {}
        }
    }
}

/// An immutable snapshot of every subscription, indexed for routing.
#[derive(Default)]
pub struct Table {
    by_source: FastMap<String, Groups>,
    any_source: Groups,
    /// Every subscription's buffer; groups refer to them by index.
    subscribers: Vec<Arc<Subscriber>>,
}

impl Table {
    fn build(specs: &BTreeMap<SubscriptionId, SubscriptionSpec>) -> Self {
        // (source id, filter, shard id) -> [(deterministic name, subscriber)]
        type Members = Vec<(String, usize)>;
        let mut grouped: BTreeMap<(String, TypeFilter, String), Members> = BTreeMap::new();
        let mut table = Table::default();
        for (index, spec) in specs.values().enumerate() {
            table.subscribers.push(Arc::clone(&spec.subscriber));
            for selector in &spec.selectors {
                // The Doppler silently skips selectors without a message type (§2.4).
                let Some(filter) = type_filter(selector) else { continue };
                grouped
                    .entry((selector.source_id.clone(), filter, spec.shard_id.clone()))
                    .or_default()
                    .push((spec.deterministic_name.clone(), index));
            }
        }
        for ((source_id, filter, shard_id), mut members) in grouped {
            let deterministic = members.iter().any(|(name, _)| !name.is_empty());
            if deterministic {
                members.sort_by(|a, b| a.0.cmp(&b.0));
            }
            let group = Group { shard_id, members: members.into_iter().map(|(_, i)| i).collect(), deterministic };
            let groups = if source_id.is_empty() {
                &mut table.any_source
            } else {
                table.by_source.entry(source_id).or_default()
            };
            groups.slot(&filter).push(group);
        }
        table
    }

    #[inline]
    fn route_each(&self, envelope: &RawEnvelope, to: &mut impl FnMut(usize)) {
        if !self.by_source.is_empty() {
            if let Some(groups) = self.by_source.get(envelope.source_id()) {
                groups.deliver(envelope, to);
            }
        }
        self.any_source.deliver(envelope, to);
    }

    /// Delivers one envelope to every subscription that asked for it.
    pub fn route(&self, envelope: &RawEnvelope) {
        self.route_each(envelope, &mut |s| self.subscribers[s].deliver(&envelope.bytes));
    }

    /// Delivers a batch: routed envelope by envelope into `staging`, then written to each
    /// subscription's diode at once, in order. Per envelope this is a `Vec` push per subscription
    /// (and a reference-count increment for every subscription but the last, which takes the
    /// envelope's own slice: an atomic increment and decrement saved on the common one-subscriber
    /// path); the diode's fence and wake-up are paid once per subscriber and batch. Empties
    /// `envelopes`.
    pub fn route_batch(&self, envelopes: &mut Vec<RawEnvelope>, staging: &mut Staging) {
        let n = self.subscribers.len();
        if n == 0 {
            envelopes.clear();
            return;
        }
        if staging.per_subscriber.len() < n {
            staging.per_subscriber.resize_with(n, Vec::new);
        }
        let staged = &mut staging.per_subscriber[..n];
        for envelope in envelopes.drain(..) {
            let mut last = None;
            self.route_each(&envelope, &mut |s| {
                if let Some(previous) = last.replace(s) {
                    staged[previous].push(envelope.bytes.clone());
                }
            });
            if let Some(s) = last {
                staged[s].push(envelope.bytes);
            }
        }
        for (subscriber, staged) in self.subscribers.iter().zip(staged.iter_mut()) {
            if !staged.is_empty() {
                subscriber.deliver_many(staged);
            }
        }
    }
}

/// The set of live subscriptions and the routing table built from them.
#[derive(Default)]
pub struct Router {
    table: ArcSwap<Table>,
    specs: Mutex<(u64, BTreeMap<SubscriptionId, SubscriptionSpec>)>,
}

impl Router {
    pub fn new() -> Self {
        Self::default()
    }

    /// The current table; hold it for a batch, not longer (it pins removed subscribers).
    #[inline]
    pub fn table(&self) -> arc_swap::Guard<Arc<Table>> {
        self.table.load()
    }

    pub fn subscribe(&self, spec: SubscriptionSpec) -> SubscriptionId {
        let mut guard = self.specs.lock();
        let (next, specs) = &mut *guard;
        *next += 1;
        let id = SubscriptionId(*next);
        specs.insert(id, spec);
        self.table.store(Arc::new(Table::build(specs)));
        id
    }

    pub fn unsubscribe(&self, id: SubscriptionId) {
        let mut guard = self.specs.lock();
        if guard.1.remove(&id).is_some() {
            self.table.store(Arc::new(Table::build(&guard.1)));
        }
    }

    pub fn subscription_count(&self) -> usize {
        self.specs.lock().1.len()
    }
}

#[cfg(test)]
mod tests;
