//! Kernel SCTP through libc: one-to-one style sockets (`SOCK_STREAM`,
//! `IPPROTO_SCTP`), one SCTP user message per ASAP/ENRP message, with its PPID,
//! on stream 0 (application messages of sessions: on the stream they chose,
//! ordered or not).
//!
//! libc wraps none of the SCTP socket API (that lives in libsctp, which we do
//! not link), so the option numbers and structures below are copied from the
//! Linux UAPI header `<linux/sctp.h>`; each notes its name there. Everything the
//! API needs goes through `setsockopt`/`getsockopt`, `sendmsg` and `recvmsg`,
//! exactly as libsctp does it.
//!
//! [`SctpSocket`] is the raw socket with the handful of operations the runtime
//! needs; [`SctpConn`](crate::runtime) state for the event loop lives in
//! `conn.rs`; [`SctpClient`] is a small blocking client for tools and tests.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use libc::{c_int, c_void, socklen_t};

use super::DataInfo;
use crate::wire::tcpmap::ppid;
use crate::wire::{AsapMessage, EnrpMessage};

// ---- <linux/sctp.h> ---------------------------------------------------------

/// `SOL_SCTP` (= `IPPROTO_SCTP`), the option level of every SCTP option.
const SOL_SCTP: c_int = libc::IPPROTO_SCTP;
/// `SCTP_RTOINFO`: struct sctp_rtoinfo.
const SCTP_RTOINFO: c_int = 0;
/// `SCTP_NODELAY`: int, disables Nagle-like bundling delay.
const SCTP_NODELAY: c_int = 3;
/// `SCTP_PEER_ADDR_PARAMS`: struct sctp_paddrparams.
const SCTP_PEER_ADDR_PARAMS: c_int = 9;
/// `SCTP_RECVRCVINFO`: int, ask for an SCTP_RCVINFO cmsg with each recvmsg.
const SCTP_RECVRCVINFO: c_int = 32;
/// `SCTP_SOCKOPT_BINDX_ADD`: what libsctp's sctp_bindx(SCTP_BINDX_ADD_ADDR) does;
/// the value is a packed array of sockaddr_in / sockaddr_in6.
const SCTP_SOCKOPT_BINDX_ADD: c_int = 100;
/// `SCTP_GET_PEER_ADDRS`: struct sctp_getaddrs (libsctp's sctp_getpaddrs).
const SCTP_GET_PEER_ADDRS: c_int = 108;
/// `SCTP_SOCKOPT_CONNECTX`: libsctp's sctp_connectx; packed addresses like BINDX.
const SCTP_SOCKOPT_CONNECTX: c_int = 110;
/// `enum sctp_cmsg_type`: SCTP_SNDRCV (struct sctp_sndrcvinfo, old API).
const SCTP_SNDRCV: c_int = 1;
/// `enum sctp_cmsg_type`: SCTP_SNDINFO (struct sctp_sndinfo).
const SCTP_SNDINFO: c_int = 2;
/// `enum sctp_cmsg_type`: SCTP_RCVINFO (struct sctp_rcvinfo).
const SCTP_RCVINFO: c_int = 3;
/// `SCTP_UNORDERED` (sctp_sndinfo.snd_flags, sctp_rcvinfo.rcv_flags).
const SCTP_UNORDERED: u16 = 1;
/// Byte offsets of the stream identifier and of the flags in both `struct
/// sctp_rcvinfo` and `struct sctp_sndrcvinfo`.
const RCV_SID_OFFSET: usize = 0;
const RCV_FLAGS_OFFSET: usize = 4;
/// `MSG_NOTIFICATION` (recvmsg flag): the data is an event, not a message.
const MSG_NOTIFICATION: c_int = 0x8000;
/// `SPP_HB_ENABLE` (sctp_paddrparams.spp_flags).
const SPP_HB_ENABLE: u32 = 1 << 0;
/// `sizeof(struct sctp_paddrparams)`: packed, aligned(4): 155 bytes rounded to 156.
const PADDRPARAMS_LEN: usize = 156;

/// `struct sctp_sndinfo`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SctpSndInfo {
    snd_sid: u16,
    snd_flags: u16,
    /// Network byte order: the kernel copies it to the DATA chunk unchanged.
    snd_ppid: u32,
    snd_context: u32,
    snd_assoc_id: i32,
}

/// `struct sctp_rtoinfo` (milliseconds; 0 = leave unchanged).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct SctpRtoInfo {
    srto_assoc_id: i32,
    srto_initial: u32,
    srto_max: u32,
    srto_min: u32,
}

