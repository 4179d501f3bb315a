//! A bounded many-writer / one-reader ring buffer that never makes a writer wait.
//!
//! This is Loggregator's "diode": when the reader falls behind and the buffer is full, a write
//! displaces the oldest entry, and the displaced entry is counted as dropped. Writers never block
//! and never wait for the reader; the reader can await new data without spinning.
//!
//! Accounting is exact: every entry pushed is, at any quiescent point, read, dropped, or still held.
//!
//! A diode may also be bounded by weight (for envelopes, their bytes): a count alone does not bound
//! memory when one entry can be a few bytes or megabytes. Beyond the weight limit a write drops the
//! oldest entries, as beyond the count.
//!
//! Built on `crossbeam_queue::ArrayQueue::force_push`, which returns the displaced element, and
//! `tokio::sync::Notify`, whose stored permit means a push between the reader's empty check and its
//! wait is never missed.

use std::num::NonZeroUsize;
use std::sync::atomic::{fence, AtomicBool, AtomicIsize, AtomicU64, Ordering};

use crossbeam_queue::ArrayQueue;
use tokio::sync::Notify;

pub struct Diode<T> {
    queue: ArrayQueue<T>,
    notify: Notify,
    /// Set by the reader before it parks, so writers only pay for a wake-up when one is needed.
    reader_waiting: AtomicBool,
    read: AtomicU64,
    dropped: AtomicU64,
    limit: Option<WeightLimit<T>>,
}

/// The second bound of [`Diode::with_weight_limit`].
struct WeightLimit<T> {
    weigh: fn(&T) -> usize,
    max: isize,
    /// What the entries in the queue weigh. A write adds its entries' weight once, after queueing
    /// them (one atomic per write, not per entry), so a reader may take an entry off first and the
    /// sum dip below zero for a moment: it is exact whenever no write or read is in flight, and
    /// the limit holds to within what concurrent writes have in flight.
    held: AtomicIsize,
}

impl<T> Diode<T> {
    pub fn new(capacity: NonZeroUsize) -> Self {
        Self::build(capacity, None)
    }

    /// A diode bounded by weight as well as by count: when the entries it holds weigh more than
    /// `max_weight` (by `weigh`), a write drops the oldest, and counts them, until they fit. An
    /// entry heavier than the limit on its own is kept, alone.
    pub fn with_weight_limit(capacity: NonZeroUsize, max_weight: usize, weigh: fn(&T) -> usize) -> Self {
        let max = isize::try_from(max_weight).unwrap_or(isize::MAX);
        Self::build(capacity, Some(WeightLimit { weigh, max, held: AtomicIsize::new(0) }))
    }

    fn build(capacity: NonZeroUsize, limit: Option<WeightLimit<T>>) -> Self {
        Self {
            queue: ArrayQueue::new(capacity.get()),
            notify: Notify::new(),
            reader_waiting: AtomicBool::new(false),
            read: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            limit,
        }
    }

    /// Adds `value`; if the diode is full, the oldest entries are dropped to make room. Returns how
    /// many were dropped (they are also counted in [`Self::dropped`]).
    pub fn push(&self, value: T) -> u64 {
        self.push_many(std::iter::once(value))
    }

    /// Adds every value of `values`, oldest first; returns how many entries were dropped to make room.
    /// One wake-up handshake for the whole batch instead of one per entry.
    pub fn push_many(&self, values: impl IntoIterator<Item = T>) -> u64 {
        let mut displaced = 0u64;
        match &self.limit {
            None => {
                for value in values {
                    if self.queue.force_push(value).is_some() {
                        displaced += 1;
                    }
                }
            }
            Some(limit) => {
                let mut change = 0isize;
                for value in values {
                    change = change.wrapping_add((limit.weigh)(&value) as isize);
                    if let Some(old) = self.queue.force_push(value) {
                        change = change.wrapping_sub((limit.weigh)(&old) as isize);
                        displaced += 1;
                    }
                }
                let mut held = limit.held.fetch_add(change, Ordering::Relaxed).wrapping_add(change);
                // Shed the oldest until the rest fits; the newest stays even if it alone does not.
                while held > limit.max && self.queue.len() > 1 {
                    let Some(old) = self.queue.pop() else { break };
                    let weight = (limit.weigh)(&old) as isize;
                    held = limit.held.fetch_sub(weight, Ordering::Relaxed).wrapping_sub(weight);
                    displaced += 1;
                }
            }
        }
        if displaced > 0 {
            self.dropped.fetch_add(displaced, Ordering::Relaxed);
        }
        // Pairs with the fence in `wait_for_data`: either the reader sees our entries, or we see its
        // flag (a store-load handshake, so both sides need a full fence).
        fence(Ordering::SeqCst);
        if self.reader_waiting.load(Ordering::Relaxed) {
            self.notify.notify_one();
        }
        displaced
    }

