//! `rserpool registrar`: an ENRP server (ASAP side for PEs and PUs, ENRP side
//! for peer registrars), over kernel SCTP and the TCP mapping.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use clap::builder::PossibleValue;
use rserpool::registrar::{KeepAlivePeId, RateLimit, RegLifeUnit, RegistrarConfig};
use rserpool::runtime::{
    probe_sctp, EndpointUrl, EnrpMulticast, MulticastInterface, Proto, RegistrarHandle,
    RegistrarOptions, RuntimeConfig, SctpParams, SctpSupport, SignalPipe,
};

/// Timer and limit presets.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Profile {
    /// RFC 5352/5353 values (where the RFCs give none: documented choices).
    Rfc,
    /// RSPLIB's registrar: milliseconds Registration Life, no unreachable probe, ...
    Rsplib,
}

/// Unit of the Registration Life field.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifeUnit {
    /// Seconds (RFC).
    S,
    /// Milliseconds (RSPLIB).
    Ms,
}

impl clap::ValueEnum for LifeUnit {
    fn value_variants<'a>() -> &'a [Self] {
        &[LifeUnit::S, LifeUnit::Ms]
    }
    fn to_possible_value(&self) -> Option<PossibleValue> {
        Some(match self {
            LifeUnit::S => PossibleValue::new("s").help("seconds (RFC)"),
            LifeUnit::Ms => PossibleValue::new("ms").help("milliseconds (RSPLIB)"),
        })
    }
}

/// When keep-alives carry RSPLIB's PE Identifier TLV.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeIdMode {
    /// Only for PEs that look like RSPLIB.
    Auto,
    /// Always.
    Always,
    /// Never (RFC layout).
    Never,
}

/// Arguments of `rserpool registrar`. Every timer/limit flag without a value
/// keeps the chosen profile's value (shown in --help).
#[derive(clap::Args, Debug)]
pub struct RegistrarArgs {
    /// ASAP endpoint to listen on: tcp://HOST:PORT or sctp://HOST[,HOST...]:PORT
    /// (repeatable; port 0 = ephemeral; several SCTP hosts = one multi-homed
    /// endpoint). Default: tcp://0.0.0.0:3863, plus sctp://0.0.0.0:3863 when
    /// the kernel has SCTP.
    #[arg(long = "asap", value_name = "URL")]
    pub asap: Vec<String>,
    /// ENRP endpoint to listen on for peer registrars: tcp://HOST:PORT (TCP
    /// mapping, PPID 12) or sctp://HOST[,HOST...]:PORT (kernel SCTP, PPID 12,
    /// as RSPLIB; repeatable; port 0 = ephemeral). Default: none, and
    /// peers then talk ENRP to the first --asap endpoint, which serves both
    /// protocols (told apart by PPID). RSPLIB's ENRP port is 9901.
    #[arg(long = "enrp", value_name = "URL")]
    pub enrp: Vec<String>,
    /// An ENRP peer to dial (repeatable): its ENRP endpoint, tcp://HOST:PORT
    /// or sctp://HOST:PORT.
    /// The first reachable one is the mentor the handlespace is downloaded
    /// from at start-up; the others are backups. Default: none (alone until a
    /// peer dials us).
    #[arg(long = "peer", value_name = "URL")]
    pub peer: Vec<String>,
    /// Preset for every timer and limit below.
    #[arg(long, value_enum, default_value_t = Profile::Rfc)]
    pub profile: Profile,
    /// Server identifier (decimal or 0x hex, non-zero). Default: random.
    #[arg(long, value_parser = parse_u32)]
    pub server_id: Option<u32>,
    /// Seed of the registrar's PRNG (keep-alive jitter, random policies). Default: random.
    #[arg(long)]
    pub seed: Option<u64>,
    /// ASAP_SERVER_ANNOUNCE multicast GROUP:PORT (e.g. 239.0.0.50:3863), or off.
    #[arg(long, default_value = "off", value_name = "GROUP:PORT|off")]
    pub announce: String,
    /// Multicast TTL of announces.
    #[arg(long, default_value_t = 1)]
    pub announce_ttl: u32,
    /// ENRP presence multicast GROUP:PORT, or off. On: at start and every
    /// --enrp-peer-heartbeat-cycle an ENRP_PRESENCE naming our ENRP endpoint
    /// goes to the group (one UDP datagram), and a registrar heard there
    /// that we do not know becomes a peer: dialled at the endpoint its
    /// presence names, then synchronised over unicast like any peer (no
    /// --peer needed). IANA assigns no ENRP group; RSPLIB uses
    /// 239.0.0.51:9901.
    #[arg(long, default_value = "off", value_name = "GROUP:PORT|off")]
    pub enrp_multicast: String,
    /// Interface for ENRP multicast: one of its IPv4 addresses, or its name
    /// or index (IPv6 groups). Default: the route to the group.
    #[arg(long, value_name = "ADDR|IFNAME")]
    pub enrp_multicast_if: Option<String>,
    /// Multicast TTL (IPv6: hop limit) of ENRP presences.
    #[arg(long, default_value_t = 1)]
    pub enrp_multicast_ttl: u32,

