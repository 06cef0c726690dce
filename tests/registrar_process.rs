//! `rserpool registrar` as a real process on loopback, driven through the TCP
//! mapping with the library's blocking client and through the CLI tools.

mod common;

use std::time::Duration;

use common::*;
use rserpool::wire::{cause, AsapMessage, Policy, Transport};
use serde_json::Value;

#[test]
fn registration_and_resolution_round_trips() {
    let r = Proc::start(&[]);
    let mut pe_conn = r.client();
    for id in 1..=3 {
        granted(
            &register(
                &mut pe_conn,
                "alpha",
                pe(id, 5000 + id as u16, Policy::RoundRobin, 60),
            ),
            id,
        );
    }
    let mut pu = r.client();
    match ask(&mut pu, &resolve("alpha", Some(10)), is_resolution) {
        AsapMessage::HandleResolutionResponse {
            elements, error, ..
        } => {
            assert!(error.is_none());
            let mut got: Vec<_> = elements.iter().map(|p| (p.id, p.home)).collect();
            got.sort_unstable();
            assert_eq!(
                got,
                vec![(1, r.server_id), (2, r.server_id), (3, r.server_id)]
            );
            for p in &elements {
                assert_eq!(p.user_transport, tcp(5000 + p.id as u16));
                // The registrar fills in the PE's ASAP transport: our connection.
                let Some(Transport::Tcp { port, .. }) = &p.asap_transport else {
                    panic!("{:?}", p.asap_transport)
                };
                assert_eq!(*port, pe_conn.local_addr().unwrap().port());
            }
        }
        _ => unreachable!(),
    }
    // Items bound the answer.
    match ask(&mut pu, &resolve("alpha", Some(2)), is_resolution) {
        AsapMessage::HandleResolutionResponse { elements, .. } => assert_eq!(elements.len(), 2),
        _ => unreachable!(),
    }
    // Deregistration, then the pool shrinks.
    let resp = ask(
        &mut pe_conn,
        &AsapMessage::Deregistration {
            pool_handle: "alpha".into(),
            pe_id: 2,
        },
        is_dereg_resp,
    );
    assert!(matches!(
        resp,
        AsapMessage::DeregistrationResponse {
            pe_id: 2,
            error: None,
            ..
        }
    ));
    assert_eq!(resolved(&mut pu, "alpha"), Ok(vec![1, 3]));
}

