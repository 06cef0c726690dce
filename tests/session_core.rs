//! Enhanced-mode session core: an in-memory network of one pool user's
//! [`Session`] and a few echoing PEs ([`SessionAcceptor`]), a fake ASAP client
//! answering `NeedServer`, and virtual time.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use rserpool::session::{
    ConnId, Event, FailoverMode, Output, PeEvent, PeOutput, PeSession, SendError, SendOptions,
    Session, SessionAcceptor, SessionConfig, SessionError, State, ASAP_SEND_FAILOVER,
    ASAP_SEND_NO_FAILOVER, MAX_MESSAGE_LEN, PPID_ASAP,
};
use rserpool::time::Time;
use rserpool::wire::{transport_use, AsapMessage, Policy, PoolElement, PoolHandle, Transport};

const PPID_APP: u32 = 42;
const LATENCY: Duration = Duration::from_millis(1);

fn pe_param(id: u32) -> PoolElement {
    PoolElement {
        id,
        home: 0,
        reg_life: -1,
        user_transport: Transport::Tcp {
            port: 9000 + id as u16,
            transport_use: transport_use::DATA_PLUS_CONTROL,
            addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, id as u8)),
        },
        policy: Policy::RoundRobin,
        asap_transport: None,
    }
}

fn pool() -> PoolHandle {
    PoolHandle::from("echo")
}

/// Tiny deterministic PRNG (xorshift64*).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

#[derive(Debug, Clone)]
enum Ev {
    /// DATA from the PU to a PE.
    ToPe {
        conn: ConnId,
        ppid: u32,
        bytes: Vec<u8>,
    },
    /// DATA from a PE to the PU.
    ToPu {
        conn: ConnId,
        ppid: u32,
        bytes: Vec<u8>,
    },
    /// An ACK chunk to the PU; `tag` is the acked message (harness only).
    AckToPu {
        conn: ConnId,
        tag: Option<u64>,
    },
    ConnectResult {
        conn: ConnId,
        ok: bool,
    },
    ClosedToPu {
        conn: ConnId,
    },
    Kill {
        pe: u32,
    },
    AppSend {
        text: String,
    },
}

#[derive(Default)]
struct PeNode {
    alive: bool,
    /// Never answers connects.
    blackhole: bool,
    acceptor: SessionAcceptor,
    /// Application-visible stream per connection: "E:<cookie>" or payloads.
    log: BTreeMap<ConnId, Vec<String>>,
    /// Tags of DATA chunks delivered per connection, waiting for their ACK.
    pending_tags: BTreeMap<ConnId, Vec<Option<u64>>>,
    /// Business card sent on every accepted connection.
    card: Option<Vec<u32>>,
    /// Send a cookie after every message.
    cookies: bool,
}

struct Net {
    now: Time,
    q: BTreeMap<(Time, u64), Ev>,
    n: u64,
    pu: Session,
    pes: BTreeMap<u32, PeNode>,
    /// conn → (pe, open)
    conns: BTreeMap<ConnId, (u32, bool)>,
    /// Fake ASAP client: the pool's PEs in policy order.
    pool_pes: Vec<u32>,
    /// The fake client skips reported PEs and `exclude`.
    client_honors_reports: bool,
    reported: BTreeSet<u32>,
    need_server: usize,
    /// Every output of the PU, in order.
    outputs: Vec<Output>,
    events: Vec<Event>,
    /// Echoes received by the PU application.
    echoes: Vec<String>,
    /// Messages to send in the fail-over callback.
    resume: bool,
    /// Acknowledged deliveries per message (harness accounting).
    acked: BTreeMap<u64, u32>,
    /// The PU's cookie when each fail-over event came.
    cookie_at_failover: Vec<Option<Vec<u8>>>,
    detect_delay: Duration,
}

fn seq_of(s: &str) -> Option<u64> {
    s.strip_prefix('m')?.parse().ok()
}

impl Net {
    fn new(n_pes: u32, config: SessionConfig) -> Self {
        let mut pes = BTreeMap::new();
        for id in 1..=n_pes {
            pes.insert(
                id,
                PeNode {
                    alive: true,
                    ..Default::default()
                },
            );
        }
        let pu = Session::open(pool(), config, Time::ZERO);
        let mut net = Net {
            now: Time::ZERO,
            q: BTreeMap::new(),
            n: 0,
            pu,
            pes,
            conns: BTreeMap::new(),
            pool_pes: (1..=n_pes).collect(),
            client_honors_reports: true,
            reported: BTreeSet::new(),
            need_server: 0,
            outputs: Vec::new(),
            events: Vec::new(),
            echoes: Vec::new(),
            resume: false,
            acked: BTreeMap::new(),
            cookie_at_failover: Vec::new(),
            detect_delay: Duration::from_millis(20),
        };
        net.drive_pu();
        net
    }

    /// Replace the session by a fresh one (same configuration).
    fn reopen(&mut self) {
        self.pu = Session::open(pool(), self.pu.config().clone(), self.now);
        // Forget the old session's connections (the ids start again at 0).
        self.q.clear();
        for (c, (pe, _)) in std::mem::take(&mut self.conns) {
            self.pes.get_mut(&pe).unwrap().acceptor.handle_closed(c);
        }
        self.outputs.clear();
        self.events.clear();
        self.need_server = 0;
        self.drive_pu();
    }

    fn at(&mut self, t: Time, ev: Ev) {
        self.n += 1;
        self.q.insert((t, self.n), ev);
    }

    fn later(&mut self, ev: Ev) {
        let t = self.now + LATENCY;
        self.at(t, ev);
    }

    fn send(&mut self, text: &str) -> Result<u64, SendError> {
        let r = self
            .pu
            .send(text.as_bytes(), PPID_APP, SendOptions::default());
        self.drive_pu();
        r
    }

