//! The few libc calls the runtime needs: probing for kernel SCTP, turning
//! SIGINT/SIGTERM into bytes on a pipe (the self-pipe trick), a UDP socket
//! several listeners can share (SO_REUSEADDR, for announces), and multicast
//! sockets tied to one interface (ENRP presence multicast).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// Whether this kernel offers SCTP sockets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SctpSupport {
    /// `socket(AF_INET, SOCK_STREAM, IPPROTO_SCTP)` worked.
    Available,
    /// The kernel has no SCTP (EPROTONOSUPPORT / ESOCKTNOSUPPORT / EAFNOSUPPORT).
    Missing,
    /// Some other error, e.g. a seccomp filter or no file descriptors left.
    Unknown(String),
}

impl SctpSupport {
    /// True only for [`SctpSupport::Available`].
    pub fn is_available(&self) -> bool {
        matches!(self, SctpSupport::Available)
    }
}

/// Probe for kernel SCTP by opening (and closing) a one-to-one SCTP socket.
pub fn probe_sctp() -> SctpSupport {
    // SAFETY: socket(2) takes plain integers and returns a new descriptor or -1;
    // no memory is shared with the kernel.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_SCTP) };
    if fd >= 0 {
        // SAFETY: `fd` was just returned by socket(2) and is owned by nobody else.
        drop(unsafe { OwnedFd::from_raw_fd(fd) });
        return SctpSupport::Available;
    }
    let err = io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EPROTONOSUPPORT) | Some(libc::ESOCKTNOSUPPORT) | Some(libc::EAFNOSUPPORT) => {
            SctpSupport::Missing
        }
        _ => SctpSupport::Unknown(err.to_string()),
    }
}

/// The write end of the signal pipe, read by the handler. -1 = none installed.
static SIGNAL_PIPE_WR: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = SIGNAL_PIPE_WR.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = sig as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives for the call. The pipe is
        // non-blocking, so a full pipe loses the byte instead of hanging the
        // handler (one pending byte is enough to wake the reader). errno is saved
        // and restored so the interrupted code doesn't see it change.
        unsafe {
            let saved = *libc::__errno_location();
            libc::write(fd, (&b as *const u8).cast(), 1);
            *libc::__errno_location() = saved;
        }
    }
}

/// SIGINT/SIGTERM (or other signals) delivered as bytes on a non-blocking pipe.
/// Register [`SignalPipe::fd`] with a poller (mio `SourceFd`, poll(2), ...), then
/// call [`SignalPipe::drain`] to learn which signals arrived. One per process.
#[derive(Debug)]
pub struct SignalPipe {
    rd: OwnedFd,
    _wr: OwnedFd,
}

impl SignalPipe {
    /// Create the pipe and install handlers for `signals`. Fails if one is
    /// already installed in this process.
    pub fn install(signals: &[libc::c_int]) -> io::Result<SignalPipe> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2(2) writes two descriptors into the 2-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors were just created by pipe2 and are owned here only.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        if SIGNAL_PIPE_WR
            .compare_exchange(-1, wr.as_raw_fd(), Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "a signal pipe is already installed",
            ));
        }
        for &sig in signals {
            // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; we set
            // the handler to an extern "C" fn that only calls async-signal-safe
            // functions, and sigaction(2) copies the struct.
            let rc = unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_signal as *const () as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut())
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(SignalPipe { rd, _wr: wr })
    }

    /// The read end, to register with a poller.
    pub fn fd(&self) -> RawFd {
        self.rd.as_raw_fd()
    }

    /// Read every pending byte; returns the signals received (possibly none).
    pub fn drain(&self) -> Vec<libc::c_int> {
        let mut out = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            // SAFETY: read(2) into a stack buffer of the given length.
            let n = unsafe { libc::read(self.rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                out.extend(buf[..n as usize].iter().map(|&b| libc::c_int::from(b)));
                continue;
            }
            if n < 0 && io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return out;
        }
    }

    /// Block until a signal byte arrives or `timeout` passes; returns the signals.
    pub fn wait(&self, timeout: std::time::Duration) -> Vec<libc::c_int> {
        let mut p = libc::pollfd {
            fd: self.rd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: poll(2) on one pollfd that lives for the call.
        unsafe { libc::poll(&mut p, 1, ms) };
        self.drain()
    }
}

