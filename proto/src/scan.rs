//! The zero-copy envelope scanner: the reason the Doppler can route an envelope without decoding it.
//!
//! [`BatchScanner`] walks an encoded `EnvelopeBatch` and yields each envelope as a [`RawEnvelope`]: a
//! `Bytes` slice of the input (a reference count, no copy) plus the [`EnvelopeMeta`] a router needs:
//! timestamp, source id, envelope type, counter or timer name, and the set of gauge metric keys as a
//! hash. Tags, payloads and values are framed-checked and skipped, never decoded.
//!
//! It agrees with a full prost decode on every well-formed envelope, including proto merge rules
//! (the last scalar wins; a repeated oneof member merges; another member replaces). Malformed input
//! (truncated varints, wrong wire types for known fields, lengths past the end, group bombs) is a
//! [`ScanError`]; unknown fields are skipped.

use std::ops::Range;

use bytes::Bytes;

use crate::wire::{read_key, read_len, read_varint, skip_field, WireType};

/// Why an encoded batch or envelope could not be scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("truncated message: a length or varint runs past the end")]
    Truncated,
    #[error("varint longer than 64 bits")]
    VarintOverflow,
    #[error("invalid field key")]
    InvalidKey,
    #[error("invalid wire type")]
    InvalidWireType,
    #[error("known field with the wrong wire type")]
    WrongWireType,
    #[error("end group without a matching start group")]
    UnexpectedEndGroup,
    #[error("groups nested too deeply")]
    TooDeep,
    #[error("string field is not valid UTF-8")]
    InvalidUtf8,
}

/// The oneof member of an envelope (`Envelope.message`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EnvelopeKind {
    Log,
    Counter,
    Gauge,
    Timer,
    Event,
}

/// What a router needs to know of an envelope; string fields are ranges of [`RawEnvelope::bytes`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EnvelopeMeta {
    pub timestamp: i64,
    /// `None` when no member of the `message` oneof is set: such an envelope matches no selector.
    pub kind: Option<EnvelopeKind>,
    source_id: Range<u32>,
    instance_id: Range<u32>,
    /// Counter or timer name.
    name: Range<u32>,
    /// Sum (wrapping) of crc64-ECMA of the distinct gauge metric keys: the Doppler's gauge selector and
    /// deterministic-name hash (§2.4, §2.5). Zero for other types.
    pub gauge_keys_hash: u64,
    /// Number of distinct gauge metric keys.
    pub gauge_key_count: u32,
    /// Whether any `deprecated_tags` entry is present.
    pub has_deprecated_tags: bool,
    /// Whether any `tags` entry is present.
    pub has_tags: bool,
}

/// One envelope: its encoded bytes (a slice of the scanned input) and its routing key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEnvelope {
    pub bytes: Bytes,
    pub meta: EnvelopeMeta,
}

impl RawEnvelope {
    /// Scans one encoded `Envelope` (as sent on the `Sender` stream).
    pub fn scan(bytes: Bytes) -> Result<Self, ScanError> {
        let meta = scan_envelope(&bytes)?;
        Ok(Self { bytes, meta })
    }

    pub fn source_id(&self) -> &str {
        self.str_at(&self.meta.source_id)
    }

    /// The source id's bytes, without [`Self::source_id`]'s second UTF-8 check (the scanner made the
    /// first): for hot paths that only compare it.
    pub fn source_id_bytes(&self) -> &[u8] {
        self.bytes.get(self.meta.source_id.start as usize..self.meta.source_id.end as usize).unwrap_or_default()
    }

    /// The instance id; empty if it is not valid UTF-8 (the scanner does not check it up front).
    pub fn instance_id(&self) -> &str {
        self.str_at(&self.meta.instance_id)
    }

    /// The counter or timer name; empty for other types.
    pub fn name(&self) -> &str {
        self.str_at(&self.meta.name)
    }

    fn str_at(&self, range: &Range<u32>) -> &str {
        let bytes = self.bytes.get(range.start as usize..range.end as usize).unwrap_or_default();
        // Source id and names were validated by the scanner; an empty string is the safe answer otherwise.
        std::str::from_utf8(bytes).unwrap_or_default()
    }
}

/// Iterates over the envelopes of an encoded `EnvelopeBatch`. Stops after the first error.
pub struct BatchScanner {
    input: Bytes,
    pos: usize,
    failed: bool,
}

impl BatchScanner {
    pub fn new(input: Bytes) -> Self {
        Self { input, pos: 0, failed: false }
    }

    /// Scans the whole batch, failing on the first malformed envelope.
    pub fn collect_all(input: Bytes) -> Result<Vec<RawEnvelope>, ScanError> {
        Self::new(input).collect()
    }
}

impl Iterator for BatchScanner {
    type Item = Result<RawEnvelope, ScanError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let result = self.next_envelope().transpose();
        if matches!(result, Some(Err(_))) {
            self.failed = true;
        }
        result
    }
}

