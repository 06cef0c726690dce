//! The mio event loop that runs a [`Driver`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use std::os::fd::AsRawFd;

use super::conn::{ReadOutcome, SctpConn, TcpMapConn, Transport};
use super::idmap::IdMap;
use super::sctp::SctpSocket;
use super::slab::Slab;
use super::url::{EndpointUrl, Proto};
use super::{
    Action, ConnId, ConnMeta, Driver, ListenResult, ListenerId, RuntimeConfig, StartError,
};
use crate::time::Time;

/// Reserved token of the waker (slab indices never get this high).
const WAKER: Token = Token(usize::MAX);
/// Accepts per listener per wakeup before other sockets get a turn.
const ACCEPT_BUDGET: usize = 256;
/// Output bytes queued on a connection during one batch of actions beyond
/// which the loop writes them at once instead of at the end of the turn.
const EAGER_FLUSH: usize = 64 << 10;

/// A closure run on the driver, on the loop thread.
pub(crate) type DriverCall<D> = Box<dyn FnOnce(&mut D, Time) + Send>;

/// A command from another thread.
pub(crate) enum Command<D> {
    /// Leave the loop: close every connection (drivers get `on_closed`) and return.
    Stop,
    /// Run a closure on the driver, on the loop thread; its actions are carried out.
    Call(DriverCall<D>),
}

/// A way to reach a running loop from any thread: post a command and wake it.
pub struct LoopHandle<D> {
    tx: Sender<Command<D>>,
    waker: Arc<Waker>,
}

impl<D> Clone for LoopHandle<D> {
    fn clone(&self) -> Self {
        LoopHandle {
            tx: self.tx.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<D> std::fmt::Debug for LoopHandle<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoopHandle").finish_non_exhaustive()
    }
}

impl<D: Driver> LoopHandle<D> {
    fn post(&self, c: Command<D>) -> bool {
        self.tx.send(c).is_ok() && self.waker.wake().is_ok()
    }

    /// Ask the loop to stop. Returns false if it is already gone.
    pub fn stop(&self) -> bool {
        self.post(Command::Stop)
    }

    /// Run `f` on the driver on the loop thread, without waiting.
    pub fn call(&self, f: impl FnOnce(&mut D, Time) + Send + 'static) -> bool {
        self.post(Command::Call(Box::new(f)))
    }

    /// Run `f` on the driver on the loop thread and wait for its result; `None`
    /// if the loop is gone or doesn't answer within `timeout`.
    pub fn query<R: Send + 'static>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&mut D, Time) -> R + Send + 'static,
    ) -> Option<R> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        if !self.call(move |d, now| {
            let _ = tx.send(f(d, now));
        }) {
            return None;
        }
        rx.recv_timeout(timeout).ok()
    }
}

/// Counters kept by the loop.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoopStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused for [`RuntimeConfig::max_connections`].
    pub refused: u64,
    /// Connections closed for framing errors.
    pub framing_errors: u64,
    /// Connections closed because the peer didn't read its output.
    pub overflow_closes: u64,
    /// Connections closed for unanswered heartbeats.
    pub heartbeat_closes: u64,
    /// Messages delivered to the driver... counted by the driver; here: bytes read.
    pub bytes_read: u64,
    /// Announce datagrams sent.
    pub announces: u64,
}

/// An entry of the slab: a listener or a connection.
#[derive(Debug)]
enum Entry {
    Listener {
        sock: ListenSock,
        /// Index in `RuntimeConfig::listen` (`usize::MAX` for a dynamic one).
        index: usize,
        local: SocketAddr,
        /// The driver's name of a listener opened with `Action::Listen`.
        dynamic: Option<ListenerId>,
        /// Accepted connections start in manual-ack mode.
        manual_ack: bool,
    },
    Conn(Box<Conn>),
}

/// A listening socket.
#[derive(Debug)]
enum ListenSock {
    Tcp(TcpListener),
    /// One SCTP socket bound to every address of its URL.
    Sctp(SctpSocket),
}

impl ListenSock {
    fn deregister(&mut self, poll: &Poll) {
        let _ = match self {
            ListenSock::Tcp(l) => poll.registry().deregister(l),
            ListenSock::Sctp(s) => poll.registry().deregister(&mut SourceFd(&s.as_raw_fd())),
        };
    }
}

/// Where an outbound connection goes.
#[derive(Debug)]
enum Target {
    Tcp(SocketAddr),
    /// The peer's addresses, and the local ones to bind first (may be empty).
    Sctp(Vec<SocketAddr>, Vec<SocketAddr>),
}

