//! `rserpool bench failover` and `rserpool bench throughput`: enhanced-mode
//! sessions measured. Figures, not tests: each prints what it saw.
//!
//! `failover`: a pool user streams numbered requests at a steady rate to a
//! pool of `rserpool pe --service echo` processes; the PE serving it is
//! SIGKILLed, restarted, and so on. Per kill it measures the gap between the
//! last reply from the killed PE and the first reply from the next one
//! (failure detection, selection, connect, cookie echo, re-sending), and at
//! the end counts messages sent, answered, lost and duplicated.
//!
//! `throughput`: echo through a session (registrar, PE and PU in this
//! process, the PE answering from its callback on its context's loop
//! thread) against a plain TCP echo (a `std::net::TcpStream` server thread)
//! with the same message size and count.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use rserpool::api::{
    Config, Context, Error, Notification, PeListenParams, PeNotification, Session, SessionOptions,
};
use rserpool::runtime::{EndpointUrl, RegistrarHandle, RegistrarOptions};
use rserpool::session::SessionConfig;
use rserpool::wire::Policy;

use crate::pe::PeProcess;
use crate::registrar::parse_duration;

/// Arguments of `rserpool bench failover`.
#[derive(clap::Args, Debug)]
pub struct FailoverBenchArgs {
    /// The registrar (tcp://HOST:PORT); default: one embedded in this process
    /// on 127.0.0.1.
    #[arg(long, value_name = "URL")]
    pub registrar: Option<String>,
    /// How many times the serving PE is killed.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub kills: u32,
    /// PEs in the pool (processes).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub pes: usize,
    /// Requests per second the pool user sends.
    #[arg(long, default_value_t = 5000, value_name = "N")]
    pub rate: u32,
    /// Bytes per request (at least 8: the sequence number).
    #[arg(long, default_value_t = 64, value_name = "BYTES")]
    pub size: usize,
    /// Streaming time between a fail-over and the next kill.
    #[arg(long, value_parser = parse_duration, default_value = "300ms", value_name = "DURATION")]
    pub interval: Duration,
    /// Without upper-layer acknowledgements: requests a killed PE never
    /// answered are not re-sent (they are lost).
    #[arg(long)]
    pub no_acks: bool,
    /// The pool handle.
    #[arg(long, default_value = "BenchFailover")]
    pub pool: String,
}

/// Arguments of `rserpool bench throughput`.
#[derive(clap::Args, Debug)]
pub struct ThroughputBenchArgs {
    /// Bytes per message.
    #[arg(long, default_value_t = 1024, value_name = "BYTES")]
    pub size: usize,
    /// Messages echoed in each run.
    #[arg(long, default_value_t = 200_000, value_name = "N")]
    pub count: u64,
    /// Sessions without upper-layer acknowledgements.
    #[arg(long)]
    pub no_acks: bool,
    /// Runs of each (alternating, so both see the same machine load); the
    /// medians are compared.
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub runs: u32,
}

/// Hang guard for waits.
const T: Duration = Duration::from_secs(20);

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("rserpool bench: {msg}");
    1
}

fn embedded_registrar() -> Result<RegistrarHandle, String> {
    let mut opts = RegistrarOptions::default();
    opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").map_err(|e| e.0)?];
    RegistrarHandle::start(opts).map_err(|e| format!("starting a registrar: {e}"))
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn percentiles(v: &[f64]) -> String {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms  max {:.3} ms  (n={})",
        pct(&s, 50.0),
        pct(&s, 90.0),
        pct(&s, 99.0),
        pct(&s, 100.0),
        s.len()
    )
}

/// What the receiving thread saw.
#[derive(Default)]
struct Track {
    /// Replies per sequence number.
    answered: Vec<u8>,
    replies: u64,
    last_reply: Option<Instant>,
    /// Fail-overs seen, and whether the first reply after the latest one is
    /// still awaited (with the last reply before it).
    failovers: u64,
    awaiting: Option<Option<Instant>>,
    resent: u64,
    /// Per fail-over: (gap ms, time of the first reply from the new PE).
    gaps: Vec<(f64, Instant)>,
    error: Option<String>,
    closed: bool,
}

