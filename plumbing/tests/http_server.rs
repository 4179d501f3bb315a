//! `plumbing::http_server` over real sockets: silent, trickling and idle peers are cut off, a flood
//! of them does not keep a real client out, and the connection cap closes newcomers at once.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use plumbing::http_server::{serve, HttpLimits, HttpMetrics};
use plumbing::test_support::TestPki;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const DEADLINE: Duration = Duration::from_secs(10);

struct Server {
    addr: SocketAddr,
    metrics: HttpMetrics,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(limits: HttpLimits, tls: Option<Arc<rustls::ServerConfig>>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new()
            .route(
                "/peer",
                axum::routing::get(
                    |axum::extract::ConnectInfo(peer): axum::extract::ConnectInfo<SocketAddr>| async move {
                        peer.to_string()
                    },
                ),
            )
            // Far more than the socket buffers of both ends hold.
            .route("/big", axum::routing::get(|| async { vec![b'x'; 64 << 20] }));
        let metrics = HttpMetrics::default();
        let stop = tokio_util::sync::CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(serve(listener, tls, router, limits, metrics.clone(), shutdown));
        Self { addr, metrics, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.task).await.expect("stops").unwrap().unwrap();
    }
}

/// One `GET /peer` on `stream`: the status line and body.
async fn get<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> String {
    stream.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    let mut buf = [0u8; 1024];
    let started = Instant::now();
    while !String::from_utf8_lossy(&response).contains("127.0.0.1:") {
        assert!(started.elapsed() < DEADLINE, "no answer: {:?}", String::from_utf8_lossy(&response));
        let n = tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await.expect("answers").unwrap();
        assert!(n > 0, "closed before answering: {:?}", String::from_utf8_lossy(&response));
        response.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(response).unwrap()
}

/// How long until the server closes `stream` (reads return 0 or fail), at most `DEADLINE`.
async fn time_to_close(stream: &mut TcpStream) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout_at((started + DEADLINE).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

fn limits(header_read_timeout: Duration) -> HttpLimits {
    HttpLimits { header_read_timeout, ..HttpLimits::default() }
}

#[tokio::test]
async fn a_silent_peer_is_closed_at_the_header_read_timeout() {
    let server = Server::start(limits(Duration::from_millis(300)), None).await;
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let closed = time_to_close(&mut silent).await.expect("closed");
    assert!(closed >= Duration::from_millis(250), "not before the timeout: {closed:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_peer_trickling_its_request_head_is_closed_at_the_header_read_timeout() {
    let server = Server::start(limits(Duration::from_millis(400)), None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /peer HTTP/1.1\r\nx-slow: ").await.unwrap();
    let started = Instant::now();
    let (mut read, mut write) = stream.split();
    let trickle = async {
        loop {
            if write.write_all(b"a").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let mut buf = [0u8; 256];
    let closed = tokio::select! {
        _ = trickle => true,
        read = tokio::time::timeout(DEADLINE, read.read(&mut buf)) => !matches!(read, Err(_) | Ok(Ok(1..))),
    };
    assert!(closed, "the trickling peer was closed");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
    server.stop().await;
}

#[tokio::test]
async fn an_idle_kept_alive_connection_is_closed_at_the_header_read_timeout() {
    let server = Server::start(limits(Duration::from_millis(300)), None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    assert!(get(&mut stream).await.starts_with("HTTP/1.1 200"));
    assert!(time_to_close(&mut stream).await.is_some(), "the idle connection was closed");
    server.stop().await;
}

#[tokio::test]
async fn past_the_connection_limit_a_newcomer_is_closed_at_once_and_counted() {
    let limits = HttpLimits { max_connections: 3, ..limits(Duration::from_secs(30)) };
    let server = Server::start(limits, None).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        assert!(get(&mut stream).await.starts_with("HTTP/1.1 200"));
        held.push(stream);
    }
    let mut fourth = TcpStream::connect(server.addr).await.unwrap();
    let closed = time_to_close(&mut fourth).await.expect("closed");
    assert!(closed < Duration::from_secs(1), "{closed:?}");
    assert_eq!(server.metrics.refused.get(), 1);
    drop(held.pop());
    // The freed place goes to a later connection, once the server has seen the close.
    let started = Instant::now();
    loop {
        assert!(started.elapsed() < DEADLINE, "no place freed up");
        let mut next = TcpStream::connect(server.addr).await.unwrap();
        next.write_all(b"GET /peer HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let mut first = [0u8; 1];
        if matches!(tokio::time::timeout(DEADLINE, next.read(&mut first)).await, Ok(Ok(1))) {
            break;
        }
    }
    server.stop().await;
}

fn https_configs() -> (Arc<rustls::ServerConfig>, tokio_rustls::TlsConnector) {
    let pki = TestPki::new(&["gateway"]);
    let files = pki.server_files();
    let certs = plumbing::tls::read_certs(&files.cert_file).unwrap();
    let key = plumbing::tls::read_key(&files.key_file).unwrap();
    let server = rustls::ServerConfig::builder_with_provider(plumbing::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for ca in plumbing::tls::read_certs(&files.ca_file).unwrap() {
        roots.add(ca).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(plumbing::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    (Arc::new(server), tokio_rustls::TlsConnector::from(Arc::new(client)))
}

#[tokio::test]
async fn a_flood_of_silent_connections_does_not_keep_a_real_https_client_out() {
    let (server_config, connector) = https_configs();
    // Handshakes may take 30 s and the pool holds 64: the flood below would hold every place for
    // 30 s if newcomers waited for one.
    let limits =
        HttpLimits { max_pending: 64, handshake_timeout: Duration::from_secs(30), ..limits(Duration::from_secs(30)) };
    let server = Server::start(limits, Some(server_config)).await;
    let mut flood = Vec::new();
    for _ in 0..200 {
        flood.push(TcpStream::connect(server.addr).await.unwrap());
    }
    let started = Instant::now();
    let tcp = TcpStream::connect(server.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("gateway").unwrap();
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .expect("the handshake is served in time")
        .expect("handshake");
    assert!(get(&mut tls).await.starts_with("HTTP/1.1 200"));
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    assert!(server.metrics.evicted.get() >= 200 - 64, "evicted {}", server.metrics.evicted.get());
    // The oldest of the flood were closed to make room.
    let closed = time_to_close(&mut flood[0]).await;
    assert!(closed.is_some_and(|d| d < Duration::from_secs(1)), "{closed:?}");
    drop(flood);
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_reads_its_answer_is_cut_off_at_the_write_stall_timeout() {
    let limits = HttpLimits { write_stall_timeout: Duration::from_millis(500), ..limits(Duration::from_secs(30)) };
    let server = Server::start(limits, None).await;
    let mut stream = TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    // Read nothing until the server has had time to fill both socket buffers and stall, then
    // drain: a cut-off connection ends well short of the 64 MiB answer.
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match tokio::time::timeout(DEADLINE, stream.read(&mut buf)).await.expect("the server ends it") {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(total < 64 << 20, "the whole answer arrived ({total} bytes): the stall was not cut off");
    assert!(started.elapsed() < DEADLINE, "{:?}", started.elapsed());
    server.stop().await;
}
