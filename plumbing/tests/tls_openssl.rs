//! Interop matrix: our gRPC TLS, with either engine ([`TlsEngine`]), against an independent
//! implementation, OpenSSL's `s_server` and `s_client` (RELIABILITY.md §2).
//!
//! Every cell is one connection: a TLS version and cipher suite, an RSA or ECDSA certificate
//! (mutual TLS, both sides verified against a CA made here with the `openssl` command), our side
//! as client or as server, one engine. Each cell carries 1.3 MB to OpenSSL and 0.8 MB back,
//! checked byte for byte; OpenSSL sends 512-byte records when it is the server. TLS 1.3 cells
//! then update keys both ways: ours asking OpenSSL to update too, then OpenSSL's `k` and `K`
//! commands (the second asks us to answer), with data under the new keys after each, and end
//! with close_notify. TLS 1.2 cells end with a renegotiation OpenSSL starts (`R` in s_client,
//! `r` in s_server), which we must refuse: OpenSSL reports our `no_renegotiation` and ends the
//! connection, and our side sees an error, never a hang.
//!
//! OpenSSL writes what it receives to its stdout and sends what it reads on its stdin; its own
//! messages share stdout, so the data is bytes 0x80..=0xFF, which OpenSSL never prints, and no
//! stdin chunk can start with one of its command letters. `openssl` must be on the PATH
//! (`scripts/test` installs it): without it these tests fail, they do not skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use plumbing::grpc::{accept_tls, connect_tls, Conn};
use plumbing::tls::{TlsEngine, TlsFiles};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::Notify;

/// The longest any one step of a cell may take.
const STEP: Duration = Duration::from_secs(20);

async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(STEP, future).await {
        Ok(output) => output,
        Err(_) => panic!("{what}: not done within {STEP:?}"),
    }
}

// === certificates ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cert {
    Rsa,
    Ecdsa,
}

/// A CA, a server and a client certificate of each type (valid for localhost and 127.0.0.1),
/// made once per test process with the `openssl` command.
struct Pki {
    dir: PathBuf,
}

const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = loggregator-test-ca
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[leaf]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
";

fn openssl_command(dir: &Path, args: &[&str]) {
    let output = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("the `openssl` command is required for these tests (scripts/test installs it)");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("tls-openssl-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        for cert in [Cert::Rsa, Cert::Ecdsa] {
            let sub = dir.join(format!("{cert:?}"));
            std::fs::create_dir_all(&sub).expect("temp dir is writable");
            std::fs::write(sub.join("openssl.cnf"), OPENSSL_CONFIG).expect("write openssl.cnf");
            let key_options: &[&str] = match cert {
                Cert::Rsa => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
                Cert::Ecdsa => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            };
            for name in ["ca", "server", "client"] {
                let key = format!("{name}.key");
                openssl_command(&sub, &[&["genpkey"], key_options, &["-out", &key]].concat());
            }
            openssl_command(
                &sub,
                &["req", "-new", "-x509", "-config", "openssl.cnf", "-extensions", "ca", "-key", "ca.key"]
                    .into_iter()
                    .chain(["-days", "2", "-out", "ca.pem"])
                    .collect::<Vec<_>>(),
            );
            for (serial, name) in [("2", "server"), ("3", "client")] {
                let (key, csr, pem) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
                let subject = format!("/CN={name}");
                openssl_command(
                    &sub,
                    &["req", "-new", "-config", "openssl.cnf", "-key", &key, "-subj", &subject, "-out", &csr],
                );
                openssl_command(
                    &sub,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &csr,
                        "-CA",
                        "ca.pem",
                        "-CAkey",
                        "ca.key",
                        "-set_serial",
                        serial,
                        "-days",
                        "2",
                        "-extfile",
                        "openssl.cnf",
                        "-extensions",
                        "leaf",
                        "-out",
                        &pem,
                    ],
                );
            }
        }
        Pki { dir }
    })
}

impl Pki {
    fn path(&self, cert: Cert, file: &str) -> String {
        self.dir.join(format!("{cert:?}")).join(file).to_string_lossy().into_owned()
    }

