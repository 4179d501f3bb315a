//! The TLS of the public HTTP listeners (gateway and traffic controller).
//!
//! The original serves both over TLS only (§4.1, §5.1); here a listener is HTTPS when a
//! certificate is configured and plain HTTP otherwise (the all-in-one on loopback). Both are
//! served by `plumbing::http_server`, with its bounds on pending connections, handshakes and
//! request heads.

use std::sync::Arc;

use crate::config::PublicTls;

#[derive(Debug, thiserror::Error)]
pub enum HttpsError {
    #[error("public TLS: {0}")]
    Tls(#[from] plumbing::tls::TlsError),
    #[error("public TLS: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The rustls server config of a public listener (no client certificate asked).
pub fn server_config(tls: &PublicTls) -> Result<Arc<rustls::ServerConfig>, HttpsError> {
    let certs = plumbing::tls::read_certs(&tls.cert_file)?;
    let key = plumbing::tls::read_key(&tls.key_file)?;
    let mut config = rustls::ServerConfig::builder_with_provider(plumbing::tls::crypto_provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
