//! The ENRP peer side of the registrar (RFC 5353, digest §9.9-§9.14): start-up
//! with a mentor, presence and failure detection, handle updates, the checksum
//! audit with W=1 resynchronisation, and takeover. See the documented choices in
//! the [registrar module documentation](super).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use super::util::TokenBucket;
use super::{ConnId, ConnKind, Output, Owned, RateLimit, Registrar, Timer, PPID_ENRP};
use crate::handlespace::Expiry;
use crate::time::Time;
use crate::wire::{
    transport_use, AsapMessage, EnrpBody, EnrpMessage, PoolElement, PoolHandle, ServerInfo,
    Transport, UpdateAction,
};

/// Connection ids the core picks for connections it initiates have this bit
/// set; the runtime's ids for accepted connections keep it clear.
pub const CORE_CONN_BIT: u64 = 1 << 63;

/// Most taken-over peers remembered (for dumps and to ignore stale entries).
const MAX_TOMBSTONES: usize = 64;

/// Where a peer stands, as shown by `rserpool dump`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeerState {
    /// Known by address only, or its connection is being (re)established.
    Connecting,
    /// A handle-table download (start-up) or W=1 resync with it is running.
    Synchronising,
    /// Heard from recently.
    Active,
    /// Silent for MAX-TIME-LAST-HEARD (or its connection broke): a
    /// reply-required presence is out.
    Probing,
    /// Declared dead; a takeover (ours or another server's) is under way.
    Dead,
    /// Taken over (by us or another server) and dropped from the peer list.
    TakenOver,
}

impl PeerState {
    /// Lower-case name for dumps, e.g. `"taken-over"`.
    pub fn name(self) -> &'static str {
        match self {
            PeerState::Connecting => "connecting",
            PeerState::Synchronising => "synchronising",
            PeerState::Active => "active",
            PeerState::Probing => "probing",
            PeerState::Dead => "dead",
            PeerState::TakenOver => "taken-over",
        }
    }
}

/// One ENRP peer, for dumps ([`Registrar::peers`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// Its server id; 0 for a configured peer not identified yet.
    pub id: u32,
    /// Its ENRP endpoint, when known.
    pub addr: Option<SocketAddr>,
    /// Its state.
    pub state: PeerState,
    /// When it was last heard from (any ENRP message).
    pub last_heard: Option<Time>,
    /// The PE checksum we compute for the PEs we believe it owns.
    pub checksum_held: u16,
    /// The checksum it announced in its last presence.
    pub checksum_announced: Option<u16>,
    /// PEs we believe it owns.
    pub pes: usize,
    /// For a taken-over peer: the server that took it over.
    pub taken_over_by: Option<u32>,
    /// The connection used to talk to it.
    pub conn: Option<ConnId>,
}

/// Start-up progress ([`Registrar::startup_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StartupState {
    /// Connecting to the configured peer with this index (the mentor candidate).
    Connecting(usize),
    /// ENRP_LIST_REQUEST sent to the mentor with this index.
    ListRequested(usize),
    /// Downloading the handle table from the mentor with this index.
    Downloading(usize),
    /// Waiting to try the mentor with this index again.
    Backoff(usize),
    /// Done: downloaded from a mentor, or no mentor answered (alone).
    Done,
}

#[derive(Debug)]
pub(super) struct Peer {
    pub(super) addr: Option<SocketAddr>,
    pub(super) kind: ConnKind,
    pub(super) conn: Option<ConnId>,
    pub(super) state: PeerState,
    pub(super) last_heard: Time,
    pub(super) announced: Option<u16>,
    /// Someone else's takeover of this peer we acked.
    pub(super) acked_takeover: Option<u32>,
}

#[derive(Debug)]
pub(super) struct Tombstone {
    id: u32,
    addr: Option<SocketAddr>,
    last_heard: Time,
    by: u32,
}

/// What a connection we initiated is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Dial {
    /// An ENRP peer (mentor or peer) at this address.
    Peer(SocketAddr),
    /// A taken-over PE with an SCTP ASAP transport: H=1 keep-alive.
    KeepAlive((PoolHandle, u32)),
}

#[derive(Debug)]
pub(super) struct Takeover {
    waiting: BTreeSet<u32>,
}

#[derive(Debug)]
pub(super) struct Resync {
    peer: u32,
}

/// All ENRP state of a registrar.
#[derive(Debug)]
pub(super) struct Enrp {
    pub(super) peers: BTreeMap<u32, Peer>,
    tombstones: Vec<Tombstone>,
    pub(super) dials: BTreeMap<ConnId, Dial>,
    next_dial: u64,
    pub(super) startup: StartupState,
    /// The mentor's connection and id during start-up.
    mentor: Option<(ConnId, Option<u32>)>,
    takeovers: BTreeMap<u32, Takeover>,
    resync: Option<Resync>,
    resync_queue: BTreeSet<u32>,
    /// Dials to peers learnt from the multicast group: ask each for its peer
    /// list once connected.
    ask_list: BTreeSet<ConnId>,
    /// Limit on datagrams taken from the multicast group.
    multicast_bucket: TokenBucket,
}

impl Enrp {
    pub(super) fn new(configured: bool, multicast_rate: RateLimit, now: Time) -> Self {
        Enrp {
            peers: BTreeMap::new(),
            tombstones: Vec::new(),
            dials: BTreeMap::new(),
            next_dial: 0,
            startup: if configured {
                StartupState::Backoff(0)
            } else {
                StartupState::Done
            },
            mentor: None,
            takeovers: BTreeMap::new(),
            resync: None,
            resync_queue: BTreeSet::new(),
            ask_list: BTreeSet::new(),
            multicast_bucket: TokenBucket::new(multicast_rate, now),
        }
    }
}

/// ENRP counters (part of [`super::RegistrarStats`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnrpStats {
    /// ENRP messages received from peers (decoded, addressed to us).
    pub received: u64,
    /// ENRP messages sent.
    pub sent: u64,
    /// ENRP messages that could not be sent (no connection to the peer).
    pub unsendable: u64,
    /// Presences received.
    pub presences: u64,
    /// Handle updates received.
    pub updates_received: u64,
    /// Handle updates sent (one per peer).
    pub updates_sent: u64,
    /// PEs from peers the handlespace refused (limits, inconsistency).
    pub pes_refused: u64,
    /// PEs this server owned that a peer's update moved away.
    pub ownership_lost: u64,
    /// ENRP_HANDLE_TABLE_REQUESTs sent (start-up and resync).
    pub table_requests_sent: u64,
    /// Resyncs completed.
    pub resyncs: u64,
    /// Resyncs aborted (timeout, rejection, peer gone).
    pub resyncs_aborted: u64,
    /// PEs removed by resync sweeps.
    pub swept: u64,
    /// Peers declared dead.
    pub peers_dead: u64,
    /// Takeovers started by us.
    pub takeovers_started: u64,
    /// Takeovers we completed.
    pub takeovers_won: u64,
    /// Takeovers we aborted (target alive, higher id, timeout).
    pub takeovers_aborted: u64,
    /// TAKEOVER_SERVER messages applied.
    pub takeovers_applied: u64,
    /// PEs taken over by us.
    pub pes_taken_over: u64,
    /// Messages dropped: wrong receiver id, our own sender id, bad state.
    pub dropped: u64,
    /// Presences sent to the ENRP multicast group.
    pub multicast_sent: u64,
    /// Presences of other servers taken from the multicast group.
    pub multicast_received: u64,
    /// Datagrams from the multicast group that did not decode (dropped).
    pub multicast_malformed: u64,
    /// Datagrams from the multicast group ignored: our own presences, other
    /// message types, another receiver, no usable Server Information, the
    /// peer limit, or multicast not enabled.
    pub multicast_ignored: u64,
    /// Datagrams from the multicast group dropped by
    /// [`super::RegistrarConfig::multicast_rate`].
    pub multicast_rate_limited: u64,
    /// Peers learnt from the multicast group (unknown servers added).
    pub peers_discovered: u64,
}

