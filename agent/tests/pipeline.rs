//! Agent → Doppler(s) → subscriber over real sockets: completeness, failover, conservation, TLS.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use agent::Agent;
use doppler::Doppler;
use loggregator_proto::bytes::Bytes;
use loggregator_proto::prost::Message as _;
use loggregator_proto::tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use loggregator_proto::tonic::Streaming;
use loggregator_proto::v2::egress_client::EgressClient;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, selector, EgressBatchRequest, Envelope, EnvelopeBatch, Selector};
use loggregator_proto::{events, v2::value::Data};
use plumbing::test_support::{wait_until, Running, TestPki};
use plumbing::tls::TlsFiles;
use plumbing::Registry;

const DEADLINE: Duration = Duration::from_secs(30);

fn doppler_config(addr: &str) -> doppler::Config {
    doppler::Config {
        grpc_addr: addr.parse().unwrap(),
        subscription_buffer: NonZeroUsize::new(100_000).unwrap(),
        ..doppler::Config::default()
    }
}

async fn start_doppler(config: doppler::Config) -> Running {
    let registry = Registry::new().scoped("doppler");
    let doppler = Doppler::bind(config, &registry).await.expect("doppler binds");
    let addr = doppler.local_addrs().grpc;
    Running::spawn(addr, registry, |shutdown| async move { doppler.serve(shutdown).await.expect("doppler serves") })
}

fn agent_config(dopplers: &[SocketAddr]) -> agent::Config {
    agent::Config {
        grpc_addr: "127.0.0.1:0".parse().unwrap(),
        udp_addr: Some("127.0.0.1:0".parse().unwrap()),
        dopplers: dopplers.iter().map(|a| a.to_string()).collect(),
        ingress_buffer: NonZeroUsize::new(100_000).unwrap(),
        stream_max_age: Duration::from_millis(200),
        ..agent::Config::default()
    }
}

