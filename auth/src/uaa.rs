//! Token keys from UAA's `GET /token_keys` (§6.8): tokens are verified locally with the key their
//! header names (`kid`), RS256 (PEM public key) or HS256 (shared secret), as the original's
//! `UAAClient` does.
//!
//! Keys are fetched on first use and again when a token names a key we do not hold or fails its
//! signature check (UAA rotated its keys), at most once per [`MIN_REFRESH_INTERVAL`]; a fetch replaces
//! the whole set, so keys UAA dropped stop verifying. A failed fetch keeps the keys held so far.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::{StatusCode, Uri};
use http_body_util::BodyExt;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::RwLock;
use serde::Deserialize;
use tokio_rustls::rustls;

use super::https::{self, HttpsClient};
use super::{validation, AuthError, Claims};

/// Least time between two fetches of the key set (the original's `minimumRefreshInterval`).
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(5);

/// Time allowed for one `/token_keys` request, body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest `/token_keys` body read.
const MAX_BODY_BYTES: usize = 1 << 20;

/// Why a key set could not be fetched.
#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Transport(String),
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("UAA answered {0}")]
    Status(StatusCode),
    #[error("unreadable answer: {0}")]
    Body(String),
}

/// How a token signed with a held key fared.
enum Verified {
    Valid(Claims),
    /// Expired, malformed claims, wrong algorithm: final.
    Invalid,
    /// No such key, or a bad signature: worth asking UAA again.
    Unknown,
}

#[derive(Deserialize)]
struct TokenKeys {
    #[serde(default)]
    keys: Vec<TokenKey>,
}

#[derive(Deserialize)]
struct TokenKey {
    #[serde(default)]
    kid: String,
    #[serde(default)]
    alg: String,
    #[serde(default)]
    value: String,
}

/// The key set of one UAA.
pub struct UaaKeys {
    url: Uri,
    client: HttpsClient,
    min_refresh: Duration,
    /// `kid` → key; replaced whole by each fetch.
    keys: RwLock<HashMap<String, (DecodingKey, Validation)>>,
    /// When the last fetch started. Held across the fetch, so that callers missing a key at the same
    /// time share one request instead of each sending their own.
    last_fetch: tokio::sync::Mutex<Option<Instant>>,
}

impl std::fmt::Debug for UaaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UaaKeys").field("url", &self.url).field("keys", &self.keys.read().len()).finish()
    }
}

impl UaaKeys {
    /// Keys of the UAA at `base` (`http://…` or `https://…`, `tls` required for https), fetched at
    /// most every `min_refresh`.
    pub fn new(base: &str, tls: Option<Arc<rustls::ClientConfig>>, min_refresh: Duration) -> Result<Self, AuthError> {
        let url_error = |reason: &str| AuthError::UaaUrl { url: base.to_string(), reason: reason.to_string() };
        let url = format!("{}/token_keys", base.trim_end_matches('/'));
        let url: Uri = url.parse().map_err(|e: http::uri::InvalidUri| url_error(&e.to_string()))?;
        match (url.scheme_str(), url.authority(), &tls) {
            (Some("http"), Some(_), _) | (Some("https"), Some(_), Some(_)) => {}
            (Some("https"), Some(_), None) => return Err(url_error("https needs a CA file or skip_cert_verify")),
            _ => return Err(url_error("expected http://host[:port] or https://host[:port]")),
        }
        Ok(Self {
            url,
            client: https::client(tls),
            min_refresh,
            keys: RwLock::new(HashMap::new()),
            last_fetch: tokio::sync::Mutex::new(None),
        })
    }

    /// The claims of `token` if a UAA key verifies it; its header names the key.
    pub(super) async fn verify(&self, token: &str, kid: &str) -> Option<Claims> {
        match self.verify_with_held_key(token, kid) {
            Verified::Valid(claims) => return Some(claims),
            Verified::Invalid => return None,
            Verified::Unknown => {}
        }
        self.refresh().await;
        match self.verify_with_held_key(token, kid) {
            Verified::Valid(claims) => Some(claims),
            Verified::Invalid | Verified::Unknown => None,
        }
    }

    fn verify_with_held_key(&self, token: &str, kid: &str) -> Verified {
        let keys = self.keys.read();
        let Some((key, validation)) = keys.get(kid) else {
            return Verified::Unknown;
        };
        match jsonwebtoken::decode::<Claims>(token, key, validation) {
            Ok(data) => Verified::Valid(data.claims),
            Err(error) if matches!(error.kind(), ErrorKind::InvalidSignature) => Verified::Unknown,
            Err(_) => Verified::Invalid,
        }
    }

    /// Fetches the key set unless one was fetched less than `min_refresh` ago.
    async fn refresh(&self) {
        let mut last_fetch = self.last_fetch.lock().await;
        if last_fetch.is_some_and(|at| at.elapsed() < self.min_refresh) {
            return;
        }
        *last_fetch = Some(Instant::now());
        match self.fetch().await {
            Ok(keys) => *self.keys.write() = keys,
            Err(error) => tracing::warn!(%error, url = %self.url, "cannot fetch UAA token keys"),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, (DecodingKey, Validation)>, FetchError> {
        let request = http::Request::get(self.url.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(http_body_util::Empty::new())
            .map_err(|e| FetchError::Transport(e.to_string()))?;
        let call = async {
            let response = self.client.request(request).await.map_err(|e| FetchError::Transport(e.to_string()))?;
            let status = response.status();
            if status != StatusCode::OK {
                return Err(FetchError::Status(status));
            }
            let body = http_body_util::Limited::new(response.into_body(), MAX_BODY_BYTES);
            Ok(body.collect().await.map_err(|e| FetchError::Body(e.to_string()))?.to_bytes())
        };
        let body =
            tokio::time::timeout(REQUEST_TIMEOUT, call).await.map_err(|_| FetchError::Timeout(REQUEST_TIMEOUT))??;
        let token_keys: TokenKeys = serde_json::from_slice(&body).map_err(|e| FetchError::Body(e.to_string()))?;
        let mut keys = HashMap::new();
        for token_key in token_keys.keys {
            match decoding_key(&token_key) {
                Ok(key) => {
                    keys.insert(token_key.kid, key);
                }
                Err(reason) => {
                    tracing::warn!(kid = %token_key.kid, alg = %token_key.alg, reason, "UAA token key skipped")
                }
            }
        }
        Ok(keys)
    }
}

/// A UAA key as jsonwebtoken wants it; only RS256 and HS256, as the original.
fn decoding_key(token_key: &TokenKey) -> Result<(DecodingKey, Validation), String> {
    if token_key.value.is_empty() {
        return Err("empty key".into());
    }
    let (algorithm, key) = match token_key.alg.as_str() {
        "RS256" => {
            (Algorithm::RS256, DecodingKey::from_rsa_pem(token_key.value.as_bytes()).map_err(|e| e.to_string())?)
        }
        "HS256" => (Algorithm::HS256, DecodingKey::from_secret(token_key.value.as_bytes())),
        _ => return Err("unsupported algorithm".into()),
    };
    Ok((key, validation(algorithm)))
}
