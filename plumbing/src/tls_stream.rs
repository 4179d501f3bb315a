//! TLS connections whose records we encrypt and decrypt ourselves, after rustls did the handshake.
//!
//! Why: every hop of the pipeline is TLS, and tokio-rustls costs each party ~5 % of its CPU on top
//! of the cipher itself (BENCHMARKS.md §0): rustls reads the socket 4 KiB at a time (so we put a
//! 64 KiB `BufReader` in front of it, one more copy), regrows and shrinks its record buffer for every
//! record, copies each decrypted record into a fresh `Vec`, and allocates a `Vec` for each record it
//! encrypts. Here a single socket read fills a 64 KiB+ buffer with many records, each is decrypted in
//! place and copied once, straight into the reader's buffer; outgoing records are sealed in place
//! in one reusable buffer and leave in one `write`. `tls_engine = "rustls"` ([`crate::tls::TlsEngine`])
//! uses tokio-rustls instead.
//!
//! rustls still does everything but the records: the handshake (through its unbuffered API, so no
//! byte the peer sent after the handshake is swallowed), certificate verification, and the key
//! schedule: a TLS 1.3 `KeyUpdate` from the peer, or one we send before a cipher's confidentiality
//! limit, is derived by its [`KernelConnection`] (the API rustls offers for kTLS, which is what
//! this is in user space). TLS 1.2 (AES-GCM, ChaCha20-Poly1305) and 1.3 records are both handled.
//!
//! The record layer enforces what rustls's own does (issue 15, RELIABILITY.md §2):
//! - ciphertext at most 2^14 + 256 bytes in TLS 1.3 and 2^14 + 2048 in TLS 1.2, plaintext at most
//!   2^14 (`record_overflow`); a record that does not decrypt is `bad_record_mac`;
//! - at most 32 empty records in a row, and at most 32 `KeyUpdate`s without application data
//!   between them; a requested `KeyUpdate` is answered once however many requests arrive while
//!   our previous writes are still unsent, so a peer that never reads cannot grow our write buffer;
//! - a handshake message split over records is not interleaved with records of another type;
//! - renegotiation (a TLS 1.2 `HelloRequest` to a client, `ClientHello` to a server) is refused
//!   with a `no_renegotiation` warning, once; a second attempt is fatal.
//!
//! Post-handshake messages: a client ignores `NewSessionTicket` (our clients do not resume);
//! anything else but `KeyUpdate` ends the connection. A `close_notify` alert is a clean end of
//! stream; EOF without it is `UnexpectedEof`, as in tokio-rustls. A TLS 1.2 warning alert (or
//! TLS 1.3 `user_canceled`) is ignored, four at most; any other alert ends the connection.
//!
//! Errors are sticky: once a record fails (or the socket does), every later read and write returns
//! the same error. A protocol error is told to the peer in a fatal alert sealed with the current
//! keys, best effort, before the socket is shut down.

use std::borrow::Cow;
use std::io::{self, IoSlice};
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::client::UnbufferedClientConnection;
use rustls::kernel::KernelConnection;
use rustls::pki_types::ServerName;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, UnbufferedStatus};
use rustls::{ClientConfig, ConnectionTrafficSecrets, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// Largest plaintext of one record (RFC 8446 §5.1, RFC 5246 §6.2.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest TLS 1.3 ciphertext, header excluded (RFC 8446 §5.2).
const MAX_CIPHERTEXT_TLS13: usize = MAX_PLAINTEXT + 256;
/// Largest TLS 1.2 ciphertext, header excluded (RFC 5246 §6.2.3): also what the buffers are sized for.
const MAX_CIPHERTEXT: usize = MAX_PLAINTEXT + 2048;
const HEADER: usize = 5;
const TAG: usize = 16;
/// The read buffer: room for several full records per system call.
const READ_BUFFER: usize = 64 * 1024 + HEADER + MAX_CIPHERTEXT;
/// Encrypted bytes held for the socket before `poll_write` pushes back.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// Write buffer capacity kept between bursts: one full `poll_write` and its record overhead, so a
/// steady stream never reallocates.
const OUTBUF_KEEP: usize = 160 * 1024;
/// Most plaintext taken by one `poll_write` call.
const MAX_WRITE: usize = 128 * 1024;
/// Largest post-handshake handshake message we buffer.
const MAX_HANDSHAKE_MESSAGE: usize = 64 * 1024;
/// Empty records accepted in a row (rustls's and BoringSSL's limit).
const MAX_EMPTY_RECORDS_IN_A_ROW: u8 = 32;
/// `KeyUpdate`s accepted without application data between them (rustls's and BoringSSL's limit).
const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;
/// Warning alerts ignored over a connection's life (rustls's and BoringSSL's limit).
const MAX_WARNING_ALERTS: u8 = 4;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_HELLO_REQUEST: u8 = 0;
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_LEVEL_WARNING: u8 = 1;
const ALERT_LEVEL_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;
const ALERT_NO_RENEGOTIATION: u8 = 100;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
}

/// Why a connection failed: the fatal alert the peer is told (when it is to be told) and the
/// error every later read and write returns.
#[derive(Clone, Debug)]
struct Failure {
    alert: Option<u8>,
    kind: io::ErrorKind,
    message: Cow<'static, str>,
}

impl Failure {
    /// The peer broke the protocol: tell it with `alert`.
    fn protocol(alert: u8, message: impl Into<Cow<'static, str>>) -> Self {
        Self { alert: Some(alert), kind: io::ErrorKind::InvalidData, message: message.into() }
    }

