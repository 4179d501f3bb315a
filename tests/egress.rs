//! The egress edge of the all-in-one: a log sent to the agent shows up on every egress path — the
//! RLP (gRPC), the RLP gateway (SSE), the traffic controller's app stream and firehose
//! (WebSocket) — and in recent logs; once in plaintext as `cargo run` serves it, once with mutual
//! TLS on every internal hop (agent → Doppler → RLP, traffic controller, Log Cache nozzle; the
//! traffic controller → Log Cache and → agent).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{now_ns, DEADLINE};
use futures::StreamExt as _;
use loggregator::pipeline::{Endpoints, Pipeline, PipelineConfig};
use loggregator_proto::bytes::Bytes;
use loggregator_proto::events;
use loggregator_proto::prost::Message as _;
use loggregator_proto::tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use loggregator_proto::v2::egress_client::EgressClient;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, selector, EgressBatchRequest, Envelope, EnvelopeBatch, Selector};
use plumbing::test_support::{wait_until, TestPki};
use plumbing::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

const APP: &str = "0b5e6a2c-7d1f-4e3a-9c8b-112233445566";

async fn channel(addr: SocketAddr, tls: Option<ClientTlsConfig>) -> Channel {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).unwrap();
    if let Some(tls) = tls {
        endpoint = endpoint.tls_config(tls).unwrap();
    }
    endpoint.connect().await.expect("connects")
}

/// Reads a plain HTTP/1.1 response until `needle` appears in it (or 30 s pass); returns it all.
async fn read_http_until(addr: SocketAddr, target: &str, needle: &[u8]) -> Vec<u8> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let mut chunk = [0u8; 8192];
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => seen.extend_from_slice(&chunk[..n]),
            _ => break,
        }
    }
    seen
}

