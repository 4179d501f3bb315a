//! The gRPC services `logcache.v1.Ingress` and `logcache.v1.Egress` of §6.1 over [`Service`]
//! (`PromQLQuerier` is in [`crate::query`]).
//!
//! Errors become `tonic::Status` in [`status`] and nowhere else.

use std::sync::Arc;

use bytes::Bytes;
use loggregator_proto::logcache::v1::{MetaRequest, MetaResponse, ReadRequest, SendResponse};
use loggregator_proto::prost::Message;
use loggregator_proto::raw::server::logcache_egress::egress_server::Egress;
use loggregator_proto::raw::server::logcache_ingress::ingress_server::Ingress;
use loggregator_proto::raw::{EncodedBatch, EncodedReadResponse, RawSendRequest};
use tonic::{Request, Response, Status};

use crate::service::{ApiError, EncodedRead, Service};

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
    /// Sends the stored envelopes as they were received: the response is assembled from their bytes,
    /// never decoded and re-encoded (a read proxied to the owner node is the exception: its answer
    /// arrives decoded and is encoded again here).
    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<EncodedReadResponse>, Status> {
        let envelopes = match self.service.read_encoded(request.into_inner()).await.map_err(status)? {
            EncodedRead::Local(envelopes) => envelopes,
            EncodedRead::Remote(response) => response
                .envelopes
                .unwrap_or_default()
                .batch
                .iter()
                .map(|envelope| Bytes::from(envelope.encode_to_vec()))
                .collect(),
        };
        Ok(Response::new(EncodedReadResponse { batch: EncodedBatch { envelopes } }))
    }

    async fn meta(&self, request: Request<MetaRequest>) -> Result<Response<MetaResponse>, Status> {
        self.service.meta(request.into_inner()).await.map(Response::new).map_err(status)
    }
}

#[tonic::async_trait]
impl Ingress for LogCacheGrpc {
    /// Stores and forwards the request's envelopes as they arrived: the batch is scanned (a slice
    /// of the receive buffer), never decoded.
    async fn send(&self, request: Request<RawSendRequest>) -> Result<Response<SendResponse>, Status> {
        self.service.send_raw(request.into_inner()).await.map_err(status)?;
        Ok(Response::new(SendResponse {}))
    }
}