    fn unexpected(message: impl Into<Cow<'static, str>>) -> Self {
        Self::protocol(ALERT_UNEXPECTED_MESSAGE, message)
    }

    /// The peer ended the connection with a fatal alert: nothing to answer.
    fn alert_received(description: u8) -> Self {
        Self {
            alert: None,
            kind: io::ErrorKind::ConnectionAborted,
            message: format!("peer sent TLS alert {description}").into(),
        }
    }

    /// The socket failed (or ended): nothing can be sent.
    fn io(err: &io::Error) -> Self {
        Self { alert: None, kind: err.kind(), message: err.to_string().into() }
    }

    fn to_io(&self) -> io::Error {
        io::Error::new(self.kind, self.message.to_string())
    }
}

fn internal(err: rustls::Error) -> Failure {
    Failure::protocol(ALERT_INTERNAL_ERROR, err.to_string())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Tls13,
    /// TLS 1.2 AES-GCM: an 8-byte explicit nonce leads every record.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305: nonce from the sequence number, as in 1.3.
    Tls12Chacha,
}

/// One direction's record protection: key, IV and sequence number.
struct Protection {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    format: Format,
}

impl Protection {
    fn new(secrets: ConnectionTrafficSecrets, seq: u64, version: ProtocolVersion) -> Result<Self, Failure> {
        let (algorithm, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&aead::CHACHA20_POLY1305, key, iv),
            _ => return Err(Failure::protocol(ALERT_INTERNAL_ERROR, "unsupported cipher suite")),
        };
        Self::from_parts(algorithm, key.as_ref(), iv.as_ref(), seq, version)
    }

    fn from_parts(
        algorithm: &'static aead::Algorithm,
        key: &[u8],
        iv: &[u8],
        seq: u64,
        version: ProtocolVersion,
    ) -> Result<Self, Failure> {
        let format = match version {
            ProtocolVersion::TLSv1_3 => Format::Tls13,
            _ if algorithm == &aead::CHACHA20_POLY1305 => Format::Tls12Chacha,
            _ => Format::Tls12Gcm,
        };
        let key =
            UnboundKey::new(algorithm, key).map_err(|_| Failure::protocol(ALERT_INTERNAL_ERROR, "bad traffic key"))?;
        let iv: [u8; aead::NONCE_LEN] =
            iv.try_into().map_err(|_| Failure::protocol(ALERT_INTERNAL_ERROR, "bad traffic IV"))?;
        Ok(Self { key: LessSafeKey::new(key), iv, seq, format })
    }

    /// Largest ciphertext (header excluded) of a record this side accepts.
    fn max_ciphertext(&self) -> usize {
        if self.format == Format::Tls13 {
            MAX_CIPHERTEXT_TLS13
        } else {
            MAX_CIPHERTEXT
        }
    }

    /// The IV with the sequence number XORed into its last eight bytes (RFC 8446 §5.3; rustls
    /// builds TLS 1.2 GCM's explicit nonce the same way).
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// The additional data of a record: TLS 1.3's is the record header; TLS 1.2's is the sequence
    /// number, type, version and plaintext length. Returned as a buffer and its used length.
    fn aad(&self, header: &[u8], typ: u8, plain_len: usize) -> ([u8; 13], usize) {
        let mut aad = [0u8; 13];
        if self.format == Format::Tls13 {
            aad[..HEADER].copy_from_slice(&header[..HEADER]);
            return (aad, HEADER);
        }
        aad[..8].copy_from_slice(&self.seq.to_be_bytes());
        aad[8] = typ;
        aad[9..11].copy_from_slice(&[3, 3]);
        // Callers bound records to MAX_CIPHERTEXT, so the length fits.
        aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
        (aad, 13)
    }

    /// Decrypts the record `record` (header included, at most [`Self::max_ciphertext`] long) in
    /// place. Returns its content type and the plaintext's range within `record`.
    fn open(&mut self, record: &mut [u8]) -> Result<(u8, Range<usize>), Failure> {
        let outer = record[0];
        // TLS 1.2 GCM records lead with an explicit nonce; every format ends with the tag.
        let explicit = if self.format == Format::Tls12Gcm { 8 } else { 0 };
        if record.len() < HEADER + explicit + TAG {
            return Err(Failure::protocol(ALERT_BAD_RECORD_MAC, "short TLS record"));
        }
        if self.format == Format::Tls13 && outer != CONTENT_APPLICATION_DATA {
            return Err(Failure::unexpected(format!("unexpected TLS record type {outer} after the handshake")));
        }
        let nonce = match self.format {
            Format::Tls12Gcm => {
                let mut nonce = [0u8; aead::NONCE_LEN];
                nonce[..4].copy_from_slice(&self.iv[..4]);
                nonce[4..].copy_from_slice(&record[HEADER..HEADER + 8]);
                nonce
            }
            Format::Tls13 | Format::Tls12Chacha => self.nonce(),
        };
        let cipher_start = HEADER + explicit;
        let (aad, aad_len) = self.aad(&record[..HEADER], outer, record.len() - cipher_start - TAG);
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(&aad[..aad_len]), &mut record[cipher_start..])
            .map_err(|_| Failure::protocol(ALERT_BAD_RECORD_MAC, "TLS record failed to decrypt"))?;
        let (typ, plain_len) = if self.format == Format::Tls13 {
            // Inner plaintext: content, content type, zero padding (RFC 8446 §5.4), at most 2^14 + 1.
            if plain.len() > MAX_PLAINTEXT + 1 {
                return Err(Failure::protocol(ALERT_RECORD_OVERFLOW, "oversized TLS plaintext"));
            }
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(Failure::unexpected("TLS record without a content type"));
            };
            (plain[end], end)
        } else {
            if plain.len() > MAX_PLAINTEXT {
                return Err(Failure::protocol(ALERT_RECORD_OVERFLOW, "oversized TLS plaintext"));
            }
            (outer, plain.len())
        };
        self.seq = self
            .seq
            .checked_add(1)
            .ok_or_else(|| Failure::protocol(ALERT_INTERNAL_ERROR, "TLS record sequence number exhausted"))?;
        Ok((typ, cipher_start..cipher_start + plain_len))
    }

    /// Appends one record carrying the concatenation of `parts` (at most [`MAX_PLAINTEXT`] bytes).
    fn seal(&mut self, typ: u8, parts: &[&[u8]], out: &mut Vec<u8>) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let (outer, explicit, inner_type) = match self.format {
            Format::Tls13 => (CONTENT_APPLICATION_DATA, 0, 1),
            Format::Tls12Gcm => (typ, 8, 0),
            Format::Tls12Chacha => (typ, 0, 0),
        };
        let body_len = explicit + len + inner_type + TAG;
        out.reserve(HEADER + body_len);
        let header = [outer, 3, 3, (body_len >> 8) as u8, body_len as u8];
        out.extend_from_slice(&header);
        let nonce = self.nonce();
        out.extend_from_slice(&nonce[4..4 + explicit]);
        let plain_start = out.len();
        for part in parts {
            out.extend_from_slice(part);
        }
        if inner_type == 1 {
            out.push(typ);
        }
        let (aad, aad_len) = self.aad(&header, typ, len);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&aad[..aad_len]),
                &mut out[plain_start..],
            )
            // Sealing fails only for a plaintext beyond the AEAD's limit (gigabytes); records are 16 KiB.
            .expect("a TLS record is within the AEAD's size limit");
        out.extend_from_slice(tag.as_ref());
        self.seq += 1;
    }
}

