//! Compact storage of transports inside the PE slab.
//!
//! Nearly every PE has one user transport with a single IPv4 address (and, at a
//! registrar, an SCTP ASAP transport with a single IPv4 address). Those are stored
//! inline in 10 bytes; anything else (several addresses, IPv6, DCCP, opaque) is boxed.

use crate::wire::types::Transport;
use std::net::{IpAddr, Ipv4Addr};

const SCTP: u8 = 0;
const TCP: u8 = 1;
const UDP: u8 = 2;
const UDPLITE: u8 = 3;

/// A single-IPv4-address SCTP/TCP/UDP/UDP-Lite transport, inline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InlineTransport {
    kind: u8,
    port: u16,
    transport_use: u16,
    addr: [u8; 4],
}

impl InlineTransport {
    fn from_transport(t: &Transport) -> Option<InlineTransport> {
        let (kind, port, transport_use, addr) = match t {
            Transport::Sctp {
                port,
                transport_use,
                addrs,
            } => match addrs.as_slice() {
                [IpAddr::V4(a)] => (SCTP, *port, *transport_use, *a),
                _ => return None,
            },
            Transport::Tcp {
                port,
                transport_use,
                addr: IpAddr::V4(a),
            } => (TCP, *port, *transport_use, *a),
            Transport::Udp {
                port,
                addr: IpAddr::V4(a),
            } => (UDP, *port, 0, *a),
            Transport::UdpLite {
                port,
                addr: IpAddr::V4(a),
            } => (UDPLITE, *port, 0, *a),
            _ => return None,
        };
        Some(InlineTransport {
            kind,
            port,
            transport_use,
            addr: addr.octets(),
        })
    }

    /// The transport as the shared wire type (allocates for SCTP's address list).
    pub fn to_transport(self) -> Transport {
        let addr = IpAddr::V4(Ipv4Addr::from(self.addr));
        match self.kind {
            SCTP => Transport::Sctp {
                port: self.port,
                transport_use: self.transport_use,
                addrs: vec![addr],
            },
            TCP => Transport::Tcp {
                port: self.port,
                transport_use: self.transport_use,
                addr,
            },
            UDP => Transport::Udp {
                port: self.port,
                addr,
            },
            _ => Transport::UdpLite {
                port: self.port,
                addr,
            },
        }
    }
}

/// A transport as stored in a slab entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) enum Stored {
    /// No transport (only for the optional ASAP transport).
    #[default]
    None,
    Inline(InlineTransport),
    Boxed(Box<Transport>),
}

impl Stored {
    pub(crate) fn new(t: &Transport) -> Stored {
        match InlineTransport::from_transport(t) {
            Some(i) => Stored::Inline(i),
            None => Stored::Boxed(Box::new(t.clone())),
        }
    }

    /// Stores `t`, leaving an equal stored value in place: a re-registration
    /// nearly always repeats its transports, and a boxed one then costs no
    /// allocation and free.
    #[inline]
    pub(crate) fn update(&mut self, t: &Transport) {
        match self {
            Stored::Inline(i) if InlineTransport::from_transport(t) == Some(*i) => {}
            Stored::Boxed(b) if **b == *t => {}
            _ => *self = Stored::new(t),
        }
    }

    /// [`update`](Self::update) for an optional transport.
    #[inline]
    pub(crate) fn update_opt(&mut self, t: Option<&Transport>) {
        match t {
            Some(t) => self.update(t),
            None => *self = Stored::None,
        }
    }

    pub(crate) fn from_opt(t: Option<&Transport>) -> Stored {
        t.map_or(Stored::None, Stored::new)
    }

    pub(crate) fn as_ref(&self) -> Option<TransportRef<'_>> {
        match self {
            Stored::None => None,
            Stored::Inline(i) => Some(TransportRef::Inline(*i)),
            Stored::Boxed(b) => Some(TransportRef::Boxed(b)),
        }
    }

    /// Moves the transport out without allocating when it is boxed.
    pub(crate) fn take(&mut self) -> Option<Transport> {
        match std::mem::take(self) {
            Stored::None => None,
            Stored::Inline(i) => Some(i.to_transport()),
            Stored::Boxed(b) => Some(*b),
        }
    }
}

