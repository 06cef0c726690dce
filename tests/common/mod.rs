//! Helpers for tests that run `rserpool registrar` as a child process.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use rserpool::runtime::blocking::TcpMapClient;
use rserpool::wire::{AsapMessage, ErrorCause, Policy, PoolElement, PoolHandle, Transport};

/// Generous: these tests must pass on a loaded 2-core machine.
pub const T: Duration = Duration::from_secs(20);

/// Every thread of process `pid` is stopped (SIGSTOP took effect: kill(2)
/// only queues it).
pub fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|st| {
                // "pid (comm) S ...": the state follows the last ')'.
                let rest = &st[st.rfind(')')? + 1..];
                rest.split_whitespace().next().map(|s| s == "T" || s == "t")
            })
            .unwrap_or(false)
    })
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_rserpool")
}

/// A `rserpool registrar` child, killed on drop.
pub struct Proc {
    pub child: Child,
    pub url: String,
    pub addr: SocketAddr,
    pub server_id: u32,
    /// The first "listening enrp" endpoint, when --enrp was given.
    pub enrp: Option<String>,
    stderr: Option<std::thread::JoinHandle<String>>,
}

impl Proc {
    /// Start a registrar on an ephemeral loopback port with extra flags, and wait
    /// for its "listening asap" line.
    pub fn start(extra: &[&str]) -> Proc {
        Proc::start_at("tcp://127.0.0.1:0", extra)
    }

    /// Like [`Proc::start`] with the ASAP endpoint `asap` (e.g. a restarted
    /// registrar at the port its predecessor had).
    pub fn start_at(asap: &str, extra: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(["registrar", "--asap", asap])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rserpool registrar");
        let stdout = child.stdout.take().unwrap();
        let mut stderr = child.stderr.take().unwrap();
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server_id = 0;
        let mut enrp = None;
        let deadline = Instant::now() + T;
        let url = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(h) = line.strip_prefix("server id 0x") {
                        server_id = u32::from_str_radix(h.trim(), 16).unwrap();
                    }
                    if let Some(u) = line.strip_prefix("listening enrp ") {
                        enrp.get_or_insert_with(|| u.trim().to_string());
                    }
                    if let Some(u) = line.strip_prefix("listening asap ") {
                        break u.trim().to_string();
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "registrar did not start: {}",
                        err_thread.join().unwrap_or_default()
                    );
                }
            }
        };
        let addr: SocketAddr = url.strip_prefix("tcp://").unwrap().parse().unwrap();
        Proc {
            child,
            url,
            addr,
            server_id,
            enrp,
            stderr: Some(err_thread),
        }
    }

    pub fn client(&self) -> TcpMapClient {
        TcpMapClient::connect(self.addr, T).expect("connect to the registrar")
    }

    /// True while the process runs.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send a signal and wait for the exit status (None on timeout).
    pub fn signal_and_wait(&mut self, sig: i32) -> Option<std::process::ExitStatus> {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with our own child's pid (not yet reaped, so the pid
        // can't have been reused) and a plain signal number.
        unsafe { libc::kill(pid, sig) };
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    /// What the registrar wrote on stderr (after it exited).
    pub fn stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn tcp(port: u16) -> Transport {
    Transport::Tcp {
        port,
        transport_use: 0,
        addr: IpAddr::V4(Ipv4Addr::LOCALHOST),
    }
}

pub fn pe(id: u32, port: u16, policy: Policy, reg_life: i32) -> PoolElement {
    PoolElement {
        id,
        home: 0,
        reg_life,
        user_transport: tcp(port),
        policy,
        asap_transport: None,
    }
}

pub fn reg(pool: &str, pe: PoolElement) -> AsapMessage {
    AsapMessage::Registration {
        pool_handle: pool.into(),
        pe,
    }
}

pub fn resolve(pool: &str, items: Option<u32>) -> AsapMessage {
    AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: pool.into(),
        items,
    }
}

/// Send a request and wait for the first answer of the expected kind, skipping
/// keep-alives (answering them) and other unsolicited messages.
pub fn ask(c: &mut TcpMapClient, m: &AsapMessage, want: fn(&AsapMessage) -> bool) -> AsapMessage {
    c.send_asap(m).expect("send");
    next(c, want)
}

pub fn next(c: &mut TcpMapClient, want: fn(&AsapMessage) -> bool) -> AsapMessage {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let got = c.recv_asap(left).expect("answer from the registrar");
        if want(&got) {
            return got;
        }
        answer_keep_alive(c, &got);
    }
}

/// Reply to a keep-alive as a live PE would (with the PE id if given).
pub fn answer_keep_alive(c: &mut TcpMapClient, m: &AsapMessage) {
    if let AsapMessage::EndpointKeepAlive {
        pool_handle,
        pe_id: Some(id),
        ..
    } = m
    {
        let _ = c.send_asap(&AsapMessage::EndpointKeepAliveAck {
            pool_handle: pool_handle.clone(),
            pe_id: *id,
        });
    }
}

pub fn is_reg_resp(m: &AsapMessage) -> bool {
    matches!(m, AsapMessage::RegistrationResponse { .. })
}

pub fn is_dereg_resp(m: &AsapMessage) -> bool {
    matches!(m, AsapMessage::DeregistrationResponse { .. })
}

