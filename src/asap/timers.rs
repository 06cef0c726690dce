//! The client's timer table: deadlines keyed by what they are for (quinn's
//! timer table, with a key space that grows with PEs and pools).

use std::collections::{BTreeMap, BTreeSet};

use crate::time::Time;

/// Timers ordered by deadline; setting a key again replaces its deadline.
#[derive(Debug)]
pub(crate) struct Timers<K: Ord + Clone> {
    by_key: BTreeMap<K, Time>,
    queue: BTreeSet<(Time, K)>,
}

impl<K: Ord + Clone> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            by_key: BTreeMap::new(),
            queue: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Clone> Timers<K> {
    /// Arm (or re-arm) `key` for `at`.
    pub(crate) fn set(&mut self, key: K, at: Time) {
        if let Some(old) = self.by_key.insert(key.clone(), at) {
            self.queue.remove(&(old, key.clone()));
        }
        self.queue.insert((at, key));
    }

    /// Disarm `key` (nothing if it is not armed).
    pub(crate) fn cancel(&mut self, key: &K) {
        if let Some(old) = self.by_key.remove(key) {
            self.queue.remove(&(old, key.clone()));
        }
    }

    /// The deadline of `key`, if armed.
    #[cfg(test)]
    pub(crate) fn get(&self, key: &K) -> Option<Time> {
        self.by_key.get(key).copied()
    }

    /// The earliest deadline.
    pub(crate) fn next(&self) -> Option<Time> {
        self.queue.first().map(|(t, _)| *t)
    }

    /// The earliest timer due at `now`, removed.
    pub(crate) fn pop_due(&mut self, now: Time) -> Option<K> {
        let (at, _) = self.queue.first()?;
        if *at > now {
            return None;
        }
        let (_, key) = self.queue.pop_first()?;
        self.by_key.remove(&key);
        Some(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_cancel_and_pop_in_order() {
        let mut t = Timers::<u32>::default();
        t.set(1, Time(50));
        t.set(2, Time(10));
        t.set(1, Time(5));
        assert_eq!(t.next(), Some(Time(5)));
        assert_eq!(t.get(&2), Some(Time(10)));
        assert_eq!(t.pop_due(Time(4)), None);
        assert_eq!(t.pop_due(Time(100)), Some(1));
        t.cancel(&2);
        t.cancel(&2);
        assert_eq!(t.next(), None);
        assert_eq!(t.pop_due(Time::NEVER), None);
    }
}
