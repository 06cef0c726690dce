//! The blocking application API: a [`Context`] runs the ASAP client on its own
//! loop thread and offers pool element and pool user calls that wait for their
//! answer, like a socket API. The C API (`rserpool_*`) is a thin shell over it.
//!
//! ```no_run
//! use rserpool::api::{Config, Context, PeParams};
//! use rserpool::wire::{Policy, Transport};
//! let mut cfg = Config::default();
//! cfg.add_registrar("tcp://127.0.0.1:3863").unwrap();
//! let ctx = Context::new(cfg).unwrap();
//! let tcp = Transport::Tcp { port: 7, transport_use: 0, addr: [127, 0, 0, 1].into() };
//! let id = ctx
//!     .register_pe(PeParams::new("echo", tcp, Policy::LeastUsed { load: 0 }))
//!     .unwrap();
//! let server = ctx.get_primary_server(b"echo").unwrap();
//! assert_eq!(server.pe_id, id);
//! ctx.deregister(id).unwrap();
//! ```
//!
//! # Enhanced mode: sessions
//!
//! A pool element listens and registers with [`Context::pe_listen`] and
//! accepts one [`PeSessionHandle`] per pool user ([`PeServer::accept`]); a
//! pool user opens a [`Session`] to a pool ([`Context::open_session`]) or to
//! a transport address ([`Context::open_session_to`]) and sends to it
//! ([`Session::send`]) or to one of its PEs ([`Session::send_to_pe`]). The
//! session fails over on its own (or, if told not to, reports
//! [`Notification::PeerFailed`] and waits for [`Session::failover_now`]),
//! echoes the PE's latest cookie to the next PE, and re-sends what the dead
//! PE never acknowledged. The PE acknowledges a message when its application
//! comes back after handling it (see [`PeSessionHandle`]), so no request is
//! lost with the PE that was handling it.
//!
//! ```no_run
//! use rserpool::api::{Config, Context, Notification, PeListenParams, PeNotification, SessionOptions};
//! use rserpool::runtime::EndpointUrl;
//! use rserpool::wire::Policy;
//! # let mut cfg = Config::default();
//! # cfg.add_registrar("tcp://127.0.0.1:3863").unwrap();
//! let ctx = Context::new(cfg).unwrap();
//! // Pool element: echo every message of every pool user.
//! let url = EndpointUrl::parse("tcp://127.0.0.1:0").unwrap();
//! let server = ctx.pe_listen(PeListenParams::new("echo", url, Policy::RoundRobin)).unwrap();
//! std::thread::spawn(move || {
//!     while let Ok(s) = server.accept(None) {
//!         std::thread::spawn(move || {
//!             while let Ok(n) = s.recv(None) {
//!                 if let PeNotification::Data { ppid, bytes, .. } = n {
//!                     s.send(&bytes, ppid).unwrap(); // also acknowledges it
//!                 }
//!             }
//!         });
//!     }
//! });
//! // Pool user.
//! let s = ctx.open_session(b"echo", SessionOptions::default()).unwrap();
//! s.send(b"hello", 42, 0).unwrap();
//! loop {
//!     if let Notification::Data { bytes, .. } = s.recv(None).unwrap() {
//!         assert_eq!(bytes, b"hello");
//!         break;
//!     }
//! }
//! ```
//!
//! # Threading
//!
//! Every method may be called from any thread, concurrently. A waiting call
//! posts a closure to the loop thread and waits on a channel; the core's
//! events are dispatched on the loop thread to the callers waiting for them.
//! Waits are bounded by the core's own timer rules (a registration fails
//! after MAX-REG-ATTEMPT × T2, a resolution after (1 + MAX-REQUEST-RETRANSMIT)
//! × T1) plus a safety margin.
//!
//! Session and PE session calls do not wait for the loop: `send` locks the
//! session, queues the message and wakes the loop; `recv` waits only for a
//! notification.
//!
//! # Callbacks
//!
//! Data, fail-over and PE session callbacks run on the context's loop thread,
//! one at a time, while nothing else of that context runs: keep them short.
//! Inside one, every non-blocking call works and takes effect right after the
//! callback returns (sends from a fail-over callback go out before the
//! re-sent messages); calls that wait ([`Session::recv`] with a timeout,
//! [`Context::open_session`] with `wait_connected`, [`Context::pe_listen`],
//! [`PeServer::accept`], the registration and resolution calls) return
//! [`Error::WouldDeadlock`] instead of blocking the thread that would have to
//! answer them. A panic in a callback is caught and reported on stderr.
//!
//! # Pool element identifiers
//!
//! A registered PE is named by its PE identifier, which is unique within a
//! context: registering a fixed identifier already used by a live PE of the
//! same context fails with [`Error::InvalidArgument`].

mod hub;
mod notify;
mod pe;
mod session;

