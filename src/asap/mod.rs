//! The ASAP client core (RFC 5352): pool element and pool user, sans-IO.
//!
//! [`Client`] holds both roles of one ASAP endpoint: the PEs it registers and
//! the pools it resolves, the registrar it calls home, the hunt for a new one
//! and the pool user's cache. It does no I/O, reads no clock and spawns
//! nothing; randomness (PE identifiers, random policies) comes from a PRNG
//! seeded by the caller. Four method families, as in quinn (STYLE.md §2):
//!
//! - getters: [`Client::home`], [`Client::stats`], [`Client::pe_id`], ...;
//! - `handle_*`: network and timer input ([`Client::handle_connected`],
//!   [`Client::handle_connect_failed`], [`Client::handle_accepted`],
//!   [`Client::handle_closed`], [`Client::handle_message`],
//!   [`Client::handle_announce`], [`Client::handle_timeout`]);
//! - commands from the application, each returning at once
//!   ([`Client::register`], [`Client::update_policy`], [`Client::deregister`],
//!   [`Client::resolve`], [`Client::report_unreachable`],
//!   [`Client::get_primary_server`], [`Client::get_next_server`],
//!   [`Client::add_registrar`], ...); results come later as [`Event`]s;
//! - `poll_*`: after **every** `handle_*` call or command, drain
//!   [`Client::poll_output`] until `None`, then [`Client::poll_event`] until
//!   `None`, then arm a timer for [`Client::poll_timeout`].
//!
//! Time only moves forward; a `now` earlier than one already seen is taken as
//! that one, and calling `handle_timeout` early is harmless.
//!
//! # Connections
//!
//! The core names every connection ([`ConnId`]): it asks for outgoing ones
//! with [`Output::Connect`] and the runtime answers with
//! [`Client::handle_connected`] or [`Client::handle_connect_failed`];
//! connections a registrar opens towards us (a registrar reaching the PE's
//! ASAP endpoint, e.g. after an ENRP takeover) are announced with
//! [`Client::handle_accepted`], which returns the id to use. After
//! [`Output::Close`] the core has already forgotten the connection; a later
//! `handle_closed` for it is ignored.
//!
//! # Behaviour (digest §9.1-§9.8)
//!
//! - **Server hunt** (§9.5): whenever something needs a registrar and there
//!   is no home, connect to up to three known registrars at once (SH1); the
//!   first to connect becomes home and the others are closed (SH3, SH6); a
//!   failed attempt is replaced by an untried address (SH4); when T5 runs out
//!   the attempts in flight are abandoned, T5 doubles (at most RETRAN-MAX) and
//!   a new round starts from the next addresses in the list (SH5). Registrars
//!   come from the configuration, [`Client::add_registrar`] and announces
//!   (each announced address lives T7 after its last announce).
//! - **New home**: every PE is re-registered at once, pending deregistrations
//!   and resolutions are re-sent, subscriptions renewed, queued unreachable
//!   reports sent. Nothing reaches the application unless the timer rules
//!   say so.
//! - **PE** (§9.1-§9.4, §9.7): registration guarded by T2 with an attempt
//!   counter; re-registration every T4; keep-alives answered on the
//!   connection they came on (KA1/KA2), H=1 from another server adopts it as
//!   home; deregistration guarded by T3; an unsolicited deregistration
//!   response (lifetime ran out at the registrar) triggers a re-registration.
//! - **PU** (§9.6, §9.8): a cache per pool with the stale-cache age; the
//!   basic-mode selection helpers of draft-ietf-rserpool-applic §3.5;
//!   unreachable reports at most once per incident and rate limited.
//!
//! # Documented choices
//!
//! - **T2/T1/T3 run from the moment a request is issued**, whether it could
//!   be sent or waits for a home registrar: with every registrar down a
//!   registration fails after MAX-REG-ATTEMPT × T2 and a resolution after
//!   (1 + MAX-REQUEST-RETRANSMIT) × T1. Each expiry re-sends (if there is a
//!   home) and starts a hunt in parallel (RFC 5352 §3 procedures, digest §8.1
//!   ⚠); the parallel hunt is called off as soon as the home says anything.
//! - **Giving up** on a PE that was never registered is final
//!   ([`Event::RegistrationFailed`], the handle is dead). A PE that was
//!   registered before is never given up while the application wants it:
//!   the client reports [`Event::RegistrationLost`] and keeps trying (after
//!   `min(T4, T2)`, and at once at a new home); [`Event::Registered`] comes
//!   again when it succeeds.
//! - **Refresh attempts fit in the life**: re-registering a registered PE,
//!   each attempt waits `min(T2, (life − T4) / MAX-REG-ATTEMPT)` (at least
//!   1 s). With the RFC defaults and a short life T4 leaves 20 s while T2 is
//!   30 s, so one lost refresh would otherwise let the PE lapse.
//! - **Rejections**: cause 0x4 (PE id in use) for a PE whose id the client
//!   chose and that was never registered is fixed by drawing a new id (one
//!   more attempt); every other cause is final. A rejected re-registration
//!   (e.g. [`Client::update_policy`] to another policy type, cause 0x5) also
//!   sends a best-effort deregistration so the old entry does not linger.
//! - **Deregistration** uses MAX-REG-ATTEMPT attempts of T3 each; an unknown
//!   PE at the registrar counts as success (the registrar says so).
//! - **Resolutions** are matched to requests by pool handle (ASAP has no
//!   transaction ids): at most one request per pool is on the wire and every
//!   waiter gets its answer. A subscribed pool's cache is fresh while the
//!   subscription is accepted (the registrar pushes every change).
//! - **Selection** ([`Client::get_primary_server`]): a stale entry still
//!   answers at once and a refresh is sent in the background (RFC 5352 §3.3
//!   leaves the choice open); a miss answers [`Selection::Pending`] and the
//!   application asks again after [`Event::Resolved`]. Negative answers
//!   (unknown pool) are cached like positive ones.
//! - **Unreachable incidents** last [`ClientConfig::unreachable_holdoff`] or
//!   until a resolution stops listing the PE, whichever is first; during an
//!   incident the PE is neither reported again nor selected.
//! - **Malformed or unexpected input** is counted and dropped; decode errors
//!   that call for a report (unknown parameter/message with report bits,
//!   invalid values) are answered with ASAP_ERROR like the registrar does.
//!   ASAP_ERROR received is counted and surfaced as
//!   [`Event::ProtocolError`].

mod cache;
mod config;
pub mod sim;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::registrar::{ConnId, PPID_ASAP};
pub use cache::ResolvedPool;
pub use config::{ClientConfig, RateLimit, RegLifeUnit, T4Rule};

use crate::timers::Timers;
use cache::{Entry, Incidents};

use crate::handlespace::rng::Rng;
use crate::time::Time;
use crate::wire::{
    cause, AsapMessage, ErrorCause, Policy, PoolElement, PoolHandle, Transport, MAX_LENGTH,
};

/// A PE registered through this client, named by the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeHandle(pub u64);

/// A handle resolution asked for by the application.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(pub u64);

/// Options of [`Client::register`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegisterOptions {
    /// The PE identifier to use; `None` (default) draws a random non-zero one.
    /// An application restarting a PE may pass the old one.
    pub pe_id: Option<u32>,
}

/// Why something the application asked for failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsapError {
    /// The registrar refused: the first cause of its Operational Error
    /// (cause 0x0 when it gave none). Unknown codes are kept as received.
    Cause(ErrorCause),
    /// No answer within the timer and retransmission rules.
    Timeout,
    /// Every PE the registrar lists has been reported unreachable.
    NoUsableElement,
    /// The arguments cannot make a valid message (empty or oversized pool
    /// handle, PE id 0, a life below −1, a duplicate PE id, ...).
    InvalidArgument(&'static str),
    /// No such PE handle (never issued, or already finished).
    UnknownHandle,
}

