//! The reverse log proxy: `loggregator.v2.Egress` for firehose nozzles (§2.3–2.6).
//!
//! Each client stream is validated as the original validates it (§2.4), takes one of
//! `max_streams` slots, and becomes a [`FanIn`]: the client's request (selectors, shard id,
//! deterministic name) sent to every Doppler, merged into one buffer of 10,000 envelopes that drops
//! its oldest for a slow client (`dropped{direction="egress"}`). The stream's task sends what the
//! buffer holds, up to 100 envelopes or 1 MiB a batch, as soon as there is any, as the Doppler's
//! egress does. Envelopes travel as the slices they arrived in; `use_preferred_tags` rewrites only
//! the envelopes it changes ([`crate::envelopes`]).
//!
//! The same [`ReverseLogProxy::open`] serves the gRPC service and, in process, the RLP gateway.

use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::Stream;
use loggregator_proto::raw::server::egress::egress_server::Egress;
use loggregator_proto::raw::{EncodedBatch, RawBytes};
use loggregator_proto::v2::{EgressBatchRequest, EgressRequest, Selector};
use plumbing::buffer::EnvelopeBuffer;
use plumbing::{Counter, Gauge, Registry};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::RlpConfig;
use crate::envelopes;
use crate::upstream::{Dopplers, FanIn, FanInMetrics};

/// Most envelopes per batch sent to a client (§2.7).
pub const BATCH_SIZE: usize = 100;
/// Batches handed to a client's gRPC stream but not yet encoded.
const STREAM_QUEUE_BATCHES: usize = 8;

/// Why a stream cannot be opened; each maps to the status the original answers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("Selectors cannot be empty")]
    EmptySelectors,
    #[error("Selectors must have a Message")]
    SelectorWithoutMessage,
    #[error("unable to create stream, max egress streams reached: {0}")]
    TooManyStreams(usize),
}

impl From<OpenError> for Status {
    fn from(error: OpenError) -> Self {
        match error {
            OpenError::EmptySelectors | OpenError::SelectorWithoutMessage => {
                Status::invalid_argument(error.to_string())
            }
            OpenError::TooManyStreams(_) => Status::resource_exhausted(error.to_string()),
        }
    }
}

#[derive(Clone)]
struct Metrics {
    fan_in: FanInMetrics,
    egress: Counter,
    dropped: Counter,
    subscriptions: Gauge,
}

impl Metrics {
    fn new(registry: &Registry) -> Self {
        Self {
            fan_in: FanInMetrics {
                // metric-documentation: envelopes the RLP received from Dopplers.
                ingress: registry.counter("ingress", "Envelopes received by the component", &[]),
                // metric-documentation: Doppler batches that did not scan (dropped whole).
                malformed: registry.counter("malformed", "Malformed batches received", &[("transport", "grpc")]),
            },
            // metric-documentation: envelopes sent to RLP clients (gRPC and the gateway).
            egress: registry.counter("egress", "Envelopes sent by the component", &[]),
            // metric-documentation: envelopes a slow client lost (its stream buffer dropped the oldest).
            dropped: registry.counter("dropped", "Envelopes dropped by the component", &[("direction", "egress")]),
            // metric-documentation: open client streams.
            subscriptions: registry.gauge("subscriptions", "Open egress streams", &[]),
        }
    }
}

/// The RLP's shared state; cheap to clone.
#[derive(Clone)]
pub struct ReverseLogProxy {
    dopplers: Dopplers,
    config: RlpConfig,
    max_message: usize,
    slots: Arc<Semaphore>,
    metrics: Metrics,
    shutdown: CancellationToken,
}

impl ReverseLogProxy {
    pub fn new(
        dopplers: Dopplers,
        config: RlpConfig,
        max_message: usize,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> Self {
        let slots = Arc::new(Semaphore::new(config.max_streams));
        Self { dopplers, config, max_message, slots, metrics: Metrics::new(registry), shutdown }
    }

    /// Validates `request` (§2.4) and subscribes to every Doppler with it.
    pub fn open(&self, mut request: EgressBatchRequest) -> Result<RlpStream, OpenError> {
        request.selectors = converge(std::mem::take(&mut request.selectors), request.legacy_selector.take())?;
        let permit = Arc::clone(&self.slots)
            .try_acquire_owned()
            .map_err(|_| OpenError::TooManyStreams(self.config.max_streams))?;
        let buffer = Arc::new(EnvelopeBuffer::new(
            self.config.stream_buffer,
            self.config.stream_buffer_bytes,
            self.metrics.dropped.clone(),
        ));
        let use_preferred_tags = request.use_preferred_tags;
        let fan_in = FanIn::start(
            &self.dopplers,
            request,
            buffer,
            self.max_message,
            self.metrics.fan_in.clone(),
            &self.shutdown,
        );
        self.metrics.subscriptions.add(1);
        Ok(RlpStream {
            fan_in,
            use_preferred_tags,
            egress: self.metrics.egress.clone(),
            dropped: self.metrics.dropped.clone(),
            subscriptions: self.metrics.subscriptions.clone(),
            shutdown: self.shutdown.clone(),
            _permit: permit,
        })
    }
}

/// The selectors a request stands for: `selectors`, or the legacy one when there are none (when
/// both are set the legacy one is ignored); none at all, or one without a type, is refused.
fn converge(selectors: Vec<Selector>, legacy: Option<Selector>) -> Result<Vec<Selector>, OpenError> {
    let selectors = if selectors.is_empty() { legacy.into_iter().collect() } else { selectors };
    if selectors.is_empty() {
        return Err(OpenError::EmptySelectors);
    }
    if selectors.iter().any(|s| s.message.is_none()) {
        return Err(OpenError::SelectorWithoutMessage);
    }
    Ok(selectors)
}

/// One open client stream (see the module docs). Dropping it unsubscribes from every Doppler.
pub struct RlpStream {
    fan_in: FanIn,
    use_preferred_tags: bool,
    egress: Counter,
    dropped: Counter,
    subscriptions: Gauge,
    shutdown: CancellationToken,
    _permit: OwnedSemaphorePermit,
}

impl RlpStream {
    /// Fills `out` with the next batch (≤100 envelopes, ≤1 MiB, tags as the request asked),
    /// waiting for one; false once the RLP is shutting down and the buffer is drained.
    pub async fn next_batch(&self, out: &mut Vec<Bytes>) -> bool {
        let buffer = &self.fan_in.buffer;
        loop {
            let (max_bytes, weigh) = (plumbing::grpc::MAX_BATCH_BYTES, plumbing::grpc::batch_entry_len);
            if buffer.pop_batch(out, BATCH_SIZE, max_bytes, weigh) > 0 {
                envelopes::apply_to_batch(out, self.use_preferred_tags);
                return true;
            }
            if self.shutdown.is_cancelled() {
                return false;
            }
            tokio::select! {
                _ = buffer.wait_for_data() => {}
                _ = self.shutdown.cancelled() => {}
            }
        }
    }