impl Drop for SignalPipe {
    fn drop(&mut self) {
        // Handlers stay installed but stop writing before the pipe closes.
        SIGNAL_PIPE_WR.store(-1, Ordering::SeqCst);
    }
}

/// A UDP socket bound to the wildcard address and `port` with SO_REUSEADDR,
/// so several processes (and contexts) on one host can all receive the
/// datagrams of one multicast group (e.g. registrar announces).
pub fn shared_udp_socket(v6: bool, port: u16) -> io::Result<std::net::UdpSocket> {
    let addr: std::net::SocketAddr = if v6 {
        (std::net::Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, port).into()
    };
    shared_udp_socket_at(addr)
}

/// A UDP socket with SO_REUSEADDR bound to `addr`.
fn shared_udp_socket_at(addr: std::net::SocketAddr) -> io::Result<std::net::UdpSocket> {
    let sock = new_udp_socket(addr.is_ipv6())?;
    set_int(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    // std binds while creating a socket, too early to set the option: bind here.
    bind_udp(&sock, addr)?;
    Ok(sock)
}

/// An unbound UDP socket of the family.
fn new_udp_socket(v6: bool) -> io::Result<std::net::UdpSocket> {
    let family = if v6 { libc::AF_INET6 } else { libc::AF_INET };
    // SAFETY: socket(2) takes plain integers and returns a new descriptor or -1.
    let fd = unsafe { libc::socket(family, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a descriptor we just opened and own from here on.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(std::net::UdpSocket::from(fd))
}

/// setsockopt(2) with a value of type `T`.
fn set_opt<T>(
    sock: &std::net::UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> io::Result<()> {
    // SAFETY: setsockopt(2) reads `size_of::<T>()` bytes from `value`, a live
    // reference; the kernel checks that the size fits the option.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn set_int(
    sock: &std::net::UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    set_opt(sock, level, name, &v)
}

/// The interface multicast goes out of and is received on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MulticastInterface {
    /// The interface holding this IPv4 address (IPv4 groups only).
    Addr(std::net::Ipv4Addr),
    /// The interface with this index (`if_nametoindex`), either family.
    Index(u32),
}

impl MulticastInterface {
    /// An IPv4 address, an interface name (`lo`, `eth0`) or an interface
    /// index. Names are looked up now: the interface must exist.
    pub fn parse(s: &str) -> Result<MulticastInterface, String> {
        let s = s.trim();
        match s.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V4(a)) => return Ok(MulticastInterface::Addr(a)),
            Ok(std::net::IpAddr::V6(_)) => {
                return Err(format!(
                    "{s}: an IPv6 interface is named by its name or index, not an address"
                ))
            }
            Err(_) => {}
        }
        if let Ok(i) = s.parse::<u32>() {
            if i == 0 {
                return Err("interface index 0 does not exist".into());
            }
            return Ok(MulticastInterface::Index(i));
        }
        let name = std::ffi::CString::new(s).map_err(|_| format!("{s:?}: not an interface"))?;
        // SAFETY: if_nametoindex(3) reads the NUL-terminated string, which lives
        // for the call.
        let i = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if i == 0 {
            return Err(format!("{s}: no such interface (nor an IPv4 address)"));
        }
        Ok(MulticastInterface::Index(i))
    }
}

/// ip_mreqn naming the interface (and, for a membership, the group).
fn mreqn(group: std::net::Ipv4Addr, iface: Option<MulticastInterface>) -> libc::ip_mreqn {
    let addr = |a: std::net::Ipv4Addr| libc::in_addr {
        s_addr: u32::from_ne_bytes(a.octets()),
    };
    let (local, index) = match iface {
        Some(MulticastInterface::Addr(a)) => (a, 0),
        Some(MulticastInterface::Index(i)) => (std::net::Ipv4Addr::UNSPECIFIED, i as libc::c_int),
        None => (std::net::Ipv4Addr::UNSPECIFIED, 0),
    };
    libc::ip_mreqn {
        imr_multiaddr: addr(group),
        imr_address: addr(local),
        imr_ifindex: index,
    }
}

fn v6_index(iface: Option<MulticastInterface>) -> io::Result<u32> {
    match iface {
        None => Ok(0),
        Some(MulticastInterface::Index(i)) => Ok(i),
        Some(MulticastInterface::Addr(a)) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{a} names an IPv4 interface; an IPv6 group needs an interface name or index"),
        )),
    }
}