/// A running agent and its UDP address.
async fn start_agent(config: agent::Config) -> (Running, Option<SocketAddr>) {
    let registry = Registry::new().scoped("agent");
    let agent = Agent::bind(config, &registry).await.expect("agent binds");
    let addrs = agent.local_addrs();
    let running =
        Running::spawn(
            addrs.grpc,
            registry,
            |shutdown| async move { agent.serve(shutdown).await.expect("agent serves") },
        );
    (running, addrs.udp)
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

fn log_envelope(i: u64) -> Envelope {
    Envelope {
        timestamp: i as i64,
        source_id: "app".into(),
        instance_id: "0".into(),
        tags: [("source_type".to_string(), "APP/PROC/WEB".to_string())].into(),
        message: Some(Message::Log(v2::Log { payload: Bytes::from(format!("line {i}")), r#type: 0 })),
        ..Default::default()
    }
}

fn all_logs() -> Vec<Selector> {
    vec![Selector { source_id: String::new(), message: Some(selector::Message::Log(v2::LogSelector {})) }]
}

type Seen = Arc<parking_lot::Mutex<Vec<Envelope>>>;

fn collect(mut stream: Streaming<EnvelopeBatch>, seen: Seen, count: Arc<AtomicU64>) {
    tokio::spawn(async move {
        while let Ok(Some(batch)) = stream.message().await {
            count.fetch_add(batch.batch.len() as u64, Ordering::SeqCst);
            seen.lock().extend(batch.batch);
        }
    });
}

async fn subscribe(addr: SocketAddr, seen: &Seen, count: &Arc<AtomicU64>) {
    let mut client = EgressClient::new(channel(addr).await);
    let stream = client
        .batched_receiver(EgressBatchRequest { selectors: all_logs(), ..Default::default() })
        .await
        .expect("subscribed")
        .into_inner();
    collect(stream, Arc::clone(seen), Arc::clone(count));
}

/// A Doppler with one subscriber of every log, registered before this returns.
async fn doppler_with_log_subscriber() -> (Running, Seen, Arc<AtomicU64>) {
    let doppler = start_doppler(doppler_config("127.0.0.1:0")).await;
    let seen: Seen = Default::default();
    let count = Arc::new(AtomicU64::new(0));
    subscribe(doppler.addr, &seen, &count).await;
    assert!(wait_until(DEADLINE, || doppler.metric("subscriptions", &[]) == 1).await);
    (doppler, seen, count)
}

async fn send_batches(addr: SocketAddr, envelopes: impl Iterator<Item = Envelope>) {
    let mut client = IngressClient::new(channel(addr).await);
    let all: Vec<Envelope> = envelopes.collect();
    let batches: Vec<EnvelopeBatch> = all.chunks(100).map(|c| EnvelopeBatch { batch: c.to_vec() }).collect();
    client.batch_sender(futures::stream::iter(batches)).await.expect("agent accepts the stream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_sent_to_the_agent_reaches_the_subscriber_unchanged() {
    let (doppler, seen, count) = doppler_with_log_subscriber().await;
    let (agent, _) = start_agent(agent_config(&[doppler.addr])).await;

    const N: u64 = 20_000;
    send_batches(agent.addr, (0..N).map(log_envelope)).await;
    assert!(wait_until(DEADLINE, || count.load(Ordering::SeqCst) == N).await, "got {}", count.load(Ordering::SeqCst));
    let mut got = seen.lock().clone();
    got.sort_by_key(|e| e.timestamp);
    let sent: Vec<Envelope> = (0..N).map(log_envelope).collect();
    assert_eq!(got, sent);
    assert_eq!(agent.metric("ingress", &[]), N);
    assert_eq!(agent.metric("egress", &[]), N);
    assert_eq!(agent.metric("dropped", &[]), 0);
    agent.shutdown().await;
    doppler.shutdown().await;
}

/// The ingress buffer is bounded by bytes as well as by count: with no Doppler draining it, an
/// agent whose count limit would hold every envelope keeps only what fits its byte limit and counts
/// the rest as dropped, and keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ingress_buffer_holds_no_more_bytes_than_its_limit() {
    // A "Doppler" that never answers: connections open (the kernel accepts them) and stall.
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = agent::Config {
        ingress_buffer: NonZeroUsize::new(100_000).unwrap(),
        ingress_buffer_bytes: 256 << 10,
        connections: NonZeroUsize::new(1).unwrap(),
        ..agent_config(&[stalled.local_addr().unwrap()])
    };
    let (agent, _) = start_agent(config).await;
    const N: u64 = 20_000;
    let padded = |i| {
        let mut envelope = log_envelope(i);
        envelope.message = Some(Message::Log(v2::Log { payload: Bytes::from(vec![b'x'; 1000]), r#type: 0 }));
        envelope
    };
    send_batches(agent.addr, (0..N).map(padded)).await;
    assert_eq!(agent.metric("ingress", &[]), N);
    // Outside the buffer: at most the dispatcher's batch, the queue's and the connection's (one
    // each, 100 envelopes), and what HTTP/2's initial 64 KiB window let out: ~400 envelopes.
    // Inside: 256 KiB of ~1 KB envelopes, ~250. Without the byte limit nothing would be dropped.
    let dropped = agent.metric("dropped", &[]);
    assert!(dropped >= N - 1_000, "dropped only {dropped} of {N}");
    assert!(dropped < N, "what fits the limit is kept");
    agent.shutdown().await;
    drop(stalled);
}

/// A shutdown that cannot flush (the only Doppler never answers) counts everything it could not
/// send, wherever the agent held it: accepted = handed to a stream + dropped at ingress + dropped
/// at egress, to the envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutdown_that_cannot_flush_counts_every_envelope_it_loses() {
    let stalled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let config = agent::Config {
        connections: NonZeroUsize::new(1).unwrap(),
        shutdown_grace: Duration::from_millis(300),
        ..agent_config(&[stalled.local_addr().unwrap()])
    };
    let (agent, _) = start_agent(config).await;
    const N: u64 = 5_000;
    send_batches(agent.addr, (0..N).map(log_envelope)).await;
    let registry = agent.registry.clone();
    agent.shutdown().await;
    let count = |direction: &str| registry.sum("dropped", &[("direction", direction)]);
    let (egress, dropped_ingress, dropped_egress) = (registry.sum("egress", &[]), count("ingress"), count("egress"));
    assert_eq!(registry.sum("ingress", &[]), N);
    assert!(dropped_egress > 0, "nothing reached a Doppler, so the shutdown lost something");
    assert_eq!(
        egress + dropped_ingress + dropped_egress,
        N,
        "egress {egress}, dropped {dropped_ingress} + {dropped_egress}"
    );
    drop(stalled);
}

/// Large envelopes: a hundred of them would make a batch past every receiver's limit (the
/// Doppler's 10 MiB, a default gRPC client's 4 MiB), so batches are cut by size as well as count.
/// The Doppler comes up only after the agent holds them all, so the agent's batches are as full
/// as they can be.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_envelopes_travel_in_batches_every_receiver_accepts() {
    // A free port for the Doppler-to-be.
    let doppler_addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let (agent, _) = start_agent(agent_config(&[doppler_addr])).await;

    const N: u64 = 200;
    let big = |i: u64| {
        let mut e = log_envelope(i);
        e.message = Some(Message::Log(v2::Log { payload: Bytes::from(vec![b'x'; 300_000 + i as usize]), r#type: 0 }));
        e
    };
    // Ten per request (3 MB), within the agent's 10 MiB limit.
    let mut client = IngressClient::new(channel(agent.addr).await);
    let all: Vec<Envelope> = (0..N).map(big).collect();
    let batches: Vec<EnvelopeBatch> = all.chunks(10).map(|c| EnvelopeBatch { batch: c.to_vec() }).collect();
    client.batch_sender(futures::stream::iter(batches)).await.expect("agent accepts the stream");
    assert!(wait_until(DEADLINE, || agent.metric("ingress", &[]) == N).await);

    // Every batch the agent makes must be one the Doppler accepts (the Doppler's own batches to
    // subscribers are cut the same way: `Diode::pop_batch_within`).
    let doppler = start_doppler(doppler_config(&doppler_addr.to_string())).await;
    assert!(
        wait_until(DEADLINE, || doppler.metric("ingress", &[]) == N).await,
        "doppler got {}",
        doppler.metric("ingress", &[])
    );
    assert_eq!(agent.metric("egress", &[]), N);
    assert_eq!(agent.metric("dropped", &[]), 0);
    agent.shutdown().await;
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sender_send_and_udp_ingress_all_reach_the_doppler() {
    let (doppler, seen, count) = doppler_with_log_subscriber().await;
    let mut config = agent_config(&[doppler.addr]);
    config.tags = [("deployment".to_string(), "cf".to_string())].into();
    let (agent, agent_udp) = start_agent(config).await;

    let mut client = IngressClient::new(channel(agent.addr).await);
    client.sender(futures::stream::iter(vec![log_envelope(1), log_envelope(2)])).await.expect("sender ok");
    client.send(EnvelopeBatch { batch: vec![log_envelope(3)] }).await.expect("send ok");

    // v1 dropsonde over UDP, without a source_id tag: it comes from origin (§3.6).
    let v1 = events::Envelope {
        origin: "legacy-emitter".into(),
        event_type: events::envelope::EventType::LogMessage as i32,
        timestamp: Some(4),
        log_message: Some(events::LogMessage {
            message: Bytes::from_static(b"from udp"),
            message_type: events::log_message::MessageType::Out as i32,
            timestamp: 4,
            ..Default::default()
        }),
        ..Default::default()
    };
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&v1.encode_to_vec(), agent_udp.expect("udp bound")).await.unwrap();
    socket.send_to(b"\xff\xff not dropsonde", agent_udp.unwrap()).await.unwrap();

    assert!(wait_until(DEADLINE, || count.load(Ordering::SeqCst) == 4).await, "got {}", count.load(Ordering::SeqCst));
    let got = seen.lock().clone();
    assert!(got.iter().all(|e| e.tags.get("deployment").map(String::as_str) == Some("cf")), "default tag added");
    let udp = got.iter().find(|e| e.timestamp == 4).expect("udp envelope arrived");
    assert_eq!(udp.source_id, "legacy-emitter");
    assert!(matches!(&udp.message, Some(Message::Log(l)) if &l.payload[..] == b"from udp"));
    assert!(wait_until(DEADLINE, || agent.metric("malformed", &[("transport", "udp")]) == 1).await);
    agent.shutdown().await;
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_dopplers_one_dies_and_returns_and_every_envelope_is_accounted_for() {
    let mut dopplers = Vec::new();
    let seen: Seen = Default::default();
    let count = Arc::new(AtomicU64::new(0));
    for _ in 0..3 {
        let d = start_doppler(doppler_config("127.0.0.1:0")).await;
        subscribe(d.addr, &seen, &count).await;
        assert!(wait_until(DEADLINE, || d.metric("subscriptions", &[]) == 1).await);
        dopplers.push(d);
    }
    let addrs: Vec<SocketAddr> = dopplers.iter().map(|d| d.addr).collect();
    let (agent, _) = start_agent(agent_config(&addrs)).await;
    let mut client = IngressClient::new(channel(agent.addr).await);
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    let sending =
        tokio::spawn(async move { client.batch_sender(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    let mut next = 0u64;
    let mut send_round = |n: u64| {
        let batch = EnvelopeBatch { batch: (next..next + n).map(log_envelope).collect() };
        next += n;
        batch
    };

    // Traffic flows through all three.
    for _ in 0..50 {
        tx.send(send_round(100)).await.unwrap();
    }
    assert!(wait_until(DEADLINE, || dopplers.iter().all(|d| d.metric("ingress", &[]) > 0)).await, "all three used");

    // Kill one (a graceful stop, as a SIGTERM or a Kubernetes pod deletion does).
    let victim = dopplers.remove(1);
    let victim_addr = victim.addr;
    let victim_received = {
        let registry = victim.registry.clone();
        victim.shutdown().await;
        registry.sum("ingress", &[])
    };
    let before: Vec<u64> = dopplers.iter().map(|d| d.metric("ingress", &[])).collect();
    for _ in 0..50 {
        tx.send(send_round(100)).await.unwrap();
    }
    let others_carry = || dopplers.iter().zip(&before).map(|(d, b)| d.metric("ingress", &[]) - b).sum::<u64>() >= 5_000;
    assert!(wait_until(DEADLINE, others_carry).await, "the other dopplers carry the load");

    // Restart it on the same address: it receives again.
    let restarted = start_doppler(doppler_config(&victim_addr.to_string())).await;
    subscribe(restarted.addr, &seen, &count).await;
    let mut rounds = 0;
    while restarted.metric("ingress", &[]) == 0 {
        tx.send(send_round(100)).await.unwrap();
        rounds += 1;
        assert!(rounds < 2_000, "restarted doppler never received");
        tokio::time::sleep(Duration::from_millis(10)).await; // paces the sender; not synchronisation
    }
    drop(tx);
    sending.await.unwrap().expect("agent stream ends ok");

    // Conservation: accepted = received by dopplers + counted as dropped by the agent.
    let accepted = next;
    let received = || {
        victim_received
            + dopplers.iter().map(|d| d.metric("ingress", &[])).sum::<u64>()
            + restarted.metric("ingress", &[])
    };
    let settled = || agent.metric("ingress", &[]) == accepted && received() + agent.metric("dropped", &[]) == accepted;
    assert!(
        wait_until(DEADLINE, settled).await,
        "accepted {accepted}, agent ingress {}, dopplers received {}, agent dropped {}",
        agent.metric("ingress", &[]),
        received(),
        agent.metric("dropped", &[])
    );
    agent.shutdown().await;
    restarted.shutdown().await;
    for d in dopplers {
        d.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_between_every_hop() {
    let pki = TestPki::new(&["doppler", "metron"]);
    let server: TlsFiles = pki.server_files();
    let client: TlsFiles = pki.client_files();
    let mut dc = doppler_config("127.0.0.1:0");
    dc.tls = Some(server.clone());
    let doppler = start_doppler(dc).await;

    // A subscriber without a client certificate is refused.
    let no_cert = ClientTlsConfig::new()
        .ca_certificate(loggregator_proto::tonic::transport::Certificate::from_pem(
            std::fs::read(&client.ca_file).unwrap(),
        ))
        .domain_name("doppler");
    let refused = Endpoint::from_shared(format!("https://{}", doppler.addr)).unwrap().tls_config(no_cert).unwrap();
    let attempt = match refused.connect().await {
        Ok(ch) => EgressClient::new(ch)
            .batched_receiver(EgressBatchRequest { selectors: all_logs(), ..Default::default() })
            .await
            .map(|_| ()),
        Err(e) => Err(loggregator_proto::tonic::Status::unavailable(e.to_string())),
    };
    assert!(attempt.is_err(), "a client without a certificate must be refused");

    let tls_channel = |addr: SocketAddr, name: &str| {
        let config = client.client_config(name).unwrap();
        Endpoint::from_shared(format!("https://{addr}")).unwrap().tls_config(config).unwrap()
    };
    let mut egress = EgressClient::new(tls_channel(doppler.addr, "doppler").connect().await.unwrap());
    let stream = egress
        .batched_receiver(EgressBatchRequest { selectors: all_logs(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let seen: Seen = Default::default();
    let count = Arc::new(AtomicU64::new(0));
    collect(stream, Arc::clone(&seen), Arc::clone(&count));
    assert!(wait_until(DEADLINE, || doppler.metric("subscriptions", &[]) == 1).await);

    let mut ac = agent_config(&[doppler.addr]);
    ac.tls = Some(server);
    ac.doppler_tls = Some(client.clone());
    let (agent, _) = start_agent(ac).await;
    let mut ingress = IngressClient::new(tls_channel(agent.addr, "metron").connect().await.unwrap());
    let batch = EnvelopeBatch { batch: (0..10).map(log_envelope).collect() };
    ingress.batch_sender(futures::stream::iter(vec![batch])).await.unwrap();
    assert!(wait_until(DEADLINE, || count.load(Ordering::SeqCst) == 10).await);
    agent.shutdown().await;
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_get_totals_and_deprecated_tags_move_into_tags() {
    let doppler = start_doppler(doppler_config("127.0.0.1:0")).await;
    let mut client = EgressClient::new(channel(doppler.addr).await);
    let stream = client
        .batched_receiver(EgressBatchRequest {
            selectors: vec![Selector {
                source_id: String::new(),
                message: Some(selector::Message::Counter(v2::CounterSelector::default())),
            }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let seen: Seen = Default::default();
    let count = Arc::new(AtomicU64::new(0));
    collect(stream, Arc::clone(&seen), Arc::clone(&count));
    assert!(wait_until(DEADLINE, || doppler.metric("subscriptions", &[]) == 1).await);
    let (agent, _) = start_agent(agent_config(&[doppler.addr])).await;
    let counter = |delta: u64| Envelope {
        deprecated_tags: [("origin".to_string(), v2::Value { data: Some(Data::Text("router".into())) })].into(),
        message: Some(Message::Counter(v2::Counter { name: "requests".into(), delta, total: 0 })),
        ..Default::default()
    };
    send_batches(agent.addr, [counter(2), counter(3), counter(5)].into_iter()).await;
    assert!(wait_until(DEADLINE, || count.load(Ordering::SeqCst) == 3).await);
    let mut totals: Vec<u64> = seen
        .lock()
        .iter()
        .map(|e| {
            assert_eq!(e.source_id, "router");
            assert_eq!(e.tags.get("origin").map(String::as_str), Some("router"));
            match &e.message {
                Some(Message::Counter(c)) => c.total,
                _ => panic!("counter expected"),
            }
        })
        .collect();
    totals.sort();
    assert_eq!(totals, vec![2, 5, 10]);
    agent.shutdown().await;
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutting_the_agent_down_flushes_everything_it_accepted() {
    let doppler = start_doppler(doppler_config("127.0.0.1:0")).await;
    let (agent, _) = start_agent(agent_config(&[doppler.addr])).await;
    const N: u64 = 20_000;
    send_batches(agent.addr, (0..N).map(log_envelope)).await;
    // The emitter's stream has ended OK, so the agent has accepted all N: stop it at once.
    assert_eq!(agent.metric("ingress", &[]), N);
    let registry = agent.registry.clone();
    agent.shutdown().await;
    assert_eq!(registry.sum("dropped", &[]), 0, "nothing dropped at shutdown");
    assert_eq!(registry.sum("egress", &[]), N);
    assert!(
        wait_until(DEADLINE, || doppler.metric("ingress", &[]) == N).await,
        "doppler got {}",
        doppler.metric("ingress", &[])
    );
    doppler.shutdown().await;
}
