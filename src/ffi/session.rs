//! Enhanced-mode sessions in C (draft-ietf-rserpool-applic §3.4, §3.6,
//! §3.7): a pool user opens a session to a pool (or to a transport address)
//! and sends with `rserpool_data_send`; a pool element listens
//! (`rserpool_pe_listen`) and accepts one session per pool user
//! (`rserpool_pe_accept`). Both kinds of session are one handle type,
//! `rserpool_session *`, received from with `rserpool_recv` and polled
//! through `rserpool_session_fd`; a thin shell over [`crate::api::Session`],
//! [`crate::api::PeServer`] and [`crate::api::PeSessionHandle`].
//!
//! Two things are added here on top of the Rust API:
//!
//! - a notification too large for the caller's buffer stays queued (the
//!   "held" queue of the handle, read before the session's own queue), and
//!   the descriptor the application polls is an epoll instance over the
//!   session's own descriptor and one for the held queue, so it is readable
//!   while either has something;
//! - the C callbacks (function pointer and `user`) live in slots behind a
//!   re-entrant lock that the call holds: replacing or removing a callback,
//!   and closing the session, wait for a call running on another thread, so
//!   once they return the application may free what `user` points to.

use std::cell::Cell;
use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, ReentrantMutex, RwLock};

use super::client::{
    api_err, context, policy_from_c, pool, rserpool_context, rserpool_policy, rserpool_server_info,
    server_info_from_c, server_info_to_c, text, RSERPOOL_POLICY_ROUND_ROBIN,
};
use super::handles::Table;
use super::{guard, RserpoolErr};
use crate::api::{
    self, FailoverInfo, Message, Notification, PeListenParams, PeNotification, PeServer,
    PeSessionHandle, Session, SessionOptions,
};
use crate::runtime::{EndpointUrl, Proto};
use crate::session::{SendOptions, SessionConfig, SessionError, State};
use crate::wire::{PoolElement, PoolHandle, Transport};

// ------------------------------------------------------------------ constants

/// `rserpool_data_send` flag (RFC 5352 §6.5.5 ASAP_SEND_FAILOVER): fail over
/// automatically if the PE fails while this message is buffered, whatever
/// the session's `auto_failover`.
pub const RSERPOOL_SEND_FAILOVER: u32 = 0x0001;
/// `rserpool_data_send` flag (ASAP_SEND_NO_FAILOVER): if the PE fails while
/// this message is buffered, report RSERPOOL_NOTIFY_PEER_FAILED and wait for
/// `rserpool_session_failover_now` instead of failing over. Wins over
/// RSERPOOL_SEND_FAILOVER of other buffered messages; not combinable with it
/// in one send.
pub const RSERPOOL_SEND_NO_FAILOVER: u32 = 0x0002;
/// `rserpool_data_send` flag (ASAP_SCTP_UNORDER): unordered delivery (DATA
/// flag U).
pub const RSERPOOL_SEND_UNORDERED: u32 = 0x1000;
/// `rserpool_data_send` flags, bits 16-31: the stream to send on (0 by
/// default), as `flags | (stream << RSERPOOL_SEND_STREAM_SHIFT)`. Over SCTP
/// it must be below the association's outbound stream count; over the TCP
/// mapping any stream goes (the DATA chunk carries it). The receiver sees it
/// in `rserpool_notification.stream`.
pub const RSERPOOL_SEND_STREAM_SHIFT: u32 = 16;

/// `rserpool_dest.kind`: the session's pool (its current PE, or the next one
/// after a fail-over). Same as passing NULL.
pub const RSERPOOL_DEST_POOL: u32 = 0;
/// `rserpool_dest.kind`: the pool element named by `rserpool_dest.pe_id`.
pub const RSERPOOL_DEST_PE: u32 = 1;

/// Notification: a message (`ppid`, `stream`, `len` bytes in the buffer).
pub const RSERPOOL_NOTIFY_DATA: u32 = 1;
/// Notification (pool user): the first PE is connected (`pe_id`; 0 for a PE
/// reached by transport address).
pub const RSERPOOL_NOTIFY_CONNECTED: u32 = 2;
/// Notification (pool user): a fail-over is done (only without a fail-over
/// callback): connected to `pe_id`, coming from `from_pe_id`; the buffer
/// receives the sequence numbers of the `count` messages re-sent to the new
/// PE, as `uint64_t` in host byte order (`len` = 8 × `count`).
pub const RSERPOOL_NOTIFY_FAILOVER: u32 = 3;
/// Notification (pool user): PE `pe_id` failed and the session does not
/// fail over on its own; nothing moves until
/// `rserpool_session_failover_now` or `rserpool_session_close`.
pub const RSERPOOL_NOTIFY_PEER_FAILED: u32 = 4;
/// Notification (pool user): the session gave up (`error`, e.g.
/// RSERPOOL_ERR_NO_USABLE_ELEMENT after `count` attempts); CLOSED follows.
pub const RSERPOOL_NOTIFY_FAILED: u32 = 5;
/// Notification (pool user, with `ack_events`): the PE acknowledged the
/// message with sequence number `seq`.
pub const RSERPOOL_NOTIFY_ACKED: u32 = 6;
/// Notification (pool element): the pool user's cookie echo, the state the
/// previous PE handed it (`len` bytes in the buffer); comes before its data.
pub const RSERPOOL_NOTIFY_COOKIE_ECHO: u32 = 7;
/// Notification (pool element): the pool user's business card: its pool
/// handle in the buffer (`len` bytes), `count` PEs, the first one `pe_id`.
pub const RSERPOOL_NOTIFY_BUSINESS_CARD: u32 = 8;
/// Notification: the session is over (closed by either side, given up, or
/// the context freed); the last one. Later receives give RSERPOOL_ERR_CLOSED.
pub const RSERPOOL_NOTIFY_CLOSED: u32 = 9;

/// Session state: choosing a PE (resolution, or waiting to retry).
pub const RSERPOOL_STATE_SELECTING: u32 = 1;
/// Session state: connecting to a PE.
pub const RSERPOOL_STATE_CONNECTING: u32 = 2;
/// Session state: connected.
pub const RSERPOOL_STATE_UP: u32 = 3;
/// Session state: the PE failed; waiting for the application.
pub const RSERPOOL_STATE_PEER_FAILED: u32 = 4;
/// Session state: closed.
pub const RSERPOOL_STATE_CLOSED: u32 = 5;

/// The longest message `rserpool_data_send` takes: one DATA chunk of the TCP
/// mapping.
pub const RSERPOOL_MAX_MESSAGE_LEN: usize = 65519;

// cbindgen emits literals only; these keep the C values equal to the core's.
const _: () = {
    assert!(RSERPOOL_MAX_MESSAGE_LEN == crate::session::MAX_MESSAGE_LEN);
    assert!(RSERPOOL_SEND_FAILOVER == crate::session::ASAP_SEND_FAILOVER);
    assert!(RSERPOOL_SEND_NO_FAILOVER == crate::session::ASAP_SEND_NO_FAILOVER);
};

const SEND_FLAGS: u32 = RSERPOOL_SEND_FAILOVER
    | RSERPOOL_SEND_NO_FAILOVER
    | RSERPOOL_SEND_UNORDERED
    | (0xffff << RSERPOOL_SEND_STREAM_SHIFT);

// ------------------------------------------------------------------ types

/// An enhanced-mode session (opaque handle): a pool user's
/// (`rserpool_session_open`, `rserpool_session_open_addr`) or a pool
/// element's (`rserpool_pe_accept`). Ended with `rserpool_session_close`.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct rserpool_session {
    _private: [u8; 0],
}

/// A registered pool element listening for pool users (opaque handle): made
/// by `rserpool_pe_listen`, ended with `rserpool_pe_server_close`.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct rserpool_pe_server {
    _private: [u8; 0],
}

/// How a pool user session behaves. Fill it with
/// `rserpool_session_params_init`, then change what you need. Read during
/// the open call only. The flags are 0 or 1.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct rserpool_session_params {
    /// 1 (default): fail over to another PE on its own when the PE fails; 0:
    /// report RSERPOOL_NOTIFY_PEER_FAILED and wait for
    /// `rserpool_session_failover_now`. The send flags override it while
    /// their message is buffered.
    pub auto_failover: u32,
    /// 1 (default): keep every message until the PE acknowledged it (TCP
    /// mapping ACK) and re-send the unacknowledged ones to the next PE after
    /// a fail-over; 0: a message is forgotten once written.
    pub upper_layer_acks: u32,
    /// 1: report every acknowledged message (RSERPOOL_NOTIFY_ACKED). Default 0.
    pub ack_events: u32,
    /// 0 (default): the open call waits until the first PE is connected,
    /// like a blocking connect(2); 1: it returns at once and the session
    /// connects in the background (messages sent meanwhile wait;
    /// RSERPOOL_NOTIFY_CONNECTED tells when).
    pub nonblock: u32,
    /// How long a blocking open waits at most, in ms; 0 (default): until the
    /// session is connected or gives up by its own rules (`max_attempts`).
    pub open_timeout_ms: u32,
    /// A connect attempt not answered within this counts as failed, in ms
    /// (default 5000; not 0).
    pub connect_timeout_ms: u32,
    /// Wait before asking for a PE again after none was available, in ms
    /// (default 1000).
    pub retry_interval_ms: u32,
    /// Connect attempts (and "no PE available" answers) per fail-over before
    /// the session gives up (default 5; not 0).
    pub max_attempts: u32,
    /// Most messages buffered, queued plus unacknowledged (default 1024; not
    /// 0). At the bound `rserpool_data_send` gives RSERPOOL_ERR_WOULD_BLOCK.
    pub max_buffered: usize,
    /// Most payload bytes buffered (default 4 MiB; not 0).
    pub max_buffered_bytes: usize,
    /// `rserpool_session_open_addr` only: a pool handle to fail over into
    /// when the PE at the address fails (`failover_pool_len` bytes); NULL
    /// (default): the session ends with that PE.
    pub failover_pool: *const u8,
    /// Length of `failover_pool`.
    pub failover_pool_len: usize,
}

