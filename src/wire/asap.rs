//! ASAP messages (RFC 5352 §2.2, digest §3).

use super::error::DecodeError;
use super::msg::{begin_message, header, require_len, Decoded};
use super::param::*;
use super::tlv::{be32, end_tlv, Cursor, Params};
use super::types::*;

/// ASAP message type codes.
pub mod asap_type {
    /// ASAP_REGISTRATION.
    pub const REGISTRATION: u8 = 0x01;
    /// ASAP_DEREGISTRATION.
    pub const DEREGISTRATION: u8 = 0x02;
    /// ASAP_REGISTRATION_RESPONSE.
    pub const REGISTRATION_RESPONSE: u8 = 0x03;
    /// ASAP_DEREGISTRATION_RESPONSE.
    pub const DEREGISTRATION_RESPONSE: u8 = 0x04;
    /// ASAP_HANDLE_RESOLUTION.
    pub const HANDLE_RESOLUTION: u8 = 0x05;
    /// ASAP_HANDLE_RESOLUTION_RESPONSE.
    pub const HANDLE_RESOLUTION_RESPONSE: u8 = 0x06;
    /// ASAP_ENDPOINT_KEEP_ALIVE.
    pub const ENDPOINT_KEEP_ALIVE: u8 = 0x07;
    /// ASAP_ENDPOINT_KEEP_ALIVE_ACK.
    pub const ENDPOINT_KEEP_ALIVE_ACK: u8 = 0x08;
    /// ASAP_ENDPOINT_UNREACHABLE.
    pub const ENDPOINT_UNREACHABLE: u8 = 0x09;
    /// ASAP_SERVER_ANNOUNCE.
    pub const SERVER_ANNOUNCE: u8 = 0x0a;
    /// ASAP_COOKIE.
    pub const COOKIE: u8 = 0x0b;
    /// ASAP_COOKIE_ECHO.
    pub const COOKIE_ECHO: u8 = 0x0c;
    /// ASAP_BUSINESS_CARD.
    pub const BUSINESS_CARD: u8 = 0x0d;
    /// ASAP_ERROR.
    pub const ERROR: u8 = 0x0e;

    /// The IANA name of a type code, e.g. `ASAP_REGISTRATION`.
    pub fn name(t: u8) -> &'static str {
        match t {
            REGISTRATION => "ASAP_REGISTRATION",
            DEREGISTRATION => "ASAP_DEREGISTRATION",
            REGISTRATION_RESPONSE => "ASAP_REGISTRATION_RESPONSE",
            DEREGISTRATION_RESPONSE => "ASAP_DEREGISTRATION_RESPONSE",
            HANDLE_RESOLUTION => "ASAP_HANDLE_RESOLUTION",
            HANDLE_RESOLUTION_RESPONSE => "ASAP_HANDLE_RESOLUTION_RESPONSE",
            ENDPOINT_KEEP_ALIVE => "ASAP_ENDPOINT_KEEP_ALIVE",
            ENDPOINT_KEEP_ALIVE_ACK => "ASAP_ENDPOINT_KEEP_ALIVE_ACK",
            ENDPOINT_UNREACHABLE => "ASAP_ENDPOINT_UNREACHABLE",
            SERVER_ANNOUNCE => "ASAP_SERVER_ANNOUNCE",
            COOKIE => "ASAP_COOKIE",
            COOKIE_ECHO => "ASAP_COOKIE_ECHO",
            BUSINESS_CARD => "ASAP_BUSINESS_CARD",
            ERROR => "ASAP_ERROR",
            _ => "ASAP_UNKNOWN",
        }
    }
}

/// ASAP flag bits (all are 0x01 of their own message type).
pub mod asap_flag {
    /// R: registration rejected (ASAP_REGISTRATION_RESPONSE).
    pub const REJECT: u8 = 0x01;
    /// S: subscribe to pool updates (ASAP_HANDLE_RESOLUTION).
    pub const SUBSCRIBE: u8 = 0x01;
    /// A: subscription accepted (ASAP_HANDLE_RESOLUTION_RESPONSE).
    pub const ACCEPTED: u8 = 0x01;
    /// H: make the sender your Home ENRP server (ASAP_ENDPOINT_KEEP_ALIVE).
    pub const HOME: u8 = 0x01;
}