    /// Takes the oldest entry, if any.
    pub fn try_pop(&self) -> Option<T> {
        let value = self.queue.pop();
        if let Some(value) = &value {
            self.read.fetch_add(1, Ordering::Relaxed);
            if let Some(limit) = &self.limit {
                limit.held.fetch_sub((limit.weigh)(value) as isize, Ordering::Relaxed);
            }
        }
        value
    }

    /// Moves up to `max` entries into `out`, oldest first; returns how many.
    pub fn pop_batch(&self, out: &mut Vec<T>, max: usize) -> usize {
        // No byte limit: nothing is ever carried.
        self.pop_batch_within(out, max, usize::MAX, |_| 0, &mut None)
    }

    /// As [`Self::pop_batch`], and the batch also stops short of `max_bytes` by `size`: the entry
    /// that would take it past the limit is left in `carry`, to open the next call's batch (an
    /// entry over the limit on its own makes a batch of one). A carried entry counts as read.
    /// Returns how many entries it appended to `out`, the carried one included.
    pub fn pop_batch_within(
        &self,
        out: &mut Vec<T>,
        max: usize,
        max_bytes: usize,
        size: impl Fn(&T) -> usize,
        carry: &mut Option<T>,
    ) -> usize {
        let start = out.len();
        let mut bytes = 0usize;
        let mut popped = 0u64;
        let mut weight = 0isize;
        if let Some(first) = carry.take() {
            bytes = size(&first);
            out.push(first);
        }
        while out.len() - start < max {
            let Some(value) = self.queue.pop() else { break };
            popped += 1;
            if let Some(limit) = &self.limit {
                weight = weight.wrapping_add((limit.weigh)(&value) as isize);
            }
            let len = size(&value);
            if out.len() > start && bytes.saturating_add(len) > max_bytes {
                *carry = Some(value);
                break;
            }
            bytes += len;
            out.push(value);
        }
        if popped > 0 {
            self.read.fetch_add(popped, Ordering::Relaxed);
            if let Some(limit) = &self.limit {
                limit.held.fetch_sub(weight, Ordering::Relaxed);
            }
        }
        out.len() - start
    }

    /// Waits until the diode holds at least one entry. Only the single reader may call this.
    pub async fn wait_for_data(&self) {
        loop {
            if !self.queue.is_empty() {
                return;
            }
            self.reader_waiting.store(true, Ordering::Relaxed);
            fence(Ordering::SeqCst);
            // Re-check after announcing ourselves: a push that missed the flag is seen here, and a
            // push after it stores a Notify permit, so the wait below cannot miss it.
            if !self.queue.is_empty() {
                self.reader_waiting.store(false, Ordering::Relaxed);
                return;
            }
            self.notify.notified().await;
            self.reader_waiting.store(false, Ordering::Relaxed);
        }
    }

