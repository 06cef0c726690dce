//! The registrar (ENRP server) core, ASAP server side: sans-IO.
//!
//! [`Registrar`] owns the handlespace and all per-connection and per-PE state.
//! It does no I/O, reads no clock and spawns nothing; randomness comes from a
//! PRNG seeded by the caller. The runtime drives it with four method families
//! (quinn's pattern, STYLE.md §2):
//!
//! - getters: [`Registrar::server_id`], [`Registrar::stats`],
//!   [`Registrar::pool_elements`], [`Registrar::peers`],
//!   [`Registrar::startup_state`], [`Registrar::enrp_stats`], ...;
//! - `handle_*`: network and timer input ([`Registrar::handle_connected`],
//!   [`Registrar::handle_message`], [`Registrar::handle_closed`],
//!   [`Registrar::handle_timeout`], [`Registrar::handle_connect_failed`],
//!   [`Registrar::handle_multicast`]);
//! - `poll_*`: after **every** `handle_*` call drain [`Registrar::poll_output`]
//!   until `None`, then arm a timer for [`Registrar::poll_timeout`].
//!
//! Time only moves forward; a `now` earlier than one already seen is treated as
//! that one. Calling `handle_timeout` early is harmless.
//!
//! # Behaviour (digest §9.1-§9.8)
//!
//! - ASAP_REGISTRATION: validity and pool-consistency checks (causes 0x3,
//!   0x5, 0x7, 0x8), resource limits (0x6), PE-ID conflicts (0x4: the ID is held
//!   by a live registration on another connection, and the new one has another
//!   user transport or comes from none of the old connection's addresses). The PE's home becomes this server and its ASAP transport is
//!   the connection's remote side. Always answered.
//! - ASAP_DEREGISTRATION: answered; an unknown PE is a success. Lifetime expiry
//!   sends an unsolicited ASAP_DEREGISTRATION_RESPONSE.
//! - ASAP_HANDLE_RESOLUTION: the pool's policy picks the PEs; Overall Policy is
//!   always present (RSPLIB needs it); S=1 subscribes the connection to the
//!   pool, and every change of the pool pushes an unsolicited response (A=1),
//!   at most one per pool and connection per `handle_*` call.
//! - Keep-alives to owned PEs, probes after ASAP_ENDPOINT_UNREACHABLE, removal
//!   on missing acks, on too many reports, and on connection loss.
//! - ENRP_HANDLE_TABLE_REQUEST (PPID 12) is answered with chunked
//!   ENRP_HANDLE_TABLE_RESPONSEs (M flag, resumable cursor per connection).
//! - Defences: per-connection token buckets (over the limit: dropped silently
//!   and counted, as RSPLIB does), PE and subscription limits, a malformed
//!   message threshold and an idle timeout (both close the connection). A
//!   hostile message costs at most its own connection.
//!
//! # Documented choices
//!
//! - **Registration Life** unit: a switch ([`RegLifeUnit`]), seconds by default.
//!   The Home ENRP Server Identifier a PE sends is ignored (0 or anything);
//!   a non-zero one marks the PE as RSPLIB-like for [`KeepAlivePeId::Auto`].
//! - **Re-registration from another connection** moves the PE there only if
//!   the old connection is gone, or the new one shares a host address with the
//!   old ASAP transport and the user transport is unchanged; otherwise 0x4.
//!   Nothing in ASAP authenticates PEs, so this keeps a stranger from taking a
//!   live PE over by guessing its id.
//! - **Deregistration** is honoured only from the PE's registration
//!   connection, or from anyone once that connection is gone (0xa otherwise).
//!   A PE another server is home of (a PE whose home died hunts and sends its
//!   deregistration to a survivor) is announced as ours (ADD_PE) and then
//!   removed (DEL_PE), so every peer drops it; registering it here would move
//!   it to us just the same.
//! - **Subscriptions**: a pushed response is built like an answer to the
//!   original request (same item count). When a subscribed pool disappears the
//!   push is a negative response (cause 0x9) with A=1, and the subscription
//!   stays, so the subscriber hears when the pool comes back. A negative
//!   answer to the request itself starts no subscription (RFC 5352).
//! - **Keep-alives**: every [`RegistrarConfig::keep_alive_interval`] ±50 % per
//!   PE, never closer than [`RegistrarConfig::keep_alive_min_gap`]; a
//!   (re-)registration counts as proof of life and restarts the schedule.
//!   Only an ack on the PE's own registration connection counts.
//! - **Unreachable reports**: with `probe_unreachable` (default) the PE is
//!   probed at once (H=0) and removed if the probe goes unanswered or cannot be
//!   sent; independently it is removed once its report count exceeds
//!   `max_bad_pe_reports`. RSPLIB only counts ([`RegistrarConfig::rsplib_profile`]).
//! - **Malformed input** (broken framing, nothing to report) is counted and
//!   dropped; past `max_malformed` the connection is closed. A registration
//!   whose values the codec refuses is still answered with a registration
//!   response (R=1, cause 0x3) when its handle and PE id can be read.
//! - **PPID 0** on a TCP connection is taken as ASAP (a TCP-mapping peer that
//!   leaves the PPID out); any other unknown PPID is dropped.
//! - **Server announce**: every `announce_interval` when set, not yet scaled by
//!   the number of other announcing servers.
//!
//! # ENRP (RFC 5353, digest §9.9-§9.14; code in `enrp.rs`)
//!
//! - **Connections**: the core dials peers itself with [`Output::Connect`],
//!   picking ids with [`CORE_CONN_BIT`] set; the runtime answers
//!   `handle_connected` or [`Registrar::handle_connect_failed`]. Any
//!   connection becomes a peer connection when an ENRP message from a server
//!   arrives on it (no listener marking needed). A peer is answered on the
//!   connection it last spoke on (an older, half-open one may be dead).
//! - **Start-up**: the first configured peer is the mentor, the others
//!   backups. We send a reply-required presence (so it knows us), then
//!   ENRP_LIST_REQUEST (peers seeded from the answer and dialled), then
//!   ENRP_HANDLE_TABLE_REQUEST W=0, one per M=1 chunk, each under
//!   MAX-TIME-NO-RESPONSE. Timeout, connect failure or R=1 moves to the next
//!   mentor (R=1 waits `mentor_retry_interval`); after one round without
//!   success we are alone. Configured peers are redialled every
//!   `peer_reconnect_interval`; the audit syncs us once they answer.
//!   **ASAP is served from the start** (RSPLIB does so; the RFC waits for the
//!   download): a PE registering meanwhile is fine, resolutions may miss
//!   PEs for the few round trips of the download. We therefore **never
//!   reject** list or table requests (R=1): we always have something to say.
//! - **Learnt PEs** get no expiry of ours (`Expiry::Never`): they live until
//!   DEL_PE, a takeover or a resync removes them; their owner is the PE's
//!   home id (the sender if 0). Entries claiming we own a PE we do not track
//!   are ignored, as are PEs owned by a server that was taken over. An owner
//!   id we never heard of becomes a peer without address: if it never speaks
//!   it is probed, declared dead and taken over, so its PEs cannot linger.
//! - **Handle updates**: ADD_PE after every granted (re-)registration, DEL_PE
//!   after every removal of a PE we own (deregistration, expiry, keep-alive
//!   failure, unreachable removal, connection loss) and ADD_PE + DEL_PE
//!   after deregistering another server's PE, one copy per connected
//!   peer with receiver id 0. Received ADD_PE adds or replaces; if we owned
//!   the PE we lose it (no more keep-alives, its connection forgets it).
//!   Received DEL_PE is applied only when the sender is the PE's current
//!   owner in our view, so a late DEL_PE from a former home cannot delete a
//!   PE that moved on. The T flag is accepted and ignored; we never send it.
//! - **Presence**: every PEER-HEARTBEAT-CYCLE to every connected peer, with
//!   our own-PE checksum and Server Information (`enrp_transport`, or the
//!   connection's local address). Reply-required presences are answered.
//!   Any message (except list/table requests and errors, which tools send
//!   too) from an unknown server adds it and asks it for a presence. We
//!   accept receiver id 0 or ours (RSPLIB sets it), and drop others.
//! - **Failure detection**: after MAX-TIME-LAST-HEARD of silence (or when the
//!   last connection to a peer closes) a reply-required presence goes out
//!   (dialling first if needed); no answer within MAX-TIME-NO-RESPONSE: dead.
//! - **Audit**: a presence checksum different from ours for that sender
//!   starts a W=1 resync at once (after start-up): mark its PEs, download
//!   its own PEs chunk by chunk, replace/insert (which unmarks), sweep. One
//!   resync at a time (the handlespace has one set of marks; others queue);
//!   a timeout, R=1 or the peer's death aborts and unmarks. Resync entries do
//!   not override a PE we own with a live registration (ADD_PE does).
//! - **Takeover**: INIT_TAKEOVER to every connected peer, target included;
//!   acks awaited from every connected peer not dead or probing (peers that
//!   die meanwhile are dropped from the wait). A presence from the target
//!   aborts. Concurrent takeovers: highest id wins. All acks: TAKEOVER_SERVER
//!   to the others, the target is dropped (kept as a "taken-over" tombstone
//!   for dumps), its PEs become ours **with an expiry from their
//!   Registration Life** and no connection; a PE confirms by re-registering
//!   here (its library hunts when its home dies), otherwise it expires and
//!   DEL_PE goes out. A PE whose ASAP transport is SCTP is dialled
//!   ([`Output::Connect`] with [`ConnKind::Sctp`]) and sent a keep-alive with
//!   H=1 on the new association. A takeover not completed within
//!   `takeover_timeout` starts over while the target stays dead. After we
//!   acked someone else's, the same timeout without TAKEOVER_SERVER makes us
//!   take over only if the target still owns PEs in our view: RSPLIB never
//!   delivers TAKEOVER_SERVER, and its win shows instead as its new presence
//!   checksum, which our audit follows (the target is then dropped as taken
//!   over by the initiator; a resync with the initiator still running is
//!   waited for).
//! - **SCTP peers** are dialled from our ENRP endpoint (every address of it,
//!   its port: [`Output::Connect::local`](Output::Connect)), because RSPLIB
//!   ignores a presence whose Server Information port is not the
//!   association's.
//! - **ENRP_ERROR** for unrecognised messages/parameters per their action
//!   bits (the codec's reports).
//! - **Presence multicast** (opt-in, [`RegistrarConfig::enrp_multicast`];
//!   RFC 5351 §3.1 mentions it, RFC 5353 does not specify it, RSPLIB does
//!   it): at start and every PEER-HEARTBEAT-CYCLE an ENRP_PRESENCE with our
//!   checksum and Server Information (`enrp_transport`; none is sent without
//!   one) goes out as [`Output::EnrpMulticast`], a bare ENRP message per UDP
//!   datagram, receiver id 0. [`Registrar::handle_multicast`] takes the
//!   group's datagrams: a presence from an unknown server (receiver 0 or
//!   us) adds it as a peer at the endpoint its Server Information names
//!   (unspecified or no address: the datagram's source) and dials it; on
//!   connection the usual presence exchange starts the checksum audit
//!   (W=1 resyncs both ways) and an ENRP_LIST_REQUEST brings its peers.
//!   The group only introduces servers: a known peer's liveness, checksum
//!   and address are judged over unicast (anyone can send to a group), except
//!   that a peer without an address gets one and a peer without a connection
//!   is dialled. Our own presences (looped back), other messages, malformed
//!   datagrams and those over `multicast_rate` are counted and dropped.

