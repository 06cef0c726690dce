//! The pool element and pool user C API: configuration, context, register /
//! deregister, GET_PRIMARY_SERVER / GET_NEXT_SERVER (draft-ietf-rserpool-applic
//! §3.3, §3.5), over [`crate::api::Context`].

use std::ffi::CStr;
use std::net::{IpAddr, SocketAddr};
use std::os::raw::{c_char, c_int};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::handles::Table;
use super::{guard, RserpoolErr};
use crate::api::{self, Config, Context, PeParams, ServerInfo};
use crate::asap::{ClientConfig, PeStatus, RegLifeUnit, T4Rule};
use crate::wire::{policy_type, Policy, PoolHandle, Transport};

// The RSERPOOL_POLICY_* values are written out (cbindgen emits literals
// only); this keeps them equal to the codec's.
const _: () = {
    assert!(RSERPOOL_POLICY_ROUND_ROBIN == policy_type::ROUND_ROBIN);
    assert!(RSERPOOL_POLICY_WEIGHTED_ROUND_ROBIN == policy_type::WEIGHTED_ROUND_ROBIN);
    assert!(RSERPOOL_POLICY_RANDOM == policy_type::RANDOM);
    assert!(RSERPOOL_POLICY_WEIGHTED_RANDOM == policy_type::WEIGHTED_RANDOM);
    assert!(RSERPOOL_POLICY_PRIORITY == policy_type::PRIORITY);
    assert!(RSERPOOL_POLICY_LEAST_USED == policy_type::LEAST_USED);
    assert!(RSERPOOL_POLICY_LEAST_USED_DEGRADATION == policy_type::LEAST_USED_DEGRADATION);
    assert!(RSERPOOL_POLICY_PRIORITY_LEAST_USED == policy_type::PRIORITY_LEAST_USED);
    assert!(RSERPOOL_POLICY_RANDOMIZED_LEAST_USED == policy_type::RANDOMIZED_LEAST_USED);
};

/// A client configuration under construction (opaque). Create it with
/// `rserpool_config_new`, free it with `rserpool_config_free`. The pointer
/// value is a handle, not an address: see "Handles" in `rserpool_context_new`.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct rserpool_config {
    _private: [u8; 0],
}

/// An ASAP endpoint: pool elements and pool user of one application, with
/// its own thread (opaque). Create it with `rserpool_context_new`, free it
/// with `rserpool_context_free`.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct rserpool_context {
    _private: [u8; 0],
}

static CONFIGS: Table<Mutex<Config>> = Table::new(1);
static CONTEXTS: Table<Context> = Table::new(2);

// ------------------------------------------------------------------ constants

/// Transport protocol SCTP (its IPPROTO number).
pub const RSERPOOL_TRANSPORT_SCTP: u32 = 132;
/// Transport protocol TCP (its IPPROTO number).
pub const RSERPOOL_TRANSPORT_TCP: u32 = 6;
/// Transport protocol UDP (its IPPROTO number).
pub const RSERPOOL_TRANSPORT_UDP: u32 = 17;
/// Transport protocol UDP-Lite (its IPPROTO number).
pub const RSERPOOL_TRANSPORT_UDPLITE: u32 = 136;
/// Transport protocol DCCP (its IPPROTO number; service code 0).
pub const RSERPOOL_TRANSPORT_DCCP: u32 = 33;

/// Transport use: data only (RFC 5354 §3.3).
pub const RSERPOOL_TRANSPORT_USE_DATA_ONLY: u16 = 0;
/// Transport use: data plus control (RFC 5354 §3.3).
pub const RSERPOOL_TRANSPORT_USE_DATA_PLUS_CONTROL: u16 = 1;

/// Policy Round Robin (RFC 5356 §4.1): no values.
pub const RSERPOOL_POLICY_ROUND_ROBIN: u32 = 0x0000_0001;
/// Policy Weighted Round Robin: `weight`.
pub const RSERPOOL_POLICY_WEIGHTED_ROUND_ROBIN: u32 = 0x0000_0002;
/// Policy Random: no values.
pub const RSERPOOL_POLICY_RANDOM: u32 = 0x0000_0003;
/// Policy Weighted Random: `weight`.
pub const RSERPOOL_POLICY_WEIGHTED_RANDOM: u32 = 0x0000_0004;
/// Policy Priority: `priority`.
pub const RSERPOOL_POLICY_PRIORITY: u32 = 0x0000_0005;
/// Policy Least Used: `load`.
pub const RSERPOOL_POLICY_LEAST_USED: u32 = 0x4000_0001;
/// Policy Least Used with Degradation: `load`, `degradation`.
pub const RSERPOOL_POLICY_LEAST_USED_DEGRADATION: u32 = 0x4000_0002;
/// Policy Priority Least Used: `load`, `degradation`.
pub const RSERPOOL_POLICY_PRIORITY_LEAST_USED: u32 = 0x4000_0003;
/// Policy Randomized Least Used: `load`.
pub const RSERPOOL_POLICY_RANDOMIZED_LEAST_USED: u32 = 0x4000_0004;

