//! The console's HTTP client towards the pipeline's endpoints: every call has a deadline, every
//! answer read into memory has a size limit, and the caller's `Authorization` header is the only
//! one passed on.

use std::time::Duration;

use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::error::{ConsoleError, UpstreamName};

/// An upstream answer read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// A pooled HTTP/1 client with the console's bounds.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// Bounds a whole call: connecting, the answer's head and, for [`Upstream::get`], its body.
    timeout: Duration,
}

impl Upstream {
    pub fn new(timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build(connector);
        Self { client, timeout }
    }

    /// `GET url`, its body read whole up to `max_bytes`.
    pub async fn get(
        &self,
        upstream: UpstreamName,
        url: &str,
        authorization: Option<&HeaderValue>,
        max_bytes: usize,
    ) -> Result<Answer, ConsoleError> {
        let call = async {
            let response = self.send(upstream, url, authorization).await?;
            let status = response.status();
            let content_type = response.headers().get(header::CONTENT_TYPE).cloned();
            let body = read_limited(upstream, response.into_body(), max_bytes).await?;
            Ok::<_, ConsoleError>(Answer { status, content_type, body })
        };
        tokio::time::timeout(self.timeout, call)
            .await
            .map_err(|_| ConsoleError::UpstreamTimeout { upstream, after: self.timeout })?
    }

    /// `GET url` for a streamed answer: only its head must come within the timeout.
    pub async fn open(
        &self,
        upstream: UpstreamName,
        url: &str,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, ConsoleError> {
        tokio::time::timeout(self.timeout, self.send(upstream, url, authorization))
            .await
            .map_err(|_| ConsoleError::UpstreamTimeout { upstream, after: self.timeout })?
    }

    async fn send(
        &self,
        upstream: UpstreamName,
        url: &str,
        authorization: Option<&HeaderValue>,
    ) -> Result<Response<Incoming>, ConsoleError> {
        let mut request = Request::get(url);
        if let Some(value) = authorization {
            request = request.header(header::AUTHORIZATION, value.clone());
        }
        // The URL is built from configured bases and percent-encoded parameters; a failure here is
        // still reported, not assumed away.
        let request = request.body(Empty::new()).map_err(|error| ConsoleError::UpstreamUnreachable {
            upstream,
            reason: format!("bad url {url}: {error}"),
        })?;
        self.client
            .request(request)
            .await
            .map_err(|error| ConsoleError::UpstreamUnreachable { upstream, reason: error_chain(&error) })
    }
}

/// Reads `body` whole, refusing more than `max_bytes`.
pub async fn read_limited(upstream: UpstreamName, body: Incoming, max_bytes: usize) -> Result<Bytes, ConsoleError> {
    match Limited::new(body, max_bytes).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(error) if error.is::<http_body_util::LengthLimitError>() => {
            Err(ConsoleError::UpstreamTooLarge { upstream, limit: max_bytes })
        }
        Err(error) => {
            Err(ConsoleError::UpstreamUnreachable { upstream, reason: format!("reading the answer: {error}") })
        }
    }
}

/// hyper's client errors say "client error (Connect)" and keep the cause (connection refused)
/// underneath: name both.
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