    /// Unit of the Registration Life field.
    #[arg(long, value_enum)]
    pub reglife_unit: Option<LifeUnit>,
    /// PEs per handle resolution when the request names no count.
    #[arg(long)]
    pub default_items: Option<u32>,
    /// Most PEs per handle resolution.
    #[arg(long)]
    pub max_items: Option<u32>,
    /// Mean keep-alive interval per owned PE (±50 % jitter; 0 = none).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_alive_interval: Option<Duration>,
    /// Wait for a keep-alive ACK before removing the PE.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_alive_timeout: Option<Duration>,
    /// Least time between two keep-alives to one PE.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub keep_alive_min_gap: Option<Duration>,
    /// When keep-alives carry the PE Identifier TLV.
    #[arg(long, value_enum)]
    pub keep_alive_pe_id: Option<PeIdMode>,
    /// MAX-BAD-PE-REPORT: remove a PE when its unreachable reports exceed this.
    #[arg(long)]
    pub max_bad_pe_reports: Option<u32>,
    /// Probe a reported PE with a keep-alive at once (RFC 5352 §3.5).
    #[arg(long, value_name = "BOOL")]
    pub probe_unreachable: Option<bool>,
    /// Keep PEs when their registration connection closes (until their life ends).
    #[arg(long)]
    pub no_remove_on_disconnect: bool,
    /// Only the registering connection may deregister a PE.
    #[arg(long, value_name = "BOOL")]
    pub deregistration_requires_owner: Option<bool>,
    /// Malformed messages tolerated per connection before it is closed.
    #[arg(long)]
    pub max_malformed: Option<u32>,
    /// Close idle connections (no PEs, no subscription, silent) after this (0 = never).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub idle_timeout: Option<Duration>,
    /// Handle resolutions per connection: PER_SEC[/BURST] (0 = unlimited).
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub resolution_rate: Option<RateLimit>,
    /// Unreachable reports per connection: PER_SEC[/BURST] (0 = unlimited).
    #[arg(long, value_parser = parse_rate, value_name = "RATE")]
    pub unreachable_rate: Option<RateLimit>,
    /// Most PEs in one pool.
    #[arg(long)]
    pub max_pes_per_pool: Option<usize>,
    /// Most PEs registered over one connection.
    #[arg(long)]
    pub max_pes_per_connection: Option<usize>,
    /// Most PEs in the handlespace.
    #[arg(long)]
    pub max_pes_total: Option<usize>,
    /// Most pool subscriptions per connection.
    #[arg(long)]
    pub max_subscriptions_per_connection: Option<usize>,
    /// Most PEs per ENRP_HANDLE_TABLE_RESPONSE chunk.
    #[arg(long)]
    pub handle_table_chunk: Option<usize>,
    /// Drop a handle-table cursor after this long without the next request.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub handle_table_session_timeout: Option<Duration>,
    /// Server announce period (T6), when --announce is on.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub announce_interval: Option<Duration>,