impl AsapError {
    /// The RFC 5354 cause code, for [`AsapError::Cause`].
    pub fn cause_code(&self) -> Option<u16> {
        match self {
            AsapError::Cause(c) => Some(c.code),
            _ => None,
        }
    }
}

impl fmt::Display for AsapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AsapError::Cause(c) => write!(f, "refused by the registrar: {c}"),
            AsapError::Timeout => f.write_str("no answer from any registrar"),
            AsapError::NoUsableElement => f.write_str("every pool element is unreachable"),
            AsapError::InvalidArgument(why) => write!(f, "invalid argument: {why}"),
            AsapError::UnknownHandle => f.write_str("unknown handle"),
        }
    }
}

impl std::error::Error for AsapError {}

/// Something for the runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Open a connection (SCTP association, or TCP with the mapping shim) to a
    /// registrar; answer with [`Client::handle_connected`] or
    /// [`Client::handle_connect_failed`].
    Connect {
        /// The id the core gave this connection.
        conn: ConnId,
        /// The registrar's ASAP address.
        addr: SocketAddr,
    },
    /// Send one whole ASAP message.
    Send {
        /// The connection.
        conn: ConnId,
        /// Always [`PPID_ASAP`] (11).
        ppid: u32,
        /// The message bytes.
        msg: Vec<u8>,
    },
    /// Close (or abandon, if still connecting) a connection. The core has
    /// already forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
    },
}

/// Something for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A PE is registered (first success, or again after
    /// [`Event::RegistrationLost`]). Re-registrations every T4 are silent.
    Registered {
        /// The PE.
        pe: PeHandle,
        /// Its PE identifier.
        id: u32,
    },
    /// A PE could not be registered; the handle is dead.
    RegistrationFailed {
        /// The PE.
        pe: PeHandle,
        /// A rejection cause, or [`AsapError::Timeout`] after MAX-REG-ATTEMPT.
        error: AsapError,
    },
    /// A registered PE could not be refreshed after MAX-REG-ATTEMPT attempts;
    /// its registrar may drop it when its life runs out. The client keeps
    /// trying and reports [`Event::Registered`] on success.
    RegistrationLost {
        /// The PE.
        pe: PeHandle,
        /// Why ([`AsapError::Timeout`]).
        error: AsapError,
    },
    /// A PE is deregistered; the handle is dead.
    Deregistered {
        /// The PE.
        pe: PeHandle,
    },
    /// A deregistration was refused or not answered; the handle is dead (the
    /// registrar drops the PE when its life runs out).
    DeregistrationFailed {
        /// The PE.
        pe: PeHandle,
        /// Why.
        error: AsapError,
    },
    /// The answer to [`Client::resolve`] (or to a [`Selection::Pending`]).
    Resolved {
        /// The request.
        request: RequestId,
        /// The pool.
        pool: PoolHandle,
        /// The pool, or why not (cause 0x9: unknown pool; timeout).
        result: Result<ResolvedPool, AsapError>,
        /// The registrar accepted a subscription to this pool.
        subscribed: bool,
    },
    /// A subscribed pool changed (pushed by the registrar), or its
    /// subscription could not be renewed (`Err(Timeout)`).
    PoolUpdate {
        /// The pool.
        pool: PoolHandle,
        /// The new contents, or why not (cause 0x9 when the pool is gone).
        result: Result<ResolvedPool, AsapError>,
    },
    /// A new home registrar (after a hunt, or adopted through a keep-alive
    /// with H=1).
    HomeChanged {
        /// Its address as connected (or the peer address of the connection).
        addr: SocketAddr,
        /// Its server identifier, when known (announce or keep-alive).
        server_id: Option<u32>,
    },
    /// The home registrar's connection is gone; a hunt starts if anything
    /// needs a registrar.
    RegistrarLost {
        /// Its address.
        addr: SocketAddr,
    },
    /// A registrar sent ASAP_ERROR: it did not understand something we sent.
    ProtocolError {
        /// The registrar's address.
        addr: SocketAddr,
        /// The causes it gave.
        causes: Vec<ErrorCause>,
    },
}

/// The answer of the basic-mode selection helpers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Use this PE.
    Ready(PoolElement),
    /// Nothing usable in the cache: a resolution is on its way; ask again
    /// after [`Event::Resolved`] for this request.
    Pending(RequestId),
    /// No PE can be offered: the pool is unknown ([`AsapError::Cause`] 0x9),
    /// every listed PE is unreachable, or the arguments are invalid.
    Failed(AsapError),
}

/// Where a PE stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PeStatus {
    /// A registration (first or refresh) is in progress.
    Registering,
    /// Registered; the next re-registration is due at T4.
    Registered,
    /// Not registered now (the last refresh failed); retrying.
    Lost,
    /// A deregistration is in progress.
    Deregistering,
}

/// Counters, for monitoring and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// ASAP messages handed to the runtime.
    pub messages_sent: u64,
    /// ASAP messages received (decoded or not).
    pub messages_received: u64,
    /// ASAP_REGISTRATION sent (first, refresh and re-sends).
    pub registrations_sent: u64,
    /// Registration responses granting.
    pub registrations_granted: u64,
    /// Registration responses refusing.
    pub registrations_rejected: u64,
    /// ASAP_DEREGISTRATION sent.
    pub deregistrations_sent: u64,
    /// Unsolicited deregistration responses (life ran out at the registrar).
    pub unsolicited_deregistrations: u64,
    /// ASAP_HANDLE_RESOLUTION sent.
    pub resolutions_sent: u64,
    /// Handle resolution responses received (answers and pushes).
    pub resolution_responses: u64,
    /// Resolutions answered from a fresh cache entry.
    pub cache_hits: u64,
    /// Resolutions that failed with a timeout.
    pub resolution_timeouts: u64,
    /// Keep-alives acknowledged.
    pub keep_alives_acked: u64,
    /// Keep-alives dropped (not our pool: KA1).
    pub keep_alives_dropped: u64,
    /// Homes adopted through H=1.
    pub home_adoptions: u64,
    /// ASAP_ENDPOINT_UNREACHABLE sent or queued.
    pub reports_sent: u64,
    /// Reports not sent: same incident.
    pub reports_suppressed: u64,
    /// Reports not sent: rate limit.
    pub reports_rate_limited: u64,
    /// Queued reports dropped (queue full).
    pub reports_dropped: u64,
    /// Hunts started.
    pub hunts: u64,
    /// Hunt rounds ended by T5.
    pub hunt_rounds_expired: u64,
    /// Connections asked for.
    pub connect_attempts: u64,
    /// Connection attempts that failed.
    pub connect_failures: u64,
    /// Home registrars chosen.
    pub home_changes: u64,
    /// Home connections lost.
    pub home_losses: u64,
    /// Messages that did not decode.
    pub malformed: u64,
    /// Messages dropped: unknown connection or PPID, silent-drop decode errors.
    pub dropped: u64,
    /// Messages a client never expects, or answers to nothing pending.
    pub unexpected: u64,
    /// ASAP_ERROR received.
    pub errors_received: u64,
    /// ASAP_ERROR sent.
    pub errors_sent: u64,
    /// Announces taken.
    pub announces: u64,
    /// Announces ignored (malformed, or too many announced registrars).
    pub announces_ignored: u64,
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// Opened by a hunt, not (yet) chosen.
    Hunt,
    /// The home registrar.
    Home,
    /// Opened by a registrar towards us.
    Inbound,
}

#[derive(Debug)]
struct Conn {
    addr: SocketAddr,
    role: Role,
    up: bool,
}