/// An ASAP message. Flags are named booleans; undefined flag bits are sent as
/// 0 (the raw received byte is in [`Decoded::flags`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsapMessage {
    /// 0x01: PE → home ENRP server.
    Registration {
        /// The pool to join.
        pool_handle: PoolHandle,
        /// The PE (normally without ASAP transport).
        pe: PoolElement,
    },
    /// 0x02: PE → home ENRP server.
    Deregistration {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE leaving.
        pe_id: u32,
    },
    /// 0x03: ENRP server → PE.
    RegistrationResponse {
        /// R flag: rejected.
        reject: bool,
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: u32,
        /// Why rejected, or a warning when granted with changes.
        error: Option<Vec<ErrorCause>>,
    },
    /// 0x04: ENRP server → PE (no R flag; an error means rejection).
    DeregistrationResponse {
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE.
        pe_id: u32,
        /// Why rejected.
        error: Option<Vec<ErrorCause>>,
    },
    /// 0x05: PU/PE → ENRP server.
    HandleResolution {
        /// S flag: subscribe to pushed updates.
        subscribe: bool,
        /// The pool asked for.
        pool_handle: PoolHandle,
        /// Handle Resolution option (0x803f): how many PEs are wanted.
        items: Option<u32>,
    },
    /// 0x06: ENRP server → PU/PE.
    HandleResolutionResponse {
        /// A flag: subscription accepted.
        accepted: bool,
        /// The pool.
        pool_handle: PoolHandle,
        /// Overall policy (absent ⇒ round robin).
        policy: Option<Policy>,
        /// The PEs handed out.
        elements: Vec<PoolElement>,
        /// Failure (e.g. unknown pool handle, cause 0x9).
        error: Option<Vec<ErrorCause>>,
    },
    /// 0x07: ENRP server → PE.
    EndpointKeepAlive {
        /// H flag: adopt the sender as home ENRP server.
        home: bool,
        /// The sending server.
        server_id: u32,
        /// The pool.
        pool_handle: PoolHandle,
        /// RSPLIB's extra PE Identifier TLV (digest §12 #8).
        pe_id: Option<u32>,
    },
    /// 0x08: PE → ENRP server.
    EndpointKeepAliveAck {
        /// The pool.
        pool_handle: PoolHandle,
        /// The answering PE.
        pe_id: u32,
    },
    /// 0x09: PU/PE → ENRP server.
    EndpointUnreachable {
        /// The pool.
        pool_handle: PoolHandle,
        /// The unreachable PE.
        pe_id: u32,
    },
    /// 0x0a: ENRP server → multicast.
    ServerAnnounce {
        /// The announcing server.
        server_id: u32,
        /// SCTP / TCP transports to reach it (none ⇒ SCTP, source address, 3863).
        transports: Vec<Transport>,
    },
    /// 0x0b: PE → PU, opaque state.
    Cookie(Vec<u8>),
    /// 0x0c: PU → new PE, the last cookie.
    CookieEcho(Vec<u8>),
    /// 0x0d: PE ↔ PU, preferred fail-over order.
    BusinessCard {
        /// The pool.
        pool_handle: PoolHandle,
        /// RSPLIB's policy TLV (digest §12 #7).
        policy: Option<Policy>,
        /// The PEs in fail-over order.
        elements: Vec<PoolElement>,
    },
    /// 0x0e: report of an unrecognized message or parameter.
    Error(Vec<ErrorCause>),
}

fn is_asap_type(t: u8) -> bool {
    (asap_type::REGISTRATION..=asap_type::ERROR).contains(&t)
}

