//! Library pool elements and pool users ride through a registrar crash
//! (issue #6). Three `rserpool registrar` processes peer by ENRP over TCP on
//! loopback; the PEs and PUs are the library itself: `api::Context`s in this
//! process (the blocking API the C API wraps), each with its own loop thread
//! and connections, configured with all three registrars or with only one.
//!
//! A registrar is SIGKILLed: the PEs it was home of are re-homed at a survivor
//! (by their library's hunt, or by the ENRP takeover for a PE whose context
//! knows no other registrar), the PE contexts keep answering the new home's
//! keep-alives, calls made after the crash succeed, and the pool users keep
//! getting servers during and after. Then the registrar is restarted (with
//! its old server id, or a new one) at its old address, rejoins, and the
//! contexts that only knew it come back through it.
//!
//! A registrar cannot open a connection to a library PE (a context does not
//! listen; the takeover winner dials only SCTP PEs anyway), so the H=1
//! keep-alive that follows a takeover cannot reach it: a PE context whose
//! home died hunts, and a PE whose context knows only the dead registrar
//! lives on at the takeover winner for its Registration Life and comes back
//! with its registrar.
//!
//! Timers: RSPLIB's profile (Registration Life in ms) with small ENRP and
//! keep-alive timers, so a test takes seconds. The figures printed (time
//! from SIGKILL to a survivor owning the PEs, to the contexts' new home) are
//! measurements, not assertions.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::*;
use rserpool::api::{Config, Context, PeParams};
use rserpool::asap::{ClientConfig, PeStatus, T4Rule};
use rserpool::wire::Policy;
use serde_json::Value;

const POOL: &str = "ride";

/// Registration Life in ms: T4 (a third of it) is 2 s, longer than a
/// keep-alive interval plus its timeout (300 ms ± 50 % + 1 s), so a PE that
/// did not answer its keep-alives would be removed between two
/// re-registrations and vanish from resolution.
const LIFE_MS: i32 = 6_000;

/// Registrar flags (ENRP endpoint and peer added by [`start`]).
const REGISTRAR: &[&str] = &[
    "--profile",
    "rsplib",
    "--idle-timeout",
    "0",
    "--keep-alive-interval",
    "300ms",
    "--keep-alive-timeout",
    "1s",
    "--keep-alive-min-gap",
    "100ms",
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
    "--enrp-mentor-retry-interval",
    "300ms",
    "--connect-timeout",
    "1s",
];

/// A registrar at `asap` with its ENRP endpoint at `enrp`, `mentor` as its
/// first peer, and `extra` flags.
fn start(asap: &str, enrp: &str, mentor: Option<&Proc>, extra: &[&str]) -> Proc {
    let mut args: Vec<String> = REGISTRAR.iter().map(|s| s.to_string()).collect();
    args.extend(["--enrp".to_string(), enrp.to_string()]);
    if let Some(m) = mentor {
        args.push("--peer".into());
        args.push(m.enrp.clone().expect("the mentor has an ENRP endpoint"));
    }
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    Proc::start_at(asap, &refs)
}

