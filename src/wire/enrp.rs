//! ENRP messages (RFC 5353 §2, digest §4).

use super::asap::take_elements;
use super::error::DecodeError;
use super::msg::{begin_message, header, require_len, Decoded};
use super::param::*;
use super::tlv::{be16, be32, end_tlv, Cursor, Params};
use super::types::*;

/// ENRP message type codes.
pub mod enrp_type {
    /// ENRP_PRESENCE.
    pub const PRESENCE: u8 = 0x01;
    /// ENRP_HANDLE_TABLE_REQUEST.
    pub const HANDLE_TABLE_REQUEST: u8 = 0x02;
    /// ENRP_HANDLE_TABLE_RESPONSE.
    pub const HANDLE_TABLE_RESPONSE: u8 = 0x03;
    /// ENRP_HANDLE_UPDATE.
    pub const HANDLE_UPDATE: u8 = 0x04;
    /// ENRP_LIST_REQUEST.
    pub const LIST_REQUEST: u8 = 0x05;
    /// ENRP_LIST_RESPONSE.
    pub const LIST_RESPONSE: u8 = 0x06;
    /// ENRP_INIT_TAKEOVER.
    pub const INIT_TAKEOVER: u8 = 0x07;
    /// ENRP_INIT_TAKEOVER_ACK.
    pub const INIT_TAKEOVER_ACK: u8 = 0x08;
    /// ENRP_TAKEOVER_SERVER.
    pub const TAKEOVER_SERVER: u8 = 0x09;
    /// ENRP_ERROR.
    pub const ERROR: u8 = 0x0a;

    /// The IANA name of a type code, e.g. `ENRP_PRESENCE`.
    pub fn name(t: u8) -> &'static str {
        match t {
            PRESENCE => "ENRP_PRESENCE",
            HANDLE_TABLE_REQUEST => "ENRP_HANDLE_TABLE_REQUEST",
            HANDLE_TABLE_RESPONSE => "ENRP_HANDLE_TABLE_RESPONSE",
            HANDLE_UPDATE => "ENRP_HANDLE_UPDATE",
            LIST_REQUEST => "ENRP_LIST_REQUEST",
            LIST_RESPONSE => "ENRP_LIST_RESPONSE",
            INIT_TAKEOVER => "ENRP_INIT_TAKEOVER",
            INIT_TAKEOVER_ACK => "ENRP_INIT_TAKEOVER_ACK",
            TAKEOVER_SERVER => "ENRP_TAKEOVER_SERVER",
            ERROR => "ENRP_ERROR",
            _ => "ENRP_UNKNOWN",
        }
    }
}

/// ENRP flag bits.
pub mod enrp_flag {
    /// Reply required (ENRP_PRESENCE; digest §12 #4).
    pub const REPLY_REQUIRED: u8 = 0x01;
    /// W: own children only (ENRP_HANDLE_TABLE_REQUEST).
    pub const OWN_CHILDREN_ONLY: u8 = 0x01;
    /// R: reject (ENRP_HANDLE_TABLE_RESPONSE, ENRP_LIST_RESPONSE).
    pub const REJECT: u8 = 0x01;
    /// M: more to send (ENRP_HANDLE_TABLE_RESPONSE).
    pub const MORE: u8 = 0x02;
    /// T: takeover suggested (ENRP_HANDLE_UPDATE; draft-dreibholz-rserpool-enrp-takeover).
    pub const TAKEOVER_SUGGESTED: u8 = 0x01;
}

/// An ENRP message: the two server identifiers common to all, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrpMessage {
    /// Sending server's ID.
    pub sender: u32,
    /// Receiving server's ID (0 for group-casts).
    pub receiver: u32,
    /// Type-specific contents.
    pub body: EnrpBody,
}

