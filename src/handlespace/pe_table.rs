//! The PE table: `(pool, PE id)` to entry index, an open-addressing hash table
//! whose buckets are one cache line each.
//!
//! Why not `HashMap<(u32, u32), u32>`: a hashbrown table keeps its control bytes and
//! its slots in two arrays, so a lookup in a table larger than the caches is two
//! dependent cache misses. Here a bucket holds five keys and their values in one
//! 64-byte line: one miss.
//!
//! A key's bucket sequence starts at a hash of the pool's handle hash and the PE id,
//! not of the pool index, so that a caller can start fetching the bucket
//! ([`PeTable::prefetch`]) before it has found the pool: the two lookups overlap.
//! Hashes are keyed (handles and ids come from the network). The probe goes
//! bucket by bucket and ends at the first bucket with a never-used slot; a removed
//! key leaves a tombstone unless its bucket ends probes anyway. The table is
//! rebuilt when used slots (live and tombstones) pass three quarters.

use super::hash::hash_pair;

/// A never-used slot (zero, so that a new table is zeroed memory, which the
/// system hands out lazily instead of it being written here).
const EMPTY: u32 = 0;
/// A slot whose key was removed.
const TOMB: u32 = u32::MAX;
/// Slots per bucket: five 8-byte keys and five 4-byte values fill 64 bytes.
const SLOTS: usize = 5;

#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Bucket {
    keys: [u64; SLOTS],
    /// Entry index + 1, or EMPTY / TOMB.
    vals: [u32; SLOTS],
    _pad: u32,
}

impl Bucket {
    #[inline(always)]
    fn live(v: u32) -> bool {
        v != EMPTY && v != TOMB
    }
    #[inline(always)]
    fn find(&self, key: u64) -> Option<usize> {
        (0..SLOTS).find(|&s| self.keys[s] == key && Bucket::live(self.vals[s]))
    }
    #[inline(always)]
    fn ends_probe(&self) -> bool {
        self.vals.contains(&EMPTY)
    }
    #[inline(always)]
    fn free_slot(&self) -> Option<usize> {
        (0..SLOTS).find(|&s| !Bucket::live(self.vals[s]))
    }
}

/// A table's buckets: `n` cache-line-aligned buckets in one block from the
/// global allocator's `alloc_zeroed`.
///
/// Not a `Vec<Bucket>`: for an alignment above 16 the standard library's
/// system allocator zeroes a block by writing it, touching every page before
/// the `rserpool` binary's allocator has advised it to use huge pages (and
/// allocating eagerly what a fresh mapping would give lazily). So the block is
/// asked for with alignment 16 (which `calloc` serves from fresh, untouched
/// zero pages when large) and 48 bytes more, and the buckets start at its
/// first 64-byte boundary.
struct Buckets {
    /// The block (null when `len` is 0).
    block: *mut u8,
    /// The first bucket (dangling but aligned when `len` is 0).
    base: *mut Bucket,
    len: usize,
}

// SAFETY: `Buckets` owns its block exclusively (like a `Vec<Bucket>`), and
// `Bucket` is plain integers.
unsafe impl Send for Buckets {}
// SAFETY: shared access only reads (like `&[Bucket]`).
unsafe impl Sync for Buckets {}

impl Buckets {
    const ALIGN: usize = 16;

    fn empty() -> Buckets {
        Buckets {
            block: std::ptr::null_mut(),
            base: std::ptr::NonNull::dangling().as_ptr(),
            len: 0,
        }
    }

    fn layout(n: usize) -> std::alloc::Layout {
        let size = n
            .checked_mul(std::mem::size_of::<Bucket>())
            .and_then(|b| b.checked_add(std::mem::align_of::<Bucket>() - Self::ALIGN))
            .expect("table size");
        std::alloc::Layout::from_size_align(size, Self::ALIGN).expect("table size")
    }

    /// `n` (> 0) free buckets.
    fn zeroed(n: usize) -> Buckets {
        let layout = Self::layout(n);
        // SAFETY: the layout is not zero-sized (n > 0).
        let block = unsafe { std::alloc::alloc_zeroed(layout) };
        if block.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        let skip = block.align_offset(std::mem::align_of::<Bucket>());
        // The block is 16-aligned, so the first 64-byte boundary is at most 48
        // bytes in: the n buckets from there fit in the block. All zeros is a
        // bucket of EMPTY slots, so they are initialised.
        debug_assert!(skip <= std::mem::align_of::<Bucket>() - Self::ALIGN);
        Buckets {
            block,
            // SAFETY: inside the block (see above).
            base: unsafe { block.add(skip) }.cast::<Bucket>(),
            len: n,
        }
    }
}

