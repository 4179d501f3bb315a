//! Subscribers of the egress edge's HTTP side: the RLP gateway's Server-Sent Events
//! (`GET /v2/read`) and the traffic controller's v1 WebSockets (`/firehose/{id}`,
//! `/apps/{guid}/stream`). Like the gRPC subscribers they record, per envelope, the latency
//! (now − envelope timestamp) and whether it is this run's, through a [`Recorder`].
//!
//! Each reads no more of an envelope than its timestamp and source id: [`json_stamps`] scans a
//! protojson batch without building a value, [`v1_stamp`] walks a dropsonde envelope's fields.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use futures::StreamExt;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use loggregator_proto::wire::{read_key, read_len, read_varint, skip_field, WireType};
use loggregator_proto::ScanError;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message as Ws;
use tokio_util::sync::CancellationToken;

use super::subscriber::{Recorder, SubStats};

/// Which edge endpoint a subscriber reads.
#[derive(Clone, Debug)]
pub enum Edge {
    /// `GET http://{addr}/v2/read?log&counter&gauge&timer&event[&shard_id=..]`.
    Sse { shard_id: String },
    /// `ws://{addr}/firehose/{subscription_id}`.
    Firehose { subscription_id: String },
    /// `ws://{addr}/apps/{guid}/stream`.
    App { guid: String },
}

impl Edge {
    pub fn url(&self, addr: &str) -> String {
        match self {
            Edge::Sse { shard_id } if shard_id.is_empty() => {
                format!("http://{addr}/v2/read?log&counter&gauge&timer&event")
            }
            Edge::Sse { shard_id } => {
                format!("http://{addr}/v2/read?log&counter&gauge&timer&event&shard_id={shard_id}")
            }
            Edge::Firehose { subscription_id } => format!("ws://{addr}/firehose/{subscription_id}"),
            Edge::App { guid } => format!("ws://{addr}/apps/{guid}/stream"),
        }
    }
}

/// One SSE or WebSocket subscriber's stream from one edge address.
pub struct EdgeConnection {
    pub subscriber: usize,
    pub addr: String,
    pub edge: Edge,
    pub stats: Arc<SubStats>,
    pub stop: CancellationToken,
    pub source_prefix: String,
}

/// Why a stream ended.
enum End {
    Stopped,
    /// The server ended it (an SSE `closing` event, a WebSocket close): reconnect.
    Ended,
    Failed(String),
}

