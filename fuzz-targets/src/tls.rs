//! The TLS record layer after the handshake (`plumbing::tls_stream`, through its fuzz entry point
//! `fuzz_read_records`: fixed secrets, an in-memory transport that hands over the bytes in chunks).
//!
//! Random bytes never pass an AEAD tag, so this target seals the records itself, with the same fixed
//! secrets (RFC 8446 §5.2–5.3 for TLS 1.3, RFC 5288 / RFC 7905 for TLS 1.2 GCM and ChaCha20-Poly1305):
//! the fuzzer picks content types, lengths, contents and TLS 1.3 padding, and may put raw bytes
//! between records. The reader must never panic, never return more application data than was
//! sealed, and return exactly that much when every record is well-formed application data.

use plumbing::tls_stream::fuzz_read_records;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};

/// Bytes of the secrets seed at the start of an input: what `fuzz_read_records` reads of it
/// (suite, side, transport chunk, then key and IV; at most 3 + 32 + 12).
pub const SEED_LEN: usize = 47;
const MAX_PLAINTEXT: usize = 1 << 14;
const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Tls13,
    Tls12Gcm,
    Tls12Chacha,
}

/// The sending side's record protection, derived from the seed as the reader derives its own.
struct Sealer {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
    format: Format,
}

impl Sealer {
    fn from_seed(seed: &[u8]) -> Self {
        let byte = |i: usize| seed.get(i).copied().unwrap_or(0);
        let (algorithm, format) = match byte(0) % 5 {
            0 => (&aead::AES_128_GCM, Format::Tls13),
            1 => (&aead::AES_256_GCM, Format::Tls13),
            2 => (&aead::CHACHA20_POLY1305, Format::Tls13),
            3 => (&aead::AES_128_GCM, Format::Tls12Gcm),
            _ => (&aead::CHACHA20_POLY1305, Format::Tls12Chacha),
        };
        let key: Vec<u8> = (0..algorithm.key_len()).map(|i| byte(3 + i)).collect();
        let mut iv = [0u8; aead::NONCE_LEN];
        for (i, b) in iv.iter_mut().enumerate() {
            *b = byte(3 + algorithm.key_len() + i);
        }
        let key = UnboundKey::new(algorithm, &key).expect("a key of the algorithm's length");
        Self { key: LessSafeKey::new(key), iv, seq: 0, format }
    }