#[derive(Debug)]
struct Conn {
    /// The id the driver knows it by (runtime-assigned, or driver-chosen).
    id: ConnId,
    /// The slab generation of its slot.
    gen: u32,
    transport: Transport,
    /// Set while an outbound connection is being established.
    connecting: Option<Connecting>,
}

#[derive(Debug)]
struct Connecting {
    addr: SocketAddr,
    deadline: Time,
}

/// The event loop. Build it with [`EventLoop::new`] (binds every listener, so
/// errors show up before any thread starts), take a [`LoopHandle`], then call
/// [`EventLoop::run`] on the thread that should own it.
pub struct EventLoop<D: Driver> {
    poll: Poll,
    entries: Slab<Entry>,
    driver: D,
    cfg: RuntimeConfig,
    origin: Instant,
    rx: Receiver<Command<D>>,
    handle: LoopHandle<D>,
    /// Connections with output queued since the last flush.
    dirty: Vec<ConnId>,
    /// Connections and listeners that stopped for a budget, to be resumed
    /// without waiting for a new readiness event (mio is edge-triggered).
    ready: Vec<(usize, u32)>,
    /// Closes requested while draining actions.
    to_close: Vec<(ConnId, String)>,
    /// Connects that failed at once, reported after the current action.
    failed_connects: Vec<ConnId>,
    listeners: Vec<(Proto, SocketAddr)>,
    /// Slots of the connections opened under driver-chosen ids.
    aliases: IdMap<ConnId, (usize, u32)>,
    /// Slots of the dynamic listeners.
    dynamic: IdMap<ListenerId, usize>,
    /// Answers to `Action::Listen`, reported after the current action.
    listen_results: Vec<(ListenerId, ListenResult)>,
    /// SCTP connections whose messages the kernel accepted (each one an
    /// `on_ack`), not yet reported.
    kernel_acks: Vec<(ConnId, u32)>,
    announce: Option<UdpSocket>,
    next_sweep: Time,
    n_conns: usize,
    stats: LoopStats,
    stopping: bool,
}

impl<D: Driver> std::fmt::Debug for EventLoop<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLoop")
            .field("listeners", &self.listeners)
            .field("connections", &self.n_conns)
            .finish_non_exhaustive()
    }
}

impl<D: Driver> EventLoop<D> {
    /// Bind every endpoint of `cfg.listen` and set up the waker. `origin` is the
    /// instant that maps to `Time::ZERO` (the driver must use the same origin).
    pub fn new(cfg: RuntimeConfig, origin: Instant, driver: D) -> Result<Self, StartError> {
        Self::new_with(cfg, origin, |_| driver)
    }

