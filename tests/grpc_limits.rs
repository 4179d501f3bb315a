//! Every gRPC server of the all-in-one announces a bound on the streams one client connection may
//! open (HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS), read off the wire as a client sees it: without
//! it, one connection can open streams (and the work behind each) without limit.

mod common;

use std::net::SocketAddr;

use common::DEADLINE;
use loggregator::pipeline::{Pipeline, PipelineConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;

/// Sends the HTTP/2 client preface and an empty SETTINGS frame; returns the server's first SETTINGS.
async fn server_settings(addr: SocketAddr) -> Vec<(u16, u32)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    stream.write_all(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut header = [0u8; 9];
    tokio::time::timeout(DEADLINE, stream.read_exact(&mut header)).await.expect("answers").unwrap();
    assert_eq!(header[3], 0x4, "the server's first frame is SETTINGS");
    let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
    let mut payload = vec![0u8; len];
    stream.read_exact(&mut payload).await.unwrap();
    payload
        .chunks_exact(6)
        .map(|s| (u16::from_be_bytes([s[0], s[1]]), u32::from_be_bytes([s[2], s[3], s[4], s[5]])))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_grpc_server_bounds_the_streams_of_a_connection() {
    let pipeline = Pipeline::bind(PipelineConfig::ephemeral()).await.expect("pipeline binds");
    let endpoints = pipeline.endpoints().clone();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(pipeline.serve(stop.clone().cancelled_owned()));
    for (what, addr) in [
        ("agent", endpoints.agent_grpc),
        ("doppler", endpoints.doppler_grpc),
        ("log-cache", endpoints.log_cache_grpc),
        ("reverse log proxy", endpoints.rlp_grpc),
    ] {
        let settings = server_settings(addr).await;
        let max = settings.iter().find(|(id, _)| *id == SETTINGS_MAX_CONCURRENT_STREAMS).map(|(_, v)| *v);
        assert_eq!(max, Some(1024), "{what}: {settings:?}");
    }
    stop.cancel();
    tokio::time::timeout(DEADLINE, serving).await.expect("stops").unwrap().unwrap();
}
