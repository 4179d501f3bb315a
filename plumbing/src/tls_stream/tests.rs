use super::*;
use crate::test_support::TestPki;
use rustls::CipherSuite;
use tokio::net::TcpListener;

/// A rustls provider offering only `suite` (and the versions it belongs to).
fn only(
    suite: CipherSuite,
) -> (Arc<rustls::crypto::CryptoProvider>, &'static [&'static rustls::SupportedProtocolVersion]) {
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.retain(|s| s.suite() == suite);
    assert_eq!(provider.cipher_suites.len(), 1, "{suite:?}");
    static TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
    static TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    let versions = match provider.cipher_suites[0] {
        rustls::SupportedCipherSuite::Tls13(_) => TLS13,
        rustls::SupportedCipherSuite::Tls12(_) => TLS12,
    };
    (Arc::new(provider), versions)
}

/// A tokio-rustls (buffered rustls) client config for the test PKI, restricted to `suite`.
fn rustls_client(pki: &TestPki, suite: Option<CipherSuite>) -> Arc<ClientConfig> {
    let ours = pki.client_files().grpc_client_config("localhost").expect("client config");
    let Some(suite) = suite else { return ours.config };
    let (provider, versions) = only(suite);
    let files = pki.client_files();
    let mut roots = rustls::RootCertStore::empty();
    for ca in super::super::tls::tests_support_certs(&files.ca_file) {
        roots.add(ca).unwrap();
    }
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            super::super::tls::tests_support_certs(&files.cert_file),
            super::super::tls::tests_support_key(&files.key_file),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config.enable_secret_extraction = true;
    Arc::new(config)
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

/// Writes `data` in uneven pieces, then shuts down (close_notify).
async fn send_all<W: AsyncWrite + Unpin>(w: &mut W, data: &[u8]) {
    let mut at = 0;
    let mut step = 1;
    while at < data.len() {
        let n = step.min(data.len() - at);
        w.write_all(&data[at..at + n]).await.unwrap();
        at += n;
        step = (step * 7 + 13) % 70_000 + 1;
    }
    w.flush().await.unwrap();
}

/// Our server against a tokio-rustls client, both directions, one cipher suite at a time.
async fn server_against_rustls_client(suite: CipherSuite) {
    let pki = TestPki::new(&["doppler"]);
    let server_config = pki.server_files().grpc_server_config().unwrap().config;
    let client_config = rustls_client(&pki, Some(suite));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = pattern(700_000, 1);
    let down = pattern(500_000, 2);
    let (up2, down2) = (up.clone(), down.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let mut tls = TlsStream::accept(tcp, server_config).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert!(got == up2, "server received {} bytes, corrupted or short", got.len());
        send_all(&mut tls, &down2).await;
        tls.shutdown().await.unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config);
    let mut client = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    assert_eq!(client.get_ref().1.negotiated_cipher_suite().unwrap().suite(), suite);
    send_all(&mut client, &up[..300_000]).await;
    // Midway, the rustls client moves to new keys (TLS 1.3 only) and asks us to do the same.
    if client.get_ref().1.protocol_version() == Some(ProtocolVersion::TLSv1_3) {
        client.get_mut().1.refresh_traffic_keys().unwrap();
    }
    send_all(&mut client, &up[300_000..]).await;
    client.shutdown().await.unwrap();
    let mut got = Vec::new();
    client.read_to_end(&mut got).await.unwrap();
    assert!(got == down, "client received {} bytes, corrupted or short", got.len());
    server.await.unwrap();
}

#[tokio::test]
async fn server_speaks_tls13_aes128_with_rustls_clients() {
    server_against_rustls_client(CipherSuite::TLS13_AES_128_GCM_SHA256).await;
}

#[tokio::test]
async fn server_speaks_tls13_aes256_with_rustls_clients() {
    server_against_rustls_client(CipherSuite::TLS13_AES_256_GCM_SHA384).await;
}

#[tokio::test]
async fn server_speaks_tls13_chacha_with_rustls_clients() {
    server_against_rustls_client(CipherSuite::TLS13_CHACHA20_POLY1305_SHA256).await;
}

#[tokio::test]
async fn server_speaks_tls12_aes_gcm_with_rustls_clients() {
    server_against_rustls_client(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256).await;
    server_against_rustls_client(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384).await;
}

#[tokio::test]
async fn server_speaks_tls12_chacha_with_rustls_clients() {
    server_against_rustls_client(CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256).await;
}

/// Our client against a tokio-rustls server; our side updates its keys every few records.
#[tokio::test]
async fn client_speaks_with_rustls_servers_and_updates_its_keys() {
    let pki = TestPki::new(&["doppler"]);
    let server_config = pki.server_files().rustls_server_config().unwrap();
    let client = pki.client_files().grpc_client_config("doppler").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let up = pattern(400_000, 3);
    let down = pattern(300_000, 4);
    let (up2, down2) = (up.clone(), down.clone());
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // Session tickets on (rustls's default): our client must skip them.
        let mut tls = tokio_rustls::TlsAcceptor::from(server_config).accept(tcp).await.unwrap();
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.unwrap();
        assert!(got == up2, "server received {} bytes, corrupted or short", got.len());
        send_all(&mut tls, &down2).await;
        tls.shutdown().await.unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut tls = TlsStream::connect(tcp, client.config, client.server_name).await.unwrap();
    assert_eq!(tls.protocol_version(), ProtocolVersion::TLSv1_3);
    tls.set_tx_limit(3);
    send_all(&mut tls, &up).await;
    // ~25 records went out: without key updates the sequence number would be past 20.
    assert!(tls.tx.seq <= 3, "keys were updated (sequence restarted), seq {}", tls.tx.seq);
    tls.shutdown().await.unwrap();
    let mut got = Vec::new();
    tls.read_to_end(&mut got).await.unwrap();
    assert!(got == down, "client received {} bytes, corrupted or short", got.len());
    server.await.unwrap();
}

/// Both ends ours, with the rustls-free data path both ways at once.
#[tokio::test]
async fn our_client_and_server_exchange_concurrently() {
    let pki = TestPki::new(&["doppler"]);
    let server_config = pki.server_files().grpc_server_config().unwrap().config;
    let client = pki.client_files().grpc_client_config("doppler").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        let tls = TlsStream::accept(tcp, server_config).await.unwrap();
        // Echo everything back.
        let (mut r, mut w) = tokio::io::split(tls);
        tokio::io::copy(&mut r, &mut w).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsStream::connect(tcp, client.config, client.server_name).await.unwrap();
    let (mut r, mut w) = tokio::io::split(tls);
    let data = pattern(2_000_000, 5);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        send_all(&mut w, &sent).await;
        w.shutdown().await.unwrap();
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    writer.await.unwrap();
    assert!(got == data, "echo returned {} bytes, corrupted or short", got.len());
    server.await.unwrap();
}

#[tokio::test]
async fn a_client_without_a_certificate_is_refused_with_an_alert() {
    let pki = TestPki::new(&["doppler"]);
    let server_config = pki.server_files().grpc_server_config().unwrap().config;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsStream::accept(tcp, server_config).await.map(|_| ())
    });
    let mut roots = rustls::RootCertStore::empty();
    for ca in super::super::tls::tests_support_certs(&pki.client_files().ca_file) {
        roots.add(ca).unwrap();
    }
    let config = ClientConfig::builder_with_provider(crate::tls::crypto_provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let mut client = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("doppler").unwrap(), tcp)
        .await
        .unwrap();
    // TLS 1.3: the client learns of the refusal on its first read.
    let mut byte = [0u8; 1];
    let err = client.read(&mut byte).await.expect_err("refused");
    assert!(err.to_string().contains("CertificateRequired"), "{err}");
    let err = server.await.unwrap().expect_err("handshake fails");
    assert!(err.to_string().contains("peer sent no certificates"), "{err}");
}