#[test]
fn every_rejection_cause_through_the_wire() {
    let r = Proc::start(&["--max-pes-per-connection", "3"]);
    let mut a = r.client();
    let mut b = r.client();
    granted(
        &register(
            &mut a,
            "P",
            pe(1, 5001, Policy::WeightedRoundRobin { weight: 5 }, 60),
        ),
        1,
    );

    // 0x3 invalid values: PE id 0, registration life 0, unspecified address.
    assert_eq!(
        rejected(&register(&mut a, "P", pe(0, 5001, Policy::RoundRobin, 60))).code,
        cause::INVALID_VALUES
    );
    assert_eq!(
        rejected(&register(
            &mut a,
            "P",
            pe(7, 5007, Policy::WeightedRoundRobin { weight: 1 }, 0)
        ))
        .code,
        cause::INVALID_VALUES
    );
    // 0x5 inconsistent policy.
    assert_eq!(
        rejected(&register(&mut a, "P", pe(2, 5002, Policy::RoundRobin, 60))).code,
        cause::INCONSISTENT_POLICY
    );
    // 0x7 inconsistent transport.
    let mut p = pe(3, 5003, Policy::WeightedRoundRobin { weight: 1 }, 60);
    p.user_transport = Transport::Udp {
        port: 5003,
        addr: "127.0.0.1".parse().unwrap(),
    };
    assert_eq!(
        rejected(&register(&mut a, "P", p)).code,
        cause::INCONSISTENT_TRANSPORT
    );
    // 0x8 inconsistent data/control (same transport, other Transport Use).
    let mut p = pe(4, 5004, Policy::WeightedRoundRobin { weight: 1 }, 60);
    p.user_transport = Transport::Tcp {
        port: 5004,
        transport_use: 1,
        addr: "127.0.0.1".parse().unwrap(),
    };
    assert_eq!(
        rejected(&register(&mut a, "P", p)).code,
        cause::INCONSISTENT_DATA_CONTROL
    );
    // 0x4 non-unique PE id: PE 1 from another connection with another transport.
    assert_eq!(
        rejected(&register(
            &mut b,
            "P",
            pe(1, 6001, Policy::WeightedRoundRobin { weight: 5 }, 60)
        ))
        .code,
        cause::NON_UNIQUE_PE_ID
    );
    // 0x6 lack of resources: a connection may own 3 PEs.
    granted(
        &register(&mut a, "Q", pe(10, 5010, Policy::RoundRobin, 60)),
        10,
    );
    granted(
        &register(&mut a, "Q", pe(11, 5011, Policy::RoundRobin, 60)),
        11,
    );
    assert_eq!(
        rejected(&register(&mut a, "Q", pe(12, 5012, Policy::RoundRobin, 60))).code,
        cause::LACK_OF_RESOURCES
    );
    // 0x9 unknown pool handle.
    assert_eq!(resolved(&mut b, "nope"), Err(cause::UNKNOWN_POOL_HANDLE));
    // 0xa security: another connection may not deregister PE 1.
    match ask(
        &mut b,
        &AsapMessage::Deregistration {
            pool_handle: "P".into(),
            pe_id: 1,
        },
        is_dereg_resp,
    ) {
        AsapMessage::DeregistrationResponse { error: Some(e), .. } => {
            assert_eq!(e[0].code, cause::SECURITY)
        }
        other => panic!("{other:?}"),
    }
    // 0x2 unrecognized message (type 0x41: skip and report).
    let msg = [0x41u8, 0, 0, 8, 9, 9, 9, 9];
    b.send(11, &msg).unwrap();
    match next(&mut b, |m| matches!(m, AsapMessage::Error(_))) {
        AsapMessage::Error(e) => assert_eq!(
            (e[0].code, e[0].info.clone()),
            (cause::UNRECOGNIZED_MESSAGE, msg.to_vec())
        ),
        _ => unreachable!(),
    }
    // 0x1 unrecognized parameter (type 0x4123: stop and report).
    let mut m = resolve("P", None).to_bytes();
    m.extend_from_slice(&[0x41, 0x23, 0, 8, 1, 2, 3, 4]);
    let len = u16::try_from(m.len()).unwrap();
    m[2..4].copy_from_slice(&len.to_be_bytes());
    b.send(11, &m).unwrap();
    match next(&mut b, |m| matches!(m, AsapMessage::Error(_))) {
        AsapMessage::Error(e) => assert_eq!(e[0].code, cause::UNRECOGNIZED_PARAMETER),
        _ => unreachable!(),
    }
    // Still exactly what was granted.
    assert_eq!(resolved(&mut b, "P"), Ok(vec![1]));
    assert_eq!(resolved(&mut b, "Q"), Ok(vec![10, 11]));
}

#[test]
fn reregistration_updates_the_pe() {
    let r = Proc::start(&[]);
    let mut a = r.client();
    granted(
        &register(
            &mut a,
            "P",
            pe(5, 5005, Policy::WeightedRoundRobin { weight: 1 }, 60),
        ),
        5,
    );
    granted(
        &register(
            &mut a,
            "P",
            pe(5, 5006, Policy::WeightedRoundRobin { weight: 9 }, 60),
        ),
        5,
    );
    let mut pu = r.client();
    match ask(&mut pu, &resolve("P", Some(10)), is_resolution) {
        AsapMessage::HandleResolutionResponse { elements, .. } => {
            assert_eq!(elements.len(), 1);
            assert_eq!(elements[0].user_transport, tcp(5006));
            assert_eq!(elements[0].policy, Policy::WeightedRoundRobin { weight: 9 });
        }
        _ => unreachable!(),
    }
}

