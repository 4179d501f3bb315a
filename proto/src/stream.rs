//! gRPC message streams read straight off the HTTP/2 body, past tonic's receive buffer.
//!
//! tonic copies every DATA frame it receives into a buffer of its own and then splits messages off
//! it, reallocating that buffer as messages arrive: 4.5–7 % of the agent's and the Doppler's CPU at
//! 400k envelopes/s (BENCHMARKS.md §0.1). h2 already hands each DATA frame over as a `Bytes` slice of
//! its read buffer, and a batch nearly always travels as one frame (our peers accept 1 MiB frames,
//! `plumbing::grpc::MAX_FRAME_SIZE`), so here a message is a slice of that frame: no copy. A
//! message split over frames is assembled in a buffer, the one copy tonic made of every message.
//!
//! Used where batches arrive by the hundred thousand a second: `BatchSender` on the agent and the
//! Doppler ([`IngressRouter`]), and `BatchedReceiver` subscriptions ([`batched_receiver`]). Framing
//! errors answer as tonic does (same codes, same messages), so a client sees no difference.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame};
use tonic::body::Body as TonicBody;
use tonic::codegen::{BoxFuture, Service};
use tonic::server::NamedService;
use tonic::{Code, Status};

use crate::raw::server::ingress::ingress_server::{Ingress, IngressServer};
use crate::raw::RawBatch;

/// gRPC's default limit on a received message (tonic's and grpc-go's).
pub const DEFAULT_MAX_MESSAGE: usize = 4 << 20;
/// The length-prefixed message header: a compression flag and a big-endian `u32` length.
const HEADER: usize = 5;
const BATCH_SENDER_PATH: &str = "/loggregator.v2.Ingress/BatchSender";
const BATCHED_RECEIVER_PATH: &str = "/loggregator.v2.Egress/BatchedReceiver";
const GRPC_CONTENT_TYPE: &str = "application/grpc";

/// Which side of a call the stream is read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// A server reading a request: a client cancelling its stream ends it (as tonic treats it).
    Server,
    /// A client reading a response: the trailers carry the call's status.
    Client,
}

/// The messages of one gRPC stream, each as one `Bytes` (see the module docs).
pub struct MessageStream<B = TonicBody> {
    body: B,
    side: Side,
    max_message: usize,
    /// Whether the call's status is still to come, in trailers (a client's, unless the response
    /// was trailers-only).
    expect_trailers: bool,
    /// The rest of the last DATA frame, not yet part of a message.
    chunk: Bytes,
    /// A message being assembled from several frames (empty otherwise).
    partial: BytesMut,
    done: bool,
}

