//! The context's loop-thread side: one [`Driver`] ([`ContextDriver`]) for
//! the ASAP client, the pool user sessions and the pool element servers, so
//! that sessions pick PEs from the client's cache and report failures to it
//! without leaving the thread.
//!
//! Connection ids: the ASAP client's outbound connections are
//! `ConnId::driver(n)` of its own small counter; the sessions' outbound ones
//! are `ConnId::driver(SESSION_BIT | n)` of the hub's counter (bit 62, never
//! reached by the client's); connections accepted by a dynamic listener (PE
//! servers) carry runtime-assigned ids and `ConnMeta::dynamic_listener`. The
//! hub keeps a route for each id it owns; everything else is the client's.
//!
//! Threads: the session cores live behind mutexes shared with the
//! application's handles. The loop thread locks a core only to feed it and to
//! drain its outputs and events, never while calling a callback or the ASAP
//! client; an application thread locks it for a command and then asks for a
//! pump ([`Work`]), posted to the loop (or, on the loop thread itself, run
//! right after the current callback).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::thread::ThreadId;
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use parking_lot::Mutex;

use super::pe::{PeServerShared, PeSessionHandle, PeSessionInner, PeShared, PeState};
use super::session::{
    FailoverInfo, Message, Notification, PuShared, Session, SessionInner, RECV_QUEUE_BOUND,
};
use super::{map_err, Error, Waiters};
use crate::asap::{Client, RequestId, ResolvedPool, Selection};
use crate::runtime::client::ClientDriver;
use crate::runtime::idmap::IdMap;
use crate::runtime::{
    Action, ConnId, ConnMeta, DataInfo, Driver, ListenResult, ListenerId, LoopHandle,
};
use crate::session::{self as core, Event, Output, PeOutput, State};
use crate::time::Time;
use crate::timers::Timers;
use crate::wire::{PoolElement, PoolHandle, Transport};

/// Bit 62 of a driver-chosen id: a session's connection.
const SESSION_BIT: u64 = 1 << 62;

/// Bytes of application messages per [`Action::SendBatch`].
const BATCH_BYTES: usize = 64 << 10;

/// Something to do on the loop thread for the application.
pub(crate) enum Work {
    /// Drive a pool user session.
    PumpPu(u64),
    /// Take a new pool user session in.
    AdoptPu(Arc<PuShared>, Weak<SessionInner>),
    /// Drive a pool element session.
    PumpPe(ConnId),
    /// Open a PE server's listener and answer with its addresses.
    Listen {
        server: Arc<PeServerShared>,
        url: crate::runtime::EndpointUrl,
        reply: Sender<Result<Vec<SocketAddr>, Error>>,
    },
    /// Close a PE server's listener.
    Unlisten(ListenerId),
    /// Deregister a PE without waiting for the answer.
    Deregister(u32),
    /// Crash a PE server: listener and sessions closed, registration
    /// forgotten.
    AbortServer { listener: ListenerId, pe_id: u32 },
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::PumpPu(id) => write!(f, "PumpPu({id})"),
            Work::AdoptPu(s, _) => write!(f, "AdoptPu({})", s.id),
            Work::PumpPe(c) => write!(f, "PumpPe({})", c.0),
            Work::Listen { url, .. } => write!(f, "Listen({url})"),
            Work::Unlisten(id) => write!(f, "Unlisten({})", id.0),
            Work::Deregister(id) => write!(f, "Deregister({id})"),
            Work::AbortServer { pe_id, .. } => write!(f, "AbortServer({pe_id})"),
        }
    }
}

/// How the application's threads reach the loop.
pub(crate) struct LoopRef {
    pub(crate) handle: LoopHandle<ContextDriver>,
    pub(crate) thread: ThreadId,
    /// Work submitted on the loop thread itself (from callbacks), run when
    /// the current driver call returns.
    pub(crate) inline: Arc<Mutex<Vec<Work>>>,
    pub(crate) origin: Instant,
    pub(crate) next_listener: AtomicU64,
    /// Bounds of waiting calls.
    pub(crate) bounds: Bounds,
}

/// How long a waiting call waits at most.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bounds {
    pub(crate) registration: Duration,
    pub(crate) deregistration: Duration,
    pub(crate) resolution: Duration,
    pub(crate) margin: Duration,
}

impl LoopRef {
    /// True on the loop thread (in a callback).
    pub(crate) fn on_loop(&self) -> bool {
        std::thread::current().id() == self.thread
    }