    fn files(&self, cert: Cert, role: &str, engine: TlsEngine) -> TlsFiles {
        TlsFiles {
            ca_file: self.path(cert, "ca.pem").into(),
            cert_file: self.path(cert, &format!("{role}.pem")).into(),
            key_file: self.path(cert, &format!("{role}.key")).into(),
            tls_engine: engine,
        }
    }
}

// === OpenSSL processes ===

/// Everything a child wrote on one stream so far, split into OpenSSL's messages (`text`) and the
/// data (bytes 0x80..=0xFF) as it arrives, and a wake-up for each new piece.
#[derive(Clone)]
struct Captured {
    seen: Arc<Mutex<Seen>>,
    more: Arc<Notify>,
}

#[derive(Default)]
struct Seen {
    text: Vec<u8>,
    data: Vec<u8>,
}

impl Captured {
    fn spawn(mut from: impl AsyncRead + Unpin + Send + 'static) -> Self {
        let captured = Self { seen: Arc::default(), more: Arc::default() };
        let to = captured.clone();
        // Ends at EOF, when the child exits.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n @ 1..) = from.read(&mut buf).await {
                let mut seen = to.seen.lock();
                for &b in &buf[..n] {
                    if b >= 0x80 {
                        seen.data.push(b);
                    } else {
                        seen.text.push(b);
                    }
                }
                drop(seen);
                to.more.notify_one();
            }
            to.more.notify_one();
        });
        captured
    }

    /// Waits until `condition` holds over what was captured, and returns what it returned.
    async fn wait_for<T>(&self, what: &str, mut condition: impl FnMut(&Seen) -> Option<T>) -> T {
        let deadline = Instant::now() + STEP;
        loop {
            if let Some(found) = condition(&self.seen.lock()) {
                return found;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, self.more.notified()).await.is_err() {
                let text = self.text();
                let tail = &text[text.len().saturating_sub(2000)..];
                panic!("{what}: not seen within {STEP:?}; got, at the end: {tail}");
            }
        }
    }

    fn count(&self, needle: &str) -> usize {
        count(&self.seen.lock().text, needle)
    }

    /// OpenSSL's messages so far.
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().text).into_owned()
    }
}

fn count(haystack: &[u8], needle: &str) -> usize {
    haystack.windows(needle.len()).filter(|w| *w == needle.as_bytes()).count()
}

struct OpenSsl {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: Captured,
    stderr: Captured,
}

impl OpenSsl {
    /// Runs `openssl args...` with its stdout line-buffered (`stdbuf -oL`): s_server reports a
    /// key update with `printf`, which a pipe would otherwise hold until it exits.
    fn spawn(args: &[String]) -> Self {
        let mut child = Command::new("stdbuf")
            .arg("-oL")
            .arg("openssl")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("`stdbuf` (coreutils) and `openssl` are required for these tests (scripts/test installs openssl)");
        let stdout = Captured::spawn(child.stdout.take().expect("piped stdout"));
        let stderr = Captured::spawn(child.stderr.take().expect("piped stderr"));
        Self { stdin: child.stdin.take(), child, stdout, stderr }
    }

    async fn send(&mut self, bytes: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin still open");
        within("writing to openssl's stdin", async { stdin.write_all(bytes).await.expect("openssl reads its stdin") })
            .await;
    }

    /// Waits for OpenSSL's stdout to hold exactly `expected` as data so far.
    async fn received(&self, expected: &[u8]) {
        let got = self
            .stdout
            .wait_for("openssl receiving our data", |seen| {
                (seen.data.len() >= expected.len()).then(|| seen.data.clone())
            })
            .await;
        assert_eq!(got.len(), expected.len(), "openssl received more than we sent");
        assert!(got == expected, "openssl received corrupted data");
    }

    fn output(&self) -> String {
        format!("stdout: {}\nstderr: {}", self.stdout.text(), self.stderr.text())
    }

    async fn exit(mut self) -> (std::process::ExitStatus, String) {
        drop(self.stdin.take());
        let status = within("openssl exiting", self.child.wait()).await.expect("openssl ran");
        // Its output is complete once both pipes are at EOF.
        let output = self.output();
        (status, output)
    }
}

// === the matrix ===

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    Client,
    Server,
}

#[derive(Clone, Copy, Debug)]
struct Cell {
    version: Version,
    /// OpenSSL's name of the suite.
    suite: &'static str,
    cert: Cert,
    ours: Role,
    engine: TlsEngine,
}