/// `rserpool bench failover`.
pub fn failover(a: FailoverBenchArgs) -> i32 {
    if a.pes < 2 || a.size < 8 || a.rate == 0 || a.kills == 0 {
        eprintln!(
            "rserpool bench failover: need --pes >= 2, --size >= 8, --rate >= 1, --kills >= 1"
        );
        return 2;
    }
    let reg = match &a.registrar {
        Some(_) => None,
        None => match embedded_registrar() {
            Ok(r) => Some(r),
            Err(e) => return fail(e),
        },
    };
    let url = match (&a.registrar, &reg) {
        (Some(u), _) => u.clone(),
        (None, Some(r)) => r.local_urls()[0].clone(),
        (None, None) => unreachable!(),
    };
    let code = run_failover(&a, &url);
    if let Some(r) = reg {
        let _ = r.stop();
    }
    code
}

fn run_failover(a: &FailoverBenchArgs, url: &str) -> i32 {
    let pe_args: Vec<String> = ["--registrar", url, "--pool", &a.pool, "--service", "echo"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut pes = Vec::new();
    for _ in 0..a.pes {
        match PeProcess::start(&pe_args, T) {
            Ok(p) => pes.push(p),
            Err(e) => return fail(e),
        }
    }
    let mut cfg = Config::default();
    if let Err(e) = cfg.add_registrar(url) {
        return fail(e);
    }
    cfg.shutdown_timeout = Duration::from_millis(500);
    let ctx = match Context::new(cfg) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let config = SessionConfig {
        upper_layer_acks: !a.no_acks,
        max_buffered: 1 << 16,
        ..SessionConfig::default()
    };
    let s = match ctx.open_session(
        a.pool.as_bytes(),
        SessionOptions {
            config,
            wait_connected: Some(T),
            ..Default::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => return fail(format!("opening a session to {}: {e}", a.pool)),
    };
    println!(
        "bench failover: {} PEs (rserpool pe processes), {} kills, {} requests/s of {} bytes, acks {}",
        a.pes,
        a.kills,
        a.rate,
        a.size,
        if a.no_acks { "off" } else { "on" }
    );
    let track = Arc::new((Mutex::new(Track::default()), Condvar::new()));
    let receiver = {
        let (s, track) = (s.clone(), track.clone());
        std::thread::spawn(move || receive(&s, &track))
    };
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sender = {
        let (s, stop, sent) = (s.clone(), stop.clone(), sent.clone());
        let (rate, size) = (a.rate, a.size);
        std::thread::spawn(move || stream(&s, &stop, &sent, rate, size))
    };
    let mut kill_to_first = Vec::new();
    let mut error = None;
    for k in 0..a.kills {
        // Stream for a while on the current PE.
        std::thread::sleep(a.interval);
        let Some(on) = s.current_pe().map(|p| p.pe_id) else {
            error = Some(format!("kill {k}: the session has no PE"));
            break;
        };
        let Some(i) = pes.iter().position(|p| p.pe_id == on) else {
            error = Some(format!("kill {k}: PE 0x{on:08x} is not one of ours"));
            break;
        };
        let before = track.0.lock().gaps.len();
        let killed_at = Instant::now();
        pes[i].kill();
        // Wait for the first reply from the next PE.
        let first = {
            let (m, cv) = &*track;
            let mut t = m.lock();
            let deadline = Instant::now() + T;
            while t.gaps.len() == before && t.error.is_none() {
                if cv.wait_until(&mut t, deadline).timed_out() {
                    break;
                }
            }
            t.gaps.get(before).map(|g| g.1)
        };
        match first {
            Some(at) => kill_to_first.push(at.duration_since(killed_at).as_secs_f64() * 1e3),
            None => {
                error = Some(format!(
                    "kill {k}: no reply from another PE within {} s",
                    T.as_secs()
                ));
                break;
            }
        }
        // Restart it: the pool is back to full size for the next kill.
        match PeProcess::start(&pe_args, T) {
            Ok(p) => pes[i] = p,
            Err(e) => {
                error = Some(e);
                break;
            }
        }
    }
    stop.store(true, Ordering::Release);
    let _ = sender.join();
    let sent = sent.load(Ordering::Acquire);
    // Let the last replies come in (without acks, lost ones never do).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = track.0.lock();
        let unique = t.answered.iter().filter(|&&c| c > 0).count() as u64;
        let quiet = t
            .last_reply
            .is_some_and(|l| l.elapsed() > Duration::from_millis(500));
        if unique >= sent || Instant::now() > deadline || (a.no_acks && quiet) {
            break;
        }
        drop(t);
        std::thread::sleep(Duration::from_millis(10));
    }
    s.close();
    let _ = receiver.join();
    let t = track.0.lock();
    let gaps: Vec<f64> = t.gaps.iter().map(|g| g.0).collect();
    let unique = t.answered.iter().filter(|&&c| c > 0).count() as u64;
    let dups: u64 = t
        .answered
        .iter()
        .map(|&c| u64::from(c.saturating_sub(1)))
        .sum();
    println!(
        "failover gap (last reply from the killed PE to the first from the next): {}",
        percentiles(&gaps)
    );
    println!(
        "kill to first reply from the next PE:                                    {}",
        percentiles(&kill_to_first)
    );
    println!(
        "messages sent {sent} answered {unique} lost {} duplicated {dups} re-sent {} (fail-overs {})",
        sent.saturating_sub(unique),
        t.resent,
        t.failovers
    );
    drop(t);
    drop(s);
    drop(ctx);
    for p in &mut pes {
        p.terminate(Duration::from_secs(2));
    }
    match error {
        Some(e) => fail(e),
        None => 0,
    }
}

/// Send numbered requests at `rate` per second until `stop`.
fn stream(s: &Session, stop: &AtomicBool, sent: &AtomicU64, rate: u32, size: usize) {
    let period = Duration::from_secs_f64(1.0 / f64::from(rate));
    let mut msg = vec![0u8; size];
    let start = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        let due = start + period * u32::try_from(seq).unwrap_or(u32::MAX);
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        msg[..8].copy_from_slice(&seq.to_be_bytes());
        match s.send(&msg, 0, 0) {
            Ok(_) => {
                seq += 1;
                sent.store(seq, Ordering::Release);
            }
            Err(Error::BufferFull) => std::thread::sleep(Duration::from_millis(1)),
            Err(_) => return,
        }
    }
}