impl<B> MessageStream<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    /// Reads a request body on a server.
    pub fn server(body: B, max_message: usize) -> Self {
        Self::new(body, Side::Server, max_message)
    }

    fn new(body: B, side: Side, max_message: usize) -> Self {
        Self {
            body,
            side,
            max_message,
            expect_trailers: side == Side::Client,
            chunk: Bytes::new(),
            partial: BytesMut::new(),
            done: false,
        }
    }

    /// The next message; `None` once the stream has ended cleanly.
    pub async fn message(&mut self) -> Result<Option<Bytes>, Status> {
        loop {
            let message = if self.partial.is_empty() { self.split_from_chunk()? } else { self.fill_partial()? };
            if let Some(message) = message {
                return Ok(Some(message));
            }
            // What is left of the frame starts a message that continues in the next one.
            if !self.chunk.is_empty() {
                self.partial.extend_from_slice(&self.chunk);
                self.chunk = Bytes::new();
            }
            if self.done {
                return self.end();
            }
            match std::future::poll_fn(|cx| Pin::new(&mut self.body).poll_frame(cx)).await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.chunk = data,
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.done = true;
                            if self.expect_trailers {
                                self.check_status(&trailers)?;
                            }
                        }
                    }
                },
                Some(Err(error)) => {
                    self.done = true;
                    let status = Status::from_error(error.into());
                    if self.side == Side::Server && status.code() == Code::Cancelled {
                        return self.end();
                    }
                    return Err(status);
                }
                None => {
                    if self.expect_trailers && !self.done {
                        self.done = true;
                        // Neither a trailers-only response nor trailers: the call's outcome is unknown.
                        if !self.partial.is_empty() || !self.chunk.is_empty() {
                            return Err(Status::internal("Unexpected EOF decoding stream."));
                        }
                        return Err(Status::unknown("the stream ended without a grpc-status"));
                    }
                    self.done = true;
                }
            }
        }
    }

    /// End of stream: clean unless a message was cut short.
    fn end(&mut self) -> Result<Option<Bytes>, Status> {
        if self.partial.is_empty() && self.chunk.is_empty() {
            Ok(None)
        } else {
            self.partial.clear();
            self.chunk = Bytes::new();
            Err(Status::internal("Unexpected EOF decoding stream."))
        }
    }

    fn check_status(&self, trailers: &HeaderMap) -> Result<(), Status> {
        match Status::from_header_map(trailers) {
            Some(status) if status.code() != Code::Ok => Err(status),
            Some(_) => Ok(()),
            None => Err(Status::unknown("the stream's trailers carry no grpc-status")),
        }
    }

    /// A whole message from the current frame, as a slice of it.
    fn split_from_chunk(&mut self) -> Result<Option<Bytes>, Status> {
        let Some(len) = self.message_len(&self.chunk)? else {
            return Ok(None);
        };
        if self.chunk.len() < HEADER + len {
            return Ok(None);
        }
        self.chunk.advance(HEADER);
        Ok(Some(self.chunk.split_to(len)))
    }

    /// Completes the message being assembled with what it still lacks from the current frame, and
    /// no more: the rest of the frame stays where it is, for the messages after it to be sliced.
    fn fill_partial(&mut self) -> Result<Option<Bytes>, Status> {
        if self.partial.len() < HEADER {
            self.take_from_chunk(HEADER - self.partial.len());
        }
        let Some(len) = self.message_len(&self.partial)? else {
            return Ok(None);
        };
        let whole = HEADER + len;
        if self.partial.len() < whole {
            // Room for the whole message at once, rather than growing frame by frame.
            self.partial.reserve(whole - self.partial.len());
            self.take_from_chunk(whole - self.partial.len());
        }
        if self.partial.len() < whole {
            return Ok(None);
        }
        let mut message = self.partial.split().freeze();
        message.advance(HEADER);
        Ok(Some(message))
    }

    fn take_from_chunk(&mut self, wanted: usize) {
        let n = wanted.min(self.chunk.len());
        self.partial.extend_from_slice(&self.chunk[..n]);
        self.chunk.advance(n);
    }

    /// The length of the message whose header starts `buf`, once the header is all there.
    fn message_len(&self, buf: &[u8]) -> Result<Option<usize>, Status> {
        if buf.len() < HEADER {
            return Ok(None);
        }
        match buf[0] {
            0 => {}
            // Nothing here accepts a `grpc-encoding`, so no compressed message is valid.
            1 => {
                return Err(Status::internal(
                    "protocol error: received message with compressed-flag but no grpc-encoding was specified",
                ))
            }
            flag => {
                return Err(Status::internal(format!(
                    "protocol error: received message with invalid compression flag: {flag} (valid flags are 0 and 1)"
                )))
            }
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > self.max_message {
            return Err(Status::out_of_range(format!(
                "Error, decoded message length too large: found {len} bytes, the limit is: {} bytes",
                self.max_message
            )));
        }
        Ok(Some(len))
    }
}

/// What `BatchSender` hands its batches to: the agent's and the Doppler's ingress.
pub trait BatchSink: Send + Sync + 'static {
    /// Consumes the stream; `Ok` answers the call with an empty `BatchSenderResponse`.
    fn batch_sender(&self, batches: MessageStream) -> impl Future<Output = Result<(), Status>> + Send;
}

/// Anything batches can be read from: a [`MessageStream`], or tonic's own stream (the generated
/// service's `batch_sender`, which [`IngressRouter`] leaves unused but the trait requires).
pub trait BatchSource: Send {
    fn next_batch(&mut self) -> impl Future<Output = Result<Option<RawBatch>, Status>> + Send;
}

impl BatchSource for MessageStream {
    async fn next_batch(&mut self) -> Result<Option<RawBatch>, Status> {
        Ok(self.message().await?.map(RawBatch))
    }
}

