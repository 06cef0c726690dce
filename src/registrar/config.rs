//! Registrar configuration: every timer and limit, with defaults, and the
//! RSPLIB profile (digest §8.3).

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::handlespace::RegLifeUnit;
use crate::wire::Transport;

/// Whether a keep-alive carries RSPLIB's extra PE Identifier TLV (digest §12 #8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum KeepAlivePeId {
    /// Only for PEs that look like RSPLIB: their registration carried a non-zero
    /// Home ENRP Server Identifier (RSPLIB fills in the registrar's id, an RFC PE
    /// sends 0; digest §15).
    #[default]
    Auto,
    /// Always (RSPLIB's registrar does this).
    Always,
    /// Never: the RFC 5352 layout (Server Identifier + Pool Handle only).
    Never,
}

/// A token bucket: `burst` requests at once, refilled at `per_sec` a second.
/// `per_sec == 0` disables the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Sustained requests per second; 0 = unlimited.
    pub per_sec: u32,
    /// Bucket size: requests allowed back to back.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const UNLIMITED: RateLimit = RateLimit {
        per_sec: 0,
        burst: 0,
    };
}

/// Every timer and limit of the registrar's ASAP side.
///
/// Defaults follow the RFCs where they give a value; where they give none the
/// choice is documented on the field. [`RegistrarConfig::rsplib_profile`] gives
/// RSPLIB's values for mixed deployments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrarConfig {
    /// Unit of the Registration Life field. Default: seconds (RFC).
    pub reg_life_unit: RegLifeUnit,
    /// Lifetime expiry precision: a PE expires never early and at most this
    /// late (the handlespace files expiries in buckets this wide). Default 10 ms.
    pub expiry_granularity: Duration,

    /// PEs returned by a handle resolution without option 0x803f (or with
    /// Items 0). Default 3 (RSPLIB's value; the RFCs give none).
    pub default_items: u32,
    /// Most PEs returned by one resolution (Items 0xFFFFFFFF = "as many as
    /// possible" means this many). Responses are further trimmed to fit a
    /// 65535-byte message. Default 256.
    pub max_items: u32,

    /// Mean interval between keep-alives to each owned PE; each PE's interval
    /// is drawn uniformly from ±50 % of it (RFC 5352 §3.5). `ZERO` disables
    /// periodic keep-alives (probes after unreachable reports still happen).
    /// The RFC gives no value; default 5 s like RSPLIB, so a dead PE is gone
    /// within ~12.5 s even when nobody reports it.
    pub keep_alive_interval: Duration,
    /// How long to wait for ASAP_ENDPOINT_KEEP_ALIVE_ACK before removing the
    /// PE. Default 5 s (RSPLIB).
    pub keep_alive_timeout: Duration,
    /// Least time between two keep-alives to one PE (RFC 5355 rate limit per
    /// PE); probes asked for sooner are delayed. Default 1 s.
    pub keep_alive_min_gap: Duration,
    /// When keep-alives carry the PE Identifier TLV. Default [`KeepAlivePeId::Auto`].
    pub keep_alive_pe_id: KeepAlivePeId,

    /// MAX-BAD-PE-REPORT: a PE is removed when its unreachable-report count
    /// exceeds this. Default 3 (RSPLIB's number; the RFC gives none).
    pub max_bad_pe_reports: u32,
    /// RFC 5352 §3.5: probe a reported PE with a keep-alive at once and remove it
    /// if the probe fails. Default true. RSPLIB only counts (false).
    pub probe_unreachable: bool,

    /// Remove the PEs registered over a connection as soon as it closes.
    /// Default true. When false they live until their lifetime runs out or a
    /// re-registration moves them to another connection; they get no
    /// keep-alives meanwhile, and an unreachable report removes them at once
    /// (the probe cannot be sent).
    pub remove_on_connection_loss: bool,
    /// Only the connection a PE registered over (or any, once that one is gone)
    /// may deregister it; others get cause 0xa. Default true (RFC 5355 §3:
    /// no unauthorised deregistration; RFC 5352 §3.2 forbids proxies).
    pub deregistration_requires_owner: bool,

    /// Malformed messages (broken framing, nothing to report) tolerated per
    /// connection; the next one closes it. Default 16.
    pub max_malformed: u32,
    /// Idle connection timeout: a connection that owns no PEs, holds no
    /// subscription and has sent nothing for this long is closed. `ZERO`
    /// disables. Default 120 s.
    pub idle_timeout: Duration,

    /// Per-connection limit on ASAP_HANDLE_RESOLUTION. Over it requests are
    /// dropped silently and counted (RSPLIB drops too). Default 10 000/s, burst
    /// 20 000: far above what a caching pool user needs, low enough that one
    /// connection cannot take the registrar's whole capacity.
    pub resolution_rate: RateLimit,
    /// Per-connection limit on ASAP_ENDPOINT_UNREACHABLE (RFC 5355 §2.13). Over
    /// it reports are dropped silently and counted. Default 10/s, burst 20.
    pub unreachable_rate: RateLimit,

    /// Most pools (a registration creating one more gets cause 0x6). Default 1 000 000.
    pub max_pools: usize,
    /// Most PEs in one pool (new registrations beyond get cause 0x6). Default 1 000 000.
    pub max_pes_per_pool: usize,
    /// Most PEs registered over one connection (cause 0x6). Default 10 000.
    pub max_pes_per_connection: usize,
    /// Most PEs in the handlespace (cause 0x6). Default 10 000 000
    /// (about 1.5 GB of handlespace at ~150 bytes per PE).
    pub max_pes_total: usize,
    /// Most pool subscriptions (S flag) per connection; beyond, resolutions are
    /// answered with A=0. Default 64.
    pub max_subscriptions_per_connection: usize,

    /// Most PEs in one ENRP_HANDLE_TABLE_RESPONSE chunk (also trimmed to fit a
    /// 65535-byte message). Default 128 (RSPLIB).
    pub handle_table_chunk: usize,
    /// How long a handle-table cursor waits for the next request after a chunk
    /// with M=1 before it is dropped. Default 30 s (the RFC gives none).
    pub handle_table_session_timeout: Duration,

    /// ASAP_SERVER_ANNOUNCE period (T6); `None` (default) sends none.
    pub announce_interval: Option<Duration>,
    /// Transport parameters put in each announce: the SCTP/TCP listening
    /// addresses (SCTP and TCP transports only). Empty = RSPLIB style (the
    /// receiver uses the packet source).
    pub announce_transports: Vec<Transport>,

    // ----------------------------------------------------------- ENRP
    /// Configured ENRP peers (their ENRP endpoints). The first reachable one is
    /// the mentor at start-up, the others are backups; all are connected to
    /// and redialled while unreachable. Empty (default): alone until a peer
    /// connects to us.
    pub peers: Vec<SocketAddr>,
    /// Those of [`RegistrarConfig::peers`] to reach over kernel SCTP (ENRP
    /// with PPID 12, as RSPLIB speaks it) rather than over TCP with the TCP
    /// mapping. Default: none.
    pub sctp_peers: Vec<SocketAddr>,
    /// Our own ENRP endpoint, sent in Server Information (presence, list
    /// responses). `None` (default): the local address of the connection the
    /// message goes out on, as a TCP or SCTP transport like the connection.
    pub enrp_transport: Option<Transport>,
    /// PEER-HEARTBEAT-CYCLE: period of the unsolicited ENRP_PRESENCE to every
    /// peer. RFC 5353 §4: 30 s; RSPLIB 2.444 s.
    pub peer_heartbeat_cycle: Duration,
    /// MAX-TIME-LAST-HEARD: silence after which a peer is probed with a
    /// reply-required presence. RFC: 61 s; RSPLIB 5 s.
    pub max_time_last_heard: Duration,
    /// MAX-TIME-NO-RESPONSE: how long to wait for an answer to a probe, a
    /// list request or one handle-table request. RFC: 5 s; RSPLIB 5 s.
    pub max_time_no_response: Duration,
    /// Wait before asking the next mentor after a rejection (R=1) or when
    /// every configured mentor failed in one round. The RFC gives none
    /// ("wait a few seconds"); default 5 s (RSPLIB's mentor discovery timeout).
    pub mentor_retry_interval: Duration,
    /// How long a takeover we started waits for all INIT_TAKEOVER_ACKs (and
    /// how long we wait for someone else's TAKEOVER_SERVER after acking)
    /// before giving up and starting over. The RFC gives none; default 5 s
    /// (RSPLIB's takeover expiry).
    pub takeover_timeout: Duration,
    /// Period of reconnection attempts to configured peers that are not
    /// connected. The RFC gives none; default 5 s.
    pub peer_reconnect_interval: Duration,
    /// Most ENRP peers remembered (a message from yet another unknown server
    /// is answered but the server is not added). Default 256.
    pub max_peers: usize,
    /// ENRP presence multicast (RFC 5351 §3.1; RFC 5353 leaves it out):
    /// every PEER-HEARTBEAT-CYCLE, and once at start, an ENRP_PRESENCE with
    /// our Server Information ([`RegistrarConfig::enrp_transport`]) goes to
    /// the ENRP multicast group ([`super::Output::EnrpMulticast`]), and a
    /// presence received from the group ([`super::Registrar::handle_multicast`])
    /// from an unknown server adds it as a peer and dials it. Default false.
    /// `RegistrarHandle::start` sets it from whether
    /// `RegistrarOptions::enrp_multicast` names a group (it owns the sockets).
    pub enrp_multicast: bool,
    /// Limit on the datagrams taken from the ENRP multicast group, which
    /// nothing authenticates (RFC 5355: expect floods). Over it they are
    /// dropped and counted. Default 100/s, burst 200 (a few registrars send
    /// one per heartbeat cycle each).
    pub multicast_rate: RateLimit,
}