/// Timer T1-ENRPrequest: guards a handle resolution (default 15 s).
pub const RSERPOOL_TIMER_T1_REQUEST: u32 = 1;
/// Timer T2-registration: guards a registration (default 30 s).
pub const RSERPOOL_TIMER_T2_REGISTRATION: u32 = 2;
/// Timer T3-deregistration: guards a deregistration (default 30 s).
pub const RSERPOOL_TIMER_T3_DEREGISTRATION: u32 = 3;
/// Timer T4-reregistration as a fixed interval; 0 restores the rule
/// `min(10 min, life - 20 s)` (or life/2 for short lives).
pub const RSERPOOL_TIMER_T4_REREGISTRATION: u32 = 4;
/// Timer T5-Serverhunt: the first round of a registrar hunt (default 10 s);
/// also bounds one connection attempt.
pub const RSERPOOL_TIMER_T5_SERVER_HUNT: u32 = 5;
/// Timer T7-ENRPoutdate: life of a registrar learned from an announce
/// (default 5 s). (T6 is the registrar's announce interval: no client timer.)
pub const RSERPOOL_TIMER_T7_OUTDATE: u32 = 7;
/// stale_cache_value: age after which a cached resolution is refreshed
/// (default 1 s; 0 = refresh on every selection).
pub const RSERPOOL_TIMER_STALE_CACHE: u32 = 8;
/// RETRAN-MAX: the ceiling T5 doubles up to (default 60 s).
pub const RSERPOOL_TIMER_RETRAN_MAX: u32 = 9;
/// How long a PE reported unreachable is skipped by selection (default 10 s).
pub const RSERPOOL_TIMER_UNREACHABLE_HOLDOFF: u32 = 10;
/// How long `rserpool_context_free` waits for the deregistration of the PEs
/// still registered (default 2 s; 0 = do not wait).
pub const RSERPOOL_TIMER_SHUTDOWN: u32 = 11;

/// Registration life in seconds (RFC 5354; the default).
pub const RSERPOOL_REGLIFE_SECONDS: u32 = 0;
/// Registration life in milliseconds (RSPLIB, Wireshark).
pub const RSERPOOL_REGLIFE_MILLISECONDS: u32 = 1;

/// RFC 5352 §7 timer values (the default).
pub const RSERPOOL_PROFILE_RFC: u32 = 0;
/// RSPLIB's client behaviour: 3 s request timers, registration life in
/// milliseconds and re-registration every third of it, one retry.
pub const RSERPOOL_PROFILE_RSPLIB: u32 = 1;

/// PE status: a registration (first or refresh) is in progress.
pub const RSERPOOL_PE_REGISTERING: u32 = 1;
/// PE status: registered.
pub const RSERPOOL_PE_REGISTERED: u32 = 2;
/// PE status: the last refresh failed; the library keeps trying.
pub const RSERPOOL_PE_LOST: u32 = 3;
/// PE status: a deregistration is in progress.
pub const RSERPOOL_PE_DEREGISTERING: u32 = 4;

/// Most addresses `rserpool_server_info` holds (`addr_total` says how many
/// the PE has).
pub const RSERPOOL_MAX_ADDRS: usize = 8;
/// Size of the text form of an address, NUL included (INET6_ADDRSTRLEN is 46).
pub const RSERPOOL_ADDR_TEXT_LEN: usize = 48;

// ------------------------------------------------------------------ structs

/// A pool member selection policy and its values (RFC 5356). Only the values
/// the type uses are read; set the others to 0.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
#[allow(non_camel_case_types)]
pub struct rserpool_policy {
    /// RSERPOOL_POLICY_*.
    pub policy_type: u32,
    /// Weighted Round Robin, Weighted Random.
    pub weight: u32,
    /// Priority.
    pub priority: u32,
    /// Least Used variants: a fraction of 0xFFFFFFFF (0 idle, 0xFFFFFFFF full).
    pub load: u32,
    /// Least Used with Degradation, Priority Least Used: same scale.
    pub degradation: u32,
}

/// How a pool element is reached and registered. Fill it with
/// `rserpool_pe_params_init`, then set at least `port` and the addresses.
/// Read during `rserpool_register_pe` only; nothing is kept.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct rserpool_pe_params {
    /// RSERPOOL_TRANSPORT_* (default TCP).
    pub protocol: u32,
    /// The port pool users connect to (not 0).
    pub port: u16,
    /// RSERPOOL_TRANSPORT_USE_* (TCP and SCTP; default data only).
    pub transport_use: u16,
    /// `addr_count` NUL-terminated numeric IPv4 or IPv6 addresses
    /// ("192.0.2.1", "2001:db8::1"), concrete (not 0.0.0.0 or ::). SCTP takes
    /// one or more (multi-homing), the other protocols exactly one.
    pub addrs: *const *const c_char,
    /// How many entries `addrs` has.
    pub addr_count: usize,
    /// The policy (default Round Robin).
    pub policy: rserpool_policy,
    /// Registration life in the configured unit; -1 = infinite (default 60,
    /// i.e. 60 s with the RFC unit).
    pub reg_life: i32,
    /// A fixed PE identifier (e.g. of a restarting PE), unique in the context;
    /// 0 (default) = random.
    pub pe_id: u32,
}

/// One address of a pool element, ready for `connect()`.
#[repr(C)]
#[derive(Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct rserpool_addr {
    /// `struct sockaddr_in` or `struct sockaddr_in6`, port filled in.
    pub sa: libc::sockaddr_storage,
    /// The length to pass to `connect()`.
    pub sa_len: u32,
    /// The address as NUL-terminated text, without the port ("192.0.2.1").
    pub text: [c_char; RSERPOOL_ADDR_TEXT_LEN],
    /// Zero; keeps the size a multiple of 8 without hidden padding.
    pub reserved: u32,
}

impl std::fmt::Debug for rserpool_addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("rserpool_addr")
            .field("sa_len", &self.sa_len)
            .finish_non_exhaustive()
    }
}

