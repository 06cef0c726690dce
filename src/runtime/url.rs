//! Endpoint URLs on the command line and in configuration:
//! `tcp://HOST:PORT` and `sctp://HOST[,HOST...]:PORT`. IPv6 literals go in
//! brackets (`tcp://[::1]:3863`); host names are resolved once, at parse time.

use std::fmt;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};

/// The transport protocol of an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Proto {
    /// TCP with the TCP mapping shim (digest §10).
    Tcp,
    /// Kernel SCTP.
    Sctp,
}

/// A parsed endpoint: protocol, one or more addresses (more only for SCTP
/// multi-homing) and a port (0 = ephemeral when listening).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EndpointUrl {
    /// The protocol.
    pub proto: Proto,
    /// The addresses, at least one.
    pub addrs: Vec<IpAddr>,
    /// The port.
    pub port: u16,
}

/// Why a URL was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlError(pub String);

impl fmt::Display for UrlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UrlError {}

impl EndpointUrl {
    /// Parse `tcp://HOST:PORT` or `sctp://HOST[,HOST...]:PORT`. `HOST` may be an
    /// IPv4 address, a bracketed IPv6 address, `*` / empty for all addresses
    /// (`0.0.0.0`), or a name resolved here.
    pub fn parse(s: &str) -> Result<EndpointUrl, UrlError> {
        let bad = |why: &str| UrlError(format!("invalid endpoint URL {s:?}: {why}"));
        let (proto, rest) = if let Some(r) = s.strip_prefix("tcp://") {
            (Proto::Tcp, r)
        } else if let Some(r) = s.strip_prefix("sctp://") {
            (Proto::Sctp, r)
        } else {
            return Err(bad(
                "expected tcp://HOST:PORT or sctp://HOST[,HOST...]:PORT",
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let colon = rest.rfind(':').ok_or_else(|| bad("missing :PORT"))?;
        let (hosts, port) = (&rest[..colon], &rest[colon + 1..]);
        // "[::1]" ends in ']' so the last ':' is the port separator; an unbracketed
        // IPv6 address would leave a ':' inside `hosts` that isn't in brackets.
        let port: u16 = port
            .parse()
            .map_err(|_| bad("the port must be a number from 0 to 65535"))?;
        let mut addrs = Vec::new();
        for h in hosts.split(',') {
            let h = h.trim();
            if h.is_empty() || h == "*" {
                addrs.push(IpAddr::from([0, 0, 0, 0]));
            } else if let Some(v6) = h.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
                addrs.push(
                    v6.parse::<IpAddr>()
                        .map_err(|_| bad(&format!("bad IPv6 address {v6:?}")))?,
                );
            } else if let Ok(ip) = h.parse::<IpAddr>() {
                if ip.is_ipv6() {
                    return Err(bad("IPv6 addresses go in brackets, e.g. [::1]"));
                }
                addrs.push(ip);
            } else {
                let resolved = (h, port)
                    .to_socket_addrs()
                    .map_err(|e| bad(&format!("cannot resolve {h:?}: {e}")))?
                    .next()
                    .ok_or_else(|| bad(&format!("{h:?} has no address")))?;
                addrs.push(resolved.ip());
            }
        }
        if proto == Proto::Tcp && addrs.len() != 1 {
            return Err(bad("a tcp:// URL takes exactly one host"));
        }
        Ok(EndpointUrl { proto, addrs, port })
    }

    /// The socket addresses (one per host).
    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.addrs
            .iter()
            .map(|&a| SocketAddr::new(a, self.port))
            .collect()
    }

    /// The first socket address.
    pub fn first(&self) -> SocketAddr {
        SocketAddr::new(self.addrs[0], self.port)
    }
}

impl fmt::Display for EndpointUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.proto {
            Proto::Tcp => "tcp://",
            Proto::Sctp => "sctp://",
        })?;
        for (i, a) in self.addrs.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match a {
                IpAddr::V4(v4) => write!(f, "{v4}")?,
                IpAddr::V6(v6) => write!(f, "[{v6}]")?,
            }
        }
        write!(f, ":{}", self.port)
    }
}

/// Format one socket address as a URL of the given protocol.
pub fn url_of(proto: Proto, addr: SocketAddr) -> String {
    EndpointUrl {
        proto,
        addrs: vec![addr.ip()],
        port: addr.port(),
    }
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let u = EndpointUrl::parse("tcp://127.0.0.1:3863").unwrap();
        assert_eq!(u.proto, Proto::Tcp);
        assert_eq!(u.to_string(), "tcp://127.0.0.1:3863");
        let u = EndpointUrl::parse("sctp://10.0.0.1,[::1]:0").unwrap();
        assert_eq!(u.addrs.len(), 2);
        assert_eq!(u.to_string(), "sctp://10.0.0.1,[::1]:0");
        assert_eq!(
            EndpointUrl::parse("tcp://*:5").unwrap().to_string(),
            "tcp://0.0.0.0:5"
        );
        assert_eq!(
            EndpointUrl::parse("tcp://[::1]:7").unwrap().first(),
            "[::1]:7".parse().unwrap()
        );
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "udp://1.2.3.4:5",
            "tcp://1.2.3.4",
            "tcp://1.2.3.4:99999",
            "tcp://::1:5",
            "tcp://1.2.3.4,5.6.7.8:9",
            "tcp://[zz]:1",
            "",
        ] {
            assert!(EndpointUrl::parse(s).is_err(), "{s}");
        }
    }
}
