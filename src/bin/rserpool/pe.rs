//! `rserpool pe`: a pool element serving echo, discard, daytime, chargen,
//! RSPLIB's ping-pong or files over enhanced-mode sessions (like RSPLIB's
//! `rspserver`); the registrar flags shared with `rserpool pu`
//! ([`ClientArgs`]); and [`PeProcess`], a `rserpool pe` child process for
//! `demo` and `bench failover`.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use rserpool::api::{
    Config, Context, Error, PeListenParams, PeNotification, PeServer, PeSessionHandle,
};
use rserpool::asap::{ClientConfig, RegLifeUnit, T4Rule};
use rserpool::runtime::{EndpointUrl, SignalPipe};
use rserpool::wire::Policy;

use crate::registrar::{parse_duration, parse_u32, LifeUnit, Profile};
use crate::services::{self as svc, FileRequest, FileResponse};

/// How a pool element or pool user reaches its registrars, and the ASAP
/// timers (flags shared by `rserpool pe` and `rserpool pu`).
#[derive(clap::Args, Debug, Clone)]
pub struct ClientArgs {
    /// A registrar: tcp://HOST:PORT (TCP mapping) or sctp://HOST[,HOST]:PORT
    /// (repeatable; the others are tried when one fails).
    #[arg(
        long = "registrar",
        value_name = "URL",
        default_value = "tcp://127.0.0.1:3863"
    )]
    pub registrars: Vec<String>,
    /// Timer preset: RFC 5352 values, or RSPLIB's (Registration Life in
    /// milliseconds, 3 s request timeouts, re-registration every third of
    /// the life).
    #[arg(long, value_enum, default_value_t = Profile::Rfc)]
    pub profile: Profile,
    /// Unit of the Registration Life field: s (RFC) or ms (RSPLIB's
    /// registrar). Default: the profile's (rfc: s, rsplib: ms).
    #[arg(long, value_enum)]
    pub reglife_unit: Option<LifeUnit>,
    /// T1: how long a handle resolution waits for its answer before it is
    /// re-sent. Default: the profile's (rfc 15s, rsplib 3s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub request_timeout: Option<Duration>,
    /// T2: how long a registration waits for its answer. Default: the
    /// profile's (rfc 30s, rsplib 3s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub registration_timeout: Option<Duration>,
    /// T4: re-register this often. Default: from the Registration Life
    /// (rfc: 20 s before it ends, at most 10 min; rsplib: a third of it).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub reregistration_interval: Option<Duration>,
    /// T5: first round of a registrar hunt (connect timeout). Default: the
    /// profile's (rfc 10s, rsplib 7.5s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub hunt_timeout: Option<Duration>,
    /// Age after which a cached handle resolution is asked for again
    /// (default 1s; 0 = always ask).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub stale_cache: Option<Duration>,
    /// TCP mapping: send a HEARTBEAT on a connection (to registrars, and a
    /// session's both ways) silent for this long (default 30s).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub heartbeat_interval: Option<Duration>,
    /// TCP mapping: close a connection after this many HEARTBEATs in a row
    /// go unanswered; for a pool user, a hung PE: fail over (default 3).
    #[arg(long, value_name = "N")]
    pub heartbeat_max_missed: Option<u32>,
}

impl ClientArgs {
    /// The context configuration.
    pub fn config(&self) -> Result<Config, String> {
        let mut c = Config {
            client: match self.profile {
                Profile::Rfc => ClientConfig::default(),
                Profile::Rsplib => ClientConfig::rsplib_profile(),
            },
            ..Config::default()
        };
        if let Some(u) = self.reglife_unit {
            c.client.reg_life_unit = match u {
                LifeUnit::S => RegLifeUnit::Seconds,
                LifeUnit::Ms => RegLifeUnit::Millis,
            };
        }
        if let Some(d) = self.request_timeout {
            c.client.t1_request = d.max(Duration::from_millis(1));
        }
        if let Some(d) = self.registration_timeout {
            c.client.t2_registration = d.max(Duration::from_millis(1));
            c.client.t3_deregistration = c.client.t2_registration;
        }
        if let Some(d) = self.reregistration_interval {
            c.client.t4_reregistration = T4Rule::Fixed(d.max(Duration::from_millis(1)));
        }
        if let Some(d) = self.hunt_timeout {
            c.client.t5_server_hunt = d.max(Duration::from_millis(1));
        }
        if let Some(d) = self.stale_cache {
            c.client.stale_cache = d;
        }
        if let Some(d) = self.heartbeat_interval {
            c.heartbeat_interval = d;
        }
        if let Some(n) = self.heartbeat_max_missed {
            c.heartbeat_max_missed = n.max(1);
        }
        for r in &self.registrars {
            c.add_registrar(r)
                .map_err(|e| format!("--registrar {r}: {e}"))?;
        }
        Ok(c)
    }

