//! Agent configuration: loopback defaults that run with no file at all.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use plumbing::tls::TlsFiles;
use serde::Deserialize;

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:3458";
pub const DEFAULT_UDP_ADDR: &str = "127.0.0.1:3457";
pub const DEFAULT_DOPPLER: &str = "127.0.0.1:8082";

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// v2 gRPC ingress address.
    pub grpc_addr: SocketAddr,
    /// v1 UDP dropsonde ingress address; `None` disables it.
    pub udp_addr: Option<SocketAddr>,
    /// Dopplers as `host:port`. Each is resolved every `resolve_interval`; a name that resolves to
    /// many addresses (a Kubernetes headless service) contributes all of them.
    pub dopplers: Vec<String>,
    /// How often Doppler names are re-resolved.
    #[serde(with = "plumbing::millis")]
    pub resolve_interval: Duration,
    /// Concurrent connections to Dopplers (spread over all of them).
    pub connections: NonZeroUsize,
    /// Envelopes held between ingress and egress; emitters never wait, the oldest is dropped beyond it.
    ///
    /// The original holds 10,000, about 0.2 s of the ~50k envelopes/s it carries on a 2-core host.
    /// We carry ten times that, so the same 0.2 s is 100,000: enough to ride out a Doppler's (or
    /// this host's) scheduling stalls of tens of milliseconds that 10,000 (20 ms at 500k/s) cannot.
    /// Memory is bounded by `ingress_buffer_bytes`, not by this count (BENCHMARKS.md §0).
    pub ingress_buffer: NonZeroUsize,
    /// Bytes (encoded envelopes) held between ingress and egress at most: beyond it the oldest are
    /// dropped as beyond `ingress_buffer`. A count alone bounds nothing when an envelope may be
    /// anything up to `max_message_bytes`.
    pub ingress_buffer_bytes: usize,
    /// Most envelopes per batch sent to a Doppler. Batches go out as soon as the diode holds
    /// anything, so no envelope waits for a batch to fill (the original flushes every 100 ms).
    pub batch_size: NonZeroUsize,
    /// A stream to a Doppler is closed cleanly and reopened after this long, so a Doppler that shuts
    /// down gracefully receives everything that was sent to it, and new Dopplers get picked up.
    #[serde(with = "plumbing::millis")]
    pub stream_max_age: Duration,
    /// A stream is also recycled after this many envelopes (the original recycles after ~100,000).
    pub stream_max_envelopes: u64,
    /// First and largest wait before retrying an unreachable Doppler.
    #[serde(with = "plumbing::millis")]
    pub backoff_initial: Duration,
    #[serde(with = "plumbing::millis")]
    pub backoff_max: Duration,
    /// Tags added to every envelope where absent (deployment, job, index, ip, and operator tags).
    pub tags: BTreeMap<String, String>,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// Most concurrent HTTP/2 streams per client connection (the server's SETTINGS): one
    /// connection cannot open streams without bound.
    pub max_streams_per_connection: u32,
    /// Mutual TLS for the ingress server.
    pub tls: Option<TlsFiles>,
    /// Mutual TLS towards Dopplers (server name `doppler_server_name`).
    pub doppler_tls: Option<TlsFiles>,
    pub doppler_server_name: String,
    /// How long a shutdown waits for buffered envelopes to reach a Doppler.
    #[serde(with = "plumbing::millis")]
    pub shutdown_grace: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_addr: DEFAULT_GRPC_ADDR.parse().expect("constant address parses"),
            udp_addr: Some(DEFAULT_UDP_ADDR.parse().expect("constant address parses")),
            dopplers: vec![DEFAULT_DOPPLER.to_string()],
            resolve_interval: Duration::from_secs(10),
            connections: NonZeroUsize::new(5).expect("non-zero constant"),
            ingress_buffer: NonZeroUsize::new(100_000).expect("non-zero constant"),
            ingress_buffer_bytes: 64 << 20,
            batch_size: NonZeroUsize::new(100).expect("non-zero constant"),
            stream_max_age: Duration::from_secs(1),
            stream_max_envelopes: 100_000,
            backoff_initial: Duration::from_millis(50),
            backoff_max: Duration::from_secs(5),
            tags: BTreeMap::new(),
            max_message_bytes: 10 * 1024 * 1024,
            max_streams_per_connection: 1024,
            tls: None,
            doppler_tls: None,
            doppler_server_name: "doppler".to_string(),
            shutdown_grace: Duration::from_secs(5),
        }
    }
}
