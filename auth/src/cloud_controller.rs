//! Source access decided by Cloud Controller's v3 API with the caller's own token (§6.8):
//! `GET /v3/apps/{id}` or `GET /v3/service_instances/{id}` answering 200 means the caller may read
//! `id` (cached per token and id); `GET /v3/apps` + `/v3/service_instances` list what the caller may
//! see (Meta); `GET /v3/apps?names=…&per_page=5000` turns app names into GUIDs (PromQL).
//!
//! CC is reached over `https://` ([`super::https`]; `http://` only where the config allows it, for
//! tests). A CC that cannot be reached or answers garbage allows nothing; such failures are logged here and never cached.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use parking_lot::Mutex;
use serde::Deserialize;
use tokio_rustls::rustls;

use super::https::{self, HttpsClient};
use super::{async_trait, AuthError, Caller, SourceAccess};

/// Most cached answers; expired entries are dropped when full, and everything if that is not enough.
const CACHE_CAPACITY: usize = 10_000;

/// A token's readable source ids, and when CC listed them.
type Listing = (Instant, Arc<HashSet<String>>);

/// Time allowed for one CC request, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest CC response body read (a page of 5000 apps is a few MiB).
const MAX_BODY_BYTES: usize = 32 << 20;

/// Most pages followed for one listing.
const MAX_PAGES: usize = 20;

/// Resources per page asked for in listings, CC's maximum.
const PER_PAGE: &str = "5000";

/// Why a CC request gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum CcError {
    #[error("invalid CC request URL `{0}`")]
    Url(String),
    #[error("CC request failed: {0}")]
    Transport(String),
    #[error("CC request timed out after {0:?}")]
    Timeout(Duration),
    #[error("CC answered {0}")]
    Status(StatusCode),
    #[error("CC answer unreadable: {0}")]
    Body(String),
    #[error("CC listing has more than {MAX_PAGES} pages")]
    TooManyPages,
}

/// A Cloud-Controller-style API queried with the caller's token.
pub struct CloudController {
    /// `scheme://authority[/prefix]`, no trailing slash.
    base: String,
    /// `scheme://authority`: pagination links are followed on the configured host, as the original does.
    origin: String,
    client: HttpsClient,
    ttl: Duration,
    /// (token, source id) → (when asked, allowed).
    cache: Mutex<HashMap<(String, String), (Instant, bool)>>,
    /// Every source id a token may read (its app and service instance listings), per token, for the
    /// same TTL: a dashboard polls Meta, and each listing is several CC pages.
    listings: Mutex<HashMap<String, Listing>>,
}

impl std::fmt::Debug for CloudController {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudController").field("base", &self.base).field("ttl", &self.ttl).finish()
    }
}

#[derive(Deserialize)]
struct ResourcePage {
    #[serde(default)]
    resources: Vec<Resource>,
    #[serde(default)]
    pagination: Option<Pagination>,
}

