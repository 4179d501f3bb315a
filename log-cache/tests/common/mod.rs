//! Shared helpers of the integration tests: start a real log-cache on 127.0.0.1:0, a tiny HTTP
//! client, envelope builders, and polling with a deadline.

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use log_cache::{Addrs, Config, Listeners, LogCache, Store};
use loggregator_proto::logcache::v1::egress_client::EgressClient;
use loggregator_proto::logcache::v1::ingress_client::IngressClient;
use loggregator_proto::logcache::v1::SendRequest;
use loggregator_proto::v2::{envelope, Envelope, EnvelopeBatch, Gauge, GaugeValue, Log};
use plumbing::Registry;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::Channel;

pub const DEADLINE: Duration = Duration::from_secs(10);

/// A running log-cache; dropping it shuts it down.
pub struct Running {
    pub addrs: Addrs,
    pub store: Arc<Store>,
    pub service: Arc<log_cache::service::Service>,
    pub registry: Registry,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Signals shutdown and waits for `serve` to return.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task).await.expect("serve returns after shutdown").expect("serve task");
        }
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addrs.http)
    }

    pub async fn ingress(&self) -> IngressClient<Channel> {
        IngressClient::connect(format!("http://{}", self.addrs.grpc)).await.expect("connects")
    }

    pub async fn egress(&self) -> EgressClient<Channel> {
        EgressClient::connect(format!("http://{}", self.addrs.grpc)).await.expect("connects")
    }

    pub async fn send(&self, envelopes: Vec<Envelope>) {
        self.ingress()
            .await
            .send(SendRequest { envelopes: Some(EnvelopeBatch { batch: envelopes }), local_only: false })
            .await
            .expect("send succeeds");
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A config on 127.0.0.1:0 everywhere, with a fixed memory cap.
pub fn test_config() -> Config {
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    let mut config =
        Config { grpc_addr: any, http_addr: any, memory_limit_bytes: Some(256 << 20), ..Config::default() };
    config.syslog.addr = any;
    config.shutdown_grace = Duration::from_secs(2);
    config
}

pub async fn start(config: Config) -> Running {
    start_with(config, Listeners::default()).await
}

pub async fn start_with(config: Config, listeners: Listeners) -> Running {
    let registry = Registry::new();
    let cache = LogCache::bind_with(config, &registry, listeners).await.expect("binds");
    let addrs = cache.local_addrs();
    let store = cache.store();
    let service = cache.service();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        cache
            .serve(async move {
                let _ = stopped.await;
            })
            .await
            .expect("serves");
    });
    Running { addrs, store, service, registry, stop: Some(stop), task: Some(task) }
}

/// Binds a listener on 127.0.0.1:0.
pub async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binds");
    let addr = listener.local_addr().expect("local addr");
    (listener, addr)
}

/// `GET url` with optional headers: status, content type and body.
pub async fn get(url: &str, headers: &[(&str, &str)]) -> (u16, String, String) {
    request("GET", url, headers, "").await
}

pub async fn request(method: &str, url: &str, headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<Bytes>>();
    let mut builder = http::Request::builder().method(method).uri(url);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let request = builder.body(http_body_util::Full::new(Bytes::from(body.to_string()))).expect("request");
    let response =
        tokio::time::timeout(DEADLINE, client.request(request)).await.expect("answers in time").expect("answers");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = response.into_body().collect().await.expect("body").to_bytes();
    (status, content_type, String::from_utf8(body.to_vec()).expect("utf-8 body"))
}

/// Polls an async condition every few milliseconds until it holds or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = tokio::time::Instant::now() + DEADLINE;
    loop {
        if condition().await {
            return;
        }
        assert!(tokio::time::Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn log_envelope(source: &str, ts: i64, payload: &str) -> Envelope {
    Envelope {
        timestamp: ts,
        source_id: source.into(),
        instance_id: "0".into(),
        deprecated_tags: HashMap::new(),
        tags: [("source_type".to_string(), "APP/PROC/WEB".to_string())].into_iter().collect(),
        message: Some(envelope::Message::Log(Log { payload: Bytes::from(payload.to_string()), r#type: 0 })),
    }
}

pub fn gauge_envelope(source: &str, ts: i64, name: &str, value: f64) -> Envelope {
    Envelope {
        timestamp: ts,
        source_id: source.into(),
        instance_id: "0".into(),
        deprecated_tags: HashMap::new(),
        tags: HashMap::new(),
        message: Some(envelope::Message::Gauge(Gauge {
            metrics: [(name.to_string(), GaugeValue { unit: "bytes".into(), value })].into_iter().collect(),
        })),
    }
}

/// `bearer <jwt>`: an HS256 token signed with `secret`, for `user` with `scopes`, valid ten minutes.
pub fn hs256_token(secret: &str, scopes: &[&str], user: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let exp = log_cache::service::now_nanos() / 1_000_000_000 + 600;
    let claims = serde_json::json!({ "scope": scopes, "user_id": user, "exp": exp });
    let jwt =
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(secret.as_bytes())).expect("encodes");
    format!("bearer {jwt}")
}
