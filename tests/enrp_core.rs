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
    enrp_type, AsapMessage, EnrpBody, EnrpMessage, Policy, PoolElement, PoolHandle, ServerInfo,
    Transport, UpdateAction,
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
fn deregistering_another_servers_pe_moves_it_here_then_deletes_it_everywhere() {
    // PE 5 is homed at peer 77 (which died, say); the PE hunted and its
    // deregistration reaches us. Peers apply DEL_PE only from the owner, so
    // we announce it as ours first, then delete it.
    let mut h = H::new(ME);
    h.connect(1); // the PE's new connection
    h.connect(2); // peer 77
    h.connect(3); // peer 88
    h.presence(2, 77, 0xffff);
    h.presence(3, 88, 0xffff);
    h.add(2, 77, 5);
    assert_eq!(h.r.pool_element(&"P".into(), 5).unwrap().home, 77);
    let dereg = AsapMessage::Deregistration {
        pool_handle: "P".into(),
        pe_id: 5,
    };
    h.r.handle_message(ConnId(1), PPID_ASAP, &dereg.to_bytes(), h.now);
    let out = h.drain();
    assert!(out.iter().any(|o| matches!(o,
        Output::Send { conn: ConnId(1), ppid: PPID_ASAP, msg }
            if matches!(AsapMessage::decode(msg).unwrap().msg,
                AsapMessage::DeregistrationResponse { error: None, .. }))));
    assert_eq!(h.r.pe_count(), 0);
    for peer in [2, 3] {
        let updates: Vec<(UpdateAction, u32, u32)> = enrp_out(out.clone())
            .into_iter()
            .filter(|(c, _)| *c == ConnId(peer))
            .filter_map(|(_, m)| match m.body {
                EnrpBody::HandleUpdate { action, pe, .. } => Some((action, pe.id, pe.home)),
                _ => None,
            })
            .collect();
        assert_eq!(
            updates,
            [(UpdateAction::ADD_PE, 5, ME), (UpdateAction::DEL_PE, 5, ME)],
            "to peer conn {peer}"
        );
    }
    // An unknown PE is a success with nothing to tell.
    h.r.handle_message(ConnId(1), PPID_ASAP, &dereg.to_bytes(), h.now);
    assert!(enrp_out(h.drain()).is_empty());
    h.r.check_consistency().unwrap();
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
    let Output::Connect {
        conn, addr, kind, ..
    } = &out[0]
    else {
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

// ------------------------------------------------ presence multicast

fn multicast(peers: Vec<SocketAddr>) -> RegistrarConfig {
    RegistrarConfig {
        enrp_multicast: true,
        ..fast(peers)
    }
}

#[test]
fn multicast_alone_finds_every_peer_and_converges() {
    let run = |mcast: bool| {
        let mut sim = Sim::new(21, Faults::none());
        for _ in 0..3 {
            sim.add_registrar(RegistrarConfig {
                enrp_multicast: mcast,
                ..fast(vec![])
            });
        }
        for (id, home) in [(1, 0), (2, 1), (3, 2), (4, 2)] {
            sim.add_pe(spec("P", id, home));
        }
        sim.run_for(Duration::from_secs(5)).unwrap();
        sim
    };
    // Control: without the group nobody knows anybody.
    let alone = run(false);
    assert!(alone.check_converged().is_err());
    assert!((0..3).all(|i| alone.registrar(i).unwrap().peers().is_empty()));

    let sim = run(true);
    sim.check_converged().unwrap();
    let mut discovered = 0;
    for i in 0..3 {
        let r = sim.registrar(i).unwrap();
        assert_eq!(r.pe_count(), 4, "slot {i}");
        let peers = r.peers();
        assert_eq!(peers.len(), 2, "slot {i}: {peers:?}");
        for p in &peers {
            assert_eq!(p.state, PeerState::Active, "slot {i}: {p:?}");
            assert_eq!(p.checksum_announced, Some(p.checksum_held));
            assert_eq!(p.addr.map(|a| a.port()), Some(9901));
        }
        let e = r.enrp_stats();
        // Its own presences came back to it (the sim loops the group back).
        assert!(e.multicast_sent > 0 && e.multicast_ignored > 0, "{e:?}");
        assert_eq!(e.multicast_malformed, 0);
        discovered += e.peers_discovered;
    }
    // Every pair met through the group at least once; the first presence of
    // each goes out at its start, so most meet both ways.
    assert!(discovered >= 3, "{discovered}");
    assert!(sim
        .sent_types
        .contains_key(&(Node::Reg(2), 0, enrp_type::PRESENCE)));
}

#[test]
fn multicast_late_joiner_syncs_and_silent_death_is_taken_over() {
    let mut sim = Sim::new(
        22,
        Faults {
            loss: 0.0,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(5),
            reorder: 0.0,
            fault_interval: None,
        },
    );
    sim.add_registrar_with_id(multicast(vec![]), 10);
    sim.add_registrar_with_id(multicast(vec![]), 20);
    for (id, home) in [(1, 0), (2, 0), (3, 1)] {
        sim.add_pe(spec("P", id, home));
    }
    sim.run_for(Duration::from_secs(3)).unwrap();
    sim.check_converged().unwrap();
    // A newcomer configured with nothing but the group gets everything.
    sim.add_registrar_with_id(multicast(vec![]), 30);
    sim.run_for(Duration::from_secs(3)).unwrap();
    sim.check_converged().unwrap();
    assert_eq!(sim.registrar(2).unwrap().pe_count(), 3);
    assert_eq!(sim.registrar(2).unwrap().peers().len(), 2);
    // A silent death: found by probing as for configured peers, taken over
    // by the highest id, and its PEs move on.
    sim.crash(0, false);
    sim.run_for(Duration::from_secs(10)).unwrap();
    for i in 1..3 {
        let r = sim.registrar(i).unwrap();
        let dead = r.peers().into_iter().find(|p| p.id == 10).unwrap();
        assert_eq!(dead.state, PeerState::TakenOver, "slot {i}");
        assert_eq!(dead.taken_over_by, Some(30));
    }
    sim.check_converged().unwrap();
}

/// A registrar core on the group, alone, with its ENRP endpoint at
/// 10.0.0.1:9901.
fn mcast_core(cfg: RegistrarConfig) -> H {
    let mut h = H {
        r: Registrar::new(
            RegistrarConfig {
                enrp_multicast: true,
                enrp_transport: Some(Transport::Tcp {
                    port: 9901,
                    transport_use: 0,
                    addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                }),
                ..cfg
            },
            ME,
            1,
            Time::ZERO,
        ),
        now: Time::ZERO,
    };
    // The first presence goes out at once.
    h.r.handle_timeout(Time::ZERO);
    let out = h.drain();
    assert!(
        matches!(&out[..], [Output::EnrpMulticast { .. }]),
        "{out:?}"
    );
    h
}

fn tcp_info(sender: u32, ip: [u8; 4], port: u16) -> Option<ServerInfo> {
    Some(ServerInfo {
        server_id: sender,
        transport: Transport::Tcp {
            port,
            transport_use: 0,
            addr: IpAddr::from(ip),
        },
    })
}

fn presence_bytes(sender: u32, receiver: u32, server_info: Option<ServerInfo>) -> Vec<u8> {
    EnrpMessage {
        sender,
        receiver,
        body: EnrpBody::Presence {
            reply_required: false,
            checksum: Some(0xffff),
            server_info,
        },
    }
    .to_bytes()
}

fn src(last: u8) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)), 40000)
}

