//! Builds every example in `examples-c/` with its own Makefile (shared and static)
//! against the freshly built library, and runs the ones that need no network.

use std::path::PathBuf;
use std::process::Command;

mod common;
use common::lib_dir;

fn make(dir: &str) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let o = Command::new("make")
        .arg("-B")
        .arg("-C")
        .arg(root.join("examples-c").join(dir))
        .arg(format!("LIBDIR={}", lib_dir().display()))
        .output()
        .expect("make runs");
    assert!(
        o.status.success(),
        "make in examples-c/{dir} failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn decode_example_builds_and_decodes() {
    make("decode");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples-c/decode");
    for exe in ["decode", "decode-static"] {
        let o = Command::new(root.join(exe))
            .env("LD_LIBRARY_PATH", lib_dir())
            .args(["0500000b", "00090007", "61626300"])
            .output()
            .expect("example runs");
        assert!(
            o.status.success(),
            "{exe}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("\"type\":\"ASAP_HANDLE_RESOLUTION\""), "{out}");
        assert!(out.contains("\"pool_handle\":\"abc\""), "{out}");

        let o = Command::new(root.join(exe))
            .args(["0500000b", "00090002", "61626300"])
            .output()
            .expect("example runs");
        assert_eq!(o.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&o.stderr).contains("malformed message at byte 4"));
    }
}

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A child whose stdout lines arrive on a channel; killed on drop.
struct Lines {
    child: Child,
    rx: mpsc::Receiver<String>,
}

