//! `rserpool bench registrar`: load a registrar over the TCP mapping and print
//! registrations/s, resolutions/s (one outstanding per connection, and
//! pipelined) and latency percentiles, including at half the pipelined peak.
//!
//! Without `--registrar` an in-process registrar is started (its own loop
//! thread, rate limits and keep-alives off) so one command measures both sides.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rserpool::registrar::{RateLimit, RegistrarConfig};
use rserpool::runtime::blocking::TcpMapClient;
use rserpool::runtime::{EndpointUrl, Proto, RegistrarHandle, RegistrarOptions};
use rserpool::wire::{AsapMessage, Policy, PoolElement, Transport};

/// Arguments of `bench registrar`.
#[derive(clap::Args, Debug)]
pub struct RegistrarBenchArgs {
    /// Registrar to load (tcp://...). Default: start one in this process. An
    /// external one needs its limits lifted, e.g. `--resolution-rate 0
    /// --max-pes-per-connection 1000000 --max-pes-per-pool 1000000
    /// --keep-alive-interval 0` (the load generator answers no keep-alives).
    #[arg(long)]
    pub registrar: Option<String>,
    /// Client connections (one load thread each).
    #[arg(long, default_value_t = 2)]
    pub connections: usize,
    /// PEs registered in the first phase (spread over the connections).
    #[arg(long, default_value_t = 20_000)]
    pub pes: usize,
    /// Pools the PEs are spread over.
    #[arg(long, default_value_t = 100)]
    pub pools: usize,
    /// Seconds per resolution phase.
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Outstanding requests per connection when pipelining.
    #[arg(long, default_value_t = 64)]
    pub pipeline: usize,
    /// PEs asked for per resolution (option 0x803f).
    #[arg(long, default_value_t = 3)]
    pub items: u32,
    /// Fixed request rate (per second, all connections) of the last latency
    /// phase; the default is half the 200 000/s throughput goal.
    #[arg(long, default_value_t = 100_000.0)]
    pub rate: f64,
}

const T: Duration = Duration::from_secs(30);

fn pool_name(i: usize) -> String {
    format!("bench-{i}")
}

