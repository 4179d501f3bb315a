//! Read parameters: validation of a `ReadRequest` into a [`ReadFilter`] with the exact errors of
//! §6.2, the envelope-type set, and the `name_filter` rules (including the gauge-key copy).

use bytes::Bytes;
use loggregator_proto::logcache::v1::{EnvelopeType, ReadRequest};
use loggregator_proto::prost::Message;
use loggregator_proto::v2::{envelope, Envelope};
use loggregator_proto::wire::{read_key, read_len, skip_field, WireType};
use loggregator_proto::EnvelopeKind;
use regex::Regex;

/// `limit == 0` means this many (§6.2).
pub const DEFAULT_READ_LIMIT: usize = 100;

/// Largest accepted `limit` (§6.2).
pub const MAX_READ_LIMIT: i64 = 1000;

/// Size limit of a compiled `name_filter`, so a client cannot make us build a huge automaton.
const NAME_FILTER_SIZE_LIMIT: usize = 1 << 20;

/// Why a read was refused. The messages are the original's, word for word (§6.2).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    #[error("StartTime ({start}) must be before EndTime ({end})")]
    StartAfterEnd { start: i64, end: i64 },
    #[error("limit ({0}) must be 1000 or less")]
    LimitTooLarge(i64),
    #[error("limit ({0}) must be greater than zero")]
    LimitNegative(i64),
    #[error("name filter must be a valid regular expression: {0}")]
    InvalidNameFilter(String),
}

/// A set of envelope kinds; empty means every envelope (including one with no message set).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TypeSet(u8);

impl TypeSet {
    pub const ALL: TypeSet = TypeSet(0);

    fn bit(kind: EnvelopeKind) -> u8 {
        match kind {
            EnvelopeKind::Log => 1,
            EnvelopeKind::Counter => 2,
            EnvelopeKind::Gauge => 4,
            EnvelopeKind::Timer => 8,
            EnvelopeKind::Event => 16,
        }
    }

    /// The set of `envelope_types` values: empty or containing `ANY` ⇒ all; unknown numbers match nothing.
    pub fn from_request(types: &[i32]) -> TypeSet {
        let mut bits = 0u8;
        for &value in types {
            let kind = match EnvelopeType::try_from(value) {
                Ok(EnvelopeType::Any) => return TypeSet::ALL,
                Ok(EnvelopeType::Log) => EnvelopeKind::Log,
                Ok(EnvelopeType::Counter) => EnvelopeKind::Counter,
                Ok(EnvelopeType::Gauge) => EnvelopeKind::Gauge,
                Ok(EnvelopeType::Timer) => EnvelopeKind::Timer,
                Ok(EnvelopeType::Event) => EnvelopeKind::Event,
                Err(_) => continue,
            };
            bits |= Self::bit(kind);
        }
        if bits == 0 && !types.is_empty() {
            // Only unknown numbers: a set that matches nothing.
            return TypeSet(0x80);
        }
        TypeSet(bits)
    }

    pub fn of(kinds: &[EnvelopeKind]) -> TypeSet {
        TypeSet(kinds.iter().fold(0, |bits, k| bits | Self::bit(*k)))
    }

    pub fn contains(self, kind: Option<EnvelopeKind>) -> bool {
        if self.0 == 0 {
            return true;
        }
        kind.is_some_and(|k| self.0 & Self::bit(k) != 0)
    }
}

/// A validated read (§6.2).
#[derive(Debug, Clone)]
pub struct ReadFilter {
    /// Inclusive lower bound (ns).
    pub start: i64,
    /// Exclusive upper bound (ns); `end_time == 0` already replaced by now.
    pub end: i64,
    pub limit: usize,
    pub descending: bool,
    pub types: TypeSet,
    pub name: Option<Regex>,
}

/// How an envelope stands against the name filter.
pub(crate) enum NameMatch {
    No,
    /// Keep the envelope as it is.
    Whole,
    /// A gauge with some matching keys and some not: keep a copy with only the matching keys.
    SomeGaugeKeys,
}

impl ReadFilter {
    /// Validates a request; `now` (ns) replaces `end_time == 0`.
    pub fn from_request(request: &ReadRequest, now: i64) -> Result<ReadFilter, ReadError> {
        if request.end_time != 0 && request.start_time > request.end_time {
            return Err(ReadError::StartAfterEnd { start: request.start_time, end: request.end_time });
        }
        if request.limit > MAX_READ_LIMIT {
            return Err(ReadError::LimitTooLarge(request.limit));
        }
        if request.limit < 0 {
            return Err(ReadError::LimitNegative(request.limit));
        }
        let limit = if request.limit == 0 { DEFAULT_READ_LIMIT } else { request.limit as usize };
        let name = if request.name_filter.is_empty() {
            None
        } else {
            let regex = regex::RegexBuilder::new(&request.name_filter)
                .size_limit(NAME_FILTER_SIZE_LIMIT)
                .build()
                .map_err(|e| ReadError::InvalidNameFilter(e.to_string()))?;
            Some(regex)
        };
        Ok(ReadFilter {
            start: request.start_time,
            end: if request.end_time == 0 { now } else { request.end_time },
            limit,
            descending: request.descending,
            types: TypeSet::from_request(&request.envelope_types),
            name,
        })
    }

