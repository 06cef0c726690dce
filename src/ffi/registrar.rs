//! Embedding a registrar in a C application: `rserpool_registrar_*`.

use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

use parking_lot::Mutex;

use super::handles::Table;
use super::{guard, RserpoolErr};
use crate::registrar::{RegLifeUnit, RegistrarConfig};
use crate::runtime::{EndpointUrl, Proto, RegistrarHandle, RegistrarOptions, StartError};

/// An embedded registrar: opaque; made by `rserpool_registrar_start`, ended
/// with `rserpool_registrar_stop`.
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct rserpool_registrar {
    _private: [u8; 0],
}

/// What to start. Fill it with `rserpool_registrar_params_init`, then set
/// what you need. The arrays and strings are read during
/// `rserpool_registrar_start` only and stay the caller's.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct rserpool_registrar_params {
    /// ASAP endpoints to listen on: `tcp://HOST:PORT` (the TCP mapping) or
    /// `sctp://HOST[,HOST...]:PORT` (kernel SCTP); port 0 picks a free port.
    /// `asap_count` 0 means the default: `tcp://0.0.0.0:3863`.
    pub asap_urls: *const *const c_char,
    /// Number of entries in `asap_urls`.
    pub asap_count: usize,
    /// ENRP endpoints to listen on for peer registrars (`tcp://HOST:PORT`);
    /// may be empty (peers then reach the first ASAP endpoint).
    pub enrp_urls: *const *const c_char,
    /// Number of entries in `enrp_urls`.
    pub enrp_count: usize,
    /// ENRP endpoints of peer registrars (`tcp://HOST:PORT`); the first one is
    /// the mentor.
    pub peer_urls: *const *const c_char,
    /// Number of entries in `peer_urls`.
    pub peer_count: usize,
    /// `RSERPOOL_PROFILE_RFC` (default) or `RSERPOOL_PROFILE_RSPLIB`
    /// (RSPLIB's timers and Registration Life in milliseconds).
    pub profile: u32,
    /// `RSERPOOL_REGLIFE_SECONDS` or `RSERPOOL_REGLIFE_MILLISECONDS`; applied
    /// after the profile.
    pub reglife_unit: u32,
    /// The server identifier; 0 = random.
    pub server_id: u32,
}

static REGISTRARS: Table<Mutex<Option<RegistrarHandle>>> = Table::new(3);

/// Runs `f` on the live registrar named by `reg`, or says why it cannot.
fn with_registrar<T>(
    reg: *const rserpool_registrar,
    f: impl FnOnce(&RegistrarHandle) -> T,
) -> Result<T, c_int> {
    let r = REGISTRARS
        .get(reg as usize)
        .ok_or(RserpoolErr::InvalidHandle as c_int)?;
    let guard = r.lock();
    let h = guard.as_ref().ok_or(RserpoolErr::InvalidHandle as c_int)?;
    Ok(f(h))
}

/// Fills `params` with the defaults: the RFC profile, Registration Life in
/// seconds, a random server id, no endpoints given (TCP 3863 on all
/// addresses).
///
/// Returns RSERPOOL_OK or RSERPOOL_ERR_NULL_POINTER. Thread-safe.
///
/// # Safety
/// `params` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_registrar_params_init(
    params: *mut rserpool_registrar_params,
) -> c_int {
    guard(|| {
        if params.is_null() {
            return RserpoolErr::NullPointer as c_int;
        }
        let p = rserpool_registrar_params {
            asap_urls: std::ptr::null(),
            asap_count: 0,
            enrp_urls: std::ptr::null(),
            enrp_count: 0,
            peer_urls: std::ptr::null(),
            peer_count: 0,
            profile: super::client::RSERPOOL_PROFILE_RFC,
            reglife_unit: super::client::RSERPOOL_REGLIFE_SECONDS,
            server_id: 0,
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { *params = p };
        RserpoolErr::Ok as c_int
    })
}

/// Reads `count` URLs from a C array (NULL only when `count` is 0).
///
/// # Safety
/// `urls` must point to `count` NUL-terminated strings.
unsafe fn read_urls(urls: *const *const c_char, count: usize) -> Result<Vec<EndpointUrl>, c_int> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if urls.is_null() {
        return Err(RserpoolErr::NullPointer as c_int);
    }
    if count > 1024 {
        return Err(RserpoolErr::InvalidArgument as c_int);
    }
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        // SAFETY: the caller promises `count` readable entries.
        let p = unsafe { *urls.add(i) };
        if p.is_null() {
            return Err(RserpoolErr::NullPointer as c_int);
        }
        // SAFETY: the caller promises a NUL-terminated string.
        let s = unsafe { CStr::from_ptr(p) }
            .to_str()
            .map_err(|_| RserpoolErr::InvalidArgument as c_int)?;
        out.push(EndpointUrl::parse(s).map_err(|_| RserpoolErr::InvalidArgument as c_int)?);
    }
    Ok(out)
}