    /// Like [`EventLoop::new`], but the driver is built once the listeners are
    /// bound, from their addresses (e.g. to announce them).
    pub fn new_with(
        cfg: RuntimeConfig,
        origin: Instant,
        make_driver: impl FnOnce(&[(Proto, SocketAddr)]) -> D,
    ) -> Result<Self, StartError> {
        let io_err = |what: String| move |err| StartError::Io { what, err };
        let poll = Poll::new().map_err(io_err("creating the poller".into()))?;
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(io_err("creating the waker".into()))?,
        );
        let (tx, rx) = crossbeam_channel::unbounded();
        let mut entries = Slab::new();
        let mut listeners = Vec::new();
        for (index, url) in cfg.listen.iter().enumerate() {
            let (_, locals) = bind(&poll, &mut entries, index, url, &cfg, None, false)?;
            listeners.extend(locals);
        }
        let announce = match cfg.announce {
            Some(group) => Some(
                announce_socket(group, cfg.announce_ttl)
                    .map_err(io_err(format!("announce socket for {group}")))?,
            ),
            None => None,
        };
        let driver = make_driver(&listeners);
        Ok(EventLoop {
            poll,
            entries,
            driver,
            cfg,
            origin,
            rx,
            handle: LoopHandle { tx, waker },
            dirty: Vec::new(),
            ready: Vec::new(),
            to_close: Vec::new(),
            failed_connects: Vec::new(),
            listeners,
            aliases: IdMap::default(),
            dynamic: IdMap::default(),
            listen_results: Vec::new(),
            kernel_acks: Vec::new(),
            announce,
            next_sweep: Time::ZERO,
            n_conns: 0,
            stats: LoopStats::default(),
            stopping: false,
        })
    }

    /// The bound listening addresses (ephemeral ports resolved), in order.
    pub fn local_addrs(&self) -> &[(Proto, SocketAddr)] {
        &self.listeners
    }

    /// A handle for other threads.
    pub fn handle(&self) -> LoopHandle<D> {
        self.handle.clone()
    }

    /// The driver (e.g. to inspect it after [`EventLoop::run`] returns).
    pub fn driver(&self) -> &D {
        &self.driver
    }

    /// Counters.
    pub fn stats(&self) -> LoopStats {
        self.stats
    }

    /// Now, on the loop's clock.
    pub fn now(&self) -> Time {
        Time(u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX))
    }

    fn sweep_period(&self) -> Duration {
        (self.cfg.heartbeat_interval / 4).clamp(Duration::from_millis(5), Duration::from_secs(1))
    }

    /// Run until [`LoopHandle::stop`]. Returns an error only if polling itself fails.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        let mut tokens: Vec<(Token, bool, bool)> = Vec::with_capacity(1024);
        self.next_sweep = self.now() + self.sweep_period();
        // The INITs of connections accepted before `run` wait in the dirty list.
        self.flush_dirty();
        while !self.stopping {
            let now = self.now();
            let timeout = if !self.ready.is_empty() {
                Some(Duration::ZERO)
            } else {
                let deadline = match self.driver.poll_timeout() {
                    Some(t) => t.min(self.next_sweep),
                    None => self.next_sweep,
                };
                Some(
                    deadline.saturating_since(now)
                        + Duration::from_micros(
                            // Round up so we don't wake a hair early and spin.
                            u64::from(deadline > now),
                        ),
                )
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            tokens.clear();
            tokens.extend(events.iter().map(|e| {
                (
                    e.token(),
                    e.is_readable() || e.is_read_closed() || e.is_error(),
                    e.is_writable() || e.is_write_closed(),
                )
            }));
            let now = self.now();
            for &(token, readable, writable) in &tokens {
                if token == WAKER {
                    self.commands(now);
                } else {
                    self.socket_event(token.0, readable, writable, now);
                }
            }
            // Resume sockets that yielded last time (only those queued before now).
            let n = self.ready.len();
            if n > 0 {
                let again: Vec<(usize, u32)> = self.ready.drain(..n).collect();
                for (idx, gen) in again {
                    self.resume(idx, gen, now);
                }
            }
            if self.driver.poll_timeout().is_some_and(|t| t <= now) {
                self.driver.on_timeout(now);
                self.drain(now);
            }
            if now >= self.next_sweep {
                self.sweep(now);
                self.next_sweep = now + self.sweep_period();
            }
            self.flush_dirty();
        }
        self.shutdown();
        Ok(())
    }

    fn commands(&mut self, now: Time) {
        while let Ok(c) = self.rx.try_recv() {
            match c {
                Command::Stop => self.stopping = true,
                Command::Call(f) => {
                    f(&mut self.driver, now);
                    self.drain(now);
                }
            }
        }
    }

    fn socket_event(&mut self, idx: usize, readable: bool, writable: bool, now: Time) {
        match self.entries.get(idx) {
            Some(Entry::Listener { .. }) => self.accept(idx, now),
            Some(Entry::Conn(c)) => {
                let id = c.id;
                if c.connecting.is_some() {
                    if readable || writable {
                        self.connect_progress(id, now);
                    }
                    return;
                }
                if writable {
                    self.flush_one(id);
                    if !self.kernel_acks.is_empty() {
                        self.drain(now);
                    }
                }
                if readable {
                    self.read(id, now);
                }
            }
            None => {} // spurious: the entry was closed earlier in this batch
        }
    }

    /// The slab slot (index, generation) of a live connection.
    fn slot(&self, id: ConnId) -> Option<(usize, u32)> {
        if id.is_driver_chosen() {
            self.aliases.get(&id).copied()
        } else {
            Some((id.index(), id.gen()))
        }
    }

    fn conn_entry(&mut self, id: ConnId) -> Option<&mut Conn> {
        let (idx, gen) = self.slot(id)?;
        match self.entries.get_gen_mut(idx, gen) {
            Some(Entry::Conn(c)) if c.id == id => Some(c),
            _ => None,
        }
    }

    /// Start an outbound connection (Action::Connect / ConnectSctp).
    fn connect(&mut self, conn: ConnId, target: Target, now: Time) {
        if !conn.is_driver_chosen() || self.aliases.contains_key(&conn) {
            log(&format!(
                "connect: {} is not a free driver-chosen id",
                conn.0
            ));
            self.failed_connects.push(conn);
            return;
        }
        if self.n_conns >= self.cfg.max_connections {
            self.failed_connects.push(conn);
            return;
        }
        let (transport, addr) = match target {
            Target::Tcp(addr) => match TcpStream::connect(addr) {
                Ok(stream) => {
                    let _ = stream.set_nodelay(true);
                    (
                        Transport::Tcp(TcpMapConn::new(stream, &self.cfg, now)),
                        addr,
                    )
                }
                Err(e) => {
                    if verbose() {
                        log(&format!("connect to {addr}: {e}"));
                    }
                    self.failed_connects.push(conn);
                    return;
                }
            },
            Target::Sctp(addrs, local) => {
                let Some(&first) = addrs.first() else {
                    self.failed_connects.push(conn);
                    return;
                };
                match SctpSocket::connect_from(&local, &addrs, &self.cfg.sctp) {
                    Ok(sock) => (Transport::Sctp(SctpConn::new(sock, &self.cfg)), first),
                    Err(e) => {
                        if verbose() {
                            log(&format!("connect to sctp {addrs:?}: {e}"));
                        }
                        self.failed_connects.push(conn);
                        return;
                    }
                }
            }
        };
        let deadline = now + self.cfg.connect_timeout;
        let slot = self.entries.insert_with(|_, g| {
            Entry::Conn(Box::new(Conn {
                id: conn,
                gen: g,
                transport,
                connecting: Some(Connecting { addr, deadline }),
            }))
        });
        let Some(Entry::Conn(c)) = self.entries.get_mut(slot) else {
            return;
        };
        let gen = c.gen;
        if let Err(e) = c.transport.register(
            self.poll.registry(),
            Token(slot),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log(&format!("register connection to {addr}: {e}"));
            self.entries.remove(slot);
            self.failed_connects.push(conn);
            return;
        }
        self.aliases.insert(conn, (slot, gen));
        self.n_conns += 1;
    }

    /// Readiness on a connecting socket: connected, failed, or not yet.
    fn connect_progress(&mut self, id: ConnId, now: Time) {
        let Some(c) = self.conn_entry(id) else {
            return;
        };
        let t = &mut c.transport;
        let addr = match &c.connecting {
            Some(k) => k.addr,
            None => return,
        };
        match t.take_error() {
            Ok(None) => {}
            Ok(Some(e)) | Err(e) => {
                let reason = format!("connect to {addr}: {e}");
                self.fail_connect(id, &reason, now);
                return;
            }
        }
        let remote = match t.peer_addrs() {
            Ok(r) => r,
            Err(e) if e.kind() == io::ErrorKind::NotConnected => return, // not yet
            Err(e) => {
                let reason = format!("connect to {addr}: {e}");
                self.fail_connect(id, &reason, now);
                return;
            }
        };
        let local = t.local_addr().unwrap_or(addr);
        let (proto, remote) = match t {
            // As before SCTP: the address the driver asked for.
            Transport::Tcp(_) => (Proto::Tcp, vec![addr]),
            Transport::Sctp(_) => (Proto::Sctp, remote),
        };
        c.connecting = None;
        // WRITABLE interest stays registered; flush_one drops it when idle.
        t.flags().want_write = true;
        t.flags().dirty = true;
        self.dirty.push(id); // our INIT, and anything the driver queued early
        let meta = ConnMeta {
            proto,
            remote,
            local,
            listener: usize::MAX,
            dynamic_listener: None,
        };
        self.driver.on_connected(id, &meta, now);
        self.drain(now);
        self.read(id, now);
    }

    /// Give up on a connecting socket.
    fn fail_connect(&mut self, id: ConnId, reason: &str, now: Time) {
        let Some((idx, gen)) = self.slot(id) else {
            return;
        };
        let Some(Entry::Conn(_)) = self.entries.get_gen_mut(idx, gen) else {
            return;
        };
        if let Some(Entry::Conn(mut c)) = self.entries.remove(idx) {
            let _ = c.transport.deregister(self.poll.registry());
        }
        self.aliases.remove(&id);
        self.n_conns -= 1;
        if verbose() {
            log(&format!("connection {} failed: {reason}", id.0));
        }
        self.driver.on_connect_failed(id, now);
        self.drain(now);
    }

    fn resume(&mut self, idx: usize, gen: u32, now: Time) {
        match self.entries.get(idx) {
            Some(Entry::Listener { .. }) => self.accept(idx, now),
            Some(Entry::Conn(c)) if c.gen == gen && c.connecting.is_none() => {
                let id = c.id;
                self.read(id, now);
            }
            _ => {}
        }
    }

    fn conn_mut(&mut self, id: ConnId) -> Option<&mut Conn> {
        self.conn_entry(id)
    }

    fn accept(&mut self, idx: usize, now: Time) {
        for _ in 0..ACCEPT_BUDGET {
            let (dynamic, manual_ack) = match self.entries.get(idx) {
                Some(Entry::Listener {
                    dynamic,
                    manual_ack,
                    ..
                }) => (*dynamic, *manual_ack),
                _ => return,
            };
            let (res, index, local) = match self.entries.get(idx) {
                Some(Entry::Listener {
                    sock: ListenSock::Tcp(sock),
                    index,
                    local,
                    ..
                }) => (
                    sock.accept().map(|(stream, peer)| {
                        let _ = stream.set_nodelay(true);
                        let local = stream.local_addr().unwrap_or(*local);
                        let conn = TcpMapConn::new(stream, &self.cfg, now);
                        (Transport::Tcp(conn), Proto::Tcp, vec![peer], local)
                    }),
                    *index,
                    *local,
                ),
                Some(Entry::Listener {
                    sock: ListenSock::Sctp(sock),
                    index,
                    local,
                    ..
                }) => (
                    sock.accept().map(|s| {
                        let local = s.local_addr().unwrap_or(*local);
                        let mut remote = s.peer_addrs().unwrap_or_default();
                        if remote.is_empty() {
                            remote.extend(s.peer_addr());
                        }
                        let conn = SctpConn::new(s, &self.cfg);
                        (Transport::Sctp(conn), Proto::Sctp, remote, local)
                    }),
                    *index,
                    *local,
                ),
                _ => return,
            };
            match res {
                Ok((mut transport, proto, remote, local)) => {
                    self.stats.accepted += 1;
                    transport.set_manual_ack(manual_ack);
                    if self.n_conns >= self.cfg.max_connections {
                        self.stats.refused += 1;
                        drop(transport);
                        continue;
                    }
                    let tcp = proto == Proto::Tcp;
                    let slot = self.entries.insert_with(|i, g| {
                        Entry::Conn(Box::new(Conn {
                            id: ConnId::new(i, g),
                            gen: g,
                            transport,
                            connecting: None,
                        }))
                    });
                    let Some(Entry::Conn(c)) = self.entries.get_mut(slot) else {
                        continue;
                    };
                    let id = c.id;
                    if let Err(e) =
                        c.transport
                            .register(self.poll.registry(), Token(slot), Interest::READABLE)
                    {
                        log(&format!("register {remote:?}: {e}"));
                        self.entries.remove(slot);
                        continue;
                    }
                    self.n_conns += 1;
                    if tcp {
                        self.dirty.push(id); // our INIT
                    }
                    let meta = ConnMeta {
                        proto,
                        remote,
                        local,
                        listener: index,
                        dynamic_listener: dynamic,
                    };
                    self.driver.on_connected(id, &meta, now);
                    self.drain(now);
                    // Bytes may already be waiting; mio reports them as an event,
                    // so nothing more to do here.
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and friends: the listener stays readable; the next
                    // sweep tries again (no busy loop meanwhile).
                    log(&format!("accept on {local}: {e}"));
                    return;
                }
            }
        }
        // Budget used up: more may be pending, come back on the next turn.
        self.ready.push((idx, 0));
    }

    fn read(&mut self, id: ConnId, now: Time) {
        let Some((idx, gen)) = self.slot(id) else {
            return;
        };
        let cfg = &self.cfg;
        let outcome = match self.entries.get_gen_mut(idx, gen) {
            Some(Entry::Conn(c)) if c.connecting.is_none() => {
                let t = &mut c.transport;
                if t.flags().read_paused || t.flags().app_paused {
                    // Resumed by flush_one when the backlog drains, or by
                    // Action::ResumeRead.
                    return;
                }
                let o = t.read_burst(id, &mut self.driver, cfg, now);
                if !t.flags().dirty && t.needs_flush() {
                    t.flags().dirty = true;
                    self.dirty.push(id);
                }
                o
            }
            _ => return,
        };
        match outcome {
            ReadOutcome::Drained => {}
            ReadOutcome::Yielded => {
                if let Some(Entry::Conn(c)) = self.entries.get_mut(idx) {
                    let f = c.transport.flags();
                    if !f.read_paused && !f.app_paused {
                        self.ready.push((idx, gen));
                    }
                }
            }
            ReadOutcome::Closed(reason) => {
                if reason.starts_with("TCP mapping framing error") {
                    self.stats.framing_errors += 1;
                }
                self.to_close.push((id, reason));
            }
        }
        self.drain(now);
    }

    /// Carry out the driver's actions, and closes, until there are none.
    fn drain(&mut self, now: Time) {
        loop {
            while let Some(a) = self.driver.poll_action() {
                self.apply(a, now);
            }
            if !self.failed_connects.is_empty() {
                for id in std::mem::take(&mut self.failed_connects) {
                    self.driver.on_connect_failed(id, now);
                }
                continue;
            }
            if !self.listen_results.is_empty() {
                for (id, r) in std::mem::take(&mut self.listen_results) {
                    self.driver.on_listen(id, r, now);
                }
                continue;
            }
            if !self.kernel_acks.is_empty() {
                for (id, n) in std::mem::take(&mut self.kernel_acks) {
                    for _ in 0..n {
                        self.driver.on_ack(id, None, now);
                    }
                }
                continue;
            }
            if self.to_close.is_empty() {
                return;
            }
            let closes = std::mem::take(&mut self.to_close);
            for (id, reason) in closes {
                self.close(id, &reason, now);
            }
        }
    }

    fn apply(&mut self, a: Action, now: Time) {
        match a {
            Action::Send { conn, ppid, msg } => self.send(conn, ppid, 0, false, &msg),
            Action::SendData {
                conn,
                ppid,
                stream,
                unordered,
                msg,
            } => self.send(conn, ppid, stream, unordered, &msg),
            Action::SendBatch { conn, msgs, bytes } => {
                if msgs.iter().map(|(_, n)| n).sum::<usize>() != bytes.len() {
                    log("SendBatch: lengths do not add up; dropped");
                    return;
                }
                let mut at = 0;
                for (info, n) in msgs {
                    self.send(
                        conn,
                        info.ppid,
                        info.stream,
                        info.unordered,
                        &bytes[at..at + n],
                    );
                    at += n;
                }
            }
            Action::ManualAck { conn, on } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.transport.set_manual_ack(on);
                }
            }
            Action::Ack { conn } => {
                let Some(c) = self.conn_mut(conn) else {
                    return;
                };
                let t = &mut c.transport;
                if t.ack() && !t.flags().dirty {
                    t.flags().dirty = true;
                    self.dirty.push(conn);
                }
            }
            Action::PauseRead { conn } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.transport.flags().app_paused = true;
                }
            }
            Action::ResumeRead { conn } => {
                let Some((idx, gen)) = self.slot(conn) else {
                    return;
                };
                if let Some(Entry::Conn(c)) = self.entries.get_gen_mut(idx, gen) {
                    let f = c.transport.flags();
                    if f.app_paused {
                        f.app_paused = false;
                        // Bytes may have arrived meanwhile without a new
                        // readiness event: read on the next turn.
                        self.ready.push((idx, gen));
                    }
                }
            }
            Action::Listen {
                id,
                url,
                manual_ack,
            } => self.listen(id, &url, manual_ack),
            Action::Unlisten { id } => {
                if let Some(idx) = self.dynamic.remove(&id) {
                    if let Some(Entry::Listener { mut sock, .. }) = self.entries.remove(idx) {
                        sock.deregister(&self.poll);
                    }
                }
            }
            Action::Close { conn, reason } => self.to_close.push((conn, reason)),
            Action::Connect { conn, addr } => self.connect(conn, Target::Tcp(addr), now),
            Action::ConnectSctp { conn, addrs, local } => {
                self.connect(conn, Target::Sctp(addrs, local), now)
            }
            Action::Announce { msg } => {
                if let (Some(sock), Some(group)) = (&self.announce, self.cfg.announce) {
                    match sock.send_to(&msg, group) {
                        Ok(_) => self.stats.announces += 1,
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        Err(e) => log(&format!("announce to {group}: {e}")),
                    }
                }
            }
        }
    }

    /// Queue one message on a connection (Action::Send / SendData).
    fn send(&mut self, conn: ConnId, ppid: u32, stream: u16, unordered: bool, msg: &[u8]) {
        let max = self.cfg.max_write_buffer;
        let Some(c) = self.conn_mut(conn) else {
            return; // closed meanwhile
        };
        let t = &mut c.transport;
        let res = t.queue_data(ppid, stream, unordered, msg, max);
        let newly_dirty = !t.flags().dirty;
        t.flags().dirty = true;
        // A long batch of sends: write what is there now rather than growing
        // the buffer through the whole batch (the peer starts sooner, and the
        // buffer stays small and warm). Not while the socket is full.
        let eager = t.backlog() >= EAGER_FLUSH && !t.flags().want_write;
        if newly_dirty {
            self.dirty.push(conn);
        }
        if let Err(reason) = res {
            self.stats.overflow_closes += 1;
            self.to_close.push((conn, reason));
        } else if eager {
            self.flush_one(conn);
        }
    }

    /// Open a dynamic listener (Action::Listen); the answer is reported after
    /// the current action.
    fn listen(&mut self, id: ListenerId, url: &EndpointUrl, manual_ack: bool) {
        if self.dynamic.contains_key(&id) {
            self.listen_results
                .push((id, Err(format!("listener id {} is in use", id.0))));
            return;
        }
        let r = bind(
            &self.poll,
            &mut self.entries,
            usize::MAX,
            url,
            &self.cfg,
            Some(id),
            manual_ack,
        );
        match r {
            Ok((slot, locals)) => {
                self.dynamic.insert(id, slot);
                self.listen_results.push((id, Ok(locals)));
            }
            Err(e) => self.listen_results.push((id, Err(e.to_string()))),
        }
    }

    fn close(&mut self, id: ConnId, reason: &str, now: Time) {
        let Some(c) = self.conn_entry(id) else {
            return; // already closed
        };
        if c.connecting.is_some() {
            self.fail_connect(id, reason, now);
            return;
        }
        let Some((idx, _)) = self.slot(id) else {
            return;
        };
        let Some(Entry::Conn(mut c)) = self.entries.remove(idx) else {
            return;
        };
        self.aliases.remove(&id);
        let t = &mut c.transport;
        // Best effort: whatever fits in the socket buffer now (e.g. an error reply).
        let _ = t.flush();
        let _ = t.deregister(self.poll.registry());
        drop(c);
        self.n_conns -= 1;
        if verbose() {
            log(&format!("connection {} closed: {reason}", id.0));
        }
        self.driver.on_closed(id, now);
    }

    fn flush_dirty(&mut self) {
        loop {
            let dirty = std::mem::take(&mut self.dirty);
            for &id in &dirty {
                if let Some(c) = self.conn_mut(id) {
                    c.transport.flags().dirty = false;
                }
                self.flush_one(id);
            }
            // Reuse the allocation unless something re-dirtied meanwhile.
            if self.dirty.is_empty() {
                self.dirty = dirty;
                self.dirty.clear();
            }
            if self.to_close.is_empty() && self.kernel_acks.is_empty() {
                return;
            }
            // Closes and SCTP acknowledgements go to the driver, whose answers
            // may queue more output: flush again.
            let now = self.now();
            self.drain(now);
            if self.dirty.is_empty() {
                return;
            }
        }
    }

    /// Write what is queued; keep WRITABLE interest only while a backlog remains;
    /// resume reading a paused connection once its backlog is low again.
    fn flush_one(&mut self, id: ConnId) {
        let half = self.cfg.max_write_buffer / 2;
        let Some((idx, gen)) = self.slot(id) else {
            return;
        };
        let registry = self.poll.registry();
        let Some(Entry::Conn(c)) = self.entries.get_gen_mut(idx, gen) else {
            return;
        };
        if c.connecting.is_some() {
            return; // flushed once connected
        }
        let t = &mut c.transport;
        let res = t.flush();
        let acked = t.take_kernel_acks();
        if acked > 0 {
            self.kernel_acks.push((id, acked));
        }
        match res {
            Ok(backlog) => {
                let want = backlog > 0;
                if want != t.flags().want_write {
                    let interest = if want {
                        Interest::READABLE | Interest::WRITABLE
                    } else {
                        Interest::READABLE
                    };
                    if let Err(e) = t.reregister(registry, Token(idx), interest) {
                        self.to_close.push((id, format!("reregister: {e}")));
                        return;
                    }
                    t.flags().want_write = want;
                }
                if t.flags().read_paused && backlog <= half {
                    t.flags().read_paused = false;
                    self.ready.push((idx, gen));
                }
            }
            Err(e) => self.to_close.push((id, format!("write: {e}"))),
        }
    }

    /// Per-connection timers: heartbeats on idle TCP mapping connections. Also
    /// retries accepting, in case a listener hit EMFILE.
    fn sweep(&mut self, now: Time) {
        let idxs: Vec<usize> = self.entries.indices().collect();
        for idx in idxs {
            let c = match self.entries.get_mut(idx) {
                Some(Entry::Conn(c)) => c,
                Some(Entry::Listener { .. }) => {
                    self.accept(idx, now);
                    continue;
                }
                None => continue,
            };
            let id = c.id;
            if let Some(k) = &c.connecting {
                if now >= k.deadline {
                    let reason = format!("connect to {}: timed out", k.addr);
                    self.fail_connect(id, &reason, now);
                }
                continue;
            }
            let t = &mut c.transport;
            match t.tick(now, &self.cfg) {
                Ok(false) => {}
                Ok(true) => {
                    if !t.flags().dirty {
                        t.flags().dirty = true;
                        self.dirty.push(id);
                    }
                }
                Err(reason) => {
                    self.stats.heartbeat_closes += 1;
                    self.to_close.push((id, reason));
                }
            }
        }
        self.drain(now);
    }

    fn shutdown(&mut self) {
        let now = self.now();
        let idxs: Vec<usize> = self.entries.indices().collect();
        for idx in idxs {
            match self.entries.get(idx) {
                Some(Entry::Conn(c)) => {
                    let id = c.id;
                    self.close(id, "shutting down", now);
                }
                Some(Entry::Listener { .. }) => {
                    if let Some(Entry::Listener { mut sock, .. }) = self.entries.remove(idx) {
                        sock.deregister(&self.poll);
                    }
                }
                None => {}
            }
        }
        // Drop whatever the driver still wanted to say: everything is closed.
        while self.driver.poll_action().is_some() {}
    }
}

