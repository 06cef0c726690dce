//! The pool user's cache (RFC 5352 §3.3, §6.5; digest §9.6) and the
//! pool-user side of the selection policies (RFC 5356, digest §7.2 last
//! column).

use std::collections::BTreeMap;

use crate::handlespace::rng::Rng;
use crate::time::Time;
use crate::wire::{ErrorCause, Policy, PoolElement};

/// A positive handle resolution: the pool's overall policy and the PEs handed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedPool {
    /// The overall policy (Round Robin when the response carried none).
    pub policy: Policy,
    /// The PEs, in the order the registrar gave them.
    pub elements: Vec<PoolElement>,
}

/// One cached answer for a pool.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    /// The answer: the pool, or the registrar's cause (e.g. 0x9).
    pub result: Result<ResolvedPool, ErrorCause>,
    /// When it arrived.
    pub fetched: Time,
    /// Round robin position: index of the next PE to try.
    pub rr_next: usize,
}

/// PEs reported unreachable, per pool: PE id → when the incident started.
pub(crate) type Incidents = BTreeMap<u32, Time>;

impl Entry {
    pub(crate) fn new(result: Result<ResolvedPool, ErrorCause>, now: Time) -> Self {
        Entry {
            result,
            fetched: now,
            rr_next: 0,
        }
    }

    /// Pick a PE the way a pool user applies the pool's overall policy,
    /// skipping PEs in `failed`:
    /// - RR / WRR: cycle through the list from the first entry;
    /// - RAND: uniform; WRAND: weighted by each PE's weight; RLU: weighted by
    ///   `0xFFFFFFFF − load` (all weights 0 ⇒ uniform);
    /// - PRIO: the highest priority (first on ties);
    /// - LU, LUD, PLU and any other: the first usable one in the order given.
    pub(crate) fn select(&mut self, failed: &Incidents, rng: &mut Rng) -> Option<PoolElement> {
        let Ok(pool) = &self.result else {
            return None;
        };
        let usable: Vec<usize> = (0..pool.elements.len())
            .filter(|&i| !failed.contains_key(&pool.elements[i].id))
            .collect();
        if usable.is_empty() {
            return None;
        }
        let n = pool.elements.len();
        let pick = match pool.policy {
            Policy::RoundRobin | Policy::WeightedRoundRobin { .. } => {
                let start = self.rr_next % n;
                let i = (0..n)
                    .map(|k| (start + k) % n)
                    .find(|i| usable.contains(i))?;
                self.rr_next = i + 1;
                i
            }
            Policy::Random => usable[below(rng, usable.len())],
            Policy::WeightedRandom { .. } | Policy::RandomizedLeastUsed { .. } => {
                let weights: Vec<u64> = usable
                    .iter()
                    .map(|&i| match pool.elements[i].policy {
                        Policy::WeightedRandom { weight } => u64::from(weight),
                        Policy::RandomizedLeastUsed { load } => u64::from(u32::MAX - load),
                        _ => 1,
                    })
                    .collect();
                let total: u64 = weights.iter().sum();
                if total == 0 {
                    usable[below(rng, usable.len())]
                } else {
                    let mut r = rng.below(total);
                    let mut chosen = usable[usable.len() - 1];
                    for (k, w) in weights.iter().enumerate() {
                        if r < *w {
                            chosen = usable[k];
                            break;
                        }
                        r -= w;
                    }
                    chosen
                }
            }
            Policy::Priority { .. } => {
                let prio = |i: usize| match pool.elements[i].policy {
                    Policy::Priority { priority } => priority,
                    _ => 0,
                };
                let best = usable.iter().map(|&i| prio(i)).max()?;
                *usable.iter().find(|&&i| prio(i) == best)?
            }
            _ => usable[0],
        };
        pool.elements.get(pick).cloned()
    }
}

/// Uniform in `0..n` for `n > 0` (0 for `n == 0`).
fn below(rng: &mut Rng, n: usize) -> usize {
    if n == 0 {
        return 0;
    }
    usize::try_from(rng.below(n as u64)).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Transport;

    fn pe(id: u32, policy: Policy) -> PoolElement {
        PoolElement {
            id,
            home: 0,
            reg_life: 30,
            user_transport: Transport::Udp {
                port: 7,
                addr: std::net::Ipv4Addr::LOCALHOST.into(),
            },
            policy,
            asap_transport: None,
        }
    }

    fn entry(policy: Policy, pes: Vec<PoolElement>) -> Entry {
        Entry::new(
            Ok(ResolvedPool {
                policy,
                elements: pes,
            }),
            Time::ZERO,
        )
    }

    #[test]
    fn round_robin_cycles_and_skips_failed() {
        let mut e = entry(
            Policy::RoundRobin,
            (1..=3).map(|i| pe(i, Policy::RoundRobin)).collect(),
        );
        let mut rng = Rng::new(1);
        let mut failed = Incidents::new();
        let ids: Vec<u32> = (0..5)
            .map(|_| e.select(&failed, &mut rng).unwrap().id)
            .collect();
        assert_eq!(ids, [1, 2, 3, 1, 2]);
        failed.insert(3, Time::ZERO);
        let ids: Vec<u32> = (0..3)
            .map(|_| e.select(&failed, &mut rng).unwrap().id)
            .collect();
        assert_eq!(ids, [1, 2, 1]);
        failed.insert(1, Time::ZERO);
        failed.insert(2, Time::ZERO);
        assert_eq!(e.select(&failed, &mut rng), None);
    }

    #[test]
    fn priority_and_least_used_and_weighted() {
        let mut rng = Rng::new(2);
        let none = Incidents::new();
        let mut p = entry(
            Policy::Priority { priority: 0 },
            vec![
                pe(1, Policy::Priority { priority: 1 }),
                pe(2, Policy::Priority { priority: 9 }),
                pe(3, Policy::Priority { priority: 9 }),
            ],
        );
        assert_eq!(p.select(&none, &mut rng).unwrap().id, 2);
        let mut lu = entry(
            Policy::LeastUsed { load: 0 },
            vec![
                pe(5, Policy::LeastUsed { load: 9 }),
                pe(4, Policy::LeastUsed { load: 1 }),
            ],
        );
        assert_eq!(lu.select(&none, &mut rng).unwrap().id, 5);
        let mut w = entry(
            Policy::WeightedRandom { weight: 0 },
            vec![
                pe(1, Policy::WeightedRandom { weight: 0 }),
                pe(2, Policy::WeightedRandom { weight: 5 }),
            ],
        );
        assert!((0..100).all(|_| w.select(&none, &mut rng).unwrap().id == 2));
        let mut r = entry(
            Policy::Random,
            (1..=4).map(|i| pe(i, Policy::Random)).collect(),
        );
        let mut seen = [false; 5];
        for _ in 0..200 {
            seen[r.select(&none, &mut rng).unwrap().id as usize] = true;
        }
        assert!(seen[1..].iter().all(|s| *s));
        let mut neg = Entry::new(Err(ErrorCause::new(9)), Time::ZERO);
        assert_eq!(neg.select(&none, &mut rng), None);
    }
}
