//! The operations every API shares: read, meta, send and PromQL, each answered by this node or by the
//! node owning the source id (§6.5). The gRPC services and the HTTP gateway are thin layers over it.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use loggregator_proto::logcache::v1::{MetaInfo, MetaRequest, MetaResponse, ReadRequest, ReadResponse, SendRequest};
use loggregator_proto::prost::Message;
use loggregator_proto::raw::RawSendRequest;
use loggregator_proto::v2::{Envelope, EnvelopeBatch};
use loggregator_proto::RawEnvelope;
use parking_lot::Mutex;
use plumbing::{Counter, Registry};
use tokio_util::sync::CancellationToken;
use tonic::Code;

use crate::cluster::Cluster;
use crate::forward::Forwarder;
use crate::store::{ReadError, ReadFilter, Store};

/// How long a merged cluster-wide Meta answer is reused (§6.3).
const META_CACHE_TTL: Duration = Duration::from_secs(1);

/// An API error, mapped to the wire in one place per transport (`grpc::status`, `http::error`).
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A refused read (§6.2): plain UNKNOWN with the original message.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The owner node answered with an error: passed through as it is.
    #[error("{}", .0.message())]
    Remote(tonic::Status),
    /// A PromQL query failed (parse, evaluation, timeout, samples bound), with the code and status
    /// the engine chose for it.
    #[error("{message}")]
    Query { code: Code, http_status: u16, error_type: &'static str, message: String },
    /// A request whose envelopes do not parse.
    #[error("{0}")]
    Malformed(String),
    /// Something internal failed (a task panicked, the runtime is shutting down).
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// The gRPC code of this error (§6.2: read errors are UNKNOWN).
    pub fn code(&self) -> Code {
        match self {
            ApiError::Read(_) | ApiError::Internal(_) => Code::Unknown,
            ApiError::Malformed(_) => Code::Internal,
            ApiError::Query { code, .. } => *code,
            ApiError::Remote(status) => status.code(),
        }
    }
}

/// The envelopes of a read ([`Service::read_encoded`]).
#[derive(Debug)]
pub enum EncodedRead {
    /// Read from this node's store, still encoded.
    Local(Vec<Bytes>),
    /// The owner node's answer, decoded by the gRPC client.
    Remote(ReadResponse),
}

/// Counters of the routing layer.
#[derive(Clone, Debug, Default)]
pub struct ServiceMetrics {
    /// Envelopes forwarded to their owner node.
    pub forwarded: Counter,
    /// `Send` requests made to other nodes.
    pub forward_requests: Counter,
    /// Envelopes lost because their owner node could not be reached.
    pub forward_dropped: Counter,
}

impl ServiceMetrics {
    pub fn register(registry: &Registry) -> Self {
        Self {
            // metric-documentation: envelopes sent on to the node owning their source id.
            forwarded: registry.counter("forwarded", "Envelopes forwarded to their owner node", &[]),
            // metric-documentation: Send requests made to other nodes (forwarded / this = envelopes per request).
            forward_requests: registry.counter("forward_requests", "Send requests made to other nodes", &[]),
            // metric-documentation: envelopes lost because their owner node refused or was unreachable.
            forward_dropped: registry.counter("dropped", "Envelopes dropped by log-cache", &[("direction", "forward")]),
        }
    }
}

/// The shared operations; cheap to clone behind an `Arc`.
pub struct Service {
    store: Arc<Store>,
    cluster: Cluster,
    metrics: ServiceMetrics,
    /// What other nodes own, queued for them ([`Service::forwarding_tasks`] sends it).
    forwarder: Forwarder,
    /// The last merged cluster-wide Meta and when it was made.
    meta_cache: Mutex<Option<(Instant, MetaResponse)>>,
}

