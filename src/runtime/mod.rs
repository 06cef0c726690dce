//! The runtime: the only part of the crate that does I/O.
//!
//! An [`EventLoop`] owns a mio `Poll`, the listening sockets and the
//! connections (in a slab; the mio `Token` is the slab index), a `Waker` with a
//! command queue for other threads, and a [`Driver`]: the sans-IO protocol core
//! that decides what to say. The loop feeds the driver network events and time
//! (`on_*`), then drains its [`Action`]s and carries them out. The registrar
//! is one driver ([`registrar::RegistrarDriver`]); the PE/PU client library
//! ([`client::ClientDriver`]) is another.
//!
//! Transports: TCP with the TCP mapping shim (digest §10), and kernel SCTP
//! (`sctp`: one-to-one style sockets through libc, one SCTP user message per
//! ASAP/ENRP message with its PPID on stream 0, multi-homed listeners). Both
//! sit behind one enum in `conn`. Where the kernel has no SCTP
//! ([`probe_sctp`]), `sctp://` listeners fail with [`StartError::Unsupported`]
//! and [`Action::ConnectSctp`] with `on_connect_failed`.
//!
//! Acknowledgements (digest §10.4): by default the loop answers every DATA
//! chunk it hands to the driver with one ACK chunk, which is all ASAP and
//! ENRP need. A connection in manual-ack mode ([`Action::ManualAck`], or a
//! dynamic listener's choice) leaves that to the driver ([`Action::Ack`]),
//! so an application can acknowledge a message only once it is done with
//! it; ACK chunks received go to [`Driver::on_ack`]. With
//! [`RuntimeConfig::coalesce_acks`] the ACKs owed on a connection go out as
//! one chunk with the cumulative TSN when its output is next written (once
//! per loop turn) rather than one chunk each. SCTP has no ACK
//! chunks: there a message counts as acknowledged once the kernel accepted
//! it from the loop's send queue (`on_ack` with `None`), and `Action::Ack`
//! does nothing.
//!
//! Drivers may open listeners at run time ([`Action::Listen`], answered by
//! [`Driver::on_listen`]) besides the ones of [`RuntimeConfig::listen`].
//!
//! Threading: [`EventLoop::run`] blocks its thread. [`LoopHandle`] (Clone,
//! Send) posts commands to it from any thread and wakes it. The driver only ever
//! runs on the loop thread.

mod conn;
pub(crate) mod idmap;
mod reactor;
pub mod sctp;
mod slab;

pub mod blocking;
pub mod client;
pub mod registrar;
pub mod sys;
pub mod url;

use std::net::SocketAddr;
use std::time::Duration;

pub use reactor::{EventLoop, LoopHandle, LoopStats};
pub use registrar::{EnrpMulticast, RegistrarHandle, RegistrarOptions};
pub use sctp::{SctpClient, SctpParams};
pub use sys::{probe_sctp, MulticastInterface, SctpSupport, SignalPipe};
pub use url::{EndpointUrl, Proto};

use crate::time::Time;

/// A connection as the loop names it to its driver: slab index in the low 32
/// bits, the slot's generation in the high 32, so an id is never reused while
/// a driver might still hold it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

impl ConnId {
    /// The bit that marks ids a driver chose itself for the connections it
    /// opens with [`Action::Connect`]; ids of accepted connections never have it.
    pub const DRIVER_BIT: u64 = 1 << 63;

    /// The driver-chosen id number `n` (for [`Action::Connect`]).
    pub const fn driver(n: u64) -> ConnId {
        ConnId(n | Self::DRIVER_BIT)
    }

    /// True for ids a driver chose ([`ConnId::driver`]).
    pub const fn is_driver_chosen(self) -> bool {
        self.0 & Self::DRIVER_BIT != 0
    }

