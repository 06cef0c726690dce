//! Handlespace behaviour: policies, consistency rules, re-registration, expiry,
//! checksum, takeover, iteration, and a model test against a naive implementation.

use rserpool::handlespace::{
    compute_checksum, rng::Rng, Config, Cursor, ElementRef, Expiry, Handlespace, InvalidField,
    RegLifeUnit, RejectInfo,
};
use rserpool::time::Time;
use rserpool::wire::types::{cause, Policy, PoolElement, Transport};
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::time::Duration;

const H: &[u8] = b"pool";
const OWNER: u32 = 7;

fn cfg() -> Config {
    Config {
        seed: 42,
        hash_seed: 1,
        ..Config::default()
    }
}

fn hs() -> Handlespace {
    Handlespace::new(cfg())
}

fn tcp(port: u16, tuse: u16) -> Transport {
    Transport::Tcp {
        port,
        transport_use: tuse,
        addr: "10.0.0.1".parse().unwrap(),
    }
}

fn pe(id: u32, policy: Policy) -> PoolElement {
    PoolElement {
        id,
        home: 0,
        reg_life: 30,
        user_transport: tcp(80, 0),
        policy,
        asap_transport: None,
    }
}

fn reg(h: &mut Handlespace, id: u32, policy: Policy) {
    h.register(H, &pe(id, policy), OWNER, Time::ZERO).unwrap();
}

fn resolve(h: &mut Handlespace, items: usize) -> Vec<u32> {
    let mut out = Vec::new();
    h.resolve(H, items, &mut out).unwrap();
    out.iter().map(|r| h.element(*r).unwrap().id()).collect()
}

fn distinct(v: &[u32]) -> bool {
    v.iter().collect::<HashSet<_>>().len() == v.len()
}

#[test]
fn rr_head_advances_by_one_and_wraps() {
    let mut h = hs();
    for id in 1..=4 {
        reg(&mut h, id, Policy::RoundRobin);
    }
    assert_eq!(resolve(&mut h, 3), [1, 2, 3]);
    assert_eq!(resolve(&mut h, 3), [2, 3, 4]);
    assert_eq!(resolve(&mut h, 3), [3, 4, 1]);
    assert_eq!(resolve(&mut h, 3), [4, 1, 2]);
    assert_eq!(resolve(&mut h, 10), [1, 2, 3, 4]);
    assert_eq!(resolve(&mut h, 1), [2]);
    // A newcomer joins at the tail (just before the head).
    reg(&mut h, 5, Policy::RoundRobin);
    assert_eq!(resolve(&mut h, 5), [3, 4, 1, 2, 5]);
    // Removing the head moves the head on.
    assert!(h.deregister(H, 4).is_some());
    assert_eq!(resolve(&mut h, 4), [1, 2, 5, 3]);
    assert_eq!(resolve(&mut h, 0), Vec::<u32>::new());
}

#[test]
fn reregistration_replaces_attributes_keeps_rr_place() {
    let mut h = hs();
    for id in 1..=3 {
        reg(&mut h, id, Policy::RoundRobin);
    }
    let mut p = pe(2, Policy::RoundRobin);
    p.user_transport = tcp(9999, 0);
    p.reg_life = 77;
    let cs7 = h.checksum(OWNER);
    h.report_unreachable(H, 2);
    let r = h.register(H, &p, 99, Time::ZERO).unwrap();
    assert!(!r.new);
    assert_eq!(r.previous_owner, Some(OWNER));
    let v = h.get(H, 2).unwrap();
    assert_eq!(v.owner(), 99);
    assert_eq!(v.reg_life(), 77);
    assert_eq!(v.user_transport().port(), Some(9999));
    assert_eq!(v.unreachable_reports(), 0);
    assert_eq!(h.owned_count(99), 1);
    assert_eq!(h.owned_count(OWNER), 2);
    assert_ne!(h.checksum(OWNER), cs7);
    assert_eq!(h.checksum(99), compute_checksum([(H, 2)]));
    assert_eq!(h.pe_count(), 3);
    assert_eq!(resolve(&mut h, 3), [1, 2, 3]);
}

