//! Scripted ENRP tests: several registrar cores in one process on virtual time
//! (through the perfect-network simulation), and single cores fed hand-made
//! peer messages for the takeover and audit corner cases.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rserpool::asap::T4Rule;
use rserpool::registrar::{
    ConnId, ConnInfo, ConnKind, Output, PeerState, Registrar, RegistrarConfig, StartupState,
    PPID_ASAP, PPID_ENRP,
};
use rserpool::sim::{registrar_addr, Faults, Node, PeSpec, Sim};
use rserpool::time::Time;
use rserpool::wire::{
    enrp_type, AsapMessage, EnrpBody, EnrpMessage, Policy, PoolElement, PoolHandle, Transport,
    UpdateAction,
};

fn fast(peers: Vec<SocketAddr>) -> RegistrarConfig {
    RegistrarConfig {
        keep_alive_interval: Duration::from_secs(2),
        keep_alive_timeout: Duration::from_secs(1),
        idle_timeout: Duration::ZERO,
        peer_heartbeat_cycle: Duration::from_secs(1),
        max_time_last_heard: Duration::from_secs(3),
        max_time_no_response: Duration::from_secs(1),
        takeover_timeout: Duration::from_secs(2),
        peer_reconnect_interval: Duration::from_secs(1),
        peers,
        ..RegistrarConfig::default()
    }
}

fn spec(pool: &str, id: u32, home: usize) -> PeSpec {
    PeSpec::new(pool, id, home)
}

