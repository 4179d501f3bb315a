//! The load generator against a server that behaves as the original's grpc-go Doppler does:
//!
//! - a `BatchedReceiver` stream's response headers go out only with its first message, so a
//!   subscriber that waits for them before the run starts waits forever;
//! - a `BatchSender` stream that the client closed ends with status UNKNOWN "EOF" (the Go handler
//!   returns `io.EOF` from `Recv` as its error), after everything was read.
//!
//! The server is a real gRPC server on 127.0.0.1:0; the load generator is the real binary.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use loggregator_proto::raw::server::egress::egress_server::{Egress, EgressServer};
use loggregator_proto::raw::server::ingress::ingress_server::{Ingress, IngressServer};
use loggregator_proto::raw::{EncodedBatch, RawBatch, RawBytes};
use loggregator_proto::scan::BatchScanner;
use loggregator_proto::v2::{BatchSenderResponse, EgressBatchRequest, EgressRequest, IngressResponse, SendResponse};
use tokio::sync::{mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};

/// How the fake Doppler answers a subscription.
#[derive(Clone, Copy, PartialEq)]
enum Subscribe {
    /// As grpc-go: headers only with the first message.
    HeadersWithFirstMessage,
    /// Headers at once (as tonic), to see the `BatchSender` ending on its own.
    HeadersAtOnce,
    /// Refuses at once with an error status (trailers-only response).
    Deny,
}

#[derive(Clone)]
struct GoDoppler {
    subscribe: Subscribe,
    subscribers: Arc<Mutex<Vec<mpsc::Sender<EncodedBatch>>>>,
}

type BatchStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<EncodedBatch, Status>> + Send>>;
type EnvelopeStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<RawBytes, Status>> + Send>>;

#[tonic::async_trait]
impl Egress for GoDoppler {
    type ReceiverStream = EnvelopeStream;
    type BatchedReceiverStream = BatchStream;

    async fn receiver(&self, _: Request<EgressRequest>) -> Result<Response<EnvelopeStream>, Status> {
        Err(Status::unimplemented("Receiver"))
    }

    async fn batched_receiver(&self, _: Request<EgressBatchRequest>) -> Result<Response<BatchStream>, Status> {
        if self.subscribe == Subscribe::Deny {
            return Err(Status::permission_denied("not for you"));
        }
        let (tx, mut rx) = mpsc::channel(4096);
        self.subscribers.lock().await.push(tx);
        if self.subscribe == Subscribe::HeadersAtOnce {
            return Ok(Response::new(Box::pin(ReceiverStream::new(rx).map(Ok))));
        }
        // Returning the response sends the headers: hold it until there is a first message.
        let first = rx.recv().await.ok_or_else(|| Status::unavailable("shutting down"))?;
        let rest = ReceiverStream::new(rx);
        let stream = tokio_stream::once(first).chain(rest).map(Ok);
        Ok(Response::new(Box::pin(stream)))
    }
}

#[tonic::async_trait]
impl Ingress for GoDoppler {
    async fn sender(&self, _: Request<Streaming<RawBytes>>) -> Result<Response<IngressResponse>, Status> {
        Err(Status::unimplemented("Sender"))
    }

    async fn batch_sender(
        &self,
        request: Request<Streaming<RawBatch>>,
    ) -> Result<Response<BatchSenderResponse>, Status> {
        let mut stream = request.into_inner();
        while let Some(batch) = stream.message().await? {
            let mut encoded = EncodedBatch::default();
            for envelope in BatchScanner::new(batch.0) {
                encoded.push(envelope.map_err(|e| Status::invalid_argument(e.to_string()))?.bytes);
            }
            let mut subscribers = self.subscribers.lock().await;
            let mut open = Vec::with_capacity(subscribers.len());
            for subscriber in subscribers.drain(..) {
                if subscriber.send(encoded.clone()).await.is_ok() {
                    open.push(subscriber);
                }
            }
            *subscribers = open;
        }
        // grpc-go: `for { batch, err := s.Recv(); if err != nil { return err } ... }` with io.EOF.
        Err(Status::unknown("EOF"))
    }

    async fn send(&self, _: Request<RawBatch>) -> Result<Response<SendResponse>, Status> {
        Err(Status::unimplemented("Send"))
    }
}

async fn start(subscribe: Subscribe) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    let doppler = GoDoppler { subscribe, subscribers: Arc::default() };
    let server = tonic::transport::Server::builder()
        .add_service(IngressServer::new(doppler.clone()))
        .add_service(EgressServer::new(doppler))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    addr
}

/// Runs the loadgen binary (blocking, off the runtime serving the fake Doppler).
async fn loadgen(args: Vec<String>) -> (Option<i32>, String, String) {
    tokio::task::spawn_blocking(move || {
        let output = Command::new(env!("CARGO_BIN_EXE_loadgen")).args(&args).output().expect("loadgen runs");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    })
    .await
    .expect("loadgen task")
}

fn args(ingress: SocketAddr, egress: SocketAddr) -> Vec<String> {
    let args = ["--rate", "2000", "--duration", "1", "--senders", "1", "--source-ids", "10", "--json"];
    let mut out = vec!["--ingress".to_string(), ingress.to_string(), "--egress".to_string(), egress.to_string()];
    out.extend(args.iter().map(ToString::to_string));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drives_a_grpc_go_style_doppler_losslessly() {
    let addr = start(Subscribe::HeadersWithFirstMessage).await;
    let mut args = args(addr, addr);
    args.push("--assert-lossless".into());
    let (code, stdout, stderr) = loadgen(args).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let phase = &report["phases"][0];
    let sent = phase["sent"].as_u64().expect("sent");
    assert!(sent > 0 && sent <= 2000, "{phase:#}");
    // UNKNOWN "EOF" after the whole stream was read is how grpc-go says OK.
    assert_eq!(phase["uncertain"], 0, "{phase:#}");
    assert_eq!(phase["send_errors"], 0, "{phase:#}");
    assert_eq!(phase["subscribers"][0]["received"], sent, "{phase:#}");
    assert_eq!(phase["subscribers"][0]["errors"], 0, "{phase:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_sender_ending_with_unknown_eof_delivered_everything() {
    let addr = start(Subscribe::HeadersAtOnce).await;
    let mut args = args(addr, addr);
    args.push("--assert-lossless".into());
    let (code, stdout, stderr) = loadgen(args).await;
    assert_eq!(code, Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let phase = &report["phases"][0];
    assert!(phase["sent"].as_u64().is_some_and(|n| n > 0), "{phase:#}");
    assert_eq!(phase["uncertain"], 0, "{phase:#}");
    assert_eq!(phase["send_errors"], 0, "{phase:#}");
    assert_eq!(phase["subscribers"][0]["received"], phase["sent"], "{phase:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_fails_the_run_at_once() {
    let ingress = start(Subscribe::HeadersWithFirstMessage).await;
    let denying = start(Subscribe::Deny).await;
    let started = std::time::Instant::now();
    let (code, stdout, stderr) = loadgen(args(ingress, denying)).await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("cannot subscribe") && stderr.contains("not for you"), "{stderr}");

    // Nothing listening: connection refused.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("address")
    };
    let (code, stdout, stderr) = loadgen(args(ingress, closed)).await;
    assert_eq!(code, Some(2), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stderr.contains("cannot subscribe"), "{stderr}");
    // Both within the first attempt, not after the 10 s readiness timeout.
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "{:?}", started.elapsed());
}