/// A registrar address the client may hunt.
#[derive(Debug)]
struct Known {
    addr: SocketAddr,
    configured: bool,
    /// Announced; forgotten at this time unless announced again.
    announced_until: Option<Time>,
    server_id: Option<u32>,
}

#[derive(Debug, Default)]
struct Hunt {
    /// Addresses tried in this round.
    tried: BTreeSet<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No operation in progress (registered, or lost and waiting).
    Idle,
    /// ASAP_REGISTRATION out or waiting for a home; T2 runs.
    Registering,
    /// ASAP_DEREGISTRATION out or waiting for a home; T3 runs.
    Deregistering,
}

#[derive(Debug)]
struct Pe {
    pool: PoolHandle,
    id: u32,
    id_given: bool,
    transport: Transport,
    policy: Policy,
    reg_life: i32,
    phase: Phase,
    /// Believed registered now.
    granted: bool,
    /// Was registered at some time.
    ever_granted: bool,
    /// Attempts of the current operation (1 = the first).
    attempts: u32,
}

#[derive(Debug)]
struct Request {
    items: Option<u32>,
    subscribe: bool,
    waiters: Vec<RequestId>,
    retransmits: u32,
}

#[derive(Debug)]
struct Sub {
    items: Option<u32>,
    active: bool,
}

/// Timers of the core, one table.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// T5: the current hunt round is over.
    Hunt,
    /// T2 or T3 of a PE's registration or deregistration.
    PeOp(PeHandle),
    /// T4: re-register.
    Reregister(PeHandle),
    /// T1 of a pool's resolution.
    Request(PoolHandle),
    /// T7 of an announced address.
    Outdate(SocketAddr),
}

/// A token bucket in micro-tokens.
#[derive(Debug)]
struct Bucket {
    limit: RateLimit,
    level: u64,
    last: Time,
}

impl Bucket {
    const MICRO: u64 = 1_000_000;

    fn new(limit: RateLimit, now: Time) -> Self {
        Bucket {
            limit,
            level: u64::from(limit.burst.max(1)) * Self::MICRO,
            last: now,
        }
    }

    fn take(&mut self, now: Time) -> bool {
        if self.limit.per_sec == 0 {
            return true;
        }
        let cap = u64::from(self.limit.burst.max(1)) * Self::MICRO;
        let elapsed = now.as_micros().saturating_sub(self.last.as_micros());
        self.last = self.last.max(now);
        let refill = elapsed.saturating_mul(u64::from(self.limit.per_sec));
        self.level = self.level.saturating_add(refill).min(cap);
        if self.level >= Self::MICRO {
            self.level -= Self::MICRO;
            true
        } else {
            false
        }
    }
}

/// The ASAP client: pool element and pool user. See the [module
/// documentation](self).
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    rng: Rng,
    now: Time,
    next_conn: u64,
    next_pe: u64,
    next_request: u64,
    known: Vec<Known>,
    conns: BTreeMap<ConnId, Conn>,
    home: Option<ConnId>,
    home_server_id: Option<u32>,
    hunt: Option<Hunt>,
    /// The current T5 value.
    t5: Duration,
    /// Where the next hunt pick starts in `known`.
    hunt_offset: usize,
    pes: BTreeMap<PeHandle, Pe>,
    requests: BTreeMap<PoolHandle, Request>,
    subs: BTreeMap<PoolHandle, Sub>,
    cache: BTreeMap<PoolHandle, Entry>,
    incidents: BTreeMap<PoolHandle, Incidents>,
    reports: VecDeque<(PoolHandle, u32)>,
    report_bucket: Bucket,
    timers: Timers<Timer>,
    out: VecDeque<Output>,
    events: VecDeque<Event>,
    stats: ClientStats,
}

impl Client {
    /// A client with its configuration, a PRNG seed and the current time.
    ///
    /// The seed drives PE identifiers and random selection: give it a secret
    /// random value in production (PE ids should be hard to guess, RFC 4086),
    /// a fixed one in tests.
    pub fn new(config: ClientConfig, rng_seed: u64, now: Time) -> Self {
        let mut c = Client {
            rng: Rng::new(rng_seed),
            now,
            next_conn: 1,
            next_pe: 1,
            next_request: 1,
            known: Vec::new(),
            conns: BTreeMap::new(),
            home: None,
            home_server_id: None,
            hunt: None,
            t5: config.t5_server_hunt,
            hunt_offset: 0,
            pes: BTreeMap::new(),
            requests: BTreeMap::new(),
            subs: BTreeMap::new(),
            cache: BTreeMap::new(),
            incidents: BTreeMap::new(),
            reports: VecDeque::new(),
            report_bucket: Bucket::new(config.unreachable_rate, now),
            timers: Timers::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: ClientStats::default(),
            config,
        };
        for addr in c.config.registrars.clone() {
            c.add_known(addr);
        }
        c
    }

    // ------------------------------------------------------------- getters

    /// The configuration in use.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// The counters.
    pub fn stats(&self) -> &ClientStats {
        &self.stats
    }

    /// The home registrar: its address and, when known, its server id.
    pub fn home(&self) -> Option<(SocketAddr, Option<u32>)> {
        let c = self.conns.get(&self.home?)?;
        Some((c.addr, self.home_server_id))
    }

    /// The home registrar's connection.
    pub fn home_connection(&self) -> Option<ConnId> {
        self.home
    }

    /// A hunt is running.
    pub fn is_hunting(&self) -> bool {
        self.hunt.is_some()
    }

    /// The current T5 (doubles each round of a hunt, back to its initial value
    /// after a success).
    pub fn hunt_timeout(&self) -> Duration {
        self.t5
    }

    /// Connection attempts of the running hunt that have not finished.
    pub fn hunt_attempts(&self) -> usize {
        self.conns.values().filter(|c| c.role == Role::Hunt).count()
    }

    /// Known registrar addresses, configured and announced, in hunt order.
    pub fn registrars(&self) -> Vec<SocketAddr> {
        self.known.iter().map(|k| k.addr).collect()
    }

    /// The PE identifier of a PE.
    pub fn pe_id(&self, pe: PeHandle) -> Option<u32> {
        self.pes.get(&pe).map(|p| p.id)
    }

    /// Where a PE stands (`None`: unknown or finished).
    pub fn pe_status(&self, pe: PeHandle) -> Option<PeStatus> {
        let p = self.pes.get(&pe)?;
        Some(match p.phase {
            Phase::Registering => PeStatus::Registering,
            Phase::Deregistering => PeStatus::Deregistering,
            Phase::Idle if p.granted => PeStatus::Registered,
            Phase::Idle => PeStatus::Lost,
        })
    }

    /// The cached answer for a pool (fresh or stale; `None` if none or negative).
    pub fn cached(&self, pool: &PoolHandle) -> Option<&ResolvedPool> {
        self.cache.get(pool)?.result.as_ref().ok()
    }

    /// The cache entry for `pool` is fresh at the last time seen.
    pub fn is_fresh(&self, pool: &PoolHandle) -> bool {
        let sub = self.subs.get(pool).is_some_and(|s| s.active);
        self.cache
            .get(pool)
            .is_some_and(|e| sub || self.now < e.fetched + self.config.stale_cache)
    }

    /// The pool has a subscription the registrar accepted.
    pub fn is_subscribed(&self, pool: &PoolHandle) -> bool {
        self.subs.get(pool).is_some_and(|s| s.active)
    }

    // --------------------------------------------------------------- poll_*

    /// The next output, if any. Drain after every call.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// The next event, if any. Drain after the outputs.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest time [`handle_timeout`](Self::handle_timeout) has work.
    pub fn poll_timeout(&self) -> Option<Time> {
        self.timers.next()
    }

    // ------------------------------------------------------------- handle_*

