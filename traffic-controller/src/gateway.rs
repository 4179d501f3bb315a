//! The RLP gateway: `GET /v2/read`, the RLP's `BatchedReceiver` as Server-Sent Events (§5).
//!
//! The query becomes an `EgressBatchRequest` (selectors per source id in the order log,
//! counter(s), gauge(s), timer, event; `use_preferred_tags` always true), the stream is opened on
//! the RLP (this process's own, or a configured remote one, as the original gateway reads its local
//! RLP), and each batch goes out as one `data:` line of protojson written straight from the
//! envelopes' encoded bytes ([`EncodedEnvelopeJson`]). Headers leave before the first event; after
//! `heartbeat_interval` without data comes `event: heartbeat`, and after `stream_timeout` the stream
//! says `event: closing` and ends, so that clients reconnect. Errors are the original's
//! `http.Error` bodies: JSON plus a newline, served as `text/plain` (§5.2).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::routing::any;
use axum::Router;
use bytes::Bytes;
use loggregator_proto::json::EncodedEnvelopeJson;
use loggregator_proto::stream::{batched_receiver, MessageStream};
use loggregator_proto::v2::{selector, CounterSelector, EgressBatchRequest, GaugeSelector, Selector};
use plumbing::Counter;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::config::GatewayConfig;
use crate::envelopes::EnvelopeSlices;
use crate::rlp::{ReverseLogProxy, RlpStream};

/// Where the gateway's streams come from.
#[derive(Clone)]
pub enum RlpSource {
    /// This process's RLP, called directly.
    Local(ReverseLogProxy),
    /// An RLP over gRPC.
    Remote { addr: String, channel: Channel, max_message: usize },
}

enum Upstream {
    Local(RlpStream),
    Remote(MessageStream),
}

impl RlpSource {
    async fn open(&self, request: EgressBatchRequest) -> Result<Upstream, String> {
        match self {
            Self::Local(rlp) => rlp.open(request).map(Upstream::Local).map_err(|e| e.to_string()),
            Self::Remote { addr, channel, max_message } => {
                let mut channel = channel.clone();
                batched_receiver(&mut channel, &request, *max_message)
                    .await
                    .map(Upstream::Remote)
                    .map_err(|status| format!("{addr}: {}: {}", status.code(), status.message()))
            }
        }
    }
}

impl Upstream {
    /// The next batch's envelopes into `out`; false when the stream is over.
    async fn next_batch(&mut self, out: &mut Vec<Bytes>) -> bool {
        match self {
            Self::Local(stream) => stream.next_batch(out).await,
            Self::Remote(stream) => loop {
                match stream.message().await {
                    Ok(Some(batch)) => match EnvelopeSlices::collect(&batch) {
                        Ok(envelopes) if envelopes.is_empty() => continue,
                        Ok(envelopes) => {
                            out.extend(envelopes);
                            return true;
                        }
                        Err(error) => {
                            tracing::warn!(%error, "malformed batch from the RLP");
                            return false;
                        }
                    },
                    Ok(None) => return false,
                    Err(status) => {
                        tracing::warn!(code = ?status.code(), message = status.message(), "RLP stream failed");
                        return false;
                    }
                }
            },
        }
    }

    fn sent(&self, n: usize) {
        if let Self::Local(stream) = self {
            stream.sent(n);
        }
    }

    fn lost(&self, n: usize) {
        if let Self::Local(stream) = self {
            stream.lost(n);
        }
    }
}

#[derive(Clone)]
pub struct GatewayState {
    pub source: RlpSource,
    pub config: GatewayConfig,
    pub auth: Option<Arc<auth::Authorizer>>,
    pub metrics: GatewayMetrics,
}

#[derive(Clone, Default)]
pub struct GatewayMetrics {
    /// Envelopes written to SSE clients.
    pub egress: Counter,
    /// Streams opened.
    pub streams: Counter,
}

