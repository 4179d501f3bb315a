//! A reader of the RLP gateway's Server-Sent Events (PROTOCOLS.md §5.4): `data:` lines of protojson
//! batches, `event: heartbeat` every 15 s of silence, `event: closing` at the stream timeout.

use anyhow::{anyhow, bail};
use futures::StreamExt as _;

/// The longest event accepted; the gateway writes one batch (at most a few MiB) per event.
const MAX_EVENT: usize = 64 * 1024 * 1024;

/// One dispatched event.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A `data:` event with no `event:` name: one batch of envelopes as protojson.
    Data(String),
    Heartbeat,
    /// The gateway ends the stream after its timeout; reconnect.
    Closing,
    /// Any other named event, ignored.
    Other,
}

/// Splits a byte stream into events.
#[derive(Default)]
pub struct Parser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl Parser {
    /// Feeds bytes; returns the events they complete.
    pub fn feed(&mut self, bytes: &[u8]) -> anyhow::Result<Vec<Event>> {
        self.buffer.extend_from_slice(bytes);
        let mut events = Vec::new();
        let mut start = 0;
        while let Some(nl) = self.buffer[start..].iter().position(|&b| b == b'\n') {
            let line = &self.buffer[start..start + nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let line = std::str::from_utf8(line).map_err(|_| anyhow!("the event stream is not UTF-8"))?.to_string();
            start += nl + 1;
            if let Some(event) = self.line(&line) {
                events.push(event);
            }
        }
        self.buffer.drain(..start);
        let pending: usize = self.buffer.len() + self.data.iter().map(String::len).sum::<usize>();
        if pending > MAX_EVENT {
            bail!("an event of the stream is over {} MiB", MAX_EVENT >> 20);
        }
        Ok(events)
    }

    fn line(&mut self, line: &str) -> Option<Event> {
        if line.is_empty() {
            let data = std::mem::take(&mut self.data).join("\n");
            return match self.event.take().as_deref() {
                None | Some("message") if data.is_empty() => None,
                None | Some("message") => Some(Event::Data(data)),
                Some("heartbeat") => Some(Event::Heartbeat),
                Some("closing") => Some(Event::Closing),
                Some(_) => Some(Event::Other),
            };
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').map_or((line, ""), |(f, v)| (f, v.strip_prefix(' ').unwrap_or(v)));
        match field {
            "data" => self.data.push(value.to_string()),
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
        None
    }
}

/// The events of one response, read as they arrive.
pub struct EventStream {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    parser: Parser,
    ready: std::collections::VecDeque<Event>,
    idle: std::time::Duration,
}

impl EventStream {
    /// Fails a read when nothing (not even a heartbeat) arrives for `idle`.
    pub fn new(response: reqwest::Response, idle: std::time::Duration) -> Self {
        Self { body: Box::pin(response.bytes_stream()), parser: Parser::default(), ready: Default::default(), idle }
    }

    /// The next event; `None` when the server ended the stream.
    pub async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        loop {
            if let Some(event) = self.ready.pop_front() {
                return Ok(Some(event));
            }
            let chunk = match tokio::time::timeout(self.idle, self.body.next()).await {
                Err(_) => bail!("no event, not even a heartbeat, for {} s", self.idle.as_secs()),
                Ok(None) => return Ok(None),
                Ok(Some(chunk)) => chunk.map_err(|e| anyhow!("reading the event stream: {e}"))?,
            };
            self.ready.extend(self.parser.feed(&chunk)?);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_as_the_gateway_writes_them() {
        let mut p = Parser::default();
        let stream = b"data: {\"batch\":[]}\n\nevent: heartbeat\ndata: 1700000000\n\nevent: closing\r\ndata: closing due to stream timeout\n\n";
        let mut events = Vec::new();
        for chunk in stream.chunks(7) {
            events.extend(p.feed(chunk).unwrap());
        }
        assert_eq!(events, [Event::Data("{\"batch\":[]}".into()), Event::Heartbeat, Event::Closing]);
    }

    #[test]
    fn comments_and_unknown_fields_are_ignored_and_oversized_events_refused() {
        let mut p = Parser::default();
        assert_eq!(p.feed(b": hi\nid: 3\ndata: a\ndata: b\n\n").unwrap(), [Event::Data("a\nb".into())]);
        let mut p = Parser::default();
        let big = vec![b'x'; MAX_EVENT + 1];
        assert!(p.feed(b"data: ").is_ok());
        assert!(p.feed(&big).is_err());
    }
}