impl BatchSource for tonic::Streaming<RawBatch> {
    async fn next_batch(&mut self) -> Result<Option<RawBatch>, Status> {
        self.message().await
    }
}

/// The raw `loggregator.v2.Ingress` server with `BatchSender` read through a [`MessageStream`];
/// `Sender` and `Send` go to the generated server.
pub struct IngressRouter<T> {
    generated: IngressServer<T>,
    sink: Arc<T>,
    max_message: usize,
}

impl<T> Clone for IngressRouter<T> {
    fn clone(&self) -> Self {
        Self { generated: self.generated.clone(), sink: Arc::clone(&self.sink), max_message: self.max_message }
    }
}

impl<T: Ingress + BatchSink> IngressRouter<T> {
    pub fn new(service: T) -> Self {
        let sink = Arc::new(service);
        Self { generated: IngressServer::from_arc(Arc::clone(&sink)), sink, max_message: DEFAULT_MAX_MESSAGE }
    }

    /// The largest message accepted on any method (default [`DEFAULT_MAX_MESSAGE`]).
    pub fn max_decoding_message_size(mut self, limit: usize) -> Self {
        self.generated = self.generated.max_decoding_message_size(limit);
        self.max_message = limit;
        self
    }
}

impl<T> NamedService for IngressRouter<T> {
    const NAME: &'static str = "loggregator.v2.Ingress";
}

impl<T: Ingress + BatchSink> Service<http::Request<TonicBody>> for IngressRouter<T> {
    type Response = http::Response<TonicBody>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<TonicBody>) -> Self::Future {
        if request.uri().path() != BATCH_SENDER_PATH {
            return self.generated.call(request);
        }
        let sink = Arc::clone(&self.sink);
        let max_message = self.max_message;
        Box::pin(async move {
            if let Some(status) = unsupported_encoding(request.headers()) {
                return Ok(status);
            }
            let stream = MessageStream::server(request.into_body(), max_message);
            Ok(match BatchSink::batch_sender(&*sink, stream).await {
                // An empty `BatchSenderResponse`: a message header of length 0.
                Ok(()) => unary_response(Bytes::from_static(&[0, 0, 0, 0, 0])),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// tonic's answer to a request compressed with an encoding the server has not enabled (ours enable none).
fn unsupported_encoding(headers: &HeaderMap) -> Option<http::Response<TonicBody>> {
    let encoding = headers.get("grpc-encoding")?.to_str().unwrap_or("?");
    if encoding == "identity" {
        return None;
    }
    let status = Status::unimplemented(format!("Content is compressed with `{encoding}` which isn't supported"));
    let mut response = status.into_http::<TonicBody>();
    response.headers_mut().insert("grpc-accept-encoding", HeaderValue::from_static("identity"));
    Some(response)
}

/// A successful unary response: headers, one framed message, `grpc-status: 0` trailers.
fn unary_response(framed: Bytes) -> http::Response<TonicBody> {
    let mut response = http::Response::new(TonicBody::new(UnaryBody { message: Some(framed), trailers: true }));
    response.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    response
}

struct UnaryBody {
    message: Option<Bytes>,
    trailers: bool,
}

impl Body for UnaryBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(Frame::data(message))));
        }
        if std::mem::take(&mut self.trailers) {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from_static("0"));
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(None)
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && !self.trailers
    }
}