    /// Now, on the loop's clock.
    pub(crate) fn now(&self) -> Time {
        Time(u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    /// Have `w` done on the loop thread; false if the loop is gone.
    pub(crate) fn submit(&self, w: Work) -> bool {
        if self.on_loop() {
            self.inline.lock().push(w);
            true
        } else {
            self.handle.call(move |d, now| d.work(w, now))
        }
    }

    /// Post `f` to the loop thread and wait at most `bound` for its answer.
    /// [`Error::WouldDeadlock`] on the loop thread itself.
    pub(crate) fn ask<T: Send + 'static>(
        &self,
        bound: Duration,
        f: impl FnOnce(&mut ContextDriver, Time, Sender<Result<T, Error>>) + Send + 'static,
    ) -> Result<T, Error> {
        if self.on_loop() {
            return Err(Error::WouldDeadlock);
        }
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.handle.call(move |d, now| f(d, now, tx)) {
            return Err(Error::Closed);
        }
        match rx.recv_timeout(bound) {
            Ok(r) => r,
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => Err(Error::Timeout),
            Err(crossbeam_channel::RecvTimeoutError::Disconnected) => Err(Error::Closed),
        }
    }
}

/// The ASAP client driver with the sessions and PE servers of a context.
#[derive(Debug)]
pub(crate) struct ContextDriver {
    inner: ClientDriver<Waiters>,
    inline: Arc<Mutex<Vec<Work>>>,
    now: Time,
}

impl ContextDriver {
    pub(crate) fn new(inner: ClientDriver<Waiters>, inline: Arc<Mutex<Vec<Work>>>) -> Self {
        ContextDriver {
            inner,
            inline,
            now: Time::ZERO,
        }
    }

    /// Run a command on the ASAP client and the waiters (and the hub).
    pub(crate) fn command<R>(
        &mut self,
        now: Time,
        f: impl FnOnce(&mut Client, &mut Waiters) -> R,
    ) -> R {
        self.now = self.now.max(now);
        self.inner.command(now, f)
    }

    pub(crate) fn handler(&self) -> &Waiters {
        self.inner.handler()
    }

    pub(crate) fn client(&self) -> &Client {
        self.inner.client()
    }

    pub(crate) fn announce(&mut self, src: SocketAddr, bytes: &[u8], now: Time) {
        self.inner.announce(src, bytes, now);
    }

    fn hub<R>(&mut self, now: Time, f: impl FnOnce(&mut Hub, &mut Client, Time) -> R) -> R {
        self.now = self.now.max(now);
        self.inner.command(now, |c, w| f(&mut w.hub, c, now))
    }

    fn owns(&self, conn: ConnId) -> bool {
        self.inner.handler().hub.routes.contains_key(&conn)
    }

    /// Application work, on the loop thread.
    pub(crate) fn work(&mut self, w: Work, now: Time) {
        match w {
            Work::Deregister(pe_id) => self.command(now, |client, w| {
                if let Some(h) = w.by_id(pe_id) {
                    if client.deregister(h, now).is_err() {
                        w.forget(h);
                    }
                }
            }),
            Work::AbortServer { listener, pe_id } => self.command(now, |client, w| {
                if let Some(h) = w.by_id(pe_id) {
                    if let Some(r) = w.registering.remove(&h) {
                        let _ = r.send(Err(Error::Closed));
                    }
                    client.abandon(h);
                    w.forget(h);
                }
                w.hub.abort_server(listener);
            }),
            w => self.hub(now, |h, c, now| h.work(c, w, now)),
        }
    }

    /// Stop every session and server (the context is going away).
    pub(crate) fn close_all(&mut self, now: Time) {
        self.hub(now, |h, c, now| h.close_all(c, now));
    }
}

impl Driver for ContextDriver {
    fn on_connected(&mut self, conn: ConnId, meta: &ConnMeta, now: Time) {
        if meta.dynamic_listener.is_some() || self.owns(conn) {
            self.hub(now, |h, c, now| h.on_connected(c, conn, meta, now));
        } else {
            self.inner.on_connected(conn, meta, now);
        }
    }

    fn on_message(&mut self, conn: ConnId, ppid: u32, msg: &[u8], now: Time) {
        let info = DataInfo {
            ppid,
            stream: 0,
            unordered: false,
        };
        self.on_data(conn, info, msg, now);
    }

    fn on_data(&mut self, conn: ConnId, info: DataInfo, msg: &[u8], now: Time) {
        if self.owns(conn) {
            // Per message: straight to the hub (it needs no ASAP client
            // here; the sessions it touched are pumped after the burst).
            self.now = self.now.max(now);
            self.inner.handler_mut().hub.on_data(conn, info, msg, now);
        } else {
            self.inner.on_message(conn, info.ppid, msg, now);
        }
    }

    fn on_ack(&mut self, conn: ConnId, cum_tsn: Option<u32>, now: Time) {
        if self.owns(conn) {
            self.now = self.now.max(now);
            self.inner.handler_mut().hub.on_ack(conn, cum_tsn, now);
        }
    }