impl BatchScanner {
    fn next_envelope(&mut self) -> Result<Option<RawEnvelope>, ScanError> {
        let buf = &self.input[..];
        while self.pos < buf.len() {
            let (field, wire_type) = read_key(buf, &mut self.pos)?;
            if field != 1 {
                skip_field(buf, &mut self.pos, field, wire_type)?;
                continue;
            }
            if wire_type != WireType::Len {
                return Err(ScanError::WrongWireType);
            }
            let range = read_len(buf, &mut self.pos)?;
            let meta = scan_envelope(&buf[range.clone()])?;
            return Ok(Some(RawEnvelope { bytes: self.input.slice(range), meta }));
        }
        Ok(None)
    }
}

/// Gauge metric keys seen so far, to apply map semantics (a repeated key counts once).
///
/// Most gauges have a handful of keys: the first [`INLINE_KEYS`] live on the stack and are compared
/// directly. Past that they go into a hash set, so a hostile gauge of a million distinct keys costs
/// a million hash inserts rather than 10^12 comparisons: the scan stays linear in the envelope's
/// size at every hop that routes it. The set hashes with std's randomly keyed SipHash, so keys
/// crafted to collide (trivial for the crc64 the selector uses) cannot make it quadratic again.
struct GaugeKeys<'a> {
    inline: [&'a [u8]; INLINE_KEYS],
    len: usize,
    spilled: std::collections::HashSet<&'a [u8]>,
}

const INLINE_KEYS: usize = 16;

impl<'a> GaugeKeys<'a> {
    fn new() -> Self {
        Self { inline: [&[]; INLINE_KEYS], len: 0, spilled: std::collections::HashSet::new() }
    }

    fn clear(&mut self) {
        self.len = 0;
        self.spilled.clear();
    }

    /// Records `key` and answers whether it was new.
    fn insert(&mut self, key: &'a [u8]) -> bool {
        if self.inline[..self.len].contains(&key) {
            return false;
        }
        if self.len < INLINE_KEYS {
            self.inline[self.len] = key;
            self.len += 1;
            true
        } else {
            self.spilled.insert(key)
        }
    }
}

const CRC64: crc::Crc<u64> = crc::Crc::<u64>::new(&crc::CRC_64_XZ);

/// crc64 with the ECMA polynomial as Go's `crc64.Checksum(b, crc64.MakeTable(crc64.ECMA))` computes
/// it (the reflected CRC-64/XZ variant), so hashes match the original's go-pubsub tree.
pub fn crc64_ecma(bytes: &[u8]) -> u64 {
    CRC64.checksum(bytes)
}

fn range32(range: Range<usize>) -> Range<u32> {
    // Envelopes are bounded by the 10 MiB message limit; a larger offset cannot occur in a
    // batch tonic accepted, and saturating keeps `str_at` safe if it ever did.
    let start = u32::try_from(range.start).unwrap_or(u32::MAX);
    let end = u32::try_from(range.end).unwrap_or(u32::MAX);
    start..end
}

#[inline]
fn check_utf8(buf: &[u8], range: &Range<usize>) -> Result<(), ScanError> {
    if crate::wire::is_utf8(&buf[range.clone()]) {
        Ok(())
    } else {
        Err(ScanError::InvalidUtf8)
    }
}

fn expect_len(wire_type: WireType) -> Result<(), ScanError> {
    if wire_type == WireType::Len {
        Ok(())
    } else {
        Err(ScanError::WrongWireType)
    }
}

/// Key byte of `Envelope.tags` entries: field 9, length-delimited.
const TAGS_KEY: u8 = (9 << 3) | 2;
/// Key byte of `Envelope.timestamp`: field 1, varint.
const TIMESTAMP_KEY: u8 = 1 << 3;

