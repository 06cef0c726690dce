//! The pool element's side of enhanced-mode sessions, like BSD sockets:
//! [`PeServer`] listens and registers, [`PeServer::accept`] hands out one
//! [`PeSessionHandle`] per pool user connection (whose docs say when a
//! message is acknowledged).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use super::hub::{LoopRef, Work};
use super::notify::Signal;
use super::Error;
use crate::runtime::{ConnId, EndpointUrl, ListenerId};
use crate::session::{PeEvent, PeSession, PeStats, SendError, MAX_MESSAGE_LEN};
use crate::wire::{Policy, PoolElement, PoolHandle, Transport};

/// What a pool element session tells its application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeNotification {
    /// The pool user's cookie echo (the state a previous PE handed it, after
    /// a fail-over): comes before the data.
    CookieEcho(Vec<u8>),
    /// An application message.
    Data {
        /// Its payload protocol identifier.
        ppid: u32,
        /// The message.
        bytes: Vec<u8>,
        /// The stream it came on.
        stream: u16,
    },
    /// The pool user's business card (it is a PE too).
    BusinessCard {
        /// Its pool.
        pool: PoolHandle,
        /// Its PEs in fail-over order.
        elements: Vec<PoolElement>,
    },
    /// The pool user closed the connection (or it failed); the last one.
    Closed,
}

impl From<PeEvent> for PeNotification {
    fn from(e: PeEvent) -> Self {
        match e {
            PeEvent::CookieEcho(c) => PeNotification::CookieEcho(c),
            PeEvent::Data {
                ppid,
                bytes,
                stream,
            } => PeNotification::Data {
                ppid,
                bytes,
                stream,
            },
            PeEvent::BusinessCard { pool, elements } => {
                PeNotification::BusinessCard { pool, elements }
            }
        }
    }
}

/// Called on the loop thread with every notification of a PE session,
/// instead of queuing it; the messages it gets are acknowledged when it
/// returns.
pub type PeCallback = Box<dyn FnMut(&PeSessionHandle, PeNotification) + Send>;

/// What [`Context::pe_listen`](super::Context::pe_listen) needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeListenParams {
    /// The pool to register in.
    pub pool: PoolHandle,
    /// Where to listen for pool users: `tcp://ADDR:PORT` (TCP mapping) or
    /// `sctp://ADDR[,ADDR...]:PORT`; port 0 takes one from the kernel.
    /// Concrete addresses: they are what the PE registers.
    pub listen: EndpointUrl,
    /// The PE's policy and its values.
    pub policy: Policy,
    /// Registration life in the context's unit (−1 = infinite).
    pub reg_life: i32,
    /// A fixed PE identifier (`None`: random).
    pub pe_id: Option<u32>,
}

impl PeListenParams {
    /// A PE of `pool` listening at `listen`, life 60, random identifier.
    pub fn new(pool: impl Into<PoolHandle>, listen: EndpointUrl, policy: Policy) -> Self {
        PeListenParams {
            pool: pool.into(),
            listen,
            policy,
            reg_life: 60,
            pe_id: None,
        }
    }
}

/// The accept queue of a server.
#[derive(Debug)]
pub(crate) struct AcceptState {
    pub(crate) queue: VecDeque<PeSessionHandle>,
    pub(crate) signal: Signal,
    pub(crate) closed: bool,
}

/// A server as the loop thread and the application share it.
pub(crate) struct PeServerShared {
    pub(crate) listener: ListenerId,
    pub(crate) pe_id: AtomicU32,
    pub(crate) accept: Mutex<AcceptState>,
    pub(crate) cv: Condvar,
    /// Installed on every session accepted from now on.
    pub(crate) callback: Mutex<Option<Arc<Mutex<PeCallback>>>>,
    /// Every session it accepted (for [`PeServer::abort`]).
    pub(crate) sessions: Mutex<Vec<std::sync::Weak<PeShared>>>,
    pub(crate) lp: Arc<LoopRef>,
}