    fn kill(&mut self, pe: u32) {
        let node = self.pes.get_mut(&pe).unwrap();
        node.alive = false;
        let dead: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, (p, open))| *p == pe && *open)
            .map(|(c, _)| *c)
            .collect();
        for c in dead {
            self.conns.insert(c, (pe, false));
            let t = self.now + self.detect_delay;
            self.at(t, Ev::ClosedToPu { conn: c });
        }
    }

    fn conn_open(&self, conn: ConnId) -> bool {
        self.conns.get(&conn).is_some_and(|(_, o)| *o)
    }

    fn drive_pu(&mut self) {
        loop {
            let mut progressed = false;
            while let Some(o) = self.pu.poll_output() {
                progressed = true;
                self.outputs.push(o.clone());
                self.pu_output(o);
            }
            while let Some(e) = self.pu.poll_event() {
                progressed = true;
                self.events.push(e.clone());
                match e {
                    Event::Data { bytes, .. } => {
                        self.echoes.push(String::from_utf8(bytes).unwrap());
                    }
                    Event::Failover { from, to, .. } => {
                        self.cookie_at_failover
                            .push(self.pu.cookie().map(|c| c.to_vec()));
                        if self.resume {
                            let text = format!("r{from}-{to}");
                            self.pu
                                .send(text.as_bytes(), PPID_APP, SendOptions::default())
                                .unwrap();
                        }
                    }
                    _ => {}
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn pu_output(&mut self, o: Output) {
        match o {
            Output::NeedServer { exclude, .. } => {
                self.need_server += 1;
                let pick = self.pool_pes.iter().copied().find(|id| {
                    !self.client_honors_reports
                        || (!exclude.contains(id) && !self.reported.contains(id))
                });
                match pick {
                    Some(id) => self.pu.handle_server(pe_param(id), self.now),
                    None => self.pu.handle_no_server(self.now),
                }
            }
            Output::ReportUnreachable { pe_id, .. } => {
                self.reported.insert(pe_id);
            }
            Output::Connect { conn, pe, .. } => {
                let node = self.pes.get(&pe.id).unwrap();
                if node.blackhole {
                    return;
                }
                let ok = node.alive;
                // The PU learns of the connection before anything the PE sends.
                self.later(Ev::ConnectResult { conn, ok });
                if ok {
                    self.conns.insert(conn, (pe.id, true));
                    let node = self.pes.get_mut(&pe.id).unwrap();
                    node.acceptor.handle_accepted(conn);
                    if let Some(card) = node.card.clone() {
                        node.acceptor
                            .session(conn)
                            .unwrap()
                            .send_business_card(pool(), card.into_iter().map(pe_param).collect())
                            .unwrap();
                    }
                    self.drive_pe(pe.id);
                }
            }
            Output::Send {
                conn, ppid, bytes, ..
            } => {
                if self.conn_open(conn) {
                    self.later(Ev::ToPe { conn, ppid, bytes });
                }
            }
            Output::Close { conn } => {
                if let Some((pe, _)) = self.conns.get(&conn).copied() {
                    self.conns.insert(conn, (pe, false));
                    self.pes.get_mut(&pe).unwrap().acceptor.handle_closed(conn);
                }
            }
        }
    }

    fn drive_pe(&mut self, pe: u32) {
        loop {
            let mut progressed = false;
            loop {
                let node = self.pes.get_mut(&pe).unwrap();
                let Some(o) = node.acceptor.poll_output() else {
                    break;
                };
                progressed = true;
                match o {
                    PeOutput::Send {
                        conn, ppid, bytes, ..
                    } => {
                        if self.conn_open(conn) {
                            self.later(Ev::ToPu { conn, ppid, bytes });
                        }
                    }
                    PeOutput::Ack { conn } => {
                        let tags = node.pending_tags.entry(conn).or_default();
                        let tag = if tags.is_empty() {
                            None
                        } else {
                            tags.remove(0)
                        };
                        if self.conn_open(conn) {
                            self.later(Ev::AckToPu { conn, tag });
                        }
                    }
                }
            }
            loop {
                let node = self.pes.get_mut(&pe).unwrap();
                let Some((conn, e)) = node.acceptor.poll_event() else {
                    break;
                };
                progressed = true;
                let log = node.log.entry(conn).or_default();
                match e {
                    PeEvent::CookieEcho(c) => {
                        log.push(format!("E:{}", String::from_utf8_lossy(&c)));
                        node.acceptor.session(conn).unwrap().ack();
                    }
                    PeEvent::Data { ppid, bytes, .. } => {
                        let text = String::from_utf8(bytes.clone()).unwrap();
                        log.push(text.clone());
                        let s = node.acceptor.session(conn).unwrap();
                        s.send(&bytes, ppid).unwrap();
                        if node.cookies {
                            s.send_cookie(format!("c-{text}").as_bytes()).unwrap();
                        }
                    }
                    PeEvent::BusinessCard { .. } => {
                        node.acceptor.session(conn).unwrap().ack();
                    }
                }
            }
            if !progressed {
                break;
            }
        }
    }

    fn step(&mut self, ev: Ev) {
        match ev {
            Ev::ToPe { conn, ppid, bytes } => {
                if !self.conn_open(conn) {
                    return;
                }
                let pe = self.conns[&conn].0;
                let tag = if ppid == PPID_ASAP {
                    None
                } else {
                    seq_of(std::str::from_utf8(&bytes).unwrap())
                };
                let node = self.pes.get_mut(&pe).unwrap();
                node.pending_tags.entry(conn).or_default().push(tag);
                node.acceptor.handle_data(conn, 0, ppid, &bytes);
                self.drive_pe(pe);
            }
            Ev::ToPu { conn, ppid, bytes } => {
                if self.conn_open(conn) {
                    self.pu.handle_data(conn, 0, ppid, &bytes, self.now);
                }
            }
            Ev::AckToPu { conn, tag } => {
                if self.conn_open(conn) {
                    if let Some(seq) = tag {
                        *self.acked.entry(seq).or_default() += 1;
                    }
                    self.pu.handle_ack(conn, None, self.now);
                }
            }
            Ev::ConnectResult { conn, ok } => {
                if ok && self.conn_open(conn) {
                    self.pu.handle_connected(conn, self.now);
                } else if ok {
                    // The PE died while the connection was being set up.
                    self.pu.handle_closed(conn, self.now);
                } else {
                    self.pu.handle_connect_failed(conn, self.now);
                }
            }
            Ev::ClosedToPu { conn } => self.pu.handle_closed(conn, self.now),
            Ev::Kill { pe } => self.kill(pe),
            Ev::AppSend { text } => {
                // Retry later when the buffer is full.
                if let Err(SendError::BufferFull) =
                    self.pu
                        .send(text.as_bytes(), PPID_APP, SendOptions::default())
                {
                    let t = self.now + Duration::from_millis(5);
                    self.at(t, Ev::AppSend { text });
                }
            }
        }
        self.drive_pu();
    }

    fn run_until(&mut self, end: Time) {
        loop {
            let next_ev = self.q.keys().next().map(|k| k.0);
            let next_to = self.pu.poll_timeout();
            let t = match (next_ev, next_to) {
                (Some(a), Some(b)) => a.min(b),
                (Some(a), None) => a,
                (None, Some(b)) => b,
                (None, None) => break,
            };
            if t > end {
                break;
            }
            self.now = self.now.max(t);
            if next_to.is_some_and(|b| b <= self.now) {
                self.pu.handle_timeout(self.now);
                self.drive_pu();
                continue;
            }
            let key = *self.q.keys().next().unwrap();
            let ev = self.q.remove(&key).unwrap();
            self.step(ev);
        }
        self.now = self.now.max(end);
    }

    fn run_ms(&mut self, ms: u64) {
        let end = self.now + Duration::from_millis(ms);
        self.run_until(end);
    }

    fn log(&self, pe: u32) -> Vec<String> {
        self.pes[&pe].log.values().flatten().cloned().collect()
    }

    fn connects(&self) -> Vec<u32> {
        self.outputs
            .iter()
            .filter_map(|o| match o {
                Output::Connect { pe, .. } => Some(pe.id),
                _ => None,
            })
            .collect()
    }
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

#[test]
fn open_connect_round_trip() {
    let mut net = Net::new(2, SessionConfig::default());
    assert_eq!(net.pu.state(), State::Connecting);
    for i in 0..3 {
        assert_eq!(net.send(&format!("m{i}")).unwrap(), i);
    }
    net.run_ms(100);
    assert_eq!(net.pu.state(), State::Up);
    assert_eq!(net.events[0], Event::Connected { pe: 1 });
    assert_eq!(net.echoes, s(&["m0", "m1", "m2"]));
    assert_eq!(net.log(1), s(&["m0", "m1", "m2"]));
    assert_eq!(net.pu.unacked(), 0);
    assert_eq!(net.pu.stats().acked, 3);
    assert_eq!(net.need_server, 1);
    // Data goes out with the application's PPID.
    assert!(net.outputs.iter().all(|o| match o {
        Output::Send { ppid, .. } => *ppid == PPID_APP,
        _ => true,
    }));
}

#[test]
fn cookie_latest_kept_and_echoed_first_after_failover() {
    let mut net = Net::new(2, SessionConfig::default());
    net.pes.get_mut(&1).unwrap().cookies = true;
    for i in 0..5 {
        net.send(&format!("m{i}")).unwrap();
    }
    net.run_ms(50);
    assert_eq!(net.pu.cookie(), Some(&b"c-m4"[..]));
    assert_eq!(net.pu.stats().cookies, 5);
    net.kill(1);
    net.send("m5").unwrap();
    net.run_ms(100);
    assert_eq!(net.pu.state(), State::Up);
    // m5 went into the dead connection: re-sent.
    assert!(net.events.contains(&Event::Failover {
        from: 1,
        to: 2,
        resent: vec![5]
    }));
    assert_eq!(net.log(2), s(&["E:c-m4", "m5"]));
    // The cookie echo is the first DATA chunk on the new connection.
    let conn2 = net.pu.current_conn().unwrap();
    let first = net
        .outputs
        .iter()
        .find(|o| matches!(o, Output::Send { conn, .. } if *conn == conn2))
        .unwrap();
    match first {
        Output::Send {
            ppid, bytes, tsn, ..
        } => {
            assert_eq!((*ppid, *tsn), (PPID_ASAP, 0));
            let d = AsapMessage::decode(bytes).unwrap();
            assert_eq!(d.msg, AsapMessage::CookieEcho(b"c-m4".to_vec()));
        }
        _ => unreachable!(),
    }
    assert_eq!(net.reported, BTreeSet::from([1]));
}

#[test]
fn failover_callback_messages_go_before_retransmissions() {
    let mut net = Net::new(2, SessionConfig::default());
    net.resume = true;
    net.pes.get_mut(&1).unwrap().cookies = true;
    net.send("m0").unwrap();
    net.run_ms(50);
    // In flight when PE 1 dies: lost, never acknowledged.
    for i in 1..4 {
        net.send(&format!("m{i}")).unwrap();
    }
    net.kill(1);
    // Sent before the failure is detected: into the dead connection.
    net.send("m4").unwrap();
    net.run_ms(5);
    assert_eq!(net.pu.unacked(), 4, "m1..m4 outstanding");
    net.run_ms(200);
    assert_eq!(net.log(1), s(&["m0"]));
    assert_eq!(net.log(2), s(&["E:c-m0", "r1-2", "m1", "m2", "m3", "m4"]));
    assert_eq!(net.pu.stats().resent, 4);
    assert_eq!(net.pu.unacked(), 0);
    assert!(net.events.contains(&Event::Failover {
        from: 1,
        to: 2,
        resent: vec![1, 2, 3, 4]
    }));
    // The event came after the connection was up and before any data on it.
    let conn2 = net.pu.current_conn().unwrap();
    let idx_connect = net
        .outputs
        .iter()
        .position(|o| matches!(o, Output::Connect { conn, .. } if *conn == conn2))
        .unwrap();
    assert!(idx_connect > 0);
    assert_eq!(net.cookie_at_failover, vec![Some(b"c-m0".to_vec())]);
}

#[test]
fn business_card_order_preferred_over_policy() {
    let mut net = Net::new(3, SessionConfig::default());
    net.pes.get_mut(&1).unwrap().card = Some(vec![1, 3, 2]);
    net.reopen();
    net.send("m0").unwrap();
    net.run_ms(50);
    let (p, pes) = net.pu.business_card().unwrap();
    assert_eq!(p, &pool());
    assert_eq!(pes.iter().map(|p| p.id).collect::<Vec<_>>(), vec![1, 3, 2]);
    net.kill(1);
    net.run_ms(100);
    // The card's PE 3 was taken without asking the client (policy says 2).
    assert_eq!(net.connects(), vec![1, 3]);
    assert_eq!(net.need_server, 1);
    assert!(net.events.contains(&Event::Failover {
        from: 1,
        to: 3,
        resent: vec![]
    }));
    // A dead PE on the card: skipped to the next one on it.
    let mut net = Net::new(3, SessionConfig::default());
    net.pes.get_mut(&1).unwrap().card = Some(vec![3, 2]);
    net.reopen();
    net.run_ms(50);
    net.kill(3);
    net.kill(1);
    net.run_ms(100);
    assert_eq!(net.connects(), vec![1, 3, 2]);
    assert_eq!(net.pu.current_pe().unwrap().id, 2);
    assert_eq!(net.reported, BTreeSet::from([1, 3]));
}

#[test]
fn no_automatic_failover_waits_for_the_application() {
    let config = SessionConfig {
        auto_failover: false,
        ..Default::default()
    };
    let mut net = Net::new(2, config);
    net.send("m0").unwrap();
    net.run_ms(50);
    net.kill(1);
    net.run_ms(50);
    assert_eq!(net.pu.state(), State::PeerFailed);
    assert!(net.events.contains(&Event::PeerFailed { pe: 1 }));
    let before = net.outputs.len();
    net.send("m1").unwrap();
    net.run_ms(10_000);
    assert_eq!(
        net.outputs.len(),
        before,
        "nothing sent until the app decides"
    );
    assert!(net.log(2).is_empty());
    net.pu.failover_now(net.now).unwrap();
    net.drive_pu();
    net.run_ms(100);
    assert!(net.events.contains(&Event::Failover {
        from: 1,
        to: 2,
        resent: vec![]
    }));
    assert_eq!(net.log(2), s(&["m1"]));
    assert_eq!(
        net.pu.failover_now(net.now),
        Err(SessionError::InvalidState)
    );
}

#[test]
fn per_send_failover_options_override_the_session() {
    // Session fails over, but a buffered NO_FAILOVER message forbids it.
    let mut net = Net::new(2, SessionConfig::default());
    net.run_ms(20);
    net.kill(1);
    net.pu
        .send(
            b"m0",
            PPID_APP,
            SendOptions::from_flags(ASAP_SEND_NO_FAILOVER),
        )
        .unwrap();
    net.drive_pu();
    net.run_ms(100);
    assert_eq!(net.pu.state(), State::PeerFailed);
    // Session does not fail over, but a FAILOVER message asks for it.
    let mut net = Net::new(
        2,
        SessionConfig {
            auto_failover: false,
            ..Default::default()
        },
    );
    net.run_ms(20);
    net.kill(1);
    let opts = SendOptions::from_flags(ASAP_SEND_FAILOVER);
    assert_eq!(opts.failover, FailoverMode::Failover);
    net.pu.send(b"m0", PPID_APP, opts).unwrap();
    net.drive_pu();
    net.run_ms(100);
    assert_eq!(net.pu.state(), State::Up);
    assert_eq!(net.log(2), s(&["m0"]));
}

#[test]
fn buffer_is_bounded() {
    let config = SessionConfig {
        max_buffered: 4,
        max_buffered_bytes: 100,
        ..Default::default()
    };
    let mut net = Net::new(1, config);
    net.pes.get_mut(&1).unwrap().blackhole = true;
    for i in 0..4 {
        net.send(&format!("m{i}")).unwrap();
    }
    assert_eq!(net.send("m4"), Err(SendError::BufferFull));
    assert_eq!(net.pu.buffered(), 4);
    // Byte bound.
    let config = SessionConfig {
        max_buffered_bytes: 10,
        ..Default::default()
    };
    let mut net = Net::new(1, config);
    net.send("0123456789").unwrap();
    assert_eq!(net.send("x"), Err(SendError::BufferFull));
    // Acknowledgements free the buffer.
    net.run_ms(50);
    assert_eq!(net.pu.buffered(), 0);
    net.send("x").unwrap();
    // Other refusals.
    assert_eq!(
        net.pu.send(b"x", PPID_ASAP, SendOptions::default()),
        Err(SendError::ReservedPpid)
    );
    assert_eq!(
        net.pu
            .send(&vec![0; MAX_MESSAGE_LEN + 1], 1, SendOptions::default()),
        Err(SendError::TooLarge)
    );
}

#[test]
fn all_pes_dead_gives_up_after_n_attempts() {
    // The client keeps offering a dead PE: every attempt counts.
    let config = SessionConfig {
        max_attempts: 4,
        ..Default::default()
    };
    let mut net = Net::new(3, config);
    net.client_honors_reports = false;
    for id in 1..=3 {
        net.pes.get_mut(&id).unwrap().alive = false;
    }
    // Restart the session now that every PE is dead.
    net.reopen();
    net.send("m0").unwrap();
    net.run_ms(10_000);
    assert_eq!(net.connects(), vec![1, 1, 1, 1]);
    assert_eq!(
        net.events,
        vec![Event::Failed(SessionError::GaveUp { attempts: 4 })]
    );
    assert_eq!(net.pu.state(), State::Closed);
    assert_eq!(net.send("m1"), Err(SendError::Closed));
    assert_eq!(net.pu.take_unsent(), vec![(0, PPID_APP, b"m0".to_vec())]);

    // An honest client runs out of PEs: "no server" answers count too, and
    // the session asks again after the retry interval.
    let config = SessionConfig {
        max_attempts: 5,
        ..Default::default()
    };
    let mut net = Net::new(2, config);
    net.send("m0").unwrap();
    net.run_ms(20);
    net.kill(1);
    net.kill(2);
    let t0 = net.now;
    net.run_ms(60_000);
    assert_eq!(net.connects(), vec![1, 2]);
    assert_eq!(
        net.events.last(),
        Some(&Event::Failed(SessionError::GaveUp { attempts: 5 }))
    );
    // 1 connect + 4 "no server" answers, three retry intervals apart.
    assert_eq!(net.need_server, 1 + 5);
    assert!(net.now.saturating_since(t0) >= Duration::from_secs(3));
}

#[test]
fn connect_timeout_moves_on() {
    let mut net = Net::new(2, SessionConfig::default());
    // Session already connecting to PE 1: make it a black hole from scratch.
    net.pes.get_mut(&1).unwrap().blackhole = true;
    net.reopen();
    net.send("m0").unwrap();
    net.run_ms(4_000);
    assert_eq!(net.pu.state(), State::Connecting);
    net.run_ms(2_000);
    assert_eq!(net.pu.state(), State::Up);
    assert!(net.outputs.contains(&Output::Close { conn: ConnId(0) }));
    assert_eq!(net.connects(), vec![1, 2]);
    assert_eq!(net.log(2), s(&["m0"]));
    // The initial open is not a fail-over.
    assert_eq!(net.events[0], Event::Connected { pe: 2 });
}

#[test]
fn acked_events_report_upper_layer_acks() {
    let config = SessionConfig {
        ack_events: true,
        ..Default::default()
    };
    let mut net = Net::new(1, config);
    for i in 0..3 {
        net.send(&format!("m{i}")).unwrap();
    }
    net.run_ms(50);
    let acked: Vec<u64> = net
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Acked { seq } => Some(*seq),
            _ => None,
        })
        .collect();
    assert_eq!(acked, vec![0, 1, 2]);
    // A cumulative ACK covers everything up to its TSN.
    let conn = net.pu.current_conn().unwrap();
    net.pes.get_mut(&1).unwrap().blackhole = true;
    net.conns.insert(conn, (1, false)); // stop the harness's own deliveries
    for i in 3..6 {
        net.pu
            .send(format!("m{i}").as_bytes(), PPID_APP, SendOptions::default())
            .unwrap();
    }
    while net.pu.poll_output().is_some() {}
    assert_eq!(net.pu.unacked(), 3);
    net.pu.handle_ack(conn, Some(4), net.now);
    assert_eq!(net.pu.unacked(), 1);
    net.pu.handle_ack(conn, Some(4), net.now);
    assert_eq!(net.pu.stats().unexpected_acks, 1);
}

#[test]
fn without_acks_nothing_is_resent() {
    let config = SessionConfig {
        upper_layer_acks: false,
        ..Default::default()
    };
    let mut net = Net::new(2, config);
    net.send("m0").unwrap();
    net.run_ms(20);
    net.kill(1);
    // Into the dead connection: gone for good without acks.
    net.send("m1").unwrap();
    // Not kept, but it counts toward the bounds until the transport
    // acknowledges it or the connection fails.
    assert_eq!(net.pu.buffered(), 1);
    net.run_ms(100);
    assert_eq!(net.pu.buffered(), 0);
    net.send("m2").unwrap();
    net.run_ms(100);
    assert_eq!(net.log(1), s(&["m0"]));
    assert_eq!(net.log(2), s(&["m2"]));
    assert_eq!(net.pu.stats().resent, 0);
}

/// Kill PEs at random points over many seeds: every message reaches a PE at
/// least once, exactly one delivery of each is acknowledged, and each
/// connection sees a gap-free increasing run.
#[test]
fn random_kills_lose_nothing_and_duplicate_no_acked_message() {
    let (mut failovers, mut resent, mut duplicated, mut carded) = (0, 0, 0, 0);
    for seed in 1..=300u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let config = SessionConfig {
            max_buffered: 8 + rng.below(40) as usize,
            ..Default::default()
        };
        let mut net = Net::new(3, config);
        net.detect_delay = Duration::from_micros(100 + rng.below(30_000));
        if rng.below(2) == 0 {
            net.pes.get_mut(&1).unwrap().card = Some(vec![3, 2]);
        }
        for id in 1..=3 {
            net.pes.get_mut(&id).unwrap().cookies = rng.below(2) == 0;
        }
        net.reopen();
        let n = 60u64;
        for i in 0..n {
            let t = Time(rng.below(300_000));
            net.at(
                t,
                Ev::AppSend {
                    text: format!("m{i:03}"),
                },
            );
        }
        // Sends are scheduled at random times but must be numbered in order:
        // rewrite texts in time order.
        let mut k = 0;
        for ev in net.q.values_mut() {
            if let Ev::AppSend { text } = ev {
                *text = format!("m{k}");
                k += 1;
            }
        }
        let kills = 1 + rng.below(2);
        let mut victims = vec![1u32, 2, 3];
        for _ in 0..kills {
            let v = victims.remove(rng.below(victims.len() as u64) as usize);
            let t = Time(rng.below(350_000));
            net.at(t, Ev::Kill { pe: v });
        }
        net.run_until(Time::from_secs(30));

        assert_eq!(net.pu.state(), State::Up, "seed {seed}: {:?}", net.events);
        assert_eq!(net.pu.buffered(), 0, "seed {seed}");
        let mut delivered: BTreeMap<u64, u32> = BTreeMap::new();
        for (id, node) in &net.pes {
            for (conn, log) in &node.log {
                let seqs: Vec<u64> = log.iter().filter_map(|x| seq_of(x)).collect();
                for w in seqs.windows(2) {
                    assert_eq!(
                        w[1],
                        w[0] + 1,
                        "seed {seed}: PE {id} {conn:?} order/gap {seqs:?}"
                    );
                }
                for q in seqs {
                    *delivered.entry(q).or_default() += 1;
                }
                // A cookie echo only ever comes first.
                assert!(log.iter().skip(1).all(|x| !x.starts_with("E:")));
            }
        }
        for q in 0..n {
            assert!(
                delivered.get(&q).copied().unwrap_or(0) >= 1,
                "seed {seed}: m{q} lost"
            );
            assert_eq!(
                net.acked.get(&q).copied(),
                Some(1),
                "seed {seed}: m{q} acknowledged deliveries"
            );
        }
        assert_eq!(net.pu.stats().acked, n, "seed {seed}");
        failovers += net.pu.stats().failovers;
        resent += net.pu.stats().resent;
        duplicated += delivered.values().filter(|c| **c > 1).count();
        if net.pu.business_card().is_some() && net.pu.stats().failovers > 0 {
            carded += 1;
        }
    }
    // The runs did exercise what they claim to.
    assert!(failovers > 100, "failovers {failovers}");
    assert!(resent > 100, "resent {resent}");
    assert!(duplicated > 10, "duplicated {duplicated}");
    assert!(carded > 50, "carded {carded}");
}

#[test]
fn pe_session_control_channel() {
    let conn = ConnId(7);
    let mut pe = PeSession::new(conn);
    let mut echo = Vec::new();
    AsapMessage::CookieEcho(b"state".to_vec()).encode(&mut echo);
    pe.handle_data(0, PPID_ASAP, &echo);
    pe.handle_data(0, PPID_APP, b"hello");
    // Garbage and unexpected control messages are consumed and acknowledged.
    pe.handle_data(0, PPID_ASAP, &[0xff, 0, 0]);
    let mut cookie = Vec::new();
    AsapMessage::Cookie(b"x".to_vec()).encode(&mut cookie);
    pe.handle_data(0, PPID_ASAP, &cookie);
    assert_eq!(pe.stats().malformed_control, 1);
    assert_eq!(pe.stats().ignored_control, 1);
    assert_eq!(pe.stats().delivered, 2);
    assert_eq!(
        pe.poll_event(),
        Some(PeEvent::CookieEcho(b"state".to_vec()))
    );
    assert_eq!(
        pe.poll_event(),
        Some(PeEvent::Data {
            ppid: PPID_APP,
            bytes: b"hello".to_vec(),
            stream: 0,
        })
    );
    assert_eq!(pe.poll_event(), None);
    // Handed out, but the application has not come back yet.
    assert_eq!(pe.stats().delivered, 2);
    assert_eq!(pe.unacked(), 2);
    assert_eq!(pe.ack(), 2);
    assert_eq!(pe.stats().delivered, 4, "one ACK per delivered DATA chunk");
    let acks = std::iter::from_fn(|| pe.poll_output())
        .filter(|o| *o == PeOutput::Ack { conn })
        .count();
    assert_eq!(acks, 4);
    assert_eq!(pe.send(b"x", PPID_ASAP), Err(SendError::ReservedPpid));
    pe.send_cookie(b"c1").unwrap();
    pe.send_business_card(pool(), vec![pe_param(1)]).unwrap();
    match pe.poll_output() {
        Some(PeOutput::Send { ppid, bytes, .. }) => {
            assert_eq!(ppid, PPID_ASAP);
            assert_eq!(
                AsapMessage::decode(&bytes).unwrap().msg,
                AsapMessage::Cookie(b"c1".to_vec())
            );
        }
        o => panic!("{o:?}"),
    }
    // Data before the cookie echo: surfaced, counted as late.
    let mut pe = PeSession::new(conn);
    pe.handle_data(0, PPID_APP, b"d");
    pe.handle_data(0, PPID_ASAP, &echo);
    assert_eq!(pe.stats().late_cookie_echoes, 1);
}

#[test]
fn hostile_input_never_panics() {
    let mut rng = Rng(99);
    let mut net = Net::new(1, SessionConfig::default());
    net.run_ms(10);
    let conn = net.pu.current_conn().unwrap();
    for _ in 0..2000 {
        let len = rng.below(40) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        net.pu.handle_data(conn, 0, PPID_ASAP, &bytes, net.now);
        net.pu.handle_ack(conn, Some(rng.next() as u32), net.now);
        net.pu.handle_ack(ConnId(rng.below(5)), None, net.now);
        net.pu.handle_closed(ConnId(100 + rng.below(5)), net.now);
        net.pu.handle_connected(ConnId(100), net.now);
    }
    net.drive_pu();
    assert_eq!(net.pu.state(), State::Up);
    assert!(net.pu.stats().malformed_control > 0);
    // A business card via the PU's control channel is stored.
    let mut card = Vec::new();
    AsapMessage::BusinessCard {
        pool_handle: pool(),
        policy: None,
        elements: vec![pe_param(5)],
    }
    .encode(&mut card);
    net.pu.handle_data(conn, 0, PPID_ASAP, &card, net.now);
    assert_eq!(net.pu.business_card().unwrap().1[0].id, 5);
}

/// The runtime glue against the real ASAP client (in its simulation with a
/// registrar): `NeedServer` → `get_primary_server`, `ReportUnreachable` →
/// `report_unreachable`; the failed PE is not offered again.
#[test]
fn glue_with_the_asap_client() {
    use rserpool::asap::sim::{registrar_addr, Sim, SimConfig};
    use rserpool::asap::{ClientConfig, RegisterOptions, Selection};
    use rserpool::registrar::RegistrarConfig;

    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(
        RegistrarConfig {
            idle_timeout: Duration::ZERO,
            ..RegistrarConfig::default()
        },
        0x1111,
    );
    let cfg = ClientConfig {
        registrars: vec![registrar_addr(r)],
        ..ClientConfig::default()
    };
    let pe_c = sim.add_client(cfg.clone(), 1);
    let pu_c = sim.add_client(cfg, 2);
    for i in 1..=3u16 {
        sim.with_client(pe_c, |c, now| {
            c.register(
                pool(),
                Transport::Tcp {
                    port: 9000 + i,
                    transport_use: transport_use::DATA_PLUS_CONTROL,
                    addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, i as u8)),
                },
                Policy::RoundRobin,
                30,
                RegisterOptions::default(),
                now,
            )
            .unwrap()
        });
    }
    sim.run_for(Duration::from_secs(1));

    let mut session = Session::open(pool(), SessionConfig::default(), Time::ZERO);
    let mut log: Log = (Vec::new(), Vec::new());
    // Drain the session's outputs through the client.
    type Log = (Vec<(ConnId, u32)>, Vec<u32>);
    let glue = |session: &mut Session, sim: &mut Sim, log: &mut Log| {
        let (connects, reported) = log;
        while let Some(o) = session.poll_output() {
            match o {
                Output::NeedServer { pool, .. } => loop {
                    match sim.with_client(pu_c, |c, now| c.get_primary_server(&pool, now)) {
                        Selection::Ready(pe) => {
                            session.handle_server(pe, Time::ZERO);
                            break;
                        }
                        Selection::Pending(_) => sim.run_for(Duration::from_millis(10)),
                        Selection::Failed(_) => {
                            session.handle_no_server(Time::ZERO);
                            break;
                        }
                    }
                },
                Output::ReportUnreachable { pool, pe_id } => {
                    sim.with_client(pu_c, |c, now| c.report_unreachable(&pool, pe_id, now));
                    reported.push(pe_id);
                }
                Output::Connect { conn, pe, addr } => {
                    assert_eq!(Some(addr.port()), pe.user_transport.port());
                    connects.push((conn, pe.id));
                }
                _ => {}
            }
        }
    };
    glue(&mut session, &mut sim, &mut log);
    let (c0, first) = log.0[0];
    session.handle_connected(c0, Time::ZERO);
    glue(&mut session, &mut sim, &mut log);
    assert_eq!(session.poll_event(), Some(Event::Connected { pe: first }));
    session.handle_closed(c0, Time::ZERO);
    glue(&mut session, &mut sim, &mut log);
    assert_eq!(log.1, vec![first]);
    let (c1, second) = log.0[1];
    assert_ne!(second, first, "the reported PE is skipped by the client");
    session.handle_connected(c1, Time::ZERO);
    glue(&mut session, &mut sim, &mut log);
    assert_eq!(
        session.poll_event(),
        Some(Event::Failover {
            from: first,
            to: second,
            resent: vec![]
        })
    );
}

