//! Enhanced-mode sessions (RFC 5351 §2.5, RFC 5352 §3.8-§3.9, §6.5,
//! draft-ietf-rserpool-applic §3.2-§3.7), sans-IO.
//!
//! A pool user talks to a *pool* through one [`Session`]: the session picks a
//! pool element (PE), connects to its user transport, carries application
//! messages as DATA with the application's PPID and ASAP control messages
//! (cookies, business cards) as PPID 11 on the same connection (the control
//! channel, digest §9.15). When the PE fails, the session reports it, picks
//! the next PE (the last business card's order first, then the pool's policy
//! through the ASAP client), connects, echoes the latest cookie as the first
//! message, lets the application run its fail-over callback
//! ([`Event::Failover`]) and re-sends, in order, every message the dead PE
//! never acknowledged (TCP mapping ACK chunks, digest §10.4), then the queued
//! ones. The PE side of an accepted connection is [`PeSession`].
//!
//! A session usually starts from its pool ([`Session::open`]); one opened
//! to a given PE ([`Session::open_direct`], e.g. a transport address) has a
//! pool to fail over into only if the application gave one.
//!
//! It does no I/O and reads no clock. Method families as in quinn (STYLE.md
//! §2) and [`crate::asap::Client`]:
//!
//! - getters: [`Session::state`], [`Session::current_pe`],
//!   [`Session::cookie`], [`Session::business_card`], [`Session::stats`], ...
//! - `handle_*`: input from the runtime: [`Session::handle_server`] /
//!   [`Session::handle_no_server`] (answers to [`Output::NeedServer`]),
//!   [`Session::handle_connected`], [`Session::handle_connect_failed`],
//!   [`Session::handle_closed`] (also for a missed heartbeat),
//!   [`Session::handle_data`], [`Session::handle_ack`],
//!   [`Session::handle_timeout`];
//! - commands: [`Session::send`], [`Session::failover_now`],
//!   [`Session::switch_to`] (move to a PE the application chose),
//!   [`Session::set_business_card`] (a pool user that is also a PE),
//!   [`Session::close`], [`Session::take_unsent`];
//! - `poll_*`: after every input or command drain [`Session::poll_output`]
//!   until `None`, then [`Session::poll_event`] until `None` (and loop back
//!   to `poll_output` while events came), then arm [`Session::poll_timeout`].
//!
//! # Runtime glue
//!
//! - [`Output::NeedServer`]: call `asap::Client::get_primary_server(pool)`
//!   (the PEs in `exclude` are already reported unreachable through
//!   [`Output::ReportUnreachable`], so the client skips them); answer
//!   `Ready(pe)` with [`Session::handle_server`], `Failed` with
//!   [`Session::handle_no_server`], `Pending` by asking again after the
//!   client's `Event::Resolved`.
//! - For [`Output::ReportUnreachable`] call
//!   `asap::Client::report_unreachable`.
//! - [`Output::Connect`]: open the PE's user transport (TCP with the TCP
//!   mapping, or SCTP); answer with `handle_connected`/`handle_connect_failed`.
//! - [`Output::Send`]: one DATA chunk. `tsn` is the chunk's position on the
//!   connection (0, 1, 2, ...), which is what a
//!   [`crate::wire::tcpmap::TxSequencer`] assigns when the runtime sends the
//!   outputs in order; every ACK chunk from the peer goes to
//!   [`Session::handle_ack`].
//!
//! # Fail-over sequence (documented choices)
//!
//! 1. Failure of the current PE (`handle_closed`, a failed or timed-out
//!    connect): [`Output::ReportUnreachable`]; with upper-layer acks the
//!    messages the PE never acknowledged go back, in order, to the head of
//!    the send queue (acknowledged ones are gone for good).
//! 2. Automatic fail-over or not: if any buffered message was sent with
//!    [`FailoverMode::NoFailover`] there is none; else if any was sent with
//!    [`FailoverMode::Failover`] there is; else the session's
//!    [`SessionConfig::auto_failover`]. Without it: [`Event::PeerFailed`],
//!    nothing goes out until [`Session::failover_now`] (or `close`).
//! 3. Next PE: the first PE of the latest business card not failed in this
//!    episode, else [`Output::NeedServer`]. Every connect attempt counts;
//!    after [`SessionConfig::max_attempts`] without success the session gives
//!    up: [`Event::Failed`] and [`State::Closed`] (the unsent messages stay
//!    available through [`Session::take_unsent`]).
//! 4. Connected: ASAP_COOKIE_ECHO with the latest cookie is the first DATA
//!    chunk (only if the PE announced a control channel, Transport Use
//!    DATA_PLUS_CONTROL, and a cookie was received), our own business card
//!    next (if set), then
//!    [`Event::Failover`]. Messages the application sends from the moment the
//!    event is queued until its next `poll_output` call (its fail-over
//!    callback) go out before the re-sent ones; then the re-sent messages,
//!    then the rest of the queue.
#![forbid(unsafe_code)]

mod pe;
mod pool;

pub use pe::{PeEvent, PeOutput, PeSession, PeStats, SessionAcceptor};
use pool::BufPool;