#[test]
fn wrr_proportional_and_spread() {
    let mut h = hs();
    reg(&mut h, 1, Policy::WeightedRoundRobin { weight: 1 });
    reg(&mut h, 2, Policy::WeightedRoundRobin { weight: 2 });
    reg(&mut h, 3, Policy::WeightedRoundRobin { weight: 3 });
    reg(&mut h, 4, Policy::WeightedRoundRobin { weight: 0 });
    let seq: Vec<u32> = (0..600).map(|_| resolve(&mut h, 1)[0]).collect();
    let count = |id| seq.iter().filter(|&&x| x == id).count();
    assert!((99..=101).contains(&count(1)), "{}", count(1));
    assert!((199..=201).contains(&count(2)));
    assert!((299..=301).contains(&count(3)));
    assert_eq!(count(4), 0);
    // Spread evenly: every window of 6 serves each PE (weight 3 at least twice).
    for w in seq.windows(6) {
        for id in 1..=3 {
            assert!(w.contains(&id), "{w:?}");
        }
        assert!(w.iter().filter(|&&x| x == 3).count() >= 2, "{w:?}");
    }
    // Several items: distinct, weight 0 never.
    for _ in 0..20 {
        let v = resolve(&mut h, 4);
        assert_eq!(v.len(), 3);
        assert!(distinct(&v) && !v.contains(&4));
    }
    // All weights 1 => plain round robin.
    let mut h = hs();
    for id in 1..=3 {
        reg(&mut h, id, Policy::WeightedRoundRobin { weight: 1 });
    }
    let seq: Vec<u32> = (0..6).map(|_| resolve(&mut h, 1)[0]).collect();
    assert_eq!(seq, [1, 2, 3, 1, 2, 3]);
}

#[test]
fn prio_descending_ties_round_robin() {
    let mut h = hs();
    reg(&mut h, 1, Policy::Priority { priority: 5 });
    reg(&mut h, 2, Policy::Priority { priority: 9 });
    reg(&mut h, 3, Policy::Priority { priority: 9 });
    reg(&mut h, 4, Policy::Priority { priority: 1 });
    assert_eq!(resolve(&mut h, 4), [2, 3, 1, 4]);
    assert_eq!(resolve(&mut h, 1), [2]);
    assert_eq!(resolve(&mut h, 1), [3]);
    assert_eq!(resolve(&mut h, 1), [2]);
    assert_eq!(resolve(&mut h, 3), [3, 2, 1]);
    // Re-registration changes priority.
    h.register(
        H,
        &pe(4, Policy::Priority { priority: 100 }),
        OWNER,
        Time::ZERO,
    )
    .unwrap();
    assert_eq!(resolve(&mut h, 2)[0], 4);
}

#[test]
fn lu_ascending_ties_round_robin() {
    let mut h = hs();
    reg(&mut h, 1, Policy::LeastUsed { load: 10 });
    reg(&mut h, 2, Policy::LeastUsed { load: 5 });
    reg(&mut h, 3, Policy::LeastUsed { load: 5 });
    reg(&mut h, 4, Policy::LeastUsed { load: 7 });
    assert_eq!(resolve(&mut h, 4), [2, 3, 4, 1]);
    assert_eq!(resolve(&mut h, 1), [2]);
    assert_eq!(resolve(&mut h, 1), [3]);
    assert_eq!(resolve(&mut h, 1), [2]);
    // Three-way tie served two at a time: [A,B], [C,A], [B,C].
    let mut h = hs();
    for id in 1..=3 {
        reg(&mut h, id, Policy::LeastUsed { load: 1 });
    }
    reg(&mut h, 4, Policy::LeastUsed { load: 2 });
    assert_eq!(resolve(&mut h, 2), [1, 2]);
    assert_eq!(resolve(&mut h, 2), [3, 1]);
    assert_eq!(resolve(&mut h, 2), [2, 3]);
    // Load update by re-registration.
    h.register(H, &pe(4, Policy::LeastUsed { load: 0 }), OWNER, Time::ZERO)
        .unwrap();
    assert_eq!(resolve(&mut h, 1), [4]);
    h.register(
        H,
        &pe(4, Policy::LeastUsed { load: u32::MAX }),
        OWNER,
        Time::ZERO,
    )
    .unwrap();
    assert_eq!(resolve(&mut h, 4)[3], 4);
}