/// Our client connected to our server, whose task reads until the end of the stream.
async fn client_and_server_reading_to_end() -> (TlsStream, tokio::task::JoinHandle<io::Result<Vec<u8>>>) {
    let pki = TestPki::new(&["doppler"]);
    let server_config = pki.server_files().grpc_server_config().unwrap().config;
    let client = pki.client_files().grpc_client_config("doppler").unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (tcp, _) = listener.accept().await.unwrap();
        // What the client sends right after its Finished may arrive in the same read as
        // Finished, and then the handshake itself refuses it: both places are a refusal.
        let mut tls = TlsStream::accept(tcp, server_config).await?;
        let mut got = Vec::new();
        tls.read_to_end(&mut got).await.map(|_| got)
    });
    let tcp = TcpStream::connect(addr).await.unwrap();
    let tls = TlsStream::connect(tcp, client.config, client.server_name).await.unwrap();
    (tls, server)
}

#[tokio::test]
async fn an_oversized_record_is_refused_before_it_is_buffered() {
    let (mut tls, server) = client_and_server_reading_to_end().await;
    let len = (MAX_CIPHERTEXT + 1) as u16;
    tls.outbuf.extend_from_slice(&[CONTENT_APPLICATION_DATA, 3, 3]);
    tls.outbuf.extend_from_slice(&len.to_be_bytes());
    tls.flush().await.unwrap();
    let err = server.await.unwrap().expect_err("refused");
    // Refused by our record layer, or by rustls if it came with the handshake's last flight.
    let msg = err.to_string();
    assert!(msg.contains("oversized TLS record") || msg.contains("MessageTooLarge"), "{msg}");
}