impl AsapMessage {
    /// The message type code.
    pub fn message_type(&self) -> u8 {
        use asap_type::*;
        match self {
            AsapMessage::Registration { .. } => REGISTRATION,
            AsapMessage::Deregistration { .. } => DEREGISTRATION,
            AsapMessage::RegistrationResponse { .. } => REGISTRATION_RESPONSE,
            AsapMessage::DeregistrationResponse { .. } => DEREGISTRATION_RESPONSE,
            AsapMessage::HandleResolution { .. } => HANDLE_RESOLUTION,
            AsapMessage::HandleResolutionResponse { .. } => HANDLE_RESOLUTION_RESPONSE,
            AsapMessage::EndpointKeepAlive { .. } => ENDPOINT_KEEP_ALIVE,
            AsapMessage::EndpointKeepAliveAck { .. } => ENDPOINT_KEEP_ALIVE_ACK,
            AsapMessage::EndpointUnreachable { .. } => ENDPOINT_UNREACHABLE,
            AsapMessage::ServerAnnounce { .. } => SERVER_ANNOUNCE,
            AsapMessage::Cookie(_) => COOKIE,
            AsapMessage::CookieEcho(_) => COOKIE_ECHO,
            AsapMessage::BusinessCard { .. } => BUSINESS_CARD,
            AsapMessage::Error(_) => ERROR,
        }
    }

