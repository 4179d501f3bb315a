//! The memory cap holds under a flood of concurrent `Send`s, pruning the oldest first.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_cap_holds_under_a_flood() {
    const LIMIT: u64 = 2 << 20;
    let mut config = test_config();
    config.memory_limit_bytes = Some(LIMIT);
    let cache = start(config).await;

    let done = Arc::new(AtomicBool::new(false));
    let peak = Arc::new(AtomicU64::new(0));
    let watcher = {
        let (store, done, peak) = (cache.store.clone(), done.clone(), peak.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(store.used_bytes(), Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    let payload = "x".repeat(400);
    let mut senders = Vec::new();
    for sender in 0..4 {
        let mut client = cache.ingress().await;
        let payload = payload.clone();
        senders.push(tokio::spawn(async move {
            for batch in 0..50 {
                let envelopes = (0..100)
                    .map(|i| {
                        log_envelope(&format!("source-{}", (sender * 7 + i) % 23), (batch * 100 + i) as i64, &payload)
                    })
                    .collect();
                let request = loggregator_proto::logcache::v1::SendRequest {
                    envelopes: Some(loggregator_proto::v2::EnvelopeBatch { batch: envelopes }),
                    local_only: false,
                };
                client.send(request).await.expect("send");
            }
        }));
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    done.store(true, Ordering::Relaxed);
    watcher.await.expect("watcher");

    // 20,000 envelopes of ~450 bytes (~11 MB accounted) went into a 2 MiB store.
    let stats = cache.store.stats();
    assert_eq!(stats.ingress.get(), 20_000);
    assert!(stats.pruned_by_memory.get() > 10_000, "pruned {}", stats.pruned_by_memory.get());
    assert!(cache.store.used_bytes() <= LIMIT, "{} > {LIMIT}", cache.store.used_bytes());
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak <= LIMIT + LIMIT / 50, "peak {peak} is more than 2% over {LIMIT}");
    // What survives is the newest: every remaining envelope is newer than every pruned one of its
    // source, so the oldest timestamp held is well past the start of the flood.
    let meta = cache.store.meta();
    let held: i64 = meta.values().map(|m| m.count).sum();
    assert_eq!(held, stats.envelopes.get());
    assert!(meta.values().all(|m| m.oldest_timestamp > 0), "{meta:?}");
    assert!(meta.values().map(|m| m.expired).sum::<i64>() > 0);
}
