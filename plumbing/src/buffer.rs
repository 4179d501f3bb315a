//! A bounded drop-oldest buffer of encoded envelopes that takes memory only as it fills.
//!
//! The [`Diode`](crate::Diode) allocates its whole ring up front: right for the Doppler's 1000-slot
//! subscriptions and the agent's single ingress buffer, wrong for the reverse log proxy, whose
//! 10,000-envelope buffer per client stream (§2.5) would cost 400 KB for each of up to 1000 mostly
//! idle streams. This one grows with what it holds, gives the memory back once drained, and is
//! bounded by count and by bytes: past either limit a write drops the oldest entries and counts
//! them in the counter it was built with.
//!
//! Writers (one per upstream Doppler) push a whole received batch under one lock, and the reader
//! pops a whole outgoing batch under one: a lock per batch, never per envelope.

use std::collections::VecDeque;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::Counter;

/// Capacity kept after the buffer drains; beyond it the memory of a burst is returned.
const RETAINED_CAPACITY: usize = 256;

pub struct EnvelopeBuffer {
    inner: Mutex<Inner>,
    /// One stored permit: a push between the reader's empty check and its wait is not missed.
    notify: Notify,
    max_len: usize,
    max_bytes: usize,
    dropped: Counter,
}

struct Inner {
    queue: VecDeque<Bytes>,
    bytes: usize,
}

impl EnvelopeBuffer {
    /// Holds at most `max_len` envelopes and `max_bytes` bytes (an envelope larger than that on
    /// its own is kept, alone); what it drops is added to `dropped`.
    pub fn new(max_len: usize, max_bytes: usize, dropped: Counter) -> Self {
        Self {
            inner: Mutex::new(Inner { queue: VecDeque::new(), bytes: 0 }),
            notify: Notify::new(),
            max_len: max_len.max(1),
            max_bytes,
            dropped,
        }
    }

    /// Appends `envelopes`, oldest first, dropping the oldest held beyond the limits. Returns how
    /// many were dropped.
    pub fn push_all(&self, envelopes: impl IntoIterator<Item = Bytes>) -> u64 {
        let mut dropped = 0u64;
        {
            let mut inner = self.inner.lock();
            for envelope in envelopes {
                inner.bytes += envelope.len();
                inner.queue.push_back(envelope);
            }
            while inner.queue.len() > self.max_len || (inner.bytes > self.max_bytes && inner.queue.len() > 1) {
                let Some(old) = inner.queue.pop_front() else { break };
                inner.bytes -= old.len();
                dropped += 1;
            }
        }
        if dropped > 0 {
            self.dropped.add(dropped);
        }
        self.notify.notify_one();
        dropped
    }

    /// Moves up to `max` envelopes, and no more than fits in `max_bytes` as measured by `weigh`
    /// (at least one), into `out`; returns how many.
    pub fn pop_batch(&self, out: &mut Vec<Bytes>, max: usize, max_bytes: usize, weigh: fn(&Bytes) -> usize) -> usize {
        let mut inner = self.inner.lock();
        let (mut taken, mut weight) = (0, 0);
        while taken < max {
            let Some(front) = inner.queue.front() else { break };
            let w = weigh(front);
            if taken > 0 && weight + w > max_bytes {
                break;
            }
            weight += w;
            let Some(envelope) = inner.queue.pop_front() else { break };
            inner.bytes -= envelope.len();
            out.push(envelope);
            taken += 1;
        }
        if inner.queue.is_empty() && inner.queue.capacity() > RETAINED_CAPACITY {
            inner.queue.shrink_to(RETAINED_CAPACITY);
        }
        taken
    }

    /// Completes when there may be something to pop.
    pub async fn wait_for_data(&self) {
        if !self.is_empty() {
            return;
        }
        self.notify.notified().await;
    }