/// Byte offset of the PPID in both `struct sctp_rcvinfo` (u16 sid, u16 ssn,
/// u16 flags, 2 bytes padding, u32 ppid) and the old `struct sctp_sndrcvinfo`
/// (u16 stream, u16 ssn, u16 flags, padding, u32 ppid).
const RCV_PPID_OFFSET: usize = 8;

// ---- configuration ----------------------------------------------------------

/// SCTP association parameters set on every socket the runtime opens
/// (listeners pass them on to the associations they accept). A zero value
/// keeps the kernel's default (sysctl `net.sctp.*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SctpParams {
    /// Interval of the kernel's path HEARTBEATs (`spp_hbinterval`).
    pub heartbeat_interval: Duration,
    /// Retransmissions on a path before it is marked down (`spp_pathmaxrxt`).
    pub path_max_retrans: u16,
    /// Initial retransmission timeout (`srto_initial`).
    pub rto_initial: Duration,
    /// Lower bound of the retransmission timeout (`srto_min`).
    pub rto_min: Duration,
    /// Upper bound of the retransmission timeout (`srto_max`).
    pub rto_max: Duration,
}

impl Default for SctpParams {
    /// Tuned for a registrar and its PEs on a LAN: a dead peer is noticed in
    /// well under a minute (heartbeat 10 s, RTO 0.5-10 s, 5 retransmissions),
    /// where the kernel defaults (30 s, 1-60 s) take minutes.
    fn default() -> Self {
        SctpParams {
            heartbeat_interval: Duration::from_secs(10),
            path_max_retrans: 5,
            rto_initial: Duration::from_secs(1),
            rto_min: Duration::from_millis(500),
            rto_max: Duration::from_secs(10),
        }
    }
}

fn millis_u32(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

// ---- addresses --------------------------------------------------------------

/// Append `a` as a `sockaddr_in` (16 bytes) or `sockaddr_in6` (28 bytes), the
/// packed form SCTP_SOCKOPT_BINDX_ADD / CONNECTX take.
fn push_sockaddr(out: &mut Vec<u8>, a: &SocketAddr) {
    match a {
        SocketAddr::V4(v4) => {
            out.extend_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
            out.extend_from_slice(&v4.port().to_be_bytes());
            out.extend_from_slice(&v4.ip().octets());
            out.extend_from_slice(&[0; 8]);
        }
        SocketAddr::V6(v6) => {
            out.extend_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
            out.extend_from_slice(&v6.port().to_be_bytes());
            out.extend_from_slice(&v6.flowinfo().to_be_bytes());
            out.extend_from_slice(&v6.ip().octets());
            out.extend_from_slice(&v6.scope_id().to_ne_bytes());
        }
    }
}

/// Parse packed `sockaddr_in` / `sockaddr_in6` structures (as in struct
/// sctp_getaddrs), at most `count`. IPv4-mapped IPv6 addresses come back as IPv4.
fn parse_sockaddrs(mut b: &[u8], count: usize) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    while out.len() < count && b.len() >= 2 {
        let fam = c_int::from(u16::from_ne_bytes([b[0], b[1]]));
        if fam == libc::AF_INET && b.len() >= 16 {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let ip = Ipv4Addr::new(b[4], b[5], b[6], b[7]);
            out.push(SocketAddr::V4(SocketAddrV4::new(ip, port)));
            b = &b[16..];
        } else if fam == libc::AF_INET6 && b.len() >= 28 {
            let port = u16::from_be_bytes([b[2], b[3]]);
            let mut o = [0u8; 16];
            o.copy_from_slice(&b[8..24]);
            let ip = Ipv6Addr::from(o);
            let scope = u32::from_ne_bytes([b[24], b[25], b[26], b[27]]);
            out.push(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, port)),
                None => SocketAddr::V6(SocketAddrV6::new(ip, port, 0, scope)),
            });
            b = &b[28..];
        } else {
            break;
        }
    }
    out
}

/// A `sockaddr_storage` holding `a`, and its length.
#[cfg(test)]
fn to_storage(a: &SocketAddr) -> (libc::sockaddr_storage, socklen_t) {
    let mut bytes = Vec::with_capacity(28);
    push_sockaddr(&mut bytes, a);
    // SAFETY: sockaddr_storage is plain old data (all-zero is valid); we copy
    // at most 28 bytes into its 128.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    // SAFETY: the destination is a live local of at least `bytes.len()` bytes,
    // and the two regions don't overlap.
    unsafe {
        std::ptr::copy_nonoverlapping(
            bytes.as_ptr(),
            (&mut ss as *mut libc::sockaddr_storage).cast::<u8>(),
            bytes.len(),
        );
    }
    (ss, bytes.len() as socklen_t)
}

