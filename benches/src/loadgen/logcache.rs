//! The Log Cache hop, over its public HTTP API (`/api/v1/meta`, `/api/v1/read/{source_id}`).
//!
//! - [`LogCacheClient::stored`]: how many of this run's envelopes a log-cache holds (count + expired
//!   of this run's source ids in `/api/v1/meta`). This is the "delivered" figure of the log-cache
//!   hop; it needs no subscriber, so the hop has **no latency figure** (log-cache has no streaming
//!   egress, and polling reads for freshness would measure the poll interval).
//! - [`read_back`]: walks every source id of the run as go-log-cache's `Walk` does (`start_time` =
//!   last timestamp + 1, pages of 1000) and counts what it reads.
//! - [`read_throughput`]: N concurrent readers issuing `limit=100` reads against a filled source for
//!   D seconds (reads/s and read latency).
//!
//! Plain HTTP only (hyper-util's legacy client); the load generator is meant for 127.0.0.1.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loggregator_proto::json::{meta_response_from_json, read_response_from_json};
use serde::Serialize;

use super::report::Latency;
use super::subscriber::latency_histogram;

/// Largest page a log-cache read returns (§6.2).
pub const PAGE_LIMIT: usize = 1000;

/// One source's meta (§6.3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceMeta {
    pub count: i64,
    pub expired: i64,
    pub oldest: i64,
    pub newest: i64,
}