impl H {
    fn mcast(&mut self, bytes: &[u8], from: SocketAddr) -> Vec<Output> {
        self.r.handle_multicast(bytes, from, self.now);
        self.drain()
    }
}

#[test]
fn multicast_presence_goes_out_every_heartbeat_cycle() {
    let mut r = Registrar::new(
        RegistrarConfig {
            enrp_multicast: true,
            enrp_transport: Some(Transport::Tcp {
                port: 9901,
                transport_use: 0,
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
            }),
            ..fast(vec![])
        },
        ME,
        1,
        Time::ZERO,
    );
    let mut sent = Vec::new();
    let mut now = Time::ZERO;
    while now <= Time::from_millis(3500) {
        if r.poll_timeout().is_some_and(|t| t <= now) {
            r.handle_timeout(now);
            while let Some(o) = r.poll_output() {
                let Output::EnrpMulticast { msg } = o else {
                    panic!("{o:?}")
                };
                sent.push((now, EnrpMessage::decode(&msg).unwrap().msg));
            }
        }
        now = now + Duration::from_millis(10);
    }
    // At 0 s, then every PEER-HEARTBEAT-CYCLE (1 s).
    let at: Vec<u64> = sent.iter().map(|(t, _)| t.as_micros() / 1000).collect();
    assert_eq!(at, [0, 1000, 2000, 3000]);
    let m = &sent[0].1;
    assert_eq!((m.sender, m.receiver), (ME, 0));
    assert_eq!(
        m.body,
        EnrpBody::Presence {
            reply_required: false,
            checksum: Some(r.own_checksum()),
            server_info: tcp_info(ME, [10, 0, 0, 1], 9901),
        }
    );
    // Without an endpoint to name, nothing is sent.
    let mut quiet = Registrar::new(multicast(vec![]), ME, 1, Time::ZERO);
    quiet.handle_timeout(Time::ZERO);
    assert_eq!(quiet.poll_output(), None);
    assert_eq!(quiet.enrp_stats().multicast_sent, 0);
    // And never without the switch.
    let mut off = Registrar::new(fast(vec![]), ME, 1, Time::ZERO);
    assert_eq!(off.poll_timeout(), None);
    off.handle_timeout(Time::from_secs(100));
    assert_eq!(off.poll_output(), None);
}

