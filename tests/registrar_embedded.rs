//! The library entry point: a registrar embedded in this process.

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::*;
use rserpool::runtime::blocking::TcpMapClient;
use rserpool::runtime::{EndpointUrl, Proto, RegistrarHandle, RegistrarOptions};
use rserpool::wire::{AsapMessage, Policy};

fn options() -> RegistrarOptions {
    let mut o = RegistrarOptions::default();
    o.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
    o
}

#[test]
fn start_serve_inspect_stop() {
    let mut o = options();
    o.server_id = Some(0x1234_5678);
    let reg = RegistrarHandle::start(o).unwrap();
    assert_eq!(reg.server_id(), 0x1234_5678);
    let (proto, addr) = reg.local_addrs()[0];
    assert_eq!(proto, Proto::Tcp);
    assert_ne!(addr.port(), 0);
    assert_eq!(reg.local_urls(), vec![format!("tcp://{addr}")]);

    let mut c = TcpMapClient::connect(addr, T).unwrap();
    granted(
        &register(&mut c, "emb", pe(3, 5003, Policy::RoundRobin, 60)),
        3,
    );
    assert_eq!(resolved(&mut c, "emb"), Ok(vec![3]));
    let pools = reg.pool_elements().unwrap();
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0].1[0].home, 0x1234_5678);
    assert_eq!(reg.stats().unwrap().registrations, 1);
    assert!(reg.is_running());
    reg.stop().unwrap();
    // Stopping closed the connection.
    c.wait_closed(T).unwrap();
}

#[test]
fn bind_errors_come_back_from_start() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut o = options();
    o.runtime.listen =
        vec![EndpointUrl::parse(&format!("tcp://{}", busy.local_addr().unwrap())).unwrap()];
    assert!(RegistrarHandle::start(o).is_err());
    let mut o = options();
    o.runtime.listen = vec![EndpointUrl::parse("sctp://127.0.0.1:0").unwrap()];
    if !rserpool::runtime::probe_sctp().is_available() {
        let e = RegistrarHandle::start(o).unwrap_err().to_string();
        assert!(e.contains("SCTP"), "{e}");
    }
}

#[test]
fn announces_go_only_where_configured() {
    // A local UDP socket stands in for the group (no multicast needed).
    let sink = UdpSocket::bind("127.0.0.1:0").unwrap();
    sink.set_read_timeout(Some(T)).unwrap();
    let mut o = options();
    o.server_id = Some(77);
    o.runtime.announce = Some(sink.local_addr().unwrap());
    o.registrar.announce_interval = Some(Duration::from_millis(50));
    let reg = RegistrarHandle::start(o).unwrap();
    let mut buf = [0u8; 2048];
    let n = sink.recv(&mut buf).expect("an announce");
    match AsapMessage::decode(&buf[..n]).unwrap().msg {
        AsapMessage::ServerAnnounce {
            server_id,
            transports,
        } => {
            assert_eq!(server_id, 77);
            // The TCP listener, so PUs know to use the TCP mapping.
            assert_eq!(transports.len(), 1);
            assert_eq!(transports[0].port(), Some(reg.local_addrs()[0].1.port()));
        }
        other => panic!("{other:?}"),
    }
    reg.stop().unwrap();

    // Not configured: nothing is sent even if the core has an interval.
    let mut o = options();
    o.registrar.announce_interval = Some(Duration::from_millis(10));
    let reg = RegistrarHandle::start(o).unwrap();
    // Twenty would-be intervals pass (time for the negative, not a sync point).
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(reg.stats().unwrap().announces, 0);
    reg.stop().unwrap();
}
