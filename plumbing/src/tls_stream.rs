//! TLS connections whose records we encrypt and decrypt ourselves, after rustls did the handshake.
//!
//! Why: every hop of the pipeline is TLS, and tokio-rustls costs each party ~5 % of its CPU on top
//! of the cipher itself (BENCHMARKS.md §0): rustls reads the socket 4 KiB at a time (so we put a
//! 64 KiB `BufReader` in front of it, one more copy), regrows and shrinks its record buffer for every
//! record, copies each decrypted record into a fresh `Vec`, and allocates a `Vec` for each record it
//! encrypts. Here a single socket read fills a 64 KiB+ buffer with many records, each is decrypted in
//! place and copied once, straight into the reader's buffer; outgoing records are sealed in place
//! in one reusable buffer and leave in one `write`.
//!
//! rustls still does everything but the records: the handshake (through its unbuffered API, so no
//! byte the peer sent after the handshake is swallowed), certificate verification, and the key
//! schedule: a TLS 1.3 `KeyUpdate` from the peer, or one we send before a cipher's confidentiality
//! limit, is derived by its [`KernelConnection`] (the API rustls offers for kTLS, which is what
//! this is in user space). TLS 1.2 (AES-GCM, ChaCha20-Poly1305) and 1.3 records are both handled.
//!
//! Post-handshake messages: a client ignores `NewSessionTicket` (our clients do not resume);
//! anything else but `KeyUpdate` ends the connection with an error, as does a TLS 1.2
//! renegotiation attempt. A `close_notify` alert is a clean end of stream; EOF without it is
//! `UnexpectedEof`, as in tokio-rustls.

use std::io::{self, IoSlice};
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

/// Largest plaintext of one record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;
/// Largest ciphertext of one record we accept, header excluded: TLS 1.2's bound (RFC 5246 §6.2.3,
/// 2^14 + 2048), which covers TLS 1.3's 2^14 + 256.
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

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const HANDSHAKE_NEW_SESSION_TICKET: u8 = 4;
const HANDSHAKE_KEY_UPDATE: u8 = 24;
const ALERT_CLOSE_NOTIFY: u8 = 0;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn tls_error(err: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, err)
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
    fn new(secrets: ConnectionTrafficSecrets, seq: u64, version: ProtocolVersion) -> io::Result<Self> {
        let (algorithm, key, iv, format) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv, Format::Tls12Gcm),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv, Format::Tls12Gcm),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv, Format::Tls12Chacha)
            }
            _ => return Err(invalid("unsupported cipher suite")),
        };
        let format = if version == ProtocolVersion::TLSv1_3 { Format::Tls13 } else { format };
        let key = UnboundKey::new(algorithm, key.as_ref()).map_err(|_| invalid("bad traffic key"))?;
        let iv: [u8; aead::NONCE_LEN] = iv.as_ref().try_into().map_err(|_| invalid("bad traffic IV"))?;
        Ok(Self { key: LessSafeKey::new(key), iv, seq, format })
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
        aad[11..].copy_from_slice(&(plain_len as u16).to_be_bytes());
        (aad, 13)
    }

    /// Decrypts the record `record` (header included) in place. Returns its content type and the
    /// plaintext's range within `record`.
    fn open(&mut self, record: &mut [u8]) -> io::Result<(u8, std::ops::Range<usize>)> {
        let outer = record[0];
        // TLS 1.2 GCM records lead with an explicit nonce; every format ends with the tag.
        let explicit = if self.format == Format::Tls12Gcm { 8 } else { 0 };
        if record.len() < HEADER + explicit + TAG {
            return Err(invalid("short TLS record"));
        }
        if self.format == Format::Tls13 && outer != CONTENT_APPLICATION_DATA {
            return Err(invalid(format!("unexpected TLS record type {outer} after the handshake")));
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
            .map_err(|_| invalid("TLS record failed to decrypt"))?;
        let (typ, plain_len) = if self.format == Format::Tls13 {
            // Inner plaintext: content, content type, zero padding (RFC 8446 §5.4).
            let Some(end) = plain.iter().rposition(|&b| b != 0) else {
                return Err(invalid("TLS record without a content type"));
            };
            (plain[end], end)
        } else {
            (outer, plain.len())
        };
        self.seq = self.seq.checked_add(1).ok_or_else(|| invalid("TLS record sequence number exhausted"))?;
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
}

impl Kernel {
    fn update_rx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(k) => k.update_rx_secret(),
            Self::Server(k) => k.update_rx_secret(),
        }
    }

    fn update_tx(&mut self) -> Result<(u64, ConnectionTrafficSecrets), rustls::Error> {
        match self {
            Self::Client(k) => k.update_tx_secret(),
            Self::Server(k) => k.update_tx_secret(),
        }
    }

    fn is_client(&self) -> bool {
        matches!(self, Self::Client(_))
    }
}

