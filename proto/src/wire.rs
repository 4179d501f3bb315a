//! The protobuf wire primitives the scanner needs: varints, field keys, and skipping unknown fields.
//!
//! They work on a byte slice and an offset rather than on `bytes::Buf`, so the scanner can hand out
//! ranges of its input. Every read is bounds-checked: malformed input is an error, never a panic.

use crate::scan::ScanError;

/// The protobuf wire types (<https://protobuf.dev/programming-guides/encoding/>).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireType {
    Varint,
    Fixed64,
    Len,
    StartGroup,
    EndGroup,
    Fixed32,
}

/// Nesting depth at which groups are refused, as prost's recursion limit.
const MAX_GROUP_DEPTH: u32 = 100;

/// Reads a varint at `*pos`, advancing it. Rejects truncation and values over 64 bits.
#[inline(always)]
pub fn read_varint(buf: &[u8], pos: &mut usize) -> Result<u64, ScanError> {
    // Keys and short lengths are one byte: the common case stays inline at every call site.
    if let Some(&byte) = buf.get(*pos) {
        if byte < 0x80 {
            *pos += 1;
            return Ok(u64::from(byte));
        }
    }
    read_varint_multi_byte(buf, pos)
}

#[inline(never)]
fn read_varint_multi_byte(buf: &[u8], pos: &mut usize) -> Result<u64, ScanError> {
    // With ten bytes in hand (the longest varint), the first eight are decoded as one word: find
    // the first byte without a continuation bit, mask off what follows it, and pack the 7-bit
    // groups with three shift-and-mask steps. A timestamp (9 bytes) and an envelope's length
    // (2 bytes) are in every envelope, and a byte-by-byte loop was 3 % of each component's CPU.
    if let Some(bytes) = buf.get(*pos..).and_then(|rest| rest.first_chunk::<10>()) {
        // One 8-byte load (byte-by-byte array construction compiled to four partial loads).
        let word = u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default());
        let ends = !word & 0x8080_8080_8080_8080;
        if ends != 0 {
            let len = ends.trailing_zeros() as usize / 8 + 1;
            let word = if len == 8 { word } else { word & ((1u64 << (8 * len)) - 1) };
            *pos += len;
            return Ok(pack_7bit_groups(word));
        }
        let mut value = pack_7bit_groups(word) | u64::from(bytes[8] & 0x7f) << 56;
        if bytes[8] < 0x80 {
            *pos += 9;
            return Ok(value);
        }
        if bytes[9] > 1 {
            return Err(ScanError::VarintOverflow);
        }
        value |= u64::from(bytes[9]) << 63;
        *pos += 10;
        return Ok(value);
    }
    let mut value: u64 = 0;
    for i in 0..10 {
        let Some(&byte) = buf.get(*pos) else {
            return Err(ScanError::Truncated);
        };
        *pos += 1;
        if i == 9 && byte > 1 {
            return Err(ScanError::VarintOverflow);
        }
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(ScanError::VarintOverflow)
}

/// The low 7 bits of each of the eight bytes of `word`, packed into 56 bits (little-endian order).
#[inline(always)]
fn pack_7bit_groups(word: u64) -> u64 {
    let x = word & 0x7f7f_7f7f_7f7f_7f7f;
    // Pairs of bytes into 14-bit groups, then pairs of those into 28, then into 56.
    let x = ((x & 0x7f00_7f00_7f00_7f00) >> 1) | (x & 0x007f_007f_007f_007f);
    let x = ((x & 0x3fff_0000_3fff_0000) >> 2) | (x & 0x0000_3fff_0000_3fff);
    ((x & 0x0fff_ffff_0000_0000) >> 4) | (x & 0x0000_0000_0fff_ffff)
}

/// Reads a field key, returning (field number, wire type).
#[inline(always)]
pub fn read_key(buf: &[u8], pos: &mut usize) -> Result<(u32, WireType), ScanError> {
    let key = read_varint(buf, pos)?;
    if key > u64::from(u32::MAX) {
        return Err(ScanError::InvalidKey);
    }
    let wire_type = match key & 7 {
        0 => WireType::Varint,
        1 => WireType::Fixed64,
        2 => WireType::Len,
        3 => WireType::StartGroup,
        4 => WireType::EndGroup,
        5 => WireType::Fixed32,
        _ => return Err(ScanError::InvalidWireType),
    };
    let field = (key >> 3) as u32;
    if field == 0 {
        return Err(ScanError::InvalidKey);
    }
    Ok((field, wire_type))
}

