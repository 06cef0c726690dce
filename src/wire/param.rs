//! Parameter codecs (RFC 5354 §3, digest §5): addresses, transports, policies,
//! pool handles, pool elements, server information, operation errors and the
//! small fixed-size parameters.
//!
//! Encoders append the complete, padded TLV and return the number of padding
//! bytes they wrote at the end (which an enclosing container or message must
//! leave out of its Length). They write the header first and patch the Length
//! afterwards: no temporary buffers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::error::{DecodeError, DecodeErrorKind};
use super::tlv::{be16, be32, begin_tlv, end_tlv, put_leaf, tlv_size, Cursor, Params, Tlv};
use super::types::*;

/// A parameter that can be encoded and decoded on its own, e.g. to put a Policy
/// TLV into cause 0x5 or a Transport TLV into cause 0x7.
pub trait Param: Sized {
    /// Append the complete TLV, padded to 4; returns the padding appended.
    fn encode_param(&self, out: &mut Vec<u8>) -> usize;
    /// Wire size of the TLV, padding included (what `encode_param` appends).
    fn param_len(&self) -> usize;
    /// Decode a buffer holding exactly this one TLV (with or without its final
    /// padding). Unknown nested parameters are handled by their action bits;
    /// skip-and-report ones are dropped here.
    fn decode_param(buf: &[u8]) -> Result<Self, DecodeError>;
}

