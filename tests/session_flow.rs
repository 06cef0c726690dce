//! Flow control of a pool element that streams to a pool user: the PE waits
//! for the pool user's ACK chunks (`PeSessionHandle::wait_in_flight`) instead
//! of growing its connection's write buffer past the runtime's bound.

use std::time::Duration;

use rserpool::api::{
    Config, Context, Error, Notification, PeListenParams, PeNotification, SessionOptions,
};
use rserpool::runtime::{EndpointUrl, RegistrarHandle, RegistrarOptions};
use rserpool::wire::Policy;

const T: Duration = Duration::from_secs(20);

fn registrar() -> RegistrarHandle {
    let mut opts = RegistrarOptions::default();
    opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
    RegistrarHandle::start(opts).unwrap()
}

fn config(reg: &RegistrarHandle) -> Config {
    let mut c = Config::default();
    c.add_registrar(&reg.local_urls()[0]).unwrap();
    c.client.stale_cache = Duration::ZERO;
    c.shutdown_timeout = Duration::from_millis(500);
    c
}

#[test]
fn a_pe_streams_more_than_the_write_buffer_holds() {
    const CHUNK: usize = 32 << 10;
    const CHUNKS: usize = 384; // 12 MiB: three times the runtime's 4 MiB bound
    const WINDOW: usize = 512 << 10;
    let reg = registrar();
    let pe_ctx = Context::new(config(&reg)).unwrap();
    let server = pe_ctx
        .pe_listen(PeListenParams::new(
            "stream",
            EndpointUrl::parse("tcp://127.0.0.1:0").unwrap(),
            Policy::RoundRobin,
        ))
        .unwrap();
    let pe = std::thread::spawn(move || {
        let s = server.accept(Some(T)).unwrap();
        // Wait for the request, then stream.
        loop {
            match s.recv(Some(T)).unwrap() {
                PeNotification::Data { .. } => break,
                PeNotification::Closed => panic!("closed before the request"),
                _ => {}
            }
        }
        let mut most = 0;
        for i in 0..CHUNKS {
            s.wait_in_flight(WINDOW, Some(T)).unwrap();
            most = most.max(s.in_flight_bytes());
            s.send(&vec![(i % 251) as u8; CHUNK], 7).unwrap();
        }
        s.wait_in_flight(0, Some(T)).unwrap();
        let st = s.stats();
        assert_eq!(st.sent, CHUNKS as u64);
        assert_eq!(st.acked_by_peer, CHUNKS as u64);
        (most, server)
    });
    let pu = Context::new(config(&reg)).unwrap();
    let s = pu
        .open_session(
            b"stream",
            SessionOptions {
                wait_connected: Some(T),
                ..Default::default()
            },
        )
        .unwrap();
    s.send(b"go", 7, 0).unwrap();
    let mut got = 0;
    while got < CHUNKS {
        match s.recv(Some(T)).unwrap() {
            Notification::Data { bytes, .. } => {
                assert_eq!(bytes.len(), CHUNK);
                assert!(bytes.iter().all(|&b| b == (got % 251) as u8), "chunk {got}");
                got += 1;
            }
            Notification::Connected { .. } => {}
            other => panic!("unexpected {other:?} after {got} chunks"),
        }
    }
    let (most, server) = pe.join().unwrap();
    assert!(
        most <= WINDOW,
        "{most} bytes in flight with a window of {WINDOW}"
    );
    assert_eq!(s.stats().failovers, 0);
    s.close();
    drop(server);
}

#[test]
fn waiting_for_room_on_a_closed_session_fails() {
    let reg = registrar();
    let pe_ctx = Context::new(config(&reg)).unwrap();
    let server = pe_ctx
        .pe_listen(PeListenParams::new(
            "gone",
            EndpointUrl::parse("tcp://127.0.0.1:0").unwrap(),
            Policy::RoundRobin,
        ))
        .unwrap();
    let pu = Context::new(config(&reg)).unwrap();
    let s = pu
        .open_session(
            b"gone",
            SessionOptions {
                wait_connected: Some(T),
                ..Default::default()
            },
        )
        .unwrap();
    let h = server.accept(Some(T)).unwrap();
    s.close();
    drop(pu);
    // The pool user is gone without taking this in: waiting ends with the
    // connection, not with the timeout.
    let _ = h.send(&[0u8; 1000], 7);
    assert_eq!(h.wait_in_flight(0, Some(T)), Err(Error::SessionClosed));
}