/// The pool element a pool user should use.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
#[allow(non_camel_case_types)]
pub struct rserpool_server_info {
    /// Its PE identifier (for `rserpool_get_next_server`,
    /// `rserpool_report_failure`).
    pub pe_id: u32,
    /// RSERPOOL_TRANSPORT_* (an IPPROTO number: usable as the third argument
    /// of `socket()`), or 0 for an opaque transport.
    pub protocol: u32,
    /// The port.
    pub port: u16,
    /// RSERPOOL_TRANSPORT_USE_*.
    pub transport_use: u16,
    /// The PE's policy and values as registered (unknown types: type only).
    pub policy: rserpool_policy,
    /// Entries of `addrs` filled in (at most RSERPOOL_MAX_ADDRS).
    pub addr_count: u32,
    /// Addresses the PE really has (may exceed `addr_count`).
    pub addr_total: u32,
    /// The addresses, in the PE's order.
    pub addrs: [rserpool_addr; RSERPOOL_MAX_ADDRS],
}

// ------------------------------------------------------------------ helpers

fn err(e: RserpoolErr) -> c_int {
    e as c_int
}

pub(crate) fn api_err(e: &api::Error) -> c_int {
    use api::Error::*;
    err(match e {
        InvalidArgument(_) => RserpoolErr::InvalidArgument,
        Refused(c) => RserpoolErr::from_cause(*c),
        NoRegistrar => RserpoolErr::NoRegistrar,
        Timeout => RserpoolErr::Timeout,
        NoUsableElement => RserpoolErr::NoUsableElement,
        UnknownPe => RserpoolErr::UnknownPe,
        Unsupported(_) => RserpoolErr::NoSctp,
        Os(_) => RserpoolErr::Os,
        Closed => RserpoolErr::Internal,
        BufferFull => RserpoolErr::WouldBlock,
        SessionClosed => RserpoolErr::Closed,
        InvalidState(_) => RserpoolErr::InvalidState,
        WouldDeadlock => RserpoolErr::WouldDeadlock,
    })
}

pub(super) fn result<T>(r: Result<T, api::Error>, ok: impl FnOnce(T)) -> c_int {
    match r {
        Ok(v) => {
            ok(v);
            RserpoolErr::Ok as c_int
        }
        Err(e) => api_err(&e),
    }
}

fn config(cfg: *const rserpool_config) -> Result<Arc<Mutex<Config>>, c_int> {
    CONFIGS
        .get(cfg as usize)
        .ok_or(RserpoolErr::InvalidHandle as c_int)
}

pub(super) fn context(ctx: *const rserpool_context) -> Result<Arc<Context>, c_int> {
    CONTEXTS
        .get(ctx as usize)
        .ok_or(RserpoolErr::InvalidHandle as c_int)
}

/// A C string as UTF-8, or INVALID_ARGUMENT.
///
/// # Safety
/// `s` must be a valid NUL-terminated string.
pub(super) unsafe fn text<'a>(s: *const c_char) -> Result<&'a str, c_int> {
    // SAFETY: the caller promises a NUL-terminated string.
    unsafe { CStr::from_ptr(s) }
        .to_str()
        .map_err(|_| RserpoolErr::InvalidArgument as c_int)
}

/// The pool handle bytes.
///
/// # Safety
/// `p` must point to `len` readable bytes.
pub(super) unsafe fn pool<'a>(p: *const u8, len: usize) -> Result<&'a [u8], c_int> {
    if len == 0 || len > usize::from(u16::MAX) - 4 {
        return Err(RserpoolErr::InvalidArgument as c_int);
    }
    // SAFETY: the caller promises `len` readable bytes at `p` (checked non-NULL).
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
}

pub(super) fn policy_from_c(p: &rserpool_policy) -> Result<Policy, c_int> {
    Ok(match p.policy_type {
        RSERPOOL_POLICY_ROUND_ROBIN => Policy::RoundRobin,
        RSERPOOL_POLICY_WEIGHTED_ROUND_ROBIN => Policy::WeightedRoundRobin { weight: p.weight },
        RSERPOOL_POLICY_RANDOM => Policy::Random,
        RSERPOOL_POLICY_WEIGHTED_RANDOM => Policy::WeightedRandom { weight: p.weight },
        RSERPOOL_POLICY_PRIORITY => Policy::Priority {
            priority: p.priority,
        },
        RSERPOOL_POLICY_LEAST_USED => Policy::LeastUsed { load: p.load },
        RSERPOOL_POLICY_LEAST_USED_DEGRADATION => Policy::LeastUsedDegradation {
            load: p.load,
            degradation: p.degradation,
        },
        RSERPOOL_POLICY_PRIORITY_LEAST_USED => Policy::PriorityLeastUsed {
            load: p.load,
            degradation: p.degradation,
        },
        RSERPOOL_POLICY_RANDOMIZED_LEAST_USED => Policy::RandomizedLeastUsed { load: p.load },
        _ => return Err(RserpoolErr::InvalidArgument as c_int),
    })
}

fn policy_to_c(p: &Policy) -> rserpool_policy {
    let mut c = rserpool_policy {
        policy_type: p.policy_type(),
        ..Default::default()
    };
    match *p {
        Policy::WeightedRoundRobin { weight } | Policy::WeightedRandom { weight } => {
            c.weight = weight
        }
        Policy::Priority { priority } => c.priority = priority,
        Policy::LeastUsed { load } | Policy::RandomizedLeastUsed { load } => c.load = load,
        Policy::LeastUsedDegradation { load, degradation }
        | Policy::PriorityLeastUsed { load, degradation } => {
            c.load = load;
            c.degradation = degradation;
        }
        Policy::RoundRobin | Policy::Random | Policy::Other { .. } => {}
    }
    c
}

