//! ENRP between real `rserpool registrar` processes on loopback: peering via a
//! mentor, handle-update propagation, takeover after SIGKILL, a 100 000-PE
//! start-up download, and audit repair after a SIGSTOP partition.
//!
//! Timers are RSPLIB's (`--profile rsplib`, Registration Life in ms) or
//! smaller, so each test finishes in seconds; every child is killed on drop.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// Registration life (ms under --profile rsplib): an hour, never expires here.
const LIFE: i32 = 3_600_000;
const POOL: &str = "enrp-pool";

/// Flags shared by every registrar of these tests: fast ENRP timers, no
/// periodic keep-alives (the test's PE connections do not read), PEs kept
/// when their connection closes.
fn base_flags() -> Vec<String> {
    [
        "--profile",
        "rsplib",
        "--enrp",
        "tcp://127.0.0.1:0",
        "--keep-alive-interval",
        "0",
        "--no-remove-on-disconnect",
        "--idle-timeout",
        "0",
        "--enrp-peer-heartbeat-cycle",
        "200ms",
        "--enrp-peer-reconnect-interval",
        "300ms",
        "--enrp-mentor-retry-interval",
        "300ms",
        "--connect-timeout",
        "1s",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn start(extra: &[&str], peer: Option<&Proc>) -> Proc {
    let mut args = base_flags();
    args.extend(extra.iter().map(|s| s.to_string()));
    if let Some(p) = peer {
        args.push("--peer".into());
        args.push(p.enrp.clone().expect("the mentor has an ENRP endpoint"));
    }
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start(&refs)
}

/// Peers in the registrar's status that are in `state`.
fn peers_in(p: &Proc, state: &str) -> Vec<u32> {
    status(p.addr)
        .and_then(|s| {
            s.get("peers").and_then(|v| v.as_array()).map(|a| {
                a.iter()
                    .filter(|x| x["state"] == state)
                    .filter_map(|x| x["id"].as_u64().map(|v| v as u32))
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn pe_count(p: &Proc) -> u64 {
    status(p.addr).and_then(|s| s["pes"].as_u64()).unwrap_or(0)
}

/// PE id -> home, from a dump.
fn homes(dump: &Value) -> BTreeMap<u64, u64> {
    dump["elements"]
        .as_array()
        .expect("elements")
        .iter()
        .map(|e| (e["id"].as_u64().unwrap(), e["home"].as_u64().unwrap()))
        .collect()
}

/// Three registrars: `a` first, `b` and `c` with `--peer a`; waits until each
/// sees the other two as active.
fn trio(extra: &[&str]) -> [Proc; 3] {
    let a = start(extra, None);
    let b = start(extra, Some(&a));
    let c = start(extra, Some(&a));
    for p in [&a, &b, &c] {
        eventually("every registrar sees two active peers", || {
            peers_in(p, "active").len() == 2
        });
    }
    [a, b, c]
}

/// Register PEs 1,2 at a, 3,4 at b, 5,6 at c; returns the PE connections.
fn register_six(r: &[Proc; 3]) -> Vec<rserpool::runtime::blocking::TcpMapClient> {
    let mut conns = Vec::new();
    for (i, p) in r.iter().enumerate() {
        let mut c = p.client();
        for id in [2 * i as u32 + 1, 2 * i as u32 + 2] {
            let m = register(&mut c, POOL, pe(id, 5000 + id as u16, rsplib_rr(), LIFE));
            granted(&m, id);
        }
        conns.push(c);
    }
    conns
}

fn rsplib_rr() -> rserpool::wire::Policy {
    rserpool::wire::Policy::RoundRobin
}

fn all_resolve(r: &[&Proc], want: &[u32]) {
    for p in r {
        let mut c = p.client();
        eventually("a PU at every registrar resolves every PE", || {
            resolved(&mut c, POOL).as_deref() == Ok(want)
        });
    }
}

#[test]
fn three_registrars_share_the_handlespace() {
    let t0 = Instant::now();
    let r = trio(&[]);
    let _pes = register_six(&r);
    all_resolve(&[&r[0], &r[1], &r[2]], &[1, 2, 3, 4, 5, 6]);
    let want: BTreeMap<u64, u64> = (1..=6u64)
        .map(|id| (id, u64::from(r[((id - 1) / 2) as usize].server_id)))
        .collect();
    for p in &r {
        let d = dump_json(&p.url);
        assert_eq!(homes(&d), want, "homes at 0x{:08x}", p.server_id);
        assert_eq!(d["server_id"].as_u64(), Some(u64::from(p.server_id)));
        let peers = d["peers"].as_array().expect("peers");
        assert_eq!(peers.len(), 2);
        for q in peers {
            assert_eq!(q["state"], "active");
            assert!(q["address"]
                .as_str()
                .is_some_and(|a| a.starts_with("127.0.0.1:")));
            // What we hold for the peer is what it announces: in sync.
            eventually("held and announced checksums agree", || {
                let s = status(p.addr).unwrap();
                s["peers"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|x| x["checksum"] == x["checksum_announced"])
            });
        }
    }
    eprintln!("three registrars in sync after {:?}", t0.elapsed());
}

#[test]
fn a_survivor_takes_over_a_killed_registrar() {
    let r = trio(&[
        "--enrp-max-time-last-heard",
        "500ms",
        "--enrp-max-time-no-response",
        "500ms",
        "--enrp-takeover-timeout",
        "1s",
    ]);
    let _pes = register_six(&r);
    all_resolve(&[&r[0], &r[1], &r[2]], &[1, 2, 3, 4, 5, 6]);
    let [a, mut b, c] = r;
    let dead = u64::from(b.server_id);
    let killed = Instant::now();
    b.signal_and_wait(libc::SIGKILL).expect("killed");
    let survivors = [u64::from(a.server_id), u64::from(c.server_id)];
    eventually("a survivor owns the dead registrar's PEs, at both", || {
        let (da, dc) = (homes(&dump_json(&a.url)), homes(&dump_json(&c.url)));
        da == dc && da.len() == 6 && da.values().all(|h| *h != dead && survivors.contains(h))
    });
    eprintln!("takeover seen after {:?}", killed.elapsed());
    all_resolve(&[&a, &c], &[1, 2, 3, 4, 5, 6]);
    let d = dump_json(&a.url);
    let owner = homes(&d)[&3];
    assert_eq!(homes(&d)[&4], owner, "one server took both PEs over");
}

#[test]
fn a_new_registrar_downloads_100k_pes_from_its_mentor() {
    const N: u32 = 100_000;
    let a = start(&["--max-pes-per-connection", "100000"], None);
    let t = Instant::now();
    let _pes = register_many(a.addr, POOL, 1..N + 1, 4, LIFE);
    eprintln!("registered {N} PEs at the mentor in {:?}", t.elapsed());
    assert_eq!(pe_count(&a), u64::from(N));
    let t = Instant::now();
    let b = start(&[], Some(&a));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let st = status(b.addr).expect("status");
        if st["pes"].as_u64() == Some(u64::from(N)) && st["startup"] == "Done" {
            break;
        }
        assert!(Instant::now() < deadline, "no full download: {st}");
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!(
        "new registrar has all {N} PEs {:?} after its start",
        t.elapsed()
    );
    let ha = homes(&dump_json(&a.url));
    let hb = homes(&dump_json(&b.url));
    assert_eq!(ha.len(), N as usize);
    assert_eq!(ha, hb);
    assert!(hb.values().all(|h| *h == u64::from(a.server_id)));
}

#[test]
fn a_stopped_registrar_is_repaired_by_the_audit() {
    // Noticed quickly (heartbeats, probe after 400 ms, TCP mapping heartbeats
    // break its connections), but never taken over: the probe waits 30 s.
    let r = trio(&[
        "--enrp-max-time-last-heard",
        "400ms",
        "--enrp-max-time-no-response",
        "30s",
        "--enrp-takeover-timeout",
        "30s",
        "--tcp-heartbeat-interval",
        "300ms",
        "--tcp-heartbeat-max-missed",
        "2",
    ]);
    let _pes = register_six(&r);
    all_resolve(&[&r[0], &r[1], &r[2]], &[1, 2, 3, 4, 5, 6]);
    let [a, mut b, c] = r;
    let pid = libc::pid_t::try_from(b.child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    // Noticed, and its connections broken by the TCP mapping heartbeats, so
    // what follows cannot reach it even from socket buffers.
    eventually("the others notice the stopped registrar", || {
        [&a, &c].iter().all(|p| {
            let s = status(p.addr).unwrap();
            s["peers"].as_array().unwrap().iter().any(|x| {
                x["id"] == b.server_id && x["state"] != "active" && x["connected"] == false
            })
        })
    });
    // Change the handlespace meanwhile: PE 7 joins at a, PE 1 leaves at a.
    let mut pa = a.client();
    granted(&register(&mut pa, POOL, pe(7, 5007, rsplib_rr(), LIFE)), 7);
    // PE 1's own connection is gone (the heartbeats closed it too, the test
    // does not read it), so any connection may deregister it.
    let m = ask(
        &mut pa,
        &rserpool::wire::AsapMessage::Deregistration {
            pool_handle: POOL.into(),
            pe_id: 1,
        },
        is_dereg_resp,
    );
    assert!(matches!(
        m,
        rserpool::wire::AsapMessage::DeregistrationResponse { error: None, .. }
    ));
    std::thread::sleep(Duration::from_millis(500));
    let healed = Instant::now();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let want = [2, 3, 4, 5, 6, 7];
    all_resolve(&[&a, &b, &c], &want);
    eventually("dumps equal and checksums converge", || {
        let d: Vec<Value> = [&a, &b, &c].iter().map(|p| dump_json(&p.url)).collect();
        let h: Vec<_> = d.iter().map(homes).collect();
        h[0].len() == 6
            && h[0] == h[1]
            && h[1] == h[2]
            && [&a, &b, &c].iter().all(|p| {
                let s = status(p.addr).unwrap();
                let peers = s["peers"].as_array().unwrap();
                peers.len() == 2
                    && peers
                        .iter()
                        .all(|x| x["state"] == "active" && x["checksum"] == x["checksum_announced"])
            })
    });
    eprintln!("repaired {:?} after SIGCONT", healed.elapsed());
    let resyncs: u64 = [&a, &b, &c]
        .iter()
        .map(|p| {
            status(p.addr).unwrap()["enrp_stats"]["resyncs"]
                .as_u64()
                .unwrap()
        })
        .sum();
    eprintln!("resyncs: {resyncs}");

    // The updates sent while it was stopped were lost with its connections:
    // only the audit (checksum mismatch, W=1 resync) can have repaired it.
    assert!(resyncs >= 1, "no resync: the audit did not run");
    assert!(b.alive());
}
