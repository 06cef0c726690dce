//! The invariants of the simulation, and views of its state for reports.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::{Node, Sim};
use crate::asap::{Client, PeStatus};
use crate::wire::{cause, PoolElement, PoolHandle};

/// Pool entries as `Registrar::pool_elements` lists them.
type Pools = Vec<(PoolHandle, Vec<PoolElement>)>;

/// One pool element as [`Sim::pe_summary`] shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeState {
    /// Its PE identifier.
    pub id: u32,
    /// Its client core runs.
    pub running: bool,
    /// The application wants it registered.
    pub wanted: bool,
    /// The registrar slot its client calls home.
    pub home: Option<usize>,
    /// Where its registration stands.
    pub status: Option<PeStatus>,
}

impl Sim {
    /// Invariants that hold after every step, faults or not: each registrar
    /// core's internal consistency, and nothing an application saw was
    /// wrong (no rejected PE, no pool user answer with a PE that is unknown,
    /// misdescribed or gone for longer than [`Sim::stale_bound`]).
    pub fn check_step(&self) -> Result<(), String> {
        if let Some(v) = &self.violation {
            return Err(v.clone());
        }
        for (i, s) in self.regs.iter().enumerate() {
            if let Some(r) = &s.r {
                r.check_consistency()
                    .map_err(|e| format!("registrar slot {i} ({:#x}): {e}", r.server_id()))?;
            }
        }
        Ok(())
    }

    /// Invariants once the network has been quiet long enough: all running
    /// registrars hold the same handlespace (handles, ids, owners,
    /// transports); every PE in it is owned by exactly one running
    /// registrar, which knows it owns it; every live PE is in it, registered
    /// by its client with the owner as home; no gone PE is.
    pub fn check_converged(&self) -> Result<(), String> {
        self.check_step()?;
        let live = self.live_registrars();
        let ids: BTreeMap<u32, usize> = live
            .iter()
            .filter_map(|i| self.registrar(*i).map(|r| (r.server_id(), *i)))
            .collect();
        let mut reference: Option<(usize, Pools)> = None;
        for &i in &live {
            let Some(r) = self.registrar(i) else { continue };
            let mut pools = r.pool_elements();
            for (_, pes) in &mut pools {
                for pe in pes.iter_mut() {
                    pe.reg_life = 0; // lifetimes differ (Never vs Life)
                }
            }
            match &reference {
                None => reference = Some((i, pools)),
                Some((j, refp)) => {
                    if *refp != pools {
                        return Err(format!(
                            "handlespaces differ: slot {j} {} vs slot {i} {}",
                            summary(refp),
                            summary(&pools)
                        ));
                    }
                }
            }
        }
        let Some((_, pools)) = reference else {
            return Ok(());
        };
        let mut present: BTreeMap<(Vec<u8>, u32), u32> = BTreeMap::new();
        for (h, pes) in &pools {
            for pe in pes {
                let Some(&slot) = ids.get(&pe.home) else {
                    return Err(format!(
                        "PE {:?}/{} owned by {:#x}, not a running registrar",
                        h, pe.id, pe.home
                    ));
                };
                let owners: Vec<usize> = live
                    .iter()
                    .copied()
                    .filter(|i| self.registrar(*i).is_some_and(|r| r.owns(h, pe.id)))
                    .collect();
                if owners != [slot] {
                    return Err(format!(
                        "PE {:?}/{} has home {:#x} (slot {slot}), registrars owning it: slots {owners:?}",
                        h, pe.id, pe.home
                    ));
                }
                present.insert((h.0.clone(), pe.id), pe.home);
            }
        }
        for (i, p) in self.pes.iter().enumerate() {
            let name = format!("PE {i} ({}/{})", p.spec.pool, p.spec.id);
            let owner = present.get(&p.key());
            let core = p.host.core.as_ref().filter(|_| p.wanted);
            let Some(core) = core else {
                if owner.is_some() {
                    return Err(format!("{name} is gone but never removed"));
                }
                continue;
            };
            let Some(&owner) = owner else {
                return Err(format!("live {name} lost"));
            };
            // Registered, or refreshing a registration (a re-registration
            // may be on the wire).
            let status = p.handle.and_then(|h| core.pe_status(h));
            let refreshing = p.granted && status == Some(PeStatus::Registering);
            if !(status == Some(PeStatus::Registered) || refreshing) {
                return Err(format!("live {name} not registered: {status:?}"));
            }
            let home = core.home().and_then(|(a, _)| self.slot_of(a));
            let home_id = home.and_then(|s| self.registrar(s)).map(|r| r.server_id());
            if home_id != Some(owner) {
                return Err(format!(
                    "live {name}: owner {owner:#x}, but its client's home is slot {home:?} ({home_id:x?})"
                ));
            }
        }
        Ok(())
    }

