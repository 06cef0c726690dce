//! The process allocator of the `rserpool` binary: the system allocator, with
//! large blocks advised to use transparent huge pages.
//!
//! A registrar's handlespace is a few large arrays (the PE slab, the PE index)
//! that every operation touches at random. With 4 KiB pages a million-PE
//! handlespace costs a TLB miss (a page walk) on nearly every access; with
//! 2 MiB pages it does not. Most kernels ship THP in `madvise` mode, so the
//! pages must be asked for. Measured on `rserpool bench handlespace --pes
//! 1000000 --pools 10000 --policy rr`: re-registration and deregistration
//! about 1.5-2x faster, at ~2 bytes/PE more resident memory.
//!
//! Only the binary installs it: the library never imposes an allocator on the
//! applications that link it.

use std::alloc::{GlobalAlloc, Layout, System};

/// One huge page.
const HUGE: usize = 2 << 20;

/// Blocks at least this large are advised. A huge page is resident as a
/// whole once any byte of it is touched, so a growable array loses up to
/// 2 MiB at its partly used end: at 100,000 PEs that put 10-30 bytes/PE on
/// top of ~170 (near the 200 bytes/PE budget) for no measurable speed-up,
/// while at a million PEs every hot array is past 16 MiB.
const ADVISED: usize = 16 << 20;

/// The system allocator plus `madvise(MADV_HUGEPAGE)` on blocks ≥ 16 MiB.
pub struct HugePageAlloc;

/// Ask for huge pages on the whole 2 MiB-aligned pages inside `[p, p + len)`.
fn advise(p: *mut u8, len: usize) {
    let start = (p as usize).saturating_add(HUGE - 1) & !(HUGE - 1);
    let end = (p as usize).saturating_add(len) & !(HUGE - 1);
    if end > start {
        // SAFETY: the range lies inside a live allocation of ours; madvise
        // only changes how the kernel backs those pages, never their contents,
        // and a failure (e.g. THP disabled) is harmless and ignored.
        unsafe {
            libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE);
        }
    }
}

// SAFETY: every method forwards to `System` with the same arguments, so the
// GlobalAlloc contract is System's; `advise` does not touch memory contents.
unsafe impl GlobalAlloc for HugePageAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc(layout) };
        if layout.size() >= ADVISED && !p.is_null() {
            advise(p, layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.alloc_zeroed(layout) };
        if layout.size() >= ADVISED && !p.is_null() {
            advise(p, layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded as is.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded as is.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if new_size >= ADVISED && !p.is_null() {
            advise(p, new_size);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_and_small_blocks_work() {
        let a = HugePageAlloc;
        for size in [8usize, 4096, HUGE - 1, HUGE, 3 * HUGE + 17] {
            let layout = Layout::from_size_align(size, 8).unwrap();
            // SAFETY: non-zero size; the block is written within bounds, then
            // grown, checked and freed with matching layouts.
            unsafe {
                let p = a.alloc_zeroed(layout);
                assert!(!p.is_null());
                assert_eq!(*p.add(size - 1), 0);
                *p.add(size - 1) = 7;
                let q = a.realloc(p, layout, size * 2);
                assert!(!q.is_null());
                assert_eq!(*q.add(size - 1), 7);
                a.dealloc(q, Layout::from_size_align(size * 2, 8).unwrap());
            }
        }
    }
}
