//! Authorization of the HTTP API, as the original's `log-cache-cf-auth-proxy` does it (§6.8); off by
//! default.
//!
//! The token comes only from the `Authorization` header (`bearer` prefix stripped case-insensitively)
//! and is a JWT verified locally against the configured keys, `exp` included. A token with scope
//! `doppler.firehose` or `logs.admin` is admin and reads everything. Anyone else may read a source id
//! only if a [`SourceAccess`] check allows it: a static ACL file, or a Cloud-Controller-style API
//! (`GET /v3/apps/{id}` or `GET /v3/service_instances/{id}` answering 200 with the caller's token,
//! cached per token and id). Every failure is answered 404 with an empty body, as the original does.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use parking_lot::Mutex;
use serde::Deserialize;

use crate::config::{AuthConfig, JwtKey};

/// Scopes that make a caller admin (§6.8, §9.5).
pub const ADMIN_SCOPES: [&str; 2] = ["doppler.firehose", "logs.admin"];

/// Most cached Cloud Controller answers; the cache is emptied when full.
const CC_CACHE_CAPACITY: usize = 10_000;

/// Time allowed for one Cloud Controller request.
const CC_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the authorizer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("jwt key with algorithm `{algorithm}`: {reason}")]
    Key { algorithm: String, reason: String },
    #[error("cannot read ACL file {path}: {reason}")]
    Acl { path: String, reason: String },
    #[error("invalid cc_url `{url}`: {reason}")]
    CcUrl { url: String, reason: String },
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
}

/// Verifies tokens and asks the configured [`SourceAccess`] checks.
pub struct Authorizer {
    keys: Vec<(DecodingKey, Validation)>,
    checks: Vec<Box<dyn SourceAccess>>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer").field("keys", &self.keys.len()).field("checks", &self.checks.len()).finish()
    }
}

impl Authorizer {
    pub fn from_config(config: &AuthConfig) -> Result<Self, AuthError> {
        let keys = config.jwt_keys.iter().map(decoding_key).collect::<Result<Vec<_>, _>>()?;
        let mut checks: Vec<Box<dyn SourceAccess>> = Vec::new();
        if let Some(path) = &config.acl_file {
            checks.push(Box::new(StaticAcl::load(path)?));
        }
        if let Some(url) = &config.cc_url {
            checks.push(Box::new(CloudController::new(url, config.cache_ttl())?));
        }
        Ok(Self { keys, checks })
    }

    /// An authorizer with explicit checks (tests, embedding).
    pub fn new(keys: &[JwtKey], checks: Vec<Box<dyn SourceAccess>>) -> Result<Self, AuthError> {
        let keys = keys.iter().map(decoding_key).collect::<Result<Vec<_>, _>>()?;
        Ok(Self { keys, checks })
    }

