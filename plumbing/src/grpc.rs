//! gRPC server plumbing shared by every component.

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

/// The incoming connections of an already-bound listener, with `TCP_NODELAY` set on each.
///
/// tonic ignores `Server::tcp_nodelay` when given its own incoming stream, and without it Nagle's
/// algorithm and the peer's delayed ACK hold the tail of a write for ~40 ms: that was the p99 of
/// every hop (BENCHMARKS.md §4).
pub fn incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}