/// Starts a registrar in this process, on a thread of its own, and returns
/// once every endpoint listens (so a context may use it at once).
///
/// On success `*reg_out` receives a handle the caller owns: end it with
/// `rserpool_registrar_stop` (exactly once). The registrar serves ASAP on its
/// endpoints and ENRP with its peers until then.
///
/// Returns RSERPOOL_OK; RSERPOOL_ERR_NULL_POINTER (`params`, `reg_out`, or a
/// non-empty URL array that is NULL or holds NULL); RSERPOOL_ERR_INVALID_ARGUMENT
/// (a URL that does not parse, an unknown profile or unit, an ENRP URL that
/// is not `tcp://`, a peer without a concrete address and port);
/// RSERPOOL_ERR_NO_SCTP (an `sctp://` endpoint where the kernel has no SCTP);
/// RSERPOOL_ERR_OS (binding failed, e.g. the port is in use). Thread-safe.
///
/// # Safety
/// `params` must point to an initialised `rserpool_registrar_params` whose
/// arrays hold their counts of NUL-terminated strings; `reg_out` must be
/// valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_registrar_start(
    params: *const rserpool_registrar_params,
    reg_out: *mut *mut rserpool_registrar,
) -> c_int {
    guard(|| {
        if params.is_null() || reg_out.is_null() {
            return RserpoolErr::NullPointer as c_int;
        }
        // SAFETY: checked non-NULL; the caller promises an initialised struct.
        let p = unsafe { *params };
        // SAFETY: the caller promises the arrays hold their counts.
        let (asap, enrp, peers) = match unsafe {
            (
                read_urls(p.asap_urls, p.asap_count),
                read_urls(p.enrp_urls, p.enrp_count),
                read_urls(p.peer_urls, p.peer_count),
            )
        } {
            (Ok(a), Ok(e), Ok(r)) => (a, e, r),
            (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return e,
        };
        let mut cfg = match p.profile {
            super::client::RSERPOOL_PROFILE_RFC => RegistrarConfig::default(),
            super::client::RSERPOOL_PROFILE_RSPLIB => RegistrarConfig::rsplib_profile(),
            _ => return RserpoolErr::InvalidArgument as c_int,
        };
        cfg.reg_life_unit = match p.reglife_unit {
            super::client::RSERPOOL_REGLIFE_SECONDS => RegLifeUnit::Seconds,
            super::client::RSERPOOL_REGLIFE_MILLISECONDS => RegLifeUnit::Millis,
            _ => return RserpoolErr::InvalidArgument as c_int,
        };
        for u in &peers {
            let a = u.first();
            if u.proto != Proto::Tcp || a.ip().is_unspecified() || a.port() == 0 {
                return RserpoolErr::InvalidArgument as c_int;
            }
            cfg.peers.push(a);
        }
        if enrp.iter().any(|u| u.proto != Proto::Tcp) {
            return RserpoolErr::InvalidArgument as c_int;
        }
        let mut opts = RegistrarOptions {
            registrar: cfg,
            enrp,
            server_id: (p.server_id != 0).then_some(p.server_id),
            ..RegistrarOptions::default()
        };
        opts.runtime.listen = if asap.is_empty() {
            match EndpointUrl::parse("tcp://0.0.0.0:3863") {
                Ok(u) => vec![u],
                Err(_) => return RserpoolErr::Internal as c_int,
            }
        } else {
            asap
        };
        let handle = match RegistrarHandle::start(opts) {
            Ok(h) => h,
            Err(StartError::Unsupported(_)) => return RserpoolErr::NoSctp as c_int,
            Err(StartError::Io { .. }) => return RserpoolErr::Os as c_int,
        };
        match REGISTRARS.insert(Mutex::new(Some(handle))) {
            Some(h) => {
                // SAFETY: checked non-NULL; the caller promises it is writable.
                unsafe { *reg_out = h as *mut rserpool_registrar };
                RserpoolErr::Ok as c_int
            }
            None => RserpoolErr::Os as c_int,
        }
    })
}

/// Writes the `index`-th ASAP endpoint the registrar listens on as a URL
/// (ephemeral ports resolved, e.g. "tcp://127.0.0.1:40123"), NUL-terminated,
/// into `buf` of `cap` bytes; `*len` receives its length without the NUL.
///
/// Returns RSERPOOL_OK; RSERPOOL_ERR_NULL_POINTER; RSERPOOL_ERR_INVALID_HANDLE
/// (stopped or not a registrar); RSERPOOL_ERR_INVALID_ARGUMENT (`index` past
/// the last endpoint); RSERPOOL_ERR_BUFFER_TOO_SMALL (then `*len` receives the
/// size needed, NUL included). Thread-safe.
///
/// # Safety
/// `buf` must have `cap` writable bytes; `len` must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_registrar_local_url(
    reg: *const rserpool_registrar,
    index: usize,
    buf: *mut c_char,
    cap: usize,
    len: *mut usize,
) -> c_int {
    guard(|| {
        if reg.is_null() || buf.is_null() || len.is_null() {
            return RserpoolErr::NullPointer as c_int;
        }
        let urls = match with_registrar(reg, RegistrarHandle::local_urls) {
            Ok(u) => u,
            Err(e) => return e,
        };
        let Some(url) = urls.get(index) else {
            return RserpoolErr::InvalidArgument as c_int;
        };
        if url.len() + 1 > cap {
            // SAFETY: checked non-NULL.
            unsafe { *len = url.len() + 1 };
            return RserpoolErr::BufferTooSmall as c_int;
        }
        // SAFETY: `buf` has `cap > url.len()` writable bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(url.as_ptr(), buf.cast::<u8>(), url.len());
            *buf.add(url.len()) = 0;
            *len = url.len();
        }
        RserpoolErr::Ok as c_int
    })
}