/// The user transport from the C parameters.
///
/// # Safety
/// `p.addrs` must hold `p.addr_count` readable pointers, each NULL or a
/// NUL-terminated string.
unsafe fn transport_from_c(p: &rserpool_pe_params) -> Result<Transport, c_int> {
    let invalid = RserpoolErr::InvalidArgument as c_int;
    if p.addr_count == 0 || p.port == 0 {
        return Err(invalid);
    }
    if p.addrs.is_null() {
        return Err(RserpoolErr::NullPointer as c_int);
    }
    if p.addr_count > 64 {
        return Err(invalid);
    }
    let mut addrs = Vec::with_capacity(p.addr_count);
    for i in 0..p.addr_count {
        // SAFETY: the caller promises `addr_count` readable entries.
        let s = unsafe { *p.addrs.add(i) };
        if s.is_null() {
            return Err(RserpoolErr::NullPointer as c_int);
        }
        // SAFETY: checked non-NULL; the caller promises NUL termination.
        let ip: IpAddr = unsafe { text(s) }?.trim().parse().map_err(|_| invalid)?;
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(invalid);
        }
        addrs.push(ip);
    }
    let one = || {
        if addrs.len() == 1 {
            Ok(addrs[0])
        } else {
            Err(invalid)
        }
    };
    let port = p.port;
    let transport_use = p.transport_use;
    if transport_use > RSERPOOL_TRANSPORT_USE_DATA_PLUS_CONTROL {
        return Err(invalid);
    }
    Ok(match p.protocol {
        RSERPOOL_TRANSPORT_TCP => Transport::Tcp {
            port,
            transport_use,
            addr: one()?,
        },
        RSERPOOL_TRANSPORT_SCTP => Transport::Sctp {
            port,
            transport_use,
            addrs,
        },
        RSERPOOL_TRANSPORT_UDP => Transport::Udp { port, addr: one()? },
        RSERPOOL_TRANSPORT_UDPLITE => Transport::UdpLite { port, addr: one()? },
        RSERPOOL_TRANSPORT_DCCP => Transport::Dccp {
            port,
            service_code: 0,
            addr: one()?,
        },
        _ => return Err(invalid),
    })
}