impl Default for RegistrarConfig {
    fn default() -> Self {
        RegistrarConfig {
            reg_life_unit: RegLifeUnit::Seconds,
            expiry_granularity: Duration::from_millis(10),
            default_items: 3,
            max_items: 256,
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            keep_alive_min_gap: Duration::from_secs(1),
            keep_alive_pe_id: KeepAlivePeId::Auto,
            max_bad_pe_reports: 3,
            probe_unreachable: true,
            remove_on_connection_loss: true,
            deregistration_requires_owner: true,
            max_malformed: 16,
            idle_timeout: Duration::from_secs(120),
            resolution_rate: RateLimit {
                per_sec: 10_000,
                burst: 20_000,
            },
            unreachable_rate: RateLimit {
                per_sec: 10,
                burst: 20,
            },
            max_pools: 1_000_000,
            max_pes_per_pool: 1_000_000,
            max_pes_per_connection: 10_000,
            max_pes_total: 10_000_000,
            max_subscriptions_per_connection: 64,
            handle_table_chunk: 128,
            handle_table_session_timeout: Duration::from_secs(30),
            announce_interval: None,
            announce_transports: Vec::new(),
            peers: Vec::new(),
            sctp_peers: Vec::new(),
            enrp_transport: None,
            peer_heartbeat_cycle: Duration::from_secs(30),
            max_time_last_heard: Duration::from_secs(61),
            max_time_no_response: Duration::from_secs(5),
            mentor_retry_interval: Duration::from_secs(5),
            takeover_timeout: Duration::from_secs(5),
            peer_reconnect_interval: Duration::from_secs(5),
            max_peers: 256,
            enrp_multicast: false,
            multicast_rate: RateLimit {
                per_sec: 100,
                burst: 200,
            },
        }
    }
}