#[test]
fn multicast_presence_from_an_unknown_server_adds_and_dials_it() {
    let mut h = mcast_core(fast(vec![]));
    let out = h.mcast(
        &presence_bytes(77, 0, tcp_info(77, [10, 0, 0, 77], 9901)),
        src(77),
    );
    let [Output::Connect {
        conn, addr, kind, ..
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    let conn = *conn;
    assert_eq!(*addr, "10.0.0.77:9901".parse().unwrap());
    assert_eq!(*kind, ConnKind::Tcp);
    let p = &h.r.peers()[0];
    assert_eq!(
        (p.id, p.addr, p.state),
        (77, Some(*addr), PeerState::Connecting)
    );
    assert_eq!(h.r.enrp_stats().peers_discovered, 1);
    // Its next presence while we connect: no second dial.
    let again = h.mcast(
        &presence_bytes(77, 0, tcp_info(77, [10, 0, 0, 77], 9901)),
        src(77),
    );
    assert!(again.is_empty(), "{again:?}");
    // Connected: we introduce ourselves and ask for its peers.
    h.r.handle_connected(conn, info(1), h.now);
    let sent = enrp_out(h.drain());
    assert_eq!(sent.len(), 2, "{sent:?}");
    assert!(sent.iter().all(|(c, _)| *c == conn));
    assert!(matches!(
        sent[0].1.body,
        EnrpBody::Presence {
            reply_required: true,
            ..
        }
    ));
    assert_eq!(sent[1].1.body, EnrpBody::ListRequest);
    // It answers: an active peer like any other.
    let m = EnrpMessage {
        sender: 77,
        receiver: ME,
        body: EnrpBody::Presence {
            reply_required: false,
            checksum: Some(0xffff),
            server_info: tcp_info(77, [10, 0, 0, 77], 9901),
        },
    };
    h.r.handle_message(conn, PPID_ENRP, &m.to_bytes(), h.now);
    h.drain();
    assert_eq!(h.r.peers()[0].state, PeerState::Active);
    assert_eq!(h.r.peers()[0].conn, Some(conn));

    // A wildcard ENRP address means the datagram's source; RSPLIB's SCTP
    // endpoint (and its receiver id set to us) is dialled over SCTP.
    let out = h.mcast(
        &presence_bytes(78, 0, tcp_info(78, [0, 0, 0, 0], 9902)),
        src(78),
    );
    assert!(
        matches!(&out[..], [Output::Connect { addr, kind: ConnKind::Tcp, .. }] if *addr == "10.0.0.78:9902".parse().unwrap()),
        "{out:?}"
    );
    let sctp = Some(ServerInfo {
        server_id: 79,
        transport: Transport::Sctp {
            port: 9901,
            transport_use: 0,
            addrs: vec![IpAddr::V4(Ipv4Addr::new(10, 0, 0, 79))],
        },
    });
    let out = h.mcast(&presence_bytes(79, ME, sctp), src(79));
    assert!(
        matches!(&out[..], [Output::Connect { addr, kind: ConnKind::Sctp, .. }] if *addr == "10.0.0.79:9901".parse().unwrap()),
        "{out:?}"
    );
    assert_eq!(h.r.enrp_stats().peers_discovered, 3);
    assert_eq!(h.r.enrp_stats().multicast_received, 4);
    h.r.check_consistency().unwrap();
}

#[test]
fn multicast_ignores_itself_other_messages_and_garbage() {
    let mut h = mcast_core(fast(vec![]));
    let before = h.r.enrp_stats();
    // Our own presence, looped back by the kernel.
    let own = presence_bytes(ME, 0, tcp_info(ME, [10, 0, 0, 1], 9901));
    assert!(h.mcast(&own, src(1)).is_empty());
    // Not a presence; for another receiver; server 0; no Server Information;
    // Server Information of another server; a port of 0.
    let update = EnrpMessage {
        sender: 77,
        receiver: 0,
        body: EnrpBody::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::ADD_PE,
            pool_handle: "P".into(),
            pe: pe(1, 77),
        },
    }
    .to_bytes();
    for bytes in [
        update,
        presence_bytes(77, 999, tcp_info(77, [10, 0, 0, 77], 9901)),
        presence_bytes(0, 0, tcp_info(0, [10, 0, 0, 77], 9901)),
        presence_bytes(77, 0, None),
        presence_bytes(77, 0, tcp_info(78, [10, 0, 0, 77], 9901)),
        presence_bytes(77, 0, tcp_info(77, [10, 0, 0, 77], 0)),
    ] {
        let out = h.mcast(&bytes, src(77));
        assert!(out.is_empty(), "{out:?}");
    }
    // Garbage: counted as malformed, never answered.
    let good = presence_bytes(77, 0, tcp_info(77, [10, 0, 0, 77], 9901));
    let mut garbage: Vec<Vec<u8>> = vec![vec![], vec![1], vec![0xff; 64]];
    garbage.push(good[..good.len() - 3].to_vec()); // truncated
    let mut wrong_len = good.clone();
    wrong_len[3] = wrong_len[3].wrapping_add(8);
    garbage.push(wrong_len);
    let mut asap = good.clone();
    asap[0] = 0x0b; // no such ENRP type
    garbage.push(asap);
    for g in &garbage {
        assert!(h.mcast(g, src(77)).is_empty());
    }
    let e = h.r.enrp_stats();
    assert!(h.r.peers().is_empty(), "{:?}", h.r.peers());
    assert_eq!(e.peers_discovered, 0);
    assert_eq!(e.multicast_malformed - before.multicast_malformed, 6);
    assert_eq!(e.multicast_ignored - before.multicast_ignored, 7);
    // The 3 presences of 77 counted as received, then dropped.
    assert_eq!(e.multicast_received, 3);
    assert_eq!(e.sent, 0);
    h.r.check_consistency().unwrap();

    // A registrar without the switch takes nothing from a group.
    let mut off = H::new(ME);
    assert!(off.mcast(&good, src(77)).is_empty());
    assert!(off.r.peers().is_empty());
    assert_eq!(off.r.enrp_stats().multicast_ignored, 1);
}

#[test]
fn multicast_floods_and_strangers_are_bounded() {
    let mut h = mcast_core(RegistrarConfig {
        multicast_rate: rserpool::registrar::RateLimit {
            per_sec: 1,
            burst: 3,
        },
        max_peers: 2,
        ..fast(vec![])
    });
    let mut dials = 0;
    for id in 1..=5u32 {
        let b = presence_bytes(id, 0, tcp_info(id, [10, 0, 0, id as u8], 9901));
        dials += h
            .mcast(&b, src(id as u8))
            .iter()
            .filter(|o| matches!(o, Output::Connect { .. }))
            .count();
    }
    let e = h.r.enrp_stats();
    // Three datagrams through the bucket, two of them new peers (the limit).
    assert_eq!(e.multicast_rate_limited, 2);
    assert_eq!((dials, e.peers_discovered), (2, 2));
    assert_eq!(h.r.peers().len(), 2);
    // A second later the bucket has one more token; the peer list is full.
    h.now = Time::from_secs(1);
    let b = presence_bytes(9, 0, tcp_info(9, [10, 0, 0, 9], 9901));
    assert!(h.mcast(&b, src(9)).is_empty());
    assert_eq!(h.r.enrp_stats().multicast_rate_limited, 2);
    assert_eq!(h.r.peers().len(), 2);
}

#[test]
fn multicast_gives_an_address_to_a_peer_known_without_one() {
    let mut h = mcast_core(fast(vec![]));
    // Peer 50 tells us about a PE owned by 88, a server we never heard.
    h.connect(1);
    h.presence(1, 50, 0xffff);
    let m = EnrpMessage {
        sender: 50,
        receiver: 0,
        body: EnrpBody::HandleUpdate {
            takeover_suggested: false,
            action: UpdateAction::ADD_PE,
            pool_handle: "P".into(),
            pe: pe(5, 88),
        },
    };
    h.r.handle_message(ConnId(1), PPID_ENRP, &m.to_bytes(), h.now);
    h.drain();
    let owner = h.r.peers().into_iter().find(|p| p.id == 88).unwrap();
    assert_eq!((owner.addr, owner.conn), (None, None));
    // Its presence on the group says where it is: dialled at once.
    let out = h.mcast(
        &presence_bytes(88, 0, tcp_info(88, [10, 0, 0, 88], 9901)),
        src(88),
    );
    assert!(
        matches!(&out[..], [Output::Connect { addr, .. }] if *addr == "10.0.0.88:9901".parse().unwrap()),
        "{out:?}"
    );
    let owner = h.r.peers().into_iter().find(|p| p.id == 88).unwrap();
    assert_eq!(owner.addr, Some("10.0.0.88:9901".parse().unwrap()));
    assert_eq!(h.r.enrp_stats().peers_discovered, 0);
    // A known, connected peer's presence changes nothing (unicast decides).
    let out = h.mcast(
        &presence_bytes(50, 0, tcp_info(50, [10, 0, 0, 66], 9901)),
        src(66),
    );
    assert!(out.is_empty(), "{out:?}");
}

mod multicast_prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Any datagrams: no panic, every output is a well-formed ENRP
        /// message or a dial, the core stays consistent.
        #[test]
        fn arbitrary_datagrams_never_panic(
            grams in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..80), any::<bool>(), 0u64..2_000_000),
                1..40)
        ) {
            let mut h = mcast_core(fast(vec![]));
            for (mut bytes, fix, dt) in grams {
                if fix && bytes.len() >= 12 {
                    // A plausible ENRP header half the time.
                    let n = u16::try_from(bytes.len()).unwrap();
                    bytes[2..4].copy_from_slice(&n.to_be_bytes());
                    bytes[0] %= 0x0c;
                }
                h.now = h.now + Duration::from_micros(dt);
                let mut out = h.mcast(&bytes, src(9));
                h.r.handle_timeout(h.now);
                out.extend(h.drain());
                for o in out {
                    match o {
                        Output::Send { ppid, msg, .. } => {
                            prop_assert_eq!(ppid, PPID_ENRP);
                            EnrpMessage::decode(&msg).expect("decodes");
                        }
                        Output::EnrpMulticast { msg } => {
                            EnrpMessage::decode(&msg).expect("decodes");
                        }
                        Output::Connect { .. } | Output::Close { .. } => {}
                        Output::Announce { .. } => prop_assert!(false, "announce"),
                    }
                }
                h.r.check_consistency().map_err(TestCaseError::fail)?;
            }
        }
    }
}