/// A plain-HTTP client of one log-cache (or its gateway), e.g. `http://127.0.0.1:8083`.
#[derive(Clone)]
pub struct LogCacheClient {
    base: String,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl LogCacheClient {
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/').to_string();
        let rest = base.strip_prefix("http://").context("--log-cache takes a plain http:// base URL")?;
        if rest.is_empty() || rest.contains('/') {
            bail!("--log-cache takes a base URL like http://127.0.0.1:8083 (no path): `{base}`");
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(256).build(connector);
        Ok(Self { base, client })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path_and_query`; the status must be 200. Bounded at 10 s.
    async fn get(&self, path_and_query: &str) -> anyhow::Result<Bytes> {
        let uri: http::Uri = format!("{}{path_and_query}", self.base)
            .parse()
            .with_context(|| format!("invalid URL {path_and_query}"))?;
        let fetch = async {
            let response = self.client.get(uri).await?;
            let status = response.status();
            let body = response.into_body().collect().await?.to_bytes();
            Ok::<_, anyhow::Error>((status, body))
        };
        let (status, body) = tokio::time::timeout(Duration::from_secs(10), fetch)
            .await
            .with_context(|| format!("{}{path_and_query}: timed out", self.base))?
            .with_context(|| format!("{}{path_and_query}: request failed", self.base))?;
        if status != http::StatusCode::OK {
            bail!("{}{path_and_query}: {status}: {}", self.base, String::from_utf8_lossy(&body[..body.len().min(200)]));
        }
        Ok(body)
    }

    /// `/api/v1/meta`: every source's meta.
    pub async fn meta(&self) -> anyhow::Result<BTreeMap<String, SourceMeta>> {
        let body = self.get("/api/v1/meta").await?;
        let text = std::str::from_utf8(&body).context("meta: not UTF-8")?;
        let response = meta_response_from_json(text).map_err(|e| anyhow::anyhow!("meta: {e}"))?;
        Ok(response
            .meta
            .into_iter()
            .map(|(id, m)| {
                let meta = SourceMeta {
                    count: m.count,
                    expired: m.expired,
                    oldest: m.oldest_timestamp,
                    newest: m.newest_timestamp,
                };
                (id, meta)
            })
            .collect())
    }

    /// Envelopes of this run's source ids (those starting with `prefix`) ever stored: count + expired.
    pub async fn stored(&self, prefix: &str) -> anyhow::Result<u64> {
        let meta = self.meta().await?;
        Ok(meta.iter().filter(|(id, _)| id.starts_with(prefix)).map(|(_, m)| (m.count + m.expired).max(0) as u64).sum())
    }

    /// One ascending page of `source_id` from `start_time`: (envelopes, greatest timestamp).
    pub async fn read_page(&self, source_id: &str, start_time: i64, limit: usize) -> anyhow::Result<(u64, i64)> {
        let body = self.get(&format!("/api/v1/read/{source_id}?start_time={start_time}&limit={limit}")).await?;
        let text = std::str::from_utf8(&body).context("read: not UTF-8")?;
        let response = read_response_from_json(text).map_err(|e| anyhow::anyhow!("read {source_id}: {e}"))?;
        let batch = response.envelopes.map(|b| b.batch).unwrap_or_default();
        let last = batch.iter().map(|e| e.timestamp).max().unwrap_or(start_time);
        if batch.iter().any(|e| e.source_id != source_id) {
            bail!("read {source_id}: an envelope of another source id came back");
        }
        Ok((batch.len() as u64, last))
    }
}

/// What [`read_back`] found.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ReadBackReport {
    pub url: String,
    pub source_ids: usize,
    /// Envelopes sent in the phase.
    pub sent: u64,
    /// Envelopes read back over HTTP.
    pub read: u64,
    /// sent − read (negative: more came back than was sent).
    pub missing: i64,
    pub missing_pct: f64,
    /// HTTP reads issued (pages of up to 1000).
    pub pages: u64,
    pub seconds: f64,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// Walks each of `prefix0 .. prefix{source_ids-1}` from `since` (ns) in pages of 1000, with
/// `concurrency` sources at a time, for at most `budget`.
pub async fn read_back(
    client: &LogCacheClient,
    prefix: &str,
    source_ids: usize,
    since: i64,
    sent: u64,
    concurrency: usize,
    budget: Duration,
) -> ReadBackReport {
    let started = Instant::now();
    let deadline = started + budget;
    let pages = AtomicU64::new(0);
    let walks = futures::stream::iter(0..source_ids)
        .map(|n| {
            let source_id = format!("{prefix}{n}");
            let pages = &pages;
            async move {
                let mut start = since;
                let mut read = 0u64;
                loop {
                    if Instant::now() > deadline {
                        return (read, Some(format!("{source_id}: read-back budget of {budget:?} exhausted")));
                    }
                    pages.fetch_add(1, Ordering::Relaxed);
                    match client.read_page(&source_id, start, PAGE_LIMIT).await {
                        Ok((0, _)) => return (read, None),
                        Ok((n, last)) => {
                            read += n;
                            start = last.saturating_add(1);
                        }
                        Err(error) => return (read, Some(format!("{error:#}"))),
                    }
                }
            }
        })
        .buffer_unordered(concurrency.max(1))
        .collect::<Vec<_>>()
        .await;
    let read: u64 = walks.iter().map(|(n, _)| n).sum();
    let errors: Vec<String> = walks.into_iter().filter_map(|(_, e)| e).collect();
    let missing = sent as i64 - read as i64;
    ReadBackReport {
        url: client.base().to_string(),
        source_ids,
        sent,
        read,
        missing,
        missing_pct: if sent == 0 { 0.0 } else { missing as f64 * 100.0 / sent as f64 },
        pages: pages.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        errors: errors.len() as u64,
        first_error: errors.into_iter().next(),
    }
}

/// What [`read_throughput`] measured.
#[derive(Clone, Debug, Default, Serialize)]
pub struct HttpReadReport {
    pub url: String,
    pub source_id: String,
    /// Envelopes the source held when the readers started.
    pub source_envelopes: i64,
    pub readers: usize,
    pub limit: usize,
    pub seconds: f64,
    pub reads: u64,
    pub reads_per_second: f64,
    /// Mean envelopes per read.
    pub envelopes_per_read: f64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// Latency of one read (request to last body byte).
    pub latency: Latency,
    /// CPU seconds per component over the read phase, and per thousand reads.
    pub cpu: Vec<(String, f64, f64)>,
}

/// Counts the envelopes of a read response by their `"timestamp":` keys (no full parse, so the
/// readers spend little CPU; [`read_back`] parses fully).
fn count_envelopes(body: &[u8]) -> u64 {
    const KEY: &[u8] = b"\"timestamp\":";
    let (mut n, mut at) = (0, 0);
    // Jump from quote to quote (a comparison per byte of a windowed search cost the readers ~12 %
    // of the machine in a profile).
    while let Some(quote) = body[at..].iter().position(|&b| b == b'"') {
        at += quote;
        if body[at..].starts_with(KEY) {
            n += 1;
            at += KEY.len();
        } else {
            at += 1;
        }
    }
    n
}

/// `readers` concurrent loops of `GET /api/v1/read/{source_id}?start_time=T&limit=L` for `duration`,
/// T random in the first 90 % of the source's time range (so every read returns `limit` envelopes).
pub async fn read_throughput(
    client: &LogCacheClient,
    source_id: &str,
    readers: usize,
    limit: usize,
    duration: Duration,
) -> anyhow::Result<HttpReadReport> {
    let meta = client.meta().await?;
    let source = *meta.get(source_id).with_context(|| format!("source {source_id} is not in log-cache's meta"))?;
    if source.count == 0 {
        bail!("source {source_id} holds no envelopes");
    }
    let span = ((source.newest - source.oldest) as f64 * 0.9) as i64;
    // The first read checks the answer fully.
    let (n, _) = client.read_page(source_id, source.oldest, limit).await?;
    if n == 0 {
        bail!("a read of {source_id} returned nothing");
    }
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..readers.max(1))
        .map(|_| {
            let client = client.clone();
            let source_id = source_id.to_string();
            tokio::spawn(async move {
                let mut histogram = latency_histogram();
                let (mut reads, mut envelopes, mut errors, mut first_error) = (0u64, 0u64, 0u64, None);
                while Instant::now() < deadline {
                    let start = source.oldest + if span > 0 { fastrand::i64(0..span) } else { 0 };
                    let t0 = Instant::now();
                    match client.get(&format!("/api/v1/read/{source_id}?start_time={start}&limit={limit}")).await {
                        Ok(body) => {
                            histogram.saturating_record((t0.elapsed().as_micros() as u64).max(1));
                            reads += 1;
                            envelopes += count_envelopes(&body);
                        }
                        Err(error) => {
                            errors += 1;
                            first_error.get_or_insert_with(|| format!("{error:#}"));
                        }
                    }
                }
                (histogram, reads, envelopes, errors, first_error)
            })
        })
        .collect();
    let mut histogram = latency_histogram();
    let (mut reads, mut envelopes, mut errors, mut first_error) = (0u64, 0u64, 0u64, None);
    for task in tasks {
        let (h, r, e, err, first) = task.await.context("a reader panicked")?;
        histogram.add(&h).ok();
        reads += r;
        envelopes += e;
        errors += err;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(HttpReadReport {
        url: client.base().to_string(),
        source_id: source_id.to_string(),
        source_envelopes: source.count,
        readers,
        limit,
        seconds,
        reads,
        reads_per_second: reads as f64 / seconds.max(1e-9),
        envelopes_per_read: envelopes as f64 / reads.max(1) as f64,
        errors,
        first_error,
        latency: Latency::of(&histogram),
        cpu: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_envelopes_by_key() {
        let body = br#"{"envelopes":{"batch":[{"timestamp":"1","source_id":"a"},{"timestamp":"2","source_id":"a"}]}}"#;
        assert_eq!(count_envelopes(body), 2);
        assert_eq!(count_envelopes(br#"{"envelopes":{"batch":[]}}"#), 0);
    }

    #[test]
    fn only_plain_http_base_urls() {
        assert!(LogCacheClient::new("http://127.0.0.1:8083").is_ok());
        assert!(LogCacheClient::new("http://127.0.0.1:8083/").is_ok());
        assert!(LogCacheClient::new("https://127.0.0.1:8083").is_err());
        assert!(LogCacheClient::new("http://127.0.0.1:8083/api").is_err());
    }
}