fn addr_to_c(ip: IpAddr, port: u16) -> rserpool_addr {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut sa: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let sa_len = match SocketAddr::new(ip, port) {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in (that is its purpose).
            unsafe { std::ptr::write((&mut sa as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe { std::ptr::write((&mut sa as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    let mut text = [0 as c_char; RSERPOOL_ADDR_TEXT_LEN];
    for (d, b) in text
        .iter_mut()
        .zip(ip.to_string().bytes().take(RSERPOOL_ADDR_TEXT_LEN - 1))
    {
        *d = b as c_char;
    }
    rserpool_addr {
        sa,
        sa_len: sa_len as u32,
        text,
        reserved: 0,
    }
}

fn server_info_to_c(s: &ServerInfo) -> rserpool_server_info {
    let t = &s.transport;
    let protocol = match t {
        Transport::Sctp { .. } => RSERPOOL_TRANSPORT_SCTP,
        Transport::Tcp { .. } => RSERPOOL_TRANSPORT_TCP,
        Transport::Udp { .. } => RSERPOOL_TRANSPORT_UDP,
        Transport::UdpLite { .. } => RSERPOOL_TRANSPORT_UDPLITE,
        Transport::Dccp { .. } => RSERPOOL_TRANSPORT_DCCP,
        Transport::Opaque(_) => 0,
    };
    let port = t.port().unwrap_or(0);
    let all = t.addrs();
    // SAFETY: every field is an integer or an array of integers (the
    // sockaddr_storage included): all-zero is a valid value for unused entries.
    let mut addrs: [rserpool_addr; RSERPOOL_MAX_ADDRS] = unsafe { std::mem::zeroed() };
    for (d, ip) in addrs.iter_mut().zip(all) {
        *d = addr_to_c(*ip, port);
    }
    rserpool_server_info {
        pe_id: s.pe_id,
        protocol,
        port,
        transport_use: t.transport_use(),
        policy: policy_to_c(&s.policy),
        addr_count: all.len().min(RSERPOOL_MAX_ADDRS) as u32,
        addr_total: u32::try_from(all.len()).unwrap_or(u32::MAX),
        addrs,
    }
}

// ------------------------------------------------------------------ config

/// Creates a client configuration with the RFC 5352 defaults and no
/// registrar.
///
/// On success `*cfg_out` receives a new handle that the caller owns: free it
/// with `rserpool_config_free` (exactly once) when no longer needed; a
/// context made from it does not need it any more.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER, or RSERPOOL_ERR_OS when
/// the handle table is full. Thread-safe.
///
/// # Safety
/// `cfg_out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_config_new(cfg_out: *mut *mut rserpool_config) -> c_int {
    guard(|| {
        nonnull!(cfg_out);
        match CONFIGS.insert(Mutex::new(Config::default())) {
            Some(h) => {
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { *cfg_out = h as *mut rserpool_config };
                RserpoolErr::Ok as c_int
            }
            None => err(RserpoolErr::Os),
        }
    })
}

/// Frees a configuration. NULL is accepted (RSERPOOL_OK, nothing done).
///
/// Returns RSERPOOL_OK, or RSERPOOL_ERR_INVALID_HANDLE when `cfg` was already
/// freed or never was a configuration (nothing is done then). Thread-safe;
/// the handle must not be used afterwards.
#[no_mangle]
pub extern "C" fn rserpool_config_free(cfg: *mut rserpool_config) -> c_int {
    guard(|| CONFIGS.free_c(cfg as usize, drop))
}

/// Runs `f` on the configuration named by `cfg`.
fn with_config(
    cfg: *mut rserpool_config,
    f: impl FnOnce(&mut Config) -> Result<(), c_int>,
) -> c_int {
    if cfg.is_null() {
        return err(RserpoolErr::NullPointer);
    }
    match config(cfg) {
        Ok(c) => match f(&mut c.lock()) {
            Ok(()) => RserpoolErr::Ok as c_int,
            Err(e) => e,
        },
        Err(e) => e,
    }
}

/// Adds a registrar to call home: `tcp://HOST:PORT` (TCP with the TCP
/// mapping) or `sctp://HOST[,HOST...]:PORT` (kernel SCTP, multi-homed). IPv6
/// literals go in brackets; host names are resolved now. Repeatable: the
/// registrars are tried in order during a hunt (three at a time).
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, or RSERPOOL_ERR_INVALID_ARGUMENT (not a
/// URL, port 0, wildcard address, name that does not resolve). An `sctp://`
/// URL is accepted here; `rserpool_context_new` fails with
/// RSERPOOL_ERR_NO_SCTP where the kernel has no SCTP.
/// Thread-safe; `url` is not kept.
///
/// # Safety
/// `url` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rserpool_config_add_registrar(
    cfg: *mut rserpool_config,
    url: *const c_char,
) -> c_int {
    guard(|| {
        nonnull!(url);
        with_config(cfg, |c| {
            // SAFETY: checked non-NULL; the caller promises NUL termination.
            let url = unsafe { text(url) }?;
            c.add_registrar(url).map_err(|e| api_err(&e))
        })
    })
}

/// Learns registrars from ASAP_SERVER_ANNOUNCE datagrams on a multicast
/// group: `group_port` is "GROUP:PORT" (`239.0.0.50:3863`,
/// `[ff05::1]:3863`), or "off" (the default) to stop. Each announced
/// registrar is kept for T7 after its last announce.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT (not a
/// multicast group with a port). Thread-safe; `group_port` is not kept.
///
/// # Safety
/// `group_port` must be NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rserpool_config_set_announce(
    cfg: *mut rserpool_config,
    group_port: *const c_char,
) -> c_int {
    guard(|| {
        nonnull!(group_port);
        with_config(cfg, |c| {
            // SAFETY: checked non-NULL; the caller promises NUL termination.
            let s = unsafe { text(group_port) }?.trim();
            if s.eq_ignore_ascii_case("off") {
                c.announce = None;
                return Ok(());
            }
            let a: SocketAddr = s.parse().map_err(|_| err(RserpoolErr::InvalidArgument))?;
            if !a.ip().is_multicast() || a.port() == 0 {
                return Err(err(RserpoolErr::InvalidArgument));
            }
            c.announce = Some(a);
            Ok(())
        })
    })
}

/// Sets one timer, in milliseconds: `which` is an RSERPOOL_TIMER_* value.
/// T1, T2, T3 and T5 must not be 0; RSERPOOL_TIMER_T4_REREGISTRATION 0
/// restores the RFC rule.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT (unknown
/// timer, 0 where not allowed). Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_config_set_timer(
    cfg: *mut rserpool_config,
    which: u32,
    ms: u32,
) -> c_int {
    guard(|| {
        with_config(cfg, |c| {
            let d = Duration::from_millis(u64::from(ms));
            let nonzero = || {
                if ms == 0 {
                    Err(err(RserpoolErr::InvalidArgument))
                } else {
                    Ok(d)
                }
            };
            let cc = &mut c.client;
            match which {
                RSERPOOL_TIMER_T1_REQUEST => cc.t1_request = nonzero()?,
                RSERPOOL_TIMER_T2_REGISTRATION => cc.t2_registration = nonzero()?,
                RSERPOOL_TIMER_T3_DEREGISTRATION => cc.t3_deregistration = nonzero()?,
                RSERPOOL_TIMER_T4_REREGISTRATION => {
                    cc.t4_reregistration = if ms == 0 {
                        ClientConfig::default().t4_reregistration
                    } else {
                        T4Rule::Fixed(d)
                    }
                }
                RSERPOOL_TIMER_T5_SERVER_HUNT => {
                    cc.t5_server_hunt = nonzero()?;
                    cc.retran_max = cc.retran_max.max(d);
                }
                RSERPOOL_TIMER_T7_OUTDATE => cc.t7_outdate = d,
                RSERPOOL_TIMER_STALE_CACHE => cc.stale_cache = d,
                RSERPOOL_TIMER_RETRAN_MAX => cc.retran_max = nonzero()?.max(cc.t5_server_hunt),
                RSERPOOL_TIMER_UNREACHABLE_HOLDOFF => cc.unreachable_holdoff = d,
                RSERPOOL_TIMER_SHUTDOWN => c.shutdown_timeout = d,
                _ => return Err(err(RserpoolErr::InvalidArgument)),
            }
            Ok(())
        })
    })
}

/// Sets MAX-REG-ATTEMPT (registration and deregistration attempts, each
/// guarded by T2/T3; default 2, at least 1) and MAX-REQUEST-RETRANSMIT
/// (re-sends of a handle resolution after T1; default 2).
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT
/// (`max_reg_attempt` 0, or either above 100). Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_config_set_attempts(
    cfg: *mut rserpool_config,
    max_reg_attempt: u32,
    max_request_retransmit: u32,
) -> c_int {
    guard(|| {
        with_config(cfg, |c| {
            if max_reg_attempt == 0 || max_reg_attempt > 100 || max_request_retransmit > 100 {
                return Err(err(RserpoolErr::InvalidArgument));
            }
            c.client.max_reg_attempt = max_reg_attempt;
            c.client.max_request_retransmit = max_request_retransmit;
            Ok(())
        })
    })
}

/// Sets the TCP mapping heartbeats of every connection of a context made
/// from this configuration (to registrars, and sessions' in both
/// directions): a HEARTBEAT goes out after `interval_ms` without hearing
/// from the peer (default 30000; 0 = none), and a connection whose peer
/// left `max_missed` of them in a row unanswered is closed (default 3, at
/// least 1). For a session that is a failed PE: it fails over, which is
/// how a PE that hangs without closing its connections (stopped, livelocked,
/// its host unreachable) is found out.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT
/// (`max_missed` 0 or above 100). Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_config_set_heartbeat(
    cfg: *mut rserpool_config,
    interval_ms: u32,
    max_missed: u32,
) -> c_int {
    guard(|| {
        with_config(cfg, |c| {
            if max_missed == 0 || max_missed > 100 {
                return Err(err(RserpoolErr::InvalidArgument));
            }
            c.heartbeat_interval = Duration::from_millis(u64::from(interval_ms));
            c.heartbeat_max_missed = max_missed;
            Ok(())
        })
    })
}

/// Sets the unit of registration lives (`rserpool_pe_params.reg_life`):
/// RSERPOOL_REGLIFE_SECONDS (RFC 5354, default) or
/// RSERPOOL_REGLIFE_MILLISECONDS (RSPLIB). Must match the registrar's.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_config_set_reglife_unit(cfg: *mut rserpool_config, unit: u32) -> c_int {
    guard(|| {
        with_config(cfg, |c| {
            c.client.reg_life_unit = match unit {
                RSERPOOL_REGLIFE_SECONDS => RegLifeUnit::Seconds,
                RSERPOOL_REGLIFE_MILLISECONDS => RegLifeUnit::Millis,
                _ => return Err(err(RserpoolErr::InvalidArgument)),
            };
            Ok(())
        })
    })
}

/// Replaces every timer, limit and unit by a profile's: RSERPOOL_PROFILE_RFC
/// (the defaults) or RSERPOOL_PROFILE_RSPLIB. Registrars, the announce group
/// and the shutdown wait are kept. Call it before the other setters.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_config_set_profile(cfg: *mut rserpool_config, profile: u32) -> c_int {
    guard(|| {
        with_config(cfg, |c| {
            c.client = match profile {
                RSERPOOL_PROFILE_RFC => ClientConfig::default(),
                RSERPOOL_PROFILE_RSPLIB => ClientConfig::rsplib_profile(),
                _ => return Err(err(RserpoolErr::InvalidArgument)),
            };
            Ok(())
        })
    })
}

