//! `rserpool pu`: a pool user (like RSPLIB's `rspterminal`): lines from
//! stdin go to the pool through one enhanced-mode session, replies go to
//! stdout, connections and fail-overs are reported on stderr. With
//! `--pingpong` it speaks RSPLIB's ping-pong, with `--fetch` it downloads a
//! file from `rserpool pe --service files=DIR` and resumes after fail-overs.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rserpool::api::{Context, Error, FailoverInfo, Notification, Session, SessionOptions};
use rserpool::session::SessionConfig;

use crate::pe::ClientArgs;
use crate::registrar::parse_duration;
use crate::services::{self as svc, FileRequest, FileResponse};

fn parse_ppid(s: &str) -> Result<u32, String> {
    let v: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number (0-4294967295)"))?;
    if v == 11 {
        return Err("PPID 11 is reserved for ASAP control messages".into());
    }
    Ok(v)
}

/// Arguments of `rserpool pu`.
#[derive(clap::Args, Debug)]
#[command(after_long_help = PU_HELP)]
pub struct PuArgs {
    #[command(flatten)]
    pub client: ClientArgs,
    /// The pool handle to use.
    #[arg(long)]
    pub pool: String,
    /// Forget each message once sent instead of keeping it until the PE
    /// acknowledges it: what a dead PE never answered is not re-sent.
    #[arg(long)]
    pub no_acks: bool,
    /// Payload protocol identifier of the lines sent (not 11).
    #[arg(long, default_value = "0", value_parser = parse_ppid)]
    pub ppid: u32,
    /// Speak RSPLIB's ping-pong (rspserver -pingpong, rserpool pe --service
    /// pingpong): each line is the data of a Ping; prints `pong MESSAGE
    /// reply REPLY: DATA`.
    #[arg(long)]
    pub pingpong: bool,
    /// Download this file from a `--service files=DIR` pool instead of
    /// reading stdin, resuming from where it got to after a fail-over.
    #[arg(long, value_name = "NAME", conflicts_with = "pingpong")]
    pub fetch: Option<String>,
    /// Where --fetch writes the file (default: stdout).
    #[arg(long, value_name = "PATH", requires = "fetch")]
    pub output: Option<PathBuf>,
    /// At the end of stdin, once every message is acknowledged: exit when
    /// every line got a reply, or when none came for this long after the
    /// last reply, the end of stdin and the last acknowledgement.
    #[arg(long, value_parser = parse_duration, default_value = "500ms", value_name = "DURATION")]
    pub linger: Duration,
    /// Exit after this many replies (chargen, daytime).
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// A connect attempt to a PE not answered within this fails.
    #[arg(long, value_parser = parse_duration, default_value = "5s", value_name = "DURATION")]
    pub connect_timeout: Duration,
    /// Connect attempts (and "no PE" answers) per fail-over before giving up.
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub max_attempts: u32,
    /// Wait before asking for a PE again after the registrar had none.
    #[arg(long, value_parser = parse_duration, default_value = "1s", value_name = "DURATION")]
    pub retry_interval: Duration,
}

const PU_HELP: &str = "\
stdout: the replies (each as received; a newline is added if it has none).
stderr: `connected to PE 0xID`, `failover from PE 0xOLD to PE 0xNEW: N messages
re-sent`, and errors.
Exit status: 0 once stdin ended and the replies are in (see --linger), 1 when
no PE of the pool could be reached, 2 for bad flags.";

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("rserpool pu: {msg}");
    1
}

