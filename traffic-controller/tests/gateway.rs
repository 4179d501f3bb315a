//! The RLP gateway read by a raw HTTP client: SSE framing byte for byte, heartbeat, closing, every
//! error row of §5.2, and §5.3's authorization.

mod common;

use std::time::Duration;

use common::http::{get, request, HttpResponse};
use common::*;
use loggregator_proto::json::batch_from_json;
use plumbing::test_support::wait_until;

async fn open(tc: &Tc, target: &str) -> HttpResponse {
    get(tc.addrs.gateway, target, &[]).await
}

fn assert_error(response: &HttpResponse, body: &[u8], status: u16, name: &str, message: &str) {
    assert_eq!(response.status, status);
    assert_eq!(response.header("content-type"), Some("text/plain; charset=utf-8"));
    let expected = format!("{{\"message\":\"{message}\",\"error\":\"{name}\"}}\n");
    assert_eq!(String::from_utf8_lossy(body), expected);
}

#[tokio::test]
async fn batches_arrive_as_one_line_data_events_after_the_headers() {
    let a = start_doppler().await;
    let tc = start_tc(config(&[&a])).await;
    let mut response = open(&tc, "/v2/read?log&source_id=sse-app").await;
    // The head came before any envelope was sent.
    assert_eq!(response.status, 200);
    assert_eq!(response.header("content-type"), Some("text/event-stream"));
    assert_eq!(response.header("cache-control"), Some("no-cache"));
    assert_eq!(response.header("connection"), Some("keep-alive"));
    assert!(wait_until(DEADLINE, || doppler_subscriptions(&a) == 1).await);

    send(a.addr, (0..5).map(|i| log_envelope("sse-app", i)).collect()).await;
    let mut received = Vec::new();
    while received.len() < 5 {
        let event = response.read_through(b"\n\n").await.expect("a data event");
        let text = String::from_utf8(event).unwrap();
        let json = text.strip_prefix("data: ").expect("a data line").strip_suffix("\n\n").unwrap();
        assert!(!json.contains('\n'), "one line: {json}");
        received.extend(batch_from_json(json).expect("protojson a Go client decodes").batch);
        // emit-unpopulated keys are present.
        assert!(json.contains("\"deprecated_tags\":{}"), "{json}");
    }
    assert_eq!(received, (0..5).map(|i| log_envelope("sse-app", i)).collect::<Vec<_>>());
    assert!(wait_until(DEADLINE, || tc.running.metric("egress", &[("component", "rlp-gateway")]) == 5).await);
}

#[tokio::test]
async fn an_idle_stream_gets_heartbeats_and_closes_after_the_timeout() {
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    config.gateway.heartbeat_interval = Duration::from_millis(200);
    config.gateway.stream_timeout = Duration::from_millis(1500);
    let tc = start_tc(config).await;
    let mut response = open(&tc, "/v2/read?counter").await;
    let heartbeat = String::from_utf8(response.read_through(b"\n\n").await.expect("a heartbeat")).unwrap();
    let seconds = heartbeat.strip_prefix("event: heartbeat\ndata: ").and_then(|s| s.strip_suffix("\n\n"));
    let seconds: u64 = seconds.expect("exact heartbeat shape").parse().expect("unix seconds");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!(seconds.abs_diff(now) <= 2, "{seconds} vs {now}");

    let rest = String::from_utf8(response.read_to_end().await).unwrap();
    assert!(response.ended, "the response ends after closing");
    assert!(rest.ends_with("event: closing\ndata: closing due to stream timeout\n\n"), "{rest:?}");
    let heartbeats = rest.matches("event: heartbeat\n").count();
    assert!(heartbeats >= 2, "{rest:?}");
}

