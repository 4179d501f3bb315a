//! Mutual TLS on the gRPC API and the syslog server.

mod common;

use std::sync::Arc;

use common::*;
use loggregator_proto::logcache::v1::egress_client::EgressClient;
use loggregator_proto::logcache::v1::ingress_client::IngressClient;
use loggregator_proto::logcache::v1::{ReadRequest, SendRequest};
use loggregator_proto::v2::EnvelopeBatch;
use plumbing::test_support::TestPki;
use tokio::io::AsyncWriteExt;
use tonic::transport::Endpoint;

#[tokio::test]
async fn grpc_requires_a_client_certificate_and_serves_with_one() {
    let pki = TestPki::new(&["log-cache"]);
    let mut config = test_config();
    config.tls = Some(pki.server_files());
    config.syslog.enabled = false;
    let cache = start(config).await;

    let tls = pki.client_files().client_config("log-cache").expect("client tls");
    let channel = Endpoint::from_shared(format!("https://{}", cache.addrs.grpc))
        .expect("endpoint")
        .tls_config(tls)
        .expect("tls")
        .connect()
        .await
        .expect("connects with a client certificate");
    IngressClient::new(channel.clone())
        .send(SendRequest {
            envelopes: Some(EnvelopeBatch { batch: vec![log_envelope("tls-app", 1, "secure")] }),
            local_only: false,
        })
        .await
        .expect("send");
    let read = EgressClient::new(channel)
        .read(ReadRequest { source_id: "tls-app".into(), ..Default::default() })
        .await
        .expect("read")
        .into_inner();
    assert_eq!(read.envelopes.expect("batch").batch.len(), 1);

    // Plaintext is refused.
    let plain = Endpoint::from_shared(format!("http://{}", cache.addrs.grpc)).expect("endpoint").connect().await;
    if let Ok(channel) = plain {
        let result =
            EgressClient::new(channel).read(ReadRequest { source_id: "tls-app".into(), ..Default::default() }).await;
        assert!(result.is_err(), "plaintext must not be served");
    }
    cache.stop().await;
}

#[tokio::test]
async fn syslog_over_mutual_tls() {
    let pki = TestPki::new(&["log-cache"]);
    let mut config = test_config();
    config.syslog.tls = Some(pki.server_files());
    let cache = start(config).await;

    let client_files = pki.client_files();
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(&client_files.ca_file).expect("ca");
    for cert in rustls_pemfile::certs(&mut &ca[..]) {
        roots.add(cert.expect("pem")).expect("root");
    }
    let certs: Vec<_> = rustls_pemfile::certs(&mut &std::fs::read(&client_files.cert_file).expect("cert")[..])
        .collect::<Result<_, _>>()
        .expect("certs");
    let key = rustls_pemfile::private_key(&mut &std::fs::read(&client_files.key_file).expect("key")[..])
        .expect("pem")
        .expect("a key");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .expect("client auth");
    let connector = tokio_rustls::TlsConnector::from(Arc::new(client_config));
    let tcp = tokio::net::TcpStream::connect(cache.addrs.syslog.expect("syslog")).await.expect("connects");
    let name = rustls::pki_types::ServerName::try_from("log-cache").expect("name");
    let mut stream = connector.connect(name, tcp).await.expect("handshake");
    let message = "<14>1 2024-05-01T12:00:00Z host tls-src [APP/PROC/WEB/0] - - over tls\n";
    stream.write_all(format!("{} {message}", message.len()).as_bytes()).await.expect("writes");
    stream.flush().await.expect("flushes");
    eventually("the message stored", || async { cache.store.meta().contains_key("tls-src") }).await;
}
