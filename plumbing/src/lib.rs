//! Shared machinery of every component: the pieces that must behave the same everywhere.
//!
//! Layout:
//! - [`admission`]: the bounded pool of connections not yet past their handshake or first request,
//!   where a newcomer evicts the oldest.
//! - [`backoff`]: sleeping between consecutive errors of a receive or accept loop.
//! - [`buffer`]: a bounded drop-oldest envelope buffer that allocates only as it fills (RLP streams).
//! - [`diode`]: the bounded many-writer / one-reader ring buffer that drops the oldest and counts it.
//! - [`telemetry`]: a tiny Prometheus registry (the original's counter names: `ingress`, `egress`,
//!   `dropped{direction}`, ...) and the `/metrics` HTTP server.
//! - [`promtext`]: reading a Prometheus text exposition (what `/metrics` serves) into samples.
//! - [`exposure`]: the warning for a listener off loopback without TLS or auth.
//! - [`http_server`]: the HTTP server under every axum router, with connection, pending and
//!   header-read limits.
//! - [`grpc`]: accepted and dialled gRPC connections: `TCP_NODELAY`, buffered reads, TLS.
//! - [`tls`]: mutual-TLS configuration from CA/cert/key files for tonic servers and clients.
//! - [`tls_stream`]: TLS connections whose records we seal and open ourselves after rustls's
//!   handshake (every gRPC hop of the project).
//! - [`subscriber`]: one reconnecting `BatchedReceiver` subscription with backoff (nozzle, RLP,
//!   load generator).
//! - [`millis`]: config durations as integer milliseconds, for every component's `Config`.
//! - [`shutdown`]: turning a shutdown future into a cancellation token, and bounded drains.
//! - `test_support` (feature `test-support`): `wait_until`, in-process test certificates.

pub mod admission;
pub mod backoff;
pub mod buffer;
pub mod diode;
pub mod exposure;
pub mod grpc;
pub mod http_server;
pub mod millis;
pub mod promtext;
pub mod shutdown;
pub mod subscriber;
pub mod telemetry;
pub mod tls;
pub mod tls_stream;

#[cfg(any(test, feature = "test-support"))]
pub mod test_support;

pub use diode::Diode;
pub use telemetry::{Counter, Gauge, Registry};
