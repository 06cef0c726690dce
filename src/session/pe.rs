//! The pool element's side of enhanced-mode sessions: one [`PeSession`] per
//! accepted data connection, and [`SessionAcceptor`] holding them.
//!
//! The PE separates the control channel (PPID 11) from application data,
//! surfaces the pool user's ASAP_COOKIE_ECHO ([`PeEvent::CookieEcho`]), lets
//! the application send cookies and business cards, and tells the runtime
//! when to send a TCP mapping ACK: one [`PeOutput::Ack`] per DATA chunk,
//! digest §10.4.
//!
//! # When a message is acknowledged
//!
//! The ACK is what lets the pool user forget a message, so it must not go
//! out before the application is done with it: a PE that dies between
//! reading a request and answering it must leave the request
//! unacknowledged, for the pool user to re-send it to the next PE. So a
//! message handed out by [`PeSession::poll_event`] is acknowledged when the
//! application comes back: its next [`PeSession::ack`] (the runtime calls it
//! on the application's next receive, on close, or on an explicit
//! acknowledgement) or its next send on the session (the ACK goes out after
//! the reply). Control messages the core consumes itself (unexpected or
//! malformed ones) are acknowledged at once.
//!
//! # Flow control toward the pool user
//!
//! The other direction works the same way: the pool user's side sends one
//! ACK chunk for every DATA chunk it takes in (over SCTP the runtime reports
//! each message the kernel accepted instead). [`PeSession::handle_ack`]
//! counts them, so [`PeSession::in_flight_bytes`] is what was sent and not
//! yet taken in: a PE that streams (a file, a character generator) waits
//! while it is above its bound instead of growing the connection's write
//! buffer until the runtime closes it.

use std::collections::{BTreeMap, VecDeque};

use super::pool::BufPool;
use super::{ConnId, SendError, MAX_MESSAGE_LEN, PPID_ASAP};
use crate::wire::{AsapMessage, PoolElement, PoolHandle};

/// Something for the runtime to do on the PE side.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeOutput {
    /// Send one message as one DATA chunk.
    Send {
        /// The connection.
        conn: ConnId,
        /// 11 for ASAP control, the application's PPID otherwise.
        ppid: u32,
        /// The message.
        bytes: Vec<u8>,
        /// Stream identifier (0 for control messages).
        stream: u16,
        /// Unordered (DATA flag U).
        unordered: bool,
    },
    /// Send one ACK chunk: one more DATA chunk was delivered.
    Ack {
        /// The connection.
        conn: ConnId,
    },
}

/// Something for the PE application.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeEvent {
    /// The pool user's cookie echo: the state to take over. Comes before any
    /// data if the pool user sent it first (as it must).
    CookieEcho(Vec<u8>),
    /// An application message.
    Data {
        /// Its PPID.
        ppid: u32,
        /// The message.
        bytes: Vec<u8>,
        /// The stream it came on.
        stream: u16,
    },
    /// The pool user sent a business card (it is also a PE).
    BusinessCard {
        /// Its pool.
        pool: PoolHandle,
        /// Its PEs in fail-over order.
        elements: Vec<PoolElement>,
    },
}

/// Counters of one PE-side connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeStats {
    /// DATA chunks acknowledged ([`PeOutput::Ack`] emitted), control included.
    pub delivered: u64,
    /// Cookie echoes that came after application data (not first).
    pub late_cookie_echoes: u64,
    /// Other control messages (ignored).
    pub ignored_control: u64,
    /// Undecodable control messages (ignored, still acknowledged).
    pub malformed_control: u64,
    /// DATA chunks sent (application messages and control), acknowledged or
    /// not.
    pub sent: u64,
    /// Of those, acknowledged by the pool user ([`PeSession::handle_ack`]).
    pub acked_by_peer: u64,
    /// ACKs with nothing in flight (or naming a chunk never sent).
    pub unexpected_acks: u64,
}

/// One accepted data connection on the PE side.
#[derive(Debug)]
pub struct PeSession {
    conn: ConnId,
    seen_data: bool,
    out: VecDeque<PeOutput>,
    /// Events, each with "an ACK is due once the application is done with it".
    events: VecDeque<(PeEvent, bool)>,
    /// Events handed out whose ACK is due at the next [`PeSession::ack`].
    handed: u64,
    /// TSN of the next DATA chunk sent (0, 1, 2, ... on the connection).
    next_tsn: u32,
    /// DATA chunks sent and not yet acknowledged by the pool user: TSN and
    /// length.
    in_flight: VecDeque<(u32, usize)>,
    in_flight_bytes: usize,
    stats: PeStats,
    /// Buffers of sent messages the runtime gave back ([`PeSession::recycle`]).
    bufs: BufPool,
}

