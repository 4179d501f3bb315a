//! The report: one section per phase (baseline, pipeline), as a table or as JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use super::logcache::{HttpReadReport, ReadBackReport};
use super::observe::Hop;
use super::settings::Settings;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Latency {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50_ms: ms(h.value_at_quantile(0.50)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct SubscriberReport {
    pub id: usize,
    pub shard_id: String,
    pub received: u64,
    pub per_second: f64,
    /// Mean envelopes per received batch.
    pub batch_size: f64,
    pub latency: Latency,
    pub errors: u64,
    pub malformed: u64,
    /// Envelopes received from other sources (not counted in `received`).
    pub foreign: u64,
}

/// Subscribers that together should receive one copy of everything sent.
#[derive(Clone, Debug, Serialize)]
pub struct GroupReport {
    pub group: String,
    pub subscribers: usize,
    pub expected: u64,
    pub received: u64,
    pub lost: i64,
    pub loss_pct: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct CpuReport {
    pub name: String,
    pub cpu_s: f64,
    /// CPU seconds per million envelopes sent.
    pub cpu_s_per_million: f64,
    /// Seconds its threads were runnable but waited for a CPU (`schedstat`), when the kernel keeps it.
    pub wait_s: Option<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct MemoryReport {
    pub name: String,
    pub peak_rss_mib: f64,
    pub rss_mib: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub target: String,
    pub duration_s: f64,
    pub offered_per_second: Option<f64>,
    pub sent: u64,
    pub sent_per_second: f64,
    /// Envelopes in streams that failed (neither counted as sent nor as lost).
    pub uncertain: u64,
    pub send_errors: u64,
    pub behind_schedule: u64,
    /// Envelopes per second delivered, per copy (mean over groups).
    pub delivered_per_second: f64,
    /// Worst group's loss.
    pub loss_pct: f64,
    pub lossless: bool,
    pub latency: Latency,
    pub subscribers: Vec<SubscriberReport>,
    pub groups: Vec<GroupReport>,
    pub hops: Vec<Hop>,
    pub cpu: Vec<CpuReport>,
    /// Share of the machine's CPU time the hypervisor stole during the phase (`/proc/stat`): on a
    /// shared VM, a run with high steal is slower for reasons outside the pipeline.
    pub steal_pct: Option<f64>,
    pub memory: Vec<MemoryReport>,
    pub notes: Vec<String>,
    /// `--read-back`: what came back from the log-cache over HTTP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_back: Option<ReadBackReport>,
    /// `--readers N`: log-cache HTTP read throughput.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_reads: Option<HttpReadReport>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub memory_mib: u64,
}

impl Machine {
    pub fn probe() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_string())
            })
            .unwrap_or_default();
        let memory_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines().find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib / 1024);
        Self { cpus: std::thread::available_parallelism().map_or(0, |n| n.get()), cpu_model, memory_mib }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub settings: Settings,
    pub machine: Machine,
    pub phases: Vec<PhaseReport>,
    /// Pipeline delivered rate as a fraction of the baseline's (transport-limit) rate.
    pub fraction_of_baseline: Option<f64>,
}

impl Report {
    pub fn new(settings: Settings, phases: Vec<PhaseReport>) -> Self {
        let rate = |name: &str| phases.iter().find(|p| p.phase == name).map(|p| p.delivered_per_second);
        let fraction_of_baseline = match (rate("pipeline"), rate("baseline")) {
            (Some(p), Some(b)) if b > 0.0 => Some(p / b),
            _ => None,
        };
        Self { settings, machine: Machine::probe(), phases, fraction_of_baseline }
    }

    pub fn lossless(&self) -> bool {
        self.phases.iter().filter(|p| p.phase == "pipeline").all(|p| p.lossless)
    }