    /// ENRP PEER-HEARTBEAT-CYCLE: period of the presence sent to every peer.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub enrp_peer_heartbeat_cycle: Option<Duration>,
    /// ENRP MAX-TIME-LAST-HEARD: silence after which a peer is probed.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub enrp_max_time_last_heard: Option<Duration>,
    /// ENRP MAX-TIME-NO-RESPONSE: wait for an answer to a probe, a list
    /// request or one handle-table request (an unanswered probe declares the
    /// peer dead and starts a takeover).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub enrp_max_time_no_response: Option<Duration>,
    /// ENRP: wait before asking a mentor again after a rejection or a failed round.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub enrp_mentor_retry_interval: Option<Duration>,
    /// ENRP: how long a takeover waits for every INIT_TAKEOVER_ACK (or for
    /// another server's TAKEOVER_SERVER after acking) before starting over.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub enrp_takeover_timeout: Option<Duration>,
    /// ENRP: period of reconnection attempts to configured peers that are down.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub enrp_peer_reconnect_interval: Option<Duration>,
    /// ENRP: most peers remembered.
    #[arg(long)]
    pub enrp_max_peers: Option<usize>,
    /// Give up an outbound connection (to an ENRP peer) after this long.
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub connect_timeout: Option<Duration>,

    /// TCP mapping: HEARTBEAT after this long without hearing from the peer (0 = never).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub tcp_heartbeat_interval: Option<Duration>,
    /// TCP mapping: close after this many unanswered HEARTBEATs.
    #[arg(long)]
    pub tcp_heartbeat_max_missed: Option<u32>,
    /// SCTP: interval of the kernel's path HEARTBEATs (0 = kernel default).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub sctp_heartbeat_interval: Option<Duration>,
    /// SCTP: retransmissions on a path before it counts as down (0 = kernel default).
    #[arg(long)]
    pub sctp_path_max_retrans: Option<u16>,
    /// SCTP: initial retransmission timeout (0 = kernel default).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub sctp_rto_initial: Option<Duration>,
    /// SCTP: least retransmission timeout (0 = kernel default).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub sctp_rto_min: Option<Duration>,
    /// SCTP: greatest retransmission timeout (0 = kernel default).
    #[arg(long, value_parser = parse_duration, value_name = "DURATION")]
    pub sctp_rto_max: Option<Duration>,
    /// Bytes of unsent output per connection before it is closed.
    #[arg(long)]
    pub max_write_buffer: Option<usize>,
    /// Most simultaneous connections.
    #[arg(long)]
    pub max_connections: Option<usize>,
}

pub fn parse_u32(s: &str) -> Result<u32, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|e| format!("{s:?}: {e}"))?;
    if v == 0 {
        return Err("must be non-zero".into());
    }
    Ok(v)
}

/// `1.5s`, `200ms`, `2m`, `100us`, or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1e-3)
    } else if let Some(n) = s.strip_suffix("us") {
        (n, 1e-6)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 5s, 250ms, 2m)"))?;
    Duration::try_from_secs_f64(v * mult).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_rate(s: &str) -> Result<RateLimit, String> {
    let (a, b) = match s.split_once('/') {
        Some((a, b)) => (a, Some(b)),
        None => (s, None),
    };
    let per_sec: u32 = a
        .trim()
        .parse()
        .map_err(|_| format!("{s:?}: expected PER_SEC[/BURST]"))?;
    let burst: u32 = match b {
        Some(b) => b
            .trim()
            .parse()
            .map_err(|_| format!("{s:?}: expected PER_SEC[/BURST]"))?,
        None => per_sec.saturating_mul(2),
    };
    Ok(RateLimit { per_sec, burst })
}

