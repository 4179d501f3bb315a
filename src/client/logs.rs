//! `loggregator logs SOURCE [--recent]`: `cf logs` without a Cloud Foundry around it.
//!
//! `--recent` prints the last 1000 logs from log-cache, oldest first, as `cf logs --recent` does.
//! Without it the command opens the live stream (RLP gateway SSE) *first*, then prints the recent
//! logs, then the live ones. The cf CLI instead polls log-cache and loses lines at high rates and at
//! the walk's edge; here nothing the pipeline delivered is lost at the seam:
//! - every envelope passes one de-duplicating [`Merger`], keyed by [`envelope_key`], so a line that
//!   is both in log-cache and on the stream prints once;
//! - a few seconds after the stream (re)connects, log-cache is read again from the last recent
//!   envelope on ([`SEAM_CATCH_UP`]), which fills what the stream could not yet see while its
//!   subscription reached every Doppler, and what arrived during a reconnection;
//! - live lines wait [`LogsArgs::reorder_window`] (300 ms) and leave in timestamp order.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashSet, VecDeque};
use std::io::{IsTerminal as _, Write as _};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use loggregator_proto::v2;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::format::cf_log_lines;
use super::http::{Http, HttpArgs};
use super::logcache::{envelope_key, EnvelopeType, LogCache, ReadQuery, Walk};
use super::now_nanos;
use super::sse;

/// How long after the stream (re)connects log-cache is read again for the seam: log-cache has
/// ingested what the pipeline carried by then (its nozzle is one hop from the Doppler).
pub const SEAM_CATCH_UP: Duration = Duration::from_secs(3);
/// Keys remembered for de-duplication: long enough to cover a catch-up read after the seam.
const REMEMBER_FOR: Duration = Duration::from_secs(120);
/// Most keys remembered; past it the oldest are forgotten first.
const MAX_REMEMBERED: usize = 500_000;
/// Most envelopes held for reordering; past it the oldest timestamp leaves at once.
const MAX_PENDING: usize = 100_000;
/// Pages (of 1000) one catch-up reads at most.
const MAX_CATCH_UP_PAGES: usize = 200;
/// Envelopes of the live stream queued between the reader and the printer.
const LIVE_QUEUE: usize = 64;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator logs my-app --recent        the last 1000 lines from log-cache
  loggregator logs my-app                 the recent lines, then live ones until Ctrl-C
  LOGGREGATOR_TOKEN=\"$(cf oauth-token)\" loggregator logs my-app --log-cache https://log-cache.sys.example.com --gateway https://log-stream.sys.example.com")]
pub struct LogsArgs {
    /// Source id (an app GUID in Cloud Foundry).
    pub source: String,
    /// Print the recent logs and exit.
    #[arg(long)]
    pub recent: bool,
    /// How long live lines wait to be put in timestamp order, in milliseconds.
    #[arg(long, default_value = "300", value_name = "MS")]
    pub reorder_window: u64,
    /// log-cache's HTTP API.
    #[arg(long, env = "LOG_CACHE_ADDR", default_value = "http://127.0.0.1:8083")]
    pub log_cache: String,
    /// The RLP gateway (SSE `/v2/read`).
    #[arg(long, env = "LOGGREGATOR_GATEWAY", default_value = "http://127.0.0.1:8088")]
    pub gateway: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

/// An envelope waiting for its turn, ordered by timestamp, then arrival.
struct Pending {
    timestamp: i64,
    seq: u64,
    due: Instant,
    envelope: v2::Envelope,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        (self.timestamp, self.seq) == (other.timestamp, other.seq)
    }
}
impl Eq for Pending {}
impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pending {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.timestamp, self.seq).cmp(&(other.timestamp, other.seq))
    }
}

/// De-duplicates and reorders envelopes from several origins (see the module docs).
pub struct Merger {
    window: Duration,
    pending: BinaryHeap<Reverse<Pending>>,
    seen: HashSet<u64>,
    seen_order: VecDeque<(Instant, u64)>,
    seq: u64,
}

impl Merger {
    pub fn new(window: Duration) -> Self {
        Self { window, pending: BinaryHeap::new(), seen: HashSet::new(), seen_order: VecDeque::new(), seq: 0 }
    }

    /// Remembers `key`; false if it was already known.
    fn remember(&mut self, key: u64, now: Instant) -> bool {
        while let Some(&(at, old)) = self.seen_order.front() {
            if now.duration_since(at) < REMEMBER_FOR && self.seen_order.len() < MAX_REMEMBERED {
                break;
            }
            self.seen_order.pop_front();
            self.seen.remove(&old);
        }
        if !self.seen.insert(key) {
            return false;
        }
        self.seen_order.push_back((now, key));
        true
    }

    /// Marks an envelope as printed without queueing it (the recent logs).
    pub fn printed(&mut self, envelope: &v2::Envelope, now: Instant) {
        self.remember(envelope_key(envelope), now);
    }

