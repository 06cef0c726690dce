//! Fast seeded hashing for the handlespace maps.
//!
//! std's SipHash is robust but slow for 8-byte keys. Both maps are keyed by values a
//! peer chooses (pool handles and PE identifiers arrive from the network), so an
//! unkeyed multiply hash would let an attacker build colliding keys (HashDoS). This
//! hasher mixes a per-handlespace random seed in with a folded 64x64->128 multiply
//! (the construction of wyhash/foldhash): cheap, and colliding keys cannot be chosen
//! without knowing the seed.

use std::hash::{BuildHasher, Hasher};

const K0: u64 = 0x243F_6A88_85A3_08D3;
const K1: u64 = 0x1319_8A2E_0370_7344;

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let m = (a as u128) * (b as u128);
    (m as u64) ^ ((m >> 64) as u64)
}

/// Keyed hash of a (handle hash, PE id) pair: one folded multiply, both sides
/// carrying the key, so that no input can zero the product without it.
#[inline(always)]
pub fn hash_pair(seed: u64, a: u64, id: u32) -> u64 {
    let id = id as u64;
    fold_mul(a ^ seed ^ K0, (id | id << 32) ^ seed.rotate_left(32) ^ K1)
}

/// The first 8 bytes (callers guarantee at least 8): one load.
#[inline(always)]
fn read_u64(b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&b[..8]);
    u64::from_le_bytes(w)
}

/// The first 4 bytes (callers guarantee at least 4): one load.
#[inline(always)]
fn read_u32(b: &[u8]) -> u64 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&b[..4]);
    u32::from_le_bytes(w) as u64
}

/// Keyed 64-bit hash of a byte string (pool handles), in the style of
/// foldhash/wyhash: inputs of up to 16 bytes (nearly every pool handle) cost one
/// folded multiply, longer ones one per 16 bytes. The length is mixed in, so
/// "ab" and "ab\0" differ. Without the seed, colliding inputs cannot be chosen.
#[inline]
pub fn hash_bytes(seed: u64, b: &[u8]) -> u64 {
    let len = b.len();
    let s = seed ^ (len as u64).wrapping_mul(K1);
    // Both multiplicands carry the secret: with a public constant on one side,
    // input equal to that constant would zero the product and lose the seed.
    let s2 = seed.rotate_left(23) ^ K0;
    let (x, y) = if len <= 16 {
        if len >= 8 {
            (read_u64(b), read_u64(&b[len - 8..]))
        } else if len >= 4 {
            (read_u32(b), read_u32(&b[len - 4..]))
        } else if len > 0 {
            // The first, middle and last byte cover every byte of 1..=3.
            (
                ((b[0] as u64) << 16) | ((b[len / 2] as u64) << 8) | b[len - 1] as u64,
                0,
            )
        } else {
            (0, 0)
        }
    } else {
        let mut h = s;
        let mut rest = b;
        while rest.len() > 16 {
            h = fold_mul(read_u64(rest) ^ h, read_u64(&rest[8..]) ^ s2);
            rest = &rest[16..];
        }
        // The last 16 bytes (overlapping what was already mixed when needed).
        let t = &b[len - 16..];
        return fold_mul(fold_mul(read_u64(t) ^ h, read_u64(&t[8..]) ^ s2), s ^ K0);
    };
    fold_mul(x ^ s, y ^ s2)
}

/// Byte-string equality without a call to `memcmp` for the short strings
/// pool handles nearly always are (two overlapping word compares up to 16 bytes).
#[inline]
pub fn bytes_eq(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if (8..=16).contains(&len) {
        read_u64(a) == read_u64(b) && read_u64(&a[len - 8..]) == read_u64(&b[len - 8..])
    } else if (4..8).contains(&len) {
        read_u32(a) == read_u32(b) && read_u32(&a[len - 4..]) == read_u32(&b[len - 4..])
    } else {
        a == b
    }
}

/// A [`BuildHasher`] for keys that already are keyed 64-bit hashes
/// ([`hash_bytes`]): passes them through.
#[derive(Debug, Clone, Copy, Default)]
pub struct PreHashed;