#[test]
fn lud_counts_selections_and_resets_on_reregistration() {
    let mut h = hs();
    let lud = |load, degradation| Policy::LeastUsedDegradation { load, degradation };
    reg(&mut h, 1, lud(10, 10));
    reg(&mut h, 2, lud(15, 10));
    // Keys: 1:10, 2:15 -> 1 (1:20) -> 2 (2:25) -> 1 (1:30) -> 2 ...
    let seq: Vec<u32> = (0..6).map(|_| resolve(&mut h, 1)[0]).collect();
    assert_eq!(seq, [1, 2, 1, 2, 1, 2]);
    assert_eq!(h.get(H, 1).unwrap().times_selected(), 3);
    // Re-registration resets the counter: PE 1 is back at key 10.
    h.register(H, &pe(1, lud(10, 10)), OWNER, Time::ZERO)
        .unwrap();
    assert_eq!(h.get(H, 1).unwrap().times_selected(), 0);
    assert_eq!(resolve(&mut h, 2), [1, 2]);
    // Degradation 0 behaves as LU with round robin among ties.
    let mut h = hs();
    reg(&mut h, 1, lud(5, 0));
    reg(&mut h, 2, lud(5, 0));
    let seq: Vec<u32> = (0..4).map(|_| resolve(&mut h, 1)[0]).collect();
    assert_eq!(seq, [1, 2, 1, 2]);
    // Huge values never overflow.
    reg(&mut h, 3, lud(u32::MAX, u32::MAX));
    for _ in 0..5 {
        assert_eq!(resolve(&mut h, 3).len(), 3);
    }
}

#[test]
fn plu_uses_static_degradation() {
    let mut h = hs();
    let plu = |load, degradation| Policy::PriorityLeastUsed { load, degradation };
    reg(&mut h, 1, plu(10, 20)); // 30
    reg(&mut h, 2, plu(25, 0)); // 25
    reg(&mut h, 3, plu(20, 5)); // 25
    assert_eq!(resolve(&mut h, 3), [2, 3, 1]);
    assert_eq!(resolve(&mut h, 3), [2, 3, 1]);
    assert_eq!(resolve(&mut h, 1), [2]);
    assert_eq!(resolve(&mut h, 1), [3]);
    assert_eq!(resolve(&mut h, 2), [2, 3]);
}

fn chi_square(counts: &[u64], expected: &[f64]) -> f64 {
    counts
        .iter()
        .zip(expected)
        .map(|(&c, &e)| (c as f64 - e).powi(2) / e)
        .sum()
}

#[test]
fn rand_is_uniform_without_duplicates() {
    let mut h = hs();
    for id in 1..=10 {
        reg(&mut h, id, Policy::Random);
    }
    let n = 100_000;
    let mut counts = [0u64; 10];
    for _ in 0..n {
        counts[resolve(&mut h, 1)[0] as usize - 1] += 1;
    }
    // df = 9; the 99.99% quantile is ~33.7.
    let x = chi_square(&counts, &[n as f64 / 10.0; 10]);
    assert!(x < 40.0, "chi2 {x} {counts:?}");
    // First position of a 3-item answer is uniform too; answers are distinct.
    let mut counts = [0u64; 10];
    for _ in 0..n {
        let v = resolve(&mut h, 3);
        assert!(v.len() == 3 && distinct(&v));
        counts[v[0] as usize - 1] += 1;
    }
    assert!(chi_square(&counts, &[n as f64 / 10.0; 10]) < 40.0);
    for k in [5, 9, 10, 20] {
        let v = resolve(&mut h, k);
        assert_eq!(v.len(), k.min(10));
        assert!(distinct(&v));
    }
    // A large pool with a large request (hash-set path).
    let mut h = hs();
    for id in 1..=500 {
        reg(&mut h, id, Policy::Random);
    }
    let v = resolve(&mut h, 100);
    assert!(v.len() == 100 && distinct(&v));
}

fn weighted_check(policies: &[Policy], weights: &[f64]) {
    let mut h = hs();
    for (i, p) in policies.iter().enumerate() {
        reg(&mut h, i as u32 + 1, p.clone());
    }
    let n = 100_000;
    let total: f64 = weights.iter().sum();
    let mut counts = vec![0u64; policies.len()];
    for _ in 0..n {
        counts[resolve(&mut h, 1)[0] as usize - 1] += 1;
    }
    for (i, w) in weights.iter().enumerate() {
        if *w == 0.0 {
            assert_eq!(counts[i], 0, "weight 0 selected");
        }
    }
    let idx: Vec<usize> = (0..weights.len()).filter(|&i| weights[i] > 0.0).collect();
    let c: Vec<u64> = idx.iter().map(|&i| counts[i]).collect();
    let e: Vec<f64> = idx.iter().map(|&i| weights[i] / total * n as f64).collect();
    let x = chi_square(&c, &e);
    assert!(x < 40.0, "chi2 {x} {counts:?}");
    let nonzero = idx.len();
    for _ in 0..1000 {
        let v = resolve(&mut h, policies.len());
        assert_eq!(v.len(), nonzero);
        assert!(distinct(&v));
    }
}

#[test]
fn wrand_proportional_to_weight() {
    let w = [1u32, 2, 3, 4, 0, 10];
    let p: Vec<Policy> = w
        .iter()
        .map(|&weight| Policy::WeightedRandom { weight })
        .collect();
    weighted_check(&p, &w.map(|x| x as f64));
}

