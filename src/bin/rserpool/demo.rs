//! `rserpool demo`: RSerPool on one machine in a few seconds. An embedded
//! registrar on 127.0.0.1, three `rserpool pe --service echo --cookies`
//! child processes, and a pool user session in this process; the PE serving
//! the session is killed (SIGKILL) while it works on a request, and the
//! session fails over to another PE, echoes the dead PE's cookie and re-sends
//! what the dead PE never acknowledged. Narrated on stdout; exit status 0
//! only if every message was answered exactly once after the fail-over.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rserpool::api::{Config, Context, Error, Notification, Session, SessionOptions};
use rserpool::runtime::{EndpointUrl, RegistrarHandle, RegistrarOptions};

use crate::pe::PeProcess;
use crate::registrar::parse_duration;

/// Arguments of `rserpool demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Messages before the kill (as many again after it).
    #[arg(long, default_value_t = 5, value_name = "N")]
    pub messages: u32,
    /// How long a PE works on each message (so that requests are in flight
    /// when the PE dies).
    #[arg(long, value_parser = parse_duration, default_value = "50ms", value_name = "DURATION")]
    pub delay: Duration,
}

const POOL: &str = "DemoPool";
/// Hang guard for every wait.
const T: Duration = Duration::from_secs(10);

struct Narrator(Instant);

impl Narrator {
    fn say(&self, what: impl std::fmt::Display) {
        println!("[{:6.3}s] {what}", self.0.elapsed().as_secs_f64());
    }
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("rserpool demo: {msg}");
    1
}

/// `rserpool demo`.
pub fn run(a: DemoArgs) -> i32 {
    if a.messages == 0 {
        eprintln!("rserpool demo: --messages must be at least 1");
        return 2;
    }
    let n = Narrator(Instant::now());
    // The registrar.
    let mut opts = RegistrarOptions::default();
    opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").expect("a valid URL")];
    let reg = match RegistrarHandle::start(opts) {
        Ok(r) => r,
        Err(e) => return fail(format!("starting the registrar: {e}")),
    };
    let url = reg.local_urls()[0].clone();
    n.say(format_args!(
        "registrar 0x{:08x} up at {url}",
        reg.server_id()
    ));
    let code = demo(&n, &a, &url);
    let _ = reg.stop();
    code
}