fn confidentiality_limit(suite: rustls::SupportedCipherSuite) -> u64 {
    match suite {
        rustls::SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        rustls::SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
    }
}

/// The key schedule rustls keeps for us after the handshake.
enum Kernel {
    Client(KernelConnection<rustls::client::ClientConnectionData>),
    Server(KernelConnection<rustls::server::ServerConnectionData>),
    /// Fixed keys for [`fuzz_read_records`]: every key update starts the same key over.
    Fixed {
        client: bool,
        algorithm: &'static aead::Algorithm,
        key: Vec<u8>,
        iv: [u8; aead::NONCE_LEN],
    },
}

impl Kernel {
    fn update_rx(&mut self, version: ProtocolVersion) -> Result<Protection, Failure> {
        let (seq, secrets) = match self {
            Self::Client(k) => k.update_rx_secret(),
            Self::Server(k) => k.update_rx_secret(),
            Self::Fixed { algorithm, key, iv, .. } => return Protection::from_parts(algorithm, key, iv, 0, version),
        }
        .map_err(internal)?;
        Protection::new(secrets, seq, version)
    }

    fn update_tx(&mut self, version: ProtocolVersion) -> Result<Protection, Failure> {
        let (seq, secrets) = match self {
            Self::Client(k) => k.update_tx_secret(),
            Self::Server(k) => k.update_tx_secret(),
            Self::Fixed { algorithm, key, iv, .. } => return Protection::from_parts(algorithm, key, iv, 0, version),
        }
        .map_err(internal)?;
        Protection::new(secrets, seq, version)
    }

    fn is_client(&self) -> bool {
        match self {
            Self::Client(_) => true,
            Self::Server(_) => false,
            Self::Fixed { client, .. } => *client,
        }
    }
}

/// What a [`TlsStream`] runs over: a byte stream that can tell whether it has data without a read
/// buffer, so that an idle connection gives its buffer back.
pub trait Transport: AsyncRead + AsyncWrite + Unpin {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;
}

impl Transport for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }
}

/// A TLS connection over TCP whose records this module handles (see the module docs).
pub struct TlsStream<T = TcpStream> {
    io: T,
    kernel: Kernel,
    version: ProtocolVersion,
    rx: Protection,
    tx: Protection,
    /// Records sealed with the sequence number at or beyond this are preceded by a key update
    /// (TLS 1.3) or refused (TLS 1.2): the cipher suite's confidentiality limit, with margin.
    tx_limit: u64,
    /// Received bytes: `[head, tail)` not yet consumed.
    inbuf: Box<[u8]>,
    head: usize,
    tail: usize,
    /// Decrypted application data within `inbuf` not yet handed out.
    plain: Range<usize>,
    /// Application data decrypted by rustls during the handshake, handed out first.
    early: Vec<u8>,
    early_pos: usize,
    /// A post-handshake handshake message split over records.
    handshake: Vec<u8>,
    read_closed: bool,
    /// Empty records received since the last non-empty one.
    empty_in_a_row: u8,
    /// `KeyUpdate`s received since the last application data.
    key_updates_in_a_row: u8,
    /// The peer asked for a `KeyUpdate` we have not sent yet. It goes out before our next
    /// application data, or once our earlier records have left: however many requests arrive
    /// meanwhile, one answer (RFC 8446 §4.6.3), so a peer that never reads cannot grow `outbuf`.
    key_update_owed: bool,
    /// Warning alerts the peer may still send before one more ends the connection.
    warnings_left: u8,
    /// A renegotiation was refused already: the next attempt is fatal.
    renegotiation_refused: bool,
    /// Encrypted bytes not yet written: `outbuf[out_head..]`.
    outbuf: Vec<u8>,
    out_head: usize,
    /// No record may follow: close_notify or a fatal alert was sealed.
    close_notify_sent: bool,
    /// The first failure; every later read and write returns it.
    failed: Option<Failure>,
}

