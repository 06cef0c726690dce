//! A deterministic simulated RSerPool network (STYLE.md §2.7, after quinn's
//! test `Pair` and smoltcp's fault injector): N registrar cores and scripted
//! pool elements exchanging real ASAP/ENRP bytes over simulated connections,
//! on one virtual clock, with message loss, delay, reordering, partitions,
//! connection breaks and crashes drawn from a seed.
//!
//! Everything is driven by one event queue; the same seed gives the same run.
//! Connections behave like TCP with the TCP mapping: the core's
//! [`Output::Connect`] is answered with `handle_connected` or
//! `handle_connect_failed`, messages on a connection arrive in order unless
//! the fault model says otherwise, and a close reaches the other end after the
//! link delay (or never, for a silent crash).
//!
//! The scripted PEs are deliberately simple (the real ASAP client core plugs in
//! later): a PE registers at a registrar, re-registers every
//! `reregistration_interval`, answers keep-alives, and hunts for another
//! registrar (a random one) when its connection closes or a registration goes
//! unanswered for `response_timeout`.
//!
//! Used by `tests/enrp_core.rs` and `tests/enrp_sim.rs`; not a stable API.

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use crate::registrar::{
    ConnId, ConnInfo, ConnKind, Output, Registrar, RegistrarConfig, PPID_ASAP, PPID_ENRP,
};
use crate::time::Time;
use crate::wire::{AsapMessage, Policy, PoolElement, PoolHandle, Transport};

/// A node of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// Registrar slot `i`.
    Reg(usize),
    /// Pool element `i`.
    Pe(usize),
}

/// The fault model. All probabilities are per message (or per fault tick).
#[derive(Debug, Clone, PartialEq)]
pub struct Faults {
    /// Probability that a message is lost.
    pub loss: f64,
    /// One-way delay: uniform in `[min_delay, max_delay]`.
    pub min_delay: Duration,
    /// See `min_delay`.
    pub max_delay: Duration,
    /// Probability that a message may overtake earlier ones on its connection
    /// (otherwise per-connection order is kept, as TCP does).
    pub reorder: f64,
    /// Mean time between random fault events (crash, restart, partition,
    /// heal, connection break, PE death/birth); `None` disables them.
    pub fault_interval: Option<Duration>,
}

impl Faults {
    /// A perfect network with a 1 ms delay.
    pub fn none() -> Faults {
        Faults {
            loss: 0.0,
            min_delay: Duration::from_millis(1),
            max_delay: Duration::from_millis(1),
            reorder: 0.0,
            fault_interval: None,
        }
    }
}

/// A scripted pool element.
#[derive(Debug, Clone)]
pub struct PeSpec {
    /// Pool handle.
    pub pool: String,
    /// PE identifier.
    pub id: u32,
    /// The registrar slot it registers at first.
    pub home: usize,
    /// Re-registration period.
    pub reregistration_interval: Duration,
    /// Registration Life in seconds.
    pub reg_life: i32,
    /// How long it waits for a registration response before hunting.
    pub response_timeout: Duration,
}

#[derive(Debug)]
struct RegSlot {
    r: Option<Registrar>,
    addr: SocketAddr,
    next_conn: u64,
    group: u8,
    config: RegistrarConfig,
}

#[derive(Debug)]
struct PeNode {
    spec: PeSpec,
    alive: bool,
    group: u8,
    /// Registrar slot and sim link it is connected (or connecting) to.
    link: Option<(usize, u64)>,
    connecting: bool,
    /// A registration is out since this time.
    pending_since: Option<Time>,
    next_reg: Time,
    /// Registration granted at least once since it last (re)started.
    registered: bool,
    addr: SocketAddr,
}