fn pe(id: u32) -> PoolElement {
    PoolElement {
        id,
        home: 0,
        reg_life: 3600,
        user_transport: Transport::Tcp {
            port: 10_000 + (id % 50_000) as u16,
            transport_use: 0,
            addr: "127.0.0.1".parse().unwrap(),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

/// Latency summary in milliseconds (from nanoseconds).
fn percentiles(mut v: Vec<u64>) -> (f64, f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0, 0.0);
    }
    v.sort_unstable();
    let at = |q: f64| v[((v.len() as f64 * q) as usize).min(v.len() - 1)] as f64 / 1e6;
    (
        at(0.5),
        at(0.99),
        at(0.999),
        *v.last().unwrap() as f64 / 1e6,
    )
}

/// Is this an ASAP message of type `t` (first header byte)?
fn is_type(ppid: u32, m: &[u8], t: u8) -> bool {
    ppid == 11 && m.first() == Some(&t)
}

/// A positive handle resolution response: type 0x06 with no Operation Error
/// parameter (0x000c) among its top-level TLVs. Cheaper than a full decode.
fn resolution_ok(ppid: u32, m: &[u8]) -> bool {
    if !is_type(ppid, m, 0x06) {
        return false;
    }
    let mut at = 4;
    while at + 4 <= m.len() {
        let ty = u16::from_be_bytes([m[at], m[at + 1]]);
        let len = usize::from(u16::from_be_bytes([m[at + 2], m[at + 3]]));
        if ty == 0x000c || len < 4 {
            return false;
        }
        at += len.div_ceil(4) * 4;
    }
    true
}

/// Phase 1: every connection registers its share, `window` outstanding.
/// Returns the connections: closing them would remove their PEs.
pub(crate) fn register_all(
    addr: SocketAddr,
    a: &RegistrarBenchArgs,
) -> Result<(Vec<TcpMapClient>, usize, f64), String> {
    let c = a.connections.max(1);
    let per = a.pes.div_ceil(c);
    let window = a.pipeline.max(1);
    let pools = a.pools.max(1);
    let start = Instant::now();
    let threads: Vec<_> = (0..c)
        .map(|t| {
            std::thread::spawn(move || -> Result<(TcpMapClient, usize), String> {
                let mut cl = TcpMapClient::connect(addr, T).map_err(|e| e.to_string())?;
                let ids: Vec<u32> = (0..per).map(|i| (t * per + i + 1) as u32).collect();
                let msgs: Vec<Vec<u8>> = ids
                    .iter()
                    .map(|&id| {
                        AsapMessage::Registration {
                            pool_handle: pool_name(id as usize % pools).as_str().into(),
                            pe: pe(id),
                        }
                        .to_bytes()
                    })
                    .collect();
                let (mut sent, mut done, mut granted) = (0, 0, 0);
                while done < msgs.len() {
                    while sent < msgs.len() && sent - done < window {
                        cl.queue(11, &msgs[sent]).map_err(|e| e.to_string())?;
                        sent += 1;
                    }
                    cl.flush().map_err(|e| e.to_string())?;
                    let mut on = |p: u32, m: &[u8]| {
                        if is_type(p, m, 0x03) {
                            // R flag clear: granted.
                            (1, usize::from(m.get(1).is_some_and(|f| f & 1 == 0)))
                        } else {
                            (0, 0)
                        }
                    };
                    let (d, g) = cl.recv_with(T, &mut on).map_err(|e| e.to_string())?;
                    done += d;
                    granted += g;
                    while let Some((d, g)) = cl.try_recv_with(&mut on).map_err(|e| e.to_string())? {
                        done += d;
                        granted += g;
                    }
                }
                Ok((cl, granted))
            })
        })
        .collect();
    let mut granted = 0;
    let mut conns = Vec::new();
    for t in threads {
        let (cl, g) = t.join().map_err(|_| "load thread panicked")??;
        granted += g;
        conns.push(cl);
    }
    Ok((conns, granted, start.elapsed().as_secs_f64()))
}

/// Resolutions for `secs`: `window` outstanding per connection, and if `rate`
/// is given, sent on an open-loop schedule of `rate` per second in total.
/// Returns (answers, seconds, latencies in ns).
fn resolve_phase(
    addr: SocketAddr,
    a: &RegistrarBenchArgs,
    window: usize,
    rate: Option<f64>,
) -> Result<(u64, f64, Vec<u64>), String> {
    let c = a.connections.max(1);
    let secs = a.seconds;
    let items = a.items;
    let pools = a.pools.max(1);
    let start = Instant::now();
    let threads: Vec<_> = (0..c)
        .map(|t| {
            std::thread::spawn(move || -> Result<(u64, Vec<u64>), String> {
                let mut cl = TcpMapClient::connect(addr, T).map_err(|e| e.to_string())?;
                let reqs: Vec<Vec<u8>> = (0..pools)
                    .map(|p| {
                        AsapMessage::HandleResolution {
                            subscribe: false,
                            pool_handle: pool_name(p).as_str().into(),
                            items: Some(items),
                        }
                        .to_bytes()
                    })
                    .collect();
                let interval = rate.map(|r| Duration::from_secs_f64(c as f64 / r));
                let begin = Instant::now();
                let end = begin + Duration::from_secs_f64(secs);
                let mut next_send = begin;
                let mut inflight: VecDeque<Instant> = VecDeque::with_capacity(window);
                let mut lat = Vec::with_capacity(1 << 20);
                let (mut answers, mut k) = (0u64, t);
                loop {
                    let now = Instant::now();
                    let sending = now < end;
                    if sending {
                        let mut queued = false;
                        while inflight.len() < window {
                            let at = match interval {
                                Some(iv) => {
                                    if next_send > now {
                                        break;
                                    }
                                    let at = next_send;
                                    next_send += iv;
                                    at
                                }
                                None => now,
                            };
                            cl.queue(11, &reqs[k % reqs.len()])
                                .map_err(|e| e.to_string())?;
                            k += 1;
                            inflight.push_back(at);
                            queued = true;
                        }
                        if queued {
                            cl.flush().map_err(|e| e.to_string())?;
                        }
                    } else if inflight.is_empty() {
                        break;
                    }
                    let mut on = resolution_ok;
                    let got = match (interval, sending) {
                        // Paced: wait precisely until the next send is due or
                        // an answer arrives (a socket read timeout would be
                        // rounded up to the kernel tick and skew the schedule).
                        (Some(_), true) => {
                            // With the window full nothing can be sent: wait
                            // for answers however long they take.
                            let wait = if inflight.len() >= window {
                                T
                            } else {
                                next_send.saturating_duration_since(Instant::now())
                            };
                            let buffered = cl.try_recv_with(&mut on).map_err(|e| e.to_string())?;
                            match buffered {
                                Some(g) => Some(g),
                                None if wait.is_zero() => continue,
                                None => {
                                    if !cl.wait_readable(wait).map_err(|e| e.to_string())? {
                                        continue;
                                    }
                                    // Readable, but maybe only ACK chunks: read
                                    // what is there without blocking for more.
                                    cl.fill().map_err(|e| e.to_string())?;
                                    match cl.try_recv_with(&mut on).map_err(|e| e.to_string())? {
                                        Some(g) => Some(g),
                                        None => continue,
                                    }
                                }
                            }
                        }
                        _ => Some(cl.recv_with(T, &mut on).map_err(|e| e.to_string())?),
                    };
                    // Every answer retires one request; only positive ones count.
                    let mut n = u64::from(got.is_some());
                    let mut ok = u64::from(got == Some(true));
                    while let Some(g) = cl.try_recv_with(&mut on).map_err(|e| e.to_string())? {
                        n += 1;
                        ok += u64::from(g);
                    }
                    let now = Instant::now();
                    for _ in 0..n {
                        if let Some(sent) = inflight.pop_front() {
                            lat.push(now.duration_since(sent).as_nanos() as u64);
                        }
                    }
                    answers += ok;
                }
                Ok((answers, lat))
            })
        })
        .collect();
    let mut answers = 0;
    let mut lat = Vec::new();
    for t in threads {
        let (n, l) = t.join().map_err(|_| "load thread panicked")??;
        answers += n;
        lat.extend(l);
    }
    Ok((answers, start.elapsed().as_secs_f64(), lat))
}

fn report(name: &str, n: u64, secs: f64, lat: Vec<u64>) -> f64 {
    let rate = n as f64 / secs.max(1e-9);
    let (p50, p99, p999, max) = percentiles(lat);
    println!(
        "{name:<34} {n:>9} in {secs:6.2} s = {rate:>10.0}/s   latency ms p50 {p50:.3} p99 {p99:.3} p99.9 {p999:.3} max {max:.3}"
    );
    rate
}

/// `rserpool bench registrar`.
pub fn run(a: RegistrarBenchArgs) -> i32 {
    match bench(&a) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("rserpool bench registrar: {e}");
            1
        }
    }
}