impl TlsStream<TcpStream> {
    /// Performs the server side of a handshake on `tcp`.
    pub async fn accept(mut tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut hs = Handshake::new();
        let mut conn = ServerSide(conn);
        hs.run(&mut conn, &mut tcp).await?;
        let (secrets, kernel) = conn.0.dangerous_into_kernel_connection().map_err(tls_error)?;
        let version = kernel.protocol_version();
        let limit = confidentiality_limit(kernel.negotiated_cipher_suite());
        Self::after_handshake(tcp, Kernel::Server(kernel), version, limit, secrets, hs)
    }

    /// Performs the client side of a handshake on `tcp`, verifying the server as `server_name`.
    pub async fn connect(
        mut tcp: TcpStream,
        config: Arc<ClientConfig>,
        server_name: ServerName<'static>,
    ) -> io::Result<Self> {
        let conn = UnbufferedClientConnection::new(config, server_name).map_err(tls_error)?;
        let mut hs = Handshake::new();
        let mut conn = ClientSide(conn);
        hs.run(&mut conn, &mut tcp).await?;
        let (secrets, kernel) = conn.0.dangerous_into_kernel_connection().map_err(tls_error)?;
        let version = kernel.protocol_version();
        let limit = confidentiality_limit(kernel.negotiated_cipher_suite());
        Self::after_handshake(tcp, Kernel::Client(kernel), version, limit, secrets, hs)
    }

    fn after_handshake(
        tcp: TcpStream,
        kernel: Kernel,
        version: ProtocolVersion,
        confidentiality_limit: u64,
        secrets: rustls::ExtractedSecrets,
        hs: Handshake,
    ) -> io::Result<Self> {
        let rx = Protection::new(secrets.rx.1, secrets.rx.0, version).map_err(|f| f.to_io())?;
        let tx = Protection::new(secrets.tx.1, secrets.tx.0, version).map_err(|f| f.to_io())?;
        let mut stream = Self::new(tcp, kernel, version, rx, tx);
        // rustls refreshes keys at the limit itself; we stay 1/16 below it.
        stream.tx_limit = confidentiality_limit - confidentiality_limit / 16;
        // Records that arrived with the end of the handshake are already at the buffer's front.
        stream.tail = hs.used;
        stream.inbuf = hs.inbuf.into_boxed_slice();
        stream.early = hs.early;
        stream.read_closed = hs.peer_closed;
        Ok(stream)
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.io
    }
}

impl<T: Transport> TlsStream<T> {
    fn new(io: T, kernel: Kernel, version: ProtocolVersion, rx: Protection, tx: Protection) -> Self {
        Self {
            io,
            kernel,
            version,
            rx,
            tx,
            tx_limit: u64::MAX,
            inbuf: Box::default(),
            head: 0,
            tail: 0,
            plain: 0..0,
            early: Vec::new(),
            early_pos: 0,
            handshake: Vec::new(),
            read_closed: false,
            empty_in_a_row: 0,
            key_updates_in_a_row: 0,
            key_update_owed: false,
            warnings_left: MAX_WARNING_ALERTS,
            renegotiation_refused: false,
            outbuf: Vec::new(),
            out_head: 0,
            close_notify_sent: false,
            failed: None,
        }
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.version
    }

    #[cfg(test)]
    fn set_tx_limit(&mut self, limit: u64) {
        self.tx_limit = limit;
    }

    /// Queues a TLS 1.3 `KeyUpdate` (asking the peer to update its keys too when `request_peer`)
    /// and moves to the next sending key; the next write or flush sends it. For tests of the key
    /// schedule against other implementations: the record layer updates its keys by itself.
    #[doc(hidden)]
    pub fn update_keys(&mut self, request_peer: bool) -> io::Result<()> {
        if let Some(failure) = &self.failed {
            return Err(failure.to_io());
        }
        self.update_tx_keys(request_peer).map_err(|f| f.to_io())
    }

    /// Seals `parts` as records of at most [`MAX_PLAINTEXT`] bytes each into `outbuf`.
    fn seal_all(&mut self, typ: u8, bufs: &[IoSlice<'_>], max: usize) -> Result<usize, Failure> {
        let mut taken = 0;
        let mut parts: Vec<&[u8]> = Vec::with_capacity(4);
        let mut record_len = 0;
        for buf in bufs {
            let mut rest: &[u8] = buf;
            while !rest.is_empty() && taken < max {
                let n = rest.len().min(MAX_PLAINTEXT - record_len).min(max - taken);
                parts.push(&rest[..n]);
                rest = &rest[n..];
                record_len += n;
                taken += n;
                if record_len == MAX_PLAINTEXT {
                    self.seal_one(typ, &parts)?;
                    parts.clear();
                    record_len = 0;
                }
            }
        }
        if record_len > 0 {
            self.seal_one(typ, &parts)?;
        }
        Ok(taken)
    }

    fn seal_one(&mut self, typ: u8, parts: &[&[u8]]) -> Result<(), Failure> {
        // A KeyUpdate the peer asked for precedes our next application data (RFC 8446 §4.6.3).
        if self.key_update_owed || self.tx.seq >= self.tx_limit {
            self.update_tx_keys(false)?;
        }
        self.tx.seal(typ, parts, &mut self.outbuf);
        Ok(())
    }

    /// Sends a TLS 1.3 `KeyUpdate` under the current key and switches to the next one.
    fn update_tx_keys(&mut self, request_peer: bool) -> Result<(), Failure> {
        if self.version != ProtocolVersion::TLSv1_3 {
            return Err(Failure {
                alert: None,
                kind: io::ErrorKind::InvalidData,
                message: "TLS 1.2 connection reached its cipher's confidentiality limit".into(),
            });
        }
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, u8::from(request_peer)];
        self.tx.seal(CONTENT_HANDSHAKE, &[&message], &mut self.outbuf);
        self.tx = self.kernel.update_tx(self.version)?;
        self.key_update_owed = false;
        Ok(())
    }