/// A TLS connection over TCP whose records this module handles (see the module docs).
pub struct TlsStream {
    tcp: TcpStream,
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
    plain: std::ops::Range<usize>,
    /// Application data decrypted by rustls during the handshake, handed out first.
    early: Vec<u8>,
    early_pos: usize,
    /// A post-handshake handshake message split over records.
    handshake: Vec<u8>,
    read_closed: bool,
    /// Encrypted bytes not yet written: `outbuf[out_head..]`.
    outbuf: Vec<u8>,
    out_head: usize,
    close_notify_sent: bool,
}

impl TlsStream {
    /// Performs the server side of a handshake on `tcp`.
    pub async fn accept(mut tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Self> {
        let conn = UnbufferedServerConnection::new(config).map_err(tls_error)?;
        let mut hs = Handshake::new();
        let mut conn = ServerSide(conn);
        hs.run(&mut conn, &mut tcp).await?;
        let (secrets, kernel) = conn.0.dangerous_into_kernel_connection().map_err(tls_error)?;
        let version = kernel.protocol_version();
        let limit = confidentiality_limit(kernel.negotiated_cipher_suite());
        Self::new(tcp, Kernel::Server(kernel), version, limit, secrets, hs)
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
        Self::new(tcp, Kernel::Client(kernel), version, limit, secrets, hs)
    }

    fn new(
        tcp: TcpStream,
        kernel: Kernel,
        version: ProtocolVersion,
        confidentiality_limit: u64,
        secrets: rustls::ExtractedSecrets,
        hs: Handshake,
    ) -> io::Result<Self> {
        let rx = Protection::new(secrets.rx.1, secrets.rx.0, version)?;
        let tx = Protection::new(secrets.tx.1, secrets.tx.0, version)?;
        // Records that arrived with the end of the handshake are already at the buffer's front.
        let leftover = hs.used;
        let inbuf = hs.inbuf.into_boxed_slice();
        Ok(Self {
            tcp,
            kernel,
            version,
            rx,
            tx,
            // rustls refreshes keys at the limit itself; we stay 1/16 below it.
            tx_limit: confidentiality_limit - confidentiality_limit / 16,
            inbuf,
            head: 0,
            tail: leftover,
            plain: 0..0,
            early: hs.early,
            early_pos: 0,
            handshake: Vec::new(),
            read_closed: hs.peer_closed,
            outbuf: Vec::new(),
            out_head: 0,
            close_notify_sent: false,
        })
    }

    /// The negotiated TLS version.
    pub fn protocol_version(&self) -> ProtocolVersion {
        self.version
    }

    pub fn tcp(&self) -> &TcpStream {
        &self.tcp
    }

    #[cfg(test)]
    fn set_tx_limit(&mut self, limit: u64) {
        self.tx_limit = limit;
    }

    /// Seals `parts` as records of at most [`MAX_PLAINTEXT`] bytes each into `outbuf`.
    fn seal_all(&mut self, typ: u8, bufs: &[IoSlice<'_>], max: usize) -> io::Result<usize> {
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

    fn seal_one(&mut self, typ: u8, parts: &[&[u8]]) -> io::Result<()> {
        if self.tx.seq >= self.tx_limit {
            self.update_tx_keys(false)?;
        }
        self.tx.seal(typ, parts, &mut self.outbuf);
        Ok(())
    }

    /// Sends a TLS 1.3 `KeyUpdate` under the current key and switches to the next one.
    fn update_tx_keys(&mut self, request_peer: bool) -> io::Result<()> {
        if self.version != ProtocolVersion::TLSv1_3 {
            return Err(invalid("TLS 1.2 connection reached its cipher's confidentiality limit"));
        }
        let message = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, u8::from(request_peer)];
        self.tx.seal(CONTENT_HANDSHAKE, &[&message], &mut self.outbuf);
        let (seq, secrets) = self.kernel.update_tx().map_err(tls_error)?;
        self.tx = Protection::new(secrets, seq, self.version)?;
        Ok(())
    }

    /// Writes pending records until done or the socket would block.
    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.out_head < self.outbuf.len() {
            let n = ready!(Pin::new(&mut self.tcp).poll_write(cx, &self.outbuf[self.out_head..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out_head += n;
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

    /// Handles one decrypted non-application record; Ok(true) when it was a close_notify.
    fn control_record(&mut self, typ: u8, range: std::ops::Range<usize>) -> io::Result<bool> {
        match typ {
            CONTENT_ALERT => {
                let body = &self.inbuf[range];
                if body.len() != 2 {
                    return Err(invalid("malformed TLS alert"));
                }
                if body[1] == ALERT_CLOSE_NOTIFY {
                    return Ok(true);
                }
                Err(io::Error::new(io::ErrorKind::ConnectionAborted, format!("peer sent TLS alert {}", body[1])))
            }
            CONTENT_HANDSHAKE if self.version == ProtocolVersion::TLSv1_3 => {
                self.handshake.extend_from_slice(&self.inbuf[range]);
                self.handshake_messages()?;
                Ok(false)
            }
            CONTENT_HANDSHAKE => Err(invalid("TLS renegotiation is not supported")),
            other => Err(invalid(format!("unexpected TLS content type {other}"))),
        }
    }

    /// Processes the complete post-handshake messages buffered in `handshake`.
    fn handshake_messages(&mut self) -> io::Result<()> {
        let mut at = 0;
        while self.handshake.len() - at >= 4 {
            let h = &self.handshake[at..];
            let len = usize::from(h[1]) << 16 | usize::from(h[2]) << 8 | usize::from(h[3]);
            if h.len() < 4 + len {
                if len > 64 * 1024 {
                    return Err(invalid("oversized TLS handshake message"));
                }
                break;
            }
            match h[0] {
                HANDSHAKE_KEY_UPDATE if len == 1 => {
                    let requested = match h[4] {
                        0 => false,
                        1 => true,
                        _ => return Err(invalid("malformed TLS KeyUpdate")),
                    };
                    if at + 5 != self.handshake.len() {
                        // A key change must end its record (RFC 8446 §5.1).
                        return Err(invalid("TLS KeyUpdate not at a record boundary"));
                    }
                    let (seq, secrets) = self.kernel.update_rx().map_err(tls_error)?;
                    self.rx = Protection::new(secrets, seq, self.version)?;
                    if requested {
                        self.update_tx_keys(false)?;
                    }
                }
                HANDSHAKE_NEW_SESSION_TICKET if self.kernel.is_client() => {}
                other => return Err(invalid(format!("unexpected TLS handshake message {other} after the handshake"))),
            }
            at += 4 + len;
        }
        self.handshake.drain(..at);
        Ok(())
    }
}

impl AsyncRead for TlsStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
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
        if this.pending_out() > 0 {
            if let Poll::Ready(Err(e)) = this.poll_flush_out(cx) {
                return Poll::Ready(Err(e));
            }
        }
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
                if len > MAX_CIPHERTEXT {
                    return Poll::Ready(Err(invalid("oversized TLS record")));
                }
                if available >= HEADER + len {
                    let record = this.head..this.head + HEADER + len;
                    this.head = record.end;
                    let (typ, range) = this.rx.open(&mut this.inbuf[record.clone()])?;
                    let range = record.start + range.start..record.start + range.end;
                    if typ == CONTENT_APPLICATION_DATA {
                        this.plain = range;
                    } else if this.control_record(typ, range)? {
                        this.read_closed = true;
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
                if this.tcp.poll_read_ready(cx).is_pending() {
                    this.inbuf = Box::default();
                    this.head = 0;
                    this.tail = 0;
                    return Poll::Pending;
                }
                if this.inbuf.is_empty() {
                    this.inbuf = vec![0; READ_BUFFER].into_boxed_slice();
                }
            }
            let mut read = ReadBuf::new(&mut this.inbuf[this.tail..]);
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut read))?;
            let n = read.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "peer closed connection without sending TLS close_notify",
                )));
            }
            this.tail += n;
        }
    }
}

