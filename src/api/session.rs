//! The pool user's enhanced-mode sessions ([`Session`]): the sans-IO
//! [`crate::session::Session`] running on the context's loop thread, with a
//! handle for the application's threads.
//!
//! See [`Context::open_session`](super::Context::open_session) and the
//! module docs of [`crate::api`] for threading and callbacks.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::hub::{LoopRef, Work};
use super::notify::Signal;
use super::{Error, ServerInfo};
use crate::session::{
    self as core, SendError, SendOptions, SessionConfig, SessionError, SessionStats, State,
};
use crate::wire::PoolElement;

/// A message of the application's: what a data callback receives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Its payload protocol identifier.
    pub ppid: u32,
    /// The stream it came on.
    pub stream: u16,
    /// The message.
    pub bytes: Vec<u8>,
}

/// Something a session tells its application ([`Session::recv`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notification {
    /// A message from the PE (unless a data callback took it).
    Data {
        /// Its payload protocol identifier.
        ppid: u32,
        /// The message.
        bytes: Vec<u8>,
        /// The stream it came on.
        stream: u16,
    },
    /// The first PE is connected.
    Connected {
        /// Its PE identifier (0 for a PE reached by transport address).
        pe: u32,
    },
    /// Fail-over done (unless a fail-over callback took it): the session is
    /// connected to a new PE, the cookie echo is out.
    Failover {
        /// The PE that failed (or was switched away from).
        from: u32,
        /// The new PE.
        to: u32,
        /// Sequence numbers ([`SendReceipt::seq`]) of the messages re-sent to
        /// the new PE, in order: sent to an earlier PE, never acknowledged.
        resent: Vec<u64>,
    },
    /// The PE failed and the session does not fail over on its own
    /// ([`SessionConfig::auto_failover`] off, or a buffered message sent with
    /// ASAP_SEND_NO_FAILOVER): nothing moves until [`Session::failover_now`]
    /// or [`Session::close`].
    PeerFailed {
        /// The PE that failed.
        pe: u32,
    },
    /// The session gave up: no PE reachable. [`Notification::Closed`]
    /// follows; [`Session::take_unsent`] has the messages never acknowledged.
    Failed(SessionError),
    /// The PE acknowledged this message (only with
    /// [`SessionConfig::ack_events`]).
    Acked {
        /// Its [`SendReceipt::seq`].
        seq: u64,
    },
    /// The session is over (closed by the application, given up, or the
    /// context stopped); the last notification.
    Closed,
}

/// Where a message went: [`Session::send`]'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SendReceipt {
    /// The message's sequence number in this session (0, 1, 2, ...), as
    /// [`Notification::Acked`] and [`Notification::Failover`] name it.
    pub seq: u64,
    /// The PE it is addressed to: the one the session is connected or
    /// connecting to (0 for a PE reached by transport address); `None` while
    /// the session is still choosing one (it goes to whichever is chosen).
    pub pe_id: Option<u32>,
}

/// What a fail-over callback is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailoverInfo {
    /// The PE that failed (or was switched away from).
    pub from: u32,
    /// The new PE.
    pub to: u32,
    /// The messages about to be re-sent, in order (their sequence numbers).
    pub resent: Vec<u64>,
}

/// Called on the loop thread with every message from the PE, instead of
/// queuing [`Notification::Data`].
pub type DataCallback = Box<dyn FnMut(&Session, Message) + Send>;

/// Called on the loop thread right after a fail-over's new connection is up
/// (cookie echo sent), before any re-sent or queued message goes out:
/// messages the callback sends go first. Replaces [`Notification::Failover`].
pub type FailoverCallback = Box<dyn FnMut(&Session, &FailoverInfo) + Send>;

/// How to open a session.
#[derive(Default)]
pub struct SessionOptions {
    /// Fail-over, upper-layer acknowledgements, buffer bounds, timers.
    pub config: SessionConfig,
    /// Wait in `open_session` until the first PE is connected, at most this
    /// long (like a blocking connect(2)); `None` returns at once and the
    /// session connects in the background (messages sent meanwhile wait).
    pub wait_connected: Option<Duration>,
    /// Data indication callback, installed before anything can arrive.
    pub on_data: Option<DataCallback>,
    /// Fail-over callback, installed before anything can happen.
    pub on_failover: Option<FailoverCallback>,
}

impl std::fmt::Debug for SessionOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionOptions")
            .field("config", &self.config)
            .field("wait_connected", &self.wait_connected)
            .field("on_data", &self.on_data.is_some())
            .field("on_failover", &self.on_failover.is_some())
            .finish()
    }
}

type Shared<T> = Arc<Mutex<T>>;