#[tokio::test]
async fn a_tampered_record_is_an_error_not_data() {
    let (mut tls, server) = client_and_server_reading_to_end().await;
    tls.tx.seal(CONTENT_APPLICATION_DATA, &[b"hello"], &mut tls.outbuf);
    let last = tls.outbuf.len() - 1;
    tls.outbuf[last] ^= 1;
    tls.flush().await.unwrap();
    let err = server.await.unwrap().expect_err("tampering detected");
    assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
}

// === record-layer limits, alerts and sticky errors ===

const DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

async fn within<F: std::future::Future>(future: F) -> F::Output {
    tokio::time::timeout(DEADLINE, future).await.expect("done within the deadline")
}

/// Our client and our server over loopback, both past the handshake (TLS 1.3, or TLS 1.2 AES-GCM
/// with `tls12`): whatever either sends from now on reaches the other's record layer, never the
/// handshake.
async fn connected(tls12: bool) -> (TlsStream, TlsStream) {
    let pki = TestPki::new(&["doppler"]);
    let server_config = pki.server_files().grpc_server_config().unwrap().config;
    let client_config = if tls12 {
        rustls_client(&pki, Some(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256))
    } else {
        pki.client_files().grpc_client_config("localhost").unwrap().config
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accept = async {
        let (tcp, _) = listener.accept().await.unwrap();
        TlsStream::accept(tcp, server_config).await.unwrap()
    };
    let connect = async {
        let tcp = TcpStream::connect(addr).await.unwrap();
        TlsStream::connect(tcp, client_config, ServerName::try_from("localhost").unwrap()).await.unwrap()
    };
    let (client, server) = within(async { tokio::join!(connect, accept) }).await;
    let expected = if tls12 { ProtocolVersion::TLSv1_2 } else { ProtocolVersion::TLSv1_3 };
    assert_eq!(client.protocol_version(), expected);
    (client, server)
}

/// The error of `tls`'s next read (which must not return data).
async fn read_error(tls: &mut TlsStream) -> io::Error {
    let mut buf = [0u8; 64];
    match within(tls.read(&mut buf)).await {
        Ok(n) => panic!("read {n} bytes, expected an error"),
        Err(err) => err,
    }
}

/// `peer` learns of the failure from a fatal alert `alert`.
async fn assert_alert_received(peer: &mut TlsStream, alert: u8) {
    let err = read_error(peer).await;
    assert!(err.to_string().contains(&format!("peer sent TLS alert {alert}")), "{err}");
    assert_eq!(err.kind(), io::ErrorKind::ConnectionAborted, "{err}");
}

/// After its first failure `tls` fails every read, write, flush and shutdown with the same error.
async fn assert_failed_for_good(tls: &mut TlsStream, first: &io::Error) {
    let again = read_error(tls).await;
    assert_eq!(again.to_string(), first.to_string());
    let err = within(tls.write(b"more")).await.expect_err("a write after a failure");
    assert_eq!(err.to_string(), first.to_string());
    let err = within(tls.flush()).await.expect_err("a flush after a failure");
    assert_eq!(err.to_string(), first.to_string());
    within(tls.shutdown()).await.expect_err("a shutdown after a failure");
}

#[tokio::test]
async fn tls13_refuses_ciphertext_over_2_14_plus_256_with_record_overflow() {
    let (mut client, mut server) = connected(false).await;
    let len = MAX_PLAINTEXT + 256 + 1;
    client.outbuf.extend_from_slice(&[CONTENT_APPLICATION_DATA, 3, 3]);
    client.outbuf.extend_from_slice(&(len as u16).to_be_bytes());
    client.outbuf.resize(client.outbuf.len() + len, 0);
    within(client.flush()).await.unwrap();
    let err = read_error(&mut server).await;
    assert!(err.to_string().contains("oversized TLS record"), "{err}");
    assert_alert_received(&mut client, ALERT_RECORD_OVERFLOW).await;
    assert_failed_for_good(&mut server, &err).await;
}

#[tokio::test]
async fn tls12_takes_ciphertext_up_to_2_14_plus_2048_and_no_more() {
    for (len, expected, alert) in [
        (MAX_PLAINTEXT + 2048, "failed to decrypt", ALERT_BAD_RECORD_MAC),
        (MAX_PLAINTEXT + 2049, "oversized TLS record", ALERT_RECORD_OVERFLOW),
    ] {
        let (mut client, mut server) = connected(true).await;
        client.outbuf.extend_from_slice(&[CONTENT_APPLICATION_DATA, 3, 3]);
        client.outbuf.extend_from_slice(&(len as u16).to_be_bytes());
        client.outbuf.resize(client.outbuf.len() + len, 0);
        within(client.flush()).await.unwrap();
        let err = read_error(&mut server).await;
        assert!(err.to_string().contains(expected), "{len}: {err}");
        assert_alert_received(&mut client, alert).await;
    }
}

#[tokio::test]
async fn plaintext_over_2_14_is_a_record_overflow_in_both_versions() {
    for tls12 in [false, true] {
        let (mut client, mut server) = connected(tls12).await;
        client.tx.seal(CONTENT_APPLICATION_DATA, &[&vec![7u8; MAX_PLAINTEXT + 1]], &mut client.outbuf);
        within(client.flush()).await.unwrap();
        let err = read_error(&mut server).await;
        assert!(err.to_string().contains("oversized TLS plaintext"), "tls12 {tls12}: {err}");
        assert_alert_received(&mut client, ALERT_RECORD_OVERFLOW).await;
        assert_failed_for_good(&mut server, &err).await;
    }
}

#[tokio::test]
async fn a_record_that_fails_to_decrypt_is_a_bad_record_mac_and_the_error_sticks() {
    for tls12 in [false, true] {
        let (mut client, mut server) = connected(tls12).await;
        client.tx.seal(CONTENT_APPLICATION_DATA, &[b"hello"], &mut client.outbuf);
        let last = client.outbuf.len() - 1;
        client.outbuf[last] ^= 1;
        // A good record behind the bad one is not handed out either.
        client.write_all(b"world").await.unwrap();
        within(client.flush()).await.unwrap();
        let err = read_error(&mut server).await;
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("failed to decrypt"), "{err}");
        assert_alert_received(&mut client, ALERT_BAD_RECORD_MAC).await;
        assert_failed_for_good(&mut server, &err).await;
    }
}