/// A UDP socket that receives the datagrams sent to multicast `group` on
/// `iface` (the kernel's choice when `None`). SO_REUSEADDR lets several
/// processes on one host share the group's port; an IPv4 socket is bound to
/// the group address itself and takes no other group's traffic
/// (IP_MULTICAST_ALL off).
pub fn multicast_receiver(
    group: std::net::SocketAddr,
    iface: Option<MulticastInterface>,
) -> io::Result<std::net::UdpSocket> {
    if !group.ip().is_multicast() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a multicast address", group.ip()),
        ));
    }
    match group {
        std::net::SocketAddr::V4(g) => {
            let sock = shared_udp_socket_at(group)?;
            set_opt(
                &sock,
                libc::IPPROTO_IP,
                libc::IP_ADD_MEMBERSHIP,
                &mreqn(*g.ip(), iface),
            )?;
            set_int(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_ALL, 0)?;
            Ok(sock)
        }
        std::net::SocketAddr::V6(g) => {
            let index = v6_index(iface)?;
            let sock = shared_udp_socket(true, g.port())?;
            sock.join_multicast_v6(g.ip(), index)?;
            Ok(sock)
        }
    }
}

/// A non-blocking UDP socket for sending to multicast groups of one family:
/// out of `iface` (the kernel's choice when `None`; an IPv4 interface
/// address is also the source address), with IP TTL / hop limit `ttl`, and
/// looped back to listeners on this host.
pub fn multicast_sender(
    v6: bool,
    iface: Option<MulticastInterface>,
    ttl: u32,
) -> io::Result<std::net::UdpSocket> {
    let ttl = libc::c_int::try_from(ttl.min(255)).unwrap_or(1);
    let sock = new_udp_socket(v6)?;
    if v6 {
        let index = v6_index(iface)?;
        bind_udp(&sock, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())?;
        set_int(
            &sock,
            libc::IPPROTO_IPV6,
            libc::IPV6_MULTICAST_IF,
            libc::c_int::try_from(index).unwrap_or(0),
        )?;
        set_int(&sock, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_HOPS, ttl)?;
        set_int(&sock, libc::IPPROTO_IPV6, libc::IPV6_MULTICAST_LOOP, 1)?;
    } else {
        let local = match iface {
            Some(MulticastInterface::Addr(a)) => a,
            _ => std::net::Ipv4Addr::UNSPECIFIED,
        };
        bind_udp(&sock, (local, 0).into())?;
        set_opt(
            &sock,
            libc::IPPROTO_IP,
            libc::IP_MULTICAST_IF,
            &mreqn(std::net::Ipv4Addr::UNSPECIFIED, iface),
        )?;
        set_int(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_TTL, ttl)?;
        set_int(&sock, libc::IPPROTO_IP, libc::IP_MULTICAST_LOOP, 1)?;
    }
    sock.set_nonblocking(true)?;
    Ok(sock)
}

fn bind_udp(sock: &std::net::UdpSocket, addr: std::net::SocketAddr) -> io::Result<()> {
    let rc = match addr {
        std::net::SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: bind(2) reads `size_of_val(&sin)` bytes from a live local.
            unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&sin as *const libc::sockaddr_in).cast(),
                    std::mem::size_of_val(&sin) as libc::socklen_t,
                )
            }
        }
        std::net::SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                libc::bind(
                    sock.as_raw_fd(),
                    (&sin6 as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of_val(&sin6) as libc::socklen_t,
                )
            }
        }
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multicast_interfaces_parse() {
        assert_eq!(
            MulticastInterface::parse("127.0.0.1"),
            Ok(MulticastInterface::Addr(std::net::Ipv4Addr::LOCALHOST))
        );
        assert_eq!(
            MulticastInterface::parse("3"),
            Ok(MulticastInterface::Index(3))
        );
        assert!(MulticastInterface::parse("lo")
            .is_ok_and(|i| matches!(i, MulticastInterface::Index(n) if n > 0)));
        assert!(MulticastInterface::parse("::1").is_err());
        assert!(MulticastInterface::parse("0").is_err());
        assert!(MulticastInterface::parse("no-such-if0").is_err());
        assert!(MulticastInterface::parse("a\0b").is_err());
    }

    #[test]
    fn a_unicast_group_is_refused() {
        let e = multicast_receiver("127.0.0.1:9".parse().unwrap(), None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn probe_does_not_fail_hard() {
        // Whatever the kernel, the probe answers without panicking.
        let _ = probe_sctp().is_available();
    }
}
