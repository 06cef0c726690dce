//! The values carried by RSerPool parameters (RFC 5354 §3), shared by the codec,
//! the handlespace and everything above them. No encoding logic lives here.

use std::fmt;
use std::net::IpAddr;

/// IANA parameter type codes (RFC 5354 §3, digest §5.1).
pub mod ptype {
    pub const IPV4_ADDRESS: u16 = 0x0001;
    pub const IPV6_ADDRESS: u16 = 0x0002;
    pub const DCCP_TRANSPORT: u16 = 0x0003;
    pub const SCTP_TRANSPORT: u16 = 0x0004;
    pub const TCP_TRANSPORT: u16 = 0x0005;
    pub const UDP_TRANSPORT: u16 = 0x0006;
    pub const UDP_LITE_TRANSPORT: u16 = 0x0007;
    pub const POLICY: u16 = 0x0008;
    pub const POOL_HANDLE: u16 = 0x0009;
    pub const POOL_ELEMENT: u16 = 0x000a;
    pub const SERVER_INFORMATION: u16 = 0x000b;
    pub const OPERATION_ERROR: u16 = 0x000c;
    pub const COOKIE: u16 = 0x000d;
    pub const PE_IDENTIFIER: u16 = 0x000e;
    pub const PE_CHECKSUM: u16 = 0x000f;
    pub const OPAQUE_TRANSPORT: u16 = 0x0010;
    /// draft-dreibholz-rserpool-asap-hropt; action bits `10` (skip if unknown).
    pub const HANDLE_RESOLUTION_OPTION: u16 = 0x803f;
}

/// Error cause codes (RFC 5354 §3.12, digest §6).
pub mod cause {
    pub const UNSPECIFIED: u16 = 0x0000;
    pub const UNRECOGNIZED_PARAMETER: u16 = 0x0001;
    pub const UNRECOGNIZED_MESSAGE: u16 = 0x0002;
    pub const INVALID_VALUES: u16 = 0x0003;
    pub const NON_UNIQUE_PE_ID: u16 = 0x0004;
    pub const INCONSISTENT_POLICY: u16 = 0x0005;
    pub const LACK_OF_RESOURCES: u16 = 0x0006;
    pub const INCONSISTENT_TRANSPORT: u16 = 0x0007;
    pub const INCONSISTENT_DATA_CONTROL: u16 = 0x0008;
    pub const UNKNOWN_POOL_HANDLE: u16 = 0x0009;
    pub const SECURITY: u16 = 0x000a;

    /// A human name for a cause code; unknown codes (e.g. RSPLIB's internal ones) are
    /// a generic failure (digest §12 #9).
    pub fn name(code: u16) -> &'static str {
        match code {
            UNSPECIFIED => "unspecified error",
            UNRECOGNIZED_PARAMETER => "unrecognized parameter",
            UNRECOGNIZED_MESSAGE => "unrecognized message",
            INVALID_VALUES => "invalid values",
            NON_UNIQUE_PE_ID => "non-unique PE identifier",
            INCONSISTENT_POLICY => "inconsistent pooling policy",
            LACK_OF_RESOURCES => "lack of resources",
            INCONSISTENT_TRANSPORT => "inconsistent transport type",
            INCONSISTENT_DATA_CONTROL => "inconsistent data/control configuration",
            UNKNOWN_POOL_HANDLE => "unknown pool handle",
            SECURITY => "rejected due to security considerations",
            _ => "unknown error cause",
        }
    }
}

/// A pool handle: an opaque byte string (RFC 5354 §3.9). Not NUL-terminated.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PoolHandle(pub Vec<u8>);

impl PoolHandle {
    /// The handle bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The handle as text if every byte is printable ASCII, else `None`.
    pub fn as_printable(&self) -> Option<&str> {
        if !self.0.is_empty() && self.0.iter().all(|b| (0x20..0x7f).contains(b)) {
            std::str::from_utf8(&self.0).ok()
        } else {
            None
        }
    }
}

impl From<&str> for PoolHandle {
    fn from(s: &str) -> Self {
        PoolHandle(s.as_bytes().to_vec())
    }
}