pub use pe::{PeCallback, PeListenParams, PeNotification, PeServer, PeSessionHandle};
pub use session::{
    DataCallback, FailoverCallback, FailoverInfo, Message, Notification, SendReceipt, Session,
    SessionOptions, RECV_QUEUE_BOUND,
};

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, Sender};
use parking_lot::{Condvar, Mutex};

use hub::{Bounds, ContextDriver, Hub, LoopRef, Work};

use crate::asap::{
    AsapError, Client, ClientConfig, Event, PeHandle, PeStatus, RegisterOptions, RequestId,
    Selection,
};
use crate::runtime::client::{ClientDriver, ClientHandler};
use crate::runtime::registrar::random_u64;
use crate::runtime::sys::shared_udp_socket;
use crate::runtime::{EndpointUrl, EventLoop, ListenerId, Proto, RuntimeConfig, StartError};
use crate::time::Time;
use crate::wire::{cause, transport_use, Policy, PoolElement, PoolHandle, Transport};

/// Why a [`Context`] call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// An argument is out of range (the text says which).
    InvalidArgument(String),
    /// The registrar refused with this RFC 5354 cause (0x9: unknown pool).
    Refused(u16),
    /// No registrar could be reached in time.
    NoRegistrar,
    /// A registrar was reachable but did not answer in time.
    Timeout,
    /// Every PE of the pool has been reported unreachable.
    NoUsableElement,
    /// No live PE with this identifier in this context.
    UnknownPe,
    /// The configured transport is not available (kernel SCTP).
    Unsupported(String),
    /// The operating system refused (starting the loop, a socket, a thread).
    Os(String),
    /// The loop thread is gone (a bug, or the context is being dropped).
    Closed,
    /// A session's send buffer is at its bound
    /// ([`SessionConfig::max_buffered`](crate::session::SessionConfig::max_buffered)
    /// or `max_buffered_bytes`): try again once messages are acknowledged.
    BufferFull,
    /// The session (or PE server) is closed.
    SessionClosed,
    /// The call makes no sense in the object's current state (the text says
    /// why).
    InvalidState(String),
    /// A call that waits was made on the context's loop thread (from a
    /// callback), where waiting would block the very thread that must
    /// answer. Use the non-blocking form there (`try_recv`, sessions opened
    /// without `wait_connected`).
    WouldDeadlock,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(s) => write!(f, "invalid argument: {s}"),
            Error::Refused(c) => write!(f, "refused by the registrar (cause {c:#x})"),
            Error::NoRegistrar => f.write_str("no registrar reachable"),
            Error::Timeout => f.write_str("the registrar did not answer in time"),
            Error::NoUsableElement => f.write_str("every pool element is unreachable"),
            Error::UnknownPe => f.write_str("no such pool element in this context"),
            Error::Unsupported(s) => f.write_str(s),
            Error::Os(s) => f.write_str(s),
            Error::Closed => f.write_str("the context's loop thread is gone"),
            Error::BufferFull => f.write_str("the session's send buffer is full"),
            Error::SessionClosed => f.write_str("the session is closed"),
            Error::InvalidState(s) => write!(f, "invalid in this state: {s}"),
            Error::WouldDeadlock => {
                f.write_str("a waiting call from a callback on the context's loop thread")
            }
        }
    }
}

impl std::error::Error for Error {}

/// What a [`Context`] is built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Registrars to call home (`tcp://HOST:PORT`, `sctp://HOST[,HOST]:PORT`).
    pub registrars: Vec<EndpointUrl>,
    /// Learn registrars from ASAP_SERVER_ANNOUNCE on this multicast group and
    /// port. Default off.
    pub announce: Option<SocketAddr>,
    /// The ASAP timers and thresholds ([`ClientConfig::registrars`] is
    /// replaced by [`Config::registrars`]).
    pub client: ClientConfig,
    /// How long dropping the context waits for the deregistration of the PEs
    /// still registered. Default 2 s.
    pub shutdown_timeout: Duration,
    /// TCP mapping heartbeats on every connection of the context (to
    /// registrars, and sessions' both ways): a HEARTBEAT after this long
    /// without hearing from the peer. Default 30 s (SCTP's HB.interval).
    pub heartbeat_interval: Duration,
    /// A connection whose peer left this many HEARTBEATs in a row
    /// unanswered is closed: for a session, a failed PE (fail-over).
    /// Default 3.
    pub heartbeat_max_missed: u32,
    /// TCP mapping: acknowledge the DATA chunks of one read burst with one
    /// ACK chunk carrying the cumulative TSN instead of one ACK chunk each
    /// (the draft's letter, digest §10.4). Fewer chunks for streaming
    /// sessions; only for peers known to read the Cumulative TSN Ack as
    /// cumulative, as this library does. Default off.
    pub coalesce_acks: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            registrars: Vec::new(),
            announce: None,
            client: ClientConfig::default(),
            shutdown_timeout: Duration::from_secs(2),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_max_missed: 3,
            coalesce_acks: false,
        }
    }
}

