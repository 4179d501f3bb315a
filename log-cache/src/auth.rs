//! Authorization of the HTTP API, as the original's `log-cache-cf-auth-proxy` does it (§6.8); off by
//! default.
//!
//! The token comes only from the `Authorization` header (a `bearer` prefix is stripped
//! case-insensitively) and is a JWT verified locally, `exp` included, against the keys UAA publishes
//! on `/token_keys` ([`UaaKeys`], chosen by the token's `kid`) and/or statically configured keys. A
//! token with scope `doppler.firehose` or `logs.admin` is admin and reads everything. Anyone else may
//! read a source id only if a [`SourceAccess`] check allows it: a static ACL file ([`StaticAcl`]), or
//! a Cloud-Controller-style API ([`CloudController`]: `GET /v3/apps/{id}` or
//! `GET /v3/service_instances/{id}` answering 200 with the caller's token, cached per token and id).
//!
//! PromQL queries ([`Authorizer::authorize_query`]) must name source ids; each is also taken as an app
//! name and expanded to the GUIDs of the apps of that name, for admins too; non-admins keep only the
//! ids they may read, and the query is rewritten to name them. Every refusal is answered 404 with an
//! empty body, except a query that names no source id or does not parse (400, Prometheus shape).
//!
//! Layout: [`acl`] (static ACL), [`cloud_controller`] (CC checks), [`uaa`] (UAA token keys),
//! [`https`] (the transport of the CC and UAA clients, rustls), [`query`] (source ids of a query and
//! its rewrite).

pub mod acl;
pub mod cloud_controller;
pub mod https;
pub mod query;
pub mod uaa;

use std::collections::{HashMap, HashSet};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

pub use acl::StaticAcl;
pub use cloud_controller::CloudController;
pub use query::{QueryError, SourceIdQuery};
pub use uaa::UaaKeys;

use crate::config::{AuthConfig, JwtKey};

/// Scopes that make a caller admin (§6.8, §9.5).
pub const ADMIN_SCOPES: [&str; 2] = ["doppler.firehose", "logs.admin"];

/// Why the authorizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("jwt key with algorithm `{algorithm}`: {reason}")]
    Key { algorithm: String, reason: String },
    #[error("cannot read ACL file {path}: {reason}")]
    Acl { path: String, reason: String },
    #[error("invalid cc_url `{url}`: {reason}")]
    CcUrl { url: String, reason: String },
    #[error("invalid uaa_url `{url}`: {reason}")]
    UaaUrl { url: String, reason: String },
    #[error("{target} TLS: {source}")]
    Tls { target: &'static str, source: https::TlsClientError },
}

/// Why a request is refused; all of them answer 404 with an empty body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no bearer token")]
    NoToken,
    #[error("invalid token")]
    InvalidToken,
    #[error("source id not allowed")]
    NotAllowed,
    #[error("query could not be rewritten")]
    Rewrite,
}

/// Why a PromQL query is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryRejection {
    /// 404 with an empty body.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// 400 `{"status":"error","errorType":"bad_data","error":"<message>"}`.
    #[error(transparent)]
    BadQuery(#[from] QueryError),
}

/// A verified caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub admin: bool,
    /// The raw token, to call Cloud Controller on the caller's behalf.
    pub token: String,
    /// `user_id`, `sub` and `client_id` claims present in the token: the ACL's keys.
    pub identities: Vec<String>,
}

impl Caller {
    fn new(claims: Claims, token: &str) -> Self {
        let admin = claims.scope.iter().any(|s| ADMIN_SCOPES.contains(&s.as_str()));
        let identities = [claims.user_id, claims.sub, claims.client_id].into_iter().flatten().collect();
        Self { admin, token: token.to_string(), identities }
    }
}

#[derive(Debug, Deserialize)]
struct Claims {
    #[serde(default)]
    scope: Vec<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
}