/// `rserpool pu`.
pub fn run(a: PuArgs) -> i32 {
    let cfg = match a.client.config() {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let ctx = match Context::new(cfg) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let config = SessionConfig {
        upper_layer_acks: !a.no_acks,
        connect_timeout: a.connect_timeout.max(Duration::from_millis(1)),
        max_attempts: a.max_attempts.max(1),
        retry_interval: a.retry_interval,
        ..SessionConfig::default()
    };
    match a.fetch.clone() {
        Some(name) => fetch(&a, &ctx, config, name),
        None => lines(&a, &ctx, config),
    }
}

fn failover_line(s: &Session, from: u32, to: u32, resent: usize) -> String {
    let mut line = format!(
        "failover from PE 0x{from:08x} to PE 0x{to:08x}: {resent} message{} re-sent",
        if resent == 1 { "" } else { "s" }
    );
    if let Some(c) = s.cookie() {
        match std::str::from_utf8(&c) {
            Ok(t) if t.chars().all(|ch| !ch.is_control()) => {
                line.push_str(&format!(", cookie {t:?} echoed"));
            }
            _ => line.push_str(&format!(", cookie of {} bytes echoed", c.len())),
        }
    }
    line
}

/// What the stdin thread tells the main loop.
#[derive(Default)]
struct Input {
    sent: AtomicU64,
    done: AtomicBool,
    error: Mutex<Option<String>>,
}

/// Lines from stdin to the pool, replies to stdout.
fn lines(a: &PuArgs, ctx: &Context, config: SessionConfig) -> i32 {
    let s = match ctx.open_session(
        a.pool.as_bytes(),
        SessionOptions {
            config,
            ..Default::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    let input = Arc::new(Input::default());
    {
        let (s, input, ppid, pingpong) = (s.clone(), input.clone(), a.ppid, a.pingpong);
        std::thread::spawn(move || read_stdin(&s, &input, ppid, pingpong));
    }
    let mut out = std::io::stdout().lock();
    let mut replies = 0u64;
    let mut last = Instant::now();
    let mut ended_at: Option<Instant> = None;
    // When the last message left us (the session buffers none): the quiet
    // time counts from here too, not from the end of stdin alone, or a PU
    // whose lines wait for a PE longer than --linger (a slow resolution or
    // connect) would give up the moment they are sent.
    let mut drained_at: Option<Instant> = None;
    let mut closing = false;
    let mut code = 0;
    loop {
        match s.recv(Some(Duration::from_millis(20))) {
            Ok(Notification::Data { bytes, .. }) => {
                replies += 1;
                last = Instant::now();
                let r = if a.pingpong {
                    match svc::decode_pong(&bytes) {
                        Some((m, r, data)) => {
                            writeln!(out, "pong {m} reply {r}: {}", String::from_utf8_lossy(data))
                        }
                        None => writeln!(out, "(not a pong: {} bytes)", bytes.len()),
                    }
                } else {
                    out.write_all(&bytes).and_then(|()| {
                        if bytes.last() == Some(&b'\n') {
                            Ok(())
                        } else {
                            out.write_all(b"\n")
                        }
                    })
                };
                if r.and_then(|()| out.flush()).is_err() {
                    // stdout is gone: nobody reads the replies any more.
                    s.close();
                    closing = true;
                }
            }
            Ok(Notification::Connected { pe }) => eprintln!("connected to PE 0x{pe:08x}"),
            Ok(Notification::Failover { from, to, resent }) => {
                eprintln!("{}", failover_line(&s, from, to, resent.len()));
            }
            Ok(Notification::PeerFailed { pe }) => {
                eprintln!("PE 0x{pe:08x} failed: failing over");
                let _ = s.failover_now();
            }
            Ok(Notification::Failed(e)) => {
                eprintln!("rserpool pu: pool {}: {e}", a.pool);
                code = 1;
            }
            Ok(Notification::Acked { .. }) => {}
            Ok(Notification::Closed) | Err(Error::SessionClosed) => break,
            Err(Error::Timeout) => {}
            Err(e) => return fail(e),
        }
        if closing {
            continue;
        }
        if let Some(e) = input.error.lock().take() {
            eprintln!("rserpool pu: sending: {e}");
            code = 1;
            s.close();
            closing = true;
            continue;
        }
        if a.count.is_some_and(|n| replies >= n) {
            s.close();
            closing = true;
            continue;
        }
        if !input.done.load(Ordering::Acquire) {
            continue;
        }
        let ended = *ended_at.get_or_insert_with(Instant::now);
        if s.buffered() > 0 {
            drained_at = None;
            continue;
        }
        let drained = *drained_at.get_or_insert_with(Instant::now);
        let sent = input.sent.load(Ordering::Acquire);
        let quiet = last.max(ended).max(drained).elapsed() >= a.linger;
        if (sent > 0 && replies >= sent) || quiet {
            s.close();
            closing = true;
        }
    }
    code
}

fn read_stdin(s: &Session, input: &Input, ppid: u32, pingpong: bool) {
    let stdin = std::io::stdin();
    let mut r = stdin.lock();
    let mut line = Vec::new();
    let mut no = 0u64;
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                *input.error.lock() = Some(format!("reading stdin: {e}"));
                break;
            }
        }
        let msg = if pingpong {
            no += 1;
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            let text = text.strip_suffix(b"\r").unwrap_or(text);
            match svc::encode_ping(no, text) {
                Some(m) => m,
                None => {
                    *input.error.lock() = Some("a line too long for a ping".into());
                    break;
                }
            }
        } else {
            line.clone()
        };
        let ppid = if pingpong { svc::PINGPONG_PPID } else { ppid };
        loop {
            match s.send(&msg, ppid, 0) {
                Ok(_) => break,
                Err(Error::BufferFull) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => {
                    *input.error.lock() = Some(e.to_string());
                    input.done.store(true, Ordering::Release);
                    return;
                }
            }
        }
        input.sent.fetch_add(1, Ordering::AcqRel);
    }
    input.done.store(true, Ordering::Release);
}