fn fmt_duration(d: Duration) -> String {
    if d.is_zero() {
        "0".into()
    } else if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn fmt_rate(r: RateLimit) -> String {
    if r.per_sec == 0 {
        "0 (unlimited)".into()
    } else {
        format!("{}/{}", r.per_sec, r.burst)
    }
}

/// The default value of each timer/limit flag under both profiles, as shown in
/// --help; computed from the configuration types so it can't drift.
fn defaults() -> Vec<(&'static str, String, String)> {
    let r = RegistrarConfig::default();
    let p = RegistrarConfig::rsplib_profile();
    let rt = RuntimeConfig::default();
    let sp = SctpParams::default();
    let unit = |u: RegLifeUnit| match u {
        RegLifeUnit::Seconds => "s".to_string(),
        RegLifeUnit::Millis => "ms".to_string(),
    };
    let pe = |m: KeepAlivePeId| match m {
        KeepAlivePeId::Auto => "auto".to_string(),
        KeepAlivePeId::Always => "always".to_string(),
        KeepAlivePeId::Never => "never".to_string(),
    };
    let ann = |d: Option<Duration>| d.map_or("1s".to_string(), fmt_duration);
    vec![
        ("reglife_unit", unit(r.reg_life_unit), unit(p.reg_life_unit)),
        (
            "default_items",
            r.default_items.to_string(),
            p.default_items.to_string(),
        ),
        (
            "max_items",
            r.max_items.to_string(),
            p.max_items.to_string(),
        ),
        (
            "keep_alive_interval",
            fmt_duration(r.keep_alive_interval),
            fmt_duration(p.keep_alive_interval),
        ),
        (
            "keep_alive_timeout",
            fmt_duration(r.keep_alive_timeout),
            fmt_duration(p.keep_alive_timeout),
        ),
        (
            "keep_alive_min_gap",
            fmt_duration(r.keep_alive_min_gap),
            fmt_duration(p.keep_alive_min_gap),
        ),
        (
            "keep_alive_pe_id",
            pe(r.keep_alive_pe_id),
            pe(p.keep_alive_pe_id),
        ),
        (
            "max_bad_pe_reports",
            r.max_bad_pe_reports.to_string(),
            p.max_bad_pe_reports.to_string(),
        ),
        (
            "probe_unreachable",
            r.probe_unreachable.to_string(),
            p.probe_unreachable.to_string(),
        ),
        (
            "deregistration_requires_owner",
            r.deregistration_requires_owner.to_string(),
            p.deregistration_requires_owner.to_string(),
        ),
        (
            "max_malformed",
            r.max_malformed.to_string(),
            p.max_malformed.to_string(),
        ),
        (
            "idle_timeout",
            fmt_duration(r.idle_timeout),
            fmt_duration(p.idle_timeout),
        ),
        (
            "resolution_rate",
            fmt_rate(r.resolution_rate),
            fmt_rate(p.resolution_rate),
        ),
        (
            "unreachable_rate",
            fmt_rate(r.unreachable_rate),
            fmt_rate(p.unreachable_rate),
        ),
        (
            "max_pes_per_pool",
            r.max_pes_per_pool.to_string(),
            p.max_pes_per_pool.to_string(),
        ),
        (
            "max_pes_per_connection",
            r.max_pes_per_connection.to_string(),
            p.max_pes_per_connection.to_string(),
        ),
        (
            "max_pes_total",
            r.max_pes_total.to_string(),
            p.max_pes_total.to_string(),
        ),
        (
            "max_subscriptions_per_connection",
            r.max_subscriptions_per_connection.to_string(),
            p.max_subscriptions_per_connection.to_string(),
        ),
        (
            "handle_table_chunk",
            r.handle_table_chunk.to_string(),
            p.handle_table_chunk.to_string(),
        ),
        (
            "handle_table_session_timeout",
            fmt_duration(r.handle_table_session_timeout),
            fmt_duration(p.handle_table_session_timeout),
        ),
        (
            "announce_interval",
            ann(r.announce_interval),
            ann(p.announce_interval),
        ),
        (
            "enrp_peer_heartbeat_cycle",
            fmt_duration(r.peer_heartbeat_cycle),
            fmt_duration(p.peer_heartbeat_cycle),
        ),
        (
            "enrp_max_time_last_heard",
            fmt_duration(r.max_time_last_heard),
            fmt_duration(p.max_time_last_heard),
        ),
        (
            "enrp_max_time_no_response",
            fmt_duration(r.max_time_no_response),
            fmt_duration(p.max_time_no_response),
        ),
        (
            "enrp_mentor_retry_interval",
            fmt_duration(r.mentor_retry_interval),
            fmt_duration(p.mentor_retry_interval),
        ),
        (
            "enrp_takeover_timeout",
            fmt_duration(r.takeover_timeout),
            fmt_duration(p.takeover_timeout),
        ),
        (
            "enrp_peer_reconnect_interval",
            fmt_duration(r.peer_reconnect_interval),
            fmt_duration(p.peer_reconnect_interval),
        ),
        (
            "enrp_max_peers",
            r.max_peers.to_string(),
            p.max_peers.to_string(),
        ),
        (
            "connect_timeout",
            fmt_duration(rt.connect_timeout),
            fmt_duration(rt.connect_timeout),
        ),
        (
            "tcp_heartbeat_interval",
            fmt_duration(rt.heartbeat_interval),
            fmt_duration(rt.heartbeat_interval),
        ),
        (
            "tcp_heartbeat_max_missed",
            rt.heartbeat_max_missed.to_string(),
            rt.heartbeat_max_missed.to_string(),
        ),
        (
            "sctp_heartbeat_interval",
            fmt_duration(sp.heartbeat_interval),
            fmt_duration(sp.heartbeat_interval),
        ),
        (
            "sctp_path_max_retrans",
            sp.path_max_retrans.to_string(),
            sp.path_max_retrans.to_string(),
        ),
        (
            "sctp_rto_initial",
            fmt_duration(sp.rto_initial),
            fmt_duration(sp.rto_initial),
        ),
        (
            "sctp_rto_min",
            fmt_duration(sp.rto_min),
            fmt_duration(sp.rto_min),
        ),
        (
            "sctp_rto_max",
            fmt_duration(sp.rto_max),
            fmt_duration(sp.rto_max),
        ),
        (
            "max_write_buffer",
            rt.max_write_buffer.to_string(),
            rt.max_write_buffer.to_string(),
        ),
        (
            "max_connections",
            rt.max_connections.to_string(),
            rt.max_connections.to_string(),
        ),
    ]
}

/// Add "[default: X; rsplib: Y]" to each timer/limit flag's help.
pub fn annotate(cmd: clap::Command) -> clap::Command {
    cmd.mut_subcommand("registrar", |mut sub| {
        for (id, rfc, rsplib) in defaults() {
            sub = sub.mut_arg(id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                let shown = if rfc == rsplib {
                    format!("{help} [default: {rfc}]")
                } else {
                    format!("{help} [default: {rfc}; --profile rsplib: {rsplib}]")
                };
                a.help(shown)
            });
        }
        sub
    })
}

