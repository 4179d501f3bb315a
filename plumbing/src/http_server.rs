//! The HTTP server under every axum router of the project (log-cache's HTTP API, `/metrics`, the
//! RLP gateway and the traffic controller), plain or HTTPS, with the limits `axum::serve` lacks:
//!
//! - **Pending connections** (accepted, in their TLS handshake or before their first complete
//!   request head) are an [`Admissions`] pool: at most [`HttpLimits::max_pending`], a newcomer
//!   evicting the oldest, so silent and trickling peers cannot lock real clients out.
//! - **Request heads** must arrive within [`HttpLimits::header_read_timeout`] (hyper's own
//!   timer), the first and every later one on a kept-alive connection; TLS handshakes within
//!   [`HttpLimits::handshake_timeout`].
//! - **Connections** are at most [`HttpLimits::max_connections`]; past that a new one is closed at
//!   once and counted, rather than queued behind the others.
//! - **Writes** to a peer that takes no bytes for [`HttpLimits::write_stall_timeout`] fail, and
//!   the connection with them: a client that asks for a large answer and never reads it would
//!   otherwise hold its connection (and the response in memory) for ever.
//!
//! Streaming responses (SSE, WebSocket upgrades) are not timed as a whole: they are bounded by their
//! own endpoints' rules, and by the write stall timeout like everything else. Handlers see the peer as `ConnectInfo<SocketAddr>`.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;

use crate::admission::Admissions;
use crate::backoff::ErrorBackoff;
use crate::{Counter, Registry};

/// The bounds of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    pub max_connections: usize,
    pub max_pending: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub write_stall_timeout: Duration,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            max_connections: 4096,
            max_pending: 256,
            header_read_timeout: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            write_stall_timeout: Duration::from_secs(30),
        }
    }
}

/// What a listener counts: connections closed at the cap, and pending ones evicted.
#[derive(Clone, Default)]
pub struct HttpMetrics {
    pub refused: Counter,
    pub evicted: Counter,
}

impl HttpMetrics {
    /// Registers the counters of the listener `listener` (e.g. `gateway`, `metrics`).
    pub fn register(registry: &Registry, listener: &str) -> Self {
        let labels = [("listener", listener)];
        Self {
            // metric-documentation: HTTP connections closed on arrival because the listener was at max_connections.
            refused: registry.counter(
                "http_connections_refused",
                "HTTP connections closed at once: the listener was at its connection limit",
                &labels,
            ),
            // metric-documentation: HTTP connections dropped before their first request to make room for newer ones.
            evicted: registry.counter(
                "http_pending_evicted",
                "HTTP connections dropped before their first request to admit newer ones",
                &labels,
            ),
        }
    }
}

/// Serves `router` on `listener` (HTTPS with `tls`) until `shutdown`; then stops accepting and lets
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    router: Router,
    limits: HttpLimits,
    metrics: HttpMetrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let admissions = Admissions::new(limits.max_pending, metrics.evicted.clone());
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let builder = Arc::new(builder);
    let mut backoff = ErrorBackoff::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => {
                    backoff.reset();
                    accepted
                }
                Err(error) => {
                    // EMFILE and friends persist until a connection closes: wait, don't spin.
                    tracing::debug!(%error, "accept failed");
                    backoff.wait().await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&connections).try_acquire_owned() else {
            metrics.refused.inc();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let admission = Arc::new(admissions.admit());
        let (acceptor, router, builder) = (acceptor.clone(), router.clone(), Arc::clone(&builder));
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            let io = match acceptor {
                None => Io::Plain(tcp),
                Some(acceptor) => {
                    let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                    match admission.run(handshake).await {
                        Some(Ok(Ok(tls))) => Io::Tls(Box::new(tls)),
                        Some(Ok(Err(error))) => return tracing::debug!(%peer, %error, "TLS handshake failed"),
                        Some(Err(_)) => return tracing::debug!(%peer, "TLS handshake timed out"),
                        None => return tracing::debug!(%peer, "evicted during its TLS handshake"),
                    }
                }
            };
            let first_request = Arc::clone(&admission);
            let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
                first_request.admitted();
                request.extensions_mut().insert(ConnectInfo(peer));
                router.clone().oneshot(request.map(axum::body::Body::new))
            });
            let io = Stalling { io, limit: limits.write_stall_timeout, stalled: None };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
            let mut connection = std::pin::pin!(watcher.watch(connection.into_owned()));
            // hyper times a request head from its first byte: a peer that sends none is ours to end.
            let mut first_request_due = std::pin::pin!(tokio::time::sleep(limits.header_read_timeout));
            let mut due_passed = false;
            loop {
                tokio::select! {
                    result = &mut connection => {
                        if let Err(error) = result {
                            tracing::debug!(%peer, %error, "HTTP connection ended with an error");
                        }
                        return;
                    }
                    _ = admission.evicted() => return tracing::debug!(%peer, "evicted before its first request"),
                    _ = &mut first_request_due, if !due_passed => {
                        due_passed = true;
                        if !admission.is_admitted() {
                            return tracing::debug!(%peer, "no request within the header read timeout");
                        }
                    }
                }
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}

/// A connection whose writes fail once the peer has taken no bytes for `limit`.
struct Stalling {
    io: Io,
    limit: Duration,
    /// Since when a write has been waiting for the peer.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl Stalling {
    /// Passes a ready write through (and forgets any stall); a pending one fails after `limit`.
    fn watch<T>(
        &mut self,
        cx: &mut std::task::Context<'_>,
        polled: std::task::Poll<std::io::Result<T>>,
    ) -> std::task::Poll<std::io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let stalled = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match stalled.as_mut().poll(cx) {
            std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the peer took no bytes for {} ms", limit.as_millis()),
            ))),
            std::task::Poll::Pending => std::task::Poll::Pending,
        }
    }
}

impl tokio::io::AsyncRead for Stalling {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for Stalling {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch(cx, polled)
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let polled = std::pin::Pin::new(&mut this.io).poll_flush(cx);
        this.watch(cx, polled)
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// A connection, plain or TLS.
enum Io {
    Plain(tokio::net::TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
}

impl tokio::io::AsyncRead for Io {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncWrite for Io {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_write_vectored(cx, bufs),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Io::Plain(s) => s.is_write_vectored(),
            Io::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_flush(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => std::pin::Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