impl From<&[u8]> for PoolHandle {
    fn from(s: &[u8]) -> Self {
        PoolHandle(s.to_vec())
    }
}

impl fmt::Debug for PoolHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for PoolHandle {
    /// Printable handles as `"text"`, others as hex `0x...`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.as_printable() {
            Some(s) => write!(f, "{s:?}"),
            None => {
                f.write_str("0x")?;
                for b in &self.0 {
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
        }
    }
}

/// SCTP Transport Use (RFC 5354 §3.4; RSPLIB also uses it in the TCP transport).
pub mod transport_use {
    pub const DATA_ONLY: u16 = 0x0000;
    pub const DATA_PLUS_CONTROL: u16 = 0x0001;
}

/// A transport parameter (RFC 5354 §3.3-§3.8, digest §5.3).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    /// SCTP: one or more addresses (IPv4 and IPv6 may be mixed).
    Sctp {
        port: u16,
        transport_use: u16,
        addrs: Vec<IpAddr>,
    },
    /// TCP: exactly one address. `transport_use` is reserved in the RFC and is
    /// RSPLIB's Transport Use (digest §12 #2): sent as given, any value accepted.
    Tcp {
        port: u16,
        transport_use: u16,
        addr: IpAddr,
    },
    /// UDP: exactly one address.
    Udp { port: u16, addr: IpAddr },
    /// UDP-Lite: exactly one address.
    UdpLite { port: u16, addr: IpAddr },
    /// DCCP: 32-bit service code (RFC; Wireshark shows 16 bits, digest §12 #11).
    Dccp {
        port: u16,
        service_code: u32,
        addr: IpAddr,
    },
    /// Opaque transport (0x0010): bytes only the application understands.
    Opaque(Vec<u8>),
}

impl Transport {
    /// The parameter type code of this transport.
    pub fn param_type(&self) -> u16 {
        match self {
            Transport::Sctp { .. } => ptype::SCTP_TRANSPORT,
            Transport::Tcp { .. } => ptype::TCP_TRANSPORT,
            Transport::Udp { .. } => ptype::UDP_TRANSPORT,
            Transport::UdpLite { .. } => ptype::UDP_LITE_TRANSPORT,
            Transport::Dccp { .. } => ptype::DCCP_TRANSPORT,
            Transport::Opaque(_) => ptype::OPAQUE_TRANSPORT,
        }
    }

    /// The Transport Use word (0 for transports that have none).
    pub fn transport_use(&self) -> u16 {
        match self {
            Transport::Sctp { transport_use, .. } | Transport::Tcp { transport_use, .. } => {
                *transport_use
            }
            _ => transport_use::DATA_ONLY,
        }
    }

    /// The port (None for opaque).
    pub fn port(&self) -> Option<u16> {
        match self {
            Transport::Sctp { port, .. }
            | Transport::Tcp { port, .. }
            | Transport::Udp { port, .. }
            | Transport::UdpLite { port, .. }
            | Transport::Dccp { port, .. } => Some(*port),
            Transport::Opaque(_) => None,
        }
    }

    /// All addresses, in order.
    pub fn addrs(&self) -> &[IpAddr] {
        match self {
            Transport::Sctp { addrs, .. } => addrs,
            Transport::Tcp { addr, .. }
            | Transport::Udp { addr, .. }
            | Transport::UdpLite { addr, .. }
            | Transport::Dccp { addr, .. } => std::slice::from_ref(addr),
            Transport::Opaque(_) => &[],
        }
    }

    /// The protocol name used in URLs: `sctp`, `tcp`, `udp`, `udplite`, `dccp`, `opaque`.
    pub fn scheme(&self) -> &'static str {
        match self {
            Transport::Sctp { .. } => "sctp",
            Transport::Tcp { .. } => "tcp",
            Transport::Udp { .. } => "udp",
            Transport::UdpLite { .. } => "udplite",
            Transport::Dccp { .. } => "dccp",
            Transport::Opaque(_) => "opaque",
        }
    }
}

