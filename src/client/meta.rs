//! `loggregator meta`: `cf log-meta` — every source log-cache holds, with its count, expired count
//! and the time its envelopes span, and with `--noise` how many envelopes it sent in the last minute.

use std::cmp::Reverse;
use std::time::Duration;

use clap::{Args, ValueEnum};

use super::format::{go_duration_secs, table};
use super::http::{Http, HttpArgs};
use super::logcache::{LogCache, Walk};

/// Pages read per source for `--noise`: past 100,000 envelopes a minute the rate shows as a floor.
const NOISE_PAGES: usize = 100;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum SortBy {
    Source,
    Count,
    Expired,
    CacheDuration,
    Rate,
}

#[derive(Args, Debug)]
#[command(after_help = "Examples:
  loggregator meta
  loggregator meta --noise --sort-by rate      the noisiest sources last minute first")]
pub struct MetaArgs {
    /// Column to sort by (source ascending, the others descending).
    #[arg(long, value_enum, default_value = "source")]
    pub sort_by: SortBy,
    /// Add each source's envelopes of the last minute (`Rate`, per minute).
    #[arg(long)]
    pub noise: bool,
    /// log-cache's HTTP API.
    #[arg(long, env = "LOG_CACHE_ADDR", default_value = "http://127.0.0.1:8083")]
    pub log_cache: String,
    #[command(flatten)]
    pub http: HttpArgs,
}

struct Row {
    source: String,
    count: i64,
    expired: i64,
    duration: i64,
    rate: Option<(usize, bool)>,
}

/// Envelopes of `source` in the last minute, walking forward; `true` when capped.
async fn noise(log_cache: &LogCache, source: &str, now: i64) -> anyhow::Result<(usize, bool)> {
    let mut walk = Walk::new(now - 60_000_000_000);
    let mut count = 0;
    for _ in 0..NOISE_PAGES {
        let (page, full) = walk.step(log_cache, source, &[], now).await?;
        count += page.len();
        if !full {
            return Ok((count, false));
        }
    }
    Ok((count, true))
}

pub async fn run(args: MetaArgs) -> anyhow::Result<()> {
    let log_cache = LogCache::new(Http::new(&args.http)?, &args.log_cache);
    if args.sort_by == SortBy::Rate && !args.noise {
        anyhow::bail!("--sort-by rate needs --noise");
    }
    let meta = log_cache.meta().await?;
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or(Duration::ZERO).as_nanos() as i64;
    let mut rows = Vec::with_capacity(meta.len());
    for (source, info) in meta {
        let rate = if args.noise { Some(noise(&log_cache, &source, now).await?) } else { None };
        // Go's `Sub(...).Truncate(time.Second)`: whole seconds towards zero.
        let duration = info.newest_timestamp.saturating_sub(info.oldest_timestamp) / 1_000_000_000;
        rows.push(Row { source, count: info.count, expired: info.expired, duration, rate });
    }
    match args.sort_by {
        SortBy::Source => rows.sort_by(|a, b| a.source.cmp(&b.source)),
        SortBy::Count => rows.sort_by_key(|r| (Reverse(r.count), r.source.clone())),
        SortBy::Expired => rows.sort_by_key(|r| (Reverse(r.expired), r.source.clone())),
        SortBy::CacheDuration => rows.sort_by_key(|r| (Reverse(r.duration), r.source.clone())),
        SortBy::Rate => rows.sort_by_key(|r| (Reverse(r.rate.map_or(0, |(n, _)| n)), r.source.clone())),
    }
    let mut cells = vec![["Source", "Count", "Expired", "Cache Duration"].map(String::from).to_vec()];
    if args.noise {
        cells[0].push("Rate".into());
    }
    for row in rows {
        let mut line = vec![row.source, row.count.to_string(), row.expired.to_string(), go_duration_secs(row.duration)];
        if let Some((n, capped)) = row.rate {
            line.push(if capped { format!("{n}+") } else { n.to_string() });
        }
        cells.push(line);
    }
    print!("{}", table(&cells));
    Ok(())
}