use std::collections::{BTreeSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use crate::registrar::{ConnId, PPID_ASAP};
use crate::time::Time;
use crate::wire::tcpmap::MAX_DATA_HEADER_LEN;
use crate::wire::{AsapMessage, PoolElement, PoolHandle, Transport};

/// Largest application message: one DATA chunk (digest §10.3).
pub const MAX_MESSAGE_LEN: usize = u16::MAX as usize - MAX_DATA_HEADER_LEN;

/// RFC 5352 §6.5.5 send option: use the session's default.
pub const ASAP_USE_DEFAULT: u32 = 0x0000;
/// RFC 5352 §6.5.5 send option: fail over if the current PE fails.
pub const ASAP_SEND_FAILOVER: u32 = 0x0001;
/// RFC 5352 §6.5.5 send option: report the failure to the application
/// instead of failing over.
pub const ASAP_SEND_NO_FAILOVER: u32 = 0x0002;

/// Session settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionConfig {
    /// Keep every message until the PE's ACK chunk for it arrives and re-send
    /// the unacknowledged ones after a fail-over (digest §10.4). Default true.
    pub upper_layer_acks: bool,
    /// Fail over without asking the application. Default true.
    pub auto_failover: bool,
    /// Most messages buffered (queued plus unacknowledged). Default 1024.
    pub max_buffered: usize,
    /// Most payload bytes buffered. Default 2 MiB: the runtime closes a
    /// connection whose write buffer passes 4 MiB, and a PE that answers
    /// every message (an echo from its loop thread cannot wait) has as much
    /// in flight back as the pool user has toward it, plus framing; half the
    /// runtime's bound keeps both sides clear of it.
    pub max_buffered_bytes: usize,
    /// A connect attempt not answered within this counts as failed. Default 5 s.
    pub connect_timeout: Duration,
    /// Connect attempts (and "no server" answers) per episode before giving
    /// up. Default 5.
    pub max_attempts: u32,
    /// Wait before asking for a PE again after [`Session::handle_no_server`].
    /// Default 1 s.
    pub retry_interval: Duration,
    /// Report every acknowledged message with [`Event::Acked`] (the
    /// upper-layer acknowledgement of draft-ietf-rserpool-applic §3.6).
    /// Default false.
    pub ack_events: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            upper_layer_acks: true,
            auto_failover: true,
            max_buffered: 1024,
            max_buffered_bytes: 2 << 20,
            connect_timeout: Duration::from_secs(5),
            max_attempts: 5,
            retry_interval: Duration::from_secs(1),
            ack_events: false,
        }
    }
}

/// Per-send fail-over override (ASAP_SEND_FAILOVER / ASAP_SEND_NO_FAILOVER).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailoverMode {
    /// The session's [`SessionConfig::auto_failover`].
    #[default]
    Default,
    /// Fail over automatically if the PE fails while this message is buffered.
    Failover,
    /// Do not: report [`Event::PeerFailed`] and wait for the application.
    NoFailover,
}

/// Options of one [`Session::send`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct SendOptions {
    /// Fail-over override.
    pub failover: FailoverMode,
    /// Stream identifier.
    pub stream: u16,
    /// Unordered delivery (DATA flag U).
    pub unordered: bool,
}

impl SendOptions {
    /// From RFC 5352 §6.5.5 flag bits (ASAP_SEND_FAILOVER,
    /// ASAP_SEND_NO_FAILOVER, ASAP_SCTP_UNORDER 0x1000; others ignored).
    /// NO_FAILOVER wins when both are set.
    pub fn from_flags(flags: u32) -> Self {
        let failover = if flags & ASAP_SEND_NO_FAILOVER != 0 {
            FailoverMode::NoFailover
        } else if flags & ASAP_SEND_FAILOVER != 0 {
            FailoverMode::Failover
        } else {
            FailoverMode::Default
        };
        SendOptions {
            failover,
            stream: 0,
            unordered: flags & 0x1000 != 0,
        }
    }
}

/// Why [`Session::send`] refused a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendError {
    /// PPID 11 is reserved for ASAP control messages.
    ReservedPpid,
    /// Longer than [`MAX_MESSAGE_LEN`].
    TooLarge,
    /// The buffer bound ([`SessionConfig::max_buffered`] or
    /// [`SessionConfig::max_buffered_bytes`]) is reached.
    BufferFull,
    /// The session is closed.
    Closed,
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SendError::ReservedPpid => "PPID 11 is reserved for ASAP",
            SendError::TooLarge => "message too large",
            SendError::BufferFull => "send buffer full",
            SendError::Closed => "session closed",
        })
    }
}

impl std::error::Error for SendError {}

/// Why a session ended on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionError {
    /// No PE could be reached within [`SessionConfig::max_attempts`].
    GaveUp {
        /// Attempts made in the last episode.
        attempts: u32,
    },
    /// The command is not valid in the current state.
    InvalidState,
}

impl fmt::Display for SessionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SessionError::GaveUp { attempts } => {
                write!(f, "no pool element reachable after {attempts} attempts")
            }
            SessionError::InvalidState => f.write_str("invalid in this session state"),
        }
    }
}

impl std::error::Error for SessionError {}

