//! The deterministic simulation (src/sim): registrar cores, and pool elements
//! and pool users that are real ASAP client cores, under seeded faults (loss,
//! delay, reordering, partitions, connection breaks, registrar crashes and
//! restarts, PE crashes, restarts and departures, PU restarts). Per-step
//! invariants after every event (consistent cores, no rejected PE, pool users
//! only ever given PEs that are live or recently gone); after the faults stop
//! and the network settles: one handlespace everywhere, every live PE present,
//! registered and owned by exactly one running registrar (its client's home),
//! no gone PE left, and every pool user resolving exactly the live PEs.
//!
//! Replay one seed: `RSERPOOL_SIM_SEED=1234 cargo test --test enrp_sim -- --nocapture`;
//! run more: `RSERPOOL_SIM_SEEDS=1000 cargo test --release --test enrp_sim`;
//! print what some nodes see during a replay: `RSERPOOL_SIM_TRACE=pe7,reg1,pu0`.

use std::collections::BTreeSet;
use std::time::Duration;

use rserpool::asap::T4Rule;
use rserpool::registrar::RegistrarConfig;
use rserpool::sim::{registrar_addr, ClientTotals, Faults, Node, PeSpec, PuSpec, Sim, SimStats};

const POOLS: [&str; 3] = ["P0", "P1", "P2"];

fn fast(slot: usize, n: usize) -> RegistrarConfig {
    RegistrarConfig {
        keep_alive_interval: Duration::from_secs(2),
        keep_alive_timeout: Duration::from_secs(1),
        keep_alive_min_gap: Duration::from_millis(100),
        peer_heartbeat_cycle: Duration::from_secs(1),
        max_time_last_heard: Duration::from_secs(3),
        max_time_no_response: Duration::from_secs(1),
        mentor_retry_interval: Duration::from_secs(1),
        takeover_timeout: Duration::from_secs(2),
        peer_reconnect_interval: Duration::from_secs(1),
        handle_table_chunk: 4,
        peers: (0..n).filter(|j| *j != slot).map(registrar_addr).collect(),
        ..RegistrarConfig::default()
    }
}

/// PE `i`: pools in turn, homes in turn, every other one over SCTP (so
/// takeovers dial it) when `sctp`. Every third one re-registers only every
/// 5 s (life 15 s), slowly enough that a registrar taking its home over
/// may reach it first.
fn pe(i: usize, regs: usize, sctp: bool) -> PeSpec {
    let mut pe = PeSpec {
        sctp: sctp && i % 2 == 0,
        ..PeSpec::new(POOLS[i % POOLS.len()], 1000 + i as u32, i % regs)
    };
    if i % 3 == 1 {
        pe.reg_life = 15;
        pe.config.t4_reregistration = T4Rule::Fixed(Duration::from_secs(5));
    }
    pe
}

/// PU `i`: uses every pool; the first one subscribes to a pool.
fn pu(i: usize) -> PuSpec {
    PuSpec {
        subscribe: (i == 0).then(|| POOLS[0].to_string()),
        ..PuSpec::new(&POOLS)
    }
}

/// How the registrars of a run learn of each other.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Discovery {
    /// Every other slot configured as a peer.
    Configured,
    /// Nothing configured: the ENRP multicast group only.
    Multicast,
}

/// One seeded run; Err carries the reason and the final state.
fn run(seed: u64, how: Discovery) -> Result<Sim, Box<(String, Sim)>> {
    let mut sim = None;
    match run_inner(seed, how, &mut sim) {
        Ok(()) => Ok(sim.expect("set")),
        Err(e) => Err(Box::new((e, sim.expect("set")))),
    }
}

fn run_inner(seed: u64, how: Discovery, out: &mut Option<Sim>) -> Result<(), String> {
    let regs = 2 + (seed % 3) as usize; // 2..4 registrars
    let pes = 4 + (seed % 7) as usize; // 4..10 pool elements
    let pus = 1 + (seed % 2) as usize; // 1..2 pool users
    let sctp = seed % 4 != 3;
    let faults = Faults {
        loss: 0.01 * (seed % 4) as f64,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1 + seed % 40),
        reorder: if seed % 5 == 0 { 0.05 } else { 0.0 },
        fault_interval: Some(Duration::from_millis(1500)),
    };
    let sim = out.insert(Sim::new(seed, faults));
    sim.trace = traced();
    for i in 0..regs {
        sim.add_registrar(match how {
            Discovery::Configured => fast(i, regs),
            Discovery::Multicast => RegistrarConfig {
                peers: Vec::new(),
                enrp_multicast: true,
                ..fast(i, regs)
            },
        });
    }
    for i in 0..pes {
        sim.add_pe(pe(i, regs, sctp));
    }
    for i in 0..pus {
        sim.add_pu(pu(i));
    }
    sim.run_for(Duration::from_secs(3))?;
    sim.start_faults();
    sim.run_for(Duration::from_secs(30))?;
    sim.stop_faults();
    // Settle: dead PEs expire (6 s), takeovers and audits finish, PEs whose
    // registrar died hunt (T5 up to 4 s) and re-register.
    sim.run_for(Duration::from_secs(30))?;
    sim.check_converged()?;
    sim.check_pu_views()
}

