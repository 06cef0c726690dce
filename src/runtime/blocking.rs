//! A small blocking TCP-mapping client: connect with a timeout, exchange INITs,
//! send and receive whole messages. For the command-line tools, tests and
//! benchmarks; applications use the event loop instead.
//!
//! Received DATA chunks are acknowledged (one ACK each, digest §10.4) and
//! HEARTBEATs answered; those replies are batched and written before the
//! client next blocks or sends, so a pipelining caller pays no extra syscalls.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use crate::wire::tcpmap::ppid;
use crate::wire::tcpmap::{self, Chunk, ChunkDecoder, ChunkRef, DataHeader, InitFlags};
use crate::wire::{AsapMessage, EnrpMessage};

/// Receive with `recv` until a message with PPID `want` arrives (others are
/// skipped), then decode it with `decode`; the whole wait is bounded by
/// `timeout`. Undecodable messages are an `InvalidData` error. Shared by the
/// TCP-mapping and the SCTP blocking clients.
pub(crate) fn recv_decoded<T, E: std::fmt::Display>(
    timeout: Duration,
    want: u32,
    mut recv: impl FnMut(Duration) -> io::Result<(u32, Vec<u8>)>,
    decode: impl Fn(&[u8]) -> Result<T, E>,
) -> io::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let (p, m) = recv(deadline.saturating_duration_since(Instant::now()))?;
        if p == want {
            return decode(&m)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
        }
    }
}

/// A blocking TCP connection speaking the TCP mapping.
#[derive(Debug)]
pub struct TcpMapClient {
    stream: TcpStream,
    dec: ChunkDecoder,
    out: Vec<u8>,
    my_flags: InitFlags,
    tsn: u32,
    ssn: u16,
    answer_heartbeats: bool,
    acks_received: u64,
}

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}"))
}

impl TcpMapClient {
    /// Connect to `addr` within `timeout`, with TCP_NODELAY, and send our INIT
    /// (flags 0: full DATA headers).
    pub fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpMapClient> {
        Self::connect_with_flags(addr, timeout, InitFlags::NONE)
    }

    /// Connect to the first address `host:port` resolves to.
    pub fn connect_to(addr: impl ToSocketAddrs, timeout: Duration) -> io::Result<TcpMapClient> {
        let a = addr
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address"))?;
        Self::connect(a, timeout)
    }

    /// Connect and send an INIT with the given flags (T/S/P: which DATA header
    /// words we leave out).
    pub fn connect_with_flags(
        addr: SocketAddr,
        timeout: Duration,
        flags: InitFlags,
    ) -> io::Result<TcpMapClient> {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_nodelay(true)?;
        let mut c = TcpMapClient {
            stream,
            dec: ChunkDecoder::new(tcpmap::DEFAULT_MAX_BUFFERED),
            out: Vec::with_capacity(4096),
            my_flags: flags,
            tsn: 0,
            ssn: 0,
            answer_heartbeats: true,
            acks_received: 0,
        };
        Chunk::Init { flags }
            .encode(&mut c.out)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        c.flush()?;
        Ok(c)
    }

    /// Stop (or resume) answering HEARTBEATs, to test the peer's dead-peer detection.
    pub fn set_answer_heartbeats(&mut self, on: bool) {
        self.answer_heartbeats = on;
    }

    /// ACK chunks received so far (one per DATA chunk the peer delivered).
    pub fn acks_received(&self) -> u64 {
        self.acks_received
    }

    /// The flags of the peer's INIT, once received.
    pub fn peer_init(&self) -> Option<InitFlags> {
        self.dec.peer_init()
    }