    /// The IANA name, e.g. `ASAP_REGISTRATION`.
    pub fn name(&self) -> &'static str {
        asap_type::name(self.message_type())
    }

    /// The flags byte this message is sent with.
    pub fn flags(&self) -> u8 {
        let set = match self {
            AsapMessage::RegistrationResponse { reject, .. } => *reject,
            AsapMessage::HandleResolution { subscribe, .. } => *subscribe,
            AsapMessage::HandleResolutionResponse { accepted, .. } => *accepted,
            AsapMessage::EndpointKeepAlive { home, .. } => *home,
            _ => false,
        };
        u8::from(set)
    }

    /// Wire size: the bytes [`encode`](Self::encode) appends, final padding included.
    pub fn encoded_len(&self) -> usize {
        let ph = |h: &PoolHandle| h.param_len();
        let err = |e: &Option<Vec<ErrorCause>>| e.as_deref().map_or(0, operation_error_len);
        let pes = |v: &[PoolElement]| v.iter().map(Param::param_len).sum::<usize>();
        4 + match self {
            AsapMessage::Registration { pool_handle, pe } => ph(pool_handle) + pe.param_len(),
            AsapMessage::Deregistration { pool_handle, .. }
            | AsapMessage::EndpointKeepAliveAck { pool_handle, .. }
            | AsapMessage::EndpointUnreachable { pool_handle, .. } => ph(pool_handle) + PE_ID_LEN,
            AsapMessage::RegistrationResponse {
                pool_handle, error, ..
            }
            | AsapMessage::DeregistrationResponse {
                pool_handle, error, ..
            } => ph(pool_handle) + PE_ID_LEN + err(error),
            AsapMessage::HandleResolution {
                pool_handle, items, ..
            } => ph(pool_handle) + items.map_or(0, |_| HROPT_LEN),
            AsapMessage::HandleResolutionResponse {
                pool_handle,
                policy,
                elements,
                error,
                ..
            } => {
                ph(pool_handle)
                    + policy.as_ref().map_or(0, Param::param_len)
                    + pes(elements)
                    + err(error)
            }
            AsapMessage::EndpointKeepAlive {
                pool_handle, pe_id, ..
            } => 4 + ph(pool_handle) + pe_id.map_or(0, |_| PE_ID_LEN),
            AsapMessage::ServerAnnounce { transports, .. } => {
                4 + transports.iter().map(Param::param_len).sum::<usize>()
            }
            AsapMessage::Cookie(c) | AsapMessage::CookieEcho(c) => super::tlv::tlv_size(c.len()),
            AsapMessage::BusinessCard {
                pool_handle,
                policy,
                elements,
            } => ph(pool_handle) + policy.as_ref().map_or(0, Param::param_len) + pes(elements),
            AsapMessage::Error(causes) => operation_error_len(causes),
        }
    }

    /// Append the message in RFC form: Length excludes the final padding, the
    /// bytes are padded to a multiple of 4. The encoding must fit in 65535
    /// bytes (check [`encoded_len`](Self::encoded_len) against
    /// [`MAX_LENGTH`](super::MAX_LENGTH) for untrusted contents).
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let start = begin_message(out, self.message_type(), self.flags());
        let mut pad = 0;
        match self {
            AsapMessage::Registration { pool_handle, pe } => {
                pool_handle.encode_param(out);
                pad = pe.encode_param(out);
            }
            AsapMessage::Deregistration { pool_handle, pe_id }
            | AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id }
            | AsapMessage::EndpointUnreachable { pool_handle, pe_id } => {
                pool_handle.encode_param(out);
                pad = encode_pe_id(*pe_id, out);
            }
            AsapMessage::RegistrationResponse {
                pool_handle,
                pe_id,
                error,
                ..
            }
            | AsapMessage::DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            } => {
                pool_handle.encode_param(out);
                pad = encode_pe_id(*pe_id, out);
                if let Some(e) = error {
                    pad = encode_operation_error(e, out);
                }
            }
            AsapMessage::HandleResolution {
                pool_handle, items, ..
            } => {
                pad = pool_handle.encode_param(out);
                if let Some(n) = items {
                    pad = encode_hropt(*n, out);
                }
            }
            AsapMessage::HandleResolutionResponse {
                pool_handle,
                policy,
                elements,
                error,
                ..
            } => {
                pad = encode_pool_listing(pool_handle, policy.as_ref(), elements, out);
                if let Some(e) = error {
                    pad = encode_operation_error(e, out);
                }
            }
            AsapMessage::EndpointKeepAlive {
                server_id,
                pool_handle,
                pe_id,
                ..
            } => {
                out.extend_from_slice(&server_id.to_be_bytes());
                pad = pool_handle.encode_param(out);
                if let Some(id) = pe_id {
                    pad = encode_pe_id(*id, out);
                }
            }
            AsapMessage::ServerAnnounce {
                server_id,
                transports,
            } => {
                out.extend_from_slice(&server_id.to_be_bytes());
                for t in transports {
                    pad = t.encode_param(out);
                }
            }
            AsapMessage::Cookie(c) | AsapMessage::CookieEcho(c) => pad = encode_cookie(c, out),
            AsapMessage::BusinessCard {
                pool_handle,
                policy,
                elements,
            } => pad = encode_pool_listing(pool_handle, policy.as_ref(), elements, out),
            AsapMessage::Error(causes) => pad = encode_operation_error(causes, out),
        }
        end_tlv(out, start, pad);
    }

    /// The encoding in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decode one ASAP message (the whole buffer; see digest §2 for the
    /// receive rules applied). Never panics.
    pub fn decode(buf: &[u8]) -> Result<Decoded<AsapMessage>, DecodeError> {
        use asap_type::*;
        let h = header(buf, is_asap_type)?;
        let fixed = match h.ty {
            ENDPOINT_KEEP_ALIVE | SERVER_ANNOUNCE => 4,
            _ => 0,
        };
        require_len(&h, 4 + fixed)?;
        let mut unrec = Vec::new();
        let cur = Cursor::new(buf, 4 + fixed, h.len);
        let mut p = Params::new(buf, cur, &mut unrec, asap_type::name(h.ty));
        if h.ty == HANDLE_RESOLUTION {
            p = p.with_hropt();
        }
        let flag = h.flags & 0x01 != 0;
        let msg = match h.ty {
            REGISTRATION => {
                let pool_handle = take_pool_handle(&mut p)?;
                let t = p.expect(ptype::POOL_ELEMENT, "pool element")?;
                let pe = decode_pool_element(p.buf(), t, p.unrec())?;
                AsapMessage::Registration { pool_handle, pe }
            }
            DEREGISTRATION | ENDPOINT_KEEP_ALIVE_ACK | ENDPOINT_UNREACHABLE => {
                let pool_handle = take_pool_handle(&mut p)?;
                let pe_id = take_pe_id(&mut p)?;
                match h.ty {
                    DEREGISTRATION => AsapMessage::Deregistration { pool_handle, pe_id },
                    ENDPOINT_KEEP_ALIVE_ACK => {
                        AsapMessage::EndpointKeepAliveAck { pool_handle, pe_id }
                    }
                    _ => AsapMessage::EndpointUnreachable { pool_handle, pe_id },
                }
            }
            REGISTRATION_RESPONSE | DEREGISTRATION_RESPONSE => {
                let pool_handle = take_pool_handle(&mut p)?;
                let pe_id = take_pe_id(&mut p)?;
                let error = take_error(&mut p)?;
                if h.ty == REGISTRATION_RESPONSE {
                    AsapMessage::RegistrationResponse {
                        reject: flag,
                        pool_handle,
                        pe_id,
                        error,
                    }
                } else {
                    AsapMessage::DeregistrationResponse {
                        pool_handle,
                        pe_id,
                        error,
                    }
                }
            }
            HANDLE_RESOLUTION => {
                let pool_handle = take_pool_handle(&mut p)?;
                let items = match p.take_if(ptype::HANDLE_RESOLUTION_OPTION)? {
                    Some(t) => Some(decode_u32_param(&t)?),
                    None => None,
                };
                AsapMessage::HandleResolution {
                    subscribe: flag,
                    pool_handle,
                    items,
                }
            }
            HANDLE_RESOLUTION_RESPONSE | BUSINESS_CARD => {
                let pool_handle = take_pool_handle(&mut p)?;
                let policy = match p.take_if(ptype::POLICY)? {
                    Some(t) => Some(decode_policy(&t)?),
                    None => None,
                };
                let elements = take_elements(&mut p)?;
                if h.ty == BUSINESS_CARD {
                    AsapMessage::BusinessCard {
                        pool_handle,
                        policy,
                        elements,
                    }
                } else {
                    AsapMessage::HandleResolutionResponse {
                        accepted: flag,
                        pool_handle,
                        policy,
                        elements,
                        error: take_error(&mut p)?,
                    }
                }
            }
            ENDPOINT_KEEP_ALIVE => {
                let server_id = be32(buf, 4);
                let pool_handle = take_pool_handle(&mut p)?;
                let pe_id = match p.take_if(ptype::PE_IDENTIFIER)? {
                    Some(t) => Some(decode_u32_param(&t)?),
                    None => None,
                };
                AsapMessage::EndpointKeepAlive {
                    home: flag,
                    server_id,
                    pool_handle,
                    pe_id,
                }
            }
            SERVER_ANNOUNCE => {
                let server_id = be32(buf, 4);
                let mut transports = Vec::new();
                while let Some(t) = p.next()? {
                    if t.ty != ptype::SCTP_TRANSPORT && t.ty != ptype::TCP_TRANSPORT {
                        return Err(p.unexpected(&t));
                    }
                    transports.push(decode_transport(p.buf(), t, p.unrec())?);
                }
                AsapMessage::ServerAnnounce {
                    server_id,
                    transports,
                }
            }
            COOKIE | COOKIE_ECHO => {
                let c = p.expect(ptype::COOKIE, "cookie")?.value.to_vec();
                if h.ty == COOKIE {
                    AsapMessage::Cookie(c)
                } else {
                    AsapMessage::CookieEcho(c)
                }
            }
            _ => {
                let t = p.expect(ptype::OPERATION_ERROR, "operation error")?;
                AsapMessage::Error(decode_causes(buf, &t)?)
            }
        };
        p.finish()?;
        Ok(Decoded {
            msg,
            flags: h.flags,
            unrecognized: unrec,
        })
    }
}

