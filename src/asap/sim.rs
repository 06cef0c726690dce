//! A deterministic in-memory network of ASAP [`Client`]s and [`Registrar`]
//! cores under virtual time, for tests (quinn's `Pair`, smoltcp's fault
//! injector; STYLE.md §2.7, §4.5).
//!
//! - Clients' [`Output::Connect`] reach the registrar with that address:
//!   both sides see the connection after one latency, or the client sees
//!   `handle_connect_failed` when the registrar is [`RegistrarState::Down`]
//!   (or unknown); a [`RegistrarState::Blackhole`] registrar never answers,
//!   so the attempt hangs until the client abandons it.
//! - `Send` outputs become `handle_message` on the other side after the
//!   latency plus a seeded jitter, in order per connection direction, each
//!   lost with probability `loss_permille / 1000` (connection set-up and
//!   closing are never lost: SCTP would retransmit them).
//! - `Close` from either side reaches the other side; a registrar's closes
//!   are also fed back to itself (the runtime's job).
//! - Registrar announces go to every client (multicast) when enabled.
//! - [`Sim::run_until`] advances virtual time event by event to the earliest
//!   delivery or `poll_timeout`, draining every output after every call.
//!
//! Everything is determined by [`SimConfig::seed`] and the cores' seeds, so a
//! failing run replays exactly. [`Sim::sent`] records every message handed
//! to the network, for assertions about traffic.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use super::{Client, ClientConfig, ConnId, Event, Output, PPID_ASAP};
use crate::handlespace::rng::Rng;
use crate::registrar::{self, ConnInfo, ConnKind, Registrar, RegistrarConfig};
use crate::time::Time;
use crate::wire::AsapMessage;

/// Network behaviour of a [`Sim`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// One-way delay of every delivery. Default 1 ms.
    pub latency: Duration,
    /// Extra delay drawn uniformly from `0..=jitter` per message (order per
    /// connection direction is kept). Default 0.
    pub jitter: Duration,
    /// Messages lost per thousand. Default 0.
    pub loss_permille: u32,
    /// Seed of the network's randomness (loss, jitter).
    pub seed: u64,
    /// Deliver registrar announces to every client. Default true.
    pub deliver_announces: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            latency: Duration::from_millis(1),
            jitter: Duration::ZERO,
            loss_permille: 0,
            seed: 1,
            deliver_announces: true,
        }
    }
}

/// Whether a registrar answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistrarState {
    /// Running.
    Up,
    /// Crashed: connection attempts fail at once.
    Down,
    /// Unreachable: connection attempts never complete.
    Blackhole,
}

/// A node of the simulation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Node {
    /// Client number n.
    Client(usize),
    /// Registrar number n.
    Registrar(usize),
}

/// A message handed to the network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sent {
    /// When.
    pub at: Time,
    /// Sender.
    pub from: Node,
    /// Receiver (`None`: its connection was already gone).
    pub to: Option<Node>,
    /// ASAP message type (first byte).
    pub msg_type: u8,
    /// Lost on the way.
    pub lost: bool,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// A simulated registrar.
#[derive(Debug)]
pub struct SimRegistrar {
    /// The core (replaced by a fresh one on restart).
    pub core: Registrar,
    /// Its ASAP address.
    pub addr: SocketAddr,
    /// Whether it answers.
    pub state: RegistrarState,
    config: RegistrarConfig,
    server_id: u32,
}

/// A simulated client.
#[derive(Debug)]
pub struct SimClient {
    /// The core.
    pub core: Client,
    /// Its address (the source of its connections).
    pub addr: SocketAddr,
    /// Every event it produced, with the time.
    pub events: Vec<(Time, Event)>,
}

#[derive(Debug)]
struct Link {
    client: usize,
    cconn: ConnId,
    reg: usize,
    rconn: ConnId,
    last_to_client: Time,
    last_to_reg: Time,
}

