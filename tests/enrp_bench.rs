//! Core-only handle-table download between two registrar cores in memory
//! (no sockets, no simulation overhead). Ignored by default; run in release:
//! `cargo test --release --test enrp_bench -- --ignored --nocapture`
//! (RSERPOOL_BENCH_PES=100000,1000000 chooses the sizes).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use rserpool::registrar::{
    ConnId, ConnInfo, ConnKind, Output, Registrar, RegistrarConfig, StartupState, PPID_ENRP,
};
use rserpool::time::Time;
use rserpool::wire::{EnrpBody, EnrpMessage, Policy, PoolElement, Transport, UpdateAction};

fn cfg(peers: Vec<SocketAddr>) -> RegistrarConfig {
    RegistrarConfig {
        max_pes_total: 2_000_000,
        max_pes_per_pool: 2_000_000,
        max_pools: 2_000_000,
        idle_timeout: Duration::ZERO,
        peers,
        ..RegistrarConfig::default()
    }
}

fn info() -> ConnInfo {
    ConnInfo {
        kind: ConnKind::Tcp,
        remote: vec![SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1)],
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901),
    }
}

fn one(n: u32) {
    let now = Time::ZERO;
    let mut a = Registrar::new(cfg(vec![]), 1, 1, now);
    a.handle_connected(ConnId(1), info(), now);
    let fill = Instant::now();
    for i in 0..n {
        let m = EnrpMessage {
            sender: 77,
            receiver: 0,
            body: EnrpBody::HandleUpdate {
                takeover_suggested: false,
                action: UpdateAction::ADD_PE,
                pool_handle: format!("pool{}", i / 1000).as_str().into(),
                pe: PoolElement {
                    id: i + 1,
                    home: 77,
                    reg_life: 60,
                    user_transport: Transport::Tcp {
                        port: 4000,
                        transport_use: 0,
                        addr: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)),
                    },
                    policy: Policy::RoundRobin,
                    asap_transport: None,
                },
            },
        };
        a.handle_message(ConnId(1), PPID_ENRP, &m.to_bytes(), now);
        while a.poll_output().is_some() {}
    }
    let fill = fill.elapsed();
    assert_eq!(a.pe_count(), n as usize);

    let mut b = Registrar::new(cfg(vec![info().local]), 2, 2, now);
    b.handle_timeout(now);
    let Some(Output::Connect { conn: bc, .. }) = b.poll_output() else {
        panic!("no connect")
    };
    let ac = ConnId(2);
    let start = Instant::now();
    a.handle_connected(ac, info(), now);
    b.handle_connected(bc, info(), now);
    let mut bytes = 0usize;
    loop {
        let mut idle = true;
        while let Some(o) = b.poll_output() {
            if let Output::Send { conn, ppid, msg } = o {
                if conn == bc {
                    idle = false;
                    a.handle_message(ac, ppid, &msg, now);
                }
            }
        }
        while let Some(o) = a.poll_output() {
            if let Output::Send { conn, ppid, msg } = o {
                if conn == ac {
                    idle = false;
                    bytes += msg.len();
                    b.handle_message(bc, ppid, &msg, now);
                }
            }
        }
        if idle {
            break;
        }
    }
    let took = start.elapsed();
    assert_eq!(b.startup_state(), StartupState::Done);
    assert_eq!(b.pe_count(), n as usize);
    println!(
        "{n} PEs: fill {fill:?}; download {took:?} ({} requests, {} MB, {:.0} ns/PE)",
        b.enrp_stats().table_requests_sent,
        bytes / 1_000_000,
        took.as_nanos() as f64 / f64::from(n)
    );
}

#[test]
#[ignore = "benchmark; run in release"]
fn download_time() {
    let sizes = std::env::var("RSERPOOL_BENCH_PES").unwrap_or_else(|_| "100000,1000000".into());
    for n in sizes.split(',') {
        one(n.trim().parse().expect("a number"));
    }
}

#[test]
fn download_small() {
    one(1000);
}
