//! The applications of the simulation: pool elements and pool users, each a
//! real ASAP client core driven the way the runtime's client driver drives
//! it (outputs routed, events handled, timers armed after every call).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use super::{Host, Node, Sim};
use crate::asap::{
    self, AsapError, Client, ClientConfig, Event, PeHandle, RegisterOptions, RequestId, Selection,
    T4Rule,
};
use crate::registrar::ConnKind;
use crate::time::Time;
use crate::wire::{cause, Policy, PoolHandle, Transport};

/// The client configuration of simulated pool elements and users: timers
/// scaled down to the simulation's registrar timers (seconds, not minutes).
pub fn client_config() -> ClientConfig {
    ClientConfig {
        t1_request: Duration::from_secs(1),
        t2_registration: Duration::from_secs(1),
        t3_deregistration: Duration::from_secs(1),
        t4_reregistration: T4Rule::Fixed(Duration::from_secs(2)),
        t5_server_hunt: Duration::from_secs(1),
        retran_max: Duration::from_secs(4),
        stale_cache: Duration::from_millis(250),
        unreachable_holdoff: Duration::from_secs(3),
        ..ClientConfig::default()
    }
}

/// A pool element: one PE registered through its own client core.
#[derive(Debug, Clone)]
pub struct PeSpec {
    /// Pool handle.
    pub pool: String,
    /// PE identifier (kept across restarts).
    pub id: u32,
    /// The registrar slot it tries first (its configured list starts there).
    pub home: usize,
    /// Registration Life in seconds.
    pub reg_life: i32,
    /// Its policy.
    pub policy: Policy,
    /// It reaches registrars over SCTP: they see an SCTP ASAP transport, so
    /// a registrar taking it over dials it and sends a keep-alive with H=1.
    /// Otherwise TCP with the mapping (no dial; the PE hunts on its own).
    pub sctp: bool,
    /// The client configuration; an empty `registrars` list is filled with
    /// every registrar slot, starting at `home`.
    pub config: ClientConfig,
}

impl PeSpec {
    /// A PE of `pool` with `id`, trying `home` first: life 6 s, round robin,
    /// TCP, [`client_config`].
    pub fn new(pool: &str, id: u32, home: usize) -> PeSpec {
        PeSpec {
            pool: pool.into(),
            id,
            home,
            reg_life: 6,
            policy: Policy::RoundRobin,
            sctp: false,
            config: client_config(),
        }
    }
}

/// A pool user.
#[derive(Debug, Clone)]
pub struct PuSpec {
    /// The pools it uses.
    pub pools: Vec<String>,
    /// Mean time between two uses (each drawn from ±50 %).
    pub interval: Duration,
    /// A pool it subscribes to when it starts.
    pub subscribe: Option<String>,
    /// The client configuration; an empty `registrars` list is filled with
    /// every registrar slot, starting at the PU's number.
    pub config: ClientConfig,
}

impl PuSpec {
    /// A pool user of `pools`, one use every 500 ms on average, no
    /// subscription, [`client_config`].
    pub fn new(pools: &[&str]) -> PuSpec {
        PuSpec {
            pools: pools.iter().map(|p| p.to_string()).collect(),
            interval: Duration::from_millis(500),
            subscribe: None,
            config: client_config(),
        }
    }
}

#[derive(Debug)]
pub(super) struct PeNode {
    pub(super) host: Host,
    pub(super) spec: PeSpec,
    pub(super) handle: Option<PeHandle>,
    /// The application wants the PE registered (running, not leaving).
    pub(super) wanted: bool,
    /// Since when it is not wanted (crashed, or asked to deregister).
    pub(super) gone_since: Option<Time>,
    /// Register again then (the first registration timed out).
    retry_at: Option<Time>,
    /// Registered as far as the application knows ([`Event::Registered`]
    /// and no [`Event::RegistrationLost`] since).
    pub(super) granted: bool,
}

impl PeNode {
    pub(super) fn next_timeout(&self) -> Option<Time> {
        let core = self.host.core.as_ref()?;
        core.poll_timeout().into_iter().chain(self.retry_at).min()
    }

    /// The user transport it registers (and pool users must be given).
    pub(super) fn transport(&self) -> Transport {
        Transport::Tcp {
            port: 30000,
            transport_use: 0,
            addr: self.host.addr.ip(),
        }
    }

