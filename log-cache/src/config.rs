//! Log Cache configuration: loopback defaults that run with no file at all (STYLE.md §4).
//!
//! Durations in files are integer milliseconds (`query_timeout = 10000`).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use plumbing::tls::TlsFiles;
use serde::Deserialize;

use crate::auth::https::ServerVerification;

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:8080";
pub const DEFAULT_HTTP_ADDR: &str = "127.0.0.1:8083";
pub const DEFAULT_SYSLOG_ADDR: &str = "127.0.0.1:6067";
/// Default share of the machine's memory the store may account for (§6.4 `MEMORY_LIMIT_PERCENT`).
pub const DEFAULT_MEMORY_LIMIT_PERCENT: f64 = 50.0;
/// PromQL query timeout of the original (§6.4 `QUERY_TIMEOUT`).
pub const DEFAULT_QUERY_TIMEOUT: Duration = Duration::from_secs(10);
/// PromQL bound on samples touched by one query (§6.6 MaxSamples).
pub const DEFAULT_MAX_SAMPLES: usize = 50_000_000;
/// Largest syslog message accepted (§6.10).
pub const DEFAULT_SYSLOG_MAX_MESSAGE_BYTES: usize = 65 * 1024;
/// Largest gRPC message accepted or sent.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;
/// Shard id of the nozzle's subscriptions: every log-cache node shares one copy of the firehose.
pub const DEFAULT_NOZZLE_SHARD_ID: &str = "log-cache";
/// Server name the nozzle verifies on Doppler / RLP certificates (§2.7).
pub const DEFAULT_NOZZLE_SERVER_NAME: &str = "doppler";
/// Server name verified on peer log-cache nodes (§2.7).
pub const LOG_CACHE_SERVER_NAME: &str = "log-cache";

/// Why a configuration was refused. Names the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("node_index ({index}) must be below the number of node_addrs ({count})")]
    NodeIndex { index: usize, count: usize },
    #[error("memory_limit_percent ({0}) must be in (0, 100]")]
    MemoryPercent(f64),
    #[error("memory_limit_bytes must be greater than zero")]
    MemoryBytes,
    #[error("cannot read /proc/meminfo for memory_limit_percent: {0}")]
    MemInfo(String),
    #[error("auth.{field}: {reason}")]
    Auth { field: &'static str, reason: String },
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

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// gRPC: `logcache.v1.Ingress`, `Egress`, `PromQLQuerier`.
    pub grpc_addr: SocketAddr,
    /// HTTP JSON API (`/api/v1/...`).
    pub http_addr: SocketAddr,
    /// Envelopes kept per source; the oldest goes first.
    pub max_per_source: NonZeroUsize,
    /// Memory cap of the store in bytes; overrides `memory_limit_percent` when set.
    pub memory_limit_bytes: Option<u64>,
    /// Memory cap of the store as a percentage of the machine's memory (`MemTotal`).
    pub memory_limit_percent: f64,
    /// gRPC addresses (`host:port`) of every log-cache node, this one included; empty = one node.
    pub node_addrs: Vec<String>,
    /// Index of this node in `node_addrs`.
    pub node_index: usize,
    /// PromQL query timeout.
    #[serde(with = "millis")]
    pub query_timeout: Duration,
    /// PromQL bound on samples touched by one query.
    pub max_samples: usize,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Mutual TLS of the gRPC server and of the clients to peer nodes; plaintext when absent.
    pub tls: Option<TlsFiles>,
    /// How long a shutdown waits for in-flight work.
    #[serde(with = "millis")]
    pub shutdown_grace: Duration,
    pub nozzle: NozzleConfig,
    pub syslog: SyslogConfig,
    pub auth: AuthConfig,
    /// The original auth proxy's `PROMQL_UNIMPLEMENTED`: `/api/v1/query` and `/api/v1/query_range`
    /// answer 501 "Metrics not available" (§6.8), for deployments that keep PromQL off.
    pub promql_unimplemented: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_addr: DEFAULT_GRPC_ADDR.parse().expect("constant address parses"),
            http_addr: DEFAULT_HTTP_ADDR.parse().expect("constant address parses"),
            max_per_source: NonZeroUsize::new(crate::store::DEFAULT_MAX_PER_SOURCE).expect("non-zero constant"),
            memory_limit_bytes: None,
            memory_limit_percent: DEFAULT_MEMORY_LIMIT_PERCENT,
            node_addrs: Vec::new(),
            node_index: 0,
            query_timeout: DEFAULT_QUERY_TIMEOUT,
            max_samples: DEFAULT_MAX_SAMPLES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            tls: None,
            shutdown_grace: Duration::from_secs(5),
            nozzle: NozzleConfig::default(),
            syslog: SyslogConfig::default(),
            auth: AuthConfig::default(),
            promql_unimplemented: false,
        }
    }
}