fn demo(n: &Narrator, a: &DemoArgs, url: &str) -> i32 {
    // Three PEs.
    let delay = format!("{}ms", a.delay.as_millis());
    let args: Vec<String> = [
        "--registrar",
        url,
        "--pool",
        POOL,
        "--service",
        "echo",
        "--cookies",
        "--delay",
        &delay,
        "--verbose",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let mut pes = Vec::new();
    for i in 1..=3 {
        match PeProcess::start(&args, T) {
            Ok(p) => {
                n.say(format_args!(
                    "PE {i} registered in {POOL}: id 0x{:08x}, listening {} (pid {})",
                    p.pe_id,
                    p.url,
                    p.pid()
                ));
                pes.push(p);
            }
            Err(e) => return fail(e),
        }
    }
    let name = |pes: &[PeProcess], id: u32| {
        pes.iter().position(|p| p.pe_id == id).map_or_else(
            || format!("0x{id:08x}"),
            |i| format!("{} (0x{id:08x})", i + 1),
        )
    };
    // The pool user.
    let mut cfg = Config::default();
    if let Err(e) = cfg.add_registrar(url) {
        return fail(e);
    }
    cfg.shutdown_timeout = Duration::from_millis(500);
    let ctx = match Context::new(cfg) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let s = match ctx.open_session(
        POOL.as_bytes(),
        SessionOptions {
            wait_connected: Some(T),
            ..Default::default()
        },
    ) {
        Ok(s) => s,
        Err(e) => return fail(format!("opening a session to {POOL}: {e}")),
    };
    let Some(first) = s.current_pe().map(|p| p.pe_id) else {
        return fail("connected, but to no PE");
    };
    n.say(format_args!(
        "pool user: session to {POOL} connected to PE {}",
        name(&pes, first)
    ));
    let total = 2 * a.messages;
    let mut answers: BTreeMap<u32, u32> = BTreeMap::new();
    let mut on = first;
    // Before the kill: a message at a time.
    for i in 1..=a.messages {
        if let Err(e) = s.send(format!("message {i}").as_bytes(), 0, 0) {
            return fail(e);
        }
        match next_reply(&s) {
            Ok(Reply::Data(text)) => {
                record(&mut answers, &text);
                n.say(format_args!("reply {text:?} from PE {}", name(&pes, on)));
            }
            Ok(Reply::Failover { to, .. }) => return fail(format!("unexpected fail-over to {to}")),
            Err(e) => return fail(e),
        }
    }
    // The rest at once; the PE starts working on the first of them.
    for i in a.messages + 1..=total {
        if let Err(e) = s.send(format!("message {i}").as_bytes(), 0, 0) {
            return fail(e);
        }
    }
    n.say(format_args!(
        "sent messages {} to {total} at once; PE {} works on message {} for {} ms",
        a.messages + 1,
        name(&pes, on),
        a.messages + 1,
        a.delay.as_millis()
    ));
    let Some(victim) = pes.iter().position(|p| p.pe_id == on) else {
        return fail("the serving PE is not one of ours");
    };
    // Its line for the message it now works on (`--verbose`: one line per
    // message, before the work), then half the work time.
    let mut seen = 0;
    let deadline = Instant::now() + T;
    while seen <= a.messages {
        match pes[victim]
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(line) if line.contains(" bytes from ") => seen += 1,
            Ok(_) => {}
            Err(_) => return fail("the serving PE did not get the messages"),
        }
    }
    std::thread::sleep(a.delay / 2);
    n.say(format_args!(
        "killing PE {} (SIGKILL to pid {})",
        name(&pes, on),
        pes[victim].pid()
    ));
    let killed_at = Instant::now();
    pes[victim].kill();
    // The fail-over, then the answers from the new PE.
    let mut failed_over = None;
    let mut first_reply = None;
    while answers.values().sum::<u32>() < total || failed_over.is_none() {
        match next_reply(&s) {
            Ok(Reply::Failover { from, to, resent }) => {
                let ms = killed_at.elapsed().as_secs_f64() * 1e3;
                failed_over = Some(ms);
                let cookie = s
                    .cookie()
                    .map(|c| format!(", cookie {:?} echoed", String::from_utf8_lossy(&c)))
                    .unwrap_or_default();
                n.say(format_args!(
                    "failover from PE {} to PE {} {ms:.1} ms after the kill: {} unacknowledged message{} re-sent{cookie}",
                    name(&pes, from),
                    name(&pes, to),
                    resent.len(),
                    if resent.len() == 1 { "" } else { "s" },
                ));
                on = to;
            }
            Ok(Reply::Data(text)) => {
                if first_reply.is_none() && failed_over.is_some() {
                    first_reply = Some(killed_at.elapsed().as_secs_f64() * 1e3);
                }
                record(&mut answers, &text);
                n.say(format_args!("reply {text:?} from PE {}", name(&pes, on)));
            }
            Err(e) => return fail(format!("after the kill: {e}")),
        }
    }
    // What the new PE saw: the cookie echo.
    if let Some(p) = pes.iter().find(|p| p.pe_id == on) {
        let deadline = Instant::now() + Duration::from_millis(200);
        while let Ok(line) = p
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if line.starts_with("cookie echo") {
                n.say(format_args!("PE {} says: {line}", name(&pes, on)));
                break;
            }
        }
    }
    let lost: Vec<u32> = (1..=total).filter(|i| !answers.contains_key(i)).collect();
    let dup: Vec<u32> = answers
        .iter()
        .filter(|(_, &c)| c > 1)
        .map(|(&i, _)| i)
        .collect();
    s.close();
    let _ = wait_closed(&s);
    drop(ctx);
    for p in &mut pes {
        p.terminate(Duration::from_secs(2));
    }
    n.say("pool user closed; the other PEs deregistered (SIGTERM)");
    match (failed_over, first_reply) {
        (Some(fo), Some(fr)) if lost.is_empty() && dup.is_empty() => {
            n.say(format_args!(
                "all {total} messages answered exactly once: none lost, none duplicated \
                 (fail-over {fo:.1} ms, first reply from the new PE {fr:.1} ms after the kill)"
            ));
            0
        }
        _ => {
            n.say(format_args!(
                "FAILED: fail-over {failed_over:?}, lost {lost:?}, duplicated {dup:?}"
            ));
            1
        }
    }
}

enum Reply {
    Data(String),
    Failover {
        from: u32,
        to: u32,
        resent: Vec<u64>,
    },
}

fn next_reply(s: &Session) -> Result<Reply, String> {
    let deadline = Instant::now() + T;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match s.recv(Some(left)) {
            Ok(Notification::Data { bytes, .. }) => {
                return Ok(Reply::Data(String::from_utf8_lossy(&bytes).into_owned()))
            }
            Ok(Notification::Failover { from, to, resent }) => {
                return Ok(Reply::Failover { from, to, resent })
            }
            Ok(Notification::Failed(e)) => return Err(format!("the session gave up: {e}")),
            Ok(Notification::Closed) => return Err("the session closed".into()),
            Ok(_) => {}
            Err(Error::Timeout) => return Err("no reply within 10 s".into()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn record(answers: &mut BTreeMap<u32, u32>, text: &str) {
    if let Some(i) = text.strip_prefix("message ").and_then(|t| t.parse().ok()) {
        *answers.entry(i).or_default() += 1;
    }
}

fn wait_closed(s: &Session) -> Result<(), Error> {
    loop {
        match s.recv(Some(Duration::from_secs(2)))? {
            Notification::Closed => return Ok(()),
            _ => continue,
        }
    }
}
