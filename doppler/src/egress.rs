//! `loggregator.v2.Egress` on the Doppler: one subscription per `BatchedReceiver` stream (§2.3).
//!
//! Each stream gets a diode (the router writes, this stream's task reads). The task sends whatever
//! the diode holds, up to `batch_size` envelopes, as soon as there is any: under load batches fill by
//! themselves, and at low rates nothing waits for a timer (the original's 100 ms flush is an upper
//! bound we meet trivially). A slow client only fills its own diode, which drops its oldest.
//!
//! Batches are assembled from the envelopes' original bytes (`EncodedBatch`): never re-encoded.

use bytes::Bytes;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use loggregator_proto::raw::server::egress::egress_server::Egress;
use loggregator_proto::raw::{EncodedBatch, RawBytes};
use loggregator_proto::v2::{EgressBatchRequest, EgressRequest};
use plumbing::{Counter, Diode, Gauge};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::ingress::ActiveStreams;
use crate::router::{Router, Subscriber, SubscriptionSpec};
use crate::Config;

pub struct EgressService {
    pub(crate) router: Arc<Router>,
    pub(crate) config: Config,
    pub(crate) egress: Counter,
    pub(crate) dropped: Counter,
    pub(crate) subscriptions: Gauge,
    pub(crate) shutdown: CancellationToken,
    pub(crate) active_ingress: Arc<ActiveStreams>,
    pub(crate) tracker: tokio_util::task::TaskTracker,
}

/// Depth of the queue between a subscription's task and its gRPC stream, in batches.
const EGRESS_QUEUE_BATCHES: usize = 32;

type BatchStream = Pin<Box<dyn Stream<Item = Result<EncodedBatch, Status>> + Send>>;
type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<RawBytes, Status>> + Send>>;

/// Removes the subscription when the stream's task ends, however it ends, and counts as dropped
/// what its diode still held: those envelopes were routed to it and will never be delivered.
struct Registration {
    router: Arc<Router>,
    id: crate::router::SubscriptionId,
    subscriptions: Gauge,
    subscriber: Arc<Subscriber>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.router.unsubscribe(self.id);
        self.subscriptions.add(-1);
        // Without this a client that stopped reading and left took up to a diode's worth of
        // envelopes away uncounted (tests/faults.rs, the stalled subscriber).
        let mut left = 0;
        while self.subscriber.diode.try_pop().is_some() {
            left += 1;
        }
        self.subscriber.count_lost(left);
    }
}

#[tonic::async_trait]
impl Egress for EgressService {
    type ReceiverStream = EnvelopeStream;
    type BatchedReceiverStream = BatchStream;

    async fn receiver(&self, _request: Request<EgressRequest>) -> Result<Response<Self::ReceiverStream>, Status> {
        // As the original Doppler (§2.3): only the batched variant is served here.
        Err(Status::unimplemented("use BatchedReceiver instead"))
    }