    /// Queues an envelope unless it was seen before; returns whether it was new.
    pub fn offer(&mut self, envelope: v2::Envelope, now: Instant) -> bool {
        if !self.remember(envelope_key(&envelope), now) {
            return false;
        }
        self.seq += 1;
        self.pending.push(Reverse(Pending {
            timestamp: envelope.timestamp,
            seq: self.seq,
            due: now + self.window,
            envelope,
        }));
        true
    }

    /// The envelopes whose turn has come, in timestamp order: the oldest leaves once it has waited
    /// the window (or the queue is over its bound), and everything older than it with it.
    pub fn due(&mut self, now: Instant) -> Vec<v2::Envelope> {
        let mut out = Vec::new();
        while let Some(Reverse(top)) = self.pending.peek() {
            if top.due > now && self.pending.len() <= MAX_PENDING {
                break;
            }
            let Some(Reverse(top)) = self.pending.pop() else { break };
            out.push(top.envelope);
        }
        out
    }

    /// Everything still queued, in order (at exit).
    pub fn drain(&mut self) -> Vec<v2::Envelope> {
        std::iter::from_fn(|| self.pending.pop().map(|Reverse(p)| p.envelope)).collect()
    }

    /// When the next envelope is due, if any.
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.iter().map(|Reverse(p)| p.due).min()
    }
}

/// What the live stream's reader tells the printer.
enum Live {
    Connected,
    Envelopes(Vec<v2::Envelope>),
    Lost(String),
}

/// Prints the `cf logs` lines of `envelopes`; `Err` when stdout is gone (a closed pipe ends the
/// command quietly).
fn print(envelopes: &[v2::Envelope], colour: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for env in envelopes {
        for line in cf_log_lines(env, &chrono::Local, colour) {
            writeln!(out, "{line}")?;
        }
    }
    out.flush()
}

async fn recent(log_cache: &LogCache, source: &str) -> anyhow::Result<Vec<v2::Envelope>> {
    let query = ReadQuery {
        // What the cf CLI sends: the earliest time log-cache accepts, in effect "everything".
        start: Some(-6_795_364_578_871_345_152),
        end: None,
        types: vec![EnvelopeType::Log],
        limit: 1000,
        descending: true,
    };
    let mut envelopes = log_cache.read(source, &query).await?;
    envelopes.reverse();
    Ok(envelopes)
}

