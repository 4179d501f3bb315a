//! Doppler configuration: loopback defaults that run with no file at all.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::time::Duration;

use plumbing::tls::TlsFiles;
use serde::Deserialize;

pub const DEFAULT_GRPC_ADDR: &str = "127.0.0.1:8082";
/// Doppler v2 egress diode size of the original (PROTOCOLS.md §2.5).
pub const DEFAULT_SUBSCRIPTION_BUFFER: usize = 1000;
/// Bytes buffered per subscription at most: 1000 envelopes of 4 KiB. Typical envelopes (under
/// 1 KiB) meet the count first; this keeps a slow subscriber of large ones from holding up to
/// 1000 × `max_message_bytes`.
pub const DEFAULT_SUBSCRIPTION_BUFFER_BYTES: usize = 4 << 20;
/// gRPC max receive message of the original (§2.7).
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 10 * 1024 * 1024;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the gRPC server (v2 Ingress and Egress).
    pub grpc_addr: SocketAddr,
    /// Envelopes buffered per subscription; a slow subscriber loses the oldest beyond this.
    pub subscription_buffer: NonZeroUsize,
    /// Bytes (encoded envelopes) buffered per subscription at most; the oldest go beyond it too.
    pub subscription_buffer_bytes: usize,
    /// Most envelopes per egress batch. Batches go out as soon as a subscription holds anything,
    /// so the original's 100 ms flush interval is met without a setting of its own.
    pub batch_size: NonZeroUsize,
    /// Largest gRPC message accepted.
    pub max_message_bytes: usize,
    /// Most concurrent egress subscriptions; more are refused with RESOURCE_EXHAUSTED.
    pub max_subscriptions: usize,
    /// Most concurrent HTTP/2 streams per client connection.
    pub max_streams_per_connection: u32,
    /// How long a shutdown waits for ingress streams to end and egress buffers to flush.
    #[serde(with = "plumbing::millis")]
    pub shutdown_grace: Duration,
    /// Mutual TLS; plaintext when absent.
    pub tls: Option<TlsFiles>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grpc_addr: DEFAULT_GRPC_ADDR.parse().expect("constant address parses"),
            subscription_buffer: NonZeroUsize::new(DEFAULT_SUBSCRIPTION_BUFFER).expect("non-zero constant"),
            subscription_buffer_bytes: DEFAULT_SUBSCRIPTION_BUFFER_BYTES,
            batch_size: NonZeroUsize::new(100).expect("non-zero constant"),
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_subscriptions: 1000,
            max_streams_per_connection: 1024,
            shutdown_grace: Duration::from_secs(5),
            tls: None,
        }
    }
}