fn fail(msg: impl std::fmt::Display) -> i32 {
    eprintln!("rserpool registrar: {msg}");
    1
}

/// Build the registrar's options from the arguments.
pub fn options(a: &RegistrarArgs) -> Result<RegistrarOptions, String> {
    let mut r = match a.profile {
        Profile::Rfc => RegistrarConfig::default(),
        Profile::Rsplib => RegistrarConfig::rsplib_profile(),
    };
    if let Some(u) = a.reglife_unit {
        r.reg_life_unit = match u {
            LifeUnit::S => RegLifeUnit::Seconds,
            LifeUnit::Ms => RegLifeUnit::Millis,
        };
    }
    macro_rules! set {
        ($($f:ident),*) => { $( if let Some(v) = a.$f { r.$f = v; } )* };
    }
    set!(
        default_items,
        max_items,
        keep_alive_interval,
        keep_alive_timeout,
        keep_alive_min_gap,
        max_bad_pe_reports,
        probe_unreachable,
        deregistration_requires_owner,
        max_malformed,
        idle_timeout,
        resolution_rate,
        unreachable_rate,
        max_pes_per_pool,
        max_pes_per_connection,
        max_pes_total,
        max_subscriptions_per_connection,
        handle_table_chunk,
        handle_table_session_timeout
    );
    if let Some(m) = a.keep_alive_pe_id {
        r.keep_alive_pe_id = match m {
            PeIdMode::Auto => KeepAlivePeId::Auto,
            PeIdMode::Always => KeepAlivePeId::Always,
            PeIdMode::Never => KeepAlivePeId::Never,
        };
    }
    macro_rules! set_enrp {
        ($($f:ident => $g:ident),*) => { $( if let Some(v) = a.$f { r.$g = v; } )* };
    }
    set_enrp!(
        enrp_peer_heartbeat_cycle => peer_heartbeat_cycle,
        enrp_max_time_last_heard => max_time_last_heard,
        enrp_max_time_no_response => max_time_no_response,
        enrp_mentor_retry_interval => mentor_retry_interval,
        enrp_takeover_timeout => takeover_timeout,
        enrp_peer_reconnect_interval => peer_reconnect_interval,
        enrp_max_peers => max_peers
    );
    for s in &a.peer {
        let u = EndpointUrl::parse(s).map_err(|e| format!("--peer: {e}"))?;
        let addr = u.first();
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return Err(format!("--peer {s}: needs a concrete address and port"));
        }
        if u.proto == Proto::Sctp {
            if !probe_sctp().is_available() {
                return Err(format!("--peer {s}: this kernel has no SCTP support"));
            }
            r.sctp_peers.push(addr);
        }
        r.peers.push(addr);
    }
    let mut enrp = Vec::new();
    for s in &a.enrp {
        let u = EndpointUrl::parse(s).map_err(|e| format!("--enrp: {e}"))?;
        enrp.push(u);
    }
    if a.no_remove_on_disconnect {
        r.remove_on_connection_loss = false;
    }
    if let Some(d) = a.announce_interval {
        r.announce_interval = Some(d);
    }
    let mut rt = RuntimeConfig::default();
    if let Some(v) = a.tcp_heartbeat_interval {
        rt.heartbeat_interval = v;
    }
    if let Some(v) = a.tcp_heartbeat_max_missed {
        rt.heartbeat_max_missed = v;
    }
    if let Some(v) = a.max_write_buffer {
        rt.max_write_buffer = v.max(4096);
    }
    if let Some(v) = a.sctp_heartbeat_interval {
        rt.sctp.heartbeat_interval = v;
    }
    if let Some(v) = a.sctp_path_max_retrans {
        rt.sctp.path_max_retrans = v;
    }
    if let Some(v) = a.sctp_rto_initial {
        rt.sctp.rto_initial = v;
    }
    if let Some(v) = a.sctp_rto_min {
        rt.sctp.rto_min = v;
    }
    if let Some(v) = a.sctp_rto_max {
        rt.sctp.rto_max = v;
    }
    if let Some(v) = a.max_connections {
        rt.max_connections = v;
    }
    if let Some(v) = a.connect_timeout {
        rt.connect_timeout = v.max(Duration::from_millis(1));
    }
    rt.announce_ttl = a.announce_ttl;
    rt.announce = if a.announce.eq_ignore_ascii_case("off") {
        None
    } else {
        let g: SocketAddr = a
            .announce
            .parse()
            .map_err(|_| format!("--announce {:?}: expected GROUP:PORT or off", a.announce))?;
        Some(g)
    };
    let enrp_multicast = if a.enrp_multicast.eq_ignore_ascii_case("off") {
        if a.enrp_multicast_if.is_some() {
            return Err("--enrp-multicast-if needs --enrp-multicast GROUP:PORT".into());
        }
        None
    } else {
        let bad = || {
            format!(
                "--enrp-multicast {:?}: expected a multicast GROUP:PORT (e.g. {}) or off",
                a.enrp_multicast,
                EnrpMulticast::RSPLIB_GROUP
            )
        };
        let group: SocketAddr = a.enrp_multicast.parse().map_err(|_| bad())?;
        if !group.ip().is_multicast() || group.port() == 0 {
            return Err(bad());
        }
        let interface = match &a.enrp_multicast_if {
            Some(s) => Some(
                MulticastInterface::parse(s).map_err(|e| format!("--enrp-multicast-if: {e}"))?,
            ),
            None => None,
        };
        if group.is_ipv6() && matches!(interface, Some(MulticastInterface::Addr(_))) {
            return Err(
                "--enrp-multicast-if: an IPv6 group needs an interface name or index".into(),
            );
        }
        Some(EnrpMulticast {
            group,
            interface,
            ttl: a.enrp_multicast_ttl,
        })
    };
    let sctp = probe_sctp();
    if a.asap.is_empty() {
        rt.listen
            .push(EndpointUrl::parse("tcp://0.0.0.0:3863").map_err(|e| e.to_string())?);
        if sctp.is_available() {
            rt.listen
                .push(EndpointUrl::parse("sctp://0.0.0.0:3863").map_err(|e| e.to_string())?);
        }
    } else {
        for s in &a.asap {
            let u = EndpointUrl::parse(s).map_err(|e| e.to_string())?;
            if u.proto == Proto::Sctp && !sctp.is_available() {
                return Err(format!("{s}: this kernel has no SCTP support; use tcp://"));
            }
            rt.listen.push(u);
        }
    }
    Ok(RegistrarOptions {
        registrar: r,
        runtime: rt,
        enrp,
        enrp_multicast,
        server_id: a.server_id,
        rng_seed: a.seed,
    })
}

