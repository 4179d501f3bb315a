//! Agent ingress: v2 gRPC (`Sender`, `BatchSender`, `Send`) and v1 UDP dropsonde (PROTOCOLS.md §2.1, §3.6).
//!
//! Every envelope is shaped (§1.4) and pushed into the ingress diode. Pushing never waits: when the
//! Dopplers fall behind, the diode drops its oldest envelope and counts it (`dropped{direction="ingress"}`),
//! so an emitter is never blocked by the pipeline behind it.

use std::sync::Arc;

use bytes::Bytes;
use loggregator_proto::events;
use loggregator_proto::prost::Message as _;
use loggregator_proto::raw::server::ingress::ingress_server::Ingress;
use loggregator_proto::raw::{RawBatch, RawBytes};
use loggregator_proto::stream::{BatchSink, BatchSource, MessageStream};
use loggregator_proto::v2::{BatchSenderResponse, IngressResponse, SendResponse};
use loggregator_proto::RawEnvelope;
use plumbing::backoff::ErrorBackoff;
use plumbing::{Counter, Diode};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::shaping::Shaper;

/// The shared front half of the agent: shape, count, buffer.
pub struct Intake {
    pub shaper: Shaper,
    pub diode: Arc<Diode<Bytes>>,
    pub ingress: Counter,
    pub dropped: Counter,
}

impl Intake {
    fn accept(&self, envelope: RawEnvelope) -> Result<(), Status> {
        let bytes = self.shaper.shape(envelope).map_err(|e| Status::invalid_argument(e.to_string()))?;
        self.ingress.inc();
        let dropped = self.diode.push(bytes);
        if dropped > 0 {
            self.dropped.add(dropped);
        }
        Ok(())
    }

    /// Scans and shapes a whole batch first, so a malformed batch is refused whole rather than
    /// half-accepted; then pushes it into the diode in one go. `scratch` is the caller's, reused
    /// from batch to batch so a stream allocates it once.
    fn accept_batch(&self, batch: RawBatch, scratch: &mut Vec<Bytes>) -> Result<(), Status> {
        scratch.clear();
        for envelope in batch.scan() {
            let envelope = envelope.map_err(|e| Status::invalid_argument(format!("malformed envelope batch: {e}")))?;
            scratch.push(self.shaper.shape(envelope).map_err(|e| Status::invalid_argument(e.to_string()))?);
        }
        self.ingress.add(scratch.len() as u64);
        self.dropped.add(self.diode.push_many(scratch.drain(..)));
        Ok(())
    }
}

pub struct IngressService {
    intake: Arc<Intake>,
}

impl IngressService {
    pub fn new(intake: Arc<Intake>) -> Self {
        Self { intake }
    }
}

#[tonic::async_trait]
impl Ingress for IngressService {
    async fn sender(&self, request: Request<Streaming<RawBytes>>) -> Result<Response<IngressResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(RawBytes(bytes)) = stream.message().await? {
            let envelope =
                RawEnvelope::scan(bytes).map_err(|e| Status::invalid_argument(format!("malformed envelope: {e}")))?;
            self.intake.accept(envelope)?;
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

    async fn send(&self, request: Request<RawBatch>) -> Result<Response<SendResponse>, Status> {
        self.intake.accept_batch(request.into_inner(), &mut Vec::new())?;
        Ok(Response::new(SendResponse {}))
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
        let mut scratch = Vec::new();
        while let Some(batch) = stream.next_batch().await? {
            self.intake.accept_batch(batch, &mut scratch)?;
        }
        Ok(())
    }
}

/// Where datagrams come from: the UDP socket, or a test's stand-in.
pub trait Datagrams: Send {
    fn recv(&self, buf: &mut [u8]) -> impl std::future::Future<Output = std::io::Result<usize>> + Send;
}

impl Datagrams for UdpSocket {
    async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.recv_from(buf).await.map(|(len, _)| len)
    }
}