/// A check of which source ids a non-admin caller may read.
#[tonic::async_trait]
pub trait SourceAccess: Send + Sync {
    async fn may_read(&self, caller: &Caller, source_id: &str) -> bool;

    /// Every source id the caller may read (for `/api/v1/meta`).
    async fn readable_sources(&self, caller: &Caller) -> HashSet<String>;

    /// The GUIDs of the apps named `names` that the caller can see, by name (PromQL app-name
    /// expansion, §6.8). Checks that know no app names have none.
    async fn app_guids_by_name(&self, _caller: &Caller, _names: &[String]) -> HashMap<String, Vec<String>> {
        HashMap::new()
    }
}

/// Verifies tokens and asks the configured [`SourceAccess`] checks.
pub struct Authorizer {
    /// Statically configured keys, tried in turn.
    keys: Vec<(DecodingKey, Validation)>,
    /// UAA's published keys, chosen by `kid`.
    uaa: Option<UaaKeys>,
    checks: Vec<Box<dyn SourceAccess>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("keys", &self.keys.len())
            .field("uaa", &self.uaa)
            .field("checks", &self.checks.len())
            .finish()
    }
}

impl Authorizer {
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        let tls = |target: &'static str, verification: Option<https::ServerVerification>| match verification {
            Some(verification) => {
                https::client_config(&verification).map(Some).map_err(|source| AuthError::Tls { target, source })
            }
            None => Ok(None),
        };
        let mut authorizer = Self::new(&config.jwt_keys, Vec::new())?;
        if let Some(path) = &config.acl_file {
            authorizer.checks.push(Box::new(StaticAcl::load(path)?));
        }
        if let Some(url) = &config.cc_url {
            let tls = tls("cc", config.cc_server_verification())?;
            authorizer.checks.push(Box::new(CloudController::new(url, tls, config.cache_ttl())?));
        }
        if let Some(url) = &config.uaa_url {
            let tls = tls("uaa", config.uaa_server_verification())?;
            authorizer.uaa = Some(UaaKeys::new(url, tls, uaa::MIN_REFRESH_INTERVAL)?);
        }
        Ok(authorizer)
    }

    /// An authorizer with explicit checks (tests, embedding).
    pub fn new(keys: &[JwtKey], checks: Vec<Box<dyn SourceAccess>>) -> Result<Self, AuthError> {
        let keys = keys.iter().map(decoding_key).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys, uaa: None, checks })
    }

    /// Also verifies tokens against UAA's published keys.
    pub fn with_uaa(mut self, uaa: UaaKeys) -> Self {
        self.uaa = Some(uaa);
        self
    }

    /// Verifies the bearer token of a request.
    pub async fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Denied> {
        let token = bearer_token(authorization.ok_or(Denied::NoToken)?);
        if token.is_empty() {
            return Err(Denied::NoToken);
        }
        if let Some(uaa) = &self.uaa {
            if let Some(kid) = jsonwebtoken::decode_header(token).ok().and_then(|header| header.kid) {
                if let Some(claims) = uaa.verify(token, &kid).await {
                    return Ok(Caller::new(claims, token));
                }
            }
        }
        for (key, validation) in &self.keys {
            if let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, validation) {
                return Ok(Caller::new(data.claims, token));
            }
        }
        Err(Denied::InvalidToken)
    }

    /// Whether the caller may read `source_id`.
    pub async fn may_read(&self, caller: &Caller, source_id: &str) -> bool {
        if caller.admin {
            return true;
        }
        for check in &self.checks {
            if check.may_read(caller, source_id).await {
                return true;
            }
        }
        false
    }

    /// The source ids a caller may see in Meta; `None` means all of them.
    pub async fn readable_sources(&self, caller: &Caller) -> Option<HashSet<String>> {
        if caller.admin {
            return None;
        }
        let mut all = HashSet::new();
        for check in &self.checks {
            all.extend(check.readable_sources(caller).await);
        }
        Some(all)
    }

    /// Authorizes a PromQL query (`/api/v1/query`, `/api/v1/query_range`, §6.8) and returns the query
    /// to evaluate: its source ids expanded from app names and, for non-admins, cut down to those the
    /// caller may read.
    ///
    /// The steps are the original's, in its order: a missing header is refused first, then a query
    /// that does not parse or names no source id (400), then an invalid token.
    pub async fn authorize_query(&self, authorization: Option<&str>, query: &str) -> Result<String, QueryRejection> {
        if authorization.is_none_or(|header| bearer_token(header).is_empty()) {
            return Err(Denied::NoToken.into());
        }
        let parsed = SourceIdQuery::parse(query)?;
        let caller = self.authenticate(authorization).await?;
        let mut guids_by_name: HashMap<String, Vec<String>> = HashMap::new();
        for check in &self.checks {
            for (name, guids) in check.app_guids_by_name(&caller, parsed.source_ids()).await {
                guids_by_name.entry(name).or_default().extend(guids);
            }
        }
        let mut expansions = HashMap::with_capacity(parsed.source_ids().len());
        for id in parsed.source_ids() {
            // The GUIDs of the apps named `id`, then `id` itself (it may be a GUID, or a system
            // component's source id).
            let mut ids = guids_by_name.remove(id).unwrap_or_default();
            ids.push(id.clone());
            let mut seen = HashSet::new();
            ids.retain(|candidate| seen.insert(candidate.clone()));
            if !caller.admin {
                let mut allowed = Vec::with_capacity(ids.len());
                for candidate in ids {
                    if self.may_read(&caller, &candidate).await {
                        allowed.push(candidate);
                    }
                }
                if allowed.is_empty() {
                    return Err(Denied::NotAllowed.into());
                }
                ids = allowed;
            }
            expansions.insert(id.clone(), ids);
        }
        if expansions.iter().all(|(id, ids)| matches!(ids.as_slice(), [only] if only == id)) {
            return Ok(query.to_string());
        }
        parsed.rewrite(&expansions).map_err(|error| {
            tracing::warn!(%error, "promql source id rewrite refused");
            QueryRejection::Denied(Denied::Rewrite)
        })
    }
}