    pub(super) fn key(&self) -> (Vec<u8>, u32) {
        (self.spec.pool.as_bytes().to_vec(), self.spec.id)
    }
}

#[derive(Debug)]
pub(super) struct PuNode {
    pub(super) host: Host,
    pub(super) spec: PuSpec,
    next_use: Time,
    /// Resolutions of the final check: request and pool.
    pub(super) probes: Vec<(RequestId, PoolHandle)>,
    /// Every answer while the pool user is idle (the final check): the PE
    /// ids listed, or why none.
    pub(super) answers: BTreeMap<RequestId, Result<BTreeSet<u32>, AsapError>>,
}

impl PuNode {
    pub(super) fn next_timeout(&self, active: bool) -> Option<Time> {
        let core = self.host.core.as_ref()?;
        let own = active.then_some(self.next_use);
        core.poll_timeout().into_iter().chain(own).min()
    }
}

/// Counters summed over every client core that ran (crashed ones included).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientTotals {
    /// ASAP_REGISTRATION sent.
    pub registrations_sent: u64,
    /// Keep-alives acknowledged.
    pub keep_alives_acked: u64,
    /// Homes adopted through a keep-alive with H=1.
    pub home_adoptions: u64,
    /// Server hunts started.
    pub hunts: u64,
    /// Hunt rounds ended by T5.
    pub hunt_rounds_expired: u64,
    /// Home registrars chosen.
    pub home_changes: u64,
    /// Unsolicited deregistration responses (life ran out at the registrar).
    pub unsolicited_deregistrations: u64,
    /// ASAP_HANDLE_RESOLUTION sent.
    pub resolutions_sent: u64,
    /// ASAP_ENDPOINT_UNREACHABLE sent or queued.
    pub reports_sent: u64,
    /// Messages a client did not expect (late answers, duplicates).
    pub unexpected: u64,
}

impl ClientTotals {
    fn add(&mut self, s: &asap::ClientStats) {
        self.registrations_sent += s.registrations_sent;
        self.keep_alives_acked += s.keep_alives_acked;
        self.home_adoptions += s.home_adoptions;
        self.hunts += s.hunts;
        self.hunt_rounds_expired += s.hunt_rounds_expired;
        self.home_changes += s.home_changes;
        self.unsolicited_deregistrations += s.unsolicited_deregistrations;
        self.resolutions_sent += s.resolutions_sent;
        self.reports_sent += s.reports_sent;
        self.unexpected += s.unexpected;
    }
}

impl Sim {
    fn registrar_list(&self, first: usize) -> Vec<SocketAddr> {
        let n = self.regs.len();
        (0..n).map(|k| self.regs[(first + k) % n].addr).collect()
    }

    fn new_host(&mut self, addr: SocketAddr, kind: ConnKind, config: ClientConfig) -> Host {
        Host {
            core: None,
            addr,
            group: 0,
            kind,
            config,
        }
    }

    /// Stop a client core (a crash or an exit), keeping its counters.
    fn stop_core(&mut self, n: Node) {
        if let Some(c) = self.host_mut(n).and_then(|h| h.core.take()) {
            self.retired.add(c.stats());
        }
    }

    /// Counters of every client core so far, crashed ones included.
    pub fn client_totals(&self) -> ClientTotals {
        let mut t = self.retired.clone();
        let hosts = self.pes.iter().map(|p| &p.host);
        for h in hosts.chain(self.pus.iter().map(|p| &p.host)) {
            if let Some(c) = &h.core {
                t.add(c.stats());
            }
        }
        t
    }

    /// Run `f` on the client core of `n` (if running), then route its
    /// outputs and handle its events.
    pub(super) fn with_core<R>(
        &mut self,
        n: Node,
        f: impl FnOnce(&mut Client, Time) -> R,
    ) -> Option<R> {
        let now = self.now;
        let r = self.core_mut(n).map(|c| f(c, now));
        self.drain_client(n);
        r
    }

    /// Drain outputs, then events, until both are empty (events may issue
    /// commands).
    pub(super) fn drain_client(&mut self, n: Node) {
        loop {
            let Some(core) = self.core_mut(n) else { return };
            if let Some(o) = core.poll_output() {
                self.client_output(n, o);
                continue;
            }
            let Some(e) = core.poll_event() else { return };
            self.log(&[n], || format!("event {e:?}"));
            match n {
                Node::Pe(i) => self.pe_event(i, e),
                Node::Pu(i) => self.pu_event(i, e),
                Node::Reg(_) => {}
            }
        }
    }