fn pe(id: u32, home: u32) -> PoolElement {
    PoolElement {
        id,
        home,
        reg_life: 30,
        user_transport: Transport::Tcp {
            port: 4000,
            transport_use: 0,
            addr: IpAddr::V4(Ipv4Addr::new(10, 9, 0, (id % 250) as u8 + 1)),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

// ------------------------------------------------------- multi-core (sim)

#[test]
fn presence_exchange_and_list_request_seed_the_peer_list() {
    let mut sim = Sim::new(7, Faults::none());
    sim.add_registrar(fast(vec![]));
    // 1 and 2 know only 0; 2 learns 1 from 0's list response.
    sim.add_registrar(fast(vec![registrar_addr(0)]));
    sim.run_for(Duration::from_secs(2)).unwrap();
    sim.add_registrar(fast(vec![registrar_addr(0)]));
    sim.run_for(Duration::from_secs(5)).unwrap();
    for i in 0..3 {
        let r = sim.registrar(i).unwrap();
        assert_eq!(r.startup_state(), StartupState::Done);
        let peers = r.peers();
        assert_eq!(peers.len(), 2, "slot {i}: {peers:?}");
        for p in peers {
            assert_eq!(p.state, PeerState::Active, "slot {i}: {p:?}");
            assert_eq!(p.checksum_announced, Some(p.checksum_held));
            assert!(p.addr.is_some());
        }
    }
    assert!(sim
        .sent_types
        .contains_key(&(Node::Reg(2), PPID_ENRP, enrp_type::LIST_REQUEST)));
    assert!(sim.registrar(1).unwrap().enrp_stats().presences > 0);
}

#[test]
fn startup_download_is_chunked_one_request_per_chunk() {
    let mut sim = Sim::new(3, Faults::none());
    sim.add_registrar(RegistrarConfig {
        max_pes_per_connection: 2000,
        ..fast(vec![])
    });
    for i in 0..1000u32 {
        let mut pe = spec(&format!("pool{}", i % 7), i + 1, 0);
        pe.reg_life = 600;
        pe.config.t4_reregistration = T4Rule::Fixed(Duration::from_secs(100));
        sim.add_pe(pe);
    }
    sim.run_for(Duration::from_secs(1)).unwrap();
    assert_eq!(sim.registrar(0).unwrap().pe_count(), 1000);
    sim.add_registrar(fast(vec![registrar_addr(0)]));
    sim.run_for(Duration::from_secs(2)).unwrap();
    let newcomer = sim.registrar(1).unwrap();
    assert_eq!(newcomer.pe_count(), 1000);
    // ceil(1000 / 128) = 8 chunks, exactly one request each, no resync.
    assert_eq!(newcomer.enrp_stats().table_requests_sent, 8);
    assert_eq!(sim.registrar(0).unwrap().stats().handle_table_responses, 8);
    assert_eq!(newcomer.enrp_stats().resyncs, 0);
    sim.check_converged().unwrap();
}

#[test]
fn add_and_del_propagate_and_dead_pes_disappear_everywhere() {
    let mut sim = Sim::new(11, Faults::none());
    sim.add_registrar(fast(vec![]));
    sim.add_registrar(fast(vec![registrar_addr(0)]));
    sim.add_registrar(fast(vec![registrar_addr(0)]));
    sim.run_for(Duration::from_secs(3)).unwrap();
    sim.add_pe(spec("P", 1, 0));
    sim.add_pe(spec("P", 2, 1));
    sim.run_for(Duration::from_secs(1)).unwrap();
    let h = PoolHandle::from("P");
    let home0 = sim.registrar(0).unwrap().server_id();
    for i in 0..3 {
        let r = sim.registrar(i).unwrap();
        assert_eq!(r.pe_count(), 2);
        assert_eq!(r.pool_element(&h, 1).unwrap().home, home0);
    }
    sim.kill_pe(1);
    // Connection loss at its registrar: DEL_PE everywhere.
    sim.run_for(Duration::from_secs(1)).unwrap();
    for i in 0..3 {
        assert_eq!(sim.registrar(i).unwrap().pe_count(), 1, "slot {i}");
    }
    sim.check_converged().unwrap();
}

#[test]
fn takeover_after_silence_with_acks() {
    let mut sim = Sim::new(5, Faults::none());
    sim.add_registrar_with_id(fast(vec![]), 10);
    sim.add_registrar_with_id(fast(vec![registrar_addr(0)]), 20);
    sim.add_registrar_with_id(fast(vec![registrar_addr(0)]), 30);
    sim.run_for(Duration::from_secs(3)).unwrap();
    sim.add_pe(spec("P", 1, 0));
    sim.add_pe(spec("P", 2, 0));
    sim.run_for(Duration::from_secs(1)).unwrap();
    sim.crash(0, false); // silent: peers must find out by probing
                         // MAX-TIME-LAST-HEARD 3 s + MAX-TIME-NO-RESPONSE 1 s, then the takeover.
    sim.run_for(Duration::from_secs(6)).unwrap();
    let won: u64 = (1..3)
        .map(|i| sim.registrar(i).unwrap().enrp_stats().takeovers_won)
        .sum();
    assert_eq!(won, 1);
    // Both detect it; the highest id (30) wins, 20 acks.
    assert_eq!(sim.registrar(2).unwrap().enrp_stats().takeovers_won, 1);
    for i in 1..3 {
        let r = sim.registrar(i).unwrap();
        let dead = r.peers().into_iter().find(|p| p.id == 10).unwrap();
        assert_eq!(dead.state, PeerState::TakenOver);
        assert_eq!(dead.taken_over_by, Some(30));
    }
    sim.run_for(Duration::from_secs(10)).unwrap();
    sim.check_converged().unwrap();
}

// ------------------------------------------------- single core, scripted

const ME: u32 = 100;

struct H {
    r: Registrar,
    now: Time,
}

fn info(port: u16) -> ConnInfo {
    ConnInfo {
        kind: ConnKind::Tcp,
        remote: vec![SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 0, 1, 1)),
            port,
        )],
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), 9901),
    }
}

impl H {
    fn new(id: u32) -> H {
        H {
            r: Registrar::new(fast(vec![]), id, 1, Time::ZERO),
            now: Time::ZERO,
        }
    }
    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.r.poll_output()).collect()
    }
    fn connect(&mut self, c: u64) {
        self.r
            .handle_connected(ConnId(c), info(c as u16 + 1000), self.now);
        self.drain();
    }
    fn enrp(&mut self, c: u64, sender: u32, body: EnrpBody) -> Vec<(ConnId, EnrpMessage)> {
        let m = EnrpMessage {
            sender,
            receiver: 0,
            body,
        };
        self.r
            .handle_message(ConnId(c), PPID_ENRP, &m.to_bytes(), self.now);
        enrp_out(self.drain())
    }
    fn presence(&mut self, c: u64, sender: u32, checksum: u16) -> Vec<(ConnId, EnrpMessage)> {
        self.enrp(
            c,
            sender,
            EnrpBody::Presence {
                reply_required: false,
                checksum: Some(checksum),
                server_info: None,
            },
        )
    }
    fn add(&mut self, c: u64, sender: u32, id: u32) {
        self.enrp(
            c,
            sender,
            EnrpBody::HandleUpdate {
                takeover_suggested: false,
                action: UpdateAction::ADD_PE,
                pool_handle: "P".into(),
                pe: pe(id, sender),
            },
        );
    }
    /// Advance to `t`, running timers; the ENRP messages sent.
    fn run_until(&mut self, t: Time) -> Vec<(ConnId, EnrpMessage)> {
        let mut out = Vec::new();
        while let Some(d) = self.r.poll_timeout().filter(|d| *d <= t) {
            self.now = d.max(self.now);
            self.r.handle_timeout(self.now);
            out.extend(enrp_out(self.drain()));
        }
        self.now = t;
        out
    }
}