impl Config {
    /// Add a registrar URL.
    pub fn add_registrar(&mut self, url: &str) -> Result<(), Error> {
        let u = EndpointUrl::parse(url).map_err(|e| Error::InvalidArgument(e.0))?;
        if u.port == 0 || u.addrs.iter().any(|a| a.is_unspecified()) {
            return Err(Error::InvalidArgument(format!(
                "registrar URL {url:?} needs a concrete address and port"
            )));
        }
        self.registrars.push(u);
        Ok(())
    }
}

/// A PE to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeParams {
    /// The pool handle.
    pub pool: PoolHandle,
    /// Where pool users reach the PE (concrete addresses, non-zero port).
    pub transport: Transport,
    /// The PE's policy and its values.
    pub policy: Policy,
    /// Registration life in [`ClientConfig::reg_life_unit`] (−1 = infinite).
    pub reg_life: i32,
    /// A fixed PE identifier (`None`: random).
    pub pe_id: Option<u32>,
}

impl PeParams {
    /// A PE with a registration life of 60 s (in the default unit) and a
    /// random identifier.
    pub fn new(pool: impl Into<PoolHandle>, transport: Transport, policy: Policy) -> Self {
        PeParams {
            pool: pool.into(),
            transport,
            policy,
            reg_life: 60,
            pe_id: None,
        }
    }
}

/// The PE a pool user should use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The PE identifier (for [`Context::get_next_server`] and
    /// [`Context::report_failure`]).
    pub pe_id: u32,
    /// Where to reach it.
    pub transport: Transport,
    /// Its policy and values as registered.
    pub policy: Policy,
}

impl From<PoolElement> for ServerInfo {
    fn from(pe: PoolElement) -> Self {
        ServerInfo {
            pe_id: pe.id,
            transport: pe.user_transport,
            policy: pe.policy,
        }
    }
}

type Reply<T> = Sender<Result<T, Error>>;

#[derive(Debug)]
struct LivePe {
    id: u32,
    policy: Policy,
}

/// The callers waiting for the core's events, the live PEs, and the
/// sessions and PE servers ([`Hub`]).
#[derive(Debug, Default)]
pub(crate) struct Waiters {
    pes: BTreeMap<PeHandle, LivePe>,
    registering: HashMap<PeHandle, Reply<u32>>,
    deregistering: HashMap<PeHandle, Reply<()>>,
    selecting: HashMap<RequestId, Vec<(PoolHandle, Reply<ServerInfo>)>>,
    /// Fired when the last PE is gone (shutdown).
    all_gone: Option<Sender<()>>,
    hub: Hub,
}

impl Waiters {
    fn by_id(&self, id: u32) -> Option<PeHandle> {
        self.pes.iter().find(|(_, p)| p.id == id).map(|(h, _)| *h)
    }

    fn forget(&mut self, pe: PeHandle) {
        self.pes.remove(&pe);
        if self.pes.is_empty() {
            if let Some(tx) = self.all_gone.take() {
                let _ = tx.send(());
            }
        }
    }

    /// Answer a selection: `Ready` now, `Failed` now, or wait for `Pending`.
    fn select(&mut self, pool: PoolHandle, sel: Selection, client: &Client, tx: Reply<ServerInfo>) {
        match sel {
            Selection::Ready(pe) => {
                let _ = tx.send(Ok(pe.into()));
            }
            Selection::Failed(e) => {
                let _ = tx.send(Err(map_err(e, client)));
            }
            Selection::Pending(req) => self.selecting.entry(req).or_default().push((pool, tx)),
        }
    }
}

pub(crate) fn map_err(e: AsapError, client: &Client) -> Error {
    match e {
        AsapError::Cause(c) => Error::Refused(c.code),
        AsapError::Timeout if client.home().is_none() => Error::NoRegistrar,
        AsapError::Timeout => Error::Timeout,
        AsapError::NoUsableElement => Error::NoUsableElement,
        AsapError::InvalidArgument(s) => Error::InvalidArgument(s.into()),
        AsapError::UnknownHandle => Error::UnknownPe,
    }
}

