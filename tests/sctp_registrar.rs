//! The registrar over kernel SCTP: registration, resolution and the PE's ASAP
//! transport. Needs kernel SCTP; on hosts without it each test says so and
//! passes (`scripts/sctp-vm` runs them for real, see tests/interop/run.sh).

mod common;

use std::net::{IpAddr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use rserpool::runtime::{
    probe_sctp, EndpointUrl, Proto, RegistrarHandle, RegistrarOptions, SctpClient, StartError,
};
use rserpool::wire::{AsapMessage, Policy, PoolElement, Transport};

fn no_sctp() -> bool {
    if probe_sctp().is_available() {
        return false;
    }
    eprintln!("skipping: no kernel SCTP");
    true
}

fn sctp_pe(id: u32, port: u16) -> PoolElement {
    PoolElement {
        user_transport: Transport::Sctp {
            port,
            transport_use: 0,
            addrs: vec![IpAddr::from([127, 0, 0, 1])],
        },
        ..pe(id, port, Policy::RoundRobin, 60)
    }
}

fn ask_sctp(c: &mut SctpClient, m: &AsapMessage, want: fn(&AsapMessage) -> bool) -> AsapMessage {
    c.send_asap(m).expect("send");
    loop {
        let got = c.recv_asap(T).expect("answer from the registrar");
        if want(&got) {
            return got;
        }
    }
}

#[test]
fn sctp_url_without_kernel_support_is_a_clear_error() {
    if probe_sctp().is_available() {
        eprintln!("skipping: the kernel has SCTP");
        return;
    }
    let mut o = RegistrarOptions::default();
    o.runtime.listen = vec![EndpointUrl::parse("sctp://127.0.0.1:0").unwrap()];
    match RegistrarHandle::start(o) {
        Err(StartError::Unsupported(m)) => assert!(m.contains("no SCTP support"), "{m}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
    // The command line says the same, and fails.
    let out = Command::new(bin())
        .args(["registrar", "--asap", "sctp://127.0.0.1:0"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("this kernel has no SCTP support"), "{err}");
}

#[test]
fn register_and_resolve_over_multihomed_sctp() {
    if no_sctp() {
        return;
    }
    let mut o = RegistrarOptions::default();
    o.runtime.listen = vec![
        EndpointUrl::parse("sctp://127.0.0.1,127.0.0.2:0").unwrap(),
        EndpointUrl::parse("tcp://127.0.0.1:0").unwrap(),
    ];
    o.server_id = Some(0x5c7b_0001);
    // This PE never answers keep-alives: without this it is removed after
    // ~10 s, which an emulated VM under load reaches before the dump below.
    o.registrar.keep_alive_interval = Duration::ZERO;
    let reg = RegistrarHandle::start(o).unwrap();
    let addrs = reg.local_addrs().to_vec();
    assert_eq!(addrs.len(), 3, "{addrs:?}");
    let port = addrs[0].1.port();
    assert!(addrs[..2]
        .iter()
        .all(|&(p, a)| p == Proto::Sctp && a.port() == port));
    let urls = reg.local_urls();
    assert_eq!(urls[0], format!("sctp://127.0.0.1,127.0.0.2:{port}"));
    let sctp_addrs: Vec<SocketAddr> = addrs[..2].iter().map(|&(_, a)| a).collect();

    // Register over SCTP (the second address only: multi-homing at work).
    let mut c = SctpClient::connect(&sctp_addrs[1..], T).unwrap();
    let me = c.local_addr().unwrap();
    granted(
        &ask_sctp(&mut c, &common::reg("sctp-pool", sctp_pe(77, 5077)), |m| {
            matches!(m, AsapMessage::RegistrationResponse { .. })
        }),
        77,
    );
    // Resolve over SCTP on another association.
    let mut r = SctpClient::connect(&sctp_addrs, T).unwrap();
    match ask_sctp(&mut r, &resolve("sctp-pool", None), is_resolution) {
        AsapMessage::HandleResolutionResponse { elements, .. } => {
            assert_eq!(elements.len(), 1);
            assert_eq!(elements[0].id, 77);
        }
        _ => unreachable!(),
    }
    // The registrar recorded the PE's ASAP transport: SCTP, our address and port.
    let pools = reg.pool_elements().unwrap();
    let pe = &pools[0].1[0];
    match &pe.asap_transport {
        Some(Transport::Sctp { port, addrs, .. }) => {
            assert_eq!(*port, me.port());
            assert!(addrs.contains(&me.ip()), "{addrs:?} vs {me}");
        }
        other => panic!("expected an SCTP ASAP transport, got {other:?}"),
    }
    // The tools speak SCTP too.
    let out = Command::new(bin())
        .args(["dump", "--registrar", &urls[0]])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("0x0000004d"), "{text}");
    let out = Command::new(bin())
        .args(["resolve", "--registrar", &urls[0], "--pool", "sctp-pool"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("0x0000004d"));

    // Losing the registering association removes the PE.
    drop(c);
    let end = std::time::Instant::now() + T;
    while reg
        .pool_elements()
        .unwrap()
        .iter()
        .any(|(_, pes)| !pes.is_empty())
    {
        assert!(std::time::Instant::now() < end, "PE not removed");
        std::thread::sleep(Duration::from_millis(20));
    }
    reg.stop().unwrap();
}

#[test]
fn cli_prints_one_line_per_endpoint_with_all_sctp_addresses() {
    if no_sctp() {
        return;
    }
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(bin())
        .args([
            "registrar",
            "--asap",
            "tcp://127.0.0.1:0",
            "--asap",
            "sctp://127.0.0.1,127.0.0.3:0",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let Some(Ok(l)) = lines.next() else { break };
        if let Some(u) = l.strip_prefix("listening asap ") {
            seen.push(u.to_string());
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].starts_with("tcp://127.0.0.1:"), "{seen:?}");
    assert!(
        seen[1].starts_with("sctp://127.0.0.1,127.0.0.3:"),
        "{seen:?}"
    );
    // The SCTP URL it prints is one a client can use as is.
    let u = EndpointUrl::parse(&seen[1]).unwrap();
    assert_ne!(u.port, 0);
}

/// The library (api::Context, and so the C API and the bindings) reaches a
/// registrar over kernel SCTP: a PE registers and a PU resolves it through a
/// multi-homed `sctp://` registrar URL.
#[test]
fn library_context_uses_an_sctp_registrar() {
    use rserpool::api::{Config, Context, PeParams};
    if no_sctp() {
        return;
    }
    let mut o = RegistrarOptions::default();
    o.runtime.listen = vec![EndpointUrl::parse("sctp://127.0.0.1,127.0.0.2:0").unwrap()];
    let reg = RegistrarHandle::start(o).unwrap();
    let url = reg.local_urls()[0].clone();
    assert!(url.starts_with("sctp://127.0.0.1,127.0.0.2:"), "{url}");
    let mut c = Config::default();
    c.add_registrar(&url).unwrap();
    c.client.t1_request = Duration::from_secs(5);
    c.client.t2_registration = Duration::from_secs(5);
    let ctx = Context::new(c).expect("a context with an SCTP registrar");
    let pe = PeParams::new(
        "SctpPool",
        Transport::Tcp {
            port: 7300,
            transport_use: 0,
            addr: IpAddr::from([127, 0, 0, 1]),
        },
        Policy::RoundRobin,
    );
    let id = ctx.register_pe(pe).expect("registered over SCTP");
    let s = ctx
        .get_primary_server(b"SctpPool")
        .expect("resolved over SCTP");
    assert_eq!(s.pe_id, id);
    // The registrar saw the PE over SCTP: its ASAP transport is SCTP.
    let pools = reg.pool_elements().unwrap();
    let pe = &pools[0].1[0];
    assert!(
        matches!(pe.asap_transport, Some(Transport::Sctp { .. })),
        "{:?}",
        pe.asap_transport
    );
    ctx.deregister(id).unwrap();
}

/// Two registrars peer over ENRP on kernel SCTP (PPID 12, as RSPLIB speaks
/// it): a PE registered at one is resolvable at the other.
#[test]
fn enrp_between_registrars_over_sctp() {
    if no_sctp() {
        return;
    }
    let start = |peer: Option<SocketAddr>| {
        let mut o = RegistrarOptions::default();
        o.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
        o.enrp = vec![EndpointUrl::parse("sctp://127.0.0.1:0").unwrap()];
        o.registrar = rserpool::registrar::RegistrarConfig::rsplib_profile();
        o.registrar.reg_life_unit = rserpool::registrar::RegLifeUnit::Seconds;
        if let Some(p) = peer {
            o.registrar.peers.push(p);
            o.registrar.sctp_peers.push(p);
        }
        RegistrarHandle::start(o).unwrap()
    };
    let a = start(None);
    let a_enrp = a.enrp_addrs()[0];
    assert_eq!(a_enrp.0, Proto::Sctp);
    let b = start(Some(a_enrp.1));
    let a_asap = a.local_addrs()[0].1;
    let b_asap = b.local_addrs()[0].1;
    let mut pe = rserpool::runtime::blocking::TcpMapClient::connect(a_asap, T).unwrap();
    let reply = register(
        &mut pe,
        "SctpEnrp",
        common::pe(0x51, 7400, Policy::RoundRobin, 300),
    );
    assert!(
        matches!(
            reply,
            AsapMessage::RegistrationResponse { reject: false, .. }
        ),
        "{reply:?}"
    );
    // B learns it over the SCTP peer association.
    let deadline = std::time::Instant::now() + T;
    let mut pu = rserpool::runtime::blocking::TcpMapClient::connect(b_asap, T).unwrap();
    loop {
        let ids: Vec<u32> = match ask(&mut pu, &resolve("SctpEnrp", None), is_resolution) {
            AsapMessage::HandleResolutionResponse { elements, .. } => {
                elements.iter().map(|e| e.id).collect()
            }
            other => panic!("{other:?}"),
        };
        if ids == vec![0x51] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "B never saw the PE: {ids:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let peers = b.peers().unwrap();
    assert!(peers.iter().any(|p| p.id == a.server_id()), "{peers:?}");
}

#[test]
fn sctp_enrp_peer_association_starts_from_the_enrp_port() {
    if no_sctp() {
        return;
    }
    // A peer the way RSPLIB's rspregistrar sees one: it keeps a presence
    // only if the ENRP port in its Server Information is the port the
    // association comes from. Here a plain SCTP listener poses as that peer.
    use rserpool::runtime::sctp::SctpSocket;
    use rserpool::wire::{EnrpBody, EnrpMessage};
    let peer =
        SctpSocket::listen_on(&["127.0.0.1:0".parse().unwrap()], &Default::default()).unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let mut o = RegistrarOptions::default();
    o.runtime.listen = vec![EndpointUrl::parse("sctp://127.0.0.1:0").unwrap()];
    o.enrp = vec![EndpointUrl::parse("sctp://127.0.0.1:0").unwrap()];
    o.registrar = rserpool::registrar::RegistrarConfig::rsplib_profile();
    o.registrar.peers = vec![peer_addr];
    o.registrar.sctp_peers = vec![peer_addr];
    o.server_id = Some(0x5c7b_0e01);
    let reg = RegistrarHandle::start(o).unwrap();
    let enrp = reg.enrp_addrs()[0].1;
    let deadline = std::time::Instant::now() + T;
    let sock = loop {
        match peer.accept() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "the registrar never dialled"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("{e}"),
        }
    };
    assert_eq!(sock.peer_addr().unwrap(), enrp, "the association's source");
    let mut c = SctpClient::from_socket(sock);
    let presence = loop {
        let m = c.recv_enrp(T).expect("ENRP from the registrar");
        if let EnrpMessage {
            body:
                EnrpBody::Presence {
                    server_info: Some(si),
                    ..
                },
            ..
        } = m
        {
            break si;
        }
    };
    assert_eq!(presence.server_id, 0x5c7b_0e01);
    assert_eq!(presence.transport.port(), Some(enrp.port()));
    assert_eq!(presence.transport.addrs(), vec![enrp.ip()]);
    assert!(matches!(presence.transport, Transport::Sctp { .. }));
}