/// A borrowed view of a stored transport, for encoding without cloning.
#[derive(Debug, Clone, Copy)]
pub enum TransportRef<'a> {
    /// One IPv4 address, stored inline.
    Inline(InlineTransport),
    /// Any other transport.
    Boxed(&'a Transport),
}

impl TransportRef<'_> {
    /// The parameter type code (see [`Transport::param_type`]).
    pub fn param_type(&self) -> u16 {
        use crate::wire::types::ptype;
        match self {
            TransportRef::Inline(i) => match i.kind {
                SCTP => ptype::SCTP_TRANSPORT,
                TCP => ptype::TCP_TRANSPORT,
                UDP => ptype::UDP_TRANSPORT,
                _ => ptype::UDP_LITE_TRANSPORT,
            },
            TransportRef::Boxed(t) => t.param_type(),
        }
    }

    /// The port (None for opaque).
    pub fn port(&self) -> Option<u16> {
        match self {
            TransportRef::Inline(i) => Some(i.port),
            TransportRef::Boxed(t) => t.port(),
        }
    }

    /// The Transport Use word.
    pub fn transport_use(&self) -> u16 {
        match self {
            TransportRef::Inline(i) => i.transport_use,
            TransportRef::Boxed(t) => t.transport_use(),
        }
    }

    /// Number of addresses.
    pub fn addr_count(&self) -> usize {
        match self {
            TransportRef::Inline(_) => 1,
            TransportRef::Boxed(t) => t.addrs().len(),
        }
    }

    /// The `i`-th address.
    pub fn addr(&self, i: usize) -> Option<IpAddr> {
        match self {
            TransportRef::Inline(t) if i == 0 => Some(IpAddr::V4(Ipv4Addr::from(t.addr))),
            TransportRef::Inline(_) => None,
            TransportRef::Boxed(t) => t.addrs().get(i).copied(),
        }
    }

    /// The transport as an owned value.
    pub fn to_transport(&self) -> Transport {
        match self {
            TransportRef::Inline(i) => i.to_transport(),
            TransportRef::Boxed(t) => (*t).clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let v4: IpAddr = "10.1.2.3".parse().unwrap();
        let v6: IpAddr = "::1".parse().unwrap();
        let cases = [
            Transport::Sctp {
                port: 1,
                transport_use: 1,
                addrs: vec![v4],
            },
            Transport::Sctp {
                port: 1,
                transport_use: 0,
                addrs: vec![v4, v6],
            },
            Transport::Tcp {
                port: 2,
                transport_use: 1,
                addr: v4,
            },
            Transport::Tcp {
                port: 2,
                transport_use: 0,
                addr: v6,
            },
            Transport::Udp { port: 3, addr: v4 },
            Transport::UdpLite { port: 4, addr: v4 },
            Transport::Dccp {
                port: 5,
                service_code: 9,
                addr: v4,
            },
            Transport::Opaque(vec![1, 2, 3]),
        ];
        for t in cases {
            let mut s = Stored::new(&t);
            let r = s.as_ref().unwrap();
            assert_eq!(r.param_type(), t.param_type());
            assert_eq!(r.port(), t.port());
            assert_eq!(r.transport_use(), t.transport_use());
            assert_eq!(r.addr_count(), t.addrs().len());
            assert_eq!(r.addr(0), t.addrs().first().copied());
            assert_eq!(r.to_transport(), t);
            let mut u = Stored::new(&t);
            u.update(&t);
            assert_eq!(u, Stored::new(&t));
            u.update_opt(None);
            assert_eq!(u, Stored::None);
            u.update_opt(Some(&t));
            assert_eq!(u, Stored::new(&t));
            u.update(&Transport::Opaque(vec![9]));
            assert_eq!(u, Stored::new(&Transport::Opaque(vec![9])));
            assert_eq!(s.take(), Some(t));
        }
        assert_eq!(std::mem::size_of::<Stored>(), 16);
    }
}
