//! One connection's transport state. TCP carries the TCP mapping shim (digest
//! §10); kernel SCTP carries each message as one SCTP user message
//! ([`SctpConn`]). The event loop talks to both through [`Transport`].

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::sctp::{Reassembly, Received, SctpSocket};
use super::{ConnId, DataInfo, Driver, RuntimeConfig};
use crate::time::Time;
use crate::wire::tcpmap::{self, Chunk, ChunkDecoder, ChunkRef, DataHeader, InitFlags};

/// The flags of the INIT we send: full DATA headers (TSN, stream, PPID), since a
/// connection may carry both ASAP control and data (digest §10.6).
pub(crate) const OUR_INIT: InitFlags = InitFlags::NONE;

/// How a read burst ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum ReadOutcome {
    /// The socket has no more bytes for now (mio will tell us when it does).
    Drained,
    /// The per-wakeup budget ran out, or reading is paused for output backlog;
    /// more may be waiting, so the loop must come back without a new event.
    Yielded,
    /// The connection is over: the reason.
    Closed(String),
}

/// A connection's transport.
#[derive(Debug)]
pub(crate) enum Transport {
    /// TCP with the TCP mapping.
    Tcp(TcpMapConn),
    /// Kernel SCTP, one-to-one style socket.
    Sctp(SctpConn),
}

/// Event-loop bookkeeping shared by every transport.
#[derive(Debug, Default)]
pub(crate) struct IoFlags {
    /// WRITABLE interest is registered.
    pub(crate) want_write: bool,
    /// In the loop's dirty list (output queued since the last flush).
    pub(crate) dirty: bool,
    /// Reading stopped because the output backlog is above half the bound.
    pub(crate) read_paused: bool,
    /// Reading stopped by the driver ([`Action::PauseRead`](super::Action::PauseRead)).
    pub(crate) app_paused: bool,
}

impl Transport {
    /// The loop's flags of this connection.
    pub(crate) fn flags(&mut self) -> &mut IoFlags {
        match self {
            Transport::Tcp(t) => &mut t.flags,
            Transport::Sctp(s) => &mut s.flags,
        }
    }