mod config;
mod enrp;
mod space;
mod util;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;

pub use config::{KeepAlivePeId, RateLimit, RegLifeUnit, RegistrarConfig};
pub use enrp::{EnrpStats, PeerInfo, PeerState, StartupState, CORE_CONN_BIT};

use crate::timers::Timers;
use space::{PeKey, Space};
use util::{Rng, TokenBucket};

use crate::handlespace::{self, Cursor, Handlespace, InvalidField, RegisterError, RejectInfo};
use crate::time::Time;
use crate::wire::param::param_bytes;
use crate::wire::{
    asap_type, cause, transport_use, AsapMessage, DecodeError, EnrpBody, EnrpMessage, ErrorCause,
    Param, PoolElement, PoolHandle, Transport, UpdateAction, MAX_LENGTH,
};

/// SCTP payload protocol identifier of ASAP.
pub const PPID_ASAP: u32 = 11;
/// SCTP payload protocol identifier of ENRP.
pub const PPID_ENRP: u32 = 12;

/// A connection, named by the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// The transport of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ConnKind {
    /// TCP with the TCP mapping shim.
    Tcp,
    /// An SCTP association.
    Sctp,
}

/// What the runtime knows about a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// TCP or SCTP.
    pub kind: ConnKind,
    /// The peer's addresses (all of them for SCTP; the first one's port is used).
    pub remote: Vec<SocketAddr>,
    /// Our address on this connection.
    pub local: SocketAddr,
}