/// Reads one dropsonde envelope per datagram until `shutdown`; malformed datagrams are counted and skipped.
/// A receive error is logged and the next receive waits a little longer ([`ErrorBackoff`]): an error
/// that persists must not spin the runtime thread the agent's gRPC ingress also runs on.
pub async fn serve_udp(socket: impl Datagrams, intake: Arc<Intake>, malformed: Counter, shutdown: CancellationToken) {
    let mut buf = vec![0u8; 65_535];
    let mut backoff = ErrorBackoff::new();
    loop {
        let len = tokio::select! {
            received = socket.recv(&mut buf) => match received {
                Ok(len) => {
                    backoff.reset();
                    len
                }
                Err(error) => {
                    tracing::warn!(%error, "udp ingress receive failed");
                    tokio::select! {
                        _ = backoff.wait() => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            },
            _ = shutdown.cancelled() => return,
        };
        let Some(envelope) = v1_to_v2(&buf[..len], intake.shaper.default_tags()) else {
            malformed.inc();
            continue;
        };
        let bytes = Bytes::from(envelope.encode_to_vec());
        match RawEnvelope::scan(bytes) {
            Ok(raw) => {
                if intake.accept(raw).is_err() {
                    malformed.inc();
                }
            }
            Err(_) => malformed.inc(),
        }
    }
}

/// Decodes a dropsonde envelope and converts it (§3.6): `source_id` defaults to `origin`, and the
/// header's deployment, job, index and ip are filled from the agent's tags where missing (before the
/// conversion, which turns them into tags).
fn v1_to_v2(datagram: &[u8], default_tags: &[(String, String)]) -> Option<loggregator_proto::v2::Envelope> {
    let mut v1 = events::Envelope::decode(datagram).ok()?;
    for (key, value) in default_tags {
        let field = match key.as_str() {
            "deployment" => &mut v1.deployment,
            "job" => &mut v1.job,
            "index" => &mut v1.index,
            "ip" => &mut v1.ip,
            _ => continue,
        };
        if field.as_deref().is_none_or(str::is_empty) {
            *field = Some(value.clone());
        }
    }
    let source_id_missing = v1.tags.get("source_id").is_none_or(|s| s.is_empty());
    if source_id_missing {
        v1.tags.insert("source_id".to_string(), v1.origin.clone());
    }
    loggregator_proto::convert::to_v2(&v1, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::num::NonZeroUsize;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Fails its first `failures` receives at once, then yields one dropsonde log, then nothing.
    struct Failing {
        failures: usize,
        calls: AtomicUsize,
        datagram: Vec<u8>,
    }

    impl Datagrams for Failing {
        async fn recv(&self, buf: &mut [u8]) -> std::io::Result<usize> {
            let call = self.calls.fetch_add(1, Ordering::SeqCst);
            if call < self.failures {
                return Err(std::io::Error::other("persistent receive error"));
            }
            if call == self.failures {
                buf[..self.datagram.len()].copy_from_slice(&self.datagram);
                return Ok(self.datagram.len());
            }
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_persistent_receive_error_backs_off_instead_of_spinning() {
        let v1 = events::Envelope {
            origin: "emitter".into(),
            event_type: events::envelope::EventType::LogMessage as i32,
            log_message: Some(events::LogMessage { message: Bytes::from_static(b"hi"), ..Default::default() }),
            ..Default::default()
        };
        let socket = Failing { failures: 6, calls: AtomicUsize::new(0), datagram: v1.encode_to_vec() };
        let diode = Arc::new(Diode::new(NonZeroUsize::new(8).unwrap()));
        let intake = Arc::new(Intake {
            shaper: Shaper::new([]),
            diode: diode.clone(),
            ingress: Counter::default(),
            dropped: Counter::default(),
        });
        let shutdown = CancellationToken::new();
        let started = tokio::time::Instant::now();
        let task = tokio::spawn(serve_udp(socket, intake.clone(), Counter::default(), shutdown.clone()));
        while intake.ingress.get() == 0 {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        // Six errors in a row waited 1 + 2 + 4 + 8 + 16 + 32 ms before the datagram was read.
        let waited = started.elapsed();
        assert!(waited >= std::time::Duration::from_millis(63), "waited only {waited:?}");
        assert!(waited < std::time::Duration::from_millis(200), "waited {waited:?}");
        shutdown.cancel();
        task.await.unwrap();
    }
}