    /// Our local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.stream.local_addr()
    }

    /// The underlying socket (e.g. to shut it down).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Queue one message as a DATA chunk without writing it yet.
    pub fn queue(&mut self, ppid: u32, msg: &[u8]) -> io::Result<()> {
        let hdr = DataHeader {
            unordered: false,
            tsn: self.tsn,
            stream: 0,
            ssn: self.ssn,
            ppid,
        };
        tcpmap::encode_data(&mut self.out, self.my_flags, &hdr, msg)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?;
        self.tsn = self.tsn.wrapping_add(1);
        self.ssn = self.ssn.wrapping_add(1);
        Ok(())
    }

    /// Queue raw bytes (anything: used to send malformed chunks in tests).
    pub fn queue_raw(&mut self, bytes: &[u8]) {
        self.out.extend_from_slice(bytes);
    }

    /// Write everything queued.
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Send one message now.
    pub fn send(&mut self, ppid: u32, msg: &[u8]) -> io::Result<()> {
        self.queue(ppid, msg)?;
        self.flush()
    }

    /// Send an ASAP message (PPID 11).
    pub fn send_asap(&mut self, msg: &AsapMessage) -> io::Result<()> {
        self.send(ppid::ASAP, &msg.to_bytes())
    }

    /// Send an ENRP message (PPID 12).
    pub fn send_enrp(&mut self, msg: &EnrpMessage) -> io::Result<()> {
        self.send(ppid::ENRP, &msg.to_bytes())
    }

    /// The next message (PPID, bytes), waiting at most `timeout`. INIT, ACK and
    /// HEARTBEAT chunks are handled on the way. Errors: `TimedOut`,
    /// `UnexpectedEof` (peer closed), `InvalidData` (framing error).
    pub fn recv(&mut self, timeout: Duration) -> io::Result<(u32, Vec<u8>)> {
        self.recv_with(timeout, |p, m| (p, m.to_vec()))
    }

    /// Like [`recv`](Self::recv) but hands the message to `f` as a borrowed
    /// slice: no allocation per message (benchmarks, high-rate clients).
    pub fn recv_with<R>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(u32, &[u8]) -> R,
    ) -> io::Result<R> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.try_recv_with(&mut f)? {
                return Ok(r);
            }
            self.flush()?;
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out("waiting for a message"));
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.stream.read(self.dec.spare()) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection",
                    ))
                }
                Ok(n) => self.dec.commit(n),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Err(timed_out("waiting for a message"))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Wait until the socket has bytes to read (true) or `timeout` passes
    /// (false), with sub-millisecond precision (ppoll), unlike a read timeout,
    /// which the kernel rounds to its tick. Buffered messages are not looked at:
    /// drain [`try_recv_with`](Self::try_recv_with) first. Owed ACKs are
    /// written first.
    pub fn wait_readable(&mut self, timeout: Duration) -> io::Result<bool> {
        use std::os::fd::AsRawFd;
        self.flush()?;
        let mut p = libc::pollfd {
            fd: self.stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
        };
        loop {
            // SAFETY: ppoll(2) on one pollfd and one timespec, both live for the
            // call; a null signal mask pointer means "don't change the mask".
            let rc = unsafe { libc::ppoll(&mut p, 1, &ts, std::ptr::null()) };
            if rc >= 0 {
                return Ok(rc > 0);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Read once from the socket into the receive buffer: for use after
    /// [`wait_readable`](Self::wait_readable) returned true, then drain
    /// [`try_recv_with`](Self::try_recv_with). Returns the bytes read (0 if
    /// nothing was there after all); the peer closing is `UnexpectedEof`.
    pub fn fill(&mut self) -> io::Result<usize> {
        loop {
            match self.stream.read(self.dec.spare()) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the connection",
                    ))
                }
                Ok(n) => {
                    self.dec.commit(n);
                    return Ok(n);
                }
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return Ok(0)
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The next message if one is already buffered (never blocks, never reads
    /// the socket), handed to `f` as a borrowed slice.
    pub fn try_recv_with<R>(
        &mut self,
        mut f: impl FnMut(u32, &[u8]) -> R,
    ) -> io::Result<Option<R>> {
        loop {
            let chunk = self
                .dec
                .next_chunk()
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            match chunk {
                None => return Ok(None),
                Some(ChunkRef::Data(d)) => {
                    let tsn = d.tsn;
                    let r = f(d.ppid.unwrap_or(0), d.payload);
                    let omit = self.dec.peer_init().is_some_and(|fl| fl.no_tsn());
                    let _ = Chunk::Ack {
                        cum_tsn: if omit { None } else { tsn },
                    }
                    .encode(&mut self.out);
                    return Ok(Some(r));
                }
                Some(ChunkRef::Heartbeat { info }) => {
                    if self.answer_heartbeats {
                        let _ = Chunk::HeartbeatAck {
                            info: info.to_vec(),
                        }
                        .encode(&mut self.out);
                    }
                }
                Some(ChunkRef::Ack { .. }) => self.acks_received += 1,
                Some(_) => {}
            }
        }
    }

    /// The next ASAP message (PPID 11), skipping messages of other PPIDs.
    /// Undecodable ASAP messages are an `InvalidData` error.
    pub fn recv_asap(&mut self, timeout: Duration) -> io::Result<AsapMessage> {
        recv_decoded(
            timeout,
            ppid::ASAP,
            |t| self.recv(t),
            |m| AsapMessage::decode(m).map(|d| d.msg),
        )
    }

    /// The next ENRP message (PPID 12), skipping others.
    pub fn recv_enrp(&mut self, timeout: Duration) -> io::Result<EnrpMessage> {
        recv_decoded(
            timeout,
            ppid::ENRP,
            |t| self.recv(t),
            |m| EnrpMessage::decode(m).map(|d| d.msg),
        )
    }

    /// Send an ASAP request and wait for the next ASAP message.
    pub fn request_asap(
        &mut self,
        msg: &AsapMessage,
        timeout: Duration,
    ) -> io::Result<AsapMessage> {
        self.send_asap(msg)?;
        self.recv_asap(timeout)
    }

    /// Wait until the peer closes the connection (`Ok`), or `timeout` passes.
    /// Anything received meanwhile is discarded.
    pub fn wait_closed(&mut self, timeout: Duration) -> io::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.recv(left) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::TimedOut => return Err(e),
                Err(_) => return Ok(()),
            }
        }
    }
}