    fn on_closed(&mut self, conn: ConnId, now: Time) {
        if self.owns(conn) {
            self.hub(now, |h, c, now| h.on_closed(c, conn, now));
        } else {
            self.inner.on_closed(conn, now);
        }
    }

    fn on_connect_failed(&mut self, conn: ConnId, now: Time) {
        if self.owns(conn) {
            self.hub(now, |h, c, now| h.on_closed(c, conn, now));
        } else {
            self.inner.on_connect_failed(conn, now);
        }
    }

    fn on_listen(&mut self, id: ListenerId, result: ListenResult, now: Time) {
        self.hub(now, |h, _, _| h.on_listen(id, result));
    }

    fn on_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        if self.inner.poll_timeout().is_some_and(|t| t <= now) {
            self.inner.on_timeout(now);
        }
        self.hub(now, |h, c, now| h.on_timeout(c, now));
    }

    fn poll_timeout(&self) -> Option<Time> {
        let a = self.inner.poll_timeout();
        let b = self.inner.handler().hub.timers.next();
        match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn poll_action(&mut self) -> Option<Action> {
        loop {
            if let Some(a) = self.inner.poll_action() {
                return Some(a);
            }
            if let Some(a) = self.inner.handler_mut().hub.actions.pop_front() {
                return Some(a);
            }
            // The batch of input is in: drive the sessions it touched.
            if self.inner.handler().hub.is_dirty() {
                let now = self.now;
                self.hub(now, |h, c, now| h.pump_dirty(c, now));
                continue;
            }
            // Work the callbacks submitted: run it now, then look again.
            let work = std::mem::take(&mut *self.inline.lock());
            if work.is_empty() {
                return None;
            }
            let now = self.now;
            for w in work {
                self.work(w, now);
            }
        }
    }
}

enum Route {
    /// A pool user session's connection: the session and the core's name.
    Pu(u64, core::ConnId),
    /// A pool element session.
    Pe,
}

struct PuEntry {
    shared: Arc<PuShared>,
    handle: Weak<SessionInner>,
    /// The core's connection names to the loop's.
    conns: IdMap<core::ConnId, ConnId>,
    /// Connections of `conns` the loop was told to stop reading
    /// ([`RECV_QUEUE_BOUND`]).
    paused: Vec<ConnId>,
    /// In `Hub::dirty_pu`: to be pumped once the loop's current batch of
    /// input is in.
    dirty: bool,
}

struct PeEntry {
    shared: Arc<PeShared>,
    handle: Weak<PeSessionInner>,
    listener: ListenerId,
    /// In `Hub::dirty_pe`.
    dirty: bool,
}

struct Listening {
    server: Arc<PeServerShared>,
    reply: Option<Sender<Result<Vec<SocketAddr>, Error>>>,
}

/// Sessions waiting for a resolution: the session, its pool, the PEs to skip.
type Waiting = Vec<(u64, PoolHandle, Vec<u32>)>;

/// The sessions and servers of a context, on its loop thread.
#[derive(Default)]
pub(crate) struct Hub {
    actions: VecDeque<Action>,
    next_conn: u64,
    routes: IdMap<ConnId, Route>,
    pus: IdMap<u64, PuEntry>,
    timers: Timers<u64>,
    resolving: HashMap<RequestId, Waiting>,
    listeners: HashMap<ListenerId, Listening>,
    pes: IdMap<ConnId, PeEntry>,
    /// Sessions fed data or ACKs since their last pump: pumped once per
    /// batch of input ([`Hub::pump_dirty`]), not once per message.
    dirty_pu: Vec<u64>,
    dirty_pe: Vec<ConnId>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("sessions", &self.pus.len())
            .field("listeners", &self.listeners.len())
            .field("pe_sessions", &self.pes.len())
            .finish_non_exhaustive()
    }
}

/// Run an application callback; a panic in it is reported, not spread to
/// the loop thread.
fn guarded(what: &str, f: impl FnOnce()) {
    if std::panic::catch_unwind(AssertUnwindSafe(f)).is_err() {
        eprintln!("rserpool: the application's {what} callback panicked");
    }
}

fn pe_map(pool: &ResolvedPool) -> HashMap<u32, PoolElement> {
    pool.elements.iter().map(|p| (p.id, p.clone())).collect()
}

impl Hub {
    fn is_dirty(&self) -> bool {
        !self.dirty_pu.is_empty() || !self.dirty_pe.is_empty()
    }

    /// Pump every session fed since its last pump.
    fn pump_dirty(&mut self, client: &mut Client, now: Time) {
        for sid in std::mem::take(&mut self.dirty_pu) {
            if let Some(e) = self.pus.get_mut(&sid) {
                e.dirty = false;
                self.pump_pu(client, sid, now);
            }
        }
        for conn in std::mem::take(&mut self.dirty_pe) {
            if let Some(e) = self.pes.get_mut(&conn) {
                e.dirty = false;
                self.pump_pe(conn);
            }
        }
    }