/// The token of an `Authorization` header: `bearer` and the whitespace after it stripped, in any
/// case (`(?i)^bearer\s+` in the original); a header without the prefix is the token itself.
fn bearer_token(header: &str) -> &str {
    let header = header.trim();
    match (header.get(..6), header.get(6..)) {
        (Some(prefix), Some(rest))
            if prefix.eq_ignore_ascii_case("bearer") && rest.starts_with(char::is_whitespace) =>
        {
            rest.trim_start()
        }
        _ => header,
    }
}

fn decoding_key(key: &JwtKey) -> Result<(DecodingKey, Validation), AuthError> {
    let error = |reason: String| AuthError::Key { algorithm: key.algorithm.clone(), reason };
    let algorithm: Algorithm = key.algorithm.parse().map_err(|e: jsonwebtoken::errors::Error| error(e.to_string()))?;
    let material = key.key.0.as_bytes();
    let decoding = match algorithm {
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => DecodingKey::from_secret(material),
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => DecodingKey::from_rsa_pem(material).map_err(|e| error(e.to_string()))?,
        Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(material).map_err(|e| error(e.to_string()))?,
        Algorithm::EdDSA => DecodingKey::from_ed_pem(material).map_err(|e| error(e.to_string()))?,
    };
    Ok((decoding, validation(algorithm)))
}

/// What a token must pass besides its signature: `exp`, without leeway. UAA tokens carry audiences
/// we are not configured with; the original checks only the signature and `exp`.
fn validation(algorithm: Algorithm) -> Validation {
    let mut validation = Validation::new(algorithm);
    validation.validate_aud = false;
    validation.leeway = 0;
    validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
    validation
}

#[cfg(test)]
mod tests;