impl fmt::Display for Transport {
    /// As a URL: `sctp://10.0.0.1,[::1]:5000`, `tcp://10.0.0.1:80`, `opaque:0a0b`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Transport::Opaque(b) = self {
            f.write_str("opaque:")?;
            for x in b {
                write!(f, "{x:02x}")?;
            }
            return Ok(());
        }
        write!(f, "{}://", self.scheme())?;
        for (i, a) in self.addrs().iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match a {
                IpAddr::V4(v4) => write!(f, "{v4}")?,
                IpAddr::V6(v6) => write!(f, "[{v6}]")?,
            }
        }
        write!(f, ":{}", self.port().unwrap_or(0))
    }
}

/// Policy type codes (RFC 5356, digest §7).
pub mod policy_type {
    pub const ROUND_ROBIN: u32 = 0x0000_0001;
    pub const WEIGHTED_ROUND_ROBIN: u32 = 0x0000_0002;
    pub const RANDOM: u32 = 0x0000_0003;
    pub const WEIGHTED_RANDOM: u32 = 0x0000_0004;
    pub const PRIORITY: u32 = 0x0000_0005;
    pub const LEAST_USED: u32 = 0x4000_0001;
    pub const LEAST_USED_DEGRADATION: u32 = 0x4000_0002;
    pub const PRIORITY_LEAST_USED: u32 = 0x4000_0003;
    pub const RANDOMIZED_LEAST_USED: u32 = 0x4000_0004;
    /// X bit: private / non-standard policy.
    pub const PRIVATE_BIT: u32 = 0x8000_0000;
    /// A bit: adaptive policy.
    pub const ADAPTIVE_BIT: u32 = 0x4000_0000;
}

/// A Pool Member Selection Policy parameter (RFC 5354 §3.6, RFC 5356).
/// Loads are fractions of 0xFFFFFFFF (0 = idle, 0xFFFFFFFF = fully loaded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Policy {
    RoundRobin,
    WeightedRoundRobin {
        weight: u32,
    },
    Random,
    WeightedRandom {
        weight: u32,
    },
    Priority {
        priority: u32,
    },
    LeastUsed {
        load: u32,
    },
    LeastUsedDegradation {
        load: u32,
        degradation: u32,
    },
    PriorityLeastUsed {
        load: u32,
        degradation: u32,
    },
    RandomizedLeastUsed {
        load: u32,
    },
    /// Any other policy type: private ones (X bit, e.g. RSPLIB's 0xB000xxxx, digest
    /// §7.3) and unassigned standard codes, kept opaquely with their raw data.
    Other {
        policy_type: u32,
        data: Vec<u8>,
    },
}

impl Policy {
    /// The 32-bit Policy Type.
    pub fn policy_type(&self) -> u32 {
        use policy_type::*;
        match self {
            Policy::RoundRobin => ROUND_ROBIN,
            Policy::WeightedRoundRobin { .. } => WEIGHTED_ROUND_ROBIN,
            Policy::Random => RANDOM,
            Policy::WeightedRandom { .. } => WEIGHTED_RANDOM,
            Policy::Priority { .. } => PRIORITY,
            Policy::LeastUsed { .. } => LEAST_USED,
            Policy::LeastUsedDegradation { .. } => LEAST_USED_DEGRADATION,
            Policy::PriorityLeastUsed { .. } => PRIORITY_LEAST_USED,
            Policy::RandomizedLeastUsed { .. } => RANDOMIZED_LEAST_USED,
            Policy::Other { policy_type, .. } => *policy_type,
        }
    }

    /// The short name: `rr`, `wrr`, `rand`, `wrand`, `prio`, `lu`, `lud`, `plu`, `rlu`,
    /// or for others the RSPLIB/Wireshark name where one exists, else `0xXXXXXXXX`.
    pub fn name(&self) -> String {
        policy_name(self.policy_type())
    }