    fn work(&mut self, client: &mut Client, w: Work, now: Time) {
        match w {
            Work::PumpPu(sid) => self.pump_pu(client, sid, now),
            Work::AdoptPu(shared, handle) => {
                let sid = shared.id;
                self.pus.insert(
                    sid,
                    PuEntry {
                        shared,
                        handle,
                        conns: IdMap::default(),
                        paused: Vec::new(),
                        dirty: false,
                    },
                );
                self.pump_pu(client, sid, now);
            }
            Work::PumpPe(conn) => self.pump_pe(conn),
            Work::Listen { server, url, reply } => {
                let id = server.listener;
                self.listeners.insert(
                    id,
                    Listening {
                        server,
                        reply: Some(reply),
                    },
                );
                self.actions.push_back(Action::Listen {
                    id,
                    url,
                    manual_ack: true,
                });
            }
            Work::Unlisten(id) => {
                if self.listeners.remove(&id).is_some() {
                    self.actions.push_back(Action::Unlisten { id });
                }
            }
            // Handled by the ContextDriver (they need the waiters).
            Work::Deregister(_) | Work::AbortServer { .. } => {}
        }
    }

    // ------------------------------------------------------------ pool users

    /// Drive a session: its outputs to the client and the loop, its events
    /// to the application, until it has nothing more to say; then its timer,
    /// a graceful close, or its end.
    /// Receive flow control of a pool user session: stop reading its
    /// connections while the application holds more than
    /// [`RECV_QUEUE_BOUND`] bytes of messages, read again once it took it
    /// below half (its receive then asks for a pump).
    fn flow_pu(&mut self, sid: u64) {
        let Some(e) = self.pus.get_mut(&sid) else {
            return;
        };
        let pause = {
            let mut st = e.shared.state.lock();
            let limit = if st.read_paused {
                RECV_QUEUE_BOUND / 2
            } else {
                RECV_QUEUE_BOUND
            };
            st.read_paused = st.queued_bytes > limit;
            st.read_paused
        };
        let PuEntry { conns, paused, .. } = e;
        if !pause && paused.is_empty() {
            return; // the common case: nothing held back
        }
        paused.retain(|id| conns.values().any(|c| c == id));
        for &id in conns.values() {
            let was = paused.contains(&id);
            if pause && !was {
                paused.push(id);
                self.actions.push_back(Action::PauseRead { conn: id });
            } else if !pause && was {
                paused.retain(|p| *p != id);
                self.actions.push_back(Action::ResumeRead { conn: id });
            }
        }
    }

