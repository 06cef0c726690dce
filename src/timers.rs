//! The sans-IO cores' timer table: deadlines keyed by what they are for,
//! ordered by deadline (quinn's timer table, STYLE.md §2.4, with a key space
//! that grows with the handlespace or the client's PEs and pools). Shared by
//! the registrar core and the ASAP client core.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

use crate::time::Time;

/// Timers in a table keyed by what they are for, ordered by deadline; setting a
/// key again replaces its deadline (quinn's timer table, with a key space that
/// grows with the handlespace).
#[derive(Debug)]
pub(crate) struct Timers<K: Ord + Hash + Clone> {
    by_key: HashMap<K, Time>,
    queue: BTreeSet<(Time, K)>,
}

impl<K: Ord + Hash + Clone> Default for Timers<K> {
    fn default() -> Self {
        Timers {
            by_key: HashMap::new(),
            queue: BTreeSet::new(),
        }
    }
}

impl<K: Ord + Hash + Clone> Timers<K> {
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
    #[allow(dead_code)]
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

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.queue.len()
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

    #[test]
    fn timers_replace_and_pop_in_order() {
        let mut t = Timers::<u32>::default();
        t.set(1, Time(50));
        t.set(2, Time(10));
        t.set(1, Time(5));
        assert_eq!(t.len(), 2);
        assert_eq!(t.next(), Some(Time(5)));
        assert_eq!(t.pop_due(Time(4)), None);
        assert_eq!(t.pop_due(Time(100)), Some(1));
        t.cancel(&2);
        assert_eq!(t.next(), None);
    }
}