#[test]
fn rlu_weight_is_inverse_load() {
    let m = u32::MAX;
    let loads = [0, m / 2, m / 4 * 3, m];
    let p: Vec<Policy> = loads
        .iter()
        .map(|&load| Policy::RandomizedLeastUsed { load })
        .collect();
    weighted_check(&p, &loads.map(|l| (m - l) as f64));
}

#[test]
fn wrand_weight_update_and_removal() {
    let mut h = hs();
    for id in 1..=50 {
        reg(&mut h, id, Policy::WeightedRandom { weight: 1 });
    }
    for id in 1..=49 {
        if id % 2 == 0 {
            h.deregister(H, id);
        } else {
            h.register(
                H,
                &pe(id, Policy::WeightedRandom { weight: 0 }),
                OWNER,
                Time::ZERO,
            )
            .unwrap();
        }
    }
    for _ in 0..100 {
        assert_eq!(resolve(&mut h, 3), [50]);
    }
}

#[test]
fn consistency_rejections_carry_pool_info() {
    let mut h = hs();
    reg(&mut h, 1, Policy::WeightedRoundRobin { weight: 3 });
    let e = h
        .register(H, &pe(2, Policy::LeastUsed { load: 1 }), OWNER, Time::ZERO)
        .unwrap_err();
    assert_eq!(e.code, cause::INCONSISTENT_POLICY);
    assert_eq!(
        e.info,
        RejectInfo::Policy(Policy::WeightedRoundRobin { weight: 0 })
    );
    // Re-registration with another policy type is rejected too.
    let e = h
        .register(H, &pe(1, Policy::RoundRobin), OWNER, Time::ZERO)
        .unwrap_err();
    assert_eq!(e.code, cause::INCONSISTENT_POLICY);
    let mut p = pe(2, Policy::WeightedRoundRobin { weight: 1 });
    p.user_transport = Transport::Sctp {
        port: 1,
        transport_use: 0,
        addrs: vec!["10.0.0.2".parse().unwrap()],
    };
    let e = h.register(H, &p, OWNER, Time::ZERO).unwrap_err();
    assert_eq!(e.code, cause::INCONSISTENT_TRANSPORT);
    match e.info {
        RejectInfo::Transport(t) => assert_eq!(t.param_type(), tcp(0, 0).param_type()),
        other => panic!("{other:?}"),
    }
    p.user_transport = tcp(80, 1);
    let e = h.register(H, &p, OWNER, Time::ZERO).unwrap_err();
    assert_eq!(e.code, cause::INCONSISTENT_DATA_CONTROL);
    assert_eq!(h.pe_count(), 1);
    assert_eq!(
        h.get(H, 1).unwrap().policy(),
        Policy::WeightedRoundRobin { weight: 3 }
    );
}

#[test]
fn invalid_values_rejected() {
    let mut h = hs();
    let bad = |h: &mut Handlespace, handle: &[u8], p: PoolElement, f: InvalidField| {
        let e = h.register(handle, &p, OWNER, Time::ZERO).unwrap_err();
        assert_eq!(e.code, cause::INVALID_VALUES);
        assert_eq!(e.info, RejectInfo::Invalid(f));
    };
    bad(
        &mut h,
        b"",
        pe(1, Policy::RoundRobin),
        InvalidField::PoolHandle,
    );
    bad(
        &mut h,
        H,
        pe(0, Policy::RoundRobin),
        InvalidField::PoolElement,
    );
    for life in [0, -2, i32::MIN] {
        let mut p = pe(1, Policy::RoundRobin);
        p.reg_life = life;
        bad(&mut h, H, p, InvalidField::PoolElement);
    }
    let mut p = pe(1, Policy::RoundRobin);
    p.user_transport = Transport::Sctp {
        port: 1,
        transport_use: 0,
        addrs: vec![],
    };
    bad(&mut h, H, p, InvalidField::UserTransport);
    for t in [0, 6, 0x3FFF_FFFF, 0x4000_0000, 0x4000_0005, 1] {
        let p = pe(
            1,
            Policy::Other {
                policy_type: t,
                data: vec![],
            },
        );
        bad(&mut h, H, p, InvalidField::Policy);
    }
    assert_eq!(h.pool_count(), 0);
    assert_eq!(h.pe_count(), 0);
}