/// Something for the runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send one whole message on a connection.
    Send {
        /// The connection.
        conn: ConnId,
        /// 11 for ASAP, 12 for ENRP.
        ppid: u32,
        /// The message bytes.
        msg: Vec<u8>,
    },
    /// Close a connection; the runtime then calls [`Registrar::handle_closed`].
    Close {
        /// The connection.
        conn: ConnId,
        /// Why, for the log.
        reason: String,
    },
    /// Multicast this ASAP_SERVER_ANNOUNCE (UDP, the ASAP announce group).
    Announce {
        /// The message bytes.
        msg: Vec<u8>,
    },
    /// Send this ENRP message (an ENRP_PRESENCE) as one UDP datagram to the
    /// ENRP multicast group, without any framing (only with
    /// [`RegistrarConfig::enrp_multicast`]).
    EnrpMulticast {
        /// The message bytes.
        msg: Vec<u8>,
    },
    /// Open a connection (to an ENRP peer, or to a taken-over PE's SCTP
    /// endpoint). The core picked `conn` with [`CORE_CONN_BIT`] set, so it never
    /// collides with the runtime's ids for accepted connections (bit 63 clear).
    /// Answer with [`Registrar::handle_connected`] (same `conn`) or
    /// [`Registrar::handle_connect_failed`].
    Connect {
        /// The id the connection will have.
        conn: ConnId,
        /// Where to connect (an ENRP endpoint, or a PE's ASAP endpoint).
        addr: SocketAddr,
        /// TCP (with the TCP mapping) or SCTP, as the peer's transport says.
        kind: ConnKind,
        /// Local addresses (all with one port) to open the connection from;
        /// empty: the system's choice. Set for SCTP ENRP peers when our own
        /// ENRP endpoint ([`RegistrarConfig::enrp_transport`]) is SCTP: the
        /// association then starts from the port our Server Information
        /// names, which RSPLIB checks (it ignores a presence whose ENRP port
        /// differs from the association's). If the bind fails the runtime
        /// connects unbound.
        local: Vec<SocketAddr>,
    },
}

/// Counters, for monitoring and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistrarStats {
    /// Registrations granted (new PEs).
    pub registrations: u64,
    /// Re-registrations granted (known PEs).
    pub reregistrations: u64,
    /// Registrations rejected (any cause).
    pub registration_rejections: u64,
    /// Deregistrations answered (known or unknown PE).
    pub deregistrations: u64,
    /// Deregistrations refused (not the owner's connection).
    pub deregistration_rejections: u64,
    /// PEs removed because their lifetime ran out.
    pub expiries: u64,
    /// Handle resolutions answered positively.
    pub resolutions: u64,
    /// Handle resolutions for unknown pools (cause 0x9).
    pub resolution_failures: u64,
    /// Subscriptions accepted.
    pub subscriptions: u64,
    /// Unsolicited handle resolution responses pushed to subscribers.
    pub subscription_pushes: u64,
    /// Keep-alives sent (periodic and probes).
    pub keep_alives_sent: u64,
    /// Keep-alive acks that matched an owned PE.
    pub keep_alive_acks: u64,
    /// PEs removed for a missing keep-alive ack.
    pub keep_alive_failures: u64,
    /// Unreachable reports processed.
    pub unreachable_reports: u64,
    /// PEs removed after unreachable reports (count over the limit or failed probe).
    pub unreachable_removals: u64,
    /// PEs removed because their connection closed.
    pub connection_loss_removals: u64,
    /// Requests dropped by a rate limit.
    pub rate_limited: u64,
    /// Malformed messages (dropped).
    pub malformed: u64,
    /// Connections closed for too many malformed messages.
    pub malformed_closes: u64,
    /// Connections closed for idleness.
    pub idle_closes: u64,
    /// Messages a registrar never expects (responses, cookies, ...), ignored.
    pub unexpected: u64,
    /// Messages dropped silently (unknown type/parameter with action `00`,
    /// unknown PPID, unknown connection).
    pub dropped: u64,
    /// ASAP_ERROR / ENRP_ERROR messages sent.
    pub errors_sent: u64,
    /// ASAP_ERROR / ENRP_ERROR messages received.
    pub errors_received: u64,
    /// ENRP_HANDLE_TABLE_RESPONSE chunks sent.
    pub handle_table_responses: u64,
    /// Unused since ENRP peering exists (kept for compatibility; see
    /// [`Registrar::enrp_stats`]).
    pub enrp_ignored: u64,
    /// Server announces produced.
    pub announces: u64,
}

/// Timers of the core, one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// Send the next keep-alive (or a delayed probe) to an owned PE.
    KeepAlive(PeKey),
    /// The keep-alive ack is overdue: remove the PE.
    KeepAliveTimeout(PeKey),
    /// Check a connection for idleness.
    Idle(ConnId),
    /// Drop a connection's handle-table cursor.
    TableSession(ConnId),
    /// Send a server announce.
    Announce,
    /// ENRP: send a presence to every peer (PEER-HEARTBEAT-CYCLE).
    Heartbeat,
    /// ENRP: reconnect to configured peers that are not connected.
    Redial,
    /// ENRP: next start-up step, or the current one timed out.
    Startup,
    /// ENRP: has this peer been silent for MAX-TIME-LAST-HEARD?
    PeerCheck(u32),
    /// ENRP: the probe of this peer went unanswered.
    ProbeTimeout(u32),
    /// ENRP: the W=1 resync request went unanswered.
    Resync,
    /// ENRP: takeover of this peer (ours, or one we acked) timed out.
    Takeover(u32),
    /// ENRP: send a presence to the multicast group.
    MulticastPresence,
}

/// A handle-table download in progress on one connection.
#[derive(Debug, Clone)]
struct TableCursor {
    own_only: bool,
    resume: Cursor,
}

#[derive(Debug)]
struct Conn {
    info: ConnInfo,
    /// Close requested: ignore further input.
    closing: bool,
    last_heard: Time,
    malformed: u32,
    resolution_bucket: TokenBucket,
    unreachable_bucket: TokenBucket,
    /// PEs registered over this connection.
    owned: BTreeSet<PeKey>,
    /// Subscribed pools and the item count asked for.
    subscriptions: BTreeMap<PoolHandle, u32>,
    table: Option<TableCursor>,
    /// The ENRP peer speaking on this connection, once known.
    peer: Option<u32>,
    /// For connections we initiated to an ENRP endpoint: its address.
    dialed: Option<SocketAddr>,
}

/// Per-PE state of the PEs this server owns.
#[derive(Debug)]
struct Owned {
    /// The registration connection.
    conn: ConnId,
    /// The connection is gone (only with `remove_on_connection_loss` off).
    orphan: bool,
    /// Looks like RSPLIB (non-zero home id in its registration).
    rsplib: bool,
    /// An ack is awaited (a keep-alive or probe is out).
    awaiting_ack: bool,
    last_keep_alive: Option<Time>,
}

/// Why a PE leaves the handlespace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    Deregistered,
    KeepAliveTimeout,
    Unreachable,
    ConnectionLoss,
}

/// The ASAP side of a registrar. See the [module documentation](self).
#[derive(Debug)]
pub struct Registrar {
    config: RegistrarConfig,
    server_id: u32,
    rng: Rng,
    now: Time,
    space: Space,
    conns: BTreeMap<ConnId, Conn>,
    owned: BTreeMap<PeKey, Owned>,
    /// Subscribers per pool.
    subscribers: BTreeMap<PoolHandle, BTreeSet<ConnId>>,
    /// Pools changed during the current `handle_*` call.
    dirty: BTreeSet<PoolHandle>,
    timers: Timers<Timer>,
    out: VecDeque<Output>,
    stats: RegistrarStats,
    enrp: enrp::Enrp,
    enrp_stats: EnrpStats,
}