impl PeSession {
    /// A session for the accepted connection `conn`.
    pub fn new(conn: ConnId) -> Self {
        PeSession {
            conn,
            seen_data: false,
            out: VecDeque::new(),
            events: VecDeque::new(),
            handed: 0,
            next_tsn: 0,
            in_flight: VecDeque::new(),
            in_flight_bytes: 0,
            stats: PeStats::default(),
            bufs: BufPool::default(),
        }
    }

    /// The connection.
    pub fn conn(&self) -> ConnId {
        self.conn
    }

    /// Counters; `delivered` is the number of ACKs emitted so far.
    pub fn stats(&self) -> &PeStats {
        &self.stats
    }

    /// Events waiting for [`PeSession::poll_event`].
    pub fn pending_events(&self) -> usize {
        self.events.len()
    }

    /// Messages handed out and not yet acknowledged.
    pub fn unacked(&self) -> u64 {
        self.handed
    }

    /// Messages sent to the pool user and not yet acknowledged by it.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Payload bytes of [`PeSession::in_flight`].
    pub fn in_flight_bytes(&self) -> usize {
        self.in_flight_bytes
    }

    /// An ACK chunk from the pool user: with a Cumulative TSN Ack every
    /// chunk up to it is acknowledged, without one (or from SCTP: one
    /// message the kernel accepted) the oldest one.
    pub fn handle_ack(&mut self, cum_tsn: Option<u32>) {
        let before = self.in_flight.len();
        match cum_tsn {
            Some(t) => {
                // Serial number arithmetic: TSNs wrap after 2^32 - 1.
                while let Some(&(tsn, _)) = self.in_flight.front() {
                    if t.wrapping_sub(tsn) >= 1 << 31 {
                        break;
                    }
                    self.pop_in_flight();
                }
            }
            None => {
                if !self.in_flight.is_empty() {
                    self.pop_in_flight();
                }
            }
        }
        if self.in_flight.len() == before {
            self.stats.unexpected_acks += 1;
        }
    }

    fn pop_in_flight(&mut self) {
        if let Some((_, len)) = self.in_flight.pop_front() {
            self.in_flight_bytes -= len;
            self.stats.acked_by_peer += 1;
        }
    }

    fn sent(&mut self, len: usize) {
        self.in_flight.push_back((self.next_tsn, len));
        self.in_flight_bytes += len;
        self.next_tsn = self.next_tsn.wrapping_add(1);
        self.stats.sent += 1;
    }

    /// One DATA chunk's message arrived on `stream`.
    pub fn handle_data(&mut self, stream: u16, ppid: u32, bytes: &[u8]) {
        if ppid != PPID_ASAP {
            self.seen_data = true;
            self.events.push_back((
                PeEvent::Data {
                    ppid,
                    bytes: bytes.to_vec(),
                    stream,
                },
                true,
            ));
            return;
        }
        match AsapMessage::decode(bytes) {
            Ok(d) => match d.msg {
                AsapMessage::CookieEcho(c) => {
                    if self.seen_data {
                        self.stats.late_cookie_echoes += 1;
                    }
                    self.events.push_back((PeEvent::CookieEcho(c), true));
                    return;
                }
                AsapMessage::BusinessCard {
                    pool_handle,
                    elements,
                    ..
                } => {
                    self.events.push_back((
                        PeEvent::BusinessCard {
                            pool: pool_handle,
                            elements,
                        },
                        true,
                    ));
                    return;
                }
                _ => self.stats.ignored_control += 1,
            },
            Err(_) => self.stats.malformed_control += 1,
        }
        // Consumed by the core: delivered now.
        self.push_ack();
    }

    fn push_ack(&mut self) {
        self.stats.delivered += 1;
        self.out.push_back(PeOutput::Ack { conn: self.conn });
    }

    /// The application is done with every message handed out so far: one
    /// [`PeOutput::Ack`] for each. Returns how many.
    pub fn ack(&mut self) -> u64 {
        let n = std::mem::take(&mut self.handed);
        for _ in 0..n {
            self.push_ack();
        }
        n
    }

