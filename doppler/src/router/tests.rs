use super::*;
use loggregator_proto::prost::Message as _;
use loggregator_proto::v2::{self, envelope::Message, Envelope};
use std::num::NonZeroUsize;

fn subscriber() -> Arc<Subscriber> {
    Arc::new(Subscriber::new(Diode::new(NonZeroUsize::new(10_000).unwrap()), Counter::default()))
}

fn spec(shard_id: &str, name: &str, selectors: Vec<Selector>, sub: &Arc<Subscriber>) -> SubscriptionSpec {
    SubscriptionSpec {
        shard_id: shard_id.into(),
        deterministic_name: name.into(),
        selectors,
        subscriber: Arc::clone(sub),
    }
}

fn sel(source_id: &str, message: selector::Message) -> Selector {
    Selector { source_id: source_id.into(), message: Some(message) }
}

fn log_sel(source_id: &str) -> Selector {
    sel(source_id, selector::Message::Log(v2::LogSelector {}))
}

fn raw(envelope: Envelope) -> RawEnvelope {
    RawEnvelope::scan(Bytes::from(envelope.encode_to_vec())).unwrap()
}

fn log(source_id: &str) -> RawEnvelope {
    raw(Envelope { source_id: source_id.into(), message: Some(Message::Log(v2::Log::default())), ..Default::default() })
}

fn counter(source_id: &str, name: &str) -> RawEnvelope {
    raw(Envelope {
        source_id: source_id.into(),
        message: Some(Message::Counter(v2::Counter { name: name.into(), ..Default::default() })),
        ..Default::default()
    })
}

fn gauge(keys: &[&str]) -> RawEnvelope {
    raw(Envelope {
        source_id: "g".into(),
        message: Some(Message::Gauge(v2::Gauge {
            metrics: keys.iter().map(|k| (k.to_string(), v2::GaugeValue::default())).collect(),
        })),
        ..Default::default()
    })
}

#[test]
fn selectors_match_type_and_source() {
    let router = Router::new();
    let app_logs = subscriber();
    let all_logs = subscriber();
    let counters = subscriber();
    router.subscribe(spec("", "", vec![log_sel("app")], &app_logs));
    router.subscribe(spec("", "", vec![log_sel("")], &all_logs));
    router.subscribe(spec(
        "",
        "",
        vec![sel("", selector::Message::Counter(v2::CounterSelector::default()))],
        &counters,
    ));
    let table = router.table();
    table.route(&log("app"));
    table.route(&log("other"));
    table.route(&counter("app", "c"));
    table.route(&raw(Envelope::default()));
    assert_eq!(app_logs.diode.len(), 1);
    assert_eq!(all_logs.diode.len(), 2);
    assert_eq!(counters.diode.len(), 1);
}

#[test]
fn counter_name_matches_exactly() {
    let router = Router::new();
    let named = subscriber();
    router.subscribe(spec(
        "",
        "",
        vec![sel("", selector::Message::Counter(v2::CounterSelector { name: "requests".into() }))],
        &named,
    ));
    let table = router.table();
    table.route(&counter("a", "requests"));
    table.route(&counter("a", "requests_total"));
    table.route(&counter("a", ""));
    assert_eq!(named.diode.len(), 1);
}

#[test]
fn gauge_names_match_the_exact_key_set_not_a_subset() {
    let router = Router::new();
    let cpu_mem = subscriber();
    let selector = sel(
        "",
        selector::Message::Gauge(v2::GaugeSelector { names: vec!["memory".into(), "cpu".into(), "cpu".into()] }),
    );
    router.subscribe(spec("", "", vec![selector], &cpu_mem));
    let table = router.table();
    table.route(&gauge(&["cpu", "memory"]));
    table.route(&gauge(&["cpu"]));
    table.route(&gauge(&["cpu", "memory", "disk"]));
    assert_eq!(cpu_mem.diode.len(), 1);
}

#[test]
fn selectors_without_a_message_are_skipped() {
    let router = Router::new();
    let sub = subscriber();
    router.subscribe(spec("", "", vec![Selector { source_id: String::new(), message: None }], &sub));
    router.table().route(&log("a"));
    assert_eq!(sub.diode.len(), 0);
}

#[test]
fn a_shard_group_splits_the_stream_disjointly_and_completely() {
    let router = Router::new();
    let (a, b, c) = (subscriber(), subscriber(), subscriber());
    router.subscribe(spec("group", "", vec![log_sel("")], &a));
    router.subscribe(spec("group", "", vec![log_sel("")], &b));
    router.subscribe(spec("other", "", vec![log_sel("")], &c));
    let table = router.table();
    for _ in 0..1000 {
        table.route(&log("x"));
    }
    assert_eq!(a.diode.len() + b.diode.len(), 1000);
    assert!(a.diode.len() > 300 && b.diode.len() > 300, "random split {} / {}", a.diode.len(), b.diode.len());
    assert_eq!(c.diode.len(), 1000);
}