    /// The same policy with neutral values (weight 1, load 0, ...): what a server
    /// reports as a pool's overall policy.
    pub fn neutral(&self) -> Policy {
        match self {
            Policy::RoundRobin => Policy::RoundRobin,
            Policy::WeightedRoundRobin { .. } => Policy::WeightedRoundRobin { weight: 0 },
            Policy::Random => Policy::Random,
            Policy::WeightedRandom { .. } => Policy::WeightedRandom { weight: 0 },
            Policy::Priority { .. } => Policy::Priority { priority: 0 },
            Policy::LeastUsed { .. } => Policy::LeastUsed { load: 0 },
            Policy::LeastUsedDegradation { .. } => Policy::LeastUsedDegradation {
                load: 0,
                degradation: 0,
            },
            Policy::PriorityLeastUsed { .. } => Policy::PriorityLeastUsed {
                load: 0,
                degradation: 0,
            },
            Policy::RandomizedLeastUsed { .. } => Policy::RandomizedLeastUsed { load: 0 },
            Policy::Other { policy_type, data } => Policy::Other {
                policy_type: *policy_type,
                data: vec![0; data.len()],
            },
        }
    }
}

/// A policy from its text form, as the command-line tools take it
/// (`--policy`): a short name as [`Policy::name`] gives it, then the
/// policy's values separated by `:`.
///
/// | spec | policy |
/// |---|---|
/// | `rr` | Round Robin |
/// | `wrr:WEIGHT` | Weighted Round Robin (weight default 1) |
/// | `rand` | Random |
/// | `wrand:WEIGHT` | Weighted Random (weight default 1) |
/// | `prio:PRIORITY` | Priority (default 0) |
/// | `lu:LOAD` | Least Used (load default 0) |
/// | `lud:LOAD:DEGRADATION` | Least Used with Degradation |
/// | `plu:LOAD:DEGRADATION` | Priority Least Used |
/// | `rlu:LOAD` | Randomized Least Used |
/// | `0xTYPE[:HEXDATA]` | any other policy type, its data as hex |
///
/// Loads and degradations are a number (0 to 4294967295, a fraction of
/// 0xFFFFFFFF) or a percentage (`25%`); numbers may be given in hex
/// (`0x40000000`). `roundrobin`, `random` and `priority` are accepted for
/// `rr`, `rand` and `prio`.
impl std::str::FromStr for Policy {
    type Err = String;

    fn from_str(spec: &str) -> Result<Policy, String> {
        let mut parts = spec.trim().split(':');
        let name = parts.next().unwrap_or("").to_ascii_lowercase();
        let values: Vec<&str> = parts.collect();
        let most = |n: usize| {
            if values.len() > n {
                Err(format!(
                    "policy {spec:?}: {name} takes at most {n} value{}",
                    if n == 1 { "" } else { "s" }
                ))
            } else {
                Ok(())
            }
        };
        let num = |i: usize, default: u32| -> Result<u32, String> {
            match values.get(i) {
                None => Ok(default),
                Some(v) => parse_policy_value(v).ok_or_else(|| {
                    format!(
                        "policy {spec:?}: {v:?} is not a number (0-4294967295, 0xHEX or PERCENT%)"
                    )
                }),
            }
        };
        let p = match name.as_str() {
            "rr" | "roundrobin" => {
                most(0)?;
                Policy::RoundRobin
            }
            "wrr" => {
                most(1)?;
                Policy::WeightedRoundRobin { weight: num(0, 1)? }
            }
            "rand" | "random" => {
                most(0)?;
                Policy::Random
            }
            "wrand" => {
                most(1)?;
                Policy::WeightedRandom { weight: num(0, 1)? }
            }
            "prio" | "priority" => {
                most(1)?;
                Policy::Priority {
                    priority: num(0, 0)?,
                }
            }
            "lu" => {
                most(1)?;
                Policy::LeastUsed { load: num(0, 0)? }
            }
            "lud" => {
                most(2)?;
                Policy::LeastUsedDegradation {
                    load: num(0, 0)?,
                    degradation: num(1, 0)?,
                }
            }
            "plu" => {
                most(2)?;
                Policy::PriorityLeastUsed {
                    load: num(0, 0)?,
                    degradation: num(1, 0)?,
                }
            }
            "rlu" => {
                most(1)?;
                Policy::RandomizedLeastUsed { load: num(0, 0)? }
            }
            hex if hex.starts_with("0x") => {
                most(1)?;
                let policy_type = u32::from_str_radix(&hex[2..], 16)
                    .map_err(|_| format!("policy {spec:?}: bad policy type {hex:?}"))?;
                let data = match values.first() {
                    None => Vec::new(),
                    Some(h) => decode_hex(h)
                        .ok_or_else(|| format!("policy {spec:?}: {h:?} is not hex bytes"))?,
                };
                // A standard type named by number gets its typed form.
                Policy::Other { policy_type, data }.normalize()?
            }
            _ => {
                return Err(format!(
                    "policy {spec:?}: unknown; expected rr, wrr:W, rand, wrand:W, prio:P, \
                     lu:LOAD, lud:LOAD:DEG, plu:LOAD:DEG, rlu:LOAD or 0xTYPE[:HEX]"
                ))
            }
        };
        Ok(p)
    }
}

