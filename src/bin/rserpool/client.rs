//! `rserpool resolve` and `rserpool dump`: small ASAP/ENRP clients over the TCP
//! mapping or kernel SCTP, built on the library's blocking client.

use std::time::{Duration, Instant};

use rserpool::runtime::blocking::Client;
use rserpool::runtime::url::EndpointUrl;
use rserpool::wire::{cause, json, AsapMessage, EnrpBody, EnrpMessage, PoolElement, PoolHandle};
use serde_json::{json, Value};

/// Arguments of `rserpool resolve`.
#[derive(clap::Args, Debug)]
pub struct ResolveArgs {
    /// The registrar, e.g. tcp://127.0.0.1:3863 or sctp://10.0.0.1,10.0.1.1:3863.
    #[arg(long, default_value = "tcp://127.0.0.1:3863")]
    pub registrar: String,
    /// The pool handle (as text).
    #[arg(long)]
    pub pool: String,
    /// How many PEs to ask for (Handle Resolution option 0x803f); default: the
    /// registrar's choice.
    #[arg(long)]
    pub items: Option<u32>,
    /// Print JSON: {"pool", "policy", "elements": [{id, pool, transport, home, policy, ...}]}.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the connection and for the answer.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

/// Arguments of `rserpool dump`.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// The registrar, e.g. tcp://127.0.0.1:3863 or sctp://10.0.0.1,10.0.1.1:3863.
    #[arg(long, default_value = "tcp://127.0.0.1:3863")]
    pub registrar: String,
    /// Print JSON: {"pools": [...], "elements": [{id, pool, transport, home,
    /// policy, life, ...}], "server_id", "checksum", "peers": [{id, address,
    /// state, checksum, checksum_announced, pes, last_heard_ms_ago, taken_over_by}],
    /// "enrp_stats": {...}, "multicast": null or {group, datagrams_sent, send_errors}}.
    #[arg(long)]
    pub json: bool,
    /// Seconds to wait for the connection and for each answer.
    #[arg(long, default_value_t = 5.0)]
    pub timeout: f64,
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("rserpool: {msg}");
    1
}

fn timeout_of(secs: f64) -> Duration {
    Duration::try_from_secs_f64(secs)
        .unwrap_or(Duration::from_secs(5))
        .max(Duration::from_millis(1))
}

/// Connect to a `tcp://` or `sctp://` registrar URL.
fn connect(url: &str, timeout: Duration) -> Result<Client, String> {
    let u = EndpointUrl::parse(url).map_err(|e| e.to_string())?;
    Client::connect_url(&u, timeout)
        .map_err(|e| format!("cannot reach the registrar at {url}: {e}"))
}

fn handle_text(h: &PoolHandle) -> String {
    match json::pool_handle(h) {
        Value::String(s) => s,
        v => v.to_string(),
    }
}

/// One PE as the tools print it in JSON.
pub fn element_json(pool: &PoolHandle, pe: &PoolElement) -> Value {
    json!({
        "id": pe.id,
        "id_hex": format!("0x{:08x}", pe.id),
        "pool": handle_text(pool),
        "transport": pe.user_transport.to_string(),
        "home": pe.home,
        "home_hex": format!("0x{:08x}", pe.home),
        "policy": pe.policy.name(),
        "policy_detail": json::policy(&pe.policy),
        "reg_life": pe.reg_life,
        "asap_transport": pe.asap_transport.as_ref().map(|t| t.to_string()),
    })
}

fn element_line(pe: &PoolElement) -> String {
    let mut s = format!(
        "  PE 0x{:08x}  {}  home 0x{:08x}  policy {}",
        pe.id,
        pe.user_transport,
        pe.home,
        pe.policy.name()
    );
    let detail = json::policy(&pe.policy);
    for k in ["weight", "priority", "load", "degradation"] {
        if let Some(v) = detail.get(k) {
            s.push_str(&format!(" {k}={v}"));
        }
    }
    s
}