#[test]
fn switch_to_a_chosen_pe_resends_the_unacknowledged() {
    let mut net = Net::new(3, SessionConfig::default());
    for i in 0..3 {
        net.send(&format!("m{i}")).unwrap();
    }
    net.run_ms(50);
    // m3 is out but not acknowledged when the application switches to PE 3.
    net.send("m3").unwrap();
    net.pu.switch_to(pe_param(3), net.now).unwrap();
    net.drive_pu();
    net.send("m4").unwrap();
    net.run_ms(50);
    assert_eq!(net.log(1), s(&["m0", "m1", "m2"]));
    assert_eq!(net.log(3), s(&["m3", "m4"]));
    assert_eq!(net.connects(), vec![1, 3]);
    assert!(net.reported.is_empty(), "a switch reports nobody");
    assert!(net.events.contains(&Event::Failover {
        from: 1,
        to: 3,
        resent: vec![3]
    }));
    // Switching to the current PE changes nothing.
    net.pu.switch_to(pe_param(3), net.now).unwrap();
    net.drive_pu();
    assert_eq!(net.connects(), vec![1, 3]);
    net.pu.close();
    assert_eq!(
        net.pu.switch_to(pe_param(2), net.now),
        Err(SessionError::InvalidState)
    );
}

#[test]
fn direct_session_without_a_pool_ends_with_its_pe() {
    let mut pu = Session::open_direct(None, pe_param(4), SessionConfig::default(), Time::ZERO);
    assert_eq!(pu.pool(), None);
    let conn = match pu.poll_output() {
        Some(Output::Connect { conn, pe, .. }) => {
            assert_eq!(pe.id, 4);
            conn
        }
        o => panic!("{o:?}"),
    };
    pu.handle_connected(conn, Time::ZERO);
    assert_eq!(pu.poll_output(), None);
    assert_eq!(pu.poll_event(), Some(Event::Connected { pe: 4 }));
    pu.send(b"x", PPID_APP, SendOptions::default()).unwrap();
    assert!(matches!(pu.poll_output(), Some(Output::Send { .. })));
    pu.handle_closed(conn, Time::ZERO);
    // Nobody to report to and nothing to fail over to.
    assert_eq!(pu.poll_output(), None);
    assert_eq!(
        pu.poll_event(),
        Some(Event::Failed(SessionError::GaveUp { attempts: 0 }))
    );
    assert_eq!(pu.state(), State::Closed);
    assert_eq!(pu.take_unsent(), vec![(0, PPID_APP, b"x".to_vec())]);
    // With a pool, the session fails over into it.
    let mut pu = Session::open_direct(
        Some(pool()),
        pe_param(4),
        SessionConfig::default(),
        Time::ZERO,
    );
    let conn = match pu.poll_output() {
        Some(Output::Connect { conn, .. }) => conn,
        o => panic!("{o:?}"),
    };
    pu.handle_connect_failed(conn, Time::ZERO);
    assert_eq!(
        pu.poll_output(),
        Some(Output::ReportUnreachable {
            pool: pool(),
            pe_id: 4
        })
    );
    assert!(matches!(pu.poll_output(), Some(Output::NeedServer { .. })));
}

