//! What can go wrong behind a console route, and the one place it becomes an HTTP answer: a status
//! and a JSON body `{"error": "<name>", "message": "<what failed>"}` that the page shows as it is.

use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// An upstream of the console, named in its errors.
pub type UpstreamName = &'static str;

pub const LOG_CACHE: UpstreamName = "log-cache";
pub const GATEWAY: UpstreamName = "rlp-gateway";
pub const METRICS: UpstreamName = "metrics";

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("{0}")]
    BadRequest(String),
    #[error("no route {0}")]
    NotFound(String),
    /// The upstream refused the caller's token, or there was none: log-cache and the gateway say
    /// so with a 404 (§5.2, §6.8), which the page cannot tell from a missing route.
    #[error("{upstream} refused the request (status {status}): a token with access to it is needed")]
    Unauthorized { upstream: UpstreamName, status: u16 },
    #[error("{upstream} is unreachable: {reason}")]
    UpstreamUnreachable { upstream: UpstreamName, reason: String },
    #[error("{upstream} did not answer within {} ms", after.as_millis())]
    UpstreamTimeout { upstream: UpstreamName, after: Duration },
    #[error("{upstream} answered more than {limit} bytes")]
    UpstreamTooLarge { upstream: UpstreamName, limit: usize },
    #[error("{upstream} answered something unreadable: {reason}")]
    UpstreamMalformed { upstream: UpstreamName, reason: String },
    #[error("too many live tails: {limit} are open; close one and retry")]
    TooManyTails { limit: usize },
    #[error("the console is busy: {limit} upstream requests are in flight; retry shortly")]
    Busy { limit: usize },
}

impl ConsoleError {
    fn status_and_name(&self) -> (StatusCode, &'static str) {
        match self {
            Self::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            Self::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            Self::Unauthorized { .. } => (StatusCode::UNAUTHORIZED, "unauthorized"),
            Self::UpstreamUnreachable { .. } => (StatusCode::BAD_GATEWAY, "upstream_unreachable"),
            Self::UpstreamTimeout { .. } => (StatusCode::GATEWAY_TIMEOUT, "upstream_timeout"),
            Self::UpstreamTooLarge { .. } => (StatusCode::BAD_GATEWAY, "upstream_too_large"),
            Self::UpstreamMalformed { .. } => (StatusCode::BAD_GATEWAY, "upstream_malformed"),
            Self::TooManyTails { .. } => (StatusCode::SERVICE_UNAVAILABLE, "too_many_tails"),
            Self::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "busy"),
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, name) = self.status_and_name();
        let body = serde_json::json!({ "error": name, "message": self.to_string() });
        (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}
