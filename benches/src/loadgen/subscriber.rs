//! Subscribers: each opens `loggregator.v2.Egress/BatchedReceiver` on every egress address with a
//! firehose selector set, scans every received batch and records each envelope's end-to-end latency
//! (now − envelope timestamp) in its own histogram, through the shared reconnecting
//! [`Subscription`]. [`Recorder`] is what every kind of subscriber (gRPC, SSE, WebSocket) counts with.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use loggregator_proto::v2::EgressBatchRequest;
use loggregator_proto::wire::{read_key, read_len, read_varint, skip_field, WireType};
use loggregator_proto::ScanError;
use plumbing::subscriber::{Subscription, SubscriptionMetrics};
use plumbing::Counter;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use super::settings::ClientTls;
use super::transport::connect;
use crate::workload::now_nanos;

/// Latency histogram in microseconds, 1 µs to 1 h, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid histogram bounds")
}

#[derive(Default)]
pub struct SubStats {
    pub received: AtomicU64,
    /// Batches (gRPC messages) received: `received / batches` is the egress batch size.
    pub batches: AtomicU64,
    pub malformed: AtomicU64,
    /// Envelopes from other sources than this run (other traffic of a shared deployment).
    pub foreign: AtomicU64,
    /// Streams that failed to open or failed while open.
    pub errors: Counter,
    /// Worst latency (µs) since the progress line last took it: shows when a stall happened.
    pub worst_us: AtomicU64,
}

pub use plumbing::subscriber::firehose;

/// The source id and timestamp of each envelope of an encoded `EnvelopeBatch`: all a subscriber
/// needs. Unlike the pipeline's scanner it reads no further into an envelope than these two fields
/// (protobuf encoders write fields in number order, so they come first) and validates nothing else:
/// the load generator shares the machine it measures, and the full scan was a tenth of its CPU.
pub struct Stamps<'a> {
    batch: &'a [u8],
    pos: usize,
}

impl<'a> Stamps<'a> {
    pub fn new(batch: &'a [u8]) -> Self {
        Self { batch, pos: 0 }
    }

    fn envelope(envelope: &'a [u8]) -> Result<(&'a [u8], u64), ScanError> {
        let (mut pos, mut source_id, mut timestamp) = (0, None, None);
        while pos < envelope.len() && (source_id.is_none() || timestamp.is_none()) {
            match read_key(envelope, &mut pos)? {
                (1, WireType::Varint) => timestamp = Some(read_varint(envelope, &mut pos)?),
                (2, WireType::Len) => source_id = Some(&envelope[read_len(envelope, &mut pos)?]),
                (field, wire_type) => skip_field(envelope, &mut pos, field, wire_type)?,
            }
        }
        Ok((source_id.unwrap_or_default(), timestamp.unwrap_or_default()))
    }

    fn next_envelope(&mut self) -> Result<Option<(&'a [u8], u64)>, ScanError> {
        while self.pos < self.batch.len() {
            match read_key(self.batch, &mut self.pos)? {
                (1, WireType::Len) => {
                    let range = read_len(self.batch, &mut self.pos)?;
                    return Self::envelope(&self.batch[range]).map(Some);
                }
                (field, wire_type) => skip_field(self.batch, &mut self.pos, field, wire_type)?,
            }
        }
        Ok(None)
    }
}

impl<'a> Iterator for Stamps<'a> {
    type Item = Result<(&'a [u8], u64), ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        let item = self.next_envelope().transpose();
        if matches!(item, Some(Err(_))) {
            self.pos = self.batch.len();
        }
        item
    }
}

/// What one subscriber task keeps: its share of the counters, its histogram, and which envelopes
/// are this run's. Every kind of subscriber (gRPC, SSE, WebSocket) records through it.
pub struct Recorder {
    pub stats: Arc<SubStats>,
    /// Only envelopes whose source id starts with it are ours.
    pub source_prefix: String,
    pub histogram: Histogram<u64>,
}

impl Recorder {
    pub fn new(stats: Arc<SubStats>, source_prefix: String) -> Self {
        Self { stats, source_prefix, histogram: latency_histogram() }
    }

    /// Records one received batch (gRPC message, SSE event, WebSocket frame): each envelope's
    /// latency (now − its timestamp in nanoseconds) if it is ours, a foreign count if not; a
    /// malformed envelope ends the batch.
    pub fn batch<'a, E>(&mut self, envelopes: impl IntoIterator<Item = Result<(&'a [u8], u64), E>>) {
        let now = now_nanos();
        let (mut n, mut foreign, mut worst) = (0u64, 0u64, 0u64);
        for envelope in envelopes {
            match envelope {
                Ok((source_id, _)) if !source_id.starts_with(self.source_prefix.as_bytes()) => foreign += 1,
                Ok((_, timestamp)) => {
                    n += 1;
                    let micros = (now.saturating_sub(timestamp as i64) / 1000).max(1) as u64;
                    self.histogram.saturating_record(micros);
                    worst = worst.max(micros);
                }
                Err(_) => {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                    break;
                }
            }
        }
        self.stats.received.fetch_add(n, Ordering::Relaxed);
        self.stats.worst_us.fetch_max(worst, Ordering::Relaxed);
        if foreign > 0 {
            self.stats.foreign.fetch_add(foreign, Ordering::Relaxed);
        }
        self.stats.batches.fetch_add(1, Ordering::Relaxed);
    }
}

/// How long a subscriber whose connection is up waits for the server's answer before it counts
/// itself ready. A grpc-go server (the original's Doppler and RLP) sends a stream's response
/// headers only with its first message, so no answer comes before the run sends; an error status
/// (a refusal) comes at once.
pub const READY_GRACE: Duration = Duration::from_millis(500);