#[derive(Debug, Clone)]
struct Link {
    ends: [(Node, ConnId); 2],
    /// Last scheduled delivery time per direction (index = sender end).
    last: [Time; 2],
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ev {
    Deliver {
        link: u64,
        to: usize,
        ppid: u32,
        msg: Vec<u8>,
    },
    Closed {
        node: Node,
        conn: ConnId,
        link: u64,
    },
    Connected {
        link: u64,
    },
    ConnectFailed {
        node: Node,
        conn: ConnId,
    },
    /// A datagram of the ENRP multicast group reaching registrar slot `to`.
    Multicast {
        to: usize,
        from: SocketAddr,
        msg: Vec<u8>,
    },
    Fault,
}

#[derive(Debug, PartialEq, Eq)]
struct Queued {
    at: Time,
    seq: u64,
    ev: Ev,
}

impl Ord for Queued {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // BinaryHeap is a max-heap: earliest first.
        (o.at, o.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for Queued {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Counters of the simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Messages delivered.
    pub delivered: u64,
    /// Messages lost to the fault model or a partition.
    pub lost: u64,
    /// Registrar crashes.
    pub crashes: u64,
    /// Registrar restarts.
    pub restarts: u64,
    /// Partitions started.
    pub partitions: u64,
    /// Connections broken by the fault model.
    pub breaks: u64,
    /// PE deaths and births.
    pub pe_churn: u64,
    /// Events processed.
    pub events: u64,
}

/// The simulated network. See the [module documentation](self).
#[derive(Debug)]
pub struct Sim {
    now: Time,
    rng: u64,
    seq: u64,
    queue: BinaryHeap<Queued>,
    regs: Vec<RegSlot>,
    pes: Vec<PeNode>,
    links: BTreeMap<u64, Link>,
    ends: BTreeMap<(Node, ConnId), u64>,
    next_link: u64,
    /// The fault model in force.
    pub faults: Faults,
    /// Counters.
    pub stats: SimStats,
    /// Every registrar id ever used (ids must not repeat).
    used_ids: BTreeSet<u32>,
    /// Messages routed, by (sender, ppid, first byte = message type), for
    /// tests; ppid 0 counts datagrams to the ENRP multicast group.
    pub sent_types: BTreeMap<(Node, u32, u8), u64>,
}

/// The ENRP/ASAP address of registrar slot `i`.
pub fn registrar_addr(i: usize) -> SocketAddr {
    let i = u8::try_from(i % 250).unwrap_or(0);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1)), 9901)
}

impl Sim {
    /// An empty network with this seed and fault model.
    pub fn new(seed: u64, faults: Faults) -> Sim {
        Sim {
            now: Time::ZERO,
            rng: seed ^ 0x5DEE_CE66_D1CE_5EED,
            seq: 0,
            queue: BinaryHeap::new(),
            regs: Vec::new(),
            pes: Vec::new(),
            links: BTreeMap::new(),
            ends: BTreeMap::new(),
            next_link: 1,
            faults,
            stats: SimStats::default(),
            used_ids: BTreeSet::new(),
            sent_types: BTreeMap::new(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    fn delay(&mut self) -> Duration {
        let lo = self.faults.min_delay.as_micros() as u64;
        let hi = (self.faults.max_delay.as_micros() as u64).max(lo);
        Duration::from_micros(lo + self.below(hi - lo + 1))
    }

    fn schedule(&mut self, at: Time, ev: Ev) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            ev,
        });
    }

    fn fresh_id(&mut self) -> u32 {
        loop {
            let id = (self.next_u64() as u32).max(1);
            if self.used_ids.insert(id) {
                return id;
            }
        }
    }

    // ------------------------------------------------------------ setup

    /// The current virtual time.
    pub fn now(&self) -> Time {
        self.now
    }

    /// Add a registrar in a new slot with a random id; `config.peers` is used
    /// as given. Returns the slot.
    pub fn add_registrar(&mut self, config: RegistrarConfig) -> usize {
        let id = self.fresh_id();
        self.add_registrar_with_id(config, id)
    }

    /// Add a registrar with a given server id.
    ///
    /// With [`RegistrarConfig::enrp_multicast`] the slot joins the simulated
    /// ENRP multicast group (every such registrar in the same partition
    /// group gets each presence, the sender included, subject to loss and
    /// delay), and an unset `enrp_transport` becomes the slot's address.
    pub fn add_registrar_with_id(&mut self, mut config: RegistrarConfig, id: u32) -> usize {
        self.used_ids.insert(id);
        let i = self.regs.len();
        if config.enrp_multicast && config.enrp_transport.is_none() {
            let a = registrar_addr(i);
            config.enrp_transport = Some(Transport::Tcp {
                port: a.port(),
                transport_use: 0,
                addr: a.ip(),
            });
        }
        let seed = self.next_u64();
        self.regs.push(RegSlot {
            r: Some(Registrar::new(config.clone(), id, seed, self.now)),
            addr: registrar_addr(i),
            next_conn: 1,
            group: 0,
            config,
        });
        i
    }