impl std::ops::Deref for Buckets {
    type Target = [Bucket];
    #[inline(always)]
    fn deref(&self) -> &[Bucket] {
        // SAFETY: `base` is aligned and, when `len` > 0, points at `len`
        // initialised buckets owned by `self`.
        unsafe { std::slice::from_raw_parts(self.base, self.len) }
    }
}

impl std::ops::DerefMut for Buckets {
    #[inline(always)]
    fn deref_mut(&mut self) -> &mut [Bucket] {
        // SAFETY: as for `deref`, and `&mut self` is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.base, self.len) }
    }
}

impl Drop for Buckets {
    fn drop(&mut self) {
        if !self.block.is_null() {
            // SAFETY: the block was allocated with this layout.
            unsafe { std::alloc::dealloc(self.block, Self::layout(self.len)) };
        }
    }
}

#[inline(always)]
fn key_of(pool: u32, id: u32) -> u64 {
    ((pool as u64) << 32) | id as u64
}

/// Where a key that is not in the table goes (from [`PeTable::entry`]).
#[derive(Debug, Clone, Copy)]
pub struct Vacant {
    bucket: usize,
    slot: usize,
    key: u64,
}

/// The PE table.
pub struct PeTable {
    buckets: Buckets,
    seed: u64,
    /// Keys in the table.
    live: usize,
    /// Slots not EMPTY (live keys and tombstones).
    used: usize,
}

impl std::fmt::Debug for PeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeTable")
            .field("live", &self.live)
            .field("used", &self.used)
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

impl PeTable {
    /// An empty table whose hashes are keyed by `seed`.
    pub fn new(seed: u64) -> PeTable {
        PeTable {
            buckets: Buckets::empty(),
            seed,
            live: 0,
            used: 0,
        }
    }

