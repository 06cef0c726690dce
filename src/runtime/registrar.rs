//! The registrar as a [`Driver`], and [`RegistrarHandle`]: a registrar running
//! on its own thread inside any process.
//!
//! ```no_run
//! use rserpool::runtime::{EndpointUrl, RegistrarHandle, RegistrarOptions};
//! let mut opts = RegistrarOptions::default();
//! opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
//! let reg = RegistrarHandle::start(opts).unwrap();
//! println!("listening on {:?}", reg.local_addrs());
//! reg.stop().unwrap();
//! ```
//!
//! ENRP: [`RegistrarOptions::enrp`] adds ENRP listeners and
//! [`RegistrarConfig::peers`] names the mentor and peers to dial; the driver
//! carries the core's [`Output::Connect`] out as [`Action::Connect`] and
//! reports failures back with `handle_connect_failed`.
//!
//! ENRP presence multicast ([`RegistrarOptions::enrp_multicast`], off by
//! default): the driver owns a UDP socket that sends the core's
//! [`Output::EnrpMulticast`] datagrams to the group (TTL 1 unless told
//! otherwise, out of the configured interface), and a thread named
//! `rserpool-enrp-mcast` receives the group's datagrams on a second socket
//! and hands each to the core on the loop thread
//! ([`RegistrarDriver::on_multicast`]). The event loop itself is unchanged.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::sys::{multicast_receiver, multicast_sender, MulticastInterface};
use super::{
    Action, ConnId, ConnMeta, Driver, EndpointUrl, EventLoop, LoopHandle, Proto, RuntimeConfig,
    StartError,
};
use crate::registrar::RegistrarStats;
use crate::registrar::{self as core, ConnInfo, ConnKind, Output, Registrar, RegistrarConfig};
use crate::time::Time;
use crate::wire::{transport_use, PoolElement, PoolHandle, Transport};

/// ENRP message type of the implementation-private status request (sent with
/// PPID 12 by `rserpool dump`): header only, any flags, length 4. Far above
/// the IANA-assigned ENRP types (0x01-0x0a); the driver answers it itself, the
/// protocol core never sees it. A registrar that does not know it ignores it
/// or answers with an ENRP_ERROR.
pub const STATUS_REQUEST: u8 = 0xf0;
/// Type of the answer to [`STATUS_REQUEST`]: a 4-byte ENRP-style header
/// (type, flags 0, length) followed by a UTF-8 JSON object, see
/// [`RegistrarDriver::status_json`].
pub const STATUS_RESPONSE: u8 = 0xf1;

/// The sans-IO [`Registrar`] plugged into the event loop.
#[derive(Debug)]
pub struct RegistrarDriver {
    reg: Registrar,
    /// The latest time the loop gave us (for connects that fail at once).
    now: Time,
    /// Answers to status requests, sent before the core's output.
    status_out: Vec<(ConnId, Vec<u8>)>,
    /// Where the core's [`Output::EnrpMulticast`] datagrams go.
    multicast: Option<MulticastOut>,
}

/// The sending side of ENRP presence multicast.
#[derive(Debug)]
struct MulticastOut {
    sock: UdpSocket,
    group: SocketAddr,
    sent: u64,
    errors: u64,
}

impl RegistrarDriver {
    /// Wrap a registrar.
    pub fn new(reg: Registrar) -> Self {
        RegistrarDriver {
            reg,
            now: Time::ZERO,
            status_out: Vec::new(),
            multicast: None,
        }
    }

    /// Send the core's [`Output::EnrpMulticast`] datagrams to `group` on
    /// `sock` (non-blocking; see [`multicast_sender`]). Without this they
    /// are dropped.
    pub fn with_multicast(mut self, sock: UdpSocket, group: SocketAddr) -> Self {
        self.multicast = Some(MulticastOut {
            sock,
            group,
            sent: 0,
            errors: 0,
        });
        self
    }

    /// A datagram received from the ENRP multicast group (from any thread,
    /// through [`LoopHandle::call`]).
    pub fn on_multicast(&mut self, from: SocketAddr, msg: &[u8], now: Time) {
        self.now = self.now.max(now);
        self.reg.handle_multicast(msg, from, now);
    }