    /// Verifies the bearer token of a request.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Caller, Denied> {
        let header = authorization.ok_or(Denied::NoToken)?.trim();
        let token = match header.get(..7) {
            Some(prefix) if prefix.eq_ignore_ascii_case("bearer ") => header[7..].trim(),
            _ => header,
        };
        if token.is_empty() {
            return Err(Denied::NoToken);
        }
        for (key, validation) in &self.keys {
            if let Ok(data) = jsonwebtoken::decode::<Claims>(token, key, validation) {
                let claims = data.claims;
                let admin = claims.scope.iter().any(|s| ADMIN_SCOPES.contains(&s.as_str()));
                let identities = [claims.user_id, claims.sub, claims.client_id].into_iter().flatten().collect();
                return Ok(Caller { admin, token: token.to_string(), identities });
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
    let mut validation = Validation::new(algorithm);
    // UAA tokens carry audiences we are not configured with; the original checks only signature and exp.
    validation.validate_aud = false;
    validation.required_spec_claims = ["exp".to_string()].into_iter().collect();
    Ok((decoding, validation))
}

// === source ids of a query ===

/// The source ids a PromQL query asks for: the values of its `source_id` matchers with `=`, and with
/// `=~` split on `|` (§6.6, §6.8). A parse error is returned as the parser's message.
pub fn query_source_ids(query: &str) -> Result<Vec<String>, String> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::{self, Expr};

    fn selector(vs: &parser::VectorSelector, ids: &mut Vec<String>) {
        let groups = std::iter::once(&vs.matchers.matchers).chain(vs.matchers.or_matchers.iter());
        for matcher in groups.flatten() {
            if matcher.name != "source_id" {
                continue;
            }
            match matcher.op {
                MatchOp::Equal => ids.push(matcher.value.clone()),
                MatchOp::Re(_) => ids.extend(matcher.value.split('|').map(str::to_string)),
                MatchOp::NotEqual | MatchOp::NotRe(_) => {}
            }
        }
    }

    fn walk(expr: &Expr, ids: &mut Vec<String>) {
        match expr {
            Expr::Aggregate(e) => {
                walk(&e.expr, ids);
                if let Some(param) = &e.param {
                    walk(param, ids);
                }
            }
            Expr::Unary(e) => walk(&e.expr, ids),
            Expr::Binary(e) => {
                walk(&e.lhs, ids);
                walk(&e.rhs, ids);
            }
            Expr::Paren(e) => walk(&e.expr, ids),
            Expr::Subquery(e) => walk(&e.expr, ids),
            Expr::VectorSelector(vs) => selector(vs, ids),
            Expr::MatrixSelector(ms) => selector(&ms.vs, ids),
            Expr::Call(call) => call.args.args.iter().for_each(|arg| walk(arg, ids)),
            Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
        }
    }

    let expr = parser::parse(query)?;
    let mut ids = Vec::new();
    walk(&expr, &mut ids);
    ids.retain(|id| !id.is_empty());
    ids.sort();
    ids.dedup();
    Ok(ids)
}

// === impl StaticAcl ===

/// A static ACL: identity (`user_id`, `sub` or `client_id`) → source ids.
///
/// File format (TOML):
/// ```toml
/// [sources]
/// "user-guid" = ["app-guid-1", "app-guid-2"]
/// "my-client" = ["system-component"]
/// ```
#[derive(Debug, Default)]
pub struct StaticAcl {
    sources: HashMap<String, HashSet<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclFile {
    #[serde(default)]
    sources: HashMap<String, Vec<String>>,
}

impl StaticAcl {
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let error = |reason: String| AuthError::Acl { path: path.display().to_string(), reason };
        let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
        Self::parse(&text).map_err(error)
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let file: AclFile = toml::from_str(text).map_err(|e| e.to_string())?;
        Ok(Self { sources: file.sources.into_iter().map(|(k, v)| (k, v.into_iter().collect())).collect() })
    }
}

#[tonic::async_trait]
impl SourceAccess for StaticAcl {
    async fn may_read(&self, caller: &Caller, source_id: &str) -> bool {
        caller.identities.iter().any(|id| self.sources.get(id).is_some_and(|s| s.contains(source_id)))
    }

    async fn readable_sources(&self, caller: &Caller) -> HashSet<String> {
        caller.identities.iter().filter_map(|id| self.sources.get(id)).flatten().cloned().collect()
    }
}

// === impl CloudController ===

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, http_body_util::Empty<bytes::Bytes>>;

/// Asks a Cloud-Controller-style API whether the caller's token can see an app or service instance.
pub struct CloudController {
    base: String,
    client: HttpClient,
    ttl: Duration,
    /// (token, source id) → (when asked, allowed).
    cache: Mutex<HashMap<(String, String), (Instant, bool)>>,
}

#[derive(Deserialize)]
struct CcList {
    #[serde(default)]
    resources: Vec<CcResource>,
}

#[derive(Deserialize)]
struct CcResource {
    guid: String,
}

impl CloudController {
    pub fn new(base: &str, ttl: Duration) -> Result<Self, AuthError> {
        let base = base.trim_end_matches('/').to_string();
        base.parse::<http::Uri>().map_err(|e| AuthError::CcUrl { url: base.clone(), reason: e.to_string() })?;
        let client = Client::builder(TokioExecutor::new()).build_http();
        Ok(Self { base, client, ttl, cache: Mutex::new(HashMap::new()) })
    }

    /// `GET {base}{path}` with the caller's token: the status and body, or `None` on a transport error.
    async fn get(&self, path: &str, token: &str) -> Option<(u16, bytes::Bytes)> {
        let uri: http::Uri = format!("{}{path}", self.base).parse().ok()?;
        let request = http::Request::get(uri)
            .header(http::header::AUTHORIZATION, format!("bearer {token}"))
            .body(http_body_util::Empty::new())
            .ok()?;
        let call = async {
            let response = self.client.request(request).await.ok()?;
            let status = response.status().as_u16();
            let body = response.into_body().collect().await.ok()?.to_bytes();
            Some((status, body))
        };
        tokio::time::timeout(CC_TIMEOUT, call).await.ok().flatten()
    }

    fn cached(&self, key: &(String, String)) -> Option<bool> {
        let cache = self.cache.lock();
        let (at, allowed) = cache.get(key)?;
        (at.elapsed() < self.ttl).then_some(*allowed)
    }

    fn remember(&self, key: (String, String), allowed: bool) {
        let mut cache = self.cache.lock();
        if cache.len() >= CC_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(key, (Instant::now(), allowed));
    }

