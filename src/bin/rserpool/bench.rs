//! `rserpool bench`: benchmarks that print figures.

use rserpool::handlespace::{rng::Rng, Config, Handlespace};
use rserpool::time::Time;
use rserpool::wire::types::{Policy, PoolElement, Transport};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// The benchmarks.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// The handlespace: register N PEs over P pools, resolve, re-register, deregister.
    Handlespace(HandlespaceArgs),
    /// A registrar over TCP: registrations/s, resolutions/s, latency percentiles.
    Registrar(crate::bench_registrar::RegistrarBenchArgs),
    /// ENRP between in-process registrars: download by a new registrar,
    /// update propagation latency, takeover time.
    Enrp(crate::bench_enrp::EnrpBenchArgs),
    /// Sessions: a pool user streams to PE processes that are killed in
    /// turn; fail-over time percentiles and messages lost.
    Failover(crate::bench_session::FailoverBenchArgs),
    /// Sessions: echo messages per second and MB/s against plain TCP.
    Throughput(crate::bench_session::ThroughputBenchArgs),
}

/// Policy used by the handlespace benchmark.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BenchPolicy {
    /// Round robin.
    Rr,
    /// Least used (random loads).
    Lu,
}

/// Arguments of `bench handlespace`.
#[derive(clap::Args, Debug)]
pub struct HandlespaceArgs {
    /// Number of PEs.
    #[arg(long, default_value_t = 100_000)]
    pub pes: usize,
    /// Number of pools (PEs are spread evenly).
    #[arg(long, default_value_t = 1_000)]
    pub pools: usize,
    /// Selection policy.
    #[arg(long, value_enum, default_value_t = BenchPolicy::Rr)]
    pub policy: BenchPolicy,
    /// Number of handle resolutions (3 items each, round-robin over the pools).
    #[arg(long, default_value_t = 1_000_000)]
    pub resolutions: usize,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Runs a benchmark; returns the process exit code.
pub fn run(c: BenchCommand) -> i32 {
    match c {
        BenchCommand::Handlespace(a) => handlespace(a),
        BenchCommand::Registrar(a) => crate::bench_registrar::run(a),
        BenchCommand::Enrp(a) => crate::bench_enrp::run(a),
        BenchCommand::Failover(a) => crate::bench_session::failover(a),
        BenchCommand::Throughput(a) => crate::bench_session::throughput(a),
    }
}

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time of the calling thread: on a shared machine the wall clock also
/// counts the time other processes held the CPU, which moves the figures by
/// tens of percent between runs; this does not (cache contention remains).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given, nothing else.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// A phase's wall clock and thread CPU clocks, started together.
struct Clocks(Instant, Duration);

impl Clocks {
    fn start() -> Clocks {
        Clocks(Instant::now(), thread_cpu())
    }
}

fn report(phase: &str, ops: usize, c: Clocks) {
    let secs = c.0.elapsed().as_secs_f64();
    let cpu = thread_cpu().saturating_sub(c.1).as_secs_f64();
    println!(
        "{phase:<12} {ops:>10} ops {secs:>9.4} s {:>14.0} ops/s {:>14.0} ops/s of CPU",
        ops as f64 / secs,
        ops as f64 / cpu.max(1e-9)
    );
}

fn handlespace(a: HandlespaceArgs) -> i32 {
    if a.pes == 0 || a.pools == 0 || a.pools > a.pes {
        eprintln!("need 0 < pools <= pes");
        return 2;
    }
    let mut rng = Rng::new(a.seed);
    let policy = |load: u32| match a.policy {
        BenchPolicy::Rr => Policy::RoundRobin,
        BenchPolicy::Lu => Policy::LeastUsed { load },
    };
    // Inputs, generated before measuring.
    let handles: Vec<Vec<u8>> = (0..a.pools)
        .map(|p| format!("pool-{p:08}").into_bytes())
        .collect();
    let mult = rng.next_u32() | 1;
    let mut pes: Vec<(usize, PoolElement)> = (0..a.pes)
        .map(|i| {
            let pool = i % a.pools;
            let addr = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i as u32 & 0x00ff_ffff)));
            let port = 1024 + (i % 60000) as u16;
            // One transport type per pool (pool consistency), SCTP or TCP.
            let user_transport = if pool % 2 == 0 {
                Transport::Sctp {
                    port,
                    transport_use: 0,
                    addrs: vec![addr],
                }
            } else {
                Transport::Tcp {
                    port,
                    transport_use: 0,
                    addr,
                }
            };
            let pe = PoolElement {
                // A bijection of 1..=2^32-1: distinct and non-zero.
                id: (i as u32).wrapping_add(1).wrapping_mul(mult),
                home: 0,
                reg_life: 30,
                user_transport,
                policy: policy(rng.next_u32()),
                asap_transport: None,
            };
            (pool, pe)
        })
        .collect();
    let new_loads: Vec<u32> = (0..a.pes).map(|_| rng.next_u32()).collect();
    let mut out = Vec::with_capacity(64);

    let cfg = Config {
        seed: a.seed,
        ..Config::default()
    };
    let mut hs = Handlespace::new(cfg);
    let now = Time::from_secs(1);
    let owner = 0x1234_5678;

    // (a) registration.
    let rss0 = rss_bytes();
    let t = Clocks::start();
    for (pool, pe) in &pes {
        if hs.register(&handles[*pool], pe, owner, now).is_err() {
            eprintln!("registration failed");
            return 1;
        }
    }
    report("register", a.pes, t);
    let rss1 = rss_bytes();
    assert_eq!(hs.pe_count(), a.pes);
    assert_eq!(hs.pool_count(), a.pools);

    // (b) resolutions.
    let t = Clocks::start();
    let mut p = 0usize;
    let mut got = 0usize;
    for _ in 0..a.resolutions {
        out.clear();
        if hs.resolve(&handles[p], 3, &mut out).is_err() {
            eprintln!("resolution failed");
            return 1;
        }
        got += out.len();
        p += 1;
        if p == a.pools {
            p = 0;
        }
    }
    report("resolve", a.resolutions, t);
    std::hint::black_box(got);
    // Correctness: every pool resolves to distinct PEs of that pool.
    for h in &handles {
        out.clear();
        hs.resolve(h, 3, &mut out).expect("pool exists");
        let want = 3.min(hs.pool_size(h));
        assert_eq!(out.len(), want);
        for (i, r) in out.iter().enumerate() {
            let v = hs.element(*r).expect("live PE");
            assert_eq!(v.handle(), &h[..], "PE from the wrong pool");
            assert!(!out[..i].contains(r), "duplicate PE");
        }
    }

    // (c) re-registration, through the same register path.
    for (i, (_, pe)) in pes.iter_mut().enumerate() {
        pe.policy = policy(new_loads[i]);
    }
    let t = Clocks::start();
    for (pool, pe) in &pes {
        match hs.register(&handles[*pool], pe, owner, now) {
            Ok(r) if !r.new => {}
            _ => {
                eprintln!("re-registration failed");
                return 1;
            }
        }
    }
    report("reregister", a.pes, t);

    // (d) deregistration, through the path the registrar uses for a
    // deregistration message (`remove`: nothing is built for the reply).
    let t = Clocks::start();
    for (pool, pe) in &pes {
        if !hs.remove(&handles[*pool], pe.id) {
            eprintln!("deregistration failed");
            return 1;
        }
    }
    report("deregister", a.pes, t);
    assert_eq!(hs.pe_count(), 0);
    assert_eq!(hs.pool_count(), 0);

    if let (Some(r0), Some(r1)) = (rss0, rss1) {
        println!(
            "memory       {:.1} bytes/PE resident after registration",
            r1.saturating_sub(r0) as f64 / a.pes as f64
        );
    }
    0
}