    /// Takes the oldest entry, waiting for one if empty.
    pub async fn pop(&self) -> T {
        loop {
            if let Some(value) = self.try_pop() {
                return value;
            }
            self.wait_for_data().await;
        }
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    pub fn capacity(&self) -> usize {
        self.queue.capacity()
    }

    /// What the held entries weigh (0 without a weight limit). Exact whenever no push or pop is
    /// in flight.
    pub fn weight(&self) -> usize {
        self.limit.as_ref().map_or(0, |limit| usize::try_from(limit.held.load(Ordering::Relaxed)).unwrap_or(0))
    }

    /// Entries pushed so far. Derived rather than counted, to keep one atomic off every push: each
    /// push either adds an entry or displaces one (a drop), so exact whenever no push is in flight.
    pub fn written(&self) -> u64 {
        self.read() + self.dropped() + self.len() as u64
    }

    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    fn diode<T>(capacity: usize) -> Diode<T> {
        Diode::new(NonZeroUsize::new(capacity).expect("test capacity is non-zero"))
    }

    #[test]
    fn full_diode_drops_the_oldest_and_counts_it() {
        let d = diode(3);
        for i in 0..5 {
            d.push(i);
        }
        assert_eq!(d.dropped(), 2);
        let mut out = Vec::new();
        d.pop_batch(&mut out, 10);
        assert_eq!(out, vec![2, 3, 4]);
        assert_eq!(d.written(), 5);
        assert_eq!(d.read(), 3);
    }

    #[test]
    fn push_many_drops_the_oldest_and_counts_like_push() {
        let d = diode(3);
        assert_eq!(d.push_many(0..5), 2);
        assert_eq!(d.dropped(), 2);
        let mut out = Vec::new();
        d.pop_batch(&mut out, 10);
        assert_eq!(out, vec![2, 3, 4]);
        assert_eq!(d.written(), 5);
    }

    #[tokio::test]
    async fn push_many_wakes_the_reader() {
        let d = Arc::new(diode::<u32>(4));
        let reader = {
            let d = Arc::clone(&d);
            tokio::spawn(async move { d.pop().await })
        };
        tokio::task::yield_now().await;
        d.push_many([7, 8]);
        let value = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("woken").expect("no panic");
        assert_eq!(value, 7);
    }

    #[test]
    fn pop_batch_respects_max() {
        let d = diode(10);
        for i in 0..7 {
            d.push(i);
        }
        let mut out = Vec::new();
        assert_eq!(d.pop_batch(&mut out, 4), 4);
        assert_eq!(out, vec![0, 1, 2, 3]);
        assert_eq!(d.len(), 3);
    }

    #[test]
    fn pop_batch_within_stops_short_of_the_byte_limit_and_carries_the_rest() {
        let d = diode::<Vec<u8>>(10);
        for len in [400, 400, 400, 1500, 100, 100] {
            d.push(vec![0; len]);
        }
        let mut carry = None;
        let mut batches = Vec::new();
        loop {
            let mut out = Vec::new();
            if d.pop_batch_within(&mut out, 10, 1000, Vec::len, &mut carry) == 0 {
                break;
            }
            batches.push(out.iter().map(Vec::len).collect::<Vec<_>>());
        }
        // 400+400 fit, the third 400 would pass 1000; 1500 is alone; the count limit never binds.
        assert_eq!(batches, vec![vec![400, 400], vec![400], vec![1500], vec![100, 100]]);
        assert!(carry.is_none());
        assert_eq!(d.read(), 6);
        // The count limit still applies.
        for _ in 0..5 {
            d.push(vec![1]);
        }
        let mut out = Vec::new();
        assert_eq!(d.pop_batch_within(&mut out, 3, 1000, Vec::len, &mut carry), 3);
        // Both limits count what this call appends, not what `out` already held.
        assert_eq!(d.pop_batch_within(&mut out, 1, 1000, Vec::len, &mut carry), 1);
        assert_eq!(d.pop_batch(&mut out, 10), 1);
        assert_eq!(out.len(), 5);
        assert_eq!(d.read(), 11);
    }

    #[test]
    fn weight_limit_drops_the_oldest_until_the_rest_fits() {
        let d = Diode::with_weight_limit(NonZeroUsize::new(100).unwrap(), 1000, Vec::<u8>::len);
        assert_eq!(d.push(vec![0; 400]), 0);
        assert_eq!(d.push_many([vec![1; 400], vec![2; 100]]), 0);
        assert_eq!(d.weight(), 900);
        // 1200 > 1000: the oldest (400) goes, 800 stay.
        assert_eq!(d.push(vec![3; 300]), 1);
        assert_eq!(d.weight(), 800);
        assert_eq!(d.dropped(), 1);
        // Heavier than the limit on its own: everything older goes, it stays alone.
        assert_eq!(d.push(vec![4; 1500]), 3);
        assert_eq!((d.len(), d.weight(), d.dropped()), (1, 1500, 4));
        assert_eq!(d.try_pop().map(|v| v[0]), Some(4));
        assert_eq!(d.weight(), 0);
        // Pops give the weight back: batches, and a carried entry counts as taken.
        d.push_many([vec![5; 600], vec![6; 300], vec![7; 50]]);
        let (mut out, mut carry) = (Vec::new(), None);
        assert_eq!(d.pop_batch_within(&mut out, 10, 700, Vec::len, &mut carry), 1);
        assert_eq!(d.weight(), 50, "the 300 in `carry` is out of the diode");
        assert_eq!(d.pop_batch(&mut out, 10), 1);
        assert_eq!(d.weight(), 0);
        assert_eq!(d.written(), d.read() + d.dropped() + d.len() as u64);
        // The count limit still applies, and gives the weight back too.
        let small = Diode::with_weight_limit(NonZeroUsize::new(2).unwrap(), 1000, Vec::<u8>::len);
        assert_eq!(small.push_many([vec![0; 10], vec![0; 20], vec![0; 30]]), 1);
        assert_eq!(small.weight(), 50);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_and_one_reader_account_for_every_entry() {
        concurrent_accounting(diode::<(u64, u64)>(64)).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_writers_and_one_reader_account_for_every_entry_and_its_weight() {
        // Weights 1..=7 against a limit of 100: the weight limit binds long before the count.
        let d =
            Diode::with_weight_limit(NonZeroUsize::new(64).unwrap(), 100, |&(_, i): &(u64, u64)| (i % 7 + 1) as usize);
        let d = concurrent_accounting(d).await;
        assert_eq!(d.weight(), 0, "everything left the diode, so did its weight");
        assert!(d.dropped() > 0);
    }

    async fn concurrent_accounting(d: Diode<(u64, u64)>) -> Arc<Diode<(u64, u64)>> {
        const WRITERS: u64 = 4;
        const PER_WRITER: u64 = 50_000;
        let d = Arc::new(d);
        let writers: Vec<_> = (0..WRITERS)
            .map(|w| {
                let d = Arc::clone(&d);
                std::thread::spawn(move || {
                    for i in 0..PER_WRITER {
                        d.push((w, i));
                    }
                })
            })
            .collect();
        let reader = {
            let d = Arc::clone(&d);
            tokio::spawn(async move {
                let mut seen = 0u64;
                let mut last = [None::<u64>; WRITERS as usize];
                let mut batch = Vec::new();
                loop {
                    batch.clear();
                    if d.pop_batch(&mut batch, 100) == 0 {
                        if d.written() == WRITERS * PER_WRITER && d.is_empty() {
                            return seen;
                        }
                        // Bounded wait: writers may be finished with nothing left to wake us.
                        let _ = tokio::time::timeout(Duration::from_millis(50), d.wait_for_data()).await;
                        continue;
                    }
                    for &(w, i) in &batch {
                        // Per writer, entries come out in the order they went in.
                        if let Some(prev) = last[w as usize] {
                            assert!(i > prev, "writer {w}: {i} after {prev}");
                        }
                        last[w as usize] = Some(i);
                    }
                    seen += batch.len() as u64;
                }
            })
        };
        for w in writers {
            w.join().expect("writer thread panicked");
        }
        let seen = tokio::time::timeout(Duration::from_secs(30), reader)
            .await
            .expect("reader finished")
            .expect("reader did not panic");
        assert_eq!(d.written(), WRITERS * PER_WRITER);
        assert_eq!(d.written(), d.read() + d.dropped());
        assert_eq!(seen, d.read());
        d
    }

    #[tokio::test]
    async fn reader_wakes_when_a_writer_pushes() {
        let d = Arc::new(diode::<u32>(4));
        let reader = {
            let d = Arc::clone(&d);
            tokio::spawn(async move { d.pop().await })
        };
        tokio::task::yield_now().await;
        d.push(42);
        let value = tokio::time::timeout(Duration::from_secs(5), reader).await.expect("woken").expect("no panic");
        assert_eq!(value, 42);
    }
}
