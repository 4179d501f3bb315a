//! The v1 traffic controller: `/apps/{guid}/stream` and `/firehose/{id}` WebSockets (§4.3, §4.4),
//! with the historic `recentlogs`, `containermetrics` and `/set-cookie` routes ([`crate::recent`]).
//!
//! Each connection has a buffer of v1 frames fed by its [`Hub`]; its task writes them, one binary
//! frame per dropsonde envelope, a batch at a time with one flush. It pings at once and then 15 s
//! after every pong; a ping unanswered for 30 s closes the connection with 1008 and the
//! original's reason. A batch the client cannot take within 5 s makes it a slow consumer: closed
//! with 1000, counted (`doppler_proxy_slow_consumer`) and announced as the original does, with a
//! v2 event sent to the local agent. Frames from the client are read only to see pongs and the end.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use axum::response::IntoResponse;
use axum::routing::any;
use axum::Router;
use futures::{SinkExt, StreamExt};
use plumbing::buffer::EnvelopeBuffer;
use plumbing::{Counter, Gauge};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::announce::Announcer;
use crate::config::WebSocketConfig;
use crate::hub::{Filter, Hub, Hubs};
use crate::recent;

/// The close reason when no pong came in time (§4.4).
pub const KEEPALIVE_EXPIRED: &str = "Client did not respond to ping before keep-alive timeout expired.";
/// Title of the event announcing a slow consumer (§4.4).
pub const SLOW_CONSUMER_TITLE: &str = "Traffic Controller has disconnected slow consumer";
/// A control frame that cannot be written within this long ends the connection.
const CONTROL_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Frames written per flush at most.
const WRITE_BATCH: usize = 100;

#[derive(Clone, Default)]
pub struct TcMetrics {
    /// v1 envelopes written to WebSocket clients.
    pub egress: Counter,
    /// Frames a slow connection's buffer dropped.
    pub dropped: Counter,
    /// Connections closed as slow consumers (the original's `doppler_proxy.slow_consumer`).
    pub slow_consumers: Counter,
    /// Open WebSocket connections.
    pub connections: Gauge,
}

#[derive(Clone)]
pub struct TcState {
    pub hubs: Arc<Hubs>,
    pub config: WebSocketConfig,
    pub auth: Option<Arc<auth::Authorizer>>,
    pub recent: Arc<recent::RecentLogs>,
    pub announcer: Announcer,
    pub metrics: TcMetrics,
    pub shutdown: CancellationToken,
    pub connection_slots: Arc<tokio::sync::Semaphore>,
}

pub fn router(state: TcState) -> Router {
    Router::new()
        .route("/apps/{guid}/stream", any(app_stream))
        .route("/firehose/{subscription_id}", any(firehose))
        .route("/apps/{guid}/recentlogs", any(recent::recent_logs))
        .route("/apps/{guid}/containermetrics", any(recent::container_metrics))
        .route("/set-cookie", any(recent::set_cookie))
        .with_state(state)
}

fn empty(status: StatusCode) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = status;
    response
}

/// 401 with `WWW-Authenticate: Basic` and `body` (§4.2).
fn unauthorized(body: &'static str) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic"));
    response
}

/// The token of a request: its `Authorization` header, or else its `authorization` cookie
/// (URL-unescaped), §4.2. Never logged.
pub fn token(headers: &HeaderMap) -> Option<String> {
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if !value.is_empty() {
            return Some(value.to_string());
        }
    }
    for cookies in headers.get_all(header::COOKIE) {
        let Ok(cookies) = cookies.to_str() else { continue };
        for pair in cookies.split(';') {
            if let Some((name, value)) = pair.trim().split_once('=') {
                if name == "authorization" && !value.is_empty() {
                    let unescaped: String =
                        form_urlencoded::parse(format!("v={}", value.replace('+', "%2B")).as_bytes())
                            .next()
                            .map(|(_, v)| v.into_owned())
                            .unwrap_or_default();
                    return Some(unescaped);
                }
            }
        }
    }
    None
}

