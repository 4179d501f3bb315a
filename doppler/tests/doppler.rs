//! Doppler over real sockets: completeness, selectors and shard groups, slow subscribers, bad input.

use std::net::SocketAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use doppler::{Config, Doppler};
use loggregator_proto::bytes::Bytes;
use loggregator_proto::tonic::transport::{Channel, Endpoint};
use loggregator_proto::tonic::{Code, Streaming};
use loggregator_proto::v2::egress_client::EgressClient;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{
    self, envelope::Message, selector, EgressBatchRequest, EgressRequest, Envelope, EnvelopeBatch, Selector,
};
use plumbing::test_support::{wait_until, Running};
use plumbing::Registry;

const DEADLINE: Duration = Duration::from_secs(20);

async fn start(config: Config) -> Running {
    let registry = Registry::new().scoped("doppler");
    let doppler = Doppler::bind(Config { grpc_addr: "127.0.0.1:0".parse().unwrap(), ..config }, &registry)
        .await
        .expect("doppler binds");
    let addr = doppler.local_addrs().grpc;
    Running::spawn(addr, registry, |shutdown| async move { doppler.serve(shutdown).await.expect("doppler serves") })
}

async fn channel(addr: SocketAddr) -> Channel {
    Endpoint::from_shared(format!("http://{addr}")).unwrap().connect().await.expect("connect")
}

fn roomy() -> Config {
    Config { subscription_buffer: NonZeroUsize::new(10_000).unwrap(), ..Config::default() }
}

