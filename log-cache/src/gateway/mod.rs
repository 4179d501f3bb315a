//! The HTTP JSON gateway (§6.7): `/api/v1/read/{source_id}`, `/api/v1/meta`, `/api/v1/query`,
//! `/api/v1/query_range` and `/api/v1/info`, with the original's exact bodies (every JSON body ends
//! with `\n`), and the authorization of the cf-auth-proxy when configured (§6.8, the `auth` crate and [`crate::query_auth`]).
//!
//! Errors become HTTP responses in [`error_response`] (grpc-gateway shape) and
//! [`query_error_response`] (Prometheus shape), nowhere else.

mod params;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use loggregator_proto::logcache::v1::{MetaRequest, MetaResponse};
use tonic::Code;

use crate::query::Querier;
use crate::query_auth::{self, QueryRejection};
use crate::service::{ApiError, EncodedRead, Service};
use auth::{Authorizer, Caller};

pub use params::{parse_read_request, ParamError};

/// The version `/api/v1/info` reports: the original's, so go-log-cache uses the `/api/v1` paths (§6.7).
pub const VERSION: &str = "3.2.12";

/// Largest form body accepted on POST `/api/v1/query*`.
const MAX_FORM_BYTES: usize = 1 << 20;

/// What the handlers share.
#[derive(Clone)]
pub struct HttpState {
    pub service: Arc<Service>,
    pub querier: Arc<Querier>,
    /// `None` when auth is off.
    pub authorizer: Option<Arc<Authorizer>>,
    /// When the component started (fallback for `vm_uptime`).
    pub started: Instant,
    /// Answer PromQL routes with 501 (`Config::promql_unimplemented`).
    pub promql_unimplemented: bool,
}

/// The gateway's routes.
pub fn router(state: HttpState) -> Router {
    let auth = state.authorizer.is_some();
    let router = Router::new()
        .route("/api/v1/read/{*source_id}", get(read))
        .route("/api/v1/meta", get(meta))
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/info", get(info))
        .fallback(not_found);
    // Behind the original's auth proxy anything but its routes and methods is a 404 (§6.8); without
    // auth, a known path with the wrong method keeps axum's 405, which no client depends on.
    let router = if auth { router.method_not_allowed_fallback(not_found) } else { router };
    router.with_state(state)
}

// === responses ===