/// Where `rserpool_data_send` sends (draft-ietf-rserpool-applic §3.7).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct rserpool_dest {
    /// RSERPOOL_DEST_POOL or RSERPOOL_DEST_PE.
    pub kind: u32,
    /// With RSERPOOL_DEST_PE: the PE identifier (one the session's pool
    /// resolution listed).
    pub pe_id: u32,
}

/// What `rserpool_recv` received. Which fields are set depends on `kind`
/// (see the RSERPOOL_NOTIFY_* constants); the others are 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct rserpool_notification {
    /// RSERPOOL_NOTIFY_*.
    pub kind: u32,
    /// DATA: the payload protocol identifier.
    pub ppid: u32,
    /// CONNECTED, PEER_FAILED: the PE; FAILOVER: the new PE; BUSINESS_CARD:
    /// the first PE of the card.
    pub pe_id: u32,
    /// FAILOVER: the PE that failed (or was switched away from).
    pub from_pe_id: u32,
    /// DATA: the stream it came on.
    pub stream: u16,
    /// Zero.
    pub reserved: u16,
    /// FAILED: why (an RSERPOOL_ERR_* code).
    pub error: i32,
    /// ACKED: the message's sequence number (as `rserpool_data_send` gave it).
    pub seq: u64,
    /// Bytes written to the buffer (DATA, FAILOVER, COOKIE_ECHO,
    /// BUSINESS_CARD); with RSERPOOL_ERR_BUFFER_TOO_SMALL the bytes needed.
    pub len: usize,
    /// FAILOVER: messages re-sent; FAILED: attempts made; BUSINESS_CARD: PEs
    /// on the card.
    pub count: usize,
}

/// Where a pool user session stands (`rserpool_session_get_status`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct rserpool_session_status {
    /// RSERPOOL_STATE_*.
    pub state: u32,
    /// The PE the session is connected or connecting to (0: none yet, or a
    /// PE reached by transport address).
    pub pe_id: u32,
    /// Messages buffered: queued plus sent and not yet acknowledged.
    pub buffered: usize,
    /// Messages written to a PE (re-sends included).
    pub sent: u64,
    /// Of those, re-sent after a fail-over.
    pub resent: u64,
    /// Messages the PEs acknowledged.
    pub acked: u64,
    /// Fail-overs completed.
    pub failovers: u64,
    /// Connect attempts.
    pub connect_attempts: u64,
    /// Cookies received from PEs.
    pub cookies: u64,
}

/// How a pool element listens and registers (`rserpool_pe_listen`). Fill it
/// with `rserpool_pe_listen_params_init`, then set at least the pool handle
/// and the URL. Read during the call only.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct rserpool_pe_listen_params {
    /// The pool handle (`handle_len` bytes, 1 to 65531).
    pub pool_handle: *const u8,
    /// Length of `pool_handle`.
    pub handle_len: usize,
    /// Where to listen for pool users, NUL-terminated: `tcp://ADDR:PORT`
    /// (TCP with the TCP mapping) or `sctp://ADDR[,ADDR...]:PORT`; port 0
    /// takes one from the kernel. Concrete addresses (not 0.0.0.0): they are
    /// what the PE registers.
    pub listen_url: *const c_char,
    /// The policy (default Round Robin).
    pub policy: rserpool_policy,
    /// Registration life in the context's unit; -1 = infinite (default 60).
    pub reg_life: i32,
    /// A fixed PE identifier, unique in the context; 0 (default) = random.
    pub pe_id: u32,
}

/// A data indication callback (`rserpool_set_data_indication`): one message
/// from the PE, `len` bytes at `data` (valid during the call only).
#[allow(non_camel_case_types)]
pub type rserpool_data_cb = Option<
    unsafe extern "C" fn(
        session: *mut rserpool_session,
        ppid: u32,
        stream: u16,
        data: *const u8,
        len: usize,
        user: *mut c_void,
    ),
>;

/// A fail-over callback (`rserpool_set_failover_callback`): the session
/// moved from PE `from_pe_id` to `to_pe_id`; the `resent_count` messages
/// whose sequence numbers are at `resent` (valid during the call only) go to
/// the new PE right after what the callback sends.
#[allow(non_camel_case_types)]
pub type rserpool_failover_cb = Option<
    unsafe extern "C" fn(
        session: *mut rserpool_session,
        from_pe_id: u32,
        to_pe_id: u32,
        resent: *const u64,
        resent_count: usize,
        user: *mut c_void,
    ),
>;

type DataFn = unsafe extern "C" fn(*mut rserpool_session, u32, u16, *const u8, usize, *mut c_void);
type FailoverFn =
    unsafe extern "C" fn(*mut rserpool_session, u32, u32, *const u64, usize, *mut c_void);

// ------------------------------------------------------------------ internals

thread_local! {
    /// How deep this thread is in application callbacks.
    static IN_CALLBACK: Cell<u32> = const { Cell::new(0) };
}

/// True while this thread runs one of the application's callbacks (it is a
/// context's loop thread).
pub(crate) fn in_callback() -> bool {
    IN_CALLBACK.with(|c| c.get() > 0)
}

/// One installed C callback: its function and `user` pointer. The lock is
/// held during a call, so [`Slot::set`] from another thread waits for the
/// call to end; from the calling thread itself (inside the callback) it
/// goes through at once.
struct Slot<F: Copy> {
    cell: ReentrantMutex<Cell<Option<(F, usize)>>>,
}

impl<F: Copy> Slot<F> {
    fn new() -> Self {
        Slot {
            cell: ReentrantMutex::new(Cell::new(None)),
        }
    }

    fn set(&self, v: Option<(F, usize)>) {
        self.cell.lock().set(v);
    }

    /// Call the installed function; false when there is none.
    fn with(&self, call: impl FnOnce(F, *mut c_void)) -> bool {
        let g = self.cell.lock();
        let Some((f, user)) = g.get() else {
            return false;
        };
        IN_CALLBACK.with(|c| c.set(c.get() + 1));
        call(f, user as *mut c_void);
        IN_CALLBACK.with(|c| c.set(c.get() - 1));
        true
    }
}

/// The descriptor the application polls: an epoll instance over the
/// session's own descriptor and an eventfd raised while the held queue is
/// not empty (both level-triggered, so the epoll descriptor is readable
/// exactly while one of them is).
struct Pollable {
    epoll: OwnedFd,
    flag: OwnedFd,
    raised: bool,
}

impl Pollable {
    fn new(inner: RawFd) -> io::Result<Pollable> {
        // SAFETY: eventfd(2) and epoll_create1(2) with constant flags; the
        // results are checked before being owned.
        let (flag, epoll) = unsafe {
            let f = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
            if f < 0 {
                return Err(io::Error::last_os_error());
            }
            let flag = OwnedFd::from_raw_fd(f);
            let e = libc::epoll_create1(libc::EPOLL_CLOEXEC);
            if e < 0 {
                return Err(io::Error::last_os_error());
            }
            (flag, OwnedFd::from_raw_fd(e))
        };
        for fd in [inner, flag.as_raw_fd()] {
            let mut ev = libc::epoll_event {
                events: libc::EPOLLIN as u32,
                u64: fd as u64,
            };
            // SAFETY: both descriptors are open; `ev` is a live struct.
            if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(Pollable {
            epoll,
            flag,
            raised: false,
        })
    }

    fn set(&mut self, on: bool) {
        if on == self.raised {
            return;
        }
        self.raised = on;
        let mut v = 1u64.to_ne_bytes();
        // SAFETY: 8-byte write to / read from our own eventfd, from a live
        // buffer; the counter only ever holds 0 or 1, so neither can fail
        // except a read finding 0 (EAGAIN), which is what we want.
        unsafe {
            if on {
                libc::write(self.flag.as_raw_fd(), v.as_ptr().cast(), 8);
            } else {
                libc::read(self.flag.as_raw_fd(), v.as_mut_ptr().cast(), 8);
            }
        }
    }
}

/// A notification of either side.
enum Held {
    Pu(Notification),
    Pe(PeNotification),
}

/// Notifications taken from the session but not yet delivered (too large
/// for the caller's buffer, or a message whose callback was just removed),
/// and the pollable descriptor once asked for.
#[derive(Default)]
struct Side {
    held: VecDeque<Held>,
    poll: Option<Pollable>,
    /// Pool element sessions: the latest business card `rserpool_recv`
    /// delivered.
    card: Option<(PoolHandle, Vec<PoolElement>)>,
}

impl Side {
    fn sync(&mut self) {
        let on = !self.held.is_empty();
        if let Some(p) = &mut self.poll {
            p.set(on);
        }
    }

