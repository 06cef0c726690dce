//! Handle tables: what the C side holds as `rserpool_context *` (or
//! `rserpool_config *`) is not the address of anything but a number naming a
//! slot of a global table, with the slot's generation:
//!
//! ```text
//!   value = generation << (usize bits / 2) | (slot + 1) << 3 | table tag
//! ```
//!
//! Freeing a handle empties its slot and bumps the generation, so a freed,
//! doubly freed, forged or wrong-kind handle is found out by a table lookup
//! (`RSERPOOL_ERR_INVALID_HANDLE`) instead of being dereferenced. Lookups hand
//! out an `Arc`: a call running on another thread while the handle is freed
//! finishes normally, and the object is dropped when that call returns.
//! Generations wrap after 2^(bits/2) reuses of one slot (2^32 on 64-bit
//! platforms), the only case a stale handle could name a new object.

use std::sync::Arc;

use parking_lot::{const_mutex, Mutex};

const HALF: u32 = usize::BITS / 2;
const TAG_BITS: u32 = 3;
const MAX_SLOTS: usize = (1usize << (HALF - TAG_BITS)) - 2;

struct Slot<T> {
    gen: usize,
    value: Option<Arc<T>>,
}

struct Slots<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
}

/// A table of live objects of one kind.
pub(crate) struct Table<T> {
    tag: usize,
    inner: Mutex<Slots<T>>,
}

impl<T> Table<T> {
    /// An empty table; `tag` (1..=7) tells the kinds of handles apart.
    pub(crate) const fn new(tag: usize) -> Self {
        Table {
            tag,
            inner: const_mutex(Slots {
                slots: Vec::new(),
                free: Vec::new(),
            }),
        }
    }

    fn split(&self, h: usize) -> Option<(usize, usize)> {
        if h & ((1 << TAG_BITS) - 1) != self.tag {
            return None;
        }
        let low = h & ((1usize << HALF) - 1);
        let index = (low >> TAG_BITS).checked_sub(1)?;
        Some((index, h >> HALF))
    }

    /// Store `value`; `None` when the table is full.
    pub(crate) fn insert(&self, value: T) -> Option<usize> {
        let mut s = self.inner.lock();
        let index = match s.free.pop() {
            Some(i) => i,
            None if s.slots.len() < MAX_SLOTS => {
                s.slots.push(Slot {
                    gen: 1,
                    value: None,
                });
                s.slots.len() - 1
            }
            None => return None,
        };
        let slot = &mut s.slots[index];
        slot.value = Some(Arc::new(value));
        Some((slot.gen << HALF) | ((index + 1) << TAG_BITS) | self.tag)
    }

    /// The object named by `h`, if it is live.
    pub(crate) fn get(&self, h: usize) -> Option<Arc<T>> {
        let (index, gen) = self.split(h)?;
        let s = self.inner.lock();
        let slot = s.slots.get(index)?;
        if slot.gen != gen {
            return None;
        }
        slot.value.clone()
    }

    /// Remove the object named by `h` (the handle is dead from now on).
    pub(crate) fn remove(&self, h: usize) -> Option<Arc<T>> {
        let (index, gen) = self.split(h)?;
        let mut s = self.inner.lock();
        let slot = s.slots.get_mut(index)?;
        if slot.gen != gen || slot.value.is_none() {
            return None;
        }
        let v = slot.value.take();
        // Never 0 after wrapping, so no handle value is ever NULL-like.
        slot.gen = (slot.gen + 1) & ((1usize << HALF) - 1);
        if slot.gen == 0 {
            slot.gen = 1;
        }
        s.free.push(index);
        v
    }

    /// The body of every `rserpool_*_free` / `_stop` / `_close` function:
    /// NULL is a no-op (`RSERPOOL_OK`), a live handle is removed and its
    /// object handed to `release` (which may block, e.g. to stop a loop
    /// thread), anything else is `RSERPOOL_ERR_INVALID_HANDLE`.
    pub(crate) fn free_c(&self, h: usize, release: impl FnOnce(Arc<T>)) -> std::os::raw::c_int {
        use super::error::RserpoolErr;
        if h == 0 {
            return RserpoolErr::Ok as std::os::raw::c_int;
        }
        match self.remove(h) {
            Some(v) => {
                release(v);
                RserpoolErr::Ok as std::os::raw::c_int
            }
            None => RserpoolErr::InvalidHandle as std::os::raw::c_int,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_forged_and_foreign_handles_are_rejected() {
        let t: Table<u32> = Table::new(1);
        let other: Table<u32> = Table::new(2);
        let a = t.insert(7).unwrap();
        assert_eq!(t.get(a).as_deref(), Some(&7));
        assert!(other.get(a).is_none());
        assert!(t.get(0).is_none());
        assert!(t.get(a + 4).is_none());
        assert!(t.get(0x1000).is_none());
        assert_eq!(t.remove(a).as_deref(), Some(&7));
        assert!(t.get(a).is_none());
        assert!(t.remove(a).is_none());
        // The slot is reused under a new generation; the old handle stays dead.
        let b = t.insert(8).unwrap();
        assert_ne!(a, b);
        assert!(t.get(a).is_none());
        assert_eq!(t.get(b).as_deref(), Some(&8));
    }
}