    /// Send a cookie (the PU keeps the latest).
    pub fn send_cookie(&mut self, cookie: &[u8]) -> Result<(), SendError> {
        self.send_control(AsapMessage::Cookie(cookie.to_vec()))
    }

    /// Send a business card: the PEs the pool user should fail over to, in
    /// order.
    pub fn send_business_card(
        &mut self,
        pool: PoolHandle,
        elements: Vec<PoolElement>,
    ) -> Result<(), SendError> {
        self.send_control(AsapMessage::BusinessCard {
            pool_handle: pool,
            policy: None,
            elements,
        })
    }

    fn send_control(&mut self, msg: AsapMessage) -> Result<(), SendError> {
        if msg.encoded_len() > MAX_MESSAGE_LEN {
            return Err(SendError::TooLarge);
        }
        let mut bytes = Vec::new();
        msg.encode(&mut bytes);
        self.sent(bytes.len());
        self.out.push_back(PeOutput::Send {
            conn: self.conn,
            ppid: PPID_ASAP,
            bytes,
            stream: 0,
            unordered: false,
        });
        self.ack();
        Ok(())
    }

    /// Send an application message to the pool user (stream 0, ordered);
    /// then acknowledge what was handed out.
    pub fn send(&mut self, bytes: &[u8], ppid: u32) -> Result<(), SendError> {
        self.send_on(bytes, ppid, 0, false)
    }

    /// Send an application message on `stream`, unordered if asked; then
    /// acknowledge what was handed out (the ACKs go after the reply).
    pub fn send_on(
        &mut self,
        bytes: &[u8],
        ppid: u32,
        stream: u16,
        unordered: bool,
    ) -> Result<(), SendError> {
        if ppid == PPID_ASAP {
            return Err(SendError::ReservedPpid);
        }
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(SendError::TooLarge);
        }
        self.sent(bytes.len());
        let bytes = self.bufs.copy_of(bytes);
        self.out.push_back(PeOutput::Send {
            conn: self.conn,
            ppid,
            bytes,
            stream,
            unordered,
        });
        self.ack();
        Ok(())
    }

    /// Give back the buffer of a [`PeOutput::Send`] once its bytes are
    /// copied out, for the next send to reuse (optional: saves an
    /// allocation per message on a busy session).
    pub fn recycle(&mut self, buf: Vec<u8>) {
        self.bufs.give(buf);
    }

    /// The next thing for the runtime to do.
    pub fn poll_output(&mut self) -> Option<PeOutput> {
        self.out.pop_front()
    }

    /// The next event; its ACK is due at the next [`PeSession::ack`] or send.
    pub fn poll_event(&mut self) -> Option<PeEvent> {
        let (ev, ack) = self.events.pop_front()?;
        if ack {
            self.handed += 1;
        }
        Some(ev)
    }
}

/// The PE's sessions, one per accepted data connection.
#[derive(Debug, Default)]
pub struct SessionAcceptor {
    sessions: BTreeMap<ConnId, PeSession>,
}

impl SessionAcceptor {
    /// No sessions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A data connection was accepted.
    pub fn handle_accepted(&mut self, conn: ConnId) {
        self.sessions.insert(conn, PeSession::new(conn));
    }

    /// The connection closed: its session is dropped.
    pub fn handle_closed(&mut self, conn: ConnId) {
        self.sessions.remove(&conn);
    }

    /// A message arrived on `conn` (unknown connections are ignored).
    pub fn handle_data(&mut self, conn: ConnId, stream: u16, ppid: u32, bytes: &[u8]) {
        if let Some(s) = self.sessions.get_mut(&conn) {
            s.handle_data(stream, ppid, bytes);
        }
    }

    /// The session of `conn`.
    pub fn session(&mut self, conn: ConnId) -> Option<&mut PeSession> {
        self.sessions.get_mut(&conn)
    }

    /// The connections with a session.
    pub fn conns(&self) -> Vec<ConnId> {
        self.sessions.keys().copied().collect()
    }

    /// The next output of any session.
    pub fn poll_output(&mut self) -> Option<PeOutput> {
        self.sessions.values_mut().find_map(|s| s.poll_output())
    }

    /// The next event of any session, with its connection.
    pub fn poll_event(&mut self) -> Option<(ConnId, PeEvent)> {
        self.sessions
            .iter_mut()
            .find_map(|(c, s)| s.poll_event().map(|e| (*c, e)))
    }
}