    /// Records `failure` as the connection's (unless it failed already), tells the peer with a
    /// fatal alert when the failure calls for one (best effort: as far as the socket takes it now),
    /// and returns the error for the caller.
    fn fail(&mut self, cx: &mut Context<'_>, failure: Failure) -> io::Error {
        if let Some(first) = &self.failed {
            return first.to_io();
        }
        let err = failure.to_io();
        if let (Some(alert), false) = (failure.alert, self.close_notify_sent) {
            self.close_notify_sent = true;
            self.tx.seal(CONTENT_ALERT, &[&[ALERT_LEVEL_FATAL, alert]], &mut self.outbuf);
            if let Poll::Ready(Ok(())) = self.poll_flush_out(cx) {
                let _ = Pin::new(&mut self.io).poll_shutdown(cx);
            }
        }
        self.failed = Some(failure);
        err
    }

    /// Writes pending records until done or the socket would block. A failed write fails the connection.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_head < self.outbuf.len() {
            let result = ready!(Pin::new(&mut self.io).poll_write(cx, &self.outbuf[self.out_head..]));
            let err = match result {
                Ok(0) => io::Error::from(io::ErrorKind::WriteZero),
                Ok(n) => {
                    self.out_head += n;
                    continue;
                }
                Err(err) => err,
            };
            self.failed.get_or_insert_with(|| Failure::io(&err));
            return Poll::Ready(Err(err));
        }
        self.outbuf.clear();
        self.out_head = 0;
        // A burst may have grown the buffer to WRITE_HIGH_WATER + MAX_WRITE; an idle connection
        // keeps only what one write needs.
        if self.outbuf.capacity() > OUTBUF_KEEP {
            self.outbuf.shrink_to(OUTBUF_KEEP);
        }
        Poll::Ready(Ok(()))
    }

    fn pending_out(&self) -> usize {
        self.outbuf.len() - self.out_head
    }

    /// Sends what the reading side owes the peer (a `KeyUpdate`, a warning) as far as the socket
    /// takes it now. An owed `KeyUpdate` is sealed only once everything before it has left.
    fn poll_flush_control(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.pending_out() > 0 {
            if let Poll::Ready(Err(err)) = self.poll_flush_out(cx) {
                return Err(err);
            }
        }
        if self.key_update_owed && self.pending_out() == 0 && !self.close_notify_sent {
            if let Err(failure) = self.update_tx_keys(false) {
                return Err(self.fail(cx, failure));
            }
            if let Poll::Ready(Err(err)) = self.poll_flush_out(cx) {
                return Err(err);
            }
        }
        Ok(())
    }

    /// Decrypts and handles the record at `record` in `inbuf`.
    fn process_record(&mut self, record: Range<usize>) -> Result<(), Failure> {
        let (typ, range) = self.rx.open(&mut self.inbuf[record.clone()])?;
        let range = record.start + range.start..record.start + range.end;
        if !self.handshake.is_empty() && typ != CONTENT_HANDSHAKE {
            // RFC 8446 §5.1: no other record between the fragments of a handshake message.
            return Err(Failure::unexpected("TLS record interleaved with a split handshake message"));
        }
        if range.is_empty() {
            // Only application data may be empty (RFC 8446 §5.1, RFC 5246 §6.2.1), and not forever.
            if typ != CONTENT_APPLICATION_DATA {
                return Err(Failure::unexpected(format!("empty TLS record of type {typ}")));
            }
            if self.empty_in_a_row == MAX_EMPTY_RECORDS_IN_A_ROW {
                return Err(Failure::unexpected("too many empty TLS records in a row"));
            }
            self.empty_in_a_row += 1;
            return Ok(());
        }
        self.empty_in_a_row = 0;
        match typ {
            CONTENT_APPLICATION_DATA => {
                self.key_updates_in_a_row = 0;
                self.plain = range;
                Ok(())
            }
            CONTENT_ALERT => self.alert(range),
            CONTENT_HANDSHAKE => {
                self.handshake.extend_from_slice(&self.inbuf[range]);
                self.handshake_messages()
            }
            other => Err(Failure::unexpected(format!("unexpected TLS content type {other}"))),
        }
    }

    /// Handles a received alert: close_notify ends the stream, a few warnings are ignored, any
    /// other alert fails the connection.
    fn alert(&mut self, range: Range<usize>) -> Result<(), Failure> {
        let &[level, description] = &self.inbuf[range] else {
            return Err(Failure::protocol(ALERT_DECODE_ERROR, "malformed TLS alert"));
        };
        if description == ALERT_CLOSE_NOTIFY {
            self.read_closed = true;
            return Ok(());
        }
        // TLS 1.3 alerts are fatal whatever their level, but for user_canceled (RFC 8446 §6).
        let warning = if self.version == ProtocolVersion::TLSv1_3 {
            description == ALERT_USER_CANCELED
        } else {
            level == ALERT_LEVEL_WARNING
        };
        if !warning {
            return Err(Failure::alert_received(description));
        }
        if self.warnings_left == 0 {
            return Err(Failure::unexpected("too many TLS warning alerts"));
        }
        self.warnings_left -= 1;
        Ok(())
    }

    /// Processes the complete post-handshake messages buffered in `handshake`.
    fn handshake_messages(&mut self) -> Result<(), Failure> {
        let mut at = 0;
        while self.handshake.len() - at >= 4 {
            let h = &self.handshake[at..];
            let (typ, len) = (h[0], usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]));
            if len > MAX_HANDSHAKE_MESSAGE {
                return Err(Failure::unexpected("oversized TLS handshake message"));
            }
            if h.len() < 4 + len {
                break;
            }
            let end = at + 4 + len;
            let tls13 = self.version == ProtocolVersion::TLSv1_3;
            let client = self.kernel.is_client();
            match typ {
                HANDSHAKE_KEY_UPDATE if tls13 => {
                    let requested = match h[4..] {
                        [0] => false,
                        [1] => true,
                        [_] => return Err(Failure::protocol(ALERT_ILLEGAL_PARAMETER, "invalid TLS KeyUpdate")),
                        _ => return Err(Failure::protocol(ALERT_DECODE_ERROR, "malformed TLS KeyUpdate")),
                    };
                    if end != self.handshake.len() {
                        // A key change must end its record (RFC 8446 §5.1).
                        return Err(Failure::unexpected("TLS KeyUpdate not at a record boundary"));
                    }
                    if self.key_updates_in_a_row == MAX_KEY_UPDATES_IN_A_ROW {
                        return Err(Failure::unexpected("too many TLS KeyUpdates without data"));
                    }
                    self.key_updates_in_a_row += 1;
                    self.rx = self.kernel.update_rx(self.version)?;
                    self.key_update_owed |= requested;
                }
                HANDSHAKE_NEW_SESSION_TICKET if tls13 && client => {}
                HANDSHAKE_HELLO_REQUEST | HANDSHAKE_CLIENT_HELLO
                    if !tls13 && client == (typ == HANDSHAKE_HELLO_REQUEST) =>
                {
                    if self.renegotiation_refused {
                        return Err(Failure::unexpected("TLS renegotiation attempted again after a refusal"));
                    }
                    self.renegotiation_refused = true;
                    self.tx.seal(CONTENT_ALERT, &[&[ALERT_LEVEL_WARNING, ALERT_NO_RENEGOTIATION]], &mut self.outbuf);
                }
                other => {
                    return Err(Failure::unexpected(format!(
                        "unexpected TLS handshake message {other} after the handshake"
                    )))
                }
            }
            at = end;
        }
        self.handshake.drain(..at);
        Ok(())
    }

    /// Moves the unconsumed bytes to the front of `inbuf`.
    fn compact(&mut self) {
        self.inbuf.copy_within(self.head..self.tail, 0);
        self.tail -= self.head;
        self.head = 0;
    }

    fn poll_write_parts(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
        if let Some(failure) = &self.failed {
            return Poll::Ready(Err(failure.to_io()));
        }
        if self.close_notify_sent {
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::BrokenPipe, "TLS connection closed")));
        }
        if self.pending_out() > 0 {
            match self.poll_flush_out(cx) {
                Poll::Ready(result) => result?,
                Poll::Pending if self.pending_out() >= WRITE_HIGH_WATER => return Poll::Pending,
                Poll::Pending => {}
            }
        }
        let taken = match self.seal_all(CONTENT_APPLICATION_DATA, bufs, MAX_WRITE) {
            Ok(taken) => taken,
            Err(failure) => return Poll::Ready(Err(self.fail(cx, failure))),
        };
        // The bytes are ours now; if the socket is full, the waker registered here (or the
        // caller's next flush) finishes the job. Writing at once rather than at the flush keeps
        // the peer busy sooner: gathering frames until the flush measured slightly slower.
        if let Poll::Ready(Err(e)) = self.poll_flush_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }
}