impl ClientHandler for Waiters {
    fn on_event(&mut self, client: &mut Client, event: Event, now: Time) {
        match event {
            Event::Registered { pe, id } => {
                if let Some(p) = self.pes.get_mut(&pe) {
                    p.id = id;
                }
                if let Some(tx) = self.registering.remove(&pe) {
                    let _ = tx.send(Ok(id));
                }
            }
            Event::RegistrationFailed { pe, error } => {
                self.forget(pe);
                if let Some(tx) = self.registering.remove(&pe) {
                    let _ = tx.send(Err(map_err(error, client)));
                }
            }
            Event::Deregistered { pe } => {
                self.forget(pe);
                if let Some(tx) = self.deregistering.remove(&pe) {
                    let _ = tx.send(Ok(()));
                }
            }
            Event::DeregistrationFailed { pe, error } => {
                self.forget(pe);
                if let Some(tx) = self.deregistering.remove(&pe) {
                    let _ = tx.send(Err(map_err(error, client)));
                }
            }
            Event::Resolved {
                request,
                result,
                pool,
                ..
            } => {
                self.hub.on_resolved(client, request, &pool, &result, now);
                let Some(waiting) = self.selecting.remove(&request) else {
                    return;
                };
                for (p, tx) in waiting {
                    match &result {
                        // Timeouts and refusals answer every waiter as they are.
                        Err(e) => {
                            let _ = tx.send(Err(map_err(e.clone(), client)));
                        }
                        Ok(_) => match client.get_primary_server(&p, now) {
                            // A fresh answer and still nothing to offer (e.g. with
                            // a stale-cache age of 0): every PE listed is in an
                            // unreachability incident. Asking again would loop.
                            Selection::Pending(_) => {
                                let _ = tx.send(Err(Error::NoUsableElement));
                            }
                            sel => self.select(p, sel, client, tx),
                        },
                    }
                }
            }
            Event::PoolUpdate {
                pool,
                result: Ok(p),
            } => self.hub.refresh_known(&pool, &p),
            Event::RegistrationLost { .. }
            | Event::PoolUpdate { .. }
            | Event::HomeChanged { .. }
            | Event::RegistrarLost { .. }
            | Event::ProtocolError { .. } => {}
        }
    }
}

type Driver = ContextDriver;

/// The ASAP client of an application: pool element and pool user, on its own
/// loop thread. Dropping it deregisters the PEs still registered (waiting at
/// most [`Config::shutdown_timeout`]) and stops the thread.
pub struct Context {
    lp: Arc<LoopRef>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
    announce: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    client: ClientConfig,
    shutdown_timeout: Duration,
    next_session: AtomicU64,
}

impl fmt::Debug for Context {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Context")
            .field("registrars", &self.client.registrars)
            .finish_non_exhaustive()
    }
}

/// Added to the core's own bounds before a waiting call gives up on its own.
const MARGIN: Duration = Duration::from_secs(5);

impl Context {
    /// Start the loop thread. Fails with [`Error::Unsupported`] for `sctp://`
    /// registrars where the kernel has no SCTP, [`Error::Os`] when a socket or
    /// thread cannot be created.
    pub fn new(config: Config) -> Result<Context, Error> {
        if let Some(u) = config.registrars.iter().find(|u| u.proto == Proto::Sctp) {
            if !crate::runtime::probe_sctp().is_available() {
                return Err(Error::Unsupported(format!(
                    "registrar {u}: this kernel has no SCTP support"
                )));
            }
        }
        let mut ccfg = config.client.clone();
        // TCP registrars: every address is a registrar to try. An SCTP
        // registrar is one multi-homed endpoint: the core knows it by its
        // first address, and the driver connects to all of them at once.
        let mut sctp_routes = Vec::new();
        ccfg.registrars = Vec::new();
        for u in &config.registrars {
            let addrs = u.socket_addrs();
            match u.proto {
                Proto::Sctp => {
                    if let Some(&first) = addrs.first() {
                        ccfg.registrars.push(first);
                        sctp_routes.push((first, addrs));
                    }
                }
                Proto::Tcp => ccfg.registrars.extend(addrs),
            }
        }
        let rt = RuntimeConfig {
            connect_timeout: ccfg.t5_server_hunt.max(Duration::from_millis(100)),
            heartbeat_interval: config.heartbeat_interval,
            heartbeat_max_missed: config.heartbeat_max_missed,
            coalesce_acks: config.coalesce_acks,
            ..RuntimeConfig::default()
        };
        let origin = Instant::now();
        let client = Client::new(ccfg.clone(), random_u64(), Time::ZERO);
        let mut cdriver = ClientDriver::new(client, Waiters::default());
        for (first, addrs) in sctp_routes {
            cdriver = cdriver.with_sctp_route(first, addrs);
        }
        let inline = Arc::new(Mutex::new(Vec::new()));
        let driver = ContextDriver::new(cdriver, inline.clone());
        let ev = EventLoop::new(rt, origin, driver).map_err(|e| match e {
            StartError::Unsupported(s) => Error::Unsupported(s),
            StartError::Io { .. } => Error::Os(e.to_string()),
        })?;
        let handle = ev.handle();
        let thread = std::thread::Builder::new()
            .name("rserpool-client".into())
            .spawn(move || {
                let mut ev = ev;
                ev.run()
            })
            .map_err(|e| Error::Os(format!("starting the client thread: {e}")))?;
        let bounds = Bounds {
            registration: ccfg.t2_registration * ccfg.max_reg_attempt.max(1) + MARGIN,
            deregistration: ccfg.t3_deregistration * ccfg.max_reg_attempt.max(1) + MARGIN,
            resolution: ccfg.t1_request * (ccfg.max_request_retransmit + 1) + MARGIN,
            margin: MARGIN,
        };
        let lp = Arc::new(LoopRef {
            handle,
            thread: thread.thread().id(),
            inline,
            origin,
            next_listener: AtomicU64::new(1),
            bounds,
        });
        let mut ctx = Context {
            lp,
            thread: Some(thread),
            announce: None,
            client: ccfg,
            shutdown_timeout: config.shutdown_timeout,
            next_session: AtomicU64::new(1),
        };
        if let Some(group) = config.announce {
            ctx.announce = Some(listen_announces(group, ctx.lp.clone())?);
        }
        Ok(ctx)
    }