#[test]
fn private_policies_kept_opaque_and_round_robin() {
    let mut h = hs();
    let priv_policy = |load: u8| Policy::Other {
        policy_type: 0xB000_1001,
        data: vec![0, 0, 0, load, 0, 0, 0, 1],
    };
    for id in 1..=3 {
        reg(&mut h, id, priv_policy(id as u8 * 50));
    }
    assert_eq!(h.get(H, 2).unwrap().policy(), priv_policy(100));
    assert_eq!(resolve(&mut h, 2), [1, 2]);
    assert_eq!(resolve(&mut h, 2), [2, 3]);
    let e = h
        .register(H, &pe(9, Policy::RoundRobin), OWNER, Time::ZERO)
        .unwrap_err();
    assert_eq!(e.code, cause::INCONSISTENT_POLICY);
    let mut out = Vec::new();
    assert_eq!(
        h.resolve(H, 1, &mut out).unwrap().policy_type(),
        0xB000_1001
    );
}

#[test]
fn limits_give_lack_of_resources() {
    let mut h = Handlespace::new(Config {
        max_pools: 1,
        max_pes_per_pool: 2,
        max_pes: 3,
        ..cfg()
    });
    reg(&mut h, 1, Policy::RoundRobin);
    reg(&mut h, 2, Policy::RoundRobin);
    let e = h
        .register(H, &pe(3, Policy::RoundRobin), OWNER, Time::ZERO)
        .unwrap_err();
    assert_eq!(e.code, cause::LACK_OF_RESOURCES);
    // Re-registration still works at the limit.
    reg(&mut h, 2, Policy::RoundRobin);
    let e = h
        .register(b"other", &pe(3, Policy::RoundRobin), OWNER, Time::ZERO)
        .unwrap_err();
    assert_eq!(e.code, cause::LACK_OF_RESOURCES);
    assert_eq!(h.pool_count(), 1);
}

#[test]
fn deregistration_and_pool_removal() {
    let mut h = hs();
    assert!(h.deregister(H, 1).is_none());
    reg(&mut h, 1, Policy::RoundRobin);
    reg(&mut h, 2, Policy::RoundRobin);
    assert!(h.deregister(H, 3).is_none());
    let removed = h.deregister(H, 1).unwrap();
    assert_eq!(removed.id, 1);
    assert_eq!(removed.home, OWNER);
    assert_eq!(removed.user_transport, tcp(80, 0));
    assert_eq!(h.pool_count(), 1);
    assert!(h.remove(H, 2));
    assert_eq!(h.pool_count(), 0);
    assert_eq!(h.checksum(OWNER), 0xFFFF);
    let mut out = Vec::new();
    assert!(h.resolve(H, 3, &mut out).is_err());
    // The pool can be re-created with another policy.
    reg(&mut h, 1, Policy::LeastUsed { load: 3 });
    assert_eq!(resolve(&mut h, 3), [1]);
}

#[test]
fn expiry_never_early_at_most_a_bucket_late() {
    let g = Duration::from_millis(100);
    let mut h = Handlespace::new(Config {
        expiry_granularity: g,
        ..cfg()
    });
    let mut p = pe(1, Policy::RoundRobin);
    p.reg_life = 1;
    h.register(H, &p, OWNER, Time::ZERO).unwrap();
    let t = h.poll_timeout().unwrap();
    assert!(
        t >= Time::from_secs(1) && t < Time::from_secs(1) + g,
        "{t:?}"
    );
    let mut out = Vec::new();
    assert_eq!(h.expire(Time(999_999), &mut out), 0);
    // Re-registration at 0.5 s extends the life to 1.5 s.
    h.register(H, &p, OWNER, Time::from_millis(500)).unwrap();
    assert_eq!(h.expire(t, &mut out), 0);
    assert_eq!(h.pe_count(), 1);
    let t2 = h.poll_timeout().unwrap();
    assert!(t2 >= Time::from_millis(1500) && t2 < Time::from_millis(1500) + g);
    assert_eq!(h.expire(Time(1_499_999), &mut out), 0);
    assert_eq!(h.expire(t2, &mut out), 1);
    assert_eq!(out[0].0.as_bytes(), H);
    assert_eq!(out[0].1.id, 1);
    assert_eq!(h.pool_count(), 0);
    // -1 never expires; Expiry::Never neither.
    p.reg_life = -1;
    h.register(H, &p, OWNER, Time::ZERO).unwrap();
    let mut q = pe(2, Policy::RoundRobin);
    q.reg_life = 1;
    h.register_ext(H, &q, OWNER, Expiry::Never).unwrap();
    assert_eq!(h.expire(Time::NEVER, &mut out), 0);
    assert_eq!(h.pe_count(), 2);
    // A shorter life on re-registration takes effect.
    q.reg_life = 2;
    h.register(H, &q, OWNER, Time::ZERO).unwrap();
    q.reg_life = 1;
    h.register(H, &q, OWNER, Time::ZERO).unwrap();
    assert!(h.poll_timeout().unwrap() < Time::from_secs(1) + g);
    // Milliseconds unit.
    let mut h = Handlespace::new(Config {
        reg_life_unit: RegLifeUnit::Millis,
        expiry_granularity: Duration::from_millis(10),
        ..cfg()
    });
    p.reg_life = 250;
    h.register(H, &p, OWNER, Time::ZERO).unwrap();
    assert_eq!(h.expire(Time(249_999), &mut out), 0);
    assert_eq!(h.expire(Time::from_millis(260), &mut out), 1);
}

