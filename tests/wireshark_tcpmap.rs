//! The Wireshark Lua dissector (contrib/wireshark/rserpool-tcpmapping.lua)
//! against real registrar traffic: capture on loopback with tshark, drive every
//! message kind the registrar speaks over TCP, then decode the capture with the
//! dissector and compare what Wireshark saw with what the clients sent and got.
//!
//! Skips (passes with a message) when tshark is not installed.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use rserpool::runtime::blocking::TcpMapClient;
use rserpool::wire::{AsapMessage, Policy};

const SCRIPT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/contrib/wireshark/rserpool-tcpmapping.lua"
);

// ASAP message types (RFC 5352 §2.2).
const REGISTRATION: u8 = 1;
const DEREGISTRATION: u8 = 2;
const REGISTRATION_RESPONSE: u8 = 3;
const DEREGISTRATION_RESPONSE: u8 = 4;
const HANDLE_RESOLUTION: u8 = 5;
const HANDLE_RESOLUTION_RESPONSE: u8 = 6;
const KEEP_ALIVE: u8 = 7;
const KEEP_ALIVE_ACK: u8 = 8;
const UNREACHABLE: u8 = 9;
// ENRP message types (RFC 5353 §2).
const HANDLE_TABLE_REQUEST: u8 = 2;
const HANDLE_TABLE_RESPONSE: u8 = 3;

fn tshark_available() -> bool {
    Command::new("tshark")
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// A running `tshark -w` capture; interrupted (then killed) on drop.
struct Capture {
    child: Child,
    file: PathBuf,
    stderr: mpsc::Receiver<String>,
}

impl Capture {
    fn start(port: u16, file: &Path) -> Capture {
        let _ = std::fs::remove_file(file);
        let mut child = Command::new("tshark")
            .args(["-i", "lo", "-f", &format!("tcp port {port}"), "-w"])
            .arg(file)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tshark");
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let cap = Capture {
            child,
            file: file.to_path_buf(),
            stderr: rx,
        };
        // tshark says "Capturing on 'Loopback: lo'" once dumpcap has the
        // interface open; the file appears with its section header.
        let deadline = Instant::now() + T;
        let mut said = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match cap
                .stderr
                .recv_timeout(left.min(Duration::from_millis(100)))
            {
                Ok(line) => {
                    let capturing = line.contains("Capturing on");
                    said.push(line);
                    if capturing {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("tshark exited before capturing: {}", said.join("\n"))
                }
            }
            assert!(
                Instant::now() < deadline,
                "tshark did not start capturing: {}",
                said.join("\n")
            );
        }
        eventually("the capture file to appear", || {
            std::fs::metadata(&cap.file)
                .map(|m| m.len() > 0)
                .unwrap_or(false)
        });
        cap
    }

    /// Stop with SIGINT so dumpcap flushes and closes the file.
    fn stop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) on our own unreaped child with a plain signal.
        unsafe { libc::kill(pid, libc::SIGINT) };
        let deadline = Instant::now() + T;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.stop();
        }
    }
}

