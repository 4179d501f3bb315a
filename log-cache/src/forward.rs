//! Forwarding envelopes to the node that owns their source (§6.5): one bounded queue and one
//! sending task per peer.
//!
//! The nozzle and the `Send` handler only queue what another node owns; they never wait for a
//! peer, so a slow or frozen peer delays nothing but its own sources (before, the nozzle awaited
//! each forward and a frozen peer stalled this node's own ingest for the request timeout). While
//! one request to a peer is in flight the next batch accumulates, so under load requests get fewer
//! and larger on their own; below that, a task that finds fewer than [`FULL_ENOUGH`] envelopes
//! waits [`LINGER`] for more before it sends: a request per nozzle batch split by owner (a few
//! envelopes each) cost a two-node cluster about twice the CPU per envelope at 50 k/s
//! (BENCHMARKS.md §1.3). The original batches the same way, through a client per node (100
//! envelopes or 250 ms); the linger here is shorter, so a forwarded envelope is readable on its
//! owner within milliseconds.
//!
//! Bounded: a queue holds at most [`QUEUE_LEN`] envelopes and [`QUEUE_BYTES`] bytes and drops the
//! oldest past either (counted as `dropped{direction="forward"}`, as a refused request is). On
//! shutdown each task sends what its queue still holds, once, within the caller's grace.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loggregator_proto::raw::{EncodedBatch, EncodedSendRequest};
use plumbing::buffer::EnvelopeBuffer;
use plumbing::Counter;
use tokio_util::sync::CancellationToken;

use crate::cluster::Peer;

/// Envelopes queued per peer at most: about a tenth of a second of a busy node's forwarding.
pub const QUEUE_LEN: usize = 20_000;
/// Bytes queued per peer at most.
pub const QUEUE_BYTES: usize = 16 << 20;
/// Envelopes per forwarded request at most (a log-cache `Read` answers at most 1000, too).
const BATCH_LEN: usize = 1000;
/// A queue holding this many is sent at once; fewer wait [`LINGER`] for company (the original's
/// batch size).
pub const FULL_ENOUGH: usize = 100;
/// How long a short queue waits before it is sent anyway.
pub const LINGER: Duration = Duration::from_millis(10);

/// The queues, one per node of the cluster (`None` at this node's own index).
pub struct Forwarder {
    queues: Vec<Option<Arc<EnvelopeBuffer>>>,
}

impl Forwarder {
    /// Queues for every peer of `peers` (indexed by node), dropping into `dropped`.
    pub fn new(peers: &[Option<Peer>], dropped: &Counter) -> Self {
        let queue = || Arc::new(EnvelopeBuffer::new(QUEUE_LEN, QUEUE_BYTES, dropped.clone()));
        Self { queues: peers.iter().map(|p| p.as_ref().map(|_| queue())).collect() }
    }

    /// Queues `envelopes` for node `owner`; false when `owner` is this node or unknown.
    pub fn push(&self, owner: usize, envelopes: Vec<Bytes>) -> bool {
        match self.queues.get(owner) {
            Some(Some(queue)) => {
                queue.push_all(envelopes);
                true
            }
            _ => false,
        }
    }

    /// Envelopes waiting for their peers.
    pub fn queued(&self) -> usize {
        self.queues.iter().flatten().map(|q| q.len()).sum()
    }

    /// One sending task per peer, until `token` is cancelled; then each sends what is left.
    pub fn tasks(
        &self,
        peers: &[Option<Peer>],
        max_message_bytes: usize,
        forwarded: &Counter,
        requests: &Counter,
        dropped: &Counter,
        token: &CancellationToken,
    ) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        let mut tasks = Vec::new();
        for (queue, peer) in self.queues.iter().zip(peers) {
            let (Some(queue), Some(peer)) = (queue, peer) else { continue };
            let sender = PeerSender {
                peer: peer.clone(),
                queue: Arc::clone(queue),
                // A request stays well under the peer's message limit: the key and length of each
                // envelope (at most 6 bytes) and the request's own framing.
                max_bytes: max_message_bytes.saturating_sub(1024).max(1),
                forwarded: forwarded.clone(),
                requests: requests.clone(),
                dropped: dropped.clone(),
            };
            tasks.push(sender.run(token.clone()));
        }
        tasks
    }
}

struct PeerSender {
    peer: Peer,
    queue: Arc<EnvelopeBuffer>,
    max_bytes: usize,
    forwarded: Counter,
    requests: Counter,
    dropped: Counter,
}

impl PeerSender {
    async fn run(self, token: CancellationToken) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = self.queue.wait_for_data() => {}
                _ = token.cancelled() => break,
            }
            if self.queue.len() < FULL_ENOUGH {
                tokio::select! {
                    _ = tokio::time::sleep(LINGER) => {}
                    _ = token.cancelled() => break,
                }
            }
            self.send_one(&mut failing).await;
        }
        // Shutdown: what is queued goes out once (bounded by the caller's grace); a failure ends it.
        while !self.queue.is_empty() {
            if !self.send_one(&mut failing).await {
                self.dropped.add(self.queue.discard());
                break;
            }
        }
    }

    /// Sends one batch from the queue; false when the peer refused it or could not be reached.
    async fn send_one(&self, failing: &mut bool) -> bool {
        let mut envelopes = Vec::new();
        let count = self.queue.pop_batch(&mut envelopes, BATCH_LEN, self.max_bytes, |e| e.len() + 6) as u64;
        if count == 0 {
            return true;
        }
        let request = EncodedSendRequest { batch: EncodedBatch { envelopes }, local_only: true };
        let mut client = self.peer.ingress.clone();
        self.requests.inc();
        match client.send(request).await {
            Ok(_) => {
                self.forwarded.add(count);
                if std::mem::take(failing) {
                    tracing::info!(peer = %self.peer.addr, "forwarding to owner works again");
                }
                true
            }
            Err(status) => {
                self.dropped.add(count);
                // Once per outage, not once per batch: a down peer would otherwise log hundreds a second.
                if !std::mem::replace(failing, true) {
                    tracing::warn!(peer = %self.peer.addr, dropped = count, error = %status, "forwarding to owner failed");
                }
                false
            }
        }
    }
}