    /// Post `f` to the loop thread and wait at most `bound` for its answer
    /// ([`Error::WouldDeadlock`] from a callback).
    fn ask<T: Send + 'static>(
        &self,
        bound: Duration,
        f: impl FnOnce(&mut Driver, Time, Reply<T>) + Send + 'static,
    ) -> Result<T, Error> {
        self.lp.ask(bound, f)
    }

    fn registration_bound(&self) -> Duration {
        self.lp.bounds.registration
    }

    fn resolution_bound(&self) -> Duration {
        self.lp.bounds.resolution
    }

    /// Register a PE and wait until the registrar granted it (its PE
    /// identifier) or the core gave up (refusal cause, [`Error::NoRegistrar`],
    /// [`Error::Timeout`]). Afterwards the PE is re-registered every T4, its
    /// keep-alives answered and a new home registrar adopted without help.
    pub fn register_pe(&self, params: PeParams) -> Result<u32, Error> {
        self.ask(self.registration_bound(), move |d, now, tx| {
            d.command(now, |client, w| {
                if let Some(id) = params.pe_id {
                    if w.by_id(id).is_some() {
                        let _ = tx.send(Err(Error::InvalidArgument(format!(
                            "PE identifier {id} is already used in this context"
                        ))));
                        return;
                    }
                }
                let policy = params.policy.clone();
                match client.register(
                    params.pool,
                    params.transport,
                    params.policy,
                    params.reg_life,
                    RegisterOptions {
                        pe_id: params.pe_id,
                    },
                    now,
                ) {
                    Ok(h) => {
                        let id = client.pe_id(h).unwrap_or(0);
                        w.pes.insert(h, LivePe { id, policy });
                        w.registering.insert(h, tx);
                    }
                    Err(e) => {
                        let _ = tx.send(Err(map_err(e, client)));
                    }
                }
            })
        })
    }

    /// Change a registered PE's policy values (same policy type) and
    /// re-register at once. Returns when the update is queued; a refusal
    /// shows up later as the PE being gone.
    pub fn update_policy(&self, pe_id: u32, policy: Policy) -> Result<(), Error> {
        self.ask(MARGIN, move |d, now, tx| {
            d.command(now, |client, w| {
                let r = match w.by_id(pe_id) {
                    None => Err(Error::UnknownPe),
                    Some(h) => {
                        let old = &w.pes[&h].policy;
                        if old.policy_type() != policy.policy_type() {
                            Err(Error::InvalidArgument(format!(
                                "policy type {} differs from the registered {}",
                                policy.name(),
                                old.name()
                            )))
                        } else {
                            let r = client
                                .update_policy(h, policy.clone(), now)
                                .map_err(|e| map_err(e, client));
                            if r.is_ok() {
                                if let Some(p) = w.pes.get_mut(&h) {
                                    p.policy = policy;
                                }
                            }
                            r
                        }
                    }
                };
                let _ = tx.send(r);
            })
        })
    }

    /// Set the load of a PE whose policy has one (LU, LUD, PLU, RLU); the
    /// degradation stays. [`Error::InvalidArgument`] for other policies.
    pub fn update_load(&self, pe_id: u32, load: u32) -> Result<(), Error> {
        let policy = self.policy_of(pe_id)?;
        let p = match policy {
            Policy::LeastUsed { .. } => Policy::LeastUsed { load },
            Policy::LeastUsedDegradation { degradation, .. } => {
                Policy::LeastUsedDegradation { load, degradation }
            }
            Policy::PriorityLeastUsed { degradation, .. } => {
                Policy::PriorityLeastUsed { load, degradation }
            }
            Policy::RandomizedLeastUsed { .. } => Policy::RandomizedLeastUsed { load },
            other => {
                return Err(Error::InvalidArgument(format!(
                    "policy {} has no load",
                    other.name()
                )))
            }
        };
        self.update_policy(pe_id, p)
    }

    fn policy_of(&self, pe_id: u32) -> Result<Policy, Error> {
        self.ask(MARGIN, move |d, _, tx| {
            let w = d.handler();
            let r = w
                .by_id(pe_id)
                .map(|h| w.pes[&h].policy.clone())
                .ok_or(Error::UnknownPe);
            let _ = tx.send(r);
        })
    }

    /// Where a PE stands ([`Error::UnknownPe`] once deregistered or given up).
    pub fn pe_status(&self, pe_id: u32) -> Result<PeStatus, Error> {
        self.ask(MARGIN, move |d, _, tx| {
            let r = d
                .handler()
                .by_id(pe_id)
                .and_then(|h| d.client().pe_status(h))
                .ok_or(Error::UnknownPe);
            let _ = tx.send(r);
        })
    }

    /// Deregister a PE and wait for the registrar's answer. The PE is
    /// forgotten whatever the result; a second call gives [`Error::UnknownPe`].
    pub fn deregister(&self, pe_id: u32) -> Result<(), Error> {
        deregister_on(&self.lp, pe_id)
    }

    /// GET_PRIMARY_SERVER: a PE of `pool` by the pool's policy, from the cache
    /// or after a resolution (waited for). Unknown pool:
    /// [`Error::Refused`]`(0x9)`.
    pub fn get_primary_server(&self, pool: &[u8]) -> Result<ServerInfo, Error> {
        let pool = check_pool(pool)?;
        self.ask(self.resolution_bound(), move |d, now, tx| {
            d.command(now, |client, w| {
                let sel = client.get_primary_server(&pool, now);
                w.select(pool, sel, client, tx);
            })
        })
    }

    /// GET_NEXT_SERVER: report `failed_pe_id` unreachable (at most once per
    /// incident) and return the next PE by policy.
    pub fn get_next_server(&self, pool: &[u8], failed_pe_id: u32) -> Result<ServerInfo, Error> {
        let pool = check_pool(pool)?;
        self.ask(self.resolution_bound(), move |d, now, tx| {
            d.command(now, |client, w| {
                let sel = client.get_next_server(&pool, failed_pe_id, now);
                w.select(pool, sel, client, tx);
            })
        })
    }

    /// Report a PE unreachable without asking for another. Returns whether a
    /// report went (or is queued) to the registrar: false when the PE was
    /// already reported in this incident or the rate limit held it back.
    pub fn report_failure(&self, pool: &[u8], pe_id: u32) -> Result<bool, Error> {
        let pool = check_pool(pool)?;
        self.ask(MARGIN, move |d, now, tx| {
            let sent = d.command(now, |client, _| client.report_failure(&pool, pe_id, now));
            let _ = tx.send(Ok(sent));
        })
    }

    /// The home registrar's address, if there is one now.
    pub fn home(&self) -> Result<Option<SocketAddr>, Error> {
        self.ask(MARGIN, |d, _, tx| {
            let _ = tx.send(Ok(d.client().home().map(|(a, _)| a)));
        })
    }

    fn shutdown(&mut self) {
        // Sessions and PE servers end first (their handles see Closed).
        self.lp.handle.call(|d, now| d.close_all(now));
        // Best-effort deregistration of the PEs still registered, bounded.
        let (tx, rx) = bounded::<()>(1);
        let posted = self.lp.handle.call(move |d, now| {
            d.command(now, |client, w| {
                let live: Vec<PeHandle> = w.pes.keys().copied().collect();
                if live.is_empty() || client.home().is_none() {
                    let _ = tx.send(());
                    return;
                }
                w.all_gone = Some(tx);
                for h in live {
                    if let Some(r) = w.registering.remove(&h) {
                        let _ = r.send(Err(Error::Closed));
                    }
                    if client.deregister(h, now).is_err() {
                        w.forget(h);
                    }
                }
            })
        });
        // Dropped in a callback, on the loop thread itself: nobody could
        // answer or be joined; the loop deregisters and stops after the
        // callback returns, and its thread ends on its own.
        let on_loop = self.lp.on_loop();
        if posted && !on_loop {
            let _ = rx.recv_timeout(self.shutdown_timeout);
        }
        self.lp.handle.stop();
        if let Some(t) = self.thread.take() {
            if !on_loop {
                let _ = t.join();
            }
        }
        if let Some((stop, t)) = self.announce.take() {
            stop.store(true, Ordering::Relaxed);
            let _ = t.join();
        }
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn check_pool(pool: &[u8]) -> Result<PoolHandle, Error> {
    if pool.is_empty() || pool.len() > usize::from(u16::MAX) - 4 {
        return Err(Error::InvalidArgument(
            "a pool handle is 1 to 65531 bytes".into(),
        ));
    }
    Ok(PoolHandle(pool.to_vec()))
}

/// A thread that joins `group` and hands every datagram to the core as an
/// announce, until `stop` is set.
fn listen_announces(
    group: SocketAddr,
    lp: Arc<LoopRef>,
) -> Result<(Arc<AtomicBool>, JoinHandle<()>), Error> {
    let os = |what: &str, e: std::io::Error| Error::Os(format!("{what} {group}: {e}"));
    let sock = match group {
        SocketAddr::V4(g) => {
            let s = shared_udp_socket(false, g.port()).map_err(|e| os("binding", e))?;
            s.join_multicast_v4(g.ip(), &std::net::Ipv4Addr::UNSPECIFIED)
                .map_err(|e| os("joining", e))?;
            s
        }
        SocketAddr::V6(g) => {
            let s = shared_udp_socket(true, g.port()).map_err(|e| os("binding", e))?;
            s.join_multicast_v6(g.ip(), 0)
                .map_err(|e| os("joining", e))?;
            s
        }
    };
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| os("configuring", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let t = std::thread::Builder::new()
        .name("rserpool-announce".into())
        .spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop2.load(Ordering::Relaxed) {
                if let Ok((n, src)) = sock.recv_from(&mut buf) {
                    let bytes = buf[..n].to_vec();
                    lp.handle.call(move |d, now| d.announce(src, &bytes, now));
                }
            }
        })
        .map_err(|e| Error::Os(format!("starting the announce thread: {e}")))?;
    Ok((stop, t))
}

