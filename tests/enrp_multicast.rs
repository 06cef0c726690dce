//! ENRP presence multicast between real `rserpool registrar` processes:
//! registrars given no `--peer` at all find each other on a multicast group,
//! then share the handlespace over unicast ENRP.
//!
//! Multicast must never leave the machine, so every test here runs only
//! inside a network namespace it creates itself (`unshare --net`, or
//! `unshare -rn` without root), holding nothing but a loopback interface with
//! multicast switched on and a route for 224.0.0.0/4, and a veth pair
//! `mc0`/`mc1` for IPv6 (loopback carries no IPv6 multicast): the test
//! re-executes its own binary in there. If no namespace can be made the test
//! fails and says why; it never passes without having run.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use common::*;
use serde_json::Value;

const IN_NETNS: &str = "RSERPOOL_TEST_IN_NETNS";
const LIFE: i32 = 3_600_000; // ms under --profile rsplib: never expires here
const POOL: &str = "mcast-pool";

/// Re-run test `name` of this binary inside a new network namespace; panics
/// with the reason when that is impossible here.
fn run_in_private_netns(name: &str) {
    let exe = std::env::current_exe().expect("test binary path");
    let script = format!(
        "ip link set lo up && ip link set lo multicast on && \
         ip route add 224.0.0.0/4 dev lo && \
         echo 0 > /proc/sys/net/ipv6/conf/default/accept_dad && \
         ip link add mc0 type veth peer name mc1 && ip link set mc1 up && ip link set mc0 up && \
         exec \"$0\" {name} --exact --nocapture --test-threads 1"
    );
    let mut tried = Vec::new();
    // As root a plain network namespace; otherwise one inside a user
    // namespace where we are root (unprivileged user namespaces).
    for flags in [&["--net"][..], &["--map-root-user", "--net"][..]] {
        let out = std::process::Command::new("unshare")
            .args(flags)
            .args(["--", "sh", "-c", &script])
            .arg(&exe)
            .env(IN_NETNS, "1")
            .output();
        let o = match out {
            Ok(o) => o,
            Err(e) => panic!(
                "cannot run unshare(1) to make the network namespace this test needs: {e} \
                 (install util-linux)"
            ),
        };
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        if o.status.success() {
            assert!(
                stdout.contains("1 passed"),
                "the test did not run in the namespace:\n{stdout}{stderr}"
            );
            return;
        }
        // unshare itself refused: try the next way. Anything else is the
        // test failing in its namespace.
        if !stderr.contains("unshare failed") && !stderr.contains("Operation not permitted") {
            panic!("{name} failed in its network namespace:\n{stdout}{stderr}");
        }
        tried.push(format!("unshare {}: {}", flags.join(" "), stderr.trim()));
    }
    panic!(
        "cannot create a network namespace here, so multicast cannot be tested without \
         touching the host's interfaces. Needs root or unprivileged user namespaces \
         (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0). \
         Tried:\n{}",
        tried.join("\n")
    );
}

fn in_netns() -> bool {
    std::env::var_os(IN_NETNS).is_some()
}

fn start(group: &str) -> Proc {
    start_on(group, "tcp://127.0.0.1:0", "127.0.0.1")
}

fn start_on(group: &str, enrp: &str, interface: &str) -> Proc {
    Proc::start(&[
        "--profile",
        "rsplib",
        "--enrp",
        enrp,
        "--enrp-multicast",
        group,
        "--enrp-multicast-if",
        interface,
        "--enrp-peer-heartbeat-cycle",
        "200ms",
        "--keep-alive-interval",
        "0",
        "--no-remove-on-disconnect",
        "--idle-timeout",
        "0",
        "--connect-timeout",
        "1s",
    ])
}