pub fn is_resolution(m: &AsapMessage) -> bool {
    matches!(m, AsapMessage::HandleResolutionResponse { .. })
}

/// Register and return the response.
pub fn register(c: &mut TcpMapClient, pool: &str, pe: PoolElement) -> AsapMessage {
    ask(c, &reg(pool, pe), is_reg_resp)
}

pub fn granted(m: &AsapMessage, id: u32) {
    match m {
        AsapMessage::RegistrationResponse {
            reject: false,
            pe_id,
            error: None,
            ..
        } if *pe_id == id => {}
        other => panic!("expected PE {id} granted, got {other:?}"),
    }
}

pub fn rejected(m: &AsapMessage) -> ErrorCause {
    match m {
        AsapMessage::RegistrationResponse {
            reject: true,
            error: Some(e),
            ..
        } if !e.is_empty() => e[0].clone(),
        other => panic!("expected a rejection, got {other:?}"),
    }
}

/// The PE ids a resolution returns, or the error cause code.
pub fn resolved(c: &mut TcpMapClient, pool: &str) -> Result<Vec<u32>, u16> {
    match ask(c, &resolve(pool, Some(1000)), is_resolution) {
        AsapMessage::HandleResolutionResponse {
            elements, error, ..
        } => match error {
            Some(e) if !e.is_empty() => Err(e[0].code),
            _ => {
                let mut ids: Vec<u32> = elements.iter().map(|p| p.id).collect();
                ids.sort_unstable();
                Ok(ids)
            }
        },
        _ => unreachable!(),
    }
}

/// Poll `f` until it holds (panics after `T`). Sleeps only between polls.
pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Run the CLI and capture (exit code, stdout, stderr).
pub fn cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run rserpool");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn handle(s: &str) -> PoolHandle {
    s.into()
}

/// The directory holding the `librserpool.so` and `librserpool.a` that cargo built
/// for this test run.
///
/// `cargo test` leaves them in `target/<profile>/deps/` (only `cargo build` copies
/// them up to `target/<profile>/`), so that directory comes first: it is always
/// the library of the sources under test, never a stale earlier build.
pub fn lib_dir() -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_rserpool"));
    let profile = bin.parent().expect("binary has a directory").to_path_buf();
    let has_libs =
        |d: &PathBuf| d.join("librserpool.so").exists() && d.join("librserpool.a").exists();
    let deps = profile.join("deps");
    if has_libs(&deps) {
        return deps;
    }
    assert!(
        has_libs(&profile),
        "librserpool.so/.a not found in {} or {}",
        deps.display(),
        profile.display()
    );
    profile
}

/// `rserpool dump --json` of a registrar, parsed.
pub fn dump_json(url: &str) -> serde_json::Value {
    let (code, out, err) = cli(&["dump", "--registrar", url, "--json", "--timeout", "20"]);
    assert_eq!(code, 0, "dump failed: {err}");
    serde_json::from_str(&out).expect("dump prints JSON")
}

/// The registrar's ENRP status (server id, own checksum, PE count, start-up
/// state, peers) through the private status request `rserpool dump` uses.
pub fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    use rserpool::runtime::registrar::{STATUS_REQUEST, STATUS_RESPONSE};
    let mut c = TcpMapClient::connect(addr, T).ok()?;
    c.send(rserpool::registrar::PPID_ENRP, &[STATUS_REQUEST, 0, 0, 4])
        .ok()?;
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (_, m) = c.recv(left).ok()?;
        if m.first() == Some(&STATUS_RESPONSE) && m.len() >= 4 {
            return serde_json::from_slice(&m[4..]).ok();
        }
    }
}

/// Register PEs `ids` in `pool` at `addr`, pipelined over `conns` connections
/// (each gets a contiguous share), and return the connections (the PEs live as
/// long as they stay open, unless the registrar keeps them). Panics on any
/// rejection.
pub fn register_many(
    addr: SocketAddr,
    pool: &str,
    ids: std::ops::Range<u32>,
    conns: usize,
    reg_life: i32,
) -> Vec<TcpMapClient> {
    let n = ids.len();
    let per = n.div_ceil(conns.max(1)).max(1);
    let all: Vec<u32> = ids.collect();
    let mut out = Vec::new();
    let handles: Vec<_> = all
        .chunks(per)
        .map(|chunk| {
            let chunk = chunk.to_vec();
            let pool = pool.to_string();
            std::thread::spawn(move || {
                let mut c = TcpMapClient::connect(addr, T).expect("connect");
                for (i, &id) in chunk.iter().enumerate() {
                    let m = reg(
                        &pool,
                        pe(id, 1024 + (id % 60000) as u16, Policy::RoundRobin, reg_life),
                    );
                    c.queue(rserpool::registrar::PPID_ASAP, &m.to_bytes())
                        .expect("queue");
                    if i % 256 == 255 {
                        c.flush().expect("send");
                    }
                }
                c.flush().expect("send");
                let mut got = 0;
                while got < chunk.len() {
                    let m = next(&mut c, is_reg_resp);
                    if let AsapMessage::RegistrationResponse { reject: true, .. } = m {
                        panic!("registration rejected: {m:?}");
                    }
                    got += 1;
                }
                c
            })
        })
        .collect();
    for h in handles {
        out.push(h.join().expect("registering thread"));
    }
    out
}
