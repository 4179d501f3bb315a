//! The HTTP side of the client commands: one `reqwest` client with the caller's token, and errors
//! that name the endpoint and say what went wrong in one line (unreachable, token refused, the
//! server's own message).

use std::time::Duration;

use anyhow::{anyhow, Context as _};
use clap::Args;

/// Flags every command that talks HTTP shares.
#[derive(Args, Debug, Clone)]
pub struct HttpArgs {
    /// OAuth token sent as `Authorization: bearer <token>`, as the cf CLI sends `cf oauth-token`'s
    /// output (a leading `bearer ` is kept as given).
    #[arg(long, env = "LOGGREGATOR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of a CA to trust for `https://` endpoints, besides the usual web roots.
    #[arg(long, env = "LOGGREGATOR_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Accept any certificate of `https://` endpoints (for test deployments only).
    #[arg(long)]
    pub skip_ssl_validation: bool,
}

/// An HTTP client for the pipeline's public endpoints.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
    authorization: Option<String>,
}

/// The value of the `Authorization` header for a token: as given when it already says `bearer`
/// (what `cf oauth-token` prints), else with the `bearer ` prefix the cf CLI adds.
pub fn authorization(token: &str) -> String {
    let token = token.trim();
    if token.len() > 7 && token[..7].eq_ignore_ascii_case("bearer ") {
        token.to_string()
    } else {
        format!("bearer {token}")
    }
}

impl Http {
    pub fn new(args: &HttpArgs) -> anyhow::Result<Self> {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .user_agent(concat!("loggregator-cli/", env!("CARGO_PKG_VERSION")))
            .danger_accept_invalid_certs(args.skip_ssl_validation);
        if let Some(path) = &args.ca_file {
            let pem = std::fs::read(path).with_context(|| format!("reading CA file {}", path.display()))?;
            for cert in reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("invalid PEM in CA file {}", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        let client = builder.build().context("building the HTTP client")?;
        Ok(Self { client, authorization: args.token.as_deref().filter(|t| !t.trim().is_empty()).map(authorization) })
    }

    /// A GET with the token; `what` names the endpoint in errors ("log-cache", "RLP gateway").
    pub async fn get(&self, what: &str, url: &str, timeout: Option<Duration>) -> anyhow::Result<reqwest::Response> {
        let mut request = self.client.get(url);
        if let Some(auth) = &self.authorization {
            request = request.header(reqwest::header::AUTHORIZATION, auth);
        }
        if let Some(timeout) = timeout {
            request = request.timeout(timeout);
        }
        let response = request.send().await.map_err(|e| unreachable_error(what, url, &e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(status_error(what, url, status, &body, self.authorization.is_some()))
    }

    /// A GET answered with JSON.
    pub async fn get_json(&self, what: &str, url: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.get(what, url, Some(Duration::from_secs(30))).await?;
        let body = response.text().await.map_err(|e| anyhow!("{what} at {}: reading the answer: {e}", origin(url)))?;
        serde_json::from_str(&body)
            .map_err(|e| anyhow!("{what} at {} answered something that is not JSON: {e}", origin(url)))
    }

    /// A GET answered with text.
    pub async fn get_text(&self, what: &str, url: &str) -> anyhow::Result<String> {
        let response = self.get(what, url, Some(Duration::from_secs(30))).await?;
        response.text().await.map_err(|e| anyhow!("{what} at {}: reading the answer: {e}", origin(url)))
    }
}

/// `scheme://host:port` of a URL, for messages (the query may be long).
fn origin(url: &str) -> &str {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    url[after_scheme..].find('/').map_or(url, |i| &url[..after_scheme + i])
}

fn unreachable_error(what: &str, url: &str, error: &reqwest::Error) -> anyhow::Error {
    // reqwest's Display is "error sending request for url (...)"; the cause says why.
    let mut cause = std::error::Error::source(error);
    let mut why = None;
    while let Some(e) = cause {
        why = Some(e.to_string());
        cause = e.source();
    }
    let why = if error.is_timeout() { "timed out".to_string() } else { why.unwrap_or_else(|| error.to_string()) };
    anyhow!("cannot reach {what} at {}: {why}", origin(url))
}

/// One line for an error status: the server's own message when its body carries one (PromQL's
/// `error`, grpc-gateway's `message`, the gateway's `message`), and what a 401/403/404 means for the
/// token (the auth proxies answer a refused token with 404 and an empty body).
fn status_error(what: &str, url: &str, status: reqwest::StatusCode, body: &str, had_token: bool) -> anyhow::Error {
    let message = status_message(what, url, status, body, had_token);
    anyhow::Error::new(StatusError { status: status.as_u16(), message })
}

/// An endpoint answered with an error status; the message is the one line to print.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StatusError {
    pub status: u16,
    message: String,
}

fn status_message(what: &str, url: &str, status: reqwest::StatusCode, body: &str, had_token: bool) -> String {
    let message = serde_json::from_str::<serde_json::Value>(body.trim()).ok().and_then(|json| {
        ["error", "message"].iter().find_map(|key| json.get(key).and_then(|v| v.as_str()).map(str::to_string))
    });
    let at = origin(url);
    let code = status.as_u16();
    match (code, message) {
        (401 | 403, m) => format!(
            "{what} at {at} refused the token (HTTP {code}{}){}",
            m.map(|m| format!(": {m}")).unwrap_or_default(),
            if had_token { "" } else { "; pass one with --token or LOGGREGATOR_TOKEN" }
        ),
        (404, None) if body.trim().is_empty() => format!(
            "{what} at {at} answered 404 Not Found: no such source, or the token{} may not read it",
            if had_token { "" } else { " (none given: --token or LOGGREGATOR_TOKEN)" }
        ),
        (_, Some(m)) => format!("{what} at {at}: {m} (HTTP {code})"),
        (_, None) => {
            let body = body.trim();
            let shown: String = body.chars().take(200).collect();
            format!(
                "{what} at {at} answered HTTP {code}{}",
                if shown.is_empty() { String::new() } else { format!(": {shown}") }
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_get_the_bearer_prefix_once() {
        assert_eq!(authorization("abc"), "bearer abc");
        assert_eq!(authorization("bearer abc"), "bearer abc");
        assert_eq!(authorization("Bearer abc\n"), "Bearer abc");
    }

    #[test]
    fn errors_carry_the_servers_message_and_name_the_endpoint() {
        let url = "http://127.0.0.1:8083/api/v1/query?query=x";
        let e = status_error(
            "log-cache",
            url,
            reqwest::StatusCode::BAD_REQUEST,
            r#"{"status":"error","errorType":"bad_data","error":"parse error at char 3"}"#,
            false,
        );
        assert_eq!(e.to_string(), "log-cache at http://127.0.0.1:8083: parse error at char 3 (HTTP 400)");
        let e = status_error("log-cache", url, reqwest::StatusCode::NOT_FOUND, "", true);
        assert!(e.to_string().contains("404") && e.to_string().contains("token"), "{e}");
        let e = status_error("RLP gateway", url, reqwest::StatusCode::UNAUTHORIZED, "", false);
        assert!(e.to_string().contains("refused the token") && e.to_string().contains("--token"), "{e}");
    }
}