// ------------------------------------------------- RSPLIB interop (SCTP VM)

#[test]
fn sctp_peers_are_dialled_from_our_enrp_endpoint() {
    // RSPLIB's rspregistrar keeps a presence only if the ENRP port in its
    // Server Information is the port the association comes from (it filters
    // the announced addresses by the association's, ports included); other
    // presences are dropped, and the sender stays unknown, so its handle
    // table requests are answered R=1. So SCTP peers are dialled from our
    // ENRP endpoint, every address of it.
    let rsplib: SocketAddr = "10.77.0.3:9901".parse().unwrap();
    let tcp_peer: SocketAddr = "10.77.0.4:9901".parse().unwrap();
    let ours = [
        IpAddr::V4(Ipv4Addr::new(10, 77, 0, 1)),
        IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2)),
    ];
    let mut cfg = fast(vec![rsplib, tcp_peer]);
    cfg.sctp_peers = vec![rsplib];
    cfg.enrp_transport = Some(Transport::Sctp {
        port: 9901,
        transport_use: 0,
        addrs: ours.to_vec(),
    });
    let mut r = Registrar::new(cfg, ME, 1, Time::ZERO);
    r.handle_timeout(Time::ZERO);
    let out: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    let [Output::Connect {
        conn,
        addr,
        kind: ConnKind::Sctp,
        local,
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*addr, rsplib);
    let want: Vec<SocketAddr> = ours.iter().map(|ip| SocketAddr::new(*ip, 9901)).collect();
    assert_eq!(*local, want);
    // On the association, our presence names the association's own port.
    let conn = *conn;
    r.handle_connected(
        conn,
        ConnInfo {
            kind: ConnKind::Sctp,
            remote: vec![rsplib],
            local: want[0],
        },
        Time::from_millis(1),
    );
    let sent = enrp_out(std::iter::from_fn(|| r.poll_output()).collect());
    let si = sent
        .iter()
        .find_map(|(c, m)| match &m.body {
            EnrpBody::Presence {
                server_info: Some(si),
                ..
            } if *c == conn => Some(si.clone()),
            _ => None,
        })
        .expect("presence on the new association");
    assert_eq!(si.transport.port(), Some(9901));
    assert_eq!(si.transport.addrs(), ours.to_vec());
    // The mentor goes away: the backup, a TCP peer (the TCP mapping), is
    // dialled as before, unbound.
    r.handle_closed(conn, Time::from_millis(2));
    let out: Vec<Output> = std::iter::from_fn(|| r.poll_output()).collect();
    assert!(
        matches!(&out[..], [Output::Connect { addr, kind: ConnKind::Tcp, local, .. }]
            if *addr == tcp_peer && local.is_empty()),
        "{out:?}"
    );
}