impl RegistrarConfig {
    /// RSPLIB's registrar behaviour (digest §8.3, §12, §15): Registration Life
    /// in milliseconds, keep-alives every 5 s (timeout 5 s) always carrying the
    /// PE Identifier, unreachable reports counted without a probe and the PE
    /// removed at the third (`max_bad_pe_reports` 2: removal when the count
    /// exceeds it), 3 items per resolution, 128 PEs per table chunk, a server
    /// announce every second; ENRP peer heartbeat 2.444 s, max time last
    /// heard 5 s, max time no response 5 s, takeover expiry 5 s.
    pub fn rsplib_profile() -> Self {
        RegistrarConfig {
            reg_life_unit: RegLifeUnit::Millis,
            keep_alive_interval: Duration::from_secs(5),
            keep_alive_timeout: Duration::from_secs(5),
            keep_alive_pe_id: KeepAlivePeId::Always,
            max_bad_pe_reports: 2,
            probe_unreachable: false,
            default_items: 3,
            handle_table_chunk: 128,
            announce_interval: Some(Duration::from_secs(1)),
            peer_heartbeat_cycle: Duration::from_millis(2444),
            max_time_last_heard: Duration::from_secs(5),
            max_time_no_response: Duration::from_secs(5),
            mentor_retry_interval: Duration::from_secs(5),
            takeover_timeout: Duration::from_secs(5),
            ..RegistrarConfig::default()
        }
    }
}