    fn send_multicast(&mut self, msg: &[u8]) {
        let Some(m) = self.multicast.as_mut() else {
            return;
        };
        match m.sock.send_to(msg, m.group) {
            Ok(_) => m.sent += 1,
            Err(e) => {
                // Said once: a missing route repeats every heartbeat cycle.
                if m.errors == 0 {
                    eprintln!("rserpool: ENRP multicast to {}: {e}", m.group);
                }
                m.errors += 1;
            }
        }
    }

    /// The registrar's ENRP view as JSON: `{"server_id", "checksum", "pes",
    /// "startup", "peers": [{"id", "address", "state", "checksum",
    /// "checksum_announced", "pes", "last_heard_ms_ago", "taken_over_by", "connected"}],
    /// "enrp_stats": {...}, "multicast": null | {"group", "datagrams_sent",
    /// "send_errors"}}`.
    /// `checksum` of a peer is the one we compute over the PEs we believe it
    /// owns; `checksum_announced` the one its last presence carried.
    pub fn status_json(&self) -> serde_json::Value {
        let now = self.now;
        let e = self.reg.enrp_stats();
        let peers: Vec<serde_json::Value> = self
            .reg
            .peers()
            .iter()
            .map(|p| {
                serde_json::json!({
                    "id": p.id,
                    "id_hex": format!("0x{:08x}", p.id),
                    "address": p.addr.map(|a| a.to_string()),
                    "state": p.state.name(),
                    "checksum": p.checksum_held,
                    "checksum_announced": p.checksum_announced,
                    "pes": p.pes,
                    "last_heard_ms_ago": p.last_heard.map(|t| now.saturating_since(t).as_millis() as u64),
                    "taken_over_by": p.taken_over_by,
                    "connected": p.conn.is_some(),
                })
            })
            .collect();
        serde_json::json!({
            "server_id": self.reg.server_id(),
            "server_id_hex": format!("0x{:08x}", self.reg.server_id()),
            "checksum": self.reg.own_checksum(),
            "pes": self.reg.pe_count(),
            "startup": format!("{:?}", self.reg.startup_state()),
            "peers": peers,
            "enrp_stats": {
                "updates_sent": e.updates_sent,
                "updates_received": e.updates_received,
                "unsendable": e.unsendable,
                "table_requests_sent": e.table_requests_sent,
                "resyncs": e.resyncs,
                "resyncs_aborted": e.resyncs_aborted,
                "swept": e.swept,
                "peers_dead": e.peers_dead,
                "takeovers_won": e.takeovers_won,
                "pes_taken_over": e.pes_taken_over,
                "multicast_sent": e.multicast_sent,
                "multicast_received": e.multicast_received,
                "multicast_malformed": e.multicast_malformed,
                "multicast_ignored": e.multicast_ignored,
                "multicast_rate_limited": e.multicast_rate_limited,
                "peers_discovered": e.peers_discovered,
            },
            "multicast": self.multicast.as_ref().map(|m| serde_json::json!({
                "group": m.group.to_string(),
                "datagrams_sent": m.sent,
                "send_errors": m.errors,
            })),
        })
    }

    fn status_message(&self) -> Vec<u8> {
        let mut body = self.status_json().to_string().into_bytes();
        let max = usize::from(u16::MAX) - 4;
        if body.len() > max {
            // Too many peers for one message: say so instead of cutting JSON.
            body = br#"{"error":"status too large for one message"}"#.to_vec();
        }
        let len = (body.len() + 4) as u16;
        let mut msg = vec![STATUS_RESPONSE, 0];
        msg.extend_from_slice(&len.to_be_bytes());
        msg.extend_from_slice(&body);
        msg
    }

    /// The registrar.
    pub fn registrar(&self) -> &Registrar {
        &self.reg
    }
}

fn to_core(c: ConnId) -> core::ConnId {
    core::ConnId(c.0)
}