/// The RFC 5354 cause for an unknown pool handle, for matching on
/// [`Error::Refused`].
pub const UNKNOWN_POOL: u16 = cause::UNKNOWN_POOL_HANDLE;

/// Deregister `pe_id` through the loop and wait for the answer.
fn deregister_on(lp: &LoopRef, pe_id: u32) -> Result<(), Error> {
    lp.ask(lp.bounds.deregistration, move |d, now, tx| {
        d.command(now, |client, w| match w.by_id(pe_id) {
            Some(h) if !w.deregistering.contains_key(&h) => {
                // A registration still waiting is answered first.
                if let Some(r) = w.registering.remove(&h) {
                    let _ = r.send(Err(Error::UnknownPe));
                }
                match client.deregister(h, now) {
                    Ok(()) => {
                        w.deregistering.insert(h, tx);
                    }
                    Err(e) => {
                        w.forget(h);
                        let _ = tx.send(Err(map_err(e, client)));
                    }
                }
            }
            _ => {
                let _ = tx.send(Err(Error::UnknownPe));
            }
        })
    })
}

/// Enhanced mode: sessions of pool users, servers of pool elements.
impl Context {
    /// Open an enhanced-mode session to `pool`: the session picks a PE by
    /// the pool's policy (from the cache, or after a resolution), connects,
    /// and fails over by `opts.config`. Returns at once unless
    /// `opts.wait_connected` asks to wait for the first PE; then a session
    /// that could not connect in time is closed and the error returned (the
    /// registrar's refusal, [`Error::NoUsableElement`], [`Error::Timeout`]).
    pub fn open_session(&self, pool: &[u8], opts: SessionOptions) -> Result<Session, Error> {
        let pool = check_pool(pool)?;
        let core = crate::session::Session::open(pool, opts.config.clone(), self.lp.now());
        self.adopt(core, opts)
    }