    pub(crate) fn new(index: usize, gen: u32) -> ConnId {
        ConnId((u64::from(gen) << 32) | index as u64)
    }
    pub(crate) fn index(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    pub(crate) fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
}

/// A listener the driver opened at run time with [`Action::Listen`], named by
/// the driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId(pub u64);

/// The answer to [`Action::Listen`]: the bound addresses (the kernel's port
/// when the URL said 0), or why the listener could not be opened.
pub type ListenResult = Result<Vec<(Proto, SocketAddr)>, String>;

/// What the driver learns about a new connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnMeta {
    /// The transport.
    pub proto: Proto,
    /// The peer's addresses (one for TCP).
    pub remote: Vec<SocketAddr>,
    /// Our address.
    pub local: SocketAddr,
    /// Which listener accepted it (its index in [`RuntimeConfig::listen`]);
    /// `usize::MAX` for a connection the driver opened or one accepted by a
    /// dynamic listener.
    pub listener: usize,
    /// The dynamic listener ([`Action::Listen`]) that accepted it.
    pub dynamic_listener: Option<ListenerId>,
}

/// The DATA header fields of one received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataInfo {
    /// The payload protocol identifier (0 when the peer's INIT omits it).
    pub ppid: u32,
    /// The stream identifier (0 when the peer's INIT omits it).
    pub stream: u16,
    /// Sent unordered (TCP mapping DATA flag U, SCTP_UNORDERED).
    pub unordered: bool,
}

/// Something the driver wants the loop to do.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Send one whole message with this PPID.
    Send {
        /// The connection.
        conn: ConnId,
        /// The payload protocol identifier (11 ASAP, 12 ENRP).
        ppid: u32,
        /// The message.
        msg: Vec<u8>,
    },
    /// Flush what is queued, then close; `on_closed` follows.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why (logged).
        reason: String,
    },
    /// Open a TCP (TCP mapping) connection to `addr` under the id `conn`, which
    /// the driver chose with [`ConnId::driver`]. The loop answers with
    /// [`Driver::on_connected`] or [`Driver::on_connect_failed`] (also after
    /// [`RuntimeConfig::connect_timeout`], or when `conn` is not a free
    /// driver-chosen id). [`Action::Close`] on a connection still connecting
    /// gives `on_connect_failed`.
    Connect {
        /// The id the driver will know the connection by.
        conn: ConnId,
        /// Where to connect.
        addr: SocketAddr,
    },
    /// Like [`Action::Connect`], over kernel SCTP: one association to the peer
    /// reachable at any of `addrs` (all addresses of one multi-homed peer,
    /// sctp_connectx). [`ConnMeta::remote`] then lists every address of the
    /// association. Fails (`on_connect_failed`) where the kernel has no SCTP.
    ConnectSctp {
        /// The id the driver will know the connection by.
        conn: ConnId,
        /// The peer's addresses, all with the same port.
        addrs: Vec<SocketAddr>,
        /// Local addresses (all with one port) to open the association
        /// from; empty: any, with an ephemeral port. An ENRP server dials its
        /// peers from its ENRP endpoint, because RSPLIB ignores a presence
        /// whose Server Information names another port than the
        /// association's. If the bind fails the association is opened
        /// unbound.
        local: Vec<SocketAddr>,
    },
    /// Send this message to the configured announce group (dropped if none).
    Announce {
        /// The message (an ASAP_SERVER_ANNOUNCE).
        msg: Vec<u8>,
    },
    /// Send one whole message with its DATA header fields chosen: stream
    /// identifier and unordered flag (TCP mapping DATA chunk, or SCTP
    /// `snd_sid`/`SCTP_UNORDERED`). On a TCP mapping connection every DATA
    /// chunk, whichever action queued it, takes the next TSN: 0, 1, 2, ...
    SendData {
        /// The connection.
        conn: ConnId,
        /// The payload protocol identifier.
        ppid: u32,
        /// The stream identifier (SCTP: must be below the association's
        /// outbound stream count, else the send fails and the connection
        /// closes).
        stream: u16,
        /// Unordered delivery.
        unordered: bool,
        /// The message.
        msg: Vec<u8>,
    },
    /// Several messages for one connection, packed: each goes out as with
    /// [`Action::SendData`], in order. The payloads lie back to back in
    /// `bytes`; `msgs` gives each one's header fields and length (their sum
    /// must be `bytes.len()`; a batch that does not add up is dropped). One
    /// buffer per batch instead of one per message.
    SendBatch {
        /// The connection.
        conn: ConnId,
        /// Each message's header fields and length, in order.
        msgs: Vec<(DataInfo, usize)>,
        /// The payloads.
        bytes: Vec<u8>,
    },
    /// Switch the connection to manual acknowledgement (`true`): the loop no
    /// longer sends a TCP mapping ACK chunk for each DATA chunk it delivers;
    /// the driver sends them with [`Action::Ack`]. `false` returns to
    /// automatic ACKs. Applies to chunks delivered from then on; a no-op on
    /// SCTP, which has no ACK chunks. Connections accepted by a dynamic
    /// listener start in the mode its [`Action::Listen`] chose.
    ManualAck {
        /// The connection.
        conn: ConnId,
        /// Manual (true) or automatic (false).
        on: bool,
    },
    /// In manual-ack mode: one ACK chunk for the oldest delivered and not yet
    /// acknowledged DATA chunk (with its TSN as the Cumulative TSN Ack, unless
    /// the peer's INIT asked for none). Ignored when nothing is outstanding,
    /// in automatic mode, and on SCTP.
    Ack {
        /// The connection.
        conn: ConnId,
    },
    /// Stop reading from the connection (flow control: the driver's
    /// consumer holds too much): received bytes stay in the kernel, so the
    /// peer's sends stall once the socket buffers fill. While paused the
    /// loop neither sends TCP mapping heartbeats on it nor gives up on the
    /// peer for missing answers (which it could not read). Until
    /// [`Action::ResumeRead`]; a no-op on an unknown connection.
    PauseRead {
        /// The connection.
        conn: ConnId,
    },
    /// Read from a connection paused by [`Action::PauseRead`] again.
    ResumeRead {
        /// The connection.
        conn: ConnId,
    },
    /// Open a listener at run time; the loop answers with
    /// [`Driver::on_listen`] (the bound addresses, the kernel's port when the
    /// URL says 0, or the error). Connections it accepts carry
    /// [`ConnMeta::dynamic_listener`] and start in manual-ack mode if
    /// `manual_ack`.
    Listen {
        /// The name the driver gives it (must not be in use).
        id: ListenerId,
        /// Where (`tcp://` with the TCP mapping, or `sctp://`).
        url: EndpointUrl,
        /// Accepted connections start in manual-ack mode.
        manual_ack: bool,
    },
    /// Close a dynamic listener (its accepted connections stay open).
    Unlisten {
        /// The listener.
        id: ListenerId,
    },
}