#[tokio::test]
async fn a_fatal_alert_received_ends_the_connection_for_good() {
    let (mut client, mut server) = connected(false).await;
    client.tx.seal(CONTENT_ALERT, &[&[ALERT_LEVEL_FATAL, 40]], &mut client.outbuf);
    client.write_all(b"after the alert").await.unwrap();
    within(client.flush()).await.unwrap();
    let err = read_error(&mut server).await;
    assert!(err.to_string().contains("peer sent TLS alert 40"), "{err}");
    assert_failed_for_good(&mut server, &err).await;
    // A fatal alert is not answered with one: the client sees the socket end, nothing else.
    let err = read_error(&mut client).await;
    assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{err}");
}

#[tokio::test]
async fn empty_records_are_taken_32_in_a_row_and_no_more() {
    let (mut client, mut server) = connected(false).await;
    for _ in 0..MAX_EMPTY_RECORDS_IN_A_ROW {
        client.tx.seal(CONTENT_APPLICATION_DATA, &[], &mut client.outbuf);
    }
    client.write_all(b"hello").await.unwrap();
    for _ in 0..=MAX_EMPTY_RECORDS_IN_A_ROW {
        client.tx.seal(CONTENT_APPLICATION_DATA, &[], &mut client.outbuf);
    }
    within(client.flush()).await.unwrap();
    let mut got = [0u8; 5];
    within(server.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"hello");
    let err = read_error(&mut server).await;
    assert!(err.to_string().contains("too many empty TLS records"), "{err}");
    assert_alert_received(&mut client, ALERT_UNEXPECTED_MESSAGE).await;
}

