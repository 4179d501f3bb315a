//! `GET /api/tail?source_id=X`: the live tail, the RLP gateway's SSE stream of a source's logs
//! (`/v2/read?source_id=X&log`, PROTOCOLS.md §5) passed through to the page as it arrives.
//!
//! Nothing is buffered here: each chunk the gateway writes is handed on as one frame, and a page
//! that stops reading stalls the gateway's stream, which drops for it as for any slow client. At
//! most `max_tails` streams are open at once (the next is a 503 `too_many_tails`); a stream ends when
//! the page goes, when the gateway sends nothing (not even its 15 s heartbeat) for
//! `tail_idle_timeout`, or at shutdown.

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

use super::api::{authorization, pass_on, refused_token, source_id};
use super::error::{ConsoleError, GATEWAY};
use super::params::{encode_path_segment, Params};
use super::upstream::{read_limited, Answer};
use super::AppState;

/// Largest error body of the gateway read back (its errors are one JSON line, §5.2).
const MAX_ERROR_BYTES: usize = 64 * 1024;

pub async fn tail(State(state): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    open(state, raw, headers).await.unwrap_or_else(IntoResponse::into_response)
}

async fn open(state: AppState, raw: Option<String>, headers: HeaderMap) -> Result<Response, ConsoleError> {
    let params = Params::parse(raw.as_deref(), &["source_id"])?;
    let source_id = source_id(&params)?;
    let limit = state.config.max_tails;
    let permit = state.tail_slots.clone().try_acquire_owned().map_err(|_| {
        state.metrics.tails_refused.inc();
        ConsoleError::TooManyTails { limit }
    })?;
    // `encode_path_segment` escapes everything a query value needs escaped too.
    let url = format!("{}/v2/read?source_id={}&log", state.config.gateway_url, encode_path_segment(source_id));
    let response = state.upstream.open(GATEWAY, &url, authorization(&headers)).await?;
    let status = response.status();
    refused_token(GATEWAY, status)?;
    if status != StatusCode::OK {
        let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
        let body = read_limited(GATEWAY, response.into_body(), MAX_ERROR_BYTES).await?;
        return Ok(pass_on(Answer { status, content_type, body }));
    }
    let open_tails = state.metrics.open_tails.clone();
    open_tails.add(1);
    let relay = Relay {
        body: response.into_body(),
        idle: state.config.tail_idle_timeout,
        shutdown: state.shutdown.clone(),
        _slot: Slot { _permit: permit, open_tails },
    };
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
    ];
    Ok((headers, Body::from_stream(relay.into_stream())).into_response())
}

/// One open tail: the gateway's body and what ends it.
struct Relay {
    body: Incoming,
    idle: Duration,
    shutdown: CancellationToken,
    /// Held while the stream lives, so dropping the stream (the page went) frees the slot.
    _slot: Slot,
}

/// A tail slot: frees its permit and lowers the open-tails gauge when dropped.
struct Slot {
    _permit: OwnedSemaphorePermit,
    open_tails: plumbing::Gauge,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.open_tails.add(-1);
    }
}

impl Relay {
    fn into_stream(self) -> impl futures::Stream<Item = Result<Bytes, Infallible>> + Send {
        futures::stream::unfold(self, |mut relay| async move {
            let chunk = relay.next_chunk().await?;
            Some((Ok(chunk), relay))
        })
    }

    /// The next data chunk of the gateway; `None` ends the tail (the page reconnects).
    async fn next_chunk(&mut self) -> Option<Bytes> {
        loop {
            let frame = tokio::select! {
                _ = self.shutdown.cancelled() => return None,
                frame = tokio::time::timeout(self.idle, self.body.frame()) => frame,
            };
            match frame {
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) if data.is_empty() => continue,
                    Ok(data) => return Some(data),
                    // Trailers: HTTP/1 SSE has none worth passing on.
                    Err(_) => continue,
                },
                Ok(Some(Err(error))) => {
                    tracing::debug!(%error, "live tail: the gateway's stream failed");
                    return None;
                }
                Ok(None) => return None,
                Err(_) => {
                    tracing::debug!(idle_ms = self.idle.as_millis() as u64, "live tail: the gateway went silent");
                    return None;
                }
            }
        }
    }
}
