//! Event-loop tests on loopback with a toy driver.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::blocking::TcpMapClient;
use super::*;
use crate::wire::tcpmap::{Chunk, ChunkDecoder, InitFlags};

const T: Duration = Duration::from_secs(10);

/// Echoes every message; "close" closes; "flood N" sends N 60 000-byte messages.
#[derive(Default)]
struct Echo {
    out: VecDeque<Action>,
    protos: Vec<Proto>,
    connected: u64,
    closed: u64,
}

impl Driver for Echo {
    fn on_connected(&mut self, _: ConnId, meta: &ConnMeta, _: Time) {
        self.protos.push(meta.proto);
        self.connected += 1;
    }
    fn on_message(&mut self, conn: ConnId, ppid: u32, msg: &[u8], _: Time) {
        if msg == b"close" {
            self.out.push_back(Action::Send {
                conn,
                ppid,
                msg: b"bye".to_vec(),
            });
            self.out.push_back(Action::Close {
                conn,
                reason: "asked".into(),
            });
        } else if let Some(n) = msg.strip_prefix(b"flood ") {
            let n: usize = std::str::from_utf8(n).unwrap().parse().unwrap();
            for _ in 0..n {
                self.out.push_back(Action::Send {
                    conn,
                    ppid,
                    msg: vec![7; 60_000],
                });
            }
        } else {
            self.out.push_back(Action::Send {
                conn,
                ppid,
                msg: msg.to_vec(),
            });
        }
    }
    fn on_closed(&mut self, _: ConnId, _: Time) {
        self.closed += 1;
    }
    fn on_timeout(&mut self, _: Time) {}
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }
}

