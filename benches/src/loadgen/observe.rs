//! What the load generator observes besides its own envelopes: the components' counters (scraped
//! `/metrics`, or the in-process registries) and CPU time and memory from `/proc`.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context};
use plumbing::promtext;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A series: its metric name and its labels, sorted by name (so the same series matches across
/// scrapes whatever order a component writes its labels in).
pub type Series = (String, Vec<(String, String)>);

/// Series → value.
pub type Snapshot = BTreeMap<Series, f64>;

/// Every series of an exposition; a malformed one is an error, not a silently missing counter.
pub fn snapshot_of(text: &str) -> anyhow::Result<Snapshot> {
    let samples = promtext::parse(text).context("malformed /metrics")?;
    Ok(samples
        .into_iter()
        .map(|sample| {
            let mut labels = sample.labels;
            labels.sort();
            ((sample.name, labels), sample.value)
        })
        .collect())
}

/// `GET` a plain-HTTP `/metrics` URL (HTTP/1.0, so the body is not chunked).
pub async fn scrape(url: &str) -> anyhow::Result<Snapshot> {
    let rest = url.strip_prefix("http://").context("only http:// metrics URLs are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/metrics"),
    };
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {authority}\r\nAccept: text/plain\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut body = Vec::new();
        stream.take(64 * 1024 * 1024).read_to_end(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    let response = tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .with_context(|| format!("{url}: timed out"))?
        .with_context(|| format!("{url}: request failed"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").with_context(|| format!("{url}: not an HTTP response"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200") {
        bail!("{url}: {status}");
    }
    snapshot_of(body).with_context(|| url.to_string())
}

/// One component's counters over a phase (differences of the original's counter names).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Hop {
    /// Where the counters came from (component name or URL).
    pub source: String,
    pub component: String,
    pub ingress: u64,
    pub egress: u64,
    pub dropped_ingress: u64,
    pub dropped_egress: u64,
    /// Any other `dropped` series.
    pub dropped_other: u64,
}

fn label<'a>(labels: &'a [(String, String)], key: &str) -> Option<&'a str> {
    labels.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// The per-component counter differences between two snapshots of one source.
pub fn hops(source: &str, before: &Snapshot, after: &Snapshot) -> Vec<Hop> {
    let mut by_component: BTreeMap<String, Hop> = BTreeMap::new();
    for (series, value) in after {
        let (name, labels) = (series.0.as_str(), &series.1[..]);
        if !matches!(name, "ingress" | "egress" | "dropped") {
            continue;
        }
        let delta = (value - before.get(series).copied().unwrap_or(0.0)).max(0.0) as u64;
        let component = label(labels, "component").unwrap_or(source).to_string();
        let hop = by_component.entry(component.clone()).or_insert_with(|| Hop {
            source: source.to_string(),
            component,
            ..Default::default()
        });
        match (name, label(labels, "direction")) {
            ("ingress", _) => hop.ingress += delta,
            ("egress", _) => hop.egress += delta,
            ("dropped", Some("ingress")) => hop.dropped_ingress += delta,
            ("dropped", Some("egress")) => hop.dropped_egress += delta,
            _ => hop.dropped_other += delta,
        }
    }
    by_component.into_values().collect()
}

// === /proc ===

/// Clock ticks per second of `utime`/`stime` (USER_HZ, 100 on every mainstream Linux build).
const TICKS_PER_SECOND: f64 = 100.0;

/// (comm, utime + stime ticks) of a `/proc/.../stat` line.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the comm: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// (steal, total) ticks of the whole machine, from the first line of `/proc/stat`. Steal is time the
/// hypervisor ran something else while a virtual CPU wanted to run: on a shared VM it is what makes
/// the same run slower one minute than the next.
pub fn machine_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_ticks(stat.lines().next()?)
}

fn parse_machine_ticks(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split_whitespace();
    if fields.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal [guest guest_nice, already counted in user]
    let values: Vec<u64> = fields.take(8).map(|f| f.parse().ok()).collect::<Option<_>>()?;
    let steal = *values.get(7)?;
    Some((steal, values.iter().sum()))
}

/// Percentage of the machine's CPU time stolen between two [`machine_ticks`] readings.
pub fn steal_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((s0, t0), (s1, t1)) = (before?, after?);
    let total = t1.checked_sub(t0).filter(|t| *t > 0)?;
    Some(s1.saturating_sub(s0) as f64 * 100.0 / total as f64)
}

/// CPU seconds of a whole process (`self` or a pid).
pub fn process_cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, ticks)| ticks as f64 / TICKS_PER_SECOND)
}