#[derive(Debug)]
enum Delivery {
    ConnectResult {
        client: usize,
        cconn: ConnId,
        reg: Option<usize>,
    },
    ToRegistrar {
        link: u64,
        bytes: Vec<u8>,
    },
    ToClient {
        link: u64,
        bytes: Vec<u8>,
    },
    ClosedAtRegistrar {
        reg: usize,
        rconn: ConnId,
    },
    ClosedAtClient {
        client: usize,
        cconn: ConnId,
    },
    Announce {
        client: usize,
        src: SocketAddr,
        bytes: Vec<u8>,
    },
}

/// Clients and registrars wired together in memory. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct Sim {
    /// The virtual time.
    pub now: Time,
    /// Network behaviour (may be changed between runs).
    pub config: SimConfig,
    /// The clients, by number.
    pub clients: Vec<SimClient>,
    /// The registrars, by number.
    pub registrars: Vec<SimRegistrar>,
    /// Every message handed to the network.
    pub sent: Vec<Sent>,
    /// Every connection attempt: time, client, address.
    pub connects: Vec<(Time, usize, SocketAddr)>,
    links: BTreeMap<u64, Link>,
    next_link: u64,
    next_rconn: u64,
    pending_connects: BTreeSet<(usize, ConnId)>,
    queue: BTreeMap<(Time, u64), Delivery>,
    seq: u64,
    rng: Rng,
}

/// Registrar `i`'s address: 10.0.0.(i+1), port 3863.
pub fn registrar_addr(i: usize) -> SocketAddr {
    let b = u8::try_from(i % 250 + 1).unwrap_or(1);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, b)), 3863)
}

/// Client `i`'s address: 10.1.0.(i+1), port 40000.
pub fn client_addr(i: usize) -> SocketAddr {
    let b = u8::try_from(i % 250 + 1).unwrap_or(1);
    SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, b)), 40000)
}

impl Sim {
    /// An empty network at time 0.
    pub fn new(config: SimConfig) -> Sim {
        Sim {
            now: Time::ZERO,
            rng: Rng::new(config.seed),
            config,
            clients: Vec::new(),
            registrars: Vec::new(),
            sent: Vec::new(),
            connects: Vec::new(),
            links: BTreeMap::new(),
            next_link: 1,
            next_rconn: 1,
            pending_connects: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
        }
    }

    /// Add a registrar at [`registrar_addr`]`(n)`; returns n.
    pub fn add_registrar(&mut self, config: RegistrarConfig, server_id: u32) -> usize {
        let i = self.registrars.len();
        let core = Registrar::new(config.clone(), server_id, 1000 + i as u64, self.now);
        self.registrars.push(SimRegistrar {
            core,
            addr: registrar_addr(i),
            state: RegistrarState::Up,
            config,
            server_id,
        });
        i
    }

    /// Add a client at [`client_addr`]`(n)`, seeded with `seed`; returns n.
    pub fn add_client(&mut self, config: ClientConfig, seed: u64) -> usize {
        let i = self.clients.len();
        self.clients.push(SimClient {
            core: Client::new(config, seed, self.now),
            addr: client_addr(i),
            events: Vec::new(),
        });
        i
    }

    /// Client `i`'s core.
    pub fn client(&self, i: usize) -> &Client {
        &self.clients[i].core
    }

    /// Registrar `i`'s core.
    pub fn registrar(&self, i: usize) -> &Registrar {
        &self.registrars[i].core
    }

    /// Run a command on client `i` at the current time, then let its outputs
    /// go out.
    pub fn with_client<R>(&mut self, i: usize, f: impl FnOnce(&mut Client, Time) -> R) -> R {
        let now = self.now;
        let r = f(&mut self.clients[i].core, now);
        self.pump();
        r
    }

    /// Client `i`'s events so far.
    pub fn events(&self, i: usize) -> &[(Time, Event)] {
        &self.clients[i].events
    }

    /// Client `i`'s events so far, removed.
    pub fn take_events(&mut self, i: usize) -> Vec<Event> {
        std::mem::take(&mut self.clients[i].events)
            .into_iter()
            .map(|(_, e)| e)
            .collect()
    }

    /// Messages of type `msg_type` sent by `from` so far.
    pub fn count_sent(&self, from: Node, msg_type: u8) -> usize {
        self.sent
            .iter()
            .filter(|s| s.from == from && s.msg_type == msg_type)
            .count()
    }