    pub fn len(&self) -> usize {
        self.inner.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes of the envelopes held.
    pub fn bytes(&self) -> usize {
        self.inner.lock().bytes
    }

    /// Empties the buffer, counting what it held as dropped; returns how many.
    pub fn discard(&self) -> u64 {
        let n = {
            let mut inner = self.inner.lock();
            let n = inner.queue.len() as u64;
            inner.queue = VecDeque::new();
            inner.bytes = 0;
            n
        };
        self.dropped.add(n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buffer(max_len: usize, max_bytes: usize) -> (EnvelopeBuffer, Counter) {
        let dropped = Counter::default();
        (EnvelopeBuffer::new(max_len, max_bytes, dropped.clone()), dropped)
    }

    fn bytes(n: u8, len: usize) -> Bytes {
        Bytes::from(vec![n; len])
    }

    fn pop_all(buffer: &EnvelopeBuffer) -> Vec<u8> {
        let mut out = Vec::new();
        buffer.pop_batch(&mut out, usize::MAX, usize::MAX, Bytes::len);
        out.iter().map(|b| b[0]).collect()
    }

    #[test]
    fn beyond_the_count_the_oldest_go_and_are_counted() {
        let (buffer, dropped) = buffer(3, usize::MAX);
        assert_eq!(buffer.push_all((0..5).map(|n| bytes(n, 1))), 2);
        assert_eq!(dropped.get(), 2);
        assert_eq!(pop_all(&buffer), vec![2, 3, 4]);
        assert!(buffer.is_empty());
    }

    #[test]
    fn beyond_the_bytes_the_oldest_go_but_a_lone_large_entry_stays() {
        let (buffer, dropped) = buffer(100, 10);
        buffer.push_all([bytes(1, 4), bytes(2, 4)]);
        assert_eq!(buffer.push_all([bytes(3, 4)]), 1);
        assert_eq!(buffer.bytes(), 8);
        assert_eq!(buffer.push_all([bytes(4, 50)]), 2);
        assert_eq!(dropped.get(), 3);
        assert_eq!(pop_all(&buffer), vec![4]);
        assert_eq!(buffer.bytes(), 0);
    }

    #[test]
    fn a_batch_stops_at_its_count_or_its_bytes_but_takes_at_least_one() {
        let (buffer, _) = buffer(100, usize::MAX);
        buffer.push_all((0..10).map(|n| bytes(n, 10)));
        let mut out = Vec::new();
        assert_eq!(buffer.pop_batch(&mut out, 3, usize::MAX, Bytes::len), 3);
        out.clear();
        assert_eq!(buffer.pop_batch(&mut out, 100, 25, Bytes::len), 2);
        out.clear();
        assert_eq!(buffer.pop_batch(&mut out, 100, 5, Bytes::len), 1);
        assert_eq!(buffer.len(), 4);
    }

    #[test]
    fn memory_of_a_burst_is_given_back_once_drained() {
        let (buffer, _) = buffer(100_000, usize::MAX);
        buffer.push_all((0..10_000).map(|_| Bytes::from_static(b"x")));
        let mut out = Vec::new();
        while buffer.pop_batch(&mut out, 100, usize::MAX, Bytes::len) > 0 {}
        assert_eq!(out.len(), 10_000);
        assert!(buffer.inner.lock().queue.capacity() <= RETAINED_CAPACITY);
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_a_push() {
        let buffer = std::sync::Arc::new(buffer(10, usize::MAX).0);
        let reader = tokio::spawn({
            let buffer = buffer.clone();
            async move {
                buffer.wait_for_data().await;
                pop_all(&buffer)
            }
        });
        buffer.push_all([bytes(7, 1)]);
        assert_eq!(reader.await.unwrap(), vec![7]);
    }

    #[test]
    fn discard_counts_what_was_held() {
        let (buffer, dropped) = buffer(10, usize::MAX);
        buffer.push_all((0..4).map(|n| bytes(n, 1)));
        assert_eq!(buffer.discard(), 4);
        assert_eq!(dropped.get(), 4);
        assert!(buffer.is_empty());
    }
}