/// Log access to `guid` (§4.2): not a GUID ⇒ 401 before anything else; no token ⇒ 401; a token
/// that does not verify ⇒ 401; not allowed ⇒ 404. `None` means allowed.
pub async fn check_app_access(state: &TcState, headers: &HeaderMap, guid: &str) -> Option<Response<Body>> {
    if loggregator_proto::convert::uuid_from_str(guid).is_none() {
        return Some(empty(StatusCode::UNAUTHORIZED));
    }
    let auth = state.auth.as_ref()?;
    let Some(token) = token(headers) else { return Some(unauthorized("")) };
    let caller = match auth.authenticate(Some(&token)).await {
        Ok(caller) => caller,
        Err(_) => return Some(unauthorized("")),
    };
    if auth.may_read(&caller, guid).await {
        None
    } else {
        Some(empty(StatusCode::NOT_FOUND))
    }
}

/// Firehose access (§4.2): a token with scope `doppler.firehose` (not `logs.admin`).
async fn check_firehose_access(state: &TcState, headers: &HeaderMap) -> Option<Response<Body>> {
    let auth = state.auth.as_ref()?;
    let Some(token) = token(headers) else {
        return Some(unauthorized("You are not authorized. authorization not provided"));
    };
    match auth.authenticate(Some(&token)).await {
        Ok(caller) if caller.has_scope("doppler.firehose") => None,
        _ => Some(unauthorized("You are not authorized. invalid authorization")),
    }
}

/// Who a connection is, for the slow-consumer announcement.
#[derive(Clone, Debug)]
struct Peer {
    remote: SocketAddr,
    forwarded_for: String,
    path: String,
}