    /// Counts envelopes of [`Self::next_batch`] handed to the client.
    pub fn sent(&self, n: usize) {
        self.egress.add(n as u64);
    }

    /// Counts envelopes of [`Self::next_batch`] that never reached the client (it went away).
    pub fn lost(&self, n: usize) {
        self.dropped.add(n as u64);
    }
}

impl Drop for RlpStream {
    fn drop(&mut self) {
        self.subscriptions.add(-1);
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<EncodedBatch, Status>> + Send>>;
type EnvelopeStream = Pin<Box<dyn Stream<Item = Result<RawBytes, Status>> + Send>>;

/// The gRPC face of the RLP.
pub struct EgressService {
    pub rlp: ReverseLogProxy,
}

#[tonic::async_trait]
impl Egress for EgressService {
    type ReceiverStream = EnvelopeStream;
    type BatchedReceiverStream = BatchStream;

    async fn receiver(&self, request: Request<EgressRequest>) -> Result<Response<Self::ReceiverStream>, Status> {
        let request = request.into_inner();
        // As the original (§2.4): `Receiver` converts its request without `deterministic_name`.
        let stream = self.rlp.open(EgressBatchRequest {
            shard_id: request.shard_id,
            legacy_selector: request.legacy_selector,
            use_preferred_tags: request.use_preferred_tags,
            selectors: request.selectors,
            deterministic_name: String::new(),
        })?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE_BATCHES * BATCH_SIZE);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(BATCH_SIZE);
            loop {
                batch.clear();
                let more = tokio::select! {
                    more = stream.next_batch(&mut batch) => more,
                    _ = tx.closed() => return,
                };
                if !more {
                    return;
                }
                let mut envelopes = batch.drain(..);
                for envelope in envelopes.by_ref() {
                    if tx.send(Ok(RawBytes(envelope))).await.is_err() {
                        stream.lost(1 + envelopes.len());
                        return;
                    }
                    stream.sent(1);
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn batched_receiver(
        &self,
        request: Request<EgressBatchRequest>,
    ) -> Result<Response<Self::BatchedReceiverStream>, Status> {
        let stream = self.rlp.open(request.into_inner())?;
        let (tx, rx) = mpsc::channel(STREAM_QUEUE_BATCHES);
        tokio::spawn(async move {
            loop {
                let mut batch = Vec::with_capacity(BATCH_SIZE);
                let more = tokio::select! {
                    more = stream.next_batch(&mut batch) => more,
                    _ = tx.closed() => return,
                };
                if !more {
                    return;
                }
                let n = batch.len();
                if tx.send(Ok(EncodedBatch { envelopes: batch })).await.is_err() {
                    stream.lost(n);
                    return;
                }
                stream.sent(n);
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggregator_proto::v2::{selector, LogSelector};

    fn log(source_id: &str) -> Selector {
        Selector { source_id: source_id.into(), message: Some(selector::Message::Log(LogSelector {})) }
    }

    #[test]
    fn selectors_converge_as_the_original() {
        assert_eq!(converge(vec![], None), Err(OpenError::EmptySelectors));
        assert_eq!(converge(vec![], Some(log("legacy"))).unwrap(), vec![log("legacy")]);
        assert_eq!(converge(vec![log("a")], Some(log("legacy"))).unwrap(), vec![log("a")]);
        let untyped = Selector { source_id: "a".into(), message: None };
        assert_eq!(converge(vec![log("a"), untyped.clone()], None), Err(OpenError::SelectorWithoutMessage));
        assert_eq!(converge(vec![], Some(untyped)), Err(OpenError::SelectorWithoutMessage));
        assert_eq!(Status::from(OpenError::TooManyStreams(3)).code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            Status::from(OpenError::TooManyStreams(3)).message(),
            "unable to create stream, max egress streams reached: 3"
        );
    }
}