/// An application message going out, lent to the sink of
/// [`Session::poll_output_with`] instead of an owned [`Output::Send`] copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendRef<'a> {
    /// The connection (the session's current one).
    pub conn: ConnId,
    /// The DATA chunk's position on the connection, as in [`Output::Send`].
    pub tsn: u32,
    /// The stream.
    pub stream: u16,
    /// Unordered delivery.
    pub unordered: bool,
    /// The payload protocol identifier.
    pub ppid: u32,
    /// The message's sequence number.
    pub seq: u64,
    /// The message.
    pub bytes: &'a [u8],
}

/// Something for the runtime to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Ask the ASAP client for a PE of `pool`; answer with
    /// [`Session::handle_server`] or [`Session::handle_no_server`].
    NeedServer {
        /// The pool.
        pool: PoolHandle,
        /// PEs that failed in this episode (already reported).
        exclude: Vec<u32>,
    },
    /// Report the PE unreachable (`asap::Client::report_unreachable`).
    ReportUnreachable {
        /// The pool.
        pool: PoolHandle,
        /// The PE.
        pe_id: u32,
    },
    /// Open a connection to the PE's user transport.
    Connect {
        /// The name the session gives it.
        conn: ConnId,
        /// Where (for SCTP: the first address of the transport).
        addr: SocketAddr,
        /// The PE (its user transport says TCP or SCTP).
        pe: PoolElement,
    },
    /// Send one message as one DATA chunk.
    Send {
        /// The connection.
        conn: ConnId,
        /// The chunk's TSN: 0, 1, 2, ... per connection.
        tsn: u32,
        /// Stream identifier.
        stream: u16,
        /// Unordered (DATA flag U).
        unordered: bool,
        /// 11 for ASAP control, the application's PPID otherwise.
        ppid: u32,
        /// The message.
        bytes: Vec<u8>,
        /// The application message's sequence number (None for control).
        seq: Option<u64>,
    },
    /// Close the connection (the session has forgotten it).
    Close {
        /// The connection.
        conn: ConnId,
    },
}

/// Something for the application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The first PE is connected.
    Connected {
        /// Its identifier.
        pe: u32,
    },
    /// An application message from the PE.
    Data {
        /// Its PPID.
        ppid: u32,
        /// The message.
        bytes: Vec<u8>,
        /// The stream it came on.
        stream: u16,
    },
    /// Fail-over done: the new connection is up and the cookie echo is out.
    /// Messages sent now (the fail-over callback) go before the re-sent ones.
    /// Also after [`Session::switch_to`] moved an established session.
    Failover {
        /// The PE that failed (or was switched away from).
        from: u32,
        /// The new PE.
        to: u32,
        /// Sequence numbers of the messages about to be re-sent to the new
        /// PE (sent to an earlier one and never acknowledged), in order.
        resent: Vec<u64>,
    },
    /// The PE failed and there is no automatic fail-over: nothing is sent
    /// until [`Session::failover_now`] or [`Session::close`].
    PeerFailed {
        /// The PE that failed.
        pe: u32,
    },
    /// The session gave up; it is closed.
    Failed(SessionError),
    /// The PE acknowledged the message with this sequence number (only with
    /// [`SessionConfig::ack_events`]).
    Acked {
        /// The number [`Session::send`] returned.
        seq: u64,
    },
}

/// Where the session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Waiting for a PE (an answer to [`Output::NeedServer`] or the retry timer).
    Selecting,
    /// A connect attempt is in progress.
    Connecting,
    /// Connected to a PE.
    Up,
    /// The PE failed; waiting for the application ([`Event::PeerFailed`]).
    PeerFailed,
    /// Closed by the application or given up.
    Closed,
}

/// Counters.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Application messages handed out as [`Output::Send`] (re-sends included).
    pub sent: u64,
    /// Of those, re-sent after a fail-over.
    pub resent: u64,
    /// Application messages acknowledged.
    pub acked: u64,
    /// ACKs with nothing outstanding to acknowledge.
    pub unexpected_acks: u64,
    /// Cookies received.
    pub cookies: u64,
    /// Business cards received.
    pub business_cards: u64,
    /// Other ASAP messages on the control channel (ignored).
    pub ignored_control: u64,
    /// Undecodable control messages.
    pub malformed_control: u64,
    /// Fail-overs completed.
    pub failovers: u64,
    /// Connect attempts.
    pub connect_attempts: u64,
}

#[derive(Debug, Clone)]
struct Msg {
    seq: u64,
    ppid: u32,
    bytes: Vec<u8>,
    opts: SendOptions,
    /// Sent at least once before.
    sent_before: bool,
}

/// A DATA chunk on the current connection waiting for its ACK.
#[derive(Debug)]
enum Sent {
    /// An ASAP control message (cookie echo).
    Control,
    /// An application message, kept for re-sending (upper-layer acks).
    Kept(Msg),
    /// An application message of this many bytes, not kept (no upper-layer
    /// acks): it still counts toward the buffer bounds until the transport
    /// acknowledges it, so a fast sender cannot pile up more than they allow
    /// in the connection's write buffer.
    Dropped(usize),
}

#[derive(Debug)]
struct Episode {
    /// The PE that failed (None: the initial open).
    from: Option<u32>,
    failed: BTreeSet<u32>,
    attempts: u32,
}

