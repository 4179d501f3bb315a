//! Subscribers: each opens `loggregator.v2.Egress/BatchedReceiver` on every egress address with a
//! firehose selector set, scans every received batch and records each envelope's end-to-end latency
//! (now − envelope timestamp) in its own histogram.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use loggregator_proto::raw::client::egress::egress_client::EgressClient;
use loggregator_proto::v2::{
    selector, CounterSelector, EgressBatchRequest, EventSelector, GaugeSelector, LogSelector, Selector, TimerSelector,
};
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
    pub errors: AtomicU64,
}

/// Every envelope type from every source: one selector per type, so nothing arrives twice.
pub fn firehose(shard_id: String) -> EgressBatchRequest {
    let selectors = [
        selector::Message::Log(LogSelector {}),
        selector::Message::Counter(CounterSelector { name: String::new() }),
        selector::Message::Gauge(GaugeSelector { names: Vec::new() }),
        selector::Message::Timer(TimerSelector {}),
        selector::Message::Event(EventSelector {}),
    ]
    .into_iter()
    .map(|message| Selector { source_id: String::new(), message: Some(message) })
    .collect();
    EgressBatchRequest { shard_id, selectors, use_preferred_tags: true, ..Default::default() }
}

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
    /// Subscribes (reporting the first attempt's outcome on `ready`), then receives until `stop`,
    /// re-subscribing after a failure. Returns the latency histogram.
    pub async fn run(self, ready: oneshot::Sender<Result<(), String>>) -> Histogram<u64> {
        let mut histogram = latency_histogram();
        let mut ready = Some(ready);
        while !self.stop.is_cancelled() {
            let stream = tokio::select! {
                _ = self.stop.cancelled() => break,
                stream = self.subscribe() => stream,
            };
            let mut stream = match stream {
                Ok(stream) => {
                    if let Some(ready) = ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                    stream
                }
                Err(error) => {
                    let message = format!("subscriber {} at {}: {error:#}", self.subscriber, self.addr);
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(Err(message));
                            return histogram;
                        }
                        None => eprintln!("loadgen: {message}"),
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                    }
                }
            };
            loop {
                let message = tokio::select! {
                    _ = self.stop.cancelled() => return histogram,
                    message = stream.message() => message,
                };
                match message {
                    Ok(Some(batch)) => {
                        let now = now_nanos();
                        let (mut n, mut foreign) = (0u64, 0u64);
                        for envelope in batch.scan() {
                            match envelope {
                                Ok(envelope)
                                    if !envelope.source_id_bytes().starts_with(self.source_prefix.as_bytes()) =>
                                {
                                    foreign += 1;
                                }
                                Ok(envelope) => {
                                    n += 1;
                                    let micros = (now.saturating_sub(envelope.meta.timestamp) / 1000).max(1) as u64;
                                    histogram.saturating_record(micros);
                                }
                                Err(_) => {
                                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                                    break;
                                }
                            }
                        }
                        self.stats.received.fetch_add(n, Ordering::Relaxed);
                        if foreign > 0 {
                            self.stats.foreign.fetch_add(foreign, Ordering::Relaxed);
                        }
                        self.stats.batches.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(None) => break,
                    Err(status) => {
                        self.stats.errors.fetch_add(1, Ordering::Relaxed);
                        eprintln!(
                            "loadgen: subscriber {} at {}: stream failed: {}: {}",
                            self.subscriber,
                            self.addr,
                            status.code(),
                            status.message()
                        );
                        break;
                    }
                }
            }
        }
        histogram
    }

    async fn subscribe(&self) -> anyhow::Result<tonic::Streaming<loggregator_proto::raw::RawBatch>> {
        let channel = connect(&self.addr, self.tls.as_ref()).await?;
        let mut client = EgressClient::new(channel).max_decoding_message_size(10 * 1024 * 1024);
        let response = client.batched_receiver(self.request.clone()).await?;
        Ok(response.into_inner())
    }
}
