//! `loggregator.v2.Ingress` on the Doppler: batches in, routed without decoding (PROTOCOLS.md §2.1).
//!
//! Each received batch is one `Bytes` (tonic's receive buffer); the scanner yields every envelope as
//! a slice of it and the router pushes those slices into subscriber diodes. Routing runs inline in
//! the stream's task: it never waits (diodes drop the oldest), so no ingress queue is needed, and a
//! batch is routed whole or, if malformed, not at all.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use loggregator_proto::raw::server::ingress::ingress_server::Ingress;
use loggregator_proto::raw::{RawBatch, RawBytes};
use loggregator_proto::stream::{BatchSink, BatchSource, MessageStream};
use loggregator_proto::v2::{BatchSenderResponse, IngressResponse, SendResponse};
use loggregator_proto::{RawEnvelope, ScanError};
use plumbing::Counter;
use tokio::sync::Notify;
use tonic::{Request, Response, Status, Streaming};

use crate::router::{Router, Staging};

/// Counts live ingress streams so a shutdown can wait for them to end.
#[derive(Default)]
pub struct ActiveStreams {
    count: AtomicUsize,
    idle: Notify,
}

impl ActiveStreams {
    fn enter(self: &Arc<Self>) -> ActiveGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        ActiveGuard(Arc::clone(self))
    }

    /// Resolves once no ingress stream is open.
    pub async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.count.load(Ordering::SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

struct ActiveGuard(Arc<ActiveStreams>);

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

pub struct IngressService {
    router: Arc<Router>,
    ingress: Counter,
    active: Arc<ActiveStreams>,
}

impl IngressService {
    pub fn new(router: Arc<Router>, ingress: Counter, active: Arc<ActiveStreams>) -> Self {
        Self { router, ingress, active }
    }
}

fn malformed(err: ScanError) -> Status {
    Status::invalid_argument(format!("malformed envelope batch: {err}"))
}

#[tonic::async_trait]
impl Ingress for IngressService {
    async fn sender(&self, request: Request<Streaming<RawBytes>>) -> Result<Response<IngressResponse>, Status> {
        let _active = self.active.enter();
        let mut stream = request.into_inner();
        while let Some(RawBytes(bytes)) = stream.message().await? {
            let envelope = RawEnvelope::scan(bytes).map_err(malformed)?;
            self.router.table().route(&envelope);
            self.ingress.inc();
        }
        Ok(Response::new(IngressResponse {}))
    }

    async fn batch_sender(
        &self,
        request: Request<Streaming<RawBatch>>,
    ) -> Result<Response<BatchSenderResponse>, Status> {
        self.receive_batches(request.into_inner()).await?;
        Ok(Response::new(BatchSenderResponse {}))
    }

    async fn send(&self, _request: Request<RawBatch>) -> Result<Response<SendResponse>, Status> {
        // The original Doppler answers exactly this (§2.1); agents use BatchSender.
        Err(Status::unimplemented("this endpoint is not yet implemented"))
    }
}

/// `BatchSender` as served (see [`loggregator_proto::stream::IngressRouter`]).
impl BatchSink for IngressService {
    async fn batch_sender(&self, batches: MessageStream) -> Result<(), Status> {
        self.receive_batches(batches).await
    }
}

impl IngressService {
    async fn receive_batches(&self, mut stream: impl BatchSource) -> Result<(), Status> {
        let _active = self.active.enter();
        let mut envelopes: Vec<RawEnvelope> = Vec::with_capacity(128);
        let mut staging = Staging::default();
        while let Some(batch) = stream.next_batch().await? {
            envelopes.clear();
            for envelope in batch.scan() {
                envelopes.push(envelope.map_err(malformed)?);
            }
            self.ingress.add(envelopes.len() as u64);
            self.router.table().route_batch(&mut envelopes, &mut staging);
            // Let the subscriptions' egress tasks drain before routing the next batch: h2 often
            // holds many batches already received, and routing them all in one go (tokio's budget
            // allows it) can overrun a 1000-envelope subscription buffer on a busy core.
            tokio::task::yield_now().await;
        }
        Ok(())
    }
}
