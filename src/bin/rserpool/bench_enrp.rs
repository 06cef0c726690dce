//! `rserpool bench enrp`: ENRP figures with in-process registrars over
//! loopback TCP (each on its own loop thread):
//!
//! - **download**: a new registrar starts with `peers = [mentor]` and the time
//!   until it holds every PE of the mentor's handlespace (start-up done) is
//!   measured, for each size in `--pes`, `--runs` times (median printed);
//! - **propagation**: a PE registered at A; time until B and C (both peered
//!   with A) resolve it;
//! - **takeover**: a registrar owning PEs stops (its connections close, as
//!   when its process dies); time until a survivor owns them, for several
//!   (MAX-TIME-LAST-HEARD, MAX-TIME-NO-RESPONSE) settings;
//! - **silent takeover**: the same with a registrar that dies silently: a
//!   `rserpool registrar` child process stopped with SIGSTOP (no FIN, the
//!   kernel keeps its sockets open and even accepts new connections), so the
//!   survivors notice only by missing presences: MAX-TIME-LAST-HEARD after
//!   they last heard from it they probe it, MAX-TIME-NO-RESPONSE later it is
//!   dead and taken over. For several (PEER-HEARTBEAT-CYCLE,
//!   MAX-TIME-LAST-HEARD, MAX-TIME-NO-RESPONSE) settings.
//!
//! The mentor is filled with pipelined ASAP registrations (the same load
//! generator as `bench registrar`), keep-alives off.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rserpool::registrar::{PeerState, RateLimit, RegistrarConfig, StartupState};
use rserpool::runtime::blocking::TcpMapClient;
use rserpool::runtime::{EndpointUrl, RegistrarHandle, RegistrarOptions};
use rserpool::wire::{AsapMessage, Policy, PoolElement, Transport};

use crate::bench_registrar::{register_all, RegistrarBenchArgs};

/// Arguments of `bench enrp`.
#[derive(clap::Args, Debug)]
pub struct EnrpBenchArgs {
    /// Handlespace sizes for the download figure (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "100000,1000000")]
    pub pes: Vec<usize>,
    /// Runs per figure (the median is printed).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Samples of the propagation latency.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Skip the download figure.
    #[arg(long)]
    pub no_download: bool,
    /// Skip the propagation figure.
    #[arg(long)]
    pub no_propagation: bool,
    /// Skip the takeover figure.
    #[arg(long)]
    pub no_takeover: bool,
    /// Skip the silent-death (SIGSTOP) takeover figure.
    #[arg(long)]
    pub no_silent: bool,
}

const T: Duration = Duration::from_secs(60);

fn config(peers: Vec<SocketAddr>) -> RegistrarConfig {
    let rsplib = RegistrarConfig::rsplib_profile();
    RegistrarConfig {
        resolution_rate: RateLimit::UNLIMITED,
        max_pes_per_connection: usize::MAX,
        max_pes_per_pool: usize::MAX,
        max_pes_total: usize::MAX,
        max_pools: usize::MAX,
        keep_alive_interval: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        peers,
        // RSPLIB's ENRP timers; Registration Life stays in seconds (the load
        // generator's PEs live an hour, not 3.6 s).
        peer_heartbeat_cycle: rsplib.peer_heartbeat_cycle,
        max_time_last_heard: rsplib.max_time_last_heard,
        max_time_no_response: rsplib.max_time_no_response,
        takeover_timeout: rsplib.takeover_timeout,
        ..RegistrarConfig::default()
    }
}

fn start(cfg: RegistrarConfig) -> Result<RegistrarHandle, String> {
    let mut opts = RegistrarOptions::default();
    opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
    opts.enrp = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
    // No announces from a benchmark.
    opts.registrar = RegistrarConfig {
        announce_interval: None,
        ..cfg
    };
    RegistrarHandle::start(opts).map_err(|e| e.to_string())
}