/// `rserpool resolve`.
pub fn resolve(a: ResolveArgs) -> i32 {
    let timeout = timeout_of(a.timeout);
    let mut c = match connect(&a.registrar, timeout) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let handle = PoolHandle::from(a.pool.as_str());
    let req = AsapMessage::HandleResolution {
        subscribe: false,
        pool_handle: handle.clone(),
        items: a.items,
    };
    if let Err(e) = c.send_asap(&req) {
        return fail(format!("sending to {}: {e}", a.registrar));
    }
    let deadline = Instant::now() + timeout;
    let (policy, elements, error) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match c.recv_asap(left) {
            Ok(AsapMessage::HandleResolutionResponse {
                pool_handle,
                policy,
                elements,
                error,
                ..
            }) if pool_handle == handle => break (policy, elements, error),
            Ok(AsapMessage::Error(causes)) => {
                let names: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
                return fail(format!(
                    "the registrar answered with an error: {}",
                    names.join(", ")
                ));
            }
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return fail(format!(
                    "no answer from the registrar at {} within {:.1} s",
                    a.registrar, a.timeout
                ))
            }
            Err(e) => return fail(format!("registrar {}: {e}", a.registrar)),
        }
    };
    if let Some(causes) = error.filter(|c| !c.is_empty()) {
        if causes.iter().any(|c| c.code == cause::UNKNOWN_POOL_HANDLE) {
            return fail(format!("unknown pool handle {:?}", a.pool));
        }
        let names: Vec<String> = causes.iter().map(|c| c.to_string()).collect();
        return fail(format!("resolution failed: {}", names.join(", ")));
    }
    if a.json {
        let out = json!({
            "pool": handle_text(&handle),
            "policy": policy.as_ref().map(|p| p.name()),
            "elements": elements.iter().map(|pe| element_json(&handle, pe)).collect::<Vec<_>>(),
        });
        println!("{out}");
    } else {
        println!(
            "pool {} ({} element{}, policy {})",
            handle,
            elements.len(),
            if elements.len() == 1 { "" } else { "s" },
            policy.as_ref().map_or("rr".to_string(), |p| p.name())
        );
        for pe in &elements {
            println!("{}", element_line(pe));
        }
    }
    0
}

/// Fetch the whole handlespace with ENRP_HANDLE_TABLE_REQUESTs, one per chunk
/// while the M flag is set.
pub fn fetch_table(
    c: &mut Client,
    timeout: Duration,
) -> Result<Vec<(PoolHandle, Vec<PoolElement>)>, String> {
    let mut pools: Vec<(PoolHandle, Vec<PoolElement>)> = Vec::new();
    let req = EnrpMessage {
        sender: 0,
        receiver: 0,
        body: EnrpBody::HandleTableRequest {
            own_children_only: false,
        },
    };
    for _round in 0..1_000_000 {
        c.send_enrp(&req).map_err(|e| format!("sending: {e}"))?;
        let deadline = Instant::now() + timeout;
        let (reject, more, chunk) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match c.recv_enrp(left) {
                Ok(EnrpMessage {
                    body:
                        EnrpBody::HandleTableResponse {
                            reject,
                            more,
                            pools,
                        },
                    ..
                }) => break (reject, more, pools),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err("no handle table from the registrar in time".into())
                }
                Err(e) => return Err(e.to_string()),
            }
        };
        if reject {
            return Err("the registrar rejected the handle table request".into());
        }
        for (h, pes) in chunk {
            match pools.last_mut() {
                Some((last, v)) if *last == h => v.extend(pes),
                _ => pools.push((h, pes)),
            }
        }
        if !more {
            return Ok(pools);
        }
    }
    Err("the handle table never ended".into())
}

/// The registrar's ENRP peers: first the implementation-private status request
/// (every field: id, address, state, checksums, PE counts), answered by
/// this crate's registrar; any other registrar gets the standard
/// ENRP_LIST_REQUEST (ids and addresses only; state and checksums unknown).
/// Returns (the registrar's own status or null, the peers).
pub fn fetch_peers(c: &mut Client, timeout: Duration) -> Result<(Value, Vec<Value>), String> {
    use rserpool::runtime::registrar::{STATUS_REQUEST, STATUS_RESPONSE};
    c.send(rserpool::registrar::PPID_ENRP, &[STATUS_REQUEST, 0, 0, 4])
        .map_err(|e| format!("sending: {e}"))?;
    let list = EnrpMessage {
        sender: 0,
        receiver: 0,
        body: EnrpBody::ListRequest,
    };
    c.send_enrp(&list).map_err(|e| format!("sending: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut status: Option<Value> = None;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let (ppid, msg) = match c.recv(left) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                return Err("no peer list from the registrar in time".into())
            }
            Err(e) => return Err(e.to_string()),
        };
        if ppid != rserpool::registrar::PPID_ENRP {
            continue;
        }
        if msg.first() == Some(&STATUS_RESPONSE) && msg.len() >= 4 {
            status = serde_json::from_slice(&msg[4..]).ok();
            continue;
        }
        let Ok(rserpool::wire::Decoded {
            msg:
                EnrpMessage {
                    sender,
                    body: EnrpBody::ListResponse { servers, .. },
                    ..
                },
            ..
        }) = EnrpMessage::decode(&msg)
        else {
            continue;
        };
        if let Some(st) = status {
            let peers = st
                .get("peers")
                .and_then(|p| p.as_array())
                .cloned()
                .unwrap_or_default();
            return Ok((st, peers));
        }
        let peers = servers
            .iter()
            .map(|si| {
                let addr = si
                    .transport
                    .port()
                    .zip(si.transport.addrs().first().copied())
                    .map(|(p, ip)| std::net::SocketAddr::new(ip, p).to_string());
                json!({
                    "id": si.server_id,
                    "id_hex": format!("0x{:08x}", si.server_id),
                    "address": addr,
                    "state": "unknown",
                    "checksum": null,
                })
            })
            .collect();
        return Ok((json!({ "server_id": sender }), peers));
    }
}