/// A socket address for an ENRP or ASAP transport, using `fallback_ip` when
/// the transport's address is unspecified.
fn transport_addr(t: &Transport, fallback_ip: Option<IpAddr>) -> Option<(SocketAddr, ConnKind)> {
    let kind = match t {
        Transport::Sctp { .. } => ConnKind::Sctp,
        Transport::Tcp { .. } => ConnKind::Tcp,
        _ => return None,
    };
    let port = t.port()?;
    let ip = match t.addrs().first().copied() {
        Some(ip) if !ip.is_unspecified() => ip,
        _ => fallback_ip?,
    };
    (port != 0).then_some((SocketAddr::new(ip, port), kind))
}

impl Registrar {
    // ------------------------------------------------------------- getters

    /// Every ENRP peer (and configured endpoint not identified yet, with id 0,
    /// and remembered taken-over peers), in id order.
    pub fn peers(&self) -> Vec<PeerInfo> {
        let mut v: Vec<PeerInfo> = Vec::new();
        for (&id, p) in &self.enrp.peers {
            v.push(PeerInfo {
                id,
                addr: p.addr,
                state: p.state,
                last_heard: Some(p.last_heard),
                checksum_held: self.space.hs.checksum(id),
                checksum_announced: p.announced,
                pes: self.space.hs.owned_count(id),
                taken_over_by: None,
                conn: p.conn,
            });
        }
        for t in &self.enrp.tombstones {
            v.push(PeerInfo {
                id: t.id,
                addr: t.addr,
                state: PeerState::TakenOver,
                last_heard: Some(t.last_heard),
                checksum_held: self.space.hs.checksum(t.id),
                checksum_announced: None,
                pes: self.space.hs.owned_count(t.id),
                taken_over_by: Some(t.by),
                conn: None,
            });
        }
        for addr in &self.config.peers {
            if !self.enrp.peers.values().any(|p| p.addr == Some(*addr)) {
                v.push(PeerInfo {
                    id: 0,
                    addr: Some(*addr),
                    state: PeerState::Connecting,
                    last_heard: None,
                    checksum_held: 0xFFFF,
                    checksum_announced: None,
                    pes: 0,
                    taken_over_by: None,
                    conn: None,
                });
            }
        }
        v.sort_by_key(|p| p.id);
        v
    }

    /// Start-up progress.
    pub fn startup_state(&self) -> StartupState {
        self.enrp.startup
    }

    /// The PE checksum of the PEs this server owns (what its presences announce).
    pub fn own_checksum(&self) -> u16 {
        self.space.hs.checksum(self.server_id)
    }

    /// ENRP counters.
    pub fn enrp_stats(&self) -> EnrpStats {
        self.enrp_stats.clone()
    }

    /// Whether this server owns the PE (a registration here, or a takeover).
    pub fn owns(&self, handle: &PoolHandle, pe_id: u32) -> bool {
        self.owned.contains_key(&(handle.clone(), pe_id))
    }

    /// Internal consistency, for tests and simulations: the PEs the
    /// handlespace says we own are exactly those we keep ownership state for;
    /// marks exist only during a resync; peer connections exist. O(all PEs).
    #[doc(hidden)]
    pub fn check_consistency(&self) -> Result<(), String> {
        let me = self.server_id;
        let mut mine = 0usize;
        for v in self.space.hs.iter_all() {
            let key = (PoolHandle(v.handle().to_vec()), v.id());
            if v.owner() == me {
                mine += 1;
                if !self.owned.contains_key(&key) {
                    return Err(format!("PE {key:?} owned in the handlespace, not tracked"));
                }
            }
            if v.is_marked() && self.enrp.resync.is_none() {
                return Err(format!("PE {key:?} marked outside a resync"));
            }
        }
        if mine != self.owned.len() {
            return Err(format!(
                "{} PEs tracked as owned, {mine} owned in the handlespace",
                self.owned.len()
            ));
        }
        if self.enrp.peers.contains_key(&me) {
            return Err("we are our own peer".into());
        }
        for (id, p) in &self.enrp.peers {
            if let Some(c) = p.conn {
                if !self.conns.contains_key(&c) {
                    return Err(format!("peer {id:#x} on a connection that is gone"));
                }
            }
        }
        Ok(())
    }

    // ---------------------------------------------------------- handle_*

    /// A connection the core asked for with [`Output::Connect`] could not be
    /// established.
    pub fn handle_connect_failed(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        self.enrp.ask_list.remove(&conn);
        // A peer we could not reach stays Probing/Connecting: its probe timer
        // decides. A PE we could not reach stays an orphan.
        if let Some(Dial::Peer(_)) = self.enrp.dials.remove(&conn) {
            if matches!(self.enrp.mentor, Some((c, _)) if c == conn) {
                self.mentor_failed();
            }
        }
        self.flush();
    }

    /// One UDP datagram from the ENRP multicast group, sent by `from` (only
    /// with [`super::RegistrarConfig::enrp_multicast`]). It should hold one
    /// ENRP_PRESENCE: one from a server we do not know adds it as a peer
    /// (its ENRP endpoint from the Server Information, an unspecified or
    /// missing address replaced by `from`'s) and dials it; the unicast
    /// procedures follow (presence exchange and checksum audit, list
    /// request). Our own presences, other messages and malformed datagrams
    /// are counted and dropped. Liveness is never judged from the group:
    /// it only introduces servers.
    pub fn handle_multicast(&mut self, msg: &[u8], from: SocketAddr, now: Time) {
        self.advance(now);
        self.on_multicast(msg, from);
        self.flush();
    }

    // ---------------------------------------------------------- internals