/// Run tshark on a capture file and return stdout (panics on failure).
fn tshark_read(file: &Path, args: &[&str]) -> String {
    let out = Command::new("tshark")
        .arg("-r")
        .arg(file)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run tshark -r");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "tshark -r {args:?} failed: {stderr}");
    assert!(
        !stderr.contains("Lua") && !stderr.contains("rror"),
        "tshark -r {args:?} complained: {stderr}"
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP mapping client that tallies the ASAP message types it sends and receives.
struct Peer {
    c: TcpMapClient,
}

type Tally = BTreeMap<u8, usize>;

impl Peer {
    fn new(r: &Proc) -> Peer {
        Peer { c: r.client() }
    }

    fn send(&mut self, t: &mut Tally, m: &AsapMessage) {
        *t.entry(m.to_bytes()[0]).or_default() += 1;
        self.c.send_asap(m).expect("send");
    }

    /// Receive until `want` matches, answering keep-alives on the way.
    fn until(&mut self, t: &mut Tally, want: impl Fn(&AsapMessage) -> bool) -> AsapMessage {
        let deadline = Instant::now() + T;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.c.recv_asap(left).expect("answer from the registrar");
            *t.entry(m.to_bytes()[0]).or_default() += 1;
            if want(&m) {
                return m;
            }
            self.answer(t, &m);
        }
    }

    fn answer(&mut self, t: &mut Tally, m: &AsapMessage) {
        if let AsapMessage::EndpointKeepAlive {
            pool_handle,
            pe_id: Some(id),
            ..
        } = m
        {
            let ack = AsapMessage::EndpointKeepAliveAck {
                pool_handle: pool_handle.clone(),
                pe_id: *id,
            };
            self.send(t, &ack);
        }
    }

    fn ask(
        &mut self,
        t: &mut Tally,
        m: &AsapMessage,
        want: impl Fn(&AsapMessage) -> bool,
    ) -> AsapMessage {
        self.send(t, m);
        self.until(t, want)
    }

    /// Read (and answer) whatever arrives for `d`; the registrar's HEARTBEATs
    /// are answered inside the client.
    fn idle(&mut self, t: &mut Tally, d: Duration) {
        let until = Instant::now() + d;
        while Instant::now() < until {
            let left = until.saturating_duration_since(Instant::now());
            if let Ok(m) = self.c.recv_asap(left.min(Duration::from_millis(50))) {
                *t.entry(m.to_bytes()[0]).or_default() += 1;
                self.answer(t, &m);
            }
        }
    }

    fn resolve_ids(&mut self, t: &mut Tally, pool: &str) -> Result<Vec<u32>, u16> {
        match self.ask(t, &resolve(pool, Some(100)), is_resolution) {
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

    fn deregister(&mut self, t: &mut Tally, pool: &str, id: u32) {
        let m = AsapMessage::Deregistration {
            pool_handle: pool.into(),
            pe_id: id,
        };
        match self.ask(t, &m, is_dereg_resp) {
            AsapMessage::DeregistrationResponse { error: None, .. } => {}
            other => panic!("deregistration of PE {id} failed: {other:?}"),
        }
    }
}

/// Count each comma-separated value of one `-T fields` column.
fn histogram(out: &str, col: usize) -> Tally {
    let mut h = Tally::new();
    for line in out.lines() {
        let Some(field) = line.split('\t').nth(col) else {
            continue;
        };
        for v in field.split(',').filter(|v| !v.is_empty()) {
            *h.entry(v.trim().parse().expect("numeric field"))
                .or_default() += 1;
        }
    }
    h
}

#[test]
fn dissector_decodes_every_registrar_message() {
    if !tshark_available() {
        eprintln!("SKIPPED: tshark is not installed (apt-get install tshark)");
        return;
    }
    let r = Proc::start(&[
        "--keep-alive-interval",
        "150ms",
        "--keep-alive-timeout",
        "60s",
        "--keep-alive-min-gap",
        "10ms",
        "--keep-alive-pe-id",
        "always",
        "--max-bad-pe-reports",
        "1",
        "--probe-unreachable",
        "false",
        "--tcp-heartbeat-interval",
        "100ms",
        "--tcp-heartbeat-max-missed",
        "1000000",
    ]);
    let port = r.addr.port();
    let dir = std::env::temp_dir().join(format!("rserpool-ws-{}-{port}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tcpmap.pcapng");
    let mut cap = Capture::start(port, &file);

    let mut t = Tally::new();
    let mut pe_a = Peer::new(&r);
    let mut pe_b = Peer::new(&r);
    let mut pu = Peer::new(&r);

    // Registration, re-registration, rejection (inconsistent policy).
    for id in [1, 2, 3] {
        let peer = if id == 3 { &mut pe_b } else { &mut pe_a };
        let resp = peer.ask(
            &mut t,
            &reg("pool", pe(id, 5000 + id as u16, Policy::RoundRobin, 60)),
            is_reg_resp,
        );
        granted(&resp, id);
    }
    let resp = pe_a.ask(
        &mut t,
        &reg("pool", pe(1, 6001, Policy::RoundRobin, 120)),
        is_reg_resp,
    );
    granted(&resp, 1);
    let resp = pe_b.ask(
        &mut t,
        &reg(
            "pool",
            pe(4, 5004, Policy::WeightedRoundRobin { weight: 2 }, 60),
        ),
        is_reg_resp,
    );
    rejected(&resp);

    // Handle resolution, positive and negative.
    assert_eq!(pu.resolve_ids(&mut t, "pool"), Ok(vec![1, 2, 3]));
    assert!(pu.resolve_ids(&mut t, "no-such-pool").is_err());

    // Keep-alives and their acks, and HEARTBEATs on the idle PU connection.
    let mut seen = false;
    let deadline = Instant::now() + T;
    while !seen {
        assert!(Instant::now() < deadline, "no keep-alive arrived");
        let m = pe_a.until(&mut t, |_| true);
        seen = matches!(m, AsapMessage::EndpointKeepAlive { .. });
        pe_a.answer(&mut t, &m);
    }
    pu.idle(&mut t, Duration::from_millis(800));

    // Unreachable reports: two exceed --max-bad-pe-reports 1 and remove PE 3.
    for _ in 0..2 {
        pu.send(
            &mut t,
            &AsapMessage::EndpointUnreachable {
                pool_handle: "pool".into(),
                pe_id: 3,
            },
        );
    }
    let deadline = Instant::now() + T;
    while pu.resolve_ids(&mut t, "pool") != Ok(vec![1, 2]) {
        assert!(Instant::now() < deadline, "PE 3 was not removed");
        std::thread::sleep(Duration::from_millis(20));
    }

    // The CLI tools: an ASAP resolution and an ENRP handle-table dump.
    let (code, _, err) = cli(&["resolve", "--registrar", &r.url, "--pool", "pool"]);
    assert_eq!(code, 0, "{err}");
    *t.entry(HANDLE_RESOLUTION).or_default() += 1;
    *t.entry(HANDLE_RESOLUTION_RESPONSE).or_default() += 1;
    let (code, out, err) = cli(&["dump", "--registrar", &r.url]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("pool"), "{out}");

    // Deregistration last: once each PE connection has its answers, the
    // registrar owns nothing there and sends no more keep-alives, so every
    // ASAP message on the wire has passed through a Peer and been counted.
    pe_a.deregister(&mut t, "pool", 1);
    pe_a.deregister(&mut t, "pool", 2);
    // PE 3 is gone: its deregistration is answered too (RFC 5352 §3.3).
    let m = AsapMessage::Deregistration {
        pool_handle: "pool".into(),
        pe_id: 3,
    };
    pe_b.ask(&mut t, &m, is_dereg_resp);

    // A last, recognisable request: once its answer is in the capture file,
    // dumpcap has written everything before it, and tshark can stop.
    const SENTINEL: &str = "wireshark-test-sentinel";
    assert!(pu.resolve_ids(&mut t, SENTINEL).is_err());
    let marker = format!("tcp.srcport == {port} && frame contains \"{SENTINEL}\"");
    eventually("the capture to hold the last answer", || {
        count_lines(&tshark_read(&file, &["-Y", &marker])) >= 1
    });
    drop((pe_a, pe_b));
    drop(pu);
    cap.stop();

    verify(&file, port, &t);
    let _ = std::fs::remove_dir_all(&dir);
}

fn count_lines(s: &str) -> usize {
    s.lines().filter(|l| !l.trim().is_empty()).count()
}

fn verify(file: &Path, port: u16, sent: &Tally) {
    let decode_as = format!("tcp.port=={port},rserpool-tcpmap");
    let lua = format!("lua_script:{SCRIPT}");
    let fields = |extra: &[&str]| {
        let mut args = vec!["-X", &lua, "-T", "fields"];
        for f in [
            "rserpool-tcpmap.type",
            "rserpool-tcpmap.data.ppid",
            "asap.message_type",
            "enrp.message_type",
        ] {
            args.extend(["-e", f]);
        }
        args.extend(extra);
        tshark_read(file, &args)
    };
    let by_port = fields(&["-d", &decode_as]);
    let chunks = histogram(&by_port, 0);
    let ppids = histogram(&by_port, 1);
    let asap = histogram(&by_port, 2);
    let enrp = histogram(&by_port, 3);
    eprintln!("chunks by type: {chunks:?}");
    eprintln!("DATA by PPID: {ppids:?}");
    eprintln!("ASAP by type: {asap:?} (clients counted {sent:?})");
    eprintln!("ENRP by type: {enrp:?}");

    // Every DATA chunk carries PPID 11 or 12 and decodes as ASAP or ENRP.
    let data = chunks.get(&0).copied().unwrap_or(0);
    let n_asap: usize = asap.values().sum();
    let n_enrp: usize = enrp.values().sum();
    assert_eq!(ppids.values().sum::<usize>(), data);
    assert_eq!(ppids.get(&11).copied().unwrap_or(0), n_asap);
    assert_eq!(ppids.get(&12).copied().unwrap_or(0), n_enrp);
    assert_eq!(n_asap + n_enrp, data);

    // Exactly the ASAP messages the clients sent and received.
    assert_eq!(&asap, sent);
    for ty in [
        REGISTRATION,
        DEREGISTRATION,
        REGISTRATION_RESPONSE,
        DEREGISTRATION_RESPONSE,
        HANDLE_RESOLUTION,
        HANDLE_RESOLUTION_RESPONSE,
        KEEP_ALIVE,
        KEEP_ALIVE_ACK,
        UNREACHABLE,
    ] {
        assert!(asap.contains_key(&ty), "no ASAP type {ty} in {asap:?}");
    }
    // One `rserpool dump`: one table request and one (small) response, one
    // ENRP_LIST_REQUEST/RESPONSE, and the implementation-private status
    // request/response (types 0xf0/0xf1, shown as unknown ENRP types).
    assert_eq!(
        enrp,
        Tally::from([
            (HANDLE_TABLE_REQUEST, 1),
            (HANDLE_TABLE_RESPONSE, 1),
            (rserpool::wire::enrp_type::LIST_REQUEST, 1),
            (rserpool::wire::enrp_type::LIST_RESPONSE, 1),
            (rserpool::runtime::registrar::STATUS_REQUEST, 1),
            (rserpool::runtime::registrar::STATUS_RESPONSE, 1),
        ])
    );
    // Both sides' INITs on every connection; HEARTBEATs were answered.
    for ty in [1, 3, 4, 5] {
        assert!(chunks.contains_key(&ty), "no chunk type {ty} in {chunks:?}");
    }

    // The heuristic finds the same without "Decode As".
    let heuristic = fields(&[]);
    assert_eq!(histogram(&heuristic, 2), asap, "heuristic ASAP");
    assert_eq!(histogram(&heuristic, 3), enrp, "heuristic ENRP");

    // Nothing malformed, no expert errors, no Lua errors.
    let bad = tshark_read(
        file,
        &[
            "-X",
            &lua,
            "-d",
            &decode_as,
            "-Y",
            "_ws.malformed || _ws.expert.severity >= error",
        ],
    );
    assert!(bad.trim().is_empty(), "malformed or expert errors:\n{bad}");
    let verbose = tshark_read(file, &["-X", &lua, "-d", &decode_as, "-V"]);
    assert!(!verbose.contains("Lua Error"), "Lua error in the dissector");
    assert!(!verbose.contains("Malformed"), "malformed packet");
}
