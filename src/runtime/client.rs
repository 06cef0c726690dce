//! The ASAP client core ([`asap::Client`]) as a [`Driver`], for pool elements
//! and pool users running inside any process.
//!
//! The driver owns the connection-id mapping between the loop and the core:
//! the core names every connection itself, so a connection it asks for with
//! [`asap::Output::Connect`] is opened under [`ConnId::driver`] of the core's
//! number, and a connection a registrar opens towards us is announced to the
//! core with [`asap::Client::handle_accepted`], whose answer is remembered.
//!
//! What the core reports ([`asap::Event`]) goes to a [`ClientHandler`] on the
//! loop thread, with the core at hand so it can ask for more (e.g. select a
//! server once a resolution arrived). After every input or command the driver
//! drains the core's outputs and events until both are empty.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;

use super::{Action, ConnId, ConnMeta, Driver};
use crate::asap::{self, Client, Event, Output};
use crate::time::Time;

/// Receives the core's events on the loop thread. Must not block.
pub trait ClientHandler: Send + 'static {
    /// One event; `client` may be given more commands (their outputs and
    /// events are drained after this returns).
    fn on_event(&mut self, client: &mut Client, event: Event, now: Time);
}

/// A handler that drops every event (for tools and tests that only poll).
#[derive(Debug, Default)]
pub struct IgnoreEvents;

impl ClientHandler for IgnoreEvents {
    fn on_event(&mut self, _: &mut Client, _: Event, _: Time) {}
}

/// The ASAP client plugged into the event loop.
#[derive(Debug)]
pub struct ClientDriver<H> {
    client: Client,
    handler: H,
    to_core: HashMap<ConnId, asap::ConnId>,
    to_loop: HashMap<asap::ConnId, ConnId>,
    actions: VecDeque<Action>,
    /// Registrars reached over kernel SCTP: the address the core knows them
    /// by (the first of the endpoint) to every address of the endpoint.
    sctp_routes: HashMap<SocketAddr, Vec<SocketAddr>>,
}

impl<H: ClientHandler> ClientDriver<H> {
    /// Wrap a client and the handler of its events.
    pub fn new(client: Client, handler: H) -> Self {
        ClientDriver {
            client,
            handler,
            to_core: HashMap::new(),
            to_loop: HashMap::new(),
            sctp_routes: HashMap::new(),
            actions: VecDeque::new(),
        }
    }

    /// Reach the registrar the core knows as `first` over kernel SCTP, at all
    /// of `addrs` (one multi-homed association) instead of over TCP.
    pub fn with_sctp_route(mut self, first: SocketAddr, addrs: Vec<SocketAddr>) -> Self {
        self.sctp_routes.insert(first, addrs);
        self
    }

    /// The core.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// The handler.
    pub fn handler(&self) -> &H {
        &self.handler
    }

    /// The handler, to change it (no client command: nothing to drain).
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler
    }

    /// Run a command on the core (and the handler), then drain what it
    /// produced. Use from [`LoopHandle::call`](super::LoopHandle::call).
    pub fn command<R>(&mut self, now: Time, f: impl FnOnce(&mut Client, &mut H) -> R) -> R {
        let r = f(&mut self.client, &mut self.handler);
        self.pump(now);
        r
    }

    /// An ASAP_SERVER_ANNOUNCE received by UDP from `src`.
    pub fn announce(&mut self, src: SocketAddr, bytes: &[u8], now: Time) {
        self.client.handle_announce(src, bytes, now);
        self.pump(now);
    }

    fn pump(&mut self, now: Time) {
        loop {
            let mut busy = false;
            while let Some(o) = self.client.poll_output() {
                busy = true;
                self.output(o);
            }
            while let Some(e) = self.client.poll_event() {
                busy = true;
                self.handler.on_event(&mut self.client, e, now);
            }
            if !busy {
                break;
            }
        }
    }

    fn output(&mut self, o: Output) {
        match o {
            Output::Connect { conn, addr } => {
                let id = ConnId::driver(conn.0);
                self.to_core.insert(id, conn);
                self.to_loop.insert(conn, id);
                let action = match self.sctp_routes.get(&addr) {
                    Some(all) => Action::ConnectSctp {
                        conn: id,
                        addrs: all.clone(),
                        local: Vec::new(),
                    },
                    None => Action::Connect { conn: id, addr },
                };
                self.actions.push_back(action);
            }
            Output::Send { conn, ppid, msg } => {
                if let Some(&id) = self.to_loop.get(&conn) {
                    self.actions.push_back(Action::Send {
                        conn: id,
                        ppid,
                        msg,
                    });
                }
            }
            Output::Close { conn } => {
                // The core has forgotten it: a later on_closed/on_connect_failed
                // finds no mapping and is dropped.
                if let Some(id) = self.to_loop.remove(&conn) {
                    self.to_core.remove(&id);
                    self.actions.push_back(Action::Close {
                        conn: id,
                        reason: "closed by the ASAP client".into(),
                    });
                }
            }
        }
    }

    fn forget(&mut self, conn: ConnId) -> Option<asap::ConnId> {
        let core = self.to_core.remove(&conn)?;
        self.to_loop.remove(&core);
        Some(core)
    }
}

impl<H: ClientHandler> Driver for ClientDriver<H> {
    fn on_connected(&mut self, conn: ConnId, meta: &ConnMeta, now: Time) {
        if conn.is_driver_chosen() {
            if let Some(&core) = self.to_core.get(&conn) {
                self.client.handle_connected(core, now);
            } else {
                // Abandoned by the core while connecting.
                self.actions.push_back(Action::Close {
                    conn,
                    reason: "no longer wanted".into(),
                });
            }
        } else {
            // A registrar reached our ASAP endpoint.
            let Some(&remote) = meta.remote.first() else {
                return;
            };
            let core = self.client.handle_accepted(remote, now);
            self.to_core.insert(conn, core);
            self.to_loop.insert(core, conn);
        }
        self.pump(now);
    }

    fn on_message(&mut self, conn: ConnId, ppid: u32, msg: &[u8], now: Time) {
        if let Some(&core) = self.to_core.get(&conn) {
            self.client.handle_message(core, ppid, msg, now);
            self.pump(now);
        }
    }

    fn on_closed(&mut self, conn: ConnId, now: Time) {
        if let Some(core) = self.forget(conn) {
            self.client.handle_closed(core, now);
            self.pump(now);
        }
    }

    fn on_connect_failed(&mut self, conn: ConnId, now: Time) {
        if let Some(core) = self.forget(conn) {
            self.client.handle_connect_failed(core, now);
            self.pump(now);
        }
    }

    fn on_timeout(&mut self, now: Time) {
        self.client.handle_timeout(now);
        self.pump(now);
    }

    fn poll_timeout(&self) -> Option<Time> {
        self.client.poll_timeout()
    }

    fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }
}