/// Room for the fixed parts of a handle-table response (header, ids) and
/// some slack: chunks are cut before the message would pass 65535 bytes.
const TABLE_BYTES: usize = MAX_LENGTH - 64;

impl Registrar {
    /// A registrar with identifier `server_id` (RFC 5353: random, non-zero,
    /// fixed for the server's lifetime), a PRNG seed and the current time.
    ///
    /// The seed drives keep-alive jitter, the random policies and the keys of
    /// the handlespace's hash maps (which take handles and ids from the
    /// network): give it a secret random value in production, a fixed one in
    /// tests.
    pub fn new(config: RegistrarConfig, server_id: u32, rng_seed: u64, now: Time) -> Self {
        let mut rng = Rng::new(rng_seed);
        let config_multicast_rate = config.multicast_rate;
        let hs_config = handlespace::Config {
            reg_life_unit: config.reg_life_unit,
            expiry_granularity: config.expiry_granularity,
            max_pools: config.max_pools,
            max_pes_per_pool: config.max_pes_per_pool,
            max_pes: config.max_pes_total,
            seed: rng.next_u64(),
            hash_seed: rng.next_u64(),
        };
        let mut r = Registrar {
            config,
            server_id,
            rng,
            now,
            space: Space::new(hs_config),
            conns: BTreeMap::new(),
            owned: BTreeMap::new(),
            subscribers: BTreeMap::new(),
            dirty: BTreeSet::new(),
            timers: Timers::default(),
            out: VecDeque::new(),
            stats: RegistrarStats::default(),
            enrp: enrp::Enrp::new(false, config_multicast_rate, now),
            enrp_stats: EnrpStats::default(),
        };
        if r.config.enrp_multicast {
            r.timers.set(Timer::MulticastPresence, now);
        }
        if r.config.announce_interval.is_some() {
            r.timers.set(Timer::Announce, now);
        }
        if !r.config.peers.is_empty() {
            r.enrp = enrp::Enrp::new(true, config_multicast_rate, now);
            // Start-up begins at the first handle_timeout (poll_timeout says now).
            r.timers.set(Timer::Startup, now);
            r.timers.set(
                Timer::Redial,
                now + enrp::min_period(r.config.peer_reconnect_interval),
            );
        }
        r
    }

    // ------------------------------------------------------------- getters

    /// This server's identifier.
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// The configuration in use.
    pub fn config(&self) -> &RegistrarConfig {
        &self.config
    }

    /// A copy of the counters.
    pub fn stats(&self) -> RegistrarStats {
        self.stats.clone()
    }

    /// Number of PEs in the handlespace.
    pub fn pe_count(&self) -> usize {
        self.space.len()
    }

    /// The handlespace, for dumps, statistics and tests.
    pub fn handlespace(&self) -> &Handlespace {
        &self.space.hs
    }

    /// One PE, as stored (home and ASAP transport filled in).
    pub fn pool_element(&self, handle: &PoolHandle, pe_id: u32) -> Option<PoolElement> {
        self.space.get(handle, pe_id)
    }

    /// Every pool with its PEs, in handle and PE-id order.
    pub fn pool_elements(&self) -> Vec<(PoolHandle, Vec<PoolElement>)> {
        self.space.pools()
    }

    /// The connection a PE registered over, if this server owns it.
    pub fn owner_connection(&self, handle: &PoolHandle, pe_id: u32) -> Option<ConnId> {
        self.owned
            .get(&(handle.clone(), pe_id))
            .filter(|o| !o.orphan)
            .map(|o| o.conn)
    }

    // ----------------------------------------------------------- poll_*