fn peer_line(p: &Value) -> String {
    let s = |k: &str| {
        p.get(k).map_or("-".to_string(), |v| match v {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_string(),
            v => v.to_string(),
        })
    };
    let hex = |k: &str| {
        p.get(k)
            .and_then(|v| v.as_u64())
            .map_or("-".to_string(), |v| format!("0x{v:04x}"))
    };
    format!(
        "  peer {}  {}  {}  checksum {} (announced {})  {} PE(s)",
        s("id_hex"),
        s("address"),
        s("state"),
        hex("checksum"),
        hex("checksum_announced"),
        s("pes"),
    )
}

/// One line on ENRP presence multicast, when the registrar has it on.
fn multicast_line(status: &Value) -> Option<String> {
    let m = status.get("multicast").filter(|m| !m.is_null())?;
    let e = &status["enrp_stats"];
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Some(format!(
        "enrp multicast {}  sent {}  received {}  peers discovered {}  malformed {}  ignored {}  rate-limited {}",
        m["group"].as_str().unwrap_or("?"),
        n(&m["datagrams_sent"]),
        n(&e["multicast_received"]),
        n(&e["peers_discovered"]),
        n(&e["multicast_malformed"]),
        n(&e["multicast_ignored"]),
        n(&e["multicast_rate_limited"]),
    ))
}

/// `rserpool dump`.
pub fn dump(a: DumpArgs) -> i32 {
    let timeout = timeout_of(a.timeout);
    let mut c = match connect(&a.registrar, timeout) {
        Ok(c) => c,
        Err(e) => return fail(e),
    };
    let pools = match fetch_table(&mut c, timeout) {
        Ok(p) => p,
        Err(e) => return fail(format!("registrar {}: {e}", a.registrar)),
    };
    let (status, peers) = match fetch_peers(&mut c, timeout) {
        Ok(p) => p,
        Err(e) => return fail(format!("registrar {}: {e}", a.registrar)),
    };
    if a.json {
        let elements: Vec<Value> = pools
            .iter()
            .flat_map(|(h, pes)| pes.iter().map(move |pe| element_json(h, pe)))
            .collect();
        let out = json!({
            "pools": pools.iter().map(|(h, pes)| json!({
                "pool": handle_text(h),
                "elements": pes.len(),
            })).collect::<Vec<_>>(),
            "elements": elements,
            "server_id": status.get("server_id"),
            "checksum": status.get("checksum"),
            "peers": peers,
            "enrp_stats": status.get("enrp_stats"),
            "multicast": status.get("multicast"),
        });
        println!("{out}");
    } else {
        let total: usize = pools.iter().map(|(_, p)| p.len()).sum();
        let id = status.get("server_id").and_then(|v| v.as_u64());
        let sum = status.get("checksum").and_then(|v| v.as_u64());
        println!(
            "registrar {}  own checksum {}  {} peer(s)",
            id.map_or("?".into(), |v| format!("0x{v:08x}")),
            sum.map_or("?".into(), |v| format!("0x{v:04x}")),
            peers.len()
        );
        for p in &peers {
            println!("{}", peer_line(p));
        }
        if let Some(line) = multicast_line(&status) {
            println!("{line}");
        }
        println!("handlespace: {} pool(s), {} PE(s)", pools.len(), total);
        for (h, pes) in &pools {
            println!(
                "pool {} ({} PE{})",
                h,
                pes.len(),
                if pes.len() == 1 { "" } else { "s" }
            );
            for pe in pes {
                println!("{}  life {}", element_line(pe), pe.reg_life);
            }
        }
    }
    0
}