    fn pump_pu(&mut self, client: &mut Client, sid: u64, now: Time) {
        let Some(e) = self.pus.get(&sid) else {
            return;
        };
        let shared = e.shared.clone();
        let handle = e.handle.clone();
        shared.needs_pump.store(false, Ordering::Release);
        loop {
            // The application's messages are copied once, into one packed
            // batch per round (not one buffer each), in slices of 64 KiB.
            let mut batch: Option<core::ConnId> = None;
            let mut msgs: Vec<(DataInfo, usize)> = Vec::new();
            let mut bytes: Vec<u8> = Vec::new();
            let outs: Vec<Output> = {
                let mut c = shared.core.lock();
                let mut sink = |m: core::SendRef<'_>| {
                    if batch.is_none() {
                        // At most BATCH_BYTES, or one larger message: no
                        // regrowing (and copying) while packing.
                        bytes.reserve_exact(BATCH_BYTES.max(m.bytes.len()));
                    }
                    batch = Some(m.conn);
                    msgs.push((
                        DataInfo {
                            ppid: m.ppid,
                            stream: m.stream,
                            unordered: m.unordered,
                        },
                        m.bytes.len(),
                    ));
                    bytes.extend_from_slice(m.bytes);
                };
                std::iter::from_fn(|| c.poll_output_with(BATCH_BYTES, &mut sink))
                    .take(64)
                    .collect()
            };
            let progress = !outs.is_empty() || batch.is_some();
            for o in outs {
                self.pu_output(client, sid, &shared, o, now);
            }
            if let Some(conn) = batch {
                if let Some(&id) = self.pus.get(&sid).and_then(|e| e.conns.get(&conn)) {
                    self.actions.push_back(Action::SendBatch {
                        conn: id,
                        msgs,
                        bytes,
                    });
                }
            }
            if progress {
                continue;
            }
            // Outputs drained: the events, then back to the outputs (a
            // fail-over callback's messages go out first).
            let events: Vec<Event> = {
                let mut c = shared.core.lock();
                std::iter::from_fn(|| c.poll_event()).collect()
            };
            if !events.is_empty() {
                let mut batch = Vec::new();
                for ev in events {
                    dispatch_pu(&shared, &handle, ev, &mut batch);
                }
                deliver(&shared, &mut batch);
                continue;
            }
            if shared.closing.load(Ordering::Acquire) {
                let mut c = shared.core.lock();
                let done = match c.state() {
                    State::Closed => false,
                    State::PeerFailed => true,
                    _ => c.buffered() == 0,
                };
                if done {
                    c.close();
                    continue;
                }
            }
            break;
        }
        self.flow_pu(sid);
        let (state, deadline) = {
            let c = shared.core.lock();
            (c.state(), c.poll_timeout())
        };
        if state == State::Closed {
            self.end_pu(sid);
            return;
        }
        match deadline {
            Some(t) => self.timers.set(sid, t),
            None => self.timers.cancel(&sid),
        }
    }

    /// A closed session: Closed to the application, forgotten here.
    fn end_pu(&mut self, sid: u64) {
        self.timers.cancel(&sid);
        let Some(e) = self.pus.remove(&sid) else {
            return;
        };
        for id in e.conns.values() {
            self.routes.remove(id);
            self.actions.push_back(Action::Close {
                conn: *id,
                reason: "session closed".into(),
            });
        }
        let mut st = e.shared.state.lock();
        if !st.ended {
            st.ended = true;
            st.push(Notification::Closed);
        }
        drop(st);
        e.shared.cv.notify_all();
    }

    fn pu_output(
        &mut self,
        client: &mut Client,
        sid: u64,
        shared: &Arc<PuShared>,
        o: Output,
        now: Time,
    ) {
        match o {
            Output::NeedServer { pool, exclude } => {
                let sel = client.get_primary_server(&pool, now);
                self.answer(client, sid, shared, pool, exclude, sel, now);
            }
            Output::ReportUnreachable { pool, pe_id } => {
                client.report_unreachable(&pool, pe_id, now);
            }
            Output::Connect { conn, addr, pe } => {
                let id = ConnId::driver(SESSION_BIT | self.next_conn);
                self.next_conn = (self.next_conn + 1) & (SESSION_BIT - 1);
                self.routes.insert(id, Route::Pu(sid, conn));
                if let Some(e) = self.pus.get_mut(&sid) {
                    e.conns.insert(conn, id);
                }
                let action = match &pe.user_transport {
                    Transport::Sctp { port, addrs, .. } => Action::ConnectSctp {
                        conn: id,
                        addrs: addrs.iter().map(|a| SocketAddr::new(*a, *port)).collect(),
                        local: Vec::new(),
                    },
                    _ => Action::Connect { conn: id, addr },
                };
                self.actions.push_back(action);
            }
            Output::Send {
                conn,
                stream,
                unordered,
                ppid,
                bytes,
                ..
            } => {
                if let Some(&id) = self.pus.get(&sid).and_then(|e| e.conns.get(&conn)) {
                    self.actions.push_back(Action::SendData {
                        conn: id,
                        ppid,
                        stream,
                        unordered,
                        msg: bytes,
                    });
                }
            }
            Output::Close { conn } => {
                if let Some(id) = self.pus.get_mut(&sid).and_then(|e| e.conns.remove(&conn)) {
                    self.routes.remove(&id);
                    self.actions.push_back(Action::Close {
                        conn: id,
                        reason: "closed by the session".into(),
                    });
                }
            }
        }
    }

    /// Answer a session's NeedServer with the client's selection.
    #[allow(clippy::too_many_arguments)]
    fn answer(
        &mut self,
        client: &mut Client,
        sid: u64,
        shared: &Arc<PuShared>,
        pool: PoolHandle,
        exclude: Vec<u32>,
        mut sel: Selection,
        now: Time,
    ) {
        // The client skips PEs in an unreachability incident; one the session
        // already failed with in this episode may come back if its incident
        // expired: ask again a few times before trying it anyway.
        for _ in 0..4 {
            match &sel {
                Selection::Ready(pe) if exclude.contains(&pe.id) => {
                    sel = client.get_primary_server(&pool, now);
                }
                _ => break,
            }
        }
        if let Some(p) = client.cached(&pool) {
            *shared.known.lock() = pe_map(p);
        }
        match sel {
            Selection::Ready(pe) => shared.core.lock().handle_server(pe, now),
            Selection::Pending(req) => {
                self.resolving
                    .entry(req)
                    .or_default()
                    .push((sid, pool, exclude));
            }
            Selection::Failed(e) => {
                shared.state.lock().last_error = Some(map_err(e, client));
                shared.core.lock().handle_no_server(now);
            }
        }
    }

    /// A resolution arrived: answer the sessions waiting for it, refresh the
    /// known PEs of the sessions of that pool.
    pub(crate) fn on_resolved(
        &mut self,
        client: &mut Client,
        request: RequestId,
        pool: &PoolHandle,
        result: &Result<ResolvedPool, crate::asap::AsapError>,
        now: Time,
    ) {
        if let Ok(p) = result {
            self.refresh_known(pool, p);
        }
        let Some(waiting) = self.resolving.remove(&request) else {
            return;
        };
        for (sid, pool, exclude) in waiting {
            let Some(shared) = self.pus.get(&sid).map(|e| e.shared.clone()) else {
                continue;
            };
            let sel = match result {
                Err(e) => Selection::Failed(e.clone()),
                Ok(_) => match client.get_primary_server(&pool, now) {
                    // A fresh answer and still nothing to offer: every PE is
                    // in an unreachability incident.
                    Selection::Pending(_) => {
                        Selection::Failed(crate::asap::AsapError::NoUsableElement)
                    }
                    s => s,
                },
            };
            self.answer(client, sid, &shared, pool, exclude, sel, now);
            self.pump_pu(client, sid, now);
        }
    }

    /// A pool's contents changed: the sessions of that pool know its PEs.
    pub(crate) fn refresh_known(&mut self, pool: &PoolHandle, p: &ResolvedPool) {
        let map = pe_map(p);
        for e in self.pus.values() {
            if e.shared.core.lock().pool() == Some(pool) {
                *e.shared.known.lock() = map.clone();
            }
        }
    }

    fn on_timeout(&mut self, client: &mut Client, now: Time) {
        while let Some(sid) = self.timers.pop_due(now) {
            if let Some(e) = self.pus.get(&sid) {
                e.shared.core.lock().handle_timeout(now);
                self.pump_pu(client, sid, now);
            }
        }
    }

    // ------------------------------------------------------------ connections

    fn on_connected(&mut self, client: &mut Client, conn: ConnId, meta: &ConnMeta, now: Time) {
        if let Some(lid) = meta.dynamic_listener {
            self.accept(conn, lid, meta);
            return;
        }
        if let Some(Route::Pu(sid, c)) = self.routes.get(&conn) {
            let (sid, c) = (*sid, *c);
            if let Some(e) = self.pus.get(&sid) {
                e.shared.core.lock().handle_connected(c, now);
                self.pump_pu(client, sid, now);
            }
        }
    }

    fn on_data(&mut self, conn: ConnId, info: DataInfo, msg: &[u8], now: Time) {
        match self.routes.get(&conn) {
            Some(Route::Pu(sid, c)) => {
                let (sid, c) = (*sid, *c);
                if let Some(e) = self.pus.get_mut(&sid) {
                    e.shared
                        .core
                        .lock()
                        .handle_data(c, info.stream, info.ppid, msg, now);
                    if !std::mem::replace(&mut e.dirty, true) {
                        self.dirty_pu.push(sid);
                    }
                }
            }
            Some(Route::Pe) => {
                if let Some(e) = self.pes.get_mut(&conn) {
                    let mut st = e.shared.state.lock();
                    st.core.handle_data(info.stream, info.ppid, msg);
                    st.sync();
                    drop(st);
                    e.shared.cv.notify_all();
                    if !std::mem::replace(&mut e.dirty, true) {
                        self.dirty_pe.push(conn);
                    }
                }
            }
            None => {}
        }
    }

    fn on_ack(&mut self, conn: ConnId, cum_tsn: Option<u32>, now: Time) {
        match self.routes.get(&conn) {
            Some(Route::Pu(sid, c)) => {
                let (sid, c) = (*sid, *c);
                if let Some(e) = self.pus.get_mut(&sid) {
                    e.shared.core.lock().handle_ack(c, cum_tsn, now);
                    if !std::mem::replace(&mut e.dirty, true) {
                        self.dirty_pu.push(sid);
                    }
                }
            }
            Some(Route::Pe) => {
                // The pool user took a message in: wake writers waiting for
                // room (PeSessionHandle::wait_in_flight).
                if let Some(e) = self.pes.get(&conn) {
                    e.shared.state.lock().core.handle_ack(cum_tsn);
                    e.shared.cv.notify_all();
                }
            }
            None => {}
        }
    }

    /// Closed, or failed to connect (the core tells them apart by its state).
    fn on_closed(&mut self, client: &mut Client, conn: ConnId, now: Time) {
        match self.routes.remove(&conn) {
            Some(Route::Pu(sid, c)) => {
                if let Some(e) = self.pus.get_mut(&sid) {
                    e.conns.remove(&c);
                    // A connect that failed or a connection that ended: the
                    // core tells them apart by its state.
                    e.shared.core.lock().handle_closed(c, now);
                    self.pump_pu(client, sid, now);
                }
            }
            Some(Route::Pe) => {
                if let Some(e) = self.pes.get(&conn) {
                    let mut st = e.shared.state.lock();
                    st.closed = true;
                    st.sync();
                    drop(st);
                    e.shared.cv.notify_all();
                    // A callback hears the rest, then Closed.
                    self.pump_pe(conn);
                }
                self.pes.remove(&conn);
            }
            None => {}
        }
    }

    // ------------------------------------------------------------ pool elements

    fn on_listen(&mut self, id: ListenerId, result: ListenResult) {
        let Some(l) = self.listeners.get_mut(&id) else {
            // Closed meanwhile.
            if result.is_ok() {
                self.actions.push_back(Action::Unlisten { id });
            }
            return;
        };
        let reply = l.reply.take();
        let r = match result {
            Ok(addrs) => Ok(addrs.into_iter().map(|(_, a)| a).collect()),
            Err(e) => {
                self.listeners.remove(&id);
                Err(Error::Os(e))
            }
        };
        if let Some(tx) = reply {
            if tx.send(r).is_err() && self.listeners.remove(&id).is_some() {
                // pe_listen gave up waiting: nobody will use it.
                self.actions.push_back(Action::Unlisten { id });
            }
        }
    }

    /// A pool user connected to a PE server.
    fn accept(&mut self, conn: ConnId, lid: ListenerId, meta: &ConnMeta) {
        let Some(l) = self.listeners.get(&lid) else {
            self.actions.push_back(Action::Close {
                conn,
                reason: "listener closed".into(),
            });
            return;
        };
        let server = l.server.clone();
        let signal = match super::notify::Signal::new() {
            Ok(s) => s,
            Err(e) => {
                self.actions.push_back(Action::Close {
                    conn,
                    reason: format!("no eventfd: {e}"),
                });
                return;
            }
        };
        let shared = Arc::new(PeShared {
            conn,
            remote: meta.remote.clone(),
            state: Mutex::new(PeState {
                core: core::PeSession::new(core::ConnId(conn.0)),
                signal,
                closed: false,
                closed_told: false,
                closing: false,
                aborted: false,
            }),
            cv: parking_lot::Condvar::new(),
            needs_pump: Default::default(),
            callback: Mutex::new(server.callback.lock().clone()),
            lp: server.lp.clone(),
        });
        let inner = Arc::new(PeSessionInner {
            shared: shared.clone(),
        });
        self.routes.insert(conn, Route::Pe);
        self.pes.insert(
            conn,
            PeEntry {
                shared,
                handle: Arc::downgrade(&inner),
                listener: lid,
                dirty: false,
            },
        );
        server.push(PeSessionHandle { inner });
    }

    /// Drive a PE session: with a callback, every waiting notification to
    /// it (each message acknowledged when it returns); then its outputs to
    /// the loop, the replies of a whole read burst at once; its close.
    fn pump_pe(&mut self, conn: ConnId) {
        let Some(e) = self.pes.get(&conn) else {
            return;
        };
        let shared = e.shared.clone();
        let handle = e.handle.clone();
        shared.needs_pump.store(false, Ordering::Release);
        loop {
            let mut h: Option<Option<PeSessionHandle>> = None;
            while let Some(cb) = shared.callback.lock().clone() {
                let n = {
                    let mut st = shared.state.lock();
                    if st.aborted {
                        return;
                    }
                    st.next()
                };
                let Some(n) = n else {
                    break;
                };
                let h = h
                    .get_or_insert_with(|| handle.upgrade().map(|inner| PeSessionHandle { inner }));
                if let Some(h) = h {
                    guarded("pool element session", || (cb.lock())(h, n));
                }
                // Back from the callback: done with that message.
                shared.state.lock().core.ack();
            }
            // The replies packed into one batch (their buffers back to the
            // core for the next replies), then the ACKs (coalesced by the
            // loop into one chunk, written after the replies).
            let mut msgs: Vec<(DataInfo, usize)> = Vec::new();
            let mut bytes: Vec<u8> = Vec::new();
            let mut acks = 0usize;
            let (close, waiting) = {
                let mut st = shared.state.lock();
                if st.aborted {
                    return;
                }
                while bytes.len() < BATCH_BYTES {
                    match st.core.poll_output() {
                        Some(PeOutput::Send {
                            ppid,
                            bytes: b,
                            stream,
                            unordered,
                            ..
                        }) => {
                            if msgs.is_empty() {
                                bytes.reserve_exact(BATCH_BYTES.max(b.len()));
                            }
                            msgs.push((
                                DataInfo {
                                    ppid,
                                    stream,
                                    unordered,
                                },
                                b.len(),
                            ));
                            bytes.extend_from_slice(&b);
                            st.core.recycle(b);
                        }
                        Some(PeOutput::Ack { .. }) => acks += 1,
                        None => break,
                    }
                }
                let idle = msgs.is_empty() && acks == 0;
                // A callback installed meanwhile finds notifications waiting.
                let waiting = shared.callback.lock().is_some()
                    && (st.core.pending_events() > 0 || (st.closed && !st.closed_told));
                st.sync();
                let close = st.closing && !st.closed && idle && !waiting;
                if close {
                    st.closed = true;
                    st.closed_told = true;
                    st.sync();
                }
                (close, waiting)
            };
            let more = !msgs.is_empty() || acks > 0;
            if !msgs.is_empty() {
                self.actions
                    .push_back(Action::SendBatch { conn, msgs, bytes });
            }
            for _ in 0..acks {
                self.actions.push_back(Action::Ack { conn });
            }
            // Dropped with no lock held: the last handle closes the session.
            drop(h);
            if close {
                self.actions.push_back(Action::Close {
                    conn,
                    reason: "closed by the pool element".into(),
                });
                self.routes.remove(&conn);
                self.pes.remove(&conn);
                return;
            }
            if !more && !waiting {
                return;
            }
        }
    }

    fn abort_server(&mut self, listener: ListenerId) {
        if self.listeners.remove(&listener).is_some() {
            self.actions.push_back(Action::Unlisten { id: listener });
        }
        self.abort_pe_sessions(listener);
    }

    fn close_all(&mut self, client: &mut Client, now: Time) {
        let sids: Vec<u64> = self.pus.keys().copied().collect();
        for sid in sids {
            if let Some(e) = self.pus.get(&sid) {
                e.shared.core.lock().close();
                self.pump_pu(client, sid, now);
                self.end_pu(sid);
            }
        }
        let ids: Vec<ListenerId> = self.listeners.keys().copied().collect();
        for id in ids {
            if let Some(l) = self.listeners.remove(&id) {
                let q = {
                    let mut st = l.server.accept.lock();
                    st.closed = true;
                    st.signal.set(false);
                    std::mem::take(&mut st.queue)
                };
                l.server.cv.notify_all();
                drop(q);
                self.abort_pe_sessions(id);
                self.actions.push_back(Action::Unlisten { id });
            }
        }
    }

    fn abort_pe_sessions(&mut self, listener: ListenerId) {
        let conns: Vec<ConnId> = self
            .pes
            .iter()
            .filter(|(_, e)| e.listener == listener)
            .map(|(c, _)| *c)
            .collect();
        for conn in conns {
            if let Some(e) = self.pes.remove(&conn) {
                let mut st = e.shared.state.lock();
                st.closed = true;
                st.sync();
                drop(st);
                e.shared.cv.notify_all();
            }
            self.routes.remove(&conn);
            self.actions.push_back(Action::Close {
                conn,
                reason: "pool element closed abruptly".into(),
            });
        }
    }
}

