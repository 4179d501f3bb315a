//! The nozzle: a `BatchedReceiver` subscription to one Doppler or RLP, storing what it receives.
//!
//! One nozzle per configured address, shard id `log-cache` (so several log-cache nodes split the
//! firehose instead of each getting a copy, §2.5), selectors for all five envelope types with an
//! empty source id, `use_preferred_tags = true` (§6.10). Batches arrive as raw bytes (slices of the
//! HTTP/2 frames, [`loggregator_proto::stream`]) and are scanned, never decoded, on their way into
//! the store, or to the node owning their source as the same slices.
//! A failed or ended stream is reopened with a backoff that doubles from 50 ms up to `max_backoff`
//! and resets once a batch has been received (the shared [`Subscription`]).

use std::sync::Arc;

use loggregator_proto::raw::RawBatch;
use loggregator_proto::v2::{selector, EgressBatchRequest, Selector};
use plumbing::subscriber::{Subscription, SubscriptionMetrics};
use plumbing::{Counter, Registry};
use tokio_util::sync::CancellationToken;

use crate::config::NozzleConfig;
use crate::service::Service;

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
pub enum NozzleError {
    #[error("invalid address: {0}")]
    Address(#[from] tonic::transport::Error),
    #[error("TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
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

    /// Subscribes until `token` is cancelled, reconnecting with backoff
    /// ([`plumbing::subscriber::Subscription`]).
    pub async fn run(self, token: CancellationToken) {
        let mut subscription = match self.subscription() {
            Ok(subscription) => subscription,
            Err(error) => {
                tracing::error!(addr = %self.addr, %error, "nozzle cannot subscribe");
                return;
            }
        };
        tracing::info!(addr = %self.addr, "nozzle subscribing");
        // The scanned envelopes of one batch; reused so that a batch allocates only the stored copies.
        let mut scanned = Vec::new();
        while let Some(batch) = subscription.next(&token).await {
            let count = self.service.ingest_batch(RawBatch(batch).scan(), &mut scanned).await;
            self.metrics.received.add(count as u64);
        }
    }

    fn subscription(&self) -> Result<Subscription, NozzleError> {
        let tls = self.config.tls.as_ref().map(|tls| tls.grpc_client_config(&self.config.server_name)).transpose()?;
        let channel = plumbing::subscriber::lazy_channel(&self.addr, tls)?;
        let request = subscription_request(&self.config.shard_id);
        Ok(Subscription::new(self.addr.clone(), channel, request, self.max_message_bytes)
            .with_max_backoff(self.config.max_backoff)
            .with_metrics(SubscriptionMetrics {
                connects: self.metrics.connects.clone(),
                failures: Counter::default(),
            }))
    }
}
