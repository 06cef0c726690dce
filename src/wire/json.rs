//! JSON renderings (`serde_json::Value`) of messages and parameters, shared by
//! `rserpool decode`, `resolve --json` and `dump --json`.
//!
//! Conventions: pool handles are a string — the text when every byte is
//! printable ASCII, else `0x` followed by hex; identifiers are numbers with a
//! `*_hex` companion; opaque bytes are lowercase hex strings.

use serde_json::{json, Map, Value};

use super::asap::AsapMessage;
use super::enrp::{enrp_flag, EnrpBody, EnrpMessage};
use super::msg::Decoded;
use super::param::Param;
use super::types::*;

/// Lowercase hex of `b`, no prefix.
pub fn hex(b: &[u8]) -> String {
    let mut s = String::with_capacity(2 * b.len());
    for x in b {
        s.push_str(&format!("{x:02x}"));
    }
    s
}

fn hex32(v: u32) -> String {
    format!("0x{v:08x}")
}

/// A pool handle: its text if printable, else `0x` + hex.
pub fn pool_handle(h: &PoolHandle) -> Value {
    match h.as_printable() {
        Some(s) => Value::String(s.to_string()),
        None => Value::String(format!("0x{}", hex(&h.0))),
    }
}

/// A transport: protocol, parameter type, port, Transport Use, addresses, URL.
pub fn transport(t: &Transport) -> Value {
    let mut m = Map::new();
    m.insert("protocol".into(), json!(t.scheme()));
    m.insert("type".into(), json!(t.param_type()));
    if let Transport::Opaque(b) = t {
        m.insert("data".into(), json!(hex(b)));
    } else {
        m.insert("port".into(), json!(t.port()));
        m.insert("transport_use".into(), json!(t.transport_use()));
        if matches!(t, Transport::Sctp { .. } | Transport::Tcp { .. }) {
            let name = match t.transport_use() {
                transport_use::DATA_ONLY => "data only",
                transport_use::DATA_PLUS_CONTROL => "data plus control",
                _ => "unknown",
            };
            m.insert("transport_use_name".into(), json!(name));
        }
        if let Transport::Dccp { service_code, .. } = t {
            m.insert("service_code".into(), json!(service_code));
        }
        let addrs: Vec<Value> = t.addrs().iter().map(|a| json!(a.to_string())).collect();
        m.insert("addresses".into(), Value::Array(addrs));
    }
    m.insert("url".into(), json!(t.to_string()));
    Value::Object(m)
}

/// A policy: name, type number (and hex), and its values.
pub fn policy(p: &Policy) -> Value {
    let mut m = Map::new();
    m.insert("name".into(), json!(p.name()));
    m.insert("type".into(), json!(p.policy_type()));
    m.insert("type_hex".into(), json!(hex32(p.policy_type())));
    let mut put = |k: &str, v: u32| {
        m.insert(k.into(), json!(v));
    };
    match p {
        Policy::RoundRobin | Policy::Random => {}
        Policy::WeightedRoundRobin { weight } | Policy::WeightedRandom { weight } => {
            put("weight", *weight)
        }
        Policy::Priority { priority } => put("priority", *priority),
        Policy::LeastUsed { load } | Policy::RandomizedLeastUsed { load } => put("load", *load),
        Policy::LeastUsedDegradation { load, degradation }
        | Policy::PriorityLeastUsed { load, degradation } => {
            put("load", *load);
            put("degradation", *degradation);
        }
        Policy::Other { data, .. } => {
            m.insert("data".into(), json!(hex(data)));
        }
    }
    Value::Object(m)
}

/// A pool element with all its fields.
pub fn pool_element(pe: &PoolElement) -> Value {
    json!({
        "id": pe.id,
        "id_hex": hex32(pe.id),
        "home": pe.home,
        "home_hex": hex32(pe.home),
        "reg_life": pe.reg_life,
        "user_transport": transport(&pe.user_transport),
        "policy": policy(&pe.policy),
        "asap_transport": pe.asap_transport.as_ref().map(transport),
    })
}

/// A server information parameter.
pub fn server_info(s: &ServerInfo) -> Value {
    json!({
        "server_id": s.server_id,
        "server_id_hex": hex32(s.server_id),
        "transport": transport(&s.transport),
    })
}