/// An optional Operation Error parameter.
pub(crate) fn take_error(p: &mut Params<'_, '_>) -> Result<Option<Vec<ErrorCause>>, DecodeError> {
    match p.take_if(ptype::OPERATION_ERROR)? {
        Some(t) => Ok(Some(decode_causes(p.buf(), &t)?)),
        None => Ok(None),
    }
}

/// Zero or more consecutive Pool Element parameters.
pub(crate) fn take_elements(p: &mut Params<'_, '_>) -> Result<Vec<PoolElement>, DecodeError> {
    let mut v = Vec::new();
    while let Some(t) = p.take_if(ptype::POOL_ELEMENT)? {
        v.push(decode_pool_element(p.buf(), t, p.unrec())?);
    }
    Ok(v)
}

/// The body shared by a handle resolution response and a business card: the
/// pool handle, an optional policy, then the pool elements. Returns the
/// padding after the last parameter written (for the message Length).
fn encode_pool_listing(
    pool_handle: &PoolHandle,
    policy: Option<&Policy>,
    elements: &[PoolElement],
    out: &mut Vec<u8>,
) -> usize {
    let mut pad = pool_handle.encode_param(out);
    if let Some(p) = policy {
        pad = p.encode_param(out);
    }
    for pe in elements {
        pad = pe.encode_param(out);
    }
    pad
}