impl EdgeConnection {
    /// Connects (reporting the first attempt on `ready`: the response headers or the WebSocket
    /// upgrade, which both edges send at once), then reads until `stop`, reconnecting after 200 ms
    /// when a stream ends or fails. Returns the latency histogram.
    pub async fn run(self, ready: oneshot::Sender<Result<(), String>>) -> Histogram<u64> {
        let mut recorder = Recorder::new(Arc::clone(&self.stats), self.source_prefix.clone());
        let url = self.edge.url(&self.addr);
        let mut ready = Some(ready);
        while !self.stop.is_cancelled() {
            let end = match self.edge {
                Edge::Sse { .. } => self.sse(&url, &mut ready, &mut recorder).await,
                Edge::Firehose { .. } | Edge::App { .. } => self.websocket(&url, &mut ready, &mut recorder).await,
            };
            match end {
                End::Stopped => break,
                End::Ended => {}
                End::Failed(error) => {
                    self.stats.errors.inc();
                    let message = format!("subscriber {} at {url}: {error}", self.subscriber);
                    match ready.take() {
                        Some(ready) => {
                            let _ = ready.send(Err(message));
                            break;
                        }
                        None => eprintln!("loadgen: {message}"),
                    }
                }
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        recorder.histogram
    }

    async fn sse(
        &self,
        url: &str,
        ready: &mut Option<oneshot::Sender<Result<(), String>>>,
        recorder: &mut Recorder,
    ) -> End {
        let client = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
        let uri: http::Uri = match url.parse() {
            Ok(uri) => uri,
            Err(error) => return End::Failed(format!("invalid URL: {error}")),
        };
        let response = tokio::select! {
            _ = self.stop.cancelled() => return End::Stopped,
            response = client.get(uri) => response,
        };
        let response = match response {
            Ok(response) => response,
            Err(error) => return End::Failed(format!("{error}")),
        };
        if response.status() != http::StatusCode::OK {
            let status = response.status();
            let body = response.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
            return End::Failed(format!("{status}: {}", String::from_utf8_lossy(&body)));
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        let mut body = response.into_body();
        let mut lines = SseLines::default();
        loop {
            let frame = tokio::select! {
                _ = self.stop.cancelled() => return End::Stopped,
                frame = body.frame() => frame,
            };
            let data = match frame {
                None => return End::Ended,
                Some(Err(error)) => return End::Failed(format!("stream failed: {error}")),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => data,
                    Err(_) => continue,
                },
            };
            lines.extend(&data);
            while let Some(event) = lines.next_event() {
                match event {
                    SseEvent::Batch(line) => {
                        let (stamps, malformed) = json_stamps(&line);
                        recorder
                            .batch(stamps.into_iter().map(Ok).chain(malformed.then_some(Err(ScanError::Truncated))));
                    }
                    SseEvent::Closing => return End::Ended,
                    SseEvent::Other => {}
                }
            }
        }
    }

    async fn websocket(
        &self,
        url: &str,
        ready: &mut Option<oneshot::Sender<Result<(), String>>>,
        recorder: &mut Recorder,
    ) -> End {
        let connected = tokio::select! {
            _ = self.stop.cancelled() => return End::Stopped,
            connected = tokio_tungstenite::connect_async(url) => connected,
        };
        let mut socket = match connected {
            Ok((socket, _)) => socket,
            Err(error) => return End::Failed(format!("{error}")),
        };
        if let Some(ready) = ready.take() {
            let _ = ready.send(Ok(()));
        }
        loop {
            let message = tokio::select! {
                _ = self.stop.cancelled() => {
                    let _ = socket.close(None).await;
                    return End::Stopped;
                }
                message = socket.next() => message,
            };
            match message {
                None | Some(Ok(Ws::Close(_))) => return End::Ended,
                Some(Err(error)) => return End::Failed(format!("stream failed: {error}")),
                Some(Ok(Ws::Binary(frame))) => recorder.batch([v1_stamp(&frame)]),
                // Pings are answered by tungstenite as it reads; text frames carry nothing of ours.
                Some(Ok(_)) => {}
            }
        }
    }
}

/// What an SSE stream says, event by event.
#[derive(Debug, PartialEq)]
enum SseEvent {
    /// A `data:` line of a plain message: `{"batch":[...]}` (without the `data: ` prefix).
    Batch(Bytes),
    /// `event: closing`: the stream ends, the client should reconnect.
    Closing,
    /// `event: heartbeat` and its data, or anything else.
    Other,
}

/// Splits an SSE body into lines as it arrives (a line may span body frames).
#[derive(Default)]
struct SseLines {
    buffer: BytesMut,
    /// The current event's `event:` name, until its blank line.
    event: Option<Bytes>,
}

impl SseLines {
    fn extend(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
    }

    fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            let end = self.buffer.iter().position(|&b| b == b'\n')?;
            let mut line = self.buffer.split_to(end + 1).freeze();
            line.truncate(end);
            if line.last() == Some(&b'\r') {
                line.truncate(end - 1);
            }
            if line.is_empty() {
                self.event = None;
                continue;
            }
            if let Some(name) = line.strip_prefix(b"event:") {
                let name = name.trim_ascii();
                if name == b"closing" {
                    return Some(SseEvent::Closing);
                }
                self.event = Some(Bytes::copy_from_slice(name));
                continue;
            }
            if line.starts_with(b"data:") {
                if self.event.is_some() {
                    return Some(SseEvent::Other);
                }
                let mut data = line;
                data.advance(5);
                if data.first() == Some(&b' ') {
                    data.advance(1);
                }
                return Some(SseEvent::Batch(data));
            }
            return Some(SseEvent::Other);
        }
    }
}

/// Which field of an envelope object a key names.
#[derive(Clone, Copy)]
enum Key {
    Timestamp,
    SourceId,
    Other,
}

