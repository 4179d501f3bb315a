//! The nozzle against a fake Doppler: it subscribes with the request of §6.10, stores what the
//! stream carries, and resubscribes when a stream ends.

mod common;

use std::sync::Arc;

use common::*;
use loggregator_proto::v2::egress_server::{Egress, EgressServer};
use loggregator_proto::v2::{selector, EgressBatchRequest, EgressRequest, Envelope, EnvelopeBatch};
use parking_lot::Mutex;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

/// A Doppler that sends one batch per subscription and then ends the stream.
#[derive(Clone, Default)]
struct FakeDoppler {
    requests: Arc<Mutex<Vec<EgressBatchRequest>>>,
}

type EnvelopeStream = ReceiverStream<Result<Envelope, Status>>;
type BatchStream = ReceiverStream<Result<EnvelopeBatch, Status>>;

#[tonic::async_trait]
impl Egress for FakeDoppler {
    type ReceiverStream = EnvelopeStream;
    type BatchedReceiverStream = BatchStream;

    async fn receiver(&self, _: Request<EgressRequest>) -> Result<Response<EnvelopeStream>, Status> {
        Err(Status::unimplemented("use BatchedReceiver instead"))
    }

    async fn batched_receiver(&self, request: Request<EgressBatchRequest>) -> Result<Response<BatchStream>, Status> {
        let subscription = {
            let mut requests = self.requests.lock();
            requests.push(request.into_inner());
            requests.len() as i64
        };
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let batch = EnvelopeBatch {
            batch: vec![
                log_envelope("nozzled", subscription * 10, "a"),
                gauge_envelope("nozzled", subscription * 10 + 1, "cpu", 1.0),
            ],
        };
        tx.send(Ok(batch)).await.map_err(|_| Status::internal("closed"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tokio::test]
async fn nozzle_subscribes_stores_and_resubscribes() {
    let doppler = FakeDoppler::default();
    let (listener, addr) = listener().await;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EgressServer::new(doppler.clone()))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );

    let mut config = test_config();
    config.nozzle.addrs = vec![addr.to_string()];
    let cache = start(config).await;

    // Each subscription ends after one batch; the nozzle comes back for more.
    eventually("three subscriptions", || async { doppler.requests.lock().len() >= 3 }).await;
    eventually("their envelopes stored", || async { cache.store.meta().get("nozzled").is_some_and(|m| m.count >= 6) })
        .await;

    let request = doppler.requests.lock()[0].clone();
    assert_eq!(request.shard_id, "log-cache");
    assert!(request.use_preferred_tags);
    let kinds: Vec<_> = request
        .selectors
        .iter()
        .map(|s| {
            assert_eq!(s.source_id, "");
            match s.message {
                Some(selector::Message::Log(_)) => "log",
                Some(selector::Message::Counter(_)) => "counter",
                Some(selector::Message::Gauge(_)) => "gauge",
                Some(selector::Message::Timer(_)) => "timer",
                Some(selector::Message::Event(_)) => "event",
                None => "none",
            }
        })
        .collect();
    assert_eq!(kinds, vec!["log", "counter", "gauge", "timer", "event"]);
    assert!(cache.registry.sum("nozzle_received", &[]) >= 6);

    cache.stop().await;
    server.abort();
}