/// Largest `BatchedReceiver` message accepted.
const MAX_MESSAGE: usize = 10 * 1024 * 1024;

/// One gRPC subscriber's stream from one egress address.
pub struct Connection {
    pub subscriber: usize,
    pub addr: String,
    pub tls: Option<ClientTls>,
    pub request: EgressBatchRequest,
    pub stats: Arc<SubStats>,
    pub stop: CancellationToken,
    /// Only envelopes whose source id starts with it are ours.
    pub source_prefix: String,
}

impl Connection {
    /// Subscribes (reporting the first attempt's outcome on `ready`, see [`READY_GRACE`]), then
    /// receives until `stop`; [`Subscription::next`] re-subscribes after a failure, with backoff.
    /// Returns the latency histogram.
    pub async fn run(self, ready: oneshot::Sender<Result<(), String>>) -> Histogram<u64> {
        let mut recorder = Recorder::new(Arc::clone(&self.stats), self.source_prefix.clone());
        let Some(mut subscription) = self.first_attempt(ready).await else { return recorder.histogram };
        while let Some(batch) = subscription.next(&self.stop).await {
            recorder.batch(Stamps::new(&batch));
        }
        recorder.histogram
    }

    /// Connects and opens the stream. Ready once the connection is up and the server has either
    /// answered or stayed silent for [`READY_GRACE`]; a refused connection or an error status is a
    /// failure of the run. `None` if the subscriber is done.
    async fn first_attempt(&self, ready: oneshot::Sender<Result<(), String>>) -> Option<Subscription> {
        let fail = |ready: oneshot::Sender<Result<(), String>>, error: String| {
            self.stats.errors.inc();
            let _ = ready.send(Err(format!("subscriber {} at {}: {error}", self.subscriber, self.addr)));
            None
        };
        let channel = tokio::select! {
            _ = self.stop.cancelled() => return None,
            channel = connect(&self.addr, self.tls.as_ref()) => channel,
        };
        let channel = match channel {
            Ok(channel) => channel,
            Err(error) => return fail(ready, format!("{error:#}")),
        };
        // The channel reconnects by itself after it breaks; the subscription reopens the stream.
        let mut subscription = Subscription::new(self.addr.clone(), channel, self.request.clone(), MAX_MESSAGE)
            .with_metrics(SubscriptionMetrics { connects: Counter::default(), failures: self.stats.errors.clone() });
        let mut ready = Some(ready);
        let opened = {
            let open = subscription.open();
            tokio::pin!(open);
            tokio::select! {
                opened = &mut open => opened,
                _ = tokio::time::sleep(READY_GRACE) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                    tokio::select! {
                        opened = &mut open => opened,
                        _ = self.stop.cancelled() => return None,
                    }
                }
            }
        };
        match (opened, ready.take()) {
            (Ok(()), Some(ready)) => {
                let _ = ready.send(Ok(()));
            }
            (Ok(()), None) => {}
            (Err(status), Some(ready)) => {
                let _ = ready.send(Err(format!(
                    "subscriber {} at {}: {}: {}",
                    self.subscriber,
                    self.addr,
                    status.code(),
                    status.message()
                )));
                return None;
            }
            // Failed after the run started: `next` reopens it (the subscription counted the failure).
            (Err(status), None) => eprintln!(
                "loadgen: subscriber {} at {}: {}: {}",
                self.subscriber,
                self.addr,
                status.code(),
                status.message()
            ),
        }
        Some(subscription)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggregator_proto::prost::Message;
    use loggregator_proto::v2::{envelope, Counter, Envelope, EnvelopeBatch, Log};

    #[test]
    fn stamps_read_source_id_and_timestamp_of_every_envelope() {
        let envelope = |source_id: &str, timestamp: i64, message| Envelope {
            source_id: source_id.to_string(),
            timestamp,
            instance_id: "3".into(),
            tags: [("k".to_string(), "v".to_string())].into(),
            message: Some(message),
            ..Default::default()
        };
        let batch = EnvelopeBatch {
            batch: vec![
                envelope("app-1", 1_700_000_000_000_000_000, envelope::Message::Log(Log::default())),
                envelope("", 42, envelope::Message::Counter(Counter { name: "c".into(), ..Default::default() })),
                envelope("app-2", 0, envelope::Message::Log(Log::default())),
            ],
        }
        .encode_to_vec();
        let got: Vec<_> = Stamps::new(&batch).collect::<Result<_, _>>().unwrap();
        assert_eq!(got, vec![(&b"app-1"[..], 1_700_000_000_000_000_000), (&b""[..], 42), (&b"app-2"[..], 0)]);
    }

    #[test]
    fn stamps_stop_at_a_malformed_envelope() {
        let good =
            EnvelopeBatch { batch: vec![Envelope { source_id: "a".into(), timestamp: 5, ..Default::default() }] }
                .encode_to_vec();
        let mut batch = good.clone();
        // A second envelope whose length runs past the end of the batch.
        batch.extend_from_slice(&[0x0a, 0x40, 0x0a]);
        let got: Vec<_> = Stamps::new(&batch).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].as_ref().unwrap(), &(&b"a"[..], 5));
        assert!(got[1].is_err());
        // An envelope truncated inside its timestamp.
        let mut cut = good[..good.len() - 1].to_vec();
        cut[1] -= 1;
        assert!(Stamps::new(&cut).next().unwrap().is_err());
    }
}