fn enrp_out(out: Vec<Output>) -> Vec<(ConnId, EnrpMessage)> {
    out.into_iter()
        .filter_map(|o| match o {
            Output::Send { conn, ppid, msg } if ppid == PPID_ENRP => {
                Some((conn, EnrpMessage::decode(&msg).unwrap().msg))
            }
            _ => None,
        })
        .collect()
}

/// Checksum of the given PEs in pool "P" (RFC 5353 §3.6.2).
fn checksum(ids: &[u32]) -> u16 {
    let mut sum: u32 = 0;
    for id in ids {
        let block = [b'P', 0, 0, 0];
        let idb = id.to_be_bytes();
        for w in [block, idb] {
            sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
            sum += u32::from(u16::from_be_bytes([w[2], w[3]]));
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[test]
fn reregistration_at_another_registrar_moves_ownership() {
    let mut h = H::new(ME);
    h.connect(1); // the PE
    h.connect(2); // peer 77
    h.presence(2, 77, 0xffff);
    let reg = AsapMessage::Registration {
        pool_handle: "P".into(),
        pe: pe(5, 0),
    };
    h.r.handle_message(ConnId(1), PPID_ASAP, &reg.to_bytes(), h.now);
    let out = enrp_out(h.drain());
    // ADD_PE to the peer, complete with home and ASAP transport.
    let add = out
        .iter()
        .find_map(|(_, m)| match &m.body {
            EnrpBody::HandleUpdate { action, pe, .. } if *action == UpdateAction::ADD_PE => {
                Some(pe.clone())
            }
            _ => None,
        })
        .expect("ADD_PE sent");
    assert_eq!(add.home, ME);
    assert!(add.asap_transport.is_some());
    assert!(h.r.owns(&"P".into(), 5));
    // The PE re-registers at 77: we lose it and stop keep-alives.
    h.add(2, 77, 5);
    assert!(!h.r.owns(&"P".into(), 5));
    assert_eq!(h.r.owner_connection(&"P".into(), 5), None);
    assert_eq!(h.r.pool_element(&"P".into(), 5).unwrap().home, 77);
    assert_eq!(h.r.enrp_stats().ownership_lost, 1);
    let before = h.r.stats().keep_alives_sent;
    h.run_until(Time::from_secs(2));
    assert_eq!(h.r.stats().keep_alives_sent, before);
    h.r.check_consistency().unwrap();
    // A late DEL_PE from a former home is ignored; the owner's is applied.
    h.enrp(
        2,
        88,
        EnrpBody::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::DEL_PE,
            pool_handle: "P".into(),
            pe: pe(5, 88),
        },
    );
    assert_eq!(h.r.pe_count(), 1);
    h.enrp(
        2,
        77,
        EnrpBody::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::DEL_PE,
            pool_handle: "P".into(),
            pe: pe(5, 77),
        },
    );
    assert_eq!(h.r.pe_count(), 0);
}

#[test]
fn checksum_mismatch_triggers_w1_resync_that_repairs_missing_and_extra() {
    let mut h = H::new(ME);
    h.connect(2);
    h.presence(2, 77, 0xffff);
    h.add(2, 77, 1);
    h.add(2, 77, 2); // extra: 77 no longer has it
    assert_eq!(h.r.peers()[0].checksum_held, checksum(&[1, 2]));
    // 77 really owns {1, 3}.
    let out = h.presence(2, 77, checksum(&[1, 3]));
    let req: Vec<_> = out
        .iter()
        .filter(|(_, m)| {
            matches!(
                m.body,
                EnrpBody::HandleTableRequest {
                    own_children_only: true
                }
            )
        })
        .collect();
    assert_eq!(req.len(), 1, "{out:?}");
    assert_eq!(req[0].1.receiver, 77);
    assert_eq!(h.r.peers()[0].state, PeerState::Synchronising);
    // First chunk (M=1): one more request follows.
    let out = h.enrp(
        2,
        77,
        EnrpBody::HandleTableResponse {
            reject: false,
            more: true,
            pools: vec![("P".into(), vec![pe(1, 77)])],
        },
    );
    assert_eq!(out.len(), 1);
    assert!(matches!(
        out[0].1.body,
        EnrpBody::HandleTableRequest {
            own_children_only: true
        }
    ));
    h.enrp(
        2,
        77,
        EnrpBody::HandleTableResponse {
            reject: false,
            more: false,
            pools: vec![("P".into(), vec![pe(3, 77)])],
        },
    );
    let ids: Vec<u32> = h.r.pool_elements()[0].1.iter().map(|p| p.id).collect();
    assert_eq!(ids, vec![1, 3]);
    assert_eq!(h.r.peers()[0].checksum_held, checksum(&[1, 3]));
    assert_eq!(h.r.peers()[0].state, PeerState::Active);
    assert_eq!(h.r.enrp_stats().swept, 1);
    h.r.check_consistency().unwrap();
    // Equal checksum: nothing.
    assert!(h.presence(2, 77, checksum(&[1, 3])).is_empty());
}

/// A core with peers 50 (goes silent, owns PE 9) and `other` (keeps talking);
/// run until our probe of 50 fails and our takeover starts.
fn takeover_started(me: u32, other: u32) -> H {
    let mut h = H::new(me);
    h.connect(1);
    h.connect(2);
    h.presence(1, 50, 0xffff);
    h.presence(2, other, 0xffff);
    h.add(1, 50, 9);
    let mut t = 0;
    loop {
        t += 500;
        let out = h.run_until(Time::from_millis(t));
        h.presence(2, other, 0xffff);
        if out
            .iter()
            .any(|(_, m)| matches!(m.body, EnrpBody::InitTakeover { target: 50 }))
        {
            // Group-cast to both peers, the target included.
            let to: Vec<ConnId> = out
                .iter()
                .filter(|(_, m)| matches!(m.body, EnrpBody::InitTakeover { .. }))
                .map(|(c, m)| {
                    assert_eq!(m.receiver, 0);
                    *c
                })
                .collect();
            assert_eq!(to, vec![ConnId(1), ConnId(2)]);
            return h;
        }
        assert!(t < 10_000, "no takeover started");
    }
}

#[test]
fn takeover_completes_on_all_acks_and_owns_the_pes() {
    let mut h = takeover_started(ME, 200);
    assert_eq!(h.r.enrp_stats().takeovers_started, 1);
    let out = h.enrp(2, 200, EnrpBody::InitTakeoverAck { target: 50 });
    assert!(
        out.iter()
            .any(|(c, m)| *c == ConnId(2)
                && matches!(m.body, EnrpBody::TakeoverServer { target: 50 }))
    );
    assert!(h.r.owns(&"P".into(), 9));
    assert_eq!(h.r.pool_element(&"P".into(), 9).unwrap().home, ME);
    let p50 = h.r.peers().into_iter().find(|p| p.id == 50).unwrap();
    assert_eq!(p50.state, PeerState::TakenOver);
    h.r.check_consistency().unwrap();
    // Taken-over PEs live for their Registration Life (30 s) unless they
    // re-register with us.
    h.run_until(Time::from_secs(60));
    assert_eq!(h.r.pe_count(), 0);
    assert!(!h.r.owns(&"P".into(), 9));
    h.r.check_consistency().unwrap();
}

#[test]
fn concurrent_takeovers_are_won_by_the_highest_id() {
    // We are 100, the other initiator 200: we abort ours and ack theirs.
    let mut h = takeover_started(ME, 200);
    let out = h.enrp(2, 200, EnrpBody::InitTakeover { target: 50 });
    assert!(out
        .iter()
        .any(|(_, m)| m.receiver == 200
            && matches!(m.body, EnrpBody::InitTakeoverAck { target: 50 })));
    assert_eq!(h.r.enrp_stats().takeovers_aborted, 1);
    // A late ack to our aborted takeover completes nothing.
    h.enrp(2, 200, EnrpBody::InitTakeoverAck { target: 50 });
    assert!(!h.r.owns(&"P".into(), 9));
    // The winner's TAKEOVER_SERVER is applied: PEs now home at 200.
    h.enrp(2, 200, EnrpBody::TakeoverServer { target: 50 });
    assert_eq!(h.r.pool_element(&"P".into(), 9).unwrap().home, 200);
    let p50 = h.r.peers().into_iter().find(|p| p.id == 50).unwrap();
    assert_eq!(p50.state, PeerState::TakenOver);
    assert_eq!(p50.taken_over_by, Some(200));
    h.r.check_consistency().unwrap();

    // We are 300, the other 200: we ignore theirs and keep ours.
    let mut h = takeover_started(300, 200);
    let out = h.enrp(2, 200, EnrpBody::InitTakeover { target: 50 });
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(h.r.enrp_stats().takeovers_aborted, 0);
    h.enrp(2, 200, EnrpBody::InitTakeoverAck { target: 50 });
    assert!(h.r.owns(&"P".into(), 9));
}

#[test]
fn target_alive_aborts_the_takeover() {
    let mut h = takeover_started(ME, 200);
    h.presence(1, 50, checksum(&[9]));
    assert_eq!(h.r.enrp_stats().takeovers_aborted, 1);
    let p50 = h.r.peers().into_iter().find(|p| p.id == 50).unwrap();
    assert_eq!(p50.state, PeerState::Active);
    // The late ack completes nothing.
    h.enrp(2, 200, EnrpBody::InitTakeoverAck { target: 50 });
    assert!(!h.r.owns(&"P".into(), 9));
    // And the target itself answers INIT_TAKEOVER with a presence to all.
    let mut t = H::new(50);
    t.connect(1);
    t.presence(1, 200, 0xffff);
    let out = t.enrp(1, 200, EnrpBody::InitTakeover { target: 50 });
    assert!(out
        .iter()
        .any(|(_, m)| matches!(m.body, EnrpBody::Presence { .. })));
}

#[test]
fn list_request_is_answered_for_anyone_and_wrong_receivers_are_dropped() {
    let mut h = H::new(ME);
    h.connect(1);
    h.connect(2);
    h.enrp(
        1,
        77,
        EnrpBody::Presence {
            reply_required: false,
            checksum: Some(0xffff),
            server_info: Some(rserpool::wire::ServerInfo {
                server_id: 77,
                transport: Transport::Tcp {
                    port: 9901,
                    transport_use: 0,
                    addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 77)),
                },
            }),
        },
    );
    // A dump tool (sender 0) asks: it is answered, not added as a peer.
    let out = h.enrp(2, 0, EnrpBody::ListRequest);
    match &out[..] {
        [(c, m)] => {
            assert_eq!(*c, ConnId(2));
            let EnrpBody::ListResponse { reject, servers } = &m.body else {
                panic!("{m:?}")
            };
            assert!(!reject);
            assert_eq!(servers.len(), 1);
            assert_eq!(servers[0].server_id, 77);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h.r.peers().len(), 1);
    // Addressed to another server: dropped.
    let m = EnrpMessage {
        sender: 77,
        receiver: 999,
        body: EnrpBody::ListRequest,
    };
    h.r.handle_message(ConnId(1), PPID_ENRP, &m.to_bytes(), h.now);
    assert!(h.drain().is_empty());
}

#[test]
fn connect_ids_come_from_the_cores_namespace() {
    let mut r = Registrar::new(
        fast(vec![registrar_addr(1), registrar_addr(2)]),
        ME,
        1,
        Time::ZERO,
    );
    assert_eq!(r.poll_timeout(), Some(Time::ZERO));
    r.handle_timeout(Time::ZERO);
    let out: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    let Output::Connect { conn, addr, kind } = &out[0] else {
        panic!("{out:?}")
    };
    assert!(conn.0 & rserpool::registrar::CORE_CONN_BIT != 0);
    assert_eq!((*addr, *kind), (registrar_addr(1), ConnKind::Tcp));
    // Mentor unreachable: the backup is tried next.
    r.handle_connect_failed(*conn, Time::from_millis(10));
    let out: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    assert!(matches!(&out[..], [Output::Connect { addr, .. }] if *addr == registrar_addr(2)));
    assert_eq!(r.startup_state(), StartupState::Connecting(1));
}