#[derive(Deserialize)]
struct Resource {
    guid: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct Pagination {
    #[serde(default)]
    next: Option<Link>,
}

#[derive(Deserialize)]
struct Link {
    href: String,
}

impl CloudController {
    /// A client of the API at `base` (`http://…` or `https://…`); `tls` is required for `https`.
    pub fn new(base: &str, tls: Option<Arc<rustls::ClientConfig>>, ttl: Duration) -> Result<Self, AuthError> {
        let url_error = |reason: &str| AuthError::CcUrl { url: base.to_string(), reason: reason.to_string() };
        let base = base.trim_end_matches('/').to_string();
        let uri: Uri = base.parse().map_err(|e: http::uri::InvalidUri| url_error(&e.to_string()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(url_error("expected scheme://host[:port]"));
        };
        match scheme {
            "http" => {}
            "https" if tls.is_some() => {}
            "https" => return Err(url_error("https needs a CA file or skip_cert_verify")),
            _ => return Err(url_error("scheme must be http or https")),
        }
        if uri.query().is_some() {
            return Err(url_error("no query string expected"));
        }
        let origin = format!("{scheme}://{authority}");
        Ok(Self {
            base,
            origin,
            client: https::client(tls),
            ttl,
            cache: Mutex::new(HashMap::new()),
            listings: Mutex::new(HashMap::new()),
        })
    }

    /// `GET {url}` with the caller's token: the status and body.
    async fn get(&self, url: &str, token: &str) -> Result<(StatusCode, Bytes), CcError> {
        let uri: Uri = url.parse().map_err(|_| CcError::Url(url.to_string()))?;
        let request = http::Request::get(uri)
            .header(http::header::AUTHORIZATION, format!("bearer {token}"))
            .body(http_body_util::Empty::new())
            .map_err(|_| CcError::Url(url.to_string()))?;
        let call = async {
            let response = self.client.request(request).await.map_err(|e| CcError::Transport(error_chain(&e)))?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES);
            let body = body.collect().await.map_err(|e| CcError::Body(e.to_string()))?.to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(REQUEST_TIMEOUT, call).await.map_err(|_| CcError::Timeout(REQUEST_TIMEOUT))?
    }

    /// Every resource of a listing, following `pagination.next` (at most [`MAX_PAGES`] pages).
    async fn list(&self, path_and_query: &str, token: &str) -> Result<Vec<Resource>, CcError> {
        let mut url = format!("{}{path_and_query}", self.base);
        let mut resources = Vec::new();
        for _ in 0..MAX_PAGES {
            let (status, body) = self.get(&url, token).await?;
            if status != StatusCode::OK {
                return Err(CcError::Status(status));
            }
            let page: ResourcePage = serde_json::from_slice(&body).map_err(|e| CcError::Body(e.to_string()))?;
            resources.extend(page.resources);
            let Some(next) = page.pagination.and_then(|p| p.next) else {
                return Ok(resources);
            };
            let next: Uri = next.href.parse().map_err(|_| CcError::Url(next.href.clone()))?;
            let Some(path_and_query) = next.path_and_query() else {
                return Err(CcError::Url(next.to_string()));
            };
            url = format!("{}{path_and_query}", self.origin);
        }
        Err(CcError::TooManyPages)
    }

    /// Whether `GET {base}{path}` answers 200; `Err` when there is no definite answer.
    async fn exists(&self, path: &str, token: &str) -> Result<bool, CcError> {
        let (status, _) = self.get(&format!("{}{path}", self.base), token).await?;
        match status {
            StatusCode::OK => Ok(true),
            status if status.is_client_error() => Ok(false),
            status => Err(CcError::Status(status)),
        }
    }

    fn cached(&self, key: &(String, String)) -> Option<bool> {
        let cache = self.cache.lock();
        let (at, allowed) = cache.get(key)?;
        (at.elapsed() < self.ttl).then_some(*allowed)
    }

    fn remember(&self, token: &str, source_id: &str, allowed: bool) {
        let mut cache = self.cache.lock();
        if cache.len() >= CACHE_CAPACITY {
            let ttl = self.ttl;
            cache.retain(|_, (at, _)| at.elapsed() < ttl);
            if cache.len() >= CACHE_CAPACITY {
                cache.clear();
            }
        }
        cache.insert((token.to_string(), source_id.to_string()), (Instant::now(), allowed));
    }

    async fn ask(&self, token: &str, source_id: &str) -> Result<bool, CcError> {
        if self.exists(&format!("/v3/apps/{source_id}"), token).await? {
            return Ok(true);
        }
        self.exists(&format!("/v3/service_instances/{source_id}"), token).await
    }
}

/// Whether a source id may be put in a URL path as it is (CC ids are GUIDs).
fn is_path_safe(source_id: &str) -> bool {
    !source_id.is_empty() && source_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

/// Logs a CC request that gave no answer: a warning when CC is unreachable or failing, debug when it
/// merely refused the caller's token (a client token CC does not know, an expired token).
fn log_failure(error: &CcError, what: &str) {
    match error {
        CcError::Status(status) if status.is_client_error() => {
            tracing::debug!(%error, what, "cloud controller refused the request");
        }
        _ => tracing::warn!(%error, what, "cloud controller request failed"),
    }
}

/// An error and its sources, for a log line (hyper's own message is only "client error (Connect)").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[async_trait]
impl SourceAccess for CloudController {
    async fn may_read(&self, caller: &Caller, source_id: &str) -> bool {
        if !is_path_safe(source_id) {
            return false;
        }
        let key = (caller.token.clone(), source_id.to_string());
        if let Some(allowed) = self.cached(&key) {
            return allowed;
        }
        match self.ask(&caller.token, source_id).await {
            Ok(allowed) => {
                self.remember(&caller.token, source_id, allowed);
                allowed
            }
            Err(error) => {
                log_failure(&error, "authorization check");
                false
            }
        }
    }

    async fn readable_sources(&self, caller: &Caller) -> HashSet<String> {
        if let Some((at, listed)) = self.listings.lock().get(&caller.token) {
            if at.elapsed() < self.ttl {
                return HashSet::clone(listed);
            }
        }
        let per_page = format!("?per_page={PER_PAGE}");
        let mut all = HashSet::new();
        let mut complete = true;
        for listing in ["/v3/apps", "/v3/service_instances"] {
            match self.list(&format!("{listing}{per_page}"), &caller.token).await {
                Ok(resources) => all.extend(resources.into_iter().map(|r| r.guid)),
                Err(error) => {
                    complete = false;
                    log_failure(&error, listing);
                }
            }
        }
        // A listing cut short by a CC failure is not remembered: the next request asks again.
        if complete {
            let mut listings = self.listings.lock();
            if listings.len() >= CACHE_CAPACITY {
                let ttl = self.ttl;
                listings.retain(|_, (at, _)| at.elapsed() < ttl);
                if listings.len() >= CACHE_CAPACITY {
                    listings.clear();
                }
            }
            listings.insert(caller.token.clone(), (Instant::now(), Arc::new(all.clone())));
        }
        all
    }

    async fn app_guids_by_name(&self, caller: &Caller, names: &[String]) -> HashMap<String, Vec<String>> {
        if names.is_empty() {
            return HashMap::new();
        }
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("names", &names.join(","))
            .append_pair("per_page", PER_PAGE)
            .finish();
        let resources = match self.list(&format!("/v3/apps?{query}"), &caller.token).await {
            Ok(resources) => resources,
            Err(error) => {
                // As the original: no expansion, the query goes on with the ids as given.
                log_failure(&error, "app name lookup");
                return HashMap::new();
            }
        };
        let mut guids: HashMap<String, Vec<String>> = HashMap::new();
        for app in resources {
            // CC listed the app for this very token, so the token may read it (saves a request per GUID).
            self.remember(&caller.token, &app.guid, true);
            guids.entry(app.name).or_default().push(app.guid);
        }
        guids
    }
}
