//! The reverse log proxy with tonic clients: selectors, shard groups over two Dopplers, limits,
//! `use_preferred_tags`, and a Doppler restarting under an open stream.

mod common;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};

use common::*;
use loggregator_proto::tonic::{Code, Streaming};
use loggregator_proto::v2::egress_client::EgressClient;
use loggregator_proto::v2::{self, selector, EgressBatchRequest, EgressRequest, Envelope, EnvelopeBatch, Selector};
use plumbing::test_support::wait_until;

async fn subscribe(tc: &Tc, request: EgressBatchRequest) -> Streaming<EnvelopeBatch> {
    let mut client = EgressClient::new(channel(tc.addrs.rlp).await);
    client.batched_receiver(request).await.expect("subscribed").into_inner()
}

/// Reads `stream` in the background into a shared list.
fn collect(mut stream: Streaming<EnvelopeBatch>) -> Arc<Mutex<Vec<Envelope>>> {
    let got = Arc::new(Mutex::new(Vec::new()));
    let sink = got.clone();
    tokio::spawn(async move {
        while let Ok(Some(batch)) = stream.message().await {
            sink.lock().unwrap().extend(batch.batch);
        }
    });
    got
}

/// Waits until every Doppler has as many subscriptions as `n`.
async fn wait_subscribed(dopplers: &[&plumbing::test_support::Running], n: i64) {
    assert!(
        wait_until(DEADLINE, || dopplers.iter().all(|d| doppler_subscriptions(d) == n)).await,
        "dopplers subscribed: {:?}",
        dopplers.iter().map(|d| doppler_subscriptions(d)).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn a_stream_merges_every_doppler_and_honours_its_selectors() {
    let (a, b) = (start_doppler().await, start_doppler().await);
    let tc = start_tc(config(&[&a, &b])).await;
    let stream = subscribe(
        &tc,
        EgressBatchRequest { selectors: vec![log_selector("app-1")], use_preferred_tags: true, ..Default::default() },
    )
    .await;
    let got = collect(stream);
    wait_subscribed(&[&a, &b], 1).await;

    send(a.addr, (0..300).map(|i| log_envelope("app-1", i)).collect()).await;
    send(b.addr, (300..600).map(|i| log_envelope("app-1", i)).collect()).await;
    // Neither another source nor another type passes.
    send(a.addr, vec![log_envelope("app-2", 9999), counter_envelope("app-1", "c", 1)]).await;

    assert!(wait_until(DEADLINE, || got.lock().unwrap().len() >= 600).await, "{}", got.lock().unwrap().len());
    let indexes: BTreeSet<u64> = got.lock().unwrap().iter().map(index).collect();
    assert_eq!(indexes, (0..600).collect());
    assert_eq!(got.lock().unwrap().len(), 600, "nothing else and nothing twice");
    assert!(wait_until(DEADLINE, || tc.running.metric("egress", &[("component", "reverse-log-proxy")]) == 600).await);
    assert_eq!(tc.running.metric("ingress", &[("component", "reverse-log-proxy")]), 600);
    assert_eq!(tc.running.metric("subscriptions", &[("component", "reverse-log-proxy")]), 1);
}

#[tokio::test]
async fn a_shard_group_splits_the_stream_over_two_dopplers_without_duplicates() {
    let (a, b) = (start_doppler().await, start_doppler().await);
    let tc = start_tc(config(&[&a, &b])).await;
    let request = || EgressBatchRequest {
        shard_id: "group".into(),
        selectors: vec![log_selector("")],
        use_preferred_tags: true,
        ..Default::default()
    };
    let first = collect(subscribe(&tc, request()).await);
    let second = collect(subscribe(&tc, request()).await);
    // A different shard id gets a full copy.
    let other = collect(subscribe(&tc, EgressBatchRequest { shard_id: "other".into(), ..request() }).await);
    wait_subscribed(&[&a, &b], 3).await;

    send(a.addr, (0..500).map(|i| log_envelope("app", i)).collect()).await;
    send(b.addr, (500..1000).map(|i| log_envelope("app", i)).collect()).await;
    let total = || first.lock().unwrap().len() + second.lock().unwrap().len();
    assert!(wait_until(DEADLINE, || total() >= 1000 && other.lock().unwrap().len() >= 1000).await, "{}", total());
    let mut all: Vec<u64> = first.lock().unwrap().iter().chain(second.lock().unwrap().iter()).map(index).collect();
    all.sort_unstable();
    assert_eq!(all, (0..1000).collect::<Vec<_>>(), "each envelope to exactly one member");
    assert!(first.lock().unwrap().len() > 100 && second.lock().unwrap().len() > 100, "both members get a share");
    assert_eq!(other.lock().unwrap().len(), 1000);
}

#[tokio::test]
async fn invalid_requests_get_the_originals_statuses() {
    let a = start_doppler().await;
    let mut config = config(&[&a]);
    config.rlp.max_streams = 1;
    let tc = start_tc(config).await;
    let mut client = EgressClient::new(channel(tc.addrs.rlp).await);

    let status = client.batched_receiver(EgressBatchRequest::default()).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "Selectors cannot be empty"));
    let untyped = EgressBatchRequest {
        selectors: vec![log_selector("a"), Selector { source_id: "a".into(), message: None }],
        ..Default::default()
    };
    let status = client.batched_receiver(untyped).await.unwrap_err();
    assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "Selectors must have a Message"));
    let status = client.receiver(EgressRequest::default()).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);

    // The legacy selector counts when `selectors` is empty.
    let legacy = EgressBatchRequest { legacy_selector: Some(log_selector("a")), ..Default::default() };
    let _open = client.batched_receiver(legacy.clone()).await.expect("the legacy selector is used");
    let status = client.batched_receiver(legacy).await.unwrap_err();
    assert_eq!(
        (status.code(), status.message()),
        (Code::ResourceExhausted, "unable to create stream, max egress streams reached: 1")
    );
}

