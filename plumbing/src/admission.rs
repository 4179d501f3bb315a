//! Connections that have not yet proved themselves: accepted, but still in their TLS handshake or
//! before their first request. A bounded pool of them, where a newcomer evicts the oldest.
//!
//! A silent peer costs a server nothing but a slot in this pool, and only until newer connections
//! push it out. Waiting for a free slot instead (a semaphore) lets a few hundred silent
//! connections a handshake timeout lock every real client out; refusing newcomers does the same.
//! Evicting the oldest means an attacker must open more than [`Admissions::capacity`] connections
//! within one real client's handshake (milliseconds) to push it out, and every silent connection
//! still ends at its own timeout.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use crate::Counter;

/// The pool of connections not yet admitted.
#[derive(Clone)]
pub struct Admissions {
    shared: Arc<Shared>,
}

struct Shared {
    capacity: usize,
    pending: Mutex<Pending>,
    evicted: Counter,
}

#[derive(Default)]
struct Pending {
    next_id: u64,
    /// Oldest first.
    entries: VecDeque<(u64, CancellationToken)>,
}

impl Admissions {
    /// A pool of at most `capacity` pending connections; each eviction is counted in `evicted`.
    pub fn new(capacity: usize, evicted: Counter) -> Self {
        let shared = Shared { capacity: capacity.max(1), pending: Mutex::default(), evicted };
        Self { shared: Arc::new(shared) }
    }

    pub fn capacity(&self) -> usize {
        self.shared.capacity
    }

    /// Pending connections right now.
    pub fn pending(&self) -> usize {
        self.shared.pending.lock().entries.len()
    }

    /// Enters a new connection, evicting the oldest pending one when the pool is full.
    pub fn admit(&self) -> Admission {
        let token = CancellationToken::new();
        let mut pending = self.shared.pending.lock();
        if pending.entries.len() >= self.shared.capacity {
            if let Some((_, oldest)) = pending.entries.pop_front() {
                oldest.cancel();
                self.shared.evicted.inc();
            }
        }
        let id = pending.next_id;
        pending.next_id += 1;
        pending.entries.push_back((id, token.clone()));
        Admission { id, token, shared: Arc::clone(&self.shared), admitted: std::sync::atomic::AtomicBool::new(false) }
    }
}

/// One pending connection's place in the pool; leaves it when admitted or dropped.
pub struct Admission {
    id: u64,
    token: CancellationToken,
    shared: Arc<Shared>,
    admitted: std::sync::atomic::AtomicBool,
}

impl Admission {
    /// The connection proved itself (handshake done, first request read): it leaves the pool and
    /// can no longer be evicted. Idempotent.
    pub fn admitted(&self) {
        if self.admitted.swap(true, std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let mut pending = self.shared.pending.lock();
        // Newest entries are at the back, and a connection is admitted soon after it arrives.
        if let Some(at) = pending.entries.iter().rposition(|(id, _)| *id == self.id) {
            pending.entries.remove(at);
        }
    }

    /// Whether [`Admission::admitted`] was called.
    pub fn is_admitted(&self) -> bool {
        self.admitted.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves when a newer connection pushed this one out of the pool.
    pub async fn evicted(&self) {
        self.token.cancelled().await
    }

    /// Runs `work` (a handshake) unless the connection is evicted first (`None`).
    pub async fn run<F: std::future::Future>(&self, work: F) -> Option<F::Output> {
        tokio::select! {
            output = work => Some(output),
            _ = self.token.cancelled() => None,
        }
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.admitted();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_newcomer_evicts_the_oldest_pending_and_admitted_ones_are_safe() {
        let evicted = Counter::default();
        let pool = Admissions::new(2, evicted.clone());
        let first = pool.admit();
        let second = pool.admit();
        second.admitted();
        let third = pool.admit();
        assert_eq!((pool.pending(), evicted.get()), (2, 0), "the admitted one left room");
        let _fourth = pool.admit();
        assert_eq!(evicted.get(), 1);
        first.evicted().await;
        assert_eq!(first.run(std::future::pending::<()>()).await, None, "evicted work does not run");
        let _fifth = pool.admit();
        third.evicted().await;
        assert_eq!(evicted.get(), 2);
        // `second` was admitted before the pool filled: nothing ever evicts it.
        assert!(tokio::time::timeout(std::time::Duration::from_millis(20), second.evicted()).await.is_err());
        drop(third);
        assert_eq!(pool.pending(), 2);
    }
}