#[test]
fn pe_session_counts_what_the_pool_user_has_not_taken_in() {
    let conn = ConnId(9);
    let mut pe = PeSession::new(conn);
    assert_eq!((pe.in_flight(), pe.in_flight_bytes()), (0, 0));
    pe.send(b"0123456789", PPID_APP).unwrap(); // TSN 0
    pe.send_cookie(b"c").unwrap(); // TSN 1, control counts too
    let cookie_len = pe.in_flight_bytes() - 10;
    pe.send(b"abc", PPID_APP).unwrap(); // TSN 2
    assert_eq!(pe.in_flight(), 3);
    assert_eq!(pe.in_flight_bytes(), 13 + cookie_len);
    // A cumulative ACK up to TSN 1 takes the first two.
    pe.handle_ack(Some(1));
    assert_eq!((pe.in_flight(), pe.in_flight_bytes()), (1, 3));
    // An ACK for what was already acknowledged changes nothing.
    pe.handle_ack(Some(0));
    assert_eq!(pe.stats().unexpected_acks, 1);
    // Without a TSN (peer's INIT flag T, or SCTP): the oldest one.
    pe.handle_ack(None);
    assert_eq!((pe.in_flight(), pe.in_flight_bytes()), (0, 0));
    pe.handle_ack(None);
    assert_eq!(pe.stats().unexpected_acks, 2);
    assert_eq!((pe.stats().sent, pe.stats().acked_by_peer), (3, 3));
}