/// Reads the registrar's server identifier and how many PEs its handlespace
/// holds now (its own and its peers'). Either output may be NULL.
///
/// Returns RSERPOOL_OK, RSERPOOL_ERR_NULL_POINTER (`reg`) or
/// RSERPOOL_ERR_INVALID_HANDLE. Thread-safe.
///
/// # Safety
/// Non-NULL outputs must be valid for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_registrar_info(
    reg: *const rserpool_registrar,
    server_id: *mut u32,
    pe_count: *mut usize,
) -> c_int {
    guard(|| {
        if reg.is_null() {
            return RserpoolErr::NullPointer as c_int;
        }
        let (id, pools) = match with_registrar(reg, |h| (h.server_id(), h.pool_elements())) {
            Ok(v) => v,
            Err(e) => return e,
        };
        let Some(pools) = pools else {
            return RserpoolErr::InvalidState as c_int;
        };
        let count: usize = pools.iter().map(|(_, pes)| pes.len()).sum();
        if !server_id.is_null() {
            // SAFETY: checked non-NULL; the caller promises it is writable.
            unsafe { *server_id = id };
        }
        if !pe_count.is_null() {
            // SAFETY: as above.
            unsafe { *pe_count = count };
        }
        RserpoolErr::Ok as c_int
    })
}

/// Stops the registrar: closes its connections (its PEs then hunt for
/// another registrar), stops its thread and frees the handle. NULL is
/// accepted (nothing done).
///
/// Returns RSERPOOL_OK, or RSERPOOL_ERR_INVALID_HANDLE when `reg` was already
/// stopped or never was a registrar. Must not be called from a context's
/// callback. Thread-safe; the handle must not be used afterwards.
#[no_mangle]
pub extern "C" fn rserpool_registrar_stop(reg: *mut rserpool_registrar) -> c_int {
    guard(|| {
        REGISTRARS.free_c(reg as usize, |r| {
            let handle = r.lock().take();
            if let Some(h) = handle {
                let _ = h.stop();
            }
        })
    })
}
