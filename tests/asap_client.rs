//! The ASAP client core against registrar cores, in the in-memory simulation
//! (`rserpool::asap::sim`): virtual time, no sockets, seeded loss.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use rserpool::asap::sim::{registrar_addr, Node, Sim, SimConfig};
use rserpool::asap::{
    AsapError, Client, ClientConfig, ConnId, Event, Output, PeHandle, PeStatus, RegisterOptions,
    RequestId, ResolvedPool, Selection, T4Rule,
};
use rserpool::registrar::RegistrarConfig;
use rserpool::time::Time;
use rserpool::wire::{asap_type, cause, AsapMessage, ErrorCause, Policy, PoolHandle, Transport};

const SECS: fn(u64) -> Duration = Duration::from_secs;

fn reg_config() -> RegistrarConfig {
    RegistrarConfig {
        idle_timeout: Duration::ZERO,
        ..RegistrarConfig::default()
    }
}

fn client_config(regs: &[usize]) -> ClientConfig {
    ClientConfig {
        registrars: regs.iter().map(|&r| registrar_addr(r)).collect(),
        ..ClientConfig::default()
    }
}

fn pool(s: &str) -> PoolHandle {
    PoolHandle::from(s)
}

fn transport(port: u16) -> Transport {
    Transport::Sctp {
        port,
        transport_use: 0,
        addrs: vec![IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1))],
    }
}

/// Register a PE on client `c` of `sim` now.
fn register(sim: &mut Sim, c: usize, p: &str, policy: Policy, life: i32) -> PeHandle {
    let p = pool(p);
    sim.with_client(c, |cl, now| {
        cl.register(
            p,
            transport(5000),
            policy,
            life,
            RegisterOptions::default(),
            now,
        )
        .unwrap()
    })
}

fn resolve(sim: &mut Sim, c: usize, p: &str, subscribe: bool) -> RequestId {
    let p = pool(p);
    sim.with_client(c, |cl, now| cl.resolve(p, None, subscribe, now).unwrap())
}

/// The result of a request, from the client's events.
fn resolved(sim: &Sim, c: usize, req: RequestId) -> Option<Result<ResolvedPool, AsapError>> {
    sim.events(c).iter().find_map(|(_, e)| match e {
        Event::Resolved {
            request, result, ..
        } if *request == req => Some(result.clone()),
        _ => None,
    })
}

fn ids(r: &ResolvedPool) -> Vec<u32> {
    let mut v: Vec<u32> = r.elements.iter().map(|p| p.id).collect();
    v.sort();
    v
}

fn registered_count(sim: &Sim, c: usize, pe: PeHandle) -> usize {
    sim.events(c)
        .iter()
        .filter(|(_, e)| matches!(e, Event::Registered { pe: p, .. } if *p == pe))
        .count()
}

fn no_errors(sim: &Sim, c: usize) {
    for (t, e) in sim.events(c) {
        assert!(
            !matches!(
                e,
                Event::RegistrationFailed { .. }
                    | Event::RegistrationLost { .. }
                    | Event::DeregistrationFailed { .. }
                    | Event::Resolved { result: Err(_), .. }
            ),
            "error event at {t:?}: {e:?}"
        );
    }
}

#[test]
fn pe_registers_and_is_resolvable() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let pe_c = sim.add_client(client_config(&[r]), 1);
    let pu_c = sim.add_client(client_config(&[r]), 2);
    let pe = register(&mut sim, pe_c, "echo", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    let id = sim.client(pe_c).pe_id(pe).unwrap();
    assert_ne!(id, 0);
    assert_eq!(registered_count(&sim, pe_c, pe), 1);
    assert_eq!(sim.client(pe_c).pe_status(pe), Some(PeStatus::Registered));
    assert!(sim.registrar(r).pool_element(&pool("echo"), id).is_some());
    assert!(matches!(
        sim.events(pe_c)[0].1,
        Event::HomeChanged { addr, .. } if addr == registrar_addr(r)
    ));

    let req = resolve(&mut sim, pu_c, "echo", false);
    sim.run_for(SECS(1));
    let got = resolved(&sim, pu_c, req).unwrap().unwrap();
    assert_eq!(ids(&got), vec![id]);
    assert_eq!(got.policy, Policy::RoundRobin);
    no_errors(&sim, pe_c);
    no_errors(&sim, pu_c);
}

#[test]
fn reregistration_every_t4_keeps_the_pe_for_many_lives() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let c = sim.add_client(client_config(&[r]), 1);
    // A 30 s life: T4 = max(30 − 20, 30 / 2) = 15 s.
    let pe = register(&mut sim, c, "echo", Policy::RoundRobin, 30);
    sim.run_for(SECS(600));
    let id = sim.client(c).pe_id(pe).unwrap();
    assert!(sim.registrar(r).pool_element(&pool("echo"), id).is_some());
    let regs = sim.count_sent(Node::Client(c), asap_type::REGISTRATION);
    assert!((39..=41).contains(&regs), "{regs} registrations in 600 s");
    let st = sim.registrar(r).stats();
    assert_eq!(st.expiries, 0);
    assert_eq!(st.registrations, 1);
    assert!(st.reregistrations >= 38);
    // Keep-alives (every 5 s ± 50 %) were all acknowledged.
    assert!(st.keep_alive_acks > 80, "{st:?}");
    assert_eq!(st.keep_alive_failures, 0);
    assert_eq!(registered_count(&sim, c, pe), 1);
    no_errors(&sim, c);
}