#[tokio::test]
async fn an_empty_handshake_record_is_an_unexpected_message() {
    let (mut client, mut server) = connected(false).await;
    client.tx.seal(CONTENT_HANDSHAKE, &[], &mut client.outbuf);
    within(client.flush()).await.unwrap();
    let err = read_error(&mut server).await;
    assert!(err.to_string().contains("empty TLS record"), "{err}");
    assert_alert_received(&mut client, ALERT_UNEXPECTED_MESSAGE).await;
}

#[tokio::test]
async fn key_updates_are_taken_32_without_data_between_and_no_more() {
    let (mut client, mut server) = connected(false).await;
    for data in [b"a", b"b"] {
        for _ in 0..MAX_KEY_UPDATES_IN_A_ROW {
            client.update_keys(false).unwrap();
        }
        client.write_all(data).await.unwrap();
    }
    for _ in 0..=MAX_KEY_UPDATES_IN_A_ROW {
        client.update_keys(false).unwrap();
    }
    within(client.flush()).await.unwrap();
    let mut got = [0u8; 2];
    within(server.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"ab");
    let err = read_error(&mut server).await;
    assert!(err.to_string().contains("too many TLS KeyUpdates"), "{err}");
    // The server's sending keys never changed: the client reads the alert.
    assert_alert_received(&mut client, ALERT_UNEXPECTED_MESSAGE).await;
}

