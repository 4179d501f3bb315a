//! Agent egress: batches from the ingress diode to the Dopplers over `loggregator.v2.Ingress/BatchSender`.
//!
//! One dispatcher task drains the diode into batches (≤ `batch_size`) and hands them to a small
//! bounded queue; `connections` connection tasks take batches from it, each streaming to one Doppler
//! picked from the [`DopplerPool`]. When every connection is busy or down, the queue fills, the
//! dispatcher waits, and the diode (not the emitter) absorbs the backlog, dropping its oldest.
//!
//! Failover: a Doppler that refuses a connection or fails a stream is marked down with capped
//! exponential backoff and receives nothing until it is tried again; its connection moves to another
//! Doppler with the batch it held. Streams are closed cleanly and reopened every `stream_max_age`, so
//! a Doppler that shuts down gracefully reads everything it was sent, and new Dopplers (from DNS) are
//! picked up. Batches a failed stream had not yet taken are recovered and sent elsewhere.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::Stream;
use loggregator_proto::raw::client::ingress::ingress_client::IngressClient;
use loggregator_proto::raw::EncodedBatch;
use parking_lot::Mutex;
use plumbing::tls::ClientTls;
use plumbing::{Counter, Diode, Gauge};
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

// === impl DopplerPool ===

#[derive(Default)]
struct Health {
    failures: u32,
    down_until: Option<Instant>,
    /// Connections currently streaming to this Doppler.
    active: usize,
}

/// The Dopplers this agent knows of and which of them are currently usable.
pub struct DopplerPool {
    state: Mutex<(Vec<SocketAddr>, HashMap<SocketAddr, Health>)>,
    changed: Notify,
    /// How many addresses are known now: set on every resolution, not only the first.
    known: Gauge,
    /// Where the next [`Self::acquire`] starts looking, advanced by every call (see there).
    next: AtomicUsize,
    backoff_initial: Duration,
    backoff_max: Duration,
}

impl DopplerPool {
    pub fn new(backoff_initial: Duration, backoff_max: Duration) -> Self {
        Self {
            state: Mutex::new((Vec::new(), HashMap::new())),
            changed: Notify::new(),
            known: Gauge::default(),
            next: AtomicUsize::new(0),
            backoff_initial,
            backoff_max,
        }
    }

    /// Reports the number of known addresses in `gauge` (the agent's `dopplers`).
    pub fn with_gauge(mut self, gauge: Gauge) -> Self {
        self.known = gauge;
        self
    }

    /// Replaces the address list (from resolution); health of known addresses is kept.
    pub fn set_addrs(&self, mut addrs: Vec<SocketAddr>) {
        addrs.sort();
        addrs.dedup();
        self.known.set(addrs.len() as i64);
        let mut state = self.state.lock();
        if state.0 != addrs {
            state.1.retain(|addr, _| addrs.contains(addr));
            state.0 = addrs;
            drop(state);
            self.changed.notify_waiters();
        }
    }

    pub fn addrs(&self) -> Vec<SocketAddr> {
        self.state.lock().0.clone()
    }

    /// Takes a usable Doppler for a connection: the healthy one with the fewest connections, ties
    /// broken from a start that moves on at every call. Streams are recycled often, so a Doppler
    /// that comes back, or appears, gets connections within one `stream_max_age`. When connections
    /// do not divide evenly (5 over 3 Dopplers), which Doppler holds one fewer changes from one
    /// recycle to the next, so over time each gets an equal share; ties broken by connection slot
    /// gave every Doppler the same one each time (5 over 3: 2 : 2 : 1 for good; over 6: one
    /// Doppler never used). Pair with [`Self::release`].
    fn acquire(&self) -> Option<SocketAddr> {
        let now = Instant::now();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut guard = self.state.lock();
        let (addrs, health) = &mut *guard;
        let n = addrs.len();
        let chosen = (0..n)
            .map(|i| addrs[start.wrapping_add(i) % n])
            .filter(|a| health.get(a).and_then(|h| h.down_until).is_none_or(|until| until <= now))
            .min_by_key(|a| health.get(a).map_or(0, |h| h.active))?;
        health.entry(chosen).or_default().active += 1;
        Some(chosen)
    }

    fn release(&self, addr: SocketAddr) {
        if let Some(h) = self.state.lock().1.get_mut(&addr) {
            h.active = h.active.saturating_sub(1);
        }
    }

    fn mark_failed(&self, addr: SocketAddr) {
        let mut state = self.state.lock();
        let health = state.1.entry(addr).or_default();
        health.failures = health.failures.saturating_add(1);
        let wait = self.backoff(health.failures);
        health.down_until = Some(Instant::now() + wait);
    }

    /// Wait after `failures` consecutive failures: doubling from `backoff_initial`, capped.
    fn backoff(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(16);
        self.backoff_initial.saturating_mul(1 << exponent).min(self.backoff_max)
    }