async fn app_stream(
    State(state): State<TcState>,
    Path(guid): Path<String>,
    ConnectInfo(remote): ConnectInfo<std::net::SocketAddr>,
    method: Method,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response<Body> {
    if let Some(refused) = check_app_access(&state, &headers, &guid).await {
        return refused;
    }
    let peer = peer(remote, &headers, format!("/apps/{guid}/stream"));
    let hubs = Arc::clone(&state.hubs);
    accept(state, method, upgrade, peer, move || hubs.app(&guid))
}

#[derive(serde::Deserialize)]
struct FirehoseQuery {
    #[serde(rename = "filter-type")]
    filter_type: Option<String>,
}

async fn firehose(
    State(state): State<TcState>,
    Path(subscription_id): Path<String>,
    Query(query): Query<FirehoseQuery>,
    ConnectInfo(remote): ConnectInfo<std::net::SocketAddr>,
    method: Method,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response<Body> {
    if let Some(refused) = check_firehose_access(&state, &headers).await {
        return refused;
    }
    let filter = match query.filter_type.as_deref() {
        Some("logs") => Filter::Logs,
        Some("metrics") => Filter::Metrics,
        _ => Filter::All,
    };
    let peer = peer(remote, &headers, format!("/firehose/{subscription_id}"));
    let hubs = Arc::clone(&state.hubs);
    accept(state, method, upgrade, peer, move || hubs.firehose(&subscription_id, filter))
}

fn peer(remote: SocketAddr, headers: &HeaderMap, path: String) -> Peer {
    let forwarded_for = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    Peer { remote, forwarded_for, path }
}

/// Checks that the subscription can be set up (503 otherwise), then upgrades.
fn accept(
    state: TcState,
    method: Method,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
    peer: Peer,
    hub: impl FnOnce() -> Arc<Hub>,
) -> Response<Body> {
    if state.hubs.doppler_count() == 0 {
        return empty(StatusCode::SERVICE_UNAVAILABLE);
    }
    let upgrade = match upgrade {
        Ok(upgrade) => upgrade,
        Err(_) if method != Method::GET => return empty(StatusCode::METHOD_NOT_ALLOWED),
        Err(rejection) => return rejection.into_response(),
    };
    let Ok(slot) = Arc::clone(&state.connection_slots).try_acquire_owned() else {
        return empty(StatusCode::SERVICE_UNAVAILABLE);
    };
    let hub = hub();
    let buffer = Arc::new(EnvelopeBuffer::new(
        state.config.connection_buffer,
        state.config.connection_buffer_bytes,
        state.metrics.dropped.clone(),
    ));
    // Registered only once upgraded: a client that goes away during the handshake leaves nothing.
    upgrade.on_upgrade(move |socket| async move {
        let _slot = slot;
        let id = hub.add(Arc::clone(&buffer));
        state.metrics.connections.add(1);
        let connection = Connection { socket, buffer, state: state.clone(), peer };
        connection.run().await;
        hub.remove(id);
        state.metrics.connections.add(-1);
    })
}

struct Connection {
    socket: WebSocket,
    buffer: Arc<EnvelopeBuffer>,
    state: TcState,
    peer: Peer,
}

/// Why a connection's writer stopped.
enum End {
    /// The client closed or the socket failed: nothing more to say.
    Gone,
    /// Close with this code and reason.
    Close(u16, &'static str),
    /// A slow consumer: close 1000, count and announce.
    Slow,
}

impl Connection {
    async fn run(self) {
        let Self { socket, buffer, state, peer } = self;
        let config = &state.config;
        let (mut sink, mut stream) = socket.split();
        let pong = Arc::new(Notify::new());
        let gone = CancellationToken::new();
        // Reader: pongs and the end of the connection; every other frame is ignored (§4.4).
        let reader = tokio::spawn({
            let (pong, gone) = (Arc::clone(&pong), gone.clone());
            async move {
                while let Some(Ok(message)) = stream.next().await {
                    match message {
                        Message::Pong(_) => pong.notify_one(),
                        Message::Close(_) => break,
                        _ => {}
                    }
                }
                gone.cancel();
            }
        });

        let far = Duration::from_secs(365 * 24 * 3600);
        let mut next_ping = tokio::time::Instant::now();
        let mut pong_deadline = tokio::time::Instant::now() + far;
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        let end = loop {
            tokio::select! {
                _ = buffer.wait_for_data() => {
                    batch.clear();
                    buffer.pop_batch(&mut batch, WRITE_BATCH, usize::MAX, bytes::Bytes::len);
                    let n = batch.len();
                    let write = async {
                        for frame in batch.drain(..) {
                            sink.feed(Message::Binary(frame)).await?;
                        }
                        sink.flush().await
                    };
                    match tokio::time::timeout(config.slow_consumer_timeout, write).await {
                        Ok(Ok(())) => state.metrics.egress.add(n as u64),
                        // The batch left the buffer but was never confirmed written: dropped, so
                        // that `ingress = egress + dropped` holds for every connection.
                        Ok(Err(_)) => {
                            state.metrics.dropped.add(n as u64);
                            break End::Gone;
                        }
                        Err(_) => {
                            state.metrics.dropped.add(n as u64);
                            break End::Slow;
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_ping) => {
                    next_ping = tokio::time::Instant::now() + far;
                    pong_deadline = tokio::time::Instant::now() + config.pong_timeout;
                    match tokio::time::timeout(CONTROL_WRITE_TIMEOUT, sink.send(Message::Ping(Default::default()))).await {
                        Ok(Ok(())) => {}
                        _ => break End::Gone,
                    }
                }
                _ = pong.notified() => {
                    pong_deadline = tokio::time::Instant::now() + far;
                    next_ping = tokio::time::Instant::now() + config.ping_interval;
                }
                _ = tokio::time::sleep_until(pong_deadline) => break End::Close(1008, KEEPALIVE_EXPIRED),
                _ = gone.cancelled() => break End::Gone,
                _ = state.shutdown.cancelled() => break End::Close(1000, ""),
            }
        };
        let close = |code: u16, reason: &'static str| Message::Close(Some(CloseFrame { code, reason: reason.into() }));
        match end {
            End::Gone => {}
            End::Close(code, reason) => {
                let _ = tokio::time::timeout(CONTROL_WRITE_TIMEOUT, sink.send(close(code, reason))).await;
            }
            End::Slow => {
                state.metrics.slow_consumers.inc();
                tracing::info!(remote = %peer.remote, path = %peer.path, "disconnecting a slow consumer");
                state.announcer.announce(SLOW_CONSUMER_TITLE, slow_consumer_body(&peer, config.slow_consumer_timeout));
                let _ = tokio::time::timeout(CONTROL_WRITE_TIMEOUT, sink.send(close(1000, ""))).await;
            }
        }
        // What the connection still held will never be sent.
        let lost = buffer.discard();
        if lost > 0 {
            tracing::debug!(lost, "connection ended with frames buffered");
        }
        reader.abort();
    }
}

fn slow_consumer_body(peer: &Peer, timeout: Duration) -> String {
    format!(
        "Remote Address: {}\nX-Forwarded-For: {}\nPath: {}\n\nThe connection could not take data for {} ms and was \
         closed, so that it holds up no one else. Scale the nozzle or check its network.",
        peer.remote,
        peer.forwarded_for,
        peer.path,
        timeout.as_millis()
    )
}