/// Parse a sockaddr_storage filled by the kernel (getsockname and friends).
fn from_storage(ss: &libc::sockaddr_storage, len: socklen_t) -> Option<SocketAddr> {
    let len = (len as usize).min(std::mem::size_of::<libc::sockaddr_storage>());
    // SAFETY: a sockaddr_storage is `size_of` initialized bytes; we read `len` of them.
    let b = unsafe {
        std::slice::from_raw_parts((ss as *const libc::sockaddr_storage).cast::<u8>(), len)
    };
    parse_sockaddrs(b, 1).into_iter().next()
}

fn cvt(rc: c_int) -> io::Result<c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The error for a missing kernel SCTP, or `e` itself.
fn explain(e: io::Error) -> io::Error {
    match e.raw_os_error() {
        Some(libc::EPROTONOSUPPORT) | Some(libc::ESOCKTNOSUPPORT) => io::Error::new(
            io::ErrorKind::Unsupported,
            "this kernel has no SCTP support",
        ),
        _ => e,
    }
}

// ---- the socket -------------------------------------------------------------

/// One piece of a message as recvmsg returned it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    /// Bytes written into the buffer.
    pub len: usize,
    /// MSG_EOR: this piece ends the message.
    pub eor: bool,
    /// PPID (host byte order), stream and unordered flag, if the kernel
    /// attached SCTP_RCVINFO/SNDRCV.
    pub info: Option<DataInfo>,
    /// MSG_NOTIFICATION: an SCTP event, not user data.
    pub notification: bool,
}

/// A one-to-one style SCTP socket, always non-blocking and close-on-exec.
#[derive(Debug)]
pub struct SctpSocket {
    fd: OwnedFd,
}

impl AsRawFd for SctpSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl SctpSocket {
    /// A new socket of the family that can carry all of `addrs` (IPv6 if any is).
    pub fn new_for(addrs: &[SocketAddr]) -> io::Result<SctpSocket> {
        let family = if addrs.iter().any(|a| a.is_ipv6()) {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        // SAFETY: socket(2) with integer arguments; returns a new descriptor or -1.
        let fd = unsafe {
            libc::socket(
                family,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::IPPROTO_SCTP,
            )
        };
        if fd < 0 {
            return Err(explain(io::Error::last_os_error()));
        }
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        let s = SctpSocket {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        s.set_int(SOL_SCTP, SCTP_RECVRCVINFO, 1)?;
        // Each ASAP/ENRP message is a request or an answer: send it now.
        s.set_int(SOL_SCTP, SCTP_NODELAY, 1)?;
        Ok(s)
    }

    fn setsockopt_raw(&self, level: c_int, name: c_int, val: &[u8]) -> io::Result<()> {
        // SAFETY: setsockopt(2) reads `val.len()` bytes from a live slice.
        cvt(unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                val.as_ptr().cast::<c_void>(),
                val.len() as socklen_t,
            )
        })
        .map(drop)
    }

    fn set_int(&self, level: c_int, name: c_int, v: c_int) -> io::Result<()> {
        self.setsockopt_raw(level, name, &v.to_ne_bytes())
    }

