//! One connection's transport state. TCP carries the TCP mapping shim (digest
//! §10); kernel SCTP will be a second [`Transport`] variant.

use std::io::{self, Read, Write};

use mio::net::TcpStream;

use super::{ConnId, Driver, RuntimeConfig};
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
}

/// TCP mapping state of one TCP connection.
#[derive(Debug)]
pub(crate) struct TcpMapConn {
    pub(crate) stream: TcpStream,
    dec: ChunkDecoder,
    /// Unsent bytes are `out[out_pos..]`.
    out: Vec<u8>,
    out_pos: usize,
    /// Our next TSN and stream-0 SSN.
    tsn: u32,
    ssn: u16,
    /// When we last received anything, or last sent a HEARTBEAT.
    idle_since: Time,
    /// HEARTBEATs sent since we last heard from the peer.
    hb_missed: u32,
    /// WRITABLE interest is registered.
    pub(crate) want_write: bool,
    /// In the loop's dirty list (output queued since the last flush).
    pub(crate) dirty: bool,
    /// Reading stopped because the output backlog is above half the bound.
    pub(crate) read_paused: bool,
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
            ssn: 0,
            idle_since: now,
            hb_missed: 0,
            want_write: false,
            dirty: true,
            read_paused: false,
        }
    }

    /// Unsent output bytes.
    pub(crate) fn backlog(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Queue one message as a DATA chunk on stream 0, ordered. Fails if the
    /// message can't be framed or the backlog would exceed the bound.
    pub(crate) fn queue_data(&mut self, ppid: u32, msg: &[u8], max: usize) -> Result<(), String> {
        let hdr = DataHeader {
            unordered: false,
            tsn: self.tsn,
            stream: 0,
            ssn: self.ssn,
            ppid,
        };
        tcpmap::encode_data(&mut self.out, OUR_INIT, &hdr, msg)
            .map_err(|e| format!("cannot send a {}-byte message: {e}", msg.len()))?;
        self.tsn = self.tsn.wrapping_add(1);
        self.ssn = self.ssn.wrapping_add(1);
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
                self.read_paused = true;
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
                    driver.on_message(id, d.ppid.unwrap_or(0), d.payload, now);
                    // Exactly one ACK per delivered DATA chunk; no TSN if the
                    // peer's INIT asked for none (flag T).
                    let omit = self.dec.peer_init().is_some_and(|f| f.no_tsn());
                    push_ack(&mut self.out, if omit { None } else { tsn });
                }
                ChunkRef::Heartbeat { info } => {
                    let _ = Chunk::HeartbeatAck {
                        info: info.to_vec(),
                    }
                    .encode(&mut self.out);
                }
                // We keep no copies of sent messages (no retrieval), so ACKs need no
                // bookkeeping; any chunk already counted as a sign of life.
                ChunkRef::Ack { .. } | ChunkRef::HeartbeatAck { .. } => {}
                // Framed by its Length, so the stream stays in step: ignore.
                ChunkRef::Unknown { .. } => {}
            }
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