    fn mark_ok(&self, addr: SocketAddr) {
        if let Some(health) = self.state.lock().1.get_mut(&addr) {
            health.failures = 0;
            health.down_until = None;
        }
    }

    /// When the next down Doppler may be retried (or a short wait if none is known yet).
    fn next_retry(&self) -> Instant {
        let state = self.state.lock();
        state.1.values().filter_map(|h| h.down_until).min().unwrap_or_else(|| Instant::now() + self.backoff_initial)
    }

    async fn wait_for_change_or(&self, deadline: Instant) {
        let _ = tokio::time::timeout_at(deadline.into(), self.changed.notified()).await;
    }
}

pub use plumbing::grpc::resolve;

/// Re-resolves the Doppler entries every `interval` until shutdown. An empty result keeps the old list.
pub async fn run_resolver(
    pool: Arc<DopplerPool>,
    entries: Vec<String>,
    interval: Duration,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = shutdown.cancelled() => return,
        }
        let addrs = resolve(&entries).await;
        if !addrs.is_empty() {
            pool.set_addrs(addrs);
        }
    }
}

// === dispatcher ===

/// Drains the diode into batches until shutdown, then flushes what is left and closes the queue.
pub async fn run_dispatcher(
    diode: Arc<Diode<Bytes>>,
    queue: async_channel::Sender<EncodedBatch>,
    batch_size: usize,
    shutdown: CancellationToken,
) {
    // An envelope that would have taken the last batch past `MAX_BATCH_BYTES` opens the next.
    let mut carry = None;
    let take = |carry: &mut Option<Bytes>| {
        let mut batch = EncodedBatch::with_capacity(batch_size);
        let (max_bytes, len) = (plumbing::grpc::MAX_BATCH_BYTES, plumbing::grpc::batch_entry_len);
        diode.pop_batch_within(&mut batch.envelopes, batch_size, max_bytes, len, carry);
        batch
    };
    loop {
        if carry.is_none() {
            tokio::select! {
                _ = diode.wait_for_data() => {}
                _ = shutdown.cancelled() => break,
            }
        }
        let batch = take(&mut carry);
        if !batch.is_empty() && queue.send(batch).await.is_err() {
            return;
        }
    }
    while carry.is_some() || !diode.is_empty() {
        let batch = take(&mut carry);
        if queue.send(batch).await.is_err() {
            return;
        }
    }
    queue.close();
}

// === connections ===

/// The request stream of one `BatchSender` call. Its receiver stays reachable after the call ends,
/// so batches the call never took can be recovered and sent elsewhere. A batch counts as `egress`
/// the moment the transport takes it from here.
struct Outbox {
    rx: Arc<Mutex<mpsc::Receiver<EncodedBatch>>>,
    egress: Counter,
    /// Envelopes this call's transport took: unconfirmed until the call ends well.
    taken: Arc<std::sync::atomic::AtomicU64>,
}

impl Stream for Outbox {
    type Item = EncodedBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.rx.lock().poll_recv(cx);
        if let Poll::Ready(Some(batch)) = &polled {
            self.egress.add(batch.len() as u64);
            self.taken.fetch_add(batch.len() as u64, std::sync::atomic::Ordering::Relaxed);
        }
        polled
    }
}

pub struct ConnectionSettings {
    pub stream_max_age: Duration,
    pub stream_max_envelopes: u64,
    pub max_message_bytes: usize,
    pub tls: Option<ClientTls>,
    pub grace: Duration,
}

pub struct Connection {
    pub pool: Arc<DopplerPool>,
    pub queue: async_channel::Receiver<EncodedBatch>,
    pub settings: Arc<ConnectionSettings>,
    pub egress: Counter,
    pub dropped: Counter,
    /// What failed calls' transports had taken (see [`Connection::stream`]).
    pub unconfirmed: Counter,
}

enum StreamEnd {
    /// Time or size limit reached: reopen (possibly elsewhere).
    Recycle,
    /// The queue is closed and empty: the agent is shutting down.
    Finished,
    /// The stream failed.
    Failed,
}