    fn hold(&mut self, h: Held) {
        self.held.push_back(h);
        self.sync();
    }

    /// Remember a business card the application just received.
    fn keep_card(&mut self, h: &Held) {
        if let Held::Pe(PeNotification::BusinessCard { pool, elements }) = h {
            self.card = Some((pool.clone(), elements.clone()));
        }
    }
}

enum Kind {
    Pu {
        s: Session,
        data: Arc<Slot<DataFn>>,
        failover: Arc<Slot<FailoverFn>>,
    },
    Pe {
        s: PeSessionHandle,
        sent: AtomicU64,
    },
}

struct SessionObj {
    kind: Kind,
    side: Arc<Mutex<Side>>,
}

impl SessionObj {
    fn new(kind: Kind) -> Self {
        SessionObj {
            kind,
            side: Arc::default(),
        }
    }

    fn pu(&self) -> Result<&Session, c_int> {
        match &self.kind {
            Kind::Pu { s, .. } => Ok(s),
            Kind::Pe { .. } => Err(RserpoolErr::InvalidArgument as c_int),
        }
    }

    fn pe(&self) -> Result<&PeSessionHandle, c_int> {
        match &self.kind {
            Kind::Pe { s, .. } => Ok(s),
            Kind::Pu { .. } => Err(RserpoolErr::InvalidArgument as c_int),
        }
    }

    /// Stop calling back, close gracefully.
    fn shutdown(&self) {
        match &self.kind {
            Kind::Pu { s, data, failover } => {
                s.set_data_callback(None);
                s.set_failover_callback(None);
                data.set(None);
                failover.set(None);
                s.close();
            }
            Kind::Pe { s, .. } => s.close(),
        }
    }
}

struct ServerObj {
    /// Taken by `rserpool_pe_server_close`; `rserpool_pe_accept` holds a
    /// read lock for at most [`ACCEPT_SLICE`] at a time, so a close waits
    /// at most that long.
    server: RwLock<Option<PeServer>>,
    pe_id: u32,
    /// The PE as registered, for `rserpool_pe_server_info`.
    info: api::ServerInfo,
    fd: RawFd,
    url: String,
}

/// The longest a blocking accept holds its server at a time.
const ACCEPT_SLICE: Duration = Duration::from_millis(50);

static SESSIONS: Table<SessionObj> = Table::new(4);
static SERVERS: Table<ServerObj> = Table::new(5);

fn err(e: RserpoolErr) -> c_int {
    e as c_int
}

fn session_obj(s: *const rserpool_session) -> Result<Arc<SessionObj>, c_int> {
    SESSIONS
        .get(s as usize)
        .ok_or(RserpoolErr::InvalidHandle as c_int)
}

fn server_obj(s: *const rserpool_pe_server) -> Result<Arc<ServerObj>, c_int> {
    SERVERS
        .get(s as usize)
        .ok_or(RserpoolErr::InvalidHandle as c_int)
}

/// Runs `f`, turning `Err(code)` into the code and `Ok(())` into RSERPOOL_OK.
fn run(f: impl FnOnce() -> Result<(), c_int>) -> c_int {
    match f() {
        Ok(()) => RserpoolErr::Ok as c_int,
        Err(e) => e,
    }
}

/// The bytes at `p` (NULL only when `len` is 0).
///
/// # Safety
/// `p` must point to `len` readable bytes when not NULL.
unsafe fn bytes<'a>(p: *const u8, len: usize) -> Result<&'a [u8], c_int> {
    if len == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(err(RserpoolErr::NullPointer));
    }
    // SAFETY: the caller promises `len` readable bytes at `p`.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

/// A poll(2)-style timeout: `None` = do not wait, `Some(None)` = no bound.
fn wait_of(timeout_ms: c_int) -> Option<Option<Duration>> {
    match timeout_ms {
        0 => None,
        t if t < 0 => Some(None),
        t => Some(Some(Duration::from_millis(t as u64))),
    }
}

fn state_to_c(s: State) -> u32 {
    match s {
        State::Selecting => RSERPOOL_STATE_SELECTING,
        State::Connecting => RSERPOOL_STATE_CONNECTING,
        State::Up => RSERPOOL_STATE_UP,
        State::PeerFailed => RSERPOOL_STATE_PEER_FAILED,
        State::Closed => RSERPOOL_STATE_CLOSED,
    }
}

/// What goes to the caller's buffer.
enum Payload<'a> {
    None,
    Bytes(&'a [u8]),
    Seqs(&'a [u64]),
}

impl Payload<'_> {
    fn len(&self) -> usize {
        match self {
            Payload::None => 0,
            Payload::Bytes(b) => b.len(),
            Payload::Seqs(s) => s.len() * 8,
        }
    }
}

/// The C form of a notification and its payload.
fn describe(h: &Held) -> (rserpool_notification, Payload<'_>) {
    let mut n = rserpool_notification::default();
    let p = match h {
        Held::Pu(Notification::Data {
            ppid,
            bytes,
            stream,
        })
        | Held::Pe(PeNotification::Data {
            ppid,
            bytes,
            stream,
        }) => {
            n.kind = RSERPOOL_NOTIFY_DATA;
            n.ppid = *ppid;
            n.stream = *stream;
            Payload::Bytes(bytes)
        }
        Held::Pu(Notification::Connected { pe }) => {
            n.kind = RSERPOOL_NOTIFY_CONNECTED;
            n.pe_id = *pe;
            Payload::None
        }
        Held::Pu(Notification::Failover { from, to, resent }) => {
            n.kind = RSERPOOL_NOTIFY_FAILOVER;
            n.from_pe_id = *from;
            n.pe_id = *to;
            n.count = resent.len();
            Payload::Seqs(resent)
        }
        Held::Pu(Notification::PeerFailed { pe }) => {
            n.kind = RSERPOOL_NOTIFY_PEER_FAILED;
            n.pe_id = *pe;
            Payload::None
        }
        Held::Pu(Notification::Failed(e)) => {
            n.kind = RSERPOOL_NOTIFY_FAILED;
            match e {
                SessionError::GaveUp { attempts } => {
                    n.error = err(RserpoolErr::NoUsableElement);
                    n.count = *attempts as usize;
                }
                SessionError::InvalidState => n.error = err(RserpoolErr::InvalidState),
            }
            Payload::None
        }
        Held::Pu(Notification::Acked { seq }) => {
            n.kind = RSERPOOL_NOTIFY_ACKED;
            n.seq = *seq;
            Payload::None
        }
        Held::Pe(PeNotification::CookieEcho(c)) => {
            n.kind = RSERPOOL_NOTIFY_COOKIE_ECHO;
            Payload::Bytes(c)
        }
        Held::Pe(PeNotification::BusinessCard { pool, elements }) => {
            n.kind = RSERPOOL_NOTIFY_BUSINESS_CARD;
            n.count = elements.len();
            n.pe_id = elements.first().map_or(0, |p| p.id);
            Payload::Bytes(&pool.0)
        }
        Held::Pu(Notification::Closed) | Held::Pe(PeNotification::Closed) => {
            n.kind = RSERPOOL_NOTIFY_CLOSED;
            Payload::None
        }
    };
    n.len = p.len();
    (n, p)
}

/// Write `h` to the caller: the notification always, the payload if it
/// fits (RSERPOOL_OK) or not (RSERPOOL_ERR_BUFFER_TOO_SMALL, `len` = needed).
///
/// # Safety
/// `out` must be writable; `buf` must have `cap` writable bytes (non-NULL
/// when `cap` > 0).
unsafe fn deliver(h: &Held, out: *mut rserpool_notification, buf: *mut u8, cap: usize) -> c_int {
    let (n, p) = describe(h);
    // SAFETY: the caller promises `out` is writable.
    unsafe { std::ptr::write(out, n) };
    if p.len() > cap {
        return err(RserpoolErr::BufferTooSmall);
    }
    match p {
        Payload::None => {}
        // SAFETY: `buf` has `cap >= b.len()` writable bytes (non-NULL since
        // cap > 0 whenever the payload is not empty).
        Payload::Bytes(b) if !b.is_empty() => unsafe {
            std::ptr::copy_nonoverlapping(b.as_ptr(), buf, b.len());
        },
        Payload::Bytes(_) => {}
        Payload::Seqs(s) => {
            for (i, v) in s.iter().enumerate() {
                // SAFETY: `i * 8 + 8 <= cap`; unaligned writes allowed.
                unsafe { std::ptr::write_unaligned(buf.add(i * 8).cast::<u64>(), *v) };
            }
        }
    }
    RserpoolErr::Ok as c_int
}

/// The next notification from the session itself.
fn next_from(kind: &Kind, timeout_ms: c_int) -> Result<Option<Held>, api::Error> {
    match (kind, wait_of(timeout_ms)) {
        (Kind::Pu { s, .. }, None) => Ok(s.try_recv()?.map(Held::Pu)),
        (Kind::Pu { s, .. }, Some(t)) => s.recv(t).map(|n| Some(Held::Pu(n))),
        (Kind::Pe { s, .. }, None) => Ok(s.try_recv()?.map(Held::Pe)),
        (Kind::Pe { s, .. }, Some(t)) => s.recv(t).map(|n| Some(Held::Pe(n))),
    }
}

fn insert_session(kind: Kind, out: *mut *mut rserpool_session) -> c_int {
    match SESSIONS.insert(SessionObj::new(kind)) {
        Some(h) => {
            // SAFETY: checked non-NULL by the callers; the caller promises
            // it is writable.
            unsafe { *out = h as *mut rserpool_session };
            RserpoolErr::Ok as c_int
        }
        None => err(RserpoolErr::Os),
    }
}

fn flag(v: u32) -> Result<bool, c_int> {
    match v {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(err(RserpoolErr::InvalidArgument)),
    }
}

/// About a year: "no bound" for a blocking open, which the session's own
/// give-up rules end long before.
const NO_BOUND: Duration = Duration::from_secs(365 * 86400);

fn options(p: &rserpool_session_params) -> Result<SessionOptions, c_int> {
    let invalid = err(RserpoolErr::InvalidArgument);
    if p.connect_timeout_ms == 0
        || p.max_attempts == 0
        || p.max_buffered == 0
        || p.max_buffered_bytes == 0
    {
        return Err(invalid);
    }
    let ms = |v: u32| Duration::from_millis(u64::from(v));
    let config = SessionConfig {
        upper_layer_acks: flag(p.upper_layer_acks)?,
        auto_failover: flag(p.auto_failover)?,
        max_buffered: p.max_buffered,
        max_buffered_bytes: p.max_buffered_bytes,
        connect_timeout: ms(p.connect_timeout_ms),
        max_attempts: p.max_attempts,
        retry_interval: ms(p.retry_interval_ms),
        ack_events: flag(p.ack_events)?,
    };
    let wait_connected = match (flag(p.nonblock)?, p.open_timeout_ms) {
        (true, _) => None,
        (false, 0) => Some(NO_BOUND),
        (false, t) => Some(ms(t)),
    };
    Ok(SessionOptions {
        config,
        wait_connected,
        on_data: None,
        on_failover: None,
    })
}

fn default_params() -> rserpool_session_params {
    let c = SessionConfig::default();
    rserpool_session_params {
        auto_failover: u32::from(c.auto_failover),
        upper_layer_acks: u32::from(c.upper_layer_acks),
        ack_events: u32::from(c.ack_events),
        nonblock: 0,
        open_timeout_ms: 0,
        connect_timeout_ms: u32::try_from(c.connect_timeout.as_millis()).unwrap_or(u32::MAX),
        retry_interval_ms: u32::try_from(c.retry_interval.as_millis()).unwrap_or(u32::MAX),
        max_attempts: c.max_attempts,
        max_buffered: c.max_buffered,
        max_buffered_bytes: c.max_buffered_bytes,
        failover_pool: std::ptr::null(),
        failover_pool_len: 0,
    }
}

/// The params at `p` (NULL: the defaults).
///
/// # Safety
/// `p` must be NULL or point to a valid struct.
unsafe fn params_or_default(p: *const rserpool_session_params) -> rserpool_session_params {
    if p.is_null() {
        default_params()
    } else {
        // SAFETY: the caller promises a valid struct.
        unsafe { *p }
    }
}

// ------------------------------------------------------------------ pool user

/// Fills `params` with the defaults: automatic fail-over, upper-layer
/// acknowledgements, no ACKED notifications, blocking open without a bound
/// of its own, connect timeout 5 s, retry interval 1 s, 5 attempts, 1024
/// messages or 4 MiB buffered, no fail-over pool.
///
/// Returns RSERPOOL_OK or RSERPOOL_ERR_NULL_POINTER. Thread-safe.
///
/// # Safety
/// `params` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_session_params_init(
    params: *mut rserpool_session_params,
) -> c_int {
    guard(|| {
        nonnull!(params);
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { std::ptr::write(params, default_params()) };
        RserpoolErr::Ok as c_int
    })
}