/// The type-specific part of an ENRP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnrpBody {
    /// 0x01: heartbeat or probe.
    Presence {
        /// Reply-required flag (0x01).
        reply_required: bool,
        /// The sender's PE checksum.
        checksum: Option<u16>,
        /// The sender's server information.
        server_info: Option<ServerInfo>,
    },
    /// 0x02: ask for the handlespace.
    HandleTableRequest {
        /// W flag: only PEs owned by the receiver.
        own_children_only: bool,
    },
    /// 0x03: (part of) the handlespace.
    HandleTableResponse {
        /// R flag: rejected, no entries.
        reject: bool,
        /// M flag: more chunks follow.
        more: bool,
        /// Pool entries: each handle with its PEs.
        pools: Vec<(PoolHandle, Vec<PoolElement>)>,
    },
    /// 0x04: one PE added or removed.
    HandleUpdate {
        /// T flag: the receiver is asked to take the PE over.
        takeover_suggested: bool,
        /// ADD_PE or DEL_PE (other values kept).
        action: UpdateAction,
        /// The pool.
        pool_handle: PoolHandle,
        /// The PE, complete with ASAP transport.
        pe: PoolElement,
    },
    /// 0x05: ask a mentor for its peer list.
    ListRequest,
    /// 0x06: the peer list.
    ListResponse {
        /// R flag: rejected, no entries.
        reject: bool,
        /// The known peers.
        servers: Vec<ServerInfo>,
    },
    /// 0x07: start taking over `target`'s PEs.
    InitTakeover {
        /// The failed server.
        target: u32,
    },
    /// 0x08: agree to a takeover of `target`.
    InitTakeoverAck {
        /// The failed server.
        target: u32,
    },
    /// 0x09: takeover of `target` done.
    TakeoverServer {
        /// The failed server.
        target: u32,
    },
    /// 0x0a: report of an unrecognized message or parameter.
    Error(Vec<ErrorCause>),
}

fn is_enrp_type(t: u8) -> bool {
    (enrp_type::PRESENCE..=enrp_type::ERROR).contains(&t)
}

impl EnrpMessage {
    /// The message type code.
    pub fn message_type(&self) -> u8 {
        use enrp_type::*;
        match &self.body {
            EnrpBody::Presence { .. } => PRESENCE,
            EnrpBody::HandleTableRequest { .. } => HANDLE_TABLE_REQUEST,
            EnrpBody::HandleTableResponse { .. } => HANDLE_TABLE_RESPONSE,
            EnrpBody::HandleUpdate { .. } => HANDLE_UPDATE,
            EnrpBody::ListRequest => LIST_REQUEST,
            EnrpBody::ListResponse { .. } => LIST_RESPONSE,
            EnrpBody::InitTakeover { .. } => INIT_TAKEOVER,
            EnrpBody::InitTakeoverAck { .. } => INIT_TAKEOVER_ACK,
            EnrpBody::TakeoverServer { .. } => TAKEOVER_SERVER,
            EnrpBody::Error(_) => ERROR,
        }
    }

