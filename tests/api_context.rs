//! The blocking `api::Context` against an embedded registrar on loopback.

use std::time::{Duration, Instant};

use rserpool::api::{Config, Context, Error, PeParams, UNKNOWN_POOL};
use rserpool::runtime::{EndpointUrl, RegistrarHandle, RegistrarOptions};
use rserpool::wire::{Policy, Transport};

fn registrar() -> RegistrarHandle {
    let mut opts = RegistrarOptions::default();
    opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
    RegistrarHandle::start(opts).unwrap()
}

fn config(reg: &RegistrarHandle) -> Config {
    let mut c = Config::default();
    c.add_registrar(&reg.local_urls()[0]).unwrap();
    c.client.t1_request = Duration::from_millis(500);
    c.client.t2_registration = Duration::from_millis(500);
    c.client.t3_deregistration = Duration::from_millis(500);
    c.client.t5_server_hunt = Duration::from_millis(200);
    c.client.stale_cache = Duration::ZERO;
    c
}

fn tcp(port: u16) -> Transport {
    Transport::Tcp {
        port,
        transport_use: 0,
        addr: [127, 0, 0, 1].into(),
    }
}

#[test]
fn register_resolve_fail_over_deregister() {
    let reg = registrar();
    let pe = Context::new(config(&reg)).unwrap();
    let a = pe
        .register_pe(PeParams::new("svc", tcp(7001), Policy::RoundRobin))
        .unwrap();
    let b = pe
        .register_pe(PeParams::new("svc", tcp(7002), Policy::RoundRobin))
        .unwrap();
    assert_ne!(a, b);

    let pu = Context::new(config(&reg)).unwrap();
    let first = pu.get_primary_server(b"svc").unwrap();
    assert!(first.pe_id == a || first.pe_id == b);
    let next = pu.get_next_server(b"svc", first.pe_id).unwrap();
    assert_ne!(next.pe_id, first.pe_id);
    assert_eq!(
        pu.get_primary_server(b"nope"),
        Err(Error::Refused(UNKNOWN_POOL))
    );

    pe.deregister(a).unwrap();
    assert_eq!(pe.deregister(a), Err(Error::UnknownPe));
    assert_eq!(
        pe.update_load(b, 5),
        Err(Error::InvalidArgument("policy rr has no load".into()))
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = pu.get_primary_server(b"svc").unwrap();
        if s.pe_id == b {
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn no_registrar_fails_within_the_timer_rules() {
    let mut c = Config::default();
    c.add_registrar("tcp://127.0.0.1:1").unwrap();
    c.client.t1_request = Duration::from_millis(200);
    c.client.t2_registration = Duration::from_millis(200);
    c.client.t5_server_hunt = Duration::from_millis(100);
    let ctx = Context::new(c).unwrap();
    let t0 = Instant::now();
    assert_eq!(
        ctx.register_pe(PeParams::new("x", tcp(1), Policy::RoundRobin)),
        Err(Error::NoRegistrar)
    );
    assert_eq!(ctx.get_primary_server(b"x"), Err(Error::NoRegistrar));
    assert!(t0.elapsed() < Duration::from_secs(10));
}

#[test]
fn sctp_registrar_is_refused_clearly() {
    let mut c = Config::default();
    c.add_registrar("sctp://127.0.0.1:3863").unwrap();
    assert!(matches!(Context::new(c), Err(Error::Unsupported(_))));
}

/// Multicast must never leave the machine: the announce test runs only inside
/// a network namespace of its own (created here with `unshare --net`, holding
/// nothing but a multicast-enabled loopback), never on the host's interfaces.
const IN_NETNS: &str = "RSERPOOL_TEST_IN_NETNS";

/// Re-runs test `name` of this binary in a fresh network namespace; false if
/// that is not possible here (no root, no unshare/ip), after saying why.
fn run_in_private_netns(name: &str) -> bool {
    let exe = std::env::current_exe().expect("test binary path");
    let script = format!(
        "ip link set lo up && ip link set lo multicast on && \
         ip route add 224.0.0.0/4 dev lo && exec \"$0\" {name} --exact --nocapture"
    );
    let out = std::process::Command::new("unshare")
        .args(["--net", "--", "sh", "-c", &script])
        .arg(&exe)
        .env(IN_NETNS, "1")
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                text.contains("1 passed"),
                "the test did not run in the namespace:\n{text}"
            );
            true
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            if err.contains("unshare failed") || err.contains("Operation not permitted") {
                eprintln!(
                    "skipped: cannot create a network namespace here ({})",
                    err.trim()
                );
                return false;
            }
            panic!(
                "announce test failed in its namespace:\n{}{}",
                String::from_utf8_lossy(&o.stdout),
                err
            );
        }
        Err(e) => {
            eprintln!("skipped: unshare not available ({e})");
            false
        }
    }
}

#[test]
fn registrars_learned_from_announces() {
    if std::env::var_os(IN_NETNS).is_none() {
        run_in_private_netns("registrars_learned_from_announces");
        return;
    }
    // In our own network namespace: a registrar announcing on a multicast
    // group, and a context that knows no registrar but listens to the group.
    let group: std::net::SocketAddr = "239.255.77.77:47311".parse().unwrap();
    let mut opts = RegistrarOptions::default();
    opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
    opts.runtime.announce = Some(group);
    let reg = RegistrarHandle::start(opts).expect("a registrar announcing on loopback multicast");
    let mut c = Config {
        announce: Some(group),
        ..Config::default()
    };
    c.client.t2_registration = Duration::from_secs(3);
    c.client.t5_server_hunt = Duration::from_millis(200);
    c.client.announce_default_port = None;
    let ctx = Context::new(c).expect("a context joining the group on loopback");
    // A second listener on the same group and port (SO_REUSEADDR).
    let c2 = Config {
        announce: Some(group),
        ..Config::default()
    };
    let ctx2 = Context::new(c2).expect("a second context shares the group port");
    drop(ctx2);
    let id = ctx
        .register_pe(PeParams::new("announced", tcp(7100), Policy::RoundRobin))
        .unwrap();
    assert_eq!(
        ctx.home().unwrap().map(|a| a.port()),
        Some(reg.local_addrs()[0].1.port())
    );
    ctx.deregister(id).unwrap();
}