/// `--fetch`: the file transfer of draft-ietf-rserpool-applic §3.4.
fn fetch(a: &PuArgs, ctx: &Context, config: SessionConfig, name: String) -> i32 {
    struct State {
        /// Bytes written so far (the offset to ask a new PE for).
        received: AtomicU64,
        /// Sequence number of the latest request.
        request: Mutex<u64>,
        failovers: AtomicU64,
    }
    let st = Arc::new(State {
        received: AtomicU64::new(0),
        request: Mutex::new(0),
        failovers: AtomicU64::new(0),
    });
    let on_failover = {
        let (st, name) = (st.clone(), name.clone());
        Box::new(move |s: &Session, info: &FailoverInfo| {
            st.failovers.fetch_add(1, Ordering::Relaxed);
            eprintln!(
                "{}",
                failover_line(s, info.from, info.to, info.resent.len())
            );
            let mut req = st.request.lock();
            if info.resent.contains(&*req) {
                return; // the request itself goes to the new PE again
            }
            let offset = st.received.load(Ordering::Acquire);
            let msg = FileRequest {
                offset,
                name: name.clone(),
            }
            .encode();
            match s.send(&msg, svc::FILES_PPID, 0) {
                Ok(r) => {
                    *req = r.seq;
                    eprintln!(
                        "asking PE 0x{:08x} for the rest from offset {offset}",
                        info.to
                    );
                }
                Err(e) => eprintln!("rserpool pu: asking the new PE: {e}"),
            }
        })
    };
    let s = match ctx.open_session(
        a.pool.as_bytes(),
        SessionOptions {
            config,
            on_failover: Some(on_failover),
            ..Default::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => return fail(e),
    };
    {
        let mut req = st.request.lock();
        let msg = FileRequest {
            offset: 0,
            name: name.clone(),
        }
        .encode();
        match s.send(&msg, svc::FILES_PPID, 0) {
            Ok(r) => *req = r.seq,
            Err(e) => return fail(e),
        }
    }
    let mut out: Box<dyn Write> = match &a.output {
        Some(p) => match std::fs::File::create(p) {
            Ok(f) => Box::new(std::io::BufWriter::new(f)),
            Err(e) => return fail(format!("{}: {e}", p.display())),
        },
        None => Box::new(std::io::stdout().lock()),
    };
    let mut received = 0u64;
    let result = loop {
        match s.recv(None) {
            Ok(Notification::Data { bytes, .. }) => match FileResponse::decode(&bytes) {
                Some(FileResponse::Data {
                    offset,
                    total,
                    data,
                }) => {
                    let end = offset + data.len() as u64;
                    // Keep only what was not written yet (a new PE may
                    // start earlier than where the old one got to).
                    if offset <= received && received < end {
                        let from = (received - offset) as usize;
                        if let Err(e) = out.write_all(&data[from..]) {
                            break Err(format!("writing: {e}"));
                        }
                        received = end;
                        st.received.store(received, Ordering::Release);
                    }
                    if received >= total {
                        break Ok(total);
                    }
                }
                Some(FileResponse::Error(reason)) => break Err(format!("{name}: {reason}")),
                None => break Err(format!("a malformed response ({} bytes)", bytes.len())),
            },
            Ok(Notification::Connected { pe }) => eprintln!("connected to PE 0x{pe:08x}"),
            Ok(Notification::Failed(e)) => break Err(format!("pool {}: {e}", a.pool)),
            Ok(Notification::PeerFailed { .. }) => {
                let _ = s.failover_now();
            }
            Ok(Notification::Closed) | Err(Error::SessionClosed) => {
                break Err("the session closed".into())
            }
            Ok(_) => {}
            Err(e) => break Err(e.to_string()),
        }
    };
    let flushed = out.flush();
    s.close();
    match (result, flushed) {
        (Ok(total), Ok(())) => {
            eprintln!(
                "fetched {total} bytes of {name} ({} failovers)",
                st.failovers.load(Ordering::Relaxed)
            );
            0
        }
        (Err(e), _) => fail(e),
        (_, Err(e)) => fail(format!("writing: {e}")),
    }
}
