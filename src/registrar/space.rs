//! The registrar's view of the handlespace: the few operations the ASAP server
//! side needs, over [`Handlespace`], in wire types.

use std::collections::BTreeMap;

use crate::handlespace::{self, Cursor, Handlespace, RegisterError, Registered};
use crate::time::Time;
use crate::wire::{Param, Policy, PoolElement, PoolHandle};

/// A PE's key: pool handle and PE identifier.
pub(crate) type PeKey = (PoolHandle, u32);

/// One chunk of the handle table.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    /// Pool entries, in handle order.
    pub pools: Vec<(PoolHandle, Vec<PoolElement>)>,
    /// Where the next chunk starts, when `more`.
    pub resume: Cursor,
    /// More PEs follow.
    pub more: bool,
}

/// The handlespace as the registrar uses it.
#[derive(Debug)]
pub(crate) struct Space {
    pub(crate) hs: Handlespace,
}

impl Space {
    pub(crate) fn new(cfg: handlespace::Config) -> Self {
        Space {
            hs: Handlespace::new(cfg),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.hs.pe_count()
    }

    pub(crate) fn get(&self, handle: &PoolHandle, id: u32) -> Option<PoolElement> {
        self.hs.get(&handle.0, id).map(|v| v.to_pool_element())
    }

    /// Every pool handle with its PEs, in handle and PE-id order.
    pub(crate) fn pools(&self) -> Vec<(PoolHandle, Vec<PoolElement>)> {
        let mut m: BTreeMap<PoolHandle, BTreeMap<u32, PoolElement>> = BTreeMap::new();
        for v in self.hs.iter_all() {
            m.entry(PoolHandle(v.handle().to_vec()))
                .or_default()
                .insert(v.id(), v.to_pool_element());
        }
        m.into_iter()
            .map(|(h, pes)| (h, pes.into_values().collect()))
            .collect()
    }

    /// Register or re-register `pe` (home and ASAP transport already set),
    /// owned by `owner`, its life counted from `now`.
    pub(crate) fn register(
        &mut self,
        handle: &PoolHandle,
        pe: &PoolElement,
        owner: u32,
        now: Time,
    ) -> Result<Registered, RegisterError> {
        self.hs.register(&handle.0, pe, owner, now)
    }

    /// Remove a PE (and its pool if it was the last); whether it existed.
    pub(crate) fn remove(&mut self, handle: &PoolHandle, id: u32) -> bool {
        self.hs.remove(&handle.0, id)
    }

    /// Count one unreachable report; the new count (None if unknown).
    pub(crate) fn report_unreachable(&mut self, handle: &PoolHandle, id: u32) -> Option<u32> {
        self.hs.report_unreachable(&handle.0, id)
    }

    /// The next lifetime expiry check.
    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        self.hs.poll_timeout()
    }

    /// Remove every PE whose lifetime ran out by `now`.
    pub(crate) fn expire(&mut self, now: Time) -> Vec<(PoolHandle, PoolElement)> {
        let mut out = Vec::new();
        self.hs.expire(now, &mut out);
        out
    }

    /// Handle resolution: the pool's overall policy and up to `n` PEs chosen by
    /// it; `None` for an unknown pool.
    pub(crate) fn select(
        &mut self,
        handle: &PoolHandle,
        n: usize,
    ) -> Option<(Policy, Vec<PoolElement>)> {
        let mut refs = Vec::new();
        let policy = self.hs.resolve(&handle.0, n, &mut refs).ok()?;
        let pes = refs
            .into_iter()
            .filter_map(|r| self.hs.element(r).map(|v| v.to_pool_element()))
            .collect();
        Some((policy, pes))
    }

    /// Up to `max_pes` PEs (and about `max_bytes` of pool entries at most) from
    /// `cursor` on, only those owned by `owner` if given. A PE present for the
    /// whole download is returned exactly once (the handlespace's resumable
    /// iteration).
    pub(crate) fn chunk(
        &self,
        cursor: Cursor,
        owner: Option<u32>,
        max_pes: usize,
        max_bytes: usize,
    ) -> Chunk {
        let mut pools: BTreeMap<PoolHandle, Vec<PoolElement>> = BTreeMap::new();
        let (mut bytes, mut count) = (0usize, 0usize);
        let mut cur = cursor;
        let mut one = Vec::with_capacity(1);
        let mut chunk = Chunk::default();
        loop {
            one.clear();
            let next = self.hs.iter_from(cur, owner, 1, &mut one);
            let Some(v) = one.first().and_then(|r| self.hs.element(*r)) else {
                break;
            };
            let pe = v.to_pool_element();
            // Upper bound: every PE with its own pool handle parameter.
            let size = pe.param_len() + 4 + v.handle().len() + 3;
            if count >= max_pes.max(1) || (count > 0 && bytes + size > max_bytes) {
                chunk.more = true;
                chunk.resume = cur;
                break;
            }
            bytes += size;
            count += 1;
            pools
                .entry(PoolHandle(v.handle().to_vec()))
                .or_default()
                .push(pe);
            match next {
                Some(c) => cur = c,
                None => break,
            }
        }
        chunk.pools = pools.into_iter().collect();
        chunk
    }
}
