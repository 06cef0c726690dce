//! A deterministic simulated RSerPool network (STYLE.md §2.7, after quinn's
//! test `Pair` and smoltcp's fault injector): registrar cores
//! ([`Registrar`]), pool elements and pool users — each a real ASAP client
//! core ([`Client`]) with a small application on top — exchanging real
//! ASAP/ENRP bytes over simulated connections, on one virtual clock, with
//! message loss, delay, reordering, partitions, connection breaks and crashes
//! drawn from a seed.
//!
//! Everything is driven by one event queue; the same seed gives the same run.
//!
//! # The network
//!
//! Connections behave like TCP with the TCP mapping or like SCTP: a core's
//! `Connect` output is answered with `handle_connected` or
//! `handle_connect_failed` after the link delay (a client dialling across a
//! partition may instead hear nothing, as when SYNs are lost, until it
//! abandons the attempt itself); messages on a connection arrive in order
//! unless the fault model reorders them; a close reaches the other end after
//! the link delay, or never for a silent crash. A node crashing while one of
//! its connections is still being set up makes the dialler's attempt fail.
//!
//! Connection ids: registrars name their own dials (bit 63 set) and the sim
//! names the connections they accept; clients name their dials, and a
//! connection a registrar opens towards a client (a takeover reaching a PE's
//! SCTP endpoint) gets the id [`Client::handle_accepted`] returns — the same
//! mapping the runtime's client driver keeps. Events still queued for a node
//! that crashes are dropped, so a restarted core never hears about its
//! predecessor's connections.
//!
//! # The applications
//!
//! - A **pool element** ([`PeSpec`]) registers one PE with a fixed id and
//!   leaves the rest to the client core: re-registration every T4, keep-alive
//!   answers, H=1 adoption, the server hunt when its home dies. When a first
//!   registration times out the application registers again a second later;
//!   any rejection is an invariant violation. PEs may crash (silently or
//!   with their connections reset), restart with the same id and address,
//!   or leave gracefully (deregister, then exit).
//! - A **pool user** ([`PuSpec`]) picks a PE of one of its pools at random
//!   intervals with `get_primary_server` or asks for the whole pool with
//!   `resolve`; contacting a PE that is dead or on the other side of a
//!   partition makes it report the PE and take the next one
//!   (`get_next_server`). It may hold a subscription to one pool.
//!
//! # Invariants
//!
//! [`Sim::check_step`] after every event: every registrar core is internally
//! consistent; no pool element was rejected; every answer a pool user got
//! lists only PEs of that pool, with their own transport, that are live or
//! gone for at most [`Sim::stale_bound`]. [`Sim::check_converged`] once the
//! faults stopped and the network settled: one handlespace everywhere, each
//! PE in it owned by exactly one running registrar, every live PE present
//! (registered, with the owner as its client's home), no gone PE left.
//! [`Sim::check_pu_views`] then has every pool user resolve every pool and
//! see exactly the live PEs.
//!
//! Used by `tests/enrp_core.rs` and `tests/enrp_sim.rs`; not a stable API.

mod apps;
mod check;

use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

pub use apps::{client_config, ClientTotals, PeSpec, PuSpec};
use apps::{PeNode, PuNode};
pub use check::PeState;

use crate::asap::{Client, ClientConfig};
use crate::registrar::{
    ConnId, ConnInfo, ConnKind, Output, Registrar, RegistrarConfig, PPID_ASAP, PPID_ENRP,
};
use crate::time::Time;

/// A node of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// Registrar slot `i`.
    Reg(usize),
    /// Pool element `i`.
    Pe(usize),
    /// Pool user `i`.
    Pu(usize),
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
    /// Mean time between random fault events (registrar crash and restart,
    /// partition, heal, connection break, PE crash/restart/leave, PU
    /// restart); `None` disables them.
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

#[derive(Debug)]
struct RegSlot {
    r: Option<Registrar>,
    addr: SocketAddr,
    next_conn: u64,
    group: u8,
    config: RegistrarConfig,
}

/// What a pool element or pool user runs on: a client core (`None` while
/// crashed), its address and partition group.
#[derive(Debug)]
struct Host {
    core: Option<Client>,
    /// Its address: the source of its connections, its ASAP endpoint.
    addr: SocketAddr,
    group: u8,
    /// How its connections to registrars look to them.
    kind: ConnKind,
    /// The configuration a (re)started core gets.
    config: ClientConfig,
}

