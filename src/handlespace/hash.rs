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
}