    /// Open connections between client `client` and registrar `reg`.
    pub fn link_count(&self, client: usize, reg: usize) -> usize {
        self.links
            .values()
            .filter(|l| l.client == client && l.reg == reg)
            .count()
    }

    /// Crash registrar `i`: its connections close on the clients' side, its
    /// state is lost, new connection attempts fail.
    pub fn kill_registrar(&mut self, i: usize) {
        self.drop_links_of(i);
        self.registrars[i].state = RegistrarState::Down;
    }

    /// Make registrar `i` unreachable: its connections close, new attempts
    /// hang.
    pub fn blackhole_registrar(&mut self, i: usize) {
        self.drop_links_of(i);
        self.registrars[i].state = RegistrarState::Blackhole;
    }

    /// Start registrar `i` again with an empty handlespace.
    pub fn restart_registrar(&mut self, i: usize) {
        let r = &mut self.registrars[i];
        r.core = Registrar::new(r.config.clone(), r.server_id, 2000 + i as u64, self.now);
        r.state = RegistrarState::Up;
    }

    /// Registrar `reg` opens a connection to client `client` (e.g. to send it
    /// a keep-alive after a takeover). Returns the client-side and the
    /// registrar-side ids.
    pub fn dial(&mut self, reg: usize, client: usize) -> (ConnId, ConnId) {
        let now = self.now;
        let raddr = self.registrars[reg].addr;
        let cconn = self.clients[client].core.handle_accepted(raddr, now);
        let rconn = self.open_link(client, cconn, reg);
        self.pump();
        (cconn, rconn)
    }

    /// Registrar `reg` sends `msg` on its connection `rconn` (a message its
    /// core would not produce, e.g. a keep-alive with H=1).
    pub fn inject_from_registrar(&mut self, reg: usize, rconn: ConnId, msg: &AsapMessage) {
        if let Some(id) = self.link_by_reg(reg, rconn) {
            self.transmit_to_client(id, Node::Registrar(reg), msg.to_bytes());
        }
        self.pump();
    }

    /// Advance by `d`.
    pub fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    /// Process every delivery and timer up to `t`, in time order; the clock
    /// ends at `t`.
    pub fn run_until(&mut self, t: Time) {
        let mut steps = 0u64;
        loop {
            self.pump();
            let next_q = self.queue.keys().next().map(|(at, _)| *at);
            let next_c = self
                .clients
                .iter()
                .filter_map(|c| c.core.poll_timeout())
                .min();
            let next_r = self
                .registrars
                .iter()
                .filter(|r| r.state == RegistrarState::Up)
                .filter_map(|r| r.core.poll_timeout())
                .min();
            let next = [next_q, next_c, next_r].into_iter().flatten().min();
            let Some(next) = next.filter(|n| *n <= t) else {
                break;
            };
            steps += 1;
            assert!(steps < 10_000_000, "simulation does not settle");
            self.now = self.now.max(next);
            let now = self.now;
            while let Some((&key, _)) = self.queue.first_key_value() {
                if key.0 > now {
                    break;
                }
                if let Some(d) = self.queue.remove(&key) {
                    self.deliver(d);
                    self.pump();
                }
            }
            for i in 0..self.clients.len() {
                if self.clients[i]
                    .core
                    .poll_timeout()
                    .is_some_and(|d| d <= now)
                {
                    self.clients[i].core.handle_timeout(now);
                    self.pump();
                }
            }
            for i in 0..self.registrars.len() {
                let r = &mut self.registrars[i];
                if r.state == RegistrarState::Up && r.core.poll_timeout().is_some_and(|d| d <= now)
                {
                    r.core.handle_timeout(now);
                    self.pump();
                }
            }
        }
        self.now = self.now.max(t);
    }

    // ------------------------------------------------------------ internals

    fn schedule(&mut self, at: Time, d: Delivery) {
        self.seq += 1;
        self.queue.insert((at, self.seq), d);
    }

    fn delay(&mut self) -> Duration {
        let j = u64::try_from(self.config.jitter.as_micros()).unwrap_or(0);
        let extra = if j == 0 { 0 } else { self.rng.below(j + 1) };
        self.config.latency + Duration::from_micros(extra)
    }