/// The callbacks: each behind its own lock, so one can be called without
/// holding the table (and replaced from inside itself).
#[derive(Default)]
pub(crate) struct PuCallbacks {
    pub(crate) data: Option<Shared<DataCallback>>,
    pub(crate) failover: Option<Shared<FailoverCallback>>,
}

/// What the application's threads wait on.
#[derive(Debug)]
pub(crate) struct PuState {
    pub(crate) queue: VecDeque<Notification>,
    pub(crate) signal: Signal,
    /// A PE was connected at least once.
    pub(crate) connected: bool,
    /// Closed was queued: nothing more will come.
    pub(crate) ended: bool,
    /// Why the last selection of a PE failed (for `wait_connected`).
    pub(crate) last_error: Option<Error>,
    /// Payload bytes of the queued messages.
    pub(crate) queued_bytes: usize,
    /// The loop stopped reading the session's connection because
    /// `queued_bytes` passed [`RECV_QUEUE_BOUND`] (set by the loop thread).
    pub(crate) read_paused: bool,
}

/// How many bytes of received messages a pool user session holds for its
/// application before the library stops reading the PE's connection (TCP
/// flow control then stalls the PE, whose ACK chunks stop coming); reading
/// resumes once the application took it below half. A PE streaming to a pool
/// user that does not receive cannot make the pool user's memory grow
/// without bound. Messages going to a data callback do not count.
pub const RECV_QUEUE_BOUND: usize = 8 << 20;

fn data_len(n: &Notification) -> usize {
    match n {
        Notification::Data { bytes, .. } => bytes.len(),
        _ => 0,
    }
}

impl PuState {
    pub(crate) fn push(&mut self, n: Notification) {
        self.queued_bytes += data_len(&n);
        self.queue.push_back(n);
        self.signal.set(true);
    }

    fn pop(&mut self) -> Option<Notification> {
        let n = self.queue.pop_front();
        if let Some(n) = &n {
            self.queued_bytes = self.queued_bytes.saturating_sub(data_len(n));
        }
        self.signal.set(!self.queue.is_empty());
        n
    }

    /// Reading is held back and the application took enough to resume it.
    fn resume_due(&self) -> bool {
        self.read_paused && self.queued_bytes <= RECV_QUEUE_BOUND / 2
    }
}

/// One session as the loop thread and the application's threads share it.
pub(crate) struct PuShared {
    pub(crate) id: u64,
    pub(crate) core: Mutex<core::Session>,
    /// A pump is posted and has not started yet.
    pub(crate) needs_pump: AtomicBool,
    /// Graceful close asked for: no more sends; closed once all is out.
    pub(crate) closing: AtomicBool,
    pub(crate) state: Mutex<PuState>,
    pub(crate) cv: Condvar,
    pub(crate) callbacks: Mutex<PuCallbacks>,
    /// The pool's PEs as last resolved (for [`Session::send_to_pe`]).
    pub(crate) known: Mutex<HashMap<u32, PoolElement>>,
    pub(crate) lp: Arc<LoopRef>,
}

impl PuShared {
    /// Have the loop thread drive the core (at once if this is the loop
    /// thread: after the current callback).
    pub(crate) fn request_pump(&self) {
        if !self.needs_pump.swap(true, Ordering::AcqRel) {
            self.lp.submit(Work::PumpPu(self.id));
        }
    }
}

/// The handle the application holds; the last one dropped closes the session
/// gracefully.
pub(crate) struct SessionInner {
    pub(crate) shared: Arc<PuShared>,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.request_pump();
    }
}

/// An enhanced-mode session of a pool user: messages to a pool (or a PE)
/// with automatic fail-over. Cheap to clone (all clones are one session);
/// `Send + Sync`. Dropping the last clone closes it like [`Session::close`].
///
/// Made by [`Context::open_session`](super::Context::open_session) or
/// [`Context::open_session_to`](super::Context::open_session_to).
#[derive(Clone)]
pub struct Session {
    pub(crate) inner: Arc<SessionInner>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.shared().id)
            .field("state", &self.state())
            .finish()
    }
}

fn send_err(e: SendError) -> Error {
    match e {
        SendError::ReservedPpid => {
            Error::InvalidArgument("PPID 11 is reserved for ASAP control messages".into())
        }
        SendError::TooLarge => Error::InvalidArgument(format!(
            "a message is at most {} bytes",
            core::MAX_MESSAGE_LEN
        )),
        SendError::BufferFull => Error::BufferFull,
        SendError::Closed => Error::SessionClosed,
    }
}

impl Session {
    fn shared(&self) -> &PuShared {
        &self.inner.shared
    }