    /// The next output, if any. Drain after every `handle_*` call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Time> {
        match (self.timers.next(), self.space.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---------------------------------------------------------- handle_*

    /// A connection (SCTP association or TCP connection) was accepted, or one
    /// the core asked for with [`Output::Connect`] is up.
    pub fn handle_connected(&mut self, conn: ConnId, info: ConnInfo, now: Time) {
        self.advance(now);
        let now = self.now;
        // A reused id: forget the old one first.
        if self.conns.contains_key(&conn) {
            self.drop_conn(conn);
        }
        self.conns.insert(
            conn,
            Conn {
                info,
                closing: false,
                last_heard: now,
                malformed: 0,
                resolution_bucket: TokenBucket::new(self.config.resolution_rate, now),
                unreachable_bucket: TokenBucket::new(self.config.unreachable_rate, now),
                owned: BTreeSet::new(),
                subscriptions: BTreeMap::new(),
                table: None,
                peer: None,
                dialed: None,
            },
        );
        self.arm_idle(conn, now);
        self.enrp_connected(conn);
        self.flush();
    }

    /// A connection is gone (closed by the peer, failed, or after
    /// [`Output::Close`]). Its subscriptions end; its PEs are removed unless
    /// `remove_on_connection_loss` is off.
    pub fn handle_closed(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        self.drop_conn(conn);
        self.flush();
    }

    /// One whole message arrived on `conn` with payload protocol `ppid`
    /// (11 ASAP, 12 ENRP; 0 on a TCP connection is taken as ASAP, for a TCP
    /// mapping peer that leaves the PPID out).
    pub fn handle_message(&mut self, conn: ConnId, ppid: u32, msg: &[u8], now: Time) {
        self.advance(now);
        let now = self.now;
        let kind = match self.conns.get_mut(&conn) {
            Some(c) if !c.closing => {
                c.last_heard = now;
                c.info.kind
            }
            _ => {
                self.stats.dropped += 1;
                return;
            }
        };
        match ppid {
            PPID_ASAP => self.on_asap(conn, msg),
            0 if kind == ConnKind::Tcp => self.on_asap(conn, msg),
            PPID_ENRP => self.on_enrp(conn, msg),
            _ => self.stats.dropped += 1,
        }
        self.flush();
    }

    /// Run every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        let now = self.now;
        for (handle, pe) in self.space.expire(now) {
            self.stats.expiries += 1;
            if pe.home == self.server_id {
                self.broadcast_update(UpdateAction::DEL_PE, handle.clone(), pe.clone());
            }
            let key = (handle.clone(), pe.id);
            if let Some(o) = self.forget_owned(&key) {
                if !o.orphan {
                    let msg = AsapMessage::DeregistrationResponse {
                        pool_handle: handle.clone(),
                        pe_id: pe.id,
                        error: None,
                    };
                    self.send_asap(o.conn, &msg);
                }
            }
            self.dirty.insert(handle);
        }
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::KeepAlive(key) => self.send_keep_alive(key, false),
                Timer::KeepAliveTimeout(key) => {
                    if self.owned.get(&key).is_some_and(|o| o.awaiting_ack) {
                        self.stats.keep_alive_failures += 1;
                        self.remove_pe(&key, Removal::KeepAliveTimeout);
                    }
                }
                Timer::Idle(conn) => self.idle_check(conn),
                Timer::TableSession(conn) => {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.table = None;
                    }
                }
                Timer::Announce => self.announce(),
                Timer::Heartbeat => self.heartbeat(),
                Timer::Redial => self.redial(),
                Timer::Startup => self.startup_timer(),
                Timer::PeerCheck(id) => self.peer_check(id),
                Timer::ProbeTimeout(id) => self.probe_timeout(id),
                Timer::Resync => self.abort_resync(),
                Timer::Takeover(id) => self.takeover_timer(id),
                Timer::MulticastPresence => self.multicast_presence(),
            }
        }
        self.flush();
    }

    // ---------------------------------------------------------- internals

    fn advance(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    fn push(&mut self, o: Output) {
        self.out.push_back(o);
    }

    fn send_asap(&mut self, conn: ConnId, msg: &AsapMessage) {
        self.push(Output::Send {
            conn,
            ppid: PPID_ASAP,
            msg: msg.to_bytes(),
        });
    }

    fn send_asap_error(&mut self, conn: ConnId, causes: Vec<ErrorCause>) {
        self.stats.errors_sent += 1;
        let msg = AsapMessage::Error(fit_causes(causes));
        self.send_asap(conn, &msg);
    }

    fn close(&mut self, conn: ConnId, reason: String) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if !c.closing {
                c.closing = true;
                self.push(Output::Close { conn, reason });
            }
        }
    }

    fn arm_idle(&mut self, conn: ConnId, from: Time) {
        if !self.config.idle_timeout.is_zero() {
            self.timers
                .set(Timer::Idle(conn), from + self.config.idle_timeout);
        }
    }

    fn idle_check(&mut self, conn: ConnId) {
        let now = self.now;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let due = c.last_heard + self.config.idle_timeout;
        if c.closing {
            return;
        }
        if !c.owned.is_empty()
            || !c.subscriptions.is_empty()
            || c.table.is_some()
            || c.peer.is_some()
        {
            // Busy connections are never idle; look again later.
            self.arm_idle(conn, now);
        } else if due <= now {
            self.stats.idle_closes += 1;
            self.close(conn, "idle".to_string());
        } else {
            self.timers.set(Timer::Idle(conn), due);
        }
    }

    /// Send the pushes owed to subscribers of the pools changed in this call.
    fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for handle in dirty {
            let Some(subs) = self.subscribers.get(&handle) else {
                continue;
            };
            let subs: Vec<ConnId> = subs.iter().copied().collect();
            for conn in subs {
                let items = self
                    .conns
                    .get(&conn)
                    .filter(|c| !c.closing)
                    .and_then(|c| c.subscriptions.get(&handle).copied());
                let Some(items) = items else { continue };
                let msg = self.resolution_response(&handle, items, true);
                self.stats.subscription_pushes += 1;
                self.send_asap(conn, &msg);
            }
        }
    }

    /// The number of PEs a resolution asking for `items` gets.
    fn item_count(&self, items: u32) -> usize {
        let n = match items {
            0 => self.config.default_items,
            u32::MAX => self.config.max_items,
            n => n.min(self.config.max_items),
        };
        usize::try_from(n.max(1)).unwrap_or(usize::MAX)
    }

    /// A handle resolution response for `handle` (negative with 0x9 if the
    /// pool is unknown), trimmed to fit one message.
    fn resolution_response(
        &mut self,
        handle: &PoolHandle,
        items: u32,
        accepted: bool,
    ) -> AsapMessage {
        let n = self.item_count(items);
        match self.space.select(handle, n) {
            Some((policy, mut elements)) => {
                let mut size = 4 + handle.param_len() + policy.param_len();
                let fits = elements
                    .iter()
                    .take_while(|pe| {
                        size += pe.param_len();
                        size <= MAX_LENGTH
                    })
                    .count();
                elements.truncate(fits);
                AsapMessage::HandleResolutionResponse {
                    accepted,
                    pool_handle: handle.clone(),
                    policy: Some(policy),
                    elements,
                    error: None,
                }
            }
            None => AsapMessage::HandleResolutionResponse {
                accepted,
                pool_handle: handle.clone(),
                policy: None,
                elements: Vec::new(),
                error: Some(vec![ErrorCause::new(cause::UNKNOWN_POOL_HANDLE)]),
            },
        }
    }

    // ------------------------------------------------------------- ASAP

    fn on_asap(&mut self, conn: ConnId, bytes: &[u8]) {
        let d = match AsapMessage::decode(bytes) {
            Ok(d) => d,
            Err(e) => return self.on_decode_error(conn, bytes, e, false),
        };
        if !d.unrecognized.is_empty() {
            self.send_asap_error(conn, d.unrecognized);
        }
        match d.msg {
            AsapMessage::Registration { pool_handle, pe } => {
                self.on_registration(conn, pool_handle, pe)
            }
            AsapMessage::Deregistration { pool_handle, pe_id } => {
                self.on_deregistration(conn, pool_handle, pe_id)
            }
            AsapMessage::HandleResolution {
                subscribe,
                pool_handle,
                items,
            } => self.on_resolution(conn, subscribe, pool_handle, items.unwrap_or(0)),
            AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id } => {
                self.on_keep_alive_ack(conn, pool_handle, pe_id)
            }
            AsapMessage::EndpointUnreachable { pool_handle, pe_id } => {
                self.on_unreachable(conn, pool_handle, pe_id)
            }
            AsapMessage::Error(_) => self.stats.errors_received += 1,
            AsapMessage::RegistrationResponse { .. }
            | AsapMessage::DeregistrationResponse { .. }
            | AsapMessage::HandleResolutionResponse { .. }
            | AsapMessage::EndpointKeepAlive { .. }
            | AsapMessage::ServerAnnounce { .. }
            | AsapMessage::Cookie(_)
            | AsapMessage::CookieEcho(_)
            | AsapMessage::BusinessCard { .. } => self.stats.unexpected += 1,
        }
    }

    /// A message that did not decode: answer what the codec says to report,
    /// drop silent ones, count malformed ones and close the connection past
    /// the threshold. A registration with an invalid value is still answered
    /// with a registration response (R=1, cause 0x3) when its pool handle and
    /// PE id can be read.
    fn on_decode_error(&mut self, conn: ConnId, bytes: &[u8], e: DecodeError, enrp: bool) {
        if let Some(report) = e.report() {
            if !enrp
                && report.code == cause::INVALID_VALUES
                && bytes.first() == Some(&asap_type::REGISTRATION)
            {
                if let Some((pool_handle, pe_id)) = salvage_registration(bytes) {
                    self.stats.registration_rejections += 1;
                    let msg = AsapMessage::RegistrationResponse {
                        reject: true,
                        pool_handle,
                        pe_id,
                        error: Some(fit_causes(vec![report])),
                    };
                    return self.send_asap(conn, &msg);
                }
            }
            if enrp {
                self.send_enrp_error(conn, bytes, report);
            } else {
                self.send_asap_error(conn, vec![report]);
            }
            return;
        }
        if e.is_silent_drop() {
            self.stats.dropped += 1;
            return;
        }
        self.stats.malformed += 1;
        let limit = self.config.max_malformed;
        let over = match self.conns.get_mut(&conn) {
            Some(c) => {
                c.malformed = c.malformed.saturating_add(1);
                c.malformed > limit
            }
            None => false,
        };
        if over {
            self.stats.malformed_closes += 1;
            self.close(conn, format!("too many malformed messages (last: {e})"));
        }
    }

    fn on_registration(&mut self, conn: ConnId, pool_handle: PoolHandle, pe: PoolElement) {
        let pe_id = pe.id;
        let key = (pool_handle.clone(), pe_id);
        let rsplib = pe.home != 0;
        let mut stored = pe.clone();
        stored.home = self.server_id;
        stored.asap_transport = self.conns.get(&conn).and_then(|c| asap_transport(&c.info));
        let before = self.space.get(&pool_handle, pe_id);
        let result = self
            .check_registration(conn, &key, &stored, before.as_ref())
            .and_then(|()| {
                self.space
                    .register(&pool_handle, &stored, self.server_id, self.now)
                    .map_err(|e| reject_cause(e, &pool_handle, &pe))
            });
        let error = match result {
            Ok(r) => {
                if r.new {
                    self.stats.registrations += 1;
                } else {
                    self.stats.reregistrations += 1;
                }
                // Push to subscribers only if what they would see changed.
                if before.as_ref() != Some(&stored) {
                    self.dirty.insert(pool_handle.clone());
                }
                self.take_ownership(conn, key, rsplib);
                // RFC 5353 §3.3: tell the peers, complete with home and ASAP
                // transport.
                if let Some(full) = self.space.get(&pool_handle, pe_id) {
                    self.broadcast_update(UpdateAction::ADD_PE, pool_handle.clone(), full);
                }
                None
            }
            Err(c) => {
                self.stats.registration_rejections += 1;
                Some(fit_causes(vec![c]))
            }
        };
        let msg = AsapMessage::RegistrationResponse {
            reject: error.is_some(),
            pool_handle,
            pe_id,
            error,
        };
        self.send_asap(conn, &msg);
    }

    /// Checks that need the connection or go beyond the handlespace's own
    /// (which does 0x3 on the fields, 0x5, 0x7, 0x8 and the pool and total
    /// limits).
    fn check_registration(
        &self,
        conn: ConnId,
        key: &PeKey,
        pe: &PoolElement,
        before: Option<&PoolElement>,
    ) -> Result<(), ErrorCause> {
        // Addresses nobody can reach the PE at (0x3 with the transport TLV).
        let t = &pe.user_transport;
        if t.port() == Some(0) || t.addrs().iter().any(unusable_address) {
            return Err(ErrorCause::with_info(cause::INVALID_VALUES, param_bytes(t)));
        }
        let owner = self.owned.get(key);
        if let (Some(o), Some(old)) = (owner, before) {
            // The ID is held by a live registration on another connection. The
            // same PE on a new association (same user transport, from a host
            // address the old one used) may move; anything else is two PEs
            // with one ID, or a hijack attempt.
            if o.conn != conn && !o.orphan {
                let same_host = match (&old.asap_transport, &pe.asap_transport) {
                    (Some(a), Some(b)) => a.addrs().iter().any(|x| b.addrs().contains(x)),
                    _ => true,
                };
                if !same_host || old.user_transport != pe.user_transport {
                    return Err(ErrorCause::new(cause::NON_UNIQUE_PE_ID));
                }
            }
        }
        let same_conn = owner.is_some_and(|o| o.conn == conn && !o.orphan);
        if !same_conn {
            let n = self.conns.get(&conn).map_or(0, |c| c.owned.len());
            if n >= self.config.max_pes_per_connection {
                return Err(ErrorCause::new(cause::LACK_OF_RESOURCES));
            }
        }
        Ok(())
    }

    /// Record `conn` as the registration connection of an accepted PE and
    /// (re)start its keep-alive schedule: a registration proves liveness.
    fn take_ownership(&mut self, conn: ConnId, key: PeKey, rsplib: bool) {
        if let Some(old) = self.owned.get(&key) {
            if old.conn != conn {
                let old_conn = old.conn;
                if let Some(c) = self.conns.get_mut(&old_conn) {
                    c.owned.remove(&key);
                }
            }
        }
        if let Some(c) = self.conns.get_mut(&conn) {
            c.owned.insert(key.clone());
        }
        let last_keep_alive = self.owned.get(&key).and_then(|o| o.last_keep_alive);
        self.owned.insert(
            key.clone(),
            Owned {
                conn,
                orphan: false,
                rsplib,
                awaiting_ack: false,
                last_keep_alive,
            },
        );
        self.timers.cancel(&Timer::KeepAliveTimeout(key.clone()));
        self.schedule_keep_alive(key);
    }

    fn schedule_keep_alive(&mut self, key: PeKey) {
        let iv = self.config.keep_alive_interval;
        if iv.is_zero() {
            self.timers.cancel(&Timer::KeepAlive(key));
        } else {
            let mut at = self.now + self.rng.spread(iv);
            // The per-PE rate limit holds for periodic keep-alives too.
            if let Some(last) = self.owned.get(&key).and_then(|o| o.last_keep_alive) {
                at = at.max(last + self.config.keep_alive_min_gap);
            }
            self.timers.set(Timer::KeepAlive(key), at);
        }
    }

    fn on_deregistration(&mut self, conn: ConnId, pool_handle: PoolHandle, pe_id: u32) {
        let key = (pool_handle.clone(), pe_id);
        let refused = self.config.deregistration_requires_owner
            && self
                .owned
                .get(&key)
                .is_some_and(|o| o.conn != conn && !o.orphan);
        let error = if refused {
            self.stats.deregistration_rejections += 1;
            Some(vec![ErrorCause::new(cause::SECURITY)])
        } else {
            self.stats.deregistrations += 1;
            let foreign = self
                .space
                .get(&key.0, key.1)
                .filter(|pe| pe.home != self.server_id);
            self.remove_pe(&key, Removal::Deregistered);
            if let Some(mut pe) = foreign {
                // Another server is its home in our view (it died, or the PE
                // moved here). Peers take DEL_PE only from the owner, so we
                // first become the owner, as a registration here would make
                // us (ADD_PE), then remove it (DEL_PE); otherwise it would
                // stay everywhere else until its life ran out.
                pe.home = self.server_id;
                self.broadcast_update(UpdateAction::ADD_PE, key.0.clone(), pe.clone());
                self.broadcast_update(UpdateAction::DEL_PE, key.0.clone(), pe);
            }
            None
        };
        let msg = AsapMessage::DeregistrationResponse {
            pool_handle,
            pe_id,
            error,
        };
        self.send_asap(conn, &msg);
    }

    fn on_resolution(&mut self, conn: ConnId, subscribe: bool, handle: PoolHandle, items: u32) {
        let now = self.now;
        let max_subs = self.config.max_subscriptions_per_connection;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.resolution_bucket.take(now) {
            self.stats.rate_limited += 1;
            return;
        }
        let may_subscribe = subscribe
            && (c.subscriptions.contains_key(&handle) || c.subscriptions.len() < max_subs);
        let msg = self.resolution_response(&handle, items, false);
        let msg = match msg {
            AsapMessage::HandleResolutionResponse {
                pool_handle,
                policy,
                elements,
                error: None,
                ..
            } => {
                self.stats.resolutions += 1;
                if may_subscribe {
                    self.subscribe(conn, handle, items);
                }
                AsapMessage::HandleResolutionResponse {
                    accepted: may_subscribe,
                    pool_handle,
                    policy,
                    elements,
                    error: None,
                }
            }
            other => {
                self.stats.resolution_failures += 1;
                other
            }
        };
        self.send_asap(conn, &msg);
    }

    fn subscribe(&mut self, conn: ConnId, handle: PoolHandle, items: u32) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if c.subscriptions.insert(handle.clone(), items).is_none() {
                self.stats.subscriptions += 1;
            }
            self.subscribers.entry(handle).or_default().insert(conn);
        }
    }

    fn on_keep_alive_ack(&mut self, conn: ConnId, pool_handle: PoolHandle, pe_id: u32) {
        let key = (pool_handle, pe_id);
        // Only the PE's own connection can vouch for it.
        match self.owned.get_mut(&key) {
            Some(o) if o.conn == conn && !o.orphan => {
                self.stats.keep_alive_acks += 1;
                if o.awaiting_ack {
                    o.awaiting_ack = false;
                    self.timers.cancel(&Timer::KeepAliveTimeout(key.clone()));
                    self.schedule_keep_alive(key);
                }
            }
            _ => self.stats.unexpected += 1,
        }
    }

    fn on_unreachable(&mut self, conn: ConnId, pool_handle: PoolHandle, pe_id: u32) {
        let now = self.now;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if !c.unreachable_bucket.take(now) {
            self.stats.rate_limited += 1;
            return;
        }
        self.stats.unreachable_reports += 1;
        let key = (pool_handle, pe_id);
        let Some(count) = self.space.report_unreachable(&key.0, key.1) else {
            return;
        };
        if count > self.config.max_bad_pe_reports {
            self.stats.unreachable_removals += 1;
            self.remove_pe(&key, Removal::Unreachable);
            return;
        }
        if !self.config.probe_unreachable {
            return;
        }
        match self.owned.get(&key) {
            // Not ours (later: a peer's PE): its owner probes it.
            None => {}
            Some(o) if o.orphan => {
                // The probe cannot even be sent: it failed.
                self.stats.unreachable_removals += 1;
                self.remove_pe(&key, Removal::Unreachable);
            }
            Some(o) if o.awaiting_ack => {} // a probe is already out
            Some(o) => {
                // Probe now, or as soon as the per-PE rate limit allows.
                let earliest = o
                    .last_keep_alive
                    .map_or(now, |t| t + self.config.keep_alive_min_gap);
                let at = earliest.max(now);
                let cur = self.timers.get(&Timer::KeepAlive(key.clone()));
                if cur.is_none_or(|c| c > at) {
                    self.timers.set(Timer::KeepAlive(key.clone()), at);
                }
                if at <= now {
                    self.timers.cancel(&Timer::KeepAlive(key.clone()));
                    self.send_keep_alive(key, false);
                }
            }
        }
    }

    /// Forget a PE's ownership state and timers; the state, if it was owned.
    fn forget_owned(&mut self, key: &PeKey) -> Option<Owned> {
        let o = self.owned.remove(key)?;
        self.timers.cancel(&Timer::KeepAlive(key.clone()));
        self.timers.cancel(&Timer::KeepAliveTimeout(key.clone()));
        if let Some(c) = self.conns.get_mut(&o.conn) {
            c.owned.remove(key);
        }
        Some(o)
    }

    /// Remove a PE from the handlespace and everything that refers to it.
    fn remove_pe(&mut self, key: &PeKey, why: Removal) {
        self.forget_owned(key);
        let ours = self
            .space
            .get(&key.0, key.1)
            .filter(|pe| pe.home == self.server_id);
        if self.space.remove(&key.0, key.1) {
            if let Some(pe) = ours {
                self.broadcast_update(UpdateAction::DEL_PE, key.0.clone(), pe);
            }
            self.dirty.insert(key.0.clone());
            if why == Removal::ConnectionLoss {
                self.stats.connection_loss_removals += 1;
            }
        }
    }

    fn drop_conn(&mut self, conn: ConnId) {
        let Some(c) = self.conns.remove(&conn) else {
            self.enrp_closed(conn, None);
            return;
        };
        self.enrp_closed(conn, c.peer);
        self.timers.cancel(&Timer::Idle(conn));
        self.timers.cancel(&Timer::TableSession(conn));
        for handle in c.subscriptions.keys() {
            if let Some(s) = self.subscribers.get_mut(handle) {
                s.remove(&conn);
                if s.is_empty() {
                    self.subscribers.remove(handle);
                }
            }
        }
        for key in c.owned {
            if self.config.remove_on_connection_loss {
                self.remove_pe(&key, Removal::ConnectionLoss);
            } else if let Some(o) = self.owned.get_mut(&key) {
                o.orphan = true;
                o.awaiting_ack = false;
                self.timers.cancel(&Timer::KeepAlive(key.clone()));
                self.timers.cancel(&Timer::KeepAliveTimeout(key));
            }
        }
    }

    // ------------------------------------------------------------- ENRP

    fn on_enrp(&mut self, conn: ConnId, bytes: &[u8]) {
        let d = match EnrpMessage::decode(bytes) {
            Ok(d) => d,
            Err(e) => return self.on_decode_error(conn, bytes, e, true),
        };
        if !d.unrecognized.is_empty() {
            self.stats.errors_sent += 1;
            let msg = EnrpMessage {
                sender: self.server_id,
                receiver: d.msg.sender,
                body: EnrpBody::Error(fit_causes(d.unrecognized)),
            };
            self.push(Output::Send {
                conn,
                ppid: PPID_ENRP,
                msg: msg.to_bytes(),
            });
        }
        self.on_enrp_message(conn, d.msg);
    }

    fn send_enrp_error(&mut self, conn: ConnId, bytes: &[u8], report: ErrorCause) {
        self.stats.errors_sent += 1;
        // The requester's id, if the fixed fields are there.
        let receiver = bytes
            .get(4..8)
            .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]));
        let msg = EnrpMessage {
            sender: self.server_id,
            receiver,
            body: EnrpBody::Error(fit_causes(vec![report])),
        };
        self.push(Output::Send {
            conn,
            ppid: PPID_ENRP,
            msg: msg.to_bytes(),
        });
    }

    /// Answer one ENRP_HANDLE_TABLE_REQUEST with the next chunk (digest §9.9
    /// step 4). Each connection keeps a cursor into the handlespace while M=1
    /// chunks are outstanding, so a PE present throughout the download is sent
    /// exactly once even if the handlespace changes between requests (PEs
    /// added or removed meanwhile may or may not be; ENRP peers learn of those
    /// from updates). A request with a different W flag, or after
    /// the session timeout, starts over.
    fn on_table_request(&mut self, conn: ConnId, requester: u32, own_only: bool) {
        let now = self.now;
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        let start = c
            .table
            .as_ref()
            .filter(|t| t.own_only == own_only)
            .map_or(Cursor::START, |t| t.resume);
        let chunk = self.space.chunk(
            start,
            own_only.then_some(self.server_id),
            self.config.handle_table_chunk,
            TABLE_BYTES,
        );
        let more = chunk.more;
        if let Some(c) = self.conns.get_mut(&conn) {
            c.table = more.then_some(TableCursor {
                own_only,
                resume: chunk.resume,
            });
        }
        if more {
            self.timers.set(
                Timer::TableSession(conn),
                now + self.config.handle_table_session_timeout,
            );
        } else {
            self.timers.cancel(&Timer::TableSession(conn));
        }
        let msg = EnrpMessage {
            sender: self.server_id,
            receiver: requester,
            body: EnrpBody::HandleTableResponse {
                reject: false,
                more,
                pools: chunk.pools,
            },
        };
        self.stats.handle_table_responses += 1;
        self.push(Output::Send {
            conn,
            ppid: PPID_ENRP,
            msg: msg.to_bytes(),
        });
    }

    fn announce(&mut self) {
        let Some(iv) = self.config.announce_interval else {
            return;
        };
        let transports = self
            .config
            .announce_transports
            .iter()
            .filter(|t| matches!(t, Transport::Sctp { .. } | Transport::Tcp { .. }))
            .cloned()
            .collect();
        let msg = AsapMessage::ServerAnnounce {
            server_id: self.server_id,
            transports,
        };
        self.stats.announces += 1;
        self.push(Output::Announce {
            msg: msg.to_bytes(),
        });
        // Never a zero period: at least 1 ms between announces.
        let iv = iv.max(std::time::Duration::from_millis(1));
        self.timers.set(Timer::Announce, self.now + iv);
    }
}