#[derive(Debug)]
enum Phase {
    Selecting {
        /// Retry timer after "no server".
        retry_at: Option<Time>,
    },
    Connecting {
        conn: ConnId,
        pe: PoolElement,
        deadline: Time,
    },
    Up {
        conn: ConnId,
        pe: PoolElement,
        next_tsn: u32,
        /// Chunks sent and not yet acknowledged, in TSN order.
        inflight: VecDeque<(u32, Sent)>,
    },
    PeerFailed {
        pe: u32,
    },
    Closed,
}

/// The pool user's side of an enhanced-mode session (see the module docs).
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    /// None: a session to one transport address, nothing to fail over to
    /// (but a business card's PEs).
    pool: Option<PoolHandle>,
    phase: Phase,
    episode: Option<Episode>,
    now: Time,
    next_conn: u64,
    next_seq: u64,
    /// Messages waiting to go out (re-sends first after a failure).
    queue: VecDeque<Msg>,
    buffered_bytes: usize,
    /// Application messages in the current connection's `inflight`.
    unacked: usize,
    /// Insert position for messages sent in the fail-over callback window.
    resume_pos: usize,
    /// Event::Failover queued, not yet polled.
    callback_pending: bool,
    /// Event::Failover polled, no poll_output since.
    callback_open: bool,
    cookie: Option<Vec<u8>>,
    card: Option<(PoolHandle, Vec<PoolElement>)>,
    /// Our own business card (a PU that is also a PE), encoded.
    my_card: Option<Vec<u8>>,
    out: VecDeque<Output>,
    events: VecDeque<Event>,
    stats: SessionStats,
    /// Buffers of acknowledged messages, reused by `send`.
    bufs: BufPool,
}

fn pe_addr(pe: &PoolElement) -> Option<SocketAddr> {
    match &pe.user_transport {
        Transport::Tcp { port, addr, .. } => Some(SocketAddr::new(*addr, *port)),
        Transport::Sctp { port, addrs, .. } => addrs.first().map(|a| SocketAddr::new(*a, *port)),
        _ => None,
    }
}

impl Session {
    /// Open a session to `pool`: it starts by asking for a PE
    /// ([`Output::NeedServer`]).
    pub fn open(pool: PoolHandle, config: SessionConfig, now: Time) -> Self {
        let mut s = Self::new(Some(pool), config, now);
        s.next_server();
        s
    }

    /// Open a session to one given PE (e.g. a transport address the
    /// application knows: the third destination form of
    /// draft-ietf-rserpool-applic §3.3): it starts by connecting to `pe`.
    /// With a pool the session fails over into it like any other; without
    /// one a failure ends the session ([`Event::Failed`]) unless the PE gave
    /// a business card.
    pub fn open_direct(
        pool: Option<PoolHandle>,
        pe: PoolElement,
        config: SessionConfig,
        now: Time,
    ) -> Self {
        let mut s = Self::new(pool, config, now);
        s.start_connect(pe);
        s
    }

    fn new(pool: Option<PoolHandle>, config: SessionConfig, now: Time) -> Self {
        Session {
            config,
            pool,
            phase: Phase::Selecting { retry_at: None },
            episode: Some(Episode {
                from: None,
                failed: BTreeSet::new(),
                attempts: 0,
            }),
            now,
            next_conn: 0,
            next_seq: 0,
            queue: VecDeque::new(),
            buffered_bytes: 0,
            unacked: 0,
            resume_pos: 0,
            callback_pending: false,
            callback_open: false,
            cookie: None,
            card: None,
            my_card: None,
            out: VecDeque::new(),
            events: VecDeque::new(),
            stats: SessionStats::default(),
            bufs: BufPool::default(),
        }
    }

    // ------------------------------------------------------------ getters

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The pool (None for a session opened to a PE without one).
    pub fn pool(&self) -> Option<&PoolHandle> {
        self.pool.as_ref()
    }