    /// The Registration Life unit in force.
    pub fn unit(&self) -> RegLifeUnit {
        match (self.reglife_unit, self.profile) {
            (Some(LifeUnit::S), _) => RegLifeUnit::Seconds,
            (Some(LifeUnit::Ms), _) => RegLifeUnit::Millis,
            (None, Profile::Rfc) => RegLifeUnit::Seconds,
            (None, Profile::Rsplib) => RegLifeUnit::Millis,
        }
    }
}

/// What the PE serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// Every message back to its sender (RFC 862).
    Echo,
    /// Every message taken and dropped (RFC 863).
    Discard,
    /// The time of day when a session starts and in answer to every message
    /// (RFC 867).
    Daytime,
    /// RFC 864 lines, one per message, for as long as the session lasts
    /// (paced by the pool user's acknowledgements).
    Chargen,
    /// RSPLIB's ping-pong (PPID 33, cookies with the reply number).
    PingPong,
    /// Files of this directory (the applicability statement's fail-over
    /// example; see `rserpool pe --help`).
    Files(PathBuf),
}

impl Service {
    /// The name cookies and messages use.
    pub fn name(&self) -> &'static str {
        match self {
            Service::Echo => "echo",
            Service::Discard => "discard",
            Service::Daytime => "daytime",
            Service::Chargen => "chargen",
            Service::PingPong => "pingpong",
            Service::Files(_) => "files",
        }
    }
}

fn parse_service(s: &str) -> Result<Service, String> {
    Ok(match s {
        "echo" => Service::Echo,
        "discard" => Service::Discard,
        "daytime" => Service::Daytime,
        "chargen" => Service::Chargen,
        "pingpong" => Service::PingPong,
        _ => match s.strip_prefix("files=") {
            Some(d) if !d.is_empty() => {
                let p = PathBuf::from(d);
                if !p.is_dir() {
                    return Err(format!("{d:?} is not a directory"));
                }
                Service::Files(p)
            }
            _ => {
                return Err(format!(
                    "{s:?}: expected echo, discard, daytime, chargen, pingpong or files=DIR"
                ))
            }
        },
    })
}

fn parse_policy(s: &str) -> Result<Policy, String> {
    s.parse()
}

/// Arguments of `rserpool pe`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = PE_HELP)]
pub struct PeArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pool handle to register under.
    #[arg(long)]
    pub pool: String,
    /// echo, discard, daytime, chargen, pingpong, or files=DIR.
    #[arg(long, value_parser = parse_service, value_name = "SERVICE")]
    pub service: Service,
    /// Where pool users connect: tcp://ADDR:PORT (TCP mapping) or
    /// sctp://ADDR[,ADDR]:PORT; port 0 takes one from the kernel. The
    /// addresses must be concrete: they are what the PE registers.
    #[arg(long, default_value = "tcp://127.0.0.1:0", value_name = "URL")]
    pub listen: String,
    /// Selection policy and its values: rr, wrr:WEIGHT, rand, wrand:WEIGHT,
    /// prio:PRIORITY, lu:LOAD, lud:LOAD:DEGRADATION, plu:LOAD:DEGRADATION,
    /// rlu:LOAD, or 0xTYPE[:HEXDATA]; loads as numbers or percentages
    /// (lu:25%).
    #[arg(long, default_value = "rr", value_parser = parse_policy, value_name = "SPEC")]
    pub policy: Policy,
    /// Send a cookie after each reply carrying the session's state, and
    /// continue from the state of a cookie echo (after a fail-over).
    #[arg(long)]
    pub cookies: bool,
    /// Registration Life in --reglife-unit (-1: infinite). Default 60 s
    /// (60, or 60000 in ms).
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    pub reglife: Option<i32>,
    /// A fixed PE identifier (decimal or 0x hex). Default: random.
    #[arg(long, value_parser = parse_u32, value_name = "ID")]
    pub pe_id: Option<u32>,
    /// Wait this long before each reply (files: before each portion of a
    /// file): simulated work. A PE killed while it works on a message leaves
    /// it unacknowledged, and the pool user re-sends it to the next PE.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub delay: Option<Duration>,
    /// Print a line for every message.
    #[arg(long)]
    pub verbose: bool,
}

