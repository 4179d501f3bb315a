//! Log Cache configuration: loopback defaults that run with no file at all (STYLE.md §4).
//!
//! Durations in files are integer milliseconds (`query_timeout = 10000`).

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use auth::AuthConfig;
use plumbing::tls::TlsFiles;
use serde::Deserialize;

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
    #[error("auth.{0}")]
    Auth(#[from] auth::config::ConfigError),
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
    #[serde(with = "plumbing::millis")]
    pub query_timeout: Duration,
    /// PromQL bound on samples touched by one query.
    pub max_samples: usize,
    /// Largest gRPC message accepted or sent.
    pub max_message_bytes: usize,
    /// Most concurrent HTTP/2 streams per client connection (the server's SETTINGS): one
    /// connection cannot open streams without bound.
    pub max_streams_per_connection: u32,
    /// Mutual TLS of the gRPC server and of the clients to peer nodes; plaintext when absent.
    pub tls: Option<TlsFiles>,
    /// How long a shutdown waits for in-flight work.
    #[serde(with = "plumbing::millis")]
    pub shutdown_grace: Duration,
    pub nozzle: NozzleConfig,
    pub syslog: SyslogConfig,
    /// Authorization of the HTTP API (§6.8, the `auth` crate); off by default.
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
            max_streams_per_connection: 1024,
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
        Ok(self.auth.validate()?)
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
    #[serde(with = "plumbing::millis")]
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
    #[serde(with = "plumbing::millis")]
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
    fn auth_section_keeps_its_keys_and_names_its_field() {
        let text = "[auth]\nenabled = true\njwt_keys = [{ algorithm = \"HS256\", key = \"s\" }]\ncc_cache_ttl = 1500\n";
        let config: Config = toml::from_str(text).expect("parses");
        assert!(config.auth.enabled);
        assert_eq!(config.auth.jwt_keys[0].algorithm, "HS256");
        assert_eq!(config.auth.cache_ttl(), Duration::from_millis(1500));
        config.validate().expect("valid");
        let no_keys: Config = toml::from_str("[auth]\nenabled = true\n").expect("parses");
        let error = no_keys.validate().unwrap_err();
        assert!(matches!(error, ConfigError::Auth(_)), "{error}");
        assert!(error.to_string().starts_with("auth.jwt_keys: "), "{error}");
    }
}