/// CPU seconds of this process's live threads, summed by thread name.
pub fn thread_cpu_seconds() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        if let Some((comm, ticks)) = parse_stat(&stat) {
            *out.entry(comm).or_insert(0.0) += ticks as f64 / TICKS_PER_SECOND;
        }
    }
    out
}

/// Seconds a task spent runnable but waiting for a CPU (`run_delay`, the second field of
/// `/proc/.../schedstat`, in ns). With four busy threads on two cores, a component can lose
/// envelopes while the machine is a third idle: its wake-ups queue behind the others' (BENCHMARKS.md
/// §0, session 6), and this is the figure that shows it.
fn parse_schedstat(schedstat: &str) -> Option<f64> {
    let ns: u64 = schedstat.split_whitespace().nth(1)?.parse().ok()?;
    Some(ns as f64 / 1e9)
}

/// Run-queue wait of this process's live threads, summed by thread name; empty without schedstats.
pub fn thread_wait_seconds() -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for task in tasks.flatten() {
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else { continue };
        let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        if let Some(wait) = parse_schedstat(&schedstat) {
            *out.entry(comm.trim_end().to_string()).or_insert(0.0) += wait;
        }
    }
    out
}

/// Run-queue wait of all live threads of a process (`self` or a pid).
pub fn process_wait_seconds(pid: &str) -> Option<f64> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    let mut total = None;
    for task in tasks.flatten() {
        let Ok(schedstat) = std::fs::read_to_string(task.path().join("schedstat")) else { continue };
        if let Some(wait) = parse_schedstat(&schedstat) {
            *total.get_or_insert(0.0) += wait;
        }
    }
    total
}

/// A `kB` value of `/proc/<pid>/status` (`VmHWM`, `VmRSS`), in KiB.
pub fn status_kib(pid: &str, key: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|line| {
        let rest = line.strip_prefix(key)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// Resets this process's peak RSS (`VmHWM`) so a phase reports its own peak. Best effort.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_are_counter_differences_by_component() {
        let before =
            snapshot_of("ingress{component=\"doppler\"} 10\ndropped{component=\"doppler\",direction=\"egress\"} 1\n")
                .unwrap();
        // Labels in another order and a timestamp after the value are the same series.
        let after = snapshot_of(
            "ingress{component=\"doppler\"} 110 1700000000000\negress{component=\"doppler\"} 90\n\
             dropped{direction=\"egress\",component=\"doppler\"} 6\nsubscriptions{component=\"doppler\"} 1\n",
        )
        .unwrap();
        let hops = hops("doppler-0", &before, &after);
        assert_eq!(hops.len(), 1);
        assert_eq!((hops[0].ingress, hops[0].egress, hops[0].dropped_egress), (100, 90, 5));
        assert_eq!(hops[0].component, "doppler");
    }

    #[test]
    fn steal_is_the_share_of_machine_ticks_between_readings() {
        let before = parse_machine_ticks("cpu  100 0 50 800 10 0 5 35 0 0").expect("parses");
        let after = parse_machine_ticks("cpu  200 0 100 1500 10 0 5 185 7 0").expect("parses");
        assert_eq!(before, (35, 1000));
        // 150 of the 1000 ticks since were stolen; guest time is inside user and not added twice.
        assert_eq!(after, (185, 2000));
        assert_eq!(steal_pct(Some(before), Some(after)), Some(15.0));
        assert_eq!(steal_pct(Some(after), Some(after)), None);
        assert!(parse_machine_ticks("cpu0 1 2 3 4 5 6 7 8").is_none());
        assert!(machine_ticks().is_some_and(|(steal, total)| steal <= total));
    }

    #[test]
    fn run_queue_wait_is_the_second_schedstat_field() {
        assert_eq!(parse_schedstat("123456 2500000000 42\n"), Some(2.5));
        assert_eq!(parse_schedstat("123456"), None);
        assert_eq!(parse_schedstat("1 x 2"), None);
        // This machine's kernel keeps schedstats: the test thread's own name is among the threads.
        let me = std::fs::read_to_string("/proc/thread-self/comm").expect("comm").trim_end().to_string();
        assert!(thread_wait_seconds().contains_key(&me));
        assert!(process_wait_seconds("self").is_some_and(|s| s >= 0.0));
    }

    #[test]
    fn reads_own_cpu_and_memory() {
        assert!(process_cpu_seconds("self").is_some());
        assert!(!thread_cpu_seconds().is_empty());
        assert!(status_kib("self", "VmHWM").is_some_and(|k| k > 0));
        let (comm, _) = parse_stat("123 (a (weird) name) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15").expect("parses");
        assert_eq!(comm, "a (weird) name");
    }
}