/// The `(source_id, timestamp)` of each envelope of a protojson `{"batch":[{...},...]}`, and
/// whether the text was malformed (an envelope without a timestamp, an unterminated string).
///
/// A cheap scan rather than a parse: it tracks nesting and strings, and looks only at the keys of
/// the envelope objects (depth 3), so a tag named `timestamp` (depth 4) is not mistaken for the
/// envelope's. A string followed by `:` is a key; the string after a `timestamp` or `source_id`
/// key is its value (protojson writes an int64 as a quoted decimal).
pub fn json_stamps(text: &[u8]) -> (Vec<(&[u8], u64)>, bool) {
    let mut out = Vec::new();
    let (mut depth, mut i) = (0usize, 0usize);
    let (mut timestamp, mut source_id): (Option<u64>, &[u8]) = (None, b"");
    let mut wanted: Option<Key> = None;
    while i < text.len() {
        match text[i] {
            b'"' => {
                let start = i + 1;
                let mut end = start;
                while end < text.len() && text[end] != b'"' {
                    end += if text[end] == b'\\' { 2 } else { 1 };
                }
                if end >= text.len() {
                    return (out, true);
                }
                let string = &text[start..end];
                i = end + 1;
                if depth != 3 {
                    continue;
                }
                match wanted.take() {
                    Some(Key::Timestamp) => match std::str::from_utf8(string).ok().and_then(|s| s.parse().ok()) {
                        Some(value) => timestamp = Some(value),
                        None => return (out, true),
                    },
                    Some(Key::SourceId) => source_id = string,
                    Some(Key::Other) => {}
                    None => {
                        while i < text.len() && text[i].is_ascii_whitespace() {
                            i += 1;
                        }
                        if text.get(i) == Some(&b':') {
                            i += 1;
                            wanted = Some(match string {
                                b"timestamp" => Key::Timestamp,
                                b"source_id" => Key::SourceId,
                                _ => Key::Other,
                            });
                        }
                    }
                }
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                wanted = None;
                if depth == 3 {
                    (timestamp, source_id) = (None, b"");
                }
            }
            b'}' | b']' => {
                if depth == 3 {
                    match timestamp {
                        Some(timestamp) => out.push((source_id, timestamp)),
                        None => return (out, true),
                    }
                }
                depth = depth.saturating_sub(1);
            }
            b',' => wanted = None,
            _ => {}
        }
        i += 1;
    }
    (out, depth != 0)
}

/// The source id and timestamp (field 6, nanoseconds) of an encoded dropsonde v1 `Envelope`. The
/// source id of a `LogMessage` (field 8) is its `app_id` (field 4), which the traffic controller
/// fills from the v2 source id; of the other types, the `source_id` tag (field 17).
pub fn v1_stamp(envelope: &[u8]) -> Result<(&[u8], u64), ScanError> {
    let mut pos = 0;
    let mut timestamp = None;
    let (mut app_id, mut tag): (Option<&[u8]>, Option<&[u8]>) = (None, None);
    while pos < envelope.len() {
        match read_key(envelope, &mut pos)? {
            (6, WireType::Varint) => timestamp = Some(read_varint(envelope, &mut pos)?),
            (8, WireType::Len) => {
                let log = &envelope[read_len(envelope, &mut pos)?];
                app_id = string_field(log, 4)?.or(app_id);
            }
            (17, WireType::Len) => {
                let entry = &envelope[read_len(envelope, &mut pos)?];
                if string_field(entry, 1)? == Some(b"source_id") {
                    tag = string_field(entry, 2)?;
                }
            }
            (field, wire_type) => skip_field(envelope, &mut pos, field, wire_type)?,
        }
    }
    Ok((app_id.or(tag).unwrap_or_default(), timestamp.unwrap_or_default()))
}

/// The last length-delimited field `number` of a message, if any.
fn string_field(message: &[u8], number: u32) -> Result<Option<&[u8]>, ScanError> {
    let (mut pos, mut found) = (0, None);
    while pos < message.len() {
        match read_key(message, &mut pos)? {
            (field, WireType::Len) if field == number => found = Some(&message[read_len(message, &mut pos)?]),
            (field, wire_type) => skip_field(message, &mut pos, field, wire_type)?,
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests;
