//! The gRPC services `logcache.v1.Ingress` and `logcache.v1.Egress` of §6.1 over [`Service`]
//! (`PromQLQuerier` is in [`crate::query`]).
//!
//! Errors become `tonic::Status` in [`status`] and nowhere else.

use std::sync::Arc;

use loggregator_proto::logcache::v1::egress_server::Egress;
use loggregator_proto::logcache::v1::ingress_server::Ingress;
use loggregator_proto::logcache::v1::{
    MetaRequest, MetaResponse, ReadRequest, ReadResponse, SendRequest, SendResponse,
};
use tonic::{Request, Response, Status};

use crate::service::{ApiError, Service};

/// The one mapping of API errors to gRPC statuses (§6.2: plain UNKNOWN with the exact message).
pub fn status(error: ApiError) -> Status {
    match error {
        ApiError::Remote(status) => status,
        other => Status::new(other.code(), other.to_string()),
    }
}

/// `logcache.v1.Egress` and `logcache.v1.Ingress`.
#[derive(Clone)]
pub struct LogCacheGrpc {
    pub service: Arc<Service>,
}

#[tonic::async_trait]
impl Egress for LogCacheGrpc {
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        self.service.read(request.into_inner()).await.map(Response::new).map_err(status)
    }

    async fn meta(&self, request: Request<MetaRequest>) -> Result<Response<MetaResponse>, Status> {
        self.service.meta(request.into_inner()).await.map(Response::new).map_err(status)
    }
}

#[tonic::async_trait]
impl Ingress for LogCacheGrpc {
    async fn send(&self, request: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        self.service.send(request.into_inner()).await.map_err(status)?;
        Ok(Response::new(SendResponse {}))
    }
}
