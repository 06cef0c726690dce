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

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::{
    Action, ConnId, ConnMeta, Driver, EventLoop, LoopHandle, Proto, RuntimeConfig, StartError,
};
use crate::registrar::RegistrarStats;
use crate::registrar::{self as core, ConnInfo, ConnKind, Output, Registrar, RegistrarConfig};
use crate::time::Time;
use crate::wire::{transport_use, PoolElement, PoolHandle, Transport};

/// The sans-IO [`Registrar`] plugged into the event loop.
#[derive(Debug)]
pub struct RegistrarDriver {
    reg: Registrar,
}

impl RegistrarDriver {
    /// Wrap a registrar.
    pub fn new(reg: Registrar) -> Self {
        RegistrarDriver { reg }
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
        self.reg.handle_message(to_core(conn), ppid, msg, now);
    }

    fn on_closed(&mut self, conn: ConnId, now: Time) {
        self.reg.handle_closed(to_core(conn), now);
    }

    fn on_timeout(&mut self, now: Time) {
        self.reg.handle_timeout(now);
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.reg.poll_timeout()
    }

    fn poll_action(&mut self) -> Option<Action> {
        Some(match self.reg.poll_output()? {
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
            // ENRP peers and H=1 keep-alives to taken-over SCTP PEs: the core
            // names the connection (bit 63 set, as `ConnId::driver` does).
            Output::Connect {
                conn,
                addr,
                kind: ConnKind::Tcp,
            } => Action::Connect {
                conn: ConnId(conn.0),
                addr,
            },
            Output::Connect {
                conn,
                addr,
                kind: ConnKind::Sctp,
            } => Action::ConnectSctp {
                conn: ConnId(conn.0),
                addrs: vec![addr],
            },
        })
    }

    fn on_connect_failed(&mut self, conn: ConnId, now: Time) {
        self.reg.handle_connect_failed(to_core(conn), now);
    }
}

/// Everything needed to start a registrar.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistrarOptions {
    /// The protocol core's timers and limits.
    pub registrar: RegistrarConfig,
    /// Listening endpoints, TCP mapping timers, buffer bounds, announce group.
    pub runtime: RuntimeConfig,
    /// The server identifier; `None` = random, non-zero.
    pub server_id: Option<u32>,
    /// Seed of the registrar's PRNG; `None` = random.
    pub rng_seed: Option<u64>,
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

/// A registrar running on its own thread. Dropping it stops it.
#[derive(Debug)]
pub struct RegistrarHandle {
    handle: LoopHandle<RegistrarDriver>,
    thread: Option<JoinHandle<io::Result<()>>>,
    addrs: Vec<(Proto, SocketAddr)>,
    server_id: u32,
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
        let origin = Instant::now();
        let ev = EventLoop::new_with(opts.runtime, origin, |addrs| {
            if rcfg.announce_transports.is_empty() {
                rcfg.announce_transports = announce_transports(addrs);
            }
            RegistrarDriver::new(Registrar::new(rcfg, server_id, seed, Time::ZERO))
        })?;
        let addrs = ev.local_addrs().to_vec();
        let handle = ev.handle();
        let thread = std::thread::Builder::new()
            .name("rserpool-registrar".into())
            .spawn(move || {
                let mut ev = ev;
                ev.run()
            })
            .map_err(|err| StartError::Io {
                what: "starting the registrar thread".into(),
                err,
            })?;
        Ok(RegistrarHandle {
            handle,
            thread: Some(thread),
            addrs,
            server_id,
        })
    }

    /// The listening addresses, ephemeral ports resolved.
    pub fn local_addrs(&self) -> &[(Proto, SocketAddr)] {
        &self.addrs
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