    /// The IANA name, e.g. `ENRP_PRESENCE`.
    pub fn name(&self) -> &'static str {
        enrp_type::name(self.message_type())
    }

    /// The flags byte this message is sent with.
    pub fn flags(&self) -> u8 {
        match &self.body {
            EnrpBody::Presence {
                reply_required: f, ..
            }
            | EnrpBody::HandleTableRequest {
                own_children_only: f,
            }
            | EnrpBody::ListResponse { reject: f, .. }
            | EnrpBody::HandleUpdate {
                takeover_suggested: f,
                ..
            } => u8::from(*f),
            EnrpBody::HandleTableResponse { reject, more, .. } => {
                u8::from(*reject) | if *more { enrp_flag::MORE } else { 0 }
            }
            _ => 0,
        }
    }

    /// Wire size: the bytes [`encode`](Self::encode) appends, final padding included.
    pub fn encoded_len(&self) -> usize {
        12 + match &self.body {
            EnrpBody::Presence {
                checksum,
                server_info,
                ..
            } => {
                checksum.map_or(0, |_| CHECKSUM_LEN)
                    + server_info.as_ref().map_or(0, Param::param_len)
            }
            EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => 0,
            EnrpBody::HandleTableResponse { pools, .. } => pools
                .iter()
                .map(|(h, pes)| h.param_len() + pes.iter().map(Param::param_len).sum::<usize>())
                .sum(),
            EnrpBody::HandleUpdate {
                pool_handle, pe, ..
            } => 4 + pool_handle.param_len() + pe.param_len(),
            EnrpBody::ListResponse { servers, .. } => servers.iter().map(Param::param_len).sum(),
            EnrpBody::InitTakeover { .. }
            | EnrpBody::InitTakeoverAck { .. }
            | EnrpBody::TakeoverServer { .. } => 4,
            EnrpBody::Error(causes) => operation_error_len(causes),
        }
    }

    /// Append the message in RFC form (Length excludes the final padding, the
    /// bytes are padded to 4). The encoding must fit in 65535 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.reserve(self.encoded_len());
        let start = begin_message(out, self.message_type(), self.flags());
        out.extend_from_slice(&self.sender.to_be_bytes());
        out.extend_from_slice(&self.receiver.to_be_bytes());
        let mut pad = 0;
        match &self.body {
            EnrpBody::Presence {
                checksum,
                server_info,
                ..
            } => {
                if let Some(c) = checksum {
                    pad = encode_checksum(*c, out);
                }
                if let Some(s) = server_info {
                    pad = s.encode_param(out);
                }
            }
            EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {}
            EnrpBody::HandleTableResponse { pools, .. } => {
                for (h, pes) in pools {
                    pad = h.encode_param(out);
                    for pe in pes {
                        pad = pe.encode_param(out);
                    }
                }
            }
            EnrpBody::HandleUpdate {
                action,
                pool_handle,
                pe,
                ..
            } => {
                out.extend_from_slice(&action.0.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                pool_handle.encode_param(out);
                pad = pe.encode_param(out);
            }
            EnrpBody::ListResponse { servers, .. } => {
                for s in servers {
                    pad = s.encode_param(out);
                }
            }
            EnrpBody::InitTakeover { target }
            | EnrpBody::InitTakeoverAck { target }
            | EnrpBody::TakeoverServer { target } => out.extend_from_slice(&target.to_be_bytes()),
            EnrpBody::Error(causes) => pad = encode_operation_error(causes, out),
        }
        end_tlv(out, start, pad);
    }

    /// The encoding in a new buffer.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// Decode one ENRP message (the whole buffer; digest §2 receive rules).
    /// Never panics.
    pub fn decode(buf: &[u8]) -> Result<Decoded<EnrpMessage>, DecodeError> {
        use enrp_type::*;
        let h = header(buf, is_enrp_type)?;
        let fixed = match h.ty {
            HANDLE_UPDATE | INIT_TAKEOVER | INIT_TAKEOVER_ACK | TAKEOVER_SERVER => 4,
            _ => 0,
        };
        require_len(&h, 12 + fixed)?;
        let sender = be32(buf, 4);
        let receiver = be32(buf, 8);
        let mut unrec = Vec::new();
        let cur = Cursor::new(buf, 12 + fixed, h.len);
        let mut p = Params::new(buf, cur, &mut unrec, enrp_type::name(h.ty));
        let f1 = h.flags & 0x01 != 0;
        let body = match h.ty {
            PRESENCE => {
                let checksum = match p.take_if(ptype::PE_CHECKSUM)? {
                    Some(t) => Some(decode_checksum(&t)?),
                    None => None,
                };
                let server_info = match p.take_if(ptype::SERVER_INFORMATION)? {
                    Some(t) => Some(decode_server_info(p.buf(), t, p.unrec())?),
                    None => None,
                };
                EnrpBody::Presence {
                    reply_required: f1,
                    checksum,
                    server_info,
                }
            }
            HANDLE_TABLE_REQUEST => EnrpBody::HandleTableRequest {
                own_children_only: f1,
            },
            HANDLE_TABLE_RESPONSE => {
                let mut pools = Vec::new();
                while let Some(t) = p.take_if(ptype::POOL_HANDLE)? {
                    let handle = PoolHandle(t.value.to_vec());
                    pools.push((handle, take_elements(&mut p)?));
                }
                EnrpBody::HandleTableResponse {
                    reject: f1,
                    more: h.flags & enrp_flag::MORE != 0,
                    pools,
                }
            }
            HANDLE_UPDATE => {
                let action = UpdateAction(be16(buf, 12));
                let pool_handle = take_pool_handle(&mut p)?;
                let t = p.expect(ptype::POOL_ELEMENT, "pool element")?;
                let pe = decode_pool_element(p.buf(), t, p.unrec())?;
                EnrpBody::HandleUpdate {
                    takeover_suggested: f1,
                    action,
                    pool_handle,
                    pe,
                }
            }
            LIST_REQUEST => EnrpBody::ListRequest,
            LIST_RESPONSE => {
                let mut servers = Vec::new();
                while let Some(t) = p.take_if(ptype::SERVER_INFORMATION)? {
                    servers.push(decode_server_info(p.buf(), t, p.unrec())?);
                }
                EnrpBody::ListResponse {
                    reject: f1,
                    servers,
                }
            }
            INIT_TAKEOVER | INIT_TAKEOVER_ACK | TAKEOVER_SERVER => {
                let target = be32(buf, 12);
                match h.ty {
                    INIT_TAKEOVER => EnrpBody::InitTakeover { target },
                    INIT_TAKEOVER_ACK => EnrpBody::InitTakeoverAck { target },
                    _ => EnrpBody::TakeoverServer { target },
                }
            }
            _ => {
                let t = p.expect(ptype::OPERATION_ERROR, "operation error")?;
                EnrpBody::Error(decode_causes(buf, &t)?)
            }
        };
        p.finish()?;
        Ok(Decoded {
            msg: EnrpMessage {
                sender,
                receiver,
                body,
            },
            flags: h.flags,
            unrecognized: unrec,
        })
    }
}
