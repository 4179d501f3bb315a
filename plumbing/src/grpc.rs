//! gRPC transport plumbing shared by every component: accepted and dialled connections.
//!
//! What tonic does not do for us:
//! - It ignores `Server::tcp_nodelay` when given its own incoming stream, and without it Nagle's
//!   algorithm and the peer's delayed ACK hold the tail of a write for ~40 ms: that was the p99 of
//!   every hop (BENCHMARKS.md §4).
//! - Its TLS (tokio-rustls) reads the socket in 4 KiB steps and copies each record twice more
//!   before HTTP/2 sees it. With TLS configured, our connections are [`TlsStream`]s instead (our
//!   own record layer after rustls's handshake, BENCHMARKS.md §0): tonic is given plain `http://`
//!   endpoints and already-secured connections. Handshakes run in their own tasks, so a slow or
//!   hostile client never holds up the accept loop. `tls_engine = "rustls"` ([`TlsEngine`]) makes
//!   them tokio-rustls connections over a buffered socket instead.
//! - Plain connections read through a 64 KiB buffer: one system call per 64 KiB.
//!
//! Servers and clients also announce a larger [`MAX_FRAME_SIZE`].

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures::{Stream, StreamExt};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};
use tonic::transport::{Channel, Endpoint, Uri};

use crate::tls::{ClientTls, ServerTls, TlsEngine};
use crate::tls_stream::{TlsStream, HANDSHAKE_TIMEOUT};

/// Bytes read from the socket at a time.
pub const READ_BUFFER: usize = 64 * 1024;

/// The largest HTTP/2 frame our servers and clients accept (SETTINGS_MAX_FRAME_SIZE), so peers send
/// a 40 KB batch as one DATA frame rather than three of h2's default 16 KiB: each frame is one
/// write (and one system call) at the sender.
pub const MAX_FRAME_SIZE: u32 = 1 << 20;

/// Most bytes of envelopes the agent and the Doppler put in one batch. A count limit alone (100
/// envelopes) would let a hundred large envelopes make a message past what receivers accept
/// (10 MiB at Doppler and RLP, 4 MiB by default in grpc-go clients), and the whole batch would be
/// refused. An envelope larger than this still goes, alone.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// Bytes an encoded envelope adds to a batch: a one-byte key, its length prefix and itself.
pub fn batch_entry_len(envelope: &bytes::Bytes) -> usize {
    1 + loggregator_proto::wire::varint_len(envelope.len() as u64) + envelope.len()
}

/// HTTP/2 receive window (stream and connection) of a long-lived subscription: a log-cache nozzle
/// or a firehose client. It is what the subscriber may hold unread while its task is descheduled
/// before the sender's per-subscriber buffer starts dropping: hyper's fixed 2 MiB default covers
/// ~20 ms of a 300k envelopes/s stream, less than one scheduling gap of a busy 2-core machine.
/// grpc-go, the original's transport, grows its window by BDP estimation up to the same 16 MiB.
pub const SUBSCRIBER_WINDOW: u32 = 16 << 20;

/// A TCP connection read through a [`READ_BUFFER`]-sized buffer (writes go straight through).
///
/// The buffer exists only while the connection has data: when the socket has nothing to read it is
/// given back, so a thousand idle subscriptions do not hold a thousand 64 KiB buffers (the RLP's
/// "1000 idle streams" budget); a busy connection keeps its buffer from one read to the next.
pub struct BufferedStream {
    stream: TcpStream,
    buf: Box<[u8]>,
    pos: usize,
    filled: usize,
}

impl BufferedStream {
    pub fn new(stream: TcpStream) -> Self {
        Self { stream, buf: Box::default(), pos: 0, filled: 0 }
    }
}