/// The protocol core plugged into an [`EventLoop`]. Every method runs on the
/// loop thread; none may block. After each `on_*` call the loop drains
/// [`Driver::poll_action`] until `None`.
pub trait Driver: Send + 'static {
    /// A new connection (accepted).
    fn on_connected(&mut self, conn: ConnId, meta: &ConnMeta, now: Time);
    /// One whole message arrived on `conn`.
    fn on_message(&mut self, conn: ConnId, ppid: u32, msg: &[u8], now: Time);
    /// One whole message arrived on `conn`, with its DATA header fields. The
    /// loop calls this for every message; the default hands it to
    /// [`Driver::on_message`].
    fn on_data(&mut self, conn: ConnId, info: DataInfo, msg: &[u8], now: Time) {
        self.on_message(conn, info.ppid, msg, now);
    }
    /// The peer acknowledged delivery on `conn`. TCP mapping: one call per ACK
    /// chunk received, with its Cumulative TSN Ack if it carried one. SCTP,
    /// which has no ACK chunks: one call with `None` per message the kernel
    /// accepted from the loop's send queue (the best SCTP can say: the
    /// message is the kernel's now). Default: ignored.
    fn on_ack(&mut self, conn: ConnId, cum_tsn: Option<u32>, now: Time) {
        let _ = (conn, cum_tsn, now);
    }
    /// The answer to [`Action::Listen`]: the bound addresses, or why not.
    /// Default: ignored.
    fn on_listen(&mut self, id: ListenerId, result: ListenResult, now: Time) {
        let _ = (id, result, now);
    }
    /// `conn` is gone (peer closed, error, timeout, or after [`Action::Close`]).
    /// Called exactly once per connection that got `on_connected`.
    fn on_closed(&mut self, conn: ConnId, now: Time);
    /// A connection asked for with [`Action::Connect`] could not be opened.
    /// Called exactly once per such connection that never got `on_connected`.
    fn on_connect_failed(&mut self, conn: ConnId, now: Time) {
        let _ = (conn, now);
    }
    /// The deadline from [`Driver::poll_timeout`] has passed (possibly long ago).
    fn on_timeout(&mut self, now: Time);
    /// The next time `on_timeout` should be called.
    fn poll_timeout(&self) -> Option<Time>;
    /// The next thing to do, if any.
    fn poll_action(&mut self) -> Option<Action>;
}