impl Policy {
    /// The text form [`Policy::from_str`](std::str::FromStr) reads: `rr`,
    /// `wrr:5`, `lud:1000:20`, `0xb0001001:00000001`, ...
    pub fn spec(&self) -> String {
        let hex = |d: &[u8]| d.iter().map(|b| format!("{b:02x}")).collect::<String>();
        match self {
            Policy::RoundRobin | Policy::Random => self.name(),
            Policy::WeightedRoundRobin { weight: v }
            | Policy::WeightedRandom { weight: v }
            | Policy::Priority { priority: v }
            | Policy::LeastUsed { load: v }
            | Policy::RandomizedLeastUsed { load: v } => format!("{}:{v}", self.name()),
            Policy::LeastUsedDegradation { load, degradation }
            | Policy::PriorityLeastUsed { load, degradation } => {
                format!("{}:{load}:{degradation}", self.name())
            }
            Policy::Other { policy_type, data } if data.is_empty() => {
                format!("0x{policy_type:08x}")
            }
            Policy::Other { policy_type, data } => format!("0x{policy_type:08x}:{}", hex(data)),
        }
    }

    /// A policy given by type number: the standard ones take their typed
    /// form (their data must then have the right length).
    fn normalize(self) -> Result<Policy, String> {
        let Policy::Other { policy_type, data } = self else {
            return Ok(self);
        };
        use policy_type::*;
        let word = |i: usize| -> Option<u32> {
            data.get(i * 4..i * 4 + 4)
                .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        };
        let want = |n: usize| -> Result<(), String> {
            if data.len() == n * 4 {
                Ok(())
            } else {
                Err(format!(
                    "policy type 0x{policy_type:08x} takes {} bytes of data, not {}",
                    n * 4,
                    data.len()
                ))
            }
        };
        let p = match policy_type {
            ROUND_ROBIN => {
                want(0)?;
                Policy::RoundRobin
            }
            RANDOM => {
                want(0)?;
                Policy::Random
            }
            WEIGHTED_ROUND_ROBIN
            | WEIGHTED_RANDOM
            | PRIORITY
            | LEAST_USED
            | RANDOMIZED_LEAST_USED => {
                want(1)?;
                let v = word(0).unwrap_or(0);
                match policy_type {
                    WEIGHTED_ROUND_ROBIN => Policy::WeightedRoundRobin { weight: v },
                    WEIGHTED_RANDOM => Policy::WeightedRandom { weight: v },
                    PRIORITY => Policy::Priority { priority: v },
                    LEAST_USED => Policy::LeastUsed { load: v },
                    _ => Policy::RandomizedLeastUsed { load: v },
                }
            }
            LEAST_USED_DEGRADATION | PRIORITY_LEAST_USED => {
                want(2)?;
                let (load, degradation) = (word(0).unwrap_or(0), word(1).unwrap_or(0));
                if policy_type == LEAST_USED_DEGRADATION {
                    Policy::LeastUsedDegradation { load, degradation }
                } else {
                    Policy::PriorityLeastUsed { load, degradation }
                }
            }
            _ => Policy::Other { policy_type, data },
        };
        Ok(p)
    }
}