    fn client_output(&mut self, n: Node, o: asap::Output) {
        match o {
            asap::Output::Connect { conn, addr } => {
                let kind = self.host(n).map_or(ConnKind::Tcp, |h| h.kind);
                match self.slot_of(addr) {
                    Some(j) => {
                        self.connect(n, conn, Node::Reg(j), kind);
                    }
                    None => {
                        let at = self.now + self.delay();
                        self.schedule(at, super::Ev::ConnectFailed { node: n, conn });
                    }
                }
            }
            asap::Output::Send { conn, ppid, msg } => self.send(n, conn, ppid, msg),
            asap::Output::Close { conn } => {
                if let Some(&link) = self.ends.get(&(n, conn)) {
                    self.drop_link(link, Some(n), true);
                }
            }
        }
    }

    // ------------------------------------------------------------------ PEs

    /// Add a pool element; it starts and registers at once. Returns its number.
    pub fn add_pe(&mut self, mut spec: PeSpec) -> usize {
        let i = self.pes.len();
        if spec.config.registrars.is_empty() {
            spec.config.registrars = self.registrar_list(spec.home);
        }
        let kind = if spec.sctp {
            ConnKind::Sctp
        } else {
            ConnKind::Tcp
        };
        let host = self.new_host(super::pe_addr(i), kind, spec.config.clone());
        self.pes.push(PeNode {
            host,
            spec,
            handle: None,
            wanted: false,
            gone_since: None,
            retry_at: None,
            granted: false,
        });
        self.start_pe(i);
        i
    }

    fn start_pe(&mut self, i: usize) {
        let seed = self.next_u64();
        let now = self.now;
        let p = &mut self.pes[i];
        p.host.core = Some(Client::new(p.host.config.clone(), seed, now));
        p.wanted = true;
        p.gone_since = None;
        p.retry_at = None;
        p.granted = false;
        self.register_pe(i);
    }

    fn register_pe(&mut self, i: usize) {
        let p = &self.pes[i];
        let pool = PoolHandle::from(p.spec.pool.as_str());
        let transport = p.transport();
        let policy = p.spec.policy.clone();
        let life = p.spec.reg_life;
        let options = RegisterOptions {
            pe_id: Some(p.spec.id),
        };
        let r = self.with_core(Node::Pe(i), |c, now| {
            c.register(pool, transport, policy, life, options, now)
        });
        match r {
            Some(Ok(h)) => self.pes[i].handle = Some(h),
            Some(Err(e)) => self.violate(format!("PE {i}: register refused locally: {e}")),
            None => {}
        }
    }

    /// Restart a crashed or departed PE (same id, same address).
    pub fn restart_pe(&mut self, i: usize) {
        if self.pes.get(i).is_some_and(|p| p.host.core.is_none()) {
            self.stats.pe_restarts += 1;
            self.start_pe(i);
        }
    }

    /// Kill PE `i`: a process crash, its connections reset.
    pub fn kill_pe(&mut self, i: usize) {
        self.kill_pe_with(i, true);
    }

    /// Kill PE `i`; without `notify` its connections just go silent.
    pub fn kill_pe_with(&mut self, i: usize, notify: bool) {
        let Some(p) = self.pes.get_mut(i) else { return };
        if p.host.core.is_none() {
            return;
        }
        self.stats.pe_crashes += 1;
        self.pe_gone(i);
        self.stop_core(Node::Pe(i));
        self.crash_node(Node::Pe(i), notify);
    }

    /// PE `i` deregisters, then exits.
    pub fn leave_pe(&mut self, i: usize) {
        let Some(p) = self.pes.get(i) else { return };
        if p.host.core.is_none() || !p.wanted {
            return;
        }
        self.stats.pe_leaves += 1;
        self.pe_gone(i);
        match self.pes[i].handle {
            Some(h) => {
                let r = self.with_core(Node::Pe(i), |c, now| c.deregister(h, now));
                if let Some(Err(e)) = r {
                    self.violate(format!("PE {i}: deregister refused locally: {e}"));
                }
            }
            None => self.pe_exit(i),
        }
    }