impl PeServerShared {
    pub(crate) fn push(&self, h: PeSessionHandle) {
        {
            let mut all = self.sessions.lock();
            all.retain(|w| w.strong_count() > 0);
            all.push(Arc::downgrade(&h.inner.shared));
        }
        let mut st = self.accept.lock();
        if st.closed {
            return; // dropped: closes it
        }
        st.queue.push_back(h);
        st.signal.set(true);
        drop(st);
        self.cv.notify_all();
    }
}

/// The state of one PE session under its lock.
#[derive(Debug)]
pub(crate) struct PeState {
    pub(crate) core: PeSession,
    pub(crate) signal: Signal,
    /// The connection is gone.
    pub(crate) closed: bool,
    /// [`PeNotification::Closed`] was handed out.
    pub(crate) closed_told: bool,
    /// The application closed it.
    pub(crate) closing: bool,
    /// Crashed on purpose ([`PeServer::abort`]): nothing more goes out.
    pub(crate) aborted: bool,
}

impl PeState {
    /// The next notification (the core's events, then Closed once).
    pub(crate) fn next(&mut self) -> Option<PeNotification> {
        if let Some(e) = self.core.poll_event() {
            return Some(e.into());
        }
        if self.closed && !self.closed_told {
            self.closed_told = true;
            return Some(PeNotification::Closed);
        }
        None
    }

    /// Readable while something is waiting.
    pub(crate) fn sync(&mut self) {
        let on = self.core.pending_events() > 0 || (self.closed && !self.closed_told);
        self.signal.set(on);
    }
}

/// One PE session as the loop thread and the application share it.
pub(crate) struct PeShared {
    pub(crate) conn: ConnId,
    pub(crate) remote: Vec<SocketAddr>,
    pub(crate) state: Mutex<PeState>,
    pub(crate) cv: Condvar,
    pub(crate) needs_pump: AtomicBool,
    pub(crate) callback: Mutex<Option<Arc<Mutex<PeCallback>>>>,
    pub(crate) lp: Arc<LoopRef>,
}

impl PeShared {
    pub(crate) fn request_pump(&self) {
        if !self.needs_pump.swap(true, Ordering::AcqRel) {
            self.lp.submit(Work::PumpPe(self.conn));
        }
    }
}

pub(crate) struct PeSessionInner {
    pub(crate) shared: Arc<PeShared>,
}

impl Drop for PeSessionInner {
    fn drop(&mut self) {
        let s = &self.shared;
        {
            let mut st = s.state.lock();
            if st.closed {
                return;
            }
            st.core.ack();
            st.closing = true;
        }
        s.request_pump();
    }
}

/// One pool user's connection to this PE. Cheap to clone; `Send + Sync`;
/// the last clone dropped closes it like [`PeSessionHandle::close`].
///
/// # When a message is acknowledged
///
/// The PE's TCP mapping ACK tells the pool user it may forget a message;
/// after a fail-over it re-sends only what was never acknowledged. So a
/// message is acknowledged not when the application reads it but when the
/// application comes back after handling it: its next receive call on that
/// session ([`PeSessionHandle::recv`] / [`PeSessionHandle::try_recv`]), a
/// send on that session (the ACK goes out after the reply), its
/// [`PeSessionHandle::close`], an explicit [`PeSessionHandle::ack`], or the
/// return of the data callback that got it. A PE killed between reading a
/// request and answering it leaves the request unacknowledged, and the pool
/// user re-sends it to the next PE. Control messages the library consumes
/// (anything on PPID 11 but a cookie echo or a business card) are
/// acknowledged at once. Over SCTP there are no ACK chunks: the pool user
/// counts a message as acknowledged once its kernel took it.
#[derive(Clone)]
pub struct PeSessionHandle {
    pub(crate) inner: Arc<PeSessionInner>,
}

impl std::fmt::Debug for PeSessionHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeSessionHandle")
            .field("conn", &self.inner.shared.conn.0)
            .field("remote", &self.inner.shared.remote)
            .finish()
    }
}

