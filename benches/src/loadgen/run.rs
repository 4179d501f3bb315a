//! One measured phase: subscribe, send for the duration, drain, and account for every envelope.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use plumbing::Registry;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::edge::{Edge, EdgeConnection};
use super::logcache::{self, LogCacheClient};
use super::observe::{self, Hop, Snapshot};
use super::pipeline::Targets;
use super::report::{CpuReport, GroupReport, Latency, MemoryReport, PhaseReport, SubscriberReport};
use super::sender::{SendStats, Sender};
use super::settings::{Rate, Settings, SubscriberKind};
use super::subscriber::{firehose, latency_histogram, Connection, SubStats};
use crate::workload::{batch_templates, now_nanos, Shape};

/// Where per-hop counters come from.
#[derive(Clone)]
pub enum MetricSource {
    /// An in-process component's registry.
    Registry { name: String, registry: Registry },
    /// A `/metrics` URL.
    Url(String),
}

impl MetricSource {
    fn name(&self) -> &str {
        match self {
            MetricSource::Registry { name, .. } => name,
            MetricSource::Url(url) => url,
        }
    }

    async fn snapshot(&self) -> anyhow::Result<Snapshot> {
        match self {
            MetricSource::Registry { registry, .. } => observe::snapshot_of(&registry.render()),
            MetricSource::Url(url) => observe::scrape(url).await,
        }
    }
}

/// CPU is accounted per thread name for in-process components; everything else in this process is
/// the load generator. External components are accounted by pid.
#[derive(Clone)]
pub struct Accounting {
    /// (component name, thread name).
    pub threads: Vec<(String, String)>,
    /// (component name, pid).
    pub pids: Vec<(String, u32)>,
}

struct CpuSnapshot {
    /// (steal, total) ticks of the machine.
    machine: Option<(u64, u64)>,
    process: f64,
    threads: BTreeMap<String, f64>,
    pids: Vec<Option<f64>>,
    /// Run-queue wait (seconds runnable without a CPU) of the same: process, threads, pids.
    wait_process: Option<f64>,
    wait_threads: BTreeMap<String, f64>,
    wait_pids: Vec<Option<f64>>,
}

impl CpuSnapshot {
    fn take(accounting: &Accounting) -> Self {
        Self {
            machine: observe::machine_ticks(),
            process: observe::process_cpu_seconds("self").unwrap_or(0.0),
            threads: observe::thread_cpu_seconds(),
            pids: accounting.pids.iter().map(|(_, pid)| observe::process_cpu_seconds(&pid.to_string())).collect(),
            wait_process: observe::process_wait_seconds("self"),
            wait_threads: observe::thread_wait_seconds(),
            wait_pids: accounting.pids.iter().map(|(_, pid)| observe::process_wait_seconds(&pid.to_string())).collect(),
        }
    }
}

pub struct Phase<'a> {
    pub name: &'a str,
    pub target: String,
    pub settings: &'a Settings,
    pub targets: Targets,
    pub metrics: Vec<MetricSource>,
    pub accounting: Accounting,
    /// Whether the load generator shares its process with the components (spawn mode).
    pub in_process: bool,
    /// Source ids of this run start with it; subscribers count other envelopes as foreign.
    pub source_prefix: String,
}

/// A source-id prefix unique to this run (`loadgen-<hex>-`), so a shared deployment's other traffic
/// is not mistaken for ours.
///
/// An app stream (`/apps/{guid}/stream`) takes only a GUID, so with `ws-app` the prefix is the
/// first 35 characters of one (`xxxxxxxx-0000-4000-8000-00000000000`) and the run's only source
/// id, the prefix and `0`, is a GUID.
pub fn run_prefix(settings: &Settings) -> String {
    match settings.subscriber_kind {
        SubscriberKind::WsApp => format!("{:08x}-0000-4000-8000-00000000000", fastrand::u32(..)),
        _ => format!("loadgen-{:08x}-", fastrand::u32(..)),
    }
}