fn bench(a: &RegistrarBenchArgs) -> Result<(), String> {
    let mut _local = None;
    let addr = match &a.registrar {
        Some(u) => {
            let u = EndpointUrl::parse(u).map_err(|e| e.to_string())?;
            if u.proto != Proto::Tcp {
                return Err("only tcp:// registrars can be benchmarked".into());
            }
            u.first()
        }
        None => {
            let mut opts = RegistrarOptions::default();
            opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
            opts.registrar = RegistrarConfig {
                resolution_rate: RateLimit::UNLIMITED,
                max_pes_per_connection: usize::MAX,
                max_pes_per_pool: usize::MAX,
                max_pes_total: usize::MAX,
                keep_alive_interval: Duration::ZERO,
                ..RegistrarConfig::default()
            };
            let h = RegistrarHandle::start(opts).map_err(|e| e.to_string())?;
            let addr = h.local_addrs()[0].1;
            _local = Some(h);
            addr
        }
    };
    println!(
        "registrar {addr}{}: {} connections, {} PEs in {} pools, {} items per resolution",
        if a.registrar.is_none() {
            " (in-process)"
        } else {
            ""
        },
        a.connections,
        a.pes,
        a.pools,
        a.items
    );
    let (_pe_conns, granted, secs) = register_all(addr, a)?;
    report(
        "registrations (pipelined)",
        granted as u64,
        secs,
        Vec::new(),
    );
    if granted < a.pes {
        println!("  note: only {granted} of {} registrations granted", a.pes);
    }
    let (n, s, l) = resolve_phase(addr, a, 1, None)?;
    report("resolutions, 1 outstanding/conn", n, s, l);
    let (n, s, l) = resolve_phase(addr, a, a.pipeline.max(1), None)?;
    let peak = report(
        &format!("resolutions, {} outstanding/conn", a.pipeline),
        n,
        s,
        l,
    );
    let (n, s, l) = resolve_phase(addr, a, a.pipeline.max(1), Some(peak / 2.0))?;
    report(
        &format!("resolutions at half peak ({:.0}/s)", peak / 2.0),
        n,
        s,
        l,
    );
    let (n, s, l) = resolve_phase(addr, a, a.pipeline.max(1), Some(a.rate))?;
    report(&format!("resolutions at {:.0}/s", a.rate), n, s, l);
    if let Some(h) = &_local {
        if let Some(st) = h.stats() {
            println!(
                "registrar counters: {} registrations, {} resolutions ({} failed), {} rate-limited",
                st.registrations, st.resolutions, st.resolution_failures, st.rate_limited
            );
        }
    }
    Ok(())
}
