//! The `[auth]` section a service embeds in its own config (log-cache's `auth.*` keys): which keys
//! verify tokens, and which access checks decide what a non-admin may read. Durations are integer
//! milliseconds, as in every component's config.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::https::ServerVerification;

/// How long a Cloud Controller answer is cached when `cc_cache_ttl` is unset (0).
pub const DEFAULT_CC_CACHE_TTL: Duration = Duration::from_secs(60);

/// Why an auth section was refused; names the field (without the section's prefix).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct ConfigError {
    pub field: &'static str,
    pub reason: String,
}

/// A string whose `Debug` never shows it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// Authorization of an HTTP API (§6.8); off by default.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub enabled: bool,
    /// Keys bearer JWTs are verified against (any one may match).
    pub jwt_keys: Vec<JwtKey>,
    /// Static ACL: a TOML file `[sources]` mapping a user id (JWT `user_id` or `sub`) or a client id
    /// (`client_id`) to the source ids it may read.
    pub acl_file: Option<PathBuf>,
    /// Base URL of a Cloud-Controller-style API (`http://host:port` or `https://host:port`): a source
    /// id is allowed when `GET /v3/apps/{id}` or `GET /v3/service_instances/{id}` answers 200 with the
    /// caller's token; PromQL app names are looked up with `GET /v3/apps?names=…`.
    pub cc_url: Option<String>,
    /// CA certificates (PEM) that sign the certificate of an `https` `cc_url`.
    pub cc_ca_file: Option<PathBuf>,
    /// Accept any certificate from an `https` `cc_url` (instead of `cc_ca_file`). For test setups only.
    pub cc_skip_cert_verify: bool,
    /// Base URL of UAA (`http://…` or `https://…`): tokens are also verified against the keys it
    /// publishes on `/token_keys` (RS256, HS256), chosen by the token's `kid`.
    pub uaa_url: Option<String>,
    /// CA certificates (PEM) that sign the certificate of an `https` `uaa_url`.
    pub uaa_ca_file: Option<PathBuf>,
    /// Accept any certificate from an `https` `uaa_url` (instead of `uaa_ca_file`). For test setups only.
    pub uaa_skip_cert_verify: bool,
    /// How long a CC answer is cached per (token, source id).
    #[serde(with = "plumbing::millis")]
    pub cc_cache_ttl: Duration,
    /// Accept `http://` for `cc_url` and `uaa_url`. For test setups only: HS256 keys fetched from UAA
    /// in cleartext let whoever is on the path mint admin tokens, and CC answers decide who reads what.
    pub allow_insecure_http: bool,
}

impl AuthConfig {
    /// Checks the fields that can be wrong together; nothing when auth is off.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.jwt_keys.is_empty() && self.uaa_url.is_none() {
            return Err(ConfigError { field: "jwt_keys", reason: "at least one key (or uaa_url) is needed".into() });
        }
        let cc = ["cc_url", "cc_ca_file", "cc_skip_cert_verify"];
        let insecure = self.allow_insecure_http;
        validate_url(cc, self.cc_url.as_deref(), self.cc_ca_file.is_some(), self.cc_skip_cert_verify, insecure)?;
        let uaa = ["uaa_url", "uaa_ca_file", "uaa_skip_cert_verify"];
        validate_url(uaa, self.uaa_url.as_deref(), self.uaa_ca_file.is_some(), self.uaa_skip_cert_verify, insecure)
    }

    /// How to verify an `https` `cc_url`; `None` for `http` (checked by `validate`).
    pub fn cc_server_verification(&self) -> Option<ServerVerification> {
        server_verification(self.cc_ca_file.as_ref(), self.cc_skip_cert_verify)
    }

    /// How to verify an `https` `uaa_url`; `None` for `http` (checked by `validate`).
    pub fn uaa_server_verification(&self) -> Option<ServerVerification> {
        server_verification(self.uaa_ca_file.as_ref(), self.uaa_skip_cert_verify)
    }

    pub fn cache_ttl(&self) -> Duration {
        if self.cc_cache_ttl.is_zero() {
            DEFAULT_CC_CACHE_TTL
        } else {
            self.cc_cache_ttl
        }
    }
}

fn server_verification(ca_file: Option<&PathBuf>, skip_verify: bool) -> Option<ServerVerification> {
    match (ca_file, skip_verify) {
        (Some(path), _) => Some(ServerVerification::CaFile(path.clone())),
        (None, true) => Some(ServerVerification::SkipVerify),
        (None, false) => None,
    }
}