/// Bytes from a capture of Debian's rspregistrar 3.4 (the SCTP VM suite):
/// rspregistrar 0x7e570004 takes over our peer 0x5eed0001, with us,
/// 0x5eed0003, as the only other peer.
mod rsplib_bytes {
    /// ENRP_INIT_TAKEOVER of 0x5eed0001, sent point-to-point (receiver id set).
    pub const INIT_TAKEOVER: &str = "070000107e5700045eed00035eed0001";
    /// Its presence before the takeover: own-PE checksum 0xffff, Server
    /// Information SCTP 10.77.0.3:9901.
    pub const PRESENCE_EMPTY: &str =
        "0100002c7e5700045eed0003000f0006ffff0000000b00187e5700040004001026ad0000000100080a4d0003";
    /// Its presence after: checksum 0xf17c, the two PEs it took over.
    pub const PRESENCE_AFTER: &str =
        "0100002c7e5700045eed0003000f0006f17c0000000b00187e5700040004001026ad0000000100080a4d0003";
    /// Its answer to our W=1 handle table request after the takeover:
    /// EchoPool/0x2daeaed0 and RspPool/0x595eccc3, home 0x7e570004,
    /// Registration Life 90000 (ms), SCTP user transports with Transport Use
    /// 1, RR policy, SCTP ASAP transports with five addresses.
    pub const TABLE_AFTER: &str = concat!(
        "030000d47e5700045eed00030009000c4563686f506f6f6c000a00582daeaed07e570004",
        "00015f9000040010e0520001000100080a4d0001000800080000000100040030ace50000",
        "000100080a4d0001000100080a4d0002000100080a4d0003000100080a4d000400010008",
        "0a4d00050009000b527370506f6f6c00000a0058595eccc37e57000400015f9000040010",
        "8af80001000100080a4d0005000800080000000100040030947f0000000100080a4d0001",
        "000100080a4d0002000100080a4d0003000100080a4d0004000100080a4d0005"
    );
    /// Its INIT_TAKEOVER_ACK, the form ours must have too.
    pub const ACK_FROM_US: &str = "080000105eed00037e5700045eed0001";

