//! Cuts a fuzz input into a sequence of chunks (reads off a socket, DATA frames of a body), so that
//! one input covers both the bytes and how they arrive.
//!
//! Layout of an input: byte 0's low 3 bits say how many chunk lengths follow (0–7), one byte each;
//! the rest is the payload, cut into chunks of those lengths in order, the remainder as the last
//! chunk. Byte 0's high bits are left to the target (see [`options`]).

/// The payload's chunks, in order; their concatenation is [`payload`].
pub fn chunks(data: &[u8]) -> Vec<&[u8]> {
    let (lengths, mut rest) = header(data);
    let mut out = Vec::with_capacity(lengths.len() + 1);
    for &len in lengths {
        let n = usize::from(len).min(rest.len());
        let (chunk, tail) = rest.split_at(n);
        out.push(chunk);
        rest = tail;
    }
    out.push(rest);
    out
}

/// The payload: the input without its header.
pub fn payload(data: &[u8]) -> &[u8] {
    header(data).1
}

/// Byte 0's high 5 bits, for a target's own options.
pub fn options(data: &[u8]) -> u8 {
    data.first().map_or(0, |b| b >> 3)
}

fn header(data: &[u8]) -> (&[u8], &[u8]) {
    let Some((&first, rest)) = data.split_first() else {
        return (&[], &[]);
    };
    let count = usize::from(first & 7).min(rest.len());
    rest.split_at(count)
}

/// Builds an input from its chunks (for seeds): the inverse of [`chunks`] for chunks shorter than
/// 256 bytes, the last one any length.
pub fn join(options: u8, chunks: &[&[u8]]) -> Vec<u8> {
    let (last, cuts) = chunks.split_last().map_or((&[][..], &[][..]), |(l, c)| (*l, c));
    let cuts = &cuts[..cuts.len().min(7)];
    let mut out = vec![(options << 3) | cuts.len() as u8];
    out.extend(cuts.iter().map(|c| c.len().min(255) as u8));
    for c in cuts {
        out.extend_from_slice(&c[..c.len().min(255)]);
    }
    out.extend_from_slice(last);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_is_the_inverse_of_chunks() {
        let input = join(3, &[b"ab", b"", b"cde", b"rest of it"]);
        assert_eq!(chunks(&input), vec![&b"ab"[..], b"", b"cde", b"rest of it"]);
        assert_eq!(payload(&input), b"abcderest of it");
        assert_eq!(options(&input), 3);
        assert_eq!(chunks(&[]), vec![&b""[..]]);
    }
}