    /// Queue a message for the pool (RFC 5352 §6.5.5 `flags`:
    /// [`ASAP_SEND_FAILOVER`](crate::session::ASAP_SEND_FAILOVER),
    /// [`ASAP_SEND_NO_FAILOVER`](crate::session::ASAP_SEND_NO_FAILOVER),
    /// 0x1000 unordered; stream 0). Never waits: the message goes out as
    /// soon as a PE is connected, in order; with upper-layer acks it stays
    /// buffered until the PE acknowledges it. Errors:
    /// [`Error::BufferFull`] at the session's bound,
    /// [`Error::InvalidArgument`] for PPID 11 or a message too long,
    /// [`Error::SessionClosed`].
    pub fn send(&self, bytes: &[u8], ppid: u32, flags: u32) -> Result<SendReceipt, Error> {
        self.send_with(bytes, ppid, SendOptions::from_flags(flags))
    }

    /// [`Session::send`] with the options spelled out (stream included).
    pub fn send_with(
        &self,
        bytes: &[u8],
        ppid: u32,
        opts: SendOptions,
    ) -> Result<SendReceipt, Error> {
        let s = self.shared();
        if s.closing.load(Ordering::Acquire) {
            return Err(Error::SessionClosed);
        }
        let receipt = {
            let mut c = s.core.lock();
            let seq = c.send(bytes, ppid, opts).map_err(send_err)?;
            SendReceipt {
                seq,
                pe_id: c.current_pe().map(|p| p.id),
            }
        };
        s.request_pump();
        Ok(receipt)
    }

    /// Queue a message for one PE of the pool, named by its identifier: the
    /// session moves to that PE if it is on another one (without reporting
    /// the old one; messages it never acknowledged go to the new PE, as after
    /// a fail-over, and the fail-over callback runs). The PE must be among
    /// those the session's pool resolution or the PE's business card listed
    /// ([`Error::UnknownPe`] otherwise). Never waits.
    pub fn send_to_pe(
        &self,
        pe_id: u32,
        bytes: &[u8],
        ppid: u32,
        flags: u32,
    ) -> Result<SendReceipt, Error> {
        self.send_to_pe_with(pe_id, bytes, ppid, SendOptions::from_flags(flags))
    }

    /// [`Session::send_to_pe`] with the options spelled out (stream included).
    pub fn send_to_pe_with(
        &self,
        pe_id: u32,
        bytes: &[u8],
        ppid: u32,
        opts: SendOptions,
    ) -> Result<SendReceipt, Error> {
        let s = self.shared();
        if s.closing.load(Ordering::Acquire) {
            return Err(Error::SessionClosed);
        }
        let pe = s.known.lock().get(&pe_id).cloned();
        let receipt = {
            let mut c = s.core.lock();
            let on_it = c.current_pe().is_some_and(|p| p.id == pe_id);
            if !on_it {
                // From the pool's resolution, else the PE's business card.
                let card = c
                    .business_card()
                    .and_then(|(_, pes)| pes.iter().find(|p| p.id == pe_id).cloned());
                let pe = pe.or(card).ok_or(Error::UnknownPe)?;
                c.switch_to(pe, s.lp.now())
                    .map_err(|_| Error::SessionClosed)?;
            }
            let seq = c.send(bytes, ppid, opts).map_err(send_err)?;
            SendReceipt {
                seq,
                pe_id: Some(pe_id),
            }
        };
        s.request_pump();
        Ok(receipt)
    }

    /// This pool user is also a PE of `pool`: send our business card (the
    /// PEs the PE should fail over to, in order) now if connected, and after
    /// the cookie echo on every new connection. `None` stops it.
    pub fn send_business_card(
        &self,
        card: Option<(crate::wire::PoolHandle, Vec<PoolElement>)>,
    ) -> Result<(), Error> {
        let s = self.shared();
        s.core.lock().set_business_card(card).map_err(send_err)?;
        s.request_pump();
        Ok(())
    }

    /// The latest business card from the PE: its pool and the PEs to fail
    /// over to, in order (tried before the pool's policy).
    pub fn business_card(&self) -> Option<(crate::wire::PoolHandle, Vec<PoolElement>)> {
        self.shared()
            .core
            .lock()
            .business_card()
            .map(|(p, v)| (p.clone(), v.to_vec()))
    }