#[tokio::test]
async fn every_error_row_of_section_5_2() {
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    config.rlp.max_streams = 0;
    let tc = start_tc(config).await;
    let addr = tc.addrs.gateway;

    let mut response = request(addr, "POST", "/v2/read?log", &[], b"").await;
    let body = response.read_to_end().await;
    assert_error(&response, &body, 405, "method_not_allowed", "method not allowed");

    for target in ["/v2/read", "/v2/read?"] {
        let mut response = get(addr, target, &[]).await;
        let body = response.read_to_end().await;
        assert_error(&response, &body, 400, "empty_query", "query cannot be empty");
    }
    let mut response = get(addr, "/v2/read?source_id=a&shard_id=b", &[]).await;
    let body = response.read_to_end().await;
    assert_error(&response, &body, 400, "missing_envelope_type", "query must provide at least one envelope type");

    // No stream slot: the RLP cannot open the stream.
    let mut response = get(addr, "/v2/read?log", &[]).await;
    let body = response.read_to_end().await;
    assert_error(&response, &body, 503, "streaming_unavailable", "streaming is temporarily unavailable");

    let mut response = get(addr, "/elsewhere", &[]).await;
    response.read_to_end().await;
    assert_eq!(response.status, 404);
}

#[tokio::test]
async fn authorization_is_checked_and_every_failure_is_the_same_404() {
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    let acl = with_auth(&mut config);
    let tc = start_tc(config).await;
    let addr = tc.addrs.gateway;
    let alice = token(&["openid"], "alice");
    let bob = token(&["openid"], "bob");
    let logs_admin = token(&["logs.admin"], "ops");
    let firehose = token(&["doppler.firehose"], "nozzle");
    let forged = format!("{}x", token(&["doppler.firehose"], "nozzle"));

    let denied = [
        (format!("/v2/read?log&source_id={APP}"), None),
        (format!("/v2/read?log&source_id={APP}"), Some(bob.as_str())),
        (format!("/v2/read?log&source_id={APP}"), Some(forged.as_str())),
        // A non-admin must name source ids, each a GUID they may read.
        ("/v2/read?log".to_string(), Some(alice.as_str())),
        ("/v2/read?log&source_id=not-a-guid".to_string(), Some(alice.as_str())),
        (format!("/v2/read?log&source_id={APP}&source_id=7f1c4b0e-1111-4222-8333-444455556666"), Some(alice.as_str())),
    ];
    for (target, authorization) in &denied {
        let headers: Vec<(&str, &str)> = authorization.iter().map(|a| ("Authorization", *a)).collect();
        let mut response = get(addr, target, &headers).await;
        let body = response.read_to_end().await;
        assert_error(&response, &body, 404, "not_found", "resource not found");
    }
    let allowed = [
        (format!("/v2/read?log&source_id={APP}"), alice),
        ("/v2/read?log".into(), logs_admin),
        ("/v2/read?counter".into(), firehose),
    ];
    for (target, authorization) in &allowed {
        let response = get(addr, target, &[("Authorization", authorization.as_str())]).await;
        assert_eq!(response.status, 200, "{target}");
        assert_eq!(response.header("content-type"), Some("text/event-stream"));
    }
    std::fs::remove_file(acl).ok();
}

#[tokio::test]
async fn a_public_listener_off_loopback_needs_auth_unless_forced() {
    let a = start_doppler().await;
    let mut open_config = config(&[&a]);
    open_config.gateway.addr = "0.0.0.0:0".parse().unwrap();
    let refused = traffic_controller::TrafficController::bind(open_config.clone(), &plumbing::Registry::new()).await;
    let error = refused.err().expect("refused").to_string();
    assert!(error.contains("auth off"), "{error}");
    open_config.allow_unauthenticated_public = true;
    assert!(traffic_controller::TrafficController::bind(open_config, &plumbing::Registry::new()).await.is_ok());
}