#[test]
fn registrations_expire_after_their_life() {
    let r = Proc::start(&["--reglife-unit", "ms", "--keep-alive-interval", "0"]);
    let mut a = r.client();
    granted(
        &register(&mut a, "short", pe(1, 5001, Policy::RoundRobin, 300)),
        1,
    );
    granted(
        &register(&mut a, "short", pe(2, 5002, Policy::RoundRobin, 600_000)),
        2,
    );
    // The registrar tells the PE with an unsolicited deregistration response.
    match next(&mut a, is_dereg_resp) {
        AsapMessage::DeregistrationResponse { pe_id, .. } => assert_eq!(pe_id, 1),
        _ => unreachable!(),
    }
    let mut pu = r.client();
    assert_eq!(resolved(&mut pu, "short"), Ok(vec![2]));
}

#[test]
fn a_pe_that_does_not_ack_keep_alives_is_removed() {
    let r = Proc::start(&[
        "--keep-alive-interval",
        "100ms",
        "--keep-alive-timeout",
        "300ms",
        "--keep-alive-min-gap",
        "10ms",
        "--keep-alive-pe-id",
        "always",
    ]);
    let mut silent = r.client();
    let mut good = r.client();
    granted(
        &register(&mut silent, "ka", pe(1, 5001, Policy::RoundRobin, 600)),
        1,
    );
    granted(
        &register(&mut good, "ka", pe(2, 5002, Policy::RoundRobin, 600)),
        2,
    );
    let mut pu = r.client();
    // The good PE answers keep-alives (in `resolved` via `ask` for its own
    // connection, and here in a loop) while the silent one never does.
    let mut seen_keep_alive = false;
    eventually("the silent PE to be removed", || {
        while let Ok(m) = good.recv_asap(Duration::from_millis(50)) {
            seen_keep_alive |= matches!(m, AsapMessage::EndpointKeepAlive { .. });
            answer_keep_alive(&mut good, &m);
        }
        resolved(&mut pu, "ka") == Ok(vec![2])
    });
    assert!(seen_keep_alive);
    // The good one stays across several more keep-alive rounds.
    let until = std::time::Instant::now() + Duration::from_millis(800);
    while std::time::Instant::now() < until {
        if let Ok(m) = good.recv_asap(Duration::from_millis(50)) {
            answer_keep_alive(&mut good, &m);
        }
    }
    assert_eq!(resolved(&mut pu, "ka"), Ok(vec![2]));
}

#[test]
fn unreachable_reports_remove_a_pe() {
    let r = Proc::start(&["--profile", "rsplib", "--max-bad-pe-reports", "2"]);
    let mut a = r.client();
    granted(
        &register(&mut a, "u", pe(1, 5001, Policy::RoundRobin, 600_000)),
        1,
    );
    granted(
        &register(&mut a, "u", pe(2, 5002, Policy::RoundRobin, 600_000)),
        2,
    );
    let mut pu = r.client();
    for _ in 0..3 {
        pu.send_asap(&AsapMessage::EndpointUnreachable {
            pool_handle: "u".into(),
            pe_id: 1,
        })
        .unwrap();
    }
    eventually("PE 1 to be removed after 3 reports", || {
        resolved(&mut pu, "u") == Ok(vec![2])
    });
}

#[test]
fn connection_loss_removes_pes_unless_disabled() {
    let r = Proc::start(&[]);
    let mut pu = r.client();
    {
        let mut a = r.client();
        granted(
            &register(&mut a, "c", pe(1, 5001, Policy::RoundRobin, 600)),
            1,
        );
        assert_eq!(resolved(&mut pu, "c"), Ok(vec![1]));
    }
    eventually("the PE to go with its connection", || {
        resolved(&mut pu, "c") == Err(cause::UNKNOWN_POOL_HANDLE)
    });

    let r = Proc::start(&["--no-remove-on-disconnect"]);
    let mut pu = r.client();
    {
        let mut a = r.client();
        granted(
            &register(&mut a, "c", pe(1, 5001, Policy::RoundRobin, 600)),
            1,
        );
        a.stream().shutdown(std::net::Shutdown::Both).unwrap();
    }
    // Give the registrar every chance to (wrongly) remove it: a round trip on
    // another connection is processed after the close.
    let mut probe = r.client();
    granted(
        &register(&mut probe, "other", pe(9, 5009, Policy::RoundRobin, 600)),
        9,
    );
    assert_eq!(resolved(&mut pu, "c"), Ok(vec![1]));
}