fn tagged(i: u64) -> Envelope {
    let mut envelope = log_envelope("tags", i);
    envelope.deprecated_tags = [("legacy".to_string(), v2::Value { data: Some(v2::value::Data::Integer(42)) })].into();
    envelope
}

#[tokio::test]
async fn use_preferred_tags_rewrites_as_section_2_6_says() {
    let a = start_doppler().await;
    let tc = start_tc(config(&[&a])).await;
    let request = |preferred| EgressBatchRequest {
        selectors: vec![log_selector("tags")],
        use_preferred_tags: preferred,
        ..Default::default()
    };
    let preferred = collect(subscribe(&tc, request(true)).await);
    let legacy = collect(subscribe(&tc, request(false)).await);
    wait_subscribed(&[&a], 2).await;
    send(a.addr, vec![tagged(1), log_envelope("tags", 2)]).await;
    assert!(wait_until(DEADLINE, || preferred.lock().unwrap().len() == 2 && legacy.lock().unwrap().len() == 2).await);

    let preferred = preferred.lock().unwrap().clone();
    let legacy = legacy.lock().unwrap().clone();
    let first = preferred.iter().find(|e| index(e) == 1).unwrap();
    assert!(first.deprecated_tags.is_empty());
    assert_eq!(first.tags.get("legacy").map(String::as_str), Some("42"));
    assert_eq!(preferred.iter().find(|e| index(e) == 2).unwrap(), &log_envelope("tags", 2), "unchanged as sent");
    for envelope in &legacy {
        assert!(envelope.tags.is_empty(), "{envelope:?}");
        let text = |key: &str| match envelope.deprecated_tags.get(key).and_then(|v| v.data.clone()) {
            Some(v2::value::Data::Text(text)) => text,
            other => panic!("{key}: {other:?}"),
        };
        assert_eq!(text("source_type"), "APP/PROC/WEB");
    }
    let first = legacy
        .iter()
        .find(|e| e.deprecated_tags.get("i").is_some_and(|v| v.data == Some(v2::value::Data::Text("1".into()))))
        .unwrap();
    assert_eq!(first.deprecated_tags.get("legacy").unwrap().data, Some(v2::value::Data::Integer(42)));
}