/// One endpoint to listen on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    /// Where.
    pub url: EndpointUrl,
}

/// Limits and timers of the I/O layer (the protocol's own are the driver's).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Endpoints to listen on.
    pub listen: Vec<EndpointUrl>,
    /// TCP mapping: send a HEARTBEAT after this long without receiving anything.
    pub heartbeat_interval: Duration,
    /// TCP mapping: close after this many HEARTBEATs in a row go unanswered.
    pub heartbeat_max_missed: u32,
    /// Bytes of unsent output per connection beyond which it is closed.
    pub max_write_buffer: usize,
    /// Bound of the per-connection receive buffer (at least 65536 lets every
    /// legal chunk through).
    pub max_read_buffer: usize,
    /// Bytes read from one connection per wakeup before others get a turn.
    pub read_budget: usize,
    /// Connections beyond this are refused (accepted and closed at once).
    pub max_connections: usize,
    /// Multicast group (and port) for [`Action::Announce`]; `None` = never send.
    pub announce: Option<SocketAddr>,
    /// IP TTL / hop limit of announce datagrams.
    pub announce_ttl: u32,
    /// How long an [`Action::Connect`] may take before it fails.
    pub connect_timeout: Duration,
    /// Kernel SCTP association parameters (heartbeat, RTO) for every SCTP
    /// socket the loop opens or accepts.
    pub sctp: SctpParams,
    /// TCP mapping: send the ACKs owed on a connection as one ACK chunk
    /// carrying the cumulative TSN when its output is next written (once per
    /// loop turn), instead of one ACK chunk per DATA chunk (digest §10.4's
    /// letter). A cumulative TSN acknowledges every chunk up to it, so a
    /// peer that keeps copies until acknowledged (our sessions) loses
    /// nothing; an ACK never goes out earlier than it would have. Where the
    /// peer's INIT asked for ACKs without TSN, one chunk per DATA chunk is
    /// still sent. Off by default; the API's contexts turn it on.
    pub coalesce_acks: bool,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        RuntimeConfig {
            listen: Vec::new(),
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_max_missed: 3,
            max_write_buffer: 4 << 20,
            max_read_buffer: crate::wire::tcpmap::DEFAULT_MAX_BUFFERED,
            read_budget: 256 << 10,
            max_connections: 16384,
            announce: None,
            announce_ttl: 1,
            connect_timeout: Duration::from_secs(10),
            sctp: SctpParams::default(),
            coalesce_acks: false,
        }
    }
}

/// Why the loop could not start.
#[derive(Debug)]
pub enum StartError {
    /// Binding or registering a socket failed.
    Io {
        /// What we were doing.
        what: String,
        /// The OS error.
        err: std::io::Error,
    },
    /// A configured transport is not available (kernel SCTP).
    Unsupported(String),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Io { what, err } => write!(f, "{what}: {err}"),
            StartError::Unsupported(s) => f.write_str(s),
        }
    }
}

impl std::error::Error for StartError {}

#[cfg(test)]
mod tests;