impl TlsStream {
    /// Moves the unconsumed bytes to the front of `inbuf`.
    fn compact(&mut self) {
        self.inbuf.copy_within(self.head..self.tail, 0);
        self.tail -= self.head;
        self.head = 0;
    }

    fn poll_write_parts(&mut self, cx: &mut Context<'_>, bufs: &[IoSlice<'_>]) -> Poll<io::Result<usize>> {
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
        let taken = self.seal_all(CONTENT_APPLICATION_DATA, bufs, MAX_WRITE)?;
        // The bytes are ours now; if the socket is full, the waker registered here (or the
        // caller's next flush) finishes the job. Writing at once rather than at the flush keeps
        // the peer busy sooner: gathering frames until the flush measured slightly slower.
        if let Poll::Ready(Err(e)) = self.poll_flush_out(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(taken))
    }
}

impl AsyncWrite for TlsStream {
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
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_notify_sent {
            this.close_notify_sent = true;
            this.tx.seal(CONTENT_ALERT, &[&[1, ALERT_CLOSE_NOTIFY]], &mut this.outbuf);
        }
        ready!(this.poll_flush_out(cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
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

#[cfg(test)]
mod tests {
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
        let server_config = pki.server_files().grpc_server_config().unwrap();
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
        let server_config = pki.server_files().grpc_server_config().unwrap();
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
        let server_config = pki.server_files().grpc_server_config().unwrap();
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
        let server_config = pki.server_files().grpc_server_config().unwrap();
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
}
