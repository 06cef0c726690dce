//! Hostile input: thousands of random and mutated messages and TCP-mapping
//! chunks on many connections, while a well-behaved client registers and
//! resolves throughout and must always get correct answers.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rserpool::runtime::blocking::TcpMapClient;
use rserpool::wire::tcpmap::{Chunk, InitFlags};
use rserpool::wire::{AsapMessage, EnrpBody, EnrpMessage, Policy};

/// xorshift64*: deterministic per thread, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// Well-formed messages the hostile side starts from (never naming the good pool).
fn seeds(rng: &mut Rng) -> Vec<Vec<u8>> {
    let id = 1000 + rng.below(1000) as u32;
    vec![
        reg("evil", pe(id, 7000, Policy::RoundRobin, 60)).to_bytes(),
        reg("evil", pe(id, 7001, Policy::LeastUsed { load: 3 }, -1)).to_bytes(),
        resolve("evil", Some(5)).to_bytes(),
        AsapMessage::Deregistration {
            pool_handle: "evil".into(),
            pe_id: id,
        }
        .to_bytes(),
        AsapMessage::EndpointUnreachable {
            pool_handle: "evil".into(),
            pe_id: id,
        }
        .to_bytes(),
        AsapMessage::EndpointKeepAliveAck {
            pool_handle: "evil".into(),
            pe_id: id,
        }
        .to_bytes(),
        EnrpMessage {
            sender: 1,
            receiver: 0,
            body: EnrpBody::HandleTableRequest {
                own_children_only: false,
            },
        }
        .to_bytes(),
    ]
}

fn mutate(rng: &mut Rng, mut m: Vec<u8>) -> Vec<u8> {
    match rng.below(5) {
        0 => {
            for _ in 0..1 + rng.below(4) {
                let i = rng.below(m.len() as u64) as usize;
                m[i] ^= 1 << rng.below(8);
            }
        }
        1 => m.truncate(rng.below(m.len() as u64) as usize),
        2 => {
            // Lie in a length field: the message's or a parameter's.
            let i = 2 + 4 * rng.below((m.len() / 4) as u64) as usize;
            if i + 1 < m.len() {
                let v = rng.next() as u16;
                m[i..i + 2].copy_from_slice(&v.to_be_bytes());
            }
        }
        3 => {
            let n = rng.below(64) as usize;
            let extra = rng.bytes(n);
            m.extend_from_slice(&extra);
        }
        _ => {
            let n = rng.below(200) as usize;
            m = rng.bytes(n);
        }
    }
    m
}

/// One hostile connection of a random kind; returns messages/chunks sent.
fn hostile_connection(addr: std::net::SocketAddr, rng: &mut Rng) -> u64 {
    let mut sent = 0;
    match rng.below(4) {
        // Raw garbage, maybe after a valid INIT.
        0 => {
            let Ok(mut s) = TcpStream::connect(addr) else {
                return 0;
            };
            let mut b = Vec::new();
            if rng.below(2) == 0 {
                Chunk::Init {
                    flags: InitFlags(rng.next() as u8),
                }
                .encode(&mut b)
                .unwrap();
            }
            let n = 1 + rng.below(3000) as usize;
            b.extend(rng.bytes(n));
            let _ = s.write_all(&b);
            sent += 1;
        }
        // Random chunks after a valid INIT.
        1 => {
            let Ok(mut s) = TcpStream::connect(addr) else {
                return 0;
            };
            let mut b = Vec::new();
            Chunk::Init {
                flags: InitFlags::NONE,
            }
            .encode(&mut b)
            .unwrap();
            for _ in 0..1 + rng.below(50) {
                let ty = rng.below(7) as u8;
                let n = rng.below(100) as usize;
                let body = rng.bytes(n);
                let len = if rng.below(8) == 0 {
                    rng.next() as u16
                } else {
                    (4 + body.len()) as u16
                };
                b.extend_from_slice(&[ty, rng.next() as u8]);
                b.extend_from_slice(&len.to_be_bytes());
                b.extend_from_slice(&body);
                while b.len() % 4 != 0 {
                    b.push(0);
                }
                sent += 1;
            }
            let _ = s.write_all(&b);
        }
        // Well-framed DATA carrying random or mutated messages, pipelined.
        _ => {
            let flags = InitFlags(rng.below(8) as u8);
            let Ok(mut c) = TcpMapClient::connect_with_flags(addr, T, flags) else {
                return 0;
            };
            let base = seeds(rng);
            for _ in 0..1 + rng.below(100) {
                let m = base[rng.below(base.len() as u64) as usize].clone();
                let m = if rng.below(4) == 0 { m } else { mutate(rng, m) };
                let ppid = match rng.below(6) {
                    0 => rng.next() as u32,
                    1 => 12,
                    _ => 11,
                };
                if c.queue(ppid, &m).is_err() {
                    break;
                }
                sent += 1;
            }
            let _ = c.flush();
            // Sometimes read a little, sometimes vanish at once.
            if rng.below(2) == 0 {
                let _ = c.recv(Duration::from_millis(5));
            }
        }
    }
    sent
}