/// Opens an enhanced-mode session to the pool `pool_handle` (`handle_len`
/// bytes): the session picks a PE by the pool's policy (from the context's
/// cache or after a resolution), connects to it over the transport it
/// registered (TCP with the TCP mapping, or SCTP) and, when it fails, fails
/// over as `params` say. `params` NULL means the defaults
/// (`rserpool_session_params_init`).
///
/// Unless `params->nonblock` is 1, waits until the first PE is connected
/// (at most `open_timeout_ms`; by default until the session gives up after
/// `max_attempts`). RSERPOOL_NOTIFY_CONNECTED is queued either way.
///
/// On success `*session_out` receives a handle the caller owns: end it with
/// `rserpool_session_close` exactly once. The session lives on the
/// context's thread; freeing the context closes it (RSERPOOL_NOTIFY_CLOSED),
/// the handle still has to be closed.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE (`ctx`), RSERPOOL_ERR_INVALID_ARGUMENT (empty
/// or long handle, a parameter out of range), and for a blocking open that
/// did not connect: RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE (no such
/// pool), RSERPOOL_ERR_NO_USABLE_ELEMENT (no PE reachable),
/// RSERPOOL_ERR_NO_REGISTRAR, RSERPOOL_ERR_TIMEOUT (`open_timeout_ms`
/// passed) or RSERPOOL_ERR_WOULD_DEADLOCK (called from a callback without
/// `nonblock`). Thread-safe; nothing is kept from the arguments.
///
/// # Safety
/// `pool_handle` must point to `handle_len` readable bytes, `params` must
/// be NULL or point to a valid struct, `session_out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_session_open(
    ctx: *mut rserpool_context,
    pool_handle: *const u8,
    handle_len: usize,
    params: *const rserpool_session_params,
    session_out: *mut *mut rserpool_session,
) -> c_int {
    guard(|| {
        nonnull!(ctx, pool_handle, session_out);
        run(|| {
            let c = context(ctx)?;
            // SAFETY: checked non-NULL; the caller promises `handle_len` bytes.
            let pool = unsafe { pool(pool_handle, handle_len) }?;
            // SAFETY: the caller promises NULL or a valid struct.
            let opts = options(&unsafe { params_or_default(params) })?;
            let s = c.open_session(pool, opts).map_err(|e| api_err(&e))?;
            open_done(s, session_out)
        })
    })
}

fn open_done(s: Session, out: *mut *mut rserpool_session) -> Result<(), c_int> {
    let kind = Kind::Pu {
        s: s.clone(),
        data: Arc::new(Slot::new()),
        failover: Arc::new(Slot::new()),
    };
    match insert_session(kind, out) {
        0 => Ok(()),
        e => {
            s.close();
            Err(e)
        }
    }
}

/// Opens a session to the pool element at a transport address (the third
/// destination form of draft-ietf-rserpool-applic §3.7): `url` is
/// `tcp://ADDR:PORT` (TCP mapping) or `sctp://ADDR[,ADDR...]:PORT`. The PE's
/// identifier is unknown: notifications call it 0. When it fails the
/// session fails over into `params->failover_pool` if given, else it ends
/// (RSERPOOL_NOTIFY_FAILED) unless the PE handed out a business card.
///
/// Otherwise as `rserpool_session_open` (blocking unless `nonblock`,
/// ownership, threads); errors: RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_INVALID_ARGUMENT (not a URL,
/// wildcard address, port 0, a parameter out of range), RSERPOOL_ERR_NO_SCTP,
/// RSERPOOL_ERR_NO_USABLE_ELEMENT (could not connect), RSERPOOL_ERR_TIMEOUT,
/// RSERPOOL_ERR_WOULD_DEADLOCK.
///
/// # Safety
/// `url` must be a NUL-terminated string, `params` NULL or a valid struct
/// (its `failover_pool` NULL or `failover_pool_len` readable bytes),
/// `session_out` writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_session_open_addr(
    ctx: *mut rserpool_context,
    url: *const c_char,
    params: *const rserpool_session_params,
    session_out: *mut *mut rserpool_session,
) -> c_int {
    guard(|| {
        nonnull!(ctx, url, session_out);
        run(|| {
            let c = context(ctx)?;
            // SAFETY: checked non-NULL; the caller promises NUL termination.
            let u = unsafe { text(url) }?;
            let addr =
                EndpointUrl::parse(u.trim()).map_err(|_| err(RserpoolErr::InvalidArgument))?;
            // SAFETY: the caller promises NULL or a valid struct.
            let p = unsafe { params_or_default(params) };
            let fpool = if p.failover_pool.is_null() {
                None
            } else {
                // SAFETY: the caller promises `failover_pool_len` bytes.
                Some(unsafe { pool(p.failover_pool, p.failover_pool_len) }?)
            };
            let opts = options(&p)?;
            let s = c
                .open_session_to(&addr, fpool, opts)
                .map_err(|e| api_err(&e))?;
            open_done(s, session_out)
        })
    })
}