/// The PE's ASAP transport as this server sees it: the connection's remote
/// side (all addresses for SCTP).
fn asap_transport(info: &ConnInfo) -> Option<Transport> {
    let first = info.remote.first()?;
    Some(match info.kind {
        ConnKind::Sctp => Transport::Sctp {
            port: first.port(),
            transport_use: transport_use::DATA_ONLY,
            addrs: info.remote.iter().map(|a| a.ip()).collect(),
        },
        ConnKind::Tcp => Transport::Tcp {
            port: first.port(),
            transport_use: transport_use::DATA_ONLY,
            addr: first.ip(),
        },
    })
}

/// Keep error causes small enough for one message: a cause carrying a whole
/// message or TLV near 64 KiB is cut to its first 1 KiB of information, and at
/// most 16 causes are sent.
fn fit_causes(mut causes: Vec<ErrorCause>) -> Vec<ErrorCause> {
    causes.truncate(16);
    for c in &mut causes {
        c.info.truncate(1024);
    }
    causes
}

/// Pool handle and PE id of a registration that failed to decode, read from
/// its top-level TLVs without trusting anything else.
fn salvage_registration(b: &[u8]) -> Option<(PoolHandle, u32)> {
    let len = usize::from(u16::from_be_bytes([*b.get(2)?, *b.get(3)?])).min(b.len());
    let mut pos = 4;
    let mut handle = None;
    let mut id = None;
    while pos + 4 <= len {
        let ty = u16::from_be_bytes([b[pos], b[pos + 1]]);
        let l = usize::from(u16::from_be_bytes([b[pos + 2], b[pos + 3]]));
        if l < 4 || pos + l > len {
            break;
        }
        let value = &b[pos + 4..pos + l];
        match ty {
            crate::wire::ptype::POOL_HANDLE if handle.is_none() => {
                handle = Some(PoolHandle(value.to_vec()))
            }
            crate::wire::ptype::POOL_ELEMENT if id.is_none() && value.len() >= 4 => {
                id = Some(u32::from_be_bytes([value[0], value[1], value[2], value[3]]))
            }
            _ => {}
        }
        pos += (l + 3) & !3;
    }
    Some((handle?, id?))
}