#[test]
fn hostile_traffic_never_disturbs_a_well_behaved_client() {
    let mut r = Proc::start(&[
        "--keep-alive-interval",
        "200ms",
        "--keep-alive-min-gap",
        "50ms",
    ]);
    let addr = r.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let total = Arc::new(AtomicU64::new(0));
    let attackers: Vec<_> = (0..4u64)
        .map(|t| {
            let stop = stop.clone();
            let total = total.clone();
            std::thread::spawn(move || {
                let mut rng =
                    Rng(0x9e37_79b9_7f4a_7c15 ^ (t + 1).wrapping_mul(0x1234_5678_9abc_def1));
                let deadline = Instant::now() + Duration::from_secs(30);
                let mut conns = 0;
                while !stop.load(Ordering::Relaxed) && conns < 2_000 && Instant::now() < deadline {
                    total.fetch_add(hostile_connection(addr, &mut rng), Ordering::Relaxed);
                    conns += 1;
                }
            })
        })
        .collect();

    // The good client: five PEs in "good", re-registered and resolved throughout.
    let mut good = r.client();
    for id in 1..=5 {
        granted(
            &register(
                &mut good,
                "good",
                pe(id, 5000 + id as u16, Policy::RoundRobin, 600),
            ),
            id,
        );
    }
    let mut pu = r.client();
    let started = Instant::now();
    let mut rounds = 0;
    // At least 3 s and 5 000 hostile messages; resolutions paced at <= 50/s to
    // stay inside the registrar's default per-connection rate limit.
    while started.elapsed() < Duration::from_secs(3) || total.load(Ordering::Relaxed) < 5_000 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "too slow under attack"
        );
        let round_start = Instant::now();
        assert_eq!(resolved(&mut pu, "good"), Ok(vec![1, 2, 3, 4, 5]));
        let id = 1 + rounds % 5;
        granted(
            &register(
                &mut good,
                "good",
                pe(id, 5000 + id as u16, Policy::RoundRobin, 600),
            ),
            id,
        );
        if let Some(rest) = Duration::from_millis(20).checked_sub(round_start.elapsed()) {
            std::thread::sleep(rest);
        }
        rounds += 1;
    }
    stop.store(true, Ordering::Relaxed);
    for a in attackers {
        a.join().unwrap();
    }
    let sent = total.load(Ordering::Relaxed);
    assert!(sent >= 1_000, "only {sent} hostile messages");

    // Afterwards: alive, and the handlespace has the good pool intact.
    assert!(r.alive());
    assert_eq!(resolved(&mut pu, "good"), Ok(vec![1, 2, 3, 4, 5]));
    let (code, out, err) = cli(&["dump", "--registrar", &r.url, "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let mut good_ids: Vec<u64> = v["elements"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["pool"] == "good")
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    good_ids.sort_unstable();
    assert_eq!(good_ids, vec![1, 2, 3, 4, 5]);
    // And it still takes new work.
    let mut late = r.client();
    granted(
        &register(&mut late, "late", pe(77, 7777, Policy::RoundRobin, 60)),
        77,
    );
    assert!(r.alive());
    eprintln!("{sent} hostile messages/chunks, {rounds} good rounds");
}