    fn lost(&mut self) -> bool {
        self.config.loss_permille > 0 && self.rng.below(1000) < u64::from(self.config.loss_permille)
    }

    fn link_by_client(&self, client: usize, cconn: ConnId) -> Option<u64> {
        self.links
            .iter()
            .find(|(_, l)| l.client == client && l.cconn == cconn)
            .map(|(id, _)| *id)
    }

    fn link_by_reg(&self, reg: usize, rconn: ConnId) -> Option<u64> {
        self.links
            .iter()
            .find(|(_, l)| l.reg == reg && l.rconn == rconn)
            .map(|(id, _)| *id)
    }

    /// Create a link and tell the registrar about its new connection.
    fn open_link(&mut self, client: usize, cconn: ConnId, reg: usize) -> ConnId {
        let rconn = ConnId(self.next_rconn);
        self.next_rconn += 1;
        let info = ConnInfo {
            kind: ConnKind::Sctp,
            remote: vec![self.clients[client].addr],
            local: self.registrars[reg].addr,
        };
        let now = self.now;
        self.registrars[reg].core.handle_connected(rconn, info, now);
        let id = self.next_link;
        self.next_link += 1;
        self.links.insert(
            id,
            Link {
                client,
                cconn,
                reg,
                rconn,
                last_to_client: now,
                last_to_reg: now,
            },
        );
        rconn
    }