/// Decode the single TLV in `buf` with `f`, which gets the TLV and the
/// unknown-parameter report list.
fn decode_single<T>(
    buf: &[u8],
    ok: fn(u16) -> bool,
    what: &'static str,
    f: impl FnOnce(&[u8], Tlv<'_>, &mut Vec<ErrorCause>) -> Result<T, DecodeError>,
) -> Result<T, DecodeError> {
    let mut unrec = Vec::new();
    let mut p = Params::new(buf, Cursor::new(buf, 0, buf.len()), &mut unrec, what);
    let t = p.expect_with(ok, what)?;
    // The TLV must be the whole buffer, save at most its padding.
    if buf.len() > tlv_size(t.value.len()) {
        return Err(DecodeError::new(
            t.raw.len(),
            DecodeErrorKind::TrailingBytes {
                length: t.raw.len(),
                available: buf.len(),
            },
        ));
    }
    f(buf, t, p.unrec())
}

// ------------------------------------------------------------------ addresses

fn address_len(a: &IpAddr) -> usize {
    match a {
        IpAddr::V4(_) => 8,
        IpAddr::V6(_) => 20,
    }
}

fn encode_address(a: &IpAddr, out: &mut Vec<u8>) -> usize {
    match a {
        IpAddr::V4(v4) => put_leaf(out, ptype::IPV4_ADDRESS, &v4.octets()),
        IpAddr::V6(v6) => put_leaf(out, ptype::IPV6_ADDRESS, &v6.octets()),
    }
}

fn decode_address(t: &Tlv<'_>) -> Result<IpAddr, DecodeError> {
    match t.ty {
        ptype::IPV4_ADDRESS => {
            t.expect_len(8)?;
            let v = t.value;
            Ok(IpAddr::V4(Ipv4Addr::new(v[0], v[1], v[2], v[3])))
        }
        _ => {
            t.expect_len(20)?;
            let mut o = [0u8; 16];
            o.copy_from_slice(t.value);
            Ok(IpAddr::V6(Ipv6Addr::from(o)))
        }
    }
}

// ----------------------------------------------------------------- transports

/// True for the transport parameter types (DCCP, SCTP, TCP, UDP, UDP-Lite, opaque).
pub fn is_transport_type(t: u16) -> bool {
    matches!(
        t,
        ptype::DCCP_TRANSPORT
            | ptype::SCTP_TRANSPORT
            | ptype::TCP_TRANSPORT
            | ptype::UDP_TRANSPORT
            | ptype::UDP_LITE_TRANSPORT
            | ptype::OPAQUE_TRANSPORT
    )
}

impl Param for Transport {
    fn encode_param(&self, out: &mut Vec<u8>) -> usize {
        let start = begin_tlv(out, self.param_type());
        let (port, word) = match self {
            Transport::Opaque(b) => {
                out.extend_from_slice(b);
                return end_tlv(out, start, 0);
            }
            Transport::Sctp {
                port,
                transport_use,
                ..
            }
            | Transport::Tcp {
                port,
                transport_use,
                ..
            } => (*port, *transport_use),
            Transport::Udp { port, .. }
            | Transport::UdpLite { port, .. }
            | Transport::Dccp { port, .. } => (*port, 0),
        };
        out.extend_from_slice(&port.to_be_bytes());
        out.extend_from_slice(&word.to_be_bytes());
        if let Transport::Dccp { service_code, .. } = self {
            out.extend_from_slice(&service_code.to_be_bytes());
        }
        let mut pad = 0;
        for a in self.addrs() {
            pad = encode_address(a, out);
        }
        end_tlv(out, start, pad)
    }

    fn param_len(&self) -> usize {
        match self {
            Transport::Opaque(b) => tlv_size(b.len()),
            Transport::Dccp { addr, .. } => 12 + address_len(addr),
            t => 8 + t.addrs().iter().map(address_len).sum::<usize>(),
        }
    }

    fn decode_param(buf: &[u8]) -> Result<Self, DecodeError> {
        decode_single(buf, is_transport_type, "transport", decode_transport)
    }
}

/// Decode a transport TLV (type already checked by the caller).
pub(crate) fn decode_transport(
    buf: &[u8],
    t: Tlv<'_>,
    unrec: &mut Vec<ErrorCause>,
) -> Result<Transport, DecodeError> {
    if t.ty == ptype::OPAQUE_TRANSPORT {
        return Ok(Transport::Opaque(t.value.to_vec()));
    }
    let fixed = if t.ty == ptype::DCCP_TRANSPORT { 8 } else { 4 };
    t.expect_min_value(fixed)?;
    let port = be16(t.value, 0);
    let word = be16(t.value, 2);
    let mut p = Params::new(buf, t.nested(buf, fixed), unrec, "transport parameter");
    let mut addrs = Vec::new();
    while let Some(a) = p.next()? {
        if a.ty != ptype::IPV4_ADDRESS && a.ty != ptype::IPV6_ADDRESS {
            return Err(p.unexpected(&a));
        }
        addrs.push(decode_address(&a)?);
    }
    if t.ty == ptype::SCTP_TRANSPORT {
        if addrs.is_empty() {
            return Err(t.invalid("SCTP transport without an address".into()));
        }
        return Ok(Transport::Sctp {
            port,
            transport_use: word,
            addrs,
        });
    }
    if addrs.len() != 1 {
        return Err(t.invalid(format!("{} addresses, expected exactly 1", addrs.len())));
    }
    let addr = addrs[0];
    Ok(match t.ty {
        ptype::TCP_TRANSPORT => Transport::Tcp {
            port,
            transport_use: word,
            addr,
        },
        ptype::UDP_TRANSPORT => Transport::Udp { port, addr },
        ptype::UDP_LITE_TRANSPORT => Transport::UdpLite { port, addr },
        _ => Transport::Dccp {
            port,
            service_code: be32(t.value, 4),
            addr,
        },
    })
}

// ------------------------------------------------------------------- policies

/// The exact policy-data length (after the type word) of a standard policy
/// type, or `None` for types kept as [`Policy::Other`].
pub fn standard_policy_data_len(t: u32) -> Option<usize> {
    use policy_type::*;
    match t {
        ROUND_ROBIN | RANDOM => Some(0),
        WEIGHTED_ROUND_ROBIN | WEIGHTED_RANDOM | PRIORITY | LEAST_USED | RANDOMIZED_LEAST_USED => {
            Some(4)
        }
        LEAST_USED_DEGRADATION | PRIORITY_LEAST_USED => Some(8),
        _ => None,
    }
}

impl Param for Policy {
    fn encode_param(&self, out: &mut Vec<u8>) -> usize {
        let start = begin_tlv(out, ptype::POLICY);
        out.extend_from_slice(&self.policy_type().to_be_bytes());
        let mut word = |v: u32| out.extend_from_slice(&v.to_be_bytes());
        match self {
            Policy::RoundRobin | Policy::Random => {}
            Policy::WeightedRoundRobin { weight } | Policy::WeightedRandom { weight } => {
                word(*weight)
            }
            Policy::Priority { priority } => word(*priority),
            Policy::LeastUsed { load } | Policy::RandomizedLeastUsed { load } => word(*load),
            Policy::LeastUsedDegradation { load, degradation }
            | Policy::PriorityLeastUsed { load, degradation } => {
                word(*load);
                word(*degradation);
            }
            Policy::Other { data, .. } => out.extend_from_slice(data),
        }
        end_tlv(out, start, 0)
    }

    fn param_len(&self) -> usize {
        let data = match self {
            Policy::Other { data, .. } => data.len(),
            p => standard_policy_data_len(p.policy_type()).unwrap_or(0),
        };
        tlv_size(4 + data)
    }

    fn decode_param(buf: &[u8]) -> Result<Self, DecodeError> {
        decode_single(
            buf,
            |t| t == ptype::POLICY,
            "policy",
            |_, t, _| decode_policy(&t),
        )
    }
}

/// Decode a Pool Member Selection Policy TLV.
pub(crate) fn decode_policy(t: &Tlv<'_>) -> Result<Policy, DecodeError> {
    use policy_type::*;
    t.expect_min_value(4)?;
    let pt = be32(t.value, 0);
    let data = &t.value[4..];
    if let Some(n) = standard_policy_data_len(pt) {
        if data.len() != n {
            return Err(t.invalid(format!(
                "policy 0x{pt:08x} length {}, expected {}",
                t.raw.len(),
                8 + n
            )));
        }
    }
    let w = |i: usize| be32(data, 4 * i);
    Ok(match pt {
        ROUND_ROBIN => Policy::RoundRobin,
        RANDOM => Policy::Random,
        WEIGHTED_ROUND_ROBIN => Policy::WeightedRoundRobin { weight: w(0) },
        WEIGHTED_RANDOM => Policy::WeightedRandom { weight: w(0) },
        PRIORITY => Policy::Priority { priority: w(0) },
        LEAST_USED => Policy::LeastUsed { load: w(0) },
        RANDOMIZED_LEAST_USED => Policy::RandomizedLeastUsed { load: w(0) },
        LEAST_USED_DEGRADATION => Policy::LeastUsedDegradation {
            load: w(0),
            degradation: w(1),
        },
        PRIORITY_LEAST_USED => Policy::PriorityLeastUsed {
            load: w(0),
            degradation: w(1),
        },
        _ => Policy::Other {
            policy_type: pt,
            data: data.to_vec(),
        },
    })
}

// ---------------------------------------------------------------- pool handle

impl Param for PoolHandle {
    fn encode_param(&self, out: &mut Vec<u8>) -> usize {
        put_leaf(out, ptype::POOL_HANDLE, &self.0)
    }

    fn param_len(&self) -> usize {
        tlv_size(self.0.len())
    }

    fn decode_param(buf: &[u8]) -> Result<Self, DecodeError> {
        decode_single(
            buf,
            |t| t == ptype::POOL_HANDLE,
            "pool handle",
            |_, t, _| Ok(PoolHandle(t.value.to_vec())),
        )
    }
}

/// Read the mandatory Pool Handle.
pub(crate) fn take_pool_handle(p: &mut Params<'_, '_>) -> Result<PoolHandle, DecodeError> {
    let t = p.expect(ptype::POOL_HANDLE, "pool handle")?;
    Ok(PoolHandle(t.value.to_vec()))
}

// ------------------------------------------------------------ small parameters

/// Wire size of a PE Identifier parameter.
pub const PE_ID_LEN: usize = 8;
/// Wire size of a PE Checksum parameter (Length 6 + 2 padding).
pub const CHECKSUM_LEN: usize = 8;
/// Wire size of the Handle Resolution option.
pub const HROPT_LEN: usize = 8;

/// Append a PE Identifier parameter (0x000e).
pub fn encode_pe_id(id: u32, out: &mut Vec<u8>) -> usize {
    put_leaf(out, ptype::PE_IDENTIFIER, &id.to_be_bytes())
}

/// Append a PE Checksum parameter (0x000f, Length 6).
pub fn encode_checksum(sum: u16, out: &mut Vec<u8>) -> usize {
    put_leaf(out, ptype::PE_CHECKSUM, &sum.to_be_bytes())
}

/// Append a Handle Resolution option (0x803f) asking for `items` PEs.
pub fn encode_hropt(items: u32, out: &mut Vec<u8>) -> usize {
    put_leaf(out, ptype::HANDLE_RESOLUTION_OPTION, &items.to_be_bytes())
}

/// Append a Cookie parameter (0x000d).
pub fn encode_cookie(cookie: &[u8], out: &mut Vec<u8>) -> usize {
    put_leaf(out, ptype::COOKIE, cookie)
}

/// A 32-bit value in a TLV of Length 8 (PE Identifier, hropt).
pub(crate) fn decode_u32_param(t: &Tlv<'_>) -> Result<u32, DecodeError> {
    t.expect_len(8)?;
    Ok(be32(t.value, 0))
}

/// Read the mandatory PE Identifier.
pub(crate) fn take_pe_id(p: &mut Params<'_, '_>) -> Result<u32, DecodeError> {
    decode_u32_param(&p.expect(ptype::PE_IDENTIFIER, "PE identifier")?)
}

/// Decode a PE Checksum TLV.
pub(crate) fn decode_checksum(t: &Tlv<'_>) -> Result<u16, DecodeError> {
    t.expect_len(6)?;
    Ok(be16(t.value, 0))
}

// --------------------------------------------------------------- pool element

impl Param for PoolElement {
    fn encode_param(&self, out: &mut Vec<u8>) -> usize {
        let start = begin_tlv(out, ptype::POOL_ELEMENT);
        out.extend_from_slice(&self.id.to_be_bytes());
        out.extend_from_slice(&self.home.to_be_bytes());
        out.extend_from_slice(&self.reg_life.to_be_bytes());
        self.user_transport.encode_param(out);
        let mut pad = self.policy.encode_param(out);
        if let Some(a) = &self.asap_transport {
            pad = a.encode_param(out);
        }
        end_tlv(out, start, pad)
    }

    fn param_len(&self) -> usize {
        16 + self.user_transport.param_len()
            + self.policy.param_len()
            + self.asap_transport.as_ref().map_or(0, Param::param_len)
    }

    fn decode_param(buf: &[u8]) -> Result<Self, DecodeError> {
        decode_single(
            buf,
            |t| t == ptype::POOL_ELEMENT,
            "pool element",
            decode_pool_element,
        )
    }
}

/// Decode a Pool Element TLV.
pub(crate) fn decode_pool_element(
    buf: &[u8],
    t: Tlv<'_>,
    unrec: &mut Vec<ErrorCause>,
) -> Result<PoolElement, DecodeError> {
    t.expect_min_value(12)?;
    let id = be32(t.value, 0);
    let home = be32(t.value, 4);
    let reg_life = be32(t.value, 8) as i32;
    let mut p = Params::new(buf, t.nested(buf, 12), unrec, "pool element parameter");
    let ut = p.expect_with(is_transport_type, "user transport")?;
    let user_transport = decode_transport(p.buf(), ut, p.unrec())?;
    let policy = decode_policy(&p.expect(ptype::POLICY, "member selection policy")?)?;
    let asap_transport = match p.peek()? {
        Some(ty) if is_transport_type(ty) => match p.next()? {
            Some(at) => Some(decode_transport(p.buf(), at, p.unrec())?),
            None => None,
        },
        _ => None,
    };
    p.finish()?;
    Ok(PoolElement {
        id,
        home,
        reg_life,
        user_transport,
        policy,
        asap_transport,
    })
}

// --------------------------------------------------------- server information

impl Param for ServerInfo {
    fn encode_param(&self, out: &mut Vec<u8>) -> usize {
        let start = begin_tlv(out, ptype::SERVER_INFORMATION);
        out.extend_from_slice(&self.server_id.to_be_bytes());
        let pad = self.transport.encode_param(out);
        end_tlv(out, start, pad)
    }

    fn param_len(&self) -> usize {
        8 + self.transport.param_len()
    }

    fn decode_param(buf: &[u8]) -> Result<Self, DecodeError> {
        decode_single(
            buf,
            |t| t == ptype::SERVER_INFORMATION,
            "server information",
            decode_server_info,
        )
    }
}

/// Decode a Server Information TLV.
pub(crate) fn decode_server_info(
    buf: &[u8],
    t: Tlv<'_>,
    unrec: &mut Vec<ErrorCause>,
) -> Result<ServerInfo, DecodeError> {
    t.expect_min_value(4)?;
    let server_id = be32(t.value, 0);
    let mut p = Params::new(buf, t.nested(buf, 4), unrec, "server information parameter");
    let tt = p.expect_with(is_transport_type, "server transport")?;
    let transport = decode_transport(p.buf(), tt, p.unrec())?;
    p.finish()?;
    Ok(ServerInfo {
        server_id,
        transport,
    })
}

// ------------------------------------------------------------ operation error

/// Append one error cause (code, length, info, padding); returns its padding.
pub fn encode_error_cause(c: &ErrorCause, out: &mut Vec<u8>) -> usize {
    put_leaf(out, c.code, &c.info)
}

/// Wire size of one error cause, padding included.
pub fn error_cause_len(c: &ErrorCause) -> usize {
    tlv_size(c.info.len())
}

/// Append an Operation Error parameter (0x000c) holding `causes`.
pub fn encode_operation_error(causes: &[ErrorCause], out: &mut Vec<u8>) -> usize {
    let start = begin_tlv(out, ptype::OPERATION_ERROR);
    let mut pad = 0;
    for c in causes {
        pad = encode_error_cause(c, out);
    }
    end_tlv(out, start, pad)
}

/// Wire size of an Operation Error parameter holding `causes`.
pub fn operation_error_len(causes: &[ErrorCause]) -> usize {
    4 + causes.iter().map(error_cause_len).sum::<usize>()
}

/// Decode a buffer holding exactly one Operation Error parameter.
pub fn decode_operation_error(buf: &[u8]) -> Result<Vec<ErrorCause>, DecodeError> {
    decode_single(
        buf,
        |t| t == ptype::OPERATION_ERROR,
        "operation error",
        |buf, t, _| decode_causes(buf, &t),
    )
}

/// Decode the causes inside an Operation Error TLV. Every cause code is kept
/// as it is, known or not (digest §12 #9).
pub(crate) fn decode_causes(buf: &[u8], t: &Tlv<'_>) -> Result<Vec<ErrorCause>, DecodeError> {
    let mut cur = t.nested(buf, 0);
    let mut causes = Vec::new();
    while let Some(c) = cur.next_raw()? {
        causes.push(ErrorCause::with_info(c.ty, c.value.to_vec()));
    }
    Ok(causes)
}

impl Param for Vec<ErrorCause> {
    fn encode_param(&self, out: &mut Vec<u8>) -> usize {
        encode_operation_error(self, out)
    }

    fn param_len(&self) -> usize {
        operation_error_len(self)
    }

    fn decode_param(buf: &[u8]) -> Result<Self, DecodeError> {
        decode_operation_error(buf)
    }
}

/// Encode any parameter into a fresh buffer (convenience for building cause
/// information, e.g. `ErrorCause::with_info(cause::INCONSISTENT_POLICY,
/// param_bytes(&policy))`). Trailing padding is removed, as causes carry the
/// unpadded TLV.
pub fn param_bytes<P: Param>(p: &P) -> Vec<u8> {
    let mut v = Vec::with_capacity(p.param_len());
    let pad = p.encode_param(&mut v);
    v.truncate(v.len() - pad);
    v
}