pub fn router(state: GatewayState) -> Router {
    Router::new().route("/v2/read", any(read)).with_state(state)
}

/// An error as Go's `http.Error` writes it: JSON message and name, a newline, `text/plain`.
fn error(status: StatusCode, name: &str, message: &str) -> Response<Body> {
    // Go marshals the struct's fields in declaration order: message, then error.
    let quoted = |text: &str| serde_json::Value::from(text).to_string();
    let body = format!("{{\"message\":{},\"error\":{}}}\n", quoted(message), quoted(name));
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    headers.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    response
}

fn not_found() -> Response<Body> {
    error(StatusCode::NOT_FOUND, "not_found", "resource not found")
}

/// What `/v2/read`'s query asks for.
#[derive(Debug, Default, PartialEq)]
pub struct ReadQuery {
    pub request: EgressBatchRequest,
    pub source_ids: Vec<String>,
}

/// Parses the query of §5.2; the error is the response to send.
/// The most selectors (source ids × envelope types) one `/v2/read` may ask for.
pub const MAX_SELECTORS: usize = 1000;
const TOO_MANY_SELECTORS: &str = "query asks for more than 1000 selectors (source ids × envelope types)";

pub fn parse_query(query: Option<&str>) -> Result<ReadQuery, (StatusCode, &'static str, &'static str)> {
    let mut values: HashMap<String, Vec<String>> = HashMap::new();
    for (key, value) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        values.entry(key.into_owned()).or_default().push(value.into_owned());
    }
    if values.is_empty() {
        return Err((StatusCode::BAD_REQUEST, "empty_query", "query cannot be empty"));
    }
    let has = |key: &str| values.contains_key(key);
    // A key is only ever present with at least one value here (`?counter.name` is one empty
    // value, as in Go), so these two rows of §5.2 guard what Go's url.Values could hold.
    if values.get("counter.name").is_some_and(Vec::is_empty) {
        return Err((StatusCode::BAD_REQUEST, "missing_counter_name", "counter.name is invalid without value"));
    }
    if values.get("gauge.name").is_some_and(Vec::is_empty) {
        return Err((StatusCode::BAD_REQUEST, "missing_gauge_name", "gauge.name is invalid without value"));
    }
    let types = ["log", "counter", "gauge", "timer", "event", "counter.name", "gauge.name"];
    if !types.iter().any(|t| has(t)) {
        return Err((
            StatusCode::BAD_REQUEST,
            "missing_envelope_type",
            "query must provide at least one envelope type",
        ));
    }
    let mut messages = Vec::new();
    if has("log") {
        messages.push(selector::Message::Log(Default::default()));
    }
    match values.get("counter.name") {
        Some(names) => {
            messages.extend(names.iter().map(|name| selector::Message::Counter(CounterSelector { name: name.clone() })))
        }
        None if has("counter") => messages.push(selector::Message::Counter(CounterSelector::default())),
        None => {}
    }
    match values.get("gauge.name") {
        Some(names) => messages.extend(names.iter().map(|names| {
            selector::Message::Gauge(GaugeSelector { names: names.split(',').map(str::to_string).collect() })
        })),
        None if has("gauge") => messages.push(selector::Message::Gauge(GaugeSelector::default())),
        None => {}
    }
    if has("timer") {
        messages.push(selector::Message::Timer(Default::default()));
    }
    if has("event") {
        messages.push(selector::Message::Event(Default::default()));
    }
    let source_ids = values.get("source_id").cloned().unwrap_or_default();
    let sources = if source_ids.is_empty() { vec![String::new()] } else { source_ids.clone() };
    // One selector per (source id, type) pair, both lists the client's: 3,000 of each in a 97 KB
    // query made 9,000,000 selectors and hundreds of MB before this bound (found while fuzzing).
    // The original has no bound; no client sends more than a handful.
    if sources.len().saturating_mul(messages.len()) > MAX_SELECTORS {
        return Err((StatusCode::BAD_REQUEST, "too_many_selectors", TOO_MANY_SELECTORS));
    }
    let selectors = sources
        .iter()
        .flat_map(|source_id| {
            messages.iter().map(|message| Selector { source_id: source_id.clone(), message: Some(message.clone()) })
        })
        .collect();
    let single = |key: &str| values.get(key).and_then(|v| v.first()).cloned().unwrap_or_default();
    Ok(ReadQuery {
        request: EgressBatchRequest {
            shard_id: single("shard_id"),
            deterministic_name: single("deterministic_name"),
            selectors,
            use_preferred_tags: true,
            legacy_selector: None,
        },
        source_ids,
    })
}