fn send_err(e: SendError) -> Error {
    match e {
        SendError::ReservedPpid => {
            Error::InvalidArgument("PPID 11 is reserved for ASAP control messages".into())
        }
        SendError::TooLarge => {
            Error::InvalidArgument(format!("a message is at most {MAX_MESSAGE_LEN} bytes"))
        }
        SendError::BufferFull => Error::BufferFull,
        SendError::Closed => Error::SessionClosed,
    }
}

impl PeSessionHandle {
    fn shared(&self) -> &PeShared {
        &self.inner.shared
    }

    /// The pool user's addresses.
    pub fn peer_addrs(&self) -> &[SocketAddr] {
        &self.shared().remote
    }

    /// The next notification, waiting at most `timeout` (`None`: no bound);
    /// first acknowledges the messages received before (see the module
    /// docs). [`Error::Timeout`], [`Error::SessionClosed`] after
    /// [`PeNotification::Closed`], [`Error::WouldDeadlock`] from a callback.
    pub fn recv(&self, timeout: Option<Duration>) -> Result<PeNotification, Error> {
        let s = self.shared();
        if timeout != Some(Duration::ZERO) && s.lp.on_loop() {
            return Err(Error::WouldDeadlock);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = s.state.lock();
        if st.core.ack() > 0 {
            s.request_pump();
        }
        loop {
            let n = st.next();
            st.sync();
            if let Some(n) = n {
                return Ok(n);
            }
            if st.closed {
                return Err(Error::SessionClosed);
            }
            match deadline {
                None => s.cv.wait(&mut st),
                Some(d) => {
                    if s.cv.wait_until(&mut st, d).timed_out()
                        && st.core.pending_events() == 0
                        && !st.closed
                    {
                        return Err(Error::Timeout);
                    }
                }
            }
        }
    }

    /// The next notification if one is waiting (`Ok(None)` if not);
    /// acknowledges the messages received before, like
    /// [`PeSessionHandle::recv`].
    pub fn try_recv(&self) -> Result<Option<PeNotification>, Error> {
        let s = self.shared();
        let mut st = s.state.lock();
        if st.core.ack() > 0 {
            s.request_pump();
        }
        let n = st.next();
        st.sync();
        match n {
            Some(n) => Ok(Some(n)),
            None if st.closed => Err(Error::SessionClosed),
            None => Ok(None),
        }
    }

    /// Acknowledge every message received so far (the application is done
    /// with them).
    pub fn ack(&self) {
        let s = self.shared();
        if s.state.lock().core.ack() > 0 {
            s.request_pump();
        }
    }

    fn with_core(
        &self,
        f: impl FnOnce(&mut PeSession) -> Result<(), SendError>,
    ) -> Result<(), Error> {
        let s = self.shared();
        {
            let mut st = s.state.lock();
            if st.closed || st.closing {
                return Err(Error::SessionClosed);
            }
            f(&mut st.core).map_err(send_err)?;
        }
        s.request_pump();
        Ok(())
    }

    /// Send a message to the pool user (stream 0, ordered), then
    /// acknowledge what was received before. Never waits.
    pub fn send(&self, bytes: &[u8], ppid: u32) -> Result<(), Error> {
        self.with_core(|c| c.send(bytes, ppid))
    }

    /// [`PeSessionHandle::send`] on a stream, unordered if asked.
    pub fn send_on(
        &self,
        bytes: &[u8],
        ppid: u32,
        stream: u16,
        unordered: bool,
    ) -> Result<(), Error> {
        self.with_core(|c| c.send_on(bytes, ppid, stream, unordered))
    }

    /// Bytes sent to the pool user (messages and control) that it has not
    /// taken in yet: over the TCP mapping, not yet answered by its ACK
    /// chunk; over SCTP, not yet accepted by the kernel.
    pub fn in_flight_bytes(&self) -> usize {
        self.shared().state.lock().core.in_flight_bytes()
    }

    /// Flow control for a PE that streams: wait until at most `max_bytes`
    /// are in flight ([`PeSessionHandle::in_flight_bytes`]), at most
    /// `timeout` (`None`: no bound). Sends never wait and the runtime closes
    /// a connection whose peer stops reading once its write buffer passes
    /// its bound (4 MiB), so a PE sending more than that in one go calls
    /// this between sends with a bound well below it. [`Error::Timeout`],
    /// [`Error::SessionClosed`] once the connection is gone,
    /// [`Error::WouldDeadlock`] from a callback (unless `max_bytes` is
    /// already met).
    pub fn wait_in_flight(&self, max_bytes: usize, timeout: Option<Duration>) -> Result<(), Error> {
        let s = self.shared();
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = s.state.lock();
        loop {
            if st.closed {
                return Err(Error::SessionClosed);
            }
            if st.core.in_flight_bytes() <= max_bytes {
                return Ok(());
            }
            if s.lp.on_loop() {
                return Err(Error::WouldDeadlock);
            }
            match deadline {
                None => s.cv.wait(&mut st),
                Some(d) => {
                    if s.cv.wait_until(&mut st, d).timed_out()
                        && st.core.in_flight_bytes() > max_bytes
                        && !st.closed
                    {
                        return Err(Error::Timeout);
                    }
                }
            }
        }
    }

    /// Send an ASAP_COOKIE: the state the pool user hands the next PE after
    /// a fail-over (it keeps only the latest).
    pub fn send_cookie(&self, cookie: &[u8]) -> Result<(), Error> {
        self.with_core(|c| c.send_cookie(cookie))
    }

    /// Send an ASAP_BUSINESS_CARD: the PEs the pool user should fail over
    /// to, in order.
    pub fn send_business_card(
        &self,
        pool: impl Into<PoolHandle>,
        elements: Vec<PoolElement>,
    ) -> Result<(), Error> {
        let pool = pool.into();
        self.with_core(move |c| c.send_business_card(pool, elements))
    }

    /// A descriptor for select/poll/epoll, readable exactly while a
    /// notification is waiting (level-triggered; see
    /// [`Session::fd`](super::Session::fd)). Owned by the session.
    pub fn fd(&self) -> RawFd {
        self.shared().state.lock().signal.raw_fd()
    }

    /// Install (or remove) the callback: every notification goes to it, on
    /// the loop thread, instead of the queue; each message it gets is
    /// acknowledged when it returns.
    pub fn set_callback(&self, cb: Option<PeCallback>) {
        let s = self.shared();
        *s.callback.lock() = cb.map(|f| Arc::new(Mutex::new(f)));
        s.request_pump();
    }

    /// Counters.
    pub fn stats(&self) -> PeStats {
        self.shared().state.lock().core.stats().clone()
    }

    /// Acknowledge what was received, send what is queued, close.
    pub fn close(&self) {
        let s = self.shared();
        {
            let mut st = s.state.lock();
            if st.closed {
                return;
            }
            st.core.ack();
            st.closing = true;
        }
        s.request_pump();
    }
}

/// A registered pool element listening for pool users. Dropping it (or
/// [`PeServer::close`]) deregisters the PE and stops listening; sessions
/// already accepted stay open.
pub struct PeServer {
    pub(crate) shared: Arc<PeServerShared>,
    pub(crate) transport: Transport,
    pub(crate) addrs: Vec<SocketAddr>,
    pub(crate) done: bool,
}

impl std::fmt::Debug for PeServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeServer")
            .field("pe_id", &self.pe_id())
            .field("addrs", &self.addrs)
            .finish()
    }
}