    /// Apply heartbeat and RTO settings (inherited by accepted associations
    /// when set on a listener).
    pub fn apply_params(&self, p: &SctpParams) -> io::Result<()> {
        let rto = SctpRtoInfo {
            srto_assoc_id: 0,
            srto_initial: millis_u32(p.rto_initial),
            srto_max: millis_u32(p.rto_max),
            srto_min: millis_u32(p.rto_min),
        };
        // SAFETY: SctpRtoInfo is repr(C) plain data; we view its bytes for the call.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&rto as *const SctpRtoInfo).cast::<u8>(),
                std::mem::size_of::<SctpRtoInfo>(),
            )
        };
        self.setsockopt_raw(SOL_SCTP, SCTP_RTOINFO, bytes)?;
        // struct sctp_paddrparams is packed, so build it byte by byte:
        // assoc_id @0, sockaddr_storage @4 (all zero: every path), hbinterval
        // @132, pathmaxrxt @136, pathmtu @138, sackdelay @142, flags @146,
        // ipv6_flowlabel @150, dscp @154.
        let mut pp = [0u8; PADDRPARAMS_LEN];
        let hb = millis_u32(p.heartbeat_interval);
        let mut flags = 0u32;
        if hb > 0 {
            pp[132..136].copy_from_slice(&hb.to_ne_bytes());
            flags |= SPP_HB_ENABLE;
        }
        pp[136..138].copy_from_slice(&p.path_max_retrans.to_ne_bytes());
        pp[146..150].copy_from_slice(&flags.to_ne_bytes());
        self.setsockopt_raw(SOL_SCTP, SCTP_PEER_ADDR_PARAMS, &pp)
    }

    /// Bind to every address of `addrs` (all with the same port; 0 = one
    /// ephemeral port for all): sctp_bindx(SCTP_BINDX_ADD_ADDR).
    pub fn bind_all(&self, addrs: &[SocketAddr]) -> io::Result<()> {
        let mut packed = Vec::with_capacity(28 * addrs.len());
        for a in addrs {
            push_sockaddr(&mut packed, a);
        }
        self.setsockopt_raw(SOL_SCTP, SCTP_SOCKOPT_BINDX_ADD, &packed)
    }

    /// A listener bound to all of `addrs`, with SO_REUSEADDR and `params`.
    ///
    /// SO_REUSEPORT is switched on only once the socket listens, so that
    /// [`connect_from`](Self::connect_from) in this process can open
    /// associations from the listening port, while another listener on the
    /// same port (a second registrar started by mistake) still fails with
    /// `EADDRINUSE` (Linux checks the flag of both sockets at bind time, and a
    /// listener hashed without it joins no reuseport group, so incoming
    /// associations all still come here).
    pub fn listen_on(addrs: &[SocketAddr], params: &SctpParams) -> io::Result<SctpSocket> {
        let s = SctpSocket::new_for(addrs)?;
        s.set_int(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        s.apply_params(params)?;
        s.bind_all(addrs)?;
        // SAFETY: listen(2) on our descriptor.
        cvt(unsafe { libc::listen(s.fd.as_raw_fd(), 1024) })?;
        // Not fatal: without it, connect_from falls back to an ephemeral port.
        let _ = s.set_int(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1);
        Ok(s)
    }

    /// Start connecting to the peer at `addrs` (one association, several
    /// addresses: sctp_connectx). Non-blocking: completion shows as writability.
    pub fn connect_start(addrs: &[SocketAddr], params: &SctpParams) -> io::Result<SctpSocket> {
        Self::connect_from(&[], addrs, params)
    }

    /// Like [`connect_start`](Self::connect_start), from the local addresses
    /// `local` (all with one port; empty: the kernel picks the addresses and
    /// an ephemeral port). Binding to the port of one of our own
    /// [`listen_on`](Self::listen_on) listeners works (SO_REUSEADDR and
    /// SO_REUSEPORT on both sockets): that is how an ENRP server makes its
    /// associations to peers start from its ENRP port, which RSPLIB requires.
    /// If the bind fails (an address that is not ours, a port taken by
    /// another program), the socket is opened unbound instead; the caller
    /// can tell from [`local_addr`](Self::local_addr). If an association
    /// between exactly these addresses and ports exists already (the peer
    /// dialled us first), the kernel refuses the connect (`EADDRNOTAVAIL`).
    pub fn connect_from(
        local: &[SocketAddr],
        addrs: &[SocketAddr],
        params: &SctpParams,
    ) -> io::Result<SctpSocket> {
        let mut s = None;
        if !local.is_empty() {
            let all: Vec<SocketAddr> = local.iter().chain(addrs).copied().collect();
            let b = SctpSocket::new_for(&all)?;
            b.set_int(libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
            if b.set_int(libc::SOL_SOCKET, libc::SO_REUSEPORT, 1).is_ok()
                && b.bind_all(local).is_ok()
            {
                s = Some(b);
            }
        }
        let s = match s {
            Some(s) => s,
            None => SctpSocket::new_for(addrs)?,
        };
        s.apply_params(params)?;
        let mut packed = Vec::with_capacity(28 * addrs.len());
        for a in addrs {
            push_sockaddr(&mut packed, a);
        }
        match s.setsockopt_raw(SOL_SCTP, SCTP_SOCKOPT_CONNECTX, &packed) {
            Ok(()) => Ok(s),
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => Ok(s),
            Err(e) => Err(e),
        }
    }

    /// Accept one association (non-blocking; `WouldBlock` when none waits).
    pub fn accept(&self) -> io::Result<SctpSocket> {
        loop {
            // SAFETY: accept4(2) with null address pointers (we ask for the
            // peer's addresses separately); returns a new descriptor or -1.
            let fd = unsafe {
                libc::accept4(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: a fresh descriptor from accept4, owned by nobody else.
                let s = SctpSocket {
                    fd: unsafe { OwnedFd::from_raw_fd(fd) },
                };
                // Inherited from the listener on Linux; set anyway, it is cheap.
                let _ = s.set_int(SOL_SCTP, SCTP_RECVRCVINFO, 1);
                let _ = s.set_int(SOL_SCTP, SCTP_NODELAY, 1);
                return Ok(s);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// SO_ERROR: the pending error of a connect, if any.
    pub fn take_error(&self) -> io::Result<Option<io::Error>> {
        let mut v: c_int = 0;
        let mut len = std::mem::size_of::<c_int>() as socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `v`.
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_ERROR,
                (&mut v as *mut c_int).cast::<c_void>(),
                &mut len,
            )
        })?;
        Ok((v != 0).then(|| io::Error::from_raw_os_error(v)))
    }

    fn name(&self, peer: bool) -> io::Result<SocketAddr> {
        // SAFETY: all-zero is a valid sockaddr_storage.
        let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        let p = (&mut ss as *mut libc::sockaddr_storage).cast::<libc::sockaddr>();
        // SAFETY: getpeername/getsockname write at most `len` bytes into `ss`.
        cvt(unsafe {
            if peer {
                libc::getpeername(self.fd.as_raw_fd(), p, &mut len)
            } else {
                libc::getsockname(self.fd.as_raw_fd(), p, &mut len)
            }
        })?;
        from_storage(&ss, len)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unknown address family"))
    }

    /// The primary peer address (`NotConnected` while still connecting).
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.name(true)
    }

    /// Our (first) local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.name(false)
    }

    /// All of the peer's addresses in the association (sctp_getpaddrs).
    pub fn peer_addrs(&self) -> io::Result<Vec<SocketAddr>> {
        // struct sctp_getaddrs { sctp_assoc_t assoc_id; __u32 addr_num; __u8 addrs[]; }
        let mut buf = vec![0u8; 8 + 64 * 28];
        let mut len = buf.len() as socklen_t;
        // SAFETY: getsockopt(2) writes at most `len` bytes into `buf`; assoc_id 0
        // (the zeroed first word) means "this socket's association".
        cvt(unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                SOL_SCTP,
                SCTP_GET_PEER_ADDRS,
                buf.as_mut_ptr().cast::<c_void>(),
                &mut len,
            )
        })?;
        let n = u32::from_ne_bytes([buf[4], buf[5], buf[6], buf[7]]) as usize;
        let end = (len as usize).min(buf.len());
        Ok(parse_sockaddrs(&buf[8..end], n))
    }

    /// Send `msg` as one user message with `ppid` on stream 0, ordered.
    /// SCTP never sends part of a message: the result is all or `WouldBlock`.
    pub fn send_msg(&self, ppid: u32, msg: &[u8]) -> io::Result<usize> {
        self.send_msg_on(ppid, 0, false, msg)
    }

    /// Send `msg` as one user message with `ppid` on `stream` (below the
    /// association's outbound stream count, else `EINVAL`), unordered if
    /// asked. All or `WouldBlock`, as [`SctpSocket::send_msg`].
    pub fn send_msg_on(
        &self,
        ppid: u32,
        stream: u16,
        unordered: bool,
        msg: &[u8],
    ) -> io::Result<usize> {
        let info = SctpSndInfo {
            snd_sid: stream,
            snd_flags: if unordered { SCTP_UNORDERED } else { 0 },
            snd_ppid: ppid.to_be(),
            ..SctpSndInfo::default()
        };
        let mut cbuf = [0u64; 8]; // 64 bytes, 8-aligned: room for CMSG_SPACE(16) = 32
        let mut iov = libc::iovec {
            iov_base: msg.as_ptr() as *mut c_void,
            iov_len: msg.len(),
        };
        // SAFETY: all-zero is a valid msghdr (null name, no iov yet).
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast::<c_void>();
        // SAFETY: CMSG_SPACE is pure arithmetic on the length.
        mh.msg_controllen =
            unsafe { libc::CMSG_SPACE(std::mem::size_of::<SctpSndInfo>() as u32) } as usize;
        // SAFETY: msg_control points at `cbuf` (64 bytes, aligned for cmsghdr) and
        // msg_controllen (32) fits in it, so CMSG_FIRSTHDR returns a header inside
        // `cbuf` with room for CMSG_LEN(16) bytes; we write the header fields and
        // copy the 16-byte SctpSndInfo into its data area.
        unsafe {
            let cm = libc::CMSG_FIRSTHDR(&mh);
            (*cm).cmsg_level = SOL_SCTP;
            (*cm).cmsg_type = SCTP_SNDINFO;
            (*cm).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<SctpSndInfo>() as u32) as usize;
            std::ptr::copy_nonoverlapping(
                (&info as *const SctpSndInfo).cast::<u8>(),
                libc::CMSG_DATA(cm),
                std::mem::size_of::<SctpSndInfo>(),
            );
        }
        loop {
            // SAFETY: `mh` references `iov` (pointing into `msg`) and `cbuf`, all
            // alive for the call; sendmsg(2) only reads them. MSG_NOSIGNAL: an
            // aborted association is an EPIPE error, not a SIGPIPE.
            let n = unsafe {
                libc::sendmsg(
                    self.fd.as_raw_fd(),
                    &mh,
                    libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receive one piece into `buf` (non-blocking). Ok with `len` 0 and no flags
    /// means the peer shut the association down.
    pub(crate) fn recv_piece(&self, buf: &mut [u8]) -> io::Result<Piece> {
        let mut cbuf = [0u64; 32]; // 256 bytes of control space
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast::<c_void>(),
            iov_len: buf.len(),
        };
        // SAFETY: all-zero is a valid msghdr.
        let mut mh: libc::msghdr = unsafe { std::mem::zeroed() };
        mh.msg_iov = &mut iov;
        mh.msg_iovlen = 1;
        mh.msg_control = cbuf.as_mut_ptr().cast::<c_void>();
        mh.msg_controllen = std::mem::size_of_val(&cbuf);
        let n = loop {
            // SAFETY: `mh` references `iov` (pointing into `buf`) and `cbuf`, both
            // alive and writable for their stated lengths during the call.
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut mh, libc::MSG_DONTWAIT) };
            if n >= 0 {
                break n as usize;
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        };
        let mut info = None;
        // SAFETY: the kernel filled `msg_controllen` bytes of `cbuf` with cmsgs;
        // CMSG_FIRSTHDR/NXTHDR stay within that length, and we read the fields
        // only when the cmsg is long enough to hold the PPID, the last of them
        // (read_unaligned: no alignment assumption about the data area).
        unsafe {
            let mut cm = libc::CMSG_FIRSTHDR(&mh);
            while !cm.is_null() {
                if (*cm).cmsg_level == SOL_SCTP
                    && ((*cm).cmsg_type == SCTP_RCVINFO || (*cm).cmsg_type == SCTP_SNDRCV)
                    && (*cm).cmsg_len >= libc::CMSG_LEN((RCV_PPID_OFFSET + 4) as u32) as usize
                {
                    let data = libc::CMSG_DATA(cm);
                    let p = data.add(RCV_PPID_OFFSET).cast::<u32>();
                    let sid = data.add(RCV_SID_OFFSET).cast::<u16>();
                    let flags = data.add(RCV_FLAGS_OFFSET).cast::<u16>();
                    info = Some(DataInfo {
                        ppid: u32::from_be(std::ptr::read_unaligned(p)),
                        stream: std::ptr::read_unaligned(sid),
                        unordered: std::ptr::read_unaligned(flags) & SCTP_UNORDERED != 0,
                    });
                }
                cm = libc::CMSG_NXTHDR(&mh, cm);
            }
        }
        Ok(Piece {
            len: n,
            eor: mh.msg_flags & libc::MSG_EOR != 0,
            info,
            notification: mh.msg_flags & MSG_NOTIFICATION != 0,
        })
    }

    /// Shut down both directions (graceful SCTP SHUTDOWN).
    pub fn shutdown(&self) -> io::Result<()> {
        // SAFETY: shutdown(2) on our descriptor.
        cvt(unsafe { libc::shutdown(self.fd.as_raw_fd(), libc::SHUT_RDWR) }).map(drop)
    }
}

