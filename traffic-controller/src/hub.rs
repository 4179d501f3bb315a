//! v1 frames for the traffic controller's WebSockets: one conversion, shared by every reader.
//!
//! A [`Hub`] is one fan-in from every Doppler, converted to v1 (§3.4) once, and the set of
//! connections that receive the result: every connection streaming one app shares that app's hub,
//! so 100 viewers of an app cost one subscription and one conversion per envelope, and each frame
//! is one `Bytes` whose clones (reference counts) go into the connections' buffers. A firehose
//! connection has a hub of its own, since its shard id splits the firehose among the connections
//! that share it (the Dopplers do the splitting, §2.5). When the last connection leaves, the hub
//! and its subscriptions go. Logs and counters are converted straight from their encoding
//! ([`V1Writer`]); other types are decoded and converted by `to_v1`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use bytes::{Bytes, BytesMut};
use loggregator_proto::convert::{to_v1, uuid_to_string};
use loggregator_proto::events::{self, envelope::EventType};
use loggregator_proto::prost::Message as _;
use loggregator_proto::v1_encoded::V1Writer;
use loggregator_proto::v2::{self, selector, EgressBatchRequest, Selector};
use parking_lot::Mutex;
use plumbing::buffer::EnvelopeBuffer;
use plumbing::Counter;
use tokio_util::sync::CancellationToken;

use crate::upstream::{Dopplers, FanIn, FanInMetrics};

/// The conversion buffer is topped up to this size when less than [`FRAME_HEADROOM`] is left.
const FRAME_BUFFER: usize = 64 << 10;
const FRAME_HEADROOM: usize = 4 << 10;

/// Which v1 envelopes a hub passes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// `/apps/{guid}/stream`: the app's logs, container metrics and HTTP start-stops (the v1
    /// envelopes whose app id is the app, §2.8).
    App(String),
    /// `/firehose/{id}` with `filter-type=logs`: log messages only.
    Logs,
    /// `/firehose/{id}` with `filter-type=metrics`: everything but log messages.
    Metrics,
    /// `/firehose/{id}`: everything.
    All,
}

impl Filter {
    /// The v2 request that brings everything the filter may pass. Events never reach v1
    /// consumers; a metrics firehose still reads logs, since a v2 log tagged `__v1_type=Error`
    /// becomes a v1 `Error`, which is a metric to v1 routing.
    fn request(&self, shard_id: &str) -> EgressBatchRequest {
        let types: &[fn() -> selector::Message] = match self {
            Self::App(_) => &[log, gauge, timer],
            Self::Logs => &[log],
            Self::Metrics | Self::All => &[log, counter, gauge, timer],
        };
        let source_id = match self {
            Self::App(app) => app.clone(),
            _ => String::new(),
        };
        EgressBatchRequest {
            shard_id: shard_id.to_string(),
            selectors: types
                .iter()
                .map(|message| Selector { source_id: source_id.clone(), message: Some(message()) })
                .collect(),
            use_preferred_tags: true,
            ..Default::default()
        }
    }

    /// [`Self::passes`] for what [`V1Writer`] wrote: a log message (whose app id is the v2 source
    /// id) or a counter (which belongs to no app).
    fn passes_written(&self, is_log: bool, source_id: &[u8]) -> bool {
        match self {
            Self::App(app) => is_log && source_id == app.as_bytes(),
            Self::Logs => is_log,
            Self::Metrics => !is_log,
            Self::All => true,
        }
    }

    fn passes(&self, envelope: &events::Envelope) -> bool {
        let is_log = envelope.event_type == EventType::LogMessage as i32;
        match self {
            Self::App(app) => app_id(envelope).is_some_and(|id| id == *app),
            Self::Logs => is_log,
            Self::Metrics => !is_log,
            Self::All => true,
        }
    }
}

fn log() -> selector::Message {
    selector::Message::Log(Default::default())
}
fn counter() -> selector::Message {
    selector::Message::Counter(Default::default())
}
fn gauge() -> selector::Message {
    selector::Message::Gauge(Default::default())
}
fn timer() -> selector::Message {
    selector::Message::Timer(Default::default())
}

