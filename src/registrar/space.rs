//! The registrar's view of the handlespace: the few operations the ASAP server
//! side needs, in one place.
//!
//! Interim implementation: the `hs` branch's `Handlespace` (every RFC 5356
//! policy, validation, expiry, checksums) had no code yet when this core was
//! written, so this keeps a small store of its own with the same checks
//! (causes 0x3, 0x5, 0x7, 0x8) and simple selection (ring rotation, priority
//! and load ordering). Swapping in the real handlespace only touches this file.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::util::{Rng, Timers};
use crate::time::Time;
use crate::wire::param::param_bytes;
use crate::wire::{cause, policy_type, ErrorCause, Param, Policy, PoolElement, PoolHandle};

/// A PE's key: pool handle and PE identifier.
pub(crate) type PeKey = (PoolHandle, u32);

/// What a successful registration did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RegOutcome {
    /// A new PE (and maybe a new pool).
    New,
    /// An existing PE replaced; `changed` if any value differs.
    Replaced { changed: bool },
}

#[derive(Debug)]
struct Entry {
    pe: PoolElement,
    reports: u32,
    /// LUD: times handed out since the last (re-)registration.
    handed_out: u64,
}

#[derive(Debug)]
struct Pool {
    pes: BTreeMap<u32, Entry>,
    /// Overall policy: the first PE's policy type, neutral values (digest §7.4).
    policy: Policy,
    transport_type: u16,
    transport_use: u16,
    /// The first PE's user transport, for cause 0x7.
    transport: crate::wire::Transport,
    /// Ring head for round robin.
    head: u64,
}

/// One chunk of the handle table.
#[derive(Debug, Default)]
pub(crate) struct Chunk {
    pub pools: Vec<(PoolHandle, Vec<PoolElement>)>,
    /// The last PE in the chunk, to resume after.
    pub last: Option<PeKey>,
    /// More PEs follow.
    pub more: bool,
}

/// The handlespace as the registrar uses it.
#[derive(Debug, Default)]
pub(crate) struct Space {
    pools: BTreeMap<PoolHandle, Pool>,
    total: usize,
    expiry: Timers<PeKey>,
}

fn invalid(p: &impl Param) -> ErrorCause {
    ErrorCause::with_info(cause::INVALID_VALUES, param_bytes(p))
}

fn bad_addr(a: &IpAddr) -> bool {
    a.is_unspecified() || a.is_multicast() || matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
}

/// Validity checks on a PE alone (cause 0x3 with the offending TLV).
fn validate(handle: &PoolHandle, pe: &PoolElement) -> Result<(), ErrorCause> {
    if handle.0.is_empty() {
        return Err(invalid(handle));
    }
    // PE ID 0 is rejected by RSPLIB (digest §12 #22); reg life 0 or < -1 is no
    // lifetime at all.
    if pe.id == 0 || pe.reg_life == 0 || pe.reg_life < -1 {
        return Err(invalid(pe));
    }
    let t = &pe.user_transport;
    if t.port() == Some(0) || t.addrs().iter().any(bad_addr) {
        return Err(invalid(t));
    }
    if let Policy::Other {
        policy_type: ty, ..
    } = &pe.policy
    {
        if ty & policy_type::PRIVATE_BIT == 0 {
            // An unassigned standard policy type.
            return Err(invalid(&pe.policy));
        }
    }
    Ok(())
}

impl Space {
    pub(crate) fn len(&self) -> usize {
        self.total
    }

    pub(crate) fn pool_len(&self, handle: &PoolHandle) -> usize {
        self.pools.get(handle).map_or(0, |p| p.pes.len())
    }

    pub(crate) fn get(&self, handle: &PoolHandle, id: u32) -> Option<&PoolElement> {
        self.pools.get(handle)?.pes.get(&id).map(|e| &e.pe)
    }

    /// Every pool handle with its PEs (ordered), for inspection.
    pub(crate) fn pools(&self) -> impl Iterator<Item = (&PoolHandle, Vec<&PoolElement>)> {
        self.pools
            .iter()
            .map(|(h, p)| (h, p.pes.values().map(|e| &e.pe).collect()))
    }

    /// Register or re-register `pe` (home and ASAP transport already set).
    /// `lifetime` `None` = infinite.
    pub(crate) fn register(
        &mut self,
        handle: PoolHandle,
        pe: PoolElement,
        lifetime: Option<Duration>,
        now: Time,
    ) -> Result<RegOutcome, ErrorCause> {
        validate(&handle, &pe)?;
        let key = (handle.clone(), pe.id);
        let outcome = match self.pools.get_mut(&handle) {
            Some(pool) => {
                // Consistency with the pool (digest §7.4), also on re-registration.
                if pe.policy.policy_type() != pool.policy.policy_type() {
                    return Err(ErrorCause::with_info(
                        cause::INCONSISTENT_POLICY,
                        param_bytes(&pool.policy),
                    ));
                }
                if pe.user_transport.param_type() != pool.transport_type {
                    return Err(ErrorCause::with_info(
                        cause::INCONSISTENT_TRANSPORT,
                        param_bytes(&pool.transport),
                    ));
                }
                if pe.user_transport.transport_use() != pool.transport_use {
                    return Err(ErrorCause::new(cause::INCONSISTENT_DATA_CONTROL));
                }
                match pool.pes.get_mut(&pe.id) {
                    Some(e) => {
                        let changed = e.pe != pe;
                        e.pe = pe;
                        e.reports = 0;
                        e.handed_out = 0;
                        RegOutcome::Replaced { changed }
                    }
                    None => {
                        pool.pes.insert(pe.id, Entry::new(pe));
                        self.total += 1;
                        RegOutcome::New
                    }
                }
            }
            None => {
                let pool = Pool {
                    policy: pe.policy.neutral(),
                    transport_type: pe.user_transport.param_type(),
                    transport_use: pe.user_transport.transport_use(),
                    transport: pe.user_transport.clone(),
                    head: 0,
                    pes: BTreeMap::from([(pe.id, Entry::new(pe))]),
                };
                self.pools.insert(handle, pool);
                self.total += 1;
                RegOutcome::New
            }
        };
        match lifetime {
            Some(d) => self.expiry.set(key, now + d),
            None => self.expiry.cancel(&key),
        }
        Ok(outcome)
    }