impl AsyncRead for BufferedStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pos == this.filled {
            // Nothing buffered: wait for the socket without holding a buffer.
            if this.stream.poll_read_ready(cx).is_pending() {
                this.buf = Box::default();
                return Poll::Pending;
            }
            if out.remaining() >= READ_BUFFER {
                return Pin::new(&mut this.stream).poll_read(cx, out);
            }
            if this.buf.is_empty() {
                this.buf = vec![0; READ_BUFFER].into_boxed_slice();
            }
            let mut read = ReadBuf::new(&mut this.buf);
            ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read))?;
            this.filled = read.filled().len();
            this.pos = 0;
        }
        let n = out.remaining().min(this.filled - this.pos);
        out.put_slice(&this.buf[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for BufferedStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

impl Connected for BufferedStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

/// A connection of a gRPC server or client: plain TCP read through a buffer, or TLS by one of the
/// two [`TlsEngine`]s.
pub enum Conn {
    Plain(BufferedStream),
    /// [`TlsEngine::Inplace`].
    Tls(Box<TlsStream>),
    /// [`TlsEngine::Rustls`].
    Rustls(Box<tokio_rustls::TlsStream<BufferedStream>>),
}

impl Conn {
    /// Sends a TLS 1.3 `KeyUpdate` and moves to new sending keys, asking the peer to do the same
    /// when `request_peer` (tokio-rustls always asks). For interop tests: both engines update
    /// their keys by themselves when a cipher's limit nears.
    #[doc(hidden)]
    pub fn update_tls_keys(&mut self, request_peer: bool) -> io::Result<()> {
        let refreshed = match self {
            Conn::Plain(_) => return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a TLS connection")),
            Conn::Tls(s) => return s.update_keys(request_peer),
            Conn::Rustls(s) => match s.as_mut() {
                tokio_rustls::TlsStream::Client(c) => c.get_mut().1.refresh_traffic_keys(),
                tokio_rustls::TlsStream::Server(c) => c.get_mut().1.refresh_traffic_keys(),
            },
        };
        refreshed.map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            Conn::Rustls(s) => {
                let read = Pin::new(s.as_mut()).poll_read(cx, buf);
                // rustls keeps what a read made it owe the peer (a KeyUpdate answer, a refused
                // renegotiation) until the next write. Send it now, as our engine does: a peer
                // waiting for it would wait for as long as we only read. A failure here shows
                // on the next read or write.
                if s.get_ref().1.wants_write() {
                    let _ = Pin::new(s.as_mut()).poll_flush(cx);
                }
                read
            }
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            Conn::Rustls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
            Conn::Rustls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Conn::Plain(s) => s.is_write_vectored(),
            Conn::Tls(s) => s.is_write_vectored(),
            Conn::Rustls(s) => s.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
            Conn::Rustls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            Conn::Rustls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        match self {
            Conn::Plain(s) => s.connect_info(),
            Conn::Tls(s) => s.tcp().connect_info(),
            Conn::Rustls(s) => s.get_ref().0.connect_info(),
        }
    }
}

/// TLS handshakes a server runs at once; a newer connection evicts the oldest past that
/// ([`crate::admission`]), so silent peers cannot keep real clients waiting.
const MAX_HANDSHAKES: usize = 256;

/// The incoming connections of an already-bound listener: `TCP_NODELAY` set, reads buffered, and
/// with `tls`, handshaken (mutual TLS as the config requires). A failed handshake is logged and
/// dropped; the server goes on serving everyone else.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
) -> impl Stream<Item = io::Result<Conn>> + Send + 'static {
    let accepted = TcpIncoming::from(listener).with_nodelay(Some(true));
    match tls {
        None => {
            // An accept error is not passed on: tonic would log it and ask again at once, and
            // EMFILE (out of file descriptors) repeats until a connection closes: a spin at 100 %
            // CPU. Waiting between errors leaves the CPU to the connections being served.
            let backoff = Arc::new(tokio::sync::Mutex::new(crate::backoff::ErrorBackoff::new()));
            accepted
                .filter_map(move |accepted| {
                    let backoff = Arc::clone(&backoff);
                    async move {
                        match accepted {
                            Ok(stream) => {
                                backoff.lock().await.reset();
                                Some(Ok(Conn::Plain(BufferedStream::new(stream))))
                            }
                            Err(err) => {
                                tracing::debug!(%err, "accept failed");
                                backoff.lock().await.wait().await;
                                None
                            }
                        }
                    }
                })
                .left_stream()
        }
        Some(config) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Conn>(MAX_HANDSHAKES);
            let handshakes = crate::admission::Admissions::new(MAX_HANDSHAKES, crate::Counter::default());
            tokio::spawn(async move {
                let mut accepted = std::pin::pin!(accepted);
                let mut backoff = crate::backoff::ErrorBackoff::new();
                loop {
                    let stream = tokio::select! {
                        next = accepted.next() => match next {
                            Some(Ok(stream)) => {
                                backoff.reset();
                                stream
                            }
                            Some(Err(err)) => {
                                // EMFILE persists until a connection closes: wait, don't spin.
                                tracing::debug!(%err, "accept failed");
                                backoff.wait().await;
                                continue;
                            }
                            None => return,
                        },
                        _ = tx.closed() => return,
                    };
                    let admission = handshakes.admit();
                    let (tx, config) = (tx.clone(), config.clone());
                    tokio::spawn(async move {
                        let peer = stream.peer_addr().ok();
                        let Some(handshake) = admission.run(accept_tls(stream, &config)).await else {
                            return tracing::debug!(?peer, "evicted during its TLS handshake by newer connections");
                        };
                        match handshake {
                            Ok(conn) => {
                                admission.admitted();
                                let _ = tx.send(conn).await;
                            }
                            // A bare connect-and-close (a TCP health check, a port scan) is not
                            // worth a log line; a client that speaks TLS wrongly is.
                            Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => {
                                tracing::debug!(?peer, %err, "connection closed during the TLS handshake")
                            }
                            Err(err) => tracing::info!(?peer, %err, "TLS handshake failed"),
                        }
                    });
                }
            });
            tokio_stream::wrappers::ReceiverStream::new(rx).map(Ok).right_stream()
        }
    }
}