/// A peer that asks for key updates but never reads gets one answer, not one per request: our
/// write buffer does not grow. Once it reads, the answer arrives before our next data.
#[tokio::test]
async fn key_update_requests_from_a_peer_that_never_reads_do_not_grow_the_write_buffer() {
    let (mut client, mut server) = connected(false).await;
    // Fill the server-to-client direction until the server's own buffer pushes back.
    let chunk = vec![1u8; 64 * 1024];
    let mut sent = 0;
    while let Some(written) = futures::FutureExt::now_or_never(server.write(&chunk)) {
        sent += written.unwrap();
        assert!(sent < 1 << 30, "the socket never filled");
    }
    let backlog = server.outbuf.len();
    assert!(server.pending_out() >= WRITE_HIGH_WATER, "{}", server.pending_out());
    let requests = 3 * usize::from(MAX_KEY_UPDATES_IN_A_ROW);
    for _ in 0..requests {
        client.update_keys(true).unwrap();
        client.write_all(b"k").await.unwrap();
    }
    within(client.flush()).await.unwrap();
    let mut got = vec![0u8; requests];
    within(server.read_exact(&mut got)).await.unwrap();
    assert!(got.iter().all(|&b| b == b'k'));
    assert!(server.key_update_owed, "the requests are remembered");
    assert!(server.outbuf.len() <= backlog, "write buffer grew from {backlog} to {}", server.outbuf.len());
    // Now the client reads: the backlog, our one KeyUpdate, and data under the new key.
    let reader = tokio::spawn(async move {
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.map(|_| got)
    });
    let seq_before = server.tx.seq;
    within(server.write_all(b"end")).await.unwrap();
    assert!(server.tx.seq < seq_before, "keys updated before the data: seq {} then {}", seq_before, server.tx.seq);
    within(server.shutdown()).await.unwrap();
    let got = within(reader).await.unwrap().unwrap();
    assert_eq!(got.len(), sent + 3);
    assert!(got[..sent].iter().all(|&b| b == 1) && &got[sent..] == b"end");
}

#[tokio::test]
async fn a_record_between_the_fragments_of_a_handshake_message_is_refused() {
    let (mut client, mut server) = connected(false).await;
    // The first two bytes of a KeyUpdate, then application data.
    client.tx.seal(CONTENT_HANDSHAKE, &[&[HANDSHAKE_KEY_UPDATE, 0]], &mut client.outbuf);
    client.write_all(b"x").await.unwrap();
    within(client.flush()).await.unwrap();
    let err = read_error(&mut server).await;
    assert!(err.to_string().contains("interleaved"), "{err}");
    assert_alert_received(&mut client, ALERT_UNEXPECTED_MESSAGE).await;
}

#[tokio::test]
async fn a_handshake_message_split_over_records_is_reassembled() {
    let (mut client, mut server) = connected(false).await;
    client.tx.seal(CONTENT_HANDSHAKE, &[&[HANDSHAKE_KEY_UPDATE, 0]], &mut client.outbuf);
    client.tx.seal(CONTENT_HANDSHAKE, &[&[0, 1, 0]], &mut client.outbuf);
    client.tx = client.kernel.update_tx(client.version).unwrap();
    client.write_all(b"new key").await.unwrap();
    within(client.flush()).await.unwrap();
    let mut got = [0u8; 7];
    within(server.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"new key");
}

#[tokio::test]
async fn a_tls12_server_refuses_renegotiation_with_a_warning_then_with_a_fatal_alert() {
    let (mut client, mut server) = connected(true).await;
    let client_hello = [HANDSHAKE_CLIENT_HELLO, 0, 0, 2, 3, 3];
    client.tx.seal(CONTENT_HANDSHAKE, &[&client_hello], &mut client.outbuf);
    client.write_all(b"after").await.unwrap();
    within(client.flush()).await.unwrap();
    let mut got = [0u8; 5];
    within(server.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"after");
    within(server.write_all(b"ok")).await.unwrap();
    let mut got = [0u8; 2];
    within(client.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"ok");
    assert_eq!(client.warnings_left, MAX_WARNING_ALERTS - 1, "the client got the no_renegotiation warning");
    // A second attempt is fatal.
    client.tx.seal(CONTENT_HANDSHAKE, &[&client_hello], &mut client.outbuf);
    within(client.flush()).await.unwrap();
    let err = read_error(&mut server).await;
    assert!(err.to_string().contains("renegotiation"), "{err}");
    assert_alert_received(&mut client, ALERT_UNEXPECTED_MESSAGE).await;
}

