//! What the fault tests share: components as real processes of the `loggregator` binary (killed on
//! drop, also when a test panics), their `/metrics` scraped over HTTP, their memory read from
//! `/proc`, and an emitter and subscribers that tag every envelope with a sequence number, so a test
//! knows exactly which envelopes arrived, which did not, and how many arrived twice.

#![allow(dead_code)] // each test uses its own part of it

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::SinkExt as _;
use loggregator_proto::bytes::Bytes;
use loggregator_proto::tonic::transport::{Channel, Endpoint};
use loggregator_proto::v2::egress_client::EgressClient;
use loggregator_proto::v2::ingress_client::IngressClient;
use loggregator_proto::v2::{self, envelope::Message, selector, EgressBatchRequest, Envelope, EnvelopeBatch};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_util::sync::CancellationToken;

/// A `std::sync::Mutex` that ignores poisoning: a panicking test must still be able to report.
pub struct Mutex<T>(std::sync::Mutex<T>);

impl<T> Mutex<T> {
    pub fn new(value: T) -> Self {
        Self(std::sync::Mutex::new(value))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, T> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The longest any step of a fault test waits for a condition.
pub const DEADLINE: Duration = Duration::from_secs(30);

/// A loopback address with a port that was free a moment ago (bound, then released for the child).
pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binds an ephemeral port");
    listener.local_addr().expect("bound address")
}

/// A directory of its own under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("loggregator-faults-{}-{name}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        Self(dir)
    }

    pub fn file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, contents).expect("writes a temp file");
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Polls `condition` every 5 ms until it holds or `deadline` passes; returns whether it held.
pub async fn eventually<F, Fut>(deadline: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

// === processes ===

/// One component running as a child process of the `loggregator` binary. Dropping it kills it.
pub struct Proc {
    pub name: String,
    /// What runs the binary: empty, or e.g. `ip netns exec <ns>` (which execs it, so the child's
    /// pid is the component's).
    launcher: Vec<String>,
    args: Vec<String>,
    child: Option<Child>,
    log: PathBuf,
    _dir: Arc<TempDir>,
    /// Its `/metrics` address.
    pub metrics: SocketAddr,
    /// The TCP addresses it must listen on before it counts as started.
    listens: Vec<SocketAddr>,
}

impl Proc {
    /// Starts `loggregator <args> --metrics-addr <free>` and waits until `/metrics` and every
    /// address in `listens` accept connections.
    pub async fn start(name: &str, args: &[String], listens: &[SocketAddr]) -> Proc {
        Self::start_with(name, &[], args, listens, free_addr()).await
    }

    /// Starts `<launcher> loggregator <args> --metrics-addr <metrics>` and waits as
    /// [`Proc::start`] does (the multi-host test runs each component in a network namespace).
    pub async fn start_with(
        name: &str,
        launcher: &[String],
        args: &[String],
        listens: &[SocketAddr],
        metrics: SocketAddr,
    ) -> Proc {
        let dir = Arc::new(TempDir::new(name));
        let mut args = args.to_vec();
        args.extend(["--metrics-addr".to_string(), metrics.to_string()]);
        let log = dir.0.join(format!("{name}.log"));
        let mut proc = Proc {
            name: name.to_string(),
            launcher: launcher.to_vec(),
            args,
            child: None,
            log,
            _dir: dir,
            metrics,
            listens: listens.to_vec(),
        };
        proc.spawn().await;
        proc
    }

    async fn spawn(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).expect("opens the log file");
        let binary = env!("CARGO_BIN_EXE_loggregator").to_string();
        let mut command = self.launcher.iter().chain([&binary]).chain(&self.args);
        let program = command.next().expect("the binary is always there");
        let child = Command::new(program)
            .args(command)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clones the log handle"))
            .stderr(log)
            .spawn()
            .expect("spawns the loggregator binary");
        self.child = Some(child);
        let mut addrs = self.listens.clone();
        addrs.push(self.metrics);
        let started = eventually(DEADLINE, || {
            let addrs = addrs.clone();
            async move {
                for addr in addrs {
                    if tokio::net::TcpStream::connect(addr).await.is_err() {
                        return false;
                    }
                }
                true
            }
        })
        .await;
        assert!(started, "{} did not start listening on {:?}:\n{}", self.name, self.listens, self.log_tail());
        assert!(self.scrape().await.is_some(), "{} serves no /metrics:\n{}", self.name, self.log_tail());
    }

    /// Starts it again with the same arguments (same ports).
    pub async fn restart(&mut self) {
        self.spawn().await;
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("process is running").id()
    }

    /// `kill -9`: no shutdown, no flush, the kernel closes its sockets.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -STOP`: the process stops answering, its sockets stay open.
    pub fn sigstop(&self) {
        self.signal("-STOP");
    }

    /// `kill -CONT`.
    pub fn sigcont(&self) {
        self.signal("-CONT");
    }

    /// SIGTERM, then waits (at most `DEADLINE`) for a clean exit; returns whether it exited 0.
    pub async fn terminate(&mut self) -> bool {
        self.signal("-TERM");
        let mut child = self.child.take().expect("process is running");
        let end = Instant::now() + DEADLINE;
        loop {
            if let Some(status) = child.try_wait().expect("waits on the child") {
                return status.success();
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{} did not exit within {DEADLINE:?} of SIGTERM:\n{}", self.name, self.log_tail());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill").args([signal, &self.pid().to_string()]).status().expect("runs kill");
        assert!(status.success(), "kill {signal} {} failed", self.name);
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    pub fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("reads /proc status");
        status
            .lines()
            .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in /proc/{}/status", self.pid()))
    }

    /// `GET /metrics`, or `None` when it does not answer within 2 s.
    pub async fn scrape(&self) -> Option<Metrics> {
        scrape(self.metrics).await
    }

    /// `GET /metrics`, which must answer.
    pub async fn metrics(&self) -> Metrics {
        match self.scrape().await {
            Some(metrics) => metrics,
            None => panic!("{} /metrics does not answer:\n{}", self.name, self.log_tail()),
        }
    }

    /// Scrapes every 5 ms until `done` holds of a scrape or `DEADLINE` passes; returns whether it
    /// held and the last scrape.
    pub async fn scrape_until(&self, mut done: impl FnMut(&Metrics) -> bool) -> (bool, Metrics) {
        let end = Instant::now() + DEADLINE;
        let mut last = None;
        loop {
            if let Some(m) = self.scrape().await {
                if done(&m) {
                    return (true, m);
                }
                last = Some(m);
            }
            if Instant::now() >= end {
                let m = last.unwrap_or_else(|| panic!("{} /metrics never answered:\n{}", self.name, self.log_tail()));
                return (false, m);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The last lines the process logged, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!("--- {} (last lines) ---\n{}", self.name, self.log_tail());
        }
        // SIGKILL also ends a stopped process.
        self.kill9();
    }
}

/// One scrape of a Prometheus text exposition.
#[derive(Clone, Debug)]
pub struct Metrics(pub String);

impl Metrics {
    /// Sum of the samples of `name` whose labels include every `labels` pair.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        let mut total = 0.0;
        for line in self.0.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else { continue };
            let (metric, label_text) = match series.split_once('{') {
                Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                continue;
            }
            let has = |(k, v): &(&str, &str)| label_text.split(',').any(|pair| pair == format!("{k}=\"{v}\""));
            if labels.iter().all(has) {
                total += value.parse::<f64>().unwrap_or(0.0);
            }
        }
        total as u64
    }
}

