//! Mutual TLS from CA, certificate and key files: rustls configs for our gRPC connections
//! ([`crate::tls_stream`]) and HTTPS, and a tonic client config for tests that play a third-party
//! client.
//!
//! Plaintext stays the loopback default; a component given [`TlsFiles`] serves TLS and requires
//! client certificates signed by the CA (PROTOCOLS.md §2.7: all internal gRPC is mutual TLS, and
//! clients verify the server names `metron`, `doppler`, `reverselogproxy`, `log-cache`).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::Deserialize;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

/// Paths of the PEM files of one side of a mutual-TLS connection.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// CA that signs the peers' certificates.
    pub ca_file: PathBuf,
    /// This side's certificate chain.
    pub cert_file: PathBuf,
    /// This side's private key (never logged).
    pub key_file: PathBuf,
    /// What carries the records of this side's gRPC connections after the handshake:
    /// `"inplace"` (the default) or `"rustls"`. See [`TlsEngine`].
    #[serde(default)]
    pub tls_engine: TlsEngine,
}

/// The code that encrypts and decrypts the records of a gRPC connection once rustls has done the
/// handshake. Both pass the same tests, including the interop matrix against OpenSSL
/// (`cargo test -p plumbing --test tls_openssl`, RELIABILITY.md §2).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TlsEngine {
    /// Our record layer, [`crate::tls_stream::TlsStream`]: records decrypted in place in one
    /// 64 KiB+ read buffer and sealed into one write buffer (~5 % less CPU per hop than tokio-rustls,
    /// BENCHMARKS.md §0).
    #[default]
    Inplace,
    /// tokio-rustls over a buffered socket: rustls's own record layer, for when ours is in doubt.
    Rustls,
}

/// What a gRPC client needs to open TLS connections to one kind of server.
#[derive(Clone, Debug)]
pub struct ClientTls {
    pub config: Arc<rustls::ClientConfig>,
    /// The name the server's certificate must carry (`doppler`, `log-cache`, ...).
    pub server_name: rustls::pki_types::ServerName<'static>,
    pub engine: TlsEngine,
}

/// What a gRPC server needs to accept TLS connections ([`crate::grpc::incoming`]).
#[derive(Clone, Debug)]
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    pub engine: TlsEngine,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid PEM in {path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("invalid TLS configuration: {0}")]
    Config(String),
}

/// The crypto provider of every TLS connection of the project: ring, with AES-128-GCM offered first.
///
/// ring's default order offers AES-256-GCM first. Go's crypto/tls (the original's clients and
/// servers) prefers AES-128-GCM on CPUs with AES instructions, and so do we: both suites are in
/// §2.7's list, and AES-128 has 10 rounds instead of 14, which is ~20 % less CPU for the bulk
/// encryption that is the largest single cost of every hop (BENCHMARKS.md §4).
pub fn crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    static PROVIDER: OnceLock<Arc<rustls::crypto::CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::ring::default_provider();
            // Stable sort: AES-128-GCM suites first, every other suite in ring's order after them.
            provider.cipher_suites.sort_by_key(|suite| {
                !matches!(
                    suite.suite(),
                    rustls::CipherSuite::TLS13_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
                        | rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
                )
            });
            Arc::new(provider)
        })
        .clone()
}

/// Makes [`crypto_provider`] the process default, which is what tonic's TLS configs are built
/// with. Idempotent; if something else installed a default first, that one stays.
pub fn install_crypto_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        let _ = rustls::crypto::CryptoProvider::install_default((*crypto_provider()).clone());
    });
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

impl TlsFiles {
    /// A tonic (tokio-rustls) client config that presents our certificate and verifies the server
    /// as `server_name`. Our own clients use [`Self::grpc_client_config`]; tests use this one to
    /// drive our servers as a third-party client would.
    pub fn client_config(&self, server_name: &str) -> Result<ClientTlsConfig, TlsError> {
        install_crypto_provider();
        let identity = Identity::from_pem(read(&self.cert_file)?, read(&self.key_file)?);
        Ok(ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&self.ca_file)?))
            .identity(identity)
            .domain_name(server_name))
    }

    /// A rustls server config for HTTPS endpoints, requiring client certificates signed by the CA.
    pub fn rustls_server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let certs = self.certs()?;
        let key = self.key()?;
        let mut roots = rustls::RootCertStore::empty();
        for ca in pem_certs(&self.ca_file)? {
            roots.add(ca).map_err(|e| TlsError::Config(e.to_string()))?;
        }
        let provider = crypto_provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Arc::new(config))
    }

    /// The TLS of a gRPC server, with the configured engine: HTTP/2 by ALPN, secrets extractable
    /// for our own record layer, and no session tickets (we would have to send them after the
    /// handshake, and our clients do not resume).
    pub fn grpc_server_config(&self) -> Result<ServerTls, TlsError> {
        let mut config = Arc::unwrap_or_clone(self.rustls_server_config()?);
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.enable_secret_extraction = true;
        config.send_tls13_tickets = 0;
        Ok(ServerTls { config: Arc::new(config), engine: self.tls_engine })
    }

    /// The TLS of a gRPC client, with the configured engine: presents our certificate, trusts
    /// only the CA, offers HTTP/2 by ALPN.
    pub fn grpc_client_config(&self, server_name: &str) -> Result<ClientTls, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        for ca in pem_certs(&self.ca_file)? {
            roots.add(ca).map_err(|e| TlsError::Config(e.to_string()))?;
        }
        let mut config = rustls::ClientConfig::builder_with_provider(crypto_provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.certs()?, self.key()?)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        config.enable_secret_extraction = true;
        config.resumption = rustls::client::Resumption::disabled();
        let server_name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| TlsError::Config(format!("server name {server_name:?}: {e}")))?;
        Ok(ClientTls { config: Arc::new(config), server_name, engine: self.tls_engine })
    }

    fn certs(&self) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
        pem_certs(&self.cert_file)
    }

    fn key(&self) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
        read_key(&self.key_file)
    }
}