impl<T: Transport> AsyncRead for TlsStream<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(failure) = &this.failed {
            return Poll::Ready(Err(failure.to_io()));
        }
        if this.early_pos < this.early.len() {
            let n = buf.remaining().min(this.early.len() - this.early_pos);
            buf.put_slice(&this.early[this.early_pos..this.early_pos + n]);
            this.early_pos += n;
            if this.early_pos == this.early.len() {
                this.early = Vec::new();
                this.early_pos = 0;
            }
            return Poll::Ready(Ok(()));
        }
        // A KeyUpdate we owe the peer goes out even if the application is only reading.
        this.poll_flush_control(cx)?;
        let start = buf.filled().len();
        loop {
            if !this.plain.is_empty() {
                let n = buf.remaining().min(this.plain.len());
                buf.put_slice(&this.inbuf[this.plain.start..this.plain.start + n]);
                this.plain.start += n;
                if buf.remaining() == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            if this.read_closed {
                return Poll::Ready(Ok(()));
            }
            // A whole record at `head`?
            let available = this.tail - this.head;
            if available >= HEADER {
                let len = usize::from(u16::from_be_bytes([this.inbuf[this.head + 3], this.inbuf[this.head + 4]]));
                if len > this.rx.max_ciphertext() {
                    let failure = Failure::protocol(ALERT_RECORD_OVERFLOW, "oversized TLS record");
                    return Poll::Ready(Err(this.fail(cx, failure)));
                }
                if available >= HEADER + len {
                    let record = this.head..this.head + HEADER + len;
                    this.head = record.end;
                    if let Err(failure) = this.process_record(record) {
                        return Poll::Ready(Err(this.fail(cx, failure)));
                    }
                    if this.plain.is_empty() {
                        this.poll_flush_control(cx)?;
                    }
                    continue;
                }
                if HEADER + len > this.inbuf.len() - this.head {
                    this.compact();
                }
            } else if this.head == this.tail {
                this.head = 0;
                this.tail = 0;
            } else if this.inbuf.len() - this.head < HEADER + MAX_CIPHERTEXT {
                this.compact();
            }
            if buf.filled().len() > start {
                // Hand out what we have rather than wait for more.
                return Poll::Ready(Ok(()));
            }
            if this.head == this.tail {
                // Nothing buffered: wait for the socket without holding the 80 KiB buffer, so an
                // idle connection costs little (the RLP's 1000 idle streams).
                if this.io.poll_read_ready(cx).is_pending() {
                    this.inbuf = Box::default();
                    this.head = 0;
                    this.tail = 0;
                    return Poll::Pending;
                }
                if this.inbuf.is_empty() {
                    this.inbuf = vec![0; READ_BUFFER].into_boxed_slice();
                }
            }
            let result = {
                let mut read = ReadBuf::new(&mut this.inbuf[this.tail..]);
                ready!(Pin::new(&mut this.io).poll_read(cx, &mut read)).map(|()| read.filled().len())
            };
            match result {
                Ok(0) => {
                    let eof = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "peer closed connection without sending TLS close_notify",
                    );
                    return Poll::Ready(Err(this.fail(cx, Failure::io(&eof))));
                }
                Ok(n) => this.tail += n,
                Err(err) => return Poll::Ready(Err(this.fail(cx, Failure::io(&err)))),
            }
        }
    }
}

