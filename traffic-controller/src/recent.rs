//! The historic HTTP routes old clients still call (§4.3, §4.5): `recentlogs` and
//! `containermetrics`, read from Log Cache and answered as `multipart/x-protobuf` of v1
//! envelopes, and `/set-cookie`. The original removed the first two (2019, 2022); clients such as
//! noaa still call them, so they are served here.

use std::collections::HashMap;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use bytes::Bytes;
use loggregator_proto::convert::to_v1;
use loggregator_proto::events::{self, envelope::EventType};
use loggregator_proto::logcache::v1::egress_client::EgressClient;
use loggregator_proto::logcache::v1::{EnvelopeType, ReadRequest};
use loggregator_proto::prost::Message as _;
use tonic::transport::Channel;

use crate::websocket::{check_app_access, TcState};

/// `recentlogs`'s default `limit` (§4.5).
const DEFAULT_LIMIT: i64 = 1000;
/// The most `/set-cookie` reads of a form body.
const MAX_COOKIE_FORM: usize = 4 << 10;
/// What a Log Cache read may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The Log Cache the historic routes read, if one is configured.
pub struct RecentLogs {
    log_cache: Option<Channel>,
    max_message: usize,
}

impl RecentLogs {
    pub fn new(log_cache: Option<Channel>, max_message: usize) -> Self {
        Self { log_cache, max_message }
    }

    async fn read(&self, channel: &Channel, request: ReadRequest) -> Result<Vec<events::Envelope>, tonic::Status> {
        let mut client = EgressClient::new(channel.clone()).max_decoding_message_size(self.max_message);
        let response = tokio::time::timeout(READ_TIMEOUT, client.read(request))
            .await
            .map_err(|_| tonic::Status::deadline_exceeded("log cache read timed out"))??;
        let batch = response.into_inner().envelopes.unwrap_or_default().batch;
        Ok(batch.iter().flat_map(to_v1).collect())
    }

    /// The newest `limit` logs of `app`, newest first; a response too large is retried with
    /// three quarters of the limit, as the original does.
    async fn recent_logs(&self, channel: &Channel, app: &str, mut limit: i64) -> Result<Vec<events::Envelope>, String> {
        loop {
            let request = ReadRequest {
                source_id: app.to_string(),
                start_time: 0,
                limit,
                envelope_types: vec![EnvelopeType::Log as i32],
                descending: true,
                ..Default::default()
            };
            match self.read(channel, request).await {
                Ok(envelopes) => return Ok(envelopes),
                Err(status) if too_large(&status) && limit > 1 => limit = limit * 3 / 4,
                Err(status) => return Err(status.message().to_string()),
            }
        }
    }
}

/// Whether a read failed because its response was larger than a message may be.
fn too_large(status: &tonic::Status) -> bool {
    let message = status.message();
    message.contains("larger than max") || message.contains("message length too large")
}

/// The CORS headers of the historic routes and `/set-cookie` (§4.3).
fn cors(request_headers: &HeaderMap, response: &mut Response<Body>) {
    let headers = response.headers_mut();
    if let Some(origin) = request_headers.get(header::ORIGIN) {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    }
    headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
    headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, HeaderValue::from_static("Content-Type"));
}

fn status_body(status: StatusCode, body: impl Into<Body>) -> Response<Body> {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
}

/// A `multipart/x-protobuf` body as Go's `mime/multipart` writes it without part headers (§4.5).
pub fn multipart(parts: &[Vec<u8>]) -> (String, Bytes) {
    let boundary: String = (0..30).map(|_| format!("{:02x}", fastrand::u8(..))).collect();
    let mut body = Vec::with_capacity(parts.iter().map(|p| p.len() + boundary.len() + 8).sum::<usize>() + 80);
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(b"--");
        body.extend_from_slice(boundary.as_bytes());
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(part);
    }
    body.extend_from_slice(b"\r\n--");
    body.extend_from_slice(boundary.as_bytes());
    body.extend_from_slice(b"--\r\n");
    (format!("multipart/x-protobuf; boundary={boundary}"), Bytes::from(body))
}

fn multipart_response(request_headers: &HeaderMap, envelopes: &[events::Envelope]) -> Response<Body> {
    let parts: Vec<Vec<u8>> = envelopes.iter().map(|e| e.encode_to_vec()).collect();
    let (content_type, body) = multipart(&parts);
    let mut response = Response::new(Body::from(body));
    if let Ok(value) = HeaderValue::from_str(&content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    cors(request_headers, &mut response);
    response
}

fn now_nanos() -> i64 {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO);
    i64::try_from(now.as_nanos()).unwrap_or(i64::MAX)
}

/// The LogMessage sent in place of recent logs when no Log Cache is configured (§4.5).
fn no_log_cache_message(app: &str) -> events::Envelope {
    events::Envelope {
        origin: "loggregator.trafficcontroller".into(),
        event_type: EventType::LogMessage as i32,
        timestamp: Some(now_nanos()),
        log_message: Some(events::LogMessage {
            message: Bytes::from_static(b"recent log endpoint requires a log cache. please talk to you operator"),
            message_type: events::log_message::MessageType::Err as i32,
            timestamp: now_nanos(),
            app_id: Some(app.to_string()),
            source_type: Some("Loggregator".into()),
            source_instance: None,
        }),
        ..Default::default()
    }
}