async fn scrape(addr: SocketAddr) -> Option<Metrics> {
    let get = async {
        let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let request = format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.ok()?;
        let text = String::from_utf8(response).ok()?;
        let (head, body) = text.split_once("\r\n\r\n")?;
        if !head.starts_with("HTTP/1.1 200") {
            return None;
        }
        Some(Metrics(body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(2), get).await.ok().flatten()
}

// === components ===

pub fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A Doppler on `grpc`.
pub async fn doppler(name: &str, grpc: SocketAddr, extra: &[&str]) -> Proc {
    let mut args = strings(&["doppler", "--grpc-addr", &grpc.to_string()]);
    args.extend(strings(extra));
    Proc::start(name, &args, &[grpc]).await
}

/// An agent on `grpc` (UDP off) sending to `dopplers`.
pub async fn agent(grpc: SocketAddr, dopplers: &[SocketAddr], extra: &[&str]) -> Proc {
    let list: Vec<String> = dopplers.iter().map(SocketAddr::to_string).collect();
    let mut args = strings(&["agent", "--grpc-addr", &grpc.to_string(), "--disable-udp", "--doppler", &list.join(",")]);
    args.extend(strings(extra));
    Proc::start("agent", &args, &[grpc]).await
}

// === traffic ===

/// The timestamp of envelope `seq` is `base + seq`, so a subscriber knows each envelope's number.
fn envelope(base: i64, seq: u64, source_id: &str, payload: &Bytes) -> Envelope {
    Envelope {
        timestamp: base + seq as i64,
        source_id: source_id.to_string(),
        instance_id: "0".into(),
        message: Some(Message::Log(v2::Log { payload: payload.clone(), r#type: 0 })),
        ..Default::default()
    }
}

pub fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock after 1970").as_nanos() as i64
}

/// Connects to a gRPC server, retrying until `DEADLINE`.
pub async fn channel(addr: SocketAddr) -> Channel {
    let endpoint = Endpoint::from_shared(format!("http://{addr}")).expect("valid endpoint");
    let end = Instant::now() + DEADLINE;
    loop {
        match endpoint.connect().await {
            Ok(channel) => return channel,
            Err(error) if Instant::now() >= end => panic!("cannot connect to {addr}: {error}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// Sends envelopes numbered 0, 1, 2, ... to a v2 ingress (`BatchSender`) at a steady rate, in one
/// batch every 10 ms.
pub struct Emitter {
    pub base: i64,
    sent: Arc<AtomicU64>,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<u64>,
}

impl Emitter {
    /// Envelope `n` has timestamp `base + n`.
    pub async fn start(addr: SocketAddr, base: i64, source_id: &str, per_second: u64, payload_len: usize) -> Emitter {
        Self::start_on(channel(addr).await, base, source_id, per_second, payload_len).await
    }

    /// The same on a channel of the caller's (one with TLS, say).
    pub async fn start_on(
        channel: Channel,
        base: i64,
        source_id: &str,
        per_second: u64,
        payload_len: usize,
    ) -> Emitter {
        let sent = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let per_tick = (per_second / 100).max(1);
        let payload = Bytes::from(vec![b'x'; payload_len]);
        let source_id = source_id.to_string();
        let mut client = IngressClient::new(channel);
        let (counter, token) = (Arc::clone(&sent), stop.clone());
        let task = tokio::spawn(async move {
            let (mut tx, rx) = futures::channel::mpsc::channel::<EnvelopeBatch>(4);
            let call = tokio::spawn(async move {
                client.batch_sender(rx).await.expect("agent accepts");
            });
            let mut ticks = tokio::time::interval(Duration::from_millis(10));
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seq = 0;
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    _ = token.cancelled() => break,
                }
                let batch: Vec<Envelope> =
                    (seq..seq + per_tick).map(|s| envelope(base, s, &source_id, &payload)).collect();
                if tx.send(EnvelopeBatch { batch }).await.is_err() {
                    break;
                }
                seq += per_tick;
                counter.store(seq, Ordering::SeqCst);
            }
            drop(tx);
            call.await.expect("the emitting stream ends cleanly");
            seq
        });
        Emitter { base, sent, stop, task }
    }

    /// Envelopes handed to the stream so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Stops, waits for the ingress to confirm the stream, and returns how many were sent.
    pub async fn finish(self) -> u64 {
        self.stop.cancel();
        tokio::time::timeout(DEADLINE, self.task).await.expect("emitter stops in time").expect("emitter did not panic")
    }
}

/// Sends `count` envelopes numbered from `first` in batches of `batch`, as fast as the ingress takes them.
pub async fn send_burst(addr: SocketAddr, base: i64, first: u64, count: u64, source_id: &str, payload_len: usize) {
    let payload = Bytes::from(vec![b'x'; payload_len]);
    let source_id = source_id.to_string();
    let batches = (first..first + count).collect::<Vec<u64>>();
    let batches: Vec<EnvelopeBatch> = batches
        .chunks(100)
        .map(|chunk| EnvelopeBatch { batch: chunk.iter().map(|s| envelope(base, *s, &source_id, &payload)).collect() })
        .collect();
    let mut client = IngressClient::new(channel(addr).await);
    client.batch_sender(futures::stream::iter(batches)).await.expect("ingress accepts the burst");
}

/// What every subscriber of a test received, by sequence number.
#[derive(Default)]
pub struct Tally {
    /// Sequence number → how many times it arrived (over all subscribers).
    seen: HashMap<u64, u32>,
    /// Per subscriber: envelopes received.
    per_subscriber: HashMap<String, u64>,
}

impl Tally {
    /// Counts one arrival of `seq` at `subscriber`.
    pub fn record(&mut self, subscriber: &str, seq: u64) {
        *self.per_subscriber.entry(subscriber.to_string()).or_default() += 1;
        *self.seen.entry(seq).or_default() += 1;
    }

    pub fn distinct(&self) -> u64 {
        self.seen.len() as u64
    }

    pub fn duplicates(&self) -> u64 {
        self.seen.values().map(|n| u64::from(n - 1)).sum()
    }

    pub fn received_by(&self, name: &str) -> u64 {
        self.per_subscriber.get(name).copied().unwrap_or(0)
    }

    pub fn has(&self, seq: u64) -> bool {
        self.seen.contains_key(&seq)
    }

    /// Sequence numbers below `sent` that never arrived.
    pub fn missing(&self, sent: u64) -> Vec<u64> {
        (0..sent).filter(|s| !self.seen.contains_key(s)).collect()
    }

    /// How many sequence numbers in `from..to` never arrived.
    pub fn missing_in(&self, from: u64, to: u64) -> u64 {
        (from..to).filter(|s| !self.seen.contains_key(s)).count() as u64
    }

    /// Every sequence number in `from..to` arrived.
    pub fn has_all(&self, from: u64, to: u64) -> bool {
        (from..to).all(|s| self.seen.contains_key(&s))
    }
}

pub type SharedTally = Arc<Mutex<Tally>>;

pub fn tally() -> SharedTally {
    Arc::new(Mutex::new(Tally::default()))
}

/// Selects the logs of `source_id`.
pub fn log_selector(source_id: &str) -> v2::Selector {
    v2::Selector { source_id: source_id.to_string(), message: Some(selector::Message::Log(v2::LogSelector {})) }
}

/// One `BatchedReceiver` stream counting the envelopes of `source_id` into a tally. It does not
/// reconnect: when its server goes away, so does the stream (`ended`, and how: [`Subscriber::end`]).
pub struct Subscriber {
    end: Arc<Mutex<Option<Result<(), loggregator_proto::tonic::Code>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Subscriber {
    pub async fn start(name: &str, addr: SocketAddr, source_id: &str, base: i64, tally: &SharedTally) -> Subscriber {
        Self::start_on(name, channel(addr).await, source_id, base, tally).await
    }

    /// The same on a channel of the caller's (one with TLS, say).
    pub async fn start_on(name: &str, channel: Channel, source_id: &str, base: i64, tally: &SharedTally) -> Subscriber {
        Self::start_in_group(name, &format!("faults-{name}"), channel, source_id, base, tally).await
    }

    /// The same in shard group `shard_id`, which other subscribers may share (each gets a part).
    pub async fn start_in_group(
        name: &str,
        shard_id: &str,
        channel: Channel,
        source_id: &str,
        base: i64,
        tally: &SharedTally,
    ) -> Subscriber {
        let request = EgressBatchRequest {
            shard_id: shard_id.to_string(),
            selectors: vec![log_selector(source_id)],
            ..Default::default()
        };
        let mut client = EgressClient::new(channel).max_decoding_message_size(16 << 20);
        let mut stream = client.batched_receiver(request).await.expect("subscribes").into_inner();
        let end = Arc::new(Mutex::new(None));
        let (tally, name, end_of_task) = (Arc::clone(tally), name.to_string(), Arc::clone(&end));
        let task = tokio::spawn(async move {
            let ended = loop {
                match stream.message().await {
                    Ok(Some(batch)) => {
                        let mut tally = tally.lock();
                        *tally.per_subscriber.entry(name.clone()).or_default() += batch.batch.len() as u64;
                        for envelope in batch.batch {
                            let seq = (envelope.timestamp - base) as u64;
                            *tally.seen.entry(seq).or_default() += 1;
                        }
                    }
                    Ok(None) => break Ok(()),
                    Err(status) => break Err(status.code()),
                }
            };
            *end_of_task.lock() = Some(ended);
        });
        Subscriber { end, task }
    }

    pub fn ended(&self) -> bool {
        self.end.lock().is_some()
    }

    /// How the stream ended: `Ok` when the server ended it with status OK; `None` while it runs.
    pub fn end(&self) -> Option<Result<(), loggregator_proto::tonic::Code>> {
        *self.end.lock()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// === log-cache ===

/// A log-cache node (syslog off, no nozzle) with its gRPC and HTTP listeners; `extra` flags as given.
pub async fn log_cache(name: &str, dir: &TempDir, grpc: SocketAddr, extra: &[&str]) -> Proc {
    let config = dir.file(&format!("{name}.toml"), "[syslog]\nenabled = false\n");
    let http = free_addr();
    let mut args = strings(&[
        "log-cache",
        "--config",
        config.to_str().expect("utf-8 temp path"),
        "--grpc-addr",
        &grpc.to_string(),
        "--http-addr",
        &http.to_string(),
    ]);
    args.extend(strings(extra));
    Proc::start(name, &args, &[grpc, http]).await
}

/// `logcache.v1.Ingress/Send` of envelopes numbered `first..first + count` (timestamp `base + n`),
/// envelope `n` of source `source_of(n)`, 100 per request.
pub async fn log_cache_send(
    addr: SocketAddr,
    base: i64,
    first: u64,
    count: u64,
    source_of: &(dyn Fn(u64) -> String + Sync),
    payload_len: usize,
) {
    use loggregator_proto::logcache::v1::{ingress_client::IngressClient, SendRequest};
    let payload = Bytes::from(vec![b'x'; payload_len]);
    let mut client = IngressClient::new(channel(addr).await).max_encoding_message_size(16 << 20);
    let mut next = first;
    while next < first + count {
        let end = (next + 100).min(first + count);
        let batch = (next..end).map(|n| envelope(base, n, &source_of(n), &payload)).collect();
        let request = SendRequest { envelopes: Some(EnvelopeBatch { batch }), local_only: false };
        client.send(request).await.expect("log-cache accepts the envelopes");
        next = end;
    }
}

/// `logcache.v1.Egress/Read` of `source_id` from the beginning of time: up to `limit` envelopes'
/// sequence numbers (timestamp − `base`), oldest first, or the error.
pub async fn log_cache_read(
    addr: SocketAddr,
    source_id: &str,
    base: i64,
    limit: i64,
) -> Result<Vec<u64>, loggregator_proto::tonic::Status> {
    log_cache_read_on(channel(addr).await, source_id, base, 0, limit).await
}

/// [`log_cache_read`] on a channel of the caller's, from `start_time` (ns) on.
pub async fn log_cache_read_on(
    channel: Channel,
    source_id: &str,
    base: i64,
    start_time: i64,
    limit: i64,
) -> Result<Vec<u64>, loggregator_proto::tonic::Status> {
    use loggregator_proto::logcache::v1::{egress_client::EgressClient, ReadRequest};
    let mut client = EgressClient::new(channel).max_decoding_message_size(64 << 20);
    let request = ReadRequest { source_id: source_id.to_string(), start_time, limit, ..Default::default() };
    let response = client.read(request).await?.into_inner();
    let batch = response.envelopes.unwrap_or_default().batch;
    Ok(batch.iter().map(|e| (e.timestamp - base) as u64).collect())
}