#[test]
fn expiry_randomized() {
    let g = Duration::from_millis(50);
    let gu = 50_000u64;
    let mut h = Handlespace::new(Config {
        reg_life_unit: RegLifeUnit::Millis,
        expiry_granularity: g,
        ..cfg()
    });
    let mut rng = Rng::new(9);
    let mut expected: HashMap<u32, u64> = HashMap::new();
    let mut now = 0u64;
    let mut out = Vec::new();
    for _ in 0..20_000 {
        now += rng.below(7_000);
        if h.poll_timeout().is_some_and(|t| t.0 <= now) {
            out.clear();
            h.expire(Time(now), &mut out);
            for (_, p) in &out {
                let e = expected.remove(&p.id).unwrap();
                assert!(e <= now, "early: expiry {e} now {now}");
                assert!(now <= e + gu + 7_000, "late: expiry {e} now {now}");
            }
        }
        let id = 1 + rng.below(300) as u32;
        let mut p = pe(id, Policy::RoundRobin);
        p.reg_life = 1 + rng.below(2_000) as i32;
        h.register(H, &p, OWNER, Time(now)).unwrap();
        expected.insert(id, now + p.reg_life as u64 * 1000);
        // Nothing overdue stays.
        for (&id, &e) in &expected {
            if e + gu + 7_000 < now {
                panic!("PE {id} overdue: {e} at {now}");
            }
        }
    }
    assert_eq!(h.pe_count(), expected.len());
}

#[test]
fn checksum_vectors_through_handlespace() {
    let mut h = hs();
    assert_eq!(h.checksum(1), 0xFFFF);
    let p = |id| pe(id, Policy::RoundRobin);
    h.register(b"EchoPool", &p(0x12345678), 1, Time::ZERO)
        .unwrap();
    assert_eq!(h.checksum(1), 0x29A5);
    h.register(b"EchoPool", &p(0x11111111), 1, Time::ZERO)
        .unwrap();
    assert_eq!(h.checksum(1), 0x99D4);
    h.register(b"abc", &p(1), 2, Time::ZERO).unwrap();
    assert_eq!(h.checksum(2), 0x3B9C);
    h.register(b"abcde", &p(7), 3, Time::ZERO).unwrap();
    h.register(b"x", &p(9), 3, Time::ZERO).unwrap();
    assert_eq!(h.checksum(3), 0x5E28);
    h.deregister(b"EchoPool", 0x11111111);
    assert_eq!(h.checksum(1), 0x29A5);
}

#[test]
fn checksum_incremental_matches_scratch() {
    let mut h = hs();
    let mut rng = Rng::new(5);
    let handles: Vec<Vec<u8>> = (0..20)
        .map(|i| format!("p{}", "x".repeat(i)).into_bytes())
        .collect();
    let mut out = Vec::new();
    for step in 0..5_000 {
        let hd = &handles[rng.below(20) as usize];
        let id = 1 + rng.below(50) as u32;
        match rng.below(5) {
            0 | 1 => {
                let owner = rng.below(4) as u32;
                h.register(hd, &pe(id, Policy::RoundRobin), owner, Time::ZERO)
                    .unwrap();
            }
            2 => {
                h.deregister(hd, id);
            }
            3 => {
                h.set_owner(hd, id, rng.below(4) as u32);
            }
            _ => {
                out.clear();
                h.take_over(rng.below(4) as u32, rng.below(4) as u32, &mut out);
            }
        }
        if step % 50 == 0 {
            for o in 0..4 {
                assert_eq!(h.checksum(o), h.checksum_from_scratch(o), "step {step}");
                assert_eq!(
                    h.owned_count(o),
                    h.iter_all().filter(|v| v.owner() == o).count()
                );
            }
        }
    }
}