/// An error cause: code, name, raw info, and the decoded policy (0x5) or
/// transport (0x7) when the info holds one.
pub fn error_cause(c: &ErrorCause) -> Value {
    let mut m = Map::new();
    m.insert("code".into(), json!(c.code));
    m.insert("name".into(), json!(cause::name(c.code)));
    m.insert("info".into(), json!(hex(&c.info)));
    match c.code {
        cause::INCONSISTENT_POLICY => {
            if let Ok(p) = Policy::decode_param(&c.info) {
                m.insert("policy".into(), policy(&p));
            }
        }
        cause::INCONSISTENT_TRANSPORT => {
            if let Ok(t) = Transport::decode_param(&c.info) {
                m.insert("transport".into(), transport(&t));
            }
        }
        cause::UNRECOGNIZED_PARAMETER | cause::INVALID_VALUES if c.info.len() >= 2 => {
            m.insert(
                "parameter_type".into(),
                json!(u16::from_be_bytes([c.info[0], c.info[1]])),
            );
        }
        _ => {}
    }
    Value::Object(m)
}

/// A list of error causes.
pub fn error_causes(causes: &[ErrorCause]) -> Value {
    Value::Array(causes.iter().map(error_cause).collect())
}

fn flags_obj(raw: u8, named: &[(&str, bool)]) -> Value {
    let mut m = Map::new();
    m.insert("raw".into(), json!(raw));
    for (k, v) in named {
        m.insert((*k).into(), json!(v));
    }
    Value::Object(m)
}

fn elements(v: &[PoolElement]) -> Value {
    Value::Array(v.iter().map(pool_element).collect())
}

/// An ASAP message, with flags as sent by us ([`AsapMessage::flags`]).
pub fn asap_message(msg: &AsapMessage) -> Value {
    asap_with_flags(msg, msg.flags())
}

/// A decoded ASAP message: the raw received flags and the skipped-and-reported
/// unknown parameters (`unrecognized`) are included.
pub fn asap_decoded(d: &Decoded<AsapMessage>) -> Value {
    let mut v = asap_with_flags(&d.msg, d.flags);
    v["unrecognized"] = error_causes(&d.unrecognized);
    v
}

fn asap_with_flags(msg: &AsapMessage, raw: u8) -> Value {
    let bit = raw & 0x01 != 0;
    let mut m = Map::new();
    m.insert("protocol".into(), json!("ASAP"));
    m.insert("type".into(), json!(msg.name()));
    m.insert("type_code".into(), json!(msg.message_type()));
    let named: &[(&str, bool)] = match msg {
        AsapMessage::RegistrationResponse { .. } => &[("reject", bit)],
        AsapMessage::HandleResolution { .. } => &[("subscribe", bit)],
        AsapMessage::HandleResolutionResponse { .. } => &[("accepted", bit)],
        AsapMessage::EndpointKeepAlive { .. } => &[("home", bit)],
        _ => &[],
    };
    m.insert("flags".into(), flags_obj(raw, named));
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match msg {
        AsapMessage::Registration { pool_handle: h, pe } => {
            put("pool_handle", pool_handle(h));
            put("pool_element", pool_element(pe));
        }
        AsapMessage::Deregistration {
            pool_handle: h,
            pe_id,
        }
        | AsapMessage::EndpointKeepAliveAck {
            pool_handle: h,
            pe_id,
        }
        | AsapMessage::EndpointUnreachable {
            pool_handle: h,
            pe_id,
        } => {
            put("pool_handle", pool_handle(h));
            put("pe_id", json!(pe_id));
            put("pe_id_hex", json!(hex32(*pe_id)));
        }
        AsapMessage::RegistrationResponse {
            pool_handle: h,
            pe_id,
            error,
            ..
        }
        | AsapMessage::DeregistrationResponse {
            pool_handle: h,
            pe_id,
            error,
        } => {
            put("pool_handle", pool_handle(h));
            put("pe_id", json!(pe_id));
            put("pe_id_hex", json!(hex32(*pe_id)));
            put("error", error.as_deref().map_or(Value::Null, error_causes));
        }
        AsapMessage::HandleResolution {
            pool_handle: h,
            items,
            ..
        } => {
            put("pool_handle", pool_handle(h));
            put("items", json!(items));
        }
        AsapMessage::HandleResolutionResponse {
            pool_handle: h,
            policy: p,
            elements: e,
            error,
            ..
        } => {
            put("pool_handle", pool_handle(h));
            put("policy", p.as_ref().map_or(Value::Null, policy));
            put("pool_elements", elements(e));
            put("error", error.as_deref().map_or(Value::Null, error_causes));
        }
        AsapMessage::EndpointKeepAlive {
            server_id,
            pool_handle: h,
            pe_id,
            ..
        } => {
            put("server_id", json!(server_id));
            put("server_id_hex", json!(hex32(*server_id)));
            put("pool_handle", pool_handle(h));
            put("pe_id", json!(pe_id));
        }
        AsapMessage::ServerAnnounce {
            server_id,
            transports,
        } => {
            put("server_id", json!(server_id));
            put("server_id_hex", json!(hex32(*server_id)));
            put(
                "transports",
                Value::Array(transports.iter().map(transport).collect()),
            );
        }
        AsapMessage::Cookie(c) | AsapMessage::CookieEcho(c) => {
            put("cookie", json!(hex(c)));
            if let Ok(s) = std::str::from_utf8(c) {
                if s.chars().all(|ch| (' '..='~').contains(&ch)) {
                    put("cookie_text", json!(s));
                }
            }
        }
        AsapMessage::BusinessCard {
            pool_handle: h,
            policy: p,
            elements: e,
        } => {
            put("pool_handle", pool_handle(h));
            put("policy", p.as_ref().map_or(Value::Null, policy));
            put("pool_elements", elements(e));
        }
        AsapMessage::Error(causes) => put("error", error_causes(causes)),
    }
    Value::Object(m)
}