/// Reads a length prefix and returns the range of the bytes it announces, advancing past them.
#[inline(always)]
pub fn read_len(buf: &[u8], pos: &mut usize) -> Result<std::ops::Range<usize>, ScanError> {
    // Two-byte lengths (128 B to 16 KiB: an envelope in its batch, a log's payload) are as common
    // as one-byte ones here, so they are decoded inline too.
    let len = match buf.get(*pos..).and_then(|rest| rest.first_chunk::<2>()) {
        Some(&[low, high]) if low >= 0x80 && high < 0x80 => {
            *pos += 2;
            u64::from(low & 0x7f) | u64::from(high) << 7
        }
        _ => read_varint(buf, pos)?,
    };
    let start = *pos;
    let remaining = buf.len() - start;
    if len > remaining as u64 {
        return Err(ScanError::Truncated);
    }
    *pos = start + len as usize;
    Ok(start..*pos)
}

/// Skips the value of a field whose key has been read.
pub fn skip_field(buf: &[u8], pos: &mut usize, field: u32, wire_type: WireType) -> Result<(), ScanError> {
    skip_field_at_depth(buf, pos, field, wire_type, 0)
}

fn skip_field_at_depth(
    buf: &[u8],
    pos: &mut usize,
    field: u32,
    wire_type: WireType,
    depth: u32,
) -> Result<(), ScanError> {
    match wire_type {
        WireType::Varint => {
            read_varint(buf, pos)?;
        }
        WireType::Fixed64 => advance(buf, pos, 8)?,
        WireType::Fixed32 => advance(buf, pos, 4)?,
        WireType::Len => {
            read_len(buf, pos)?;
        }
        WireType::StartGroup => {
            if depth >= MAX_GROUP_DEPTH {
                return Err(ScanError::TooDeep);
            }
            loop {
                let (inner, inner_type) = read_key(buf, pos)?;
                if inner_type == WireType::EndGroup {
                    if inner != field {
                        return Err(ScanError::UnexpectedEndGroup);
                    }
                    return Ok(());
                }
                skip_field_at_depth(buf, pos, inner, inner_type, depth + 1)?;
            }
        }
        WireType::EndGroup => return Err(ScanError::UnexpectedEndGroup),
    }
    Ok(())
}

#[inline]
fn advance(buf: &[u8], pos: &mut usize, n: usize) -> Result<(), ScanError> {
    if buf.len() - *pos < n {
        return Err(ScanError::Truncated);
    }
    *pos += n;
    Ok(())
}

/// Whether `bytes` is UTF-8, as a decode of a string field checks it. Ids, names and tags are
/// ASCII in practice, and on strings this short the word-at-a-time ASCII check is several times
/// cheaper than the general validator, so it goes first.
#[inline]
pub fn is_utf8(bytes: &[u8]) -> bool {
    bytes.is_ascii() || std::str::from_utf8(bytes).is_ok()
}

/// Number of bytes `value` takes as a varint.
#[inline]
pub fn varint_len(value: u64) -> usize {
    // 1 byte per 7 bits, at least one.
    (64 - (value | 1).leading_zeros() as usize).div_ceil(7)
}