    /// Applies the name filter to a stored envelope: counters and timers by name, gauges by metric
    /// key, logs and events never (§6.2).
    pub(crate) fn name_match(&self, kind: Option<EnvelopeKind>, name: &str, bytes: &[u8]) -> NameMatch {
        let Some(regex) = &self.name else {
            return NameMatch::Whole;
        };
        match kind {
            Some(EnvelopeKind::Counter | EnvelopeKind::Timer) if regex.is_match(name) => NameMatch::Whole,
            Some(EnvelopeKind::Gauge) => gauge_keys_match(bytes, regex),
            _ => NameMatch::No,
        }
    }

    /// A copy of a gauge envelope holding only the metric keys the name filter matches, or `None`
    /// when none does. The only place the store decodes an envelope.
    pub(crate) fn retain_matching_gauge_keys(&self, bytes: &[u8]) -> Option<Bytes> {
        let regex = self.name.as_ref()?;
        let mut envelope = Envelope::decode(bytes).ok()?;
        let Some(envelope::Message::Gauge(gauge)) = &mut envelope.message else {
            return None;
        };
        gauge.metrics.retain(|key, _| regex.is_match(key));
        if gauge.metrics.is_empty() {
            return None;
        }
        Some(Bytes::from(envelope.encode_to_vec()))
    }
}

/// Matches the gauge metric keys of an encoded envelope without decoding it.
///
/// Keys are collected from every `gauge` field occurrence; were an envelope to set the gauge, then
/// another member, then the gauge again (legal but never seen), the union would include stale keys.
/// Both shortcuts stay sound with a superset: "no key of the superset matches" implies none of the
/// real keys does, and "every key matches" likewise; anything else is decoded and filtered exactly.
fn gauge_keys_match(bytes: &[u8], regex: &Regex) -> NameMatch {
    let mut any = false;
    let mut all = true;
    let scanned = for_each_gauge_key(bytes, |key| {
        if regex.is_match(key) {
            any = true;
        } else {
            all = false;
        }
    });
    match (scanned, any, all) {
        (Err(()), _, _) => NameMatch::SomeGaugeKeys,
        (Ok(()), false, _) => NameMatch::No,
        (Ok(()), true, true) => NameMatch::Whole,
        (Ok(()), true, false) => NameMatch::SomeGaugeKeys,
    }
}

/// Calls `f` with each metric key of the envelope's gauge field(s). Invalid UTF-8 or framing ⇒ `Err`.
fn for_each_gauge_key(buf: &[u8], mut f: impl FnMut(&str)) -> Result<(), ()> {
    const GAUGE_FIELD: u32 = 6;
    const METRICS_FIELD: u32 = 1;
    const MAP_KEY_FIELD: u32 = 1;
    let mut pos = 0;
    while pos < buf.len() {
        let (field, wire_type) = read_key(buf, &mut pos).map_err(drop)?;
        if field != GAUGE_FIELD || wire_type != WireType::Len {
            skip_field(buf, &mut pos, field, wire_type).map_err(drop)?;
            continue;
        }
        let gauge = read_len(buf, &mut pos).map_err(drop)?;
        let gauge = &buf[gauge];
        let mut gpos = 0;
        while gpos < gauge.len() {
            let (field, wire_type) = read_key(gauge, &mut gpos).map_err(drop)?;
            if field != METRICS_FIELD || wire_type != WireType::Len {
                skip_field(gauge, &mut gpos, field, wire_type).map_err(drop)?;
                continue;
            }
            let entry = read_len(gauge, &mut gpos).map_err(drop)?;
            let entry = &gauge[entry];
            let mut epos = 0;
            let mut key = "";
            while epos < entry.len() {
                let (field, wire_type) = read_key(entry, &mut epos).map_err(drop)?;
                if field == MAP_KEY_FIELD && wire_type == WireType::Len {
                    let range = read_len(entry, &mut epos).map_err(drop)?;
                    key = std::str::from_utf8(&entry[range]).map_err(drop)?;
                } else {
                    skip_field(entry, &mut epos, field, wire_type).map_err(drop)?;
                }
            }
            f(key);
        }
    }
    Ok(())
}