#[test]
fn takeover_moves_ownership() {
    let mut h = hs();
    for id in 1..=10 {
        h.register(H, &pe(id, Policy::RoundRobin), id % 2, Time::ZERO)
            .unwrap();
    }
    let before = h.checksum(1);
    let mut out = Vec::new();
    assert_eq!(h.take_over(1, 5, &mut out), 5);
    assert_eq!(out.len(), 5);
    assert!(out.iter().all(|r| h.element(*r).unwrap().owner() == 5));
    assert_eq!(h.owned_count(1), 0);
    assert_eq!(h.checksum(1), 0xFFFF);
    assert_eq!(h.checksum(5), before);
    assert_eq!(h.owned_count(0), 5);
}

#[test]
fn resync_mark_and_sweep() {
    let mut h = hs();
    for id in 1..=10 {
        h.register(H, &pe(id, Policy::RoundRobin), 1 + id % 2, Time::ZERO)
            .unwrap();
    }
    assert_eq!(h.mark_owned_by(1), 5);
    // The peer re-sends 2 of its PEs (ENRP update = register) and one unmark.
    h.register(H, &pe(2, Policy::RoundRobin), 1, Time::ZERO)
        .unwrap();
    h.register(H, &pe(4, Policy::RoundRobin), 1, Time::ZERO)
        .unwrap();
    assert!(h.unmark(H, 6));
    let mut out = Vec::new();
    assert_eq!(h.sweep_marked(&mut out), 2);
    let mut gone: Vec<u32> = out.iter().map(|(_, p)| p.id).collect();
    gone.sort();
    assert_eq!(gone, [8, 10]);
    assert_eq!(h.pe_count(), 8);
    assert_eq!(h.checksum(1), h.checksum_from_scratch(1));
}

#[test]
fn unreachable_reports_count_and_reset() {
    let mut h = hs();
    reg(&mut h, 1, Policy::RoundRobin);
    assert_eq!(h.report_unreachable(H, 1), Some(1));
    assert_eq!(h.report_unreachable(H, 1), Some(2));
    assert_eq!(h.report_unreachable(H, 2), None);
    reg(&mut h, 1, Policy::RoundRobin);
    assert_eq!(h.report_unreachable(H, 1), Some(1));
}

#[test]
fn resumable_owned_iteration() {
    let mut h = hs();
    let handles: Vec<Vec<u8>> = (0..7).map(|i| vec![b'a' + i]).collect();
    for i in 0..200u32 {
        h.register(
            &handles[(i % 7) as usize],
            &pe(i + 1, Policy::RoundRobin),
            i % 3,
            Time::ZERO,
        )
        .unwrap();
    }
    let key = |h: &Handlespace, r: ElementRef| {
        let v = h.element(r).unwrap();
        (v.handle().to_vec(), v.id())
    };
    // Remove some PEs between chunks and add new ones; PEs present throughout are
    // returned exactly once.
    let stable: HashSet<(Vec<u8>, u32)> = h
        .iter_all()
        .filter(|v| v.owner() == 1 && v.id() % 5 != 0)
        .map(|v| (v.handle().to_vec(), v.id()))
        .collect();
    let mut seen: Vec<(Vec<u8>, u32)> = Vec::new();
    let mut cur = Some(Cursor::START);
    let mut round = 0u32;
    while let Some(c) = cur {
        let mut out = Vec::new();
        cur = h.iter_from(c, Some(1), 7, &mut out);
        assert!(out.len() <= 7);
        for r in out {
            assert_eq!(h.element(r).unwrap().owner(), 1);
            seen.push(key(&h, r));
        }
        // Churn.
        let victim = 5 * (round + 1);
        h.deregister(&handles[((victim - 1) % 7) as usize], victim);
        h.register(b"new", &pe(1000 + round, Policy::RoundRobin), 1, Time::ZERO)
            .unwrap();
        round += 1;
    }
    let seen_set: HashSet<_> = seen.iter().cloned().collect();
    assert_eq!(seen_set.len(), seen.len(), "duplicates");
    assert!(stable.is_subset(&seen_set));
    // All PEs, no owner filter, exact.
    let mut all = Vec::new();
    let mut cur = Some(Cursor::START);
    while let Some(c) = cur {
        cur = h.iter_from(c, None, 13, &mut all);
    }
    assert_eq!(all.len(), h.pe_count());
}