/// A blocking ASAP/ENRP client over either transport, chosen by URL:
/// `tcp://` (TCP mapping) or `sctp://` (kernel SCTP, all hosts of the URL as
/// one multi-homed peer).
#[derive(Debug)]
pub enum Client {
    /// TCP mapping.
    Tcp(TcpMapClient),
    /// Kernel SCTP.
    Sctp(super::sctp::SctpClient),
}

impl Client {
    /// Connect to `url` within `timeout`.
    pub fn connect_url(url: &super::EndpointUrl, timeout: Duration) -> io::Result<Client> {
        match url.proto {
            super::Proto::Tcp => TcpMapClient::connect(url.first(), timeout).map(Client::Tcp),
            super::Proto::Sctp => {
                super::sctp::SctpClient::connect(&url.socket_addrs(), timeout).map(Client::Sctp)
            }
        }
    }

    /// Send one message with `ppid`.
    pub fn send(&mut self, ppid: u32, msg: &[u8]) -> io::Result<()> {
        match self {
            Client::Tcp(c) => c.send(ppid, msg),
            Client::Sctp(c) => c.send(ppid, msg),
        }
    }

    /// The next message (PPID, bytes), waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<(u32, Vec<u8>)> {
        match self {
            Client::Tcp(c) => c.recv(timeout),
            Client::Sctp(c) => c.recv(timeout),
        }
    }

    /// Send an ASAP message (PPID 11).
    pub fn send_asap(&mut self, msg: &AsapMessage) -> io::Result<()> {
        self.send(ppid::ASAP, &msg.to_bytes())
    }

    /// Send an ENRP message (PPID 12).
    pub fn send_enrp(&mut self, msg: &EnrpMessage) -> io::Result<()> {
        self.send(ppid::ENRP, &msg.to_bytes())
    }

    /// The next ASAP message, skipping other PPIDs.
    pub fn recv_asap(&mut self, timeout: Duration) -> io::Result<AsapMessage> {
        match self {
            Client::Tcp(c) => c.recv_asap(timeout),
            Client::Sctp(c) => c.recv_asap(timeout),
        }
    }

    /// The next ENRP message, skipping other PPIDs.
    pub fn recv_enrp(&mut self, timeout: Duration) -> io::Result<EnrpMessage> {
        match self {
            Client::Tcp(c) => c.recv_enrp(timeout),
            Client::Sctp(c) => c.recv_enrp(timeout),
        }
    }

    /// Send an ASAP request and wait for the next ASAP message.
    pub fn request_asap(
        &mut self,
        msg: &AsapMessage,
        timeout: Duration,
    ) -> io::Result<AsapMessage> {
        self.send_asap(msg)?;
        self.recv_asap(timeout)
    }
}
