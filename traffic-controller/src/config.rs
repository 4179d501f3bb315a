//! Traffic-controller configuration: loopback defaults that run with no file at all.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use plumbing::tls::TlsFiles;
use serde::Deserialize;

pub const DEFAULT_RLP_ADDR: &str = "127.0.0.1:8090";
pub const DEFAULT_GATEWAY_ADDR: &str = "127.0.0.1:8088";
pub const DEFAULT_TC_ADDR: &str = "127.0.0.1:8081";
/// The RLP's buffer per client stream (§2.5).
pub const DEFAULT_STREAM_BUFFER: usize = 10_000;
/// Bytes buffered per client stream at most: 10,000 envelopes of ~800 bytes.
pub const DEFAULT_STREAM_BUFFER_BYTES: usize = 8 << 20;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Dopplers as `host:port`, each re-resolved every `resolve_interval` (a name may resolve to
    /// every Doppler, as a Kubernetes headless service does).
    pub dopplers: Vec<String>,
    #[serde(with = "plumbing::millis")]
    pub resolve_interval: Duration,
    /// Mutual TLS towards the Dopplers (server name `doppler`); plaintext when absent.
    pub doppler_tls: Option<TlsFiles>,
    pub rlp: RlpConfig,
    pub gateway: GatewayConfig,
    pub websocket: WebSocketConfig,
    /// Certificate and key of the public listeners (gateway and traffic controller); HTTPS/WSS
    /// when set, as the original serves them (§4.1, §5.1).
    pub public_tls: Option<PublicTls>,
    /// Bearer-token checks of the public listeners (§4.2, §5.3), as Log Cache's auth proxy takes
    /// them; off by default, when every request is allowed
    /// (`TRAFFIC_CONTROLLER_DISABLE_ACCESS_CONTROL`).
    pub auth: auth::AuthConfig,
    /// Start a public listener on a non-loopback address with auth off anyway (refused otherwise).
    pub allow_unauthenticated_public: bool,
    /// Log Cache gRPC address for `recentlogs` and `containermetrics` (§4.5); without it they
    /// answer as the original does when no Log Cache is configured.
    pub log_cache_addr: Option<String>,
    /// Mutual TLS towards Log Cache (server name `log-cache`).
    pub log_cache_tls: Option<TlsFiles>,
    /// The local agent's v2 gRPC address, where events such as a slow-consumer announcement go.
    pub agent_addr: Option<String>,
    /// Mutual TLS towards the agent (server name `metron`).
    pub agent_tls: Option<TlsFiles>,
    /// Largest gRPC message received from a Doppler, RLP or Log Cache (§2.7).
    pub max_message_bytes: usize,
    /// Most concurrent HTTP/2 streams per client connection (the server's SETTINGS): one
    /// connection cannot open streams without bound.
    pub max_streams_per_connection: u32,
    /// How long a shutdown waits for streams to flush.
    #[serde(with = "plumbing::millis")]
    pub shutdown_grace: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RlpConfig {
    /// `loggregator.v2.Egress` address.
    pub addr: SocketAddr,
    /// Mutual TLS of the RLP's server (clients verify the name `reverselogproxy`).
    pub tls: Option<TlsFiles>,
    /// Most concurrent client streams (`MAX_EGRESS_STREAMS`; BOSH default 1000).
    pub max_streams: usize,
    /// Envelopes buffered per client stream before the oldest is dropped.
    pub stream_buffer: usize,
    /// Bytes buffered per client stream before the oldest is dropped.
    pub stream_buffer_bytes: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GatewayConfig {
    /// `GET /v2/read` address.
    pub addr: SocketAddr,
    /// An RLP to read instead of this process's own (`host:port`), as the original gateway does.
    pub rlp_addr: Option<String>,
    /// Mutual TLS towards `rlp_addr` (server name `reverselogproxy`).
    pub rlp_tls: Option<TlsFiles>,
    /// A stream is closed with `event: closing` after this long (`STREAM_TIMEOUT`, 14 min).
    #[serde(with = "plumbing::millis")]
    pub stream_timeout: Duration,
    /// `event: heartbeat` after this long without data (15 s).
    #[serde(with = "plumbing::millis")]
    pub heartbeat_interval: Duration,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// HTTP/WebSocket address of the v1 traffic controller.
    pub addr: SocketAddr,
    /// Wait after a pong before the next ping (15 s).
    #[serde(with = "plumbing::millis")]
    pub ping_interval: Duration,
    /// A ping unanswered this long closes the connection with 1008 (30 s).
    #[serde(with = "plumbing::millis")]
    pub pong_timeout: Duration,
    /// A frame the client cannot take for this long closes it as a slow consumer (5 s).
    #[serde(with = "plumbing::millis")]
    pub slow_consumer_timeout: Duration,
    /// Frames buffered per connection before the oldest is dropped.
    pub connection_buffer: usize,
    /// Bytes buffered per connection before the oldest is dropped.
    pub connection_buffer_bytes: usize,
    /// Most concurrent WebSocket connections; more are answered 503.
    pub max_connections: usize,
    /// The system domain of `/set-cookie`'s `Domain=doppler.<system_domain>` (§4.3).
    pub system_domain: String,
}

/// PEM certificate chain and key of a public HTTPS listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dopplers: vec![doppler_default()],
            resolve_interval: Duration::from_secs(10),
            doppler_tls: None,
            rlp: RlpConfig::default(),
            gateway: GatewayConfig::default(),
            websocket: WebSocketConfig::default(),
            public_tls: None,
            auth: auth::AuthConfig::default(),
            allow_unauthenticated_public: false,
            log_cache_addr: None,
            log_cache_tls: None,
            agent_addr: None,
            agent_tls: None,
            max_message_bytes: 10 << 20,
            max_streams_per_connection: 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

fn doppler_default() -> String {
    "127.0.0.1:8082".to_string()
}

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("constant address parses")
}

impl Default for RlpConfig {
    fn default() -> Self {
        Self {
            addr: addr(DEFAULT_RLP_ADDR),
            tls: None,
            max_streams: 1000,
            stream_buffer: DEFAULT_STREAM_BUFFER,
            stream_buffer_bytes: DEFAULT_STREAM_BUFFER_BYTES,
        }
    }
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            addr: addr(DEFAULT_GATEWAY_ADDR),
            rlp_addr: None,
            rlp_tls: None,
            stream_timeout: Duration::from_secs(14 * 60),
            heartbeat_interval: Duration::from_secs(15),
        }
    }
}

impl Default for WebSocketConfig {
    fn default() -> Self {
        Self {
            addr: addr(DEFAULT_TC_ADDR),
            ping_interval: Duration::from_secs(15),
            pong_timeout: Duration::from_secs(30),
            slow_consumer_timeout: Duration::from_secs(5),
            connection_buffer: 10_000,
            connection_buffer_bytes: 4 << 20,
            max_connections: 1000,
            system_domain: "localhost".to_string(),
        }
    }
}