impl Connection {
    pub async fn run(self, shutdown: CancellationToken) {
        let mut pending: Vec<EncodedBatch> = Vec::new();
        let mut channel: Option<(SocketAddr, Channel)> = None;
        loop {
            let Some(addr) = self.pool.acquire() else {
                if shutdown.is_cancelled() && self.queue.is_closed() {
                    self.count_lost(&pending);
                    return;
                }
                self.pool.wait_for_change_or(self.pool.next_retry()).await;
                continue;
            };
            let ch = match &channel {
                Some((a, ch)) if *a == addr => ch.clone(),
                _ => match self.connect(addr).await {
                    Ok(ch) => {
                        channel = Some((addr, ch.clone()));
                        ch
                    }
                    Err(error) => {
                        tracing::debug!(doppler = %addr, %error, "doppler unreachable");
                        self.pool.release(addr);
                        self.pool.mark_failed(addr);
                        continue;
                    }
                },
            };
            let end = self.stream(ch, &mut pending).await;
            self.pool.release(addr);
            match end {
                StreamEnd::Recycle => self.pool.mark_ok(addr),
                StreamEnd::Finished => {
                    self.pool.mark_ok(addr);
                    if pending.is_empty() {
                        return;
                    }
                }
                StreamEnd::Failed => {
                    tracing::debug!(doppler = %addr, "doppler stream failed; failing over");
                    self.pool.mark_failed(addr);
                    channel = None;
                }
            }
        }
    }

    async fn connect(&self, addr: SocketAddr) -> Result<Channel, tonic::transport::Error> {
        // TLS is done by our connector (`plumbing::grpc`), so tonic sees a plain endpoint.
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            // Go clients ping every 15 s; a Doppler must tolerate it (§2.7) and we do the same.
            .http2_keep_alive_interval(Duration::from_secs(15))
            .max_frame_size(plumbing::grpc::MAX_FRAME_SIZE)
            .keep_alive_timeout(Duration::from_secs(20));
        plumbing::grpc::connect(&endpoint, self.settings.tls.clone()).await
    }

    /// One `BatchSender` call: sends batches until a limit, shutdown, or failure.
    ///
    /// gRPC confirms a client stream only as a whole, when the Doppler answers its end. A call that
    /// fails instead (the Doppler died, or froze past the grace) leaves what its transport took in
    /// doubt: some of it may have been read, the rest is lost, and no one can tell which. It is
    /// counted as `unconfirmed`, the bound on that loss, so the sum rule still closes: agent
    /// `egress` ≤ Σ Doppler `ingress` + `unconfirmed`.
    async fn stream(&self, channel: Channel, pending: &mut Vec<EncodedBatch>) -> StreamEnd {
        let taken = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let end = self.send_batches(channel, pending, Arc::clone(&taken)).await;
        if matches!(end, StreamEnd::Failed) {
            self.unconfirmed.add(taken.load(std::sync::atomic::Ordering::Relaxed));
        }
        end
    }

    async fn send_batches(
        &self,
        channel: Channel,
        pending: &mut Vec<EncodedBatch>,
        taken: Arc<std::sync::atomic::AtomicU64>,
    ) -> StreamEnd {
        let mut client = IngressClient::new(channel).max_encoding_message_size(self.settings.max_message_bytes);
        let (tx, rx) = mpsc::channel::<EncodedBatch>(1);
        let rx = Arc::new(Mutex::new(rx));
        let outbox = Outbox { rx: Arc::clone(&rx), egress: self.egress.clone(), taken };
        let mut call = Box::pin(client.batch_sender(outbox));
        let opened = tokio::time::Instant::now();
        let deadline = opened + self.settings.stream_max_age;
        let mut sent = 0u64;
        let mut end = StreamEnd::Recycle;
        loop {
            let batch = match pending.pop() {
                Some(batch) => batch,
                None => tokio::select! {
                    batch = self.queue.recv() => match batch {
                        Ok(batch) => batch,
                        Err(_) => { end = StreamEnd::Finished; break; }
                    },
                    result = &mut call => {
                        end = if result.is_ok() { StreamEnd::Recycle } else { StreamEnd::Failed };
                        return self.finish(end, &rx, pending);
                    }
                    _ = tokio::time::sleep_until(deadline) => break,
                },
            };
            tokio::select! {
                permit = tx.reserve() => match permit {
                    Ok(permit) => {
                        sent += batch.len() as u64;
                        permit.send(batch);
                    }
                    Err(_) => { pending.push(batch); end = StreamEnd::Failed; break; }
                },
                result = &mut call => {
                    pending.push(batch);
                    end = if result.is_ok() { StreamEnd::Recycle } else { StreamEnd::Failed };
                    return self.finish(end, &rx, pending);
                }
            }
            if sent >= self.settings.stream_max_envelopes || tokio::time::Instant::now() >= deadline {
                break;
            }
        }
        // Close the request stream and wait for the Doppler to confirm it read everything.
        drop(tx);
        let result = tokio::time::timeout(self.settings.grace, &mut call).await;
        let failed = !matches!(result, Ok(Ok(_)));
        drop(call);
        self.finish(if failed { StreamEnd::Failed } else { end }, &rx, pending)
    }

    /// Takes back batches the finished call never consumed, so they go to another Doppler.
    fn finish(
        &self,
        end: StreamEnd,
        rx: &Mutex<mpsc::Receiver<EncodedBatch>>,
        pending: &mut Vec<EncodedBatch>,
    ) -> StreamEnd {
        let mut rx = rx.lock();
        while let Ok(batch) = rx.try_recv() {
            pending.push(batch);
        }
        end
    }

