//! Reuse of message buffers inside a session core.
//!
//! A session copies every message it is given (it keeps it until the PE
//! acknowledges it) and frees it on acknowledgement, on the loop thread,
//! while the application's thread allocates the next ones: with hundreds in
//! flight, that defeats the allocator's per-thread caches and every message
//! pays for a trip through the shared heap. Keeping the buffers of
//! acknowledged messages for the next sends (under the core's lock, which
//! both sides hold anyway) avoids that. Bounded, so an idle session holds
//! little.

/// Buffers kept at most, and their total capacity at most.
const MAX_BUFFERS: usize = 256;
const MAX_BYTES: usize = 256 << 10;

/// A small stack of spare buffers.
#[derive(Debug, Default)]
pub(crate) struct BufPool {
    spare: Vec<Vec<u8>>,
    bytes: usize,
}

impl BufPool {
    /// A copy of `bytes`, in a spare buffer if one is kept.
    pub(crate) fn copy_of(&mut self, bytes: &[u8]) -> Vec<u8> {
        match self.spare.pop() {
            Some(mut v) => {
                self.bytes -= v.capacity();
                v.clear();
                v.extend_from_slice(bytes);
                v
            }
            None => bytes.to_vec(),
        }
    }

    /// Keep `v` for reuse if there is room; else free it.
    pub(crate) fn give(&mut self, v: Vec<u8>) {
        let cap = v.capacity();
        if cap > 0 && self.spare.len() < MAX_BUFFERS && self.bytes + cap <= MAX_BYTES {
            self.bytes += cap;
            self.spare.push(v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuses_within_bounds() {
        let mut p = BufPool::default();
        let a = p.copy_of(b"hello");
        let ptr = a.as_ptr();
        p.give(a);
        let b = p.copy_of(b"hi");
        assert_eq!(b, b"hi");
        assert_eq!(b.as_ptr(), ptr, "the spare buffer was reused");
        assert_eq!(p.copy_of(b"new"), b"new");
        // The byte bound: a buffer too large for it is freed, not kept.
        p.give(vec![0; MAX_BYTES + 1]);
        assert!(p.spare.is_empty() && p.bytes == 0);
        for _ in 0..MAX_BUFFERS + 10 {
            p.give(vec![0; 16]);
        }
        assert_eq!(p.spare.len(), MAX_BUFFERS);
        assert!(p.bytes <= MAX_BYTES);
    }
}
