//! Events the traffic controller tells the platform about, sent as v2 envelopes to the local agent
//! (`loggregator.v2.Ingress/Send`), as the original emits through its agent (§8): source id
//! `traffic_controller`. Sending never holds up the caller: each event is one bounded background
//! send, and beyond [`MAX_IN_FLIGHT`] pending sends an event is dropped and counted.

use std::sync::Arc;
use std::time::Duration;

use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{envelope, Envelope, EnvelopeBatch, Event};
use plumbing::Counter;
use tokio::sync::Semaphore;
use tonic::transport::Channel;

/// Sends at most this many events at once.
const MAX_IN_FLIGHT: usize = 16;
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
pub const SOURCE_ID: &str = "traffic_controller";

#[derive(Clone, Default)]
pub struct Announcer {
    agent: Option<Channel>,
    slots: Option<Arc<Semaphore>>,
    /// Events that could not be sent.
    pub failed: Counter,
}

impl Announcer {
    /// Announces through the agent at the other end of `channel`; `None` announces nothing
    /// (the events still appear in the log).
    pub fn new(agent: Option<Channel>, failed: Counter) -> Self {
        let slots = agent.as_ref().map(|_| Arc::new(Semaphore::new(MAX_IN_FLIGHT)));
        Self { agent, slots, failed }
    }

    pub fn announce(&self, title: &str, body: String) {
        let (Some(channel), Some(slots)) = (self.agent.clone(), self.slots.clone()) else { return };
        let Ok(permit) = slots.try_acquire_owned() else {
            self.failed.inc();
            return;
        };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
        let envelope = Envelope {
            timestamp: i64::try_from(now.as_nanos()).unwrap_or(i64::MAX),
            source_id: SOURCE_ID.to_string(),
            message: Some(envelope::Message::Event(Event { title: title.to_string(), body })),
            ..Default::default()
        };
        let failed = self.failed.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut client = IngressClient::new(channel);
            let send = client.send(EnvelopeBatch { batch: vec![envelope] });
            match tokio::time::timeout(SEND_TIMEOUT, send).await {
                Ok(Ok(_)) => {}
                Ok(Err(status)) => {
                    failed.inc();
                    tracing::warn!(code = ?status.code(), message = status.message(), "cannot announce an event");
                }
                Err(_) => {
                    failed.inc();
                    tracing::warn!("announcing an event timed out");
                }
            }
        });
    }
}