/// A policy value: decimal, `0x` hex, or a percentage of 0xFFFFFFFF.
fn parse_policy_value(v: &str) -> Option<u32> {
    let v = v.trim();
    if let Some(pct) = v.strip_suffix('%') {
        let f: f64 = pct.trim().parse().ok()?;
        if !(0.0..=100.0).contains(&f) {
            return None;
        }
        return Some((f / 100.0 * f64::from(u32::MAX)).round() as u32);
    }
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        return u32::from_str_radix(h, 16).ok();
    }
    v.parse().ok()
}

fn decode_hex(h: &str) -> Option<Vec<u8>> {
    let h = h.trim();
    if h.len() % 2 != 0 {
        return None;
    }
    (0..h.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The short name of a policy type (see [`Policy::name`]).
pub fn policy_name(t: u32) -> String {
    use policy_type::*;
    let s = match t {
        ROUND_ROBIN => "rr",
        WEIGHTED_ROUND_ROBIN => "wrr",
        RANDOM => "rand",
        WEIGHTED_RANDOM => "wrand",
        PRIORITY => "prio",
        LEAST_USED => "lu",
        LEAST_USED_DEGRADATION => "lud",
        PRIORITY_LEAST_USED => "plu",
        RANDOMIZED_LEAST_USED => "rlu",
        0xB000_1001 => "rplu",
        0xB000_1002 => "rlud",
        0xB000_1003 => "plud",
        0xB000_1004 => "rplud",
        0xB000_2001 => "wrand-dpf",
        0xB000_2002 => "lu-dpf",
        0xB000_2003 => "lud-dpf",
        0xB000_2004 => "plu-dpf",
        0xB000_2005 => "plud-dpf",
        _ => return format!("0x{t:08x}"),
    };
    s.to_string()
}

/// A Pool Element parameter (RFC 5354 §3.10, digest §5.6).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolElement {
    /// PE Identifier: random, non-zero in practice (digest §12 #22).
    pub id: u32,
    /// Home ENRP server identifier; 0 = not yet determined.
    pub home: u32,
    /// Registration Life: signed; -1 = infinite. Seconds per RFC, milliseconds per
    /// RSPLIB (digest §12 #1): the unit is the caller's configuration.
    pub reg_life: i32,
    /// Exactly one user transport.
    pub user_transport: Transport,
    /// This PE's policy and its values.
    pub policy: Policy,
    /// The PE's ASAP endpoint as its home server saw it (filled by the server).
    pub asap_transport: Option<Transport>,
}

/// A Server Information parameter (RFC 5354 §3.11).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServerInfo {
    pub server_id: u32,
    /// The server's ENRP endpoint (an SCTP transport per RFC; TCP with our mapping).
    pub transport: Transport,
}

/// One error cause inside an Operation Error parameter (RFC 5354 §3.12).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ErrorCause {
    /// The cause code, see [`cause`].
    pub code: u16,
    /// Cause-specific information, raw (e.g. the whole offending TLV for 0x1/0x3,
    /// a policy TLV for 0x5, a transport TLV for 0x7, a message for 0x2).
    pub info: Vec<u8>,
}

impl ErrorCause {
    /// A cause with no information.
    pub fn new(code: u16) -> Self {
        ErrorCause {
            code,
            info: Vec::new(),
        }
    }

    /// A cause with information bytes.
    pub fn with_info(code: u16, info: Vec<u8>) -> Self {
        ErrorCause { code, info }
    }
}

impl fmt::Display for ErrorCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (0x{:04x})", cause::name(self.code), self.code)
    }
}

/// ENRP Update Action (RFC 5353 §2.2.4; IANA "Update Action Types").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct UpdateAction(pub u16);

impl UpdateAction {
    pub const ADD_PE: UpdateAction = UpdateAction(0x0000);
    pub const DEL_PE: UpdateAction = UpdateAction(0x0001);
}