#[test]
fn without_acks_a_fast_pool_user_is_held_back_not_cut_off() {
    use rserpool::session::SessionConfig;
    const SIZE: usize = 32 << 10;
    const COUNT: usize = 400; // 12.5 MiB, three times the write buffer's bound
    let reg = registrar();
    let pe_ctx = Context::new(config(&reg)).unwrap();
    let server = pe_ctx
        .pe_listen(PeListenParams::new(
            "slow",
            EndpointUrl::parse("tcp://127.0.0.1:0").unwrap(),
            Policy::RoundRobin,
        ))
        .unwrap();
    // A PE slower than the pool user.
    let pe = std::thread::spawn(move || {
        let s = server.accept(Some(T)).unwrap();
        let mut got = 0usize;
        while got < COUNT {
            match s.recv(Some(T)).unwrap() {
                PeNotification::Data { bytes, .. } => {
                    assert!(
                        bytes.iter().all(|&b| b == (got % 251) as u8),
                        "message {got}"
                    );
                    got += 1;
                    if got % 10 == 0 {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                PeNotification::Closed => panic!("closed after {got} messages"),
                _ => {}
            }
        }
        s.ack();
        server
    });
    let pu = Context::new(config(&reg)).unwrap();
    let cfg = SessionConfig {
        upper_layer_acks: false,
        max_buffered_bytes: 2 << 20,
        ..SessionConfig::default()
    };
    let s = pu
        .open_session(
            b"slow",
            SessionOptions {
                config: cfg,
                wait_connected: Some(T),
                ..Default::default()
            },
        )
        .unwrap();
    let mut full = 0u64;
    let mut i = 0;
    while i < COUNT {
        match s.send(&vec![(i % 251) as u8; SIZE], 7, 0) {
            Ok(_) => i += 1,
            Err(Error::BufferFull) => {
                full += 1;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("{e} after {i} messages"),
        }
    }
    let server = pe.join().unwrap();
    assert!(full > 0, "the pool user was never held back");
    assert_eq!(s.stats().failovers, 0);
    assert_eq!(s.stats().resent, 0);
    s.close();
    loop {
        match s.recv(Some(T)).unwrap() {
            Notification::Closed => break,
            Notification::Connected { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(server);
}

#[test]
fn an_echo_pe_never_outruns_a_slow_pool_user_with_the_default_bounds() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    const SIZE: usize = 32 << 10;
    const COUNT: usize = 400; // 12.5 MiB
    let reg = registrar();
    let pe_ctx = Context::new(config(&reg)).unwrap();
    let server = pe_ctx
        .pe_listen(PeListenParams::new(
            "echo-big",
            EndpointUrl::parse("tcp://127.0.0.1:0").unwrap(),
            Policy::RoundRobin,
        ))
        .unwrap();
    // Echo on the PE's loop thread: it cannot wait, the pool user's bounds
    // are all that hold it back.
    server.set_callback(Some(Box::new(|h, n| {
        if let PeNotification::Data { ppid, bytes, .. } = n {
            let _ = h.send(&bytes, ppid);
        }
    })));
    let pu = Context::new(config(&reg)).unwrap();
    let got = Arc::new(AtomicUsize::new(0));
    let g = got.clone();
    let s = pu
        .open_session(
            b"echo-big",
            SessionOptions {
                wait_connected: Some(T),
                // A slow pool user: its loop thread takes a while per reply,
                // so the PE's replies pile up on its side.
                on_data: Some(Box::new(move |_, m| {
                    assert_eq!(m.bytes.len(), SIZE);
                    g.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_micros(300));
                })),
                ..Default::default()
            },
        )
        .unwrap();
    let _accepted = server.accept(Some(T)).unwrap();
    let msg = vec![7u8; SIZE];
    let mut i = 0;
    while i < COUNT {
        match s.send(&msg, 7, 0) {
            Ok(_) => i += 1,
            Err(Error::BufferFull) => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => panic!("{e} after {i} messages"),
        }
    }
    let deadline = std::time::Instant::now() + T;
    while got.load(Ordering::Relaxed) < COUNT {
        assert!(std::time::Instant::now() < deadline, "{got:?} replies");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(s.stats().failovers, 0, "the connection was cut");
    assert_eq!(s.stats().connect_attempts, 1);
}