struct Running {
    addr: SocketAddr,
    handle: LoopHandle<Echo>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    fn start(cfg: RuntimeConfig) -> Running {
        Self::start_on(cfg, "tcp://127.0.0.1:0")
    }
    fn start_on(mut cfg: RuntimeConfig, url: &str) -> Running {
        cfg.listen = vec![EndpointUrl::parse(url).unwrap()];
        let mut ev = EventLoop::new(cfg, Instant::now(), Echo::default()).unwrap();
        let addr = ev.local_addrs()[0].1;
        let handle = ev.handle();
        let thread = std::thread::spawn(move || ev.run().unwrap());
        Running {
            addr,
            handle,
            thread: Some(thread),
        }
    }
    fn counts(&self) -> (u64, u64) {
        self.handle
            .query(T, |d, _| (d.connected, d.closed))
            .unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.handle.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Wait until `f` holds, polling; panics after `T`.
fn wait_for(mut f: impl FnMut() -> bool) {
    let end = Instant::now() + T;
    while !f() {
        assert!(Instant::now() < end, "condition not reached in time");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn echo_round_trip_with_acks() {
    let r = Running::start(RuntimeConfig::default());
    let mut c = TcpMapClient::connect(r.addr, T).unwrap();
    for i in 0..100u32 {
        c.queue(11, &i.to_be_bytes()).unwrap();
    }
    c.flush().unwrap();
    for i in 0..100u32 {
        let (p, m) = c.recv(T).unwrap();
        assert_eq!((p, m), (11, i.to_be_bytes().to_vec()));
    }
    assert_eq!(c.peer_init(), Some(InitFlags::NONE));
    // One ACK per delivered DATA chunk.
    c.send(12, b"x").unwrap();
    assert_eq!(c.recv(T).unwrap(), (12, b"x".to_vec()));
    assert_eq!(c.acks_received(), 101);
    c.send(11, b"close").unwrap();
    assert_eq!(c.recv(T).unwrap().1, b"bye");
    c.wait_closed(T).unwrap();
    wait_for(|| r.counts() == (1, 1));
}

/// Read raw chunks from a plain socket (no automatic replies).
fn raw_chunks(s: &mut TcpStream, dec: &mut ChunkDecoder, want: usize) -> Vec<Chunk> {
    s.set_read_timeout(Some(T)).unwrap();
    let mut got = Vec::new();
    while got.len() < want {
        while let Some(c) = dec.next_chunk().unwrap() {
            got.push(c.to_chunk());
        }
        if got.len() >= want {
            break;
        }
        let n = s.read(dec.spare()).unwrap();
        assert!(n > 0, "closed early");
        dec.commit(n);
    }
    got
}

#[test]
fn every_init_variant_and_heartbeat_echo() {
    let r = Running::start(RuntimeConfig::default());
    for flags in 0..8u8 {
        let mut s = TcpStream::connect(r.addr).unwrap();
        let mut out = Vec::new();
        Chunk::Init {
            flags: InitFlags(flags),
        }
        .encode(&mut out)
        .unwrap();
        // A DATA chunk laid out per our own flags.
        let d = crate::wire::tcpmap::DataHeader {
            unordered: false,
            tsn: 0,
            stream: 0,
            ssn: 0,
            ppid: 11,
        };
        crate::wire::tcpmap::encode_data(&mut out, InitFlags(flags), &d, b"hello").unwrap();
        Chunk::Heartbeat {
            info: vec![1, 2, 3],
        }
        .encode(&mut out)
        .unwrap();
        s.write_all(&out).unwrap();
        let mut dec = ChunkDecoder::new(1 << 17);
        let got = raw_chunks(&mut s, &mut dec, 4);
        assert_eq!(
            got[0],
            Chunk::Init {
                flags: InitFlags::NONE
            }
        );
        let no_tsn = flags & 1 != 0;
        assert_eq!(
            got[1],
            Chunk::Ack {
                cum_tsn: if no_tsn { None } else { Some(0) }
            },
            "flags {flags}"
        );
        // The HEARTBEAT ACK goes out at once; the echo after the read burst.
        assert_eq!(
            got[2],
            Chunk::HeartbeatAck {
                info: vec![1, 2, 3]
            }
        );
        let Chunk::Data(echo) = &got[3] else {
            panic!("{:?}", got[3])
        };
        assert_eq!(echo.payload, b"hello");
        assert_eq!(echo.ppid, Some(if flags & 4 != 0 { 0 } else { 11 }));
    }
}

/// 100 DATA chunks in one write, echoed: what ACK chunks come back.
fn acks_for_a_burst(coalesce: bool) -> Vec<Option<u32>> {
    let r = Running::start(RuntimeConfig {
        coalesce_acks: coalesce,
        ..RuntimeConfig::default()
    });
    let mut s = TcpStream::connect(r.addr).unwrap();
    let mut out = Vec::new();
    Chunk::Init {
        flags: InitFlags::NONE,
    }
    .encode(&mut out)
    .unwrap();
    for tsn in 0..100u32 {
        let d = crate::wire::tcpmap::DataHeader {
            unordered: false,
            tsn,
            stream: 0,
            ssn: tsn as u16,
            ppid: 11,
        };
        crate::wire::tcpmap::encode_data(&mut out, InitFlags::NONE, &d, &tsn.to_be_bytes())
            .unwrap();
    }
    s.write_all(&out).unwrap();
    let mut dec = ChunkDecoder::new(1 << 17);
    let mut acks = Vec::new();
    let mut echoes = 0;
    let mut init = false;
    while echoes < 100 || acks.last() != Some(&Some(99)) {
        for c in raw_chunks(&mut s, &mut dec, 1) {
            match c {
                Chunk::Init { .. } if !init => init = true,
                Chunk::Ack { cum_tsn } => acks.push(cum_tsn),
                Chunk::Data(_) => echoes += 1,
                other => panic!("{other:?}"),
            }
        }
    }
    assert!(init);
    acks
}

#[test]
fn one_ack_per_data_chunk_unless_coalescing_is_asked_for() {
    // Digest §10.4: exactly one ACK per DATA chunk handed up, in order.
    let acks = acks_for_a_burst(false);
    assert_eq!(acks, (0..100u32).map(Some).collect::<Vec<_>>());
    // Coalesced: fewer chunks, each a cumulative TSN, increasing, ending at
    // the last one.
    let acks = acks_for_a_burst(true);
    assert!(acks.len() < 100, "{} ACK chunks", acks.len());
    assert!(acks.windows(2).all(|w| w[0] < w[1]), "{acks:?}");
    assert_eq!(acks.last(), Some(&Some(99)));
}

#[test]
fn framing_errors_close_the_connection() {
    let r = Running::start(RuntimeConfig::default());
    let bad: [&[u8]; 4] = [
        &[0, 0, 0, 20, 0, 0, 0, 0],            // DATA before INIT
        &[1, 0, 0, 4, 0, 0, 0, 2],             // Length 2
        &[1, 0, 0, 4, 1, 0, 0, 4],             // second INIT
        &[1, 0, 0, 4, 3, 0, 0, 6, 0, 0, 0, 0], // ACK Length 6
    ];
    for b in bad {
        let mut c = TcpMapClient::connect(r.addr, T).unwrap();
        // Replace our well-formed INIT's successors with garbage.
        c.queue_raw(&b[4..]);
        if b[0] != 1 {
            // Not starting with INIT: use a raw socket instead.
            let mut s = TcpStream::connect(r.addr).unwrap();
            s.write_all(b).unwrap();
            s.set_read_timeout(Some(T)).unwrap();
            let mut buf = [0u8; 64];
            let mut total = 0;
            loop {
                match s.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => total += n,
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
                    Err(e) => panic!("{e}"),
                }
            }
            assert!(total <= 4, "only our INIT before the close");
            continue;
        }
        c.flush().unwrap();
        c.wait_closed(T).unwrap();
    }
    // The loop is still fine.
    let mut c = TcpMapClient::connect(r.addr, T).unwrap();
    c.send(11, b"ok").unwrap();
    assert_eq!(c.recv(T).unwrap().1, b"ok");
}

#[test]
fn silent_peer_is_closed_after_unanswered_heartbeats() {
    let r = Running::start(RuntimeConfig {
        heartbeat_interval: Duration::from_millis(40),
        heartbeat_max_missed: 2,
        ..RuntimeConfig::default()
    });
    let mut quiet = TcpMapClient::connect(r.addr, T).unwrap();
    quiet.set_answer_heartbeats(false);
    quiet.wait_closed(T).unwrap();
    // A peer that answers stays up across many intervals.
    let mut alive = TcpMapClient::connect(r.addr, T).unwrap();
    let until = Instant::now() + Duration::from_millis(400);
    while Instant::now() < until {
        match alive.recv(Duration::from_millis(20)) {
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            other => panic!("{other:?}"),
        }
    }
    alive.send(11, b"still here").unwrap();
    assert_eq!(alive.recv(T).unwrap().1, b"still here");
}

#[test]
fn a_peer_that_does_not_read_is_cut_off() {
    let r = Running::start(RuntimeConfig {
        max_write_buffer: 256 << 10,
        ..RuntimeConfig::default()
    });
    let mut hog = TcpMapClient::connect(r.addr, T).unwrap();
    hog.send(11, b"flood 200").unwrap(); // 12 MB of replies, never read
                                         // Meanwhile others are served.
    let mut c = TcpMapClient::connect(r.addr, T).unwrap();
    c.send(11, b"ping").unwrap();
    assert_eq!(c.recv(T).unwrap().1, b"ping");
    wait_for(|| r.counts().1 >= 1);
    // The hog eventually sees the end of the stream.
    let mut s = hog.stream().try_clone().unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Opens connections on request; sends "hello" once connected; records events.
#[derive(Default)]
struct Dialer {
    out: VecDeque<Action>,
    connected: Vec<(ConnId, ConnMeta)>,
    failed: Vec<ConnId>,
    closed: Vec<ConnId>,
    received: Vec<(ConnId, Vec<u8>)>,
}

impl Driver for Dialer {
    fn on_connected(&mut self, conn: ConnId, meta: &ConnMeta, _: Time) {
        self.connected.push((conn, meta.clone()));
        self.out.push_back(Action::Send {
            conn,
            ppid: 11,
            msg: b"hello".to_vec(),
        });
    }
    fn on_message(&mut self, conn: ConnId, _: u32, msg: &[u8], _: Time) {
        self.received.push((conn, msg.to_vec()));
    }
    fn on_closed(&mut self, conn: ConnId, _: Time) {
        self.closed.push(conn);
    }
    fn on_connect_failed(&mut self, conn: ConnId, _: Time) {
        self.failed.push(conn);
    }
    fn on_timeout(&mut self, _: Time) {}
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }
}

fn start_dialer() -> (LoopHandle<Dialer>, JoinHandle<()>) {
    let mut ev = EventLoop::new(RuntimeConfig::default(), Instant::now(), Dialer::default())
        .expect("loop starts");
    let h = ev.handle();
    let t = std::thread::spawn(move || ev.run().unwrap());
    (h, t)
}

#[test]
fn outbound_connection_speaks_the_tcp_mapping() {
    let server = Running::start(RuntimeConfig::default());
    let (h, t) = start_dialer();
    let id = ConnId::driver(7);
    let addr = server.addr;
    assert!(h.call(move |d, _| d.out.push_back(Action::Connect { conn: id, addr })));
    // The echo server answers our "hello" on the new connection.
    wait_for(|| {
        h.query(T, |d, _| d.received.clone())
            .unwrap()
            .contains(&(id, b"hello".to_vec()))
    });
    let (connected, failed) = h
        .query(T, |d, _| (d.connected.clone(), d.failed.clone()))
        .unwrap();
    assert_eq!(connected.len(), 1);
    assert_eq!(connected[0].0, id);
    assert_eq!(connected[0].1.remote, vec![addr]);
    assert_eq!(connected[0].1.listener, usize::MAX);
    assert!(failed.is_empty());
    assert_eq!(server.counts().0, 1);
    // Closing it reaches both sides.
    assert!(h.call(move |d, _| d.out.push_back(Action::Close {
        conn: id,
        reason: "done".into()
    })));
    wait_for(|| h.query(T, |d, _| d.closed.clone()).unwrap() == vec![id]);
    wait_for(|| server.counts().1 == 1);
    // The id is free again: connecting under it works once more.
    assert!(h.call(move |d, _| d.out.push_back(Action::Connect { conn: id, addr })));
    wait_for(|| h.query(T, |d, _| d.connected.len()).unwrap() == 2);
    h.stop();
    t.join().unwrap();
}

#[test]
fn failed_and_invalid_connects_are_reported_once() {
    // A port nobody listens on: bind, learn the port, close.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_addr = dead.local_addr().unwrap();
    drop(dead);
    let server = Running::start(RuntimeConfig::default());
    let live_addr = server.addr;
    let (h, t) = start_dialer();
    let refused = ConnId::driver(1);
    let not_driver = ConnId(5);
    let dup = ConnId::driver(2);
    assert!(h.call(move |d, _| {
        d.out.push_back(Action::Connect {
            conn: refused,
            addr: dead_addr,
        });
        d.out.push_back(Action::Connect {
            conn: not_driver,
            addr: live_addr,
        });
        d.out.push_back(Action::Connect {
            conn: dup,
            addr: live_addr,
        });
        d.out.push_back(Action::Connect {
            conn: dup,
            addr: live_addr,
        });
    }));
    wait_for(|| {
        let (f, c) = h
            .query(T, |d, _| (d.failed.clone(), d.connected.len()))
            .unwrap();
        f.len() == 3 && c == 1
    });
    let mut failed = h.query(T, |d, _| d.failed.clone()).unwrap();
    failed.sort();
    let mut want = vec![refused, not_driver, dup];
    want.sort();
    assert_eq!(
        failed, want,
        "refused, non-driver id, and the second use of an id"
    );
    let connected = h.query(T, |d, _| d.connected.clone()).unwrap();
    assert_eq!(connected[0].0, dup);
    h.stop();
    t.join().unwrap();
}

// ---- kernel SCTP (these run for real inside scripts/sctp-vm) ----

fn no_sctp() -> bool {
    if probe_sctp().is_available() {
        return false;
    }
    eprintln!("skipping: no kernel SCTP");
    true
}

#[test]
fn sctp_listener_without_kernel_support_is_unsupported() {
    if probe_sctp().is_available() {
        eprintln!("skipping: the kernel has SCTP (this checks the error without it)");
        return;
    }
    let cfg = RuntimeConfig {
        listen: vec![EndpointUrl::parse("sctp://127.0.0.1:0").unwrap()],
        ..RuntimeConfig::default()
    };
    match EventLoop::new(cfg, Instant::now(), Echo::default()) {
        Err(StartError::Unsupported(m)) => {
            assert!(m.contains("this kernel has no SCTP support"), "{m}")
        }
        other => panic!("expected Unsupported, got {:?}", other.map(|_| ())),
    }
    // And an outbound SCTP connect fails cleanly, once.
    let (h, t) = start_dialer();
    let id = ConnId::driver(3);
    assert!(h.call(move |d, _| d.out.push_back(Action::ConnectSctp {
        conn: id,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
        local: vec![],
    })));
    wait_for(|| h.query(T, |d, _| d.failed.clone()).unwrap() == vec![id]);
    h.stop();
    t.join().unwrap();
}

#[test]
fn sctp_echo_through_the_loop_both_directions() {
    if no_sctp() {
        return;
    }
    // A multi-homed listener on two loopback addresses.
    let server = Running::start_on(RuntimeConfig::default(), "sctp://127.0.0.1,127.0.0.2:0");
    let port = server.addr.port();
    let addrs: Vec<SocketAddr> = vec![
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::from(([127, 0, 0, 2], port)),
    ];
    // Blocking client in, event loop echoes (a message bigger than one read
    // buffer is reassembled from partial deliveries on the loop's side).
    let mut c = sctp::SctpClient::connect(&addrs[1..], T).unwrap();
    // Bigger than one recvmsg buffer (64 KiB), within max_read_buffer (128 KiB).
    let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    c.send(11, b"ping").unwrap();
    c.send(12, &big).unwrap();
    assert_eq!(c.recv(T).unwrap(), (11, b"ping".to_vec()));
    assert_eq!(c.recv(T).unwrap(), (12, big));
    c.send(11, b"close").unwrap();
    assert_eq!(c.recv(T).unwrap(), (11, b"bye".to_vec()));
    wait_for(|| server.counts() == (1, 1));
    // A message above max_read_buffer closes the association.
    let mut c = sctp::SctpClient::connect(&addrs[..1], T).unwrap();
    c.send(11, &vec![1u8; 200_000]).unwrap();
    // Closed with unread data: the kernel ABORTs (reset) rather than SHUTDOWNs.
    let e = c.recv(T).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
        ),
        "{e}"
    );
    wait_for(|| server.counts() == (2, 2));
    let protos = server.handle.query(T, |d, _| d.protos.clone()).unwrap();
    assert_eq!(protos, vec![Proto::Sctp, Proto::Sctp]);

    // The loop dials out (Action::ConnectSctp) to both addresses of the listener.
    let (h, t) = start_dialer();
    let id = ConnId::driver(9);
    let to = addrs.clone();
    assert!(h.call(move |d, _| d.out.push_back(Action::ConnectSctp {
        conn: id,
        addrs: to,
        local: vec![],
    })));
    wait_for(|| {
        h.query(T, |d, _| d.received.clone())
            .unwrap()
            .contains(&(id, b"hello".to_vec()))
    });
    let connected = h.query(T, |d, _| d.connected.clone()).unwrap();
    assert_eq!(connected.len(), 1);
    let meta = &connected[0].1;
    assert_eq!(meta.proto, Proto::Sctp);
    // Every address of the multi-homed peer is known.
    let mut remote = meta.remote.clone();
    remote.sort();
    assert_eq!(remote, addrs, "{meta:?}");
    assert!(h.call(move |d, _| d.out.push_back(Action::Close {
        conn: id,
        reason: "done".into()
    })));
    wait_for(|| h.query(T, |d, _| d.closed.clone()).unwrap() == vec![id]);
    wait_for(|| server.counts() == (3, 3));
    h.stop();
    t.join().unwrap();
}

#[test]
fn sctp_connect_to_a_dead_port_fails_once() {
    if no_sctp() {
        return;
    }
    let (h, t) = start_dialer();
    let id = ConnId::driver(4);
    // Nobody listens on SCTP port 9 of 127.0.0.1 in the test VM: ABORT at once.
    assert!(h.call(move |d, _| d.out.push_back(Action::ConnectSctp {
        conn: id,
        addrs: vec!["127.0.0.1:9".parse().unwrap()],
        local: vec![],
    })));
    wait_for(|| h.query(T, |d, _| d.failed.clone()).unwrap() == vec![id]);
    assert!(h.query(T, |d, _| d.connected.is_empty()).unwrap());
    h.stop();
    t.join().unwrap();
}

/// Opens listeners at run time and records everything it is told; sends
/// nothing unless asked through `out`.
#[derive(Default)]
struct Recorder {
    out: VecDeque<Action>,
    listens: Vec<(ListenerId, ListenResult)>,
    connected: Vec<(ConnId, ConnMeta)>,
    data: Vec<(ConnId, DataInfo, Vec<u8>)>,
    acks: Vec<(ConnId, Option<u32>)>,
}

impl Driver for Recorder {
    fn on_connected(&mut self, conn: ConnId, meta: &ConnMeta, _: Time) {
        self.connected.push((conn, meta.clone()));
    }
    fn on_message(&mut self, _: ConnId, _: u32, _: &[u8], _: Time) {
        unreachable!("on_data is implemented");
    }
    fn on_data(&mut self, conn: ConnId, info: DataInfo, msg: &[u8], _: Time) {
        self.data.push((conn, info, msg.to_vec()));
    }
    fn on_ack(&mut self, conn: ConnId, cum_tsn: Option<u32>, _: Time) {
        self.acks.push((conn, cum_tsn));
    }
    fn on_listen(&mut self, id: ListenerId, result: ListenResult, _: Time) {
        self.listens.push((id, result));
    }
    fn on_closed(&mut self, _: ConnId, _: Time) {}
    fn on_timeout(&mut self, _: Time) {}
    fn poll_timeout(&self) -> Option<Time> {
        None
    }
    fn poll_action(&mut self) -> Option<Action> {
        self.out.pop_front()
    }
}

#[test]
fn dynamic_listener_manual_acks_streams_and_received_acks() {
    let mut ev = EventLoop::new(
        RuntimeConfig::default(),
        Instant::now(),
        Recorder::default(),
    )
    .unwrap();
    let h = ev.handle();
    let t = std::thread::spawn(move || ev.run().unwrap());
    let id = ListenerId(1);
    let url = EndpointUrl::parse("tcp://127.0.0.1:0").unwrap();
    let u2 = url.clone();
    assert!(h.call(move |d, _| {
        d.out.push_back(Action::Listen {
            id,
            url: u2.clone(),
            manual_ack: true,
        });
        // The same id again is refused.
        d.out.push_back(Action::Listen {
            id,
            url: u2,
            manual_ack: false,
        });
    }));
    wait_for(|| h.query(T, |d, _| d.listens.len()).unwrap() == 2);
    let listens = h.query(T, |d, _| d.listens.clone()).unwrap();
    let bound = listens[0].1.clone().expect("listening");
    assert_eq!(bound.len(), 1);
    assert_eq!(bound[0].0, Proto::Tcp);
    let addr = bound[0].1;
    assert_ne!(addr.port(), 0, "the kernel's port is reported");
    assert!(listens[1].1.as_ref().unwrap_err().contains("in use"));

    // A raw peer: INIT, then three DATA chunks on streams 3 (ordered, twice)
    // and 4 (unordered).
    let mut s = TcpStream::connect(addr).unwrap();
    let mut out = Vec::new();
    Chunk::Init {
        flags: InitFlags::NONE,
    }
    .encode(&mut out)
    .unwrap();
    for (tsn, stream, unordered) in [(0u32, 3u16, false), (1, 3, false), (2, 4, true)] {
        let d = crate::wire::tcpmap::DataHeader {
            unordered,
            tsn,
            stream,
            ssn: tsn as u16,
            ppid: 77,
        };
        crate::wire::tcpmap::encode_data(&mut out, InitFlags::NONE, &d, b"req").unwrap();
    }
    s.write_all(&out).unwrap();
    wait_for(|| h.query(T, |d, _| d.data.len()).unwrap() == 3);
    let (connected, data) = h
        .query(T, |d, _| (d.connected.clone(), d.data.clone()))
        .unwrap();
    assert_eq!(connected.len(), 1);
    let (conn, meta) = connected[0].clone();
    assert_eq!(meta.dynamic_listener, Some(id));
    assert_eq!(meta.listener, usize::MAX);
    let infos: Vec<DataInfo> = data.iter().map(|d| d.1).collect();
    assert_eq!(
        infos,
        vec![
            DataInfo {
                ppid: 77,
                stream: 3,
                unordered: false
            },
            DataInfo {
                ppid: 77,
                stream: 3,
                unordered: false
            },
            DataInfo {
                ppid: 77,
                stream: 4,
                unordered: true
            },
        ]
    );
    // Manual mode: nothing acknowledged until the driver says so. A reply
    // queued now therefore comes before any ACK; then one ACK per Action::Ack,
    // oldest first, and a spare Action::Ack does nothing.
    assert!(h.call(move |d, _| {
        d.out.push_back(Action::SendData {
            conn,
            ppid: 78,
            stream: 5,
            unordered: true,
            msg: b"a".to_vec(),
        });
        d.out.push_back(Action::Ack { conn });
        d.out.push_back(Action::SendData {
            conn,
            ppid: 78,
            stream: 5,
            unordered: false,
            msg: b"b".to_vec(),
        });
        d.out.push_back(Action::Ack { conn });
        d.out.push_back(Action::Ack { conn });
        d.out.push_back(Action::Ack { conn });
        d.out.push_back(Action::Send {
            conn,
            ppid: 11,
            msg: b"c".to_vec(),
        });
    }));
    let mut dec = ChunkDecoder::new(1 << 17);
    let got = raw_chunks(&mut s, &mut dec, 7);
    assert_eq!(
        got[0],
        Chunk::Init {
            flags: InitFlags::NONE
        }
    );
    let data_hdr = |c: &Chunk| match c {
        Chunk::Data(d) => (d.tsn, d.stream, d.unordered, d.ppid, d.payload.clone()),
        other => panic!("not DATA: {other:?}"),
    };
    assert_eq!(
        data_hdr(&got[1]),
        (Some(0), Some((5, 0)), true, Some(78), b"a".to_vec())
    );
    assert_eq!(got[2], Chunk::Ack { cum_tsn: Some(0) });
    // Every DATA chunk takes the next TSN; ordered ones the stream's next SSN.
    assert_eq!(
        data_hdr(&got[3]),
        (Some(1), Some((5, 0)), false, Some(78), b"b".to_vec())
    );
    assert_eq!(got[4], Chunk::Ack { cum_tsn: Some(1) });
    assert_eq!(got[5], Chunk::Ack { cum_tsn: Some(2) });
    assert_eq!(
        data_hdr(&got[6]),
        (Some(2), Some((0, 0)), false, Some(11), b"c".to_vec())
    );
    // ACK chunks from the peer reach the driver.
    let mut out = Vec::new();
    Chunk::Ack { cum_tsn: Some(1) }.encode(&mut out).unwrap();
    Chunk::Ack { cum_tsn: None }.encode(&mut out).unwrap();
    s.write_all(&out).unwrap();
    wait_for(|| h.query(T, |d, _| d.acks.len()).unwrap() == 2);
    assert_eq!(
        h.query(T, |d, _| d.acks.clone()).unwrap(),
        vec![(conn, Some(1)), (conn, None)]
    );
    // Unlisten: no new connections; the accepted one stays.
    assert!(h.call(move |d, _| d.out.push_back(Action::Unlisten { id })));
    wait_for(|| TcpStream::connect(addr).is_err());
    s.write_all(&out[..8]).unwrap();
    wait_for(|| h.query(T, |d, _| d.acks.len()).unwrap() == 3);
    // SCTP where the kernel has none: a clear error.
    if !probe_sctp().is_available() {
        let sctp = EndpointUrl::parse("sctp://127.0.0.1:0").unwrap();
        assert!(h.call(move |d, _| d.out.push_back(Action::Listen {
            id: ListenerId(2),
            url: sctp,
            manual_ack: true,
        })));
        wait_for(|| h.query(T, |d, _| d.listens.len()).unwrap() == 3);
        let l = h.query(T, |d, _| d.listens[2].clone()).unwrap();
        assert!(l.1.unwrap_err().contains("no SCTP"), "clear error");
    }
    h.stop();
    t.join().unwrap();
}

#[test]
fn sctp_connect_from_the_listening_port() {
    if no_sctp() {
        return;
    }
    // A loop listening on SCTP (our "ENRP endpoint") dials a peer from that
    // endpoint's address and port, as ENRP does toward RSPLIB.
    let cfg = RuntimeConfig {
        listen: vec![EndpointUrl::parse("sctp://127.0.0.1:0").unwrap()],
        ..RuntimeConfig::default()
    };
    let mut ev = EventLoop::new(cfg, Instant::now(), Dialer::default()).unwrap();
    let ours = ev.local_addrs()[0].1;
    let h = ev.handle();
    let t = std::thread::spawn(move || ev.run().unwrap());
    let peer = sctp::SctpSocket::listen_on(
        &["127.0.0.1:0".parse().unwrap()],
        &sctp::SctpParams::default(),
    )
    .unwrap();
    let peer_addr = peer.local_addr().unwrap();
    let id = ConnId::driver(21);
    assert!(h.call(move |d, _| d.out.push_back(Action::ConnectSctp {
        conn: id,
        addrs: vec![peer_addr],
        local: vec![ours],
    })));
    wait_for(|| h.query(T, |d, _| d.connected.len()).unwrap() == 1);
    let meta = h.query(T, |d, _| d.connected[0].1.clone()).unwrap();
    assert_eq!(meta.local, ours, "{meta:?}");
    let accepted = loop {
        match peer.accept() {
            Ok(s) => break s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("{e}"),
        }
    };
    // What the peer sees: the association comes from our listening port.
    assert_eq!(accepted.peer_addr().unwrap(), ours);
    // The listener still accepts associations of its own.
    let _c = sctp::SctpClient::connect(&[ours], T).unwrap();
    wait_for(|| h.query(T, |d, _| d.connected.len()).unwrap() == 2);
    // Another listener on the port is still refused.
    let e = sctp::SctpSocket::listen_on(&[ours], &sctp::SctpParams::default()).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse, "{e}");
    // A second association between the same two endpoints is refused by the
    // kernel: the connect fails once, the existing one is untouched.
    let id2 = ConnId::driver(22);
    assert!(h.call(move |d, _| d.out.push_back(Action::ConnectSctp {
        conn: id2,
        addrs: vec![peer_addr],
        local: vec![ours],
    })));
    wait_for(|| h.query(T, |d, _| d.failed.clone()).unwrap() == vec![id2]);
    // A local address that is not ours: opened unbound instead.
    let id3 = ConnId::driver(23);
    assert!(h.call(move |d, _| d.out.push_back(Action::ConnectSctp {
        conn: id3,
        addrs: vec![peer_addr],
        local: vec!["192.0.2.1:9901".parse().unwrap()],
    })));
    wait_for(|| h.query(T, |d, _| d.connected.len()).unwrap() == 3);
    let meta = h.query(T, |d, _| d.connected[2].1.clone()).unwrap();
    assert_ne!(meta.local.port(), ours.port(), "{meta:?}");
    h.stop();
    t.join().unwrap();
}