/// Opens `loggregator.v2.Egress/BatchedReceiver` on `channel` and returns its batches as a
/// [`MessageStream`] (each message one encoded `EnvelopeBatch`).
pub async fn batched_receiver(
    channel: &mut tonic::transport::Channel,
    request: &crate::v2::EgressBatchRequest,
    max_message: usize,
) -> Result<MessageStream, Status> {
    let len = prost::Message::encoded_len(request);
    let mut framed = BytesMut::with_capacity(HEADER + len);
    framed.put_u8(0);
    framed.put_u32(len as u32);
    prost::Message::encode_raw(request, &mut framed);
    let mut http_request =
        http::Request::new(TonicBody::new(UnaryBody { message: Some(framed.freeze()), trailers: false }));
    *http_request.method_mut() = http::Method::POST;
    // The channel fills in the scheme and authority of its endpoint, as for tonic's own clients.
    *http_request.uri_mut() = http::Uri::from_static(BATCHED_RECEIVER_PATH);
    let headers = http_request.headers_mut();
    headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(GRPC_CONTENT_TYPE));
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));

    std::future::poll_fn(|cx| channel.poll_ready(cx)).await.map_err(|e| Status::from_error(e.into()))?;
    let response = channel.call(http_request).await.map_err(|e| Status::from_error(e.into()))?;
    // A trailers-only response carries the status in its headers: an error, or an empty stream.
    let trailers_only = Status::from_header_map(response.headers());
    if let Some(status) = &trailers_only {
        if status.code() != Code::Ok {
            return Err(status.clone());
        }
    } else if response.status() != http::StatusCode::OK {
        return Err(status_from_http(response.status()));
    }
    let mut stream = MessageStream::new(response.into_body(), Side::Client, max_message);
    stream.expect_trailers = trailers_only.is_none();
    Ok(stream)
}