/// Track replies and fail-overs until the session closes.
fn receive(s: &Session, track: &(Mutex<Track>, Condvar)) {
    let (m, cv) = track;
    loop {
        let n = s.recv(Some(Duration::from_millis(100)));
        let now = Instant::now();
        let mut t = m.lock();
        match n {
            Ok(Notification::Data { bytes, .. }) => {
                let Some(seq) = bytes
                    .get(..8)
                    .map(|b| u64::from_be_bytes(b.try_into().expect("8 bytes")))
                else {
                    continue;
                };
                let i = usize::try_from(seq).unwrap_or(usize::MAX);
                if i >= t.answered.len() {
                    t.answered.resize(i.saturating_add(1).max(1024), 0);
                }
                t.answered[i] = t.answered[i].saturating_add(1);
                t.replies += 1;
                if let Some(last) = t.awaiting.take() {
                    let gap = last.map_or(f64::NAN, |l| now.duration_since(l).as_secs_f64() * 1e3);
                    t.gaps.push((gap, now));
                    cv.notify_all();
                }
                t.last_reply = Some(now);
            }
            Ok(Notification::Failover { resent, .. }) => {
                t.failovers += 1;
                t.resent += resent.len() as u64;
                t.awaiting = Some(t.last_reply);
            }
            Ok(Notification::Failed(e)) => {
                t.error = Some(e.to_string());
                cv.notify_all();
            }
            Ok(Notification::Closed) | Err(Error::SessionClosed) => {
                t.closed = true;
                cv.notify_all();
                return;
            }
            Ok(_) | Err(Error::Timeout) => {}
            Err(e) => {
                t.error = Some(e.to_string());
                cv.notify_all();
                return;
            }
        }
    }
}

