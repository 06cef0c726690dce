//! A small generational slab: entries addressed by index (the mio `Token`), with
//! a generation per slot so a stale [`ConnId`](super::ConnId) can never reach a
//! newer connection that reused the slot.

/// One slot: its generation and its value, if occupied.
#[derive(Debug)]
struct Slot<T> {
    gen: u32,
    val: Option<T>,
}

/// A growable table of `T` with a free list.
#[derive(Debug)]
pub(crate) struct Slab<T> {
    slots: Vec<Slot<T>>,
    free: Vec<usize>,
    len: usize,
}

impl<T> Slab<T> {
    /// An empty slab.
    pub(crate) fn new() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }

    /// Number of occupied slots.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Insert a value built from its (index, generation); returns the index.
    pub(crate) fn insert_with(&mut self, f: impl FnOnce(usize, u32) -> T) -> usize {
        let idx = match self.free.pop() {
            Some(i) => i,
            None => {
                self.slots.push(Slot { gen: 0, val: None });
                self.slots.len() - 1
            }
        };
        let slot = &mut self.slots[idx];
        slot.gen = slot.gen.wrapping_add(1);
        slot.val = Some(f(idx, slot.gen));
        self.len += 1;
        idx
    }

    /// Remove and return the value at `idx`.
    pub(crate) fn remove(&mut self, idx: usize) -> Option<T> {
        let v = self.slots.get_mut(idx)?.val.take()?;
        self.free.push(idx);
        self.len -= 1;
        Some(v)
    }

    /// The value at `idx`.
    pub(crate) fn get(&self, idx: usize) -> Option<&T> {
        self.slots.get(idx)?.val.as_ref()
    }

    /// The value at `idx`, mutably.
    pub(crate) fn get_mut(&mut self, idx: usize) -> Option<&mut T> {
        self.slots.get_mut(idx)?.val.as_mut()
    }

    /// The value at `idx` only if the slot still has generation `gen`.
    pub(crate) fn get_gen_mut(&mut self, idx: usize, gen: u32) -> Option<&mut T> {
        let s = self.slots.get_mut(idx)?;
        if s.gen == gen {
            s.val.as_mut()
        } else {
            None
        }
    }

    /// Indices of all occupied slots.
    pub(crate) fn indices(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.val.is_some())
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reuse_bumps_generation() {
        let mut s = Slab::new();
        let mut g0 = 0;
        let a = s.insert_with(|_, g| {
            g0 = g;
            "a"
        });
        assert_eq!(s.len(), 1);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.remove(a), None);
        let b = s.insert_with(|_, _| "b");
        assert_eq!(a, b);
        assert!(s.get_gen_mut(b, g0).is_none());
        assert_eq!(s.get_gen_mut(b, g0 + 1).copied(), Some("b"));
        assert_eq!(s.indices().collect::<Vec<_>>(), vec![b]);
    }
}