impl Lines {
    fn spawn(exe: PathBuf, args: &[&str], stdin: bool) -> Lines {
        let mut child = Command::new(exe)
            .env("LD_LIBRARY_PATH", lib_dir())
            .args(args)
            .stdin(if stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .spawn()
            .expect("example starts");
        let out = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Lines { child, rx }
    }

    fn line(&self) -> String {
        self.rx
            .recv_timeout(common::T)
            .expect("a line from the example in time")
    }

    fn send(&mut self, s: &str) {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        stdin.write_all(s.as_bytes()).expect("write to the example");
        stdin.flush().expect("flush");
    }

    fn signal(&mut self, sig: i32) {
        let pid = libc::pid_t::try_from(self.child.id()).expect("pid");
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(pid, sig) };
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// "pe-echo: PE 123 registered in pool ..." -> 123.
fn pe_id(line: &str) -> u32 {
    line.strip_prefix("pe-echo: PE ")
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("unexpected pe-echo line {line:?}"))
}

/// "[PE 123] text" -> (123, "text").
fn answer(line: &str) -> (u32, String) {
    let r = line.strip_prefix("[PE ").expect("a pu-client answer");
    let (id, text) = r.split_once("] ").expect("a pu-client answer");
    (id.parse().expect("PE id"), text.to_string())
}

#[test]
fn pool_user_fails_over_between_two_echo_pool_elements() {
    make("pe-echo");
    make("pu-client");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples-c");
    let reg = common::Proc::start(&[]);
    for (pe_exe, pu_exe) in [
        ("pe-echo", "pu-client"),
        ("pe-echo-static", "pu-client-static"),
    ] {
        let pool = format!("echo-{pe_exe}");
        let args = [reg.url.as_str(), pool.as_str()];
        let mut pes: Vec<(u32, Lines)> = (0..2)
            .map(|_| {
                let p = Lines::spawn(root.join("pe-echo").join(pe_exe), &args, false);
                (pe_id(&p.line()), p)
            })
            .collect();
        assert_ne!(pes[0].0, pes[1].0);

        let mut pu = Lines::spawn(root.join("pu-client").join(pu_exe), &args, true);
        pu.send("hello 1\n");
        let (first, text) = answer(&pu.line());
        assert_eq!(text, "hello 1");
        pu.send("hello 2\n");
        assert_eq!(answer(&pu.line()), (first, "hello 2".into()));

        // Kill the PE the client uses: it must go on with the other one.
        let i = pes
            .iter()
            .position(|(id, _)| *id == first)
            .expect("a known PE");
        let (_, mut dead) = pes.remove(i);
        dead.signal(libc::SIGKILL);
        let _ = dead.child.wait();
        for n in 3..6 {
            pu.send(&format!("hello {n}\n"));
            assert_eq!(answer(&pu.line()), (pes[0].0, format!("hello {n}")));
        }
        drop(pu.child.stdin.take());
        let st = pu.child.wait().expect("pu-client exits");
        assert!(st.success(), "pu-client: {st}");

        // SIGINT: the survivor deregisters and exits cleanly.
        let (id, mut survivor) = pes.remove(0);
        survivor.signal(libc::SIGINT);
        assert_eq!(
            survivor.line(),
            format!("pe-echo: PE {id} deregistered: success")
        );
        let deadline = std::time::Instant::now() + common::T;
        loop {
            if let Some(st) = survivor.child.try_wait().expect("wait") {
                assert!(st.success(), "pe-echo: {st}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "pe-echo did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Three `rserpool registrar` processes peered by ENRP (RFC timers, fast
/// ENRP failure detection): `a` first, `b` and `c` with `a` as mentor; waits
/// until every one sees the other two as active.
fn registrar_trio() -> Vec<common::Proc> {
    let flags = [
        "--enrp",
        "tcp://127.0.0.1:0",
        "--enrp-peer-heartbeat-cycle",
        "200ms",
        "--enrp-max-time-last-heard",
        "500ms",
        "--enrp-max-time-no-response",
        "500ms",
        "--enrp-takeover-timeout",
        "1s",
        "--enrp-peer-reconnect-interval",
        "300ms",
        "--connect-timeout",
        "1s",
    ];
    let a = common::Proc::start(&flags);
    let mentor = a.enrp.clone().expect("an ENRP endpoint");
    let with_peer: Vec<&str> = flags.iter().copied().chain(["--peer", &mentor]).collect();
    let b = common::Proc::start(&with_peer);
    let c = common::Proc::start(&with_peer);
    let all = vec![a, b, c];
    for p in &all {
        common::eventually("every registrar sees two active peers", || {
            common::status(p.addr).is_some_and(|s| {
                s["peers"]
                    .as_array()
                    .is_some_and(|v| v.iter().filter(|x| x["state"] == "active").count() == 2)
            })
        });
    }
    all
}

/// PE id -> home registrar id, from a dump.
fn homes(url: &str) -> std::collections::BTreeMap<u64, u64> {
    common::dump_json(url)["elements"]
        .as_array()
        .expect("elements")
        .iter()
        .map(|e| (e["id"].as_u64().unwrap(), e["home"].as_u64().unwrap()))
        .collect()
}

#[test]
fn echo_pool_rides_through_a_registrar_crash() {
    // The C examples with all three registrars: the library of each process
    // hunts when its home registrar dies, and nothing reaches the program.
    make("pe-echo");
    make("pu-client");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples-c");
    let mut regs = registrar_trio();
    let urls = regs
        .iter()
        .map(|r| r.url.as_str())
        .collect::<Vec<_>>()
        .join(",");
    let args = [urls.as_str(), "echo-ride"];
    let mut pes: Vec<(u32, Lines)> = (0..2)
        .map(|_| {
            let p = Lines::spawn(root.join("pe-echo/pe-echo"), &args, false);
            (pe_id(&p.line()), p)
        })
        .collect();
    let mut pu = Lines::spawn(root.join("pu-client/pu-client"), &args, true);
    pu.send("hello 1\n");
    let (first, text) = answer(&pu.line());
    assert_eq!(text, "hello 1");

    // SIGKILL the home registrar of the PE the client uses.
    let mut h = std::collections::BTreeMap::new();
    common::eventually("both PEs known everywhere", || {
        h = homes(&regs[0].url);
        h.len() == 2
    });
    let i = regs
        .iter()
        .position(|r| u64::from(r.server_id) == h[&u64::from(first)])
        .expect("its home is one of the three");
    let mut dead = regs.remove(i);
    let dead_id = u64::from(dead.server_id);
    dead.signal_and_wait(libc::SIGKILL).expect("killed");
    let ids: Vec<u64> = regs.iter().map(|r| u64::from(r.server_id)).collect();
    common::eventually("both PEs homed at survivors, seen alike by both", || {
        let (h0, h1) = (homes(&regs[0].url), homes(&regs[1].url));
        h0 == h1 && h0.len() == 2 && h0.values().all(|x| ids.contains(x) && *x != dead_id)
    });
    pu.send("hello 2\n");
    assert_eq!(answer(&pu.line()), (first, "hello 2".into()));

    // Kill that PE too: the client fails over to the other one.
    let k = pes.iter().position(|(id, _)| *id == first).unwrap();
    let (_, mut gone) = pes.remove(k);
    gone.signal(libc::SIGKILL);
    let _ = gone.child.wait();
    for n in 3..6 {
        pu.send(&format!("hello {n}\n"));
        assert_eq!(answer(&pu.line()), (pes[0].0, format!("hello {n}")));
    }
    drop(pu.child.stdin.take());
    let st = pu.child.wait().expect("pu-client exits");
    assert!(st.success(), "pu-client: {st}");

    // The survivor deregisters through its new home.
    let (id, mut survivor) = pes.remove(0);
    survivor.signal(libc::SIGINT);
    assert_eq!(
        survivor.line(),
        format!("pe-echo: PE {id} deregistered: success")
    );
    common::eventually("the pool is empty at both survivors", || {
        regs.iter().all(|r| homes(&r.url).is_empty())
    });
}

#[test]
fn file_transfer_example_fetches_a_file() {
    make("file-transfer");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples-c/file-transfer");
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("file-transfer-example-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("tmp dir");
    // Not a multiple of the chunk size, so the last chunk is a short one.
    let data: Vec<u8> = (0..300_001u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(dir.join("data.bin"), &data).expect("write the file");
    std::fs::write(dir.join("empty.bin"), b"").expect("write the file");
    let dir_s = dir.to_str().expect("utf-8 path");
    let reg = common::Proc::start(&[]);
    for (server, client) in [
        ("fileserver", "fileclient"),
        ("fileserver-static", "fileclient-static"),
    ] {
        let pool = format!("files-{server}");
        let mut srv = Lines::spawn(
            root.join(server),
            &["-p", &pool, "-d", "0", &reg.url, dir_s],
            false,
        );
        let first = srv.line();
        assert!(first.starts_with("fileserver: PE "), "{first}");
        assert!(first.ends_with(&format!("serving {dir_s}")), "{first}");

        for (name, want) in [("data.bin", &data[..]), ("empty.bin", &[][..])] {
            let out = dir.join(format!("received-{client}-{name}"));
            let o = Command::new(root.join(client))
                .env("LD_LIBRARY_PATH", lib_dir())
                .args(["-p", &pool, &reg.url, name])
                .arg(&out)
                .output()
                .expect("fileclient runs");
            let stdout = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success(),
                "{client}: {stdout}{}",
                String::from_utf8_lossy(&o.stderr)
            );
            assert!(
                stdout.contains(&format!("received {} bytes of {name} in", want.len())),
                "{stdout}"
            );
            assert!(
                stdout.contains("0 failover(s), 0 duplicate byte(s)"),
                "{stdout}"
            );
            assert_eq!(std::fs::read(&out).expect("the received file"), want);
            let line = srv.line();
            assert!(
                line.contains(&format!("request {name} from 0 of {}", want.len())),
                "{line}"
            );
        }

        // No such file, and a name with a path: the server refuses, the
        // client says so and fails.
        for name in ["nope.bin", "../data.bin"] {
            let o = Command::new(root.join(client))
                .env("LD_LIBRARY_PATH", lib_dir())
                .args(["-p", &pool, &reg.url, name])
                .arg(dir.join("never"))
                .output()
                .expect("fileclient runs");
            assert_eq!(o.status.code(), Some(1));
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(err.contains("the server refused"), "{err}");
        }

        srv.signal(libc::SIGINT);
        let last = srv.line();
        assert!(last.ends_with("deregistered: success"), "{last}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