impl Config {
    /// Checks the fields that can be wrong together; called by `LogCache::bind`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.node_addrs.is_empty() && self.node_index >= self.node_addrs.len() {
            return Err(ConfigError::NodeIndex { index: self.node_index, count: self.node_addrs.len() });
        }
        match self.memory_limit_bytes {
            Some(0) => return Err(ConfigError::MemoryBytes),
            Some(_) => {}
            None if !(self.memory_limit_percent > 0.0 && self.memory_limit_percent <= 100.0) => {
                return Err(ConfigError::MemoryPercent(self.memory_limit_percent));
            }
            None => {}
        }
        self.auth.validate()
    }

    /// The store's memory cap in bytes: `memory_limit_bytes`, or the percentage of `MemTotal`.
    pub fn memory_limit(&self) -> Result<u64, ConfigError> {
        if let Some(bytes) = self.memory_limit_bytes {
            return Ok(bytes);
        }
        let meminfo = std::fs::read_to_string("/proc/meminfo").map_err(|e| ConfigError::MemInfo(e.to_string()))?;
        let total = mem_total_bytes(&meminfo).ok_or_else(|| ConfigError::MemInfo("no MemTotal line".into()))?;
        Ok((total as f64 * self.memory_limit_percent / 100.0) as u64)
    }
}

/// `MemTotal` of a `/proc/meminfo` text, in bytes.
fn mem_total_bytes(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    let mut fields = line.split_whitespace().skip(1);
    let value: u64 = fields.next()?.parse().ok()?;
    let factor = match fields.next() {
        Some("kB") | Some("KB") => 1024,
        None => 1,
        Some(_) => return None,
    };
    value.checked_mul(factor)
}

/// The nozzle: subscriptions to Dopplers or an RLP (§6.10 "older" path).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NozzleConfig {
    /// gRPC addresses (`host:port`) of every Doppler, or of the RLPs; empty = no nozzle.
    pub addrs: Vec<String>,
    /// Shard id of the subscriptions (§2.5).
    pub shard_id: String,
    /// Mutual TLS to the Dopplers / RLPs; plaintext when absent.
    pub tls: Option<TlsFiles>,
    /// Server name verified on their certificates.
    pub server_name: String,
    /// Longest wait between reconnection attempts (the backoff doubles from 50 ms up to this).
    #[serde(with = "millis")]
    pub max_backoff: Duration,
}

impl Default for NozzleConfig {
    fn default() -> Self {
        Self {
            addrs: Vec::new(),
            shard_id: DEFAULT_NOZZLE_SHARD_ID.into(),
            tls: None,
            server_name: DEFAULT_NOZZLE_SERVER_NAME.into(),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The RFC 5424 syslog server (§6.10).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyslogConfig {
    pub enabled: bool,
    pub addr: SocketAddr,
    /// TLS; plaintext when absent. Client certificates are required when `tls` is set.
    pub tls: Option<TlsFiles>,
    /// Largest message accepted; a larger frame closes the connection.
    pub max_message_bytes: usize,
    /// A connection silent for this long is closed.
    #[serde(with = "millis")]
    pub idle_timeout: Duration,
    /// Most concurrent connections.
    pub max_connections: usize,
}

impl Default for SyslogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            addr: DEFAULT_SYSLOG_ADDR.parse().expect("constant address parses"),
            tls: None,
            max_message_bytes: DEFAULT_SYSLOG_MAX_MESSAGE_BYTES,
            idle_timeout: Duration::from_secs(120),
            max_connections: 1024,
        }
    }
}