/// Connects `endpoint` (an `http://` URI) over a buffered, `TCP_NODELAY` connection, secured with
/// `tls` when given. Timeouts and keepalives configured on the endpoint apply as with
/// [`Endpoint::connect`].
pub async fn connect(endpoint: &Endpoint, tls: Option<ClientTls>) -> Result<Channel, tonic::transport::Error> {
    endpoint
        .connect_with_connector(tower::service_fn(move |uri: Uri| {
            let tls = tls.clone();
            async move { dial(uri, tls).await }
        }))
        .await
}

/// Like [`connect`], but the connection is made on first use (and remade after it fails).
pub fn connect_lazy(endpoint: &Endpoint, tls: Option<ClientTls>) -> Channel {
    endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
        let tls = tls.clone();
        async move { dial(uri, tls).await }
    }))
}

async fn dial(uri: Uri, tls: Option<ClientTls>) -> io::Result<TokioIo<Conn>> {
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("no host in {uri}")))?;
    // An IPv6 literal comes bracketed in a URI.
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(if uri.scheme_str() == Some("https") { 443 } else { 80 });
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(TokioIo::new(match tls {
        None => Conn::Plain(BufferedStream::new(stream)),
        Some(tls) => connect_tls(stream, tls).await?,
    }))
}

/// The server side of a TLS handshake on an accepted connection, by the configured engine; at
/// most [`HANDSHAKE_TIMEOUT`].
pub async fn accept_tls(stream: TcpStream, tls: &ServerTls) -> io::Result<Conn> {
    match tls.engine {
        TlsEngine::Inplace => Ok(Conn::Tls(Box::new(TlsStream::accept(stream, tls.config.clone()).await?))),
        TlsEngine::Rustls => {
            let accept = tokio_rustls::TlsAcceptor::from(tls.config.clone()).accept(BufferedStream::new(stream));
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, accept).await.map_err(|_| handshake_timed_out())??;
            Ok(Conn::Rustls(Box::new(conn.into())))
        }
    }
}

/// The client side of a TLS handshake on a dialled connection, by the configured engine; at most
/// [`HANDSHAKE_TIMEOUT`].
pub async fn connect_tls(stream: TcpStream, tls: ClientTls) -> io::Result<Conn> {
    match tls.engine {
        TlsEngine::Inplace => Ok(Conn::Tls(Box::new(TlsStream::connect(stream, tls.config, tls.server_name).await?))),
        TlsEngine::Rustls => {
            let connect =
                tokio_rustls::TlsConnector::from(tls.config).connect(tls.server_name, BufferedStream::new(stream));
            let conn = tokio::time::timeout(HANDSHAKE_TIMEOUT, connect).await.map_err(|_| handshake_timed_out())??;
            Ok(Conn::Rustls(Box::new(conn.into())))
        }
    }
}

fn handshake_timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")
}