pub async fn run(args: LogsArgs) -> anyhow::Result<()> {
    let http = Http::new(&args.http)?;
    let log_cache = LogCache::new(http.clone(), &args.log_cache);
    let colour = std::io::stdout().is_terminal();
    if args.recent {
        let envelopes = recent(&log_cache, &args.source).await?;
        let _ = print(&envelopes, colour);
        return Ok(());
    }

    let url = live_url(&args.gateway, &args.source)?;
    let (tx, mut rx) = mpsc::channel(LIVE_QUEUE);
    // The first connection is made here, so an unreachable gateway or a refused token is the
    // command's error; later failures are reconnected by the reader.
    let first = http.get("the RLP gateway", url.as_str(), None).await?;
    tokio::spawn(read_live(http, url, first, tx));

    let mut merger = Merger::new(Duration::from_millis(args.reorder_window));
    let recent = recent(&log_cache, &args.source).await?;
    let mut catch_up_from = recent.last().map_or_else(|| now_nanos() - 5_000_000_000, |e| e.timestamp);
    let now = Instant::now();
    for env in &recent {
        merger.printed(env, now);
    }
    if print(&recent, colour).is_err() {
        return Ok(());
    }
    let mut catch_up_at = Some(Instant::now() + SEAM_CATCH_UP);
    let mut newest_printed = catch_up_from;

    loop {
        let wake = [merger.next_due(), catch_up_at].into_iter().flatten().min();
        tokio::select! {
            message = rx.recv() => match message {
                Some(Live::Envelopes(envelopes)) => {
                    let now = Instant::now();
                    for env in envelopes {
                        merger.offer(env, now);
                    }
                }
                Some(Live::Connected) => {
                    // Fill what the stream missed while it was away.
                    catch_up_from = catch_up_from.max(newest_printed);
                    catch_up_at = Some(Instant::now() + SEAM_CATCH_UP);
                }
                Some(Live::Lost(why)) => eprintln!("loggregator: the live stream broke ({why}); reconnecting"),
                None => break,
            },
            () = sleep_until(wake) => {}
        }
        if catch_up_at.is_some_and(|at| at <= Instant::now()) {
            catch_up_at = None;
            let mut walk = Walk::new(catch_up_from);
            for _ in 0..MAX_CATCH_UP_PAGES {
                match walk.step(&log_cache, &args.source, &[EnvelopeType::Log], now_nanos()).await {
                    Ok((page, full)) => {
                        let now = Instant::now();
                        for env in page {
                            merger.offer(env, now);
                        }
                        if !full {
                            break;
                        }
                    }
                    Err(e) => {
                        eprintln!("loggregator: reading log-cache to fill the gap failed: {e:#}");
                        break;
                    }
                }
            }
        }
        let due = merger.due(Instant::now());
        if let Some(last) = due.last() {
            newest_printed = newest_printed.max(last.timestamp);
        }
        if print(&due, colour).is_err() {
            return Ok(());
        }
    }
    let _ = print(&merger.drain(), colour);
    Ok(())
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// `/v2/read?source_id=S&log&shard_id=...`: a shard id of its own, so the stream gets every log
/// of the source rather than sharing them with another reader.
fn live_url(gateway: &str, source: &str) -> anyhow::Result<reqwest::Url> {
    let mut url = reqwest::Url::parse(gateway.trim_end_matches('/'))
        .with_context(|| format!("invalid RLP gateway URL `{gateway}`"))?
        .join("/v2/read")
        .with_context(|| format!("invalid RLP gateway URL `{gateway}`"))?;
    url.query_pairs_mut()
        .append_pair("source_id", source)
        .append_key_only("log")
        .append_pair("shard_id", &format!("loggregator-logs-{:016x}", fastrand::u64(..)));
    Ok(url)
}

/// Reads the live stream, reconnecting (0.5 s doubling to 5 s) when it breaks or the gateway
/// closes it at its stream timeout. Ends when the printer is gone.
async fn read_live(http: Http, url: reqwest::Url, first: reqwest::Response, tx: mpsc::Sender<Live>) {
    let mut response = Some(first);
    let mut backoff = Duration::from_millis(500);
    loop {
        let current = match response.take() {
            Some(r) => r,
            None => match http.get("the RLP gateway", url.as_str(), None).await {
                Ok(r) => r,
                Err(e) => {
                    if tx.send(Live::Lost(format!("{e:#}"))).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            },
        };
        if tx.send(Live::Connected).await.is_err() {
            return;
        }
        let mut events = sse::EventStream::new(current, Duration::from_secs(60));
        let broke = loop {
            match events.next().await {
                Ok(None) | Ok(Some(sse::Event::Closing)) => break None,
                Ok(Some(sse::Event::Data(json))) => match loggregator_proto::json::batch_from_json(&json) {
                    Ok(batch) => {
                        backoff = Duration::from_millis(500);
                        // Waiting for room in the bounded queue is back-pressure onto the gateway.
                        if tx.send(Live::Envelopes(batch.batch)).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => eprintln!("loggregator: skipping an undecodable batch from the gateway: {e}"),
                },
                Ok(Some(_)) => {}
                Err(e) => break Some(e),
            }
        };
        if let Some(e) = broke {
            if tx.send(Live::Lost(format!("{e:#}"))).await.is_err() {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loggregator_proto::bytes::Bytes;

    fn log(ts: i64, text: &str) -> v2::Envelope {
        v2::Envelope {
            timestamp: ts,
            source_id: "s".into(),
            message: Some(v2::envelope::Message::Log(v2::Log {
                payload: Bytes::copy_from_slice(text.as_bytes()),
                r#type: 0,
            })),
            ..Default::default()
        }
    }

    fn texts(envs: &[v2::Envelope]) -> Vec<String> {
        envs.iter()
            .map(|e| match &e.message {
                Some(v2::envelope::Message::Log(l)) => String::from_utf8_lossy(&l.payload).into_owned(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn the_merger_drops_what_was_printed_and_orders_within_the_window() {
        let start = Instant::now();
        let window = Duration::from_millis(300);
        let mut m = Merger::new(window);
        m.printed(&log(10, "recent"), start);
        assert!(!m.offer(log(10, "recent"), start), "a recent line on the stream prints once");
        assert!(m.offer(log(30, "c"), start));
        assert!(m.offer(log(20, "b"), start + Duration::from_millis(100)));
        assert!(!m.offer(log(30, "c"), start + Duration::from_millis(150)), "the catch-up read repeats it");
        // "c" is due first, but "b" is older: "c" waits for "b", and both leave in order.
        assert!(m.due(start + Duration::from_millis(300)).is_empty());
        let due = m.due(start + Duration::from_millis(400));
        assert_eq!(texts(&due), ["b", "c"]);
        assert!(m.offer(log(5, "late"), start + Duration::from_millis(400)));
        assert_eq!(m.next_due(), Some(start + Duration::from_millis(700)));
        assert_eq!(texts(&m.drain()), ["late"]);
    }

    #[test]
    fn the_live_url_selects_logs_of_the_source_with_a_shard_of_its_own() {
        let url = live_url("http://127.0.0.1:8088/", "my app").unwrap();
        let query = url.query().unwrap();
        assert!(url
            .as_str()
            .starts_with("http://127.0.0.1:8088/v2/read?source_id=my+app&log&shard_id=loggregator-logs-"));
        assert_ne!(query, live_url("http://127.0.0.1:8088", "my app").unwrap().query().unwrap());
    }
}