// ------------------------------------------------------------------ context

/// Starts an ASAP endpoint from a configuration (copied: `cfg` may be freed
/// or changed afterwards): a thread that calls home to a registrar when
/// something needs one, re-registers the PEs, answers keep-alives, keeps the
/// pool user's cache and hunts for a new registrar when the home one fails.
///
/// On success `*ctx_out` receives a handle the caller owns; free it with
/// `rserpool_context_free`, exactly once.
///
/// Handles: an `rserpool_context *` (and an `rserpool_config *`) is not a
/// memory address but a slot number and a generation counter in a global
/// table. A freed, doubly freed or made-up handle is detected
/// (RSERPOOL_ERR_INVALID_HANDLE) instead of touching freed memory; a handle
/// is only reused after 2^32 frees of the same slot (64-bit platforms).
///
/// Threads: every function taking a context may be called from any thread,
/// concurrently; calls that wait for the registrar block only the calling
/// thread. The only calls into the application are the session callbacks
/// (`rserpool_set_data_indication`, `rserpool_set_failover_callback`), on
/// the context's thread.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE (`cfg`), RSERPOOL_ERR_NO_SCTP (an `sctp://`
/// registrar where the kernel has no SCTP) or RSERPOOL_ERR_OS
/// (thread, socket or announce group setup failed).
///
/// # Safety
/// `ctx_out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_context_new(
    cfg: *const rserpool_config,
    ctx_out: *mut *mut rserpool_context,
) -> c_int {
    guard(|| {
        nonnull!(cfg, ctx_out);
        let c = match config(cfg) {
            Ok(c) => c.lock().clone(),
            Err(e) => return e,
        };
        let ctx = match Context::new(c) {
            Ok(ctx) => ctx,
            Err(e) => return api_err(&e),
        };
        match CONTEXTS.insert(ctx) {
            Some(h) => {
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { *ctx_out = h as *mut rserpool_context };
                RserpoolErr::Ok as c_int
            }
            None => err(RserpoolErr::Os),
        }
    })
}

/// Stops an ASAP endpoint: the PEs still registered are deregistered (waiting
/// at most RSERPOOL_TIMER_SHUTDOWN, default 2 s), connections are closed and
/// the thread is joined. NULL is accepted (RSERPOOL_OK, nothing done).
///
/// Calls still running on other threads finish normally (the endpoint stops
/// when the last one returns); new calls with the handle fail with
/// RSERPOOL_ERR_INVALID_HANDLE.
///
/// Sessions and pool element servers of the context are closed
/// (RSERPOOL_NOTIFY_CLOSED; RSERPOOL_ERR_CLOSED from then on); their handles
/// stay valid until `rserpool_session_close` / `rserpool_pe_server_close`.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_INVALID_HANDLE when `ctx` was already
/// freed or is not a context, or RSERPOOL_ERR_WOULD_DEADLOCK from inside a
/// session callback (which runs on a context's thread: nothing is done).
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_context_free(ctx: *mut rserpool_context) -> c_int {
    guard(|| {
        if super::session::in_callback() {
            return err(RserpoolErr::WouldDeadlock);
        }
        CONTEXTS.free_c(ctx as usize, drop)
    })
}

// ------------------------------------------------------------------ pool element