const PE_HELP: &str = "\
Prints `pe id 0xID pool POOL listening URL service SERVICE policy SPEC` once
registered; a line per session and per cookie echo; deregisters and exits 0
on SIGINT/SIGTERM.

Services (messages on any PPID, answered on the same PPID):
  echo      every message back (RFC 862)
  discard   nothing back (RFC 863)
  daytime   the time of day when a session starts and for every message (RFC 867)
  chargen   RFC 864 lines, one per message, until the session ends
  pingpong  RSPLIB's ping-pong (PPID 33): a Pong per Ping, the reply number in a cookie
  files=DIR the files under DIR:
            request  = offset u64 | file name (UTF-8, the rest)
            response = offset u64 | length u32 | total u64 | data[length]
            network byte order, PPID 0; one request brings the file from the
            offset to its end in responses of up to 32 KiB; an error is one
            response with length 0xFFFFFFFF, total 0 and the reason as data.
            After a fail-over `rserpool pu --fetch` asks the new PE for the
            rest (draft-ietf-rserpool-applic section 3.4).

With --cookies the PE sends `rserpool-SERVICE COUNT` after each reply (pingpong
always sends RSPLIB's `<PP-TD1>` cookie); a PE receiving it as a cookie echo
continues from COUNT.";

/// What every session thread needs.
#[derive(Debug, Clone)]
struct Opts {
    service: Service,
    cookies: bool,
    delay: Option<Duration>,
    verbose: bool,
    pe_id: u32,
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("rserpool pe: {msg}");
    1
}

/// `rserpool pe`.
pub fn run(a: PeArgs) -> i32 {
    // Signals first, so a SIGTERM right after start-up is not lost.
    let signals = match SignalPipe::install(&[libc::SIGINT, libc::SIGTERM]) {
        Ok(s) => s,
        Err(e) => return fail(format!("installing signal handlers: {e}")),
    };
    let cfg = match a.client.config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let listen = match EndpointUrl::parse(&a.listen) {
        Ok(u) => u,
        Err(e) => return fail(format!("--listen: {e}")),
    };
    let reg_life = a.reglife.unwrap_or(match a.client.unit() {
        RegLifeUnit::Seconds => 60,
        RegLifeUnit::Millis => 60_000,
    });
    let ctx = match Context::new(cfg) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let mut params = PeListenParams::new(a.pool.as_str(), listen, a.policy.clone());
    params.reg_life = reg_life;
    params.pe_id = a.pe_id;
    let server = match ctx.pe_listen(params) {
        Ok(s) => s,
        Err(e) => return fail(format!("registering in pool {:?}: {e}", a.pool)),
    };
    let url = listen_url(&server, &a.listen);
    println!(
        "pe id 0x{:08x} pool {} listening {} service {} policy {}",
        server.pe_id(),
        a.pool,
        url,
        a.service.name(),
        a.policy.spec()
    );
    let opts = Opts {
        service: a.service,
        cookies: a.cookies,
        delay: a.delay,
        verbose: a.verbose,
        pe_id: server.pe_id(),
    };
    loop {
        let got = signals.drain();
        if let Some(sig) = got.first() {
            let id = server.pe_id();
            return match server.close() {
                Ok(()) => {
                    println!("signal {sig}: deregistered PE 0x{id:08x}");
                    0
                }
                Err(e) => fail(format!("signal {sig}: deregistering PE 0x{id:08x}: {e}")),
            };
        }
        match server.accept(Some(Duration::from_millis(100))) {
            Ok(h) => {
                let o = opts.clone();
                let spawned = std::thread::Builder::new()
                    .name("pe-session".into())
                    .spawn(move || session(h, o));
                if let Err(e) = spawned {
                    eprintln!("rserpool pe: starting a session thread: {e}");
                }
            }
            Err(Error::Timeout) => {}
            Err(e) => return fail(format!("accepting: {e}")),
        }
    }
}

/// The URL the PE listens at, with the kernel's port.
fn listen_url(server: &PeServer, asked: &str) -> String {
    let proto = if asked.starts_with("sctp://") {
        "sctp"
    } else {
        "tcp"
    };
    let addrs = server.local_addrs();
    let Some(first) = addrs.first() else {
        return asked.to_string();
    };
    let hosts: Vec<String> = addrs
        .iter()
        .map(|a| match a.ip() {
            std::net::IpAddr::V6(v6) => format!("[{v6}]"),
            ip => ip.to_string(),
        })
        .collect();
    format!("{proto}://{}:{}", hosts.join(","), first.port())
}

/// Serve one pool user until its session ends.
fn session(h: PeSessionHandle, o: Opts) {
    let peer = h
        .peer_addrs()
        .first()
        .map_or_else(|| "?".to_string(), |a| a.to_string());
    println!("session from {peer}");
    let mut st = SessionState {
        count: 0,
        reply_no: 1,
    };
    let r = match &o.service {
        Service::Chargen => chargen(&h, &o, &peer, &mut st),
        Service::Files(dir) => files(&h, &o, dir, &peer, &mut st),
        _ => messages(&h, &o, &peer, &mut st),
    };
    match r {
        Ok(()) | Err(Error::SessionClosed) => {}
        Err(e) => eprintln!("rserpool pe: session from {peer}: {e}"),
    }
    h.close();
    println!("session from {peer} closed after {} replies", st.count);
}

struct SessionState {
    /// Replies of the session (from every PE, with cookies).
    count: u64,
    /// Ping-pong's next reply number.
    reply_no: u64,
}

impl SessionState {
    /// Take a cookie echo's state.
    fn cookie_echo(&mut self, o: &Opts, peer: &str, c: &[u8]) {
        let name = o.service.name();
        if o.service == Service::PingPong {
            match svc::parse_pingpong_cookie(c) {
                Some(n) => {
                    self.reply_no = n;
                    println!(
                        "cookie echo from {peer}: ping-pong reply number {n} (continuing the session)"
                    );
                }
                None => println!(
                    "cookie echo from {peer}: not a ping-pong cookie ({} bytes), ignored",
                    c.len()
                ),
            }
            return;
        }
        match svc::parse_service_cookie(name, c) {
            Some(n) => {
                self.count = n;
                println!(
                    "cookie echo from {peer}: {} (continuing after {n} replies)",
                    String::from_utf8_lossy(c)
                );
            }
            None => println!(
                "cookie echo from {peer}: not a {name} cookie ({} bytes), ignored",
                c.len()
            ),
        }
    }

    /// After a reply: count it, and send the cookie if asked.
    fn replied(&mut self, h: &PeSessionHandle, o: &Opts) -> Result<(), Error> {
        self.count += 1;
        if o.cookies {
            h.send_cookie(&svc::service_cookie(o.service.name(), self.count))?;
        }
        Ok(())
    }
}

/// Echo, discard, daytime and ping-pong: one answer (or none) per message.
fn messages(h: &PeSessionHandle, o: &Opts, peer: &str, st: &mut SessionState) -> Result<(), Error> {
    let mut pending = None;
    if o.service == Service::Daytime {
        // A session starting is a connection opening (RFC 867); a cookie
        // echo, if any, comes first.
        match first_message(h)? {
            Some(PeNotification::CookieEcho(c)) => st.cookie_echo(o, peer, &c),
            other => pending = other,
        }
        h.send(svc::daytime_text(SystemTime::now()).as_bytes(), 0)?;
        st.replied(h, o)?;
    }
    loop {
        let n = match pending.take() {
            Some(n) => n,
            None => h.recv(None)?,
        };
        let (ppid, bytes) = match n {
            PeNotification::Data { ppid, bytes, .. } => (ppid, bytes),
            PeNotification::CookieEcho(c) => {
                st.cookie_echo(o, peer, &c);
                continue;
            }
            PeNotification::BusinessCard { pool, elements } => {
                println!(
                    "business card from {peer}: pool {pool} with {} PEs",
                    elements.len()
                );
                continue;
            }
            PeNotification::Closed => return Ok(()),
        };
        if o.verbose {
            println!(
                "PE 0x{:08x}: {} bytes from {peer} (PPID {ppid})",
                o.pe_id,
                bytes.len()
            );
        }
        if let Some(d) = o.delay {
            std::thread::sleep(d);
        }
        match o.service {
            Service::Echo => {
                h.send(&bytes, ppid)?;
                st.replied(h, o)?;
            }
            Service::Discard => {
                // Done with it: acknowledge, and count it as taken.
                h.ack();
                st.replied(h, o)?;
            }
            Service::Daytime => {
                h.send(svc::daytime_text(SystemTime::now()).as_bytes(), ppid)?;
                st.replied(h, o)?;
            }
            Service::PingPong => {
                let Some((no, data)) = svc::decode_ping(&bytes) else {
                    println!("not a ping from {peer} ({} bytes): closing", bytes.len());
                    return Ok(());
                };
                let Some(pong) = svc::encode_pong(no, st.reply_no, data) else {
                    return Ok(());
                };
                h.send(&pong, svc::PINGPONG_PPID)?;
                st.reply_no += 1;
                st.count += 1;
                h.send_cookie(&svc::pingpong_cookie(st.reply_no))?;
            }
            Service::Chargen | Service::Files(_) => unreachable!("served elsewhere"),
        }
    }
}

/// A cookie echo is the first message after a fail-over: before a PE
/// speaks first it waits a moment for what the pool user sends first.
fn first_message(h: &PeSessionHandle) -> Result<Option<PeNotification>, Error> {
    match h.recv(Some(Duration::from_millis(20))) {
        Ok(n) => Ok(Some(n)),
        Err(Error::Timeout) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Bytes in flight to the pool user before a streaming PE waits.
const WINDOW: usize = 256 << 10;

/// RFC 864 over a session: lines until the pool user goes away; what it
/// sends is discarded.
fn chargen(h: &PeSessionHandle, o: &Opts, peer: &str, st: &mut SessionState) -> Result<(), Error> {
    match first_message(h)? {
        Some(PeNotification::CookieEcho(c)) => st.cookie_echo(o, peer, &c),
        Some(PeNotification::Closed) => return Ok(()),
        _ => {}
    }
    loop {
        while let Some(n) = h.try_recv()? {
            match n {
                PeNotification::CookieEcho(c) => st.cookie_echo(o, peer, &c),
                PeNotification::Closed => return Ok(()),
                _ => {}
            }
        }
        h.wait_in_flight(WINDOW, None)?;
        h.send(&svc::chargen_line(st.count), 0)?;
        st.replied(h, o)?;
    }
}

/// The file service: one request at a time, each answered from its offset
/// to the end of the file.
fn files(
    h: &PeSessionHandle,
    o: &Opts,
    dir: &Path,
    peer: &str,
    st: &mut SessionState,
) -> Result<(), Error> {
    loop {
        let (ppid, bytes) = match h.recv(None)? {
            PeNotification::Data { ppid, bytes, .. } => (ppid, bytes),
            PeNotification::CookieEcho(c) => {
                st.cookie_echo(o, peer, &c);
                continue;
            }
            PeNotification::BusinessCard { .. } => continue,
            PeNotification::Closed => return Ok(()),
        };
        let Some(req) = FileRequest::decode(&bytes) else {
            h.send(&FileResponse::encode_error(0, "malformed request"), ppid)?;
            continue;
        };
        println!(
            "PE 0x{:08x}: {peer} asks for {:?} from offset {}",
            o.pe_id, req.name, req.offset
        );
        let mut file = match open_in(dir, &req.name) {
            Ok(f) => f,
            Err(reason) => {
                h.send(&FileResponse::encode_error(req.offset, &reason), ppid)?;
                continue;
            }
        };
        let total = match file.metadata() {
            Ok(m) => m.len(),
            Err(e) => {
                h.send(
                    &FileResponse::encode_error(req.offset, &e.to_string()),
                    ppid,
                )?;
                continue;
            }
        };
        if req.offset > total {
            let reason = format!("offset {} is past the end ({total} bytes)", req.offset);
            h.send(&FileResponse::encode_error(req.offset, &reason), ppid)?;
            continue;
        }
        if let Err(e) = file.seek(SeekFrom::Start(req.offset)) {
            h.send(
                &FileResponse::encode_error(req.offset, &e.to_string()),
                ppid,
            )?;
            continue;
        }
        let mut at = req.offset;
        let mut buf = vec![0u8; svc::FILES_CHUNK];
        loop {
            let want = usize::try_from(total - at)
                .unwrap_or(usize::MAX)
                .min(buf.len());
            let n = if want == 0 {
                0
            } else {
                match file.read(&mut buf[..want]) {
                    Ok(0) => break, // shrunk meanwhile: stop here
                    Ok(n) => n,
                    Err(e) => {
                        h.send(&FileResponse::encode_error(at, &e.to_string()), ppid)?;
                        break;
                    }
                }
            };
            if let Some(d) = o.delay {
                std::thread::sleep(d);
            }
            h.wait_in_flight(WINDOW, None)?;
            h.send(&FileResponse::encode_data(at, total, &buf[..n]), ppid)?;
            st.replied(h, o)?;
            at += n as u64;
            if at >= total {
                break;
            }
        }
    }
}

/// Open `name` under `dir`, refusing names that would leave it.
fn open_in(dir: &Path, name: &str) -> Result<File, String> {
    if !svc::safe_file_name(name) {
        return Err(format!("{name:?}: not a file name under the directory"));
    }
    let path = dir.join(name);
    // Symbolic links may still point out of DIR: check where it lands.
    let (Ok(base), Ok(real)) = (dir.canonicalize(), path.canonicalize()) else {
        return Err(format!("{name}: no such file"));
    };
    if !real.starts_with(&base) {
        return Err(format!("{name}: outside the directory"));
    }
    if !real.is_file() {
        return Err(format!("{name}: not a regular file"));
    }
    File::open(&real).map_err(|e| format!("{name}: {e}"))
}

/// A `rserpool pe` child process (of this same executable), for `demo` and
/// `bench failover`. Killed on drop.
pub struct PeProcess {
    pub child: Child,
    /// Its PE identifier.
    pub pe_id: u32,
    /// Where it listens.
    pub url: String,
    /// Its later stdout lines (sessions, cookie echoes).
    pub lines: mpsc::Receiver<String>,
}

impl PeProcess {
    /// Start `rserpool pe` with `args` and wait (at most `timeout`) for its
    /// start line.
    pub fn start(args: &[String], timeout: Duration) -> Result<PeProcess, String> {
        let exe = std::env::current_exe().map_err(|e| format!("finding this program: {e}"))?;
        let mut child = Command::new(exe)
            .arg("pe")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("starting rserpool pe: {e}"))?;
        let stdout = child.stdout.take().expect("piped");
        let mut stderr = child.stderr.take().expect("piped");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    // Nobody listens any more: keep draining.
                }
            }
        });
        let (etx, erx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            let _ = etx.send(s);
        });
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some((id, url)) = parse_start_line(&line) {
                        return Ok(PeProcess {
                            child,
                            pe_id: id,
                            url,
                            lines: rx,
                        });
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let err = erx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
                    return Err(format!("rserpool pe did not start: {}", err.trim()));
                }
            }
        }
    }

    /// The pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGKILL and reap: the PE is gone, as after a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM (the PE deregisters) and reap, SIGKILL after `grace`.
    pub fn terminate(&mut self, grace: Duration) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            if matches!(self.child.try_wait(), Ok(None)) {
                // SAFETY: kill(2) on our own child, not yet reaped (so its
                // pid cannot have been reused).
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
    }
}

impl Drop for PeProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `pe id 0xID pool P listening URL ...` -> (id, URL).
pub fn parse_start_line(line: &str) -> Option<(u32, String)> {
    let rest = line.strip_prefix("pe id 0x")?;
    let (id, rest) = rest.split_once(' ')?;
    let id = u32::from_str_radix(id, 16).ok()?;
    let url = rest
        .split_whitespace()
        .skip_while(|w| *w != "listening")
        .nth(1)?;
    Some((id, url.to_string()))
}
