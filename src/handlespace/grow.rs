//! Growing the ordered-set node arena into fresh allocations instead of with
//! `realloc`.
//!
//! Why: at a million PEs the arena is ~30 MB touched at random, and what makes
//! that fast is transparent huge pages, which the `rserpool` binary's
//! allocator asks for on every large block it hands out, before its pages are
//! first touched (a page gets a huge page or not when first touched). The
//! arena's nodes are cache-line aligned, and for alignments above 16 Rust's
//! system `realloc` allocates the new block and copies into it itself, before
//! the allocator can advise it: the copied half of the arena ended up on small
//! pages. Allocating the doubled block first and moving the nodes into it costs
//! the same copy and lets the allocator advise the block first.
//!
//! (The PE slab grows with `Vec::push` still: its alignment is 8, so glibc's
//! `realloc` does the copy, and freeing the old blocks ourselves instead raised
//! glibc's dynamic mmap threshold past the PE table's 16 MB, which then came
//! from the heap and stayed resident after it was freed: 17 bytes/PE more in
//! `rserpool bench handlespace --pes 1000000`, past its 200 bytes/PE budget.)

/// Pushes `x` onto `v`; when full, moves `v` into a fresh block of twice the
/// capacity (amortised O(1), like `Vec::push`).
#[inline]
pub fn push<T>(v: &mut Vec<T>, x: T) {
    if v.len() == v.capacity() {
        grow(v);
    }
    v.push(x);
}

#[cold]
#[inline(never)]
fn grow<T>(v: &mut Vec<T>) {
    let mut fresh = Vec::with_capacity(v.capacity().saturating_mul(2).max(8));
    fresh.append(v);
    *v = fresh;
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_doubles() {
        let mut v: Vec<u64> = Vec::new();
        for i in 0..10_000u64 {
            super::push(&mut v, i);
            assert!(v.capacity() >= v.len() && v.capacity() <= 2 * v.len().max(8));
        }
        assert!(v.iter().copied().eq(0..10_000));
    }
}