/// §5.3: an admin (`doppler.firehose` or `logs.admin`) reads anything; anyone else names source
/// ids, each a GUID they may read. Every failure is the same 404.
async fn authorize(auth: &auth::Authorizer, headers: &HeaderMap, source_ids: &[String]) -> bool {
    let Some(header) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else { return false };
    let Ok(caller) = auth.authenticate(Some(header)).await else { return false };
    if caller.admin {
        return true;
    }
    if source_ids.is_empty() {
        return false;
    }
    for id in source_ids {
        if loggregator_proto::convert::uuid_from_str(id).is_none() || !auth.may_read(&caller, id).await {
            return false;
        }
    }
    true
}

async fn read(
    State(state): State<GatewayState>,
    method: Method,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Response<Body> {
    if method != Method::GET {
        return error(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed");
    }
    let parsed = match parse_query(query.as_deref()) {
        Ok(parsed) => parsed,
        Err((status, name, message)) => return error(status, name, message),
    };
    if let Some(auth) = &state.auth {
        if !authorize(auth, &headers, &parsed.source_ids).await {
            return not_found();
        }
    }
    let upstream = match state.source.open(parsed.request).await {
        Ok(upstream) => upstream,
        Err(reason) => {
            tracing::warn!(%reason, "cannot open an RLP stream");
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "streaming_unavailable",
                "streaming is temporarily unavailable",
            );
        }
    };
    state.metrics.streams.inc();
    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(8);
    tokio::spawn(stream_events(upstream, tx, state.config.clone(), state.metrics.egress.clone()));
    let mut response = Response::new(Body::from_stream(ReceiverStream::new(rx)));
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
    response
}

const CLOSING: &[u8] = b"event: closing\ndata: closing due to stream timeout\n\n";

fn heartbeat() -> Bytes {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    Bytes::from(format!("event: heartbeat\ndata: {}\n\n", now.as_secs()))
}

/// Writes the SSE events of one stream until it ends, the client goes or the timeout comes.
async fn stream_events(
    mut upstream: Upstream,
    tx: mpsc::Sender<Result<Bytes, Infallible>>,
    config: GatewayConfig,
    egress: Counter,
) {
    let closing_at = tokio::time::Instant::now() + config.stream_timeout;
    let mut heartbeat_at = tokio::time::Instant::now() + config.heartbeat_interval;
    let mut writer = EncodedEnvelopeJson::default();
    let mut batch = Vec::with_capacity(crate::rlp::BATCH_SIZE);
    loop {
        batch.clear();
        let event = tokio::select! {
            more = upstream.next_batch(&mut batch) => {
                if !more {
                    return;
                }
                heartbeat_at = tokio::time::Instant::now() + config.heartbeat_interval;
                data_event(&mut writer, &batch)
            }
            _ = tokio::time::sleep_until(heartbeat_at) => {
                heartbeat_at = tokio::time::Instant::now() + config.heartbeat_interval;
                heartbeat()
            }
            _ = tokio::time::sleep_until(closing_at) => {
                let _ = tx.send(Ok(Bytes::from_static(CLOSING))).await;
                return;
            }
            _ = tx.closed() => return,
        };
        let n = batch.len();
        if tx.send(Ok(event)).await.is_err() {
            upstream.lost(n);
            return;
        }
        upstream.sent(n);
        egress.add(n as u64);
    }
}

/// `data: {"batch":[...]}` and the blank line, from the envelopes' encoded bytes.
fn data_event(writer: &mut EncodedEnvelopeJson, batch: &[Bytes]) -> Bytes {
    let mut out = Vec::with_capacity(64 + batch.iter().map(|e| e.len() * 2).sum::<usize>());
    out.extend_from_slice(b"data: ");
    writer.write_batch(&mut out, batch);
    out.extend_from_slice(b"\n\n");
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn selectors(query: &str) -> Vec<(String, selector::Message)> {
        let parsed = parse_query(Some(query)).unwrap();
        parsed.request.selectors.into_iter().map(|s| (s.source_id, s.message.unwrap())).collect()
    }

    #[test]
    fn selectors_are_the_cross_product_in_the_original_order() {
        let got =
            selectors("event&timer&gauge.name=cpu,memory&counter.name=a&counter.name=b&log&source_id=x&source_id=y");
        let per_source = |id: &str| {
            vec![
                (id.to_string(), selector::Message::Log(Default::default())),
                (id.to_string(), selector::Message::Counter(CounterSelector { name: "a".into() })),
                (id.to_string(), selector::Message::Counter(CounterSelector { name: "b".into() })),
                (
                    id.to_string(),
                    selector::Message::Gauge(GaugeSelector { names: vec!["cpu".into(), "memory".into()] }),
                ),
                (id.to_string(), selector::Message::Timer(Default::default())),
                (id.to_string(), selector::Message::Event(Default::default())),
            ]
        };
        assert_eq!(got, [per_source("x"), per_source("y")].concat());
    }

    #[test]
    fn bare_flags_select_everything_of_their_type_from_any_source() {
        assert_eq!(
            selectors("counter&gauge=1"),
            vec![
                (String::new(), selector::Message::Counter(CounterSelector::default())),
                (String::new(), selector::Message::Gauge(GaugeSelector::default())),
            ]
        );
        // A name makes the bare flag redundant; an empty name selects every counter.
        assert_eq!(
            selectors("counter&counter.name="),
            vec![(String::new(), selector::Message::Counter(CounterSelector::default()))]
        );
    }

    #[test]
    fn shard_and_deterministic_name_are_passed_and_preferred_tags_forced() {
        let parsed = parse_query(Some("log&shard_id=s1&deterministic_name=d")).unwrap();
        assert_eq!(parsed.request.shard_id, "s1");
        assert_eq!(parsed.request.deterministic_name, "d");
        assert!(parsed.request.use_preferred_tags);
    }

    #[test]
    fn errors_are_the_originals() {
        assert_eq!(parse_query(None).unwrap_err().1, "empty_query");
        assert_eq!(parse_query(Some("")).unwrap_err().1, "empty_query");
        assert_eq!(parse_query(Some("source_id=a")).unwrap_err().1, "missing_envelope_type");
    }

    #[test]
    fn selectors_are_bounded_before_they_are_built() {
        let query = |sources: usize, names: usize| {
            let mut q: Vec<String> = (0..sources).map(|i| format!("source_id=s{i}")).collect();
            q.extend((0..names).map(|i| format!("counter.name=c{i}")));
            q.join("&")
        };
        let refused = parse_query(Some(&query(3000, 3000))).unwrap_err();
        assert_eq!((refused.0, refused.1), (StatusCode::BAD_REQUEST, "too_many_selectors"));
        assert_eq!(parse_query(Some(&query(MAX_SELECTORS + 1, 1))).unwrap_err().1, "too_many_selectors");
        let fits = parse_query(Some(&query(100, 10))).expect("1000 selectors");
        assert_eq!(fits.request.selectors.len(), MAX_SELECTORS);
    }
}
