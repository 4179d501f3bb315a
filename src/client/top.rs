//! `loggregator top`: the noisy-neighbour view (loggregator-release #319). A firehose subscription
//! to the RLP counts every source's envelopes and bytes per second, and the components' `/metrics`
//! give each hop's throughput and drops; the table refreshes every `--interval`.

use std::collections::HashMap;
use std::io::{IsTerminal as _, Write as _};
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use loggregator_proto::scan::BatchScanner;
use plumbing::promtext::Sample;
use plumbing::subscriber::{firehose, Subscription};
use tokio_util::sync::CancellationToken;

use super::format::table;
use super::grpc::{connect, GrpcTlsArgs};
use super::http::{Http, HttpArgs};

/// Sources tracked at most; past it the quietest are forgotten at each refresh, so a firehose of
/// many short-lived sources stays bounded.
const MAX_SOURCES: usize = 100_000;
/// The largest batch accepted from the RLP.
const MAX_MESSAGE: usize = 16 * 1024 * 1024;

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator top                          refresh every 2 s until Ctrl-C
  loggregator top -n 10 --count 1          one table of the 10 noisiest sources and exit
  loggregator top --metrics http://doppler-0:14824/metrics --metrics http://doppler-1:14824/metrics")]
pub struct TopArgs {
    /// Rows of sources to show.
    #[arg(short = 'n', long, default_value = "20")]
    pub rows: usize,
    /// Seconds between refreshes.
    #[arg(long, default_value = "2")]
    pub interval: f64,
    /// Exit after this many refreshes (default: run until Ctrl-C).
    #[arg(long)]
    pub count: Option<u64>,
    /// The reverse log proxy's gRPC egress (firehose).
    #[arg(long, env = "LOGGREGATOR_RLP", default_value = "127.0.0.1:8090")]
    pub rlp: String,
    /// A component's Prometheus `/metrics` URL, repeatable (the all-in-one serves all on one).
    #[arg(
        long = "metrics",
        env = "LOGGREGATOR_METRICS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:14824/metrics"
    )]
    pub metrics: Vec<String>,
    #[command(flatten)]
    pub tls: GrpcTlsArgs,
    #[command(flatten)]
    pub http: HttpArgs,
}

#[derive(Default, Clone, Copy)]
struct Count {
    envelopes: u64,
    bytes: u64,
}

/// (component, series) → value.
type Hops = HashMap<(String, String), f64>;

/// Per-hop totals from one scrape: (component, series) → value, for `ingress`, `egress` and
/// `dropped` (by direction and reason).
fn hop_totals(samples: &[Sample]) -> Hops {
    let mut totals = HashMap::new();
    for sample in samples {
        if !matches!(sample.name.as_str(), "ingress" | "egress" | "dropped") {
            continue;
        }
        let component = sample.label("component").unwrap_or("-").to_string();
        let mut series = sample.name.clone();
        for key in ["direction", "reason"] {
            if let Some(v) = sample.label(key) {
                series.push_str(&format!(" {key}={v}"));
            }
        }
        *totals.entry((component, series)).or_insert(0.0) += sample.value;
    }
    totals
}

