//! The client commands of the `loggregator` binary (`emit`, `logs`, `tail`, `meta`, `query`, `top`):
//! what `cf logs`, `cf tail`, `cf log-meta` and a nozzle give a Cloud Foundry user, against the
//! pipeline's public endpoints only (agent ingress, RLP and its gateway, log-cache's HTTP API,
//! `/metrics`), so they work against any deployment, the original's included. Defaults are the
//! all-in-one's port table; errors are one line naming the endpoint.

/// The wall clock in Unix nanoseconds, as envelopes and log-cache's reads count time.
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

pub mod emit;
pub mod format;
pub mod grpc;
pub mod http;
pub mod logcache;
pub mod logs;
pub mod meta;
pub mod query;
pub mod sse;
pub mod tail;
pub mod top;