fn json_response(status: StatusCode, mut body: String) -> Response {
    if !body.ends_with('\n') {
        body.push('\n');
    }
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// 404 with an empty body: unknown routes and every authorization failure (§6.8).
fn not_found_empty() -> Response {
    StatusCode::NOT_FOUND.into_response()
}

async fn not_found() -> Response {
    not_found_empty()
}

/// The auth proxy's answer to PromQL routes when `PROMQL_UNIMPLEMENTED` is set (§6.8).
fn promql_unimplemented() -> Response {
    json_response(
        StatusCode::NOT_IMPLEMENTED,
        r#"{"status":"error","errorType":"bad_data","error":"Metrics not available"}"#.to_string(),
    )
}

/// The HTTP status grpc-gateway maps a gRPC code to.
pub fn http_status_of(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// grpc-gateway's error body: `{"code":N,"message":"…","details":[]}` (§6.2, §6.7).
pub fn grpc_gateway_error(code: Code, message: &str) -> Response {
    let body = format!(r#"{{"code":{},"message":{},"details":[]}}"#, code as i32, json_string(message));
    json_response(http_status_of(code), body)
}

/// The one mapping of API errors on the non-PromQL routes.
fn error_response(error: ApiError) -> Response {
    grpc_gateway_error(error.code(), &error.to_string())
}

/// Prometheus' error body: `{"status":"error","errorType":"…","error":"…"}`.
pub fn prometheus_error(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body =
        format!(r#"{{"status":"error","errorType":{},"error":{}}}"#, json_string(error_type), json_string(message));
    json_response(status, body)
}

/// The one mapping of API errors on the PromQL routes.
fn query_error_response(error: ApiError) -> Response {
    match error {
        ApiError::Query { http_status, error_type, message, .. } => {
            let status = StatusCode::from_u16(http_status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            prometheus_error(status, error_type, &message)
        }
        other => prometheus_error(http_status_of(other.code()), "internal", &other.to_string()),
    }
}

// === auth ===

/// A request refused before reaching the service.
enum Rejection {
    /// Every authorization failure: 404 with an empty body (§6.8).
    NotFound,
    /// A Prometheus-shaped error of the PromQL routes.
    Prometheus { status: StatusCode, error_type: &'static str, message: String },
}

impl IntoResponse for Rejection {
    fn into_response(self) -> Response {
        match self {
            Rejection::NotFound => not_found_empty(),
            Rejection::Prometheus { status, error_type, message } => prometheus_error(status, error_type, &message),
        }
    }
}

fn bad_data(message: impl Into<String>) -> Rejection {
    Rejection::Prometheus { status: StatusCode::BAD_REQUEST, error_type: "bad_data", message: message.into() }
}

fn authorization_header(headers: &HeaderMap) -> Option<&str> {
    headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok())
}

/// The verified caller, `Ok(None)` when auth is off.
async fn authenticate(state: &HttpState, headers: &HeaderMap) -> Result<Option<Caller>, Rejection> {
    let Some(authorizer) = &state.authorizer else {
        return Ok(None);
    };
    match authorizer.authenticate(authorization_header(headers)).await {
        Ok(caller) => Ok(Some(caller)),
        Err(_) => Err(Rejection::NotFound),
    }
}

// === handlers ===

async fn read(
    State(state): State<HttpState>,
    Path(source_id): Path<String>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let caller = match authenticate(&state, &headers).await {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    if let (Some(authorizer), Some(caller)) = (&state.authorizer, &caller) {
        // The auth proxy routes a single path segment only (§6.8).
        if source_id.contains('/') || !authorizer.may_read(caller, &source_id).await {
            return not_found_empty();
        }
    }
    let request = match parse_read_request(source_id, raw_query.as_deref().unwrap_or("")) {
        Ok(request) => request,
        Err(error) => return grpc_gateway_error(Code::InvalidArgument, &error.to_string()),
    };
    match state.service.read_encoded(request).await {
        Ok(read) => read_response(&read),
        Err(error) => error_response(error),
    }
}

/// The `/api/v1/read` body (§6.7) in one buffer, written straight from the stored encoded
/// envelopes when this node holds the source (no decoded envelope, no `String` per envelope).
fn read_response(read: &EncodedRead) -> Response {
    let mut body = match read {
        EncodedRead::Local(envelopes) => {
            // An envelope's JSON is typically ~1.5× its encoding (base64, field names): 2× makes one
            // allocation the rule; escapes in strings may still make the buffer grow.
            let encoded: usize = envelopes.iter().map(|e| e.len()).sum();
            let mut body = Vec::with_capacity(64 + encoded * 2);
            loggregator_proto::json::write_read_response_json_from_encoded(&mut body, envelopes);
            body
        }
        EncodedRead::Remote(response) => loggregator_proto::json::read_response_to_json(response).into_bytes(),
    };
    body.push(b'\n');
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn meta(State(state): State<HttpState>, RawQuery(raw_query): RawQuery, headers: HeaderMap) -> Response {
    let caller = match authenticate(&state, &headers).await {
        Ok(caller) => caller,
        Err(denied) => return denied.into_response(),
    };
    let local_only = match params::parse_meta_local_only(raw_query.as_deref().unwrap_or("")) {
        Ok(local_only) => local_only,
        Err(error) => return grpc_gateway_error(Code::InvalidArgument, &error.to_string()),
    };
    let response = match state.service.meta(MetaRequest { local_only }).await {
        Ok(response) => response,
        Err(error) => return error_response(error),
    };
    match (&state.authorizer, &caller) {
        (Some(authorizer), Some(caller)) => {
            // Served by the auth proxy itself in the original: default protojson options (§6.8).
            let visible = authorizer.readable_sources(caller).await;
            json_response(StatusCode::OK, proxy_meta_json(response, visible.as_ref()))
        }
        _ => json_response(StatusCode::OK, loggregator_proto::json::meta_response_to_json(&response)),
    }
}

/// Meta as the cf-auth-proxy writes it (default protojson options, §6.8), restricted to `visible`
/// sources when given.
fn proxy_meta_json(mut response: MetaResponse, visible: Option<&HashSet<String>>) -> String {
    if let Some(visible) = visible {
        response.meta.retain(|id, _| visible.contains(id));
    }
    loggregator_proto::json::meta_response_to_json_default_options(&response)
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

/// The parameters of a PromQL request: the query string, plus the form body of a POST.
async fn query_params(
    method: &Method,
    raw_query: Option<String>,
    body: Body,
) -> Result<Vec<(String, String)>, Rejection> {
    let mut pairs = params::parse_pairs(raw_query.as_deref().unwrap_or(""));
    if method == Method::POST {
        let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES).await.map_err(|e| bad_data(e.to_string()))?;
        pairs.extend(form_urlencoded::parse(&bytes).map(|(k, v)| (k.into_owned(), v.into_owned())));
    }
    Ok(pairs)
}

fn param(pairs: &[(String, String)], name: &str) -> String {
    pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).unwrap_or_default()
}

/// §6.8: the query to evaluate, with its source ids expanded from app names and cut down to what the
/// caller may read; the query itself when auth is off.
async fn authorize_query(state: &HttpState, headers: &HeaderMap, query: String) -> Result<String, Rejection> {
    let Some(authorizer) = &state.authorizer else {
        return Ok(query);
    };
    match query_auth::authorize_query(authorizer, authorization_header(headers), &query).await {
        Ok(query) => Ok(query),
        Err(QueryRejection::BadQuery(error)) => Err(bad_data(error.to_string())),
        Err(QueryRejection::Denied(_) | QueryRejection::Rewrite) => Err(Rejection::NotFound),
    }
}

async fn query(
    State(state): State<HttpState>,
    method: Method,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if state.promql_unimplemented {
        return promql_unimplemented();
    }
    let pairs = match query_params(&method, raw_query, body).await {
        Ok(pairs) => pairs,
        Err(rejection) => return rejection.into_response(),
    };
    let query = match authorize_query(&state, &headers, param(&pairs, "query")).await {
        Ok(query) => query,
        Err(rejection) => return rejection.into_response(),
    };
    match state.querier.instant(query, param(&pairs, "time")).await {
        Ok(result) => json_response(StatusCode::OK, crate::promql::instant_result_to_json(&result)),
        Err(error) => query_error_response(error),
    }
}

async fn query_range(
    State(state): State<HttpState>,
    method: Method,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if state.promql_unimplemented {
        return promql_unimplemented();
    }
    let pairs = match query_params(&method, raw_query, body).await {
        Ok(pairs) => pairs,
        Err(rejection) => return rejection.into_response(),
    };
    let query = match authorize_query(&state, &headers, param(&pairs, "query")).await {
        Ok(query) => query,
        Err(rejection) => return rejection.into_response(),
    };
    let (start, end, step) = (param(&pairs, "start"), param(&pairs, "end"), param(&pairs, "step"));
    match state.querier.range(query, start, end, step).await {
        Ok(result) => json_response(StatusCode::OK, crate::promql::range_result_to_json(&result)),
        Err(error) => query_error_response(error),
    }
}

/// `{"version":"3.2.12","vm_uptime":"<seconds>"}\n`: no auth (§6.8).
async fn info(State(state): State<HttpState>) -> Response {
    let uptime = host_uptime_seconds().unwrap_or_else(|| state.started.elapsed().as_secs());
    json_response(StatusCode::OK, format!(r#"{{"version":"{VERSION}","vm_uptime":"{uptime}"}}"#))
}

/// Whole seconds since the machine booted (`/proc/uptime`).
fn host_uptime_seconds() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/uptime").ok()?;
    let first = text.split_whitespace().next()?;
    first.split('.').next()?.parse().ok()
}