    /// An [`Output::Connect`] succeeded. If a hunt is on, this registrar
    /// becomes home.
    pub fn handle_connected(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        match self.conns.get_mut(&conn) {
            Some(c) if c.role == Role::Hunt && !c.up => c.up = true,
            _ => {
                // Abandoned (we already closed it) or unknown.
                self.stats.unexpected += 1;
                return;
            }
        }
        self.adopt_home(conn, None);
    }

    /// An [`Output::Connect`] failed; another registrar is tried.
    pub fn handle_connect_failed(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        if self
            .conns
            .get(&conn)
            .is_some_and(|c| c.role == Role::Hunt && !c.up)
        {
            self.conns.remove(&conn);
            self.stats.connect_failures += 1;
            self.fill_hunt();
        }
    }

    /// A registrar opened a connection to us (our ASAP endpoint). Returns the
    /// id the core gives it; use it for its messages and its closing.
    pub fn handle_accepted(&mut self, remote: SocketAddr, now: Time) -> ConnId {
        self.advance(now);
        let conn = self.alloc_conn();
        self.conns.insert(
            conn,
            Conn {
                addr: remote,
                role: Role::Inbound,
                up: true,
            },
        );
        conn
    }

    /// A connection is gone. Losing the home starts a hunt when anything
    /// needs a registrar; what was in flight is re-sent to the next home.
    pub fn handle_closed(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        match c.role {
            Role::Home => self.lose_home(c.addr),
            Role::Hunt => {
                if !c.up {
                    self.stats.connect_failures += 1;
                }
                self.fill_hunt();
            }
            Role::Inbound => {}
        }
    }