    /// The per-record nonce: the IV with the sequence number XORed into its last 8 bytes.
    fn nonce(&self) -> [u8; aead::NONCE_LEN] {
        let mut nonce = self.iv;
        for (n, s) in nonce[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    /// Appends one protected record of `typ` carrying `content` (TLS 1.3: then `padding` zeros).
    fn seal(&mut self, typ: u8, content: &[u8], padding: usize, out: &mut Vec<u8>) {
        let nonce = self.nonce();
        let mut body = Vec::with_capacity(8 + content.len() + 1 + padding + 16);
        let (outer, plain_start) = match self.format {
            Format::Tls13 => (CONTENT_APPLICATION_DATA, 0),
            Format::Tls12Gcm => {
                // The explicit nonce travels in the record.
                body.extend_from_slice(&nonce[4..]);
                (typ, 8)
            }
            Format::Tls12Chacha => (typ, 0),
        };
        body.extend_from_slice(content);
        if self.format == Format::Tls13 {
            body.push(typ);
            body.resize(body.len() + padding, 0);
        }
        let body_len = body.len() + 16;
        let header = [outer, 3, 3, (body_len >> 8) as u8, body_len as u8];
        let mut aad = Vec::with_capacity(13);
        if self.format == Format::Tls13 {
            aad.extend_from_slice(&header);
        } else {
            aad.extend_from_slice(&self.seq.to_be_bytes());
            aad.extend_from_slice(&[typ, 3, 3]);
            aad.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        let tag = self
            .key
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(nonce), Aad::from(&aad), &mut body[plain_start..])
            .expect("a record is within the AEAD's limit");
        out.extend_from_slice(&header);
        out.extend_from_slice(&body);
        out.extend_from_slice(tag.as_ref());
        self.seq = self.seq.wrapping_add(1);
    }
}

/// What a TLS 1.3 reader finds in a record sealed as `typ` with `content`: the content type is the
/// last non-zero byte of the inner plaintext (RFC 8446 §5.4), so a type of 0 hands that role to the
/// content's own last non-zero byte (fuzz/artifacts/tls/crash-tls13-inner-type-zero).
fn tls13_received(typ: u8, content: &[u8]) -> (u8, &[u8]) {
    if typ != 0 {
        return (typ, content);
    }
    match content.iter().rposition(|&b| b != 0) {
        Some(end) => (content[end], &content[..end]),
        None => (0, &[]),
    }
}

/// Takes `n` bytes off the front of `rest` (fewer if it is shorter).
fn take<'a>(rest: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = rest.split_at(n.min(rest.len()));
    *rest = tail;
    head
}

/// The input: [`SEED_LEN`] bytes of secrets seed, then operations. An operation byte `op` with its
/// high bit set copies the next `op & 0x7f` bytes raw; otherwise it seals one record: content type
/// from `op & 7` (application data, alert, handshake, change cipher spec, or the next byte), a
/// big-endian `u16` length, that many content bytes (zeros past the end of the input), and, in TLS
/// 1.3, `(op >> 3) & 15` bytes of padding.
pub fn fuzz(data: &[u8]) {
    let mut rest = data;
    let seed = take(&mut rest, SEED_LEN);
    let mut sealer = Sealer::from_seed(seed);
    let mut records = Vec::new();
    let mut sealed_data = 0usize;
    let mut all_plain_data = true;
    while let Some(&op) = rest.first() {
        rest = &rest[1..];
        if op & 0x80 != 0 {
            records.extend_from_slice(take(&mut rest, usize::from(op & 0x7f)));
            all_plain_data = false;
            continue;
        }
        let typ = match op & 7 {
            0 => CONTENT_APPLICATION_DATA,
            1 => CONTENT_ALERT,
            2 => CONTENT_HANDSHAKE,
            3 => CONTENT_CHANGE_CIPHER_SPEC,
            _ => take(&mut rest, 1).first().copied().unwrap_or(0),
        };
        let len_bytes = take(&mut rest, 2);
        let len = match len_bytes {
            [hi, lo] => usize::from(u16::from_be_bytes([*hi, *lo])),
            _ => 0,
        }
        .min(MAX_PLAINTEXT + 64);
        let mut content = take(&mut rest, len).to_vec();
        content.resize(len, 0);
        let tls13 = sealer.format == Format::Tls13;
        let padding = if tls13 { usize::from((op >> 3) & 15) } else { 0 };
        sealer.seal(typ, &content, padding, &mut records);
        let (received_type, received) = if tls13 { tls13_received(typ, &content) } else { (typ, &content[..]) };
        if received_type == CONTENT_APPLICATION_DATA {
            sealed_data += received.len();
        }
        let inner_limit = if tls13 { MAX_PLAINTEXT + 1 } else { MAX_PLAINTEXT };
        let inner = len + if tls13 { 1 + padding } else { 0 };
        if typ != CONTENT_APPLICATION_DATA || len == 0 || inner > inner_limit {
            all_plain_data = false;
        }
        // The reader's fixed kernel answers a key update by starting the same key over.
        if tls13 && received_type == CONTENT_HANDSHAKE && received.first() == Some(&KEY_UPDATE) {
            sealer.seq = 0;
        }
    }
    let read = fuzz_read_records(seed, &records);
    assert!(read <= sealed_data, "read {read} bytes of application data, {sealed_data} were sealed");
    if all_plain_data {
        assert_eq!(read, sealed_data, "well-formed application data records were not all read");
    }
}
