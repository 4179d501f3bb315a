//! The syslog server (§6.10): RFC 5424 over TCP (optionally TLS with client certificates), framed by
//! octet counting (`"<length> <message>"`, RFC 6587), or newline-terminated when a frame starts with
//! `<` (non-transparent framing). Messages larger than `max_message_bytes` close the connection; so
//! does `idle_timeout` of silence. Each read's complete messages are converted and sent as one batch
//! through [`Service::send`], so a cluster forwards them to their owners.

pub mod rfc5424;

use std::sync::Arc;

use bytes::{Buf, BytesMut};
use loggregator_proto::logcache::v1::SendRequest;
use loggregator_proto::v2::{Envelope, EnvelopeBatch};
use plumbing::{Counter, Registry};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::SyslogConfig;
use crate::service::{now_nanos, Service};

/// Counters of the syslog server.
#[derive(Clone, Debug, Default)]
pub struct SyslogMetrics {
    /// Messages converted and stored.
    pub received: Counter,
    /// Messages that did not parse or convert.
    pub invalid: Counter,
    /// Connections closed for a protocol violation (bad frame, oversized message).
    pub closed: Counter,
}

impl SyslogMetrics {
    pub fn register(registry: &Registry) -> Self {
        Self {
            // metric-documentation: syslog messages converted to envelopes.
            received: registry.counter("syslog_received", "Syslog messages converted to envelopes", &[]),
            // metric-documentation: syslog messages refused (not RFC 5424, or missing APP-NAME/PROCID).
            invalid: registry.counter("dropped", "Envelopes dropped by log-cache", &[("direction", "syslog")]),
            // metric-documentation: syslog connections closed for a framing violation.
            closed: registry.counter("syslog_bad_frames", "Syslog connections closed for bad framing", &[]),
        }
    }
}

/// Why a connection was closed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("invalid octet count")]
    BadLength,
    #[error("message of {0} bytes exceeds the maximum")]
    TooLarge(usize),
}

/// Splits complete frames off the front of `buffer`; leaves an incomplete one in place.
pub fn next_frame(buffer: &mut BytesMut, max: usize) -> Result<Option<BytesMut>, FrameError> {
    let Some(&first) = buffer.first() else {
        return Ok(None);
    };
    if first == b'<' {
        // Non-transparent framing: up to the newline.
        return match buffer.iter().position(|&b| b == b'\n') {
            Some(end) if end > max => Err(FrameError::TooLarge(end)),
            Some(end) => {
                let frame = buffer.split_to(end);
                buffer.advance(1);
                Ok(Some(frame))
            }
            None if buffer.len() > max => Err(FrameError::TooLarge(buffer.len())),
            None => Ok(None),
        };
    }
    // Octet counting: at most 6 digits (65 KiB fits), then a space.
    let digits = buffer.iter().take(8).take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 || digits > 7 {
        return Err(FrameError::BadLength);
    }
    let Some(&separator) = buffer.get(digits) else {
        return Ok(None);
    };
    if separator != b' ' {
        return Err(FrameError::BadLength);
    }
    let length: usize =
        std::str::from_utf8(&buffer[..digits]).ok().and_then(|s| s.parse().ok()).ok_or(FrameError::BadLength)?;
    if length > max {
        return Err(FrameError::TooLarge(length));
    }
    if buffer.len() < digits + 1 + length {
        buffer.reserve(digits + 1 + length - buffer.len());
        return Ok(None);
    }
    buffer.advance(digits + 1);
    Ok(Some(buffer.split_to(length)))
}

/// The syslog server.
pub struct SyslogServer {
    config: SyslogConfig,
    service: Arc<Service>,
    metrics: SyslogMetrics,
    tls: Option<tokio_rustls::TlsAcceptor>,
}