/// Appends `value` as a varint.
#[inline]
pub fn put_varint(out: &mut impl bytes::BufMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_round_trips_and_lengths_agree_with_prost() {
        for value in [0u64, 1, 127, 128, 300, 16_383, 16_384, u32::MAX as u64, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value));
            assert_eq!(out.len(), prost::encoding::encoded_len_varint(value));
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos).unwrap(), value);
            assert_eq!(pos, out.len());
        }
    }

    #[test]
    fn varints_decode_alike_with_and_without_ten_bytes_in_hand() {
        // Followed by padding, every length goes through the unrolled path; alone, through the loop.
        for value in [128u64, 300, 16_384, 1 << 35, 1_700_000_000_000_000_000, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let len = out.len();
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos).unwrap(), value);
            assert_eq!(pos, len);
            out.extend_from_slice(&[0xff; 12]);
            let mut pos = 0;
            assert_eq!(read_varint(&out, &mut pos).unwrap(), value);
            assert_eq!(pos, len);
        }
        // A tenth byte above 1 overflows 64 bits on both paths.
        let mut over = vec![0xffu8; 9];
        over.push(0x02);
        let mut pos = 0;
        assert_eq!(read_varint(&over, &mut pos), Err(ScanError::VarintOverflow));
        over.extend_from_slice(&[0; 4]);
        let mut pos = 0;
        assert_eq!(read_varint(&over, &mut pos), Err(ScanError::VarintOverflow));
    }

    proptest::proptest! {
        /// Any bytes at all, with or without ten in hand: the same value and length as prost, or
        /// an error where prost errs.
        #[test]
        fn varints_decode_as_prost_decodes_them(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..14)) {
            let mut pos = 0;
            let ours = read_varint(&bytes, &mut pos);
            let mut theirs_buf = &bytes[..];
            let theirs = prost::encoding::decode_varint(&mut theirs_buf);
            match (ours, theirs) {
                (Ok(a), Ok(b)) => {
                    proptest::prop_assert_eq!(a, b);
                    proptest::prop_assert_eq!(pos, bytes.len() - theirs_buf.len());
                }
                (Err(_), Err(_)) => {}
                (a, b) => proptest::prop_assert!(false, "ours {:?}, prost {:?}", a, b),
            }
        }

        #[test]
        fn every_value_round_trips_with_any_bytes_behind_it(value in proptest::prelude::any::<u64>(), tail in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..12)) {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let len = out.len();
            out.extend_from_slice(&tail);
            let mut pos = 0;
            proptest::prop_assert_eq!(read_varint(&out, &mut pos).unwrap(), value);
            proptest::prop_assert_eq!(pos, len);
        }

        /// `read_len` (with its inline two-byte path) is a varint read and a bound, after any
        /// offset: lengths of one to three bytes, cut anywhere (over-long ones: the test below).
        #[test]
        fn lengths_read_as_a_varint_and_a_bound(
            start in 0usize..3,
            prefix in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..4),
            value in 0u64..20_000,
            tail_len in 0usize..20_050,
        ) {
            let mut buf = prefix;
            buf.truncate(start);
            let start = buf.len();
            put_varint(&mut buf, value);
            buf.resize(buf.len() + tail_len, 0xab);
            for end in [buf.len(), start + 1, start + 2, start + 3] {
                let input = &buf[..end.min(buf.len())];
                let mut ours_pos = start;
                let ours = read_len(input, &mut ours_pos);
                let mut pos = start;
                let reference = read_varint(input, &mut pos).and_then(|len| {
                    if len > (input.len() - pos) as u64 { Err(ScanError::Truncated) } else { Ok(pos..pos + len as usize) }
                });
                if let Ok(range) = &reference {
                    proptest::prop_assert_eq!(ours_pos, range.end);
                }
                proptest::prop_assert_eq!(ours, reference);
            }
        }
    }

    #[test]
    fn an_over_long_two_byte_length_reads_as_its_value() {
        let mut pos = 0;
        assert_eq!(read_len(&[0x81, 0x00, 0xff], &mut pos), Ok(2..3));
        assert_eq!(pos, 3);
    }

    #[test]
    fn truncated_and_overlong_varints_are_errors() {
        let mut pos = 0;
        assert_eq!(read_varint(&[0x80, 0x80], &mut pos), Err(ScanError::Truncated));
        let mut pos = 0;
        let eleven = [0xffu8; 11];
        assert_eq!(read_varint(&eleven, &mut pos), Err(ScanError::VarintOverflow));
    }

    #[test]
    fn length_past_the_end_is_an_error() {
        let mut pos = 0;
        assert_eq!(read_len(&[5, 1, 2], &mut pos), Err(ScanError::Truncated));
    }

    #[test]
    fn nested_groups_are_skipped_and_bombs_refused() {
        // field 5 start group, field 6 varint 1, field 5 end group
        let ok = [(5 << 3) | 3, (6 << 3), 1, (5 << 3) | 4];
        let mut pos = 1;
        skip_field(&ok, &mut pos, 5, WireType::StartGroup).unwrap();
        assert_eq!(pos, ok.len());

        let bomb = vec![(5u8 << 3) | 3; 1000];
        let mut pos = 1;
        assert_eq!(skip_field(&bomb, &mut pos, 5, WireType::StartGroup), Err(ScanError::TooDeep));
    }
}