/// Fills `params` with the defaults: TCP, data only, no address, port 0,
/// Round Robin, registration life 60, random PE identifier.
///
/// Returns RSERPOOL_OK or RSERPOOL_ERR_NULL_POINTER. Thread-safe.
///
/// # Safety
/// `params` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_params_init(params: *mut rserpool_pe_params) -> c_int {
    guard(|| {
        nonnull!(params);
        let p = rserpool_pe_params {
            protocol: RSERPOOL_TRANSPORT_TCP,
            port: 0,
            transport_use: RSERPOOL_TRANSPORT_USE_DATA_ONLY,
            addrs: std::ptr::null(),
            addr_count: 0,
            policy: rserpool_policy {
                policy_type: RSERPOOL_POLICY_ROUND_ROBIN,
                ..Default::default()
            },
            reg_life: 60,
            pe_id: 0,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { std::ptr::write(params, p) };
        RserpoolErr::Ok as c_int
    })
}

/// Registers a pool element under `pool_handle` (`handle_len` bytes, 1 to
/// 65531; any bytes, usually text without its NUL) and waits until the
/// registrar granted it. From then on the library re-registers it every T4,
/// answers keep-alives and moves it to a new registrar when the home one
/// fails, without the application's help, until `rserpool_deregister` or
/// `rserpool_context_free`.
///
/// On success `*pe_id_out` receives the PE identifier (unique in the
/// context) that names the PE in the other calls.
///
/// Blocks the calling thread at most MAX-REG-ATTEMPT x T2 (+ a few seconds).
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_INVALID_ARGUMENT (empty or long
/// handle; address, port, protocol, policy or life invalid; fixed `pe_id`
/// already used in the context), RSERPOOL_ERR_PROTOCOL_* (the registrar's
/// refusal, e.g. RSERPOOL_ERR_PROTOCOL_INCONSISTENT_POLICY),
/// RSERPOOL_ERR_NO_REGISTRAR (none reachable) or RSERPOOL_ERR_TIMEOUT (a
/// registrar did not answer). Thread-safe; nothing is kept from `params`.
///
/// # Safety
/// `pool_handle` must point to `handle_len` readable bytes, `params` to a
/// valid struct whose `addrs` holds `addr_count` pointers to NUL-terminated
/// strings, `pe_id_out` must be writable.
#[no_mangle]
pub unsafe extern "C" fn rserpool_register_pe(
    ctx: *mut rserpool_context,
    pool_handle: *const u8,
    handle_len: usize,
    params: *const rserpool_pe_params,
    pe_id_out: *mut u32,
) -> c_int {
    guard(|| {
        nonnull!(ctx, pool_handle, params, pe_id_out);
        let ctx = match context(ctx) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // SAFETY: checked non-NULL; the caller promises `handle_len` bytes.
        let pool = match unsafe { pool(pool_handle, handle_len) } {
            Ok(p) => p,
            Err(e) => return e,
        };
        // SAFETY: checked non-NULL; the caller promises a valid struct.
        let p = unsafe { &*params };
        // SAFETY: the caller promises `addrs` as documented.
        let transport = match unsafe { transport_from_c(p) } {
            Ok(t) => t,
            Err(e) => return e,
        };
        let policy = match policy_from_c(&p.policy) {
            Ok(x) => x,
            Err(e) => return e,
        };
        if p.reg_life < -1 || p.reg_life == 0 {
            return err(RserpoolErr::InvalidArgument);
        }
        let params = PeParams {
            pool: PoolHandle(pool.to_vec()),
            transport,
            policy,
            reg_life: p.reg_life,
            pe_id: (p.pe_id != 0).then_some(p.pe_id),
        };
        result(ctx.register_pe(params), |id| {
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { *pe_id_out = id };
        })
    })
}

/// Sets the load of a registered PE whose policy has one (Least Used and its
/// variants; the degradation stays) and re-registers it at once. Does not
/// wait for the registrar: returns when the update is on its way.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_UNKNOWN_PE
/// (no such PE in the context: never registered, deregistered or given up)
/// or RSERPOOL_ERR_INVALID_ARGUMENT (the PE's policy has no load).
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_update_load(ctx: *mut rserpool_context, pe_id: u32, load: u32) -> c_int {
    guard(|| {
        nonnull!(ctx);
        match context(ctx) {
            Ok(c) => result(c.update_load(pe_id, load), |()| ()),
            Err(e) => e,
        }
    })
}

/// Replaces the policy values of a registered PE (the policy type must stay
/// the same) and re-registers it at once; returns when the update is on its
/// way.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_UNKNOWN_PE or
/// RSERPOOL_ERR_INVALID_ARGUMENT (unknown or different policy type).
/// Thread-safe; `policy` is not kept.
///
/// # Safety
/// `policy` must point to a valid struct.
#[no_mangle]
pub unsafe extern "C" fn rserpool_update_policy(
    ctx: *mut rserpool_context,
    pe_id: u32,
    policy: *const rserpool_policy,
) -> c_int {
    guard(|| {
        nonnull!(ctx, policy);
        let c = match context(ctx) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // SAFETY: checked non-NULL; the caller promises a valid struct.
        let p = match policy_from_c(unsafe { &*policy }) {
            Ok(p) => p,
            Err(e) => return e,
        };
        result(c.update_policy(pe_id, p), |()| ())
    })
}

/// Where a PE stands: `*status_out` receives RSERPOOL_PE_REGISTERING,
/// RSERPOOL_PE_REGISTERED, RSERPOOL_PE_LOST (its registrar is unreachable;
/// the library keeps trying) or RSERPOOL_PE_DEREGISTERING.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_UNKNOWN_PE. Thread-safe.
///
/// # Safety
/// `status_out` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_pe_status(
    ctx: *mut rserpool_context,
    pe_id: u32,
    status_out: *mut u32,
) -> c_int {
    guard(|| {
        nonnull!(ctx, status_out);
        let c = match context(ctx) {
            Ok(c) => c,
            Err(e) => return e,
        };
        result(c.pe_status(pe_id), |s| {
            let v = match s {
                PeStatus::Registering => RSERPOOL_PE_REGISTERING,
                PeStatus::Registered => RSERPOOL_PE_REGISTERED,
                PeStatus::Lost => RSERPOOL_PE_LOST,
                PeStatus::Deregistering => RSERPOOL_PE_DEREGISTERING,
            };
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { *status_out = v };
        })
    })
}