    /// Add a scripted PE; it registers at once.
    pub fn add_pe(&mut self, spec: PeSpec) -> usize {
        let i = self.pes.len();
        let addr = SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(10, 1, (i / 250) as u8, (i % 250) as u8 + 1)),
            20000,
        );
        self.pes.push(PeNode {
            spec,
            alive: true,
            group: 0,
            link: None,
            connecting: false,
            pending_since: None,
            next_reg: self.now,
            registered: false,
            addr,
        });
        i
    }

    /// Every PE: id, alive, registrar slot, connecting, registration pending.
    pub fn pe_summary(&self) -> Vec<(u32, bool, Option<usize>, bool, bool)> {
        self.pes
            .iter()
            .map(|p| {
                (
                    p.spec.id,
                    p.alive,
                    p.link.map(|l| l.0),
                    p.connecting,
                    p.pending_since.is_some(),
                )
            })
            .collect()
    }

    /// Registrar slot `i`, if running.
    pub fn registrar(&self, i: usize) -> Option<&Registrar> {
        self.regs.get(i).and_then(|s| s.r.as_ref())
    }

    /// Mutable access to registrar slot `i` (outputs are routed at the next step).
    pub fn registrar_mut(&mut self, i: usize) -> Option<&mut Registrar> {
        self.regs.get_mut(i).and_then(|s| s.r.as_mut())
    }

    /// Number of registrar slots.
    pub fn registrar_slots(&self) -> usize {
        self.regs.len()
    }

    /// Running registrars' slots.
    pub fn live_registrars(&self) -> Vec<usize> {
        (0..self.regs.len())
            .filter(|i| self.regs[*i].r.is_some())
            .collect()
    }

    /// Whether PE `i` is alive.
    pub fn pe_alive(&self, i: usize) -> bool {
        self.pes.get(i).is_some_and(|p| p.alive)
    }

    /// The registrar slot PE `i` is connected to.
    pub fn pe_registrar(&self, i: usize) -> Option<usize> {
        self.pes.get(i).and_then(|p| p.link.map(|l| l.0))
    }

    /// Crash registrar slot `i`. With `notify` its peers see the connections
    /// close (a process crash: RST); without, they just go silent (a host crash).
    pub fn crash(&mut self, i: usize, notify: bool) {
        if self.regs.get_mut(i).and_then(|s| s.r.take()).is_none() {
            return;
        }
        self.stats.crashes += 1;
        let links: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.ends.iter().any(|e| e.0 == Node::Reg(i)))
            .map(|(k, _)| *k)
            .collect();
        for k in links {
            let Some(l) = self.links.get(&k).cloned() else {
                continue;
            };
            let other = usize::from(l.ends[0].0 == Node::Reg(i));
            self.ends.remove(&l.ends[0]);
            self.ends.remove(&l.ends[1]);
            self.links.remove(&k);
            // PEs always notice (their registration times out anyway); a
            // registrar peer only on a process crash (RST). Otherwise it keeps
            // a dead connection and must find out by probing.
            if notify || matches!(l.ends[other].0, Node::Pe(_)) {
                let (node, conn) = l.ends[other];
                let at = self.now + self.delay();
                self.schedule(
                    at,
                    Ev::Closed {
                        node,
                        conn,
                        link: k,
                    },
                );
            }
        }
    }

    /// Restart slot `i` with a new random id and its original configuration.
    pub fn restart(&mut self, i: usize) {
        let Some(slot) = self.regs.get(i) else { return };
        if slot.r.is_some() {
            return;
        }
        let config = slot.config.clone();
        let id = self.fresh_id();
        let seed = self.next_u64();
        self.regs[i].r = Some(Registrar::new(config, id, seed, self.now));
        self.stats.restarts += 1;
    }

    /// Kill PE `i` (it stops re-registering and answering).
    pub fn kill_pe(&mut self, i: usize) {
        if let Some(p) = self.pes.get_mut(i) {
            p.alive = false;
            p.connecting = false;
            p.pending_since = None;
            if let Some((_, link)) = p.link.take() {
                self.close_link(link);
            }
        }
    }

    /// Put nodes in partition groups: messages and connects between groups fail.
    pub fn partition(&mut self, reg_groups: &[u8], pe_groups: &[u8]) {
        for (s, g) in self.regs.iter_mut().zip(reg_groups) {
            s.group = *g;
        }
        for (p, g) in self.pes.iter_mut().zip(pe_groups) {
            p.group = *g;
        }
    }

    /// End every partition.
    pub fn heal(&mut self) {
        for s in &mut self.regs {
            s.group = 0;
        }
        for p in &mut self.pes {
            p.group = 0;
        }
    }

    fn group(&self, n: Node) -> u8 {
        match n {
            Node::Reg(i) => self.regs.get(i).map_or(0, |s| s.group),
            Node::Pe(i) => self.pes.get(i).map_or(0, |p| p.group),
        }
    }

    // ------------------------------------------------------------ running

    /// Run until virtual time `t` (inclusive), checking the per-step
    /// invariants after every event; the first violation is returned.
    pub fn run_until(&mut self, t: Time) -> Result<(), String> {
        loop {
            let next = self.next_time();
            match next {
                Some(n) if n <= t => {
                    self.now = self.now.max(n);
                    self.step();
                    self.stats.events += 1;
                    self.check_step()?;
                }
                _ => {
                    self.now = self.now.max(t);
                    return Ok(());
                }
            }
        }
    }

    /// Run for `d` more.
    pub fn run_for(&mut self, d: Duration) -> Result<(), String> {
        let t = self.now + d;
        self.run_until(t)
    }

    fn next_time(&self) -> Option<Time> {
        let mut t = self.queue.peek().map(|q| q.at);
        let mut min = |x: Option<Time>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |y| y.min(x)));
            }
        };
        for s in &self.regs {
            min(s.r.as_ref().and_then(|r| r.poll_timeout()));
        }
        for p in &self.pes {
            min(self.pe_deadline(p));
        }
        t
    }

    fn pe_deadline(&self, p: &PeNode) -> Option<Time> {
        if !p.alive || p.connecting {
            return None;
        }
        match p.pending_since {
            Some(s) => Some(s + p.spec.response_timeout),
            None => Some(p.next_reg),
        }
    }

    fn step(&mut self) {
        let now = self.now;
        if self.queue.peek().is_some_and(|q| q.at <= now) {
            if let Some(q) = self.queue.pop() {
                self.event(q.ev);
            }
            return;
        }
        for i in 0..self.regs.len() {
            let due = self.regs[i]
                .r
                .as_ref()
                .and_then(|r| r.poll_timeout())
                .is_some_and(|d| d <= now);
            if due {
                if let Some(r) = self.regs[i].r.as_mut() {
                    r.handle_timeout(now);
                }
                self.drain(i);
                return;
            }
        }
        for i in 0..self.pes.len() {
            if self.pe_deadline(&self.pes[i]).is_some_and(|d| d <= now) {
                self.pe_timer(i);
                return;
            }
        }
    }

    fn event(&mut self, ev: Ev) {
        let now = self.now;
        match ev {
            Ev::Deliver {
                link,
                to,
                ppid,
                msg,
            } => {
                let Some(l) = self.links.get(&link) else {
                    return;
                };
                let (node, conn) = l.ends[to];
                let from = l.ends[1 - to].0;
                if self.group(node) != self.group(from) {
                    self.stats.lost += 1;
                    return;
                }
                self.stats.delivered += 1;
                match node {
                    Node::Reg(i) => {
                        if let Some(r) = self.regs[i].r.as_mut() {
                            r.handle_message(conn, ppid, &msg, now);
                        }
                        self.drain(i);
                    }
                    Node::Pe(i) => self.pe_message(i, link, &msg),
                }
            }
            Ev::Closed { node, conn, link } => self.notify_closed(node, conn, link),
            Ev::Connected { link } => {
                let Some(l) = self.links.get(&link).cloned() else {
                    return;
                };
                let info = |me: SocketAddr, other: SocketAddr| ConnInfo {
                    kind: ConnKind::Tcp,
                    remote: vec![other],
                    local: me,
                };
                let a0 = self.addr_of(l.ends[0].0);
                let a1 = self.addr_of(l.ends[1].0);
                // Acceptor (end 1) first, then the dialer.
                if let Node::Reg(j) = l.ends[1].0 {
                    if let Some(r) = self.regs[j].r.as_mut() {
                        r.handle_connected(l.ends[1].1, info(a1, a0), now);
                    }
                    self.drain(j);
                }
                match l.ends[0].0 {
                    Node::Reg(i) => {
                        if let Some(r) = self.regs[i].r.as_mut() {
                            r.handle_connected(l.ends[0].1, info(a0, a1), now);
                        }
                        self.drain(i);
                    }
                    Node::Pe(i) => {
                        if let Some(p) = self.pes.get_mut(i) {
                            p.connecting = false;
                            p.next_reg = now;
                        }
                    }
                }
            }
            Ev::ConnectFailed { node, conn } => match node {
                Node::Reg(i) => {
                    if let Some(r) = self.regs[i].r.as_mut() {
                        r.handle_connect_failed(conn, now);
                    }
                    self.drain(i);
                }
                Node::Pe(i) => {
                    // Try another registrar a little later.
                    if let Some(p) = self.pes.get_mut(i) {
                        p.connecting = false;
                        p.link = None;
                        p.pending_since = None;
                        p.next_reg = now + Duration::from_millis(200);
                    }
                }
            },
            Ev::Multicast { to, from, msg } => {
                if let Some(r) = self.regs[to].r.as_mut() {
                    r.handle_multicast(&msg, from, now);
                    self.drain(to);
                }
            }
            Ev::Fault => self.random_fault(),
        }
    }

    fn addr_of(&self, n: Node) -> SocketAddr {
        match n {
            Node::Reg(i) => self.regs[i].addr,
            Node::Pe(i) => self.pes[i].addr,
        }
    }

    fn notify_closed(&mut self, node: Node, conn: ConnId, link: u64) {
        let now = self.now;
        match node {
            Node::Reg(i) => {
                if let Some(r) = self.regs[i].r.as_mut() {
                    r.handle_closed(conn, now);
                }
                self.drain(i);
            }
            Node::Pe(i) => {
                if self.pes[i].link.is_some_and(|l| l.1 == link) {
                    self.pes[i].link = None;
                    self.pes[i].connecting = false;
                    self.pes[i].pending_since = None;
                    self.pe_hunt(i);
                }
            }
        }
    }

    /// Close a link: nothing more is delivered on it, and each end hears of
    /// the close after a delay.
    fn close_link(&mut self, link: u64) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        for (node, conn) in l.ends {
            self.ends.remove(&(node, conn));
            let at = self.now + self.delay();
            self.schedule(at, Ev::Closed { node, conn, link });
        }
    }

    /// Open a link from `from` (its conn id `conn`) to registrar slot `j`.
    fn connect(&mut self, from: Node, conn: ConnId, j: usize) -> Option<u64> {
        let at = self.now + self.delay();
        let ok = self.regs.get(j).is_some_and(|s| s.r.is_some())
            && self.group(from) == self.group(Node::Reg(j));
        if !ok {
            self.schedule(at, Ev::ConnectFailed { node: from, conn });
            return None;
        }
        let slot = &mut self.regs[j];
        let accepted = ConnId(slot.next_conn);
        slot.next_conn += 1;
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert(
            link,
            Link {
                ends: [(from, conn), (Node::Reg(j), accepted)],
                last: [Time::ZERO; 2],
            },
        );
        self.ends.insert((from, conn), link);
        self.ends.insert((Node::Reg(j), accepted), link);
        self.schedule(at, Ev::Connected { link });
        Some(link)
    }

    fn send(&mut self, from: Node, conn: ConnId, ppid: u32, msg: Vec<u8>) {
        let Some(&link) = self.ends.get(&(from, conn)) else {
            return;
        };
        if let Some(t) = msg.first() {
            *self.sent_types.entry((from, ppid, *t)).or_default() += 1;
        }
        if self.chance(self.faults.loss) {
            self.stats.lost += 1;
            return;
        }
        let d = self.delay();
        let reorder = self.chance(self.faults.reorder);
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
        let me = usize::from(l.ends[1] == (from, conn));
        let mut at = self.now + d;
        if !reorder {
            at = at.max(l.last[me]);
            l.last[me] = at;
        }
        self.schedule(
            at,
            Ev::Deliver {
                link,
                to: 1 - me,
                ppid,
                msg,
            },
        );
    }

    /// Route every output of registrar `i`.
    fn drain(&mut self, i: usize) {
        loop {
            let Some(o) = self.regs[i].r.as_mut().and_then(|r| r.poll_output()) else {
                return;
            };
            match o {
                Output::Send { conn, ppid, msg } => self.send(Node::Reg(i), conn, ppid, msg),
                Output::Close { conn, .. } => {
                    if let Some(&link) = self.ends.get(&(Node::Reg(i), conn)) {
                        self.close_link(link);
                    }
                }
                Output::Connect { conn, addr, .. } => {
                    match self.regs.iter().position(|s| s.addr == addr) {
                        Some(j) if j != i => {
                            self.connect(Node::Reg(i), conn, j);
                        }
                        _ => {
                            let at = self.now + self.delay();
                            self.schedule(
                                at,
                                Ev::ConnectFailed {
                                    node: Node::Reg(i),
                                    conn,
                                },
                            );
                        }
                    }
                }
                Output::Announce { .. } => {}
                Output::EnrpMulticast { msg } => self.multicast(i, msg),
            }
        }
    }

    /// A datagram from registrar `i` to the ENRP multicast group.
    fn multicast(&mut self, i: usize, msg: Vec<u8>) {
        let from = self.regs[i].addr;
        if let Some(t) = msg.first() {
            *self.sent_types.entry((Node::Reg(i), 0, *t)).or_default() += 1;
        }
        let group = self.group(Node::Reg(i));
        for j in 0..self.regs.len() {
            let slot = &self.regs[j];
            if !slot.config.enrp_multicast || slot.r.is_none() || slot.group != group {
                continue;
            }
            if self.chance(self.faults.loss) {
                self.stats.lost += 1;
                continue;
            }
            let at = self.now + self.delay();
            self.schedule(
                at,
                Ev::Multicast {
                    to: j,
                    from,
                    msg: msg.clone(),
                },
            );
        }
    }

    // -------------------------------------------------------------- PEs

    fn pe_element(&self, i: usize) -> PoolElement {
        let p = &self.pes[i];
        PoolElement {
            id: p.spec.id,
            home: 0,
            reg_life: p.spec.reg_life,
            user_transport: Transport::Tcp {
                port: 30000,
                transport_use: 0,
                addr: p.addr.ip(),
            },
            policy: Policy::RoundRobin,
            asap_transport: None,
        }
    }

    fn pe_send(&mut self, i: usize, msg: AsapMessage) {
        if let Some((_, link)) = self.pes[i].link {
            self.send(Node::Pe(i), ConnId(link), PPID_ASAP, msg.to_bytes());
        }
    }

    fn pe_timer(&mut self, i: usize) {
        let now = self.now;
        let p = &self.pes[i];
        if p.pending_since
            .is_some_and(|s| s + p.spec.response_timeout <= now)
        {
            // No answer: this registrar is gone for us.
            self.pes[i].pending_since = None;
            if let Some((_, link)) = self.pes[i].link.take() {
                self.close_link(link);
            }
            return self.pe_hunt(i);
        }
        if self.pes[i].link.is_none() {
            return self.pe_hunt(i);
        }
        let pe = self.pe_element(i);
        let pool = PoolHandle::from(self.pes[i].spec.pool.as_str());
        self.pes[i].pending_since = Some(now);
        self.pes[i].next_reg = now + self.pes[i].spec.reregistration_interval;
        self.pe_send(
            i,
            AsapMessage::Registration {
                pool_handle: pool,
                pe,
            },
        );
    }

    /// Connect to a registrar: the configured home first, then random ones.
    fn pe_hunt(&mut self, i: usize) {
        if !self.pes[i].alive || self.pes[i].connecting {
            return;
        }
        let n = self.regs.len() as u64;
        if n == 0 {
            return;
        }
        let j = if self.pes[i].registered {
            self.below(n) as usize
        } else {
            self.pes[i].spec.home % n as usize
        };
        self.pes[i].registered = true; // next hunt picks at random
        let conn = ConnId(self.next_link);
        // The PE's conn id is the link id (known once connected).
        self.pes[i].connecting = true;
        self.pes[i].pending_since = None;
        if let Some(link) = self.connect(Node::Pe(i), conn, j) {
            // connect() used next_link for this link: ids agree.
            self.pes[i].link = Some((j, link));
        }
    }

    fn pe_message(&mut self, i: usize, link: u64, msg: &[u8]) {
        if !self.pes[i].alive || self.pes[i].link.is_none_or(|l| l.1 != link) {
            return;
        }
        let Ok(d) = AsapMessage::decode(msg) else {
            return;
        };
        match d.msg {
            AsapMessage::RegistrationResponse { reject, .. } => {
                self.pes[i].pending_since = None;
                if reject {
                    // Try elsewhere next time.
                    if let Some((_, l)) = self.pes[i].link.take() {
                        self.close_link(l);
                    }
                }
            }
            AsapMessage::EndpointKeepAlive {
                pool_handle, home, ..
            } => {
                let _ = home;
                let id = self.pes[i].spec.id;
                self.pe_send(
                    i,
                    AsapMessage::EndpointKeepAliveAck {
                        pool_handle,
                        pe_id: id,
                    },
                );
            }
            AsapMessage::DeregistrationResponse { .. } => {
                // Expired at the registrar: register again at once.
                self.pes[i].next_reg = self.now;
            }
            _ => {}
        }
    }

    // ----------------------------------------------------------- faults

    /// Start random faults now (they keep coming every `fault_interval` on
    /// average until [`stop_faults`](Self::stop_faults)).
    pub fn start_faults(&mut self) {
        if let Some(iv) = self.faults.fault_interval {
            let d = Duration::from_micros(self.below(iv.as_micros() as u64 * 2 + 1));
            let at = self.now + d;
            self.schedule(at, Ev::Fault);
        }
    }

    /// Stop random faults, heal partitions, restart crashed registrars, make
    /// the network perfect again.
    pub fn stop_faults(&mut self) {
        self.faults.fault_interval = None;
        self.faults.loss = 0.0;
        self.faults.reorder = 0.0;
        self.heal();
        for i in 0..self.regs.len() {
            self.restart(i);
        }
        self.queue.retain(|q| q.ev != Ev::Fault);
    }

    fn random_fault(&mut self) {
        let Some(iv) = self.faults.fault_interval else {
            return;
        };
        let live = self.live_registrars();
        match self.below(7) {
            0 if live.len() > 1 => {
                let i = live[self.below(live.len() as u64) as usize];
                let notify = self.chance(0.5);
                self.crash(i, notify);
            }
            1 => {
                let dead: Vec<usize> = (0..self.regs.len())
                    .filter(|i| self.regs[*i].r.is_none())
                    .collect();
                if let Some(&i) = dead.get(self.below(dead.len() as u64) as usize) {
                    self.restart(i);
                }
            }
            2 => {
                self.stats.partitions += 1;
                let rg: Vec<u8> = (0..self.regs.len()).map(|_| self.below(2) as u8).collect();
                let pg: Vec<u8> = (0..self.pes.len()).map(|_| self.below(2) as u8).collect();
                self.partition(&rg, &pg);
            }
            3 => self.heal(),
            4 if !self.links.is_empty() => {
                let k = self.below(self.links.len() as u64) as usize;
                if let Some(&link) = self.links.keys().nth(k) {
                    self.stats.breaks += 1;
                    self.close_link(link);
                }
            }
            5 => {
                // PE churn: one dies, or a dead one comes back.
                self.stats.pe_churn += 1;
                let k = self.below(self.pes.len() as u64) as usize;
                if self.pes.get(k).is_some_and(|p| p.alive) {
                    self.kill_pe(k);
                } else if let Some(p) = self.pes.get_mut(k) {
                    p.alive = true;
                    p.registered = false;
                    p.pending_since = None;
                    p.next_reg = self.now;
                }
            }
            _ => {}
        }
        let d = Duration::from_micros(self.below(iv.as_micros() as u64 * 2 + 1));
        let at = self.now + d;
        self.schedule(at, Ev::Fault);
    }

    // ------------------------------------------------------- invariants

    /// Invariants that hold after every step, faults or not: each core's
    /// internal consistency.
    pub fn check_step(&self) -> Result<(), String> {
        for (i, s) in self.regs.iter().enumerate() {
            if let Some(r) = &s.r {
                r.check_consistency()
                    .map_err(|e| format!("registrar slot {i} ({:#x}): {e}", r.server_id()))?;
            }
        }
        Ok(())
    }

    /// Invariants once the network has been quiet long enough: all running
    /// registrars hold the same handlespace (handles, ids, owners, transports);
    /// every PE in it is alive and owned by exactly one running registrar, which
    /// knows it owns it; every live PE is in it.
    pub fn check_converged(&self) -> Result<(), String> {
        let live = self.live_registrars();
        let ids: BTreeMap<u32, usize> = live
            .iter()
            .filter_map(|i| self.registrar(*i).map(|r| (r.server_id(), *i)))
            .collect();
        let mut reference: Option<(usize, Pools)> = None;
        for &i in &live {
            let Some(r) = self.registrar(i) else { continue };
            let mut pools = r.pool_elements();
            for (_, pes) in &mut pools {
                for pe in pes.iter_mut() {
                    pe.reg_life = 0; // lifetimes differ (Never vs Life)
                }
            }
            match &reference {
                None => reference = Some((i, pools)),
                Some((j, refp)) => {
                    if *refp != pools {
                        return Err(format!(
                            "handlespaces differ: slot {j} {} vs slot {i} {}",
                            summary(refp),
                            summary(&pools)
                        ));
                    }
                }
            }
        }
        let Some((_, pools)) = reference else {
            return Ok(());
        };
        let mut present = BTreeSet::new();
        for (h, pes) in &pools {
            for pe in pes {
                let Some(&slot) = ids.get(&pe.home) else {
                    return Err(format!(
                        "PE {:?}/{} owned by {:#x}, not a running registrar",
                        h, pe.id, pe.home
                    ));
                };
                let owner = self.registrar(slot);
                if !owner.is_some_and(|r| r.owns(h, pe.id)) {
                    return Err(format!(
                        "PE {:?}/{} has home {:#x} which does not know it owns it",
                        h, pe.id, pe.home
                    ));
                }
                present.insert((h.0.clone(), pe.id));
            }
        }
        for p in &self.pes {
            let key = (p.spec.pool.as_bytes().to_vec(), p.spec.id);
            if p.alive && !present.contains(&key) {
                return Err(format!("live PE {}/{} lost", p.spec.pool, p.spec.id));
            }
            if !p.alive && present.contains(&key) {
                return Err(format!(
                    "dead PE {}/{} never removed",
                    p.spec.pool, p.spec.id
                ));
            }
        }
        Ok(())
    }
}

/// Pool entries as `Registrar::pool_elements` lists them.
type Pools = Vec<(PoolHandle, Vec<PoolElement>)>;

fn summary(p: &[(PoolHandle, Vec<PoolElement>)]) -> String {
    let v: Vec<String> = p
        .iter()
        .flat_map(|(h, pes)| {
            pes.iter()
                .map(move |pe| format!("{}/{}@{:x}", String::from_utf8_lossy(&h.0), pe.id, pe.home))
        })
        .collect();
    format!("[{}]", v.join(" "))
}

/// The PPIDs, for tests that count messages.
pub const PPIDS: [u32; 2] = [PPID_ASAP, PPID_ENRP];