    /// Open a session to the PE at a transport address (`tcp://ADDR:PORT`
    /// with the TCP mapping, or `sctp://ADDR[,ADDR]:PORT`), the third
    /// destination form of the applicability statement. Its PE identifier is
    /// unknown: the session calls it 0. Without a pool a failure of that PE
    /// ends the session ([`Notification::Failed`]), unless it gave a
    /// business card; with `pool` the session fails over into that pool.
    pub fn open_session_to(
        &self,
        addr: &EndpointUrl,
        pool: Option<&[u8]>,
        opts: SessionOptions,
    ) -> Result<Session, Error> {
        let pool = pool.map(check_pool).transpose()?;
        if addr.port == 0 || addr.addrs.iter().any(|a| a.is_unspecified()) {
            return Err(Error::InvalidArgument(format!(
                "{addr}: a session needs a concrete address and port"
            )));
        }
        let user_transport = match addr.proto {
            Proto::Tcp => Transport::Tcp {
                port: addr.port,
                transport_use: transport_use::DATA_PLUS_CONTROL,
                addr: addr.addrs[0],
            },
            Proto::Sctp => {
                if !crate::runtime::probe_sctp().is_available() {
                    return Err(Error::Unsupported(format!(
                        "{addr}: this kernel has no SCTP support"
                    )));
                }
                Transport::Sctp {
                    port: addr.port,
                    transport_use: transport_use::DATA_PLUS_CONTROL,
                    addrs: addr.addrs.clone(),
                }
            }
        };
        let pe = PoolElement {
            id: 0,
            home: 0,
            reg_life: 0,
            user_transport,
            policy: Policy::RoundRobin,
            asap_transport: None,
        };
        let core =
            crate::session::Session::open_direct(pool, pe, opts.config.clone(), self.lp.now());
        self.adopt(core, opts)
    }