/// An `https://` URL of the auth section (or `http://` when `allow_http`): https needs exactly one of
/// a CA file and an explicit skip of verification; http takes neither. `fields` names the URL, CA and
/// skip fields.
fn validate_url(
    fields: [&'static str; 3],
    url: Option<&str>,
    ca_file: bool,
    skip_verify: bool,
    allow_http: bool,
) -> Result<(), ConfigError> {
    let [url_field, ca_field, skip_field] = fields;
    let error = |field: &'static str, reason: String| ConfigError { field, reason };
    let https = match url {
        Some(url) if url.starts_with("https://") => true,
        Some(url) if url.starts_with("http://") && allow_http => false,
        Some(url) if url.starts_with("http://") => {
            return Err(error(
                url_field,
                format!("`{url}`: must be https:// (http:// only with allow_insecure_http, for test setups)"),
            ))
        }
        Some(url) => return Err(error(url_field, format!("`{url}`: must start with https://"))),
        None if ca_file || skip_verify => {
            return Err(error(url_field, format!("needed with {ca_field} or {skip_field}")))
        }
        None => return Ok(()),
    };
    match (https, ca_file, skip_verify) {
        (true, true, true) => Err(error(skip_field, format!("set together with {ca_field}"))),
        (true, false, false) => Err(error(ca_field, format!("needed for an https {url_field} (or {skip_field})"))),
        (false, true, _) | (false, _, true) => {
            Err(error(url_field, format!("is http:// but {ca_field} or {skip_field} is set")))
        }
        _ => Ok(()),
    }
}

/// One JWT verification key.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtKey {
    /// `RS256`, `RS384`, `RS512`, `ES256`, `ES384`, `HS256`, `HS384` or `HS512`.
    pub algorithm: String,
    /// PEM public key (RS*/ES*) or shared secret (HS*).
    pub key: Secret,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn https_cloud_controller_needs_a_ca_file_or_an_explicit_skip() {
        let auth = |url: Option<&str>, ca: Option<&str>, skip: bool| AuthConfig {
            enabled: true,
            jwt_keys: vec![JwtKey { algorithm: "HS256".into(), key: Secret("s".into()) }],
            cc_url: url.map(str::to_string),
            cc_ca_file: ca.map(PathBuf::from),
            cc_skip_cert_verify: skip,
            allow_insecure_http: true,
            ..AuthConfig::default()
        };
        let field = |config: AuthConfig| config.validate().err().map(|error| error.field);
        assert_eq!(field(auth(Some("http://cc"), None, false)), None);
        assert_eq!(field(auth(Some("https://cc"), Some("/ca.pem"), false)), None);
        assert_eq!(field(auth(Some("https://cc"), None, true)), None);
        assert_eq!(field(auth(Some("https://cc"), None, false)), Some("cc_ca_file"));
        assert_eq!(field(auth(Some("https://cc"), Some("/ca.pem"), true)), Some("cc_skip_cert_verify"));
        assert_eq!(field(auth(Some("http://cc"), Some("/ca.pem"), false)), Some("cc_url"));
        assert_eq!(field(auth(Some("ftp://cc"), None, false)), Some("cc_url"));
        assert_eq!(field(auth(None, None, true)), Some("cc_url"));
        let uaa = AuthConfig { uaa_url: Some("https://uaa".into()), ..auth(None, None, false) };
        assert_eq!(field(uaa.clone()), Some("uaa_ca_file"));
        assert_eq!(field(AuthConfig { uaa_skip_cert_verify: true, ..uaa.clone() }), None);
        assert_eq!(field(AuthConfig { jwt_keys: Vec::new(), uaa_url: Some("http://uaa".into()), ..uaa }), None);
        assert_eq!(field(AuthConfig { jwt_keys: Vec::new(), ..auth(None, None, false) }), Some("jwt_keys"));
    }

    #[test]
    fn cleartext_uaa_and_cloud_controller_are_refused_unless_allowed() {
        let base = AuthConfig {
            enabled: true,
            jwt_keys: vec![JwtKey { algorithm: "HS256".into(), key: Secret("s".into()) }],
            ..AuthConfig::default()
        };
        let cc = AuthConfig { cc_url: Some("http://cc:9022".into()), ..base.clone() };
        let error = cc.validate().unwrap_err();
        assert_eq!(error.field, "cc_url");
        assert!(error.reason.contains("must be https://"), "{error}");
        let uaa = AuthConfig { uaa_url: Some("http://uaa:8080".into()), ..base.clone() };
        assert_eq!(uaa.validate().unwrap_err().field, "uaa_url");
        assert_eq!(AuthConfig { allow_insecure_http: true, ..cc }.validate(), Ok(()));
        assert_eq!(AuthConfig { allow_insecure_http: true, ..uaa }.validate(), Ok(()));
        let https = AuthConfig { uaa_url: Some("https://uaa".into()), uaa_ca_file: Some("/ca.pem".into()), ..base };
        assert_eq!(https.validate(), Ok(()));
    }

    #[test]
    fn disabled_auth_needs_nothing() {
        assert_eq!(AuthConfig::default().validate(), Ok(()));
    }

    #[test]
    fn secrets_are_not_printed() {
        let key = JwtKey { algorithm: "HS256".into(), key: Secret("hunter2".into()) };
        assert!(!format!("{key:?}").contains("hunter2"));
    }
}