impl BuildHasher for PreHashed {
    type Hasher = PreHasher;
    #[inline]
    fn build_hasher(&self) -> PreHasher {
        PreHasher(0)
    }
}

/// The hasher built by [`PreHashed`] (only `write_u64` is meaningful).
#[derive(Debug, Clone)]
pub struct PreHasher(u64);

impl Hasher for PreHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        // Not used by u64 keys; stay correct for anything else.
        for &x in bytes {
            self.0 = (self.0.rotate_left(8) ^ x as u64).wrapping_mul(K0);
        }
    }
    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

/// A [`BuildHasher`] carrying the random seed.
#[derive(Debug, Clone, Copy)]
pub struct SeededState {
    seed: u64,
}

impl SeededState {
    /// A state keyed by `seed`.
    pub fn new(seed: u64) -> Self {
        SeededState { seed }
    }
}

impl BuildHasher for SeededState {
    type Hasher = SeededHasher;
    #[inline]
    fn build_hasher(&self) -> SeededHasher {
        SeededHasher { h: self.seed }
    }
}

/// The hasher built by [`SeededState`].
#[derive(Debug, Clone)]
pub struct SeededHasher {
    h: u64,
}

impl Hasher for SeededHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
            self.h = fold_mul(self.h ^ w, K0);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut buf = [0u8; 8];
            buf[..rest.len()].copy_from_slice(rest);
            self.h = fold_mul(self.h ^ u64::from_le_bytes(buf), K0);
        }
        // The length keeps "ab" and "ab\0" apart.
        self.h = fold_mul(self.h ^ bytes.len() as u64, K1);
    }

    #[inline]
    fn write_u64(&mut self, x: u64) {
        self.h = fold_mul(self.h ^ x, K0);
    }

    #[inline]
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold_mul(self.h, K1 ^ self.h.rotate_left(29))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::Hash;

    fn h<T: Hash>(s: &SeededState, v: T) -> u64 {
        s.hash_one(v)
    }

    #[test]
    fn seed_matters_and_lengths_differ() {
        let a = SeededState::new(1);
        let b = SeededState::new(2);
        assert_ne!(h(&a, 5u64), h(&b, 5u64));
        assert_ne!(h(&a, &b"ab"[..]), h(&a, &b"ab\0"[..]));
        assert_eq!(h(&a, &b"pool"[..]), h(&a, &b"pool"[..]));
    }

    #[test]
    fn bytes_eq_matches_slice_eq() {
        for n in 0..40usize {
            let a: Vec<u8> = (0..n as u8).collect();
            assert!(bytes_eq(&a, &a.clone()));
            assert!(!bytes_eq(&a, &a[..n.saturating_sub(1)]) || n == 0);
            for i in 0..n {
                let mut b = a.clone();
                b[i] ^= 0x80;
                assert!(!bytes_eq(&a, &b), "len {n} byte {i}");
            }
        }
    }

    #[test]
    fn hash_bytes_keyed_and_length_aware() {
        let inputs: Vec<Vec<u8>> = (0..40usize)
            .map(|n| (0..n).map(|i| i as u8 ^ 0x5a).collect())
            .chain([b"ab".to_vec(), b"ab\0".to_vec(), b"\0ab".to_vec()])
            .collect();
        let mut seen = std::collections::HashSet::new();
        for x in &inputs {
            assert!(seen.insert(hash_bytes(7, x)), "collision for {x:?}");
            assert_ne!(hash_bytes(7, x), hash_bytes(8, x));
        }
        // Input that would cancel a public multiplicand still depends on the seed.
        let mut x = Vec::new();
        for _ in 0..3 {
            x.extend_from_slice(&7u64.to_le_bytes());
            x.extend_from_slice(&K0.to_le_bytes());
        }
        assert_ne!(hash_bytes(1, &x), hash_bytes(2, &x));
        assert_ne!(hash_bytes(1, &x[..20]), hash_bytes(2, &x[..20]));
        // Every byte matters, at every length.
        for n in 1..40usize {
            let base = vec![0u8; n];
            for i in 0..n {
                let mut v = base.clone();
                v[i] = 1;
                assert_ne!(hash_bytes(3, &v), hash_bytes(3, &base), "len {n} byte {i}");
            }
        }
    }
}