/// `RSERPOOL_SIM_TRACE=pe7,reg1,pu0`: the nodes whose traffic and events a
/// replay prints.
fn traced() -> BTreeSet<Node> {
    let Ok(v) = std::env::var("RSERPOOL_SIM_TRACE") else {
        return BTreeSet::new();
    };
    v.split(',')
        .filter_map(|t| {
            let t = t.trim().to_ascii_lowercase();
            let num = |p: &str| t.strip_prefix(p)?.parse::<usize>().ok();
            num("reg")
                .map(Node::Reg)
                .or_else(|| num("pe").map(Node::Pe))
                .or_else(|| num("pu").map(Node::Pu))
        })
        .collect()
}

fn describe(sim: &Sim) {
    println!("{:?}", sim.stats);
    println!("{:?}", sim.client_totals());
    for (i, p) in sim.pe_summary().iter().enumerate() {
        println!("  PE {i}: {p:?}");
    }
    for i in sim.live_registrars() {
        let r = sim.registrar(i).unwrap();
        println!(
            "  slot {i} id {:#x}: {} PEs, checksum {:#06x}, peers {:?}\n    {:?}",
            r.server_id(),
            r.pe_count(),
            r.own_checksum(),
            r.peers()
                .iter()
                .map(|p| (
                    format!("{:#x}", p.id),
                    p.state,
                    p.pes,
                    p.checksum_held,
                    p.checksum_announced
                ))
                .collect::<Vec<_>>(),
            r.enrp_stats(),
        );
    }
}

#[test]
fn quiet_network_converges() {
    let mut sim = Sim::new(1, Faults::none());
    for i in 0..3 {
        sim.add_registrar(fast(i, 3));
    }
    for i in 0..9 {
        sim.add_pe(pe(i, 3, true));
    }
    sim.add_pu(pu(0));
    sim.run_for(Duration::from_secs(20)).unwrap();
    sim.check_converged().unwrap();
    for i in 0..3 {
        assert_eq!(sim.registrar(i).unwrap().pe_count(), 9);
        let peers = sim.registrar(i).unwrap().peers();
        assert_eq!(peers.len(), 2, "{peers:?}");
    }
    // Each PE registered at the registrar its list starts with.
    for i in 0..9 {
        assert_eq!(sim.pe_registrar(i), Some(i % 3), "PE {i}");
    }
    assert!(sim.stats.pu_uses > 0);
    assert_eq!(sim.stats.pu_failovers, 0);
    sim.check_pu_views().unwrap();
}

#[test]
fn registrar_crash_pes_move_and_pool_users_follow() {
    // A silent crash: TCP PEs notice when a re-registration goes
    // unanswered and hunt; SCTP PEs are dialled by the registrar that takes
    // their home over and adopt it through the H=1 keep-alive.
    let mut sim = Sim::new(2, Faults::none());
    for i in 0..3 {
        sim.add_registrar(fast(i, 3));
    }
    for i in 0..6 {
        let mut pe = PeSpec {
            sctp: i % 2 == 0,
            reg_life: 30,
            ..PeSpec::new("P0", 1 + i as u32, 0)
        };
        // Re-registering rarely, they do not notice before the takeover.
        pe.config.t4_reregistration = T4Rule::Fixed(Duration::from_secs(10));
        sim.add_pe(pe);
    }
    sim.add_pu(pu(0));
    sim.run_for(Duration::from_secs(5)).unwrap();
    for i in 0..6 {
        assert_eq!(sim.pe_registrar(i), Some(0));
    }
    sim.crash(0, false);
    sim.run_for(Duration::from_secs(8)).unwrap();
    println!(
        "{:?}\n{:?}\n{:?}",
        sim.stats,
        sim.client_totals(),
        sim.pe_summary()
    );
    sim.run_for(Duration::from_secs(20)).unwrap();
    sim.check_converged().unwrap();
    sim.check_pu_views().unwrap();
    for i in 0..6 {
        assert_ne!(sim.pe_registrar(i), Some(0), "PE {i}");
    }
    let t = sim.client_totals();
    assert!(t.home_adoptions >= 3, "{t:?}");
    assert!(sim.stats.dials_to_clients >= 3, "{:?}", sim.stats);
}