/// Deregisters a PE and waits for the registrar's answer (at most
/// MAX-REG-ATTEMPT x T3, + a few seconds). The PE is forgotten whatever the
/// result: a second call gives RSERPOOL_ERR_UNKNOWN_PE.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_INVALID_HANDLE,
/// RSERPOOL_ERR_UNKNOWN_PE, RSERPOOL_ERR_PROTOCOL_* (refused; the registrar
/// drops the PE when its life runs out), RSERPOOL_ERR_NO_REGISTRAR or
/// RSERPOOL_ERR_TIMEOUT. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_deregister(ctx: *mut rserpool_context, pe_id: u32) -> c_int {
    guard(|| {
        nonnull!(ctx);
        match context(ctx) {
            Ok(c) => result(c.deregister(pe_id), |()| ()),
            Err(e) => e,
        }
    })
}

// ------------------------------------------------------------------ pool user

/// Writes a selection result.
fn server_out(r: Result<ServerInfo, api::Error>, out: *mut rserpool_server_info) -> c_int {
    result(r, |s| {
        let info = server_info_to_c(&s);
        // SAFETY: checked non-NULL by the callers; the caller promises it is writable.
        unsafe { std::ptr::write(out, info) };
    })
}

/// GET_PRIMARY_SERVER: a pool element of `pool_handle` (`handle_len` bytes)
/// chosen by the pool's policy, skipping PEs reported unreachable. Answers
/// from the cache when it is fresh (or stale: then refreshed in the
/// background), else asks the registrar and waits (at most
/// (1 + MAX-REQUEST-RETRANSMIT) x T1, + a few seconds).
///
/// On success `*out` receives the PE: its identifier, transport and
/// addresses ready for `socket(ss_family, SOCK_STREAM, protocol)` and
/// `connect(fd, (struct sockaddr *)&out->addrs[i].sa, out->addrs[i].sa_len)`.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE, RSERPOOL_ERR_INVALID_ARGUMENT (empty or long
/// handle), RSERPOOL_ERR_PROTOCOL_UNKNOWN_POOL_HANDLE (no such pool),
/// RSERPOOL_ERR_NO_USABLE_ELEMENT (every PE reported unreachable),
/// RSERPOOL_ERR_NO_REGISTRAR or RSERPOOL_ERR_TIMEOUT. Thread-safe.
///
/// # Safety
/// `pool_handle` must point to `handle_len` readable bytes and `out` must be
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_get_primary_server(
    ctx: *mut rserpool_context,
    pool_handle: *const u8,
    handle_len: usize,
    out: *mut rserpool_server_info,
) -> c_int {
    guard(|| {
        nonnull!(ctx, pool_handle, out);
        let c = match context(ctx) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // SAFETY: checked non-NULL; the caller promises `handle_len` bytes.
        match unsafe { pool(pool_handle, handle_len) } {
            Ok(p) => server_out(c.get_primary_server(p), out),
            Err(e) => e,
        }
    })
}

/// GET_NEXT_SERVER: `failed_pe_id` failed (e.g. `connect()` was refused):
/// it is reported unreachable to the registrar (at most once per incident)
/// and skipped, and the next PE by policy is returned as by
/// `rserpool_get_primary_server` (same results, same blocking).
///
/// # Safety
/// As `rserpool_get_primary_server`.
#[no_mangle]
pub unsafe extern "C" fn rserpool_get_next_server(
    ctx: *mut rserpool_context,
    pool_handle: *const u8,
    handle_len: usize,
    failed_pe_id: u32,
    out: *mut rserpool_server_info,
) -> c_int {
    guard(|| {
        nonnull!(ctx, pool_handle, out);
        let c = match context(ctx) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // SAFETY: checked non-NULL; the caller promises `handle_len` bytes.
        match unsafe { pool(pool_handle, handle_len) } {
            Ok(p) => server_out(c.get_next_server(p, failed_pe_id), out),
            Err(e) => e,
        }
    })
}

/// Reports a PE of `pool_handle` unreachable without asking for another: it
/// is skipped by selection during the incident and ASAP_ENDPOINT_UNREACHABLE
/// goes to the registrar (at most once per incident, rate limited; queued
/// while there is no registrar). Does not wait.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER,
/// RSERPOOL_ERR_INVALID_HANDLE or RSERPOOL_ERR_INVALID_ARGUMENT.
/// Thread-safe.
///
/// # Safety
/// `pool_handle` must point to `handle_len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rserpool_report_failure(
    ctx: *mut rserpool_context,
    pool_handle: *const u8,
    handle_len: usize,
    pe_id: u32,
) -> c_int {
    guard(|| {
        nonnull!(ctx, pool_handle);
        let c = match context(ctx) {
            Ok(c) => c,
            Err(e) => return e,
        };
        // SAFETY: checked non-NULL; the caller promises `handle_len` bytes.
        match unsafe { pool(pool_handle, handle_len) } {
            Ok(p) => result(c.report_failure(p, pe_id), |_| ()),
            Err(e) => e,
        }
    })
}

/// `sizeof(rserpool_server_info)` as the library sees it, for bindings
/// (Python ctypes, Go) to check their layout. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_server_info_size() -> usize {
    std::mem::size_of::<rserpool_server_info>()
}
