//! Scripted tests of the registrar core: bytes in, bytes out, virtual time.
//! No sockets, no clock (STYLE.md §4.6).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rserpool::registrar::{
    ConnId, ConnInfo, ConnKind, KeepAlivePeId, Output, RateLimit, RegLifeUnit, Registrar,
    RegistrarConfig, PPID_ASAP, PPID_ENRP,
};
use rserpool::time::Time;
use rserpool::wire::param::param_bytes;
use rserpool::wire::{
    cause, AsapMessage, EnrpBody, EnrpMessage, ErrorCause, Policy, PoolElement, PoolHandle,
    Transport,
};

const SERVER: u32 = 0xCAFE_BABE;

fn ip(a: u8, b: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, 0, a, b))
}

/// A config without the periodic machinery, so tests see only what they poke.
fn quiet() -> RegistrarConfig {
    RegistrarConfig {
        keep_alive_interval: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        ..RegistrarConfig::default()
    }
}

struct H {
    r: Registrar,
    now: Time,
}

impl H {
    fn new(cfg: RegistrarConfig) -> H {
        H {
            r: Registrar::new(cfg, SERVER, 42, Time::ZERO),
            now: Time::ZERO,
        }
    }

    fn drain(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.r.poll_output()).collect()
    }

    fn connect_kind(&mut self, id: u64, kind: ConnKind, remote: Vec<SocketAddr>) -> ConnId {
        let c = ConnId(id);
        let info = ConnInfo {
            kind,
            remote,
            local: "10.9.9.9:3863".parse().unwrap(),
        };
        self.r.handle_connected(c, info, self.now);
        assert!(self.drain().is_empty());
        c
    }

    /// An SCTP association from 10.0.<id>.1 and 10.0.<id>.2, port 2000+id.
    fn connect(&mut self, id: u64) -> ConnId {
        let a = u8::try_from(id % 250).unwrap();
        let port = 2000 + u16::try_from(id % 60000).unwrap();
        let remote = vec![
            SocketAddr::new(ip(a, 1), port),
            SocketAddr::new(ip(a, 2), port),
        ];
        self.connect_kind(id, ConnKind::Sctp, remote)
    }

    fn raw(&mut self, c: ConnId, ppid: u32, bytes: &[u8]) -> Vec<Output> {
        self.r.handle_message(c, ppid, bytes, self.now);
        self.drain()
    }

    fn send(&mut self, c: ConnId, m: &AsapMessage) -> Vec<Output> {
        self.raw(c, PPID_ASAP, &m.to_bytes())
    }

    /// Exactly one ASAP reply, on `c`.
    fn ask(&mut self, c: ConnId, m: &AsapMessage) -> AsapMessage {
        let out = self.send(c, m);
        assert_eq!(out.len(), 1, "expected one reply, got {out:?}");
        let (to, msg) = asap(&out[0]);
        assert_eq!(to, c);
        msg
    }

    fn close(&mut self, c: ConnId) -> Vec<Output> {
        self.r.handle_closed(c, self.now);
        self.drain()
    }

    /// Run timers up to `t` (in order), collecting outputs.
    fn run_until(&mut self, t: Time) -> Vec<Output> {
        let mut out = Vec::new();
        while let Some(d) = self.r.poll_timeout() {
            if d > t {
                break;
            }
            self.now = self.now.max(d);
            self.r.handle_timeout(self.now);
            out.extend(self.drain());
        }
        self.now = self.now.max(t);
        self.r.handle_timeout(self.now);
        out.extend(self.drain());
        out
    }

    fn register(&mut self, c: ConnId, pool: &str, id: u32) -> AsapMessage {
        self.ask(c, &reg(pool, pe(id, 5000, Policy::RoundRobin)))
    }
}

fn asap(o: &Output) -> (ConnId, AsapMessage) {
    match o {
        Output::Send { conn, ppid, msg } => {
            assert_eq!(*ppid, PPID_ASAP);
            (
                *conn,
                AsapMessage::decode(msg).expect("our output decodes").msg,
            )
        }
        other => panic!("expected a send, got {other:?}"),
    }
}

fn enrp(o: &Output) -> (ConnId, EnrpMessage, u8) {
    match o {
        Output::Send { conn, ppid, msg } => {
            assert_eq!(*ppid, PPID_ENRP);
            let d = EnrpMessage::decode(msg).expect("our output decodes");
            (*conn, d.msg, d.flags)
        }
        other => panic!("expected a send, got {other:?}"),
    }
}

fn sctp(port: u16, addrs: Vec<IpAddr>) -> Transport {
    Transport::Sctp {
        port,
        transport_use: 0,
        addrs,
    }
}

fn pe(id: u32, port: u16, policy: Policy) -> PoolElement {
    PoolElement {
        id,
        home: 0,
        reg_life: 300,
        user_transport: sctp(port, vec![ip(0, 1)]),
        policy,
        asap_transport: None,
    }
}

fn reg(pool: &str, pe: PoolElement) -> AsapMessage {
    AsapMessage::Registration {
        pool_handle: pool.into(),
        pe,
    }
}

fn resolve(pool: &str, items: Option<u32>, subscribe: bool) -> AsapMessage {
    AsapMessage::HandleResolution {
        subscribe,
        pool_handle: pool.into(),
        items,
    }
}

fn granted(m: &AsapMessage, pool: &str, id: u32) {
    assert_eq!(
        *m,
        AsapMessage::RegistrationResponse {
            reject: false,
            pool_handle: pool.into(),
            pe_id: id,
            error: None
        }
    );
}

