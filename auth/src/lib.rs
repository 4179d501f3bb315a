//! Authorization shared by the services that answer clients over HTTP: log-cache's HTTP API (the
//! original's `log-cache-cf-auth-proxy`, PROTOCOLS.md §6.8) and the traffic controller. Off unless a
//! service's config enables it ([`AuthConfig`]).
//!
//! A caller is a verified JWT: the token comes from an `Authorization` header (or the traffic
//! controller's `authorization` cookie), a `bearer` prefix stripped case-insensitively
//! ([`bearer_token`]), and is verified locally, `exp` included, against the keys UAA publishes on
//! `/token_keys` ([`UaaKeys`], chosen by the token's `kid`) and/or statically configured keys
//! ([`Authorizer::authenticate`] → [`Caller`] or [`Denied`]). A caller with scope `doppler.firehose`
//! or `logs.admin` is admin ([`ADMIN_SCOPES`]) and reads everything; any scope can be asked for with
//! [`Caller::has_scope`]. Anyone else may read a source id (an app GUID) only if a [`SourceAccess`]
//! check allows it ([`Authorizer::may_read`]): a static ACL file ([`StaticAcl`]), or a
//! Cloud-Controller-style API ([`CloudController`]: `GET /v3/apps/{id}` or
//! `GET /v3/service_instances/{id}` answering 200 with the caller's token, cached per token and id).
//!
//! What a refusal looks like on the wire is the service's choice: log-cache answers every [`Denied`]
//! with an empty 404, as the original's auth proxy does.
//!
//! Layout:
//! - this file: [`Authorizer`], [`Caller`], [`Denied`], the [`SourceAccess`] trait, token parsing.
//! - [`config`]: [`AuthConfig`] (the `auth.*` keys of a service's config), [`JwtKey`], [`Secret`].
//! - [`acl`]: the static ACL.
//! - [`cloud_controller`]: the CC checks, app-name lookups and their cache.
//! - [`uaa`]: UAA token keys, re-fetched on an unknown `kid`.
//! - [`https`]: the transport of the CC and UAA clients (hyper-util over rustls).

pub mod acl;
pub mod cloud_controller;
pub mod config;
pub mod https;
pub mod uaa;

use std::collections::{HashMap, HashSet};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

/// The attribute [`SourceAccess`] implementations need (`#[auth::async_trait]`).
pub use async_trait::async_trait;

pub use acl::StaticAcl;
pub use cloud_controller::CloudController;
pub use uaa::UaaKeys;

pub use config::{AuthConfig, JwtKey, Secret};

/// Scopes that make a caller admin (§6.8, §9.5).
pub const ADMIN_SCOPES: [&str; 2] = ["doppler.firehose", "logs.admin"];

/// Why the authorizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("invalid auth configuration: {0}")]
    Config(#[from] config::ConfigError),
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

/// Why a request is refused. log-cache answers all of them 404 with an empty body (§6.8).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("no bearer token")]
    NoToken,
    #[error("invalid token")]
    InvalidToken,
    #[error("source id not allowed")]
    NotAllowed,
}

/// A verified caller. Its `Debug` leaves the token out: a caller may be logged, its token never.
#[derive(Clone)]
pub struct Caller {
    /// Holds one of [`ADMIN_SCOPES`]: reads every source id.
    pub admin: bool,
    /// The token's `scope` claim.
    pub scopes: Vec<String>,
    /// The raw token, to call Cloud Controller on the caller's behalf.
    pub token: String,
    /// `user_id`, `sub` and `client_id` claims present in the token: the ACL's keys.
    pub identities: Vec<String>,
}

impl std::fmt::Debug for Caller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caller")
            .field("admin", &self.admin)
            .field("scopes", &self.scopes)
            .field("token", &"***")
            .field("identities", &self.identities)
            .finish()
    }
}

impl Caller {
    fn new(claims: Claims, token: &str) -> Self {
        let admin = claims.scope.iter().any(|s| ADMIN_SCOPES.contains(&s.as_str()));
        let identities = [claims.user_id, claims.sub, claims.client_id].into_iter().flatten().collect();
        Self { admin, scopes: claims.scope, token: token.to_string(), identities }
    }

    /// Whether the token grants `scope` (exact match, as UAA scopes are compared).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
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
#[async_trait]
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
    /// The authorizer an [`AuthConfig`] describes (validated here too): its keys, its UAA, and its
    /// checks, the ACL first.
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        config.validate()?;
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

    /// Verifies the token of a request: the value of its `Authorization` header, or of the cookie
    /// that carries the token, `bearer ` prefix (any case) optional. `None` or an empty value is
    /// [`Denied::NoToken`]; a token no key verifies (or expired) is [`Denied::InvalidToken`].
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

    /// Whether the caller may read `source_id` (an app GUID, a service instance GUID, or a system
    /// component's source id): admins always, anyone else when a configured check allows it.
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

    /// The GUIDs of the apps named `names` that the caller can see, by name, from every check that
    /// knows app names (log-cache's PromQL app-name expansion, §6.8).
    pub async fn app_guids_by_name(&self, caller: &Caller, names: &[String]) -> HashMap<String, Vec<String>> {
        let mut guids_by_name: HashMap<String, Vec<String>> = HashMap::new();
        for check in &self.checks {
            for (name, guids) in check.app_guids_by_name(caller, names).await {
                guids_by_name.entry(name).or_default().extend(guids);
            }
        }
        guids_by_name
    }
}

/// The token of an `Authorization` header: `bearer` and the whitespace after it stripped, in any
/// case (`(?i)^bearer\s+` in the original); a header without the prefix is the token itself.
pub fn bearer_token(header: &str) -> &str {
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