/// Authorization of the HTTP API (§6.8); off by default.
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
    #[serde(with = "millis")]
    pub cc_cache_ttl: Duration,
}

impl AuthConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !self.enabled {
            return Ok(());
        }
        if self.jwt_keys.is_empty() && self.uaa_url.is_none() {
            return Err(ConfigError::Auth {
                field: "jwt_keys",
                reason: "at least one key (or uaa_url) is needed".into(),
            });
        }
        let cc = ["cc_url", "cc_ca_file", "cc_skip_cert_verify"];
        validate_url(cc, self.cc_url.as_deref(), self.cc_ca_file.is_some(), self.cc_skip_cert_verify)?;
        let uaa = ["uaa_url", "uaa_ca_file", "uaa_skip_cert_verify"];
        validate_url(uaa, self.uaa_url.as_deref(), self.uaa_ca_file.is_some(), self.uaa_skip_cert_verify)
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
            Duration::from_secs(60)
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

/// An `http://` or `https://` URL of the auth section: https needs exactly one of a CA file and an
/// explicit skip of verification; http takes neither. `fields` names the URL, CA and skip fields.
fn validate_url(
    fields: [&'static str; 3],
    url: Option<&str>,
    ca_file: bool,
    skip_verify: bool,
) -> Result<(), ConfigError> {
    let [url_field, ca_field, skip_field] = fields;
    let error = |field: &'static str, reason: String| ConfigError::Auth { field, reason };
    let https = match url {
        Some(url) if url.starts_with("https://") => true,
        Some(url) if url.starts_with("http://") => false,
        Some(url) => return Err(error(url_field, format!("`{url}`: must start with http:// or https://"))),
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

/// Durations as integer milliseconds.
mod millis {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_loopback_ports_of_the_original() {
        let config = Config::default();
        assert_eq!(config.grpc_addr.to_string(), "127.0.0.1:8080");
        assert_eq!(config.http_addr.to_string(), "127.0.0.1:8083");
        assert_eq!(config.syslog.addr.to_string(), "127.0.0.1:6067");
        assert_eq!(config.max_per_source.get(), 100_000);
        assert_eq!(config.query_timeout, Duration::from_secs(10));
        assert!(!config.auth.enabled);
        config.validate().expect("defaults are valid");
    }

    #[test]
    fn meminfo_total_is_read_in_bytes() {
        let text = "MemTotal:       24576000 kB\nMemFree:  1 kB\n";
        assert_eq!(mem_total_bytes(text), Some(24_576_000 * 1024));
        assert_eq!(mem_total_bytes("nothing"), None);
    }

    #[test]
    fn percent_limit_is_a_share_of_the_machine() {
        let config = Config { memory_limit_percent: 10.0, ..Config::default() };
        let limit = config.memory_limit().expect("meminfo readable");
        assert!(limit > 0);
        let bytes = Config { memory_limit_bytes: Some(1234), ..Config::default() };
        assert_eq!(bytes.memory_limit().expect("bytes"), 1234);
    }

    #[test]
    fn node_index_outside_node_addrs_is_refused() {
        let config = Config { node_addrs: vec!["a:1".into()], node_index: 1, ..Config::default() };
        assert!(matches!(config.validate(), Err(ConfigError::NodeIndex { index: 1, count: 1 })));
    }

    #[test]
    fn https_cloud_controller_needs_a_ca_file_or_an_explicit_skip() {
        let auth = |url: Option<&str>, ca: Option<&str>, skip: bool| AuthConfig {
            enabled: true,
            jwt_keys: vec![JwtKey { algorithm: "HS256".into(), key: Secret("s".into()) }],
            cc_url: url.map(str::to_string),
            cc_ca_file: ca.map(PathBuf::from),
            cc_skip_cert_verify: skip,
            ..AuthConfig::default()
        };
        let field = |config: AuthConfig| match config.validate() {
            Err(ConfigError::Auth { field, .. }) => Some(field),
            Ok(()) => None,
            Err(other) => panic!("unexpected error {other}"),
        };
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
    fn secrets_are_not_printed() {
        let key = JwtKey { algorithm: "HS256".into(), key: Secret("hunter2".into()) };
        assert!(!format!("{key:?}").contains("hunter2"));
    }
}