/// The certificates of a PEM file (at least one).
pub fn read_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    pem_certs(path)
}

/// The private key of a PEM file.
pub fn read_key(path: &Path) -> Result<rustls::pki_types::PrivateKeyDer<'static>, TlsError> {
    let pem = read(path)?;
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?
        .ok_or_else(|| TlsError::Pem { path: path.to_path_buf(), reason: "no private key".into() })
}

fn pem_certs(path: &Path) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Result<Vec<_>, _> = rustls_pemfile::certs(&mut &pem[..]).collect();
    let certs = certs.map_err(|e| TlsError::Pem { path: path.to_path_buf(), reason: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Pem { path: path.to_path_buf(), reason: "no certificate".into() });
    }
    Ok(certs)
}

/// Certificates and keys from PEM files, for tests that build their own rustls configs.
#[cfg(test)]
pub(crate) fn tests_support_certs(path: &Path) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    pem_certs(path).expect("test certificates")
}

#[cfg(test)]
pub(crate) fn tests_support_key(path: &Path) -> rustls::pki_types::PrivateKeyDer<'static> {
    let pem = read(path).expect("test key");
    rustls_pemfile::private_key(&mut &pem[..]).expect("test key").expect("test key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::TestPki;

    #[test]
    fn loads_generated_certificates() {
        let pki = TestPki::new(&["doppler"]);
        let files = pki.server_files();
        files.grpc_server_config().expect("gRPC server config");
        files.grpc_client_config("doppler").expect("gRPC client config");
        files.client_config("doppler").expect("client config");
        files.rustls_server_config().expect("rustls config");
    }

    #[test]
    fn aes_128_gcm_is_offered_first_and_nothing_is_lost() {
        let provider = crypto_provider();
        let suites: Vec<_> = provider.cipher_suites.iter().map(|s| s.suite()).collect();
        assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256, "{suites:?}");
        let mut ours = suites.clone();
        let mut ring: Vec<_> =
            rustls::crypto::ring::default_provider().cipher_suites.iter().map(|s| s.suite()).collect();
        ours.sort_by_key(|s| u16::from(*s));
        ring.sort_by_key(|s| u16::from(*s));
        assert_eq!(ours, ring);
    }

    #[test]
    fn tls_engine_is_inplace_unless_configured_rustls() {
        use serde::de::value::{Error, MapDeserializer};
        let files = |extra: &[(&'static str, &'static str)]| {
            let mut entries = vec![("ca_file", "ca.pem"), ("cert_file", "cert.pem"), ("key_file", "key.pem")];
            entries.extend_from_slice(extra);
            TlsFiles::deserialize(MapDeserializer::<_, Error>::new(entries.into_iter()))
        };
        assert_eq!(files(&[]).unwrap().tls_engine, TlsEngine::Inplace);
        assert_eq!(files(&[("tls_engine", "inplace")]).unwrap().tls_engine, TlsEngine::Inplace);
        assert_eq!(files(&[("tls_engine", "rustls")]).unwrap().tls_engine, TlsEngine::Rustls);
        let err = files(&[("tls_engine", "openssl")]).unwrap_err();
        assert!(err.to_string().contains("openssl"), "{err}");
        let pki = TestPki::new(&["doppler"]);
        let mut server = pki.server_files();
        server.tls_engine = TlsEngine::Rustls;
        assert_eq!(server.grpc_server_config().unwrap().engine, TlsEngine::Rustls);
        assert_eq!(server.grpc_client_config("doppler").unwrap().engine, TlsEngine::Rustls);
    }

    #[test]
    fn missing_file_is_a_clear_error() {
        let files = TlsFiles {
            ca_file: "/nonexistent/ca.pem".into(),
            cert_file: "/nonexistent/cert.pem".into(),
            key_file: "/nonexistent/key.pem".into(),
            tls_engine: TlsEngine::default(),
        };
        let err = files.rustls_server_config().unwrap_err();
        assert!(err.to_string().contains("/nonexistent/"), "{err}");
        assert!(matches!(err, TlsError::Read { .. }), "{err}");
    }
}
