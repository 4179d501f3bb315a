//! The nozzle: a `BatchedReceiver` subscription to one Doppler or RLP, storing what it receives.
//!
//! One nozzle per configured address, shard id `log-cache` (so several log-cache nodes split the
//! firehose instead of each getting a copy, §2.5), selectors for all five envelope types with an
//! empty source id, `use_preferred_tags = true` (§6.10). Batches arrive as raw bytes (slices of the
//! HTTP/2 frames, [`loggregator_proto::stream`]) and are scanned,
//! never decoded, on their way into the store, which takes each batch whole (`Store::insert_batch`).
//! A failed or ended stream is reopened with a backoff that doubles from 50 ms up to `max_backoff`
//! and resets once a batch has been received.

use std::sync::Arc;
use std::time::Duration;

use loggregator_proto::raw::RawBatch;
use loggregator_proto::stream::batched_receiver;
use loggregator_proto::v2::{selector, EgressBatchRequest, Selector};
use plumbing::{Counter, Registry};
use tokio_util::sync::CancellationToken;
use tonic::transport::Endpoint;

use crate::config::NozzleConfig;
use crate::service::Service;

const INITIAL_BACKOFF: Duration = Duration::from_millis(50);

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum NozzleError {
    #[error("invalid address: {0}")]
    Address(String),
    #[error("TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
    #[error("connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("stream: {0}")]
    Stream(#[from] tonic::Status),
}

/// Counters of one nozzle (labelled with its address).
#[derive(Clone, Debug, Default)]
pub struct NozzleMetrics {
    /// Envelopes received.
    pub received: Counter,
    /// Subscriptions (re)opened.
    pub connects: Counter,
}

impl NozzleMetrics {
    pub fn register(registry: &Registry, addr: &str) -> Self {
        Self {
            // metric-documentation: envelopes received by the nozzle from one Doppler / RLP.
            received: registry.counter("nozzle_received", "Envelopes received by the nozzle", &[("addr", addr)]),
            // metric-documentation: subscriptions opened (first connection and every reconnection).
            connects: registry.counter("nozzle_connects", "Nozzle subscriptions opened", &[("addr", addr)]),
        }
    }
}

/// A subscription to one Doppler / RLP.
pub struct Nozzle {
    addr: String,
    config: NozzleConfig,
    max_message_bytes: usize,
    service: Arc<Service>,
    metrics: NozzleMetrics,
}

/// The request of §6.10: every type, any source, shard `log-cache`, preferred tags.
pub fn subscription_request(shard_id: &str) -> EgressBatchRequest {
    let any = |message| Selector { source_id: String::new(), message: Some(message) };
    EgressBatchRequest {
        shard_id: shard_id.to_string(),
        legacy_selector: None,
        selectors: vec![
            any(selector::Message::Log(Default::default())),
            any(selector::Message::Counter(Default::default())),
            any(selector::Message::Gauge(Default::default())),
            any(selector::Message::Timer(Default::default())),
            any(selector::Message::Event(Default::default())),
        ],
        use_preferred_tags: true,
        deterministic_name: String::new(),
    }
}

impl Nozzle {
    pub fn new(
        addr: String,
        config: NozzleConfig,
        max_message_bytes: usize,
        service: Arc<Service>,
        metrics: NozzleMetrics,
    ) -> Self {
        Self { addr, config, max_message_bytes, service, metrics }
    }

    /// Subscribes until `token` is cancelled, reconnecting with backoff.
    pub async fn run(self, token: CancellationToken) {
        let mut backoff = INITIAL_BACKOFF;
        while !token.is_cancelled() {
            let mut received_any = false;
            match self.subscribe_once(&token, &mut received_any).await {
                Ok(()) => tracing::info!(addr = %self.addr, "nozzle stream ended"),
                Err(e) => tracing::warn!(addr = %self.addr, error = %e, "nozzle stream failed"),
            }
            if received_any {
                backoff = INITIAL_BACKOFF;
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = token.cancelled() => break,
            }
            backoff = (backoff * 2).min(self.config.max_backoff.max(INITIAL_BACKOFF));
        }
    }

    async fn subscribe_once(&self, token: &CancellationToken, received_any: &mut bool) -> Result<(), NozzleError> {
        // TLS is done by our connector (`plumbing::grpc`), so tonic sees a plain endpoint.
        let endpoint = Endpoint::from_shared(format!("http://{}", self.addr))
            .map_err(|e| NozzleError::Address(e.to_string()))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(15))
            .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE)
            .initial_stream_window_size(plumbing::grpc::SUBSCRIBER_WINDOW)
            .initial_connection_window_size(plumbing::grpc::SUBSCRIBER_WINDOW)
            .keep_alive_timeout(Duration::from_secs(20));
        let tls = self.config.tls.as_ref().map(|tls| tls.grpc_client_config(&self.config.server_name)).transpose()?;
        let mut channel = tokio::select! {
            channel = plumbing::grpc::connect(&endpoint, tls) => channel?,
            _ = token.cancelled() => return Ok(()),
        };
        let request = subscription_request(&self.config.shard_id);
        let mut stream = tokio::select! {
            stream = batched_receiver(&mut channel, &request, self.max_message_bytes) => stream?,
            _ = token.cancelled() => return Ok(()),
        };
        self.metrics.connects.inc();
        tracing::info!(addr = %self.addr, "nozzle subscribed");
        // The scanned envelopes of one batch; reused so that a batch allocates only the stored copies.
        let mut scanned = Vec::new();
        loop {
            let message = tokio::select! {
                message = stream.message() => message?,
                _ = token.cancelled() => return Ok(()),
            };
            let Some(batch) = message else {
                return Ok(());
            };
            *received_any = true;
            let count = self.service.ingest_batch(RawBatch(batch).scan(), &mut scanned).await;
            self.metrics.received.add(count as u64);
        }
    }
}