    fn pe_gone(&mut self, i: usize) {
        let now = self.now;
        let p = &mut self.pes[i];
        if p.wanted {
            p.wanted = false;
            p.gone_since = Some(now);
        }
        p.retry_at = None;
    }

    fn pe_exit(&mut self, i: usize) {
        self.pes[i].handle = None;
        self.pes[i].granted = false;
        self.stop_core(Node::Pe(i));
        self.crash_node(Node::Pe(i), true);
    }

    pub(super) fn pe_timer(&mut self, i: usize) {
        let now = self.now;
        if self.pes[i].retry_at.is_some_and(|t| t <= now) {
            self.pes[i].retry_at = None;
            self.stats.pe_registration_retries += 1;
            return self.register_pe(i);
        }
        self.with_core(Node::Pe(i), |c, now| c.handle_timeout(now));
    }

    fn pe_event(&mut self, i: usize, e: Event) {
        match e {
            Event::Registered { .. } => self.pes[i].granted = true,
            Event::RegistrationLost { .. } => self.pes[i].granted = false,
            Event::RegistrationFailed { error, .. } => {
                self.pes[i].handle = None;
                self.pes[i].granted = false;
                if !self.pes[i].wanted {
                    return self.pe_exit(i);
                }
                if error == AsapError::Timeout {
                    // No registrar answered: the application tries again.
                    self.pes[i].retry_at = Some(self.now + Duration::from_secs(1));
                } else {
                    let p = &self.pes[i].spec;
                    let why = format!("PE {}/{} rejected: {error}", p.pool, p.id);
                    self.violate(why);
                }
            }
            Event::Deregistered { .. } | Event::DeregistrationFailed { .. } => self.pe_exit(i),
            _ => {}
        }
    }

    // ------------------------------------------------------------------ PUs

    /// Add a pool user; it starts at once. Returns its number.
    pub fn add_pu(&mut self, mut spec: PuSpec) -> usize {
        let i = self.pus.len();
        if spec.config.registrars.is_empty() {
            spec.config.registrars = self.registrar_list(i);
        }
        let host = self.new_host(super::pu_addr(i), ConnKind::Tcp, spec.config.clone());
        self.pus.push(PuNode {
            host,
            spec,
            next_use: self.now,
            probes: Vec::new(),
            answers: BTreeMap::new(),
        });
        self.start_pu(i);
        i
    }

    pub(super) fn start_pu(&mut self, i: usize) {
        let seed = self.next_u64();
        let now = self.now;
        let iv = self.pus[i].spec.interval;
        let first = self.between(Duration::ZERO, iv);
        let p = &mut self.pus[i];
        p.host.core = Some(Client::new(p.host.config.clone(), seed, now));
        p.next_use = now + first;
        p.probes.clear();
        p.answers.clear();
        if let Some(pool) = p.spec.subscribe.clone() {
            let pool = PoolHandle::from(pool.as_str());
            self.with_core(Node::Pu(i), |c, now| c.resolve(pool, Some(256), true, now));
        }
    }

    /// Crash pool user `i` and start it afresh.
    pub fn restart_pu(&mut self, i: usize, notify: bool) {
        if i >= self.pus.len() {
            return;
        }
        self.stats.pu_restarts += 1;
        self.stop_core(Node::Pu(i));
        self.crash_node(Node::Pu(i), notify);
        self.start_pu(i);
    }

    pub(super) fn pu_timer(&mut self, i: usize) {
        let now = self.now;
        if self.pu_activity && self.pus[i].next_use <= now {
            let iv = self.pus[i].spec.interval;
            let d = self.between(iv / 2, iv * 3 / 2);
            self.pus[i].next_use = now + d.max(Duration::from_millis(1));
            return self.pu_use(i);
        }
        self.with_core(Node::Pu(i), |c, now| c.handle_timeout(now));
    }