#[derive(Debug, Clone)]
struct Link {
    ends: [(Node, ConnId); 2],
    /// Last scheduled delivery time per direction (index = sender end).
    last: [Time; 2],
    /// Both ends have been told it is up (end 0 dialled, end 1 accepted).
    up: bool,
    /// TCP or SCTP, as the registrar end sees it.
    kind: ConnKind,
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

impl Ev {
    /// Addressed to `node` by connection id (events by link die with the link).
    fn is_for(&self, n: Node) -> bool {
        matches!(self, Ev::Closed { node, .. } | Ev::ConnectFailed { node, .. } if *node == n)
    }
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
    /// Pool element crashes.
    pub pe_crashes: u64,
    /// Pool element restarts.
    pub pe_restarts: u64,
    /// Pool elements that left (deregistration asked for).
    pub pe_leaves: u64,
    /// Pool user restarts.
    pub pu_restarts: u64,
    /// Registrar connections to clients (takeover keep-alives).
    pub dials_to_clients: u64,
    /// Pool element registrations that timed out and were retried by the
    /// application.
    pub pe_registration_retries: u64,
    /// Answers pool users got (resolutions and pushes), each checked.
    pub pu_answers: u64,
    /// PEs listed in those answers.
    pub pu_answer_elements: u64,
    /// Listed PEs that were gone at the time.
    pub pu_stale_elements: u64,
    /// The longest any listed PE had been gone, in microseconds (lost
    /// pushes aside).
    pub pu_max_staleness_us: u64,
    /// Gone PEs listed in a subscription's view after a message to the pool
    /// user was dropped on its connection (not checked: a lost push is not
    /// repaired until the pool changes again).
    pub pu_stale_after_lost_push: u64,
    /// Subscriptions whose view the final check compared with the live PEs.
    pub pu_subscriptions_checked: u64,
    /// PEs a pool user contacted successfully.
    pub pu_uses: u64,
    /// PEs a pool user found dead or unreachable (then reported).
    pub pu_failovers: u64,
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
    pus: Vec<PuNode>,
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
    /// How long a gone PE (crashed, or asked to deregister) may still be
    /// listed in answers to pool users. Default 45 s.
    ///
    /// A dead PE goes when its owner's keep-alive fails (seconds), or, when
    /// the owner died too, one Registration Life after a survivor took the
    /// owner over; each further takeover of the PE's new owner (partitions
    /// make registrars take each other over) starts its life anew, so under
    /// faults there is no tight bound: this one catches PEs that linger on
    /// indefinitely, [`Sim::check_converged`] the rest once faults stop.
    pub stale_bound: Duration,
    /// Pool users act on their own (on by default; off for the final check).
    pu_activity: bool,
    /// The first violation an application saw (reported by `check_step`).
    violation: Option<String>,
    /// Counters of client cores that stopped.
    retired: ClientTotals,
    /// Nodes whose traffic, connections and events are printed (for
    /// replaying a failing seed).
    pub trace: BTreeSet<Node>,
    /// Links on which a message to a pool user was dropped: a subscription
    /// push may be missing there (see `check_answer`).
    tainted: BTreeSet<u64>,
}

/// The ENRP/ASAP address of registrar slot `i`.
pub fn registrar_addr(i: usize) -> SocketAddr {
    let i = u8::try_from(i % 250).unwrap_or(0);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, i + 1)), 9901)
}

/// The address of pool element `i` (its ASAP endpoint; its user transport is
/// the same host, port 30000).
pub fn pe_addr(i: usize) -> SocketAddr {
    host_addr(1, i)
}

/// The address of pool user `i`.
pub fn pu_addr(i: usize) -> SocketAddr {
    host_addr(2, i)
}

