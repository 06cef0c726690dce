//! Enhanced-mode sessions for real: pool users' `Session`s and pool elements'
//! `PeServer`s on loopback, with an embedded registrar, through the context's
//! loop thread.

use std::time::Duration;

use rserpool::api::{
    Config, Context, Error, Notification, PeListenParams, PeNotification, PeServer,
    PeSessionHandle, Session, SessionOptions,
};
use rserpool::runtime::{EndpointUrl, RegistrarHandle, RegistrarOptions};
use rserpool::wire::Policy;

const T: Duration = Duration::from_secs(10);

fn registrar() -> RegistrarHandle {
    let mut opts = RegistrarOptions::default();
    opts.runtime.listen = vec![EndpointUrl::parse("tcp://127.0.0.1:0").unwrap()];
    RegistrarHandle::start(opts).unwrap()
}

fn config(reg: &RegistrarHandle) -> Config {
    let mut c = Config::default();
    c.add_registrar(&reg.local_urls()[0]).unwrap();
    c.client.t1_request = Duration::from_millis(500);
    c.client.t2_registration = Duration::from_millis(500);
    c.client.t3_deregistration = Duration::from_millis(500);
    c.client.t5_server_hunt = Duration::from_millis(200);
    c.client.stale_cache = Duration::ZERO;
    c.shutdown_timeout = Duration::from_millis(500);
    c
}

fn listen(ctx: &Context, pool: &str) -> PeServer {
    ctx.pe_listen(PeListenParams::new(
        pool,
        EndpointUrl::parse("tcp://127.0.0.1:0").unwrap(),
        Policy::RoundRobin,
    ))
    .unwrap()
}

/// Echo every message of one session until it closes.
fn echo(s: PeSessionHandle) {
    loop {
        match s.recv(Some(T)) {
            Ok(PeNotification::Data { ppid, bytes, .. }) => s.send(&bytes, ppid).unwrap(),
            Ok(PeNotification::Closed) | Err(Error::SessionClosed) => return,
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    }
}

fn next_data(s: &Session) -> Vec<u8> {
    loop {
        match s.recv(Some(T)).unwrap() {
            Notification::Data { bytes, .. } => return bytes,
            Notification::Connected { .. } | Notification::Failover { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn echo_through_a_session() {
    let reg = registrar();
    let pe_ctx = Context::new(config(&reg)).unwrap();
    let server = listen(&pe_ctx, "echo");
    assert_ne!(server.local_addrs()[0].port(), 0);
    let t = std::thread::spawn(move || {
        let s = server.accept(Some(T)).unwrap();
        echo(s);
        server
    });
    let pu = Context::new(config(&reg)).unwrap();
    let s = pu
        .open_session(
            b"echo",
            SessionOptions {
                wait_connected: Some(T),
                ..Default::default()
            },
        )
        .unwrap();
    let pe = s.current_pe().unwrap().pe_id;
    assert_eq!(s.recv(Some(T)).unwrap(), Notification::Connected { pe });
    for i in 0..100u32 {
        let r = s.send(&i.to_be_bytes(), 42, 0).unwrap();
        assert_eq!(r.seq, u64::from(i));
        assert_eq!(r.pe_id, Some(pe));
    }
    for i in 0..100u32 {
        assert_eq!(next_data(&s), i.to_be_bytes());
    }
    s.close();
    assert_eq!(s.recv(Some(T)).unwrap(), Notification::Closed);
    assert_eq!(s.recv(Some(T)), Err(Error::SessionClosed));
    let server = t.join().unwrap();
    drop(server);
}
