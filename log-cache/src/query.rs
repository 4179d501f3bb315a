//! PromQL on log-cache data: the `logcache.v1.PromQLQuerier` service, and the data source that feeds
//! the [`crate::promql`] engine from this node's store or from the node owning a source id (§6.6).
//!
//! Queries are CPU-bound, so they run on the blocking pool, at most [`MAX_CONCURRENT_QUERIES`] at once
//! (the original's MaxConcurrent). A source owned by another node is read through that node's
//! `Egress/Read` by blocking on the runtime handle, which is allowed on a blocking-pool thread.

use std::sync::Arc;

use bytes::Bytes;
use loggregator_proto::logcache::v1::prom_ql::{
    InstantQueryRequest, InstantQueryResult, RangeQueryRequest, RangeQueryResult,
};
use loggregator_proto::logcache::v1::prom_ql_querier_server::PromQlQuerier;
use loggregator_proto::prost::Message as _;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

use crate::config::Config;
use crate::grpc::status;
use crate::promql::{Engine, MetricSource, PromQLError};
use crate::service::{ApiError, Service};

/// Most queries evaluated at once (§6.6 MaxConcurrent).
pub const MAX_CONCURRENT_QUERIES: usize = 10;

/// Feeds the engine: local sources from the store, remote ones from their owner.
struct ClusterMetricSource {
    service: Arc<Service>,
    runtime: tokio::runtime::Handle,
}

impl MetricSource for ClusterMetricSource {
    fn read_metric_envelopes(&self, source_id: &str, start_ns: i64, end_ns: i64, max: usize) -> Vec<Bytes> {
        if self.service.cluster().remote_owner(source_id).is_none() {
            return self.service.store().metric_envelopes(source_id, start_ns, end_ns);
        }
        // Only ever called from `spawn_blocking` (see `Querier::evaluate`), where blocking is allowed.
        let envelopes = self.runtime.block_on(self.service.metric_envelopes(source_id, start_ns, end_ns, max));
        // The owner's answer arrives decoded (tonic's Read client); re-encoded so that both paths
        // hand the engine the same thing. Remote reads are bounded by `max` pages' worth.
        envelopes.into_iter().map(|envelope| Bytes::from(envelope.encode_to_vec())).collect()
    }
}

/// Runs PromQL queries against the cluster's data.
pub struct Querier {
    engine: Arc<Engine>,
    permits: Semaphore,
}

impl Querier {
    /// Must be called inside a tokio runtime (it keeps the runtime's handle for remote reads).
    pub fn new(service: Arc<Service>, config: &Config) -> Self {
        let source = Arc::new(ClusterMetricSource { service, runtime: tokio::runtime::Handle::current() });
        Self {
            engine: Arc::new(Engine::new(source, config.query_timeout, config.max_samples)),
            permits: Semaphore::new(MAX_CONCURRENT_QUERIES),
        }
    }

    pub async fn instant(&self, query: String, time: String) -> Result<InstantQueryResult, ApiError> {
        self.evaluate(move |engine| engine.instant_query(&query, &time)).await
    }

    pub async fn range(
        &self,
        query: String,
        start: String,
        end: String,
        step: String,
    ) -> Result<RangeQueryResult, ApiError> {
        self.evaluate(move |engine| engine.range_query(&query, &start, &end, &step)).await
    }

    async fn evaluate<T: Send + 'static>(
        &self,
        run: impl FnOnce(&Engine) -> Result<T, PromQLError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let _permit = self.permits.acquire().await.map_err(|e| ApiError::Internal(e.to_string()))?;
        let engine = Arc::clone(&self.engine);
        match tokio::task::spawn_blocking(move || run(&engine)).await {
            Ok(Ok(result)) => Ok(result),
            Ok(Err(error)) => Err(query_error(error)),
            Err(join) => Err(ApiError::Internal(join.to_string())),
        }
    }
}

/// Carries the engine's own code, status and `errorType` to the transports.
fn query_error(error: PromQLError) -> ApiError {
    ApiError::Query {
        code: error.grpc_code(),
        http_status: error.http_status(),
        error_type: error.error_type(),
        message: error.to_string(),
    }
}

/// `logcache.v1.PromQLQuerier`.
#[derive(Clone)]
pub struct PromQlGrpc {
    pub querier: Arc<Querier>,
}

#[tonic::async_trait]
impl PromQlQuerier for PromQlGrpc {
    async fn instant_query(
        &self,
        request: Request<InstantQueryRequest>,
    ) -> Result<Response<InstantQueryResult>, Status> {
        let request = request.into_inner();
        self.querier.instant(request.query, request.time).await.map(Response::new).map_err(status)
    }

    async fn range_query(&self, request: Request<RangeQueryRequest>) -> Result<Response<RangeQueryResult>, Status> {
        let request = request.into_inner();
        self.querier
            .range(request.query, request.start, request.end, request.step)
            .await
            .map(Response::new)
            .map_err(status)
    }
}