/// An ENRP message, with flags as sent by us ([`EnrpMessage::flags`]).
pub fn enrp_message(msg: &EnrpMessage) -> Value {
    enrp_with_flags(msg, msg.flags())
}

/// A decoded ENRP message, with raw received flags and `unrecognized`.
pub fn enrp_decoded(d: &Decoded<EnrpMessage>) -> Value {
    let mut v = enrp_with_flags(&d.msg, d.flags);
    v["unrecognized"] = error_causes(&d.unrecognized);
    v
}

fn enrp_with_flags(msg: &EnrpMessage, raw: u8) -> Value {
    let bit = raw & 0x01 != 0;
    let mut m = Map::new();
    m.insert("protocol".into(), json!("ENRP"));
    m.insert("type".into(), json!(msg.name()));
    m.insert("type_code".into(), json!(msg.message_type()));
    let more = raw & enrp_flag::MORE != 0;
    let named: Vec<(&str, bool)> = match &msg.body {
        EnrpBody::Presence { .. } => vec![("reply_required", bit)],
        EnrpBody::HandleTableRequest { .. } => vec![("own_children_only", bit)],
        EnrpBody::HandleTableResponse { .. } => vec![("reject", bit), ("more", more)],
        EnrpBody::HandleUpdate { .. } => vec![("takeover_suggested", bit)],
        EnrpBody::ListResponse { .. } => vec![("reject", bit)],
        _ => vec![],
    };
    m.insert("flags".into(), flags_obj(raw, &named));
    m.insert("sender".into(), json!(msg.sender));
    m.insert("sender_hex".into(), json!(hex32(msg.sender)));
    m.insert("receiver".into(), json!(msg.receiver));
    m.insert("receiver_hex".into(), json!(hex32(msg.receiver)));
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), v);
    };
    match &msg.body {
        EnrpBody::Presence {
            checksum,
            server_info: s,
            ..
        } => {
            put("checksum", json!(checksum));
            put(
                "checksum_hex",
                json!(checksum.map(|c| format!("0x{c:04x}"))),
            );
            put("server_info", s.as_ref().map_or(Value::Null, server_info));
        }
        EnrpBody::HandleTableRequest { .. } | EnrpBody::ListRequest => {}
        EnrpBody::HandleTableResponse { pools, .. } => {
            let v = pools
                .iter()
                .map(|(h, pes)| json!({"pool_handle": pool_handle(h), "pool_elements": elements(pes)}))
                .collect();
            put("pools", Value::Array(v));
        }
        EnrpBody::HandleUpdate {
            action,
            pool_handle: h,
            pe,
            ..
        } => {
            let name = match *action {
                UpdateAction::ADD_PE => "ADD_PE",
                UpdateAction::DEL_PE => "DEL_PE",
                _ => "unknown",
            };
            put("action", json!(action.0));
            put("action_name", json!(name));
            put("pool_handle", pool_handle(h));
            put("pool_element", pool_element(pe));
        }
        EnrpBody::ListResponse { servers, .. } => {
            put(
                "servers",
                Value::Array(servers.iter().map(server_info).collect()),
            );
        }
        EnrpBody::InitTakeover { target }
        | EnrpBody::InitTakeoverAck { target }
        | EnrpBody::TakeoverServer { target } => {
            put("target", json!(target));
            put("target_hex", json!(hex32(*target)));
        }
        EnrpBody::Error(causes) => put("error", error_causes(causes)),
    }
    Value::Object(m)
}