/// Queue notifications for the application: all under one lock, with one
/// wake-up (not one per message of a read burst).
fn deliver(shared: &PuShared, batch: &mut Vec<Notification>) {
    if batch.is_empty() {
        return;
    }
    {
        let mut st = shared.state.lock();
        for n in batch.drain(..) {
            if matches!(n, Notification::Connected { .. }) {
                st.connected = true;
            }
            st.push(n);
        }
    }
    shared.cv.notify_all();
}

/// One core event to the application: a callback, or the queue (through
/// `batch`, delivered before any callback runs, so that order holds).
fn dispatch_pu(
    shared: &Arc<PuShared>,
    handle: &Weak<SessionInner>,
    ev: Event,
    batch: &mut Vec<Notification>,
) {
    match ev {
        Event::Connected { pe } => batch.push(Notification::Connected { pe }),
        Event::Data {
            ppid,
            bytes,
            stream,
        } => {
            let cb = shared.callbacks.lock().data.clone();
            if let (Some(cb), Some(inner)) = (cb, handle.upgrade()) {
                deliver(shared, batch);
                let s = Session { inner };
                let m = Message {
                    ppid,
                    stream,
                    bytes,
                };
                guarded("data", || (cb.lock())(&s, m));
            } else {
                batch.push(Notification::Data {
                    ppid,
                    bytes,
                    stream,
                });
            }
        }
        Event::Failover { from, to, resent } => {
            let cb = shared.callbacks.lock().failover.clone();
            if let (Some(cb), Some(inner)) = (cb, handle.upgrade()) {
                deliver(shared, batch);
                let s = Session { inner };
                let info = FailoverInfo { from, to, resent };
                guarded("fail-over", || (cb.lock())(&s, &info));
            } else {
                batch.push(Notification::Failover { from, to, resent });
            }
        }
        Event::PeerFailed { pe } => batch.push(Notification::PeerFailed { pe }),
        Event::Failed(e) => batch.push(Notification::Failed(e)),
        Event::Acked { seq } => batch.push(Notification::Acked { seq }),
    }
}