    /// Called when a connection comes up: the ENRP side of `handle_connected`.
    pub(super) fn enrp_connected(&mut self, conn: ConnId) {
        let Some(dial) = self.enrp.dials.remove(&conn) else {
            return;
        };
        match dial {
            Dial::Peer(addr) => {
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.dialed = Some(addr);
                }
                // Introduce ourselves (and learn its id from the answer).
                self.send_presence(conn, 0, true);
                if self.enrp.ask_list.remove(&conn) {
                    // Learnt from the multicast group: its peers may include
                    // servers that do not multicast (or that we miss).
                    self.send_enrp_on(conn, 0, EnrpBody::ListRequest);
                }
                if matches!(self.enrp.mentor, Some((c, _)) if c == conn) {
                    if let StartupState::Connecting(i) = self.enrp.startup {
                        self.enrp.startup = StartupState::ListRequested(i);
                        self.send_enrp_on(conn, 0, EnrpBody::ListRequest);
                        let at = self.now + self.config.max_time_no_response;
                        self.timers.set(Timer::Startup, at);
                    }
                }
            }
            Dial::KeepAlive(key) => {
                // A taken-over PE we can reach: H=1 keep-alive on the new
                // association makes it adopt us as home (RFC 5353 §3.5).
                let Some(o) = self.owned.get_mut(&key) else {
                    self.close(conn, "PE gone".to_string());
                    return;
                };
                o.conn = conn;
                o.orphan = false;
                o.awaiting_ack = false;
                if let Some(c) = self.conns.get_mut(&conn) {
                    c.owned.insert(key.clone());
                }
                self.send_keep_alive(key, true);
            }
        }
    }

    /// The ENRP side of a closed connection.
    pub(super) fn enrp_closed(&mut self, conn: ConnId, peer: Option<u32>) {
        self.enrp.dials.remove(&conn);
        self.enrp.ask_list.remove(&conn);
        if matches!(self.enrp.mentor, Some((c, _)) if c == conn)
            && self.enrp.startup != StartupState::Done
        {
            self.mentor_failed();
        }
        let Some(id) = peer else { return };
        let Some(p) = self.enrp.peers.get(&id) else {
            return;
        };
        if p.conn != Some(conn) {
            return;
        }
        // Another connection to the same peer?
        let other = self
            .conns
            .iter()
            .find(|(c, x)| **c != conn && x.peer == Some(id) && !x.closing)
            .map(|(c, _)| *c);
        if let Some(p) = self.enrp.peers.get_mut(&id) {
            p.conn = other;
        }
        if other.is_some() {
            return;
        }
        if self.enrp.resync.as_ref().is_some_and(|r| r.peer == id) {
            self.abort_resync();
        }
        // Connection down: probe (which redials) unless already dying.
        if matches!(
            self.enrp.peers.get(&id).map(|p| p.state),
            Some(PeerState::Active | PeerState::Synchronising | PeerState::Connecting)
        ) {
            self.probe(id);
        }
    }

    fn alloc_conn(&mut self) -> ConnId {
        self.enrp.next_dial = self.enrp.next_dial.wrapping_add(1) & !CORE_CONN_BIT;
        ConnId(CORE_CONN_BIT | self.enrp.next_dial)
    }

    fn dial(&mut self, addr: SocketAddr, kind: ConnKind, purpose: Dial) -> ConnId {
        let conn = self.alloc_conn();
        // ENRP peers over SCTP: from our ENRP endpoint, so that the
        // association's port is the one our Server Information names
        // (RSPLIB drops a presence whose ENRP port is not the association's).
        let local = match (&purpose, kind, &self.config.enrp_transport) {
            (
                Dial::Peer(_),
                ConnKind::Sctp,
                Some(Transport::Sctp {
                    port: p @ 1..,
                    addrs,
                    ..
                }),
            ) => addrs.iter().map(|ip| SocketAddr::new(*ip, *p)).collect(),
            _ => Vec::new(),
        };
        self.enrp.dials.insert(conn, purpose);
        self.push(Output::Connect {
            conn,
            addr,
            kind,
            local,
        });
        conn
    }

    fn dialing(&self, addr: SocketAddr) -> bool {
        self.enrp
            .dials
            .values()
            .any(|d| matches!(d, Dial::Peer(a) if *a == addr))
    }

    fn kind_of(&self, addr: SocketAddr) -> ConnKind {
        if self.config.sctp_peers.contains(&addr) {
            return ConnKind::Sctp;
        }
        self.enrp
            .peers
            .values()
            .find(|p| p.addr == Some(addr))
            .map_or(ConnKind::Tcp, |p| p.kind)
    }

    /// Our Server Information as sent on `conn`.
    fn server_info(&self, conn: ConnId) -> ServerInfo {
        let transport = self.config.enrp_transport.clone().unwrap_or_else(|| {
            let (kind, local) = self
                .conns
                .get(&conn)
                .map(|c| (c.info.kind, c.info.local))
                .unwrap_or((
                    ConnKind::Tcp,
                    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 0),
                ));
            match kind {
                ConnKind::Tcp => Transport::Tcp {
                    port: local.port(),
                    transport_use: transport_use::DATA_ONLY,
                    addr: local.ip(),
                },
                ConnKind::Sctp => Transport::Sctp {
                    port: local.port(),
                    transport_use: transport_use::DATA_ONLY,
                    addrs: vec![local.ip()],
                },
            }
        });
        ServerInfo {
            server_id: self.server_id,
            transport,
        }
    }

    fn send_enrp_on(&mut self, conn: ConnId, receiver: u32, body: EnrpBody) {
        let msg = EnrpMessage {
            sender: self.server_id,
            receiver,
            body,
        };
        self.enrp_stats.sent += 1;
        self.push(Output::Send {
            conn,
            ppid: PPID_ENRP,
            msg: msg.to_bytes(),
        });
    }

    /// Point-to-point to a peer (receiver id set).
    fn send_to_peer(&mut self, id: u32, body: EnrpBody) {
        match self.enrp.peers.get(&id).and_then(|p| p.conn) {
            Some(conn) => self.send_enrp_on(conn, id, body),
            None => self.enrp_stats.unsendable += 1,
        }
    }

    /// Group-cast: one copy per connected peer, receiver id 0.
    fn group_cast(&mut self, body: EnrpBody, except: Option<u32>) {
        let conns: Vec<ConnId> = self
            .enrp
            .peers
            .iter()
            .filter(|(id, _)| Some(**id) != except)
            .filter_map(|(_, p)| p.conn)
            .collect();
        if conns.is_empty() {
            return;
        }
        let bytes = EnrpMessage {
            sender: self.server_id,
            receiver: 0,
            body,
        }
        .to_bytes();
        for conn in conns {
            self.enrp_stats.sent += 1;
            self.push(Output::Send {
                conn,
                ppid: PPID_ENRP,
                msg: bytes.clone(),
            });
        }
    }

    fn send_presence(&mut self, conn: ConnId, receiver: u32, reply_required: bool) {
        let body = EnrpBody::Presence {
            reply_required,
            checksum: Some(self.own_checksum()),
            server_info: Some(self.server_info(conn)),
        };
        self.send_enrp_on(conn, receiver, body);
    }

    /// Heartbeat: presence to every connected peer.
    pub(super) fn heartbeat(&mut self) {
        let targets: Vec<ConnId> = self.enrp.peers.values().filter_map(|p| p.conn).collect();
        for conn in targets {
            self.send_presence(conn, 0, false);
        }
        // Armed again when a peer appears.
        if !self.enrp.peers.is_empty() {
            let at = self.now + min_period(self.config.peer_heartbeat_cycle);
            self.timers.set(Timer::Heartbeat, at);
        }
    }

    // ------------------------------------------------------- multicast

    /// MulticastPresence timer: our presence to the group, every
    /// PEER-HEARTBEAT-CYCLE. Without an ENRP endpoint to name there is
    /// nothing worth saying, and the timer stops.
    pub(super) fn multicast_presence(&mut self) {
        let Some(transport) = self.config.enrp_transport.clone() else {
            return;
        };
        let msg = EnrpMessage {
            sender: self.server_id,
            receiver: 0,
            body: EnrpBody::Presence {
                reply_required: false,
                checksum: Some(self.own_checksum()),
                server_info: Some(ServerInfo {
                    server_id: self.server_id,
                    transport,
                }),
            },
        };
        self.enrp_stats.multicast_sent += 1;
        self.push(Output::EnrpMulticast {
            msg: msg.to_bytes(),
        });
        let at = self.now + min_period(self.config.peer_heartbeat_cycle);
        self.timers.set(Timer::MulticastPresence, at);
    }

    fn on_multicast(&mut self, bytes: &[u8], from: SocketAddr) {
        if !self.config.enrp_multicast {
            self.enrp_stats.multicast_ignored += 1;
            return;
        }
        if !self.enrp.multicast_bucket.take(self.now) {
            self.enrp_stats.multicast_rate_limited += 1;
            return;
        }
        // Unknown parameters are skipped (nobody to report them to: an
        // ENRP_ERROR never goes to a group).
        let msg = match EnrpMessage::decode(bytes) {
            Ok(d) => d.msg,
            Err(_) => {
                self.enrp_stats.multicast_malformed += 1;
                return;
            }
        };
        let sender = msg.sender;
        let EnrpBody::Presence { server_info, .. } = msg.body else {
            self.enrp_stats.multicast_ignored += 1;
            return;
        };
        if sender == 0
            || sender == self.server_id
            || (msg.receiver != 0 && msg.receiver != self.server_id)
        {
            // Our own presence looped back, or not for us.
            self.enrp_stats.multicast_ignored += 1;
            return;
        }
        self.enrp_stats.multicast_received += 1;
        let endpoint = server_info
            .filter(|si| si.server_id == sender)
            .and_then(|si| transport_addr(&si.transport, Some(from.ip())));
        if let Some(p) = self.enrp.peers.get_mut(&sender) {
            // Known: unicast decides about its liveness. The group only fills
            // in an address we lacked (a PE owner we never heard from) and
            // hurries a connection that is missing.
            if p.addr.is_none() {
                if let Some((addr, kind)) = endpoint {
                    p.addr = Some(addr);
                    p.kind = kind;
                }
            }
            let (conn, addr, kind, state) = (p.conn, p.addr, p.kind, p.state);
            if let (None, Some(addr)) = (conn, addr) {
                if matches!(
                    state,
                    PeerState::Active | PeerState::Connecting | PeerState::Probing
                ) && !self.dialing(addr)
                {
                    self.dial(addr, kind, Dial::Peer(addr));
                }
            }
            return;
        }
        let Some((addr, kind)) = endpoint else {
            // No Server Information we can dial: nothing to do with it.
            self.enrp_stats.multicast_ignored += 1;
            return;
        };
        if self.enrp.peers.len() >= self.config.max_peers {
            self.enrp_stats.multicast_ignored += 1;
            return;
        }
        // A server taken over earlier is back: forget the tombstone.
        self.enrp.tombstones.retain(|t| t.id != sender);
        self.enrp_stats.peers_discovered += 1;
        self.add_peer(
            sender,
            Peer {
                addr: Some(addr),
                kind,
                conn: None,
                state: PeerState::Connecting,
                last_heard: self.now,
                announced: None,
                acked_takeover: None,
            },
        );
        if !self.dialing(addr) {
            let conn = self.dial(addr, kind, Dial::Peer(addr));
            self.enrp.ask_list.insert(conn);
        }
    }

    /// Tell every peer about a PE we own (ADD_PE) or no longer have (DEL_PE).
    pub(super) fn broadcast_update(
        &mut self,
        action: UpdateAction,
        pool_handle: PoolHandle,
        pe: PoolElement,
    ) {
        let before = self.enrp_stats.sent;
        self.group_cast(
            EnrpBody::HandleUpdate {
                takeover_suggested: false,
                action,
                pool_handle,
                pe,
            },
            None,
        );
        self.enrp_stats.updates_sent += self.enrp_stats.sent - before;
    }

    // ------------------------------------------------------ start-up

    /// The Startup timer: next start-up step (or its timeout).
    pub(super) fn startup_timer(&mut self) {
        match self.enrp.startup {
            StartupState::Backoff(i) => self.try_mentor(i),
            StartupState::Done => {}
            _ => self.mentor_failed(),
        }
    }

    fn try_mentor(&mut self, i: usize) {
        let Some(&addr) = self.config.peers.get(i) else {
            return self.startup_done();
        };
        // Already connected to it (it connected to us first)?
        let existing = self
            .enrp
            .peers
            .iter()
            .find(|(_, p)| p.addr == Some(addr) && p.conn.is_some())
            .map(|(id, p)| (*id, p.conn));
        let at = self.now + self.config.max_time_no_response;
        self.timers.set(Timer::Startup, at);
        if let Some((id, Some(conn))) = existing {
            self.enrp.mentor = Some((conn, Some(id)));
            self.enrp.startup = StartupState::ListRequested(i);
            self.send_enrp_on(conn, id, EnrpBody::ListRequest);
        } else {
            let kind = self.kind_of(addr);
            let conn = self.dial(addr, kind, Dial::Peer(addr));
            self.enrp.mentor = Some((conn, None));
            self.enrp.startup = StartupState::Connecting(i);
        }
    }

    /// The current mentor did not work out: next one, or alone after a round.
    fn mentor_failed(&mut self) {
        let i = match self.enrp.startup {
            StartupState::Connecting(i)
            | StartupState::ListRequested(i)
            | StartupState::Downloading(i)
            | StartupState::Backoff(i) => i,
            StartupState::Done => return,
        };
        self.enrp.mentor = None;
        self.timers.cancel(&Timer::Startup);
        if i + 1 < self.config.peers.len() {
            self.try_mentor(i + 1);
        } else {
            // Every configured peer failed once: serve alone. Configured peers
            // are still redialled; the checksum audit syncs us when they answer.
            self.startup_done();
        }
    }

    fn startup_done(&mut self) {
        self.enrp.startup = StartupState::Done;
        self.enrp.mentor = None;
        self.timers.cancel(&Timer::Startup);
        // Audit everyone we have heard from meanwhile.
        let mismatched: Vec<u32> = self
            .enrp
            .peers
            .iter()
            .filter(|(id, p)| {
                p.announced
                    .is_some_and(|c| c != self.space.hs.checksum(**id))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in mismatched {
            self.start_resync(id);
        }
    }

    pub(super) fn redial(&mut self) {
        let addrs = self.config.peers.clone();
        for addr in addrs {
            let connected = self
                .enrp
                .peers
                .values()
                .any(|p| p.addr == Some(addr) && p.conn.is_some());
            if !connected && !self.dialing(addr) {
                let kind = self.kind_of(addr);
                self.dial(addr, kind, Dial::Peer(addr));
            }
        }
        let at = self.now + self.config.peer_reconnect_interval.max(MIN_PERIOD);
        self.timers.set(Timer::Redial, at);
    }

    // ------------------------------------------------------------ peers

    /// Common handling of every ENRP message from `sender` on `conn`: learn an
    /// unknown server (if `adds`), refresh last-heard, revive a probed/dead
    /// peer. Returns whether the sender is now a known peer.
    fn touch_peer(&mut self, conn: ConnId, sender: u32, adds: bool) -> bool {
        let now = self.now;
        if !self.enrp.peers.contains_key(&sender) {
            if !adds || self.enrp.peers.len() >= self.config.max_peers {
                return false;
            }
            // A taken-over server speaks again: it is back.
            let addr = self
                .enrp
                .tombstones
                .iter()
                .position(|t| t.id == sender)
                .map(|i| self.enrp.tombstones.remove(i))
                .and_then(|t| t.addr)
                .or_else(|| self.conns.get(&conn).and_then(|c| c.dialed));
            let kind = self.conns.get(&conn).map_or(ConnKind::Tcp, |c| c.info.kind);
            self.add_peer(
                sender,
                Peer {
                    addr,
                    kind,
                    conn: Some(conn),
                    state: PeerState::Active,
                    last_heard: now,
                    announced: None,
                    acked_takeover: None,
                },
            );
            if let Some(c) = self.conns.get_mut(&conn) {
                c.peer = Some(sender);
            }
            // RFC 5353 §3.4: ask the newcomer for its Server Information.
            self.send_presence(conn, sender, true);
            return true;
        }
        let dialed = self.conns.get(&conn).and_then(|c| c.dialed);
        if let Some(c) = self.conns.get_mut(&conn) {
            c.peer = Some(sender);
        }
        let mut revived = false;
        if let Some(p) = self.enrp.peers.get_mut(&sender) {
            p.last_heard = now;
            // Answer on the connection it last spoke on: that one works (a
            // half-open older one may not).
            p.conn = Some(conn);
            if p.addr.is_none() {
                p.addr = dialed;
            }
            if matches!(
                p.state,
                PeerState::Probing | PeerState::Dead | PeerState::Connecting
            ) {
                p.state = PeerState::Active;
                p.acked_takeover = None;
                revived = true;
            }
        }
        if revived {
            self.timers.cancel(&Timer::ProbeTimeout(sender));
            self.timers.cancel(&Timer::Takeover(sender));
            if self.enrp.takeovers.remove(&sender).is_some() {
                // RFC 5353 §3.5.1: the target is alive, abort.
                self.enrp_stats.takeovers_aborted += 1;
            }
            self.arm_peer_check(sender);
        }
        true
    }

    /// Add a peer, watch it, and make sure heartbeats run.
    fn add_peer(&mut self, id: u32, peer: Peer) {
        self.enrp.peers.insert(id, peer);
        self.arm_peer_check(id);
        if self.timers.get(&Timer::Heartbeat).is_none() {
            let at = self.now + min_period(self.config.peer_heartbeat_cycle);
            self.timers.set(Timer::Heartbeat, at);
        }
    }

    fn arm_peer_check(&mut self, id: u32) {
        if let Some(p) = self.enrp.peers.get(&id) {
            let at = p.last_heard + self.config.max_time_last_heard;
            self.timers.set(Timer::PeerCheck(id), at);
        }
    }

    /// PeerCheck timer: silent too long? probe.
    pub(super) fn peer_check(&mut self, id: u32) {
        let Some(p) = self.enrp.peers.get(&id) else {
            return;
        };
        let due = p.last_heard + self.config.max_time_last_heard;
        if due > self.now {
            self.timers.set(Timer::PeerCheck(id), due);
            return;
        }
        // Connecting too: a peer from a stale list that never answers must
        // be declared dead like any other.
        if matches!(
            p.state,
            PeerState::Active | PeerState::Synchronising | PeerState::Connecting
        ) {
            self.probe(id);
        }
    }

    /// Send a reply-required presence (dialling first if there is no
    /// connection) and start MAX-TIME-NO-RESPONSE.
    fn probe(&mut self, id: u32) {
        let Some(p) = self.enrp.peers.get_mut(&id) else {
            return;
        };
        p.state = PeerState::Probing;
        let (conn, addr, kind) = (p.conn, p.addr, p.kind);
        match conn {
            Some(conn) => self.send_presence(conn, id, true),
            None => {
                if let Some(addr) = addr {
                    if !self.dialing(addr) {
                        self.dial(addr, kind, Dial::Peer(addr));
                    }
                }
            }
        }
        let at = self.now + self.config.max_time_no_response;
        self.timers.set(Timer::ProbeTimeout(id), at);
    }

    /// ProbeTimeout timer: no answer, the peer is dead (RFC 5353 §3.4).
    pub(super) fn probe_timeout(&mut self, id: u32) {
        let Some(p) = self.enrp.peers.get_mut(&id) else {
            return;
        };
        if p.state != PeerState::Probing {
            return;
        }
        p.state = PeerState::Dead;
        self.enrp_stats.peers_dead += 1;
        self.timers.cancel(&Timer::PeerCheck(id));
        if self.enrp.resync.as_ref().is_some_and(|r| r.peer == id) {
            self.abort_resync();
        }
        self.enrp.resync_queue.remove(&id);
        // A dead peer acks nothing: stop waiting for it.
        let targets: Vec<u32> = self.enrp.takeovers.keys().copied().collect();
        for t in targets {
            if let Some(tk) = self.enrp.takeovers.get_mut(&t) {
                tk.waiting.remove(&id);
            }
            self.maybe_complete_takeover(t);
        }
        self.start_takeover(id);
    }

    // ---------------------------------------------------------- receive

    /// One decoded ENRP message from `conn`.
    pub(super) fn on_enrp_message(&mut self, conn: ConnId, msg: EnrpMessage) {
        let sender = msg.sender;
        if sender == self.server_id || (msg.receiver != 0 && msg.receiver != self.server_id) {
            // Our own id (a loop or a collision) or addressed to someone else.
            self.enrp_stats.dropped += 1;
            return;
        }
        self.enrp_stats.received += 1;
        // Requests and errors (which tools send too) do not make a peer.
        let adds = sender != 0
            && !matches!(
                msg.body,
                EnrpBody::ListRequest | EnrpBody::HandleTableRequest { .. } | EnrpBody::Error(_)
            );
        let known = if sender == 0 {
            false
        } else {
            self.touch_peer(conn, sender, adds)
        };
        match msg.body {
            EnrpBody::Presence {
                reply_required,
                checksum,
                server_info,
            } => {
                if known {
                    self.on_presence(conn, sender, reply_required, checksum, server_info)
                } else if reply_required {
                    self.send_presence(conn, sender, false);
                }
            }
            EnrpBody::HandleTableRequest { own_children_only } => {
                self.on_table_request(conn, sender, own_children_only)
            }
            EnrpBody::HandleTableResponse {
                reject,
                more,
                pools,
            } => self.on_table_response(conn, sender, reject, more, pools),
            EnrpBody::HandleUpdate {
                action,
                pool_handle,
                pe,
                ..
            } if known => self.on_update(sender, action, pool_handle, pe),
            EnrpBody::ListRequest => self.on_list_request(conn, sender),
            EnrpBody::ListResponse { reject, servers } => {
                self.on_list_response(conn, sender, reject, servers)
            }
            EnrpBody::InitTakeover { target } if known => self.on_init_takeover(sender, target),
            EnrpBody::InitTakeoverAck { target } if known => {
                if let Some(t) = self.enrp.takeovers.get_mut(&target) {
                    t.waiting.remove(&sender);
                    self.maybe_complete_takeover(target);
                }
            }
            EnrpBody::TakeoverServer { target } if known => self.on_takeover_server(sender, target),
            EnrpBody::Error(_) => self.stats.errors_received += 1,
            _ => self.enrp_stats.dropped += 1,
        }
    }

    fn on_presence(
        &mut self,
        conn: ConnId,
        sender: u32,
        reply_required: bool,
        checksum: Option<u16>,
        server_info: Option<ServerInfo>,
    ) {
        self.enrp_stats.presences += 1;
        let fallback = self
            .conns
            .get(&conn)
            .and_then(|c| c.info.remote.first())
            .map(|a| a.ip());
        if let Some(p) = self.enrp.peers.get_mut(&sender) {
            if let Some(si) = server_info.filter(|si| si.server_id == sender) {
                if let Some((addr, kind)) = transport_addr(&si.transport, fallback) {
                    p.addr = Some(addr);
                    p.kind = kind;
                }
            }
            if checksum.is_some() {
                p.announced = checksum;
            }
        }
        if reply_required {
            self.send_presence(conn, sender, false);
        }
        // Audit (RFC 5353 §3.6): a different checksum means resync now.
        if let Some(c) = checksum {
            if self.enrp.startup == StartupState::Done && c != self.space.hs.checksum(sender) {
                self.start_resync(sender);
            }
        }
    }

    fn on_list_request(&mut self, conn: ConnId, sender: u32) {
        let mut servers = Vec::new();
        let fallback = |c: Option<ConnId>| c.and_then(|c| self.conns.get(&c)).map(|x| x.info.kind);
        for (&id, p) in &self.enrp.peers {
            if id == sender || matches!(p.state, PeerState::Dead) {
                continue;
            }
            let Some(addr) = p.addr else { continue };
            let kind = fallback(p.conn).unwrap_or(p.kind);
            let transport = match kind {
                ConnKind::Tcp => Transport::Tcp {
                    port: addr.port(),
                    transport_use: transport_use::DATA_ONLY,
                    addr: addr.ip(),
                },
                ConnKind::Sctp => Transport::Sctp {
                    port: addr.port(),
                    transport_use: transport_use::DATA_ONLY,
                    addrs: vec![addr.ip()],
                },
            };
            servers.push(ServerInfo {
                server_id: id,
                transport,
            });
        }
        // Never rejected: we serve from the start (see the module docs).
        self.send_enrp_on(
            conn,
            sender,
            EnrpBody::ListResponse {
                reject: false,
                servers,
            },
        );
    }

    fn on_list_response(
        &mut self,
        conn: ConnId,
        sender: u32,
        reject: bool,
        servers: Vec<ServerInfo>,
    ) {
        let is_mentor = matches!(self.enrp.mentor, Some((c, _)) if c == conn)
            && matches!(self.enrp.startup, StartupState::ListRequested(_));
        if reject {
            if is_mentor {
                // Busy mentor: try again later (the same one first).
                if let StartupState::ListRequested(i) = self.enrp.startup {
                    self.enrp.startup = StartupState::Backoff(i);
                    self.enrp.mentor = None;
                    let at = self.now + self.config.mentor_retry_interval;
                    self.timers.set(Timer::Startup, at);
                }
            }
            return;
        }
        // Seed the peer list (from the mentor or any other server's answer).
        let fallback = self
            .conns
            .get(&conn)
            .and_then(|c| c.info.remote.first())
            .map(|a| a.ip());
        for si in servers {
            let id = si.server_id;
            if id == 0 || id == self.server_id || self.enrp.peers.contains_key(&id) {
                continue;
            }
            if self.enrp.tombstones.iter().any(|t| t.id == id)
                || self.enrp.peers.len() >= self.config.max_peers
            {
                continue;
            }
            let Some((addr, kind)) = transport_addr(&si.transport, fallback) else {
                continue;
            };
            self.add_peer(
                id,
                Peer {
                    addr: Some(addr),
                    kind,
                    conn: None,
                    state: PeerState::Connecting,
                    last_heard: self.now,
                    announced: None,
                    acked_takeover: None,
                },
            );
            if !self.dialing(addr) {
                self.dial(addr, kind, Dial::Peer(addr));
            }
        }
        if is_mentor && sender != 0 {
            if let StartupState::ListRequested(i) = self.enrp.startup {
                self.enrp.mentor = Some((conn, Some(sender)));
                self.enrp.startup = StartupState::Downloading(i);
                if let Some(p) = self.enrp.peers.get_mut(&sender) {
                    p.state = PeerState::Synchronising;
                }
                self.request_table(conn, sender, false);
            }
        }
    }

    fn request_table(&mut self, conn: ConnId, peer: u32, own_children_only: bool) {
        self.enrp_stats.table_requests_sent += 1;
        self.send_enrp_on(
            conn,
            peer,
            EnrpBody::HandleTableRequest { own_children_only },
        );
        let at = self.now + self.config.max_time_no_response;
        if own_children_only {
            self.timers.set(Timer::Resync, at);
        } else {
            self.timers.set(Timer::Startup, at);
        }
    }

    fn on_table_response(
        &mut self,
        conn: ConnId,
        sender: u32,
        reject: bool,
        more: bool,
        pools: Vec<(PoolHandle, Vec<PoolElement>)>,
    ) {
        let startup = matches!(self.enrp.startup, StartupState::Downloading(_))
            && matches!(self.enrp.mentor, Some((_, Some(m))) if m == sender);
        let resync = self.enrp.resync.as_ref().is_some_and(|r| r.peer == sender);
        if !startup && !resync {
            self.enrp_stats.dropped += 1;
            return;
        }
        if reject {
            if startup {
                self.mentor_failed();
            } else {
                self.abort_resync();
            }
            return;
        }
        for (handle, pes) in pools {
            for pe in pes {
                let owner = if resync || pe.home == 0 {
                    sender
                } else {
                    pe.home
                };
                self.learn_pe(&handle, pe, owner, true);
            }
        }
        if more {
            self.request_table(conn, sender, resync && !startup);
            return;
        }
        if startup {
            self.timers.cancel(&Timer::Startup);
            if let Some(p) = self.enrp.peers.get_mut(&sender) {
                if p.state == PeerState::Synchronising {
                    p.state = PeerState::Active;
                }
            }
            self.startup_done();
        } else {
            self.finish_resync();
        }
    }

    /// Store a PE a peer told us about, owned by `owner` (RFC 5353 §3.3: add or
    /// replace). `from_table` entries do not override a PE we own with a live
    /// registration; an update (news of a registration) always wins.
    fn learn_pe(&mut self, handle: &PoolHandle, mut pe: PoolElement, owner: u32, from_table: bool) {
        if owner == self.server_id
            || owner == 0
            || self.enrp.tombstones.iter().any(|t| t.id == owner)
        {
            // About ourselves (we know better) or a server that is gone (its
            // successor's own audit brings these PEs with the right owner).
            return;
        }
        let key = (handle.clone(), pe.id);
        if let Some(o) = self.owned.get(&key) {
            if from_table && !o.orphan {
                return;
            }
        }
        pe.home = owner;
        match self
            .space
            .hs
            .register_ext(&handle.0, &pe, owner, Expiry::Never)
        {
            Ok(_) => {
                self.dirty.insert(handle.clone());
                if self.forget_owned(&key).is_some() {
                    // It registered elsewhere: not ours any more (no
                    // keep-alives, the connection no longer holds it).
                    self.enrp_stats.ownership_lost += 1;
                }
                if !self.enrp.peers.contains_key(&owner)
                    && self.enrp.peers.len() < self.config.max_peers
                {
                    // An owner we never heard of: monitor it like any peer;
                    // if it never speaks it is probed, declared dead and
                    // taken over, so its PEs cannot linger forever.
                    self.add_peer(
                        owner,
                        Peer {
                            addr: None,
                            kind: ConnKind::Tcp,
                            conn: None,
                            state: PeerState::Active,
                            last_heard: self.now,
                            announced: None,
                            acked_takeover: None,
                        },
                    );
                }
            }
            Err(_) => self.enrp_stats.pes_refused += 1,
        }
    }

    fn on_update(
        &mut self,
        sender: u32,
        action: UpdateAction,
        handle: PoolHandle,
        pe: PoolElement,
    ) {
        self.enrp_stats.updates_received += 1;
        match action {
            UpdateAction::ADD_PE => {
                let owner = if pe.home == 0 || pe.home == self.server_id {
                    sender
                } else {
                    pe.home
                };
                self.learn_pe(&handle, pe, owner, false);
            }
            UpdateAction::DEL_PE => {
                // Only from the PE's current owner: a late DEL_PE from a former
                // home must not delete a PE that moved on.
                let owner = self.space.hs.get(&handle.0, pe.id).map(|v| v.owner());
                if owner == Some(sender) && self.space.remove(&handle, pe.id) {
                    self.dirty.insert(handle);
                }
            }
            _ => self.enrp_stats.dropped += 1,
        }
    }

    // ---------------------------------------------------------- resync

    fn start_resync(&mut self, id: u32) {
        if self.enrp.resync.as_ref().is_some_and(|r| r.peer == id) {
            return;
        }
        if self.enrp.resync.is_some() {
            // One at a time: the handlespace has one set of marks.
            self.enrp.resync_queue.insert(id);
            return;
        }
        let Some(conn) = self.enrp.peers.get(&id).and_then(|p| p.conn) else {
            return;
        };
        self.space.hs.mark_owned_by(id);
        self.enrp.resync = Some(Resync { peer: id });
        if let Some(p) = self.enrp.peers.get_mut(&id) {
            if p.state == PeerState::Active {
                p.state = PeerState::Synchronising;
            }
        }
        self.request_table(conn, id, true);
    }

    fn end_resync(&mut self) {
        if let Some(r) = self.enrp.resync.take() {
            if let Some(p) = self.enrp.peers.get_mut(&r.peer) {
                if p.state == PeerState::Synchronising {
                    p.state = PeerState::Active;
                }
            }
        }
        self.timers.cancel(&Timer::Resync);
        while let Some(next) = self.enrp.resync_queue.pop_first() {
            if self.enrp.peers.get(&next).is_some_and(|p| p.conn.is_some()) {
                self.start_resync(next);
                break;
            }
        }
    }

    fn finish_resync(&mut self) {
        let mut swept = Vec::new();
        self.space.hs.sweep_marked(&mut swept);
        self.enrp_stats.swept += swept.len() as u64;
        for (h, _) in swept {
            self.dirty.insert(h);
        }
        self.enrp_stats.resyncs += 1;
        self.end_resync();
    }

    /// Resync timer, rejection or peer gone: unmark, keep what we have.
    pub(super) fn abort_resync(&mut self) {
        if self.enrp.resync.is_none() {
            return;
        }
        let marked: Vec<(Vec<u8>, u32)> = self
            .space
            .hs
            .iter_all()
            .filter(|v| v.is_marked())
            .map(|v| (v.handle().to_vec(), v.id()))
            .collect();
        for (h, id) in marked {
            self.space.hs.unmark(&h, id);
        }
        self.enrp_stats.resyncs_aborted += 1;
        self.end_resync();
    }

    // --------------------------------------------------------- takeover

    fn start_takeover(&mut self, target: u32) {
        if self.enrp.takeovers.contains_key(&target) {
            return;
        }
        let waiting: BTreeSet<u32> = self
            .enrp
            .peers
            .iter()
            .filter(|(id, p)| {
                **id != target
                    && p.conn.is_some()
                    && !matches!(p.state, PeerState::Dead | PeerState::Probing)
            })
            .map(|(id, _)| *id)
            .collect();
        self.enrp_stats.takeovers_started += 1;
        self.enrp.takeovers.insert(target, Takeover { waiting });
        if let Some(p) = self.enrp.peers.get_mut(&target) {
            p.acked_takeover = None;
        }
        self.group_cast(EnrpBody::InitTakeover { target }, None);
        let at = self.now + self.config.takeover_timeout;
        self.timers.set(Timer::Takeover(target), at);
        self.maybe_complete_takeover(target);
    }

    /// Takeover timer: ours did not complete, or the winner's TAKEOVER_SERVER
    /// never came: start (again) if the target is still dead.
    ///
    /// RSPLIB's rspregistrar never delivers TAKEOVER_SERVER (it sends it
    /// without a destination, and the send fails), so after acking its
    /// INIT_TAKEOVER we learn of its win only from what follows: its next
    /// presence announces a checksum with the target's PEs, our audit
    /// resyncs them to it, and the PEs' re-registrations there come as
    /// ADD_PE. So when we acked someone else's takeover and the target owns
    /// nothing any more in our view, the initiator won: we drop the target
    /// as taken over by it, as TAKEOVER_SERVER would have made us do. While
    /// a resync with the initiator is under way we wait for it. Only PEs
    /// still left with the target (the winner died, or never won) make us
    /// take over ourselves.
    pub(super) fn takeover_timer(&mut self, target: u32) {
        if self.enrp.takeovers.remove(&target).is_some() {
            self.enrp_stats.takeovers_aborted += 1;
        }
        let Some(p) = self.enrp.peers.get(&target) else {
            return;
        };
        if p.state != PeerState::Dead {
            return;
        }
        if let Some(winner) = p.acked_takeover {
            let winner_alive = self
                .enrp
                .peers
                .get(&winner)
                .is_some_and(|w| !matches!(w.state, PeerState::Dead | PeerState::Probing));
            if winner_alive {
                if self.space.hs.owned_count(target) == 0 {
                    self.enrp_stats.takeovers_applied += 1;
                    self.remove_peer(target, winner);
                    return;
                }
                let syncing = self.enrp.resync.as_ref().is_some_and(|r| r.peer == winner)
                    || self.enrp.resync_queue.contains(&winner);
                if syncing {
                    let at = self.now + self.config.takeover_timeout;
                    self.timers.set(Timer::Takeover(target), at);
                    return;
                }
            }
        }
        self.start_takeover(target);
    }

    fn on_init_takeover(&mut self, initiator: u32, target: u32) {
        if target == self.server_id {
            // Alive: say so to everyone (the initiator aborts).
            let conns: Vec<ConnId> = self.enrp.peers.values().filter_map(|p| p.conn).collect();
            for conn in conns {
                self.send_presence(conn, 0, false);
            }
            return;
        }
        if self.enrp.takeovers.contains_key(&target) {
            if self.server_id > initiator {
                return; // highest id wins: ignore theirs
            }
            self.enrp.takeovers.remove(&target);
            self.enrp_stats.takeovers_aborted += 1;
        }
        if let Some(p) = self.enrp.peers.get_mut(&target) {
            // Stop monitoring it; if the winner never finishes, our takeover
            // timer starts one of our own.
            p.state = PeerState::Dead;
            p.acked_takeover = Some(initiator);
            self.timers.cancel(&Timer::PeerCheck(target));
            self.timers.cancel(&Timer::ProbeTimeout(target));
            let at = self.now + self.config.takeover_timeout;
            self.timers.set(Timer::Takeover(target), at);
        }
        self.send_to_peer(initiator, EnrpBody::InitTakeoverAck { target });
    }

    fn maybe_complete_takeover(&mut self, target: u32) {
        if !self
            .enrp
            .takeovers
            .get(&target)
            .is_some_and(|t| t.waiting.is_empty())
        {
            return;
        }
        self.enrp.takeovers.remove(&target);
        self.timers.cancel(&Timer::Takeover(target));
        self.enrp_stats.takeovers_won += 1;
        self.group_cast(EnrpBody::TakeoverServer { target }, Some(target));
        let me = self.server_id;
        self.remove_peer(target, me);
        let mut refs = Vec::new();
        self.space.hs.take_over(target, me, &mut refs);
        let pes: Vec<(PoolHandle, PoolElement)> = refs
            .into_iter()
            .filter_map(|r| self.space.hs.element(r))
            .map(|v| (PoolHandle(v.handle().to_vec()), v.to_pool_element()))
            .collect();
        let now = self.now;
        for (handle, pe) in pes {
            self.enrp_stats.pes_taken_over += 1;
            // Ours now, with no ASAP connection: it lives for its
            // Registration Life unless it re-registers with us (its library
            // hunts for a new home when the old one dies).
            let _ = self
                .space
                .hs
                .register_ext(&handle.0, &pe, me, Expiry::Life(now));
            self.dirty.insert(handle.clone());
            let key = (handle, pe.id);
            self.owned.insert(
                key.clone(),
                Owned {
                    conn: ConnId(u64::MAX),
                    orphan: true,
                    rsplib: false,
                    awaiting_ack: false,
                    last_keep_alive: None,
                },
            );
            // An SCTP endpoint we can reach gets the H=1 keep-alive.
            if let Some(t @ Transport::Sctp { .. }) = &pe.asap_transport {
                if let Some((addr, kind)) = transport_addr(t, None) {
                    self.dial(addr, kind, Dial::KeepAlive(key));
                }
            }
        }
    }

    fn on_takeover_server(&mut self, initiator: u32, target: u32) {
        if target == self.server_id {
            // Taken over while alive (a partition): our audits and our PEs'
            // re-registrations win the PEs back.
            self.enrp_stats.dropped += 1;
            return;
        }
        self.enrp_stats.takeovers_applied += 1;
        if self.enrp.takeovers.remove(&target).is_some() {
            self.enrp_stats.takeovers_aborted += 1;
        }
        self.remove_peer(target, initiator);
        let mut refs = Vec::new();
        self.space.hs.take_over(target, initiator, &mut refs);
        for r in refs {
            if let Some(v) = self.space.hs.element(r) {
                self.dirty.insert(PoolHandle(v.handle().to_vec()));
            }
        }
    }

    /// Drop a peer from the list, remembering it was taken over by `by`.
    fn remove_peer(&mut self, id: u32, by: u32) {
        let Some(p) = self.enrp.peers.remove(&id) else {
            return;
        };
        for t in [
            Timer::PeerCheck(id),
            Timer::ProbeTimeout(id),
            Timer::Takeover(id),
        ] {
            self.timers.cancel(&t);
        }
        if self.enrp.resync.as_ref().is_some_and(|r| r.peer == id) {
            self.abort_resync();
        }
        self.enrp.resync_queue.remove(&id);
        for t in self.enrp.takeovers.values_mut() {
            t.waiting.remove(&id);
        }
        let targets: Vec<u32> = self.enrp.takeovers.keys().copied().collect();
        for t in targets {
            self.maybe_complete_takeover(t);
        }
        if let Some(conn) = p.conn {
            if let Some(c) = self.conns.get_mut(&conn) {
                c.peer = None;
            }
            self.close(conn, "ENRP peer taken over".to_string());
        }
        if self.enrp.tombstones.len() >= MAX_TOMBSTONES {
            self.enrp.tombstones.remove(0);
        }
        self.enrp.tombstones.push(Tombstone {
            id,
            addr: p.addr,
            last_heard: p.last_heard,
            by,
        });
    }

    /// Send an ASAP_ENDPOINT_KEEP_ALIVE (H flag `home`) to an owned PE and wait
    /// for the ack.
    pub(super) fn send_keep_alive(&mut self, key: (PoolHandle, u32), home: bool) {
        let now = self.now;
        let Some(o) = self.owned.get_mut(&key) else {
            return;
        };
        if o.orphan || o.awaiting_ack {
            return;
        }
        o.awaiting_ack = true;
        o.last_keep_alive = Some(now);
        let with_id = match self.config.keep_alive_pe_id {
            super::KeepAlivePeId::Always => true,
            super::KeepAlivePeId::Never => false,
            super::KeepAlivePeId::Auto => o.rsplib,
        };
        let conn = o.conn;
        let msg = AsapMessage::EndpointKeepAlive {
            home,
            server_id: self.server_id,
            pool_handle: key.0.clone(),
            pe_id: with_id.then_some(key.1),
        };
        self.stats.keep_alives_sent += 1;
        self.send_asap(conn, &msg);
        self.timers.set(
            Timer::KeepAliveTimeout(key),
            now + self.config.keep_alive_timeout,
        );
    }
}

/// Shortest period of the periodic ENRP timers (a zero configuration value
/// must not spin).
const MIN_PERIOD: std::time::Duration = std::time::Duration::from_millis(1);

pub(super) fn min_period(d: std::time::Duration) -> std::time::Duration {
    d.max(MIN_PERIOD)
}