/// `rserpool registrar`.
pub fn run(a: RegistrarArgs) -> i32 {
    let opts = match options(&a) {
        Ok(o) => o,
        Err(e) => return fail(e),
    };
    match probe_sctp() {
        SctpSupport::Available => {}
        SctpSupport::Missing => eprintln!(
            "rserpool registrar: no kernel SCTP support: serving ASAP over TCP (TCP mapping) only"
        ),
        SctpSupport::Unknown(e) => eprintln!(
            "rserpool registrar: cannot tell whether the kernel has SCTP ({e}): serving ASAP over TCP only"
        ),
    }
    // Signals first, so a SIGTERM right after start-up is not lost.
    let signals = match SignalPipe::install(&[libc::SIGINT, libc::SIGTERM]) {
        Ok(s) => s,
        Err(e) => return fail(format!("installing signal handlers: {e}")),
    };
    let reg = match RegistrarHandle::start(opts) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "server id 0x{:08x}", reg.server_id());
        // ENRP lines first: tools that wait for "listening asap" then have them.
        for url in reg.enrp_urls() {
            let _ = writeln!(out, "listening enrp {url}");
        }
        for url in reg.local_urls() {
            let _ = writeln!(out, "listening asap {url}");
        }
        let _ = out.flush();
    }
    loop {
        let got = signals.wait(Duration::from_millis(500));
        if !got.is_empty() {
            eprintln!("rserpool registrar: signal {}: stopping", got[0]);
            break;
        }
        if !reg.is_running() {
            return match reg.stop() {
                Ok(()) => fail("the event loop stopped unexpectedly"),
                Err(e) => fail(format!("the event loop failed: {e}")),
            };
        }
    }
    match reg.stop() {
        Ok(()) => 0,
        Err(e) => fail(format!("the event loop failed: {e}")),
    }
}