#[test]
fn deterministic_names_make_counter_routing_sticky() {
    let router = Router::new();
    let members: Vec<_> = (0..3).map(|_| subscriber()).collect();
    for (i, m) in members.iter().enumerate() {
        let all_counters = sel("", selector::Message::Counter(v2::CounterSelector::default()));
        router.subscribe(spec("g", &format!("node-{i}"), vec![all_counters], m));
    }
    let table = router.table();
    let names = ["alpha", "beta", "gamma", "delta", "epsilon"];
    for _ in 0..20 {
        for name in names {
            table.route(&counter("s", name));
        }
    }
    // Members are sorted by deterministic name, so "node-i" is index i; each name lands only on
    // the member its crc64 picks, all 20 times.
    for (i, m) in members.iter().enumerate() {
        let mut batch = Vec::new();
        m.diode.pop_batch(&mut batch, 1000);
        for bytes in batch {
            let envelope = RawEnvelope::scan(bytes).unwrap();
            let expected = (crc64_ecma(envelope.name().as_bytes()) % 3) as usize;
            assert_eq!(i, expected, "{} routed to member {i}", envelope.name());
        }
    }
    let total: u64 = members.iter().map(|m| m.diode.read()).sum();
    assert_eq!(total, 100);
}

#[test]
fn unsubscribe_stops_delivery() {
    let router = Router::new();
    let sub = subscriber();
    let id = router.subscribe(spec("", "", vec![log_sel("")], &sub));
    router.unsubscribe(id);
    router.table().route(&log("a"));
    assert_eq!(sub.diode.len(), 0);
    assert_eq!(router.subscription_count(), 0);
}

#[test]
fn a_full_subscriber_drops_its_oldest_and_counts_it() {
    let dropped = Counter::default();
    let sub = Arc::new(Subscriber::new(Diode::new(NonZeroUsize::new(2).unwrap()), dropped.clone()));
    let router = Router::new();
    router.subscribe(spec("", "", vec![log_sel("")], &sub));
    let table = router.table();
    for _ in 0..5 {
        table.route(&log("a"));
    }
    assert_eq!(dropped.get(), 3);
    assert_eq!(sub.diode.len(), 2);
}

/// `route_batch` (the ingress path) delivers exactly what `route` does, in order, including to
/// deterministic shard groups and subscriptions that asked for the same envelope twice.
#[test]
fn batched_routing_delivers_what_single_routing_does() {
    let build = || {
        let router = Router::new();
        let subs: Vec<Arc<Subscriber>> = (0..5).map(|_| subscriber()).collect();
        router.subscribe(spec("", "", vec![log_sel("app")], &subs[0]));
        router.subscribe(spec("", "", vec![log_sel(""), log_sel("app")], &subs[1]));
        let counters = vec![sel("", selector::Message::Counter(v2::CounterSelector::default()))];
        router.subscribe(spec("shard", "a", counters.clone(), &subs[2]));
        router.subscribe(spec("shard", "b", counters.clone(), &subs[3]));
        router.subscribe(spec(
            "",
            "",
            vec![sel("g", selector::Message::Gauge(v2::GaugeSelector::default()))],
            &subs[4],
        ));
        (router, subs)
    };
    let batch: Vec<RawEnvelope> = (0..60)
        .map(|i| match i % 4 {
            0 => log("app"),
            1 => log(&format!("other-{i}")),
            2 => counter("app", &format!("c{}", i % 7)),
            _ => gauge(&["cpu", "mem"]),
        })
        .collect();
    let (single, single_subs) = build();
    for envelope in &batch {
        single.table().route(envelope);
    }
    let (batched, batched_subs) = build();
    let mut staging = Staging::default();
    batched.table().route_batch(&mut batch[..30].to_vec(), &mut staging);
    let mut rest = batch[30..].to_vec();
    batched.table().route_batch(&mut rest, &mut staging);
    assert!(rest.is_empty(), "routing takes the envelopes");
    for (a, b) in single_subs.iter().zip(&batched_subs) {
        let (mut x, mut y) = (Vec::new(), Vec::new());
        a.diode.pop_batch(&mut x, usize::MAX);
        b.diode.pop_batch(&mut y, usize::MAX);
        assert!(!x.is_empty());
        assert_eq!(x, y);
    }
}
