//! What every traffic-controller test needs: Dopplers and a traffic controller on 127.0.0.1:0,
//! envelopes sent into a Doppler, subscriptions read, signed tokens.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::Duration;

use loggregator_proto::bytes::Bytes;
use loggregator_proto::tonic::transport::{Channel, Endpoint};
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, selector, Envelope, EnvelopeBatch, Selector};
use plumbing::test_support::Running;
use plumbing::tls::TlsFiles;
use plumbing::Registry;
use traffic_controller::{Addrs, Config, TrafficController};

pub const DEADLINE: Duration = Duration::from_secs(20);
pub const APP: &str = "6f1c4b0e-1111-4222-8333-444455556666";

pub async fn start_doppler_at(addr: SocketAddr, tls: Option<TlsFiles>) -> Running {
    let registry = Registry::new().scoped("doppler");
    let config = doppler::Config { grpc_addr: addr, tls, ..doppler::Config::default() };
    let doppler = doppler::Doppler::bind(config, &registry).await.expect("doppler binds");
    let addr = doppler.local_addrs().grpc;
    Running::spawn(addr, registry, |shutdown| async move { doppler.serve(shutdown).await.expect("doppler serves") })
}

pub async fn start_doppler() -> Running {
    start_doppler_at("127.0.0.1:0".parse().unwrap(), None).await
}

/// A config reading `dopplers`, every listener on 127.0.0.1:0, short timers for tests.
pub fn config(dopplers: &[&Running]) -> Config {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let mut config = Config {
        dopplers: dopplers.iter().map(|d| d.addr.to_string()).collect(),
        resolve_interval: Duration::from_millis(200),
        shutdown_grace: Duration::from_secs(2),
        ..Config::default()
    };
    config.rlp.addr = any;
    config.gateway.addr = any;
    config.websocket.addr = any;
    config
}

pub struct Tc {
    pub running: Running,
    pub addrs: Addrs,
}

pub async fn start_tc(config: Config) -> Tc {
    let registry = Registry::new();
    let tc = TrafficController::bind(config, &registry).await.expect("traffic controller binds");
    let addrs = tc.local_addrs();
    let running = Running::spawn(addrs.rlp, registry, |shutdown| async move {
        tc.serve(shutdown).await.expect("traffic controller serves")
    });
    Tc { running, addrs }
}

pub async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

/// Sends `envelopes` to the Doppler at `addr` on one BatchSender stream, 100 to a batch.
pub async fn send(addr: SocketAddr, envelopes: Vec<Envelope>) {
    let mut client = IngressClient::new(channel(addr).await);
    let batches: Vec<EnvelopeBatch> =
        envelopes.chunks(100).map(|chunk| EnvelopeBatch { batch: chunk.to_vec() }).collect();
    client.batch_sender(futures::stream::iter(batches)).await.expect("batch sender ends ok");
}

pub fn log_envelope(source_id: &str, i: u64) -> Envelope {
    Envelope {
        timestamp: 1_700_000_000_000_000_000 + i as i64,
        source_id: source_id.into(),
        instance_id: "2".into(),
        tags: [("i".to_string(), i.to_string()), ("source_type".to_string(), "APP/PROC/WEB".to_string())].into(),
        message: Some(Message::Log(v2::Log { payload: Bytes::from(format!("line {i}")), r#type: 0 })),
        ..Default::default()
    }
}

pub fn counter_envelope(source_id: &str, name: &str, i: u64) -> Envelope {
    Envelope {
        timestamp: 1_700_000_000_000_000_000 + i as i64,
        source_id: source_id.into(),
        message: Some(Message::Counter(v2::Counter { name: name.into(), delta: 1, total: i })),
        ..Default::default()
    }
}

pub fn event_envelope(source_id: &str) -> Envelope {
    Envelope {
        timestamp: 1,
        source_id: source_id.into(),
        message: Some(Message::Event(v2::Event { title: "t".into(), body: "b".into() })),
        ..Default::default()
    }
}

pub fn selector(source_id: &str, message: selector::Message) -> Selector {
    Selector { source_id: source_id.into(), message: Some(message) }
}

pub fn log_selector(source_id: &str) -> Selector {
    selector(source_id, selector::Message::Log(v2::LogSelector {}))
}

/// The `i` tag of a log from [`log_envelope`] (in `deprecated_tags` without preferred tags).
pub fn index(envelope: &Envelope) -> u64 {
    let deprecated = || match envelope.deprecated_tags.get("i").and_then(|v| v.data.clone()) {
        Some(v2::value::Data::Text(text)) => Some(text),
        _ => None,
    };
    envelope.tags.get("i").cloned().or_else(deprecated).and_then(|i| i.parse().ok()).expect("an i tag")
}

/// The Dopplers subscribed to by the traffic controller's streams: what the Doppler counts.
pub fn doppler_subscriptions(doppler: &Running) -> i64 {
    doppler.registry.sum("subscriptions", &[]) as i64
}

pub const SECRET: &str = "traffic-controller-secret";

/// A bearer token signed with [`SECRET`], with `scopes`, for `user`.
pub fn token(scopes: &[&str], user: &str) -> String {
    use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 600;
    let claims = serde_json::json!({ "scope": scopes, "user_id": user, "exp": exp });
    let jwt =
        encode(&Header::new(Algorithm::HS256), &claims, &EncodingKey::from_secret(SECRET.as_bytes())).expect("encodes");
    format!("bearer {jwt}")
}

/// Turns auth on with [`SECRET`] and an ACL letting `alice` read [`APP`].
pub fn with_auth(config: &mut Config) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let acl = std::env::temp_dir().join(format!("tc-acl-{}-{n}.toml", std::process::id()));
    std::fs::write(&acl, format!("[sources]\nalice = [\"{APP}\"]\n")).expect("writes acl");
    config.auth.enabled = true;
    config.auth.jwt_keys = vec![auth::JwtKey { algorithm: "HS256".into(), key: auth::Secret(SECRET.into()) }];
    config.auth.acl_file = Some(acl.clone());
    acl
}
pub mod http;