const TLS13_SUITES: [&str; 3] = ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"];
const TLS12_RSA_SUITES: [&str; 3] =
    ["ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-RSA-CHACHA20-POLY1305"];
const TLS12_ECDSA_SUITES: [&str; 3] =
    ["ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305"];

fn cells(version: Version, ours: Role, engine: TlsEngine) -> Vec<Cell> {
    let mut cells = Vec::new();
    for cert in [Cert::Rsa, Cert::Ecdsa] {
        let suites = match (version, cert) {
            (Version::Tls13, _) => TLS13_SUITES,
            (Version::Tls12, Cert::Rsa) => TLS12_RSA_SUITES,
            (Version::Tls12, Cert::Ecdsa) => TLS12_ECDSA_SUITES,
        };
        for suite in suites {
            cells.push(Cell { version, suite, cert, ours, engine });
        }
    }
    cells
}

/// The OpenSSL options every cell shares: version, suite, mutual TLS, ALPN.
fn common_args(cell: &Cell, pki: &Pki, role: &str) -> Vec<String> {
    let (version, suite_option) = match cell.version {
        Version::Tls13 => ("-tls1_3", "-ciphersuites"),
        Version::Tls12 => ("-tls1_2", "-cipher"),
    };
    let args = [
        version,
        suite_option,
        cell.suite,
        "-CAfile",
        &pki.path(cell.cert, "ca.pem"),
        "-verify_return_error",
        "-cert",
        &pki.path(cell.cert, &format!("{role}.pem")),
        "-key",
        &pki.path(cell.cert, &format!("{role}.key")),
        "-alpn",
        "h2",
    ]
    .map(String::from);
    args.to_vec()
}

/// Connects our side to a fresh OpenSSL peer as the cell says.
async fn connect(cell: &Cell) -> (OpenSsl, Conn) {
    let pki = pki();
    match cell.ours {
        Role::Client => {
            let mut args: Vec<String> =
                ["s_server", "-accept", "127.0.0.1:0", "-naccept", "1", "-Verify", "1", "-max_send_frag", "512"]
                    .map(String::from)
                    .to_vec();
            args.extend(common_args(cell, pki, "server"));
            let openssl = OpenSsl::spawn(&args);
            let port = openssl
                .stdout
                .wait_for("s_server's port", |seen| {
                    let text = String::from_utf8_lossy(&seen.text);
                    let line = text.lines().find(|l| l.starts_with("ACCEPT "))?;
                    line.rsplit(':').next()?.trim().parse::<u16>().ok()
                })
                .await;
            let tls = pki.files(cell.cert, "client", cell.engine).grpc_client_config("localhost").expect("client TLS");
            let tcp = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to s_server");
            let conn = within("our client's handshake", connect_tls(tcp, tls)).await;
            (openssl, conn.unwrap_or_else(|e| panic!("handshake with s_server: {e}")))
        }
        Role::Server => {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let port = listener.local_addr().expect("bound").port();
            let mut args: Vec<String> =
                ["s_client", "-connect", &format!("127.0.0.1:{port}"), "-servername", "localhost"]
                    .map(String::from)
                    .to_vec();
            args.extend(["-verify_hostname", "localhost"].map(String::from));
            args.extend(common_args(cell, pki, "client"));
            let openssl = OpenSsl::spawn(&args);
            let (tcp, _) = within("s_client connecting", listener.accept()).await.expect("accept");
            let tls = pki.files(cell.cert, "server", cell.engine).grpc_server_config().expect("server TLS");
            let conn = within("our server's handshake", accept_tls(tcp, &tls)).await;
            (openssl, conn.unwrap_or_else(|e| panic!("handshake with s_client: {e}")))
        }
    }
}

fn pattern(len: usize, seed: usize) -> Vec<u8> {
    (0..len).map(|i| 0x80 | ((i * 31 + seed) % 128) as u8).collect()
}

async fn read_exactly(conn: &mut Conn, len: usize) -> Vec<u8> {
    let mut got = vec![0u8; len];
    within("reading from openssl", conn.read_exact(&mut got)).await.expect("data from openssl");
    got
}