/// Whole messages out of SCTP partial deliveries: pieces without MSG_EOR are
/// kept until the piece with it arrives, up to a bound.
#[derive(Debug)]
pub(crate) struct Reassembly {
    buf: Vec<u8>,
    partial: Vec<u8>,
    assembled: Vec<u8>,
    partial_info: Option<DataInfo>,
    in_notification: bool,
    max: usize,
}

/// What one receive produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Received<'a> {
    /// A whole message: PPID, stream, flags, and bytes.
    Message(DataInfo, &'a [u8]),
    /// A piece of something (part of a message, or an event) of this many
    /// bytes: nothing to deliver yet.
    Nothing(usize),
    /// The peer shut the association down.
    Eof,
}

impl Reassembly {
    /// Messages longer than `max` bytes are an error.
    pub(crate) fn new(max: usize) -> Self {
        Reassembly {
            buf: vec![0; 64 << 10],
            partial: Vec::new(),
            assembled: Vec::new(),
            partial_info: None,
            in_notification: false,
            max: max.max(1),
        }
    }

    /// Read one piece from `sock` (errors as recvmsg's, `WouldBlock` included).
    pub(crate) fn recv<'a>(&'a mut self, sock: &SctpSocket) -> io::Result<Received<'a>> {
        let piece = sock.recv_piece(&mut self.buf)?;
        if piece.notification || self.in_notification {
            // Events we never subscribed to: skip them whole.
            self.in_notification = !piece.eor;
            return Ok(Received::Nothing(piece.len));
        }
        if piece.len == 0 {
            // An SCTP user message has at least one byte: 0 is the end.
            return Ok(Received::Eof);
        }
        if self.partial.len() + piece.len > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "SCTP message longer than {} bytes (bound of the receive buffer)",
                    self.max
                ),
            ));
        }
        if self.partial_info.is_none() {
            self.partial_info = piece.info;
        }
        if !piece.eor {
            self.partial.extend_from_slice(&self.buf[..piece.len]);
            return Ok(Received::Nothing(piece.len));
        }
        let info = self.partial_info.take().or(piece.info).unwrap_or(DataInfo {
            ppid: 0,
            stream: 0,
            unordered: false,
        });
        if self.partial.is_empty() {
            return Ok(Received::Message(info, &self.buf[..piece.len]));
        }
        self.partial.extend_from_slice(&self.buf[..piece.len]);
        std::mem::swap(&mut self.partial, &mut self.assembled);
        self.partial.clear();
        Ok(Received::Message(info, &self.assembled))
    }
}