    async fn list_guids(&self, path: &str, token: &str) -> HashSet<String> {
        match self.get(path, token).await {
            Some((200, body)) => serde_json::from_slice::<CcList>(&body)
                .map(|list| list.resources.into_iter().map(|r| r.guid).collect())
                .unwrap_or_default(),
            _ => HashSet::new(),
        }
    }
}

/// Whether a source id may be put in a URL path as it is (CC ids are GUIDs or names).
fn is_path_safe(source_id: &str) -> bool {
    !source_id.is_empty() && source_id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.~".contains(&b))
}

#[tonic::async_trait]
impl SourceAccess for CloudController {
    async fn may_read(&self, caller: &Caller, source_id: &str) -> bool {
        if !is_path_safe(source_id) {
            return false;
        }
        let key = (caller.token.clone(), source_id.to_string());
        if let Some(allowed) = self.cached(&key) {
            return allowed;
        }
        let mut allowed = matches!(self.get(&format!("/v3/apps/{source_id}"), &caller.token).await, Some((200, _)));
        if !allowed {
            let path = format!("/v3/service_instances/{source_id}");
            allowed = matches!(self.get(&path, &caller.token).await, Some((200, _)));
        }
        self.remember(key, allowed);
        allowed
    }

    async fn readable_sources(&self, caller: &Caller) -> HashSet<String> {
        let mut all = self.list_guids("/v3/apps?per_page=5000", &caller.token).await;
        all.extend(self.list_guids("/v3/service_instances?per_page=5000", &caller.token).await);
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use jsonwebtoken::{encode, EncodingKey, Header};

    const SECRET: &str = "test-secret";

    fn token(scopes: &[&str], user: &str, exp_offset: i64) -> String {
        let exp =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after epoch").as_secs()
                as i64
                + exp_offset;
        let claims = serde_json::json!({ "scope": scopes, "user_id": user, "exp": exp });
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("encodes")
    }

    fn authorizer(acl: &str) -> Authorizer {
        let key = JwtKey { algorithm: "HS256".into(), key: Secret(SECRET.into()) };
        Authorizer::new(&[key], vec![Box::new(StaticAcl::parse(acl).expect("valid acl"))]).expect("valid key")
    }

    #[tokio::test]
    async fn admin_scopes_read_everything() {
        let auth = authorizer("");
        for scope in ADMIN_SCOPES {
            let caller = auth.authenticate(Some(&format!("Bearer {}", token(&[scope], "u", 60)))).expect("valid");
            assert!(caller.admin);
            assert!(auth.may_read(&caller, "anything").await);
            assert_eq!(auth.readable_sources(&caller).await, None);
        }
    }

    #[tokio::test]
    async fn bearer_prefix_is_case_insensitive_and_optional() {
        let auth = authorizer("");
        let t = token(&["logs.admin"], "u", 60);
        for header in [format!("bearer {t}"), format!("BEARER {t}"), t.clone()] {
            assert!(auth.authenticate(Some(&header)).is_ok(), "{header}");
        }
    }

    #[tokio::test]
    async fn expired_or_forged_tokens_are_refused() {
        let auth = authorizer("");
        assert_eq!(auth.authenticate(None).unwrap_err(), Denied::NoToken);
        let expired = token(&["logs.admin"], "u", -3600);
        assert_eq!(auth.authenticate(Some(&expired)).unwrap_err(), Denied::InvalidToken);
        let mut forged = token(&["logs.admin"], "u", 60);
        forged.push('x');
        assert_eq!(auth.authenticate(Some(&forged)).unwrap_err(), Denied::InvalidToken);
    }

    #[test]
    fn source_ids_are_extracted_from_every_selector() {
        let ids =
            query_source_ids(r#"sum(rate(cpu{source_id="a"}[1m])) / on() memory{source_id=~"b|c"}"#).expect("parses");
        assert_eq!(ids, vec!["a", "b", "c"]);
        assert_eq!(query_source_ids("up").expect("parses"), Vec::<String>::new());
        assert!(query_source_ids("sum(").is_err());
    }

    #[tokio::test]
    async fn non_admins_read_what_the_acl_allows() {
        let auth = authorizer("[sources]\nalice = [\"app-1\", \"app-2\"]\n");
        let alice = auth.authenticate(Some(&token(&["cloud_controller.read"], "alice", 60))).expect("valid");
        assert!(!alice.admin);
        assert!(auth.may_read(&alice, "app-1").await);
        assert!(!auth.may_read(&alice, "app-3").await);
        let bob = auth.authenticate(Some(&token(&[], "bob", 60))).expect("valid");
        assert!(!auth.may_read(&bob, "app-1").await);
        let visible = auth.readable_sources(&alice).await.expect("not admin");
        assert_eq!(visible, ["app-1", "app-2"].iter().map(|s| s.to_string()).collect());
    }
}