    /// Where the session stands.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::Selecting { .. } => State::Selecting,
            Phase::Connecting { .. } => State::Connecting,
            Phase::Up { .. } => State::Up,
            Phase::PeerFailed { .. } => State::PeerFailed,
            Phase::Closed => State::Closed,
        }
    }

    /// The PE connected to (Up) or being connected to.
    pub fn current_pe(&self) -> Option<&PoolElement> {
        match &self.phase {
            Phase::Connecting { pe, .. } | Phase::Up { pe, .. } => Some(pe),
            _ => None,
        }
    }

    /// The current connection (Up or Connecting).
    pub fn current_conn(&self) -> Option<ConnId> {
        match &self.phase {
            Phase::Connecting { conn, .. } | Phase::Up { conn, .. } => Some(*conn),
            _ => None,
        }
    }

    /// The latest cookie received (opaque).
    pub fn cookie(&self) -> Option<&[u8]> {
        self.cookie.as_deref()
    }

    /// The latest business card: its pool handle and PEs in fail-over order.
    pub fn business_card(&self) -> Option<(&PoolHandle, &[PoolElement])> {
        self.card.as_ref().map(|(p, v)| (p, v.as_slice()))
    }

    /// Application messages buffered: queued plus sent-but-unacknowledged
    /// (without upper-layer acks: sent and not yet acknowledged by the
    /// transport, though no longer kept).
    pub fn buffered(&self) -> usize {
        self.queue.len() + self.unacked()
    }

    /// Application messages sent and not yet acknowledged.
    pub fn unacked(&self) -> usize {
        match &self.phase {
            Phase::Up { .. } => self.unacked,
            _ => 0,
        }
    }

    /// Counters.
    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    // ------------------------------------------------------------ poll

    /// [`Session::poll_output`] for a runtime that copies application
    /// messages straight into its output: the queued messages are lent to
    /// `sink` (at least one, then more while their bytes stay within
    /// `max_bytes`) instead of being handed out as [`Output::Send`] copies;
    /// the session keeps its own copy (upper-layer acks) or drops it, as
    /// with `poll_output`. Other outputs come back as usual, and the
    /// messages only once none of those is waiting, so the order is the
    /// same. Loop while it returns `Some` or `sink` was called.
    pub fn poll_output_with(
        &mut self,
        max_bytes: usize,
        sink: &mut dyn FnMut(SendRef<'_>),
    ) -> Option<Output> {
        if !self.callback_pending {
            self.callback_open = false;
            self.resume_pos = 0;
            if self.out.is_empty() {
                self.flush_with(max_bytes, sink);
            }
        }
        self.out.pop_front()
    }

    /// The next thing for the runtime to do.
    pub fn poll_output(&mut self) -> Option<Output> {
        if !self.callback_pending {
            if self.callback_open {
                self.callback_open = false;
            }
            self.resume_pos = 0;
            self.flush();
        }
        self.out.pop_front()
    }

    /// The next event for the application.
    pub fn poll_event(&mut self) -> Option<Event> {
        let ev = self.events.pop_front()?;
        if matches!(ev, Event::Failover { .. }) && self.callback_pending {
            self.callback_pending = false;
            self.callback_open = true;
        }
        Some(ev)
    }

    /// When to call [`Session::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<Time> {
        match &self.phase {
            Phase::Selecting { retry_at } => *retry_at,
            Phase::Connecting { deadline, .. } => Some(*deadline),
            _ => None,
        }
    }

    // ------------------------------------------------------------ handle

    /// Timer input; early or repeated calls are harmless.
    pub fn handle_timeout(&mut self, now: Time) {
        self.advance(now);
        match &mut self.phase {
            Phase::Selecting {
                retry_at: Some(t), ..
            } if *t <= self.now => {
                self.phase = Phase::Selecting { retry_at: None };
                self.next_server();
            }
            Phase::Connecting { conn, deadline, .. } if *deadline <= self.now => {
                let conn = *conn;
                self.out.push_back(Output::Close { conn });
                self.attempt_failed();
            }
            _ => {}
        }
    }

    /// The answer to [`Output::NeedServer`]: connect to `pe`. Ignored unless
    /// the session is waiting for a PE.
    pub fn handle_server(&mut self, pe: PoolElement, now: Time) {
        self.advance(now);
        if matches!(self.phase, Phase::Selecting { retry_at: None }) {
            self.start_connect(pe);
        }
    }

    /// The answer to [`Output::NeedServer`]: no PE available now. Counts as
    /// an attempt; asks again after [`SessionConfig::retry_interval`].
    pub fn handle_no_server(&mut self, now: Time) {
        self.advance(now);
        if !matches!(self.phase, Phase::Selecting { retry_at: None }) {
            return;
        }
        let attempts = match &mut self.episode {
            Some(e) => {
                e.attempts = e.attempts.saturating_add(1);
                e.attempts
            }
            None => return,
        };
        if attempts >= self.config.max_attempts {
            self.give_up(attempts);
        } else {
            self.phase = Phase::Selecting {
                retry_at: Some(self.now + self.config.retry_interval),
            };
        }
    }

    /// The connection asked for with [`Output::Connect`] is up.
    pub fn handle_connected(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        let pe = match &self.phase {
            Phase::Connecting { conn: c, pe, .. } if *c == conn => pe.clone(),
            _ => return,
        };
        let episode = self.episode.take();
        let mut next_tsn = 0u32;
        let mut inflight = VecDeque::new();
        let control = pe.user_transport.transport_use() != crate::wire::transport_use::DATA_ONLY;
        if let (Some(cookie), true) = (&self.cookie, control) {
            let mut bytes = Vec::new();
            AsapMessage::CookieEcho(cookie.clone()).encode(&mut bytes);
            self.out.push_back(Output::Send {
                conn,
                tsn: next_tsn,
                stream: 0,
                unordered: false,
                ppid: PPID_ASAP,
                bytes,
                seq: None,
            });
            inflight.push_back((next_tsn, Sent::Control));
            next_tsn = next_tsn.wrapping_add(1);
        }
        if let (Some(bytes), true) = (&self.my_card, control) {
            self.out.push_back(Output::Send {
                conn,
                tsn: next_tsn,
                stream: 0,
                unordered: false,
                ppid: PPID_ASAP,
                bytes: bytes.clone(),
                seq: None,
            });
            inflight.push_back((next_tsn, Sent::Control));
            next_tsn = next_tsn.wrapping_add(1);
        }
        let to = pe.id;
        self.unacked = 0;
        self.phase = Phase::Up {
            conn,
            pe,
            next_tsn,
            inflight,
        };
        match episode.and_then(|e| e.from) {
            Some(from) => {
                self.stats.failovers += 1;
                let resent = self
                    .queue
                    .iter()
                    .filter(|m| m.sent_before)
                    .map(|m| m.seq)
                    .collect();
                self.events.push_back(Event::Failover { from, to, resent });
                self.callback_pending = true;
                self.resume_pos = 0;
            }
            None => self.events.push_back(Event::Connected { pe: to }),
        }
    }

    /// The connect attempt failed.
    pub fn handle_connect_failed(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        if matches!(&self.phase, Phase::Connecting { conn: c, .. } if *c == conn) {
            self.attempt_failed();
        }
    }

    /// The connection closed or the runtime declared it dead (missed
    /// heartbeats). Unknown or old connections are ignored.
    pub fn handle_closed(&mut self, conn: ConnId, now: Time) {
        self.advance(now);
        match &self.phase {
            Phase::Connecting { conn: c, .. } if *c == conn => self.attempt_failed(),
            Phase::Up { conn: c, .. } if *c == conn => self.peer_failed(),
            _ => {}
        }
    }

    /// A DATA chunk's message arrived on `conn` (on `stream`): PPID 11 is
    /// the control channel (cookies, business cards), anything else goes to
    /// the application as [`Event::Data`].
    pub fn handle_data(&mut self, conn: ConnId, stream: u16, ppid: u32, bytes: &[u8], now: Time) {
        self.advance(now);
        if !matches!(&self.phase, Phase::Up { conn: c, .. } if *c == conn) {
            return;
        }
        if ppid != PPID_ASAP {
            self.events.push_back(Event::Data {
                ppid,
                bytes: bytes.to_vec(),
                stream,
            });
            return;
        }
        match AsapMessage::decode(bytes) {
            Ok(d) => match d.msg {
                AsapMessage::Cookie(c) => {
                    self.stats.cookies += 1;
                    self.cookie = Some(c);
                }
                AsapMessage::BusinessCard {
                    pool_handle,
                    elements,
                    ..
                } => {
                    self.stats.business_cards += 1;
                    self.card = Some((pool_handle, elements));
                }
                _ => self.stats.ignored_control += 1,
            },
            Err(_) => self.stats.malformed_control += 1,
        }
    }

    /// An ACK chunk arrived on `conn`: with `cum_tsn` everything up to it is
    /// acknowledged, without it the oldest outstanding chunk (the PE sends
    /// one ACK per delivered DATA chunk, in order).
    pub fn handle_ack(&mut self, conn: ConnId, cum_tsn: Option<u32>, now: Time) {
        self.advance(now);
        let inflight = match &mut self.phase {
            Phase::Up {
                conn: c, inflight, ..
            } if *c == conn => inflight,
            _ => return,
        };
        let mut acked = 0usize;
        while let Some((tsn, _)) = inflight.front() {
            let take = match cum_tsn {
                None => acked == 0,
                // Serial-number comparison: tsn <= cum_tsn.
                Some(cum) => (cum.wrapping_sub(*tsn) as i32) >= 0,
            };
            if !take {
                break;
            }
            match inflight.pop_front() {
                Some((_, Sent::Kept(m))) => {
                    self.unacked -= 1;
                    self.buffered_bytes = self.buffered_bytes.saturating_sub(m.bytes.len());
                    self.stats.acked += 1;
                    if self.config.ack_events {
                        self.events.push_back(Event::Acked { seq: m.seq });
                    }
                    self.bufs.give(m.bytes);
                }
                Some((_, Sent::Dropped(len))) => {
                    self.unacked -= 1;
                    self.buffered_bytes = self.buffered_bytes.saturating_sub(len);
                }
                _ => {}
            }
            acked += 1;
        }
        if acked == 0 {
            self.stats.unexpected_acks += 1;
        }
    }

    // ------------------------------------------------------------ commands

    /// Queue an application message; returns its sequence number. It goes
    /// out when a PE is connected (in order), and with upper-layer acks stays
    /// buffered until acknowledged.
    pub fn send(&mut self, bytes: &[u8], ppid: u32, opts: SendOptions) -> Result<u64, SendError> {
        if matches!(self.phase, Phase::Closed) {
            return Err(SendError::Closed);
        }
        if ppid == PPID_ASAP {
            return Err(SendError::ReservedPpid);
        }
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(SendError::TooLarge);
        }
        if self.buffered() >= self.config.max_buffered
            || self.buffered_bytes.saturating_add(bytes.len()) > self.config.max_buffered_bytes
        {
            return Err(SendError::BufferFull);
        }
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.buffered_bytes += bytes.len();
        let m = Msg {
            seq,
            ppid,
            bytes: self.bufs.copy_of(bytes),
            opts,
            sent_before: false,
        };
        if self.callback_pending || self.callback_open {
            let pos = self.resume_pos.min(self.queue.len());
            self.queue.insert(pos, m);
            self.resume_pos = pos + 1;
        } else {
            self.queue.push_back(m);
        }
        Ok(seq)
    }

    /// Move the session to `pe` (the application chose it, e.g. by its PE
    /// identifier): the current connection, if any, is closed without
    /// reporting its PE, the messages it never acknowledged are re-sent to
    /// `pe`, and the session goes on as after a fail-over ([`Event::Failover`]
    /// if it had a PE before, else [`Event::Connected`]; the cookie is echoed
    /// first). Switching to the PE the session is on, or connecting to, does
    /// nothing. If `pe` cannot be reached, the session fails over by its
    /// rules.
    pub fn switch_to(&mut self, pe: PoolElement, now: Time) -> Result<(), SessionError> {
        self.advance(now);
        let from = match &self.phase {
            Phase::Closed => return Err(SessionError::InvalidState),
            Phase::Up { pe: cur, .. } | Phase::Connecting { pe: cur, .. } if cur.id == pe.id => {
                return Ok(())
            }
            Phase::Up { pe: cur, .. } => Some(cur.id),
            Phase::PeerFailed { pe } => Some(*pe),
            // Still looking for the first PE, or between attempts: the episode
            // goes on with `pe`.
            Phase::Connecting { .. } | Phase::Selecting { .. } => {
                self.episode.as_ref().and_then(|e| e.from)
            }
        };
        if let Some(conn) = self.current_conn() {
            self.out.push_back(Output::Close { conn });
        }
        self.requeue_inflight();
        self.callback_pending = false;
        self.callback_open = false;
        let mut failed = BTreeSet::new();
        if let Some(f) = from {
            failed.insert(f);
        }
        self.episode = Some(Episode {
            from,
            failed,
            attempts: 0,
        });
        self.start_connect(pe);
        Ok(())
    }

    /// Our business card (this pool user is also a PE of `pool`; the PE
    /// should fail over to `elements`, in order): sent at once on the
    /// control channel if connected, and again on every new connection,
    /// right after the cookie echo. `None` stops sending it.
    pub fn set_business_card(
        &mut self,
        card: Option<(PoolHandle, Vec<PoolElement>)>,
    ) -> Result<(), SendError> {
        if matches!(self.phase, Phase::Closed) {
            return Err(SendError::Closed);
        }
        let Some((pool_handle, elements)) = card else {
            self.my_card = None;
            return Ok(());
        };
        let msg = AsapMessage::BusinessCard {
            pool_handle,
            policy: None,
            elements,
        };
        if msg.encoded_len() > MAX_MESSAGE_LEN {
            return Err(SendError::TooLarge);
        }
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        if let Phase::Up {
            conn,
            pe,
            next_tsn,
            inflight,
        } = &mut self.phase
        {
            if pe.user_transport.transport_use() != crate::wire::transport_use::DATA_ONLY {
                let tsn = *next_tsn;
                *next_tsn = tsn.wrapping_add(1);
                inflight.push_back((tsn, Sent::Control));
                self.out.push_back(Output::Send {
                    conn: *conn,
                    tsn,
                    stream: 0,
                    unordered: false,
                    ppid: PPID_ASAP,
                    bytes: bytes.clone(),
                    seq: None,
                });
            }
        }
        self.my_card = Some(bytes);
        Ok(())
    }

    /// After [`Event::PeerFailed`]: fail over now.
    pub fn failover_now(&mut self, now: Time) -> Result<(), SessionError> {
        self.advance(now);
        let Phase::PeerFailed { pe } = self.phase else {
            return Err(SessionError::InvalidState);
        };
        self.start_episode(pe);
        Ok(())
    }

    /// Close the session (and its connection). Unsent messages stay
    /// available through [`Session::take_unsent`].
    pub fn close(&mut self) {
        if let Some(conn) = self.current_conn() {
            self.out.push_back(Output::Close { conn });
        }
        self.requeue_inflight();
        self.phase = Phase::Closed;
        self.callback_pending = false;
        self.callback_open = false;
    }

    /// Once closed: the messages never acknowledged (or, without upper-layer
    /// acks, never sent), in order, as `(seq, ppid, bytes)`.
    pub fn take_unsent(&mut self) -> Vec<(u64, u32, Vec<u8>)> {
        if !matches!(self.phase, Phase::Closed) {
            return Vec::new();
        }
        self.buffered_bytes = 0;
        self.queue
            .drain(..)
            .map(|m| (m.seq, m.ppid, m.bytes))
            .collect()
    }

    // ------------------------------------------------------------ internals

    fn advance(&mut self, now: Time) {
        self.now = self.now.max(now);
    }

    /// Like `flush`, lending the messages to `sink` instead of queuing
    /// [`Output::Send`] copies.
    fn flush_with(&mut self, max_bytes: usize, sink: &mut dyn FnMut(SendRef<'_>)) {
        let Phase::Up {
            conn,
            next_tsn,
            inflight,
            ..
        } = &mut self.phase
        else {
            return;
        };
        let mut taken = 0usize;
        while let Some(mut m) = self.queue.pop_front() {
            let tsn = *next_tsn;
            *next_tsn = tsn.wrapping_add(1);
            self.stats.sent += 1;
            if m.sent_before {
                self.stats.resent += 1;
            }
            m.sent_before = true;
            sink(SendRef {
                conn: *conn,
                tsn,
                stream: m.opts.stream,
                unordered: m.opts.unordered,
                ppid: m.ppid,
                seq: m.seq,
                bytes: &m.bytes,
            });
            taken += m.bytes.len();
            self.unacked += 1;
            if self.config.upper_layer_acks {
                inflight.push_back((tsn, Sent::Kept(m)));
            } else {
                inflight.push_back((tsn, Sent::Dropped(m.bytes.len())));
                self.bufs.give(m.bytes);
            }
            if self
                .queue
                .front()
                .is_none_or(|n| taken.saturating_add(n.bytes.len()) > max_bytes)
            {
                break;
            }
        }
    }

    /// Every queued message out as an [`Output::Send`] copy.
    fn flush(&mut self) {
        let mut sends = Vec::new();
        self.flush_with(usize::MAX, &mut |m| {
            sends.push(Output::Send {
                conn: m.conn,
                tsn: m.tsn,
                stream: m.stream,
                unordered: m.unordered,
                ppid: m.ppid,
                bytes: m.bytes.to_vec(),
                seq: Some(m.seq),
            })
        });
        self.out.extend(sends);
    }

    /// Put the unacknowledged messages back at the head of the queue, in order.
    fn requeue_inflight(&mut self) {
        if let Phase::Up { inflight, .. } = &mut self.phase {
            let mut msgs = Vec::new();
            for (_, sent) in inflight.drain(..) {
                match sent {
                    Sent::Kept(m) => msgs.push(m),
                    // Sent without upper-layer acks: gone with the PE.
                    Sent::Dropped(len) => {
                        self.buffered_bytes = self.buffered_bytes.saturating_sub(len);
                    }
                    Sent::Control => {}
                }
            }
            self.unacked = 0;
            for m in msgs.into_iter().rev() {
                self.queue.push_front(m);
            }
        }
    }

    fn peer_failed(&mut self) {
        let Some(pe) = self.current_pe().map(|p| p.id) else {
            return;
        };
        self.report(pe);
        self.requeue_inflight();
        self.callback_pending = false;
        self.callback_open = false;
        let modes = self.queue.iter().map(|m| m.opts.failover);
        let mut auto = self.config.auto_failover;
        let mut explicit_yes = false;
        for m in modes {
            match m {
                FailoverMode::NoFailover => {
                    auto = false;
                    explicit_yes = false;
                    break;
                }
                FailoverMode::Failover => explicit_yes = true,
                FailoverMode::Default => {}
            }
        }
        if explicit_yes {
            auto = true;
        }
        if auto {
            self.start_episode(pe);
        } else {
            self.phase = Phase::PeerFailed { pe };
            self.events.push_back(Event::PeerFailed { pe });
        }
    }

    fn start_episode(&mut self, from: u32) {
        let mut failed = BTreeSet::new();
        failed.insert(from);
        self.episode = Some(Episode {
            from: Some(from),
            failed,
            attempts: 0,
        });
        self.phase = Phase::Selecting { retry_at: None };
        self.next_server();
    }

    /// A connect attempt failed (refused, timed out, closed before up).
    fn attempt_failed(&mut self) {
        let Some(pe) = self.current_pe().map(|p| p.id) else {
            return;
        };
        self.report(pe);
        if let Some(e) = &mut self.episode {
            e.failed.insert(pe);
        }
        self.phase = Phase::Selecting { retry_at: None };
        self.next_server();
    }

    /// Report a PE of the pool unreachable (not a PE reached without a pool,
    /// whose identifier means nothing to the registrar).
    fn report(&mut self, pe_id: u32) {
        if let Some(pool) = &self.pool {
            self.out.push_back(Output::ReportUnreachable {
                pool: pool.clone(),
                pe_id,
            });
        }
    }

    fn next_server(&mut self) {
        let Some(ep) = &self.episode else {
            return;
        };
        if ep.attempts >= self.config.max_attempts {
            let a = ep.attempts;
            self.give_up(a);
            return;
        }
        let from_card = self.card.as_ref().and_then(|(_, pes)| {
            pes.iter()
                .find(|p| !ep.failed.contains(&p.id) && pe_addr(p).is_some())
                .cloned()
        });
        match (from_card, &self.pool) {
            (Some(pe), _) => self.start_connect(pe),
            (None, Some(pool)) => self.out.push_back(Output::NeedServer {
                pool: pool.clone(),
                exclude: ep.failed.iter().copied().collect(),
            }),
            (None, None) => {
                let a = ep.attempts;
                self.give_up(a);
            }
        }
    }

    fn start_connect(&mut self, pe: PoolElement) {
        let Some(ep) = &mut self.episode else {
            return;
        };
        ep.attempts = ep.attempts.saturating_add(1);
        let Some(addr) = pe_addr(&pe) else {
            // Not a transport we can reach: skip it (not reported unreachable).
            ep.failed.insert(pe.id);
            self.phase = Phase::Selecting { retry_at: None };
            self.next_server();
            return;
        };
        let conn = ConnId(self.next_conn);
        self.next_conn = self.next_conn.wrapping_add(1);
        self.stats.connect_attempts += 1;
        self.out.push_back(Output::Connect {
            conn,
            addr,
            pe: pe.clone(),
        });
        self.phase = Phase::Connecting {
            conn,
            pe,
            deadline: self.now + self.config.connect_timeout,
        };
    }

    fn give_up(&mut self, attempts: u32) {
        self.episode = None;
        self.phase = Phase::Closed;
        self.events
            .push_back(Event::Failed(SessionError::GaveUp { attempts }));
    }
}