/// DATA_SEND (draft-ietf-rserpool-applic §3.7): queues `len` bytes at `buf`
/// (at most RSERPOOL_MAX_MESSAGE_LEN; 0 allowed, then `buf` may be NULL)
/// with payload protocol identifier `ppid` (not 11, ASAP's). Never waits:
/// the message goes out as soon as a PE is connected, in order, and with
/// upper-layer acknowledgements stays buffered until the PE acknowledges it
/// (re-sent to the next PE after a fail-over if it never did).
///
/// Pool user sessions: `dest` NULL (or kind RSERPOOL_DEST_POOL) sends to the
/// pool, i.e. the PE the session is on; RSERPOOL_DEST_PE sends to the PE
/// `dest->pe_id`, moving the session there if it is on another one (the
/// unacknowledged messages follow, the fail-over callback runs). `flags`:
/// RSERPOOL_SEND_FAILOVER or RSERPOOL_SEND_NO_FAILOVER (not both),
/// RSERPOOL_SEND_UNORDERED, and the stream in bits 16-31
/// (RSERPOOL_SEND_STREAM_SHIFT). `*pe_out` (if not NULL) receives the PE the
/// message is addressed to (0 while the session is still choosing one, or
/// for a PE reached by transport address) and `*seq_out` (if not NULL) its
/// sequence number in the session (0, 1, 2, ...), as
/// RSERPOOL_NOTIFY_ACKED, RSERPOOL_NOTIFY_FAILOVER and the fail-over
/// callback name it.
///
/// Pool element sessions: the message goes to the pool user; `dest` must be
/// NULL or RSERPOOL_DEST_POOL, only RSERPOOL_SEND_UNORDERED and the stream
/// of the flags apply; it also acknowledges the messages received before (they are
/// handled). `*pe_out` receives 0, `*seq_out` the count of earlier sends.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_INVALID_ARGUMENT (PPID 11,
/// too long, unknown flag bits or `dest->kind`), RSERPOOL_ERR_UNKNOWN_PE (a
/// PE the pool's resolution did not list), RSERPOOL_ERR_WOULD_BLOCK (the
/// session's buffer bound is reached: retry once messages are
/// acknowledged), RSERPOOL_ERR_CLOSED. Thread-safe; may be called from the
/// session's callbacks (from a fail-over callback the message goes out
/// before the re-sent ones). `buf` is copied.
///
/// # Safety
/// `buf` must point to `len` readable bytes; `dest` must be NULL or valid;
/// `pe_out` and `seq_out` NULL or writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rserpool_data_send(
    session: *mut rserpool_session,
    dest: *const rserpool_dest,
    buf: *const u8,
    len: usize,
    ppid: u32,
    flags: u32,
    pe_out: *mut u32,
    seq_out: *mut u64,
) -> c_int {
    guard(|| {
        nonnull!(session);
        run(|| {
            let obj = session_obj(session)?;
            // SAFETY: the caller promises `len` bytes at `buf`.
            let msg = unsafe { bytes(buf, len) }?;
            let invalid = err(RserpoolErr::InvalidArgument);
            if flags & !SEND_FLAGS != 0
                || flags & (RSERPOOL_SEND_FAILOVER | RSERPOOL_SEND_NO_FAILOVER)
                    == RSERPOOL_SEND_FAILOVER | RSERPOOL_SEND_NO_FAILOVER
            {
                return Err(invalid);
            }
            let dest = if dest.is_null() {
                None
            } else {
                // SAFETY: checked non-NULL; the caller promises a valid struct.
                match unsafe { *dest } {
                    rserpool_dest {
                        kind: RSERPOOL_DEST_POOL,
                        ..
                    } => None,
                    rserpool_dest {
                        kind: RSERPOOL_DEST_PE,
                        pe_id,
                    } => Some(pe_id),
                    _ => return Err(invalid),
                }
            };
            let stream = (flags >> RSERPOOL_SEND_STREAM_SHIFT) as u16;
            let (pe, seq) = match &obj.kind {
                Kind::Pu { s, .. } => {
                    let opts = SendOptions {
                        stream,
                        ..SendOptions::from_flags(flags)
                    };
                    let r = match dest {
                        None => s.send_with(msg, ppid, opts),
                        Some(id) => s.send_to_pe_with(id, msg, ppid, opts),
                    }
                    .map_err(|e| api_err(&e))?;
                    (r.pe_id.unwrap_or(0), r.seq)
                }
                Kind::Pe { s, sent } => {
                    if dest.is_some() {
                        return Err(invalid);
                    }
                    let unordered = flags & RSERPOOL_SEND_UNORDERED != 0;
                    s.send_on(msg, ppid, stream, unordered)
                        .map_err(|e| api_err(&e))?;
                    (0, sent.fetch_add(1, Ordering::Relaxed))
                }
            };
            if !pe_out.is_null() {
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { *pe_out = pe };
            }
            if !seq_out.is_null() {
                // SAFETY: as above.
                unsafe { *seq_out = seq };
            }
            Ok(())
        })
    })
}

/// Receives the next notification of a session (either kind): a message
/// (RSERPOOL_NOTIFY_DATA, its bytes copied to `buf`) or an event (see the
/// RSERPOOL_NOTIFY_* constants), written to `*out`. `timeout_ms` as for
/// poll(2): 0 returns at once (RSERPOOL_ERR_WOULD_BLOCK when nothing is
/// waiting), negative waits without bound, positive at most that long
/// (RSERPOOL_ERR_TIMEOUT).
///
/// A notification whose payload does not fit in `cap` bytes stays queued,
/// first in line: the call returns RSERPOOL_ERR_BUFFER_TOO_SMALL with `*out`
/// filled in and `out->len` the bytes needed (an exception to "outputs only
/// on success"); call again with a larger buffer. `buf` may be NULL when
/// `cap` is 0 (to learn the size).
///
/// On a pool element session a receive first acknowledges the messages
/// received before (the application is done with them; see
/// `rserpool_pe_accept`); a message held back as too large counts as
/// received.
///
/// Messages taken by a data indication callback do not come here. After
/// RSERPOOL_NOTIFY_CLOSED, receives return RSERPOOL_ERR_CLOSED.
///
/// A pool user session holds at most about 8 MiB of received messages:
/// past that the library stops reading from the PE (which then stalls)
/// until receives take it below half, so an application that does not
/// receive bounds its memory instead of growing it.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER (`session`, `out`, or
/// `buf` with `cap` > 0), RSERPOOL_ERR_INVALID_HANDLE,
/// RSERPOOL_ERR_BUFFER_TOO_SMALL, RSERPOOL_ERR_WOULD_BLOCK,
/// RSERPOOL_ERR_TIMEOUT, RSERPOOL_ERR_CLOSED, RSERPOOL_ERR_WOULD_DEADLOCK (a
/// waiting receive from a callback: use timeout 0 there). Thread-safe
/// (concurrent receivers each get different notifications).
///
/// # Safety
/// `out` must be writable, `buf` must have `cap` writable bytes.
#[no_mangle]
pub unsafe extern "C" fn rserpool_recv(
    session: *mut rserpool_session,
    out: *mut rserpool_notification,
    buf: *mut u8,
    cap: usize,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        nonnull!(session, out);
        if buf.is_null() && cap > 0 {
            return err(RserpoolErr::NullPointer);
        }
        let obj = match session_obj(session) {
            Ok(o) => o,
            Err(e) => return e,
        };
        {
            let mut side = obj.side.lock();
            if let Some(h) = side.held.front() {
                // SAFETY: the caller promises `out` and `cap` bytes at `buf`.
                let r = unsafe { deliver(h, out, buf, cap) };
                if r == RserpoolErr::Ok as c_int {
                    if let Some(h) = side.held.pop_front() {
                        side.keep_card(&h);
                    }
                    side.sync();
                }
                return r;
            }
        }
        match next_from(&obj.kind, timeout_ms) {
            Ok(Some(h)) => {
                // SAFETY: as above.
                let r = unsafe { deliver(&h, out, buf, cap) };
                if r != RserpoolErr::Ok as c_int {
                    obj.side.lock().hold(h);
                } else {
                    obj.side.lock().keep_card(&h);
                }
                r
            }
            Ok(None) => err(RserpoolErr::WouldBlock),
            Err(e) => api_err(&e),
        }
    })
}

/// A descriptor for select/poll/epoll: readable exactly while a
/// notification is waiting for `rserpool_recv` (level-triggered; a session
/// whose messages all go to a data indication callback becomes readable for
/// its other events only). Created on the first call, the same afterwards.
///
/// The descriptor belongs to the session: do not read, write or close it;
/// it stays valid until `rserpool_session_close` (remove it from your
/// epoll set before). `*fd_out` receives it.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_OS (no descriptor left).
/// Thread-safe.
///
/// # Safety
/// `fd_out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_session_fd(
    session: *mut rserpool_session,
    fd_out: *mut c_int,
) -> c_int {
    guard(|| {
        nonnull!(session, fd_out);
        run(|| {
            let obj = session_obj(session)?;
            let mut side = obj.side.lock();
            if side.poll.is_none() {
                let inner = match &obj.kind {
                    Kind::Pu { s, .. } => s.fd(),
                    Kind::Pe { s, .. } => s.fd(),
                };
                side.poll = Some(Pollable::new(inner).map_err(|_| err(RserpoolErr::Os))?);
                side.sync();
            }
            if let Some(p) = &side.poll {
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { *fd_out = p.epoll.as_raw_fd() };
            }
            Ok(())
        })
    })
}