/// The v1 app id of an envelope as the Doppler's v1 routing reads it (§2.8); `None` for the
/// types that belong to no app ("system").
pub fn app_id(envelope: &events::Envelope) -> Option<String> {
    match EventType::try_from(envelope.event_type).ok()? {
        EventType::LogMessage => envelope.log_message.as_ref()?.app_id.clone(),
        EventType::ContainerMetric => envelope.container_metric.as_ref().map(|m| m.application_id.clone()),
        EventType::HttpStartStop => envelope.http_start_stop.as_ref()?.application_id.as_ref().map(uuid_to_string),
        _ => None,
    }
}

/// Counters of the traffic controller's hubs.
#[derive(Clone, Default)]
pub struct HubMetrics {
    pub fan_in: FanInMetrics,
    /// v2 envelopes that did not decode (not forwarded).
    pub undecodable: Counter,
    /// Envelopes a hub's own buffer dropped (its conversion fell behind).
    pub dropped: Counter,
}

/// One fan-in and the connections it feeds (see the module docs).
pub struct Hub {
    readers: Mutex<Vec<(u64, Arc<EnvelopeBuffer>)>>,
    next_id: AtomicU64,
    _fan_in: FanIn,
}

impl Hub {
    fn start(
        dopplers: &Dopplers,
        filter: Filter,
        shard_id: &str,
        config: &crate::config::Config,
        metrics: HubMetrics,
        shutdown: &CancellationToken,
    ) -> Arc<Self> {
        let buffer = Arc::new(EnvelopeBuffer::new(
            config.rlp.stream_buffer,
            config.rlp.stream_buffer_bytes,
            metrics.dropped.clone(),
        ));
        let request = filter.request(shard_id);
        let fan_in = FanIn::start(
            dopplers,
            request,
            Arc::clone(&buffer),
            config.max_message_bytes,
            metrics.fan_in.clone(),
            shutdown,
        );
        let token = fan_in.token();
        let hub = Arc::new(Self { readers: Mutex::new(Vec::new()), next_id: AtomicU64::new(0), _fan_in: fan_in });
        tokio::spawn(convert(Arc::downgrade(&hub), buffer, filter, metrics, token));
        hub
    }

    /// Adds a connection's buffer; the returned id removes it.
    pub fn add(&self, buffer: Arc<EnvelopeBuffer>) -> u64 {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.readers.lock().push((id, buffer));
        id
    }

    pub fn remove(&self, id: u64) {
        self.readers.lock().retain(|(reader, _)| *reader != id);
    }
}

/// Converts what the fan-in brings and hands each frame to every connection, until the hub goes.
async fn convert(
    hub: Weak<Hub>,
    upstream: Arc<EnvelopeBuffer>,
    filter: Filter,
    metrics: HubMetrics,
    token: CancellationToken,
) {
    let mut batch = Vec::with_capacity(crate::rlp::BATCH_SIZE);
    let mut frames = Vec::with_capacity(crate::rlp::BATCH_SIZE);
    let mut writer = V1Writer::default();
    // Frames are split off one buffer: one allocation per 64 KiB of frames, not one per frame.
    let mut out = BytesMut::new();
    loop {
        tokio::select! {
            _ = upstream.wait_for_data() => {}
            _ = token.cancelled() => return,
        }
        batch.clear();
        upstream.pop_batch(&mut batch, crate::rlp::BATCH_SIZE, usize::MAX, bytes::Bytes::len);
        frames.clear();
        for encoded in &batch {
            if out.capacity() < FRAME_HEADROOM {
                out.reserve(FRAME_BUFFER);
            }
            if let Some(written) = writer.write(encoded, &mut out) {
                let frame = out.split().freeze();
                if filter.passes_written(written.is_log, &encoded[written.source_id]) {
                    frames.push(frame);
                }
                continue;
            }
            // Everything else (gauges, timers, deprecated tags, v1 errors): decode and convert.
            let Ok(envelope) = v2::Envelope::decode(&encoded[..]) else {
                metrics.undecodable.inc();
                continue;
            };
            frames.extend(
                to_v1(&envelope).into_iter().filter(|v1| filter.passes(v1)).map(|v1| Bytes::from(v1.encode_to_vec())),
            );
        }
        let Some(hub) = hub.upgrade() else { return };
        if frames.is_empty() {
            continue;
        }
        // Clone the list so no connection's push runs under the hub's lock.
        let readers: Vec<Arc<EnvelopeBuffer>> = hub.readers.lock().iter().map(|(_, b)| Arc::clone(b)).collect();
        for reader in readers {
            reader.push_all(frames.iter().cloned());
        }
    }
}