/// An address a PE cannot be reached at: unspecified, multicast, broadcast.
fn unusable_address(a: &std::net::IpAddr) -> bool {
    a.is_unspecified()
        || a.is_multicast()
        || matches!(a, std::net::IpAddr::V4(v4) if v4.is_broadcast())
}

/// The error cause for a handlespace rejection, with the information its code
/// calls for: the offending TLV as received (0x3), the pool's policy (0x5), a
/// transport of the pool's type (0x7).
fn reject_cause(e: RegisterError, handle: &PoolHandle, pe: &PoolElement) -> ErrorCause {
    let info = match e.info {
        RejectInfo::None => Vec::new(),
        RejectInfo::Invalid(InvalidField::PoolHandle) => param_bytes(handle),
        RejectInfo::Invalid(InvalidField::PoolElement) => param_bytes(pe),
        RejectInfo::Invalid(InvalidField::UserTransport) => param_bytes(&pe.user_transport),
        RejectInfo::Invalid(InvalidField::Policy) => param_bytes(&pe.policy),
        RejectInfo::Policy(p) => param_bytes(&p),
        RejectInfo::Transport(t) => param_bytes(&t),
    };
    ErrorCause::with_info(e.code, info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn salvage_reads_handle_and_pe_id_only_from_sound_tlvs() {
        let pe = PoolElement {
            id: 0x0102_0304,
            home: 0,
            reg_life: 5,
            user_transport: Transport::Tcp {
                port: 1,
                transport_use: 0,
                addr: std::net::Ipv4Addr::LOCALHOST.into(),
            },
            policy: crate::wire::Policy::RoundRobin,
            asap_transport: None,
        };
        let msg = AsapMessage::Registration {
            pool_handle: "abc".into(),
            pe,
        }
        .to_bytes();
        assert_eq!(
            salvage_registration(&msg),
            Some((PoolHandle::from("abc"), 0x0102_0304))
        );
        // Every truncation: never a panic, never a wrong answer.
        for n in 0..msg.len() {
            if let Some((h, id)) = salvage_registration(&msg[..n]) {
                assert_eq!((h.0.as_slice(), id), (&b"abc"[..], 0x0102_0304));
            }
        }
        assert_eq!(salvage_registration(&[1, 0, 0, 8, 0, 9, 0, 2]), None);
    }

    #[test]
    fn causes_are_bounded() {
        let big = vec![ErrorCause::with_info(1, vec![0; 70_000]); 40];
        let fit = fit_causes(big);
        assert_eq!(fit.len(), 16);
        assert!(fit.iter().all(|c| c.info.len() == 1024));
    }
}
