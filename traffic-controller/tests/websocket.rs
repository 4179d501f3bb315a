//! The v1 traffic controller read by tokio-tungstenite: dropsonde frames checked against §3.4,
//! keepalive, slow consumers, recent logs from a real Log Cache, and §4.2's authorization.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::http::{get, request};
use common::*;
use futures::StreamExt;
use loggregator_proto::bytes::Bytes;
use loggregator_proto::convert::uuid_to_string;
use loggregator_proto::events::{self, envelope::EventType};
use loggregator_proto::prost::Message as _;
use loggregator_proto::tonic;
use loggregator_proto::v2::ingress_server::{Ingress, IngressServer};
use loggregator_proto::v2::{self, envelope::Message, Envelope, EnvelopeBatch};
use plumbing::test_support::wait_until;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as Ws;

type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(addr: SocketAddr, path: &str, headers: &[(&'static str, &str)]) -> Socket {
    let mut request = format!("ws://{addr}{path}").into_client_request().unwrap();
    for (name, value) in headers {
        request.headers_mut().insert(*name, value.parse().unwrap());
    }
    tokio_tungstenite::connect_async(request).await.expect("websocket connects").0
}

/// The next dropsonde envelope (pings are answered by tungstenite as it reads).
async fn next_v1(socket: &mut Socket) -> events::Envelope {
    loop {
        let message = tokio::time::timeout(DEADLINE, socket.next()).await.expect("a frame in time");
        match message.expect("stream open").expect("frame ok") {
            Ws::Binary(frame) => return events::Envelope::decode(&frame[..]).expect("a dropsonde envelope"),
            Ws::Ping(_) | Ws::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

fn gauge(source_id: &str, instance: &str, metrics: &[(&str, &str, f64)], timestamp: i64) -> Envelope {
    Envelope {
        timestamp,
        source_id: source_id.into(),
        instance_id: instance.into(),
        message: Some(Message::Gauge(v2::Gauge {
            metrics: metrics
                .iter()
                .map(|(k, unit, value)| (k.to_string(), v2::GaugeValue { unit: unit.to_string(), value: *value }))
                .collect(),
        })),
        ..Default::default()
    }
}

fn container_metric(instance: &str, timestamp: i64) -> Envelope {
    gauge(
        APP,
        instance,
        &[
            ("cpu", "percentage", 1.5),
            ("memory", "bytes", 1024.0),
            ("disk", "bytes", 2048.0),
            ("memory_quota", "bytes", 4096.0),
            ("disk_quota", "bytes", 8192.0),
        ],
        timestamp,
    )
}

fn timer(request_id: &str) -> Envelope {
    Envelope {
        timestamp: 5,
        source_id: APP.into(),
        instance_id: "1".into(),
        tags: [
            ("request_id".to_string(), request_id.to_string()),
            ("method".to_string(), "GET".to_string()),
            ("status_code".to_string(), "200".to_string()),
            ("uri".to_string(), "/x".to_string()),
        ]
        .into(),
        message: Some(Message::Timer(v2::Timer { name: "http".into(), start: 1, stop: 2 })),
        ..Default::default()
    }
}

#[tokio::test]
async fn an_app_stream_carries_the_apps_v1_envelopes_as_section_3_4_converts_them() {
    let a = start_doppler().await;
    let tc = start_tc(config(&[&a])).await;
    let mut socket = connect(tc.addrs.websocket, &format!("/apps/{APP}/stream"), &[]).await;
    assert!(wait_until(DEADLINE, || doppler_subscriptions(&a) == 1).await);

    send(
        a.addr,
        vec![
            event_envelope(APP),
            counter_envelope(APP, "requests", 1),
            log_envelope("another-app", 1),
            gauge(APP, "0", &[("only", "x", 1.0)], 3),
            timer("not-a-guid"),
            log_envelope(APP, 7),
            container_metric("3", 9),
            timer("9a8b7c6d-0000-4111-8222-333344445555"),
        ],
    )
    .await;
    let log = next_v1(&mut socket).await;
    assert_eq!(log.event_type, EventType::LogMessage as i32);
    let message = log.log_message.as_ref().unwrap();
    assert_eq!(message.app_id.as_deref(), Some(APP));
    assert_eq!(message.source_type.as_deref(), Some("APP/PROC/WEB"));
    assert_eq!(message.source_instance.as_deref(), Some("2"));
    assert_eq!(&message.message[..], b"line 7");
    assert_eq!(log.tags.get("source_id").map(String::as_str), Some(APP));

    let metric = next_v1(&mut socket).await;
    assert_eq!(metric.event_type, EventType::ContainerMetric as i32);
    let cm = metric.container_metric.as_ref().unwrap();
    assert_eq!((cm.application_id.as_str(), cm.instance_index), (APP, 3));
    assert_eq!((cm.cpu_percentage, cm.memory_bytes, cm.disk_bytes), (1.5, 1024, 2048));
    assert_eq!((cm.memory_bytes_quota, cm.disk_bytes_quota), (Some(4096), Some(8192)));

    let http = next_v1(&mut socket).await;
    assert_eq!(http.event_type, EventType::HttpStartStop as i32);
    let hss = http.http_start_stop.as_ref().unwrap();
    assert_eq!((hss.start_timestamp, hss.stop_timestamp, hss.status_code), (1, 2, 200));
    assert_eq!(hss.application_id.as_ref().map(uuid_to_string).as_deref(), Some(APP));
    assert_eq!(Some(uuid_to_string(&hss.request_id)).as_deref(), Some("9a8b7c6d-0000-4111-8222-333344445555"));

    // Nothing else came: the event, the counter, the other app, the plain gauge and the timer
    // without a GUID request id are not on the app's v1 stream.
    send(a.addr, vec![log_envelope(APP, 8)]).await;
    let next = next_v1(&mut socket).await;
    assert_eq!(&next.log_message.unwrap().message[..], b"line 8");
}

#[tokio::test]
async fn firehose_filters_and_shares_a_subscription_id() {
    let a = start_doppler().await;
    let tc = start_tc(config(&[&a])).await;
    let addr = tc.addrs.websocket;
    let mut logs = connect(addr, "/firehose/only-logs?filter-type=logs", &[]).await;
    let mut metrics = connect(addr, "/firehose/only-metrics?filter-type=metrics", &[]).await;
    let mut all = connect(addr, "/firehose/everything", &[]).await;
    assert!(wait_until(DEADLINE, || doppler_subscriptions(&a) == 3).await);
    send(a.addr, vec![log_envelope("x", 1), counter_envelope("y", "c", 2), event_envelope("z")]).await;

    assert_eq!(next_v1(&mut logs).await.event_type, EventType::LogMessage as i32);
    assert_eq!(next_v1(&mut metrics).await.event_type, EventType::CounterEvent as i32);
    let kinds = [next_v1(&mut all).await.event_type, next_v1(&mut all).await.event_type];
    assert_eq!(kinds, [EventType::LogMessage as i32, EventType::CounterEvent as i32]);
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_and_one_that_does_not_is_closed_with_1008() {
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    config.websocket.ping_interval = Duration::from_millis(100);
    config.websocket.pong_timeout = Duration::from_millis(500);
    let tc = start_tc(config).await;
    let addr = tc.addrs.websocket;

    // Reads (so tungstenite answers every ping) for longer than the pong timeout.
    let mut lively = connect(addr, "/firehose/lively", &[]).await;
    let mut pings = 0;
    let until = tokio::time::Instant::now() + Duration::from_millis(1500);
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(until, lively.next()).await {
        match frame {
            Ws::Ping(payload) => {
                assert!(payload.is_empty());
                pings += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(pings >= 3, "pinged every interval after a pong: {pings}");

    // Reads nothing, so answers nothing, until well past the timeout.
    let mut silent = connect(addr, "/firehose/silent", &[]).await;
    assert!(wait_until(DEADLINE, || tc.running.metric("websocket_connections", &[]) == 2).await);
    assert!(wait_until(DEADLINE, || tc.running.metric("websocket_connections", &[]) == 1).await, "closed");
    let close = loop {
        match silent.next().await {
            Some(Ok(Ws::Close(frame))) => break frame.expect("a close frame with a code"),
            Some(Ok(Ws::Ping(_))) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.code, CloseCode::Policy);
    assert_eq!(close.reason.as_str(), "Client did not respond to ping before keep-alive timeout expired.");
    lively.close(None).await.ok();
}

/// A spy agent: records what `Ingress/Send` is given.
#[derive(Clone, Default)]
struct SpyAgent(Arc<Mutex<Vec<Envelope>>>);

#[tonic::async_trait]
impl Ingress for SpyAgent {
    async fn sender(
        &self,
        _: tonic::Request<tonic::Streaming<Envelope>>,
    ) -> Result<tonic::Response<v2::IngressResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("spy"))
    }
    async fn batch_sender(
        &self,
        _: tonic::Request<tonic::Streaming<EnvelopeBatch>>,
    ) -> Result<tonic::Response<v2::BatchSenderResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("spy"))
    }
    async fn send(
        &self,
        request: tonic::Request<EnvelopeBatch>,
    ) -> Result<tonic::Response<v2::SendResponse>, tonic::Status> {
        self.0.lock().unwrap().extend(request.into_inner().batch);
        Ok(tonic::Response::new(v2::SendResponse {}))
    }
}

async fn spy_agent() -> (SocketAddr, SpyAgent) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let spy = SpyAgent::default();
    let server = tonic::transport::Server::builder().add_service(IngressServer::new(spy.clone()));
    tokio::spawn(server.serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)));
    (addr, spy)
}

#[tokio::test]
async fn a_consumer_that_stops_reading_is_closed_counted_and_announced_and_no_one_else_suffers() {
    let a = start_doppler().await;
    let (agent, spy) = spy_agent().await;
    let mut config = config(&[&a]);
    config.websocket.slow_consumer_timeout = Duration::from_millis(300);
    config.agent_addr = Some(agent.to_string());
    let tc = start_tc(config).await;
    let addr = tc.addrs.websocket;

    // Small socket buffers on the stalled client so its TCP window fills quickly.
    let request = format!("ws://{addr}/apps/{APP}/stream").into_client_request().unwrap();
    let stream = {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(addr).await.unwrap()
    };
    let (stalled, _) =
        tokio_tungstenite::client_async_with_config(request, stream, Some(WebSocketConfig::default())).await.unwrap();
    let mut healthy = connect(addr, &format!("/apps/{APP}/stream"), &[]).await;
    assert!(wait_until(DEADLINE, || tc.running.metric("websocket_connections", &[]) == 2).await);
    // Both connections share one subscription to the Doppler.
    assert_eq!(doppler_subscriptions(&a), 1);

    let big = |i: u64| {
        let mut envelope = log_envelope(APP, i);
        envelope.message = Some(Message::Log(v2::Log { payload: Bytes::from(vec![b'x'; 16 << 10]), r#type: 0 }));
        envelope
    };
    let reader = tokio::spawn(async move {
        let mut n = 0;
        while n < 400 {
            let _ = next_v1(&mut healthy).await;
            n += 1;
        }
        healthy
    });
    for chunk in 0..4 {
        send(a.addr, (chunk * 100..chunk * 100 + 100).map(big).collect()).await;
    }
    let mut healthy =
        tokio::time::timeout(DEADLINE, reader).await.expect("the healthy reader gets everything").unwrap();

    assert!(wait_until(DEADLINE, || tc.running.metric("doppler_proxy_slow_consumer", &[]) == 1).await);
    assert!(wait_until(DEADLINE, || !spy.0.lock().unwrap().is_empty()).await, "announced");
    let event = spy.0.lock().unwrap()[0].clone();
    assert_eq!(event.source_id, "traffic_controller");
    let Some(Message::Event(event)) = event.message else { panic!("an event") };
    assert_eq!(event.title, "Traffic Controller has disconnected slow consumer");
    assert!(event.body.contains(&format!("Path: /apps/{APP}/stream")), "{}", event.body);
    assert!(event.body.contains("Remote Address: 127.0.0.1:"), "{}", event.body);
    // Closing a client that reads nothing may take the close frame's write timeout.
    assert!(wait_until(DEADLINE, || tc.running.metric("websocket_connections", &[]) == 1).await);
    drop(stalled);

    // The healthy one still streams.
    send(a.addr, vec![log_envelope(APP, 1000)]).await;
    assert_eq!(&next_v1(&mut healthy).await.log_message.unwrap().message[..], b"line 1000");
}

#[tokio::test]
async fn websocket_routes_check_authorization_as_section_4_2() {
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    let acl = with_auth(&mut config);
    let tc = start_tc(config).await;
    let addr = tc.addrs.websocket;
    let alice = token(&["openid"], "alice");
    let bob = token(&["openid"], "bob");
    let firehose = token(&["doppler.firehose"], "nozzle");
    let logs_admin = token(&["logs.admin"], "ops");
    let upgrade = [
        ("Connection", "Upgrade"),
        ("Upgrade", "websocket"),
        ("Sec-WebSocket-Version", "13"),
        ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];
    let with = |token: Option<&str>| {
        let mut headers: Vec<(&str, String)> = upgrade.iter().map(|(n, v)| (*n, v.to_string())).collect();
        if let Some(token) = token {
            headers.push(("Authorization", token.to_string()));
        }
        headers
    };
    let status = |target: String, headers: Vec<(&'static str, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let mut response = get(addr, &target, &headers).await;
        let body = if response.status == 101 { Vec::new() } else { response.read_to_end().await };
        (response.status, response.header("www-authenticate").map(str::to_string), String::from_utf8(body).unwrap())
    };
    let app = format!("/apps/{APP}/stream");
    assert_eq!(status("/apps/not-a-guid/stream".into(), with(Some(&alice))).await.0, 401);
    assert_eq!(status(app.clone(), with(None)).await, (401, Some("Basic".into()), String::new()));
    assert_eq!(status(app.clone(), with(Some("bearer nonsense"))).await.0, 401);
    assert_eq!(status(app.clone(), with(Some(&bob))).await, (404, None, String::new()));
    assert_eq!(status(app.clone(), with(Some(&alice))).await.0, 101);
    // The cookie carries the token when there is no header.
    let mut cookie = with(None);
    cookie.push(("Cookie", format!("authorization={}", alice.replace(' ', "%20"))));
    assert_eq!(status(app.clone(), cookie).await.0, 101);

    assert_eq!(
        status("/firehose/x".into(), with(None)).await,
        (401, Some("Basic".into()), "You are not authorized. authorization not provided".into())
    );
    assert_eq!(
        status("/firehose/x".into(), with(Some(&logs_admin))).await,
        (401, Some("Basic".into()), "You are not authorized. invalid authorization".into())
    );
    assert_eq!(status("/firehose/x".into(), with(Some(&firehose))).await.0, 101);
    // Recent logs use the app check too.
    assert_eq!(status(format!("/apps/{APP}/recentlogs"), with(Some(&bob))).await.0, 404);
    std::fs::remove_file(acl).ok();
}

/// The parts of a `multipart/x-protobuf` body, found by its boundary as noaa does.
fn parts(content_type: &str, body: &[u8]) -> Vec<events::Envelope> {
    let boundary = content_type.split("boundary=").nth(1).expect("a boundary");
    let delimiter = format!("--{boundary}");
    let text = body.to_vec();
    let mut out = Vec::new();
    let mut rest = &text[..];
    while let Some(at) = rest.windows(delimiter.len()).position(|w| w == delimiter.as_bytes()) {
        rest = &rest[at + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let rest_start = rest.strip_prefix(b"\r\n\r\n").expect("no part headers");
        let end =
            rest_start.windows(delimiter.len() + 2).position(|w| w == format!("\r\n{delimiter}").as_bytes()).unwrap();
        out.push(events::Envelope::decode(&rest_start[..end]).expect("a v1 envelope"));
        rest = &rest_start[end..];
    }
    out
}

#[tokio::test]
async fn recent_logs_and_container_metrics_come_from_log_cache_newest_first() {
    let registry = plumbing::Registry::new();
    let any = "127.0.0.1:0".parse().unwrap();
    let mut lc_config = log_cache::Config { grpc_addr: any, http_addr: any, ..Default::default() };
    lc_config.syslog.addr = any;
    lc_config.nozzle.addrs = vec![];
    let cache = log_cache::LogCache::bind(lc_config, &registry).await.expect("log cache binds");
    let lc_addr = cache.local_addrs().grpc;
    let service = cache.service();
    let _cache = plumbing::test_support::Running::spawn(lc_addr, registry, |s| async move {
        cache.serve(s).await.expect("log cache serves")
    });
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let mut logs: Vec<Envelope> = (0..5).map(|i| log_envelope(APP, i)).collect();
    logs.push(container_metric("0", now - 2_000_000_000));
    logs.push(container_metric("0", now - 1_000_000_000));
    logs.push(container_metric("1", now - 3_000_000_000));
    let mut client = loggregator_proto::logcache::v1::ingress_client::IngressClient::new(channel(lc_addr).await);
    client
        .send(loggregator_proto::logcache::v1::SendRequest {
            envelopes: Some(EnvelopeBatch { batch: logs }),
            local_only: false,
        })
        .await
        .expect("log cache takes them");
    drop(service);

    let a = start_doppler().await;
    let mut config = config(&[&a]);
    config.log_cache_addr = Some(lc_addr.to_string());
    let tc = start_tc(config).await;
    let addr = tc.addrs.websocket;

    let mut response = get(addr, &format!("/apps/{APP}/recentlogs?limit=3"), &[("Origin", "https://console")]).await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("access-control-allow-origin"), Some("https://console"));
    let content_type = response.header("content-type").unwrap().to_string();
    assert!(content_type.starts_with("multipart/x-protobuf; boundary="), "{content_type}");
    let body = response.read_to_end().await;
    let got: Vec<Vec<u8>> =
        parts(&content_type, &body).into_iter().map(|e| e.log_message.unwrap().message.to_vec()).collect();
    assert_eq!(got, vec![b"line 4".to_vec(), b"line 3".to_vec(), b"line 2".to_vec()], "newest first, limited");

    let mut response = get(addr, &format!("/apps/{APP}/containermetrics"), &[]).await;
    let content_type = response.header("content-type").unwrap().to_string();
    let body = response.read_to_end().await;
    let metrics: Vec<(i32, i64)> = parts(&content_type, &body)
        .into_iter()
        .map(|e| (e.container_metric.unwrap().instance_index, e.timestamp.unwrap()))
        .collect();
    assert_eq!(metrics, vec![(0, now - 1_000_000_000), (1, now - 3_000_000_000)], "the newest per instance");

    let mut response = get(addr, &format!("/apps/{APP}/recentlogs?limit=-1"), &[]).await;
    response.read_to_end().await;
    assert_eq!(response.status, 400);
}

#[tokio::test]
async fn without_a_log_cache_recent_logs_say_so_and_set_cookie_sets_one() {
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    config.websocket.system_domain = "sys.example.com".into();
    let tc = start_tc(config).await;
    let addr = tc.addrs.websocket;
    let mut response = get(addr, &format!("/apps/{APP}/recentlogs"), &[]).await;
    let content_type = response.header("content-type").unwrap().to_string();
    let body = response.read_to_end().await;
    let only = parts(&content_type, &body);
    assert_eq!(only.len(), 1);
    assert_eq!(only[0].origin, "loggregator.trafficcontroller");
    let message = only[0].log_message.as_ref().unwrap();
    assert_eq!(&message.message[..], b"recent log endpoint requires a log cache. please talk to you operator");
    assert_eq!(message.source_type.as_deref(), Some("Loggregator"));

    let form = b"CookieName=authorization&CookieValue=bearer%20abc";
    let mut response = request(
        addr,
        "POST",
        "/set-cookie",
        &[("Content-Type", "application/x-www-form-urlencoded"), ("Origin", "https://console")],
        form,
    )
    .await;
    response.read_to_end().await;
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("set-cookie"),
        Some("authorization=bearer abc; Domain=doppler.sys.example.com; HttpOnly; Secure; SameSite=Lax")
    );
    assert_eq!(response.header("access-control-allow-credentials"), Some("true"));
    let mut response = request(addr, "POST", "/set-cookie", &[], b"").await;
    response.read_to_end().await;
    assert_eq!(response.status, 400);
    let mut response = get(addr, "/no/such/route", &[]).await;
    response.read_to_end().await;
    assert_eq!(response.status, 404);
}