fn the_log(text: &str) -> Envelope {
    Envelope {
        timestamp: now_ns(),
        source_id: APP.into(),
        instance_id: "0".into(),
        tags: [("source_type".to_string(), "APP/PROC/WEB".to_string())].into(),
        message: Some(Message::Log(v2::Log { payload: Bytes::from(text.to_string()), r#type: 0 })),
        ..Default::default()
    }
}

async fn next_ws_log(
    socket: &mut (impl futures::Stream<
        Item = Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>,
    > + Unpin),
) -> events::Envelope {
    loop {
        let frame = tokio::time::timeout(DEADLINE, socket.next()).await.expect("a frame in time");
        if let tokio_tungstenite::tungstenite::Message::Binary(bytes) = frame.expect("open").expect("ok") {
            return events::Envelope::decode(&bytes[..]).expect("dropsonde");
        }
    }
}

/// Sends one log to the agent and checks that each egress path delivers it.
async fn check_every_path(
    endpoints: &Endpoints,
    registry: &Registry,
    agent_tls: Option<ClientTlsConfig>,
    rlp_tls: Option<ClientTlsConfig>,
) {
    // Wait for the nozzle, then open one stream on every path.
    assert!(wait_until(DEADLINE, || registry.sum("subscriptions", &[("component", "doppler")]) >= 1).await);
    let mut rlp = EgressClient::new(channel(endpoints.rlp_grpc, rlp_tls).await)
        .batched_receiver(EgressBatchRequest {
            selectors: vec![Selector {
                source_id: APP.into(),
                message: Some(selector::Message::Log(v2::LogSelector {})),
            }],
            use_preferred_tags: true,
            ..Default::default()
        })
        .await
        .expect("RLP stream")
        .into_inner();
    let gateway = endpoints.rlp_gateway;
    // "hello egress" in base64, as the JSON carries the payload.
    let sse = tokio::spawn(async move {
        read_http_until(gateway, &format!("/v2/read?log&source_id={APP}"), b"aGVsbG8gZWdyZXNz").await
    });
    let ws = |path: String| async move {
        tokio_tungstenite::connect_async(format!("ws://{}{path}", endpoints.traffic_controller)).await.expect("ws").0
    };
    let mut app_stream = ws(format!("/apps/{APP}/stream")).await;
    let mut firehose = ws("/firehose/egress-test?filter-type=logs".into()).await;
    // The nozzle, the RLP stream, the SSE stream's, the app hub's and the firehose's subscriptions.
    assert!(wait_until(DEADLINE, || registry.sum("subscriptions", &[("component", "doppler")]) >= 5).await);

    let agent = channel(endpoints.agent_grpc, agent_tls).await;
    let batch = EnvelopeBatch { batch: vec![the_log("hello egress")] };
    IngressClient::new(agent).batch_sender(futures::stream::iter([batch])).await.expect("agent accepts");

    let batch = tokio::time::timeout(DEADLINE, rlp.message()).await.expect("in time").expect("ok").expect("a batch");
    assert_eq!(
        &batch.batch[0]
            .message
            .as_ref()
            .map(|m| match m {
                Message::Log(log) => log.payload.clone(),
                _ => Bytes::new(),
            })
            .unwrap()[..],
        b"hello egress"
    );
    let sse = sse.await.unwrap();
    assert!(String::from_utf8_lossy(&sse).contains("data: {\"batch\":[{"), "{}", String::from_utf8_lossy(&sse));
    for socket in [&mut app_stream, &mut firehose] {
        let v1 = next_ws_log(socket).await;
        let log = v1.log_message.expect("a log message");
        assert_eq!((&log.message[..], log.app_id.as_deref()), (&b"hello egress"[..], Some(APP)));
    }
    assert!(wait_until(DEADLINE, || registry.sum("ingress", &[("component", "log-cache")]) >= 1).await);
    let recent =
        read_http_until(endpoints.traffic_controller, &format!("/apps/{APP}/recentlogs"), b"hello egress").await;
    let head = String::from_utf8_lossy(&recent[..recent.len().min(300)]).to_string();
    assert!(head.starts_with("HTTP/1.1 200") && head.contains("multipart/x-protobuf; boundary="), "{head}");
    assert!(recent.windows(12).any(|w| w == b"hello egress"), "recent logs hold the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_sent_to_the_agent_reaches_every_egress_path_and_recent_logs() {
    let pipeline = Pipeline::bind(PipelineConfig::ephemeral()).await.expect("pipeline binds");
    let endpoints = pipeline.endpoints().clone();
    let registry = pipeline.registry();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(pipeline.serve(stop.clone().cancelled_owned()));
    check_every_path(&endpoints, &registry, None, None).await;
    stop.cancel();
    tokio::time::timeout(DEADLINE, serving).await.expect("stops in time").expect("no panic").expect("clean shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_chain_runs_with_mutual_tls_on_every_internal_hop() {
    let pki = TestPki::new(&["doppler", "reverselogproxy", "metron", "log-cache"]);
    let (server, client) = (pki.server_files(), pki.client_files());
    let mut config = PipelineConfig::ephemeral();
    config.agent.tls = Some(server.clone());
    config.agent.doppler_tls = Some(client.clone());
    config.doppler.tls = Some(server.clone());
    config.log_cache.tls = Some(server.clone());
    config.log_cache.nozzle.tls = Some(client.clone());
    config.traffic_controller.doppler_tls = Some(client.clone());
    config.traffic_controller.rlp.tls = Some(server.clone());
    config.traffic_controller.log_cache_tls = Some(client.clone());
    config.traffic_controller.agent_tls = Some(client.clone());
    let pipeline = Pipeline::bind(config).await.expect("pipeline binds");
    let endpoints = pipeline.endpoints().clone();
    let registry = pipeline.registry();
    let stop = CancellationToken::new();
    let serving = tokio::spawn(pipeline.serve(stop.clone().cancelled_owned()));

    // A plaintext client is refused by the RLP.
    let plain = Endpoint::from_shared(format!("http://{}", endpoints.rlp_grpc)).unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        let channel = plain.connect().await.ok()?;
        EgressClient::new(channel).batched_receiver(EgressBatchRequest::default()).await.ok()
    })
    .await;
    assert!(!matches!(refused, Ok(Some(_))), "the RLP served a plaintext client");

    let agent_tls = client.client_config("metron").expect("client TLS");
    let rlp_tls = client.client_config("reverselogproxy").expect("client TLS");
    check_every_path(&endpoints, &registry, Some(agent_tls), Some(rlp_tls)).await;
    stop.cancel();
    tokio::time::timeout(DEADLINE, serving).await.expect("stops in time").expect("no panic").expect("clean shutdown");
}