/// Bind a listener for `url` and register it; its slot and bound addresses.
fn bind(
    poll: &Poll,
    entries: &mut Slab<Entry>,
    index: usize,
    url: &EndpointUrl,
    cfg: &RuntimeConfig,
    dynamic: Option<ListenerId>,
    manual_ack: bool,
) -> Result<(usize, Vec<(Proto, SocketAddr)>), StartError> {
    let (sock, locals) = match url.proto {
        Proto::Sctp => {
            if !super::probe_sctp().is_available() {
                return Err(StartError::Unsupported(format!(
                    "{url}: this kernel has no SCTP support"
                )));
            }
            let addrs = url.socket_addrs();
            let sock = SctpSocket::listen_on(&addrs, &cfg.sctp).map_err(|err| StartError::Io {
                what: format!("listening on {url}"),
                err,
            })?;
            // One port for every address: the kernel's, if the URL said 0.
            let port = sock.local_addr().map_or(url.port, |a| a.port());
            let locals = addrs
                .iter()
                .map(|a| SocketAddr::new(a.ip(), port))
                .collect::<Vec<_>>();
            (ListenSock::Sctp(sock), locals)
        }
        Proto::Tcp => {
            let addr = url.first();
            let sock = TcpListener::bind(addr).map_err(|err| StartError::Io {
                what: format!("listening on {url}"),
                err,
            })?;
            let local = sock.local_addr().unwrap_or(addr);
            (ListenSock::Tcp(sock), vec![local])
        }
    };
    let local = locals[0];
    let slot = entries.insert_with(|_, _| Entry::Listener {
        sock,
        index,
        local,
        dynamic,
        manual_ack,
    });
    if let Some(Entry::Listener { sock, .. }) = entries.get_mut(slot) {
        let res = match sock {
            ListenSock::Tcp(l) => poll.registry().register(l, Token(slot), Interest::READABLE),
            ListenSock::Sctp(s) => poll.registry().register(
                &mut SourceFd(&s.as_raw_fd()),
                Token(slot),
                Interest::READABLE,
            ),
        };
        if let Err(err) = res {
            entries.remove(slot);
            return Err(StartError::Io {
                what: format!("registering {url}"),
                err,
            });
        }
    }
    Ok((slot, locals.into_iter().map(|a| (url.proto, a)).collect()))
}

/// A UDP socket for sending announces to `group` (never bound to it: we only send).
fn announce_socket(group: SocketAddr, ttl: u32) -> io::Result<UdpSocket> {
    let sock = if group.is_ipv4() {
        let s = UdpSocket::bind((std::net::Ipv4Addr::UNSPECIFIED, 0))?;
        s.set_multicast_ttl_v4(ttl)?;
        s
    } else {
        let s = UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0))?;
        // SAFETY-free path: std has no hop-limit setter; the default (1) is what
        // we want for a link-local scope anyway.
        s
    };
    sock.set_nonblocking(true)?;
    Ok(sock)
}

/// True when RSERPOOL_DEBUG is set: log every connection close.
fn verbose() -> bool {
    static V: once_cell::sync::Lazy<bool> =
        once_cell::sync::Lazy::new(|| std::env::var_os("RSERPOOL_DEBUG").is_some());
    *V
}

/// One diagnostic line on stderr.
fn log(msg: &str) {
    eprintln!("rserpool: {msg}");
}