    /// Use a pool: ask for the whole pool, or pick a PE and contact it.
    fn pu_use(&mut self, i: usize) {
        let n = self.pus[i].spec.pools.len() as u64;
        if n == 0 {
            return;
        }
        let k = self.below(n) as usize;
        let pool = PoolHandle::from(self.pus[i].spec.pools[k].as_str());
        if self.chance(0.25) {
            self.with_core(Node::Pu(i), |c, now| c.resolve(pool, Some(256), false, now));
            return;
        }
        let mut sel = self.with_core(Node::Pu(i), |c, now| c.get_primary_server(&pool, now));
        // Contact the PE; a dead or unreachable one is reported and the next
        // one taken (draft-ietf-rserpool-applic §3.5), a few times at most.
        for _ in 0..4 {
            let Some(Selection::Ready(pe)) = sel else {
                return;
            };
            let reachable = self.pe_index(&pool, pe.id).is_some_and(|k| {
                let p = &self.pes[k];
                p.wanted && p.host.core.is_some() && p.host.group == self.pus[i].host.group
            });
            if reachable {
                self.stats.pu_uses += 1;
                return;
            }
            self.stats.pu_failovers += 1;
            sel = self.with_core(Node::Pu(i), |c, now| c.get_next_server(&pool, pe.id, now));
        }
    }

    /// A message to pool user `i` was dropped on its home connection.
    pub(super) fn pu_home_tainted(&self, i: usize) -> bool {
        let n = Node::Pu(i);
        let Some(conn) = self.pus[i]
            .host
            .core
            .as_ref()
            .and_then(|c| c.home_connection())
        else {
            return false;
        };
        self.ends
            .get(&(n, conn))
            .is_some_and(|l| self.tainted.contains(l))
    }

    pub(super) fn pe_index(&self, pool: &PoolHandle, id: u32) -> Option<usize> {
        self.pes
            .iter()
            .position(|p| p.spec.id == id && p.spec.pool.as_bytes() == pool.0.as_slice())
    }

    fn pu_event(&mut self, i: usize, e: Event) {
        match e {
            Event::Resolved {
                request,
                pool,
                result,
                subscribed,
            } => {
                self.check_answer(i, &pool, &result, subscribed);
                if !self.pu_activity {
                    let ids = result.map(|rp| rp.elements.iter().map(|pe| pe.id).collect());
                    self.pus[i].answers.insert(request, ids);
                }
            }
            Event::PoolUpdate { pool, result } => self.check_answer(i, &pool, &result, true),
            _ => {}
        }
    }

    /// An answer lists only PEs of the pool, with their own transport, that
    /// are live or gone for at most `stale_bound`.
    ///
    /// Except for a subscription's view (`pushed`: kept up to date by the
    /// registrar's pushes) after the simulation dropped a message on the
    /// pool user's home connection: ASAP relies on the association to
    /// deliver every push, so such a view may stay stale until the pool
    /// changes again. Gone PEs listed there are counted, not checked.
    fn check_answer(
        &mut self,
        i: usize,
        pool: &PoolHandle,
        result: &Result<asap::ResolvedPool, AsapError>,
        pushed: bool,
    ) {
        self.stats.pu_answers += 1;
        let Ok(rp) = result else {
            if let Err(e) = result {
                let known = matches!(e, AsapError::Timeout)
                    || e.cause_code() == Some(cause::UNKNOWN_POOL_HANDLE);
                if !known {
                    self.violate(format!("PU {i}: resolution of {pool:?} failed: {e}"));
                }
            }
            return;
        };
        let now = self.now;
        for pe in &rp.elements {
            self.stats.pu_answer_elements += 1;
            let Some(k) = self.pe_index(pool, pe.id) else {
                return self.violate(format!("PU {i}: {pool:?} lists unknown PE {}", pe.id));
            };
            if pe.user_transport != self.pes[k].transport() {
                return self.violate(format!(
                    "PU {i}: {pool:?}/{} listed with transport {:?}",
                    pe.id, pe.user_transport
                ));
            }
            if let Some(since) = self.pes[k].gone_since {
                let age = now.saturating_since(since);
                self.stats.pu_stale_elements += 1;
                if pushed && self.pu_home_tainted(i) {
                    self.stats.pu_stale_after_lost_push += 1;
                    continue;
                }
                let us = u64::try_from(age.as_micros()).unwrap_or(u64::MAX);
                self.stats.pu_max_staleness_us = self.stats.pu_max_staleness_us.max(us);
                if age > self.stale_bound {
                    return self.violate(format!(
                        "PU {i}: {pool:?}/{} listed {age:?} after it was gone",
                        pe.id
                    ));
                }
            }
        }
    }
}