fn log_envelope(source_id: &str, i: u64) -> Envelope {
    Envelope {
        timestamp: i as i64,
        source_id: source_id.into(),
        tags: [("i".to_string(), i.to_string())].into(),
        message: Some(Message::Log(v2::Log { payload: Bytes::from(format!("line {i}")), r#type: 0 })),
        ..Default::default()
    }
}

fn padded_log(i: u64, payload_bytes: usize) -> Envelope {
    let mut envelope = log_envelope("app", i);
    envelope.message = Some(Message::Log(v2::Log { payload: Bytes::from(vec![b'p'; payload_bytes]), r#type: 0 }));
    envelope
}

fn counter_envelope(name: &str, i: u64) -> Envelope {
    Envelope {
        timestamp: i as i64,
        source_id: "metrics".into(),
        message: Some(Message::Counter(v2::Counter { name: name.into(), delta: 1, total: i })),
        ..Default::default()
    }
}

fn log_selector(source_id: &str) -> Selector {
    Selector { source_id: source_id.into(), message: Some(selector::Message::Log(v2::LogSelector {})) }
}

async fn subscribe(addr: SocketAddr, shard_id: &str, name: &str, selectors: Vec<Selector>) -> Streaming<EnvelopeBatch> {
    let mut client = EgressClient::new(channel(addr).await);
    client
        .batched_receiver(EgressBatchRequest {
            shard_id: shard_id.into(),
            deterministic_name: name.into(),
            selectors,
            ..Default::default()
        })
        .await
        .expect("subscribed")
        .into_inner()
}

/// Reads a stream in the background, collecting envelopes.
fn collect(mut stream: Streaming<EnvelopeBatch>) -> (Arc<parking_lot::Mutex<Vec<Envelope>>>, Arc<AtomicU64>) {
    let seen = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let count = Arc::new(AtomicU64::new(0));
    let (s, c) = (Arc::clone(&seen), Arc::clone(&count));
    tokio::spawn(async move {
        while let Ok(Some(batch)) = stream.message().await {
            c.fetch_add(batch.batch.len() as u64, Ordering::SeqCst);
            s.lock().extend(batch.batch);
        }
    });
    (seen, count)
}

async fn wait_for_subscriptions(doppler: &Running, n: u64) {
    assert!(wait_until(DEADLINE, || doppler.metric("subscriptions", &[]) == n).await, "subscriptions registered");
}

async fn send(addr: SocketAddr, envelopes: Vec<Envelope>) {
    let mut client = IngressClient::new(channel(addr).await);
    let batches: Vec<EnvelopeBatch> = envelopes.chunks(100).map(|c| EnvelopeBatch { batch: c.to_vec() }).collect();
    client.batch_sender(futures::stream::iter(batches)).await.expect("batch sender ends ok");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_envelope_sent_arrives_unchanged() {
    // Sized for the burst: this test is about completeness, not about the drop policy.
    let doppler = start(roomy()).await;
    let (seen, count) = collect(subscribe(doppler.addr, "", "", vec![log_selector("")]).await);
    wait_for_subscriptions(&doppler, 1).await;
    let sent: Vec<Envelope> = (0..5_000).map(|i| log_envelope("app", i)).collect();
    send(doppler.addr, sent.clone()).await;
    let delivered = wait_until(DEADLINE, || count.load(Ordering::SeqCst) == 5_000).await;
    assert!(delivered, "delivered {} dropped {}", count.load(Ordering::SeqCst), doppler.metric("dropped", &[]));
    assert_eq!(*seen.lock(), sent);
    assert_eq!(doppler.metric("ingress", &[]), 5_000);
    assert_eq!(doppler.metric("egress", &[]), 5_000);
    assert_eq!(doppler.metric("dropped", &[]), 0);
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_split_over_many_http2_frames_arrive_whole() {
    // 300 KB batches: several times the default 64 KiB HTTP/2 window, so each one reaches the
    // Doppler in pieces and is assembled (most batches are one frame and read in place).
    let doppler = start(roomy()).await;
    let (seen, count) = collect(subscribe(doppler.addr, "", "", vec![log_selector("")]).await);
    wait_for_subscriptions(&doppler, 1).await;
    let sent: Vec<Envelope> = (0..300).map(|i| padded_log(i, 10_000 + i as usize)).collect();
    let mut client = IngressClient::new(channel(doppler.addr).await);
    let batches: Vec<EnvelopeBatch> = sent.chunks(30).map(|c| EnvelopeBatch { batch: c.to_vec() }).collect();
    client.batch_sender(futures::stream::iter(batches)).await.expect("batch sender ends ok");
    assert!(wait_until(DEADLINE, || count.load(Ordering::SeqCst) == 300).await);
    assert_eq!(*seen.lock(), sent);
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selectors_pick_by_source_and_type() {
    let doppler = start(Config::default()).await;
    let (app_logs, app_count) = collect(subscribe(doppler.addr, "", "", vec![log_selector("app")]).await);
    let counter_sel = Selector {
        source_id: String::new(),
        message: Some(selector::Message::Counter(v2::CounterSelector { name: "hits".into() })),
    };
    let (hits, hits_count) = collect(subscribe(doppler.addr, "", "", vec![counter_sel]).await);
    wait_for_subscriptions(&doppler, 2).await;
    let mut envelopes = Vec::new();
    for i in 0..100 {
        envelopes.push(log_envelope("app", i));
        envelopes.push(log_envelope("other", i));
        envelopes.push(counter_envelope("hits", i));
        envelopes.push(counter_envelope("misses", i));
    }
    send(doppler.addr, envelopes).await;
    assert!(
        wait_until(DEADLINE, || app_count.load(Ordering::SeqCst) == 100 && hits_count.load(Ordering::SeqCst) == 100)
            .await
    );
    assert!(app_logs.lock().iter().all(|e| e.source_id == "app"));
    assert!(hits.lock().iter().all(|e| matches!(&e.message, Some(Message::Counter(c)) if c.name == "hits")));
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_group_splits_and_other_groups_get_everything() {
    let doppler = start(roomy()).await;
    let (a, a_count) = collect(subscribe(doppler.addr, "nozzle", "", vec![log_selector("")]).await);
    let (b, b_count) = collect(subscribe(doppler.addr, "nozzle", "", vec![log_selector("")]).await);
    let (_c, c_count) = collect(subscribe(doppler.addr, "other", "", vec![log_selector("")]).await);
    let (_d, d_count) = collect(subscribe(doppler.addr, "third", "", vec![log_selector("")]).await);
    wait_for_subscriptions(&doppler, 4).await;
    send(doppler.addr, (0..2_000).map(|i| log_envelope("app", i)).collect()).await;
    let done = || {
        a_count.load(Ordering::SeqCst) + b_count.load(Ordering::SeqCst) == 2_000
            && c_count.load(Ordering::SeqCst) == 2_000
            && d_count.load(Ordering::SeqCst) == 2_000
    };
    assert!(wait_until(DEADLINE, done).await, "every group got the whole stream");
    let mut seen: Vec<i64> = a.lock().iter().chain(b.lock().iter()).map(|e| e.timestamp).collect();
    seen.sort();
    assert_eq!(seen, (0..2_000).collect::<Vec<_>>(), "disjoint and complete");
    assert!(a_count.load(Ordering::SeqCst) > 0 && b_count.load(Ordering::SeqCst) > 0);
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deterministic_names_keep_a_counter_on_one_member() {
    let doppler = start(Config::default()).await;
    let all_counters =
        || vec![Selector { source_id: String::new(), message: Some(selector::Message::Counter(Default::default())) }];
    let (a, a_count) = collect(subscribe(doppler.addr, "g", "a", all_counters()).await);
    let (b, b_count) = collect(subscribe(doppler.addr, "g", "b", all_counters()).await);
    wait_for_subscriptions(&doppler, 2).await;
    let names = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta"];
    let envelopes: Vec<Envelope> = (0..600).map(|i| counter_envelope(names[i as usize % names.len()], i)).collect();
    send(doppler.addr, envelopes).await;
    assert!(wait_until(DEADLINE, || a_count.load(Ordering::SeqCst) + b_count.load(Ordering::SeqCst) == 600).await);
    let names_of = |v: &Vec<Envelope>| -> std::collections::BTreeSet<String> {
        v.iter()
            .filter_map(|e| match &e.message {
                Some(Message::Counter(c)) => Some(c.name.clone()),
                _ => None,
            })
            .collect()
    };
    let (on_a, on_b) = (names_of(&a.lock()), names_of(&b.lock()));
    assert!(on_a.is_disjoint(&on_b), "a name is sticky to one member: {on_a:?} / {on_b:?}");
    assert_eq!(on_a.len() + on_b.len(), names.len());
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_loses_exactly_what_is_counted_and_slows_no_one() {
    stalled_subscriber(Config { subscription_buffer: NonZeroUsize::new(200).unwrap(), ..Config::default() }).await;
}

/// The same with a buffer bounded by bytes (64 KiB, ~170 of these envelopes) rather than count:
/// without the byte limit this one would hold all 30,000.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_holds_no_more_bytes_than_its_limit() {
    stalled_subscriber(Config {
        subscription_buffer: NonZeroUsize::new(100_000).unwrap(),
        subscription_buffer_bytes: 64 << 10,
        ..Config::default()
    })
    .await;
}

async fn stalled_subscriber(config: Config) {
    let doppler = start(config).await;
    // The stalled subscriber opens its stream and does not read it.
    let stalled = subscribe(doppler.addr, "", "", vec![log_selector("")]).await;
    let (_fast, fast_count) = collect(subscribe(doppler.addr, "", "", vec![log_selector("")]).await);
    wait_for_subscriptions(&doppler, 2).await;

    const N: u64 = 30_000;
    let mut client = IngressClient::new(channel(doppler.addr).await);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let call = tokio::spawn(async move { client.batch_sender(tokio_stream::wrappers::ReceiverStream::new(rx)).await });
    for start in (0..N).step_by(100) {
        // 300-byte payloads: ~9 MB in all, well past what HTTP/2 windows can hold for the stalled stream.
        let batch = EnvelopeBatch { batch: (start..start + 100).map(|i| padded_log(i, 300)).collect() };
        tx.send(batch).await.expect("ingress accepts");
        // Pace the sender to the fast reader so that only the stalled one can lose anything.
        assert!(wait_until(DEADLINE, || fast_count.load(Ordering::SeqCst) >= start).await);
    }
    drop(tx);
    call.await.unwrap().expect("ingress stream ends ok");

    assert!(wait_until(DEADLINE, || fast_count.load(Ordering::SeqCst) == N).await, "fast subscriber got everything");
    // Now the stalled subscriber reads what is left for it: what its diode kept, plus what sat in
    // the transport. At the end every envelope is either received by it or counted as dropped.
    let dropped_while_stalled = doppler.metric("dropped", &[("direction", "egress")]);
    assert!(dropped_while_stalled > 0, "a stalled subscriber must lose data");
    let (_stalled, stalled_count) = collect(stalled);
    let settled = || {
        let dropped = doppler.metric("dropped", &[("direction", "egress")]);
        let egress = doppler.metric("egress", &[]);
        egress + dropped == 2 * N && stalled_count.load(Ordering::SeqCst) == egress - N
    };
    assert!(wait_until(DEADLINE, settled).await, "stalled subscription settled");
    let dropped = doppler.metric("dropped", &[("direction", "egress")]);
    let received = stalled_count.load(Ordering::SeqCst);
    assert_eq!(received + dropped, N, "the drop counter equals the loss");
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_rpcs_answer_unimplemented() {
    let doppler = start(Config::default()).await;
    let mut ingress = IngressClient::new(channel(doppler.addr).await);
    let err = ingress.send(EnvelopeBatch::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "this endpoint is not yet implemented");
    let mut egress = EgressClient::new(channel(doppler.addr).await);
    let err = egress.receiver(EgressRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unimplemented);
    assert_eq!(err.message(), "use BatchedReceiver instead");
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_input_get_errors_and_others_keep_being_served() {
    let config = Config { max_message_bytes: 1024 * 1024, ..Config::default() };
    let doppler = start(config).await;
    let (_seen, count) = collect(subscribe(doppler.addr, "", "", vec![log_selector("")]).await);
    wait_for_subscriptions(&doppler, 1).await;

    // Garbage: a batch field whose length runs past the end, sent through the raw client.
    let mut raw =
        loggregator_proto::raw::client::ingress::ingress_client::IngressClient::new(channel(doppler.addr).await);
    let garbage = loggregator_proto::raw::EncodedBatch { envelopes: vec![Bytes::from_static(&[0x12, 0x40, 0x61])] };
    let err = raw.batch_sender(futures::stream::iter(vec![garbage])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err}");
    assert!(err.message().contains("malformed envelope batch"), "{err}");

    // Oversized: one message beyond the limit.
    let big = Envelope {
        source_id: "big".into(),
        message: Some(Message::Log(v2::Log { payload: Bytes::from(vec![b'x'; 2 * 1024 * 1024]), r#type: 0 })),
        ..Default::default()
    };
    let mut typed = IngressClient::new(channel(doppler.addr).await);
    let err = typed.batch_sender(futures::stream::iter(vec![EnvelopeBatch { batch: vec![big] }])).await.unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err}");
    assert!(err.message().contains("the limit is: 1048576 bytes"), "{err}");

    // The server still serves everyone else.
    send(doppler.addr, (0..10).map(|i| log_envelope("ok", i)).collect()).await;
    assert!(wait_until(DEADLINE, || count.load(Ordering::SeqCst) == 10).await);
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opening_a_thousand_streams_is_limited_and_others_are_unaffected() {
    let config = Config { max_subscriptions: 100, ..Config::default() };
    let doppler = start(config).await;
    let (_seen, count) = collect(subscribe(doppler.addr, "", "", vec![log_selector("")]).await);
    let mut greedy = EgressClient::new(channel(doppler.addr).await);
    let mut accepted = Vec::new();
    let mut refused = 0;
    for _ in 0..1000 {
        let request = EgressBatchRequest { selectors: vec![log_selector("x")], ..Default::default() };
        match greedy.batched_receiver(request).await {
            Ok(stream) => accepted.push(stream.into_inner()),
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert_eq!(status.message(), "unable to create stream, max egress streams reached: 100");
                refused += 1;
            }
        }
    }
    assert_eq!(accepted.len(), 99);
    assert_eq!(refused, 901);
    send(doppler.addr, (0..50).map(|i| log_envelope("app", i)).collect()).await;
    assert!(wait_until(DEADLINE, || count.load(Ordering::SeqCst) == 50).await);
    // Closing the streams frees the slots.
    drop(accepted);
    assert!(wait_until(DEADLINE, || doppler.metric("subscriptions", &[]) == 1).await);
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frequent_client_keepalive_pings_are_tolerated() {
    let doppler = start(Config::default()).await;
    let ch = Endpoint::from_shared(format!("http://{}", doppler.addr))
        .unwrap()
        .http2_keep_alive_interval(Duration::from_millis(20))
        .keep_alive_while_idle(true)
        .keep_alive_timeout(Duration::from_secs(5))
        .connect()
        .await
        .unwrap();
    let mut egress = EgressClient::new(ch.clone());
    let mut stream = egress
        .batched_receiver(EgressBatchRequest { selectors: vec![log_selector("")], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    wait_for_subscriptions(&doppler, 1).await;
    let mut ingress = IngressClient::new(ch);
    // Over about a second of pings every 20 ms, the connection keeps working both ways.
    for round in 0..10u64 {
        tokio::time::sleep(Duration::from_millis(100)).await; // lets pings flow; not synchronisation
        ingress
            .batch_sender(futures::stream::iter(vec![EnvelopeBatch { batch: vec![log_envelope("k", round)] }]))
            .await
            .unwrap();
        let batch = tokio::time::timeout(DEADLINE, stream.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(batch.batch[0].timestamp, round as i64);
    }
    doppler.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_subscriber_buffers_before_ending_their_streams() {
    let doppler = start(roomy()).await;
    let mut stream = subscribe(doppler.addr, "", "", vec![log_selector("")]).await;
    wait_for_subscriptions(&doppler, 1).await;
    const N: u64 = 5_000;
    send(doppler.addr, (0..N).map(|i| log_envelope("app", i)).collect()).await;
    assert_eq!(doppler.metric("ingress", &[]), N);
    // Stop at once: whatever is still buffered must reach the subscriber, then its stream ends.
    let stopping = tokio::spawn(doppler.shutdown());
    let mut received = 0u64;
    while let Some(batch) =
        tokio::time::timeout(DEADLINE, stream.message()).await.expect("stream ends in time").expect("ok")
    {
        received += batch.batch.len() as u64;
    }
    assert_eq!(received, N);
    stopping.await.unwrap();
}