#[test]
fn resolution_rate_limit_drops_excess_requests() {
    let r = Proc::start(&["--resolution-rate", "5/5"]);
    let mut a = r.client();
    granted(
        &register(&mut a, "r", pe(1, 5001, Policy::RoundRobin, 600)),
        1,
    );
    let mut pu = r.client();
    for _ in 0..50 {
        pu.queue(11, &resolve("r", None).to_bytes()).unwrap();
    }
    pu.flush().unwrap();
    let mut answers = 0;
    while pu.recv_asap(Duration::from_millis(700)).is_ok() {
        answers += 1;
    }
    assert!((5..50).contains(&answers), "{answers} answers");
}

#[test]
fn resolve_and_dump_json() {
    let r = Proc::start(&[]);
    let mut a = r.client();
    granted(
        &register(&mut a, "j1", pe(11, 5011, Policy::RoundRobin, 60)),
        11,
    );
    granted(
        &register(&mut a, "j1", pe(12, 5012, Policy::RoundRobin, 60)),
        12,
    );
    granted(
        &register(
            &mut a,
            "j2",
            pe(21, 5021, Policy::LeastUsed { load: 7 }, 60),
        ),
        21,
    );

    let (code, out, err) = cli(&[
        "resolve",
        "--registrar",
        &r.url,
        "--pool",
        "j1",
        "--items",
        "10",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let els = v["elements"].as_array().unwrap();
    assert_eq!(els.len(), 2);
    let mut ids: Vec<u64> = els.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    ids.sort_unstable();
    assert_eq!(ids, vec![11, 12]);
    for e in els {
        assert_eq!(e["pool"], "j1");
        assert_eq!(e["policy"], "rr");
        assert_eq!(e["home"].as_u64(), Some(u64::from(r.server_id)));
        let id = e["id"].as_u64().unwrap();
        assert_eq!(e["transport"], format!("tcp://127.0.0.1:{}", 5000 + id));
    }
    // Text output names the PEs too.
    let (code, out, _) = cli(&["resolve", "--registrar", &r.url, "--pool", "j2"]);
    assert_eq!(code, 0);
    assert!(out.contains("0x00000015") && out.contains("lu"), "{out}");

    let (code, out, err) = cli(&["dump", "--registrar", &r.url, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let els = v["elements"].as_array().unwrap();
    let mut got: Vec<(String, u64, String)> = els
        .iter()
        .map(|e| {
            (
                e["pool"].as_str().unwrap().to_string(),
                e["id"].as_u64().unwrap(),
                e["policy"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![
            ("j1".into(), 11, "rr".into()),
            ("j1".into(), 12, "rr".into()),
            ("j2".into(), 21, "lu".into())
        ]
    );
    assert!(els.iter().all(|e| e["reg_life"].as_i64() == Some(60)));
    let (code, out, _) = cli(&["dump", "--registrar", &r.url]);
    assert_eq!(code, 0);
    assert!(
        out.contains("j1") && out.contains("j2") && out.contains("life 60"),
        "{out}"
    );

    // Failures: unknown pool, unreachable registrar.
    let (code, _, err) = cli(&["resolve", "--registrar", &r.url, "--pool", "nope"]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown pool"), "{err}");
    assert_eq!(err.trim().lines().count(), 1);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_url = format!("tcp://{}", dead.local_addr().unwrap());
    drop(dead);
    let (code, _, err) = cli(&["resolve", "--registrar", &dead_url, "--pool", "x"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn dump_follows_the_more_flag() {
    let r = Proc::start(&[
        "--handle-table-chunk",
        "7",
        "--max-pes-per-connection",
        "1000",
    ]);
    let mut a = r.client();
    for id in 1..=40u32 {
        a.queue(
            11,
            &reg(
                &format!("pool{}", id % 3),
                pe(id, 6000 + id as u16, Policy::RoundRobin, 600),
            )
            .to_bytes(),
        )
        .unwrap();
    }
    a.flush().unwrap();
    for _ in 0..40 {
        next(&mut a, is_reg_resp);
    }
    let (code, out, err) = cli(&["dump", "--registrar", &r.url, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let mut ids: Vec<u64> = v["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, (1..=40).collect::<Vec<u64>>());
}

#[test]
fn help_mentions_every_flag() {
    let (code, out, _) = cli(&["registrar", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--asap",
        "--profile",
        "--server-id",
        "--seed",
        "--announce",
        "--announce-ttl",
        "--enrp-multicast",
        "--enrp-multicast-if",
        "--enrp-multicast-ttl",
        "--reglife-unit",
        "--default-items",
        "--max-items",
        "--keep-alive-interval",
        "--keep-alive-timeout",
        "--keep-alive-min-gap",
        "--keep-alive-pe-id",
        "--max-bad-pe-reports",
        "--probe-unreachable",
        "--no-remove-on-disconnect",
        "--deregistration-requires-owner",
        "--max-malformed",
        "--idle-timeout",
        "--resolution-rate",
        "--unreachable-rate",
        "--max-pes-per-pool",
        "--max-pes-per-connection",
        "--max-pes-total",
        "--max-subscriptions-per-connection",
        "--handle-table-chunk",
        "--handle-table-session-timeout",
        "--announce-interval",
        "--tcp-heartbeat-interval",
        "--tcp-heartbeat-max-missed",
        "--max-write-buffer",
        "--max-connections",
    ] {
        assert!(out.contains(flag), "--help lacks {flag}");
    }
    // Defaults are shown, with the RSPLIB profile's where it differs.
    assert!(out.contains("[default: 5s]"), "{out}");
    assert!(out.contains("--profile rsplib: ms"), "{out}");
}

#[test]
fn bad_urls_and_sctp_without_kernel_support_exit_1() {
    for args in [
        vec!["registrar", "--asap", "udp://127.0.0.1:1"],
        vec!["registrar", "--asap", "tcp://127.0.0.1"],
        vec!["registrar", "--asap", "tcp://127.0.0.1:99999"],
        vec!["registrar", "--announce", "nonsense"],
        // ENRP multicast: refused while parsing, before any socket exists.
        vec!["registrar", "--enrp-multicast", "nonsense"],
        vec!["registrar", "--enrp-multicast", "127.0.0.1:9901"],
        vec!["registrar", "--enrp-multicast", "239.255.1.1:0"],
        vec!["registrar", "--enrp-multicast-if", "127.0.0.1"],
        vec![
            "registrar",
            "--enrp-multicast",
            "239.255.1.1:9901",
            "--enrp-multicast-if",
            "no-such-if0",
        ],
        vec![
            "registrar",
            "--enrp-multicast",
            "[ff15::1]:9901",
            "--enrp-multicast-if",
            "127.0.0.1",
        ],
    ] {
        let (code, _, err) = cli(&args);
        assert_eq!(code, 1, "{args:?}");
        assert!(err.contains("rserpool registrar:"), "{err}");
    }
    if !rserpool::runtime::probe_sctp().is_available() {
        let (code, _, err) = cli(&["registrar", "--asap", "sctp://127.0.0.1:0"]);
        assert_eq!(code, 1);
        assert!(err.contains("SCTP"), "{err}");
    }
    // A port in use is a clear error too.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("tcp://{}", busy.local_addr().unwrap());
    let (code, _, err) = cli(&["registrar", "--asap", &url]);
    assert_eq!(code, 1);
    assert!(err.contains("listening on"), "{err}");
}

#[test]
fn sigterm_and_sigint_stop_cleanly() {
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut r = Proc::start(&[]);
        let mut a = r.client();
        granted(
            &register(&mut a, "s", pe(1, 5001, Policy::RoundRobin, 60)),
            1,
        );
        let st = r.signal_and_wait(sig).expect("exit after the signal");
        let err = r.stderr();
        assert_eq!(st.code(), Some(0), "{err}");
        assert!(err.contains("stopping"), "{err}");
        assert!(err.contains("no kernel SCTP") || rserpool::runtime::probe_sctp().is_available());
        // Its connections were closed.
        a.wait_closed(T).unwrap();
    }
}