    /// Register with the poller.
    pub(crate) fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Transport::Tcp(c) => r.register(&mut c.stream, t, i),
            Transport::Sctp(c) => r.register(&mut SourceFd(&c.sock.as_raw_fd()), t, i),
        }
    }

    /// Change the registered interest.
    pub(crate) fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Transport::Tcp(c) => r.reregister(&mut c.stream, t, i),
            Transport::Sctp(c) => r.reregister(&mut SourceFd(&c.sock.as_raw_fd()), t, i),
        }
    }

    /// Remove from the poller.
    pub(crate) fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Transport::Tcp(c) => r.deregister(&mut c.stream),
            Transport::Sctp(c) => r.deregister(&mut SourceFd(&c.sock.as_raw_fd())),
        }
    }

    /// Queue one message with its stream and unordered flag; fails when it
    /// can't be framed or the backlog bound is hit.
    pub(crate) fn queue_data(
        &mut self,
        ppid: u32,
        stream: u16,
        unordered: bool,
        msg: &[u8],
        max: usize,
    ) -> Result<(), String> {
        match self {
            Transport::Tcp(t) => t.queue_data(ppid, stream, unordered, msg, max),
            Transport::Sctp(s) => s.queue(ppid, stream, unordered, msg, max),
        }
    }

    /// Manual (true) or automatic ACK chunks (TCP mapping only).
    pub(crate) fn set_manual_ack(&mut self, on: bool) {
        if let Transport::Tcp(t) = self {
            t.manual_ack = on;
        }
    }

    /// Manual-ack mode: queue the ACK of the oldest unacknowledged delivered
    /// DATA chunk. False when nothing was queued.
    pub(crate) fn ack(&mut self) -> bool {
        match self {
            Transport::Tcp(t) => t.ack_one(),
            Transport::Sctp(_) => false,
        }
    }

    /// SCTP: messages the kernel accepted since the last call (each counts as
    /// acknowledged). Always 0 for TCP, whose ACKs are chunks.
    pub(crate) fn take_kernel_acks(&mut self) -> u32 {
        match self {
            Transport::Tcp(_) => 0,
            Transport::Sctp(s) => std::mem::take(&mut s.kernel_acks),
        }
    }

    /// Write queued output until done or WouldBlock; the remaining backlog.
    /// Unsent output bytes.
    pub(crate) fn backlog(&self) -> usize {
        match self {
            Transport::Tcp(t) => t.backlog(),
            Transport::Sctp(s) => s.backlog,
        }
    }

    /// Output waiting to be written: bytes, or coalesced ACKs.
    pub(crate) fn needs_flush(&self) -> bool {
        match self {
            Transport::Tcp(t) => t.backlog() > 0 || t.acks_owed > 0,
            Transport::Sctp(s) => s.backlog > 0,
        }
    }

    pub(crate) fn flush(&mut self) -> io::Result<usize> {
        match self {
            Transport::Tcp(t) => t.flush(),
            Transport::Sctp(s) => s.flush(),
        }
    }

    /// Read a burst and deliver whole messages to the driver.
    pub(crate) fn read_burst<D: Driver>(
        &mut self,
        id: ConnId,
        driver: &mut D,
        cfg: &RuntimeConfig,
        now: Time,
    ) -> ReadOutcome {
        match self {
            Transport::Tcp(t) => t.read_burst(id, driver, cfg, now),
            Transport::Sctp(s) => s.read_burst(id, driver, cfg, now),
        }
    }

    /// Timers of the transport itself: TCP mapping heartbeats. SCTP's are the
    /// kernel's (a dead association shows up as a read error).
    pub(crate) fn tick(&mut self, now: Time, cfg: &RuntimeConfig) -> Result<bool, String> {
        match self {
            // Answers cannot be read while the driver holds reading back.
            Transport::Tcp(t) if t.flags.app_paused => Ok(false),
            Transport::Tcp(t) => t.tick(now, cfg),
            Transport::Sctp(_) => Ok(false),
        }
    }

    /// The pending error of a connect (SO_ERROR).
    pub(crate) fn take_error(&self) -> io::Result<Option<io::Error>> {
        match self {
            Transport::Tcp(t) => t.stream.take_error(),
            Transport::Sctp(s) => s.sock.take_error(),
        }
    }

    /// The peer's addresses once connected (`NotConnected` before): one for TCP,
    /// every address of the association for SCTP.
    pub(crate) fn peer_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        match self {
            Transport::Tcp(t) => t.stream.peer_addr().map(|a| vec![a]),
            Transport::Sctp(s) => {
                let primary = s.sock.peer_addr()?;
                let mut all = s.sock.peer_addrs().unwrap_or_default();
                if all.is_empty() {
                    all.push(primary);
                }
                Ok(all)
            }
        }
    }

    /// Our local address.
    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            Transport::Tcp(t) => t.stream.local_addr(),
            Transport::Sctp(s) => s.sock.local_addr(),
        }
    }
}

/// State of one SCTP association (one-to-one style socket).
#[derive(Debug)]
pub(crate) struct SctpConn {
    pub(crate) sock: SctpSocket,
    rx: Reassembly,
    /// Whole messages not yet accepted by the kernel.
    out: VecDeque<OutMsg>,
    /// Bytes in `out`.
    backlog: usize,
    /// Messages the kernel accepted, not yet reported to the driver.
    kernel_acks: u32,
    pub(crate) flags: IoFlags,
}

/// One queued SCTP message.
#[derive(Debug)]
struct OutMsg {
    ppid: u32,
    stream: u16,
    unordered: bool,
    msg: Vec<u8>,
}

