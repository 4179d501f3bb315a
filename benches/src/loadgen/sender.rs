//! Senders: each streams pre-encoded batches over one `loggregator.v2.Ingress/BatchSender` call,
//! at a fixed pace or as fast as the stream accepts, until its deadline.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use loggregator_proto::raw::RawCodec;
use loggregator_proto::v2::BatchSenderResponse;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;

use super::settings::ClientTls;
use super::transport::connect;
use crate::workload::{now_nanos, BatchTemplate, StampedBatch};

/// Counters shared by all senders.
#[derive(Default)]
pub struct SendStats {
    /// Envelopes handed to a stream that then ended cleanly (or is still open).
    pub sent: AtomicU64,
    /// Envelopes in streams that failed: they may or may not have arrived.
    pub uncertain: AtomicU64,
    /// Connection and stream failures.
    pub errors: AtomicU64,
    /// Times a fixed-rate sender fell more than 100 ms behind its schedule.
    pub behind: AtomicU64,
}

pub struct Sender {
    pub index: usize,
    pub addr: String,
    pub tls: Option<ClientTls>,
    pub templates: Arc<Vec<BatchTemplate>>,
    /// Envelopes per second for this sender; `None` = as fast as possible.
    pub rate: Option<f64>,
    pub deadline: Instant,
    pub stats: Arc<SendStats>,
}

enum StreamEnd {
    Deadline,
    Failed,
}

impl Sender {
    pub async fn run(self) {
        let batch_len = self.templates.first().map_or(1, BatchTemplate::len).max(1);
        let period = self.rate.map(|r| Duration::from_secs_f64(batch_len as f64 / r));
        let mut next_due = Instant::now();
        let mut turn = self.index;
        while Instant::now() < self.deadline {
            match self.stream(period, &mut next_due, &mut turn).await {
                StreamEnd::Deadline => return,
                StreamEnd::Failed => {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn stream(&self, period: Option<Duration>, next_due: &mut Instant, turn: &mut usize) -> StreamEnd {
        let channel = match tokio::time::timeout_at(self.deadline, connect(&self.addr, self.tls.as_ref())).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => {
                eprintln!("loadgen: sender {}: {error:#}", self.index);
                return StreamEnd::Failed;
            }
            Err(_) => return StreamEnd::Deadline,
        };
        let (tx, rx) = mpsc::channel::<StampedBatch>(2);
        let call = tokio::spawn(batch_sender(channel, rx));
        let mut in_stream = 0u64;
        let mut failed = false;
        while Instant::now() < self.deadline {
            if let Some(period) = period {
                let now = Instant::now();
                if *next_due > now {
                    tokio::time::sleep_until((*next_due).min(self.deadline)).await;
                    if Instant::now() >= self.deadline {
                        break;
                    }
                } else if now - *next_due > Duration::from_millis(100) {
                    // Too far behind to catch up without a burst: restart the schedule.
                    self.stats.behind.fetch_add(1, Ordering::Relaxed);
                    *next_due = now;
                }
                *next_due += period;
            }
            let template = &self.templates[*turn % self.templates.len()];
            *turn += 1;
            let batch = template.stamp(now_nanos());
            let n = batch.len() as u64;
            match tokio::time::timeout_at(self.deadline, tx.send(batch)).await {
                Ok(Ok(())) => {
                    in_stream += n;
                    self.stats.sent.fetch_add(n, Ordering::Relaxed);
                }
                Ok(Err(_)) => {
                    failed = true;
                    break;
                }
                Err(_) => break,
            }
        }
        drop(tx);
        // The call ends once the server has read everything we queued.
        let result = tokio::time::timeout(Duration::from_secs(10), call).await;
        let ok = match &result {
            Ok(Ok(Ok(_))) => true,
            Ok(Ok(Err(status))) => !failed && is_grpc_go_eof(status),
            _ => false,
        };
        if !ok {
            if let Ok(Ok(Err(status))) = &result {
                eprintln!("loadgen: sender {}: stream ended with {}: {}", self.index, status.code(), status.message());
            }
            // What this stream carried may be partly lost in flight: keep it apart from `sent`.
            self.stats.sent.fetch_sub(in_stream, Ordering::Relaxed);
            self.stats.uncertain.fetch_add(in_stream, Ordering::Relaxed);
            return StreamEnd::Failed;
        }
        if failed {
            StreamEnd::Failed
        } else {
            StreamEnd::Deadline
        }
    }
}

/// How a grpc-go server (the original's agent and Doppler) ends a `BatchSender` stream that the
/// client closed: its handler returns `Recv`'s `io.EOF` as the error, so the status is UNKNOWN
/// "EOF" although every message was read. Success, when it ends a stream we closed after sending
/// everything.
fn is_grpc_go_eof(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::Unknown && status.message() == "EOF"
}

/// `loggregator.v2.Ingress/BatchSender` with batches stamped as tonic encodes them (the generated
/// clients take their message types from the proto files).
async fn batch_sender(
    channel: tonic::transport::Channel,
    batches: mpsc::Receiver<StampedBatch>,
) -> Result<tonic::Response<BatchSenderResponse>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel).max_encoding_message_size(10 * 1024 * 1024);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("connection not ready: {e}")))?;
    let path = http::uri::PathAndQuery::from_static("/loggregator.v2.Ingress/BatchSender");
    let codec = RawCodec::<StampedBatch, BatchSenderResponse>::default();
    grpc.client_streaming(tonic::Request::new(ReceiverStream::new(batches)), path, codec).await
}