impl SyslogServer {
    pub fn new(
        config: SyslogConfig,
        service: Arc<Service>,
        metrics: SyslogMetrics,
    ) -> Result<Self, plumbing::tls::TlsError> {
        let tls = match &config.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(files.rustls_server_config()?)),
            None => None,
        };
        Ok(Self { config, service, metrics, tls })
    }

    /// Accepts connections until `token` is cancelled; each connection is a task of `tracker`.
    pub async fn run(self, listener: TcpListener, token: CancellationToken, tracker: TaskTracker) {
        let server = Arc::new(self);
        let limit = Arc::new(Semaphore::new(server.config.max_connections.max(1)));
        loop {
            let permit = tokio::select! {
                permit = Arc::clone(&limit).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = token.cancelled() => return,
            };
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = token.cancelled() => return,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Usually EMFILE: back off briefly rather than spin.
                    tracing::warn!(error = %e, "syslog accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let server = Arc::clone(&server);
            let token = token.clone();
            tracker.spawn(async move {
                let _permit = permit;
                let result = match &server.tls {
                    // A peer that connects and never finishes its handshake is cut off like one
                    // that never sends a message: it holds one of `max_connections` meanwhile.
                    Some(acceptor) => {
                        match tokio::time::timeout(server.config.idle_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => server.handle(tls, &token).await,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "syslog TLS handshake failed");
                                Ok(())
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "syslog TLS handshake timed out");
                                Ok(())
                            }
                        }
                    }
                    None => server.handle(stream, &token).await,
                };
                if let Err(e) = result {
                    server.metrics.closed.inc();
                    tracing::debug!(%peer, error = %e, "syslog connection closed");
                }
            });
        }
    }

    async fn handle(&self, mut stream: impl AsyncRead + Unpin, token: &CancellationToken) -> Result<(), FrameError> {
        let max = self.config.max_message_bytes;
        let mut buffer = BytesMut::with_capacity(16 * 1024);
        // Only a complete message moves the idle deadline: a peer trickling a byte now and then
        // never completes one and is cut off as if silent.
        let mut idle_deadline = tokio::time::Instant::now() + self.config.idle_timeout;
        loop {
            let read = tokio::select! {
                read = tokio::time::timeout_at(idle_deadline, stream.read_buf(&mut buffer)) => read,
                _ = token.cancelled() => return Ok(()),
            };
            match read {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Ok(()),
                Ok(Ok(_)) => {}
            }
            let mut envelopes = Vec::new();
            let mut failure = None;
            loop {
                match next_frame(&mut buffer, max) {
                    Ok(Some(frame)) => {
                        idle_deadline = tokio::time::Instant::now() + self.config.idle_timeout;
                        if let Some(envelope) = self.convert(&frame) {
                            envelopes.push(envelope);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            if !envelopes.is_empty() {
                self.metrics.received.add(envelopes.len() as u64);
                let request = SendRequest { envelopes: Some(EnvelopeBatch { batch: envelopes }), local_only: false };
                if let Err(e) = self.service.send(request).await {
                    tracing::warn!(error = %e, "syslog envelopes not stored");
                }
            }
            if let Some(e) = failure {
                return Err(e);
            }
        }
    }

    fn convert(&self, frame: &[u8]) -> Option<Envelope> {
        match rfc5424::parse(frame).and_then(|m| rfc5424::to_envelope(m, now_nanos())) {
            Ok(envelope) => Some(envelope),
            Err(e) => {
                self.metrics.invalid.inc();
                tracing::debug!(error = %e, "invalid syslog message");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(input: &[u8], max: usize) -> (Vec<Vec<u8>>, Result<(), FrameError>, usize) {
        let mut buffer = BytesMut::from(input);
        let mut out = Vec::new();
        loop {
            match next_frame(&mut buffer, max) {
                Ok(Some(frame)) => out.push(frame.to_vec()),
                Ok(None) => return (out, Ok(()), buffer.len()),
                Err(e) => return (out, Err(e), buffer.len()),
            }
        }
    }

    #[test]
    fn octet_counted_frames_split_exactly() {
        let (out, result, left) = frames(b"5 hello3 abc4 ab", 100);
        assert_eq!(out, vec![b"hello".to_vec(), b"abc".to_vec()]);
        assert_eq!(result, Ok(()));
        assert_eq!(left, 4, "the incomplete frame waits for more bytes");
    }

    #[test]
    fn newline_framing_when_a_frame_starts_with_a_pri() {
        let (out, result, _) = frames(b"<14>1 a\n<14>1 b\n<14>", 100);
        assert_eq!(out, vec![b"<14>1 a".to_vec(), b"<14>1 b".to_vec()]);
        assert_eq!(result, Ok(()));
    }

    #[test]
    fn oversized_or_garbled_frames_are_errors() {
        assert_eq!(frames(b"70000 x", 65 * 1024).1, Err(FrameError::TooLarge(70000)));
        assert_eq!(frames(b"abc", 100).1, Err(FrameError::BadLength));
        assert_eq!(frames(b"12x", 100).1, Err(FrameError::BadLength));
        assert_eq!(frames(b"12345678 ", 100).1, Err(FrameError::BadLength));
    }
}