pub async fn run(args: TopArgs) -> anyhow::Result<()> {
    if !(args.interval.is_finite() && args.interval >= 0.1) {
        bail!("--interval must be at least 0.1 seconds");
    }
    let interval = Duration::from_secs_f64(args.interval);
    let http = Http::new(&args.http)?;
    // Connect once up front so an unreachable RLP is the command's error, not a silent retry.
    let channel = connect("the reverse log proxy", &args.rlp, &args.tls, "reverselogproxy").await?;
    // A shard of its own: `top` sees every envelope instead of sharing them with another reader.
    let shard_id = format!("loggregator-top-{:016x}", fastrand::u64(..));
    let mut subscription = Subscription::new(args.rlp.clone(), channel, firehose(shard_id), MAX_MESSAGE);
    subscription
        .open()
        .await
        .map_err(|s| anyhow::anyhow!("the reverse log proxy at {} refused the firehose: {}", args.rlp, s.message()))?;

    let token = CancellationToken::new();
    let counts = std::sync::Arc::new(counts::Counts::default());
    let reader = {
        let counts = counts.clone();
        let token = token.clone();
        tokio::spawn(async move {
            while let Some(batch) = subscription.next(&token).await {
                counts.add(BatchScanner::new(batch).flatten());
            }
        })
    };

    let terminal = std::io::stdout().is_terminal();
    let mut previous_hops: Option<(Instant, Hops)> = None;
    let mut refreshes = 0u64;
    let mut last = Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let now = Instant::now();
        let elapsed = now.duration_since(last).as_secs_f64().max(1e-3);
        last = now;
        let mut sources = counts.take();
        sources.sort_by(|a, b| b.1.envelopes.cmp(&a.1.envelopes).then_with(|| a.0.cmp(&b.0)));

        let mut hops = HashMap::new();
        let mut scrape_errors = Vec::new();
        for url in &args.metrics {
            match http.get_text("metrics", url).await {
                Ok(text) => match plumbing::promtext::parse(&text) {
                    Ok(samples) => {
                        for (k, v) in hop_totals(&samples) {
                            *hops.entry(k).or_insert(0.0) += v;
                        }
                    }
                    Err(e) => scrape_errors.push(format!("{url}: not a Prometheus exposition: {e}")),
                },
                Err(e) => scrape_errors.push(format!("{e:#}")),
            }
        }

        let mut out = String::new();
        if terminal {
            out.push_str("\x1b[H\x1b[2J");
        }
        let total: u64 = sources.iter().map(|(_, c)| c.envelopes).sum();
        out.push_str(&format!(
            "loggregator top: {} sources, {:.0} envelopes/s on the firehose ({})\n\n",
            sources.len(),
            total as f64 / elapsed,
            args.rlp
        ));
        let mut rows = vec![["Source", "Envelopes/s", "Bytes/s", "Share"].map(String::from).to_vec()];
        for (source, c) in sources.iter().take(args.rows) {
            rows.push(vec![
                source.clone(),
                format!("{:.1}", c.envelopes as f64 / elapsed),
                format!("{:.0}", c.bytes as f64 / elapsed),
                format!("{:.1}%", if total == 0 { 0.0 } else { 100.0 * c.envelopes as f64 / total as f64 }),
            ]);
        }
        out.push_str(&table(&rows));
        out.push('\n');
        let mut hop_rows = vec![["Component", "Series", "Total", "Per second"].map(String::from).to_vec()];
        let mut keys: Vec<_> = hops.keys().cloned().collect();
        keys.sort();
        for key in keys {
            let value = hops[&key];
            let rate = previous_hops.as_ref().and_then(|(at, prev)| {
                let before = prev.get(&key)?;
                Some((value - before).max(0.0) / now.duration_since(*at).as_secs_f64().max(1e-3))
            });
            hop_rows.push(vec![
                key.0.clone(),
                key.1.clone(),
                format!("{value:.0}"),
                rate.map_or_else(|| "-".to_string(), |r| format!("{r:.1}")),
            ]);
        }
        out.push_str(&table(&hop_rows));
        for e in &scrape_errors {
            out.push_str(&format!("! {e}\n"));
        }
        if !terminal {
            out.push('\n');
        }
        previous_hops = Some((now, hops));
        let mut stdout = std::io::stdout().lock();
        if stdout.write_all(out.as_bytes()).and_then(|()| stdout.flush()).is_err() {
            break;
        }
        refreshes += 1;
        if args.count.is_some_and(|n| refreshes >= n) {
            break;
        }
    }
    token.cancel();
    let _ = reader.await;
    Ok(())
}

/// The counts the reader adds and the printer takes, behind one mutex held only to count a batch
/// or to swap the map out.
mod counts {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use loggregator_proto::scan::RawEnvelope;

    use super::{Count, MAX_SOURCES};

    #[derive(Default)]
    pub struct Counts(Mutex<HashMap<String, Count>>);

    impl Counts {
        /// Counts a batch's envelopes under one lock, allocating only for a source not seen before.
        pub fn add(&self, envelopes: impl Iterator<Item = RawEnvelope>) {
            let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
            for envelope in envelopes {
                let bytes = envelope.bytes.len() as u64;
                let source = envelope.source_id();
                if let Some(entry) = map.get_mut(source) {
                    entry.envelopes += 1;
                    entry.bytes += bytes;
                } else if map.len() < MAX_SOURCES {
                    map.insert(source.to_string(), Count { envelopes: 1, bytes });
                }
            }
        }

        pub fn take(&self) -> Vec<(String, Count)> {
            std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner())).into_iter().collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_totals_sum_each_component_and_series() {
        let text = "# TYPE ingress counter\n\
            ingress{component=\"doppler\"} 120\n\
            dropped{component=\"agent\",direction=\"egress\"} 3\n\
            dropped{component=\"agent\",direction=\"ingress\"} 1 1700000000000\n\
            dropped{component=\"agent\",direction=\"ingress\",listener=\"x\"} 2\n\
            up 1\n";
        let hops = hop_totals(&plumbing::promtext::parse(text).unwrap());
        assert_eq!(hops[&("doppler".to_string(), "ingress".to_string())], 120.0);
        assert_eq!(hops[&("agent".to_string(), "dropped direction=egress".to_string())], 3.0);
        assert_eq!(hops[&("agent".to_string(), "dropped direction=ingress".to_string())], 3.0);
        assert!(!hops.keys().any(|(_, s)| s == "up"));
    }
}