/// The hubs of a traffic controller: one per streamed app, shared; one per firehose connection.
pub struct Hubs {
    dopplers: Dopplers,
    config: crate::config::Config,
    metrics: HubMetrics,
    shutdown: CancellationToken,
    apps: Mutex<HashMap<String, Weak<Hub>>>,
}

impl Hubs {
    pub fn new(
        dopplers: Dopplers,
        config: crate::config::Config,
        metrics: HubMetrics,
        shutdown: CancellationToken,
    ) -> Self {
        Self { dopplers, config, metrics, shutdown, apps: Mutex::new(HashMap::new()) }
    }

    /// The hub of `app`, started if no connection streams it yet.
    pub fn app(&self, app: &str) -> Arc<Hub> {
        let mut apps = self.apps.lock();
        if let Some(hub) = apps.get(app).and_then(Weak::upgrade) {
            return hub;
        }
        // Forget the hubs whose last connection has gone, so the map is bounded by the live ones.
        apps.retain(|_, hub| hub.strong_count() > 0);
        let hub = Hub::start(
            &self.dopplers,
            Filter::App(app.to_string()),
            "",
            &self.config,
            self.metrics.clone(),
            &self.shutdown,
        );
        apps.insert(app.to_string(), Arc::downgrade(&hub));
        hub
    }

    /// A hub of its own for one firehose connection.
    pub fn firehose(&self, subscription_id: &str, filter: Filter) -> Arc<Hub> {
        Hub::start(&self.dopplers, filter, subscription_id, &self.config, self.metrics.clone(), &self.shutdown)
    }

    /// Dopplers known right now.
    pub fn doppler_count(&self) -> usize {
        self.dopplers.current().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_for(app: &str) -> events::Envelope {
        let v2 = v2::Envelope {
            source_id: app.into(),
            message: Some(v2::envelope::Message::Log(v2::Log { payload: bytes::Bytes::from_static(b"x"), r#type: 0 })),
            ..Default::default()
        };
        to_v1(&v2).remove(0)
    }

    #[test]
    fn filters_pass_what_v1_routing_would() {
        let app = "6f1c4b0e-1111-2222-3333-444455556666";
        let counter = to_v1(&v2::Envelope {
            source_id: app.into(),
            message: Some(v2::envelope::Message::Counter(v2::Counter { name: "c".into(), ..Default::default() })),
            ..Default::default()
        })
        .remove(0);
        assert!(Filter::App(app.into()).passes(&log_for(app)));
        assert!(!Filter::App(app.into()).passes(&log_for("other")));
        // A counter belongs to no app, whatever its source id.
        assert!(!Filter::App(app.into()).passes(&counter));
        assert!(Filter::Logs.passes(&log_for(app)) && !Filter::Logs.passes(&counter));
        assert!(!Filter::Metrics.passes(&log_for(app)) && Filter::Metrics.passes(&counter));
        assert!(Filter::All.passes(&log_for(app)) && Filter::All.passes(&counter));
    }

    #[test]
    fn requests_select_what_the_filter_may_pass() {
        let app = Filter::App("a".into()).request("");
        assert_eq!(app.selectors.len(), 3);
        assert!(app.selectors.iter().all(|s| s.source_id == "a"));
        assert_eq!(Filter::Logs.request("s").shard_id, "s");
        assert!(Filter::All
            .request("")
            .selectors
            .iter()
            .all(|s| !matches!(s.message, Some(selector::Message::Event(_)))));
    }
}
