//! The routes that proxy log-cache's HTTP API for the page (PROTOCOLS.md §6.7): `/api/meta`,
//! `/api/read` and `/api/query_range`. Parameters are checked here, so a bad one is the console's
//! 400 rather than whatever the upstream makes of it; the upstream's answer, success or error, goes
//! back as it came, except a refusal of the caller's token, which becomes a 401 the page knows to
//! answer by asking for one.

use axum::extract::{RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use super::error::{ConsoleError, UpstreamName, LOG_CACHE};
use super::params::{encode_path_segment, Params};
use super::upstream::Answer;
use super::AppState;

/// The envelope types `/api/v1/read` knows (§6.7).
const ENVELOPE_TYPES: [&str; 6] = ["ANY", "LOG", "COUNTER", "GAUGE", "TIMER", "EVENT"];

/// Most points one range query may ask for: Prometheus's own bound (11,000 per series).
const MAX_RANGE_POINTS: f64 = 11_000.0;

/// Longest source id the console passes on.
const MAX_SOURCE_ID_BYTES: usize = 1024;

/// `GET /api/meta`: every source log-cache holds (count, expired, oldest and newest timestamps).
pub async fn meta(State(state): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let result = async {
        Params::parse(raw.as_deref(), &[])?;
        let url = format!("{}/api/v1/meta", state.config.log_cache_url);
        proxy_get(&state, LOG_CACHE, &url, &headers).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /api/read?source_id=...`: a source's envelopes, with log-cache's read parameters.
pub async fn read(State(state): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let result = async {
        let params = Params::parse(
            raw.as_deref(),
            &["source_id", "start_time", "end_time", "limit", "envelope_types", "descending", "name_filter"],
        )?;
        let source_id = source_id(&params)?;
        for name in ["start_time", "end_time", "limit"] {
            if let Some(value) = params.single(name)? {
                value.parse::<i64>().map_err(|_| bad(format!("`{name}` must be an integer, not `{value}`")))?;
            }
        }
        if let Some(value) = params.single("descending")? {
            if value != "true" && value != "false" {
                return Err(bad(format!("`descending` must be true or false, not `{value}`")));
            }
        }
        if let Some(unknown) = params.all("envelope_types").find(|t| !ENVELOPE_TYPES.contains(t)) {
            return Err(bad(format!("unknown envelope type `{unknown}` (one of {})", ENVELOPE_TYPES.join(", "))));
        }
        params.single("name_filter")?;
        let url = format!(
            "{}/api/v1/read/{}?{}",
            state.config.log_cache_url,
            encode_path_segment(source_id),
            params.encode_without("source_id")
        );
        proxy_get(&state, LOG_CACHE, &url, &headers).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

/// `GET /api/query_range?query=&start=&end=&step=`: a PromQL range query (unix seconds, step in
/// seconds).
pub async fn query_range(State(state): State<AppState>, RawQuery(raw): RawQuery, headers: HeaderMap) -> Response {
    let result = async {
        let params = Params::parse(raw.as_deref(), &["query", "start", "end", "step"])?;
        let query = params.required("query")?;
        let seconds = |name: &str| -> Result<f64, ConsoleError> {
            let value = params.required(name)?;
            match value.parse::<f64>() {
                Ok(number) if number.is_finite() => Ok(number),
                _ => Err(bad(format!("`{name}` must be a number of seconds, not `{value}`"))),
            }
        };
        let (start, end, step) = (seconds("start")?, seconds("end")?, seconds("step")?);
        if step <= 0.0 {
            return Err(bad(format!("`step` must be positive, not {step}")));
        }
        if start > end {
            return Err(bad(format!("`start` ({start}) must not be after `end` ({end})")));
        }
        if (end - start) / step > MAX_RANGE_POINTS {
            return Err(bad(format!("at most {MAX_RANGE_POINTS} points a series: widen `step`")));
        }
        let encoded = serde_urlencoded::to_string([
            ("query", query.to_string()),
            ("start", start.to_string()),
            ("end", end.to_string()),
            ("step", step.to_string()),
        ])
        .map_err(|error| bad(format!("cannot encode the query: {error}")))?;
        let url = format!("{}/api/v1/query_range?{encoded}", state.config.log_cache_url);
        proxy_get(&state, LOG_CACHE, &url, &headers).await
    };
    result.await.unwrap_or_else(IntoResponse::into_response)
}

pub fn source_id(params: &Params) -> Result<&str, ConsoleError> {
    let source_id = params.required("source_id")?;
    if source_id.len() > MAX_SOURCE_ID_BYTES {
        return Err(bad(format!("`source_id` longer than {MAX_SOURCE_ID_BYTES} bytes")));
    }
    Ok(source_id)
}

fn bad(message: String) -> ConsoleError {
    ConsoleError::BadRequest(message)
}

/// The caller's `Authorization` header, passed on to log-cache and the gateway.
pub fn authorization(headers: &HeaderMap) -> Option<&HeaderValue> {
    headers.get(header::AUTHORIZATION)
}

/// `GET url` on `upstream` within the console's bounds, its answer passed back.
async fn proxy_get(
    state: &AppState,
    upstream: UpstreamName,
    url: &str,
    headers: &HeaderMap,
) -> Result<Response, ConsoleError> {
    let limit = state.config.max_proxied;
    let _slot = state.proxy_slots.clone().try_acquire_owned().map_err(|_| ConsoleError::Busy { limit })?;
    let answer = state.upstream.get(upstream, url, authorization(headers), state.config.max_answer_bytes).await?;
    refused_token(upstream, answer.status)?;
    Ok(pass_on(answer))
}

/// log-cache and the gateway refuse a missing or bad token with 404 (§5.2, §6.8); the routes the
/// console calls exist, so a 404 from them is such a refusal. 401 and 403 are taken as one too.
pub fn refused_token(upstream: UpstreamName, status: StatusCode) -> Result<(), ConsoleError> {
    match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN | StatusCode::NOT_FOUND => {
            Err(ConsoleError::Unauthorized { upstream, status: status.as_u16() })
        }
        _ => Ok(()),
    }
}

/// The upstream's status and body, as JSON unless it said otherwise.
pub fn pass_on(answer: Answer) -> Response {
    let content_type = answer.content_type.unwrap_or_else(|| HeaderValue::from_static("application/json"));
    (answer.status, [(header::CONTENT_TYPE, content_type)], answer.body).into_response()
}