    fn drop_links_of(&mut self, reg: usize) {
        let ids: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| l.reg == reg)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(l) = self.links.remove(&id) {
                let at = self.now + self.config.latency;
                self.schedule(
                    at,
                    Delivery::ClosedAtClient {
                        client: l.client,
                        cconn: l.cconn,
                    },
                );
            }
        }
    }

    fn transmit_to_client(&mut self, id: u64, from: Node, bytes: Vec<u8>) {
        let lost = self.lost();
        let delay = self.delay();
        let Some(l) = self.links.get_mut(&id) else {
            return;
        };
        self.sent.push(Sent {
            at: self.now,
            from,
            to: Some(Node::Client(l.client)),
            msg_type: bytes.first().copied().unwrap_or(0),
            lost,
            bytes: bytes.clone(),
        });
        if lost {
            return;
        }
        let at = (self.now + delay).max(l.last_to_client);
        l.last_to_client = at;
        self.schedule(at, Delivery::ToClient { link: id, bytes });
    }

    /// Move every pending output into the network, and events into the logs.
    fn pump(&mut self) {
        loop {
            let mut any = false;
            for i in 0..self.clients.len() {
                while let Some(o) = self.clients[i].core.poll_output() {
                    any = true;
                    self.client_output(i, o);
                }
                while let Some(e) = self.clients[i].core.poll_event() {
                    let now = self.now;
                    self.clients[i].events.push((now, e));
                }
            }
            for i in 0..self.registrars.len() {
                while let Some(o) = self.registrars[i].core.poll_output() {
                    any = true;
                    self.registrar_output(i, o);
                }
            }
            if !any {
                return;
            }
        }
    }

    fn client_output(&mut self, i: usize, o: Output) {
        let now = self.now;
        match o {
            Output::Connect { conn, addr } => {
                self.connects.push((now, i, addr));
                self.pending_connects.insert((i, conn));
                let reg = self.registrars.iter().position(|r| r.addr == addr);
                let state = reg.map(|r| self.registrars[r].state);
                if state != Some(RegistrarState::Blackhole) {
                    let at = now + self.config.latency;
                    self.schedule(
                        at,
                        Delivery::ConnectResult {
                            client: i,
                            cconn: conn,
                            reg,
                        },
                    );
                }
            }
            Output::Send { conn, msg, .. } => {
                let lost = self.lost();
                let delay = self.delay();
                let link = self.link_by_client(i, conn);
                let to = link
                    .and_then(|id| self.links.get(&id))
                    .map(|l| Node::Registrar(l.reg));
                self.sent.push(Sent {
                    at: now,
                    from: Node::Client(i),
                    to,
                    msg_type: msg.first().copied().unwrap_or(0),
                    lost,
                    bytes: msg.clone(),
                });
                let Some(id) = link else { return };
                if lost {
                    return;
                }
                if let Some(l) = self.links.get_mut(&id) {
                    let at = (now + delay).max(l.last_to_reg);
                    l.last_to_reg = at;
                    self.schedule(
                        at,
                        Delivery::ToRegistrar {
                            link: id,
                            bytes: msg,
                        },
                    );
                }
            }
            Output::Close { conn } => {
                self.pending_connects.remove(&(i, conn));
                if let Some(id) = self.link_by_client(i, conn) {
                    if let Some(l) = self.links.remove(&id) {
                        let at = now + self.config.latency;
                        self.schedule(
                            at,
                            Delivery::ClosedAtRegistrar {
                                reg: l.reg,
                                rconn: l.rconn,
                            },
                        );
                    }
                }
            }
        }
    }

    fn registrar_output(&mut self, i: usize, o: registrar::Output) {
        let now = self.now;
        match o {
            // This harness has no ENRP peers (src/sim has): a registrar's own
            // dial has nowhere to go.
            registrar::Output::Connect { conn, .. } => {
                self.registrars[i].core.handle_connect_failed(conn, now);
            }
            registrar::Output::Send { conn, msg, .. } => {
                if let Some(id) = self.link_by_reg(i, conn) {
                    self.transmit_to_client(id, Node::Registrar(i), msg);
                }
            }
            registrar::Output::Close { conn, .. } => {
                let at = now + self.config.latency;
                self.schedule(
                    at,
                    Delivery::ClosedAtRegistrar {
                        reg: i,
                        rconn: conn,
                    },
                );
                if let Some(id) = self.link_by_reg(i, conn) {
                    if let Some(l) = self.links.remove(&id) {
                        self.schedule(
                            at,
                            Delivery::ClosedAtClient {
                                client: l.client,
                                cconn: l.cconn,
                            },
                        );
                    }
                }
            }
            // No ENRP peers here (src/sim has them): the group is empty.
            registrar::Output::EnrpMulticast { .. } => {}
            registrar::Output::Announce { msg } => {
                if self.config.deliver_announces {
                    let src = self.registrars[i].addr;
                    let at = now + self.config.latency;
                    for c in 0..self.clients.len() {
                        self.schedule(
                            at,
                            Delivery::Announce {
                                client: c,
                                src,
                                bytes: msg.clone(),
                            },
                        );
                    }
                }
            }
        }
    }

    fn deliver(&mut self, d: Delivery) {
        let now = self.now;
        match d {
            Delivery::ConnectResult { client, cconn, reg } => {
                if !self.pending_connects.remove(&(client, cconn)) {
                    return; // abandoned by the client
                }
                match reg.filter(|r| self.registrars[*r].state == RegistrarState::Up) {
                    Some(r) => {
                        self.open_link(client, cconn, r);
                        self.clients[client].core.handle_connected(cconn, now);
                    }
                    None => self.clients[client].core.handle_connect_failed(cconn, now),
                }
            }
            Delivery::ToRegistrar { link, bytes } => {
                if let Some(l) = self.links.get(&link) {
                    let (reg, rconn) = (l.reg, l.rconn);
                    if self.registrars[reg].state == RegistrarState::Up {
                        self.registrars[reg]
                            .core
                            .handle_message(rconn, PPID_ASAP, &bytes, now);
                    }
                }
            }
            Delivery::ToClient { link, bytes } => {
                if let Some(l) = self.links.get(&link) {
                    let (client, cconn) = (l.client, l.cconn);
                    self.clients[client]
                        .core
                        .handle_message(cconn, PPID_ASAP, &bytes, now);
                }
            }
            Delivery::ClosedAtRegistrar { reg, rconn } => {
                if self.registrars[reg].state == RegistrarState::Up {
                    self.registrars[reg].core.handle_closed(rconn, now);
                }
            }
            Delivery::ClosedAtClient { client, cconn } => {
                self.clients[client].core.handle_closed(cconn, now);
            }
            Delivery::Announce { client, src, bytes } => {
                self.clients[client].core.handle_announce(src, &bytes, now);
            }
        }
    }
}