/// DATA_INDICATION by callback (pool user sessions): from now on every
/// message from the PE goes to `cb(session, ppid, stream, data, len, user)`
/// instead of `rserpool_recv` (messages already queued stay queued). `cb`
/// NULL removes it: messages are queued again.
///
/// The callback runs on the context's thread, one at a time with every
/// other callback of that context, while nothing else of the context runs:
/// keep it short. `data` is valid during the call only. Inside it every
/// non-blocking call works (`rserpool_data_send`, `rserpool_recv` with
/// timeout 0, `rserpool_session_close`, ...); waiting calls (a receive with
/// a timeout, a blocking open, `rserpool_pe_listen`, a waiting accept,
/// registration and resolution calls) return RSERPOOL_ERR_WOULD_DEADLOCK,
/// and `rserpool_context_free` must not be called there. It must not
/// unwind (C++ exceptions, longjmp) out of the callback.
///
/// Replacing or removing the callback (and closing the session) waits for
/// a call running on another thread to return, so afterwards `user` is no
/// longer used; do not hold a lock the callback takes while doing so.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER (`session`),
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT (a pool
/// element session). Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_set_data_indication(
    session: *mut rserpool_session,
    cb: rserpool_data_cb,
    user: *mut c_void,
) -> c_int {
    guard(|| {
        nonnull!(session);
        run(|| {
            let obj = session_obj(session)?;
            let Kind::Pu { s, data, .. } = &obj.kind else {
                return Err(err(RserpoolErr::InvalidArgument));
            };
            let Some(f) = cb else {
                s.set_data_callback(None);
                data.set(None);
                return Ok(());
            };
            data.set(Some((f, user as usize)));
            let (slot, side, h) = (data.clone(), obj.side.clone(), session as usize);
            s.set_data_callback(Some(Box::new(move |_: &Session, m: Message| {
                let called = slot.with(|f, user| {
                    // SAFETY: the application's callback, with the bytes of
                    // a live message and the user pointer it gave.
                    unsafe {
                        f(
                            h as *mut rserpool_session,
                            m.ppid,
                            m.stream,
                            m.bytes.as_ptr(),
                            m.bytes.len(),
                            user,
                        )
                    }
                });
                if !called {
                    // Removed while this message was on its way: queue it.
                    side.lock().hold(Held::Pu(Notification::Data {
                        ppid: m.ppid,
                        bytes: m.bytes,
                        stream: m.stream,
                    }));
                }
            })));
            Ok(())
        })
    })
}

/// The fail-over callback (draft-ietf-rserpool-applic §3.4; pool user
/// sessions): called right after a fail-over's new connection is up (the
/// cookie echo sent), before any re-sent or queued message goes out, as
/// `cb(session, from_pe_id, to_pe_id, resent, resent_count, user)`:
/// `resent` holds the sequence numbers of the messages about to be re-sent
/// (sent to the failed PE, never acknowledged; valid during the call only).
/// Messages the callback sends with `rserpool_data_send` go out first, so
/// it can send what resumes the transaction. It replaces
/// RSERPOOL_NOTIFY_FAILOVER; also called when `rserpool_data_send` to a PE
/// identifier moved the session. `cb` NULL removes it.
///
/// Runs on the context's thread like the data indication callback (see
/// `rserpool_set_data_indication` for what may be called there and for
/// replacing it).
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER (`session`),
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT (a pool
/// element session). Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_set_failover_callback(
    session: *mut rserpool_session,
    cb: rserpool_failover_cb,
    user: *mut c_void,
) -> c_int {
    guard(|| {
        nonnull!(session);
        run(|| {
            let obj = session_obj(session)?;
            let Kind::Pu { s, failover, .. } = &obj.kind else {
                return Err(err(RserpoolErr::InvalidArgument));
            };
            let Some(f) = cb else {
                s.set_failover_callback(None);
                failover.set(None);
                return Ok(());
            };
            failover.set(Some((f, user as usize)));
            let (slot, side, h) = (failover.clone(), obj.side.clone(), session as usize);
            s.set_failover_callback(Some(Box::new(move |_: &Session, i: &FailoverInfo| {
                let called = slot.with(|f, user| {
                    // SAFETY: the application's callback, with a live slice
                    // and the user pointer it gave.
                    unsafe {
                        f(
                            h as *mut rserpool_session,
                            i.from,
                            i.to,
                            i.resent.as_ptr(),
                            i.resent.len(),
                            user,
                        )
                    }
                });
                if !called {
                    side.lock().hold(Held::Pu(Notification::Failover {
                        from: i.from,
                        to: i.to,
                        resent: i.resent.clone(),
                    }));
                }
            })));
            Ok(())
        })
    })
}

/// After RSERPOOL_NOTIFY_PEER_FAILED (no automatic fail-over): fail over
/// now, to the next PE by the pool's policy; RSERPOOL_NOTIFY_FAILOVER (or
/// the fail-over callback) follows once connected. Without automatic
/// fail-over a basic-mode application may instead close the session and
/// pick a PE itself (`rserpool_get_next_server`).
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_INVALID_ARGUMENT (a pool
/// element session) or RSERPOOL_ERR_INVALID_STATE (the session is not
/// waiting after a PE failure). Thread-safe; does not wait.
#[no_mangle]
pub extern "C" fn rserpool_session_failover_now(session: *mut rserpool_session) -> c_int {
    guard(|| {
        nonnull!(session);
        run(|| {
            let obj = session_obj(session)?;
            obj.pu()?.failover_now().map_err(|e| api_err(&e))
        })
    })
}

/// Copies the latest cookie the PEs sent (opaque state, echoed to the next
/// PE after a fail-over) into `buf`; `*len` receives its length (0: no
/// cookie yet). With RSERPOOL_ERR_BUFFER_TOO_SMALL `*len` receives the size
/// needed and `buf` is untouched. `buf` may be NULL when `cap` is 0.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_INVALID_ARGUMENT (a pool
/// element session) or RSERPOOL_ERR_BUFFER_TOO_SMALL. Thread-safe.
///
/// # Safety
/// `buf` must have `cap` writable bytes, `len` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_session_cookie(
    session: *mut rserpool_session,
    buf: *mut u8,
    cap: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        nonnull!(session, len);
        if buf.is_null() && cap > 0 {
            return err(RserpoolErr::NullPointer);
        }
        run(|| {
            let obj = session_obj(session)?;
            let c = obj.pu()?.cookie().unwrap_or_default();
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { *len = c.len() };
            if c.len() > cap {
                return Err(err(RserpoolErr::BufferTooSmall));
            }
            if !c.is_empty() {
                // SAFETY: `buf` has `cap >= c.len()` writable bytes.
                unsafe { std::ptr::copy_nonoverlapping(c.as_ptr(), buf, c.len()) };
            }
            Ok(())
        })
    })
}

/// Reads where a pool user session stands and its counters into `*out`.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT (a pool
/// element session). Thread-safe.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_session_get_status(
    session: *mut rserpool_session,
    out: *mut rserpool_session_status,
) -> c_int {
    guard(|| {
        nonnull!(session, out);
        run(|| {
            let obj = session_obj(session)?;
            let s = obj.pu()?;
            let st = s.stats();
            let info = rserpool_session_status {
                state: state_to_c(s.state()),
                pe_id: s.current_pe().map_or(0, |p| p.pe_id),
                buffered: s.buffered(),
                sent: st.sent,
                resent: st.resent,
                acked: st.acked,
                failovers: st.failovers,
                connect_attempts: st.connect_attempts,
                cookies: st.cookies,
            };
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { std::ptr::write(out, info) };
            Ok(())
        })
    })
}

/// Closes a session and frees its handle; NULL is accepted (nothing done).
/// Gracefully, like close(2) on a socket: no more sends, what is buffered
/// still goes out (a pool user session keeps failing over until its
/// messages are acknowledged, then closes; a pool element session
/// acknowledges what it received and sends what is queued). Returns at
/// once, after waiting for a callback of this session running on another
/// thread (none is called afterwards). Notifications not yet received are
/// dropped.
///
/// Returns RSERPOOL_OK, or RSERPOOL_ERR_INVALID_HANDLE when `session` was
/// already closed or never was a session. Thread-safe; may be called from
/// the session's own callbacks. Calls running on other threads with the
/// handle finish normally; later ones fail with RSERPOOL_ERR_INVALID_HANDLE.
#[no_mangle]
pub extern "C" fn rserpool_session_close(session: *mut rserpool_session) -> c_int {
    guard(|| SESSIONS.free_c(session as usize, |obj| obj.shutdown()))
}

/// `sizeof(rserpool_notification)` as the library sees it, for bindings to
/// check their layout. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_notification_size() -> usize {
    std::mem::size_of::<rserpool_notification>()
}

/// `sizeof(rserpool_session_params)` as the library sees it, for bindings
/// to check their layout. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_session_params_size() -> usize {
    std::mem::size_of::<rserpool_session_params>()
}

// ------------------------------------------------------------------ pool element