#[tokio::test]
async fn receiver_streams_single_envelopes() {
    let a = start_doppler().await;
    let tc = start_tc(config(&[&a])).await;
    let mut client = EgressClient::new(channel(tc.addrs.rlp).await);
    let mut stream = client
        .receiver(EgressRequest { selectors: vec![log_selector("single")], ..Default::default() })
        .await
        .expect("subscribed")
        .into_inner();
    wait_subscribed(&[&a], 1).await;
    send(a.addr, (0..3).map(|i| log_envelope("single", i)).collect()).await;
    for i in 0..3 {
        let envelope = stream.message().await.expect("stream ok").expect("an envelope");
        assert_eq!(index(&envelope), i);
    }
}

#[tokio::test]
async fn a_doppler_restarting_under_an_open_stream_is_picked_up_again() {
    let a = start_doppler().await;
    let addr = a.addr;
    let tc = start_tc(config(&[&a])).await;
    let got = collect(
        subscribe(&tc, EgressBatchRequest { selectors: vec![log_selector("restart")], ..Default::default() }).await,
    );
    wait_subscribed(&[&a], 1).await;
    send(addr, (0..10).map(|i| log_envelope("restart", i)).collect()).await;
    assert!(wait_until(DEADLINE, || got.lock().unwrap().len() == 10).await);

    a.shutdown().await;
    let a = start_doppler_at(addr, None).await;
    wait_subscribed(&[&a], 1).await;
    send(addr, (10..20).map(|i| log_envelope("restart", i)).collect()).await;
    assert!(wait_until(DEADLINE, || got.lock().unwrap().len() == 20).await, "{}", got.lock().unwrap().len());
    let indexes: Vec<u64> = got.lock().unwrap().iter().map(index).collect();
    assert_eq!(indexes, (0..20).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_client_that_goes_away_unsubscribes_from_every_doppler() {
    let (a, b) = (start_doppler().await, start_doppler().await);
    let tc = start_tc(config(&[&a, &b])).await;
    let stream = subscribe(
        &tc,
        EgressBatchRequest {
            selectors: vec![selector("", selector::Message::Counter(Default::default()))],
            ..Default::default()
        },
    )
    .await;
    wait_subscribed(&[&a, &b], 1).await;
    drop(stream);
    wait_subscribed(&[&a, &b], 0).await;
    assert!(
        wait_until(DEADLINE, || tc.running.metric("subscriptions", &[("component", "reverse-log-proxy")]) == 0).await
    );
}

#[tokio::test]
async fn a_doppler_that_appears_is_subscribed_and_one_that_disappears_is_left() {
    use traffic_controller::upstream::{Dopplers, FanIn, FanInMetrics};
    let (a, b) = (start_doppler().await, start_doppler().await);
    let dopplers = Dopplers::new(None);
    dopplers.set_addrs([a.addr.to_string()]);
    let buffer = Arc::new(plumbing::buffer::EnvelopeBuffer::new(10_000, usize::MAX, Default::default()));
    let shutdown = tokio_util::sync::CancellationToken::new();
    let request = EgressBatchRequest { selectors: vec![log_selector("moving")], ..Default::default() };
    let fan_in = FanIn::start(&dopplers, request, buffer.clone(), 1 << 20, FanInMetrics::default(), &shutdown);
    wait_subscribed(&[&a], 1).await;
    assert_eq!(doppler_subscriptions(&b), 0);

    // b appears (as a DNS name that now resolves to both would make it).
    dopplers.set_addrs([a.addr.to_string(), b.addr.to_string()]);
    wait_subscribed(&[&a, &b], 1).await;
    send(b.addr, (0..5).map(|i| log_envelope("moving", i)).collect()).await;
    assert!(wait_until(DEADLINE, || buffer.len() == 5).await);

    // a disappears from the set: its subscription goes, b's stays.
    dopplers.set_addrs([b.addr.to_string()]);
    assert!(wait_until(DEADLINE, || doppler_subscriptions(&a) == 0).await);
    assert_eq!(doppler_subscriptions(&b), 1);
    drop(fan_in);
    assert!(wait_until(DEADLINE, || doppler_subscriptions(&b) == 0).await);
}