/// gRPC's mapping of an HTTP status that came without a `grpc-status`.
fn status_from_http(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("grpc-status header missing, mapped from HTTP status code {}", status.as_u16()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A body that yields the given frames, then ends.
    struct Frames(VecDeque<Result<Frame<Bytes>, Status>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = Status;

        fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn framed(message: &[u8]) -> Vec<u8> {
        let mut out = vec![0];
        out.extend_from_slice(&(message.len() as u32).to_be_bytes());
        out.extend_from_slice(message);
        out
    }

    fn data(bytes: impl Into<Bytes>) -> Result<Frame<Bytes>, Status> {
        Ok(Frame::data(bytes.into()))
    }

    fn trailers(status: &'static str) -> Result<Frame<Bytes>, Status> {
        let mut map = HeaderMap::new();
        map.insert("grpc-status", HeaderValue::from_static(status));
        Ok(Frame::trailers(map))
    }

    fn stream(side: Side, frames: Vec<Result<Frame<Bytes>, Status>>) -> MessageStream<Frames> {
        MessageStream::new(Frames(frames.into()), side, 1024)
    }

    async fn collect(stream: &mut MessageStream<Frames>) -> Result<Vec<Bytes>, Status> {
        let mut out = Vec::new();
        while let Some(message) = stream.message().await? {
            out.push(message);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn messages_within_one_frame_are_slices_of_it() {
        let mut frame = framed(b"first");
        frame.extend(framed(b""));
        frame.extend(framed(b"third message"));
        let frame = Bytes::from(frame);
        let range = frame.as_ptr_range();
        let mut s = stream(Side::Server, vec![data(frame.clone())]);
        let messages = collect(&mut s).await.unwrap();
        assert_eq!(messages, vec![&b"first"[..], b"", b"third message"]);
        // Zero copy: the non-empty messages point into the frame itself.
        for m in messages.iter().filter(|m| !m.is_empty()) {
            assert!(range.contains(&m.as_ptr()), "message was copied");
        }
    }

    #[tokio::test]
    async fn messages_split_over_frames_at_every_offset_are_assembled() {
        let mut wire = framed(b"alpha");
        wire.extend(framed(&[7u8; 300]));
        wire.extend(framed(b"omega"));
        for cut1 in 0..wire.len() {
            for cut2 in [cut1, (cut1 + 3).min(wire.len()), wire.len()] {
                let frames =
                    vec![data(wire[..cut1].to_vec()), data(wire[cut1..cut2].to_vec()), data(wire[cut2..].to_vec())];
                let messages = collect(&mut stream(Side::Server, frames)).await.unwrap();
                assert_eq!(messages, vec![&b"alpha"[..], &[7u8; 300][..], b"omega"], "cuts at {cut1}, {cut2}");
            }
        }
    }

    #[tokio::test]
    async fn after_an_assembled_message_the_rest_of_the_frame_is_sliced_again() {
        let first = framed(&[1u8; 100]);
        let mut second_frame = first[60..].to_vec();
        second_frame.extend(framed(b"sliced"));
        let second_frame = Bytes::from(second_frame);
        let range = second_frame.as_ptr_range();
        let frames = vec![data(first[..60].to_vec()), data(second_frame.clone())];
        let messages = collect(&mut stream(Side::Server, frames)).await.unwrap();
        assert_eq!(messages, vec![&[1u8; 100][..], b"sliced"]);
        assert!(range.contains(&messages[1].as_ptr()), "the message after the assembled one was copied");
    }

    #[tokio::test]
    async fn a_message_cut_short_is_an_error() {
        let wire = framed(b"truncated");
        let err = collect(&mut stream(Side::Server, vec![data(wire[..8].to_vec())])).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        let err = collect(&mut stream(Side::Server, vec![data(wire[..3].to_vec())])).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }

    #[tokio::test]
    async fn oversized_and_compressed_messages_are_refused() {
        let mut big = vec![0u8];
        big.extend_from_slice(&2000u32.to_be_bytes());
        let err = collect(&mut stream(Side::Server, vec![data(big)])).await.unwrap_err();
        assert_eq!(err.code(), Code::OutOfRange);
        assert!(err.message().contains("found 2000 bytes, the limit is: 1024 bytes"), "{}", err.message());

        let mut compressed = framed(b"x");
        compressed[0] = 1;
        let err = collect(&mut stream(Side::Server, vec![data(compressed)])).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal);
        let mut bad_flag = framed(b"x");
        bad_flag[0] = 9;
        let err = collect(&mut stream(Side::Server, vec![data(bad_flag)])).await.unwrap_err();
        assert_eq!(err.code(), Code::Internal);
    }

    #[tokio::test]
    async fn a_client_reads_the_calls_status_from_the_trailers() {
        let ok = collect(&mut stream(Side::Client, vec![data(framed(b"m")), trailers("0")])).await.unwrap();
        assert_eq!(ok, vec![&b"m"[..]]);

        let mut s = stream(Side::Client, vec![data(framed(b"m")), trailers("14")]);
        assert_eq!(s.message().await.unwrap().unwrap(), &b"m"[..]);
        assert_eq!(s.message().await.unwrap_err().code(), Code::Unavailable);

        let err = collect(&mut stream(Side::Client, vec![data(framed(b"m"))])).await.unwrap_err();
        assert_eq!(err.code(), Code::Unknown, "no trailers: the outcome is unknown");
    }

    #[tokio::test]
    async fn a_cancelled_request_ends_a_server_stream_cleanly_but_fails_a_client() {
        let cancelled = || Err(Status::cancelled("stream reset"));
        let got = collect(&mut stream(Side::Server, vec![data(framed(b"kept")), cancelled()])).await.unwrap();
        assert_eq!(got, vec![&b"kept"[..]]);
        let err = collect(&mut stream(Side::Client, vec![data(framed(b"kept")), cancelled()])).await.unwrap_err();
        assert_eq!(err.code(), Code::Cancelled);
    }

    #[test]
    fn compressed_requests_are_refused_as_tonic_refuses_them() {
        let mut headers = HeaderMap::new();
        assert!(unsupported_encoding(&headers).is_none());
        headers.insert("grpc-encoding", HeaderValue::from_static("identity"));
        assert!(unsupported_encoding(&headers).is_none());
        headers.insert("grpc-encoding", HeaderValue::from_static("gzip"));
        let response = unsupported_encoding(&headers).expect("refused");
        let status = Status::from_header_map(response.headers()).expect("trailers-only status");
        assert_eq!(status.code(), Code::Unimplemented);
        assert_eq!(status.message(), "Content is compressed with `gzip` which isn't supported");
        assert_eq!(response.headers()["grpc-accept-encoding"], "identity");
    }

    #[tokio::test]
    async fn the_unary_body_is_one_message_then_ok_trailers() {
        let response = unary_response(Bytes::from_static(&[0, 0, 0, 0, 0]));
        assert_eq!(response.headers()[http::header::CONTENT_TYPE], GRPC_CONTENT_TYPE);
        let mut body = response.into_body();
        let first = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), &[0u8, 0, 0, 0, 0][..]);
        let second = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.unwrap().unwrap();
        assert_eq!(second.into_trailers().unwrap()["grpc-status"], "0");
        assert!(std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await.is_none());
    }
}