/// Fills `params` with the defaults: no pool handle, no URL, Round Robin,
/// registration life 60, random PE identifier.
///
/// Returns RSERPOOL_OK or RSERPOOL_ERR_NULL_POINTER. Thread-safe.
///
/// # Safety
/// `params` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_listen_params_init(
    params: *mut rserpool_pe_listen_params,
) -> c_int {
    guard(|| {
        nonnull!(params);
        let p = rserpool_pe_listen_params {
            pool_handle: std::ptr::null(),
            handle_len: 0,
            listen_url: std::ptr::null(),
            policy: rserpool_policy {
                policy_type: RSERPOOL_POLICY_ROUND_ROBIN,
                ..Default::default()
            },
            reg_life: 60,
            pe_id: 0,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { std::ptr::write(params, p) };
        RserpoolErr::Ok as c_int
    })
}

/// An enhanced-mode pool element, like socket + bind + listen: opens the
/// listener at `params->listen_url`, registers a PE of the pool there (the
/// bound address and port, Transport Use data plus control: the connection
/// carries the ASAP control channel) and returns once the registrar granted
/// it. The library keeps the registration alive as for
/// `rserpool_register_pe`. Pool users' sessions come from
/// `rserpool_pe_accept`.
///
/// On success `*server_out` receives a handle the caller owns: end it with
/// `rserpool_pe_server_close` exactly once.
///
/// Blocks like `rserpool_register_pe`. Returns RSERPOOL_OK,
/// RSERPOOL_ERR_NULL_POINTER (`ctx`, `params`, its handle or URL,
/// `server_out`), RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_INVALID_ARGUMENT
/// (handle length, URL, wildcard address, policy, life, PE identifier in
/// use), RSERPOOL_ERR_NO_SCTP, RSERPOOL_ERR_OS (cannot listen there),
/// RSERPOOL_ERR_PROTOCOL_* (the registrar refused), RSERPOOL_ERR_NO_REGISTRAR,
/// RSERPOOL_ERR_TIMEOUT, RSERPOOL_ERR_WOULD_DEADLOCK (from a callback).
/// Thread-safe; nothing is kept from `params`.
///
/// # Safety
/// `params` must point to a valid struct (its handle `handle_len` readable
/// bytes, its URL NUL-terminated); `server_out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_listen(
    ctx: *mut rserpool_context,
    params: *const rserpool_pe_listen_params,
    server_out: *mut *mut rserpool_pe_server,
) -> c_int {
    guard(|| {
        nonnull!(ctx, params, server_out);
        // SAFETY: checked non-NULL; the caller promises a valid struct.
        let p = unsafe { *params };
        nonnull!(p.pool_handle, p.listen_url);
        run(|| {
            let c = context(ctx)?;
            // SAFETY: checked non-NULL; the caller promises `handle_len` bytes.
            let pool = unsafe { pool(p.pool_handle, p.handle_len) }?;
            // SAFETY: checked non-NULL; the caller promises NUL termination.
            let url = unsafe { text(p.listen_url) }?;
            let url =
                EndpointUrl::parse(url.trim()).map_err(|_| err(RserpoolErr::InvalidArgument))?;
            let policy = policy_from_c(&p.policy)?;
            if p.reg_life < -1 || p.reg_life == 0 {
                return Err(err(RserpoolErr::InvalidArgument));
            }
            let server = c
                .pe_listen(PeListenParams {
                    pool: PoolHandle(pool.to_vec()),
                    listen: url,
                    policy: policy.clone(),
                    reg_life: p.reg_life,
                    pe_id: (p.pe_id != 0).then_some(p.pe_id),
                })
                .map_err(|e| api_err(&e))?;
            let proto = match server.transport() {
                Transport::Sctp { .. } => Proto::Sctp,
                _ => Proto::Tcp,
            };
            let addrs = server.local_addrs();
            let url = EndpointUrl {
                proto,
                addrs: addrs.iter().map(|a| a.ip()).collect(),
                port: addrs.first().map_or(0, |a| a.port()),
            }
            .to_string();
            let obj = ServerObj {
                pe_id: server.pe_id(),
                info: api::ServerInfo {
                    pe_id: server.pe_id(),
                    transport: server.transport().clone(),
                    policy,
                },
                fd: server.fd(),
                url,
                server: RwLock::new(Some(server)),
            };
            match SERVERS.insert(obj) {
                Some(h) => {
                    // SAFETY: checked non-NULL; the caller promises it is writable.
                    unsafe { *server_out = h as *mut rserpool_pe_server };
                    Ok(())
                }
                None => Err(err(RserpoolErr::Os)),
            }
        })
    })
}

/// `*pe_id_out` receives the PE identifier the server is registered under.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER or
/// RSERPOOL_ERR_INVALID_HANDLE. Thread-safe.
///
/// # Safety
/// `pe_id_out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_server_pe_id(
    server: *mut rserpool_pe_server,
    pe_id_out: *mut u32,
) -> c_int {
    guard(|| {
        nonnull!(server, pe_id_out);
        run(|| {
            let id = server_obj(server)?.pe_id;
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { *pe_id_out = id };
            Ok(())
        })
    })
}

/// Writes where the server listens as a URL (the kernel's port if the
/// listen URL said 0, e.g. "tcp://127.0.0.1:40123"), NUL-terminated, into
/// `buf` of `cap` bytes; `*len` receives its length without the NUL (with
/// RSERPOOL_ERR_BUFFER_TOO_SMALL: the size needed, NUL included). A pool
/// user may open a session to it with `rserpool_session_open_addr`.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_BUFFER_TOO_SMALL.
/// Thread-safe.
///
/// # Safety
/// `buf` must have `cap` writable bytes; `len` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_server_local_url(
    server: *mut rserpool_pe_server,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        nonnull!(server, buf, len);
        run(|| {
            let obj = server_obj(server)?;
            let url = obj.url.as_bytes();
            if url.len() + 1 > cap {
                // SAFETY: checked non-NULL.
                unsafe { *len = url.len() + 1 };
                return Err(err(RserpoolErr::BufferTooSmall));
            }
            // SAFETY: `buf` has `cap > url.len()` writable bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(url.as_ptr(), buf.cast::<u8>(), url.len());
                *buf.add(url.len()) = 0;
                *len = url.len();
            }
            Ok(())
        })
    })
}

/// A descriptor readable exactly while a pool user session waits to be
/// accepted (level-triggered), for select/poll/epoll. It belongs to the
/// server: do not read, write or close it; valid until
/// `rserpool_pe_server_close`. `*fd_out` receives it.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER or
/// RSERPOOL_ERR_INVALID_HANDLE. Thread-safe.
///
/// # Safety
/// `fd_out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_server_fd(
    server: *mut rserpool_pe_server,
    fd_out: *mut c_int,
) -> c_int {
    guard(|| {
        nonnull!(server, fd_out);
        run(|| {
            let fd = server_obj(server)?.fd;
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { *fd_out = fd };
            Ok(())
        })
    })
}

/// Accepts the next pool user's session, waiting as `timeout_ms` says (as
/// for `rserpool_recv`: 0 returns at once with RSERPOOL_ERR_WOULD_BLOCK,
/// negative without bound, positive at most that long with
/// RSERPOOL_ERR_TIMEOUT). On success `*session_out` receives a session
/// handle the caller owns (end it with `rserpool_session_close`), used with
/// `rserpool_recv`, `rserpool_data_send`, `rserpool_send_cookie`,
/// `rserpool_session_ack` and `rserpool_session_fd`.
///
/// When a message is acknowledged: the pool user forgets a message once
/// the PE acknowledged it, and after a fail-over re-sends only what was
/// never acknowledged. So a message counts as handled not when it is read
/// but when the application comes back after reading it: its next
/// `rserpool_recv`, `rserpool_data_send` or `rserpool_send_cookie` on that
/// session, `rserpool_session_ack`, or `rserpool_session_close`. A PE that
/// dies between reading a request and answering it leaves the request to
/// the next PE.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_WOULD_BLOCK,
/// RSERPOOL_ERR_TIMEOUT, RSERPOOL_ERR_CLOSED (the server is closed or its
/// context freed) or RSERPOOL_ERR_WOULD_DEADLOCK (a waiting accept from a
/// callback). Thread-safe.
///
/// # Safety
/// `session_out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_accept(
    server: *mut rserpool_pe_server,
    timeout_ms: c_int,
    session_out: *mut *mut rserpool_session,
) -> c_int {
    guard(|| {
        nonnull!(server, session_out);
        run(|| {
            let obj = server_obj(server)?;
            let h = accept(&obj, timeout_ms)?;
            match insert_session(
                Kind::Pe {
                    s: h.clone(),
                    sent: AtomicU64::new(0),
                },
                session_out,
            ) {
                0 => Ok(()),
                e => {
                    h.close();
                    Err(e)
                }
            }
        })
    })
}

/// The accept itself, in slices of at most [`ACCEPT_SLICE`] under the read
/// lock so that a close is not held up.
fn accept(obj: &ServerObj, timeout_ms: c_int) -> Result<PeSessionHandle, c_int> {
    let closed = || err(RserpoolErr::Closed);
    let Some(wait) = wait_of(timeout_ms) else {
        let g = obj.server.read();
        let srv = g.as_ref().ok_or_else(closed)?;
        return srv
            .try_accept()
            .map_err(|e| api_err(&e))?
            .ok_or(err(RserpoolErr::WouldBlock));
    };
    let deadline = wait.map(|t| Instant::now() + t);
    loop {
        let slice = match deadline {
            None => ACCEPT_SLICE,
            Some(d) => d
                .saturating_duration_since(Instant::now())
                .min(ACCEPT_SLICE),
        };
        let g = obj.server.read();
        let srv = g.as_ref().ok_or_else(closed)?;
        match srv.accept(Some(slice)) {
            Ok(h) => return Ok(h),
            Err(api::Error::Timeout) => {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return Err(err(RserpoolErr::Timeout));
                }
            }
            Err(e) => return Err(api_err(&e)),
        }
    }
}