    fn count_lost(&self, pending: &[EncodedBatch]) {
        let lost: u64 = pending.iter().map(|b| b.len() as u64).sum();
        self.dropped.add(lost);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn connections_spread_over_healthy_dopplers() {
        let pool = DopplerPool::new(Duration::from_secs(60), Duration::from_secs(60));
        pool.set_addrs(vec![addr(1), addr(2), addr(3)]);
        let picked: Vec<SocketAddr> = (0..6).map(|_| pool.acquire().unwrap()).collect();
        for a in [addr(1), addr(2), addr(3)] {
            assert_eq!(picked.iter().filter(|p| **p == a).count(), 2, "{picked:?}");
        }
    }

    #[test]
    fn a_failed_doppler_gets_nothing_until_its_backoff_expires() {
        let pool = DopplerPool::new(Duration::from_secs(60), Duration::from_secs(60));
        pool.set_addrs(vec![addr(1), addr(2)]);
        pool.mark_failed(addr(1));
        for _ in 0..4 {
            assert_eq!(pool.acquire(), Some(addr(2)));
        }
        let quick = DopplerPool::new(Duration::ZERO, Duration::ZERO);
        quick.set_addrs(vec![addr(1)]);
        quick.mark_failed(addr(1));
        assert_eq!(quick.acquire(), Some(addr(1)), "retried once the backoff is over");
    }

    #[test]
    fn a_new_doppler_is_preferred_when_connections_recycle() {
        let pool = DopplerPool::new(Duration::from_secs(60), Duration::from_secs(60));
        pool.set_addrs(vec![addr(1), addr(2)]);
        let held: Vec<SocketAddr> = (0..4).map(|_| pool.acquire().unwrap()).collect();
        pool.set_addrs(vec![addr(1), addr(2), addr(3)]);
        // One connection recycles: it releases its Doppler and picks the idle newcomer.
        pool.release(held[0]);
        assert_eq!(pool.acquire(), Some(addr(3)));
    }

    /// Connections recycled in turn, as streams of the same age are: every Doppler gets an equal
    /// share of connection time whether or not the connections divide evenly among them.
    #[test]
    fn recycled_connections_share_every_doppler_equally() {
        for dopplers in [2u16, 3, 4, 6] {
            let pool = DopplerPool::new(Duration::from_secs(60), Duration::from_secs(60));
            pool.set_addrs((1..=dopplers).map(addr).collect());
            let mut held: Vec<SocketAddr> = (0..5).map(|_| pool.acquire().unwrap()).collect();
            let mut share: HashMap<SocketAddr, usize> = HashMap::new();
            for _ in 0..300 {
                for slot in 0..held.len() {
                    pool.release(held[slot]);
                    held[slot] = pool.acquire().unwrap();
                    for h in &held {
                        *share.entry(*h).or_default() += 1;
                    }
                }
            }
            let total: usize = share.values().sum();
            for d in 1..=dopplers {
                let got = share.get(&addr(d)).copied().unwrap_or(0) as f64 / total as f64;
                let fair = 1.0 / f64::from(dopplers);
                assert!(
                    (got - fair).abs() < 0.02,
                    "{dopplers} Dopplers: {} got {got:.3} of the time, not {fair:.3}",
                    addr(d)
                );
            }
        }
    }

    #[test]
    fn the_known_gauge_follows_every_resolution() {
        let gauge = Gauge::default();
        let pool = DopplerPool::new(Duration::from_secs(60), Duration::from_secs(60)).with_gauge(gauge.clone());
        pool.set_addrs(vec![addr(1), addr(2), addr(2)]);
        assert_eq!(gauge.get(), 2, "duplicates count once");
        pool.set_addrs(vec![addr(1), addr(2), addr(3), addr(4)]);
        assert_eq!(gauge.get(), 4, "a Doppler added to DNS is counted");
        pool.set_addrs(vec![addr(4)]);
        assert_eq!(gauge.get(), 1, "and one removed is no longer");
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let pool = DopplerPool::new(Duration::from_millis(100), Duration::from_millis(350));
        let waits: Vec<u128> = (1..=4).map(|f| pool.backoff(f).as_millis()).collect();
        assert_eq!(waits, vec![100, 200, 350, 350]);
    }

    #[tokio::test]
    async fn names_resolve_to_every_address() {
        let found = resolve(&["localhost:8082".to_string(), "127.0.0.2:9".to_string()]).await;
        assert!(found.contains(&SocketAddr::from(([127, 0, 0, 2], 9))), "{found:?}");
        assert!(found.iter().any(|a| a.port() == 8082 && a.ip().is_loopback()), "{found:?}");
        assert!(resolve(&["not a host name:1".to_string()]).await.is_empty());
    }
}