    pub fn table(&self) -> String {
        let s = &self.settings;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "scenario {}  rate {}  {} s  {} senders × batches of {}  {} source ids  {} B payload  {} tags  mix {}",
            s.scenario.as_deref().unwrap_or("-"),
            s.rate,
            s.duration_s,
            s.senders,
            s.batch_size,
            s.source_ids,
            s.payload_bytes,
            s.tags,
            s.mix
        );
        let _ = writeln!(
            out,
            "machine: {} × {}, {} MiB",
            self.machine.cpus, self.machine.cpu_model, self.machine.memory_mib
        );
        for p in &self.phases {
            let _ = writeln!(out, "\n== {} — {} ==", p.phase, p.target);
            let _ = writeln!(
                out,
                "sent {} ({:.0}/s{}), uncertain {}, send errors {}, behind schedule {}",
                p.sent,
                p.sent_per_second,
                p.offered_per_second.map(|o| format!(" of {o:.0}/s offered")).unwrap_or_default(),
                p.uncertain,
                p.send_errors,
                p.behind_schedule
            );
            let _ = writeln!(
                out,
                "delivered {:.0}/s per copy, worst loss {:.4} %{}",
                p.delivered_per_second,
                p.loss_pct,
                if p.lossless { " (lossless)" } else { "" }
            );
            if p.latency.count > 0 {
                let l = &p.latency;
                let _ = writeln!(
                    out,
                    "latency (all subscribers): p50 {:.3} ms  p99 {:.3} ms  p99.9 {:.3} ms  max {:.3} ms",
                    l.p50_ms, l.p99_ms, l.p999_ms, l.max_ms
                );
            }
            if !p.subscribers.is_empty() {
                let _ = writeln!(
                    out,
                    "{:>4} {:<12} {:>12} {:>10} {:>6} {:>9} {:>9} {:>9} {:>9} {:>6}",
                    "sub", "shard", "received", "per s", "batch", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "errors"
                );
                for sub in &p.subscribers {
                    let l = &sub.latency;
                    let _ = writeln!(
                        out,
                        "{:>4} {:<12} {:>12} {:>10.0} {:>6.1} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>6}",
                        sub.id,
                        if sub.shard_id.is_empty() { "-" } else { &sub.shard_id },
                        sub.received,
                        sub.per_second,
                        sub.batch_size,
                        l.p50_ms,
                        l.p99_ms,
                        l.p999_ms,
                        l.max_ms,
                        sub.errors + sub.malformed
                    );
                }
            }
            let foreign: u64 = p.subscribers.iter().map(|s| s.foreign).sum();
            if foreign > 0 {
                let _ = writeln!(out, "foreign envelopes (other traffic, not counted): {foreign}");
            }
            if p.groups.len() > 1 || p.groups.iter().any(|g| g.subscribers != 1) {
                for g in &p.groups {
                    let _ = writeln!(
                        out,
                        "group {:<14} {} subscribers: expected {} received {} lost {} ({:.4} %)",
                        g.group, g.subscribers, g.expected, g.received, g.lost, g.loss_pct
                    );
                }
            }
            if !p.hops.is_empty() {
                let _ = writeln!(
                    out,
                    "{:<24} {:>12} {:>12} {:>14} {:>14} {:>10}",
                    "hop", "ingress", "egress", "dropped ingr.", "dropped egr.", "other"
                );
                for h in &p.hops {
                    let _ = writeln!(
                        out,
                        "{:<24} {:>12} {:>12} {:>14} {:>14} {:>10}",
                        h.source, h.ingress, h.egress, h.dropped_ingress, h.dropped_egress, h.dropped_other
                    );
                }
            }
            if !p.cpu.is_empty() {
                let cpu: Vec<String> = p
                    .cpu
                    .iter()
                    .map(|c| format!("{} {:.2} s ({:.2} s/M env)", c.name, c.cpu_s, c.cpu_s_per_million))
                    .collect();
                let _ = writeln!(out, "cpu: {}", cpu.join(", "));
                let waits: Vec<String> = p
                    .cpu
                    .iter()
                    .filter_map(|c| {
                        let wait = c.wait_s?;
                        let share =
                            if c.cpu_s > 0.0 { format!(" ({:.2} per CPU s)", wait / c.cpu_s) } else { String::new() };
                        Some(format!("{} {wait:.2} s{share}", c.name))
                    })
                    .collect();
                if !waits.is_empty() {
                    let _ = writeln!(out, "waited runnable for a CPU: {}", waits.join(", "));
                }
            }
            if let Some(steal) = p.steal_pct {
                let _ = writeln!(out, "machine: {steal:.1} % of CPU time stolen by the hypervisor during the run");
            }
            if !p.memory.is_empty() {
                let mem: Vec<String> = p
                    .memory
                    .iter()
                    .map(|m| format!("{} peak {:.1} MiB (now {:.1})", m.name, m.peak_rss_mib, m.rss_mib))
                    .collect();
                let _ = writeln!(out, "memory: {}", mem.join(", "));
            }
            if let Some(r) = &p.read_back {
                let _ = writeln!(
                    out,
                    "read back from {}: {} of {} sent ({} missing, {:.4} %) from {} source ids in {} pages, {:.1} s, {} errors{}",
                    r.url,
                    r.read,
                    r.sent,
                    r.missing,
                    r.missing_pct,
                    r.source_ids,
                    r.pages,
                    r.seconds,
                    r.errors,
                    r.first_error.as_ref().map(|e| format!(" (first: {e})")).unwrap_or_default()
                );
            }
            if let Some(r) = &p.http_reads {
                let l = &r.latency;
                let _ = writeln!(
                    out,
                    "HTTP reads of {} ({} envelopes) at {}: {:.0} reads/s ({} readers × {:.1} s, limit {}, {:.1} envelopes/read, {} errors); \
                     read latency p50 {:.3} ms p99 {:.3} ms max {:.3} ms",
                    r.source_id,
                    r.source_envelopes,
                    r.url,
                    r.reads_per_second,
                    r.readers,
                    r.seconds,
                    r.limit,
                    r.envelopes_per_read,
                    r.errors,
                    l.p50_ms,
                    l.p99_ms,
                    l.max_ms
                );
                if !r.cpu.is_empty() {
                    let cpu: Vec<String> =
                        r.cpu.iter().map(|(n, s, k)| format!("{n} {s:.2} s ({:.0} µs/read)", k * 1000.0)).collect();
                    let _ = writeln!(out, "cpu during reads: {}", cpu.join(", "));
                }
                if let Some(e) = &r.first_error {
                    let _ = writeln!(out, "first read error: {e}");
                }
            }
            for note in &p.notes {
                let _ = writeln!(out, "note: {note}");
            }
        }
        if let Some(f) = self.fraction_of_baseline {
            let _ = writeln!(out, "\npipeline delivered rate = {:.1} % of the null-pipeline baseline", f * 100.0);
        }
        out
    }
}