#[test]
fn keep_alives_alone_keep_an_infinite_registration() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let mut cfg = client_config(&[r]);
    cfg.t4_reregistration = T4Rule::Fixed(SECS(3600));
    let c = sim.add_client(cfg, 1);
    let pe = register(&mut sim, c, "echo", Policy::RoundRobin, -1);
    sim.run_for(SECS(900));
    let id = sim.client(c).pe_id(pe).unwrap();
    assert!(sim.registrar(r).pool_element(&pool("echo"), id).is_some());
    assert_eq!(sim.count_sent(Node::Client(c), asap_type::REGISTRATION), 1);
    let st = sim.registrar(r).stats();
    assert!(st.keep_alives_sent > 100);
    assert_eq!(st.keep_alive_acks, st.keep_alives_sent);
    assert_eq!(st.keep_alive_failures, 0);
    assert_eq!(sim.client(c).stats().keep_alives_acked, st.keep_alive_acks);
}

#[test]
fn update_policy_changes_the_load_pool_users_see() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let pe_c = sim.add_client(client_config(&[r]), 1);
    let pu_c = sim.add_client(client_config(&[r]), 2);
    let pe = register(&mut sim, pe_c, "lu", Policy::LeastUsed { load: 0 }, 60);
    sim.run_for(SECS(1));
    sim.with_client(pe_c, |c, now| {
        c.update_policy(pe, Policy::LeastUsed { load: 0x8000_0000 }, now)
    })
    .unwrap();
    sim.run_for(SECS(1));
    let req = resolve(&mut sim, pu_c, "lu", false);
    sim.run_for(SECS(1));
    let got = resolved(&sim, pu_c, req).unwrap().unwrap();
    assert_eq!(
        got.elements[0].policy,
        Policy::LeastUsed { load: 0x8000_0000 }
    );
    assert_eq!(registered_count(&sim, pe_c, pe), 1);
    no_errors(&sim, pe_c);
}

#[test]
fn deregistration_removes_the_pe() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let pe_c = sim.add_client(client_config(&[r]), 1);
    let pu_c = sim.add_client(client_config(&[r]), 2);
    let pe = register(&mut sim, pe_c, "echo", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    sim.with_client(pe_c, |c, now| c.deregister(pe, now))
        .unwrap();
    sim.run_for(SECS(1));
    assert!(sim
        .events(pe_c)
        .iter()
        .any(|(_, e)| *e == Event::Deregistered { pe }));
    assert_eq!(sim.client(pe_c).pe_status(pe), None);
    assert_eq!(sim.registrar(r).pe_count(), 0);
    // No more re-registrations.
    let before = sim.count_sent(Node::Client(pe_c), asap_type::REGISTRATION);
    sim.run_for(SECS(120));
    assert_eq!(
        sim.count_sent(Node::Client(pe_c), asap_type::REGISTRATION),
        before
    );
    let req = resolve(&mut sim, pu_c, "echo", false);
    sim.run_for(SECS(1));
    let err = resolved(&sim, pu_c, req).unwrap().unwrap_err();
    assert_eq!(err.cause_code(), Some(cause::UNKNOWN_POOL_HANDLE));
    // The handle is dead.
    assert_eq!(
        sim.with_client(pe_c, |c, now| c.deregister(pe, now)),
        Err(AsapError::UnknownHandle)
    );
}