fn active_peers(p: &Proc) -> BTreeSet<u32> {
    status(p.addr)
        .and_then(|s| {
            s["peers"].as_array().map(|a| {
                a.iter()
                    .filter(|x| x["state"] == "active")
                    .filter_map(|x| x["id"].as_u64().map(|v| v as u32))
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The state of peer `id` in `p`'s status ("" when not listed).
fn peer_state(p: &Proc, id: u32) -> String {
    status(p.addr)
        .and_then(|s| {
            s["peers"].as_array().and_then(|a| {
                a.iter()
                    .find(|x| x["id"] == id)
                    .and_then(|x| x["state"].as_str().map(str::to_string))
            })
        })
        .unwrap_or_default()
}

/// Wait until every registrar of `all` sees every other one as active.
fn wait_meshed(all: &[&Proc]) {
    for p in all {
        let want: BTreeSet<u32> = all
            .iter()
            .filter(|q| q.server_id != p.server_id)
            .map(|q| q.server_id)
            .collect();
        eventually("every registrar sees the others as active peers", || {
            active_peers(p) == want
        });
    }
}

/// Three peered registrars: `a` first, `b` and `c` with `a` as mentor.
fn trio() -> [Proc; 3] {
    let enrp = "tcp://127.0.0.1:0";
    let a = start("tcp://127.0.0.1:0", enrp, None, &[]);
    let b = start("tcp://127.0.0.1:0", enrp, Some(&a), &[]);
    let c = start("tcp://127.0.0.1:0", enrp, Some(&a), &[]);
    wait_meshed(&[&a, &b, &c]);
    [a, b, c]
}

/// A context knowing `registrars` in this order. With `fanout` 1 the hunt
/// tries them one at a time, so the first reachable one becomes home.
fn context(registrars: &[&Proc], fanout: usize) -> Arc<Context> {
    let mut c = Config::default();
    for r in registrars {
        c.add_registrar(&r.url).unwrap();
    }
    c.client = ClientConfig {
        t1_request: Duration::from_millis(500),
        t2_registration: Duration::from_millis(500),
        t3_deregistration: Duration::from_millis(500),
        t4_reregistration: T4Rule::LifeFraction(3),
        t5_server_hunt: Duration::from_millis(200),
        retran_max: Duration::from_secs(1),
        hunt_fanout: fanout,
        stale_cache: Duration::from_millis(100),
        default_items: Some(64),
        ..ClientConfig::rsplib_profile()
    };
    c.shutdown_timeout = Duration::from_millis(500);
    Arc::new(Context::new(c).expect("a context"))
}

/// Register PE `id` (Randomized Least Used: it has a load, and pool users
/// pick among all PEs at random, so repeated selections see every one).
fn register(ctx: &Context, id: u32) {
    let p = PeParams {
        pool: POOL.into(),
        transport: tcp(6000 + id as u16),
        policy: Policy::RandomizedLeastUsed { load: 0 },
        reg_life: LIFE_MS,
        pe_id: Some(id),
    };
    assert_eq!(ctx.register_pe(p), Ok(id));
}

/// PE id -> (home, policy detail) from a dump.
fn elements(dump: &Value) -> BTreeMap<u32, (u32, Value)> {
    dump["elements"]
        .as_array()
        .expect("elements")
        .iter()
        .map(|e| {
            (
                e["id"].as_u64().unwrap() as u32,
                (
                    e["home"].as_u64().unwrap() as u32,
                    e["policy_detail"].clone(),
                ),
            )
        })
        .collect()
}

fn homes(p: &Proc) -> BTreeMap<u32, u32> {
    elements(&dump_json(&p.url))
        .into_iter()
        .map(|(id, (home, _))| (id, home))
        .collect()
}

/// Selections by `pu` until it has seen every PE of `want` (and nothing
/// else); every selection must succeed.
fn sees_every_pe(pu: &Context, want: &[u32]) {
    let want: BTreeSet<u32> = want.iter().copied().collect();
    let mut seen = BTreeSet::new();
    let deadline = Instant::now() + T;
    // Fresh answers may still lack a PE just registered: start over whenever
    // something unexpected shows up, keep going until the set is complete.
    while seen != want {
        assert!(
            Instant::now() < deadline,
            "the pool user saw {seen:?}, not {want:?}"
        );
        let s = pu.get_primary_server(POOL.as_bytes()).expect("a server");
        if !want.contains(&s.pe_id) {
            seen.clear();
        } else {
            seen.insert(s.pe_id);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Wait until every thread of `pid` is stopped: kill(2) returns before a
/// running process stops, and a registrar that still answers one more
/// message (a deregistration sent right after the SIGSTOP) is not hung yet.
fn wait_stopped(pid: libc::pid_t) {
    let pid = u32::try_from(pid).expect("a child's pid");
    eventually("the registrar is stopped", || {
        common::all_threads_stopped(pid)
    });
}

fn home_of(ctx: &Context) -> Option<SocketAddr> {
    ctx.home().expect("the context answers")
}

/// What a [`Watch`] saw.
#[derive(Debug, Default)]
struct Seen {
    rounds: u64,
    /// Failed selections of pool users: (which, error).
    pu_errors: Vec<String>,
    /// PE states other than Registered/Registering, or errors.
    pe_problems: Vec<String>,
    /// Per PE: resolutions (at the watched registrar) not listing it.
    absent: BTreeMap<u32, u64>,
    /// Resolutions at the watched registrar that failed.
    resolution_errors: u64,
}

/// A thread that, every 20 ms until stopped, asks every pool user for a
/// server, checks every PE's status in its context, and resolves the pool
/// at one registrar with a raw ASAP connection to see which PEs are listed.
struct Watch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl Watch {
    fn start(
        pus: Vec<(&'static str, Arc<Context>)>,
        pes: Vec<(u32, Arc<Context>)>,
        at: SocketAddr,
    ) -> Watch {
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            let mut raw = rserpool::runtime::blocking::TcpMapClient::connect(at, T)
                .expect("connect to the watched registrar");
            while !stop2.load(Ordering::Relaxed) {
                seen.rounds += 1;
                for (name, pu) in &pus {
                    if let Err(e) = pu.get_primary_server(POOL.as_bytes()) {
                        seen.pu_errors.push(format!("{name}: {e}"));
                    }
                }
                for (id, ctx) in &pes {
                    match ctx.pe_status(*id) {
                        Ok(PeStatus::Registered | PeStatus::Registering) => {}
                        other => seen.pe_problems.push(format!("PE {id}: {other:?}")),
                    }
                }
                match resolved(&mut raw, POOL) {
                    Ok(ids) => {
                        for (id, _) in &pes {
                            if !ids.contains(id) {
                                *seen.absent.entry(*id).or_default() += 1;
                            }
                        }
                    }
                    Err(_) => seen.resolution_errors += 1,
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            seen
        });
        Watch { stop, thread }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the watch thread")
    }
}

/// Poll `f` every 5 ms until it holds; the time it took (panics after `T`).
fn time_until(what: &str, since: Instant, mut f: impl FnMut() -> bool) -> Duration {
    let deadline = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    since.elapsed()
}

#[test]
fn library_pes_and_pus_ride_through_a_registrar_crash() {
    let [a, b, c] = trio();
    let (ida, idb, idc) = (a.server_id, b.server_id, c.server_id);

    // PE 1: all three registrars, B first. PE 2: only B. PE 3: all three, A
    // first. PE 4: only C.
    let pe_b_all = context(&[&b, &c, &a], 1);
    let pe_b_only = context(&[&b], 1);
    let pe_a_all = context(&[&a, &b, &c], 1);
    let pe_c_only = context(&[&c], 1);
    register(&pe_b_all, 1);
    register(&pe_b_only, 2);
    register(&pe_a_all, 3);
    register(&pe_c_only, 4);
    // Pool users: all three with B first, and one per registrar alone.
    let pu_all = context(&[&b, &a, &c], 1);
    let pu_a = context(&[&a], 1);
    let pu_b = context(&[&b], 1);
    let pu_c = context(&[&c], 1);

    let want: BTreeMap<u32, u32> = [(1, idb), (2, idb), (3, ida), (4, idc)].into();
    for p in [&a, &b, &c] {
        eventually("every registrar holds the four PEs at their homes", || {
            homes(p) == want
        });
    }
    assert_eq!(home_of(&pe_b_all), Some(b.addr));
    assert_eq!(home_of(&pe_a_all), Some(a.addr));
    for pu in [&pu_all, &pu_a, &pu_b, &pu_c] {
        sees_every_pe(pu, &[1, 2, 3, 4]);
    }
    assert_eq!(home_of(&pu_all), Some(b.addr));

    // Watch everything that has a survivor to go to, through the crash.
    let watch = Watch::start(
        vec![
            ("pu_all", pu_all.clone()),
            ("pu_a", pu_a.clone()),
            ("pu_b", pu_b.clone()),
            ("pu_c", pu_c.clone()),
        ],
        vec![
            (1, pe_b_all.clone()),
            (3, pe_a_all.clone()),
            (4, pe_c_only.clone()),
        ],
        a.addr,
    );
    let b_url = b.url.clone();
    let b_addr = b.addr;
    let b_enrp = b.enrp.clone().unwrap();
    let mut b = b;
    let killed = Instant::now();
    b.signal_and_wait(libc::SIGKILL).expect("B killed");
    drop(b);
    let survivors = [a.addr, c.addr];
    let ids = [ida, idc];

    // (b) The PE context whose home died adopts a survivor.
    let adopted = time_until("PE 1's context adopts a survivor", killed, || {
        home_of(&pe_b_all).is_some_and(|h| survivors.contains(&h))
    });
    // (a) The survivors own B's PEs: PE 1 through its re-registration, PE 2
    // (whose context knows only B) through the takeover.
    let mut pe1_rehomed = None;
    let owned = time_until("a survivor owns PEs 1 and 2, at both", killed, || {
        let (ha, hc) = (homes(&a), homes(&c));
        if pe1_rehomed.is_none() && ha.get(&1).is_some_and(|h| ids.contains(h)) {
            pe1_rehomed = Some(killed.elapsed());
        }
        ha == hc && ha.len() == 4 && ha.values().all(|h| ids.contains(h))
    });
    let pe1_rehomed = pe1_rehomed.unwrap_or(owned);
    eprintln!(
        "after SIGKILL: PE context on a new home {adopted:?}, PE 1 re-homed by its \
         re-registration {pe1_rehomed:?}, PE 2 taken over (all PEs owned by survivors) {owned:?}"
    );
    let h = homes(&a);
    assert_eq!(h[&3], ida);
    assert_eq!(h[&4], idc);
    let new_home = home_of(&pe_b_all).unwrap();
    let new_home_id = if new_home == a.addr { ida } else { idc };
    assert_eq!(h[&1], new_home_id, "PE 1 is homed where its context is");
    assert_eq!(
        home_of(&pe_b_only),
        None,
        "PE 2's context has nowhere to go"
    );

    // Calls made after the crash succeed at the new home.
    register(&pe_b_all, 5);
    pe_b_all
        .update_load(1, 7)
        .expect("update_load after the crash");
    eventually("PE 5 and PE 1's new load reach both survivors", || {
        [&a, &c].iter().all(|p| {
            let e = elements(&dump_json(&p.url));
            e.get(&5).is_some_and(|(h, _)| *h == new_home_id)
                && e.get(&1)
                    .is_some_and(|(h, pol)| *h == new_home_id && pol["load"] == 7)
        })
    });
    for pu in [&pu_all, &pu_a, &pu_c] {
        sees_every_pe(pu, &[1, 2, 3, 4, 5]);
    }
    assert!(home_of(&pu_all).is_some_and(|h| survivors.contains(&h)));
    pe_b_all.deregister(5).expect("deregister after the crash");
    // Several keep-alive rounds (300 ms ± 50 %, 1 s timeout) at the new home.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pe_b_all.pe_status(1), Ok(PeStatus::Registered));
    let seen = watch.finish();
    eprintln!(
        "watched {} rounds: PEs absent {:?}, PE problems {}, PU errors {}",
        seen.rounds,
        seen.absent,
        seen.pe_problems.len(),
        seen.pu_errors.len()
    );
    assert!(seen.rounds > 10, "the watch ran: {seen:?}");
    assert!(seen.pu_errors.is_empty(), "{:?}", seen.pu_errors);
    assert!(seen.pe_problems.is_empty(), "{:?}", seen.pe_problems);
    assert_eq!(seen.resolution_errors, 0);
    assert!(
        seen.absent.is_empty(),
        "PEs missing from resolutions at A: {:?}",
        seen.absent
    );

    // B comes back at its address with its server id and rejoins.
    let b = start(
        &b_url,
        &b_enrp,
        Some(&a),
        &["--server-id", &format!("{idb:#x}")],
    );
    assert_eq!((b.server_id, b.addr), (idb, b_addr));
    let back = Instant::now();
    wait_meshed(&[&a, &b, &c]);
    // PE 2's context finds B again and re-registers there.
    let pe2_back = time_until("PE 2 is homed at B again", back, || {
        homes(&a).get(&2) == Some(&idb)
    });
    eprintln!("B restarted: PE 2 homed at B again {pe2_back:?} after the restart");
    assert_eq!(home_of(&pe_b_only), Some(b.addr));
    assert_eq!(pe_b_only.pe_status(2), Ok(PeStatus::Registered));
    let want: BTreeMap<u32, u32> = [(1, new_home_id), (2, idb), (3, ida), (4, idc)].into();
    for p in [&a, &b, &c] {
        eventually("every registrar agrees on the homes", || homes(p) == want);
    }
    register(&pe_b_only, 6);
    for pu in [&pu_all, &pu_a, &pu_b, &pu_c] {
        sees_every_pe(pu, &[1, 2, 3, 4, 6]);
    }
    assert_eq!(home_of(&pu_b), Some(b.addr));
    pe_b_only
        .deregister(6)
        .expect("deregister at the restarted B");
    pe_b_all
        .deregister(1)
        .expect("deregister PE 1 at its new home");
    eventually("PE 1 and PE 6 are gone everywhere", || {
        [&a, &b, &c].iter().all(|p| {
            let h = homes(p);
            !h.contains_key(&1) && !h.contains_key(&6) && h.len() == 3
        })
    });
}

#[test]
fn a_registrar_restarted_with_a_new_id_takes_its_contexts_back() {
    let [a, b, c] = trio();
    // One context per registrar knowing only it, and one knowing all three
    // that hunts with the default fan-out (three at once: any may win).
    let only = [context(&[&a], 1), context(&[&b], 1), context(&[&c], 1)];
    for (i, ctx) in only.iter().enumerate() {
        register(ctx, 10 + i as u32);
    }
    let pe_all = context(&[&a, &b, &c], 3);
    register(&pe_all, 20);
    let pu_all = context(&[&a, &b, &c], 3);
    sees_every_pe(&pu_all, &[10, 11, 12, 20]);

    // Kill the home of the context that knows all three.
    let home = home_of(&pe_all).expect("a home");
    let mut regs = vec![a, b, c];
    let k = regs.iter().position(|p| p.addr == home).unwrap();
    let mut dead = regs.remove(k);
    let (old_id, url, enrp) = (dead.server_id, dead.url.clone(), dead.enrp.clone().unwrap());
    let killed = Instant::now();
    dead.signal_and_wait(libc::SIGKILL).expect("killed");
    drop(dead);
    let survivors: Vec<u32> = regs.iter().map(|p| p.server_id).collect();
    let orphan = 10 + k as u32;
    let owned = time_until("the survivors own every PE", killed, || {
        let h = homes(&regs[0]);
        h.len() == 4 && h.values().all(|x| survivors.contains(x)) && h == homes(&regs[1])
    });
    eprintln!("after SIGKILL: every PE owned by a survivor {owned:?}");
    assert!(home_of(&pe_all).is_some_and(|h| regs.iter().any(|p| p.addr == h)));
    sees_every_pe(&pu_all, &[10, 11, 12, 20]);

    // Back at its address with a new server id: it joins as a new peer, the
    // context that only knows that address registers its PE there.
    let new = start(&url, &enrp, Some(&regs[0]), &[]);
    assert_ne!(new.server_id, old_id);
    let restarted = Instant::now();
    wait_meshed(&[&regs[0], &regs[1], &new]);
    let back = time_until(
        "the lone context's PE is homed at the new server",
        restarted,
        || homes(&regs[0]).get(&orphan) == Some(&new.server_id),
    );
    eprintln!("restarted with a new id: PE {orphan} homed there {back:?} after the restart");
    assert_eq!(home_of(&only[k]), Some(new.addr));
    assert_eq!(only[k].pe_status(orphan), Ok(PeStatus::Registered));
    for p in [&regs[0], &regs[1], &new] {
        eventually("every registrar agrees on the homes", || {
            let h = homes(p);
            h.len() == 4 && h[&orphan] == new.server_id && !h.values().any(|x| *x == old_id)
        });
    }
    register(&only[k], 30);
    let pu_new = context(&[&new], 1);
    sees_every_pe(&pu_new, &[10, 11, 12, 20, 30]);
    sees_every_pe(&pu_all, &[10, 11, 12, 20, 30]);
    only[k]
        .deregister(30)
        .expect("deregister at the new server");
}

#[test]
fn library_pes_and_pus_leave_a_hung_registrar_within_their_timers() {
    // A registrar that stops answering without closing its connections (a
    // machine gone, or SIGSTOP here): nothing tells the library but its own
    // timers — T2 of the next re-registration, T1 of a resolution.
    let [a, b, c] = trio();
    let (ida, idb, idc) = (a.server_id, b.server_id, c.server_id);
    let pe_b_all = context(&[&b, &c, &a], 1);
    let pe_a_all = context(&[&a, &b, &c], 1);
    register(&pe_b_all, 1);
    register(&pe_a_all, 3);
    let pu_all = context(&[&b, &a, &c], 1);
    let pu_a = context(&[&a], 1);
    for p in [&a, &b, &c] {
        eventually("every registrar holds both PEs", || {
            homes(p) == [(1, idb), (3, ida)].into()
        });
    }
    sees_every_pe(&pu_all, &[1, 3]);
    assert_eq!(home_of(&pu_all), Some(b.addr));
    let watch = Watch::start(
        vec![("pu_all", pu_all.clone()), ("pu_a", pu_a.clone())],
        vec![(1, pe_b_all.clone()), (3, pe_a_all.clone())],
        a.addr,
    );
    let pid = libc::pid_t::try_from(b.child.id()).unwrap();
    let hung = Instant::now();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_stopped(pid);
    let survivors = [a.addr, c.addr];
    let ids = [ida, idc];
    // When each of these first held, measured together.
    let mut first: [Option<Duration>; 4] = [None; 4];
    time_until("PE 1 and both contexts moved to survivors", hung, || {
        let (ha, hc) = (homes(&a), homes(&c));
        let pe_home = home_of(&pe_b_all).filter(|h| survivors.contains(h));
        let pe_home_id = pe_home.map(|h| if h == a.addr { ida } else { idc });
        let now = [
            ha == hc && ha.get(&1).is_some_and(|h| ids.contains(h)),
            pe_home.is_some(),
            pe_home_id.is_some_and(|id| ha.get(&1) == Some(&id) && hc.get(&1) == Some(&id)),
            home_of(&pu_all).is_some_and(|h| survivors.contains(&h)),
        ];
        for (f, n) in first.iter_mut().zip(now) {
            if n && f.is_none() {
                *f = Some(hung.elapsed());
            }
        }
        first.iter().all(Option::is_some)
    });
    eprintln!(
        "after SIGSTOP: PE 1 owned by a survivor {:?}, PE context on a new home {:?}, \
         PE 1 homed there {:?}, pool user on a new home {:?}",
        first[0].unwrap(),
        first[1].unwrap(),
        first[2].unwrap(),
        first[3].unwrap()
    );
    pe_b_all.update_load(1, 3).expect("update_load");
    register(&pe_b_all, 5);
    sees_every_pe(&pu_all, &[1, 3, 5]);
    pe_b_all.deregister(5).expect("deregister");
    std::thread::sleep(Duration::from_secs(2));
    let seen = watch.finish();
    eprintln!(
        "watched {} rounds: PEs absent {:?}, PE problems {}, PU errors {}",
        seen.rounds,
        seen.absent,
        seen.pe_problems.len(),
        seen.pu_errors.len()
    );
    assert!(seen.pu_errors.is_empty(), "{:?}", seen.pu_errors);
    assert!(seen.pe_problems.is_empty(), "{:?}", seen.pe_problems);
    assert_eq!(seen.resolution_errors, 0);
    assert!(
        seen.absent.is_empty(),
        "PEs missing at A: {:?}",
        seen.absent
    );
    // B wakes up, taken over while it slept: it rejoins, everyone agrees
    // on the new homes, and a pool user that knows only B is served.
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    wait_meshed(&[&a, &b, &c]);
    let new_home_id = match home_of(&pe_b_all) {
        Some(h) if h == a.addr => ida,
        _ => idc,
    };
    for p in [&a, &b, &c] {
        eventually("all three agree on the new homes", || {
            homes(p) == [(1, new_home_id), (3, ida)].into()
        });
    }
    sees_every_pe(&context(&[&b], 1), &[1, 3]);
    assert_eq!(pe_b_all.pe_status(1), Ok(PeStatus::Registered));
}

#[test]
fn a_deregistration_at_a_survivor_removes_the_pe_everywhere() {
    // PE 1's home hangs; its context deregisters it meanwhile: T3 runs out,
    // the library hunts and sends the deregistration to a survivor, which
    // has never owned the PE. The PE must go from every registrar, not
    // linger at the one that takes the hung registrar over until its
    // (here two-minute) Registration Life runs out.
    let [a, b, c] = trio();
    let pe_b_all = context(&[&b, &c, &a], 1);
    let p = PeParams {
        pool: POOL.into(),
        transport: tcp(6001),
        policy: Policy::RandomizedLeastUsed { load: 0 },
        reg_life: 120_000,
        pe_id: Some(1),
    };
    assert_eq!(pe_b_all.register_pe(p), Ok(1));
    for r in [&a, &b, &c] {
        eventually("every registrar holds PE 1", || {
            homes(r) == [(1, b.server_id)].into()
        });
    }
    let pid = libc::pid_t::try_from(b.child.id()).unwrap();
    // SAFETY: kill(2) on our own child, not yet reaped.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    wait_stopped(pid);
    let t = Instant::now();
    pe_b_all
        .deregister(1)
        .expect("deregistered through a survivor");
    eprintln!("deregistration answered after {:?}", t.elapsed());
    assert!(home_of(&pe_b_all).is_some_and(|h| h == a.addr || h == c.addr));
    let gone = time_until("PE 1 is gone at both survivors", t, || {
        homes(&a).is_empty() && homes(&c).is_empty()
    });
    eprintln!("PE 1 gone everywhere after {gone:?}");
    // And it stays gone once the hung registrar has been taken over.
    eventually("the hung registrar is taken over", || {
        [&a, &c]
            .iter()
            .all(|p| peer_state(p, b.server_id) == "taken-over")
    });
    assert!(homes(&a).is_empty() && homes(&c).is_empty());
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
}