/// The registrar's peers (id, state, address) from `rserpool dump --json`.
fn dumped_peers(p: &Proc) -> Vec<(u64, String, String)> {
    let d = dump_json(&p.url);
    d["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .map(|x| {
            (
                x["id"].as_u64().unwrap_or(0),
                x["state"].as_str().unwrap_or("").to_string(),
                x["address"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn enrp_stat(p: &Proc, name: &str) -> u64 {
    status(p.addr)
        .and_then(|s| s["enrp_stats"][name].as_u64())
        .unwrap_or(0)
}

#[test]
fn registrars_without_peers_find_each_other_by_multicast() {
    if !in_netns() {
        return run_in_private_netns("registrars_without_peers_find_each_other_by_multicast");
    }
    let group = "239.255.90.1:47901";
    let r = [start(group), start(group), start(group)];
    // One more on another group: it must stay alone.
    let other = start("239.255.90.2:47902");

    for p in &r {
        eventually(
            "every registrar sees the two others as active peers",
            || {
                let peers = dumped_peers(p);
                peers.len() == 2 && peers.iter().all(|(_, s, _)| s == "active")
            },
        );
    }
    // The peers are exactly the other two, at their ENRP endpoints.
    for p in &r {
        let mut want: Vec<(u64, String)> = r
            .iter()
            .filter(|q| q.server_id != p.server_id)
            .map(|q| {
                let e = q.enrp.as_deref().unwrap();
                (
                    u64::from(q.server_id),
                    e.trim_start_matches("tcp://").into(),
                )
            })
            .collect();
        want.sort();
        let mut got: Vec<(u64, String)> = dumped_peers(p)
            .into_iter()
            .map(|(id, _, addr)| (id, addr))
            .collect();
        got.sort();
        assert_eq!(got, want, "peers of 0x{:08x}", p.server_id);
        assert!(enrp_stat(p, "multicast_sent") > 0);
    }
    let discovered: u64 = r.iter().map(|p| enrp_stat(p, "peers_discovered")).sum();
    assert!(discovered >= 2, "peers discovered: {discovered}");

    // A PE registered at one is resolvable at the others.
    let mut pa = r[0].client();
    granted(
        &register(
            &mut pa,
            POOL,
            pe(1, 6001, rserpool::wire::Policy::RoundRobin, LIFE),
        ),
        1,
    );
    let mut pc = r[2].client();
    granted(
        &register(
            &mut pc,
            POOL,
            pe(2, 6002, rserpool::wire::Policy::RoundRobin, LIFE),
        ),
        2,
    );
    for p in &r {
        let mut c = p.client();
        eventually("every registrar resolves both PEs", || {
            resolved(&mut c, POOL).as_deref() == Ok(&[1, 2][..])
        });
    }
    // The human-readable dump lists the peers too.
    let (code, text, err) = cli(&["dump", "--registrar", &r[1].url]);
    assert_eq!(code, 0, "{err}");
    for q in [&r[0], &r[2]] {
        assert!(
            text.contains(&format!("peer 0x{:08x}", q.server_id)),
            "{text}"
        );
    }
    assert!(text.contains(&format!("enrp multicast {group}")), "{text}");

    // Garbage on the group: counted, dropped, nothing breaks.
    let g: SocketAddr = group.parse().unwrap();
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.set_multicast_ttl_v4(1).unwrap();
    for bytes in [&b"not ENRP"[..], &[1, 0, 0, 200, 0, 0, 0, 9][..], &[][..]] {
        s.send_to(bytes, g).unwrap();
    }
    for p in &r {
        eventually("the garbage is counted as malformed", || {
            enrp_stat(p, "multicast_malformed") >= 3
        });
        assert_eq!(dumped_peers(p).len(), 2);
    }
    assert!(r.iter().all(|p| status(p.addr).is_some()));

    let d = dump_json(&r[0].url);
    assert_eq!(d["multicast"]["group"], group);
    assert!(d["enrp_stats"]["multicast_malformed"].as_u64() >= Some(3));
    assert_eq!(d["multicast"]["send_errors"], 0);

    // The registrar on the other group heard nobody, and nobody heard it.
    assert!(dumped_peers(&other).is_empty());
    assert_eq!(status(other.addr).unwrap()["pes"].as_u64(), Some(0));
    assert!(enrp_stat(&other, "multicast_sent") > 0);
    assert_eq!(enrp_stat(&other, "peers_discovered"), 0);
}

#[test]
fn a_late_registrar_learns_everything_from_the_group() {
    if !in_netns() {
        return run_in_private_netns("a_late_registrar_learns_everything_from_the_group");
    }
    let group = "239.255.90.3:47903";
    let a = start(group);
    let mut pa = a.client();
    for id in 1..=3 {
        granted(
            &register(
                &mut pa,
                POOL,
                pe(
                    id,
                    6000 + id as u16,
                    rserpool::wire::Policy::RoundRobin,
                    LIFE,
                ),
            ),
            id,
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let b = start(group);
    let mut pb = b.client();
    eventually(
        "the newcomer resolves the PEs registered before it started",
        || resolved(&mut pb, POOL).as_deref() == Ok(&[1, 2, 3][..]),
    );
    // And the older one learns of PEs registered at the newcomer.
    granted(
        &register(
            &mut pb,
            POOL,
            pe(4, 6004, rserpool::wire::Policy::RoundRobin, LIFE),
        ),
        4,
    );
    let mut pa2 = a.client();
    eventually("the first registrar resolves the newcomer's PE", || {
        resolved(&mut pa2, POOL).as_deref() == Ok(&[1, 2, 3, 4][..])
    });
    let st: Value = status(b.addr).unwrap();
    assert_eq!(st["peers"].as_array().unwrap().len(), 1);
    assert_eq!(st["peers"][0]["id"].as_u64(), Some(u64::from(a.server_id)));
}

#[test]
fn an_ipv6_group_on_a_named_interface() {
    if !in_netns() {
        return run_in_private_netns("an_ipv6_group_on_a_named_interface");
    }
    let group = "[ff15::9001]:47904";
    let a = start_on(group, "tcp://[::1]:0", "mc0");
    let b = start_on(group, "tcp://[::1]:0", "mc0");
    for (p, q) in [(&a, &b), (&b, &a)] {
        eventually("each finds the other over IPv6 multicast", || {
            let peers = dumped_peers(p);
            peers.len() == 1
                && peers[0].0 == u64::from(q.server_id)
                && peers[0].1 == "active"
                && Some(format!("tcp://{}", peers[0].2)) == q.enrp
        });
    }
    assert_eq!(dump_json(&a.url)["multicast"]["send_errors"], 0);
}