// ---- blocking client ----------------------------------------------------------

fn timed_out(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, format!("timed out {what}"))
}

/// Wait for `events` on `fd` for at most `timeout`; true if ready.
fn wait_fd(fd: RawFd, events: i16, timeout: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = c_int::try_from(timeout.as_millis().max(1)).unwrap_or(c_int::MAX);
    loop {
        // SAFETY: poll(2) on one pollfd that lives for the call.
        let rc = unsafe { libc::poll(&mut p, 1, ms) };
        if rc >= 0 {
            return Ok(rc > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A blocking SCTP client: one association, whole messages with their PPID.
/// For the command-line tools and tests; applications use the event loop.
#[derive(Debug)]
pub struct SctpClient {
    sock: SctpSocket,
    rx: Reassembly,
}

impl SctpClient {
    /// Connect to the peer at `addrs` (all addresses of one multi-homed peer)
    /// within `timeout`, with the default [`SctpParams`].
    pub fn connect(addrs: &[SocketAddr], timeout: Duration) -> io::Result<SctpClient> {
        Self::connect_with(addrs, timeout, &SctpParams::default())
    }

    /// Like [`connect`](Self::connect) with explicit association parameters.
    pub fn connect_with(
        addrs: &[SocketAddr],
        timeout: Duration,
        params: &SctpParams,
    ) -> io::Result<SctpClient> {
        if addrs.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no address"));
        }
        let sock = SctpSocket::connect_start(addrs, params)?;
        if !wait_fd(sock.as_raw_fd(), libc::POLLOUT, timeout)? {
            return Err(timed_out("connecting"));
        }
        if let Some(e) = sock.take_error()? {
            return Err(e);
        }
        sock.peer_addr()?;
        Ok(SctpClient {
            sock,
            rx: Reassembly::new(1 << 20),
        })
    }

    /// A client on an association that is already up (one accepted from a
    /// [`SctpSocket::listen_on`] listener, say: a test posing as a peer).
    /// The socket stays non-blocking; the calls below wait with poll(2).
    pub fn from_socket(sock: SctpSocket) -> SctpClient {
        SctpClient {
            sock,
            rx: Reassembly::new(1 << 20),
        }
    }

    /// The socket (addresses, shutdown).
    pub fn socket(&self) -> &SctpSocket {
        &self.sock
    }

    /// Our local address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Send one message with `ppid`, waiting for send-buffer room if needed.
    pub fn send(&mut self, ppid: u32, msg: &[u8]) -> io::Result<()> {
        loop {
            match self.sock.send_msg(ppid, msg) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(self.sock.as_raw_fd(), libc::POLLOUT, Duration::from_secs(1))?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Send an ASAP message (PPID 11).
    pub fn send_asap(&mut self, msg: &AsapMessage) -> io::Result<()> {
        self.send(ppid::ASAP, &msg.to_bytes())
    }

    /// Send an ENRP message (PPID 12).
    pub fn send_enrp(&mut self, msg: &EnrpMessage) -> io::Result<()> {
        self.send(ppid::ENRP, &msg.to_bytes())
    }

    /// The next whole message (PPID, bytes), waiting at most `timeout`.
    /// Errors: `TimedOut`, `UnexpectedEof` (peer closed), others from recvmsg.
    pub fn recv(&mut self, timeout: Duration) -> io::Result<(u32, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.rx.recv(&self.sock) {
                Ok(Received::Message(i, m)) => return Ok((i.ppid, m.to_vec())),
                Ok(Received::Nothing(_)) => continue,
                Ok(Received::Eof) => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the peer closed the association",
                    ))
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() || !wait_fd(self.sock.as_raw_fd(), libc::POLLIN, left)? {
                return Err(timed_out("waiting for a message"));
            }
        }
    }

    /// The next ASAP message (PPID 11), skipping messages of other PPIDs.
    pub fn recv_asap(&mut self, timeout: Duration) -> io::Result<AsapMessage> {
        super::blocking::recv_decoded(
            timeout,
            ppid::ASAP,
            |t| self.recv(t),
            |m| AsapMessage::decode(m).map(|d| d.msg),
        )
    }

    /// The next ENRP message (PPID 12), skipping others.
    pub fn recv_enrp(&mut self, timeout: Duration) -> io::Result<EnrpMessage> {
        super::blocking::recv_decoded(
            timeout,
            ppid::ENRP,
            |t| self.recv(t),
            |m| EnrpMessage::decode(m).map(|d| d.msg),
        )
    }

    /// Send an ASAP request and wait for the next ASAP message.
    pub fn request_asap(
        &mut self,
        msg: &AsapMessage,
        timeout: Duration,
    ) -> io::Result<AsapMessage> {
        self.send_asap(msg)?;
        self.recv_asap(timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddrs_round_trip() {
        let addrs: Vec<SocketAddr> = vec![
            "10.77.0.1:3863".parse().unwrap(),
            "[2001:db8::1]:9".parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ];
        let mut b = Vec::new();
        for a in &addrs {
            push_sockaddr(&mut b, a);
        }
        assert_eq!(b.len(), 16 + 28 + 16);
        assert_eq!(parse_sockaddrs(&b, 10), addrs);
        assert_eq!(parse_sockaddrs(&b, 1), addrs[..1]);
        // A truncated tail is dropped, not misread.
        assert_eq!(parse_sockaddrs(&b[..20], 10), addrs[..1]);
        let (ss, len) = to_storage(&addrs[1]);
        assert_eq!(from_storage(&ss, len), Some(addrs[1]));
    }

    #[test]
    fn struct_layouts_match_the_kernel() {
        // <linux/sctp.h>: sctp_sndinfo is 16 bytes, sctp_rtoinfo 16.
        assert_eq!(std::mem::size_of::<SctpSndInfo>(), 16);
        assert_eq!(std::mem::size_of::<SctpRtoInfo>(), 16);
    }

    /// Runs for real where the kernel has SCTP (inside scripts/sctp-vm).
    #[test]
    fn loopback_association_carries_ppid_and_big_messages() {
        if !crate::runtime::probe_sctp().is_available() {
            eprintln!("skipping: no kernel SCTP");
            return;
        }
        let lst = SctpSocket::listen_on(&["127.0.0.1:0".parse().unwrap()], &SctpParams::default())
            .unwrap();
        let addr = lst.local_addr().unwrap();
        let mut c = SctpClient::connect(&[addr], Duration::from_secs(10)).unwrap();
        let srv = loop {
            match lst.accept() {
                Ok(s) => break s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_fd(lst.as_raw_fd(), libc::POLLIN, Duration::from_secs(10)).unwrap();
                }
                Err(e) => panic!("accept: {e}"),
            }
        };
        let peers = srv.peer_addrs().unwrap();
        assert!(peers.contains(&c.local_addr().unwrap()), "{peers:?}");
        let mut s = SctpClient {
            sock: srv,
            rx: Reassembly::new(1 << 20),
        };
        // Bigger than one recvmsg buffer: arrives in pieces, reassembled.
        let big: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        c.send(11, b"hello").unwrap();
        c.send(12, &big).unwrap();
        assert_eq!(
            s.recv(Duration::from_secs(10)).unwrap(),
            (11, b"hello".to_vec())
        );
        assert_eq!(s.recv(Duration::from_secs(10)).unwrap(), (12, big));
        s.send(0x1234_5678, b"back").unwrap();
        assert_eq!(
            c.recv(Duration::from_secs(10)).unwrap(),
            (0x1234_5678, b"back".to_vec())
        );
        // A bound smaller than the message closes with an error.
        s.rx = Reassembly::new(1000);
        c.send(11, &[7u8; 5000]).unwrap();
        assert!(s.recv(Duration::from_secs(10)).is_err());
        drop(c);
    }
}