    pub fn bytes(hex: &str) -> Vec<u8> {
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }
}

/// We are 0x5eed0003 with peers 0x5eed0001 (R1, owns RSPLIB's two PEs as
/// in the capture, then goes silent) and rspregistrar 0x7e570004, which
/// starts its takeover of R1; we ack it.
fn rsplib_takes_over_r1() -> (H, Vec<(PoolHandle, PoolElement)>) {
    use rsplib_bytes::*;
    const R1: u32 = 0x5eed_0001;
    let mut h = H::new(0x5eed_0003);
    h.connect(1);
    h.connect(2);
    h.presence(1, R1, 0xffff);
    let raw = |h: &mut H, c: u64, hex: &str| {
        h.r.handle_message(ConnId(c), PPID_ENRP, &bytes(hex), h.now);
        h.drain()
    };
    raw(&mut h, 2, PRESENCE_EMPTY);
    // R1 owns the PEs the capture shows (before rspregistrar took them).
    let EnrpBody::HandleTableResponse { pools, .. } =
        EnrpMessage::decode(&bytes(TABLE_AFTER)).unwrap().msg.body
    else {
        panic!()
    };
    let pes: Vec<(PoolHandle, PoolElement)> = pools
        .into_iter()
        .flat_map(|(ph, v)| v.into_iter().map(move |pe| (ph.clone(), pe)))
        .collect();
    for (ph, pe) in &pes {
        h.enrp(
            1,
            R1,
            EnrpBody::HandleUpdate {
                takeover_suggested: false,
                action: UpdateAction::ADD_PE,
                pool_handle: ph.clone(),
                pe: PoolElement {
                    home: R1,
                    ..pe.clone()
                },
            },
        );
    }
    assert_eq!(h.r.pe_count(), 2);
    // RSPLIB's INIT_TAKEOVER (receiver id ours, not 0): acked, in RSPLIB's
    // own byte layout.
    let out = raw(&mut h, 2, INIT_TAKEOVER);
    let acks: Vec<&Vec<u8>> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { conn, ppid, msg } if *conn == ConnId(2) && *ppid == PPID_ENRP => {
                Some(msg)
            }
            _ => None,
        })
        .collect();
    assert_eq!(acks, vec![&bytes(ACK_FROM_US)], "{out:?}");
    (h, pes)
}