#[tokio::test]
async fn with_a_certificate_the_public_listeners_speak_https() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = plumbing::test_support::TestPki::new(&["log-stream"]);
    let server = pki.server_files();
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    config.public_tls = Some(traffic_controller::config::PublicTls {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
    });
    let tc = start_tc(config).await;

    let mut roots = rustls::RootCertStore::empty();
    for ca in plumbing::tls::read_certs(&server.ca_file).unwrap() {
        roots.add(ca).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    for addr in [tc.addrs.gateway, tc.addrs.websocket] {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("log-stream").unwrap();
        let mut tls =
            tokio_rustls::TlsConnector::from(Arc::new(client.clone())).connect(name, tcp).await.expect("handshake");
        tls.write_all(b"GET /v2/read HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut response = Vec::new();
        tls.read_to_end(&mut response).await.ok();
        let response = String::from_utf8_lossy(&response);
        let expected = if addr == tc.addrs.gateway { "HTTP/1.1 400" } else { "HTTP/1.1 404" };
        assert!(response.starts_with(expected), "{response}");
    }
    // Plain HTTP is not served there.
    let mut plain = tokio::net::TcpStream::connect(tc.addrs.gateway).await.unwrap();
    plain.write_all(b"GET /v2/read?log HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(DEADLINE, plain.read(&mut buf)).await.expect("answers or closes").unwrap_or(0);
    assert!(!String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn a_flood_of_silent_connections_does_not_keep_an_https_client_out() {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let pki = plumbing::test_support::TestPki::new(&["log-stream"]);
    let server = pki.server_files();
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    config.public_tls = Some(traffic_controller::config::PublicTls {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
    });
    let tc = start_tc(config).await;
    // More silent connections than there are places for handshakes in progress: before, each held
    // its place for the whole handshake timeout and the real client below waited behind them.
    let mut flood = Vec::new();
    for _ in 0..400 {
        flood.push(tokio::net::TcpStream::connect(tc.addrs.gateway).await.unwrap());
    }
    let mut roots = rustls::RootCertStore::empty();
    for ca in plumbing::tls::read_certs(&server.ca_file).unwrap() {
        roots.add(ca).unwrap();
    }
    let client = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let started = std::time::Instant::now();
    let tcp = tokio::net::TcpStream::connect(tc.addrs.gateway).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("log-stream").unwrap();
    let connect = tokio_rustls::TlsConnector::from(Arc::new(client)).connect(name, tcp);
    let mut tls = tokio::time::timeout(DEADLINE, connect).await.expect("in time").expect("handshake");
    tls.write_all(b"GET /v2/read HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut response = Vec::new();
    tls.read_to_end(&mut response).await.ok();
    assert!(String::from_utf8_lossy(&response).starts_with("HTTP/1.1 400"));
    let took = started.elapsed();
    assert!(took < std::time::Duration::from_secs(2), "served after {took:?}");
    assert!(tc.running.metric("http_pending_evicted", &[("listener", "gateway")]) >= 400 - 256);
    drop(flood);
}

#[tokio::test]
async fn a_gateway_configured_with_a_remote_rlp_reads_it_over_grpc() {
    let a = start_doppler().await;
    // The RLP of one traffic controller...
    let rlp = start_tc(config(&[&a])).await;
    // ...read by the gateway of another that reads no Doppler itself.
    let mut gateway_config = config(&[]);
    gateway_config.gateway.rlp_addr = Some(rlp.addrs.rlp.to_string());
    let gateway = start_tc(gateway_config).await;
    let mut response = open(&gateway, "/v2/read?log&source_id=remote-app").await;
    assert_eq!(response.status, 200);
    assert!(wait_until(DEADLINE, || doppler_subscriptions(&a) == 1).await, "the remote RLP subscribed");
    send(a.addr, (0..3).map(|i| log_envelope("remote-app", i)).collect()).await;
    let mut received = Vec::new();
    while received.len() < 3 {
        let event = String::from_utf8(response.read_through(b"\n\n").await.expect("an event")).unwrap();
        let json = event.strip_prefix("data: ").expect("a data event").trim_end();
        received.extend(batch_from_json(json).expect("protojson").batch);
    }
    assert_eq!(received, (0..3).map(|i| log_envelope("remote-app", i)).collect::<Vec<_>>());
    assert_eq!(rlp.running.metric("subscriptions", &[("component", "reverse-log-proxy")]), 1);
}
