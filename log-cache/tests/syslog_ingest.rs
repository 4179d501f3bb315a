//! The syslog server over a real socket: RFC 5424 frames as the syslog agent writes them (§7),
//! octet-counted (§6.10), read back over gRPC.

mod common;

use common::*;
use loggregator_proto::logcache::v1::ReadRequest;
use loggregator_proto::v2::{envelope, log};
use tokio::io::AsyncWriteExt;

fn octet_counted(message: &str) -> Vec<u8> {
    format!("{} {}", message.len(), message).into_bytes()
}

async fn read_all(cache: &Running, source: &str) -> Vec<loggregator_proto::v2::Envelope> {
    let request = ReadRequest { source_id: source.into(), start_time: 0, ..Default::default() };
    cache.egress().await.read(request).await.expect("read").into_inner().envelopes.unwrap_or_default().batch
}

#[tokio::test]
async fn rfc5424_frames_become_envelopes() {
    let cache = start(test_config()).await;
    let addr = cache.addrs.syslog.expect("syslog enabled by default");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let frames = [
        "<14>1 2024-05-01T12:00:00.123456+00:00 org.space.app app-guid [APP/PROC/WEB/0] - [tags@47450 source_type=\"APP/PROC/WEB\"] hello out\n",
        "<11>1 2024-05-01T12:00:01+00:00 org.space.app app-guid [APP/PROC/WEB/1] - - oops err\n",
        "<14>1 2024-05-01T12:00:02+00:00 org.space.app app-guid [2] - [gauge@47450 name=\"cpu\" value=\"0.25\" unit=\"percentage\"][tags@47450 origin=\"rep\"] \n",
        "<14>1 2024-05-01T12:00:03+00:00 org.space.app app-guid [2] - [counter@47450 name=\"requests\" total=\"17\" delta=\"2\"] \n",
        "this is not syslog",
    ];
    let mut bytes = Vec::new();
    for frame in frames {
        bytes.extend(octet_counted(frame));
    }
    // Split the write mid-frame: framing must not depend on read boundaries.
    let (first, second) = bytes.split_at(bytes.len() / 2 + 3);
    stream.write_all(first).await.expect("writes");
    stream.flush().await.expect("flushes");
    stream.write_all(second).await.expect("writes");

    eventually("four envelopes stored", || async { read_all(&cache, "app-guid").await.len() == 4 }).await;
    let envelopes = read_all(&cache, "app-guid").await;
    assert_eq!(envelopes[0].timestamp, 1_714_564_800_123_456_000);
    assert_eq!(envelopes[0].instance_id, "0");
    assert_eq!(envelopes[0].tags["source_type"], "APP/PROC/WEB");
    let Some(envelope::Message::Log(out)) = &envelopes[0].message else { panic!("a log") };
    assert_eq!((&out.payload[..], out.r#type), (&b"hello out"[..], log::Type::Out as i32));
    let Some(envelope::Message::Log(err)) = &envelopes[1].message else { panic!("a log") };
    assert_eq!((&err.payload[..], err.r#type), (&b"oops err"[..], log::Type::Err as i32));
    assert_eq!(envelopes[1].instance_id, "1");
    let Some(envelope::Message::Gauge(gauge)) = &envelopes[2].message else { panic!("a gauge") };
    assert_eq!(gauge.metrics["cpu"].value, 0.25);
    assert_eq!(envelopes[2].tags["origin"], "rep");
    let Some(envelope::Message::Counter(counter)) = &envelopes[3].message else { panic!("a counter") };
    assert_eq!((counter.name.as_str(), counter.total, counter.delta), ("requests", 17, 2));
    assert_eq!(cache.registry.sum("dropped", &[("direction", "syslog")]), 1, "the garbage frame is counted");
}

#[tokio::test]
async fn an_oversized_frame_closes_the_connection() {
    let cache = start(test_config()).await;
    let addr = cache.addrs.syslog.expect("syslog enabled by default");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    stream.write_all(b"70000 <14>1 ").await.expect("writes");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(&mut stream, &mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "the server closed the connection: {read:?}");
    assert_eq!(cache.registry.sum("syslog_bad_frames", &[]), 1);
}

/// Reads until the server closes the connection, or `DEADLINE` passes (then `false`).
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(stream, &mut buf)).await;
    matches!(read, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn a_peer_that_trickles_bytes_but_no_message_is_cut_off_at_the_idle_timeout() {
    let mut config = test_config();
    config.syslog.idle_timeout = std::time::Duration::from_millis(400);
    let cache = start(config).await;
    let addr = cache.addrs.syslog.expect("syslog enabled by default");
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    // A 60,000-byte message announced, then one byte of it every 100 ms: each read arrives well
    // within the idle timeout, but the message would take 100 minutes to complete.
    stream.write_all(b"60000 <14>1 ").await.expect("writes");
    let (mut read, mut write) = stream.split();
    let trickle = async {
        for byte in std::iter::repeat(b"a".as_slice()) {
            if write.write_all(byte).await.is_err() {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    };
    let mut buf = [0u8; 16];
    let closed = tokio::select! {
        _ = trickle => true,
        read = tokio::time::timeout(DEADLINE, tokio::io::AsyncReadExt::read(&mut read, &mut buf)) => {
            matches!(read, Ok(Ok(0) | Err(_)))
        }
    };
    assert!(closed, "the trickling connection was closed");
    drop(stream);

    // A peer that completes messages is not cut off by the same timeout while it keeps doing so.
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    for i in 0..6 {
        let message = format!("<14>1 2024-05-01T12:00:0{i}Z host steady [0] - - line {i}\n");
        stream.write_all(&octet_counted(&message)).await.expect("still open");
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    }
    eventually("six messages stored", || async { read_all(&cache, "steady").await.len() == 6 }).await;
}

#[tokio::test]
async fn a_tls_peer_that_never_finishes_its_handshake_is_cut_off() {
    let pki = plumbing::test_support::TestPki::new(&["log-cache"]);
    let mut config = test_config();
    config.syslog.tls = Some(pki.server_files());
    config.syslog.idle_timeout = std::time::Duration::from_millis(300);
    let cache = start(config).await;
    let mut stream = tokio::net::TcpStream::connect(cache.addrs.syslog.expect("syslog")).await.expect("connects");
    assert!(closed_by_server(&mut stream).await, "the silent TLS connection was closed");
}