impl Driver for RegistrarDriver {
    fn on_connected(&mut self, conn: ConnId, meta: &ConnMeta, now: Time) {
        self.now = self.now.max(now);
        let info = ConnInfo {
            kind: match meta.proto {
                Proto::Tcp => ConnKind::Tcp,
                Proto::Sctp => ConnKind::Sctp,
            },
            remote: meta.remote.clone(),
            local: meta.local,
        };
        self.reg.handle_connected(to_core(conn), info, now);
    }

    fn on_message(&mut self, conn: ConnId, ppid: u32, msg: &[u8], now: Time) {
        self.now = self.now.max(now);
        if ppid == core::PPID_ENRP && msg.first() == Some(&STATUS_REQUEST) {
            let answer = self.status_message();
            self.status_out.push((conn, answer));
            return;
        }
        self.reg.handle_message(to_core(conn), ppid, msg, now);
    }

    fn on_closed(&mut self, conn: ConnId, now: Time) {
        self.now = self.now.max(now);
        self.reg.handle_closed(to_core(conn), now);
    }

    fn on_connect_failed(&mut self, conn: ConnId, now: Time) {
        self.now = self.now.max(now);
        self.reg.handle_connect_failed(to_core(conn), now);
    }

    fn on_timeout(&mut self, now: Time) {
        self.now = self.now.max(now);
        self.reg.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.reg.poll_timeout()
    }

    fn poll_action(&mut self) -> Option<Action> {
        if let Some((conn, msg)) = self.status_out.pop() {
            return Some(Action::Send {
                conn,
                ppid: core::PPID_ENRP,
                msg,
            });
        }
        loop {
            let out = self.reg.poll_output()?;
            if let Some(a) = self.action_of(out) {
                return Some(a);
            }
        }
    }
}

impl RegistrarDriver {
    /// The loop's action for an output; `None` for what the driver does
    /// itself (multicast on its own socket: nothing to wait for).
    fn action_of(&mut self, out: Output) -> Option<Action> {
        Some(match out {
            Output::Send { conn, ppid, msg } => Action::Send {
                conn: ConnId(conn.0),
                ppid,
                msg,
            },
            Output::Close { conn, reason } => Action::Close {
                conn: ConnId(conn.0),
                reason,
            },
            Output::Announce { msg } => Action::Announce { msg },
            Output::EnrpMulticast { msg } => {
                self.send_multicast(&msg);
                return None;
            }
            // ENRP peers and H=1 keep-alives to taken-over SCTP PEs: the core
            // names the connection (bit 63 set, as `ConnId::driver` does).
            Output::Connect {
                conn,
                addr,
                kind: ConnKind::Tcp,
                ..
            } => Action::Connect {
                conn: ConnId(conn.0),
                addr,
            },
            Output::Connect {
                conn,
                addr,
                kind: ConnKind::Sctp,
                local,
            } => Action::ConnectSctp {
                conn: ConnId(conn.0),
                addrs: vec![addr],
                local,
            },
        })
    }
}

/// Everything needed to start a registrar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistrarOptions {
    /// The protocol core's timers and limits.
    pub registrar: RegistrarConfig,
    /// Listening endpoints (ASAP), TCP mapping timers, buffer bounds, announce group.
    pub runtime: RuntimeConfig,
    /// ENRP endpoints to listen on for peer registrars (TCP mapping, PPID 12;
    /// or kernel SCTP with PPID 12). Bound after the ASAP ones. The first one
    /// fills [`RegistrarConfig::enrp_transport`] when that is unset. Empty: no
    /// dedicated ENRP listener (peers can still reach us on an ASAP endpoint,
    /// the core tells the protocols apart by PPID; and we still dial the
    /// configured [`RegistrarConfig::peers`]; Server Information then names
    /// the first ASAP endpoint).
    pub enrp: Vec<EndpointUrl>,
    /// ENRP presence multicast: `None` (default) sends and hears nothing.
    pub enrp_multicast: Option<EnrpMulticast>,
    /// The server identifier; `None` = random, non-zero.
    pub server_id: Option<u32>,
    /// Seed of the registrar's PRNG; `None` = random.
    pub rng_seed: Option<u64>,
}