pub async fn recent_logs(
    State(state): State<TcState>,
    Path(guid): Path<String>,
    headers: HeaderMap,
    request: Request,
) -> Response<Body> {
    if let Some(refused) = check_app_access(&state, &headers, &guid).await {
        return refused;
    }
    let limit = match query_value(request.uri().query(), "limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<i64>() {
            Ok(limit) if limit >= 0 => limit,
            _ => return status_body(StatusCode::BAD_REQUEST, "limit must be a non-negative integer"),
        },
    };
    let Some(channel) = &state.recent.log_cache else {
        return multipart_response(&headers, &[no_log_cache_message(&guid)]);
    };
    match state.recent.recent_logs(channel, &guid, limit).await {
        Ok(envelopes) => multipart_response(&headers, &envelopes),
        Err(message) => status_body(StatusCode::INTERNAL_SERVER_ERROR, message),
    }
}

pub async fn container_metrics(
    State(state): State<TcState>,
    Path(guid): Path<String>,
    headers: HeaderMap,
) -> Response<Body> {
    if let Some(refused) = check_app_access(&state, &headers, &guid).await {
        return refused;
    }
    let Some(channel) = &state.recent.log_cache else {
        let zero = events::Envelope {
            origin: "loggr".into(),
            event_type: EventType::ContainerMetric as i32,
            timestamp: Some(now_nanos()),
            container_metric: Some(events::ContainerMetric { application_id: guid.clone(), ..Default::default() }),
            ..Default::default()
        };
        return multipart_response(&headers, &[zero]);
    };
    let request = ReadRequest {
        source_id: guid.clone(),
        start_time: now_nanos() - 60_000_000_000,
        envelope_types: vec![EnvelopeType::Gauge as i32],
        ..Default::default()
    };
    match state.recent.read(channel, request).await {
        Ok(envelopes) => multipart_response(&headers, &newest_per_instance(envelopes)),
        Err(_) => status_body(StatusCode::INTERNAL_SERVER_ERROR, Body::empty()),
    }
}

/// The container metrics of `envelopes`, the newest per instance index (§4.5).
fn newest_per_instance(envelopes: Vec<events::Envelope>) -> Vec<events::Envelope> {
    let mut newest: HashMap<i32, events::Envelope> = HashMap::new();
    for envelope in envelopes {
        let Some(metric) = &envelope.container_metric else { continue };
        let index = metric.instance_index;
        match newest.get(&index) {
            Some(kept) if kept.timestamp >= envelope.timestamp => {}
            _ => {
                newest.insert(index, envelope);
            }
        }
    }
    let mut out: Vec<_> = newest.into_values().collect();
    out.sort_by_key(|e| e.container_metric.as_ref().map(|m| m.instance_index));
    out
}

fn query_value(query: Option<&str>, key: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == key).map(|(_, v)| v.into_owned())
}

/// `/set-cookie` (§4.3): any method; the form's `CookieName` and `CookieValue` become a cookie for
/// `doppler.<system domain>`.
pub async fn set_cookie(State(state): State<TcState>, method: Method, request: Request) -> Response<Body> {
    let headers = request.headers().clone();
    let query = request.uri().query().map(str::to_string);
    let body = match to_bytes(request.into_body(), MAX_COOKIE_FORM).await {
        Ok(body) => body,
        Err(_) => return status_body(StatusCode::PAYLOAD_TOO_LARGE, "form too large"),
    };
    // Go's ParseForm reads the query too (the body first for POST, PUT and PATCH).
    let mut fields: HashMap<String, String> = HashMap::new();
    for (key, value) in form_urlencoded::parse(query.as_deref().unwrap_or_default().as_bytes()) {
        fields.entry(key.into_owned()).or_insert_with(|| value.into_owned());
    }
    if matches!(method, Method::POST | Method::PUT | Method::PATCH) {
        for (key, value) in form_urlencoded::parse(&body) {
            fields.insert(key.into_owned(), value.into_owned());
        }
    }
    let mut response = match (fields.get("CookieName"), fields.get("CookieValue")) {
        (Some(name), Some(value)) if !name.is_empty() => {
            let cookie = format!(
                "{name}={value}; Domain=doppler.{}; HttpOnly; Secure; SameSite=Lax",
                state.config.system_domain.trim_start_matches('.')
            );
            match HeaderValue::from_str(&cookie) {
                Ok(cookie) => {
                    let mut response = status_body(StatusCode::OK, Body::empty());
                    response.headers_mut().insert(header::SET_COOKIE, cookie);
                    response
                }
                Err(_) => status_body(StatusCode::BAD_REQUEST, "invalid cookie"),
            }
        }
        _ => status_body(StatusCode::BAD_REQUEST, "CookieName and CookieValue are required"),
    };
    cors(&headers, &mut response);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multipart_is_go_mime_multipart_without_part_headers() {
        let (content_type, body) = multipart(&[b"one".to_vec(), b"two".to_vec()]);
        let boundary = content_type.strip_prefix("multipart/x-protobuf; boundary=").unwrap();
        assert_eq!(boundary.len(), 60);
        assert!(boundary.bytes().all(|b| b.is_ascii_hexdigit()));
        let expected = format!("--{boundary}\r\n\r\none\r\n--{boundary}\r\n\r\ntwo\r\n--{boundary}--\r\n");
        assert_eq!(&body[..], expected.as_bytes());
    }

    #[test]
    fn only_the_newest_metric_of_each_instance_is_kept() {
        let metric = |index, timestamp| events::Envelope {
            timestamp: Some(timestamp),
            container_metric: Some(events::ContainerMetric { instance_index: index, ..Default::default() }),
            ..Default::default()
        };
        let kept = newest_per_instance(vec![metric(0, 5), metric(1, 3), metric(0, 9), metric(0, 7)]);
        let got: Vec<_> =
            kept.iter().map(|e| (e.container_metric.as_ref().unwrap().instance_index, e.timestamp.unwrap())).collect();
        assert_eq!(got, vec![(0, 9), (1, 3)]);
    }
}