    /// The pool users' view once the faults stopped: every running pool user
    /// stops its own activity and its subscriptions, resolves each of its
    /// pools, and must get exactly the live PEs of the pool (cause 0x9 for
    /// a pool without any). Runs the simulation for a few seconds.
    pub fn check_pu_views(&mut self) -> Result<(), String> {
        // A subscription's view first: the registrar pushed every change
        // (unless the simulation dropped a message on that connection).
        for i in 0..self.pus.len() {
            let Some(pool) = self.pus[i].spec.subscribe.clone() else {
                continue;
            };
            let pool = PoolHandle::from(pool.as_str());
            let Some(core) = self.pus[i].host.core.as_ref() else {
                continue;
            };
            if !core.is_subscribed(&pool) || self.pu_home_tainted(i) {
                continue;
            }
            let got: BTreeSet<u32> = core
                .cached(&pool)
                .map(|rp| rp.elements.iter().map(|pe| pe.id).collect())
                .unwrap_or_default();
            let want = self.live_ids(&pool);
            self.stats.pu_subscriptions_checked += 1;
            if got != want {
                return Err(format!(
                    "PU {i}: subscribed view of {pool:?} is {got:?}, live PEs are {want:?}"
                ));
            }
        }
        self.pu_activity = false;
        let mut wait = Duration::ZERO;
        for i in 0..self.pus.len() {
            wait = wait.max(self.pus[i].host.config.stale_cache);
            if let Some(pool) = self.pus[i].spec.subscribe.clone() {
                let pool = PoolHandle::from(pool.as_str());
                self.with_core(Node::Pu(i), |c, _| c.unsubscribe(&pool));
            }
        }
        // Let the caches go stale, so the answers come from the registrars.
        self.run_for(wait + Duration::from_millis(100))?;
        for i in 0..self.pus.len() {
            self.pus[i].probes.clear();
            self.pus[i].answers.clear();
            for pool in self.pus[i].spec.pools.clone() {
                let pool = PoolHandle::from(pool.as_str());
                let p = pool.clone();
                let r = self.with_core(Node::Pu(i), |c, now| c.resolve(p, Some(256), false, now));
                if let Some(Ok(req)) = r {
                    self.pus[i].probes.push((req, pool));
                }
            }
        }
        self.run_for(Duration::from_secs(5))?;
        self.pu_activity = true;
        for (i, pu) in self.pus.iter().enumerate() {
            for (req, pool) in &pu.probes {
                let Some(got) = pu.answers.get(req) else {
                    return Err(format!("PU {i}: no answer for {pool:?}"));
                };
                let want = self.live_ids(pool);
                let ok = match got {
                    Ok(ids) => *ids == want,
                    Err(e) => want.is_empty() && e.cause_code() == Some(cause::UNKNOWN_POOL_HANDLE),
                };
                if !ok {
                    return Err(format!(
                        "PU {i}: {pool:?} resolved to {got:?}, live PEs are {want:?}"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The ids of the live PEs of `pool`.
    fn live_ids(&self, pool: &PoolHandle) -> BTreeSet<u32> {
        self.pes
            .iter()
            .filter(|p| p.wanted && p.host.core.is_some())
            .filter(|p| p.spec.pool.as_bytes() == pool.0.as_slice())
            .map(|p| p.spec.id)
            .collect()
    }

    /// Every pool element's state.
    pub fn pe_summary(&self) -> Vec<PeState> {
        self.pes
            .iter()
            .map(|p| {
                let core = p.host.core.as_ref();
                PeState {
                    id: p.spec.id,
                    running: core.is_some(),
                    wanted: p.wanted,
                    home: core
                        .and_then(|c| c.home())
                        .and_then(|(a, _)| self.slot_of(a)),
                    status: core.and_then(|c| c.pe_status(p.handle?)),
                }
            })
            .collect()
    }

    /// Whether PE `i` runs and wants to be registered.
    pub fn pe_alive(&self, i: usize) -> bool {
        self.pes
            .get(i)
            .is_some_and(|p| p.wanted && p.host.core.is_some())
    }

    /// The registrar slot PE `i`'s client calls home.
    pub fn pe_registrar(&self, i: usize) -> Option<usize> {
        let (a, _) = self.pe_client(i)?.home()?;
        self.slot_of(a)
    }

    /// PE `i`'s client core, if running.
    pub fn pe_client(&self, i: usize) -> Option<&Client> {
        self.pes.get(i)?.host.core.as_ref()
    }

    /// Pool user `i`'s client core, if running.
    pub fn pu_client(&self, i: usize) -> Option<&Client> {
        self.pus.get(i)?.host.core.as_ref()
    }

    /// Number of pool elements and pool users.
    pub fn client_counts(&self) -> (usize, usize) {
        (self.pes.len(), self.pus.len())
    }
}

fn summary(p: &[(PoolHandle, Vec<PoolElement>)]) -> String {
    let v: Vec<String> = p
        .iter()
        .flat_map(|(h, pes)| {
            pes.iter()
                .map(move |pe| format!("{}/{}@{:x}", String::from_utf8_lossy(&h.0), pe.id, pe.home))
        })
        .collect();
    format!("[{}]", v.join(" "))
}