/// Nanoseconds since the epoch, now.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl Service {
    pub fn new(store: Arc<Store>, cluster: Cluster, metrics: ServiceMetrics) -> Self {
        let forwarder = Forwarder::new(cluster.slots(), &metrics.forward_dropped);
        Self { store, cluster, metrics, forwarder, meta_cache: Mutex::new(None) }
    }

    /// The tasks that send what other nodes own, one per peer, until `token` is cancelled (then
    /// each sends what its queue still holds). Whoever serves the API runs them.
    pub fn forwarding_tasks(
        &self,
        max_message_bytes: usize,
        token: &CancellationToken,
    ) -> Vec<impl std::future::Future<Output = ()> + Send + 'static> {
        let metrics = &self.metrics;
        self.forwarder.tasks(
            self.cluster.slots(),
            max_message_bytes,
            &metrics.forwarded,
            &metrics.forward_requests,
            &metrics.forward_dropped,
            token,
        )
    }

    /// Envelopes queued for other nodes, not yet sent.
    pub fn forwarding_queued(&self) -> usize {
        self.forwarder.queued()
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    // === read ===

    /// §6.2: validated here, answered locally (still encoded: the gRPC server and the HTTP gateway
    /// write their responses straight from the stored bytes) or by the owner node. A remote owner
    /// answering UNAVAILABLE yields an empty batch.
    pub async fn read_encoded(&self, request: ReadRequest) -> Result<EncodedRead, ApiError> {
        let filter = ReadFilter::from_request(&request, now_nanos())?;
        if let Some(peer) = self.cluster.remote_owner(&request.source_id) {
            let mut client = peer.egress.clone();
            return match client.read(request).await {
                Ok(response) => Ok(EncodedRead::Remote(response.into_inner())),
                Err(status) if status.code() == Code::Unavailable => {
                    tracing::debug!(peer = %peer.addr, error = %status, "owner unavailable; empty read");
                    Ok(EncodedRead::Remote(ReadResponse { envelopes: Some(EnvelopeBatch::default()) }))
                }
                // tonic reports its own request timeout as CANCELLED "Timeout expired", which reads
                // as if the client gave up: the owner is what did not answer.
                Err(status) if status.code() == Code::Cancelled => Err(ApiError::Remote(tonic::Status::unavailable(
                    format!("log-cache node {} did not answer: {}", peer.addr, status.message()),
                ))),
                Err(status) => Err(ApiError::Remote(status)),
            };
        }
        Ok(EncodedRead::Local(self.read_local_encoded(&request.source_id, &filter)))
    }

    /// A local read, still encoded.
    pub fn read_local_encoded(&self, source_id: &str, filter: &ReadFilter) -> Vec<Bytes> {
        self.store.read(source_id, filter)
    }

    // === meta ===

    /// §6.3: this node's sources, or (unless `local_only`) every node's, merged and cached 1 s.
    pub async fn meta(&self, request: MetaRequest) -> Result<MetaResponse, ApiError> {
        if request.local_only || self.cluster.len() <= 1 {
            return Ok(MetaResponse { meta: self.store.meta() });
        }
        if let Some((at, cached)) = self.meta_cache.lock().as_ref() {
            if at.elapsed() < META_CACHE_TTL {
                return Ok(cached.clone());
            }
        }
        let mut calls = tokio::task::JoinSet::new();
        for peer in self.cluster.peers() {
            let mut client = peer.egress.clone();
            let addr = peer.addr.clone();
            calls.spawn(async move { (addr, client.meta(MetaRequest { local_only: true }).await) });
        }
        let mut merged: HashMap<String, MetaInfo> = self.store.meta();
        while let Some(joined) = calls.join_next().await {
            match joined {
                Ok((_, Ok(response))) => merged.extend(response.into_inner().meta),
                Ok((addr, Err(status))) => tracing::warn!(peer = %addr, error = %status, "meta from peer failed"),
                Err(e) => tracing::warn!(error = %e, "meta task failed"),
            }
        }
        let response = MetaResponse { meta: merged };
        *self.meta_cache.lock() = Some((Instant::now(), response.clone()));
        Ok(response)
    }

    // === send ===

    /// `Ingress/Send` of decoded envelopes (the syslog server's): stored, or (unless `local_only`)
    /// encoded once and forwarded to their owners as [`Service::send_raw`] does.
    pub async fn send(&self, request: SendRequest) -> Result<(), ApiError> {
        let envelopes = request.envelopes.map(|b| b.batch).unwrap_or_default();
        if request.local_only || self.cluster.len() <= 1 {
            for envelope in &envelopes {
                self.store_decoded(envelope);
            }
            return Ok(());
        }
        let mut scanned = Vec::with_capacity(envelopes.len());
        for envelope in &envelopes {
            match RawEnvelope::scan(Bytes::from(envelope.encode_to_vec())) {
                Ok(raw) => scanned.push(raw),
                Err(_) => self.store.stats().dropped.inc(),
            }
        }
        self.ingest_scanned(&mut scanned).await;
        Ok(())
    }

    /// `Ingress/Send` as received: stores local envelopes, forwards the others to their owners
    /// (unless `local_only`) as the slices they arrived as. A batch that does not scan is refused
    /// whole, as a request that does not decode is (grpc-go answers INTERNAL); a peer that cannot
    /// be reached loses its envelopes, counted as dropped.
    pub async fn send_raw(&self, request: RawSendRequest) -> Result<(), ApiError> {
        let mut scanned = loggregator_proto::BatchScanner::collect_all(request.envelopes)
            .map_err(|e| ApiError::Malformed(format!("grpc: error unmarshalling request: {e}")))?;
        if request.local_only {
            for envelope in &scanned {
                self.store.insert(envelope);
            }
            return Ok(());
        }
        self.ingest_scanned(&mut scanned).await;
        Ok(())
    }

    /// Stores scanned envelopes, forwarding those another node owns.
    pub async fn ingest_raw(&self, envelopes: impl IntoIterator<Item = RawEnvelope>) {
        let mut scanned: Vec<RawEnvelope> = envelopes.into_iter().collect();
        self.ingest_scanned(&mut scanned).await;
    }

    /// Stores a scanned batch's envelopes (nozzle), forwarding those another node owns. Answers how
    /// many envelopes the batch held (a malformed one ends the batch and counts as dropped).
    /// `scanned` is the caller's buffer, reused from batch to batch so that a batch allocates
    /// nothing but the stored copies; it is left empty.
    pub async fn ingest_batch(&self, batch: loggregator_proto::BatchScanner, scanned: &mut Vec<RawEnvelope>) -> usize {
        scanned.clear();
        for envelope in batch {
            match envelope {
                Ok(envelope) => scanned.push(envelope),
                Err(_) => self.store.stats().dropped.inc(),
            }
        }
        let count = scanned.len();
        self.ingest_scanned(scanned).await;
        count
    }

    /// Stores the envelopes this node owns and forwards the others; leaves `scanned` empty (its
    /// envelopes hold the receive buffer).
    async fn ingest_scanned(&self, scanned: &mut Vec<RawEnvelope>) {
        if self.cluster.len() <= 1 {
            // One by one: in the full pipeline (loadgen agent-doppler-logcache at 200k/s) this cost
            // 2.33 µs of log-cache CPU per envelope against 2.56 µs for `insert_batch`, whose
            // sort by shard and source outweighs the locks it saves on interleaved nozzle traffic.
            for envelope in scanned.iter() {
                self.store.insert(envelope);
            }
            scanned.clear();
            return;
        }
        // What other nodes own, by owner: the received slices themselves (reference counts),
        // queued for them. What this node owns is stored one by one, as above.
        let mut remote: Vec<Vec<Bytes>> = vec![Vec::new(); self.cluster.len()];
        for envelope in scanned.drain(..) {
            let owner = self.cluster.owner(envelope.source_id());
            if self.cluster.peer(owner).is_none() {
                self.store.insert(&envelope);
            } else {
                remote[owner].push(envelope.bytes);
            }
        }
        for (owner, envelopes) in remote.into_iter().enumerate() {
            if !envelopes.is_empty() {
                self.forwarder.push(owner, envelopes);
            }
        }
    }

    /// Stores one decoded envelope: encoded once, into its own allocation.
    pub fn store_decoded(&self, envelope: &Envelope) {
        match RawEnvelope::scan(Bytes::from(envelope.encode_to_vec())) {
            Ok(raw) => self.store.insert_owned(raw),
            Err(_) => self.store.stats().dropped.inc(),
        }
    }

    // === PromQL data ===

    /// GAUGE, COUNTER and TIMER envelopes of a source in `[start, end]`, ascending: from the store,
    /// or walked from the owner node with `Read` (limit 1000, restarting at `last + 1`). The walk
    /// stops once it holds more than `max` (a query's remaining budget: it fails then anyway).
    pub async fn metric_envelopes(&self, source_id: &str, start: i64, end_inclusive: i64, max: usize) -> Vec<Envelope> {
        let Some(peer) = self.cluster.remote_owner(source_id) else {
            return decode_all(&self.store.metric_envelopes(source_id, start, end_inclusive));
        };
        use loggregator_proto::logcache::v1::EnvelopeType;
        let mut client = peer.egress.clone();
        let mut out = Vec::new();
        let mut from = start;
        let end_exclusive = end_inclusive.saturating_add(1);
        while from < end_exclusive {
            let request = ReadRequest {
                source_id: source_id.to_string(),
                start_time: from,
                end_time: end_exclusive,
                limit: crate::store::MAX_READ_LIMIT,
                envelope_types: vec![
                    EnvelopeType::Gauge as i32,
                    EnvelopeType::Counter as i32,
                    EnvelopeType::Timer as i32,
                ],
                descending: false,
                name_filter: String::new(),
            };
            let batch = match client.read(request).await {
                Ok(response) => response.into_inner().envelopes.map(|b| b.batch).unwrap_or_default(),
                Err(status) => {
                    tracing::warn!(peer = %peer.addr, error = %status, "metric read from owner failed");
                    break;
                }
            };
            let Some(last) = batch.last().map(|e| e.timestamp) else {
                break;
            };
            let full = batch.len() as i64 >= crate::store::MAX_READ_LIMIT;
            out.extend(batch);
            if !full || last == i64::MAX || out.len() > max {
                break;
            }
            from = last + 1;
        }
        out
    }
}

/// Decodes stored envelopes; a stored envelope always decodes (it was scanned), so failures are skipped.
pub fn decode_all(encoded: &[Bytes]) -> Vec<Envelope> {
    encoded.iter().filter_map(|bytes| Envelope::decode(&bytes[..]).ok()).collect()
}