#[test]
fn own_business_card_goes_after_the_cookie_echo_on_every_connection() {
    let card = (pool(), vec![pe_param(9)]);
    let mut pu = Session::open(pool(), SessionConfig::default(), Time::ZERO);
    let need = |pu: &mut Session| match pu.poll_output() {
        Some(Output::NeedServer { .. }) => {}
        o => panic!("{o:?}"),
    };
    need(&mut pu);
    pu.handle_server(pe_param(1), Time::ZERO);
    let c0 = match pu.poll_output() {
        Some(Output::Connect { conn, .. }) => conn,
        o => panic!("{o:?}"),
    };
    pu.handle_connected(c0, Time::ZERO);
    assert_eq!(pu.poll_event(), Some(Event::Connected { pe: 1 }));
    pu.send(b"m0", PPID_APP, SendOptions::default()).unwrap();
    // Set while connected: goes out at once, after what was already queued.
    pu.set_business_card(Some(card.clone())).unwrap();
    let sends: Vec<(u32, u32)> = std::iter::from_fn(|| pu.poll_output())
        .map(|o| match o {
            Output::Send { tsn, ppid, .. } => (tsn, ppid),
            o => panic!("{o:?}"),
        })
        .collect();
    assert_eq!(sends, vec![(0, PPID_ASAP), (1, PPID_APP)]);
    pu.handle_ack(c0, Some(1), Time::ZERO);
    let mut cookie = Vec::new();
    AsapMessage::Cookie(b"k".to_vec()).encode(&mut cookie);
    pu.handle_data(c0, 0, PPID_ASAP, &cookie, Time::ZERO);
    pu.handle_closed(c0, Time::ZERO);
    assert!(matches!(
        pu.poll_output(),
        Some(Output::ReportUnreachable { pe_id: 1, .. })
    ));
    need(&mut pu);
    pu.handle_server(pe_param(2), Time::ZERO);
    let c1 = match pu.poll_output() {
        Some(Output::Connect { conn, .. }) => conn,
        o => panic!("{o:?}"),
    };
    pu.handle_connected(c1, Time::ZERO);
    let first: Vec<AsapMessage> = std::iter::from_fn(|| pu.poll_output())
        .map(|o| match o {
            Output::Send { ppid, bytes, .. } => {
                assert_eq!(ppid, PPID_ASAP);
                AsapMessage::decode(&bytes).unwrap().msg
            }
            o => panic!("{o:?}"),
        })
        .collect();
    assert_eq!(first.len(), 2);
    assert_eq!(first[0], AsapMessage::CookieEcho(b"k".to_vec()));
    assert!(matches!(&first[1], AsapMessage::BusinessCard { elements, .. } if elements[0].id == 9));
    pu.close();
    assert_eq!(pu.set_business_card(None), Err(SendError::Closed));
}