/// Scans one encoded `Envelope`: `buf` is exactly its bytes.
pub fn scan_envelope(buf: &[u8]) -> Result<EnvelopeMeta, ScanError> {
    let mut meta = EnvelopeMeta::default();
    // Only gauges need the key set: built on the first gauge field, not for every envelope.
    let mut keys: Option<GaugeKeys> = None;
    let mut pos = 0;
    while pos < buf.len() {
        // Nearly every key of an envelope is one byte (fields 1-15): decoded here by value, without
        // the general varint key path. `tags` entries, the most frequent field, are skipped at once.
        let (field, wire_type) = match buf[pos] {
            TAGS_KEY => {
                pos += 1;
                read_len(buf, &mut pos)?;
                meta.has_tags = true;
                continue;
            }
            TIMESTAMP_KEY => {
                pos += 1;
                (1, WireType::Varint)
            }
            key if (8..0x80).contains(&key) && key & 7 == 2 => {
                pos += 1;
                (u32::from(key >> 3), WireType::Len)
            }
            _ => read_key(buf, &mut pos)?,
        };
        match field {
            1 => {
                if wire_type != WireType::Varint {
                    return Err(ScanError::WrongWireType);
                }
                meta.timestamp = read_varint(buf, &mut pos)? as i64;
            }
            2 => {
                expect_len(wire_type)?;
                let range = read_len(buf, &mut pos)?;
                check_utf8(buf, &range)?;
                meta.source_id = range32(range);
            }
            8 => {
                // Validated when asked for (`RawEnvelope::instance_id`): routing never needs it.
                expect_len(wire_type)?;
                meta.instance_id = range32(read_len(buf, &mut pos)?);
            }
            3 | 9 => {
                expect_len(wire_type)?;
                read_len(buf, &mut pos)?;
                if field == 3 {
                    meta.has_deprecated_tags = true;
                } else {
                    meta.has_tags = true;
                }
            }
            4 | 10 => {
                expect_len(wire_type)?;
                read_len(buf, &mut pos)?;
                let kind = if field == 4 { EnvelopeKind::Log } else { EnvelopeKind::Event };
                switch_kind(&mut meta, &mut keys, kind);
            }
            5 | 7 => {
                expect_len(wire_type)?;
                let range = read_len(buf, &mut pos)?;
                let kind = if field == 5 { EnvelopeKind::Counter } else { EnvelopeKind::Timer };
                switch_kind(&mut meta, &mut keys, kind);
                if let Some(name) = scan_name(buf, range)? {
                    meta.name = range32(name);
                }
            }
            6 => {
                expect_len(wire_type)?;
                let range = read_len(buf, &mut pos)?;
                switch_kind(&mut meta, &mut keys, EnvelopeKind::Gauge);
                scan_gauge(buf, range, &mut meta, keys.get_or_insert_with(GaugeKeys::new))?;
            }
            _ => skip_field(buf, &mut pos, field, wire_type)?,
        }
    }
    Ok(meta)
}

/// Applies the oneof rule: the same member again merges; another member starts afresh.
fn switch_kind(meta: &mut EnvelopeMeta, keys: &mut Option<GaugeKeys<'_>>, kind: EnvelopeKind) {
    if meta.kind != Some(kind) {
        meta.kind = Some(kind);
        meta.name = 0..0;
        meta.gauge_keys_hash = 0;
        meta.gauge_key_count = 0;
        if let Some(keys) = keys {
            keys.clear();
        }
    }
}

/// Finds field 1 (`name`, a string) of a Counter or Timer message; the last occurrence wins.
fn scan_name(buf: &[u8], range: Range<usize>) -> Result<Option<Range<usize>>, ScanError> {
    let msg = &buf[..range.end];
    let mut pos = range.start;
    let mut name = None;
    while pos < range.end {
        let (field, wire_type) = read_key(msg, &mut pos)?;
        match (field, wire_type) {
            (1, WireType::Len) => {
                let r = read_len(msg, &mut pos)?;
                check_utf8(buf, &r)?;
                name = Some(r);
            }
            (1, _) => return Err(ScanError::WrongWireType),
            (2 | 3, WireType::Varint) => {
                read_varint(msg, &mut pos)?;
            }
            (2 | 3, _) => return Err(ScanError::WrongWireType),
            _ => skip_field(msg, &mut pos, field, wire_type)?,
        }
    }
    Ok(name)
}

/// Walks the `metrics` map entries of a Gauge, hashing each distinct key.
fn scan_gauge<'a>(
    buf: &'a [u8],
    range: Range<usize>,
    meta: &mut EnvelopeMeta,
    keys: &mut GaugeKeys<'a>,
) -> Result<(), ScanError> {
    let msg = &buf[..range.end];
    let mut pos = range.start;
    while pos < range.end {
        let (field, wire_type) = read_key(msg, &mut pos)?;
        if field != 1 {
            skip_field(msg, &mut pos, field, wire_type)?;
            continue;
        }
        expect_len(wire_type)?;
        let entry = read_len(msg, &mut pos)?;
        let key = scan_map_entry_key(buf, entry)?;
        if keys.insert(&buf[key.clone()]) {
            meta.gauge_keys_hash = meta.gauge_keys_hash.wrapping_add(crc64_ecma(&buf[key]));
            meta.gauge_key_count += 1;
        }
    }
    Ok(())
}

/// Returns the key (field 1, a string; empty when absent) of a map entry, checking the value's framing.
fn scan_map_entry_key(buf: &[u8], entry: Range<usize>) -> Result<Range<usize>, ScanError> {
    let msg = &buf[..entry.end];
    let mut pos = entry.start;
    let mut key = entry.start..entry.start;
    while pos < entry.end {
        let (field, wire_type) = read_key(msg, &mut pos)?;
        match field {
            1 | 2 => {
                expect_len(wire_type)?;
                let r = read_len(msg, &mut pos)?;
                if field == 1 {
                    check_utf8(buf, &r)?;
                    key = r;
                }
            }
            _ => skip_field(msg, &mut pos, field, wire_type)?,
        }
    }
    Ok(key)
}

#[cfg(test)]
mod tests;