impl<T: Transport> AsyncWrite for TlsStream<T> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_parts(cx, &[IoSlice::new(buf)])
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().poll_write_parts(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(failure) = &this.failed {
            return Poll::Ready(Err(failure.to_io()));
        }
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(failure) = &this.failed {
            // The alert (if any) went out when the connection failed; just close the socket.
            let _ = Pin::new(&mut this.io).poll_shutdown(cx);
            return Poll::Ready(Err(failure.to_io()));
        }
        if !this.close_notify_sent {
            this.close_notify_sent = true;
            this.tx.seal(CONTENT_ALERT, &[&[ALERT_LEVEL_WARNING, ALERT_CLOSE_NOTIFY]], &mut this.outbuf);
        }
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

// === handshake ===

/// The two sides of rustls's unbuffered API, as one interface.
trait Unbuffered {
    type Data;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn is_handshaking(&self) -> bool;
}

struct ServerSide(UnbufferedServerConnection);
struct ClientSide(UnbufferedClientConnection);

impl Unbuffered for ServerSide {
    type Data = rustls::server::ServerConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.0.process_tls_records(incoming)
    }
    fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }
}

impl Unbuffered for ClientSide {
    type Data = rustls::client::ClientConnectionData;
    fn process<'c, 'i>(&'c mut self, incoming: &'i mut [u8]) -> UnbufferedStatus<'c, 'i, Self::Data> {
        self.0.process_tls_records(incoming)
    }
    fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }
}

/// How long a handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

struct Handshake {
    inbuf: Vec<u8>,
    used: usize,
    outbuf: Vec<u8>,
    early: Vec<u8>,
    /// The peer's close_notify came with the end of the handshake (after any data in `early`).
    peer_closed: bool,
}

enum Step {
    Read,
    Continue,
    Done,
    PeerClosed,
}

impl Handshake {
    fn new() -> Self {
        Self { inbuf: vec![0; READ_BUFFER], used: 0, outbuf: Vec::new(), early: Vec::new(), peer_closed: false }
    }

    async fn run<C: Unbuffered>(&mut self, conn: &mut C, tcp: &mut TcpStream) -> io::Result<()> {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.drive(conn, tcp)).await {
            Ok(result) => result,
            Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out")),
        }
    }

    async fn drive<C: Unbuffered>(&mut self, conn: &mut C, tcp: &mut TcpStream) -> io::Result<()> {
        loop {
            let status = conn.process(&mut self.inbuf[..self.used]);
            let discard = status.discard;
            let step = match status.state {
                Err(err) => {
                    // rustls queued an alert telling the peer why; send it, best effort.
                    let alert = match conn.process(&mut []).state {
                        Ok(ConnectionState::EncodeTlsData(mut data)) => encode(&mut data, &mut self.outbuf).ok(),
                        _ => None,
                    };
                    if alert.is_some() {
                        let _ = tcp.write_all(&self.outbuf).await;
                    }
                    return Err(tls_error(err));
                }
                Ok(ConnectionState::EncodeTlsData(mut data)) => {
                    encode(&mut data, &mut self.outbuf)?;
                    Step::Continue
                }
                Ok(ConnectionState::TransmitTlsData(data)) => {
                    tcp.write_all(&self.outbuf).await?;
                    self.outbuf.clear();
                    data.done();
                    Step::Continue
                }
                Ok(ConnectionState::BlockedHandshake) => Step::Read,
                Ok(ConnectionState::ReadTraffic(mut traffic)) => {
                    while let Some(record) = traffic.next_record() {
                        self.early.extend_from_slice(record.map_err(tls_error)?.payload);
                    }
                    Step::Continue
                }
                Ok(ConnectionState::WriteTraffic(_)) => Step::Done,
                Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => Step::PeerClosed,
                Ok(other) => return Err(invalid(format!("unexpected TLS handshake state {other:?}"))),
            };
            self.inbuf.copy_within(discard..self.used, 0);
            self.used -= discard;
            match step {
                Step::Continue => {}
                Step::Done => return Ok(()),
                // A peer may send its last flight, some data and close_notify at once: the
                // handshake is complete and its stream simply ends after that data.
                Step::PeerClosed if !conn.is_handshaking() => {
                    self.peer_closed = true;
                    return Ok(());
                }
                Step::PeerClosed => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed during TLS handshake"));
                }
                Step::Read => {
                    if self.used == self.inbuf.len() {
                        return Err(invalid("TLS handshake message too large"));
                    }
                    let n = tcp.read(&mut self.inbuf[self.used..]).await?;
                    if n == 0 {
                        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed during TLS handshake"));
                    }
                    self.used += n;
                }
            }
        }
    }
}