impl PeServer {
    /// The PE identifier it is registered under.
    pub fn pe_id(&self) -> u32 {
        self.shared.pe_id.load(Ordering::Relaxed)
    }

    /// The bound addresses (the kernel's port if the URL said 0).
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The user transport registered (Transport Use DATA_PLUS_CONTROL).
    pub fn transport(&self) -> &Transport {
        &self.transport
    }

    /// The next pool user session, waiting at most `timeout` (`None`: no
    /// bound). [`Error::Timeout`], [`Error::SessionClosed`] once closed,
    /// [`Error::WouldDeadlock`] from a callback.
    pub fn accept(&self, timeout: Option<Duration>) -> Result<PeSessionHandle, Error> {
        let s = &self.shared;
        if timeout != Some(Duration::ZERO) && s.lp.on_loop() {
            return Err(Error::WouldDeadlock);
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut st = s.accept.lock();
        loop {
            if st.closed {
                return Err(Error::SessionClosed);
            }
            if let Some(h) = st.queue.pop_front() {
                let empty = st.queue.is_empty();
                st.signal.set(!empty);
                return Ok(h);
            }
            match deadline {
                None => s.cv.wait(&mut st),
                Some(d) => {
                    if s.cv.wait_until(&mut st, d).timed_out() && st.queue.is_empty() {
                        return Err(Error::Timeout);
                    }
                }
            }
        }
    }

    /// The next session if one is waiting.
    pub fn try_accept(&self) -> Result<Option<PeSessionHandle>, Error> {
        let mut st = self.shared.accept.lock();
        if st.closed {
            return Err(Error::SessionClosed);
        }
        let h = st.queue.pop_front();
        let empty = st.queue.is_empty();
        st.signal.set(!empty);
        Ok(h)
    }

    /// A descriptor readable exactly while a session waits to be accepted
    /// (level-triggered). Owned by the server.
    pub fn fd(&self) -> RawFd {
        self.shared.accept.lock().signal.raw_fd()
    }

    /// Install (or remove) the callback given to every session accepted from
    /// now on, before anything of it can arrive.
    pub fn set_callback(&self, cb: Option<PeCallback>) {
        *self.shared.callback.lock() = cb.map(|f| Arc::new(Mutex::new(f)));
    }

    fn close_queue(&self) -> VecDeque<PeSessionHandle> {
        let mut st = self.shared.accept.lock();
        st.closed = true;
        st.signal.set(false);
        let q = std::mem::take(&mut st.queue);
        drop(st);
        self.shared.cv.notify_all();
        q
    }

    /// Deregister the PE (waiting for the registrar's answer, bounded) and
    /// stop listening. Sessions not yet accepted are closed.
    pub fn close(mut self) -> Result<(), Error> {
        self.finish(false)
    }

    /// Stop as if the process had crashed: close the listener and every
    /// session of this PE at once (nothing they received is acknowledged),
    /// and forget the registration without deregistering it (the registrar
    /// keeps it until its life runs out or pool users report the PE
    /// unreachable). For tests and demonstrations of fail-over.
    pub fn abort(mut self) {
        let _ = self.finish(true);
    }

    fn finish(&mut self, abort: bool) -> Result<(), Error> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let pending = self.close_queue();
        let lp = self.shared.lp.clone();
        let listener = self.shared.listener;
        let pe_id = self.pe_id();
        if abort {
            // Like a crash: what was not handed to the loop yet (ACKs above
            // all) never goes out, whatever the handles do from now on.
            let all = std::mem::take(&mut *self.shared.sessions.lock());
            for s in all.iter().filter_map(std::sync::Weak::upgrade) {
                let mut st = s.state.lock();
                st.aborted = true;
                st.closed = true;
                while st.core.poll_output().is_some() {}
                st.sync();
                drop(st);
                s.cv.notify_all();
            }
            lp.submit(Work::AbortServer { listener, pe_id });
            drop(pending);
            return Ok(());
        }
        drop(pending);
        lp.submit(Work::Unlisten(listener));
        if lp.on_loop() {
            // Dropped in a callback: deregister without waiting.
            lp.submit(Work::Deregister(pe_id));
            return Ok(());
        }
        super::deregister_on(&lp, pe_id)
    }
}

impl Drop for PeServer {
    fn drop(&mut self) {
        let _ = self.finish(false);
    }
}
