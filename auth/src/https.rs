//! The HTTP client the authorizer calls Cloud Controller with: `http://`, or `https://` over rustls
//! (ring provider) verifying the server against a configured CA file, or, only when the config says
//! so explicitly, not verifying it at all (the original's `SKIP_CERT_VERIFY`).
//!
//! hyper-util's legacy client does the HTTP/1.1; [`Connector`] only opens the transport: TCP through
//! hyper-util's `HttpConnector`, then a TLS handshake for `https` URIs.

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_rustls::TlsConnector;

/// Time allowed to open a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The client type of the authorizer: empty request bodies, [`Connector`] transports.
pub type HttpsClient = Client<Connector, http_body_util::Empty<bytes::Bytes>>;

/// How to verify the servers of `https://` URLs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerVerification {
    /// Against the CA certificates of a PEM file.
    CaFile(PathBuf),
    /// Not at all: any certificate is accepted (explicit opt-in only).
    SkipVerify,
}

/// Why a TLS client could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsClientError {
    #[error("cannot read CA file {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("invalid CA file {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("invalid TLS client configuration: {0}")]
    Config(String),
}

/// Why a connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{0}")]
    Tcp(Box<dyn std::error::Error + Send + Sync>),
    #[error("https URL but no TLS configured")]
    TlsNotConfigured,
    #[error("invalid server name `{0}`")]
    ServerName(String),
    #[error("TLS handshake: {0}")]
    Handshake(io::Error),
    #[error("unsupported URL scheme in `{0}`")]
    Scheme(String),
}

/// A client for `http://` URLs and, when `tls` is given, `https://` URLs.
pub fn client(tls: Option<Arc<rustls::ClientConfig>>) -> HttpsClient {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    let connector = Connector { http, tls: tls.map(TlsConnector::from) };
    Client::builder(TokioExecutor::new()).build(connector)
}

/// A rustls client configuration (ring provider, no client certificate).
pub fn client_config(verification: &ServerVerification) -> Result<Arc<rustls::ClientConfig>, TlsClientError> {
    let provider = plumbing::tls::crypto_provider();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsClientError::Config(e.to_string()))?;
    let config = match verification {
        ServerVerification::CaFile(path) => builder.with_root_certificates(root_store(path)?).with_no_client_auth(),
        ServerVerification::SkipVerify => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate { provider }))
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

fn root_store(path: &Path) -> Result<rustls::RootCertStore, TlsClientError> {
    let pem = std::fs::read(path).map_err(|source| TlsClientError::Read { path: path.to_path_buf(), source })?;
    let pem_error = |reason: String| TlsClientError::Pem { path: path.to_path_buf(), reason };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| pem_error(e.to_string()))?;
        roots.add(cert).map_err(|e| pem_error(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(pem_error("no certificate".into()));
    }
    Ok(roots)
}

// === impl Connector ===

/// Opens TCP connections, and TLS over them for `https` URIs.
#[derive(Clone)]
pub struct Connector {
    http: HttpConnector,
    tls: Option<TlsConnector>,
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<MaybeTlsStream>;
    type Error = ConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ConnectError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ConnectError>> {
        self.http.poll_ready(cx).map_err(|e| ConnectError::Tcp(Box::new(e)))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let mut http = self.http.clone();
        let tls = self.tls.clone();
        Box::pin(async move {
            let https = match uri.scheme_str() {
                Some("https") => true,
                Some("http") => false,
                _ => return Err(ConnectError::Scheme(uri.to_string())),
            };
            let host = uri.host().unwrap_or_default().trim_start_matches('[').trim_end_matches(']').to_string();
            let tcp = http.call(uri).await.map_err(|e| ConnectError::Tcp(Box::new(e)))?.into_inner();
            if !https {
                return Ok(TokioIo::new(MaybeTlsStream::Plain(tcp)));
            }
            let tls = tls.ok_or(ConnectError::TlsNotConfigured)?;
            let name = ServerName::try_from(host.clone()).map_err(|_| ConnectError::ServerName(host))?;
            let stream = tls.connect(name, tcp).await.map_err(ConnectError::Handshake)?;
            Ok(TokioIo::new(MaybeTlsStream::Tls(Box::new(stream))))
        })
    }
}

// === impl MaybeTlsStream ===

/// A plain or a TLS connection.
pub enum MaybeTlsStream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Connection for MaybeTlsStream {
    fn connected(&self) -> Connected {
        match self {
            MaybeTlsStream::Plain(tcp) => tcp.connected(),
            MaybeTlsStream::Tls(tls) => tls.get_ref().0.connected(),
        }
    }
}

impl AsyncRead for MaybeTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_flush(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTlsStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            MaybeTlsStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

// === impl AcceptAnyCertificate ===

/// `skip_cert_verify`: accepts whatever certificate the server presents, but still checks that the
/// server holds its key (handshake signatures), so the connection is encrypted to *someone*.
#[derive(Debug)]
struct AcceptAnyCertificate {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
