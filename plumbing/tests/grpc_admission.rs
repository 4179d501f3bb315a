//! The TLS accept path of every gRPC server (`plumbing::grpc::incoming`) under a flood of silent
//! connections: a real client's handshake is served at once, not after theirs time out.

use std::time::{Duration, Instant};

use futures::StreamExt;
use plumbing::grpc::{connect_tls, incoming};
use plumbing::test_support::TestPki;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn a_flood_of_silent_connections_does_not_delay_a_real_handshake() {
    let pki = TestPki::new(&["doppler"]);
    let server_tls = pki.server_files().grpc_server_config().unwrap();
    let client_tls = pki.client_files().grpc_client_config("doppler").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut conns = Box::pin(incoming(listener, Some(server_tls)));

    // More than the 256 handshakes in progress a server runs; each would hold its place for the
    // 10 s handshake timeout if newcomers waited for one.
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(TcpStream::connect(addr).await.unwrap());
    }
    let started = Instant::now();
    let client = tokio::spawn(async move { connect_tls(TcpStream::connect(addr).await?, client_tls).await });
    let served = tokio::time::timeout(Duration::from_secs(5), conns.next()).await.expect("a connection in time");
    assert!(served.expect("stream open").is_ok());
    client.await.unwrap().expect("client handshake");
    assert!(started.elapsed() < Duration::from_secs(2), "served after {:?}", started.elapsed());
    // The oldest silent connections were dropped to make room.
    let mut buf = [0u8; 1];
    let closed = tokio::time::timeout(Duration::from_secs(2), flood[0].read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0) | Err(_))), "{closed:?}");
}