/// Where and how ENRP presences are multicast ([`RegistrarOptions::enrp_multicast`]).
///
/// No group is assigned for ENRP (digest §1); RSPLIB uses 239.0.0.51:9901
/// ([`EnrpMulticast::RSPLIB_GROUP`]). Our presences name our first ENRP
/// endpoint as Server Information, so peers dial us there (a TCP endpoint
/// means the TCP mapping: only registrars of this project follow it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrpMulticast {
    /// The group and UDP port.
    pub group: SocketAddr,
    /// The interface to send out of and join on; `None`: the kernel's choice
    /// (the route to the group).
    pub interface: Option<MulticastInterface>,
    /// IP TTL / hop limit of the datagrams. 1 keeps them on the link.
    pub ttl: u32,
}

impl EnrpMulticast {
    /// RSPLIB's ENRP presence group (`ENRP_ANNOUNCE_MULTICAST_ADDRESS`).
    pub const RSPLIB_GROUP: &'static str = "239.0.0.51:9901";

    /// `group` on the kernel's interface, TTL 1.
    pub fn new(group: SocketAddr) -> Self {
        EnrpMulticast {
            group,
            interface: None,
            ttl: 1,
        }
    }
}

/// A thread handing the datagrams of the ENRP multicast group to the
/// registrar's loop, until `stop` is set or the loop is gone.
#[derive(Debug)]
struct MulticastListener {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl MulticastListener {
    fn start(sock: UdpSocket, handle: LoopHandle<RegistrarDriver>) -> io::Result<Self> {
        // The stop flag is checked between waits.
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("rserpool-enrp-mcast".into())
            .spawn(move || {
                let mut buf = vec![0u8; 65536];
                while !flag.load(Ordering::Relaxed) {
                    let Ok((n, from)) = sock.recv_from(&mut buf) else {
                        continue;
                    };
                    let msg = buf[..n].to_vec();
                    if !handle.call(move |d, now| d.on_multicast(from, &msg, now)) {
                        return; // the loop is gone
                    }
                }
            })?;
        Ok(MulticastListener { stop, thread })
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

/// 64 bits from the standard library's per-process random hasher keys, the
/// clock and the pid: enough for identifiers and seeds (not for secrets).
pub fn random_u64() -> u64 {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    h.finish()
}

/// A random non-zero server identifier.
pub fn random_server_id() -> u32 {
    loop {
        let v = random_u64() as u32;
        if v != 0 {
            return v;
        }
    }
}

/// The transports to put in server announces: every TCP listener bound to a
/// specific address, and every SCTP listener's specific addresses (one SCTP
/// transport per port, all its addresses). Wildcard listeners are left to the
/// packet source.
fn announce_transports(addrs: &[(Proto, SocketAddr)]) -> Vec<Transport> {
    let mut out: Vec<Transport> = Vec::new();
    for &(p, a) in addrs {
        if a.ip().is_unspecified() {
            continue;
        }
        match p {
            Proto::Tcp => out.push(Transport::Tcp {
                port: a.port(),
                transport_use: transport_use::DATA_ONLY,
                addr: a.ip(),
            }),
            Proto::Sctp => {
                let same_port = out.iter_mut().find_map(|t| match t {
                    Transport::Sctp { port, addrs, .. } if *port == a.port() => Some(addrs),
                    _ => None,
                });
                match same_port {
                    Some(v) => v.push(a.ip()),
                    None => out.push(Transport::Sctp {
                        port: a.port(),
                        transport_use: transport_use::DATA_ONLY,
                        addrs: vec![a.ip()],
                    }),
                }
            }
        }
    }
    out
}

/// The listening addresses as URLs: a multi-homed SCTP listener (consecutive
/// SCTP addresses with one port, as the loop reports them) is one URL.
pub(crate) fn group_urls(addrs: &[(Proto, SocketAddr)]) -> Vec<String> {
    let mut out: Vec<super::EndpointUrl> = Vec::new();
    for &(p, a) in addrs {
        if let Some(last) = out.last_mut() {
            if p == Proto::Sctp && last.proto == Proto::Sctp && last.port == a.port() {
                last.addrs.push(a.ip());
                continue;
            }
        }
        out.push(super::EndpointUrl {
            proto: p,
            addrs: vec![a.ip()],
            port: a.port(),
        });
    }
    out.iter().map(|u| u.to_string()).collect()
}

/// Our ENRP transport for Server Information: the first ENRP listener, with
/// every address of a multi-homed SCTP one (a wildcard address stays
/// unspecified: peers then use the packet source). The core also dials SCTP
/// peers from it.
fn enrp_transport_of(addrs: &[(Proto, SocketAddr)]) -> Option<Transport> {
    let &(proto, a) = addrs.first()?;
    Some(match proto {
        Proto::Tcp => Transport::Tcp {
            port: a.port(),
            transport_use: transport_use::DATA_ONLY,
            addr: a.ip(),
        },
        Proto::Sctp => Transport::Sctp {
            port: a.port(),
            transport_use: transport_use::DATA_ONLY,
            // The loop reports a multi-homed endpoint as consecutive entries
            // with one port.
            addrs: addrs
                .iter()
                .take_while(|(p, b)| *p == Proto::Sctp && b.port() == a.port())
                .map(|(_, b)| b.ip())
                .collect(),
        },
    })
}

/// A registrar running on its own thread. Dropping it stops it.
#[derive(Debug)]
pub struct RegistrarHandle {
    handle: LoopHandle<RegistrarDriver>,
    thread: Option<JoinHandle<io::Result<()>>>,
    addrs: Vec<(Proto, SocketAddr)>,
    enrp_addrs: Vec<(Proto, SocketAddr)>,
    server_id: u32,
    multicast: Option<MulticastListener>,
}

/// How long the handle's queries wait for the loop thread.
const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

impl RegistrarHandle {
    /// Bind every listener (errors are returned here, before any thread
    /// starts), then run the registrar on a new thread named `rserpool-registrar`.
    pub fn start(opts: RegistrarOptions) -> Result<RegistrarHandle, StartError> {
        let server_id = opts.server_id.unwrap_or_else(random_server_id);
        let seed = opts.rng_seed.unwrap_or_else(random_u64);
        let mut rcfg = opts.registrar;
        if opts.runtime.announce.is_none() {
            // Never send multicast unless configured.
            rcfg.announce_interval = None;
        } else if rcfg.announce_interval.is_none() {
            rcfg.announce_interval = Some(Duration::from_secs(1)); // T6
        }
        // Both multicast sockets before anything else: a wrong group or
        // interface is a start-up error.
        let multicast = match &opts.enrp_multicast {
            Some(m) => {
                let what = |w: &str| format!("ENRP multicast {} ({w})", m.group);
                let rx =
                    multicast_receiver(m.group, m.interface).map_err(|err| StartError::Io {
                        what: what("joining"),
                        err,
                    })?;
                let tx =
                    multicast_sender(m.group.is_ipv6(), m.interface, m.ttl).map_err(|err| {
                        StartError::Io {
                            what: what("sending socket"),
                            err,
                        }
                    })?;
                rcfg.enrp_multicast = true;
                Some((rx, tx, m.group))
            }
            None => {
                rcfg.enrp_multicast = false;
                None
            }
        };
        let (multicast_rx, multicast_tx) = match multicast {
            Some((rx, tx, group)) => (Some(rx), Some((tx, group))),
            None => (None, None),
        };
        let origin = Instant::now();
        let mut runtime = opts.runtime;
        // Bound addresses come in URL order, one per TCP URL and one per
        // address of an SCTP URL (a multi-homed endpoint): ASAP first, then ENRP.
        let n_asap = runtime
            .listen
            .iter()
            .map(|u| match u.proto {
                Proto::Sctp => u.addrs.len(),
                Proto::Tcp => 1,
            })
            .sum::<usize>();
        runtime.listen.extend(opts.enrp.iter().cloned());
        let ev = EventLoop::new_with(runtime, origin, |addrs| {
            let (asap, enrp) = addrs.split_at(n_asap.min(addrs.len()));
            if rcfg.announce_transports.is_empty() {
                rcfg.announce_transports = announce_transports(asap);
            }
            if rcfg.enrp_transport.is_none() {
                // Without an ENRP listener, peers reach us on the first ASAP
                // endpoint (the core tells ASAP and ENRP apart by PPID).
                rcfg.enrp_transport = enrp_transport_of(if enrp.is_empty() { asap } else { enrp });
            }
            let d = RegistrarDriver::new(Registrar::new(rcfg, server_id, seed, Time::ZERO));
            match multicast_tx {
                Some((sock, group)) => d.with_multicast(sock, group),
                None => d,
            }
        })?;
        let all = ev.local_addrs().to_vec();
        let (asap, enrp) = all.split_at(n_asap.min(all.len()));
        let (addrs, enrp_addrs) = (asap.to_vec(), enrp.to_vec());
        let handle = ev.handle();
        let multicast = match multicast_rx {
            Some(sock) => Some(
                MulticastListener::start(sock, handle.clone()).map_err(|err| StartError::Io {
                    what: "starting the ENRP multicast thread".into(),
                    err,
                })?,
            ),
            None => None,
        };
        let thread = std::thread::Builder::new()
            .name("rserpool-registrar".into())
            .spawn(move || {
                let mut ev = ev;
                ev.run()
            })
            .map_err(|err| StartError::Io {
                what: "starting the registrar thread".into(),
                err,
            });
        let thread = match thread {
            Ok(t) => t,
            Err(e) => {
                if let Some(m) = multicast {
                    m.stop();
                }
                return Err(e);
            }
        };
        Ok(RegistrarHandle {
            handle,
            thread: Some(thread),
            addrs,
            enrp_addrs,
            server_id,
            multicast,
        })
    }

    /// The ASAP listening addresses, ephemeral ports resolved.
    pub fn local_addrs(&self) -> &[(Proto, SocketAddr)] {
        &self.addrs
    }

    /// The ENRP listening addresses ([`RegistrarOptions::enrp`]), ephemeral
    /// ports resolved.
    pub fn enrp_addrs(&self) -> &[(Proto, SocketAddr)] {
        &self.enrp_addrs
    }

    /// The ENRP listening addresses as URLs.
    pub fn enrp_urls(&self) -> Vec<String> {
        self.enrp_addrs
            .iter()
            .map(|&(p, a)| super::url::url_of(p, a))
            .collect()
    }

    /// The registrar's ENRP peers (`None` if the loop is gone).
    pub fn peers(&self) -> Option<Vec<core::PeerInfo>> {
        self.handle
            .query(QUERY_TIMEOUT, |d, _| d.registrar().peers())
    }

    /// The registrar's ENRP view as [`RegistrarDriver::status_json`] gives it
    /// (`None` if the loop is gone).
    pub fn status_json(&self) -> Option<serde_json::Value> {
        self.handle.query(QUERY_TIMEOUT, |d, _| d.status_json())
    }

    /// The listening addresses as URLs (`tcp://127.0.0.1:40123`,
    /// `sctp://10.0.0.1,10.0.1.1:3863`).
    pub fn local_urls(&self) -> Vec<String> {
        group_urls(&self.addrs)
    }

    /// This registrar's server identifier.
    pub fn server_id(&self) -> u32 {
        self.server_id
    }

    /// True while the loop thread runs.
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// The registrar's counters (`None` if the loop is gone).
    pub fn stats(&self) -> Option<RegistrarStats> {
        self.handle
            .query(QUERY_TIMEOUT, |d, _| d.registrar().stats())
    }

    /// A snapshot of the handlespace (`None` if the loop is gone).
    pub fn pool_elements(&self) -> Option<Vec<(PoolHandle, Vec<PoolElement>)>> {
        self.handle
            .query(QUERY_TIMEOUT, |d, _| d.registrar().pool_elements())
    }

    /// The loop handle, to run other queries on the driver.
    pub fn loop_handle(&self) -> &LoopHandle<RegistrarDriver> {
        &self.handle
    }

    /// Stop the loop (every connection is closed) and join its thread.
    pub fn stop(mut self) -> io::Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> io::Result<()> {
        if let Some(m) = self.multicast.take() {
            m.stop();
        }
        self.handle.stop();
        match self.thread.take() {
            Some(t) => t
                .join()
                .unwrap_or_else(|_| Err(io::Error::other("the registrar thread panicked"))),
            None => Ok(()),
        }
    }
}

impl Drop for RegistrarHandle {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}