fn host_addr(net: u8, i: usize) -> SocketAddr {
    let hi = u8::try_from(i / 250 % 256).unwrap_or(0);
    let lo = u8::try_from(i % 250 + 1).unwrap_or(1);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, net, hi, lo)), 20000)
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
            pus: Vec::new(),
            links: BTreeMap::new(),
            ends: BTreeMap::new(),
            next_link: 1,
            faults,
            stats: SimStats::default(),
            used_ids: BTreeSet::new(),
            sent_types: BTreeMap::new(),
            stale_bound: Duration::from_secs(45),
            pu_activity: true,
            violation: None,
            retired: ClientTotals::default(),
            trace: BTreeSet::new(),
            tainted: BTreeSet::new(),
        }
    }

    fn next_u64(&mut self) -> u64 {
        crate::handlespace::rng::splitmix64(&mut self.rng)
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

    /// Uniform in `[lo, hi]`.
    fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        let lo = u64::try_from(lo.as_micros()).unwrap_or(u64::MAX);
        let hi = u64::try_from(hi.as_micros()).unwrap_or(u64::MAX).max(lo);
        Duration::from_micros(lo + self.below((hi - lo).saturating_add(1)))
    }

    fn delay(&mut self) -> Duration {
        self.between(self.faults.min_delay, self.faults.max_delay)
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

    /// Print a trace line if any of `nodes` is traced.
    fn log(&self, nodes: &[Node], what: impl FnOnce() -> String) {
        if nodes.iter().any(|n| self.trace.contains(n)) {
            println!(
                "{:>10.3} {:?} {}",
                self.now.as_micros() as f64 / 1e6,
                nodes,
                what()
            );
        }
    }

    fn violate(&mut self, why: String) {
        if self.violation.is_none() {
            self.violation = Some(format!("at {:?}: {why}", self.now));
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

    /// Add a registrar with a given server id. Clients already present learn
    /// its address.
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
            config.enrp_transport = Some(crate::wire::Transport::Tcp {
                port: a.port(),
                transport_use: 0,
                addr: a.ip(),
            });
        }
        let seed = self.next_u64();
        let addr = registrar_addr(i);
        self.regs.push(RegSlot {
            r: Some(Registrar::new(config.clone(), id, seed, self.now)),
            addr,
            next_conn: 1,
            group: 0,
            config,
        });
        let now = self.now;
        let nodes: Vec<Node> = (0..self.pes.len())
            .map(Node::Pe)
            .chain((0..self.pus.len()).map(Node::Pu))
            .collect();
        for n in nodes {
            let Some(h) = self.host_mut(n) else { continue };
            if !h.config.registrars.contains(&addr) {
                h.config.registrars.push(addr);
            }
            if let Some(c) = h.core.as_mut() {
                c.add_registrar(addr, now);
            }
            self.drain_client(n);
        }
        i
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

    /// The registrar slot listening at `addr`.
    fn slot_of(&self, addr: SocketAddr) -> Option<usize> {
        self.regs.iter().position(|s| s.addr == addr)
    }

    /// Crash registrar slot `i`. With `notify` the other ends see its
    /// connections close (a process crash: RST); without, they just go
    /// silent (a host crash) and must find out by timers.
    pub fn crash(&mut self, i: usize, notify: bool) {
        if self.regs.get_mut(i).and_then(|s| s.r.take()).is_none() {
            return;
        }
        self.stats.crashes += 1;
        self.crash_node(Node::Reg(i), notify);
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

    /// The links of a node that just crashed go away: the other ends hear of
    /// it (or not, without `notify`), and nothing still queued for the node
    /// reaches whatever runs there next.
    fn crash_node(&mut self, node: Node, notify: bool) {
        let links: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.ends.iter().any(|e| e.0 == node))
            .map(|(k, _)| *k)
            .collect();
        for k in links {
            self.drop_link(k, Some(node), notify);
        }
        self.queue.retain(|q| !q.ev.is_for(node));
    }

    /// Put nodes in partition groups: messages and connects between groups
    /// fail. Slices shorter than the node lists leave the rest in group 0.
    pub fn partition(&mut self, reg_groups: &[u8], pe_groups: &[u8], pu_groups: &[u8]) {
        for (s, g) in self.regs.iter_mut().zip(reg_groups) {
            s.group = *g;
        }
        for (p, g) in self.pes.iter_mut().zip(pe_groups) {
            p.host.group = *g;
        }
        for (p, g) in self.pus.iter_mut().zip(pu_groups) {
            p.host.group = *g;
        }
    }

    /// End every partition.
    pub fn heal(&mut self) {
        for s in &mut self.regs {
            s.group = 0;
        }
        for p in &mut self.pes {
            p.host.group = 0;
        }
        for p in &mut self.pus {
            p.host.group = 0;
        }
    }

    fn group(&self, n: Node) -> u8 {
        match n {
            Node::Reg(i) => self.regs.get(i).map_or(0, |s| s.group),
            Node::Pe(_) | Node::Pu(_) => self.host(n).map_or(0, |h| h.group),
        }
    }

    fn host(&self, n: Node) -> Option<&Host> {
        match n {
            Node::Reg(_) => None,
            Node::Pe(i) => self.pes.get(i).map(|p| &p.host),
            Node::Pu(i) => self.pus.get(i).map(|p| &p.host),
        }
    }

    fn host_mut(&mut self, n: Node) -> Option<&mut Host> {
        match n {
            Node::Reg(_) => None,
            Node::Pe(i) => self.pes.get_mut(i).map(|p| &mut p.host),
            Node::Pu(i) => self.pus.get_mut(i).map(|p| &mut p.host),
        }
    }

    fn core_mut(&mut self, n: Node) -> Option<&mut Client> {
        self.host_mut(n).and_then(|h| h.core.as_mut())
    }

    fn running(&self, n: Node) -> bool {
        match n {
            Node::Reg(i) => self.registrar(i).is_some(),
            _ => self.host(n).is_some_and(|h| h.core.is_some()),
        }
    }

    fn addr_of(&self, n: Node) -> SocketAddr {
        match n {
            Node::Reg(i) => self.regs[i].addr,
            _ => self.host(n).map_or(registrar_addr(0), |h| h.addr),
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
        let regs = self
            .regs
            .iter()
            .filter_map(|s| s.r.as_ref()?.poll_timeout());
        let pes = self.pes.iter().filter_map(|p| p.next_timeout());
        let pus = self
            .pus
            .iter()
            .filter_map(|p| p.next_timeout(self.pu_activity));
        let q = self.queue.peek().map(|q| q.at);
        q.into_iter().chain(regs).chain(pes).chain(pus).min()
    }

    /// One thing happens: the earliest queued event, else the first due
    /// registrar timer, else the first due client timer.
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
            if self.pes[i].next_timeout().is_some_and(|d| d <= now) {
                return self.pe_timer(i);
            }
        }
        for i in 0..self.pus.len() {
            if self.pus[i]
                .next_timeout(self.pu_activity)
                .is_some_and(|d| d <= now)
            {
                return self.pu_timer(i);
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
                self.log(&[from, node], || {
                    format!("deliver on {conn:?}: {}", show(ppid, &msg))
                });
                if self.group(node) != self.group(from) {
                    self.stats.lost += 1;
                    self.dropped_on(link, node);
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
                    _ => {
                        self.with_core(node, |c, now| c.handle_message(conn, ppid, &msg, now));
                    }
                }
            }
            Ev::Closed { node, conn } => match node {
                Node::Reg(i) => {
                    if let Some(r) = self.regs[i].r.as_mut() {
                        r.handle_closed(conn, now);
                    }
                    self.drain(i);
                }
                _ => {
                    self.with_core(node, |c, now| c.handle_closed(conn, now));
                }
            },
            Ev::Connected { link } => self.connected(link),
            Ev::ConnectFailed { node, conn } => match node {
                Node::Reg(i) => {
                    if let Some(r) = self.regs[i].r.as_mut() {
                        r.handle_connect_failed(conn, now);
                    }
                    self.drain(i);
                }
                _ => {
                    self.with_core(node, |c, now| c.handle_connect_failed(conn, now));
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

    /// A connection set-up completes: the acceptor hears first, then the
    /// dialler.
    fn connected(&mut self, link: u64) {
        let now = self.now;
        let Some(l) = self.links.get(&link).cloned() else {
            return;
        };
        let a0 = self.addr_of(l.ends[0].0);
        let a1 = self.addr_of(l.ends[1].0);
        let info = |me: SocketAddr, other: SocketAddr| ConnInfo {
            kind: l.kind,
            remote: vec![other],
            local: me,
        };
        match l.ends[1].0 {
            Node::Reg(j) => {
                if let Some(r) = self.regs[j].r.as_mut() {
                    r.handle_connected(l.ends[1].1, info(a1, a0), now);
                }
            }
            n => {
                // A registrar reaching a client: the client names it.
                let Some(c) = self.core_mut(n) else {
                    return self.drop_link(link, None, false);
                };
                let conn = c.handle_accepted(a0, now);
                self.ends.insert((n, conn), link);
                if let Some(l) = self.links.get_mut(&link) {
                    l.ends[1].1 = conn;
                }
            }
        }
        if let Some(l) = self.links.get_mut(&link) {
            l.up = true;
        }
        if let Node::Reg(j) = l.ends[1].0 {
            self.drain(j);
        }
        match l.ends[0].0 {
            Node::Reg(i) => {
                if let Some(r) = self.regs[i].r.as_mut() {
                    r.handle_connected(l.ends[0].1, info(a0, a1), now);
                }
                self.drain(i);
            }
            n => {
                let conn = l.ends[0].1;
                self.with_core(n, |c, now| c.handle_connected(conn, now));
            }
        }
        if !matches!(l.ends[1].0, Node::Reg(_)) {
            self.drain_client(l.ends[1].0);
        }
    }

    /// A message to `to` on `link` was dropped.
    fn dropped_on(&mut self, link: u64, to: Node) {
        if matches!(to, Node::Pu(_)) {
            self.tainted.insert(link);
        }
    }

    /// Drop a link: nothing more is delivered on it. `closer` (if any) closed
    /// it or crashed; a registrar closer hears `handle_closed` (the runtime's
    /// job), a client closer nothing (its core already forgot it). The other
    /// end hears the close after a delay if the link was up and `notify`; a
    /// dialler whose connection was not up yet hears its attempt failed.
    fn drop_link(&mut self, link: u64, closer: Option<Node>, notify: bool) {
        let Some(l) = self.links.remove(&link) else {
            return;
        };
        self.tainted.remove(&link);
        self.log(&[l.ends[0].0, l.ends[1].0], || {
            format!("link {link} {:?} dropped by {closer:?}", l.ends)
        });
        for (idx, (node, conn)) in l.ends.into_iter().enumerate() {
            self.ends.remove(&(node, conn));
            let ev = if Some(node) == closer {
                let alive = self.running(node);
                (alive && matches!(node, Node::Reg(_))).then_some(Ev::Closed { node, conn })
            } else if l.up {
                notify.then_some(Ev::Closed { node, conn })
            } else if idx == 0 {
                Some(Ev::ConnectFailed { node, conn })
            } else {
                None
            };
            if let Some(ev) = ev {
                let at = self.now + self.delay();
                self.schedule(at, ev);
            }
        }
    }

    /// Open a link from `from` (its conn id `conn`) to node `to`. Returns
    /// whether the attempt is under way (else it fails, or hangs, after a
    /// delay).
    fn connect(&mut self, from: Node, conn: ConnId, to: Node, kind: ConnKind) -> bool {
        let at = self.now + self.delay();
        let same_side = self.group(from) == self.group(to);
        if !self.running(to) || !same_side {
            // Across a partition a client's SYNs may just vanish: it gives up
            // on its own (T5). Registrars are told, as before.
            let hang = !same_side && !matches!(from, Node::Reg(_)) && self.chance(0.5);
            if !hang {
                self.schedule(at, Ev::ConnectFailed { node: from, conn });
            }
            return false;
        }
        let accepted = match to {
            Node::Reg(j) => {
                let slot = &mut self.regs[j];
                slot.next_conn += 1;
                ConnId(slot.next_conn - 1)
            }
            // Named by the client when it accepts.
            _ => ConnId(u64::MAX),
        };
        let link = self.next_link;
        self.next_link += 1;
        self.links.insert(
            link,
            Link {
                ends: [(from, conn), (to, accepted)],
                last: [Time::ZERO; 2],
                up: false,
                kind,
            },
        );
        self.ends.insert((from, conn), link);
        if matches!(to, Node::Reg(_)) {
            self.ends.insert((to, accepted), link);
        }
        self.log(&[from, to], || format!("link {link} dialled by {conn:?}"));
        self.schedule(at, Ev::Connected { link });
        true
    }

    fn send(&mut self, from: Node, conn: ConnId, ppid: u32, msg: Vec<u8>) {
        let Some(&link) = self.ends.get(&(from, conn)) else {
            return;
        };
        if let Some(t) = msg.first() {
            *self.sent_types.entry((from, ppid, *t)).or_default() += 1;
        }
        let Some(l) = self.links.get(&link) else {
            return;
        };
        let me = usize::from(l.ends[1] == (from, conn));
        let to = l.ends[1 - me].0;
        if self.chance(self.faults.loss) {
            self.stats.lost += 1;
            self.log(&[from, to], || {
                format!("LOST on {conn:?}: {}", show(ppid, &msg))
            });
            self.dropped_on(link, to);
            return;
        }
        let d = self.delay();
        let reorder = self.chance(self.faults.reorder);
        let Some(l) = self.links.get_mut(&link) else {
            return;
        };
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
                Output::Close { conn, .. } => match self.ends.get(&(Node::Reg(i), conn)) {
                    Some(&link) => self.drop_link(link, Some(Node::Reg(i)), true),
                    None => {
                        // Not (or no longer) linked: still confirm the close.
                        let at = self.now + self.delay();
                        self.schedule(
                            at,
                            Ev::Closed {
                                node: Node::Reg(i),
                                conn,
                            },
                        );
                    }
                },
                Output::Connect {
                    conn, addr, kind, ..
                } => {
                    let to = match self.slot_of(addr) {
                        Some(j) if j != i => Some(Node::Reg(j)),
                        Some(_) => None,
                        None => self
                            .pes
                            .iter()
                            .position(|p| p.host.addr == addr)
                            .map(Node::Pe),
                    };
                    match to {
                        Some(to) => {
                            let kind = if matches!(to, Node::Reg(_)) {
                                ConnKind::Tcp
                            } else {
                                self.stats.dials_to_clients += 1;
                                kind
                            };
                            self.connect(Node::Reg(i), conn, to, kind);
                        }
                        None => {
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

    // ----------------------------------------------------------- faults

    /// Start random faults now (they keep coming every `fault_interval` on
    /// average until [`stop_faults`](Self::stop_faults)).
    pub fn start_faults(&mut self) {
        if let Some(iv) = self.faults.fault_interval {
            let d = self.between(Duration::ZERO, iv * 2);
            let at = self.now + d;
            self.schedule(at, Ev::Fault);
        }
    }

    /// Stop random faults, heal partitions, restart crashed registrars and
    /// pool users, make the network perfect again. Crashed or departed pool
    /// elements stay gone.
    pub fn stop_faults(&mut self) {
        self.faults.fault_interval = None;
        self.faults.loss = 0.0;
        self.faults.reorder = 0.0;
        self.heal();
        for i in 0..self.regs.len() {
            self.restart(i);
        }
        for i in 0..self.pus.len() {
            if self.pus[i].host.core.is_none() {
                self.start_pu(i);
            }
        }
        self.queue.retain(|q| q.ev != Ev::Fault);
    }

    fn random_fault(&mut self) {
        let Some(iv) = self.faults.fault_interval else {
            return;
        };
        let live = self.live_registrars();
        match self.below(9) {
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
                let ug: Vec<u8> = (0..self.pus.len()).map(|_| self.below(2) as u8).collect();
                self.partition(&rg, &pg, &ug);
            }
            3 => self.heal(),
            4 if !self.links.is_empty() => {
                let k = self.below(self.links.len() as u64) as usize;
                if let Some(&link) = self.links.keys().nth(k) {
                    self.stats.breaks += 1;
                    self.drop_link(link, None, true);
                }
            }
            5 | 6 if !self.pes.is_empty() => {
                // PE churn: a running one crashes or leaves, a gone one
                // comes back.
                let k = self.below(self.pes.len() as u64) as usize;
                if self.pes[k].host.core.is_none() {
                    self.restart_pe(k);
                } else if self.pes[k].wanted && self.chance(0.25) {
                    self.leave_pe(k);
                } else if self.pes[k].wanted {
                    let notify = self.chance(0.5);
                    self.kill_pe_with(k, notify);
                }
            }
            7 if !self.pus.is_empty() => {
                let k = self.below(self.pus.len() as u64) as usize;
                let notify = self.chance(0.5);
                self.restart_pu(k, notify);
            }
            _ => {}
        }
        let d = self.between(Duration::ZERO, iv * 2);
        let at = self.now + d;
        self.schedule(at, Ev::Fault);
    }
}

/// A message for a trace line.
fn show(ppid: u32, msg: &[u8]) -> String {
    use crate::wire::{AsapMessage, EnrpMessage};
    let d = if ppid == PPID_ENRP {
        EnrpMessage::decode(msg).map(|d| format!("{:?}", d.msg))
    } else {
        AsapMessage::decode(msg).map(|d| format!("{:?}", d.msg))
    };
    d.unwrap_or_else(|e| format!("undecodable: {e}"))
}

/// The PPIDs, for tests that count messages.
pub const PPIDS: [u32; 2] = [PPID_ASAP, PPID_ENRP];
