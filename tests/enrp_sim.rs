//! The deterministic simulation (src/sim): N registrars and scripted PEs under
//! seeded faults (loss, delay, reordering, partitions, connection breaks,
//! crashes and restarts, PE churn). Per-step invariants after every event;
//! after the faults stop and the network settles: one handlespace everywhere,
//! every live PE present and owned by exactly one running registrar, no dead
//! PE left.
//!
//! Replay one seed: `RSERPOOL_SIM_SEED=1234 cargo test --test enrp_sim -- --nocapture`.

use std::time::Duration;

use rserpool::registrar::RegistrarConfig;
use rserpool::sim::{registrar_addr, Faults, PeSpec, Sim};

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

fn pe(i: usize, regs: usize) -> PeSpec {
    PeSpec {
        pool: format!("P{}", i % 3),
        id: 1000 + i as u32,
        home: i % regs,
        reregistration_interval: Duration::from_secs(2),
        reg_life: 6,
        response_timeout: Duration::from_secs(1),
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
    let pes = 4 + (seed % 7) as usize;
    let faults = Faults {
        loss: 0.01 * (seed % 4) as f64,
        min_delay: Duration::from_millis(1),
        max_delay: Duration::from_millis(1 + seed % 40),
        reorder: if seed % 5 == 0 { 0.05 } else { 0.0 },
        fault_interval: Some(Duration::from_millis(1500)),
    };
    let sim = out.insert(Sim::new(seed, faults));
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
        sim.add_pe(pe(i, regs));
    }
    sim.run_for(Duration::from_secs(3))?;
    sim.start_faults();
    sim.run_for(Duration::from_secs(30))?;
    sim.stop_faults();
    // Settle: dead PEs expire (6 s), takeovers and audits finish.
    sim.run_for(Duration::from_secs(30))?;
    sim.check_converged()
}

fn describe(sim: &Sim) {
    println!("{:?}", sim.stats);
    println!("  PEs (alive, registrar slot): {:?}", sim.pe_summary());
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
        sim.add_pe(pe(i, 3));
    }
    sim.run_for(Duration::from_secs(20)).unwrap();
    sim.check_converged().unwrap();
    for i in 0..3 {
        assert_eq!(sim.registrar(i).unwrap().pe_count(), 9);
        let peers = sim.registrar(i).unwrap().peers();
        assert_eq!(peers.len(), 2, "{peers:?}");
    }
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
    let seeds: Vec<u64> = match std::env::var("RSERPOOL_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("RSERPOOL_SIM_SEED is a number")],
        Err(_) => match std::env::var("RSERPOOL_SIM_SEEDS") {
            Ok(n) => (0..n.parse().expect("RSERPOOL_SIM_SEEDS is a number")).collect(),
            Err(_) => (0..default_seeds).collect(),
        },
    };
    let mut failures = Vec::new();
    for seed in seeds {
        match run(seed, how) {
            Ok(sim) => {
                if std::env::var("RSERPOOL_SIM_SEED").is_ok() {
                    println!("seed {seed}: ok");
                    describe(&sim);
                }
            }
            Err(b) => {
                let (e, sim) = *b;
                eprintln!("seed {seed} FAILED: {e}\n  replay: RSERPOOL_SIM_SEED={seed} cargo test --test enrp_sim -- --nocapture");
                if std::env::var("RSERPOOL_SIM_SEED").is_ok() {
                    describe(&sim);
                }
                failures.push(seed);
            }
        }
    }
    assert!(failures.is_empty(), "failing seeds: {failures:?}");
}