fn enrp_addr(h: &RegistrarHandle) -> SocketAddr {
    h.enrp_addrs()[0].1
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() as f64 * p) as usize).min(v.len() - 1)]
}

/// (PE count, start-up done) of a registrar.
fn progress(h: &RegistrarHandle) -> Option<(usize, bool)> {
    h.loop_handle().query(T, |d, _| {
        let r = d.registrar();
        (r.pe_count(), r.startup_state() == StartupState::Done)
    })
}

fn fill(mentor: &RegistrarHandle, n: usize) -> Result<(Vec<TcpMapClient>, f64), String> {
    let a = RegistrarBenchArgs {
        registrar: None,
        connections: 4,
        pes: n,
        pools: 1000,
        seconds: 0.0,
        pipeline: 256,
        items: 3,
        rate: 0.0,
    };
    let (conns, granted, secs) = register_all(mentor.local_addrs()[0].1, &a)?;
    if granted < n {
        return Err(format!("only {granted} of {n} registrations granted"));
    }
    Ok((conns, secs))
}

fn download(a: &EnrpBenchArgs) -> Result<(), String> {
    println!("== handle-table download by a new registrar (start-up via mentor)");
    for &n in &a.pes {
        let mentor = start(config(vec![]))?;
        let (_pe_conns, secs) = fill(&mentor, n)?;
        println!(
            "  mentor filled with {n} PEs in {secs:.2} s ({:.0}/s)",
            n as f64 / secs
        );
        let mut times = Vec::new();
        for run in 0..a.runs.max(1) {
            let t = Instant::now();
            let new = start(config(vec![enrp_addr(&mentor)]))?;
            let (mut last, mut since) = (0, Instant::now());
            loop {
                match progress(&new) {
                    Some((c, true)) if c >= n => break,
                    Some((c, _)) if c != last => (last, since) = (c, Instant::now()),
                    Some(_) => {}
                    None => return Err("the new registrar stopped".into()),
                }
                if since.elapsed() > Duration::from_secs(30) {
                    let st = new.status_json().unwrap_or_default();
                    return Err(format!(
                        "download stalled at {last} of {n} PEs for 30 s: {st}"
                    ));
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            let s = t.elapsed().as_secs_f64();
            println!(
                "  run {}: {n} PEs in {s:.3} s ({:.0} PEs/s)",
                run + 1,
                n as f64 / s
            );
            times.push(s);
            new.stop().map_err(|e| e.to_string())?;
            // The mentor forgets the stopped registrar before the next run.
            std::thread::sleep(Duration::from_millis(200));
        }
        let m = median(times);
        println!("  {n} PEs: median {m:.3} s ({:.0} PEs/s)", n as f64 / m);
    }
    Ok(())
}

fn pe(id: u32) -> PoolElement {
    PoolElement {
        id,
        home: 0,
        reg_life: 3600,
        user_transport: Transport::Tcp {
            port: 20_000,
            transport_use: 0,
            addr: "127.0.0.1".parse().unwrap(),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

/// Whether `pool` resolves at `c` (a non-empty positive answer).
fn resolves(c: &mut TcpMapClient, pool: &str) -> Result<bool, String> {
    c.send_asap(&AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: pool.into(),
        items: None,
    })
    .map_err(|e| e.to_string())?;
    loop {
        match c.recv_asap(T).map_err(|e| e.to_string())? {
            AsapMessage::HandleResolutionResponse {
                elements, error, ..
            } => return Ok(error.is_none() && !elements.is_empty()),
            _ => continue,
        }
    }
}

fn wait_active(h: &RegistrarHandle, n: usize) -> Result<(), String> {
    let t = Instant::now();
    loop {
        let peers = h.peers().ok_or("registrar gone")?;
        if peers
            .iter()
            .filter(|p| p.state == PeerState::Active)
            .count()
            >= n
        {
            return Ok(());
        }
        if t.elapsed() > T {
            return Err("peers never became active".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn propagation(a: &EnrpBenchArgs) -> Result<(), String> {
    println!("== handle-update propagation: register at A, until B and C resolve it");
    let ra = start(config(vec![]))?;
    let rb = start(config(vec![enrp_addr(&ra)]))?;
    let rc = start(config(vec![enrp_addr(&ra)]))?;
    for h in [&ra, &rb, &rc] {
        wait_active(h, 2)?;
    }
    let conn = |h: &RegistrarHandle| {
        TcpMapClient::connect(h.local_addrs()[0].1, T).map_err(|e| e.to_string())
    };
    let (mut pa, mut pb, mut pc) = (conn(&ra)?, conn(&rb)?, conn(&rc)?);
    let (mut both, mut first) = (Vec::new(), Vec::new());
    for i in 0..a.samples.max(1) {
        let pool = format!("lat-{i}");
        let t = Instant::now();
        pa.send_asap(&AsapMessage::Registration {
            pool_handle: pool.as_str().into(),
            pe: pe(i as u32 + 1),
        })
        .map_err(|e| e.to_string())?;
        let (mut tb, mut tc) = (None, None);
        while tb.is_none() || tc.is_none() {
            if tb.is_none() && resolves(&mut pb, &pool)? {
                tb = Some(t.elapsed());
            }
            if tc.is_none() && resolves(&mut pc, &pool)? {
                tc = Some(t.elapsed());
            }
            if t.elapsed() > T {
                return Err("an update never arrived".into());
            }
        }
        let (tb, tc) = (tb.unwrap(), tc.unwrap());
        both.push(tb.max(tc).as_secs_f64() * 1e6);
        first.push(tb.min(tc).as_secs_f64() * 1e6);
        // Drain A's registration response.
        let _ = pa.recv_asap(T);
    }
    println!(
        "  {} samples: both peers p50 {:.0} us, p90 {:.0} us, p99 {:.0} us; first peer p50 {:.0} us",
        both.len(),
        pct(&mut both, 0.5),
        pct(&mut both, 0.9),
        pct(&mut both, 0.99),
        pct(&mut first, 0.5)
    );
    println!("  (includes one resolution round trip per poll, ~tens of us)");
    Ok(())
}

fn takeover_once(last_heard: Duration, no_response: Duration) -> Result<f64, String> {
    let timers = |peers| RegistrarConfig {
        peer_heartbeat_cycle: (last_heard / 2).max(Duration::from_millis(50)),
        max_time_last_heard: last_heard,
        max_time_no_response: no_response,
        takeover_timeout: Duration::from_secs(5),
        peer_reconnect_interval: Duration::from_millis(200),
        ..config(peers)
    };
    let ra = start(timers(vec![]))?;
    let rb = start(timers(vec![enrp_addr(&ra)]))?;
    let rc = start(timers(vec![enrp_addr(&ra)]))?;
    for h in [&ra, &rb, &rc] {
        wait_active(h, 2)?;
    }
    let dead = rb.server_id();
    let mut pb = TcpMapClient::connect(rb.local_addrs()[0].1, T).map_err(|e| e.to_string())?;
    for id in 1..=10u32 {
        pb.send_asap(&AsapMessage::Registration {
            pool_handle: "takeover".into(),
            pe: pe(id),
        })
        .map_err(|e| e.to_string())?;
        let _ = pb.recv_asap(T);
    }
    let moved = |h: &RegistrarHandle| -> bool {
        h.pool_elements().is_some_and(|p| {
            let pes: Vec<&PoolElement> = p.iter().flat_map(|(_, v)| v.iter()).collect();
            pes.len() == 10 && pes.iter().all(|pe| pe.home != dead)
        })
    };
    // Both survivors hold the PEs before the death.
    let t = Instant::now();
    while !(ra
        .pool_elements()
        .is_some_and(|p| p.iter().map(|x| x.1.len()).sum::<usize>() == 10)
        && rc
            .pool_elements()
            .is_some_and(|p| p.iter().map(|x| x.1.len()).sum::<usize>() == 10))
    {
        if t.elapsed() > T {
            return Err("PEs never reached the peers".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let t = Instant::now();
    rb.stop().map_err(|e| e.to_string())?;
    while !(moved(&ra) && moved(&rc)) {
        if t.elapsed() > T {
            return Err("no takeover within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(t.elapsed().as_secs_f64())
}

fn takeover(a: &EnrpBenchArgs) -> Result<(), String> {
    println!("== takeover after a registrar dies (its connections close), until both survivors agree on the new home of its 10 PEs");
    let ms = Duration::from_millis;
    for (lh, nr) in [
        (ms(500), ms(250)),
        (ms(500), ms(500)),
        (ms(500), ms(1000)),
        (ms(2000), ms(500)),
        (ms(5000), ms(5000)),
    ] {
        let mut v = Vec::new();
        for _ in 0..a.runs.max(1) {
            v.push(takeover_once(lh, nr)?);
        }
        println!(
            "  max-time-last-heard {:>5} ms, max-time-no-response {:>5} ms: median {:.3} s (runs: {})",
            lh.as_millis(),
            nr.as_millis(),
            median(v.clone()),
            v.iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// A `rserpool registrar` child process (this very binary), killed on drop.
struct ChildRegistrar {
    child: std::process::Child,
    asap: SocketAddr,
}

impl ChildRegistrar {
    /// Start `rserpool registrar ARGS` and wait for its "listening asap" line.
    fn start(args: &[String]) -> Result<ChildRegistrar, String> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| format!("own executable: {e}"))?;
        let mut child = std::process::Command::new(exe)
            .arg("registrar")
            .args(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map_err(|e| format!("starting a registrar process: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut me = ChildRegistrar {
            child,
            asap: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        loop {
            let line = rx
                .recv_timeout(T)
                .map_err(|_| "the registrar process did not start".to_string())?;
            if let Some(u) = line.strip_prefix("listening asap tcp://") {
                me.asap = u.trim().parse().map_err(|e| format!("{u}: {e}"))?;
                return Ok(me);
            }
        }
    }

    fn signal(&self, sig: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child, not yet reaped (it is reaped
            // only in Drop), so the pid cannot have been reused.
            unsafe { libc::kill(pid, sig) };
        }
    }
}

impl Drop for ChildRegistrar {
    fn drop(&mut self) {
        // SIGKILL ends a stopped process too.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn silent_once(hb: Duration, lh: Duration, nr: Duration) -> Result<f64, String> {
    let timers = |peers| RegistrarConfig {
        peer_heartbeat_cycle: hb,
        max_time_last_heard: lh,
        max_time_no_response: nr,
        takeover_timeout: Duration::from_secs(5),
        peer_reconnect_interval: Duration::from_millis(200),
        ..config(peers)
    };
    let ra = start(timers(vec![]))?;
    let rc = start(timers(vec![enrp_addr(&ra)]))?;
    let ms = |d: Duration| format!("{}ms", d.as_millis());
    let args: Vec<String> = [
        "--asap",
        "tcp://127.0.0.1:0",
        "--enrp",
        "tcp://127.0.0.1:0",
        "--keep-alive-interval",
        "0",
        "--idle-timeout",
        "0",
        "--enrp-takeover-timeout",
        "5s",
        "--enrp-peer-reconnect-interval",
        "200ms",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([
        "--enrp-peer-heartbeat-cycle".into(),
        ms(hb),
        "--enrp-max-time-last-heard".into(),
        ms(lh),
        "--enrp-max-time-no-response".into(),
        ms(nr),
        "--peer".into(),
        format!("tcp://{}", enrp_addr(&ra)),
    ])
    .collect();
    let rb = ChildRegistrar::start(&args)?;
    for h in [&ra, &rc] {
        wait_active(h, 2)?;
    }
    let mut pb = TcpMapClient::connect(rb.asap, T).map_err(|e| e.to_string())?;
    let mut dead = 0;
    for id in 1..=10u32 {
        pb.send_asap(&AsapMessage::Registration {
            pool_handle: "silent".into(),
            pe: pe(id),
        })
        .map_err(|e| e.to_string())?;
        match pb.recv_asap(T).map_err(|e| e.to_string())? {
            AsapMessage::RegistrationResponse { reject: false, .. } => {}
            other => return Err(format!("registration at the child: {other:?}")),
        }
    }
    let holds = |h: &RegistrarHandle, dead: &mut u32| -> bool {
        h.pool_elements().is_some_and(|p| {
            let pes: Vec<&PoolElement> = p.iter().flat_map(|(_, v)| v.iter()).collect();
            if let Some(pe) = pes.first() {
                *dead = pe.home;
            }
            pes.len() == 10
        })
    };
    let t = Instant::now();
    while !(holds(&ra, &mut dead) && holds(&rc, &mut dead)) {
        if t.elapsed() > T {
            return Err("PEs never reached the peers".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let moved = |h: &RegistrarHandle| -> bool {
        h.pool_elements().is_some_and(|p| {
            let pes: Vec<&PoolElement> = p.iter().flat_map(|(_, v)| v.iter()).collect();
            pes.len() == 10 && pes.iter().all(|pe| pe.home != dead)
        })
    };
    // Die at a random point of its heartbeat cycle, with nothing but
    // heartbeats heard from it for a while (its ADD_PEs count as heard too).
    let phase = rserpool::runtime::registrar::random_u64() % (hb.as_micros() as u64).max(1);
    std::thread::sleep(2 * hb + Duration::from_micros(phase));
    let t = Instant::now();
    rb.signal(libc::SIGSTOP);
    while !(moved(&ra) && moved(&rc)) {
        if t.elapsed() > T + lh + nr {
            return Err("no takeover of the stopped registrar".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    Ok(t.elapsed().as_secs_f64())
}

fn silent(a: &EnrpBenchArgs) -> Result<(), String> {
    println!("== takeover after a silent death (SIGSTOP: no FIN), until both survivors agree on the new home of its 10 PEs");
    println!("   expected: MAX-TIME-LAST-HEARD + MAX-TIME-NO-RESPONSE - (time since its last heartbeat, 0 .. PEER-HEARTBEAT-CYCLE), plus the takeover round trips");
    let ms = Duration::from_millis;
    let rsplib = RegistrarConfig::rsplib_profile();
    for (hb, lh, nr) in [
        (ms(100), ms(500), ms(250)),
        (ms(100), ms(500), ms(500)),
        (ms(250), ms(1000), ms(500)),
        (ms(500), ms(2000), ms(500)),
        (
            rsplib.peer_heartbeat_cycle,
            rsplib.max_time_last_heard,
            rsplib.max_time_no_response,
        ),
    ] {
        let mut v = Vec::new();
        for _ in 0..a.runs.max(1) {
            v.push(silent_once(hb, lh, nr)?);
        }
        let hi = (lh + nr).as_secs_f64();
        let lo = (lh + nr).saturating_sub(hb).as_secs_f64();
        println!(
            "  heartbeat {:>5} ms, last-heard {:>5} ms, no-response {:>5} ms: median {:.3} s, expected {lo:.3}-{hi:.3} s (runs: {})",
            hb.as_millis(),
            lh.as_millis(),
            nr.as_millis(),
            median(v.clone()),
            v.iter()
                .map(|s| format!("{s:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    Ok(())
}

/// `rserpool bench enrp`.
pub fn run(a: EnrpBenchArgs) -> i32 {
    let r = (|| -> Result<(), String> {
        if !a.no_download {
            download(&a)?;
        }
        if !a.no_propagation {
            propagation(&a)?;
        }
        if !a.no_takeover {
            takeover(&a)?;
        }
        if !a.no_silent {
            silent(&a)?;
        }
        Ok(())
    })();
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rserpool bench enrp: {e}");
            1
        }
    }
}
