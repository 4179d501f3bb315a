//! The Dopplers every egress stream reads, and the fan-in of one stream from all of them.
//!
//! An agent sends each envelope to one Doppler of its choice, so every consumer must subscribe to
//! all of them (§2.1) and merge. [`Dopplers`] keeps the current set, one lazy gRPC channel per
//! Doppler shared by every stream (each stream is one more HTTP/2 stream on it, as in the
//! original), re-resolving the configured names every `resolve_interval`. A [`FanIn`] is one
//! consumer's subscription: one reconnecting [`Subscription`] per Doppler, all writing into the
//! consumer's [`EnvelopeBuffer`]. When a Doppler appears it is subscribed to; when it disappears
//! its subscription is cancelled; when it restarts the subscription reopens by itself. The
//! consumer loses only what was in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use loggregator_proto::v2::EgressBatchRequest;
use plumbing::buffer::EnvelopeBuffer;
use plumbing::subscriber::Subscription;
use plumbing::tls::ClientTls;
use plumbing::Counter;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;

use crate::envelopes::EnvelopeSlices;

/// The current Dopplers: address → shared channel.
pub type DopplerSet = Arc<BTreeMap<String, Channel>>;

/// The set of Dopplers, kept current (see the module docs).
#[derive(Clone)]
pub struct Dopplers {
    tx: Arc<watch::Sender<DopplerSet>>,
    tls: Option<ClientTls>,
}

impl Dopplers {
    pub fn new(tls: Option<ClientTls>) -> Self {
        Self { tx: Arc::new(watch::Sender::new(Arc::new(BTreeMap::new()))), tls }
    }

    /// Replaces the set with `addrs`, keeping the channels of addresses already known.
    pub fn set_addrs(&self, addrs: impl IntoIterator<Item = String>) {
        let current = self.tx.borrow().clone();
        let mut next = BTreeMap::new();
        for addr in addrs {
            if next.contains_key(&addr) {
                continue;
            }
            let channel = match current.get(&addr) {
                Some(channel) => channel.clone(),
                None => match plumbing::subscriber::lazy_channel(&addr, self.tls.clone()) {
                    Ok(channel) => channel,
                    Err(error) => {
                        tracing::warn!(doppler = %addr, %error, "invalid doppler address");
                        continue;
                    }
                },
            };
            next.insert(addr, channel);
        }
        if next.keys().ne(current.keys()) {
            tracing::info!(dopplers = ?next.keys().collect::<Vec<_>>(), "doppler set changed");
            self.tx.send_replace(Arc::new(next));
        }
    }

    /// Resolves `entries` now and then every `interval` until `token` is cancelled. A resolution
    /// that finds nothing keeps the old set (a DNS hiccup must not unsubscribe everyone).
    pub async fn run_resolver(self, entries: Vec<String>, interval: Duration, token: CancellationToken) {
        loop {
            let addrs = plumbing::grpc::resolve(&entries).await;
            if !addrs.is_empty() {
                self.set_addrs(addrs.into_iter().map(|a| a.to_string()));
            }
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = token.cancelled() => return,
            }
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<DopplerSet> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> DopplerSet {
        self.tx.borrow().clone()
    }
}

/// Counters shared by every fan-in of a component.
#[derive(Clone, Default)]
pub struct FanInMetrics {
    /// Envelopes received from Dopplers.
    pub ingress: Counter,
    /// Batches from a Doppler that did not scan (they are dropped whole).
    pub malformed: Counter,
}

/// One consumer's subscription to every Doppler, merged into one buffer.
pub struct FanIn {
    pub buffer: Arc<EnvelopeBuffer>,
    token: CancellationToken,
}

impl FanIn {
    /// Subscribes to every Doppler of `dopplers` (and every one that appears later) with
    /// `request`, until the returned `FanIn` is dropped or `shutdown` is cancelled.
    pub fn start(
        dopplers: &Dopplers,
        request: EgressBatchRequest,
        buffer: Arc<EnvelopeBuffer>,
        max_message: usize,
        metrics: FanInMetrics,
        shutdown: &CancellationToken,
    ) -> Self {
        let token = shutdown.child_token();
        let set = dopplers.subscribe();
        let manager = Manager { request: Arc::new(request), buffer: Arc::clone(&buffer), max_message, metrics };
        tokio::spawn(manager.run(set, token.clone()));
        Self { buffer, token }
    }
}

impl FanIn {
    /// Cancelled when this fan-in is dropped (or at shutdown): for tasks that serve it.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }
}

impl Drop for FanIn {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

struct Manager {
    request: Arc<EgressBatchRequest>,
    buffer: Arc<EnvelopeBuffer>,
    max_message: usize,
    metrics: FanInMetrics,
}

impl Manager {
    /// Keeps one reader per Doppler of the current set until `token` is cancelled.
    async fn run(self, mut set: watch::Receiver<DopplerSet>, token: CancellationToken) {
        let tracker = TaskTracker::new();
        let mut readers: BTreeMap<String, CancellationToken> = BTreeMap::new();
        loop {
            let current = set.borrow_and_update().clone();
            readers.retain(|addr, reader| {
                let keep = current.contains_key(addr);
                if !keep {
                    reader.cancel();
                }
                keep
            });
            for (addr, channel) in current.iter() {
                if readers.contains_key(addr) {
                    continue;
                }
                let reader = token.child_token();
                readers.insert(addr.clone(), reader.clone());
                let subscription =
                    Subscription::new(addr.clone(), channel.clone(), (*self.request).clone(), self.max_message);
                tracker.spawn(read(subscription, Arc::clone(&self.buffer), self.metrics.clone(), reader));
            }
            tokio::select! {
                changed = set.changed() => if changed.is_err() { break },
                _ = token.cancelled() => break,
            }
        }
        token.cancel();
        tracker.close();
        tracker.wait().await;
    }
}

/// Moves every batch of one Doppler's subscription into the buffer, envelope by envelope (each a
/// slice of the received frame).
async fn read(
    mut subscription: Subscription,
    buffer: Arc<EnvelopeBuffer>,
    metrics: FanInMetrics,
    token: CancellationToken,
) {
    while let Some(batch) = subscription.next(&token).await {
        push_batch(&buffer, batch, &metrics);
    }
}

/// Splits an encoded `EnvelopeBatch` into its envelopes and pushes them; a batch that does not
/// scan is dropped whole and counted as malformed.
pub fn push_batch(buffer: &EnvelopeBuffer, batch: Bytes, metrics: &FanInMetrics) {
    let slices = match EnvelopeSlices::collect(&batch) {
        Ok(slices) => slices,
        Err(error) => {
            metrics.malformed.inc();
            tracing::debug!(%error, "dropping a malformed batch");
            return;
        }
    };
    metrics.ingress.add(slices.len() as u64);
    buffer.push_all(slices);
}
