//! The ENRP PE checksum (RFC 5353 §3.6.2, digest §9.14).
//!
//! For each PE owned by a server, the block `pool handle ‖ zero padding to 4 bytes ‖
//! PE id (big-endian)` enters an RFC 1071 Internet checksum. Every block is a multiple
//! of 4 bytes long, so blocks can be summed in any order: we keep, per owner, the plain
//! integer sum of all their 16-bit big-endian words (adding a PE's words when it starts
//! being owned, subtracting them when it stops) and fold + invert only when asked.

/// The sum of the 16-bit big-endian words of `handle` zero-padded to a 4-byte boundary.
pub fn handle_words(handle: &[u8]) -> u64 {
    let mut sum = 0u64;
    let mut chunks = handle.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    sum
}

/// The word sum of one PE's block, given its handle's [`handle_words`].
#[inline]
pub fn pe_words(handle_words: u64, id: u32) -> u64 {
    handle_words + (id >> 16) as u64 + (id & 0xFFFF) as u64
}

/// Folds a word sum with end-around carry and inverts it: the checksum value.
/// An empty sum gives 0xFFFF.
#[inline]
pub fn finish(mut sum: u64) -> u16 {
    while sum >> 16 != 0 {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

/// The checksum of a set of (handle, PE id) pairs, computed from scratch.
pub fn compute<'a>(pes: impl IntoIterator<Item = (&'a [u8], u32)>) -> u16 {
    finish(
        pes.into_iter()
            .map(|(h, id)| pe_words(handle_words(h), id))
            .sum(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_vectors() {
        assert_eq!(compute([]), 0xFFFF);
        assert_eq!(compute([(&b"EchoPool"[..], 0x12345678)]), 0x29A5);
        assert_eq!(
            compute([
                (&b"EchoPool"[..], 0x12345678),
                (&b"EchoPool"[..], 0x11111111)
            ]),
            0x99D4
        );
        assert_eq!(compute([(&b"abc"[..], 1)]), 0x3B9C);
        assert_eq!(compute([(&b"abcde"[..], 7), (&b"x"[..], 9)]), 0x5E28);
    }
}