#[tokio::test]
async fn a_tls12_client_refuses_a_hello_request_with_a_warning() {
    let (mut client, mut server) = connected(true).await;
    server.tx.seal(CONTENT_HANDSHAKE, &[&[HANDSHAKE_HELLO_REQUEST, 0, 0, 0]], &mut server.outbuf);
    within(server.write_all(b"hi")).await.unwrap();
    let mut got = [0u8; 2];
    within(client.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"hi");
    within(client.write_all(b"ok")).await.unwrap();
    within(server.read_exact(&mut got)).await.unwrap();
    assert_eq!(&got, b"ok");
    assert_eq!(server.warnings_left, MAX_WARNING_ALERTS - 1, "the server got the no_renegotiation warning");
}

#[tokio::test]
async fn tls13_refuses_a_client_hello_after_the_handshake() {
    let (mut client, mut server) = connected(false).await;
    client.tx.seal(CONTENT_HANDSHAKE, &[&[HANDSHAKE_CLIENT_HELLO, 0, 0, 2, 3, 3]], &mut client.outbuf);
    within(client.flush()).await.unwrap();
    let err = read_error(&mut server).await;
    assert!(err.to_string().contains("unexpected TLS handshake message 1"), "{err}");
    assert_alert_received(&mut client, ALERT_UNEXPECTED_MESSAGE).await;
}

// === fuzz entry point ===

/// Seeds of the five (version, cipher) pairs, our side the server, reads one byte at a time.
fn seeds() -> Vec<Vec<u8>> {
    (0..5u8)
        .map(|suite| {
            [suite, 0, 0].into_iter().chain((0..44u8).map(|i| i.wrapping_mul(7).wrapping_add(suite))).collect()
        })
        .collect()
}

#[test]
fn the_fuzz_entry_survives_garbage() {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for seed in seeds() {
        for len in [0, 1, 4, 5, 6, 21, 100, 5000, 40_000] {
            let garbage: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            assert_eq!(fuzz_read_records(&seed, &garbage), 0, "no data from garbage");
            // Plausible headers in front of garbage bodies.
            let mut framed = vec![CONTENT_APPLICATION_DATA, 3, 3, (len >> 8) as u8, len as u8];
            framed.extend_from_slice(&garbage);
            assert_eq!(fuzz_read_records(&seed, &framed), 0);
        }
    }
    assert_eq!(fuzz_read_records(&[], &[]), 0);
}

#[test]
fn the_fuzz_entry_reads_valid_sealed_records() {
    for seed in seeds() {
        let secrets = FixedSecrets::from_seed(&seed);
        let mut tx = secrets.protection();
        let mut records = Vec::new();
        tx.seal(CONTENT_APPLICATION_DATA, &[b"hello"], &mut records);
        tx.seal(CONTENT_APPLICATION_DATA, &[], &mut records);
        if secrets.version == ProtocolVersion::TLSv1_3 {
            tx.seal(CONTENT_HANDSHAKE, &[&[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 1]], &mut records);
            tx = secrets.protection();
        }
        tx.seal(CONTENT_APPLICATION_DATA, &[&vec![9u8; MAX_PLAINTEXT]], &mut records);
        tx.seal(CONTENT_ALERT, &[&[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY]], &mut records);
        assert_eq!(fuzz_read_records(&seed, &records), 5 + MAX_PLAINTEXT, "{:?}", secrets.version);
        // Truncated anywhere, what was complete is still read and nothing panics.
        for cut in [1, 7, records.len() / 2, records.len() - 1] {
            let read = fuzz_read_records(&seed, &records[..cut]);
            assert!(read <= 5 + MAX_PLAINTEXT, "{read}");
        }
    }
}
