//! Reading log-cache's HTTP API (PROTOCOLS.md §6.7) as its clients do: `Read` with the cf CLI's 429
//! back-off, `Meta`, and a walk that follows a source forward without gaps or repeats.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};

use anyhow::{anyhow, Context as _};
use loggregator_proto::logcache::v1::MetaInfo;
use loggregator_proto::v2::{self, envelope::Message};

use super::http::{Http, StatusError};

/// The most envelopes one read returns (log-cache's own cap).
pub const MAX_LIMIT: usize = 1000;

/// Envelope types log-cache filters reads by (`envelope_types`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EnvelopeType {
    Log,
    Counter,
    Gauge,
    Timer,
    Event,
}

impl EnvelopeType {
    fn name(self) -> &'static str {
        match self {
            Self::Log => "LOG",
            Self::Counter => "COUNTER",
            Self::Gauge => "GAUGE",
            Self::Timer => "TIMER",
            Self::Event => "EVENT",
        }
    }
}

/// One `GET /api/v1/read/{source}`.
#[derive(Clone, Debug, Default)]
pub struct ReadQuery {
    /// Inclusive, in ns; log-cache's default (0) when `None`.
    pub start: Option<i64>,
    /// Exclusive, in ns; now when `None`.
    pub end: Option<i64>,
    /// Empty for every type.
    pub types: Vec<EnvelopeType>,
    pub limit: usize,
    pub descending: bool,
}

/// A log-cache HTTP API at `base` (`http://127.0.0.1:8083`).
#[derive(Clone)]
pub struct LogCache {
    http: Http,
    base: String,
}

impl LogCache {
    pub fn new(http: Http, base: &str) -> Self {
        Self { http, base: base.trim_end_matches('/').to_string() }
    }

    fn url(&self, path: &[&str]) -> anyhow::Result<reqwest::Url> {
        let mut url =
            reqwest::Url::parse(&self.base).with_context(|| format!("invalid log-cache URL `{}`", self.base))?;
        url.path_segments_mut()
            .map_err(|()| anyhow!("invalid log-cache URL `{}`", self.base))?
            .pop_if_empty()
            .extend(path);
        Ok(url)
    }