/// Resolves every `host:port` entry; a name with many addresses (a Kubernetes headless service,
/// a DNS entry per Doppler) contributes all of them. A name that does not resolve is logged and
/// left out.
pub async fn resolve(entries: &[String]) -> Vec<std::net::SocketAddr> {
    let mut addrs = Vec::new();
    for entry in entries {
        match tokio::net::lookup_host(entry.as_str()).await {
            Ok(found) => addrs.extend(found),
            Err(error) => tracing::warn!(address = %entry, %error, "cannot resolve address"),
        }
    }
    addrs
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn buffered_connections_carry_bytes_both_ways_with_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(listener, None));
        let client = tokio::spawn(async move {
            // Held open until the end of the task, so it is surely the first accepted connection.
            let _dialled = dial(format!("http://{addr}").parse().unwrap(), None).await.unwrap();
            let mut raw = TcpStream::connect(addr).await.unwrap();
            let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
            raw.write_all(&payload).await.unwrap();
            raw.shutdown().await.unwrap();
            payload
        });
        // The first accepted connection is the dialled one; it carries nothing.
        let Conn::Plain(first) = accepted.next().await.unwrap().unwrap() else { panic!("plain") };
        assert!(first.stream.nodelay().unwrap());
        let Conn::Plain(mut second) = accepted.next().await.unwrap().unwrap() else { panic!("plain") };
        assert!(second.stream.nodelay().unwrap());
        assert_eq!(second.connect_info().local_addr(), Some(addr));
        let mut got = Vec::new();
        second.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, client.await.unwrap());
    }

    #[tokio::test]
    async fn an_idle_buffered_connection_holds_no_read_buffer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut raw = TcpStream::connect(addr).await.unwrap();
        let mut stream = BufferedStream::new(listener.accept().await.unwrap().0);
        raw.write_all(b"hello").await.unwrap();
        let mut got = [0u8; 5];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // Nothing more to read: the wait gives the buffer back.
        let mut more = [0u8; 1];
        assert!(tokio::time::timeout(Duration::from_millis(50), stream.read(&mut more)).await.is_err());
        assert!(stream.buf.is_empty());
        // And the next data is read as before.
        raw.write_all(b"again").await.unwrap();
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"again");
    }

    /// A client that connects and never speaks holds up nobody: handshakes run beside the accept
    /// loop, and a failed one is dropped while the next client is served.
    #[tokio::test]
    async fn a_silent_or_failing_client_does_not_hold_up_tls_accepts() {
        let pki = crate::test_support::TestPki::new(&["doppler"]);
        let config = pki.server_files().grpc_server_config().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut accepted = Box::pin(incoming(listener, Some(config)));
        let _silent = TcpStream::connect(addr).await.unwrap();
        let mut garbage = TcpStream::connect(addr).await.unwrap();
        garbage.write_all(b"GET / HTTP/1.1\r\n\r\n").await.unwrap();
        let tls = pki.client_files().grpc_client_config("doppler").unwrap();
        let client = tokio::spawn(async move {
            let Conn::Tls(mut conn) =
                dial(format!("http://{addr}").parse().unwrap(), Some(tls)).await.unwrap().into_inner()
            else {
                panic!("a TLS connection")
            };
            // Data and close_notify right behind the handshake: the server may see all of it
            // in the read that completes its handshake.
            conn.write_all(b"hello").await.unwrap();
            conn.shutdown().await.unwrap();
        });
        let next = tokio::time::timeout(Duration::from_secs(10), accepted.next()).await;
        let Ok(Some(Ok(Conn::Tls(mut conn)))) = next else { panic!("the TLS client was not accepted") };
        let mut got = Vec::new();
        conn.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello");
        client.await.unwrap();
    }

    /// Every pairing of the two engines carries bytes both ways over `incoming` and `dial`.
    #[tokio::test]
    async fn both_tls_engines_interoperate_through_incoming_and_dial() {
        use crate::tls::TlsEngine;
        let pki = crate::test_support::TestPki::new(&["doppler"]);
        for (server_engine, client_engine) in [
            (TlsEngine::Inplace, TlsEngine::Inplace),
            (TlsEngine::Inplace, TlsEngine::Rustls),
            (TlsEngine::Rustls, TlsEngine::Inplace),
            (TlsEngine::Rustls, TlsEngine::Rustls),
        ] {
            let mut server_files = pki.server_files();
            server_files.tls_engine = server_engine;
            let mut client_files = pki.client_files();
            client_files.tls_engine = client_engine;
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let mut accepted = Box::pin(incoming(listener, Some(server_files.grpc_server_config().unwrap())));
            let tls = client_files.grpc_client_config("doppler").unwrap();
            let client = tokio::spawn(async move {
                let mut conn = dial(format!("http://{addr}").parse().unwrap(), Some(tls)).await.unwrap().into_inner();
                let is_rustls = matches!(conn, Conn::Rustls(_));
                conn.write_all(&[7u8; 100_000]).await.unwrap();
                conn.shutdown().await.unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).await.unwrap();
                (is_rustls, got)
            });
            let next = tokio::time::timeout(Duration::from_secs(10), accepted.next()).await;
            let Ok(Some(Ok(mut conn))) = next else { panic!("the TLS client was not accepted") };
            assert_eq!(matches!(conn, Conn::Rustls(_)), server_engine == TlsEngine::Rustls);
            assert_eq!(conn.connect_info().local_addr(), Some(addr));
            let mut got = Vec::new();
            conn.read_to_end(&mut got).await.unwrap();
            assert!(got.len() == 100_000 && got.iter().all(|&b| b == 7), "{} bytes", got.len());
            conn.write_all(b"back").await.unwrap();
            conn.shutdown().await.unwrap();
            let (client_is_rustls, got) = tokio::time::timeout(Duration::from_secs(10), client).await.unwrap().unwrap();
            assert_eq!(client_is_rustls, client_engine == TlsEngine::Rustls);
            assert_eq!(got, b"back");
        }
    }
}