fn rejected(m: &AsapMessage) -> ErrorCause {
    match m {
        AsapMessage::RegistrationResponse {
            reject: true,
            error: Some(e),
            ..
        } => {
            assert_eq!(e.len(), 1);
            e[0].clone()
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
}

fn elements(m: &AsapMessage) -> (bool, Option<Policy>, Vec<u32>) {
    match m {
        AsapMessage::HandleResolutionResponse {
            accepted,
            policy,
            elements,
            error: None,
            ..
        } => (
            *accepted,
            policy.clone(),
            elements.iter().map(|p| p.id).collect(),
        ),
        other => panic!("expected a positive resolution, got {other:?}"),
    }
}

fn pool_handle(s: &str) -> PoolHandle {
    s.into()
}

// --------------------------------------------------------------- registration

#[test]
fn registration_is_answered_and_stored_with_home_and_asap_transport() {
    let mut h = H::new(quiet());
    let c = h.connect(1);
    granted(
        &h.register(c, "EchoPool", 0x1234_5678),
        "EchoPool",
        0x1234_5678,
    );
    let stored =
        h.r.pool_element(&pool_handle("EchoPool"), 0x1234_5678)
            .unwrap();
    assert_eq!(stored.home, SERVER);
    assert_eq!(
        stored.asap_transport,
        Some(sctp(2001, vec![ip(1, 1), ip(1, 2)]))
    );
    assert_eq!(
        h.r.owner_connection(&pool_handle("EchoPool"), 0x1234_5678),
        Some(c)
    );

    // RSPLIB fills in the registrar's id: accepted as well.
    let mut p = pe(7, 5000, Policy::RoundRobin);
    p.home = SERVER;
    granted(&h.ask(c, &reg("EchoPool", p)), "EchoPool", 7);

    // Over TCP: a TCP ASAP transport with the remote address and port.
    let t = h.connect_kind(2, ConnKind::Tcp, vec!["10.1.2.3:40000".parse().unwrap()]);
    granted(&h.register(t, "EchoPool", 8), "EchoPool", 8);
    assert_eq!(
        h.r.pool_element(&pool_handle("EchoPool"), 8)
            .unwrap()
            .asap_transport,
        Some(Transport::Tcp {
            port: 40000,
            transport_use: 0,
            addr: "10.1.2.3".parse().unwrap()
        })
    );
    assert_eq!(h.r.stats().registrations, 3);
}

#[test]
fn known_good_registration_bytes_get_the_right_response() {
    // Digest §13 vector 1 (LU policy, SCTP 5000 on 10.0.0.1/10.0.1.1, life 300).
    let hex = "01000044 0009000c 4563686f 506f6f6c 000a0034 12345678 00000000 0000012c \
               00040018 13880000 00010008 0a000001 00010008 0a000101 0008000c 40000001 \
               40000000";
    let bytes: Vec<u8> = hex
        .split_whitespace()
        .flat_map(|w| u32::from_str_radix(w, 16).unwrap().to_be_bytes())
        .collect();
    let mut h = H::new(quiet());
    let c = h.connect(1);
    let out = h.raw(c, PPID_ASAP, &bytes);
    assert_eq!(out.len(), 1);
    let Output::Send { msg, .. } = &out[0] else {
        panic!()
    };
    // Registration response: Pool Handle + PE Identifier, R=0.
    let want = "03000018 0009000c 4563686f 506f6f6c 000e0008 12345678";
    let want: Vec<u8> = want
        .split_whitespace()
        .flat_map(|w| u32::from_str_radix(w, 16).unwrap().to_be_bytes())
        .collect();
    assert_eq!(*msg, want);
}

#[test]
fn invalid_values_are_rejected_with_cause_3_carrying_the_tlv() {
    let mut h = H::new(quiet());
    let c = h.connect(1);

    // PE identifier 0.
    let p0 = pe(0, 5000, Policy::RoundRobin);
    let e = rejected(&h.ask(c, &reg("P", p0.clone())));
    assert_eq!(e.code, cause::INVALID_VALUES);
    assert_eq!(e.info, param_bytes(&p0));

    // Registration life 0.
    let mut p = pe(1, 5000, Policy::RoundRobin);
    p.reg_life = 0;
    let e = rejected(&h.ask(c, &reg("P", p.clone())));
    assert_eq!((e.code, e.info), (cause::INVALID_VALUES, param_bytes(&p)));

    // An unspecified address in the user transport: the transport TLV.
    let mut p = pe(2, 5000, Policy::RoundRobin);
    p.user_transport = sctp(5000, vec![IpAddr::V4(Ipv4Addr::UNSPECIFIED)]);
    let e = rejected(&h.ask(c, &reg("P", p.clone())));
    assert_eq!(
        (e.code, e.info),
        (cause::INVALID_VALUES, param_bytes(&p.user_transport))
    );

    // An unassigned standard policy type.
    let pol = Policy::Other {
        policy_type: 0x0000_0077,
        data: vec![],
    };
    let p = pe(3, 5000, pol.clone());
    let e = rejected(&h.ask(c, &reg("P", p)));
    assert_eq!((e.code, e.info), (cause::INVALID_VALUES, param_bytes(&pol)));

    // A policy TLV of the wrong size for its type: the codec refuses it, we
    // still answer with a registration response naming the TLV.
    let p = pe(4, 5000, Policy::LeastUsed { load: 1 });
    let mut bytes = reg("P", p).to_bytes();
    // The LU policy TLV is the last 12 bytes: make its Length 8 (no load).
    let n = bytes.len();
    bytes[n - 12 + 3] = 8;
    bytes.truncate(n - 4);
    // Fix the enclosing lengths: the PE TLV (after the 8-byte handle "P") and
    // the message.
    let pe_len = u16::from_be_bytes([bytes[14], bytes[15]]) - 4;
    bytes[14..16].copy_from_slice(&pe_len.to_be_bytes());
    let m_len = u16::try_from(bytes.len()).unwrap();
    bytes[2..4].copy_from_slice(&m_len.to_be_bytes());
    let out = h.raw(c, PPID_ASAP, &bytes);
    assert_eq!(out.len(), 1);
    let e = rejected(&asap(&out[0]).1);
    assert_eq!(e.code, cause::INVALID_VALUES);
    assert_eq!(e.info, vec![0, 8, 0, 8, 0x40, 0, 0, 1]);

    assert_eq!(h.r.pe_count(), 0);
    assert_eq!(h.r.stats().registration_rejections, 5);
}

#[test]
fn inconsistent_policy_transport_and_data_control_are_rejected() {
    let mut h = H::new(quiet());
    let c = h.connect(1);
    granted(
        &h.ask(
            c,
            &reg("P", pe(1, 5000, Policy::WeightedRoundRobin { weight: 5 })),
        ),
        "P",
        1,
    );
    // Another WRR weight is fine: only the type must match.
    granted(
        &h.ask(
            c,
            &reg("P", pe(2, 5001, Policy::WeightedRoundRobin { weight: 9 })),
        ),
        "P",
        2,
    );

    // 0x5 with the pool's policy TLV.
    let e = rejected(&h.ask(c, &reg("P", pe(3, 5000, Policy::RoundRobin))));
    assert_eq!(e.code, cause::INCONSISTENT_POLICY);
    let pool_policy = Policy::decode_param_helper(&e.info);
    assert_eq!(pool_policy.policy_type(), 0x0000_0002);

    // 0x7 with a transport of the pool's type.
    let mut p = pe(4, 5000, Policy::WeightedRoundRobin { weight: 1 });
    p.user_transport = Transport::Tcp {
        port: 80,
        transport_use: 0,
        addr: ip(0, 1),
    };
    let e = rejected(&h.ask(c, &reg("P", p)));
    assert_eq!(e.code, cause::INCONSISTENT_TRANSPORT);
    let t = <Transport as rserpool::wire::Param>::decode_param(&e.info).unwrap();
    assert!(matches!(t, Transport::Sctp { .. }));

    // 0x8: same transport type, other Transport Use.
    let mut p = pe(5, 5000, Policy::WeightedRoundRobin { weight: 1 });
    p.user_transport = Transport::Sctp {
        port: 5000,
        transport_use: 1,
        addrs: vec![ip(0, 1)],
    };
    let e = rejected(&h.ask(c, &reg("P", p)));
    assert_eq!(e, ErrorCause::new(cause::INCONSISTENT_DATA_CONTROL));

    // Re-registration of a known PE is held to the same rules.
    let e = rejected(&h.ask(c, &reg("P", pe(1, 5000, Policy::Random))));
    assert_eq!(e.code, cause::INCONSISTENT_POLICY);
    assert_eq!(h.r.pe_count(), 2);
}

/// Decode helper for a policy TLV carried in a cause.
trait PolicyExt {
    fn decode_param_helper(b: &[u8]) -> Policy;
}
impl PolicyExt for Policy {
    fn decode_param_helper(b: &[u8]) -> Policy {
        <Policy as rserpool::wire::Param>::decode_param(b).unwrap()
    }
}

#[test]
fn duplicate_pe_id_held_elsewhere_is_cause_4() {
    let mut h = H::new(quiet());
    let a = h.connect(1);
    let b = h.connect(2);
    granted(&h.register(a, "P", 9), "P", 9);
    // Same id from another live connection with another transport.
    let e = rejected(&h.ask(b, &reg("P", pe(9, 6000, Policy::RoundRobin))));
    assert_eq!(e, ErrorCause::new(cause::NON_UNIQUE_PE_ID));
    assert_eq!(h.r.owner_connection(&pool_handle("P"), 9), Some(a));
}

#[test]
fn resource_limits_are_cause_6() {
    let cfg = RegistrarConfig {
        max_pes_per_pool: 2,
        max_pes_per_connection: 3,
        max_pes_total: 4,
        ..quiet()
    };
    let mut h = H::new(cfg);
    let a = h.connect(1);
    let b = h.connect(2);
    granted(&h.register(a, "A", 1), "A", 1);
    granted(&h.register(a, "A", 2), "A", 2);
    // Pool full.
    assert_eq!(
        rejected(&h.register(a, "A", 3)).code,
        cause::LACK_OF_RESOURCES
    );
    // Re-registering a known PE in a full pool is fine.
    granted(&h.register(a, "A", 2), "A", 2);
    granted(&h.register(a, "B", 1), "B", 1);
    // Connection full.
    assert_eq!(
        rejected(&h.register(a, "C", 1)).code,
        cause::LACK_OF_RESOURCES
    );
    granted(&h.register(b, "C", 1), "C", 1);
    // Handlespace full.
    assert_eq!(
        rejected(&h.register(b, "C", 2)).code,
        cause::LACK_OF_RESOURCES
    );
    assert_eq!(h.r.pe_count(), 4);
}

#[test]
fn reregistration_replaces_values_and_ownership() {
    let mut h = H::new(quiet());
    let a = h.connect(1);
    // A new association from the same host (one address in common).
    let b = h.connect_kind(
        2,
        ConnKind::Sctp,
        vec![
            "10.0.1.2:3000".parse().unwrap(),
            "10.0.7.7:3000".parse().unwrap(),
        ],
    );
    granted(
        &h.ask(a, &reg("P", pe(5, 5000, Policy::LeastUsed { load: 1 }))),
        "P",
        5,
    );
    // Same PE, new association (same user transport), new load and life.
    let mut p = pe(5, 5000, Policy::LeastUsed { load: 99 });
    p.reg_life = 600;
    granted(&h.ask(b, &reg("P", p)), "P", 5);
    let stored = h.r.pool_element(&pool_handle("P"), 5).unwrap();
    assert_eq!(stored.policy, Policy::LeastUsed { load: 99 });
    assert_eq!(stored.reg_life, 600);
    assert_eq!(
        stored.asap_transport,
        Some(sctp(3000, vec![ip(1, 2), ip(7, 7)]))
    );
    // The same PE id from another host: refused, even with the same transport.
    let c = h.connect(3);
    let e = rejected(&h.ask(c, &reg("P", pe(5, 5000, Policy::LeastUsed { load: 99 }))));
    assert_eq!(e.code, cause::NON_UNIQUE_PE_ID);
    assert_eq!(h.r.owner_connection(&pool_handle("P"), 5), Some(b));
    assert_eq!(h.r.pe_count(), 1);
    assert_eq!(h.r.stats().reregistrations, 1);
    // Closing the old connection no longer touches the PE.
    h.close(a);
    assert_eq!(h.r.pe_count(), 1);
    h.close(b);
    assert_eq!(h.r.pe_count(), 0);
}

// ------------------------------------------------------------- deregistration

#[test]
fn deregistration_known_unknown_and_foreign() {
    let mut h = H::new(quiet());
    let a = h.connect(1);
    let b = h.connect(2);
    h.register(a, "P", 1);
    let dereg = AsapMessage::Deregistration {
        pool_handle: "P".into(),
        pe_id: 1,
    };
    // Another connection may not remove it.
    assert_eq!(
        h.ask(b, &dereg),
        AsapMessage::DeregistrationResponse {
            pool_handle: "P".into(),
            pe_id: 1,
            error: Some(vec![ErrorCause::new(cause::SECURITY)])
        }
    );
    assert_eq!(h.r.pe_count(), 1);
    let ok = AsapMessage::DeregistrationResponse {
        pool_handle: "P".into(),
        pe_id: 1,
        error: None,
    };
    assert_eq!(h.ask(a, &dereg), ok);
    assert_eq!(h.r.pe_count(), 0);
    // Unknown PE: success.
    assert_eq!(h.ask(a, &dereg), ok);
    assert_eq!(h.r.stats().deregistrations, 2);
}

// --------------------------------------------------------------------- expiry

#[test]
fn lifetime_expiry_in_seconds_sends_unsolicited_deregistration_response() {
    let mut h = H::new(quiet());
    let c = h.connect(1);
    h.register(c, "P", 1); // life 300 s
                           // Never early, at most one expiry granule (10 ms) late.
    let due = h.r.poll_timeout().unwrap();
    assert!(due >= Time::from_secs(300) && due < Time::from_millis(300_010));
    assert!(h
        .run_until(Time::from_secs(300) - Duration::from_micros(1))
        .is_empty());
    assert_eq!(h.r.pe_count(), 1);
    let out = h.run_until(Time::from_millis(300_010));
    assert_eq!(out.len(), 1);
    assert_eq!(
        asap(&out[0]),
        (
            c,
            AsapMessage::DeregistrationResponse {
                pool_handle: "P".into(),
                pe_id: 1,
                error: None
            }
        )
    );
    assert_eq!(h.r.pe_count(), 0);
    assert_eq!(h.r.stats().expiries, 1);
}

#[test]
fn lifetime_in_milliseconds_and_reregistration_extends_it() {
    let cfg = RegistrarConfig {
        reg_life_unit: RegLifeUnit::Millis,
        ..quiet()
    };
    let mut h = H::new(cfg);
    let c = h.connect(1);
    let mut p = pe(1, 5000, Policy::RoundRobin);
    p.reg_life = 90_000; // RSPLIB: 90 s in ms
    h.ask(c, &reg("P", p.clone()));
    h.now = Time::from_secs(60);
    h.ask(c, &reg("P", p)); // re-register at 60 s
    assert!(h
        .run_until(Time::from_secs(150) - Duration::from_micros(1))
        .is_empty());
    let out = h.run_until(Time::from_millis(150_010));
    assert_eq!(out.len(), 1);
    assert!(matches!(
        asap(&out[0]).1,
        AsapMessage::DeregistrationResponse { .. }
    ));

    // Infinite life: never expires.
    let mut p = pe(2, 5000, Policy::RoundRobin);
    p.reg_life = -1;
    h.ask(c, &reg("P", p));
    assert_eq!(h.r.poll_timeout(), None);
}

// ----------------------------------------------------------------- resolution

#[test]
fn resolution_item_counts_and_overall_policy() {
    let mut h = H::new(RegistrarConfig {
        max_items: 8,
        ..quiet()
    });
    let c = h.connect(1);
    for id in 1..=10 {
        h.register(c, "P", id);
    }
    let u = h.connect(2);
    // Absent option: the default, 3. Overall policy present (RR).
    let (acc, pol, ids) = elements(&h.ask(u, &resolve("P", None, false)));
    assert!(!acc);
    assert_eq!(pol, Some(Policy::RoundRobin));
    assert_eq!(ids.len(), 3);
    // Items 0: the default too.
    assert_eq!(
        elements(&h.ask(u, &resolve("P", Some(0), false))).2.len(),
        3
    );
    assert_eq!(
        elements(&h.ask(u, &resolve("P", Some(5), false))).2.len(),
        5
    );
    // "All": capped by max_items.
    assert_eq!(
        elements(&h.ask(u, &resolve("P", Some(u32::MAX), false)))
            .2
            .len(),
        8
    );
    // Round robin: successive answers start at successive PEs.
    let a = elements(&h.ask(u, &resolve("P", Some(1), false))).2;
    let b = elements(&h.ask(u, &resolve("P", Some(1), false))).2;
    assert_ne!(a, b);

    // Overall policy of an adaptive pool: the type with neutral values.
    h.ask(c, &reg("L", pe(1, 5000, Policy::LeastUsed { load: 7 })));
    h.ask(c, &reg("L", pe(2, 5000, Policy::LeastUsed { load: 3 })));
    let (_, pol, ids) = elements(&h.ask(u, &resolve("L", Some(2), false)));
    assert_eq!(pol, Some(Policy::LeastUsed { load: 0 }));
    assert_eq!(ids, vec![2, 1]);
    assert_eq!(h.r.stats().resolutions, 7);
}

#[test]
fn unknown_pool_is_a_negative_response_with_cause_9() {
    let mut h = H::new(quiet());
    let u = h.connect(1);
    let m = h.ask(u, &resolve("NoSuchPool", None, true));
    assert_eq!(
        m,
        AsapMessage::HandleResolutionResponse {
            accepted: false,
            pool_handle: "NoSuchPool".into(),
            policy: None,
            elements: vec![],
            error: Some(vec![ErrorCause::new(cause::UNKNOWN_POOL_HANDLE)])
        }
    );
    // Digest §13 vector 5, byte for byte.
    let want = "0600001c 0009000e 4e6f5375 6368506f 6f6c0000 000c0008 00090004";
    let want: Vec<u8> = want
        .split_whitespace()
        .flat_map(|w| u32::from_str_radix(w, 16).unwrap().to_be_bytes())
        .collect();
    assert_eq!(m.to_bytes(), want);
    assert_eq!(h.r.stats().resolution_failures, 1);
    // No subscription started: a registration pushes nothing.
    let c = h.connect(2);
    h.register(c, "NoSuchPool", 1);
}

#[test]
fn subscriptions_push_on_every_change_once_per_call_and_end_with_the_connection() {
    let mut h = H::new(quiet());
    let pe_conn = h.connect(1);
    h.register(pe_conn, "P", 1);
    let u = h.connect(2);
    let (acc, _, ids) = elements(&h.ask(u, &resolve("P", Some(u32::MAX), true)));
    assert!(acc);
    assert_eq!(ids, vec![1]);

    // A registration: the response to the PE, one push to the subscriber.
    let out = h.send(pe_conn, &reg("P", pe(2, 5000, Policy::RoundRobin)));
    assert_eq!(out.len(), 2);
    granted(&asap(&out[0]).1, "P", 2);
    let (to, push) = asap(&out[1]);
    assert_eq!(to, u);
    let (acc, _, mut ids) = elements(&push);
    ids.sort();
    assert!(acc);
    assert_eq!(ids, vec![1, 2]);

    // A re-registration without changes pushes nothing; with changes it does.
    assert_eq!(
        h.send(pe_conn, &reg("P", pe(2, 5000, Policy::RoundRobin)))
            .len(),
        1
    );
    assert_eq!(
        h.send(pe_conn, &reg("P", pe(2, 5999, Policy::RoundRobin)))
            .len(),
        2
    );

    // Connection loss removes both PEs: one coalesced push.
    let out = h.close(pe_conn);
    assert_eq!(out.len(), 1);
    let (to, push) = asap(&out[0]);
    assert_eq!(to, u);
    // The pool is gone: A=1 with cause 0x9; the subscription stays.
    assert_eq!(
        push,
        AsapMessage::HandleResolutionResponse {
            accepted: true,
            pool_handle: "P".into(),
            policy: None,
            elements: vec![],
            error: Some(vec![ErrorCause::new(cause::UNKNOWN_POOL_HANDLE)])
        }
    );
    let c2 = h.connect(3);
    assert_eq!(
        h.send(c2, &reg("P", pe(3, 5000, Policy::RoundRobin))).len(),
        2
    );
    // After the subscriber leaves: no more pushes.
    h.close(u);
    assert_eq!(
        h.send(c2, &reg("P", pe(4, 5000, Policy::RoundRobin))).len(),
        1
    );
    assert_eq!(h.r.stats().subscription_pushes, 4);
}

#[test]
fn subscription_limit_answers_with_a_0() {
    let mut h = H::new(RegistrarConfig {
        max_subscriptions_per_connection: 1,
        ..quiet()
    });
    let c = h.connect(1);
    h.register(c, "A", 1);
    h.register(c, "B", 1);
    let u = h.connect(2);
    assert!(elements(&h.ask(u, &resolve("A", None, true))).0);
    assert!(!elements(&h.ask(u, &resolve("B", None, true))).0);
    // Re-subscribing to the same pool is fine.
    assert!(elements(&h.ask(u, &resolve("A", None, true))).0);
}

// ----------------------------------------------------------------- keep-alive

fn keep_alive_cfg() -> RegistrarConfig {
    RegistrarConfig {
        keep_alive_interval: Duration::from_secs(10),
        keep_alive_timeout: Duration::from_secs(2),
        idle_timeout: Duration::ZERO,
        ..RegistrarConfig::default()
    }
}

fn keep_alives(out: &[Output]) -> Vec<(ConnId, PoolHandle, Option<u32>, bool)> {
    out.iter()
        .filter_map(|o| match asap(o) {
            (
                c,
                AsapMessage::EndpointKeepAlive {
                    home,
                    server_id,
                    pool_handle,
                    pe_id,
                },
            ) => {
                assert_eq!(server_id, SERVER);
                Some((c, pool_handle, pe_id, home))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn keep_alives_are_spread_and_missing_acks_remove_the_pe() {
    let mut h = H::new(keep_alive_cfg());
    let mut conns = Vec::new();
    for i in 1..=40u32 {
        let c = h.connect(u64::from(i));
        h.register(c, "P", i);
        conns.push(c);
    }
    // First keep-alives: each within 5..15 s, not all at once.
    let mut first = Vec::new();
    let mut t = Time::ZERO;
    while first.len() < 40 {
        let d = h.r.poll_timeout().unwrap();
        assert!(d >= t);
        t = d;
        let out = h.run_until(d);
        for (c, pool, id, home) in keep_alives(&out) {
            assert!(!home, "H=0");
            assert_eq!(pool, pool_handle("P"));
            assert_eq!(id, None, "RFC PEs (home 0) get the RFC layout");
            first.push((c, d));
        }
    }
    assert!(first
        .iter()
        .all(|(_, d)| *d >= Time::from_secs(5) && *d <= Time::from_secs(15)));
    let distinct: std::collections::BTreeSet<_> = first.iter().map(|(_, d)| *d).collect();
    assert!(distinct.len() > 30, "spread out: {distinct:?}");
    // Nobody acks: every PE is gone 2 s after its keep-alive.
    h.run_until(Time::from_secs(17) + Duration::from_micros(1));
    assert_eq!(h.r.pe_count(), 0);
    assert_eq!(h.r.stats().keep_alive_failures, 40);
}

#[test]
fn acks_keep_the_pe_and_rsplib_pes_get_the_pe_identifier() {
    let mut h = H::new(keep_alive_cfg());
    let c = h.connect(1);
    let mut p = pe(77, 5000, Policy::RoundRobin);
    p.home = SERVER; // RSPLIB style
    h.ask(c, &reg("P", p));
    for round in 0..5 {
        let d = h.r.poll_timeout().unwrap();
        let out = h.run_until(d);
        let ka = keep_alives(&out);
        assert_eq!(ka.len(), 1, "round {round}");
        assert_eq!(ka[0], (c, pool_handle("P"), Some(77), false));
        h.now = h.now + Duration::from_millis(100);
        let ack = AsapMessage::EndpointKeepAliveAck {
            pool_handle: "P".into(),
            pe_id: 77,
        };
        assert!(h.send(c, &ack).is_empty());
    }
    assert_eq!(h.r.pe_count(), 1);
    assert_eq!(h.r.stats().keep_alive_acks, 5);
    // An ack from another connection does not count.
    let d = h.r.poll_timeout().unwrap();
    h.run_until(d);
    let other = h.connect(2);
    h.send(
        other,
        &AsapMessage::EndpointKeepAliveAck {
            pool_handle: "P".into(),
            pe_id: 77,
        },
    );
    h.run_until(d + Duration::from_secs(2));
    assert_eq!(h.r.pe_count(), 0);
}

#[test]
fn keep_alive_pe_id_modes() {
    for (mode, want) in [
        (KeepAlivePeId::Always, Some(1)),
        (KeepAlivePeId::Never, None),
    ] {
        let mut h = H::new(RegistrarConfig {
            keep_alive_pe_id: mode,
            ..keep_alive_cfg()
        });
        let c = h.connect(1);
        let mut p = pe(1, 5000, Policy::RoundRobin);
        p.home = if want.is_some() { 0 } else { SERVER };
        h.ask(c, &reg("P", p));
        let out = h.run_until(Time::from_secs(15));
        assert_eq!(keep_alives(&out)[0].2, want);
    }
}

// ---------------------------------------------------------------- unreachable

fn unreachable(pool: &str, id: u32) -> AsapMessage {
    AsapMessage::EndpointUnreachable {
        pool_handle: pool.into(),
        pe_id: id,
    }
}

#[test]
fn unreachable_report_probes_at_once_and_a_failed_probe_removes() {
    let mut h = H::new(RegistrarConfig {
        keep_alive_timeout: Duration::from_secs(2),
        ..quiet()
    });
    let c = h.connect(1);
    h.register(c, "P", 1);
    h.register(c, "P", 2);
    let u = h.connect(2);
    let out = h.send(u, &unreachable("P", 1));
    assert_eq!(keep_alives(&out), vec![(c, pool_handle("P"), None, false)]);
    // More reports while the probe is out: no second probe.
    assert!(h.send(u, &unreachable("P", 1)).is_empty());
    // PE 1 answers, PE 2 is not involved.
    let ack = AsapMessage::EndpointKeepAliveAck {
        pool_handle: "P".into(),
        pe_id: 1,
    };
    h.send(c, &ack);
    h.run_until(Time::from_secs(3));
    assert_eq!(h.r.pe_count(), 2);
    // The next report probes again; no answer: removed after the timeout.
    let out = h.send(u, &unreachable("P", 1));
    assert_eq!(keep_alives(&out).len(), 1);
    h.run_until(Time::from_secs(5));
    assert!(h.r.pool_element(&pool_handle("P"), 1).is_none());
    assert!(h.r.pool_element(&pool_handle("P"), 2).is_some());
    // Unknown PE: ignored.
    assert!(h.send(u, &unreachable("P", 99)).is_empty());
}

#[test]
fn unreachable_reports_over_the_threshold_remove_even_if_acked() {
    let mut h = H::new(RegistrarConfig {
        keep_alive_min_gap: Duration::from_secs(1),
        ..quiet()
    });
    let c = h.connect(1);
    h.register(c, "P", 1);
    let u = h.connect(2);
    let ack = AsapMessage::EndpointKeepAliveAck {
        pool_handle: "P".into(),
        pe_id: 1,
    };
    let mut probes = 0;
    for i in 1..=3 {
        let out = h.send(u, &unreachable("P", 1));
        probes += keep_alives(&out).len();
        h.send(c, &ack);
        assert_eq!(h.r.pe_count(), 1, "report {i}");
        h.now = h.now + Duration::from_millis(600);
        // A probe held back by the per-PE gap goes out later.
        probes += keep_alives(&h.run_until(h.now)).len();
        h.send(c, &ack);
    }
    assert!(probes >= 2);
    // The fourth report exceeds MAX-BAD-PE-REPORT (3).
    h.send(u, &unreachable("P", 1));
    assert_eq!(h.r.pe_count(), 0);
    assert_eq!(h.r.stats().unreachable_removals, 1);
}

#[test]
fn rsplib_profile_counts_without_probing() {
    let mut h = H::new(RegistrarConfig {
        keep_alive_interval: Duration::ZERO,
        idle_timeout: Duration::ZERO,
        announce_interval: None,
        ..RegistrarConfig::rsplib_profile()
    });
    let c = h.connect(1);
    let mut p = pe(1, 5000, Policy::RoundRobin);
    p.reg_life = 90_000;
    h.ask(c, &reg("P", p));
    let u = h.connect(2);
    assert!(h.send(u, &unreachable("P", 1)).is_empty());
    assert!(h.send(u, &unreachable("P", 1)).is_empty());
    assert_eq!(h.r.pe_count(), 1);
    h.send(u, &unreachable("P", 1)); // the third removes it
    assert_eq!(h.r.pe_count(), 0);
}

// ------------------------------------------------------------ connection loss

#[test]
fn connection_loss_removes_pes_or_not() {
    let mut h = H::new(quiet());
    let c = h.connect(1);
    h.register(c, "P", 1);
    h.register(c, "Q", 2);
    h.close(c);
    assert_eq!(h.r.pe_count(), 0);
    assert_eq!(h.r.stats().connection_loss_removals, 2);

    let mut h = H::new(RegistrarConfig {
        remove_on_connection_loss: false,
        keep_alive_interval: Duration::from_secs(5),
        ..quiet()
    });
    let c = h.connect(1);
    h.register(c, "P", 1);
    h.register(c, "P", 2);
    h.close(c);
    assert_eq!(h.r.pe_count(), 2);
    assert_eq!(h.r.owner_connection(&pool_handle("P"), 1), None);
    // No keep-alives to a closed connection; the PEs live until expiry...
    assert!(keep_alives(&h.run_until(Time::from_secs(100))).is_empty());
    assert_eq!(h.r.pe_count(), 2);
    // ... unless reported: the probe cannot be sent, so that removes it.
    let u = h.connect(2);
    h.send(u, &unreachable("P", 1));
    assert_eq!(h.r.pe_count(), 1);
    // Anyone may now deregister the orphan, and it re-registers elsewhere.
    let c2 = h.connect(3);
    granted(&h.register(c2, "P", 2), "P", 2);
    assert_eq!(h.r.owner_connection(&pool_handle("P"), 2), Some(c2));
    assert_eq!(h.r.pe_count(), 1);
}

// ------------------------------------------------------------------ defences

#[test]
fn rate_limits_drop_silently_and_count() {
    let mut h = H::new(RegistrarConfig {
        resolution_rate: RateLimit {
            per_sec: 10,
            burst: 5,
        },
        unreachable_rate: RateLimit {
            per_sec: 1,
            burst: 2,
        },
        ..quiet()
    });
    let c = h.connect(1);
    h.register(c, "P", 1);
    let u = h.connect(2);
    let answered = (0..20)
        .filter(|_| !h.send(u, &resolve("P", None, false)).is_empty())
        .count();
    assert_eq!(answered, 5);
    assert_eq!(h.r.stats().rate_limited, 15);
    // Another connection has its own bucket.
    let v = h.connect(3);
    assert_eq!(h.send(v, &resolve("P", None, false)).len(), 1);
    // Refilled after a while: 10/s.
    h.now = h.now + Duration::from_millis(500);
    let answered = (0..20)
        .filter(|_| !h.send(u, &resolve("P", None, false)).is_empty())
        .count();
    assert_eq!(answered, 5);
    // Unreachable reports: 2 pass, the rest are dropped before counting.
    for _ in 0..10 {
        h.send(u, &unreachable("P", 99));
    }
    assert_eq!(h.r.stats().unreachable_reports, 2);
}

#[test]
fn idle_connections_are_closed_unless_they_own_pes_or_subscriptions() {
    let mut h = H::new(RegistrarConfig {
        idle_timeout: Duration::from_secs(60),
        ..quiet()
    });
    let pe_conn = h.connect(1);
    h.register(pe_conn, "P", 1);
    let idle = h.connect(2);
    let sub = h.connect(3);
    h.ask(sub, &resolve("P", None, true));
    let chatty = h.connect(4);
    h.now = Time::from_secs(50);
    h.ask(chatty, &resolve("P", None, false));
    let out = h.run_until(Time::from_secs(100));
    assert_eq!(
        out,
        vec![Output::Close {
            conn: idle,
            reason: "idle".into()
        }]
    );
    let out = h.run_until(Time::from_secs(111));
    assert_eq!(
        out,
        vec![Output::Close {
            conn: chatty,
            reason: "idle".into()
        }]
    );
    // Input after Close is ignored.
    assert!(h.send(idle, &resolve("P", None, false)).is_empty());
    h.close(idle);
    h.close(chatty);
    assert_eq!(h.r.stats().idle_closes, 2);
    // The PE expires at 300 s; its connection then owns nothing and goes idle.
    // The subscriber stays.
    let later = h.run_until(Time::from_secs(1000));
    let closes: Vec<_> = later
        .iter()
        .filter(|o| matches!(o, Output::Close { .. }))
        .collect();
    assert_eq!(
        closes,
        vec![&Output::Close {
            conn: pe_conn,
            reason: "idle".into()
        }]
    );
}

// --------------------------------------------------------- errors and junk

fn with_param(msg: &AsapMessage, ty: u16, value: &[u8]) -> Vec<u8> {
    let mut b = msg.to_bytes();
    let len = u16::try_from(4 + value.len()).unwrap();
    b.extend_from_slice(&ty.to_be_bytes());
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(value);
    while b.len() % 4 != 0 {
        b.push(0);
    }
    let total = u16::try_from(b.len()).unwrap();
    b[2..4].copy_from_slice(&total.to_be_bytes());
    b
}

#[test]
fn unknown_parameters_follow_their_action_bits() {
    let mut h = H::new(quiet());
    let c = h.connect(1);
    h.register(c, "P", 1);
    let u = h.connect(2);
    let tlv = vec![0x41, 0x23, 0x00, 0x08, 1, 2, 3, 4];
    // 01: stop, report.
    let out = h.raw(
        u,
        PPID_ASAP,
        &with_param(&resolve("P", None, false), 0x4123, &[1, 2, 3, 4]),
    );
    assert_eq!(out.len(), 1);
    assert_eq!(
        asap(&out[0]).1,
        AsapMessage::Error(vec![ErrorCause::with_info(
            cause::UNRECOGNIZED_PARAMETER,
            tlv
        )])
    );
    // 11: skip, report, and carry on.
    let out = h.raw(
        u,
        PPID_ASAP,
        &with_param(&resolve("P", None, false), 0xC123, &[1, 2, 3, 4]),
    );
    assert_eq!(out.len(), 2);
    assert_eq!(
        asap(&out[0]).1,
        AsapMessage::Error(vec![ErrorCause::with_info(
            cause::UNRECOGNIZED_PARAMETER,
            vec![0xC1, 0x23, 0x00, 0x08, 1, 2, 3, 4]
        )])
    );
    elements(&asap(&out[1]).1);
    // 10: skip silently; 00: drop silently.
    assert_eq!(
        h.raw(
            u,
            PPID_ASAP,
            &with_param(&resolve("P", None, false), 0x8123, &[1])
        )
        .len(),
        1
    );
    assert!(h
        .raw(
            u,
            PPID_ASAP,
            &with_param(&resolve("P", None, false), 0x0123, &[1])
        )
        .is_empty());
}

#[test]
fn unknown_message_types_follow_their_top_bits() {
    let mut h = H::new(quiet());
    let c = h.connect(1);
    let msg = [0x41, 0x00, 0x00, 0x08, 9, 9, 9, 9];
    let out = h.raw(c, PPID_ASAP, &msg);
    assert_eq!(
        asap(&out[0]).1,
        AsapMessage::Error(vec![ErrorCause::with_info(
            cause::UNRECOGNIZED_MESSAGE,
            msg.to_vec()
        )])
    );
    assert!(h.raw(c, PPID_ASAP, &[0x3f, 0, 0, 4]).is_empty());
    assert!(h.raw(c, PPID_ASAP, &[0x81, 0, 0, 4]).is_empty());
    // Messages a registrar never gets: ignored and counted.
    let resp = AsapMessage::RegistrationResponse {
        reject: false,
        pool_handle: "P".into(),
        pe_id: 1,
        error: None,
    };
    assert!(h.send(c, &resp).is_empty());
    assert!(h.send(c, &AsapMessage::Cookie(vec![1, 2, 3])).is_empty());
    assert_eq!(h.r.stats().unexpected, 2);
    // An unknown PPID: dropped.
    assert!(h
        .raw(c, 99, &resolve("P", None, false).to_bytes())
        .is_empty());
}

#[test]
fn too_many_malformed_messages_close_the_connection() {
    let mut h = H::new(RegistrarConfig {
        max_malformed: 3,
        ..quiet()
    });
    let c = h.connect(1);
    let good = h.connect(2);
    for _ in 0..3 {
        assert!(h.raw(c, PPID_ASAP, &[0x05, 0, 0, 200]).is_empty());
    }
    let out = h.raw(c, PPID_ASAP, &[0x01]);
    assert!(matches!(&out[..], [Output::Close { conn, .. }] if *conn == c));
    assert!(h.raw(c, PPID_ASAP, &[0x01]).is_empty());
    assert_eq!(h.r.stats().malformed, 4);
    assert_eq!(h.r.stats().malformed_closes, 1);
    // Others are unaffected.
    granted(&h.register(good, "P", 1), "P", 1);
}

// ---------------------------------------------------------------- table dump

fn table_request(own: bool) -> Vec<u8> {
    EnrpMessage {
        sender: 0x1111_1111,
        receiver: 0,
        body: EnrpBody::HandleTableRequest {
            own_children_only: own,
        },
    }
    .to_bytes()
}

fn dump(h: &mut H, c: ConnId, between: &mut dyn FnMut(&mut H, usize)) -> Vec<(PoolHandle, u32)> {
    let mut seen = Vec::new();
    for round in 0.. {
        let out = h.raw(c, PPID_ENRP, &table_request(false));
        assert_eq!(out.len(), 1);
        let (to, m, _) = enrp(&out[0]);
        assert_eq!(to, c);
        assert_eq!((m.sender, m.receiver), (SERVER, 0x1111_1111));
        let EnrpBody::HandleTableResponse {
            reject: false,
            more,
            pools,
        } = m.body
        else {
            panic!("{m:?}")
        };
        for (hd, pes) in pools {
            assert!(!pes.is_empty());
            for p in pes {
                assert_eq!(p.home, SERVER);
                assert!(p.asap_transport.is_some());
                seen.push((hd.clone(), p.id));
            }
        }
        if !more {
            break;
        }
        between(h, round);
    }
    seen
}

#[test]
fn handle_table_dump_is_chunked_and_covers_every_pe_once() {
    let mut h = H::new(RegistrarConfig {
        handle_table_chunk: 7,
        ..quiet()
    });
    let c = h.connect(1);
    let mut want = Vec::new();
    for pool in ["a", "b", "c", "d"] {
        for id in 1..=9 {
            h.register(c, pool, id);
            want.push((pool_handle(pool), id));
        }
    }
    let d = h.connect(2);
    let mut seen = dump(&mut h, d, &mut |_, _| {});
    seen.sort();
    assert_eq!(seen, want);
    assert_eq!(h.r.stats().handle_table_responses, 6);

    // Changes between chunks: PEs present throughout appear exactly once,
    // removed ones at most once, none twice.
    let p = h.connect(3);
    h.register(p, "zz", 1);
    let seen = dump(&mut h, d, &mut |h, round| {
        if round == 1 {
            h.close(p); // removes zz/1 (not yet sent)
            h.ask(
                c,
                &AsapMessage::Deregistration {
                    pool_handle: "a".into(),
                    pe_id: 1, // already sent
                },
            );
            h.register(c, "a", 0x10); // may or may not be sent
            h.register(c, "e", 1); // may or may not be sent
        }
    });
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), seen.len(), "no duplicates");
    for k in &want {
        assert!(seen.contains(k), "{k:?} missing");
    }
    assert!(!seen.contains(&(pool_handle("zz"), 1)));

    // Empty handlespace: one response, M=0, no entries.
    let mut e = H::new(quiet());
    let c = e.connect(1);
    let out = e.raw(c, PPID_ENRP, &table_request(true));
    let (_, m, flags) = enrp(&out[0]);
    assert_eq!(flags, 0);
    assert!(
        matches!(m.body, EnrpBody::HandleTableResponse { more: false, ref pools, .. } if pools.is_empty())
    );
}

#[test]
fn presence_from_an_unknown_server_adds_it_and_is_answered() {
    let mut h = H::new(quiet());
    let c = h.connect(1);
    let presence = EnrpMessage {
        sender: 5,
        receiver: 0,
        body: EnrpBody::Presence {
            reply_required: true,
            checksum: Some(0xffff),
            server_info: None,
        },
    };
    // RFC 5353 §3.4: the newcomer is asked for its Server Information
    // (reply-required presence), and its own reply-required presence answered.
    let out = h.raw(c, PPID_ENRP, &presence.to_bytes());
    let flags: Vec<u8> = out.iter().map(|o| enrp(o).2).collect();
    assert_eq!(flags, vec![1, 0]);
    assert_eq!(h.r.peers().len(), 1);
    assert_eq!(h.r.peers()[0].id, 5);
}

// ------------------------------------------------------------------- announce

#[test]
fn server_announce_on_its_timer_when_enabled() {
    let tcp = Transport::Tcp {
        port: 3863,
        transport_use: 0,
        addr: ip(9, 9),
    };
    let mut h = H::new(RegistrarConfig {
        announce_interval: Some(Duration::from_secs(1)),
        announce_transports: vec![sctp(3863, vec![ip(9, 9)]), tcp.clone()],
        ..quiet()
    });
    let out = h.run_until(Time::from_millis(2500));
    assert_eq!(out.len(), 3);
    for o in out {
        let Output::Announce { msg } = o else {
            panic!()
        };
        assert_eq!(
            AsapMessage::decode(&msg).unwrap().msg,
            AsapMessage::ServerAnnounce {
                server_id: SERVER,
                transports: vec![sctp(3863, vec![ip(9, 9)]), tcp.clone()]
            }
        );
    }
    // Off by default.
    let mut q = H::new(quiet());
    assert!(q.run_until(Time::from_secs(10)).is_empty());
}

// ------------------------------------------------------------------ robustness

/// A tiny deterministic generator for the fuzz-style test.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[test]
fn hostile_traffic_never_disturbs_a_well_behaved_client() {
    let mut h = H::new(RegistrarConfig {
        keep_alive_interval: Duration::from_secs(5),
        ..RegistrarConfig::default()
    });
    let mut g = Lcg(0x5eed);
    let good = h.connect_kind(
        1_000_000,
        ConnKind::Sctp,
        vec!["192.168.1.1:1000".parse().unwrap()],
    );
    let user = h.connect_kind(
        1_000_001,
        ConnKind::Tcp,
        vec!["192.168.1.2:1000".parse().unwrap()],
    );
    for id in 1..=5 {
        granted(&h.register(good, "Good", id), "Good", id);
    }
    // Seeds to mutate: every message type a client might send.
    let seeds: Vec<Vec<u8>> = vec![
        reg("Good", pe(3, 5000, Policy::RoundRobin)).to_bytes(),
        reg("Evil", pe(1, 5000, Policy::LeastUsed { load: 5 })).to_bytes(),
        resolve("Good", Some(4), true).to_bytes(),
        // Reports about the good PEs would remove them by design (RFC 5352
        // §3.5); hostile ones name other PEs.
        unreachable("Good", 99).to_bytes(),
        unreachable("Evil", 1).to_bytes(),
        AsapMessage::Deregistration {
            pool_handle: "Good".into(),
            pe_id: 1,
        }
        .to_bytes(),
        AsapMessage::EndpointKeepAliveAck {
            pool_handle: "Good".into(),
            pe_id: 4,
        }
        .to_bytes(),
        table_request(false),
    ];
    let mut evil: Vec<ConnId> = (0..20).map(|i| h.connect(i)).collect();
    let mut next_id = 100;
    for step in 0..6000u32 {
        h.now = h.now + Duration::from_millis(g.below(20));
        // Keep the well-behaved PEs alive: answer every keep-alive.
        let out = h.run_until(h.now);
        answer_keep_alives(&mut h, good, &out);
        let ci = usize::try_from(g.below(evil.len() as u64)).unwrap();
        let c = evil[ci];
        let seed = &seeds[usize::try_from(g.below(seeds.len() as u64)).unwrap()];
        let mut m = seed.clone();
        match g.below(5) {
            0 => {
                let n = usize::try_from(g.below(8) + 1).unwrap();
                for _ in 0..n {
                    let i = usize::try_from(g.below(m.len() as u64)).unwrap();
                    m[i] = u8::try_from(g.below(256)).unwrap();
                }
            }
            1 => m.truncate(usize::try_from(g.below(m.len() as u64)).unwrap()),
            2 => {
                m = (0..g.below(64))
                    .map(|_| u8::try_from(g.below(256)).unwrap())
                    .collect()
            }
            3 => {
                let i = usize::try_from(g.below(m.len() as u64)).unwrap();
                m.insert(i, u8::try_from(g.below(256)).unwrap());
            }
            _ => {}
        }
        let ppid = if g.below(10) == 0 {
            PPID_ENRP
        } else {
            PPID_ASAP
        };
        let out = h.raw(c, ppid, &m);
        for o in &out {
            if let Output::Close { conn, .. } = o {
                h.close(*conn);
                evil[ci] = h.connect(next_id);
                next_id += 1;
            }
        }
        if g.below(500) == 0 {
            h.close(c);
            evil[ci] = h.connect(next_id);
            next_id += 1;
        }
        // The well-behaved client checks its view now and then.
        if step % 50 == 0 {
            let out = h.send(user, &resolve("Good", Some(u32::MAX), false));
            let answer = out
                .iter()
                .map(asap)
                .find(|(c, m)| {
                    *c == user && matches!(m, AsapMessage::HandleResolutionResponse { .. })
                })
                .expect("the user is answered");
            let (_, pol, ids) = elements(&answer.1);
            assert_eq!(pol, Some(Policy::RoundRobin));
            // Hostile clients may add PEs of their own to the pool (nothing
            // authenticates PEs), but never touch the good ones.
            for id in 1..=5 {
                assert!(ids.contains(&id), "step {step}: {ids:?}");
            }
            for id in 1..=5 {
                let p = h.r.pool_element(&pool_handle("Good"), id).unwrap();
                assert_eq!(p.user_transport, sctp(5000, vec![ip(0, 1)]));
                assert_eq!(h.r.owner_connection(&pool_handle("Good"), id), Some(good));
            }
            // Re-register now and then, and check the answer.
            if step % 500 == 0 {
                let out = h.send(good, &reg("Good", pe(1, 5000, Policy::RoundRobin)));
                assert!(out.iter().map(asap).any(|(c, m)| c == good
                    && m == AsapMessage::RegistrationResponse {
                        reject: false,
                        pool_handle: "Good".into(),
                        pe_id: 1,
                        error: None
                    }));
            }
        }
    }
    let s = h.r.stats();
    assert!(s.malformed > 100, "{s:?}");
}

fn answer_keep_alives(h: &mut H, good: ConnId, out: &[Output]) {
    for o in out {
        if let Output::Send { conn, msg, .. } = o {
            if *conn != good {
                continue;
            }
            if let Ok(d) = AsapMessage::decode(msg) {
                if let AsapMessage::EndpointKeepAlive { pool_handle, .. } = d.msg {
                    for id in 1..=5 {
                        let ack = AsapMessage::EndpointKeepAliveAck {
                            pool_handle: pool_handle.clone(),
                            pe_id: id,
                        };
                        let more = h.send(good, &ack);
                        answer_keep_alives(h, good, &more);
                    }
                }
            }
        }
    }
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    fn any_output_is_well_formed(o: &Output) {
        match o {
            Output::Send { ppid, msg, .. } if *ppid == PPID_ASAP => {
                AsapMessage::decode(msg).expect("ASAP output decodes");
            }
            Output::Send { ppid, msg, .. } if *ppid == PPID_ENRP => {
                EnrpMessage::decode(msg).expect("ENRP output decodes");
            }
            Output::Send { ppid, .. } => panic!("unexpected ppid {ppid}"),
            Output::Announce { msg } => {
                AsapMessage::decode(msg).expect("announce decodes");
            }
            Output::EnrpMulticast { msg } => {
                EnrpMessage::decode(msg).expect("ENRP multicast decodes");
            }
            Output::Close { .. } | Output::Connect { .. } => {}
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        /// Any bytes on any PPID, at any time, from a few connections: no panic,
        /// every output decodes, and after handle_timeout no timer is overdue.
        #[test]
        fn arbitrary_input_never_panics(
            msgs in proptest::collection::vec(
                (0u64..4, prop_oneof![Just(PPID_ASAP), Just(PPID_ENRP), Just(0u32), any::<u32>()],
                 proptest::collection::vec(any::<u8>(), 0..96), 0u64..3_000_000),
                1..40)
        ) {
            let mut h = H::new(RegistrarConfig {
                announce_interval: Some(Duration::from_secs(1)),
                ..RegistrarConfig::default()
            });
            let conns: Vec<ConnId> = (0..4).map(|i| h.connect(i)).collect();
            for (c, ppid, mut bytes, dt) in msgs {
                // Half the time, make the header's length right so the body is parsed.
                if bytes.len() >= 4 && dt % 2 == 0 {
                    let n = u16::try_from(bytes.len()).unwrap();
                    bytes[2..4].copy_from_slice(&n.to_be_bytes());
                    bytes[0] %= 0x10;
                }
                h.now = h.now + Duration::from_micros(dt);
                let out = h.raw(conns[usize::try_from(c).unwrap()], ppid, &bytes);
                out.iter().for_each(any_output_is_well_formed);
                h.run_until(h.now).iter().for_each(any_output_is_well_formed);
                if let Some(t) = h.r.poll_timeout() {
                    prop_assert!(t > h.now, "timer {t:?} due at {:?} not run", h.now);
                }
            }
        }
    }
}

#[test]
fn large_answers_are_cut_to_fit_one_message() {
    let mut h = H::new(quiet());
    let c = h.connect(1);
    // 200 PEs of ~1.3 KB each (60 IPv6 addresses): far beyond 64 KiB together.
    let addrs: Vec<IpAddr> = (0..60u16)
        .map(|i| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i + 1)))
        .collect();
    for id in 1..=200 {
        let mut p = pe(id, 5000, Policy::RoundRobin);
        p.user_transport = sctp(5000, addrs.clone());
        granted(&h.ask(c, &reg("Big", p)), "Big", id);
    }
    let u = h.connect(2);
    let out = h.send(u, &resolve("Big", Some(u32::MAX), false));
    let Output::Send { msg, .. } = &out[0] else {
        panic!()
    };
    assert!(msg.len() <= 65535);
    let n = elements(&asap(&out[0]).1).2.len();
    assert!(n > 40 && n < 200, "{n} PEs");

    // The table dump cuts chunks by size too, and still covers everything.
    let mut seen = dump(&mut h, u, &mut |_, _| {});
    seen.sort();
    assert_eq!(seen.len(), 200);
    seen.dedup();
    assert_eq!(seen.len(), 200);
    assert!(h.r.stats().handle_table_responses >= 4);
}
