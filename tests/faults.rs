//! Faults with real processes (issue 15): components run as processes of the `loggregator` binary
//! on loopback, and a test kills (`kill -9`), freezes (`SIGSTOP`) or restarts one of them under load,
//! or stops reading from one, then checks against every process's `/metrics` and against what the
//! subscribers received, by sequence number, that what the design promises held: delivery goes on,
//! loss is bounded by what was in flight, and every hop's counters add up
//! (`ingress = egress + dropped`). RELIABILITY.md §4 has the figures.

#[path = "faults/support.rs"]
mod support;

use std::time::Instant;

use support::*;

/// Emitting rate of the steady-load tests: modest, so a debug build on two cores keeps up and
/// whatever is lost is lost to the fault, not to load.
const RATE: u64 = 10_000;
const SOURCE: &str = "fault-app";

/// Envelopes that may be in flight towards one Doppler when it dies, by design: per agent
/// connection one batch in its request queue and one taken by HTTP/2 (5 × 2 × 100), plus what the
/// Doppler holds for its subscriber: the diode (1000) and the stream's queue (32 batches of 100).
const IN_FLIGHT_TO_ONE_DOPPLER: u64 = 5 * 2 * 100 + 1000 + 32 * 100;

/// Waits until the agent has forwarded everything it took in (or counted it dropped).
async fn agent_drained(agent: &Proc, sent: u64) -> support::Metrics {
    let (drained, m) = agent
        .scrape_until(|m| m.sum("ingress", &[]) == sent && m.sum("egress", &[]) + m.sum("dropped", &[]) == sent)
        .await;
    assert!(drained, "agent did not drain {sent} envelopes:\n{}", m.0);
    m
}

/// Waits until a Doppler's only subscriber has received everything the Doppler sent, and the
/// Doppler has routed everything it received (`ingress = egress + dropped`).
async fn doppler_settled(doppler: &Proc, tally: &SharedTally, subscriber: &str) -> support::Metrics {
    let (settled, m) = doppler
        .scrape_until(|m| {
            let egress = m.sum("egress", &[]);
            m.sum("ingress", &[]) == egress + m.sum("dropped", &[]) && tally.lock().received_by(subscriber) == egress
        })
        .await;
    assert!(
        settled,
        "{}: ingress ≠ egress + dropped, or {subscriber} got {} of what it was sent:\n{}",
        doppler.name,
        tally.lock().received_by(subscriber),
        m.0
    );
    m
}

async fn wait_subscribed(doppler: &Proc, count: u64) {
    let ok = eventually(DEADLINE, || async {
        doppler.scrape().await.is_some_and(|m| m.sum("subscriptions", &[]) >= count)
    })
    .await;
    assert!(ok, "{} never had {count} subscriptions", doppler.name);
}

async fn wait_received(tally: &SharedTally, subscriber: &str, count: u64) {
    let ok = eventually(DEADLINE, || async { tally.lock().received_by(subscriber) >= count }).await;
    assert!(ok, "{subscriber} received {} < {count}", tally.lock().received_by(subscriber));
}

/// Waits until the emitter has sent `count` envelopes in all.
async fn wait_sent(emitter: &Emitter, count: u64) {
    let ok = eventually(DEADLINE, || async { emitter.sent() >= count }).await;
    assert!(ok, "emitter stalled at {}", emitter.sent());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_of_a_doppler_under_load_fails_over_and_loses_only_what_was_in_flight() {
    let (a_addr, b_addr, agent_addr) = (free_addr(), free_addr(), free_addr());
    let mut a = doppler("doppler-a", a_addr, &[]).await;
    let b = doppler("doppler-b", b_addr, &[]).await;
    let agent = agent(agent_addr, &[a_addr, b_addr], &[]).await;
    let (tally, base) = (tally(), now_ns());
    let _sa = Subscriber::start("a", a_addr, SOURCE, base, &tally).await;
    let _sb = Subscriber::start("b", b_addr, SOURCE, base, &tally).await;
    wait_subscribed(&a, 1).await;
    wait_subscribed(&b, 1).await;

    let emitter = Emitter::start(agent_addr, base, SOURCE, RATE, 100).await;
    // The agent spreads its connections over both Dopplers.
    wait_received(&tally, "a", RATE / 10).await;
    wait_received(&tally, "b", RATE / 10).await;

    a.kill9();
    let killed_at = emitter.sent();
    let kill_time = Instant::now();
    // Go on for another second, then stop and let everything settle.
    wait_sent(&emitter, killed_at + RATE).await;
    let sent = emitter.finish().await;
    let agent_m = agent_drained(&agent, sent).await;
    let b_m = doppler_settled(&b, &tally, "b").await;
    let settle = kill_time.elapsed();

    let tally = tally.lock();
    let missing = tally.missing(sent);
    let (from_a, from_b) = (tally.received_by("a"), tally.received_by("b"));
    let agent_dropped = agent_m.sum("dropped", &[]);
    let b_dropped = b_m.sum("dropped", &[]);
    // What reached Doppler A (or its transport) and never reached A's subscriber.
    let lost_in_a = agent_m.sum("egress", &[]) - b_m.sum("ingress", &[]) - from_a;
    eprintln!(
        "kill -9: sent {sent}, killed at #{killed_at}, from A {from_a}, from B {from_b}, missing {}, \
         duplicates {}, agent dropped {agent_dropped}, B dropped {b_dropped}, lost in A {lost_in_a}, \
         missing range {:?}..={:?}, settled {settle:?}",
        missing.len(),
        tally.duplicates(),
        missing.first(),
        missing.last()
    );
    assert_eq!(tally.duplicates(), 0, "a recovered batch was sent twice");
    // Every envelope is accounted for: delivered, counted as dropped, or in Doppler A when it died.
    assert_eq!(sent, tally.distinct() + agent_dropped + b_dropped + lost_in_a);
    assert!(lost_in_a <= IN_FLIGHT_TO_ONE_DOPPLER, "lost {lost_in_a} > in flight {IN_FLIGHT_TO_ONE_DOPPLER}");
    // Only envelopes close to the kill are lost: nothing from the first half of the run, and
    // everything emitted more than half a second after the kill arrived (the agent failed over).
    let window = killed_at.saturating_sub(IN_FLIGHT_TO_ONE_DOPPLER)..killed_at + RATE / 2;
    assert!(missing.iter().all(|s| window.contains(s)), "lost outside {window:?}: {missing:?}");
    assert!(tally.has_all(killed_at + RATE / 2, sent), "not everything after the failover arrived");
}