/// `rserpool bench throughput`.
pub fn throughput(a: ThroughputBenchArgs) -> i32 {
    if a.size == 0 || a.size > rserpool::session::MAX_MESSAGE_LEN || a.count == 0 || a.runs == 0 {
        eprintln!(
            "rserpool bench throughput: need 1 <= --size <= {}, --count >= 1 and --runs >= 1",
            rserpool::session::MAX_MESSAGE_LEN
        );
        return 2;
    }
    println!(
        "bench throughput: {} echo messages of {} bytes, acks {}, {} run{} of each (alternating)",
        a.count,
        a.size,
        if a.no_acks { "off" } else { "on" },
        a.runs,
        if a.runs == 1 { "" } else { "s" }
    );
    let (mut tcp, mut sess) = (Vec::new(), Vec::new());
    let (mut tcp_cpu, mut sess_cpu) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        let c0 = process_cpu_split();
        match plain_tcp(a.size, a.count) {
            Ok(d) => tcp.push(d),
            Err(e) => return fail(format!("plain TCP: {e}")),
        }
        report("plain TCP", a.count, a.size, tcp[tcp.len() - 1]);
        tcp_cpu.push(report_cpu(a.count, c0));
        let c0 = process_cpu_split();
        match session_echo(a.size, a.count, !a.no_acks) {
            Ok(d) => sess.push(d),
            Err(e) => return fail(format!("session: {e}")),
        }
        report("session", a.count, a.size, sess[sess.len() - 1]);
        sess_cpu.push(report_cpu(a.count, c0));
    }
    tcp_cpu.sort();
    sess_cpu.sort();
    tcp.sort();
    sess.sort();
    let (t, s) = (tcp[tcp.len() / 2], sess[sess.len() / 2]);
    if a.runs > 1 {
        println!("median:");
        report("plain TCP", a.count, a.size, t);
        report("session", a.count, a.size, s);
        println!(
            "CPU (all threads of this process, median): plain TCP {:.2} us/msg, session {:.2} us/msg",
            per_msg_us(tcp_cpu[tcp_cpu.len() / 2], a.count),
            per_msg_us(sess_cpu[sess_cpu.len() / 2], a.count)
        );
        println!("best (least disturbed by other load):");
        report("plain TCP", a.count, a.size, tcp[0]);
        report("session", a.count, a.size, sess[0]);
        println!(
            "ratio session/plain TCP {:.2} (medians), {:.2} (best)",
            t.as_secs_f64() / s.as_secs_f64(),
            tcp[0].as_secs_f64() / sess[0].as_secs_f64()
        );
    } else {
        println!(
            "ratio session/plain TCP {:.2}",
            t.as_secs_f64() / s.as_secs_f64()
        );
    }
    0
}

fn report(what: &str, count: u64, size: usize, d: Duration) {
    let secs = d.as_secs_f64();
    println!(
        "{what:<10} {:>12.0} msgs/s {:>9.1} MB/s  ({secs:.3} s)",
        count as f64 / secs,
        count as f64 * size as f64 / secs / 1e6
    );
}

/// CPU time of all this process's threads so far: (user, system).
fn process_cpu_split() -> (Duration, Duration) {
    // SAFETY: getrusage(2) fills the zeroed struct we own; on failure it
    // stays zero.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec.max(0) as u64) + Duration::from_micros(t.tv_usec.max(0) as u64)
    };
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

fn per_msg_us(cpu: Duration, count: u64) -> f64 {
    cpu.as_secs_f64() * 1e6 / count as f64
}

/// Print the CPU time used since `since` (all threads: user + system) and
/// return it.
fn report_cpu(count: u64, since: (Duration, Duration)) -> Duration {
    let (u, s) = process_cpu_split();
    let (u, s) = (u.saturating_sub(since.0), s.saturating_sub(since.1));
    println!(
        "{:<10} CPU {:.3} s ({:.3} user, {:.3} system), {:.2} us/msg",
        "",
        (u + s).as_secs_f64(),
        u.as_secs_f64(),
        s.as_secs_f64(),
        per_msg_us(u + s, count)
    );
    u + s
}

