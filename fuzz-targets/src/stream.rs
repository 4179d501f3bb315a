//! gRPC message framing read off an HTTP/2 body (`proto::stream::MessageStream`), for any split of
//! the bytes into DATA frames, against a model that reads the concatenated bytes in one go: the
//! messages and the final outcome (clean end, or which error) must not depend on the split.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use loggregator_proto::stream::MessageStream;
use tonic::{Code, Status};

use crate::split;

/// The largest message the stream under test accepts: small, so the limit is reached.
const MAX_MESSAGE: usize = 1024;

/// How the body ends after its DATA frames (two bits of the input's options).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The body just ends.
    Eof,
    /// Trailers, as a client's request may carry.
    Trailers,
    /// The client reset the stream (a server treats that as the end of the stream).
    Cancelled,
    /// A transport error.
    Broken,
}

struct Frames(VecDeque<Result<Frame<Bytes>, Status>>);

impl Body for Frames {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(mut self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.pop_front())
    }
}

/// The input's payload as DATA frames (cut as `split` says), then the ending its options pick.
pub fn fuzz(data: &[u8]) {
    let ending = match split::options(data) & 3 {
        0 => Ending::Eof,
        1 => Ending::Trailers,
        2 => Ending::Cancelled,
        _ => Ending::Broken,
    };
    let mut frames: VecDeque<_> =
        split::chunks(data).into_iter().map(|c| Ok(Frame::data(Bytes::copy_from_slice(c)))).collect();
    match ending {
        Ending::Eof => {}
        Ending::Trailers => frames.push_back(Ok(Frame::trailers(HeaderMap::new()))),
        Ending::Cancelled => frames.push_back(Err(Status::cancelled("reset"))),
        Ending::Broken => frames.push_back(Err(Status::unavailable("broken pipe"))),
    }
    let mut stream = MessageStream::server(Frames(frames), MAX_MESSAGE);
    let mut messages = Vec::new();
    let outcome = loop {
        match ready(stream.message()) {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => break Ok(()),
            Err(status) => break Err(status.code()),
        }
        assert!(messages.len() <= data.len() / 5 + 1, "more messages than the input has headers");
    };
    let (expected, expected_outcome) = model(split::payload(data), ending);
    assert_eq!(messages, expected, "messages depend on how the body was framed");
    assert_eq!(outcome, expected_outcome, "the outcome depends on how the body was framed");
    // After the end, the stream stays ended.
    if outcome.is_ok() {
        assert!(matches!(ready(stream.message()), Ok(None)));
    }
}

/// What a server reads from `wire` in one piece: the length-prefixed messages, then the outcome.
fn model(wire: &[u8], ending: Ending) -> (Vec<Bytes>, Result<(), Code>) {
    let mut messages = Vec::new();
    let mut rest = wire;
    loop {
        if rest.len() >= 5 {
            if rest[0] != 0 {
                return (messages, Err(Code::Internal));
            }
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if len > MAX_MESSAGE {
                return (messages, Err(Code::OutOfRange));
            }
            if rest.len() >= 5 + len {
                messages.push(Bytes::copy_from_slice(&rest[5..5 + len]));
                rest = &rest[5 + len..];
                continue;
            }
        }
        let outcome = match ending {
            Ending::Broken => Err(Code::Unavailable),
            _ if rest.is_empty() => Ok(()),
            _ => Err(Code::Internal),
        };
        return (messages, outcome);
    }
}

/// Runs a future that never waits (the body is always ready).
fn ready<F: std::future::Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    let mut cx = Context::from_waker(Waker::noop());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("a stream over a ready body waited"),
    }
}