#[test]
fn keep_alive_for_another_pool_is_dropped_and_h1_adopts_a_new_home() {
    let mut sim = Sim::new(SimConfig::default());
    let r0 = sim.add_registrar(reg_config(), 0x1111);
    let r1 = sim.add_registrar(reg_config(), 0x2222);
    let c = sim.add_client(client_config(&[r0]), 1);
    let pe = register(&mut sim, c, "echo", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    let id = sim.client(c).pe_id(pe).unwrap();
    assert_eq!(sim.client(c).home().unwrap().0, registrar_addr(r0));

    // r1 reaches the PE's ASAP endpoint (as after a takeover).
    let (_cconn, rconn) = sim.dial(r1, c);
    let acks = sim.count_sent(Node::Client(c), asap_type::ENDPOINT_KEEP_ALIVE_ACK);
    // KA1: not our pool → dropped silently.
    sim.inject_from_registrar(
        r1,
        rconn,
        &AsapMessage::EndpointKeepAlive {
            home: true,
            server_id: 0x2222,
            pool_handle: pool("other"),
            pe_id: None,
        },
    );
    sim.run_for(SECS(1));
    assert_eq!(sim.client(c).stats().keep_alives_dropped, 1);
    assert_eq!(sim.client(c).home().unwrap().0, registrar_addr(r0));

    // KA2 with H=1 from another server: ack on that connection, adopt it.
    sim.inject_from_registrar(
        r1,
        rconn,
        &AsapMessage::EndpointKeepAlive {
            home: true,
            server_id: 0x2222,
            pool_handle: pool("echo"),
            pe_id: Some(id),
        },
    );
    sim.run_for(SECS(1));
    assert!(sim.sent.iter().any(|s| s.from == Node::Client(c)
        && s.to == Some(Node::Registrar(r1))
        && s.msg_type == asap_type::ENDPOINT_KEEP_ALIVE_ACK));
    assert!(sim.count_sent(Node::Client(c), asap_type::ENDPOINT_KEEP_ALIVE_ACK) > acks);
    assert_eq!(
        sim.client(c).home(),
        Some((registrar_addr(r1), Some(0x2222)))
    );
    assert_eq!(sim.client(c).stats().home_adoptions, 1);
    assert!(sim.events(c).iter().any(|(_, e)| *e
        == Event::HomeChanged {
            addr: registrar_addr(r1),
            server_id: Some(0x2222)
        }));
    // The PE re-registered with its new home, over the adopted connection.
    assert_eq!(
        sim.registrar(r1).owner_connection(&pool("echo"), id),
        Some(rconn)
    );
    assert_eq!(sim.link_count(c, r0), 0, "the old home is closed");
    sim.run_for(SECS(120));
    assert!(sim.registrar(r1).pool_element(&pool("echo"), id).is_some());
    assert_eq!(registered_count(&sim, c, pe), 1);
    no_errors(&sim, c);
}

#[test]
fn registrar_crash_hunts_to_another_and_reregisters_without_an_error() {
    let mut sim = Sim::new(SimConfig::default());
    let r0 = sim.add_registrar(reg_config(), 0x1111);
    let r1 = sim.add_registrar(reg_config(), 0x2222);
    let pe_c = sim.add_client(client_config(&[r0, r1]), 1);
    let pu_c = sim.add_client(client_config(&[r0, r1]), 2);
    let pe = register(&mut sim, pe_c, "echo", Policy::RoundRobin, 30);
    // The pool user gets a home (the pool does not exist yet).
    let req = resolve(&mut sim, pu_c, "nothing-yet", false);
    sim.run_for(SECS(1));
    assert_eq!(
        resolved(&sim, pu_c, req).unwrap().unwrap_err().cause_code(),
        Some(cause::UNKNOWN_POOL_HANDLE)
    );
    sim.clients[pu_c].events.clear();
    let id = sim.client(pe_c).pe_id(pe).unwrap();
    // Both hunted r0 and r1 at once; the first to connect won, the other
    // connection was closed.
    assert_eq!(sim.client(pe_c).home().unwrap().0, registrar_addr(r0));
    assert_eq!(sim.link_count(pe_c, r1), 0);
    assert_eq!(sim.client(pe_c).hunt_attempts(), 0);

    sim.kill_registrar(r0);
    // A resolution issued while the home is already dead but not yet known so.
    let req = resolve(&mut sim, pu_c, "echo", false);
    sim.run_for(SECS(2));
    assert_eq!(sim.client(pe_c).home().unwrap().0, registrar_addr(r1));
    assert!(sim.registrar(r1).pool_element(&pool("echo"), id).is_some());
    assert!(sim.events(pe_c).iter().any(|(_, e)| *e
        == Event::RegistrarLost {
            addr: registrar_addr(r0)
        }));
    let got = resolved(&sim, pu_c, req).unwrap().unwrap();
    assert_eq!(ids(&got), vec![id]);
    sim.run_for(SECS(300));
    assert!(sim.registrar(r1).pool_element(&pool("echo"), id).is_some());
    assert_eq!(registered_count(&sim, pe_c, pe), 1);
    no_errors(&sim, pe_c);
    no_errors(&sim, pu_c);
}

#[test]
fn all_registrars_down_fails_registration_and_resolution_by_the_timer_rules() {
    let mut sim = Sim::new(SimConfig::default());
    let r0 = sim.add_registrar(reg_config(), 0x1111);
    let r1 = sim.add_registrar(reg_config(), 0x2222);
    sim.kill_registrar(r0);
    sim.kill_registrar(r1);
    let c = sim.add_client(client_config(&[r0, r1]), 1);
    let pe = register(&mut sim, c, "echo", Policy::RoundRobin, 30);
    let req = resolve(&mut sim, c, "echo", false);
    // MAX-REQUEST-RETRANSMIT 2: (1 + 2) × T1 = 45 s.
    sim.run_until(Time::from_secs(44));
    assert!(resolved(&sim, c, req).is_none());
    sim.run_until(Time::from_secs(46));
    assert_eq!(resolved(&sim, c, req), Some(Err(AsapError::Timeout)));
    // MAX-REG-ATTEMPT 2: 2 × T2 = 60 s.
    sim.run_until(Time::from_secs(59));
    assert_eq!(sim.client(c).pe_status(pe), Some(PeStatus::Registering));
    sim.run_until(Time::from_secs(61));
    let fails: Vec<&Event> = sim
        .events(c)
        .iter()
        .map(|(_, e)| e)
        .filter(|e| matches!(e, Event::RegistrationFailed { .. }))
        .collect();
    assert_eq!(
        fails,
        vec![&Event::RegistrationFailed {
            pe,
            error: AsapError::Timeout
        }]
    );
    assert_eq!(sim.client(c).pe_status(pe), None);
    // Nothing left to do: the hunt ends at the end of its round.
    sim.run_for(SECS(120));
    assert!(!sim.client(c).is_hunting());
    let n = sim.connects.len();
    sim.run_for(SECS(600));
    assert_eq!(sim.connects.len(), n);
}

#[test]
fn silent_home_resolution_times_out_after_the_retransmits() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let c = sim.add_client(client_config(&[r]), 1);
    let pe = register(&mut sim, c, "echo", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    sim.config.loss_permille = 1000;
    let before = sim.count_sent(Node::Client(c), asap_type::HANDLE_RESOLUTION);
    let req = resolve(&mut sim, c, "echo", false);
    sim.run_for(SECS(44));
    assert!(resolved(&sim, c, req).is_none());
    sim.run_for(SECS(2));
    assert_eq!(resolved(&sim, c, req), Some(Err(AsapError::Timeout)));
    // The first send and MAX-REQUEST-RETRANSMIT = 2 re-sends.
    assert_eq!(
        sim.count_sent(Node::Client(c), asap_type::HANDLE_RESOLUTION) - before,
        3
    );
    assert_eq!(sim.client(c).stats().resolution_timeouts, 1);
    // The PE's registration, refreshed at T4 into the void, is reported lost
    // but kept alive by the client.
    sim.run_for(SECS(120));
    assert!(sim.events(c).iter().any(|(_, e)| matches!(
        e,
        Event::RegistrationLost { pe: p, error: AsapError::Timeout } if *p == pe
    )));
    assert!(matches!(
        sim.client(c).pe_status(pe),
        Some(PeStatus::Lost | PeStatus::Registering)
    ));
    // The network heals: the PE is registered again.
    sim.config.loss_permille = 0;
    sim.run_for(SECS(60));
    assert_eq!(sim.client(c).pe_status(pe), Some(PeStatus::Registered));
    assert_eq!(registered_count(&sim, c, pe), 2);
}

#[test]
fn inconsistent_policy_is_reported_with_its_cause() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let c = sim.add_client(client_config(&[r]), 1);
    let a = register(&mut sim, c, "pool", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    let b = register(&mut sim, c, "pool", Policy::LeastUsed { load: 0 }, 30);
    sim.run_for(SECS(1));
    let err = sim
        .events(c)
        .iter()
        .find_map(|(_, e)| match e {
            Event::RegistrationFailed { pe, error } if *pe == b => Some(error.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(err.cause_code(), Some(cause::INCONSISTENT_POLICY));
    assert_eq!(sim.client(c).pe_status(b), None);
    assert_eq!(sim.client(c).pe_status(a), Some(PeStatus::Registered));
    // Rejections are not retried.
    sim.run_for(SECS(100));
    assert_eq!(sim.registrar(r).pe_count(), 1);
}

#[test]
fn fresh_cache_sends_nothing_and_stale_cache_asks_again() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let pe_c = sim.add_client(client_config(&[r]), 1);
    let pu = sim.add_client(client_config(&[r]), 2);
    register(&mut sim, pe_c, "echo", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    let hr = |sim: &Sim| sim.count_sent(Node::Client(pu), asap_type::HANDLE_RESOLUTION);
    let a = resolve(&mut sim, pu, "echo", false);
    sim.run_for(Duration::from_millis(10));
    assert_eq!(hr(&sim), 1);
    // Fresh: answered from the cache, at once.
    let b = resolve(&mut sim, pu, "echo", false);
    assert!(resolved(&sim, pu, b).unwrap().is_ok());
    assert_eq!(resolved(&sim, pu, a), resolved(&sim, pu, b));
    assert!(matches!(
        sim.with_client(pu, |c, now| c.get_primary_server(&pool("echo"), now)),
        Selection::Ready(_)
    ));
    sim.run_for(Duration::from_millis(500));
    assert_eq!(hr(&sim), 1);
    assert_eq!(sim.client(pu).stats().cache_hits, 1);
    // Stale (1 s): a new request.
    sim.run_for(SECS(1));
    let c = resolve(&mut sim, pu, "echo", false);
    assert!(resolved(&sim, pu, c).is_none());
    sim.run_for(Duration::from_millis(10));
    assert_eq!(hr(&sim), 2);
    assert!(resolved(&sim, pu, c).unwrap().is_ok());
    // A stale entry still selects, and refreshes in the background.
    sim.run_for(SECS(2));
    assert!(matches!(
        sim.with_client(pu, |c, now| c.get_primary_server(&pool("echo"), now)),
        Selection::Ready(_)
    ));
    sim.run_for(Duration::from_millis(10));
    assert_eq!(hr(&sim), 3);
    assert!(sim.client(pu).is_fresh(&pool("echo")));
}

#[test]
fn get_next_server_reports_and_moves_on_and_three_reports_remove_the_pe() {
    let mut sim = Sim::new(SimConfig::default());
    // RSPLIB's rule: count reports, no probe; removal at the third.
    let r = sim.add_registrar(
        RegistrarConfig {
            probe_unreachable: false,
            max_bad_pe_reports: 2,
            ..reg_config()
        },
        0x1111,
    );
    let pe_c = sim.add_client(client_config(&[r]), 1);
    for _ in 0..3 {
        register(&mut sim, pe_c, "rr", Policy::RoundRobin, 30);
    }
    let pus: Vec<usize> = (0..3)
        .map(|i| sim.add_client(client_config(&[r]), 10 + i))
        .collect();
    sim.run_for(SECS(1));

    let p = pool("rr");
    let mut victim = None;
    for &pu in &pus {
        let sel = sim.with_client(pu, |c, now| c.get_primary_server(&p, now));
        let Selection::Pending(req) = sel else {
            panic!("cold cache must ask: {sel:?}")
        };
        sim.run_for(Duration::from_millis(10));
        assert!(resolved(&sim, pu, req).unwrap().is_ok());
        let Selection::Ready(first) = sim.with_client(pu, |c, now| c.get_primary_server(&p, now))
        else {
            panic!()
        };
        let v = *victim.get_or_insert(first.id);
        let Selection::Ready(next) = sim.with_client(pu, |c, now| c.get_next_server(&p, v, now))
        else {
            panic!()
        };
        assert_ne!(next.id, v, "the failed PE is not offered again");
        // The same incident is reported only once.
        sim.with_client(pu, |c, now| {
            assert!(!c.report_unreachable(&p, v, now));
            for _ in 0..5 {
                let Selection::Ready(x) = c.get_next_server(&p, v, now) else {
                    panic!()
                };
                assert_ne!(x.id, v);
            }
        });
        sim.run_for(Duration::from_millis(10));
        assert_eq!(
            sim.count_sent(Node::Client(pu), asap_type::ENDPOINT_UNREACHABLE),
            1
        );
    }
    let v = victim.unwrap();
    assert_eq!(sim.registrar(r).stats().unreachable_reports, 3);
    assert!(sim.registrar(r).pool_element(&p, v).is_none());
    // A pool user asking now no longer gets it.
    let fresh = sim.add_client(client_config(&[r]), 99);
    let req = resolve(&mut sim, fresh, "rr", false);
    sim.run_for(Duration::from_millis(10));
    let got = resolved(&sim, fresh, req).unwrap().unwrap();
    assert_eq!(got.elements.len(), 2);
    assert!(!ids(&got).contains(&v));
}

#[test]
fn get_next_server_refreshes_when_all_cached_pes_failed() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let pe_c = sim.add_client(client_config(&[r]), 1);
    let a = register(&mut sim, pe_c, "p", Policy::RoundRobin, 30);
    let b = register(&mut sim, pe_c, "p", Policy::RoundRobin, 30);
    let pu = sim.add_client(client_config(&[r]), 2);
    sim.run_for(SECS(1));
    let (ia, ib) = (
        sim.client(pe_c).pe_id(a).unwrap(),
        sim.client(pe_c).pe_id(b).unwrap(),
    );
    let p = pool("p");
    let req = resolve(&mut sim, pu, "p", false);
    sim.run_for(Duration::from_millis(10));
    assert!(resolved(&sim, pu, req).unwrap().is_ok());
    let s1 = sim.with_client(pu, |c, now| c.get_next_server(&p, ia, now));
    assert!(matches!(s1, Selection::Ready(ref pe) if pe.id == ib));
    // Both failed: the cache is exhausted, the registrar is asked again.
    let s2 = sim.with_client(pu, |c, now| c.get_next_server(&p, ib, now));
    let Selection::Pending(req) = s2 else {
        panic!("{s2:?}")
    };
    sim.run_for(Duration::from_millis(10));
    assert!(resolved(&sim, pu, req).unwrap().is_ok());
    // The registrar still lists both (one report each, it probed them and
    // they answered): nothing usable until the incidents end.
    let s3 = sim.with_client(pu, |c, now| c.get_primary_server(&p, now));
    assert_eq!(s3, Selection::Failed(AsapError::NoUsableElement));
    sim.run_for(SECS(11));
    assert!(matches!(
        sim.with_client(pu, |c, now| c.get_primary_server(&p, now)),
        Selection::Ready(_) | Selection::Pending(_)
    ));
}

#[test]
fn subscription_pushes_update_the_cache() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let pe_c = sim.add_client(client_config(&[r]), 1);
    let pu = sim.add_client(client_config(&[r]), 2);
    register(&mut sim, pe_c, "sub", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    let req = resolve(&mut sim, pu, "sub", true);
    sim.run_for(SECS(1));
    assert!(sim.events(pu).iter().any(|(_, e)| matches!(
        e,
        Event::Resolved { request, subscribed: true, result: Ok(_), .. } if *request == req
    )));
    assert!(sim.client(pu).is_subscribed(&pool("sub")));
    // Another PE joins: the registrar pushes, the cache follows.
    let b = register(&mut sim, pe_c, "sub", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    let updates: Vec<&ResolvedPool> = sim
        .events(pu)
        .iter()
        .filter_map(|(_, e)| match e {
            Event::PoolUpdate { result: Ok(r), .. } => Some(r),
            _ => None,
        })
        .collect();
    assert!(!updates.is_empty());
    assert_eq!(updates.last().unwrap().elements.len(), 2);
    assert_eq!(
        sim.client(pu).cached(&pool("sub")).unwrap().elements.len(),
        2
    );
    // Subscribed pools stay fresh: no request long after the stale age.
    sim.run_for(SECS(30));
    let hr = sim.count_sent(Node::Client(pu), asap_type::HANDLE_RESOLUTION);
    let again = resolve(&mut sim, pu, "sub", false);
    assert!(resolved(&sim, pu, again).unwrap().is_ok());
    sim.run_for(SECS(1));
    assert_eq!(
        sim.count_sent(Node::Client(pu), asap_type::HANDLE_RESOLUTION),
        hr
    );
    // The PE leaves: the push shows one PE again.
    sim.with_client(pe_c, |c, now| c.deregister(b, now))
        .unwrap();
    sim.run_for(SECS(1));
    assert_eq!(
        sim.client(pu).cached(&pool("sub")).unwrap().elements.len(),
        1
    );
}

#[test]
fn subscription_is_renewed_at_a_new_home() {
    let mut sim = Sim::new(SimConfig::default());
    let r0 = sim.add_registrar(reg_config(), 0x1111);
    let r1 = sim.add_registrar(reg_config(), 0x2222);
    let pe_c = sim.add_client(client_config(&[r1]), 1);
    let pu = sim.add_client(client_config(&[r0, r1]), 2);
    register(&mut sim, pe_c, "sub", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    resolve(&mut sim, pu, "sub", true);
    sim.run_for(SECS(1));
    // r0 knows nothing of the pool (no ENRP yet): negative, no subscription.
    assert!(!sim.client(pu).is_subscribed(&pool("sub")));
    sim.kill_registrar(r0);
    sim.run_for(SECS(1));
    assert_eq!(sim.client(pu).home().unwrap().0, registrar_addr(r1));
    assert!(sim.client(pu).is_subscribed(&pool("sub")));
    assert!(sim.events(pu).iter().any(|(_, e)| matches!(
        e,
        Event::PoolUpdate { result: Ok(r), .. } if r.elements.len() == 1
    )));
}

#[test]
fn announced_registrars_are_learned_and_expire_after_t7() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(
        RegistrarConfig {
            announce_interval: Some(SECS(1)),
            ..reg_config()
        },
        0x1111,
    );
    // No configured registrar at all.
    let c = sim.add_client(ClientConfig::default(), 1);
    sim.run_for(Duration::from_millis(500));
    assert_eq!(sim.client(c).registrars(), vec![registrar_addr(r)]);
    // A PE registers through the announced registrar.
    let pe = register(&mut sim, c, "echo", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    assert_eq!(sim.client(c).pe_status(pe), Some(PeStatus::Registered));
    assert_eq!(
        sim.client(c).home(),
        Some((registrar_addr(r), Some(0x1111)))
    );
    // The registrar dies: its address lives T7 (5 s) after its last announce.
    sim.kill_registrar(r);
    let dead_at = sim.now;
    sim.run_for(SECS(4));
    assert_eq!(sim.client(c).registrars(), vec![registrar_addr(r)]);
    sim.run_for(SECS(2));
    assert!(sim.client(c).registrars().is_empty(), "{:?}", sim.now);
    // Hunting with nothing to hunt: no connection attempts.
    let n = sim.connects.iter().filter(|(t, _, _)| *t > dead_at).count();
    sim.run_for(SECS(60));
    let m = sim.connects.iter().filter(|(t, _, _)| *t > dead_at).count();
    assert_eq!(n, m);
    assert!(sim.client(c).is_hunting());
    // It comes back: the next announce ends the hunt, the PE re-registers.
    sim.restart_registrar(r);
    sim.run_for(SECS(3));
    assert_eq!(sim.client(c).home().unwrap().0, registrar_addr(r));
    let id = sim.client(c).pe_id(pe).unwrap();
    assert!(sim.registrar(r).pool_element(&pool("echo"), id).is_some());
}

#[test]
fn t5_doubles_each_round_up_to_retran_max() {
    let mut sim = Sim::new(SimConfig::default());
    let r0 = sim.add_registrar(reg_config(), 0x1111);
    sim.kill_registrar(r0);
    let c = sim.add_client(client_config(&[r0]), 1);
    // A subscription keeps the client wanting a registrar for ever.
    resolve(&mut sim, c, "p", true);
    sim.run_until(Time::from_secs(400));
    let rounds: Vec<u64> = sim
        .connects
        .iter()
        .map(|(t, _, _)| t.as_micros() / 1_000_000)
        .collect();
    // 10, 20, 40, then 60 (RETRAN-MAX) for ever.
    assert_eq!(rounds, vec![0, 10, 30, 70, 130, 190, 250, 310, 370]);
    assert_eq!(sim.client(c).hunt_timeout(), SECS(60));
    // Back up: the next round finds it, and T5 is reset.
    sim.restart_registrar(r0);
    sim.run_until(Time::from_secs(431));
    assert!(sim.client(c).home().is_some());
    assert!(!sim.client(c).is_hunting());
    assert_eq!(sim.client(c).hunt_timeout(), SECS(10));
}

#[test]
fn a_hunt_tries_at_most_three_registrars_at_once() {
    let mut sim = Sim::new(SimConfig::default());
    let regs: Vec<usize> = (0..5)
        .map(|i| sim.add_registrar(reg_config(), 0x100 + i as u32))
        .collect();
    for &r in &regs {
        sim.blackhole_registrar(r);
    }
    let c = sim.add_client(client_config(&regs), 1);
    // A subscription keeps the client hunting after the registration fails.
    resolve(&mut sim, c, "p", true);
    let pe = register(&mut sim, c, "echo", Policy::RoundRobin, 30);
    let mut most = 0;
    for _ in 0..25 {
        sim.run_for(SECS(1));
        most = most.max(sim.client(c).hunt_attempts());
    }
    assert_eq!(most, 3);
    let at = |t: u64| -> Vec<SocketAddr> {
        sim.connects
            .iter()
            .filter(|(x, _, _)| *x == Time::from_secs(t))
            .map(|(_, _, a)| *a)
            .collect()
    };
    assert_eq!(
        at(0),
        vec![registrar_addr(0), registrar_addr(1), registrar_addr(2)]
    );
    // The next round starts with the addresses not tried yet.
    assert_eq!(
        at(10),
        vec![registrar_addr(3), registrar_addr(4), registrar_addr(0)]
    );
    // No registrar for 2 × T2: the registration failed meanwhile.
    sim.restart_registrar(regs[4]);
    sim.run_until(Time::from_secs(69));
    assert!(sim.client(c).home().is_none());
    assert!(sim.events(c).iter().any(|(t, e)| *t == Time::from_secs(60)
        && *e
            == Event::RegistrationFailed {
                pe,
                error: AsapError::Timeout
            }));
    // One came back: the round at 70 s (after 10 + 20 + 40) connects to it.
    sim.run_until(Time::from_secs(71));
    assert_eq!(sim.client(c).home().unwrap().0, registrar_addr(4));
    assert_eq!(sim.client(c).hunt_attempts(), 0);
}

#[test]
fn lossy_network_soak() {
    // One registrar: without ENRP a second one would not know the pool.
    // SCTP does not lose messages; the loss stands for a registrar that drops
    // work. Keep-alives are off: one lost ack would make the registrar drop
    // the PE until its next re-registration, which is the registrar's rule,
    // not the client's.
    let mut sim = Sim::new(SimConfig {
        loss_permille: 30,
        jitter: Duration::from_millis(20),
        seed: std::env::var("SOAK_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(7),
        ..SimConfig::default()
    });
    let r = sim.add_registrar(
        RegistrarConfig {
            keep_alive_interval: Duration::ZERO,
            ..reg_config()
        },
        0x1111,
    );
    let pe_c = sim.add_client(client_config(&[r]), 1);
    let pu = sim.add_client(client_config(&[r]), 2);
    let pe = register(&mut sim, pe_c, "echo", Policy::RoundRobin, 120);
    let (mut ok, mut timeouts, mut other) = (0, 0, Vec::new());
    for i in 0..60u64 {
        sim.run_for(SECS(10));
        let req = resolve(&mut sim, pu, "echo", i % 7 == 0);
        sim.run_for(SECS(50));
        match resolved(&sim, pu, req) {
            Some(Ok(_)) => ok += 1,
            Some(Err(AsapError::Timeout)) => timeouts += 1,
            x => other.push(x),
        }
    }
    // 3 % loss each way: a request and its answer both get through with
    // p = 0.94 per try, three tries: 99.98 %. The PE's refreshes (two tries
    // within the 20 s T4 leaves) fail with p = 0.35 %, then it lapses for a
    // while.
    assert!(ok >= 57, "{ok} ok, {timeouts} timeouts, {other:?}");
    let id = sim.client(pe_c).pe_id(pe).unwrap();
    assert!(sim.client(pe_c).pe_status(pe).is_some());
    sim.config.loss_permille = 0;
    sim.run_for(SECS(60));
    assert_eq!(sim.client(pe_c).pe_status(pe), Some(PeStatus::Registered));
    assert!(sim.registrar(r).pool_element(&pool("echo"), id).is_some());
}

#[test]
fn asap_error_from_the_registrar_is_an_event() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(reg_config(), 0x1111);
    let c = sim.add_client(client_config(&[r]), 1);
    register(&mut sim, c, "echo", Policy::RoundRobin, 30);
    sim.run_for(SECS(1));
    let (_, rconn) = sim.dial(r, c);
    let causes = vec![ErrorCause::new(cause::UNRECOGNIZED_MESSAGE)];
    sim.inject_from_registrar(r, rconn, &AsapMessage::Error(causes.clone()));
    sim.run_for(SECS(1));
    assert!(sim.events(c).iter().any(|(_, e)| *e
        == Event::ProtocolError {
            addr: registrar_addr(r),
            causes: causes.clone()
        }));
    assert_eq!(sim.client(c).stats().errors_received, 1);
}

// ------------------------------------------------------- core without the sim

fn up_client() -> (Client, ConnId) {
    let mut c = Client::new(ClientConfig::default(), 5, Time::ZERO);
    let conn = c.handle_accepted(registrar_addr(0), Time::ZERO);
    (c, conn)
}

#[test]
fn garbage_never_panics_and_is_counted() {
    let (mut c, conn) = up_client();
    c.register(
        pool("echo"),
        transport(1),
        Policy::RoundRobin,
        30,
        RegisterOptions::default(),
        Time::ZERO,
    )
    .unwrap();
    let valid = [
        AsapMessage::EndpointKeepAlive {
            home: true,
            server_id: 1,
            pool_handle: pool("echo"),
            pe_id: None,
        }
        .to_bytes(),
        AsapMessage::HandleResolutionResponse {
            accepted: true,
            pool_handle: pool("echo"),
            policy: Some(Policy::Random),
            elements: vec![],
            error: None,
        }
        .to_bytes(),
        AsapMessage::RegistrationResponse {
            reject: true,
            pool_handle: pool("x"),
            pe_id: 3,
            error: Some(vec![ErrorCause::new(0xF001)]),
        }
        .to_bytes(),
    ];
    let mut seed = 0x1234_5678_u64;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut now = Time::ZERO;
    for i in 0..20_000u64 {
        let mut b = valid[(i % 3) as usize].clone();
        let n = (next() % 4) as usize;
        for _ in 0..=n {
            let k = (next() as usize) % b.len();
            b[k] = next() as u8;
        }
        if i % 5 == 0 {
            let cut = (next() as usize) % (b.len() + 1);
            b.truncate(cut);
        }
        now = Time(now.0 + 1000);
        c.handle_message(conn, 11, &b, now);
        c.handle_announce(registrar_addr(1), &b, now);
        if i % 100 == 0 {
            c.handle_timeout(now);
        }
        while c.poll_output().is_some() {}
        while c.poll_event().is_some() {}
    }
    let st = c.stats();
    assert!(st.malformed + st.dropped + st.unexpected > 1000, "{st:?}");
    // Unknown connections and PPIDs are dropped.
    let before = c.stats().dropped;
    c.handle_message(ConnId(999), 11, &valid[0], now);
    c.handle_message(conn, 12, &valid[0], now);
    assert_eq!(c.stats().dropped, before + 2);
}

#[test]
fn invalid_arguments_are_refused_at_once() {
    let (mut c, _) = up_client();
    let t = Time::ZERO;
    let reg = |c: &mut Client, p: &str, life: i32, id: Option<u32>| {
        c.register(
            pool(p),
            transport(1),
            Policy::RoundRobin,
            life,
            RegisterOptions { pe_id: id },
            t,
        )
    };
    assert!(matches!(
        reg(&mut c, "", 30, None),
        Err(AsapError::InvalidArgument(_))
    ));
    assert!(matches!(
        reg(&mut c, "p", -2, None),
        Err(AsapError::InvalidArgument(_))
    ));
    assert!(matches!(
        reg(&mut c, "p", 30, Some(0)),
        Err(AsapError::InvalidArgument(_))
    ));
    assert!(reg(&mut c, "p", 30, Some(7)).is_ok());
    assert!(matches!(
        reg(&mut c, "p", 30, Some(7)),
        Err(AsapError::InvalidArgument(_))
    ));
    assert!(reg(&mut c, "q", 30, Some(7)).is_ok());
    let huge = PoolHandle(vec![b'x'; 70_000]);
    assert!(c.resolve(huge.clone(), None, false, t).is_err());
    assert!(matches!(
        c.get_primary_server(&huge, t),
        Selection::Failed(AsapError::InvalidArgument(_))
    ));
    assert!(!c.report_unreachable(&huge, 1, t));
    assert_eq!(
        c.update_policy(PeHandle(999), Policy::RoundRobin, t),
        Err(AsapError::UnknownHandle)
    );
}

#[test]
fn non_unique_pe_id_draws_a_new_id() {
    let mut c = Client::new(ClientConfig::default(), 9, Time::ZERO);
    c.add_registrar(registrar_addr(0), Time::ZERO);
    let pe = c
        .register(
            pool("p"),
            transport(1),
            Policy::RoundRobin,
            30,
            RegisterOptions::default(),
            Time::ZERO,
        )
        .unwrap();
    let Some(Output::Connect { conn, .. }) = c.poll_output() else {
        panic!()
    };
    c.handle_connected(conn, Time::ZERO);
    let first = c.pe_id(pe).unwrap();
    let reject = AsapMessage::RegistrationResponse {
        reject: true,
        pool_handle: pool("p"),
        pe_id: first,
        error: Some(vec![ErrorCause::new(cause::NON_UNIQUE_PE_ID)]),
    };
    c.handle_message(conn, 11, &reject.to_bytes(), Time::ZERO);
    let second = c.pe_id(pe).unwrap();
    assert_ne!(first, second);
    let sent: Vec<AsapMessage> = std::iter::from_fn(|| c.poll_output())
        .filter_map(|o| match o {
            Output::Send { msg, .. } => AsapMessage::decode(&msg).ok().map(|d| d.msg),
            _ => None,
        })
        .collect();
    assert!(sent.iter().any(|m| matches!(
        m,
        AsapMessage::Registration { pe, .. } if pe.id == second
    )));
    // A second 0x4 exhausts MAX-REG-ATTEMPT: final.
    let reject2 = AsapMessage::RegistrationResponse {
        reject: true,
        pool_handle: pool("p"),
        pe_id: second,
        error: Some(vec![ErrorCause::new(cause::NON_UNIQUE_PE_ID)]),
    };
    c.handle_message(conn, 11, &reject2.to_bytes(), Time::ZERO);
    let ev: Vec<Event> = std::iter::from_fn(|| c.poll_event()).collect();
    assert!(ev.iter().any(|e| matches!(
        e,
        Event::RegistrationFailed { error, .. } if error.cause_code() == Some(cause::NON_UNIQUE_PE_ID)
    )));
}

#[test]
fn unsolicited_deregistration_response_triggers_a_reregistration() {
    let mut c = Client::new(ClientConfig::default(), 9, Time::ZERO);
    c.add_registrar(registrar_addr(0), Time::ZERO);
    let pe = c
        .register(
            pool("p"),
            transport(1),
            Policy::RoundRobin,
            30,
            RegisterOptions::default(),
            Time::ZERO,
        )
        .unwrap();
    let Some(Output::Connect { conn, .. }) = c.poll_output() else {
        panic!()
    };
    c.handle_connected(conn, Time::ZERO);
    let id = c.pe_id(pe).unwrap();
    let ok = AsapMessage::RegistrationResponse {
        reject: false,
        pool_handle: pool("p"),
        pe_id: id,
        error: None,
    };
    c.handle_message(conn, 11, &ok.to_bytes(), Time::ZERO);
    while c.poll_output().is_some() {}
    assert_eq!(c.pe_status(pe), Some(PeStatus::Registered));
    let gone = AsapMessage::DeregistrationResponse {
        pool_handle: pool("p"),
        pe_id: id,
        error: None,
    };
    c.handle_message(conn, 11, &gone.to_bytes(), Time::from_secs(1));
    assert_eq!(c.pe_status(pe), Some(PeStatus::Registering));
    assert!(matches!(
        c.poll_output(),
        Some(Output::Send { msg, .. }) if msg[0] == asap_type::REGISTRATION
    ));
    assert_eq!(c.stats().unsolicited_deregistrations, 1);
}

#[test]
fn rsplib_profiles_interoperate() {
    let mut sim = Sim::new(SimConfig::default());
    let r = sim.add_registrar(
        RegistrarConfig {
            idle_timeout: Duration::ZERO,
            ..RegistrarConfig::rsplib_profile()
        },
        0x5151,
    );
    let c = sim.add_client(
        ClientConfig {
            registrars: vec![registrar_addr(r)],
            ..ClientConfig::rsplib_profile()
        },
        1,
    );
    // Learn the registrar's id from its first announce before registering.
    sim.run_for(Duration::from_millis(10));
    // RSPLIB: life 3 × 30 000 ms, re-registration every 30 s.
    let pe = register(&mut sim, c, "rsp", Policy::LeastUsed { load: 0 }, 90_000);
    sim.run_for(SECS(301));
    let id = sim.client(c).pe_id(pe).unwrap();
    let stored = sim.registrar(r).pool_element(&pool("rsp"), id).unwrap();
    assert_eq!(stored.reg_life, 90_000);
    let regs: Vec<AsapMessage> = sim
        .sent
        .iter()
        .filter(|s| s.from == Node::Client(c) && s.msg_type == asap_type::REGISTRATION)
        .map(|s| AsapMessage::decode(&s.bytes).unwrap().msg)
        .collect();
    assert_eq!(regs.len(), 11, "one at 0 s, then every 30 s");
    // The home id is filled in, as RSPLIB does; keep-alives then carry the
    // PE id and are answered.
    assert!(regs
        .iter()
        .all(|m| matches!(m, AsapMessage::Registration { pe, .. } if pe.home == 0x5151)));
    let st = sim.registrar(r).stats();
    assert!(st.keep_alives_sent > 40);
    assert_eq!(st.keep_alive_failures, 0);
    no_errors(&sim, c);
}

#[test]
fn unreachable_reports_are_rate_limited() {
    let cfg = ClientConfig {
        unreachable_rate: rserpool::asap::RateLimit {
            per_sec: 1,
            burst: 2,
        },
        ..ClientConfig::default()
    };
    let mut c = Client::new(cfg, 3, Time::ZERO);
    let conn = c.handle_accepted(registrar_addr(0), Time::ZERO);
    // Make it home through a keep-alive with H=1 for a PE of ours.
    c.register(
        pool("p"),
        transport(1),
        Policy::RoundRobin,
        30,
        RegisterOptions::default(),
        Time::ZERO,
    )
    .unwrap();
    let ka = AsapMessage::EndpointKeepAlive {
        home: true,
        server_id: 9,
        pool_handle: pool("p"),
        pe_id: None,
    };
    c.handle_message(conn, 11, &ka.to_bytes(), Time::ZERO);
    assert_eq!(c.home(), Some((registrar_addr(0), Some(9))));
    while c.poll_output().is_some() {}
    let p = pool("q");
    assert!(c.report_unreachable(&p, 1, Time::ZERO));
    assert!(c.report_unreachable(&p, 2, Time::ZERO));
    assert!(!c.report_unreachable(&p, 3, Time::ZERO));
    assert!(!c.report_unreachable(&p, 1, Time::ZERO), "same incident");
    assert!(c.report_unreachable(&p, 4, Time::from_secs(1)));
    let sent = std::iter::from_fn(|| c.poll_output())
        .filter(|o| matches!(o, Output::Send { conn: x, msg, .. } if *x == conn && msg[0] == asap_type::ENDPOINT_UNREACHABLE))
        .count();
    assert_eq!(sent, 3);
    assert_eq!(c.stats().reports_rate_limited, 1);
    assert_eq!(c.stats().reports_suppressed, 1);
    // The incident ends after the hold-off: PE 1 may be reported again.
    assert!(c.report_unreachable(&p, 1, Time::from_secs(11)));
}