/// Echo `count` messages of `size` bytes through a plain TCP connection: a
/// server thread writes back what it reads; the client writes each message
/// with one call and reads everything back.
fn plain_tcp(size: usize, count: u64) -> std::io::Result<Duration> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut c, _) = l.accept()?;
        c.set_nodelay(true)?;
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = c.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            c.write_all(&buf[..n])?;
        }
    });
    let c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut w = c.try_clone()?;
    let mut r = c;
    let start = Instant::now();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        let msg = vec![0x5au8; size];
        for _ in 0..count {
            w.write_all(&msg)?;
        }
        Ok(())
    });
    let want = size as u64 * count;
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 << 10];
    while got < want {
        let n = r.read(&mut buf)?;
        if n == 0 {
            return Err(std::io::Error::other("the echo server closed early"));
        }
        got += n as u64;
    }
    let d = start.elapsed();
    writer
        .join()
        .map_err(|_| std::io::Error::other("writer"))??;
    r.shutdown(std::net::Shutdown::Both)?;
    let _ = server.join();
    Ok(d)
}

/// Echo `count` messages of `size` bytes through a session.
fn session_echo(size: usize, count: u64, acks: bool) -> Result<Duration, String> {
    let reg = embedded_registrar()?;
    let url = reg.local_urls()[0].clone();
    let config = || -> Result<Config, String> {
        let mut c = Config::default();
        c.add_registrar(&url).map_err(|e| e.to_string())?;
        c.shutdown_timeout = Duration::from_millis(500);
        Ok(c)
    };
    let pe_ctx = Context::new(config()?).map_err(|e| e.to_string())?;
    let server = pe_ctx
        .pe_listen(PeListenParams::new(
            "throughput",
            EndpointUrl::parse("tcp://127.0.0.1:0").map_err(|e| e.0)?,
            Policy::RoundRobin,
        ))
        .map_err(|e| format!("PE: {e}"))?;
    // Echo from the callback, on the PE context's loop thread.
    server.set_callback(Some(Box::new(|h, n| {
        if let PeNotification::Data { ppid, bytes, .. } = n {
            let _ = h.send(&bytes, ppid);
        }
    })));
    let pu_ctx = Context::new(config()?).map_err(|e| e.to_string())?;
    let s = pu_ctx
        .open_session(
            b"throughput",
            SessionOptions {
                config: SessionConfig {
                    upper_layer_acks: acks,
                    ..SessionConfig::default()
                },
                wait_connected: Some(T),
                ..Default::default()
            },
        )
        .map_err(|e| format!("PU: {e}"))?;
    let accepted = server.accept(Some(T)).map_err(|e| format!("accept: {e}"))?;
    let start = Instant::now();
    let writer = {
        let s = s.clone();
        std::thread::spawn(move || -> Result<(), Error> {
            let msg = vec![0x5au8; size];
            let mut i = 0;
            while i < count {
                match s.send(&msg, 0, 0) {
                    Ok(_) => i += 1,
                    Err(Error::BufferFull) => std::thread::sleep(Duration::from_micros(50)),
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })
    };
    let mut got = 0u64;
    while got < count {
        match s.recv(Some(T)) {
            Ok(Notification::Data { bytes, .. }) => {
                if bytes.len() != size {
                    return Err(format!("a reply of {} bytes", bytes.len()));
                }
                got += 1;
            }
            Ok(Notification::Connected { .. }) => {}
            Ok(other) => return Err(format!("unexpected {other:?}")),
            Err(e) => return Err(format!("after {got} replies: {e}")),
        }
    }
    let d = start.elapsed();
    writer
        .join()
        .map_err(|_| "writer panicked".to_string())?
        .map_err(|e| e.to_string())?;
    s.close();
    drop(accepted);
    drop(server);
    drop(pu_ctx);
    drop(pe_ctx);
    let _ = reg.stop();
    Ok(d)
}