#[test]
fn lent_messages_come_in_batches_after_other_outputs_and_stay_buffered() {
    let mut pu = Session::open(pool(), SessionConfig::default(), Time::ZERO);
    assert!(matches!(pu.poll_output(), Some(Output::NeedServer { .. })));
    pu.handle_server(pe_param(1), Time::ZERO);
    let c0 = match pu.poll_output() {
        Some(Output::Connect { conn, .. }) => conn,
        o => panic!("{o:?}"),
    };
    pu.handle_connected(c0, Time::ZERO);
    assert_eq!(pu.poll_event(), Some(Event::Connected { pe: 1 }));
    for i in 0..5u8 {
        pu.send(&[i; 400], PPID_APP, SendOptions::default())
            .unwrap();
    }
    // Queued after the messages, but an output: it goes first, as with
    // poll_output.
    pu.set_business_card(Some((pool(), vec![pe_param(9)])))
        .unwrap();
    let mut others = Vec::new();
    let mut rounds: Vec<Vec<(u32, u64, u8, usize)>> = Vec::new();
    loop {
        let mut lent = Vec::new();
        let o = pu.poll_output_with(1000, &mut |m| {
            assert_eq!((m.conn, m.ppid), (c0, PPID_APP));
            lent.push((m.tsn, m.seq, m.bytes[0], m.bytes.len()));
        });
        match o {
            Some(o) => {
                assert!(lent.is_empty(), "messages only once no output waits");
                others.push(o);
            }
            None if lent.is_empty() => break,
            None => rounds.push(lent),
        }
    }
    assert_eq!(others.len(), 1);
    assert!(matches!(
        &others[0],
        Output::Send {
            tsn: 0,
            ppid: PPID_ASAP,
            ..
        }
    ));
    // At most 1000 bytes per round (400 + 400; a third would pass it).
    assert_eq!(
        rounds,
        vec![
            vec![(1, 0, 0, 400), (2, 1, 1, 400)],
            vec![(3, 2, 2, 400), (4, 3, 3, 400)],
            vec![(5, 4, 4, 400)],
        ]
    );
    // Lent, not given away: kept until acknowledged.
    assert_eq!(pu.buffered(), 5);
    pu.handle_ack(c0, Some(2), Time::ZERO);
    assert_eq!(pu.buffered(), 3);
    assert_eq!(pu.stats().sent, 5);
    pu.close();
    let unsent: Vec<u64> = pu.take_unsent().into_iter().map(|(s, ..)| s).collect();
    assert_eq!(unsent, vec![2, 3, 4]);
}