    /// Remove a PE (and its pool if it was the last); the removed PE.
    pub(crate) fn remove(&mut self, handle: &PoolHandle, id: u32) -> Option<PoolElement> {
        let pool = self.pools.get_mut(handle)?;
        let e = pool.pes.remove(&id)?;
        if pool.pes.is_empty() {
            self.pools.remove(handle);
        }
        self.total -= 1;
        self.expiry.cancel(&(handle.clone(), id));
        Some(e.pe)
    }

    /// Count one unreachable report; the new count (None if unknown).
    pub(crate) fn report_unreachable(&mut self, handle: &PoolHandle, id: u32) -> Option<u32> {
        let e = self.pools.get_mut(handle)?.pes.get_mut(&id)?;
        e.reports = e.reports.saturating_add(1);
        Some(e.reports)
    }

    /// The next lifetime expiry.
    pub(crate) fn poll_timeout(&self) -> Option<Time> {
        self.expiry.next()
    }

    /// Remove every PE whose lifetime ran out by `now`.
    pub(crate) fn expire(&mut self, now: Time) -> Vec<(PoolHandle, PoolElement)> {
        let mut out = Vec::new();
        while let Some((h, id)) = self.expiry.pop_due(now) {
            if let Some(pe) = self.remove(&h, id) {
                out.push((h, pe));
            }
        }
        out
    }

    /// Handle resolution: the pool's overall policy and up to `n` PEs chosen by
    /// it; `None` for an unknown pool.
    pub(crate) fn select(
        &mut self,
        handle: &PoolHandle,
        n: usize,
        rng: &mut Rng,
    ) -> Option<(Policy, Vec<PoolElement>)> {
        let pool = self.pools.get_mut(handle)?;
        let len = pool.pes.len();
        let n = n.min(len);
        let ids: Vec<u32> = pool.pes.keys().copied().collect();
        let start = usize::try_from(pool.head % len as u64).unwrap_or(0);
        let mut ring: Vec<u32> = (0..len).map(|i| ids[(start + i) % len]).collect();
        pool.head = pool.head.wrapping_add(1);
        let key = |e: &Entry| -> u64 {
            match e.pe.policy {
                Policy::LeastUsed { load } | Policy::RandomizedLeastUsed { load } => {
                    u64::from(load)
                }
                Policy::PriorityLeastUsed { load, degradation } => {
                    u64::from(load) + u64::from(degradation)
                }
                Policy::LeastUsedDegradation { load, degradation } => {
                    u64::from(load) + e.handed_out.saturating_mul(u64::from(degradation))
                }
                Policy::Priority { priority } => u64::from(u32::MAX - priority),
                _ => 0,
            }
        };
        match pool.policy.policy_type() {
            policy_type::RANDOM | policy_type::WEIGHTED_RANDOM => {
                for i in 0..n {
                    let j = usize::try_from(rng.range(i as u64, (len - 1) as u64)).unwrap_or(i);
                    ring.swap(i, j);
                }
            }
            _ => ring.sort_by_key(|id| pool.pes.get(id).map_or(0, key)),
        }
        ring.truncate(n);
        let mut out = Vec::with_capacity(n);
        for id in ring {
            if let Some(e) = pool.pes.get_mut(&id) {
                e.handed_out = e.handed_out.saturating_add(1);
                out.push(e.pe.clone());
            }
        }
        Some((pool.policy.clone(), out))
    }

    /// Up to `max_pes` PEs (and at most about `max_bytes` of pool entries)
    /// after `after`, in (handle, PE id) order, keeping those `keep` accepts.
    pub(crate) fn chunk_after(
        &self,
        after: Option<&PeKey>,
        keep: impl Fn(&PoolElement) -> bool,
        max_pes: usize,
        max_bytes: usize,
    ) -> Chunk {
        use std::ops::Bound::{Excluded, Included, Unbounded};
        let mut chunk = Chunk::default();
        let mut bytes = 0usize;
        let mut count = 0usize;
        let pools = match after {
            Some((h, _)) => self.pools.range::<PoolHandle, _>((Included(h), Unbounded)),
            None => self.pools.range::<PoolHandle, _>(..),
        };
        for (h, pool) in pools {
            let pes = match after {
                Some((ah, id)) if ah == h => pool.pes.range((Excluded(*id), Unbounded)),
                _ => pool.pes.range(..),
            };
            let mut list = Vec::new();
            let handle_bytes = h.param_len();
            for (id, e) in pes {
                if !keep(&e.pe) {
                    continue;
                }
                let sz = e.pe.param_len() + if list.is_empty() { handle_bytes } else { 0 };
                if count >= max_pes.max(1) || (count > 0 && bytes + sz > max_bytes) {
                    chunk.more = true;
                    break;
                }
                bytes += sz;
                count += 1;
                list.push(e.pe.clone());
                chunk.last = Some((h.clone(), *id));
            }
            if !list.is_empty() {
                chunk.pools.push((h.clone(), list));
            }
            if chunk.more {
                break;
            }
        }
        chunk
    }
}

impl Entry {
    fn new(pe: PoolElement) -> Self {
        Entry {
            pe,
            reports: 0,
            handed_out: 0,
        }
    }
}