    /// Number of keys.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.live
    }

    /// The first bucket of the sequence of the PE `id` in the pool whose handle
    /// has keyed hash `handle_hash`.
    #[inline(always)]
    fn home(&self, handle_hash: u64, id: u32) -> usize {
        hash_pair(self.seed, handle_hash, id) as usize & (self.buckets.len().wrapping_sub(1))
    }

    /// Starts fetching the first bucket of a key, for a lookup to come.
    #[inline(always)]
    pub fn prefetch(&self, handle_hash: u64, id: u32) {
        if self.buckets.is_empty() {
            return;
        }
        let b = &self.buckets[self.home(handle_hash, id)];
        #[cfg(target_arch = "x86_64")]
        // SAFETY: a prefetch has no architectural effect; the address is a bucket.
        unsafe {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            _mm_prefetch((b as *const Bucket).cast::<i8>(), _MM_HINT_T0);
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = b;
    }

    /// Finds a key: Ok((bucket, slot)) if present, else Err with the first free
    /// slot on its sequence (None if the table has no buckets).
    #[inline(always)]
    fn probe(&self, handle_hash: u64, key: u64) -> Result<(usize, usize), Option<(usize, usize)>> {
        if self.buckets.is_empty() {
            return Err(None);
        }
        let mask = self.buckets.len() - 1;
        let mut b = self.home(handle_hash, key as u32);
        let mut free = None;
        // Terminates: the load limit keeps EMPTY slots in the table, and the
        // sequence visits every bucket.
        loop {
            let bucket = &self.buckets[b];
            if let Some(s) = bucket.find(key) {
                return Ok((b, s));
            }
            if free.is_none() {
                free = bucket.free_slot().map(|s| (b, s));
            }
            if bucket.ends_probe() {
                return Err(free);
            }
            b = (b + 1) & mask;
        }
    }

    /// The value of PE `id` of pool `pool` (whose handle hash is `handle_hash`).
    #[inline]
    pub fn get(&self, handle_hash: u64, pool: u32, id: u32) -> Option<u32> {
        let (b, s) = self.probe(handle_hash, key_of(pool, id)).ok()?;
        Some(self.buckets[b].vals[s] - 1)
    }

    /// Removes a key, returning its value.
    #[inline]
    pub fn remove(&mut self, handle_hash: u64, pool: u32, id: u32) -> Option<u32> {
        let (b, s) = self.probe(handle_hash, key_of(pool, id)).ok()?;
        let bucket = &mut self.buckets[b];
        let v = bucket.vals[s];
        bucket.keys[s] = 0;
        // A bucket with an EMPTY slot ends every probe that reaches it, so no key
        // lies beyond it on those probes: this slot can be EMPTY again.
        if bucket.ends_probe() {
            bucket.vals[s] = EMPTY;
            self.used -= 1;
        } else {
            bucket.vals[s] = TOMB;
        }
        self.live -= 1;
        Some(v - 1)
    }

    /// The value of a key, or where to insert it ([`insert`](Self::insert), with
    /// no other change to the table in between). May rebuild the table first (so
    /// that an insertion has room), which needs the handle hash of any pool:
    /// `handle_hash_of`.
    #[inline]
    pub fn entry(
        &mut self,
        handle_hash: u64,
        pool: u32,
        id: u32,
        handle_hash_of: impl Fn(u32) -> u64,
    ) -> Result<u32, Vacant> {
        if (self.used + 1) * 4 > self.buckets.len() * SLOTS * 3 {
            self.rebuild(handle_hash_of);
        }
        let key = key_of(pool, id);
        match self.probe(handle_hash, key) {
            Ok((b, s)) => Ok(self.buckets[b].vals[s] - 1),
            Err(free) => {
                // The load limit leaves free slots on every sequence's last bucket.
                let (bucket, slot) = free.expect("a free slot below the load limit");
                Err(Vacant { bucket, slot, key })
            }
        }
    }

    /// Inserts the key `v` was made for, with value `val` (below `u32::MAX - 1`).
    #[inline]
    pub fn insert(&mut self, v: Vacant, val: u32) {
        debug_assert!(val < u32::MAX - 1);
        self.put(v, val + 1);
    }

    #[inline(always)]
    fn put(&mut self, v: Vacant, stored: u32) {
        let bucket = &mut self.buckets[v.bucket];
        if bucket.vals[v.slot] == EMPTY {
            self.used += 1;
        }
        bucket.keys[v.slot] = v.key;
        bucket.vals[v.slot] = stored;
        self.live += 1;
    }

    /// Rebuilds into a table where the live keys fill at most three eighths of
    /// the slots (dropping the tombstones).
    #[cold]
    fn rebuild(&mut self, handle_hash_of: impl Fn(u32) -> u64) {
        let mut n = 8usize;
        while n * SLOTS * 3 < (self.live + 1) * 8 {
            n *= 2;
        }
        let old = std::mem::replace(&mut self.buckets, Buckets::zeroed(n));
        self.used = 0;
        self.live = 0;
        for bucket in old.iter() {
            for s in 0..SLOTS {
                if Bucket::live(bucket.vals[s]) {
                    let key = bucket.keys[s];
                    let hh = handle_hash_of((key >> 32) as u32);
                    let free = self.probe(hh, key).err().flatten();
                    let (b, slot) = free.expect("room in a new table");
                    self.put(
                        Vacant {
                            bucket: b,
                            slot,
                            key,
                        },
                        bucket.vals[s],
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlespace::rng::Rng;
    use std::collections::HashMap;

    /// Handle hashes of few bits make long collision chains.
    fn hh(pool: u32, bits: u32) -> u64 {
        (pool as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - bits)
    }

    fn run(seed: u64, bits: u32, steps: usize, ids: u32) {
        let mut t = PeTable::new(seed);
        let mut m: HashMap<(u32, u32), u32> = HashMap::new();
        let mut rng = Rng::new(seed);
        for step in 0..steps {
            let pool = rng.below(64) as u32;
            let id = 1 + rng.below(ids as u64) as u32;
            let h = hh(pool, bits);
            t.prefetch(h, id);
            match rng.below(3) {
                0 | 1 => {
                    let val = rng.below(1 << 30) as u32;
                    match t.entry(h, pool, id, |p| hh(p, bits)) {
                        Ok(v) => assert_eq!(m.get(&(pool, id)), Some(&v), "step {step}"),
                        Err(vac) => {
                            assert!(!m.contains_key(&(pool, id)), "step {step}");
                            t.insert(vac, val);
                            m.insert((pool, id), val);
                        }
                    }
                }
                _ => assert_eq!(t.remove(h, pool, id), m.remove(&(pool, id))),
            }
            assert_eq!(t.len(), m.len());
            assert!(t.used * 4 <= t.buckets.len() * SLOTS * 3);
            if step % 251 == 0 {
                for (&(p, i), &v) in &m {
                    assert_eq!(t.get(hh(p, bits), p, i), Some(v));
                }
                let live = t
                    .buckets
                    .iter()
                    .flat_map(|b| b.vals)
                    .filter(|&v| Bucket::live(v))
                    .count();
                let used = t
                    .buckets
                    .iter()
                    .flat_map(|b| b.vals)
                    .filter(|&v| v != EMPTY)
                    .count();
                assert_eq!((live, used), (t.live, t.used));
            }
        }
        // Misses.
        for id in ids + 1..ids + 100 {
            assert_eq!(t.get(hh(3, bits), 3, id), None);
        }
    }

    #[test]
    fn matches_hashmap() {
        for seed in 0..6 {
            run(seed, 64, 20_000, 2_000);
        }
    }

    #[test]
    fn colliding_handle_hashes() {
        // Two-bit handle hashes and few ids: long probes, many tombstones.
        run(7, 2, 30_000, 50);
        run(8, 1, 30_000, 3_000);
    }

    #[test]
    fn buckets_are_cache_lines() {
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
        assert_eq!(std::mem::align_of::<Bucket>(), 64);
    }
}