fn encode<D>(data: &mut rustls::unbuffered::EncodeTlsData<'_, D>, out: &mut Vec<u8>) -> io::Result<usize> {
    let start = out.len();
    out.resize(start + 4096, 0);
    loop {
        match data.encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(n);
            }
            Err(EncodeError::InsufficientSize(e)) => out.resize(start + e.required_size, 0),
            Err(e) => {
                out.truncate(start);
                return Err(invalid(e.to_string()));
            }
        }
    }
}

// === fuzzing ===

/// A transport over memory: reads come from `input`, `chunk` bytes at most at a time (so records
/// straddle reads), and then EOF; writes are kept in `output`.
struct MemoryTransport {
    input: Vec<u8>,
    at: usize,
    chunk: usize,
    output: Vec<u8>,
}

impl AsyncRead for MemoryTransport {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let n = buf.remaining().min(this.chunk).min(this.input.len() - this.at);
        buf.put_slice(&this.input[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for MemoryTransport {
    fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.output.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl Transport for MemoryTransport {
    fn poll_read_ready(&self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The fixed connection parameters a seed stands for: byte 0 picks version and cipher
/// (TLS 1.3 AES-128-GCM, AES-256-GCM, ChaCha20; TLS 1.2 AES-128-GCM, ChaCha20), bit 0 of byte 1
/// makes our side the client, byte 2 the transport's read size, the rest is the key and IV
/// (zero-padded). Both directions use the same key, so a record sealed by one side opens on the other.
struct FixedSecrets {
    algorithm: &'static aead::Algorithm,
    version: ProtocolVersion,
    client: bool,
    chunk: usize,
    key: Vec<u8>,
    iv: [u8; aead::NONCE_LEN],
}

impl FixedSecrets {
    fn from_seed(seed: &[u8]) -> Self {
        let byte = |i: usize| seed.get(i).copied().unwrap_or(0);
        let (algorithm, version) = match byte(0) % 5 {
            0 => (&aead::AES_128_GCM, ProtocolVersion::TLSv1_3),
            1 => (&aead::AES_256_GCM, ProtocolVersion::TLSv1_3),
            2 => (&aead::CHACHA20_POLY1305, ProtocolVersion::TLSv1_3),
            3 => (&aead::AES_128_GCM, ProtocolVersion::TLSv1_2),
            _ => (&aead::CHACHA20_POLY1305, ProtocolVersion::TLSv1_2),
        };
        let material: Vec<u8> = (0..algorithm.key_len() + aead::NONCE_LEN).map(|i| byte(3 + i)).collect();
        let (key, iv) = material.split_at(algorithm.key_len());
        Self {
            algorithm,
            version,
            client: byte(1) & 1 == 1,
            chunk: 1 + usize::from(byte(2)) * 67,
            key: key.to_vec(),
            iv: iv.try_into().expect("the IV part is NONCE_LEN long"),
        }
    }

    fn protection(&self) -> Protection {
        Protection::from_parts(self.algorithm, &self.key, &self.iv, 0, self.version)
            .expect("ring accepts keys of its algorithm's length")
    }

    fn stream(&self, input: Vec<u8>) -> TlsStream<MemoryTransport> {
        let kernel =
            Kernel::Fixed { client: self.client, algorithm: self.algorithm, key: self.key.clone(), iv: self.iv };
        let transport = MemoryTransport { input, at: 0, chunk: self.chunk, output: Vec::new() };
        TlsStream::new(transport, kernel, self.version, self.protection(), self.protection())
    }
}

/// Entry point for a fuzz target: a [`TlsStream`] with fixed secrets (see `FixedSecrets`:
/// `secrets_seed` picks version, cipher, side and key) reads `records` from memory until the end
/// of stream or an error, then writes once. Returns the application bytes read. Never panics.
#[doc(hidden)]
pub fn fuzz_read_records(secrets_seed: &[u8], records: &[u8]) -> usize {
    let mut stream = FixedSecrets::from_seed(secrets_seed).stream(records.to_vec());
    let mut cx = Context::from_waker(std::task::Waker::noop());
    let mut read = 0;
    let mut buf = [0u8; 4096];
    loop {
        let mut out = ReadBuf::new(&mut buf);
        match Pin::new(&mut stream).poll_read(&mut cx, &mut out) {
            Poll::Ready(Ok(())) if !out.filled().is_empty() => read += out.filled().len(),
            // End of stream, an error, or (the transport never blocks) nothing more to do.
            _ => break,
        }
    }
    let _ = Pin::new(&mut stream).poll_write(&mut cx, b"after");
    read
}

#[cfg(test)]
mod tests;
