//! Helpers for tests across the workspace (feature `test-support`).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::tls::TlsFiles;

/// Polls `condition` every few milliseconds until it holds or `deadline` passes; returns whether it held.
/// This is how tests wait for asynchronous effects: on the condition itself, never on a sleep.
pub async fn wait_until(deadline: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + deadline;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// An in-process CA with a server and a client certificate, written to a temporary directory.
pub struct TestPki {
    dir: PathBuf,
}

impl TestPki {
    /// Generates a CA and certificates valid for `names` (plus `localhost` and 127.0.0.1).
    pub fn new(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
        let dir = std::env::temp_dir().join(format!("loggregator-pki-{}-{}", std::process::id(), fastrand_suffix()));
        std::fs::create_dir_all(&dir).expect("temp dir is writable");
        let ca_key = KeyPair::generate().expect("key generation");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("self-signed ca");
        let mut sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        sans.push("localhost".into());
        sans.push("127.0.0.1".into());
        for role in ["server", "client"] {
            let key = KeyPair::generate().expect("key generation");
            let params = CertificateParams::new(sans.clone()).expect("leaf params");
            let cert = params.signed_by(&key, &ca, &ca_key).expect("signed leaf");
            std::fs::write(dir.join(format!("{role}.pem")), cert.pem()).expect("write cert");
            std::fs::write(dir.join(format!("{role}.key")), key.serialize_pem()).expect("write key");
        }
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
        Self { dir }
    }

    fn files(&self, role: &str) -> TlsFiles {
        TlsFiles {
            ca_file: self.dir.join("ca.pem"),
            cert_file: self.dir.join(format!("{role}.pem")),
            key_file: self.dir.join(format!("{role}.key")),
            tls_engine: crate::tls::TlsEngine::default(),
        }
    }

    pub fn server_files(&self) -> TlsFiles {
        self.files("server")
    }

    pub fn client_files(&self) -> TlsFiles {
        self.files("client")
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn fastrand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    nanos ^ NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A component serving in the background of a test: its address, its metrics, and a way to stop it.
pub struct Running {
    pub addr: std::net::SocketAddr,
    pub registry: crate::Registry,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Spawns `serve(shutdown)` for a component bound at `addr` that counts in `registry`.
    pub fn spawn<F>(
        addr: std::net::SocketAddr,
        registry: crate::Registry,
        serve: impl FnOnce(tokio_util::sync::WaitForCancellationFutureOwned) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(serve(stop.clone().cancelled_owned()));
        Self { addr, registry, stop, task }
    }

    /// Sum of the series of metric `name` that carry `labels`.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        self.registry.sum(name, labels)
    }

    /// Signals shutdown and waits (at most 30 s) for the component to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("component stops within 30 s")
            .expect("component task did not panic");
    }
}