/// Sends an ASAP_COOKIE to the pool user of a pool element session: opaque
/// state (`len` bytes, up to about RSERPOOL_MAX_MESSAGE_LEN) the pool user
/// keeps (the latest only) and echoes to the next PE after a fail-over
/// (RSERPOOL_NOTIFY_COOKIE_ECHO there). Acknowledges what was received
/// before, like a send. Never waits.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_INVALID_ARGUMENT (a pool user
/// session, or too long) or RSERPOOL_ERR_CLOSED. Thread-safe; `buf` is
/// copied.
///
/// # Safety
/// `buf` must point to `len` readable bytes (NULL only when `len` is 0).
#[no_mangle]
pub unsafe extern "C" fn rserpool_send_cookie(
    session: *mut rserpool_session,
    buf: *const u8,
    len: usize,
) -> c_int {
    guard(|| {
        nonnull!(session);
        run(|| {
            let obj = session_obj(session)?;
            // SAFETY: the caller promises `len` bytes at `buf`.
            let c = unsafe { bytes(buf, len) }?;
            obj.pe()?.send_cookie(c).map_err(|e| api_err(&e))
        })
    })
}

/// Sends a business card (ASAP_BUSINESS_CARD, RFC 5351 §3.9): pool `pool`
/// (`pool_len` bytes) and the `count` PEs at `pes`, in the order to fail
/// over to (PE identifier, protocol, port, Transport Use, policy and the
/// first `addr_count` addresses of each are used; results of
/// `rserpool_get_primary_server`/`rserpool_get_next_server` or
/// `rserpool_pe_server_info` fit as they are).
///
/// On a pool element session it goes to the pool user at once, with this
/// PE's pool; the pool user tries these PEs, in order, before its pool's
/// policy at its next fail-over. On a pool user session (the pool user is a
/// PE itself, e.g. of a pool of its own: pass its `rserpool_pe_server_info`)
/// it goes to the PE now if connected and again after the cookie echo on
/// every new connection; `pool` NULL with `pool_len` 0 and `count` 0 stops
/// that.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER (`session`, or `pool` /
/// `pes` NULL with a nonzero length), RSERPOOL_ERR_INVALID_HANDLE,
/// RSERPOOL_ERR_INVALID_ARGUMENT (an empty or too long pool handle, more
/// than 4096 PEs, an entry with an unknown protocol or policy, port 0, no
/// or bad addresses, several addresses for one-address protocols) or
/// RSERPOOL_ERR_CLOSED. Never waits; thread-safe; everything is copied.
///
/// # Safety
/// `pool` must point to `pool_len` readable bytes and `pes` to `count`
/// readable entries (either may be NULL when its length is 0).
#[no_mangle]
pub unsafe extern "C" fn rserpool_send_business_card(
    session: *mut rserpool_session,
    pool_handle: *const u8,
    pool_len: usize,
    pes: *const rserpool_server_info,
    count: usize,
) -> c_int {
    guard(|| {
        nonnull!(session);
        run(|| {
            let obj = session_obj(session)?;
            if count > 4096 {
                return Err(err(RserpoolErr::InvalidArgument));
            }
            if count > 0 && pes.is_null() {
                return Err(err(RserpoolErr::NullPointer));
            }
            let elements = (0..count)
                // SAFETY: the caller promises `count` readable entries.
                .map(|i| server_info_from_c(unsafe { &*pes.add(i) }))
                .collect::<Result<Vec<_>, _>>()?;
            let handle = if pool_len == 0 {
                None
            } else {
                if pool_handle.is_null() {
                    return Err(err(RserpoolErr::NullPointer));
                }
                // SAFETY: checked non-NULL; the caller promises `pool_len` bytes.
                Some(PoolHandle(unsafe { pool(pool_handle, pool_len) }?.to_vec()))
            };
            match (&obj.kind, handle) {
                (Kind::Pe { s, .. }, Some(h)) => {
                    s.send_business_card(h, elements).map_err(|e| api_err(&e))
                }
                (Kind::Pu { s, .. }, Some(h)) => s
                    .send_business_card(Some((h, elements)))
                    .map_err(|e| api_err(&e)),
                (Kind::Pu { s, .. }, None) if elements.is_empty() => {
                    s.send_business_card(None).map_err(|e| api_err(&e))
                }
                _ => Err(err(RserpoolErr::InvalidArgument)),
            }
        })
    })
}

/// The latest business card a session received: on a pool user session
/// the PE's (its fail-over order), on a pool element session the pool
/// user's (the last RSERPOOL_NOTIFY_BUSINESS_CARD `rserpool_recv` gave).
/// The pool handle goes to `pool_buf` (`pool_cap` bytes; `*pool_len_out`
/// receives its length), up to `cap` PEs to `pes` (`*count_out` receives
/// how many the card lists, which may be more than `cap`: call again with
/// room for all). `pool_buf` and `pes` may be NULL when their capacity is
/// 0, to learn the sizes.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_WOULD_BLOCK (no card yet) or
/// RSERPOOL_ERR_BUFFER_TOO_SMALL (the pool handle does not fit: nothing is
/// written but `*pool_len_out`). Thread-safe.
///
/// # Safety
/// `pool_buf` must have `pool_cap` writable bytes, `pes` `cap` writable
/// entries; `pool_len_out` and `count_out` must be writable.
#[no_mangle]
#[allow(clippy::too_many_arguments)]
pub unsafe extern "C" fn rserpool_session_business_card(
    session: *mut rserpool_session,
    pool_buf: *mut u8,
    pool_cap: usize,
    pool_len_out: *mut usize,
    pes: *mut rserpool_server_info,
    cap: usize,
    count_out: *mut usize,
) -> c_int {
    guard(|| {
        nonnull!(session, pool_len_out, count_out);
        if (pool_buf.is_null() && pool_cap > 0) || (pes.is_null() && cap > 0) {
            return err(RserpoolErr::NullPointer);
        }
        run(|| {
            let obj = session_obj(session)?;
            let card = match &obj.kind {
                Kind::Pu { s, .. } => s.business_card(),
                Kind::Pe { .. } => obj.side.lock().card.clone(),
            };
            let (handle, elements) = card.ok_or(err(RserpoolErr::WouldBlock))?;
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { *pool_len_out = handle.0.len() };
            if handle.0.len() > pool_cap {
                return Err(err(RserpoolErr::BufferTooSmall));
            }
            // SAFETY: `pool_cap` >= the length writable bytes at `pool_buf`
            // (non-NULL when the handle is not empty, as pool handles are).
            unsafe { std::ptr::copy_nonoverlapping(handle.0.as_ptr(), pool_buf, handle.0.len()) };
            for (i, pe) in elements.iter().take(cap).enumerate() {
                // SAFETY: i < cap; the caller promises `cap` writable entries.
                unsafe { std::ptr::write(pes.add(i), server_info_to_c(&pe.clone().into())) };
            }
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { *count_out = elements.len() };
            Ok(())
        })
    })
}

/// `*out` receives the PE a server registered (identifier, transport with
/// every address, policy as given to `rserpool_pe_listen`): what a pool
/// user that is also this PE puts on its business card.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER or
/// RSERPOOL_ERR_INVALID_HANDLE. Thread-safe.
///
/// # Safety
/// `out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_server_info(
    server: *mut rserpool_pe_server,
    out: *mut rserpool_server_info,
) -> c_int {
    guard(|| {
        nonnull!(server, out);
        run(|| {
            let info = server_info_to_c(&server_obj(server)?.info);
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { std::ptr::write(out, info) };
            Ok(())
        })
    })
}

/// Acknowledges every message of a pool element session received so far:
/// the application is done with them (see `rserpool_pe_accept`). Never
/// waits.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT (a pool user
/// session). Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_session_ack(session: *mut rserpool_session) -> c_int {
    guard(|| {
        nonnull!(session);
        run(|| {
            session_obj(session)?.pe()?.ack();
            Ok(())
        })
    })
}

/// Deregisters the PE (waiting for the registrar's answer, bounded as
/// `rserpool_deregister`), stops listening and frees the handle; sessions
/// not yet accepted are closed, accepted ones stay open. A blocking
/// `rserpool_pe_accept` on another thread returns RSERPOOL_ERR_CLOSED.
/// NULL is accepted (nothing done).
///
/// Returns RSERPOOL_OK; RSERPOOL_ERR_INVALID_HANDLE when `server` was
/// already closed or never was a server; or the deregistration's error
/// (RSERPOOL_ERR_NO_REGISTRAR, RSERPOOL_ERR_TIMEOUT, ...: the handle is
/// freed anyway, and the registrar drops the PE when its life runs out).
/// From a callback it does not wait for the registrar. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_pe_server_close(server: *mut rserpool_pe_server) -> c_int {
    guard(|| {
        if server.is_null() {
            return RserpoolErr::Ok as c_int;
        }
        let Some(obj) = SERVERS.remove(server as usize) else {
            return err(RserpoolErr::InvalidHandle);
        };
        let srv = obj.server.write().take();
        match srv.map(PeServer::close) {
            Some(Err(e)) => api_err(&e),
            _ => RserpoolErr::Ok as c_int,
        }
    })
}