#[test]
fn views_and_transports() {
    let mut h = hs();
    let v6: IpAddr = "2001:db8::1".parse().unwrap();
    let mut p = pe(1, Policy::RoundRobin);
    p.user_transport = Transport::Tcp {
        port: 5,
        transport_use: 0,
        addr: v6,
    };
    p.asap_transport = Some(Transport::Sctp {
        port: 3863,
        transport_use: 1,
        addrs: vec!["10.0.0.9".parse().unwrap(), v6],
    });
    let mut hp = pe(2, Policy::RoundRobin);
    hp.user_transport = Transport::Tcp {
        port: 6,
        transport_use: 0,
        addr: "10.0.0.1".parse().unwrap(),
    };
    h.register(H, &p, OWNER, Time::ZERO).unwrap();
    h.register(H, &hp, OWNER, Time::ZERO).unwrap();
    let mut expect = p.clone();
    expect.home = OWNER;
    assert_eq!(h.get(H, 1).unwrap().to_pool_element(), expect);
    let v = h.get(H, 1).unwrap();
    assert_eq!(v.user_transport().addr(0), Some(v6));
    assert_eq!(v.asap_transport().unwrap().addr_count(), 2);
    let mut out = Vec::new();
    assert!(h.pool_elements(H, &mut out));
    assert_eq!(out.len(), 2);
    assert_eq!(h.pool_size(H), 2);
    assert_eq!(h.pool_handles().count(), 1);
    assert_eq!(h.pool_policy(H), Some(&Policy::RoundRobin));
}

/// A naive reference: a Vec of (id, key, stamp) ordered by (key, stamp); the first
/// `items` are served; RR rotates by one; tied served PEs get a fresh stamp.
#[derive(Default)]
struct Model {
    pes: Vec<(u32, u64, u64)>,
    stamp: u64,
    rr: bool,
}

impl Model {
    fn order(&self) -> Vec<(u32, u64, u64)> {
        let mut v = self.pes.clone();
        if !self.rr {
            v.sort_by_key(|x| (x.1, x.2));
        }
        v
    }
    fn register(&mut self, id: u32, key: u64) {
        self.stamp += 1;
        match self.pes.iter_mut().find(|x| x.0 == id) {
            Some(x) => {
                if x.1 != key {
                    x.1 = key;
                    x.2 = self.stamp;
                }
            }
            None => self.pes.push((id, key, self.stamp)),
        }
    }
    fn deregister(&mut self, id: u32) {
        self.pes.retain(|x| x.0 != id);
    }
    fn resolve(&mut self, items: usize) -> Vec<u32> {
        let ord = self.order();
        let sel: Vec<(u32, u64, u64)> = ord.iter().take(items).copied().collect();
        if self.rr {
            // Asking for nothing does not move the head.
            if !self.pes.is_empty() && items > 0 {
                self.pes.rotate_left(1);
            }
        } else {
            for s in &sel {
                if self.pes.iter().filter(|x| x.1 == s.1).count() > 1 {
                    self.stamp += 1;
                    let st = self.stamp;
                    self.pes.iter_mut().find(|x| x.0 == s.0).unwrap().2 = st;
                }
            }
        }
        sel.iter().map(|x| x.0).collect()
    }
}

fn model_test(kind: u8, seed: u64) {
    let mut h = hs();
    let mut m = Model {
        rr: kind == 0,
        ..Model::default()
    };
    let mut rng = Rng::new(seed);
    let policy = |v: u32| match kind {
        0 => Policy::RoundRobin,
        1 => Policy::LeastUsed { load: v },
        _ => Policy::Priority { priority: v },
    };
    let key = |v: u32| match kind {
        0 => 0,
        1 => v as u64,
        _ => (u32::MAX - v) as u64,
    };
    for step in 0..5_000 {
        let id = 1 + rng.below(40) as u32;
        let v = rng.below(4) as u32; // few values => many ties
        match rng.below(6) {
            0 | 1 => {
                h.register(H, &pe(id, policy(v)), OWNER, Time::ZERO)
                    .unwrap();
                m.register(id, key(v));
            }
            2 => {
                h.deregister(H, id);
                m.deregister(id);
            }
            _ => {
                let items = rng.below(6) as usize;
                let mut out = Vec::new();
                let got: Vec<u32> = match h.resolve(H, items, &mut out) {
                    Ok(_) => out.iter().map(|r| h.element(*r).unwrap().id()).collect(),
                    Err(_) => Vec::new(),
                };
                let want = m.resolve(items);
                assert_eq!(got, want, "kind {kind} step {step}");
            }
        }
        assert_eq!(h.pe_count(), m.pes.len());
    }
}

#[test]
fn model_rr() {
    for seed in 0..4 {
        model_test(0, seed);
    }
}

#[test]
fn model_lu() {
    for seed in 0..4 {
        model_test(1, seed);
    }
}

#[test]
fn model_prio() {
    for seed in 0..4 {
        model_test(2, seed);
    }
}
