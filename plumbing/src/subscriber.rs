//! One reconnecting `loggregator.v2.Egress/BatchedReceiver` subscription: what every consumer of a
//! Doppler or an RLP (the log-cache nozzle, the reverse log proxy, the load generator) needs.
//!
//! A [`Subscription`] holds a channel to one server and the request to send; [`Subscription::next`]
//! yields each received batch as one `Bytes` (an encoded `EnvelopeBatch`, read straight off the
//! HTTP/2 body by [`batched_receiver`]), and when a stream fails or ends it opens a new one after a
//! backoff that doubles from [`INITIAL_BACKOFF`] up to the configured maximum and starts again once
//! a batch has arrived. Only what was in flight on the failed stream is lost; the caller sees the
//! gap as nothing more than a pause.
//!
//! The channel is lazy (dialled on first use, redialled after it breaks), so one channel per server
//! can be shared by many subscriptions: the RLP opens every client's stream to a Doppler over one
//! HTTP/2 connection, as the original does.

use std::time::Duration;

use bytes::Bytes;
use loggregator_proto::stream::{batched_receiver, MessageStream};
use loggregator_proto::v2::{
    selector, CounterSelector, EgressBatchRequest, EventSelector, GaugeSelector, LogSelector, Selector, TimerSelector,
};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};
use tonic::Status;

use crate::tls::ClientTls;
use crate::Counter;

/// The first wait after a failed stream.
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(50);
/// The longest wait between attempts unless configured otherwise.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The firehose: every envelope type from every source, one selector per type so nothing arrives
/// twice, with preferred tags. Readers that want every envelope give it a shard id of their own.
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

/// The endpoint settings of a long-lived subscription: `http://addr` (TLS is done by
/// [`crate::grpc`]'s connector, so tonic sees plain HTTP/2), keepalive pings every 15 s with a 20 s
/// timeout as the original's clients (§2.7), 1 MiB frames, and the [`crate::grpc::SUBSCRIBER_WINDOW`]
/// receive window so a consumer descheduled for a moment queues rather than overflows its server.
pub fn endpoint(addr: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .http2_keep_alive_interval(Duration::from_secs(15))
        .keep_alive_timeout(Duration::from_secs(20))
        .keep_alive_while_idle(true)
        .max_frame_size(crate::grpc::MAX_FRAME_SIZE)
        .initial_stream_window_size(crate::grpc::SUBSCRIBER_WINDOW)
        .initial_connection_window_size(crate::grpc::SUBSCRIBER_WINDOW))
}

/// A lazy channel to `addr` with [`endpoint`]'s settings.
pub fn lazy_channel(addr: &str, tls: Option<ClientTls>) -> Result<Channel, tonic::transport::Error> {
    Ok(crate::grpc::connect_lazy(&endpoint(addr)?, tls))
}

/// Counters a subscription keeps; all optional (a default `Counter` counts for nobody).
#[derive(Clone, Debug, Default)]
pub struct SubscriptionMetrics {
    /// Streams opened (the first and every reopening).
    pub connects: Counter,
    /// Streams that failed to open or failed while open.
    pub failures: Counter,
}

/// A `BatchedReceiver` subscription to one server that reopens itself (see the module docs).
pub struct Subscription {
    addr: String,
    channel: Channel,
    request: EgressBatchRequest,
    max_message: usize,
    max_backoff: Duration,
    backoff: Duration,
    stream: Option<MessageStream>,
    metrics: SubscriptionMetrics,
}

impl Subscription {
    /// A subscription to `addr` (used in logs) over `channel`; nothing is sent until
    /// [`Self::next`] or [`Self::open`].
    pub fn new(addr: impl Into<String>, channel: Channel, request: EgressBatchRequest, max_message: usize) -> Self {
        Self {
            addr: addr.into(),
            channel,
            request,
            max_message,
            max_backoff: DEFAULT_MAX_BACKOFF,
            backoff: INITIAL_BACKOFF,
            stream: None,
            metrics: SubscriptionMetrics::default(),
        }
    }

    pub fn with_max_backoff(mut self, max_backoff: Duration) -> Self {
        self.max_backoff = max_backoff.max(INITIAL_BACKOFF);
        self
    }

    pub fn with_metrics(mut self, metrics: SubscriptionMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// Opens a stream now (one attempt, no backoff), replacing any open one. A grpc-go server
    /// sends a stream's response headers only with its first message, so against one this
    /// completes when the first batch is ready, not when the request was taken.
    pub async fn open(&mut self) -> Result<(), Status> {
        self.stream = None;
        match batched_receiver(&mut self.channel, &self.request, self.max_message).await {
            Ok(stream) => {
                self.metrics.connects.inc();
                tracing::debug!(addr = %self.addr, "subscribed");
                self.stream = Some(stream);
                Ok(())
            }
            Err(status) => {
                self.metrics.failures.inc();
                Err(status)
            }
        }
    }

    /// The next batch, reopening the stream (after the backoff) as often as it takes; `None` only
    /// once `token` is cancelled.
    pub async fn next(&mut self, token: &CancellationToken) -> Option<Bytes> {
        loop {
            if self.stream.is_none() {
                let opened = tokio::select! {
                    opened = self.open() => opened,
                    _ = token.cancelled() => return None,
                };
                if let Err(status) = opened {
                    tracing::warn!(addr = %self.addr, code = ?status.code(), message = status.message(), "subscription failed to open");
                    self.wait_backoff(token).await?;
                    continue;
                }
            }
            let stream = self.stream.as_mut()?;
            let message = tokio::select! {
                message = stream.message() => message,
                _ = token.cancelled() => return None,
            };
            match message {
                Ok(Some(batch)) => {
                    self.backoff = INITIAL_BACKOFF;
                    return Some(batch);
                }
                Ok(None) => {
                    tracing::info!(addr = %self.addr, "subscription ended by the server");
                    self.stream = None;
                }
                Err(status) => {
                    self.metrics.failures.inc();
                    tracing::warn!(addr = %self.addr, code = ?status.code(), message = status.message(), "subscription failed");
                    self.stream = None;
                }
            }
            self.wait_backoff(token).await?;
        }
    }

    /// Sleeps the current backoff and doubles it; `None` if cancelled meanwhile.
    async fn wait_backoff(&mut self, token: &CancellationToken) -> Option<()> {
        tokio::select! {
            _ = tokio::time::sleep(self.backoff) => {}
            _ = token.cancelled() => return None,
        }
        self.backoff = (self.backoff * 2).min(self.max_backoff);
        Some(())
    }
}