    /// One whole message arrived on `conn` with payload protocol `ppid` (11;
    /// 0 is taken as ASAP too, for a TCP mapping peer that leaves it out).
    pub fn handle_message(&mut self, conn: ConnId, ppid: u32, bytes: &[u8], now: Time) {
        self.advance(now);
        self.stats.messages_received += 1;
        if !self.conns.get(&conn).is_some_and(|c| c.up) || (ppid != PPID_ASAP && ppid != 0) {
            self.stats.dropped += 1;
            return;
        }
        if self.home == Some(conn) && self.hunt.is_some() {
            // The home is alive after all: call off the parallel hunt.
            self.stop_hunt();
        }
        let d = match AsapMessage::decode(bytes) {
            Ok(d) => d,
            Err(e) => {
                if let Some(report) = e.report() {
                    self.stats.malformed += 1;
                    self.send_error(conn, vec![report]);
                } else if e.is_silent_drop() {
                    self.stats.dropped += 1;
                } else {
                    self.stats.malformed += 1;
                }
                return;
            }
        };
        if !d.unrecognized.is_empty() {
            self.send_error(conn, d.unrecognized);
        }
        match d.msg {
            AsapMessage::RegistrationResponse {
                reject,
                pool_handle,
                pe_id,
                error,
            } => self.on_registration_response(reject, &pool_handle, pe_id, error),
            AsapMessage::DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            } => self.on_deregistration_response(&pool_handle, pe_id, error),
            AsapMessage::HandleResolutionResponse {
                accepted,
                pool_handle,
                policy,
                elements,
                error,
            } => self.on_resolution_response(accepted, pool_handle, policy, elements, error),
            AsapMessage::EndpointKeepAlive {
                home,
                server_id,
                pool_handle,
                pe_id,
            } => self.on_keep_alive(conn, home, server_id, &pool_handle, pe_id),
            AsapMessage::Error(causes) => {
                self.stats.errors_received += 1;
                if let Some(c) = self.conns.get(&conn) {
                    let addr = c.addr;
                    self.events.push_back(Event::ProtocolError { addr, causes });
                }
            }
            AsapMessage::Registration { .. }
            | AsapMessage::Deregistration { .. }
            | AsapMessage::HandleResolution { .. }
            | AsapMessage::EndpointKeepAliveAck { .. }
            | AsapMessage::EndpointUnreachable { .. }
            | AsapMessage::ServerAnnounce { .. }
            | AsapMessage::Cookie(_)
            | AsapMessage::CookieEcho(_)
            | AsapMessage::BusinessCard { .. } => self.stats.unexpected += 1,
        }
    }

    /// An ASAP_SERVER_ANNOUNCE arrived by UDP from `src`: its addresses join
    /// the registrar list for T7 (renewed by each announce). Without
    /// transport parameters the registrar is at `src`'s address, on
    /// [`ClientConfig::announce_default_port`].
    pub fn handle_announce(&mut self, src: SocketAddr, bytes: &[u8], now: Time) {
        self.advance(now);
        let (server_id, transports) = match AsapMessage::decode(bytes) {
            Ok(d) => match d.msg {
                AsapMessage::ServerAnnounce {
                    server_id,
                    transports,
                } => (server_id, transports),
                _ => {
                    self.stats.announces_ignored += 1;
                    return;
                }
            },
            Err(_) => {
                self.stats.announces_ignored += 1;
                return;
            }
        };
        let mut addrs = Vec::new();
        if transports.is_empty() {
            let port = self.config.announce_default_port.unwrap_or(src.port());
            addrs.push(SocketAddr::new(src.ip(), port));
        }
        for t in &transports {
            if let Some(port) = t.port() {
                for ip in t.addrs() {
                    let a = SocketAddr::new(*ip, port);
                    if !addrs.contains(&a) {
                        addrs.push(a);
                    }
                }
            }
        }
        addrs.retain(|a| a.port() != 0 && !a.ip().is_unspecified() && !a.ip().is_multicast());
        if addrs.is_empty() {
            self.stats.announces_ignored += 1;
            return;
        }
        self.stats.announces += 1;
        for a in addrs {
            self.learn(a, server_id);
        }
        self.fill_hunt();
    }

    /// Run every timer due at `now`.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        let now = self.now;
        while let Some(t) = self.timers.pop_due(now) {
            match t {
                Timer::Hunt => self.hunt_round_over(),
                Timer::PeOp(h) => self.pe_op_expired(h),
                Timer::Reregister(h) => {
                    if self.pes.get(&h).is_some_and(|p| p.phase == Phase::Idle) {
                        self.begin_register(h, true);
                    }
                }
                Timer::Request(pool) => self.request_expired(pool),
                Timer::Outdate(addr) => self.outdate(addr, now),
            }
        }
    }

    // ------------------------------------------------------------- commands

    /// Add a configured registrar (kept until removed). A running hunt tries
    /// it at once.
    pub fn add_registrar(&mut self, addr: SocketAddr, now: Time) {
        self.advance(now);
        self.add_known(addr);
        self.fill_hunt();
    }

    /// Forget a registrar address (configured or announced). A connection to
    /// it stays.
    pub fn remove_registrar(&mut self, addr: SocketAddr) {
        self.known.retain(|k| k.addr != addr);
        self.timers.cancel(&Timer::Outdate(addr));
    }

    /// Register a PE: `reg_life` in [`ClientConfig::reg_life_unit`] (−1 =
    /// infinite). Returns at once; [`Event::Registered`] or
    /// [`Event::RegistrationFailed`] follows. The client re-registers every
    /// T4 on its own.
    pub fn register(
        &mut self,
        pool: PoolHandle,
        transport: Transport,
        policy: Policy,
        reg_life: i32,
        options: RegisterOptions,
        now: Time,
    ) -> Result<PeHandle, AsapError> {
        self.advance(now);
        check_pool(&pool)?;
        if reg_life < -1 {
            return Err(AsapError::InvalidArgument("registration life below -1"));
        }
        if options.pe_id == Some(0) {
            return Err(AsapError::InvalidArgument("PE identifier 0"));
        }
        let in_use = |c: &Client, id: u32| c.pes.values().any(|p| p.pool == pool && p.id == id);
        let id = match options.pe_id {
            Some(id) if in_use(self, id) => {
                return Err(AsapError::InvalidArgument("PE identifier already in use"))
            }
            Some(id) => id,
            None => loop {
                let id = self.rng.next_u32();
                if id != 0 && !in_use(self, id) {
                    break id;
                }
            },
        };
        let pe = Pe {
            pool,
            id,
            id_given: options.pe_id.is_some(),
            transport,
            policy,
            reg_life,
            phase: Phase::Idle,
            granted: false,
            ever_granted: false,
            attempts: 0,
        };
        if registration_msg(&pe, 0).encoded_len() > MAX_LENGTH {
            return Err(AsapError::InvalidArgument(
                "registration longer than 65535 bytes",
            ));
        }
        let h = PeHandle(self.next_pe);
        self.next_pe += 1;
        self.pes.insert(h, pe);
        self.begin_register(h, true);
        Ok(h)
    }

    /// Change a PE's policy values (e.g. its load) and re-register at once.
    /// A change of policy *type* is refused by the registrar (cause 0x5) and
    /// ends the PE ([`Event::RegistrationFailed`]).
    pub fn update_policy(
        &mut self,
        pe: PeHandle,
        policy: Policy,
        now: Time,
    ) -> Result<(), AsapError> {
        self.advance(now);
        let p = self.pes.get_mut(&pe).ok_or(AsapError::UnknownHandle)?;
        if p.phase == Phase::Deregistering {
            return Err(AsapError::UnknownHandle);
        }
        let old = std::mem::replace(&mut p.policy, policy);
        if registration_msg(p, 0).encoded_len() > MAX_LENGTH {
            p.policy = old;
            return Err(AsapError::InvalidArgument(
                "registration longer than 65535 bytes",
            ));
        }
        self.begin_register(pe, true);
        Ok(())
    }

    /// Forget a PE without deregistering it: no message goes out, no event
    /// follows, re-registration stops. To the registrar this looks like the
    /// PE's process died: the registration stays until its life runs out or
    /// unreachability reports remove it. Returns whether the handle was live.
    pub fn abandon(&mut self, pe: PeHandle) -> bool {
        self.forget_pe(pe).is_some()
    }

    /// Deregister a PE. [`Event::Deregistered`] or
    /// [`Event::DeregistrationFailed`] follows; either ends the handle.
    pub fn deregister(&mut self, pe: PeHandle, now: Time) -> Result<(), AsapError> {
        self.advance(now);
        let p = self.pes.get_mut(&pe).ok_or(AsapError::UnknownHandle)?;
        if p.phase == Phase::Deregistering {
            return Ok(());
        }
        p.phase = Phase::Deregistering;
        p.attempts = 1;
        self.timers.cancel(&Timer::Reregister(pe));
        self.timers
            .set(Timer::PeOp(pe), self.now + self.config.t3_deregistration);
        self.send_deregistration(pe);
        Ok(())
    }

    /// Resolve a pool handle, asking for `items` PEs (`None`:
    /// [`ClientConfig::default_items`]) and, with `subscribe`, for pushed
    /// updates ([`Event::PoolUpdate`]) for as long as the client lives (renewed
    /// at each new home) or until [`Client::unsubscribe`]. A fresh cache entry
    /// answers at once without a request. [`Event::Resolved`] follows.
    pub fn resolve(
        &mut self,
        pool: PoolHandle,
        items: Option<u32>,
        subscribe: bool,
        now: Time,
    ) -> Result<RequestId, AsapError> {
        self.advance(now);
        check_pool(&pool)?;
        let items = items.or(self.config.default_items);
        let id = self.alloc_request();
        if subscribe {
            let s = self.subs.entry(pool.clone()).or_insert(Sub {
                items,
                active: false,
            });
            s.items = s.items.max(items);
        }
        let sub_active = self.is_subscribed(&pool);
        if (!subscribe || sub_active) && self.is_fresh(&pool) {
            if let Some(e) = self.cache.get(&pool) {
                self.stats.cache_hits += 1;
                let result = e.result.clone().map_err(AsapError::Cause);
                self.events.push_back(Event::Resolved {
                    request: id,
                    pool,
                    result,
                    subscribed: sub_active,
                });
                return Ok(id);
            }
        }
        self.request(pool, items, subscribe, Some(id));
        Ok(id)
    }

    /// Stop reporting updates of a subscribed pool and stop renewing the
    /// subscription (ASAP has no message to end one; the registrar's ends
    /// with the connection).
    pub fn unsubscribe(&mut self, pool: &PoolHandle) {
        self.subs.remove(pool);
    }

    /// Report a PE unreachable (RFC 5352 §3.5): the PE is not selected during
    /// the incident and ASAP_ENDPOINT_UNREACHABLE goes to the home registrar —
    /// at most once per incident and within the rate limit. Returns whether a
    /// report was sent (or queued for the next home).
    pub fn report_unreachable(&mut self, pool: &PoolHandle, pe_id: u32, now: Time) -> bool {
        self.advance(now);
        if check_pool(pool).is_err() {
            return false;
        }
        self.expire_incidents(pool);
        let inc = self.incidents.entry(pool.clone()).or_default();
        if inc.contains_key(&pe_id) {
            self.stats.reports_suppressed += 1;
            return false;
        }
        inc.insert(pe_id, self.now);
        if !self.report_bucket.take(self.now) {
            self.stats.reports_rate_limited += 1;
            return false;
        }
        self.stats.reports_sent += 1;
        let msg = AsapMessage::EndpointUnreachable {
            pool_handle: pool.clone(),
            pe_id,
        };
        if !self.send_home(&msg) {
            if self.reports.len() >= self.config.max_queued_reports.max(1) {
                self.reports.pop_front();
                self.stats.reports_dropped += 1;
            }
            self.reports.push_back((pool.clone(), pe_id));
            self.start_hunt();
        }
        true
    }

    /// The basic-mode name of [`Client::report_unreachable`]: tell the
    /// registrar a PE failed, without asking for another.
    pub fn report_failure(&mut self, pool: &PoolHandle, pe_id: u32, now: Time) -> bool {
        self.report_unreachable(pool, pe_id, now)
    }

    /// GET_PRIMARY_SERVER (draft-ietf-rserpool-applic §3.5): a PE of `pool`
    /// chosen from the cache by the pool's overall policy as a pool user
    /// applies it (RR/WRR cycle through the list, RAND/WRAND/RLU pick at
    /// random, weighted where the policy has weights, PRIO the highest
    /// priority, LU and the others the first usable one in the order given),
    /// skipping PEs in an unreachability incident. A stale entry answers and
    /// is refreshed in the background; a miss answers
    /// [`Selection::Pending`].
    pub fn get_primary_server(&mut self, pool: &PoolHandle, now: Time) -> Selection {
        self.advance(now);
        if let Err(e) = check_pool(pool) {
            return Selection::Failed(e);
        }
        self.expire_incidents(pool);
        let fresh = self.is_fresh(pool);
        let empty = Incidents::new();
        let failed = self.incidents.get(pool).unwrap_or(&empty);
        let last_incident = failed.values().max().copied();
        if let Some(e) = self.cache.get_mut(pool) {
            match &e.result {
                Err(c) if fresh => return Selection::Failed(AsapError::Cause(c.clone())),
                Err(_) => {}
                Ok(_) => {
                    if let Some(pe) = e.select(failed, &mut self.rng) {
                        if !fresh {
                            self.request(pool.clone(), self.config.default_items, false, None);
                        }
                        return Selection::Ready(pe);
                    }
                    if fresh && last_incident.is_none_or(|t| t <= e.fetched) {
                        return Selection::Failed(AsapError::NoUsableElement);
                    }
                }
            }
        }
        let id = self.alloc_request();
        self.request(pool.clone(), self.config.default_items, false, Some(id));
        Selection::Pending(id)
    }

    /// GET_NEXT_SERVER (draft-ietf-rserpool-applic §3.5): `failed_pe_id`
    /// failed — mark it, report it to the home registrar
    /// ([`Client::report_unreachable`]) — and return the next PE by policy
    /// (refreshing from the registrar when none is left).
    pub fn get_next_server(
        &mut self,
        pool: &PoolHandle,
        failed_pe_id: u32,
        now: Time,
    ) -> Selection {
        self.report_unreachable(pool, failed_pe_id, now);
        self.get_primary_server(pool, now)
    }

    // ------------------------------------------------------------ internals

    fn advance(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    fn alloc_conn(&mut self) -> ConnId {
        let c = ConnId(self.next_conn);
        self.next_conn += 1;
        c
    }

    fn alloc_request(&mut self) -> RequestId {
        let r = RequestId(self.next_request);
        self.next_request += 1;
        r
    }

    fn needs_home(&self) -> bool {
        !self.pes.is_empty()
            || !self.requests.is_empty()
            || !self.subs.is_empty()
            || !self.reports.is_empty()
    }

    fn home_addr(&self) -> Option<SocketAddr> {
        self.conns.get(&self.home?).map(|c| c.addr)
    }

    fn close(&mut self, conn: ConnId) {
        if self.conns.remove(&conn).is_some() {
            self.out.push_back(Output::Close { conn });
        }
    }

    /// Send on a connection; false if the message cannot be encoded.
    fn send_on(&mut self, conn: ConnId, msg: &AsapMessage) -> bool {
        if msg.encoded_len() > MAX_LENGTH {
            return false;
        }
        self.stats.messages_sent += 1;
        self.out.push_back(Output::Send {
            conn,
            ppid: PPID_ASAP,
            msg: msg.to_bytes(),
        });
        true
    }

    /// Send to the home registrar; false if there is none.
    fn send_home(&mut self, msg: &AsapMessage) -> bool {
        match self.home {
            Some(h) if self.conns.get(&h).is_some_and(|c| c.up) => self.send_on(h, msg),
            _ => false,
        }
    }

    fn send_error(&mut self, conn: ConnId, mut causes: Vec<ErrorCause>) {
        causes.truncate(16);
        for c in &mut causes {
            c.info.truncate(1024);
        }
        self.stats.errors_sent += 1;
        self.send_on(conn, &AsapMessage::Error(causes));
    }

    // ----------------------------------------------------------- registrars

    fn add_known(&mut self, addr: SocketAddr) {
        match self.known.iter_mut().find(|k| k.addr == addr) {
            Some(k) => k.configured = true,
            None => self.known.push(Known {
                addr,
                configured: true,
                announced_until: None,
                server_id: None,
            }),
        }
    }

    fn learn(&mut self, addr: SocketAddr, server_id: u32) {
        let until = self.now + self.config.t7_outdate;
        if let Some(k) = self.known.iter_mut().find(|k| k.addr == addr) {
            k.announced_until = Some(until);
            k.server_id = Some(server_id);
        } else {
            let announced = self.known.iter().filter(|k| !k.configured).count();
            if announced >= self.config.max_announced {
                self.stats.announces_ignored += 1;
                return;
            }
            self.known.push(Known {
                addr,
                configured: false,
                announced_until: Some(until),
                server_id: Some(server_id),
            });
        }
        self.timers.set(Timer::Outdate(addr), until);
    }

    fn outdate(&mut self, addr: SocketAddr, now: Time) {
        let Some(i) = self.known.iter().position(|k| k.addr == addr) else {
            return;
        };
        let k = &mut self.known[i];
        match k.announced_until {
            Some(t) if t <= now => {
                if k.configured {
                    k.announced_until = None;
                } else {
                    self.known.remove(i);
                }
            }
            Some(t) => self.timers.set(Timer::Outdate(addr), t),
            None => {}
        }
    }

    // ----------------------------------------------------------------- hunt

    fn start_hunt(&mut self) {
        if self.hunt.is_some() {
            return;
        }
        self.stats.hunts += 1;
        self.hunt = Some(Hunt::default());
        self.t5 = self.config.t5_server_hunt;
        self.timers.set(Timer::Hunt, self.now + self.t5);
        self.fill_hunt();
    }

    /// SH1/SH4: keep up to three attempts going with untried addresses.
    fn fill_hunt(&mut self) {
        let fanout = self.config.hunt_fanout.clamp(1, 3);
        let home = self.home_addr();
        loop {
            let Some(hunt) = &self.hunt else { return };
            let busy: Vec<SocketAddr> = self
                .conns
                .values()
                .filter(|c| c.role == Role::Hunt)
                .map(|c| c.addr)
                .collect();
            if busy.len() >= fanout {
                return;
            }
            let n = self.known.len();
            let pick = (0..n).map(|k| (self.hunt_offset + k) % n).find(|&i| {
                let a = self.known[i].addr;
                !hunt.tried.contains(&a) && Some(a) != home && !busy.contains(&a)
            });
            let Some(i) = pick else { return };
            let addr = self.known[i].addr;
            self.hunt_offset = i + 1;
            if let Some(h) = &mut self.hunt {
                h.tried.insert(addr);
            }
            let conn = self.alloc_conn();
            self.conns.insert(
                conn,
                Conn {
                    addr,
                    role: Role::Hunt,
                    up: false,
                },
            );
            self.stats.connect_attempts += 1;
            self.out.push_back(Output::Connect { conn, addr });
        }
    }

    fn close_hunt_conns(&mut self) {
        let hunting: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| c.role == Role::Hunt)
            .map(|(id, _)| *id)
            .collect();
        for c in hunting {
            self.close(c);
        }
    }

    fn stop_hunt(&mut self) {
        self.hunt = None;
        self.timers.cancel(&Timer::Hunt);
        self.t5 = self.config.t5_server_hunt;
        self.close_hunt_conns();
    }

    /// SH5: T5 ran out. Abandon the attempts, double T5, start over.
    fn hunt_round_over(&mut self) {
        if self.hunt.is_none() {
            return;
        }
        if !self.needs_home() {
            return self.stop_hunt();
        }
        self.stats.hunt_rounds_expired += 1;
        self.close_hunt_conns();
        self.t5 = self.t5.saturating_mul(2).min(self.config.retran_max);
        self.hunt = Some(Hunt::default());
        self.timers.set(Timer::Hunt, self.now + self.t5);
        self.fill_hunt();
    }

    /// Make `conn` the home registrar and send it everything pending.
    fn adopt_home(&mut self, conn: ConnId, server_id: Option<u32>) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        c.role = Role::Home;
        c.up = true;
        let addr = c.addr;
        if let Some(old) = self.home.replace(conn) {
            if old != conn {
                self.close(old);
            }
        }
        self.stop_hunt();
        self.home_server_id = server_id.or_else(|| {
            self.known
                .iter()
                .find(|k| k.addr == addr)
                .and_then(|k| k.server_id)
        });
        for s in self.subs.values_mut() {
            s.active = false;
        }
        self.stats.home_changes += 1;
        self.events.push_back(Event::HomeChanged {
            addr,
            server_id: self.home_server_id,
        });
        self.home_ready();
    }

    fn lose_home(&mut self, addr: SocketAddr) {
        self.home = None;
        self.home_server_id = None;
        for s in self.subs.values_mut() {
            s.active = false;
        }
        self.stats.home_losses += 1;
        self.events.push_back(Event::RegistrarLost { addr });
        if self.needs_home() {
            self.start_hunt();
        }
        // A parallel hunt excluded the old home; now every address counts.
        self.fill_hunt();
    }

    /// A new home: re-register every PE, re-send what is pending, renew the
    /// subscriptions, send the queued reports.
    fn home_ready(&mut self) {
        let handles: Vec<PeHandle> = self.pes.keys().copied().collect();
        for h in handles {
            match self.pes.get(&h).map(|p| p.phase) {
                Some(Phase::Idle) => self.begin_register(h, true),
                Some(Phase::Registering) => self.send_registration(h),
                Some(Phase::Deregistering) => self.send_deregistration(h),
                None => {}
            }
        }
        let pools: Vec<PoolHandle> = self.requests.keys().cloned().collect();
        for p in pools {
            self.send_resolution(&p);
        }
        let renew: Vec<(PoolHandle, Option<u32>)> = self
            .subs
            .iter()
            .filter(|(p, _)| !self.requests.get(*p).is_some_and(|r| r.subscribe))
            .map(|(p, s)| (p.clone(), s.items))
            .collect();
        for (p, items) in renew {
            self.request(p, items, true, None);
        }
        while let Some((pool_handle, pe_id)) = self.reports.pop_front() {
            self.send_home(&AsapMessage::EndpointUnreachable { pool_handle, pe_id });
        }
    }

    // ------------------------------------------------------------------- PE

    /// Start a registration attempt (`reset`: the first of a new operation).
    fn begin_register(&mut self, h: PeHandle, reset: bool) {
        let Some(p) = self.pes.get_mut(&h) else {
            return;
        };
        p.phase = Phase::Registering;
        p.attempts = if reset {
            1
        } else {
            p.attempts.saturating_add(1)
        };
        let Some(t2) = self.pes.get(&h).map(|p| self.t2_for(p)) else {
            return;
        };
        self.timers.cancel(&Timer::Reregister(h));
        self.timers.set(Timer::PeOp(h), self.now + t2);
        self.send_registration(h);
    }

    /// T2 for one attempt: the configured value, but when refreshing a
    /// registered PE at most `(life − T4) / MAX-REG-ATTEMPT` (not below 1 s),
    /// so every attempt fits in what is left of the life. (With the RFC
    /// defaults and a short life, T4 leaves 20 s while T2 is 30 s: one lost
    /// refresh would let the PE lapse.)
    fn t2_for(&self, p: &Pe) -> Duration {
        let t2 = self.config.t2_registration;
        if !p.granted {
            return t2;
        }
        let Some(life) = self.config.life(p.reg_life) else {
            return t2;
        };
        let t4 = self.config.t4_reregistration.interval(Some(life));
        let left = life.saturating_sub(t4) / self.config.max_reg_attempt.max(1);
        t2.min(left.max(Duration::from_secs(1)))
    }

    fn send_registration(&mut self, h: PeHandle) {
        let home_id = if self.config.send_home_id {
            self.home_server_id.unwrap_or(0)
        } else {
            0
        };
        let Some(p) = self.pes.get(&h) else { return };
        let msg = registration_msg(p, home_id);
        if self.send_home(&msg) {
            self.stats.registrations_sent += 1;
        } else {
            self.start_hunt();
        }
    }

    fn send_deregistration(&mut self, h: PeHandle) {
        let Some(p) = self.pes.get(&h) else { return };
        let msg = AsapMessage::Deregistration {
            pool_handle: p.pool.clone(),
            pe_id: p.id,
        };
        if self.send_home(&msg) {
            self.stats.deregistrations_sent += 1;
        } else {
            self.start_hunt();
        }
    }

    fn find_pe(&self, pool: &PoolHandle, id: u32) -> Option<PeHandle> {
        self.pes
            .iter()
            .find(|(_, p)| p.id == id && &p.pool == pool)
            .map(|(h, _)| *h)
    }

    fn arm_t4(&mut self, h: PeHandle) {
        let Some(p) = self.pes.get(&h) else { return };
        let iv = self
            .config
            .t4_reregistration
            .interval(self.config.life(p.reg_life));
        self.timers.set(Timer::Reregister(h), self.now + iv);
    }

    fn forget_pe(&mut self, h: PeHandle) -> Option<Pe> {
        self.timers.cancel(&Timer::PeOp(h));
        self.timers.cancel(&Timer::Reregister(h));
        self.pes.remove(&h)
    }

    fn on_registration_response(
        &mut self,
        reject: bool,
        pool: &PoolHandle,
        pe_id: u32,
        error: Option<Vec<ErrorCause>>,
    ) {
        let Some(h) = self.find_pe(pool, pe_id) else {
            self.stats.unexpected += 1;
            return;
        };
        let Some(p) = self.pes.get_mut(&h) else {
            return;
        };
        if p.phase != Phase::Registering {
            // A duplicate (re-sent at a home change) or late answer.
            self.stats.unexpected += 1;
            return;
        }
        self.timers.cancel(&Timer::PeOp(h));
        if !reject {
            self.stats.registrations_granted += 1;
            p.phase = Phase::Idle;
            p.attempts = 0;
            p.ever_granted = true;
            if !p.granted {
                p.granted = true;
                let id = p.id;
                self.events.push_back(Event::Registered { pe: h, id });
            }
            self.arm_t4(h);
            return;
        }
        self.stats.registrations_rejected += 1;
        let c = first_cause(error);
        let retry_new_id = c.code == cause::NON_UNIQUE_PE_ID
            && !p.id_given
            && !p.ever_granted
            && p.attempts < self.config.max_reg_attempt.max(1);
        if retry_new_id {
            let pool = p.pool.clone();
            let new_id = loop {
                let id = self.rng.next_u32();
                if id != 0 && self.find_pe(&pool, id).is_none() {
                    break id;
                }
            };
            if let Some(p) = self.pes.get_mut(&h) {
                p.id = new_id;
            }
            return self.begin_register(h, false);
        }
        if let Some(p) = self.forget_pe(h) {
            if p.ever_granted {
                self.send_home(&AsapMessage::Deregistration {
                    pool_handle: p.pool,
                    pe_id: p.id,
                });
            }
        }
        self.events.push_back(Event::RegistrationFailed {
            pe: h,
            error: AsapError::Cause(c),
        });
    }

    fn on_deregistration_response(
        &mut self,
        pool: &PoolHandle,
        pe_id: u32,
        error: Option<Vec<ErrorCause>>,
    ) {
        let Some(h) = self.find_pe(pool, pe_id) else {
            self.stats.unexpected += 1;
            return;
        };
        let phase = self.pes.get(&h).map(|p| p.phase);
        if phase == Some(Phase::Deregistering) {
            self.forget_pe(h);
            self.events.push_back(match error {
                None => Event::Deregistered { pe: h },
                Some(e) => Event::DeregistrationFailed {
                    pe: h,
                    error: AsapError::Cause(first_cause(Some(e))),
                },
            });
        } else if error.is_none() {
            // Unsolicited: the registrar dropped the PE (its life ran out).
            // The application still wants it: register again.
            self.stats.unsolicited_deregistrations += 1;
            if phase == Some(Phase::Idle) {
                self.begin_register(h, true);
            }
        } else {
            self.stats.unexpected += 1;
        }
    }

    fn pe_op_expired(&mut self, h: PeHandle) {
        let max = self.config.max_reg_attempt.max(1);
        let Some(p) = self.pes.get_mut(&h) else {
            return;
        };
        match p.phase {
            Phase::Idle => {}
            Phase::Registering if p.attempts >= max => {
                if !p.ever_granted {
                    self.forget_pe(h);
                    self.events.push_back(Event::RegistrationFailed {
                        pe: h,
                        error: AsapError::Timeout,
                    });
                } else {
                    p.phase = Phase::Idle;
                    p.attempts = 0;
                    if p.granted {
                        p.granted = false;
                        self.events.push_back(Event::RegistrationLost {
                            pe: h,
                            error: AsapError::Timeout,
                        });
                    }
                    // Not registered now: try again sooner than T4.
                    let iv = self
                        .config
                        .t4_reregistration
                        .interval(self.config.life(p.reg_life))
                        .min(self.config.t2_registration);
                    self.timers.set(Timer::Reregister(h), self.now + iv);
                }
            }
            Phase::Registering => {
                self.start_hunt();
                self.begin_register(h, false);
            }
            Phase::Deregistering if p.attempts >= max => {
                self.forget_pe(h);
                self.events.push_back(Event::DeregistrationFailed {
                    pe: h,
                    error: AsapError::Timeout,
                });
            }
            Phase::Deregistering => {
                p.attempts += 1;
                self.timers
                    .set(Timer::PeOp(h), self.now + self.config.t3_deregistration);
                self.start_hunt();
                self.send_deregistration(h);
            }
        }
    }

    /// KA1/KA2 (digest §9.7).
    fn on_keep_alive(
        &mut self,
        conn: ConnId,
        home_flag: bool,
        server_id: u32,
        pool: &PoolHandle,
        pe_id: Option<u32>,
    ) {
        let ours: Vec<u32> = self
            .pes
            .values()
            .filter(|p| &p.pool == pool && p.phase != Phase::Deregistering)
            .filter(|p| pe_id.is_none_or(|id| id == p.id))
            .map(|p| p.id)
            .collect();
        if ours.is_empty() {
            self.stats.keep_alives_dropped += 1;
            return;
        }
        for id in ours {
            self.stats.keep_alives_acked += 1;
            self.send_on(
                conn,
                &AsapMessage::EndpointKeepAliveAck {
                    pool_handle: pool.clone(),
                    pe_id: id,
                },
            );
        }
        if self.home == Some(conn) {
            self.home_server_id = Some(server_id);
        } else if home_flag && self.home_server_id != Some(server_id) {
            self.stats.home_adoptions += 1;
            self.adopt_home(conn, Some(server_id));
        }
    }

    // ------------------------------------------------------------------- PU

    /// Ask the home registrar about `pool` (or join the request on the wire).
    fn request(
        &mut self,
        pool: PoolHandle,
        items: Option<u32>,
        subscribe: bool,
        waiter: Option<RequestId>,
    ) {
        if let Some(r) = self.requests.get_mut(&pool) {
            let upgrade = (subscribe && !r.subscribe) || items > r.items;
            r.subscribe |= subscribe;
            r.items = r.items.max(items);
            r.waiters.extend(waiter);
            if upgrade {
                self.send_resolution(&pool);
            }
            return;
        }
        self.requests.insert(
            pool.clone(),
            Request {
                items,
                subscribe,
                waiters: waiter.into_iter().collect(),
                retransmits: 0,
            },
        );
        self.timers.set(
            Timer::Request(pool.clone()),
            self.now + self.config.t1_request,
        );
        self.send_resolution(&pool);
    }

    fn send_resolution(&mut self, pool: &PoolHandle) {
        let Some(r) = self.requests.get(pool) else {
            return;
        };
        let msg = AsapMessage::HandleResolution {
            subscribe: r.subscribe,
            pool_handle: pool.clone(),
            items: r.items,
        };
        if self.send_home(&msg) {
            self.stats.resolutions_sent += 1;
        } else {
            self.start_hunt();
        }
    }

    fn request_expired(&mut self, pool: PoolHandle) {
        let max = self.config.max_request_retransmit;
        let Some(r) = self.requests.get_mut(&pool) else {
            return;
        };
        if r.retransmits < max {
            r.retransmits += 1;
            self.timers.set(
                Timer::Request(pool.clone()),
                self.now + self.config.t1_request,
            );
            self.start_hunt();
            self.send_resolution(&pool);
            return;
        }
        let Some(r) = self.requests.remove(&pool) else {
            return;
        };
        self.stats.resolution_timeouts += 1;
        for request in &r.waiters {
            self.events.push_back(Event::Resolved {
                request: *request,
                pool: pool.clone(),
                result: Err(AsapError::Timeout),
                subscribed: false,
            });
        }
        if r.subscribe && r.waiters.is_empty() && self.subs.contains_key(&pool) {
            self.events.push_back(Event::PoolUpdate {
                pool,
                result: Err(AsapError::Timeout),
            });
        }
    }

    fn on_resolution_response(
        &mut self,
        accepted: bool,
        pool: PoolHandle,
        policy: Option<Policy>,
        elements: Vec<PoolElement>,
        error: Option<Vec<ErrorCause>>,
    ) {
        self.stats.resolution_responses += 1;
        let result = match error {
            None if !elements.is_empty() => Ok(ResolvedPool {
                policy: policy.unwrap_or(Policy::RoundRobin),
                elements,
            }),
            None => Err(ErrorCause::new(cause::UNKNOWN_POOL_HANDLE)),
            e => Err(first_cause(e)),
        };
        // Incidents end for PEs the registrar no longer lists.
        if let Some(inc) = self.incidents.get_mut(&pool) {
            match &result {
                Ok(rp) => inc.retain(|id, _| rp.elements.iter().any(|pe| pe.id == *id)),
                Err(_) => inc.clear(),
            }
            if inc.is_empty() {
                self.incidents.remove(&pool);
            }
        }
        self.cache
            .insert(pool.clone(), Entry::new(result.clone(), self.now));
        let req = self.requests.remove(&pool);
        if req.is_some() {
            self.timers.cancel(&Timer::Request(pool.clone()));
        }
        if req.is_none() && !self.subs.contains_key(&pool) {
            // A push for a subscription we dropped, or a late answer.
            self.stats.unexpected += 1;
        }
        let asked_sub = req.as_ref().is_some_and(|r| r.subscribe);
        let subscribed = match self.subs.get_mut(&pool) {
            Some(s) => {
                if asked_sub || accepted {
                    s.active = accepted;
                }
                s.active
            }
            None => false,
        };
        let result = result.map_err(AsapError::Cause);
        let waiters = req.map(|r| r.waiters).unwrap_or_default();
        for request in &waiters {
            self.events.push_back(Event::Resolved {
                request: *request,
                pool: pool.clone(),
                result: result.clone(),
                subscribed,
            });
        }
        if self.subs.contains_key(&pool) && waiters.is_empty() {
            self.events.push_back(Event::PoolUpdate { pool, result });
        }
    }

    fn expire_incidents(&mut self, pool: &PoolHandle) {
        let hold = self.config.unreachable_holdoff;
        let now = self.now;
        if let Some(inc) = self.incidents.get_mut(pool) {
            inc.retain(|_, t| *t + hold > now);
            if inc.is_empty() {
                self.incidents.remove(pool);
            }
        }
    }
}

/// The registration message of a PE.
fn registration_msg(p: &Pe, home: u32) -> AsapMessage {
    AsapMessage::Registration {
        pool_handle: p.pool.clone(),
        pe: PoolElement {
            id: p.id,
            home,
            reg_life: p.reg_life,
            user_transport: p.transport.clone(),
            policy: p.policy.clone(),
            asap_transport: None,
        },
    }
}

/// The first cause of an Operational Error (0x0 if none was given).
fn first_cause(error: Option<Vec<ErrorCause>>) -> ErrorCause {
    error
        .and_then(|v| v.into_iter().next())
        .unwrap_or_else(|| ErrorCause::new(cause::UNSPECIFIED))
}

/// A pool handle the codec can carry in any message we send.
fn check_pool(pool: &PoolHandle) -> Result<(), AsapError> {
    if pool.0.is_empty() {
        return Err(AsapError::InvalidArgument("empty pool handle"));
    }
    // Room for the header, the option and the largest fixed parts.
    if pool.0.len() > MAX_LENGTH - 64 {
        return Err(AsapError::InvalidArgument("pool handle too long"));
    }
    Ok(())
}