/// One connection of the matrix; panics with OpenSSL's output when anything is off.
async fn run(cell: Cell) {
    let (mut openssl, mut conn) = connect(&cell).await;
    let mut up = pattern(1 << 20, 1);
    conn.write_all(&up).await.expect("write to openssl");
    conn.flush().await.expect("flush");
    openssl.received(&up).await;
    let down = pattern(512 * 1024, 2);
    openssl.send(&down).await;
    assert!(read_exactly(&mut conn, down.len()).await == down, "corrupted data from openssl");

    match cell.version {
        Version::Tls13 => {
            // Our KeyUpdate, asking OpenSSL to update its keys too.
            conn.update_tls_keys(true).expect("our key update");
            let more = pattern(256 * 1024, 3);
            conn.write_all(&more).await.expect("write after our key update");
            conn.flush().await.expect("flush");
            up.extend_from_slice(&more);
            openssl.received(&up).await;
            // OpenSSL's KeyUpdates: `k`, then `K`, which asks us to update ours. Each command must
            // be alone in the read OpenSSL makes of its stdin: it is sent only once everything
            // before it was received, and the next waits until OpenSSL reports it done.
            for command in ["k\n", "K\n"] {
                let (stream, done) = match cell.ours {
                    Role::Client => (&openssl.stdout, "SSL_do_handshake -> 1"),
                    Role::Server => (&openssl.stderr, "KEYUPDATE"),
                };
                let before = stream.count(done);
                let stream = stream.clone();
                openssl.send(command.as_bytes()).await;
                stream.wait_for("openssl's key update", |seen| (count(&seen.text, done) > before).then_some(())).await;
                let after = pattern(128 * 1024, command.len() + usize::from(command.as_bytes()[0]));
                openssl.send(&after).await;
                assert!(read_exactly(&mut conn, after.len()).await == after, "corrupted data after {command:?}");
            }
            // Our answer to `K` went out before this data, which OpenSSL must read under our new key.
            let last = pattern(64 * 1024, 4);
            conn.write_all(&last).await.expect("write after openssl's key update");
            conn.flush().await.expect("flush");
            up.extend_from_slice(&last);
            openssl.received(&up).await;
            within("our close_notify", conn.shutdown()).await.expect("shutdown");
            let mut rest = Vec::new();
            // OpenSSL answers with its close_notify or just closes; neither may hang.
            let _ = within("the end of the stream", conn.read_to_end(&mut rest)).await;
            assert!(rest.is_empty(), "{} unexpected bytes after the data", rest.len());
            let (status, output) = openssl.exit().await;
            assert!(output.contains(&format!("is {}", cell.suite)), "{cell:?}: suite not negotiated\n{output}");
            assert!(status.success() || cell.ours == Role::Client, "{cell:?}: openssl {status}\n{output}");
        }
        Version::Tls12 => {
            let command = match cell.ours {
                Role::Client => "r\n",
                Role::Server => "R\n",
            };
            openssl.send(command.as_bytes()).await;
            let mut rest = Vec::new();
            let result = within("the refused renegotiation", conn.read_to_end(&mut rest)).await;
            let err = result.expect_err("a refused renegotiation ends the connection");
            assert!(rest.is_empty(), "{} unexpected bytes", rest.len());
            let (_, output) = openssl.exit().await;
            assert!(output.contains("no renegotiation"), "{cell:?}: openssl did not see our refusal ({err})\n{output}");
            assert!(output.contains(&format!("is {}", cell.suite)), "{cell:?}: suite not negotiated\n{output}");
        }
    }
}

async fn run_all(version: Version, engine: TlsEngine) {
    for ours in [Role::Client, Role::Server] {
        for cell in cells(version, ours, engine) {
            run(cell).await;
        }
    }
}

#[tokio::test]
async fn tls13_with_openssl_inplace_engine() {
    run_all(Version::Tls13, TlsEngine::Inplace).await;
}

#[tokio::test]
async fn tls13_with_openssl_rustls_engine() {
    run_all(Version::Tls13, TlsEngine::Rustls).await;
}

#[tokio::test]
async fn tls12_with_openssl_inplace_engine() {
    run_all(Version::Tls12, TlsEngine::Inplace).await;
}

#[tokio::test]
async fn tls12_with_openssl_rustls_engine() {
    run_all(Version::Tls12, TlsEngine::Rustls).await;
}