    /// Envelopes of `source` as log-cache returns them. A 429 halves the limit and retries, as the
    /// cf CLI does.
    pub async fn read(&self, source: &str, query: &ReadQuery) -> anyhow::Result<Vec<v2::Envelope>> {
        let mut limit = query.limit.clamp(1, MAX_LIMIT);
        loop {
            let mut url = self.url(&["api", "v1", "read", source])?;
            {
                let mut q = url.query_pairs_mut();
                if let Some(start) = query.start {
                    q.append_pair("start_time", &start.to_string());
                }
                if let Some(end) = query.end {
                    q.append_pair("end_time", &end.to_string());
                }
                for t in &query.types {
                    q.append_pair("envelope_types", t.name());
                }
                q.append_pair("limit", &limit.to_string());
                if query.descending {
                    q.append_pair("descending", "true");
                }
            }
            match self.http.get_text("log-cache", url.as_str()).await {
                Ok(body) => {
                    let response = loggregator_proto::json::read_response_from_json(&body)
                        .map_err(|e| anyhow!("log-cache at {} answered an invalid read: {e}", self.base))?;
                    return Ok(response.envelopes.map(|b| b.batch).unwrap_or_default());
                }
                Err(e) if limit > 1 && e.downcast_ref::<StatusError>().is_some_and(|s| s.status == 429) => {
                    limit /= 2;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `GET /api/v1/meta`: every source's count, expired count and oldest/newest timestamps.
    pub async fn meta(&self) -> anyhow::Result<HashMap<String, MetaInfo>> {
        let url = self.url(&["api", "v1", "meta"])?;
        let body = self.http.get_text("log-cache", url.as_str()).await?;
        let response = loggregator_proto::json::meta_response_from_json(&body)
            .map_err(|e| anyhow!("log-cache at {} answered an invalid meta: {e}", self.base))?;
        Ok(response.meta)
    }

    /// A PromQL query (`/api/v1/query` or `/api/v1/query_range`) with its parameters.
    pub async fn promql(&self, route: &str, params: &[(&str, String)]) -> anyhow::Result<serde_json::Value> {
        let mut url = self.url(&["api", "v1", route])?;
        url.query_pairs_mut().extend_pairs(params.iter().map(|(k, v)| (*k, v.as_str())));
        self.http.get_json("log-cache", url.as_str()).await
    }
}

/// What identifies an envelope across reads and streams: its time, origin and content, not its
/// tags (the RLP's preferred tags and log-cache's may differ for a v1-born envelope). Gauge values
/// are hashed in name order, as maps have none.
pub fn envelope_key(env: &v2::Envelope) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (env.timestamp, &env.source_id, &env.instance_id).hash(&mut h);
    match &env.message {
        Some(Message::Log(l)) => (0u8, &l.payload[..], l.r#type).hash(&mut h),
        Some(Message::Counter(c)) => (1u8, &c.name, c.delta, c.total).hash(&mut h),
        Some(Message::Gauge(g)) => {
            2u8.hash(&mut h);
            let mut metrics: Vec<_> = g.metrics.iter().collect();
            metrics.sort_by(|a, b| a.0.cmp(b.0));
            for (name, v) in metrics {
                (name, &v.unit, v.value.to_bits()).hash(&mut h);
            }
        }
        Some(Message::Timer(t)) => (3u8, &t.name, t.start, t.stop).hash(&mut h),
        Some(Message::Event(e)) => (4u8, &e.title, &e.body).hash(&mut h),
        None => 5u8.hash(&mut h),
    }
    h.finish()
}

/// Follows a source forward through ascending reads. The next read starts *at* the newest
/// timestamp seen, not one past it (the cf CLI's `last + 1` skips an envelope that shares the
/// timestamp of the last one of a full page), and what was already returned at that timestamp is
/// filtered out, so nothing is skipped and nothing repeats.
pub struct Walk {
    cursor: i64,
    at_cursor: HashSet<u64>,
}

impl Walk {
    pub fn new(start: i64) -> Self {
        Self { cursor: start, at_cursor: HashSet::new() }
    }

    /// Marks envelopes as already shown (the tail's first page), moving the cursor past them.
    pub fn seen(&mut self, env: &v2::Envelope) {
        if env.timestamp > self.cursor {
            self.cursor = env.timestamp;
            self.at_cursor.clear();
        }
        if env.timestamp == self.cursor {
            self.at_cursor.insert(envelope_key(env));
        }
    }

    /// One read of up to [`MAX_LIMIT`] envelopes from the cursor to `end` (exclusive); returns the
    /// new ones in order and whether the page was full (then read again at once).
    pub async fn step(
        &mut self,
        log_cache: &LogCache,
        source: &str,
        types: &[EnvelopeType],
        end: i64,
    ) -> anyhow::Result<(Vec<v2::Envelope>, bool)> {
        if end <= self.cursor {
            return Ok((Vec::new(), false));
        }
        let query = ReadQuery {
            start: Some(self.cursor),
            end: Some(end),
            types: types.to_vec(),
            limit: MAX_LIMIT,
            descending: false,
        };
        let page = log_cache.read(source, &query).await?;
        let full = page.len() >= MAX_LIMIT;
        let mut fresh = Vec::with_capacity(page.len());
        for env in page {
            if env.timestamp < self.cursor
                || (env.timestamp == self.cursor && self.at_cursor.contains(&envelope_key(&env)))
            {
                continue;
            }
            self.seen(&env);
            fresh.push(env);
        }
        // A full page of envelopes all at the cursor's timestamp would read the same page again:
        // step past that timestamp (only possible with over 1000 envelopes in one nanosecond).
        if full && fresh.is_empty() {
            self.cursor += 1;
            self.at_cursor.clear();
        }
        Ok((fresh, full))
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
            message: Some(Message::Log(v2::Log { payload: Bytes::copy_from_slice(text.as_bytes()), r#type: 0 })),
            ..Default::default()
        }
    }

    #[test]
    fn keys_ignore_tags_but_not_content() {
        let a = log(5, "x");
        let mut tagged = a.clone();
        tagged.tags.insert("source_type".into(), "APP".into());
        assert_eq!(envelope_key(&a), envelope_key(&tagged));
        assert_ne!(envelope_key(&a), envelope_key(&log(5, "y")));
        assert_ne!(envelope_key(&a), envelope_key(&log(6, "x")));
    }

    #[test]
    fn the_walk_keeps_envelopes_that_share_the_last_timestamp() {
        let mut walk = Walk::new(0);
        walk.seen(&log(10, "a"));
        assert_eq!(walk.cursor, 10);
        // The next read starts at 10 and returns "a" again plus "b" at the same nanosecond.
        let again = log(10, "a");
        assert!(walk.at_cursor.contains(&envelope_key(&again)));
        assert!(!walk.at_cursor.contains(&envelope_key(&log(10, "b"))));
    }
}