#[test]
fn rsplib_takeover_without_takeover_server_is_followed_not_repeated() {
    use rsplib_bytes::*;
    // RSPLIB never delivers TAKEOVER_SERVER (it sends it without a
    // destination); we learn of its win from its next presence: the
    // checksum now covers the PEs, our audit fetches them with their new
    // home, and when our takeover timer runs out the target owns nothing:
    // it is dropped as taken over by rspregistrar, and no takeover of our
    // own starts (it would dial the PEs with H=1 and pull them away).
    let (mut h, pes) = rsplib_takes_over_r1();
    h.now = Time::from_millis(500);
    h.r.handle_message(ConnId(2), PPID_ENRP, &bytes(PRESENCE_AFTER), h.now);
    let out = enrp_out(h.drain());
    assert!(
        out.iter().any(|(c, m)| *c == ConnId(2)
            && m.receiver == 0x7e57_0004
            && matches!(
                m.body,
                EnrpBody::HandleTableRequest {
                    own_children_only: true
                }
            )),
        "{out:?}"
    );
    h.r.handle_message(ConnId(2), PPID_ENRP, &bytes(TABLE_AFTER), h.now);
    h.drain();
    for (ph, pe) in &pes {
        assert_eq!(h.r.pool_element(ph, pe.id).unwrap().home, 0x7e57_0004);
    }
    // Past the takeover timeout (2 s here), rspregistrar still talking.
    let mut sent = Vec::new();
    for t in [1000, 1500, 2000, 2500, 3000] {
        sent.extend(h.run_until(Time::from_millis(t)));
        h.r.handle_message(ConnId(2), PPID_ENRP, &bytes(PRESENCE_AFTER), h.now);
        sent.extend(enrp_out(h.drain()));
    }
    assert!(
        !sent.iter().any(|(_, m)| matches!(
            m.body,
            EnrpBody::InitTakeover { .. } | EnrpBody::TakeoverServer { .. }
        )),
        "{sent:?}"
    );
    let r1 =
        h.r.peers()
            .into_iter()
            .find(|p| p.id == 0x5eed_0001)
            .unwrap();
    assert_eq!(r1.state, PeerState::TakenOver);
    assert_eq!(r1.taken_over_by, Some(0x7e57_0004));
    assert_eq!(h.r.enrp_stats().takeovers_started, 0);
    for (ph, pe) in &pes {
        assert_eq!(h.r.pool_element(ph, pe.id).unwrap().home, 0x7e57_0004);
    }
    h.r.check_consistency().unwrap();
}

#[test]
fn acked_takeover_that_never_shows_is_taken_over_by_us() {
    // The same, but rspregistrar never announces the PEs (it died, or its
    // takeover expired for want of acks): after the takeover timeout the
    // PEs are still with the dead server, so we take over ourselves.
    let (mut h, pes) = rsplib_takes_over_r1();
    let mut sent = Vec::new();
    for t in [500, 1000, 1500, 2000, 2500] {
        sent.extend(h.run_until(Time::from_millis(t)));
        h.presence(2, 0x7e57_0004, 0xffff);
    }
    assert!(
        sent.iter().any(|(_, m)| matches!(
            m.body,
            EnrpBody::InitTakeover {
                target: 0x5eed_0001
            }
        )),
        "{sent:?}"
    );
    // rspregistrar acks (the target is unknown to it by now): ours.
    h.enrp(
        2,
        0x7e57_0004,
        EnrpBody::InitTakeoverAck {
            target: 0x5eed_0001,
        },
    );
    for (ph, pe) in &pes {
        assert_eq!(h.r.pool_element(ph, pe.id).unwrap().home, 0x5eed_0003);
    }
    h.r.check_consistency().unwrap();
}