    /// The next notification, waiting at most `timeout` (`None`: no bound).
    /// [`Error::Timeout`] when nothing came, [`Error::SessionClosed`] once
    /// [`Notification::Closed`] was received, [`Error::WouldDeadlock`] when
    /// called from a callback (use [`Session::try_recv`] there).
    pub fn recv(&self, timeout: Option<Duration>) -> Result<Notification, Error> {
        let s = self.shared();
        if timeout != Some(Duration::ZERO) && s.lp.on_loop() {
            return Err(Error::WouldDeadlock);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = s.state.lock();
        loop {
            if let Some(n) = st.pop() {
                if st.resume_due() {
                    drop(st);
                    s.request_pump();
                }
                return Ok(n);
            }
            if st.ended {
                return Err(Error::SessionClosed);
            }
            match deadline {
                None => s.cv.wait(&mut st),
                Some(d) => {
                    if s.cv.wait_until(&mut st, d).timed_out() && st.queue.is_empty() {
                        return Err(if st.ended {
                            Error::SessionClosed
                        } else {
                            Error::Timeout
                        });
                    }
                }
            }
        }
    }

    /// The next notification if one is waiting; `Ok(None)` if not,
    /// [`Error::SessionClosed`] once [`Notification::Closed`] was received.
    pub fn try_recv(&self) -> Result<Option<Notification>, Error> {
        let s = self.shared();
        let mut st = s.state.lock();
        match st.pop() {
            Some(n) => {
                if st.resume_due() {
                    drop(st);
                    s.request_pump();
                }
                Ok(Some(n))
            }
            None if st.ended => Err(Error::SessionClosed),
            None => Ok(None),
        }
    }

    /// A descriptor for select/poll/epoll: readable exactly while a
    /// notification is waiting (level-triggered: after [`Session::try_recv`]
    /// took the last one it is no longer readable; the next notification
    /// makes it readable again). Owned by the session: do not read, write or
    /// close it; valid while any clone of the session lives.
    pub fn fd(&self) -> RawFd {
        self.shared().state.lock().signal.raw_fd()
    }

    /// Install (or with `None` remove) the data callback: every message from
    /// the PE goes to it, on the loop thread, instead of the queue. Messages
    /// queued before stay queued.
    pub fn set_data_callback(&self, cb: Option<DataCallback>) {
        self.shared().callbacks.lock().data = cb.map(|f| Arc::new(Mutex::new(f)));
    }

    /// Install (or remove) the fail-over callback.
    pub fn set_failover_callback(&self, cb: Option<FailoverCallback>) {
        self.shared().callbacks.lock().failover = cb.map(|f| Arc::new(Mutex::new(f)));
    }

    /// After [`Notification::PeerFailed`]: fail over now.
    /// [`Error::InvalidState`] in any other state.
    pub fn failover_now(&self) -> Result<(), Error> {
        let s = self.shared();
        s.core.lock().failover_now(s.lp.now()).map_err(|_| {
            Error::InvalidState("the session is not waiting after a peer failure".into())
        })?;
        s.request_pump();
        Ok(())
    }

    /// Close gracefully: no more sends; what is buffered still goes out and
    /// (with upper-layer acks) is acknowledged, failing over if needed, then
    /// the connection closes and [`Notification::Closed`] comes. A session
    /// waiting after [`Notification::PeerFailed`] closes at once (its unsent
    /// messages stay in [`Session::take_unsent`]). Returns at once.
    pub fn close(&self) {
        let s = self.shared();
        s.closing.store(true, Ordering::Release);
        s.request_pump();
    }

    /// Where the session stands.
    pub fn state(&self) -> State {
        self.shared().core.lock().state()
    }

    /// The PE the session is connected or connecting to.
    pub fn current_pe(&self) -> Option<ServerInfo> {
        self.shared()
            .core
            .lock()
            .current_pe()
            .cloned()
            .map(ServerInfo::from)
    }

    /// The latest cookie from the PE (opaque), echoed to the next PE after a
    /// fail-over.
    pub fn cookie(&self) -> Option<Vec<u8>> {
        self.shared().core.lock().cookie().map(<[u8]>::to_vec)
    }

    /// Counters.
    pub fn stats(&self) -> SessionStats {
        self.shared().core.lock().stats().clone()
    }

    /// Payload bytes of received messages waiting for [`Session::recv`]
    /// (at most about [`RECV_QUEUE_BOUND`] plus one read burst).
    pub fn queued_bytes(&self) -> usize {
        self.shared().state.lock().queued_bytes
    }

    /// Messages buffered: queued plus sent and not yet acknowledged.
    pub fn buffered(&self) -> usize {
        self.shared().core.lock().buffered()
    }

    /// Once the session is closed (after [`Notification::Closed`]): the
    /// messages never acknowledged (without upper-layer acks: never sent),
    /// in order, as `(seq, ppid, bytes)`. Empty before.
    pub fn take_unsent(&self) -> Vec<(u64, u32, Vec<u8>)> {
        self.shared().core.lock().take_unsent()
    }
}