    /// Hand a new session core to the loop thread, with its handle.
    fn adopt(&self, core: crate::session::Session, opts: SessionOptions) -> Result<Session, Error> {
        if opts.wait_connected.is_some() && self.lp.on_loop() {
            return Err(Error::WouldDeadlock);
        }
        let signal = notify::Signal::new().map_err(|e| Error::Os(format!("eventfd: {e}")))?;
        let shared = Arc::new(session::PuShared {
            id: self.next_session.fetch_add(1, Ordering::Relaxed),
            core: Mutex::new(core),
            needs_pump: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            state: Mutex::new(session::PuState {
                queue: Default::default(),
                signal,
                connected: false,
                ended: false,
                last_error: None,
                queued_bytes: 0,
                read_paused: false,
            }),
            cv: Condvar::new(),
            callbacks: Mutex::new(session::PuCallbacks {
                data: opts.on_data.map(|f| Arc::new(Mutex::new(f))),
                failover: opts.on_failover.map(|f| Arc::new(Mutex::new(f))),
            }),
            known: Mutex::new(HashMap::new()),
            lp: self.lp.clone(),
        });
        let inner = Arc::new(session::SessionInner {
            shared: shared.clone(),
        });
        if !self
            .lp
            .submit(Work::AdoptPu(shared.clone(), Arc::downgrade(&inner)))
        {
            return Err(Error::Closed);
        }
        let s = Session { inner };
        if let Some(t) = opts.wait_connected {
            let deadline = Instant::now() + t;
            let mut st = shared.state.lock();
            while !st.connected && !st.ended {
                if shared.cv.wait_until(&mut st, deadline).timed_out() {
                    break;
                }
            }
            if !st.connected {
                let err = if st.ended {
                    st.last_error.clone().unwrap_or(Error::NoUsableElement)
                } else {
                    Error::Timeout
                };
                drop(st);
                s.close();
                return Err(err);
            }
        }
        Ok(s)
    }

    /// Listen for pool users and register a PE there, like socket + bind +
    /// listen: opens the listener (port 0: the kernel's), registers the PE
    /// with the bound transport (every address, Transport Use
    /// DATA_PLUS_CONTROL: the connection carries the control channel) and
    /// returns once the registrar granted it. Pool users' sessions come from
    /// [`PeServer::accept`].
    pub fn pe_listen(&self, params: PeListenParams) -> Result<PeServer, Error> {
        if self.lp.on_loop() {
            return Err(Error::WouldDeadlock);
        }
        let url = params.listen.clone();
        if url.addrs.iter().any(|a| a.is_unspecified()) {
            return Err(Error::InvalidArgument(format!(
                "{url}: a pool element registers concrete addresses"
            )));
        }
        if url.proto == Proto::Tcp && url.addrs.len() != 1 {
            return Err(Error::InvalidArgument(format!(
                "{url}: a TCP pool element has exactly one address"
            )));
        }
        if url.proto == Proto::Sctp && !crate::runtime::probe_sctp().is_available() {
            return Err(Error::Unsupported(format!(
                "{url}: this kernel has no SCTP support"
            )));
        }
        let signal = notify::Signal::new().map_err(|e| Error::Os(format!("eventfd: {e}")))?;
        let shared = Arc::new(pe::PeServerShared {
            listener: ListenerId(self.lp.next_listener.fetch_add(1, Ordering::Relaxed)),
            pe_id: Default::default(),
            accept: Mutex::new(pe::AcceptState {
                queue: Default::default(),
                signal,
                closed: false,
            }),
            cv: Condvar::new(),
            callback: Mutex::new(None),
            sessions: Mutex::new(Vec::new()),
            lp: self.lp.clone(),
        });
        let (tx, rx) = bounded(1);
        if !self.lp.submit(Work::Listen {
            server: shared.clone(),
            url: url.clone(),
            reply: tx,
        }) {
            return Err(Error::Closed);
        }
        let addrs = match rx.recv_timeout(self.lp.bounds.margin) {
            Ok(r) => r?,
            Err(_) => return Err(Error::Timeout),
        };
        let mut server = PeServer {
            shared,
            transport: Transport::Tcp {
                port: 0,
                transport_use: transport_use::DATA_PLUS_CONTROL,
                addr: url.addrs[0],
            },
            addrs: addrs.clone(),
            done: false,
        };
        let Some(port) = addrs.first().map(|a| a.port()) else {
            server.done = true;
            self.lp.submit(Work::Unlisten(server.shared.listener));
            return Err(Error::Os(format!("{url}: no address bound")));
        };
        server.transport = match url.proto {
            Proto::Tcp => Transport::Tcp {
                port,
                transport_use: transport_use::DATA_PLUS_CONTROL,
                addr: addrs[0].ip(),
            },
            Proto::Sctp => Transport::Sctp {
                port,
                transport_use: transport_use::DATA_PLUS_CONTROL,
                addrs: addrs.iter().map(|a| a.ip()).collect(),
            },
        };
        let reg = self.register_pe(PeParams {
            pool: params.pool,
            transport: server.transport.clone(),
            policy: params.policy,
            reg_life: params.reg_life,
            pe_id: params.pe_id,
        });
        match reg {
            Ok(id) => {
                server.shared.pe_id.store(id, Ordering::Relaxed);
                Ok(server)
            }
            Err(e) => {
                server.done = true;
                self.lp.submit(Work::Unlisten(server.shared.listener));
                Err(e)
            }
        }
    }
}