impl SctpConn {
    /// A new association's state; messages up to `cfg.max_read_buffer` bytes.
    pub(crate) fn new(sock: SctpSocket, cfg: &RuntimeConfig) -> Self {
        SctpConn {
            sock,
            rx: Reassembly::new(cfg.max_read_buffer),
            out: VecDeque::new(),
            backlog: 0,
            kernel_acks: 0,
            flags: IoFlags::default(),
        }
    }

    fn queue(
        &mut self,
        ppid: u32,
        stream: u16,
        unordered: bool,
        msg: &[u8],
        max: usize,
    ) -> Result<(), String> {
        if msg.is_empty() {
            return Err("cannot send an empty SCTP message".into());
        }
        self.backlog += msg.len();
        self.out.push_back(OutMsg {
            ppid,
            stream,
            unordered,
            msg: msg.to_vec(),
        });
        if self.backlog > max {
            return Err(format!(
                "peer is not reading: {} bytes of output queued (bound {max})",
                self.backlog
            ));
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<usize> {
        while let Some(m) = self.out.front() {
            match self.sock.send_msg_on(m.ppid, m.stream, m.unordered, &m.msg) {
                Ok(_) => {
                    self.backlog -= m.msg.len();
                    self.out.pop_front();
                    self.kernel_acks = self.kernel_acks.saturating_add(1);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
        Ok(self.backlog)
    }

    fn read_burst<D: Driver>(
        &mut self,
        id: ConnId,
        driver: &mut D,
        cfg: &RuntimeConfig,
        now: Time,
    ) -> ReadOutcome {
        let mut taken = 0usize;
        loop {
            if self.backlog > cfg.max_write_buffer / 2 {
                self.flags.read_paused = true;
                return ReadOutcome::Yielded;
            }
            if taken >= cfg.read_budget {
                return ReadOutcome::Yielded;
            }
            match self.rx.recv(&self.sock) {
                Ok(Received::Message(info, msg)) => {
                    taken += msg.len();
                    driver.on_data(id, info, msg, now);
                }
                Ok(Received::Nothing(n)) => taken += n,
                Ok(Received::Eof) => {
                    return ReadOutcome::Closed("peer closed the association".into())
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) => return ReadOutcome::Closed(format!("read: {e}")),
            }
        }
    }
}

/// TCP mapping state of one TCP connection.
#[derive(Debug)]
pub(crate) struct TcpMapConn {
    pub(crate) stream: TcpStream,
    dec: ChunkDecoder,
    /// Unsent bytes are `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    /// Our next TSN, and the next SSN of each stream we used (index = stream).
    tsn: u32,
    ssn: Vec<u16>,
    /// Manual-ack mode: the driver sends the ACK chunks ([`Transport::ack`]).
    manual_ack: bool,
    /// Manual-ack mode: TSNs of the DATA chunks delivered and not yet
    /// acknowledged, oldest first.
    unacked: VecDeque<Option<u32>>,
    /// [`RuntimeConfig::coalesce_acks`]: ACKs owed, written by `flush`.
    coalesce: bool,
    acks_owed: u32,
    /// The TSN the owed ACKs acknowledge up to (`None`: the peer wants no
    /// TSN in ACKs; then one chunk per owed ACK).
    ack_cum: Option<u32>,
    /// When we last received anything, or last sent a HEARTBEAT.
    idle_since: Time,
    /// HEARTBEATs sent since we last heard from the peer.
    hb_missed: u32,
    /// The event loop's flags.
    pub(crate) flags: IoFlags,
}

impl TcpMapConn {
    /// A new connection; our INIT is queued as the first chunk.
    pub(crate) fn new(stream: TcpStream, cfg: &RuntimeConfig, now: Time) -> Self {
        let mut out = Vec::with_capacity(4096);
        // INIT: type 1, our flags, Length 4. Cannot fail.
        let _ = Chunk::Init { flags: OUR_INIT }.encode(&mut out);
        TcpMapConn {
            stream,
            dec: ChunkDecoder::new(cfg.max_read_buffer),
            out,
            out_pos: 0,
            tsn: 0,
            ssn: vec![0],
            manual_ack: false,
            unacked: VecDeque::new(),
            coalesce: cfg.coalesce_acks,
            acks_owed: 0,
            ack_cum: None,
            idle_since: now,
            hb_missed: 0,
            flags: IoFlags {
                want_write: false,
                dirty: true,
                read_paused: false,
                app_paused: false,
            },
        }
    }

    /// Unsent output bytes.
    pub(crate) fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Queue one message as a DATA chunk: the next TSN, and for an ordered
    /// message the stream's next SSN (an unordered one carries SSN 0, which
    /// the receiver ignores). Fails if the message can't be framed or the
    /// backlog would exceed the bound.
    pub(crate) fn queue_data(
        &mut self,
        ppid: u32,
        stream: u16,
        unordered: bool,
        msg: &[u8],
        max: usize,
    ) -> Result<(), String> {
        let s = usize::from(stream);
        if !unordered && s >= self.ssn.len() {
            self.ssn.resize(s + 1, 0);
        }
        let ssn = if unordered { 0 } else { self.ssn[s] };
        let hdr = DataHeader {
            unordered,
            tsn: self.tsn,
            stream,
            ssn,
            ppid,
        };
        tcpmap::encode_data(&mut self.out, OUR_INIT, &hdr, msg)
            .map_err(|e| format!("cannot send a {}-byte message: {e}", msg.len()))?;
        self.tsn = self.tsn.wrapping_add(1);
        if !unordered {
            self.ssn[s] = ssn.wrapping_add(1);
        }
        if self.backlog() > max {
            return Err(format!(
                "peer is not reading: {} bytes of output queued (bound {max})",
                self.backlog()
            ));
        }
        Ok(())
    }

    /// Read until WouldBlock, the budget, or the end; hand each DATA chunk to the
    /// driver and queue one ACK after it; answer HEARTBEATs.
    pub(crate) fn read_burst<D: Driver>(
        &mut self,
        id: ConnId,
        driver: &mut D,
        cfg: &RuntimeConfig,
        now: Time,
    ) -> ReadOutcome {
        let mut taken = 0usize;
        loop {
            if self.backlog() > cfg.max_write_buffer / 2 {
                self.flags.read_paused = true;
                return ReadOutcome::Yielded;
            }
            if taken >= cfg.read_budget {
                return ReadOutcome::Yielded;
            }
            let spare = self.dec.spare();
            if spare.is_empty() {
                // Only possible if chunks were left undrained: a bug, not the peer's.
                return ReadOutcome::Closed("receive buffer full".into());
            }
            match self.stream.read(spare) {
                Ok(0) => {
                    return ReadOutcome::Closed(match self.dec.finish() {
                        Ok(()) => "peer closed the connection".into(),
                        Err(e) => e.to_string(),
                    })
                }
                Ok(n) => {
                    self.dec.commit(n);
                    taken += n;
                    self.idle_since = now;
                    self.hb_missed = 0;
                    if let Err(e) = self.process_chunks(id, driver, now) {
                        return ReadOutcome::Closed(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return ReadOutcome::Drained,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return ReadOutcome::Closed(format!("read: {e}")),
            }
        }
    }

    fn process_chunks<D: Driver>(
        &mut self,
        id: ConnId,
        driver: &mut D,
        now: Time,
    ) -> Result<(), String> {
        loop {
            let chunk = match self.dec.next_chunk() {
                Ok(Some(c)) => c,
                Ok(None) => return Ok(()),
                Err(e) => return Err(e.to_string()),
            };
            match chunk {
                // The decoder keeps the peer's flags and parses DATA with them.
                ChunkRef::Init { .. } => {}
                ChunkRef::Data(d) => {
                    let tsn = d.tsn;
                    let info = DataInfo {
                        ppid: d.ppid.unwrap_or(0),
                        stream: d.stream.map_or(0, |(s, _)| s),
                        unordered: d.unordered,
                    };
                    driver.on_data(id, info, d.payload, now);
                    if self.manual_ack {
                        self.unacked.push_back(tsn);
                    } else {
                        // Exactly one ACK per delivered DATA chunk.
                        self.push_ack(tsn);
                    }
                }
                ChunkRef::Heartbeat { info } => {
                    let _ = Chunk::HeartbeatAck {
                        info: info.to_vec(),
                    }
                    .encode(&mut self.out);
                }
                // The driver keeps the copies (if any): it learns of each ACK.
                ChunkRef::Ack { cum_tsn } => driver.on_ack(id, cum_tsn, now),
                // Any chunk already counted as a sign of life.
                ChunkRef::HeartbeatAck { .. } => {}
                // Framed by its Length, so the stream stays in step: ignore.
                ChunkRef::Unknown { .. } => {}
            }
        }
    }

    /// One ACK chunk for a delivered DATA chunk with TSN `tsn`; no TSN if
    /// the peer's INIT asked for none (flag T).
    fn push_ack(&mut self, tsn: Option<u32>) {
        let omit = self.dec.peer_init().is_some_and(|f| f.no_tsn());
        let tsn = if omit { None } else { tsn };
        if self.coalesce {
            self.acks_owed += 1;
            self.ack_cum = tsn;
        } else {
            push_ack(&mut self.out, tsn);
        }
    }

    /// The owed ACKs into the output: one cumulative chunk (or, without
    /// TSNs, one chunk each).
    fn emit_acks(&mut self) {
        let n = std::mem::take(&mut self.acks_owed);
        match self.ack_cum.take() {
            Some(t) if n > 0 => push_ack(&mut self.out, Some(t)),
            _ => {
                for _ in 0..n {
                    push_ack(&mut self.out, None);
                }
            }
        }
    }

    /// Manual-ack mode: acknowledge the oldest delivered DATA chunk not yet
    /// acknowledged. False when there is none (or in automatic mode).
    pub(crate) fn ack_one(&mut self) -> bool {
        if !self.manual_ack {
            return false;
        }
        match self.unacked.pop_front() {
            Some(tsn) => {
                self.push_ack(tsn);
                true
            }
            None => false,
        }
    }

    /// Heartbeat bookkeeping: probe an idle peer, or give up on a silent one.
    pub(crate) fn tick(&mut self, now: Time, cfg: &RuntimeConfig) -> Result<bool, String> {
        if cfg.heartbeat_interval.is_zero()
            || now.saturating_since(self.idle_since) < cfg.heartbeat_interval
        {
            return Ok(false);
        }
        if self.hb_missed >= cfg.heartbeat_max_missed {
            return Err(format!("{} heartbeats unanswered", self.hb_missed));
        }
        let _ = Chunk::Heartbeat {
            info: now.as_micros().to_be_bytes().to_vec(),
        }
        .encode(&mut self.out);
        self.hb_missed += 1;
        self.idle_since = now;
        Ok(true)
    }

    /// Write queued output until done or WouldBlock. Returns the remaining backlog.
    pub(crate) fn flush(&mut self) -> io::Result<usize> {
        self.emit_acks();
        while self.out_pos < self.out.len() {
            match self.stream.write(&self.out[self.out_pos..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        if self.out_pos == self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if self.out.capacity() > 1 << 20 {
                self.out.shrink_to(64 << 10);
            }
        } else if self.out_pos >= 64 << 10 && self.out_pos * 2 >= self.out.len() {
            self.out.drain(..self.out_pos);
            self.out_pos = 0;
        }
        Ok(self.backlog())
    }
}

/// Append an ACK chunk: Length 8 with the cumulative TSN, 4 without.
fn push_ack(out: &mut Vec<u8>, cum_tsn: Option<u32>) {
    match cum_tsn {
        Some(t) => {
            out.extend_from_slice(&[tcpmap::chunk_type::ACK, 0, 0, 8]);
            out.extend_from_slice(&t.to_be_bytes());
        }
        None => out.extend_from_slice(&[tcpmap::chunk_type::ACK, 0, 0, 4]),
    }
}