    async fn batched_receiver(
        &self,
        request: Request<EgressBatchRequest>,
    ) -> Result<Response<Self::BatchedReceiverStream>, Status> {
        let request = request.into_inner();
        // Selectors converge as at the RLP: the legacy selector only when `selectors` is empty.
        let selectors = if request.selectors.is_empty() {
            request.legacy_selector.into_iter().collect()
        } else {
            request.selectors
        };
        let max = self.config.max_subscriptions;
        if self.router.subscription_count() >= max {
            return Err(Status::resource_exhausted(format!(
                "unable to create stream, max egress streams reached: {max}"
            )));
        }
        let subscriber = Arc::new(Subscriber::new(
            Diode::with_weight_limit(
                self.config.subscription_buffer,
                self.config.subscription_buffer_bytes,
                Bytes::len,
            ),
            self.dropped.clone(),
        ));
        let id = self.router.subscribe(SubscriptionSpec {
            shard_id: request.shard_id,
            deterministic_name: request.deterministic_name,
            selectors,
            subscriber: Arc::clone(&subscriber),
        });
        self.subscriptions.add(1);
        let registration = Registration {
            router: Arc::clone(&self.router),
            id,
            subscriptions: self.subscriptions.clone(),
            subscriber: Arc::clone(&subscriber),
        };

        // Batches handed to the stream but not yet encoded. After a pause (the process descheduled),
        // every ingress stream routes one batch per scheduler round and this task gets one turn per
        // round too: with 8 slots it could move only 800 envelopes a turn while five agent
        // connections added 500 each, and the 1000-envelope diode overflowed (full path at 300k/s:
        // 0.1-0.4 % lost in half the 10-s runs; lossless in 5 of 5 with 32). Bounded: 32 batches.
        let (tx, rx) = mpsc::channel(EGRESS_QUEUE_BATCHES);
        let task = EgressTask {
            subscriber,
            tx,
            batch_size: self.config.batch_size.get(),
            egress: self.egress.clone(),
            shutdown: self.shutdown.clone(),
            active_ingress: Arc::clone(&self.active_ingress),
            grace: self.config.shutdown_grace,
            carry: None,
        };
        self.tracker.spawn(async move {
            let _registration = registration;
            task.run().await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

struct EgressTask {
    subscriber: Arc<Subscriber>,
    tx: mpsc::Sender<Result<EncodedBatch, Status>>,
    batch_size: usize,
    egress: Counter,
    shutdown: CancellationToken,
    active_ingress: Arc<ActiveStreams>,
    grace: std::time::Duration,
    /// The envelope that would have taken the last batch past `MAX_BATCH_BYTES`; it opens the next.
    carry: Option<Bytes>,
}

impl EgressTask {
    async fn run(mut self) {
        loop {
            if self.carry.is_none() {
                tokio::select! {
                    _ = self.subscriber.diode.wait_for_data() => {}
                    _ = self.tx.closed() => return,
                    _ = self.shutdown.cancelled() => break,
                }
            }
            if !self.send_available().await {
                return;
            }
        }
        // Shutdown: keep delivering while the ingress streams finish (bounded by the grace), then
        // flush what is buffered and end the stream. Waiting without delivering (as before) let a
        // subscriber's buffer overflow during a rolling restart: the agents go on sending on their
        // open streams until they recycle them, and all of that was dropped.
        let deadline = tokio::time::Instant::now() + self.grace;
        let active = std::sync::Arc::clone(&self.active_ingress);
        let idle = async move { active.wait_idle().await };
        tokio::pin!(idle);
        loop {
            if self.carry.is_none() {
                tokio::select! {
                    _ = &mut idle => break,
                    _ = tokio::time::sleep_until(deadline) => break,
                    _ = self.subscriber.diode.wait_for_data() => {}
                    _ = self.tx.closed() => return,
                }
            }
            if !self.send_available().await {
                return;
            }
        }
        while self.carry.is_some() || !self.subscriber.diode.is_empty() {
            if !self.send_available().await {
                return;
            }
        }
    }

    /// Sends one batch of what the diode holds; false when the client has gone.
    async fn send_available(&mut self) -> bool {
        let mut pending = Vec::with_capacity(self.batch_size);
        let (max_bytes, len) = (plumbing::grpc::MAX_BATCH_BYTES, plumbing::grpc::batch_entry_len);
        self.subscriber.diode.pop_batch_within(&mut pending, self.batch_size, max_bytes, len, &mut self.carry);
        if pending.is_empty() {
            return true;
        }
        let count = pending.len() as u64;
        if self.tx.send(Ok(EncodedBatch { envelopes: pending })).await.is_err() {
            // The client went away with this batch in hand: it was read from the diode but never
            // delivered, so it is a loss like any other (and so is an envelope carried over).
            self.subscriber.count_lost(count + u64::from(self.carry.take().is_some()));
            return false;
        }
        self.egress.add(count);
        true
    }
}