struct Subscriptions {
    stats: Vec<Arc<SubStats>>,
    tasks: Vec<(usize, tokio::task::JoinHandle<Histogram<u64>>)>,
    stop: CancellationToken,
}

impl Phase<'_> {
    async fn subscribe(&self) -> anyhow::Result<Subscriptions> {
        let stop = CancellationToken::new();
        let mut stats = Vec::new();
        let mut tasks = Vec::new();
        let mut readies = Vec::new();
        let subscribers = if self.targets.egress.is_empty() { 0 } else { self.settings.subscribers };
        for id in 0..subscribers {
            let sub_stats = Arc::new(SubStats::default());
            for addr in &self.targets.egress {
                let (tx, rx) = oneshot::channel();
                let task = match self.edge(id) {
                    None => {
                        let connection = Connection {
                            subscriber: id,
                            addr: addr.clone(),
                            tls: self.targets.egress_tls.clone(),
                            request: firehose(self.settings.shard_id(id)),
                            source_prefix: self.source_prefix.clone(),
                            stats: Arc::clone(&sub_stats),
                            stop: stop.clone(),
                        };
                        tokio::spawn(connection.run(tx))
                    }
                    Some(edge) => {
                        let connection = EdgeConnection {
                            subscriber: id,
                            addr: addr.clone(),
                            edge,
                            source_prefix: self.source_prefix.clone(),
                            stats: Arc::clone(&sub_stats),
                            stop: stop.clone(),
                        };
                        tokio::spawn(connection.run(tx))
                    }
                };
                tasks.push((id, task));
                readies.push(rx);
            }
            stats.push(sub_stats);
        }
        for ready in readies {
            match tokio::time::timeout(Duration::from_secs(10), ready).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(message))) => {
                    stop.cancel();
                    bail!("cannot subscribe: {message}");
                }
                _ => {
                    stop.cancel();
                    bail!("a subscriber did not connect within 10 s");
                }
            }
        }
        // The server registers the subscription before answering; a short pause covers proxies.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Subscriptions { stats, tasks, stop })
    }

    /// The HTTP edge endpoint subscriber `id` reads; `None` for a gRPC subscriber. A firehose
    /// subscription id is the shard id (connections sharing one split the stream), or one of its
    /// own; an app stream's GUID is the run's only source id.
    fn edge(&self, id: usize) -> Option<Edge> {
        let shard_id = self.settings.shard_id(id);
        match self.settings.subscriber_kind {
            SubscriberKind::Grpc => None,
            SubscriberKind::Sse => Some(Edge::Sse { shard_id }),
            SubscriberKind::WsFirehose => Some(Edge::Firehose {
                subscription_id: if shard_id.is_empty() { format!("{}sub-{id}", self.source_prefix) } else { shard_id },
            }),
            SubscriberKind::WsApp => Some(Edge::App { guid: format!("{}0", self.source_prefix) }),
        }
    }

    pub async fn run(self) -> anyhow::Result<PhaseReport> {
        let s = self.settings;
        let shape = Shape { payload_bytes: s.payload_bytes, tags: s.tags };
        let template_count = s.source_ids.div_ceil(s.batch_size).clamp(1, 64);
        let templates =
            Arc::new(batch_templates(&self.source_prefix, template_count, s.batch_size, s.source_ids, &s.mix, &shape));

        let mut before = Vec::new();
        for source in &self.metrics {
            before.push(source.snapshot().await.ok());
        }
        let log_cache = self.targets.log_cache_url.as_deref().map(LogCacheClient::new).transpose()?;
        if let Some(client) = &log_cache {
            // Reachable before the run, and nothing of this run's (fresh) source ids stored yet.
            client.stored(&self.source_prefix).await.context("log-cache before the run")?;
        }
        // Read-back starts a second before the first timestamp.
        let since = now_nanos() - 1_000_000_000;
        let subs = self.subscribe().await?;
        observe::reset_peak_rss();
        let cpu_before = CpuSnapshot::take(&self.accounting);

        let stats = Arc::new(SendStats::default());
        let start = Instant::now();
        let deadline = start + Duration::from_secs_f64(s.duration_s);
        let per_sender = match s.rate {
            Rate::Max => None,
            Rate::Fixed(rate) => Some(rate / s.senders as f64),
        };
        let senders: Vec<_> = (0..s.senders)
            .map(|index| {
                let sender = Sender {
                    index,
                    addr: self.targets.ingress[index % self.targets.ingress.len()].clone(),
                    tls: self.targets.ingress_tls.clone(),
                    templates: Arc::clone(&templates),
                    rate: per_sender,
                    deadline,
                    stats: Arc::clone(&stats),
                };
                tokio::spawn(sender.run())
            })
            .collect();

        let received = |subs: &Subscriptions, sink: &Option<Arc<AtomicU64>>| -> u64 {
            sink.as_ref().map(|r| r.load(Ordering::Relaxed)).unwrap_or(0)
                + subs.stats.iter().map(|st| st.received.load(Ordering::Relaxed)).sum::<u64>()
        };
        let copies = self.copies().max(1) as u64;
        let progress = {
            let stats = Arc::clone(&stats);
            let sub_stats = subs.stats.clone();
            let sink = self.targets.sink_received.clone();
            let name = self.name.to_string();
            let log_cache = log_cache.clone();
            let prefix = self.source_prefix.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval_at(start + Duration::from_secs(1), Duration::from_secs(1));
                let (mut last_sent, mut last_received, mut stored) = (0u64, 0u64, 0u64);
                loop {
                    tick.tick().await;
                    let sent = stats.sent.load(Ordering::Relaxed);
                    if let Some(client) = &log_cache {
                        stored = client.stored(&prefix).await.unwrap_or(stored);
                    }
                    let received = sink.as_ref().map(|r| r.load(Ordering::Relaxed)).unwrap_or(0)
                        + sub_stats.iter().map(|st| st.received.load(Ordering::Relaxed)).sum::<u64>()
                        + stored;
                    let worst = sub_stats.iter().map(|st| st.worst_us.swap(0, Ordering::Relaxed)).max().unwrap_or(0);
                    let worst = if worst > 0 {
                        format!("  worst latency {:.1} ms", worst as f64 / 1000.0)
                    } else {
                        String::new()
                    };
                    eprintln!(
                        "[{name} {:>5.1}s] sent {sent:>11} ({:>8}/s)  received {received:>11} ({:>8}/s per copy)  errors {}{worst}",
                        start.elapsed().as_secs_f64(),
                        sent - last_sent,
                        (received - last_received) / copies,
                        stats.errors.load(Ordering::Relaxed),
                    );
                    (last_sent, last_received) = (sent, received);
                }
            })
        };
        for sender in senders {
            let _ = sender.await;
        }
        let send_elapsed = start.elapsed().as_secs_f64();

        // Drain: until every copy is complete, or nothing has arrived for a second, or the drain time.
        // A log-cache is polled (`/api/v1/meta`) every 200 ms; subscribers are counters.
        let sent = stats.sent.load(Ordering::Relaxed);
        let drain_until = Instant::now() + Duration::from_secs_f64(s.drain_s);
        let mut stored: Option<u64> = None;
        let mut log_cache_error = None;
        let (mut last, mut last_change) = (received(&subs, &self.targets.sink_received), Instant::now());
        while Instant::now() < drain_until {
            if let Some(client) = &log_cache {
                match client.stored(&self.source_prefix).await {
                    Ok(n) => stored = Some(n),
                    Err(e) => log_cache_error = Some(format!("log-cache: {e:#}")),
                }
            }
            let now_received = received(&subs, &self.targets.sink_received) + stored.unwrap_or(0);
            if now_received >= sent * copies {
                break;
            }
            if now_received != last {
                (last, last_change) = (now_received, Instant::now());
            } else if last_change.elapsed() > Duration::from_secs(1) {
                break;
            }
            let pause = if log_cache.is_some() { 200 } else { 20 };
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        if let Some(client) = &log_cache {
            match client.stored(&self.source_prefix).await {
                Ok(n) => (stored, log_cache_error) = (Some(n), None),
                Err(e) => log_cache_error = Some(format!("log-cache: {e:#}")),
            }
        }
        progress.abort();
        let cpu_after = CpuSnapshot::take(&self.accounting);
        subs.stop.cancel();
        let mut histograms: BTreeMap<usize, Histogram<u64>> = BTreeMap::new();
        for (id, task) in subs.tasks {
            let h = task.await.unwrap_or_else(|_| latency_histogram());
            histograms.entry(id).or_insert_with(latency_histogram).add(&h).ok();
        }

        let mut hops: Vec<Hop> = Vec::new();
        let mut notes = Vec::new();
        for (source, before) in self.metrics.iter().zip(before) {
            match (before, source.snapshot().await) {
                (Some(before), Ok(after)) => {
                    let mut found = observe::hops(source.name(), &before, &after);
                    for hop in &mut found {
                        hop.source = source.name().to_string();
                    }
                    hops.extend(found);
                }
                (_, Err(error)) => notes.push(format!("metrics {}: {error:#}", source.name())),
                (None, Ok(_)) => notes.push(format!("metrics {}: unreadable before the run", source.name())),
            }
        }

        notes.extend(log_cache_error);
        if log_cache.is_some() {
            notes.push(
                "log-cache hop: delivered = envelopes of this run stored (count + expired in /api/v1/meta); \
                 no latency for this hop (log-cache has no streaming egress)"
                    .into(),
            );
        }
        let sink_received = self.targets.sink_received.as_ref().map(|r| r.load(Ordering::Relaxed));
        let mut report = self.build_report(ReportInputs {
            sent,
            send_elapsed,
            stats: &stats,
            sub_stats: &subs.stats,
            histograms,
            sink_received,
            hops,
            cpu_before,
            cpu_after,
            notes,
            log_cache_stored: if log_cache.is_some() { Some(stored.unwrap_or(0)) } else { None },
        });

        if let Some(client) = &log_cache {
            if s.read_back {
                eprintln!("loadgen: reading back {} source ids from {}", s.source_ids, client.base());
                report.read_back = Some(
                    logcache::read_back(
                        client,
                        &self.source_prefix,
                        s.source_ids,
                        since,
                        sent,
                        4,
                        Duration::from_secs(120),
                    )
                    .await,
                );
            }
            if s.readers > 0 {
                let source_id = format!("{}0", self.source_prefix);
                eprintln!(
                    "loadgen: HTTP reads of {source_id} (limit {}) with {} readers for {} s",
                    s.read_limit, s.readers, s.read_duration_s
                );
                let cpu_before = CpuSnapshot::take(&self.accounting);
                let result = logcache::read_throughput(
                    client,
                    &source_id,
                    s.readers,
                    s.read_limit,
                    Duration::from_secs_f64(s.read_duration_s),
                )
                .await;
                let cpu_after = CpuSnapshot::take(&self.accounting);
                match result {
                    Ok(mut reads) => {
                        let thousands = (reads.reads as f64 / 1000.0).max(1e-12);
                        let mut components = 0.0;
                        for (name, thread) in &self.accounting.threads {
                            let t = cpu_after.threads.get(thread).copied().unwrap_or(0.0)
                                - cpu_before.threads.get(thread).copied().unwrap_or(0.0);
                            components += t;
                            reads.cpu.push((name.clone(), t, t / thousands));
                        }
                        let loadgen = cpu_after.process - cpu_before.process - components;
                        reads.cpu.push(("loadgen".into(), loadgen, loadgen / thousands));
                        for (i, (name, _)) in self.accounting.pids.iter().enumerate() {
                            if let (Some(Some(b)), Some(Some(a))) = (cpu_before.pids.get(i), cpu_after.pids.get(i)) {
                                reads.cpu.push((name.clone(), a - b, (a - b) / thousands));
                            }
                        }
                        report.http_reads = Some(reads);
                    }
                    Err(error) => report.notes.push(format!("HTTP read throughput: {error:#}")),
                }
            }
        }
        Ok(report)
    }

    /// How many full copies of the stream the subscribers should receive in total.
    fn copies(&self) -> usize {
        if self.targets.sink_received.is_some() {
            return 1;
        }
        let log_cache = usize::from(self.targets.log_cache_url.is_some());
        if self.targets.egress.is_empty() {
            return log_cache;
        }
        self.groups().len() + log_cache
    }

    /// Subscriber ids by group (shard id, or the subscriber itself when it has none).
    fn groups(&self) -> BTreeMap<String, Vec<usize>> {
        let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for id in 0..self.settings.subscribers {
            let shard = self.settings.shard_id(id);
            let key = if shard.is_empty() { format!("subscriber-{id}") } else { shard };
            groups.entry(key).or_default().push(id);
        }
        groups
    }

    fn build_report(&self, r: ReportInputs<'_>) -> PhaseReport {
        let s = self.settings;
        let duration = r.send_elapsed.max(1e-9);
        let mut merged = latency_histogram();
        let subscribers: Vec<SubscriberReport> = r
            .sub_stats
            .iter()
            .enumerate()
            .map(|(id, st)| {
                let h = r.histograms.get(&id).cloned().unwrap_or_else(latency_histogram);
                merged.add(&h).ok();
                let received = st.received.load(Ordering::Relaxed);
                SubscriberReport {
                    id,
                    shard_id: s.shard_id(id),
                    received,
                    per_second: received as f64 / duration,
                    batch_size: received as f64 / st.batches.load(Ordering::Relaxed).max(1) as f64,
                    latency: Latency::of(&h),
                    errors: st.errors.get(),
                    malformed: st.malformed.load(Ordering::Relaxed),
                    foreign: st.foreign.load(Ordering::Relaxed),
                }
            })
            .collect();
        let group_report = |group: String, members: usize, received: u64| {
            let lost = r.sent as i64 - received as i64;
            let loss_pct = if r.sent == 0 { 0.0 } else { lost as f64 * 100.0 / r.sent as f64 };
            GroupReport { group, subscribers: members, expected: r.sent, received, lost, loss_pct }
        };
        let mut groups: Vec<GroupReport> = match r.sink_received {
            Some(received) => vec![group_report("null-sink".into(), 1, received)],
            None if subscribers.is_empty() => Vec::new(),
            None => self
                .groups()
                .into_iter()
                .map(|(group, ids)| {
                    let received = ids.iter().map(|&i| subscribers[i].received).sum();
                    group_report(group, ids.len(), received)
                })
                .collect(),
        };
        if let Some(stored) = r.log_cache_stored {
            groups.push(group_report("log-cache".into(), 0, stored));
        }
        let loss_pct = groups.iter().map(|g| g.loss_pct).fold(0.0, f64::max);
        let delivered = if groups.is_empty() {
            0.0
        } else {
            groups.iter().map(|g| g.received as f64).sum::<f64>() / groups.len() as f64
        };
        let dropped: u64 = r.hops.iter().map(|h| h.dropped_ingress + h.dropped_egress + h.dropped_other).sum();
        let lossless = !groups.is_empty()
            && groups.iter().all(|g| g.lost <= 0)
            && dropped == 0
            && r.stats.uncertain.load(Ordering::Relaxed) == 0;

        let millions = (r.sent as f64 / 1e6).max(1e-12);
        let (before, after) = (&r.cpu_before, &r.cpu_after);
        let report = |name: &str, cpu_s: f64, wait_s: Option<f64>| CpuReport {
            name: name.to_string(),
            cpu_s,
            cpu_s_per_million: cpu_s / millions,
            wait_s,
        };
        let mut cpu = Vec::new();
        let (mut components_total, mut components_wait) = (0.0, 0.0);
        let has_wait = !before.wait_threads.is_empty() && !after.wait_threads.is_empty();
        for (name, thread) in &self.accounting.threads {
            let t =
                after.threads.get(thread).copied().unwrap_or(0.0) - before.threads.get(thread).copied().unwrap_or(0.0);
            let w = after.wait_threads.get(thread).copied().unwrap_or(0.0)
                - before.wait_threads.get(thread).copied().unwrap_or(0.0);
            components_total += t;
            components_wait += w;
            cpu.push(report(name, t, has_wait.then_some(w)));
        }
        let loadgen = after.process - before.process - components_total;
        let loadgen_wait = match (before.wait_process, after.wait_process) {
            (Some(b), Some(a)) => Some(a - b - components_wait),
            _ => None,
        };
        cpu.push(report("loadgen", loadgen, loadgen_wait));
        if !self.accounting.threads.is_empty() {
            cpu.push(report("pipeline total", components_total, has_wait.then_some(components_wait)));
        }
        for (i, (name, _)) in self.accounting.pids.iter().enumerate() {
            if let (Some(Some(b)), Some(Some(a))) = (before.pids.get(i), after.pids.get(i)) {
                let wait = match (before.wait_pids.get(i), after.wait_pids.get(i)) {
                    (Some(Some(b)), Some(Some(a))) => Some(a - b),
                    _ => None,
                };
                cpu.push(report(name, a - b, wait));
            }
        }
        let mib = |kib: Option<u64>| kib.unwrap_or(0) as f64 / 1024.0;
        let mut memory = vec![MemoryReport {
            name: if self.in_process { "loadgen + pipeline (one process)".into() } else { "loadgen".into() },
            peak_rss_mib: mib(observe::status_kib("self", "VmHWM")),
            rss_mib: mib(observe::status_kib("self", "VmRSS")),
        }];
        for (name, pid) in &self.accounting.pids {
            let pid = pid.to_string();
            memory.push(MemoryReport {
                name: name.clone(),
                peak_rss_mib: mib(observe::status_kib(&pid, "VmHWM")),
                rss_mib: mib(observe::status_kib(&pid, "VmRSS")),
            });
        }
        PhaseReport {
            phase: self.name.to_string(),
            target: self.target.clone(),
            duration_s: r.send_elapsed,
            offered_per_second: match s.rate {
                Rate::Max => None,
                Rate::Fixed(rate) => Some(rate),
            },
            sent: r.sent,
            sent_per_second: r.sent as f64 / duration,
            uncertain: r.stats.uncertain.load(Ordering::Relaxed),
            send_errors: r.stats.errors.load(Ordering::Relaxed),
            behind_schedule: r.stats.behind.load(Ordering::Relaxed),
            delivered_per_second: delivered / duration,
            loss_pct,
            lossless,
            latency: Latency::of(&merged),
            subscribers,
            groups,
            hops: r.hops,
            cpu,
            steal_pct: observe::steal_pct(r.cpu_before.machine, r.cpu_after.machine),
            memory,
            notes: r.notes,
            read_back: None,
            http_reads: None,
        }
    }
}

struct ReportInputs<'a> {
    sent: u64,
    send_elapsed: f64,
    stats: &'a SendStats,
    sub_stats: &'a [Arc<SubStats>],
    histograms: BTreeMap<usize, Histogram<u64>>,
    sink_received: Option<u64>,
    hops: Vec<Hop>,
    cpu_before: CpuSnapshot,
    cpu_after: CpuSnapshot,
    notes: Vec<String>,
    /// This run's envelopes a log-cache stored, when there is one.
    log_cache_stored: Option<u64>,
}