#[test]
fn dead_pes_are_reported_and_leave_the_answers() {
    let mut sim = Sim::new(3, Faults::none());
    for i in 0..2 {
        sim.add_registrar(fast(i, 2));
    }
    for i in 0..4 {
        sim.add_pe(PeSpec::new("P0", 1 + i as u32, i % 2));
    }
    sim.add_pu(PuSpec::new(&["P0"]));
    sim.run_for(Duration::from_secs(3)).unwrap();
    // Silently: only keep-alives and the pool user's reports find out.
    sim.kill_pe_with(0, false);
    sim.kill_pe_with(1, false);
    sim.leave_pe(2);
    sim.run_for(Duration::from_secs(15)).unwrap();
    sim.check_converged().unwrap();
    sim.check_pu_views().unwrap();
    assert!(sim.stats.pu_failovers > 0, "{:?}", sim.stats);
    assert!(sim.client_totals().reports_sent > 0);
    assert!(sim.stats.pu_max_staleness_us < 15_000_000);
}

fn add_totals(a: &mut ClientTotals, b: &ClientTotals) {
    a.registrations_sent += b.registrations_sent;
    a.home_adoptions += b.home_adoptions;
    a.hunts += b.hunts;
    a.hunt_rounds_expired += b.hunt_rounds_expired;
    a.reports_sent += b.reports_sent;
    a.unsolicited_deregistrations += b.unsolicited_deregistrations;
}

fn add_stats(a: &mut SimStats, b: &SimStats) {
    a.crashes += b.crashes;
    a.partitions += b.partitions;
    a.breaks += b.breaks;
    a.pe_crashes += b.pe_crashes;
    a.pe_restarts += b.pe_restarts;
    a.pe_leaves += b.pe_leaves;
    a.pu_restarts += b.pu_restarts;
    a.dials_to_clients += b.dials_to_clients;
    a.pe_registration_retries += b.pe_registration_retries;
    a.pu_answers += b.pu_answers;
    a.pu_stale_elements += b.pu_stale_elements;
    a.pu_max_staleness_us = a.pu_max_staleness_us.max(b.pu_max_staleness_us);
    a.pu_stale_after_lost_push += b.pu_stale_after_lost_push;
    a.pu_subscriptions_checked += b.pu_subscriptions_checked;
    a.pu_uses += b.pu_uses;
    a.pu_failovers += b.pu_failovers;
    a.events += b.events;
}

#[test]
fn many_seeds_converge() {
    seeds_converge(Discovery::Configured, 60);
}

/// The same faults (crashes and restarts with new ids, partitions, loss on
/// the group too) with registrars that know each other only from the ENRP
/// multicast group. Replay: `RSERPOOL_SIM_SEED=N cargo test --test enrp_sim
/// multicast -- --nocapture`.
#[test]
fn many_seeds_converge_with_multicast_discovery() {
    seeds_converge(Discovery::Multicast, 40);
}

fn seeds_converge(how: Discovery, default_seeds: u64) {
    let replay = std::env::var("RSERPOOL_SIM_SEED").is_ok();
    let seeds: Vec<u64> = match std::env::var("RSERPOOL_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RSERPOOL_SIM_SEED is a number")],
        Err(_) => match std::env::var("RSERPOOL_SIM_SEEDS") {
            Ok(n) => (0..n.parse().expect("RSERPOOL_SIM_SEEDS is a number")).collect(),
            Err(_) => (0..default_seeds).collect(),
        },
    };
    let n = seeds.len();
    let mut failures = Vec::new();
    let mut stats = SimStats::default();
    let mut totals = ClientTotals::default();
    for seed in seeds {
        match run(seed, how) {
            Ok(sim) => {
                add_stats(&mut stats, &sim.stats);
                add_totals(&mut totals, &sim.client_totals());
                if replay {
                    println!("seed {seed}: ok");
                    describe(&sim);
                }
            }
            Err(b) => {
                let (e, sim) = *b;
                eprintln!("seed {seed} FAILED: {e}\n  replay: RSERPOOL_SIM_SEED={seed} cargo test --test enrp_sim -- --nocapture");
                if replay {
                    describe(&sim);
                }
                failures.push(seed);
            }
        }
    }
    println!(
        "{n} seeds, {} failed\n  {stats:?}\n  {totals:?}",
        failures.len()
    );
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
    if n >= 20 {
        // The runs exercised what they are meant to.
        assert!(stats.crashes > 0 && stats.partitions > 0 && stats.breaks > 0);
        assert!(stats.pe_crashes > 0 && stats.pe_restarts > 0 && stats.pe_leaves > 0);
        assert!(stats.dials_to_clients > 0 && totals.home_adoptions > 0);
        assert!(totals.hunts > 0 && totals.reports_sent > 0);
        assert!(stats.pu_answers > 0 && stats.pu_failovers > 0 && stats.pu_stale_elements > 0);
        assert!(stats.pu_subscriptions_checked > 0);
    }
}
