//! Property tests: every ASAP and ENRP message with arbitrary contents survives
//! encode → decode unchanged, `encoded_len` is exact, and decoding arbitrary
//! (or mutated) bytes never panics.

use std::net::IpAddr;

use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use rserpool::wire::param::standard_policy_data_len;
use rserpool::wire::*;

fn addr() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
    vec(any::<u8>(), 0..max)
}

fn handle() -> impl Strategy<Value = PoolHandle> {
    prop_oneof![
        "[a-zA-Z0-9]{0,12}".prop_map(|s| PoolHandle::from(s.as_str())),
        bytes(20).prop_map(PoolHandle),
    ]
}

fn sctp() -> impl Strategy<Value = Transport> {
    (any::<u16>(), any::<u16>(), vec(addr(), 1..4)).prop_map(|(port, transport_use, addrs)| {
        Transport::Sctp {
            port,
            transport_use,
            addrs,
        }
    })
}

fn tcp() -> impl Strategy<Value = Transport> {
    (any::<u16>(), any::<u16>(), addr()).prop_map(|(port, transport_use, addr)| Transport::Tcp {
        port,
        transport_use,
        addr,
    })
}

fn transport() -> impl Strategy<Value = Transport> {
    prop_oneof![
        sctp(),
        tcp(),
        (any::<u16>(), addr()).prop_map(|(port, addr)| Transport::Udp { port, addr }),
        (any::<u16>(), addr()).prop_map(|(port, addr)| Transport::UdpLite { port, addr }),
        (any::<u16>(), any::<u32>(), addr()).prop_map(|(port, service_code, addr)| {
            Transport::Dccp {
                port,
                service_code,
                addr,
            }
        }),
        bytes(12).prop_map(Transport::Opaque),
    ]
}

fn policy() -> impl Strategy<Value = Policy> {
    let u = any::<u32>;
    prop_oneof![
        Just(Policy::RoundRobin),
        Just(Policy::Random),
        u().prop_map(|weight| Policy::WeightedRoundRobin { weight }),
        u().prop_map(|weight| Policy::WeightedRandom { weight }),
        u().prop_map(|priority| Policy::Priority { priority }),
        u().prop_map(|load| Policy::LeastUsed { load }),
        u().prop_map(|load| Policy::RandomizedLeastUsed { load }),
        (u(), u())
            .prop_map(|(load, degradation)| Policy::LeastUsedDegradation { load, degradation }),
        (u(), u()).prop_map(|(load, degradation)| Policy::PriorityLeastUsed { load, degradation }),
        (u(), bytes(14))
            .prop_filter("standard types decode to their own variant", |(t, _)| {
                standard_policy_data_len(*t).is_none()
            })
            .prop_map(|(policy_type, data)| Policy::Other { policy_type, data }),
    ]
}

fn pool_element() -> impl Strategy<Value = PoolElement> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<i32>(),
        transport(),
        policy(),
        option::of(transport()),
    )
        .prop_map(
            |(id, home, reg_life, user_transport, policy, asap_transport)| PoolElement {
                id,
                home,
                reg_life,
                user_transport,
                policy,
                asap_transport,
            },
        )
}

fn causes() -> impl Strategy<Value = Vec<ErrorCause>> {
    vec(
        (any::<u16>(), bytes(10)).prop_map(|(c, i)| ErrorCause::with_info(c, i)),
        0..4,
    )
}

fn server_info() -> impl Strategy<Value = ServerInfo> {
    (any::<u32>(), transport()).prop_map(|(server_id, transport)| ServerInfo {
        server_id,
        transport,
    })
}

fn asap() -> impl Strategy<Value = AsapMessage> {
    let b = any::<bool>;
    let id = any::<u32>;
    prop_oneof![
        (handle(), pool_element())
            .prop_map(|(pool_handle, pe)| AsapMessage::Registration { pool_handle, pe }),
        (handle(), id())
            .prop_map(|(pool_handle, pe_id)| AsapMessage::Deregistration { pool_handle, pe_id }),
        (b(), handle(), id(), option::of(causes())).prop_map(
            |(reject, pool_handle, pe_id, error)| {
                AsapMessage::RegistrationResponse {
                    reject,
                    pool_handle,
                    pe_id,
                    error,
                }
            }
        ),
        (handle(), id(), option::of(causes())).prop_map(|(pool_handle, pe_id, error)| {
            AsapMessage::DeregistrationResponse {
                pool_handle,
                pe_id,
                error,
            }
        }),
        (b(), handle(), option::of(id())).prop_map(|(subscribe, pool_handle, items)| {
            AsapMessage::HandleResolution {
                subscribe,
                pool_handle,
                items,
            }
        }),
        (
            b(),
            handle(),
            option::of(policy()),
            vec(pool_element(), 0..4),
            option::of(causes())
        )
            .prop_map(|(accepted, pool_handle, policy, elements, error)| {
                AsapMessage::HandleResolutionResponse {
                    accepted,
                    pool_handle,
                    policy,
                    elements,
                    error,
                }
            }),
        (b(), id(), handle(), option::of(id())).prop_map(
            |(home, server_id, pool_handle, pe_id)| {
                AsapMessage::EndpointKeepAlive {
                    home,
                    server_id,
                    pool_handle,
                    pe_id,
                }
            }
        ),
        (handle(), id()).prop_map(|(pool_handle, pe_id)| AsapMessage::EndpointKeepAliveAck {
            pool_handle,
            pe_id
        }),
        (handle(), id()).prop_map(|(pool_handle, pe_id)| AsapMessage::EndpointUnreachable {
            pool_handle,
            pe_id
        }),
        (id(), vec(prop_oneof![sctp(), tcp()], 0..4)).prop_map(|(server_id, transports)| {
            AsapMessage::ServerAnnounce {
                server_id,
                transports,
            }
        }),
        bytes(40).prop_map(AsapMessage::Cookie),
        bytes(40).prop_map(AsapMessage::CookieEcho),
        (handle(), option::of(policy()), vec(pool_element(), 0..4)).prop_map(
            |(pool_handle, policy, elements)| AsapMessage::BusinessCard {
                pool_handle,
                policy,
                elements,
            }
        ),
        causes().prop_map(AsapMessage::Error),
    ]
}

fn enrp_body() -> impl Strategy<Value = EnrpBody> {
    let b = any::<bool>;
    let id = any::<u32>;
    prop_oneof![
        (b(), option::of(any::<u16>()), option::of(server_info())).prop_map(
            |(reply_required, checksum, server_info)| EnrpBody::Presence {
                reply_required,
                checksum,
                server_info,
            }
        ),
        b().prop_map(|own_children_only| EnrpBody::HandleTableRequest { own_children_only }),
        (b(), b(), vec((handle(), vec(pool_element(), 0..3)), 0..3)).prop_map(
            |(reject, more, pools)| EnrpBody::HandleTableResponse {
                reject,
                more,
                pools
            }
        ),
        (b(), any::<u16>(), handle(), pool_element()).prop_map(
            |(takeover_suggested, action, pool_handle, pe)| EnrpBody::HandleUpdate {
                takeover_suggested,
                action: UpdateAction(action),
                pool_handle,
                pe,
            }
        ),
        Just(EnrpBody::ListRequest),
        (b(), vec(server_info(), 0..4))
            .prop_map(|(reject, servers)| EnrpBody::ListResponse { reject, servers }),
        id().prop_map(|target| EnrpBody::InitTakeover { target }),
        id().prop_map(|target| EnrpBody::InitTakeoverAck { target }),
        id().prop_map(|target| EnrpBody::TakeoverServer { target }),
        causes().prop_map(EnrpBody::Error),
    ]
}

fn enrp() -> impl Strategy<Value = EnrpMessage> {
    (any::<u32>(), any::<u32>(), enrp_body()).prop_map(|(sender, receiver, body)| EnrpMessage {
        sender,
        receiver,
        body,
    })
}

/// Bytes that look a bit like messages: a plausible header, then TLV-ish noise.
fn messagey() -> impl Strategy<Value = Vec<u8>> {
    (0u8..0x10, any::<u8>(), vec(any::<u8>(), 0..120)).prop_map(|(t, f, mut body)| {
        let len = (body.len() + 4) as u16;
        let mut v = vec![t, f];
        v.extend_from_slice(&len.to_be_bytes());
        v.append(&mut body);
        v
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn asap_roundtrip(m in asap()) {
        let wire = m.to_bytes();
        prop_assert_eq!(wire.len(), m.encoded_len());
        prop_assert_eq!(wire.len() % 4, 0);
        let d = AsapMessage::decode(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(d.flags, m.flags());
        prop_assert!(d.unrecognized.is_empty());
        prop_assert_eq!(d.msg, m);
    }

    #[test]
    fn enrp_roundtrip(m in enrp()) {
        let wire = m.to_bytes();
        prop_assert_eq!(wire.len(), m.encoded_len());
        prop_assert_eq!(wire.len() % 4, 0);
        let d = EnrpMessage::decode(&wire).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(d.flags, m.flags());
        prop_assert_eq!(d.msg, m);
    }

    #[test]
    fn single_params_roundtrip(pe in pool_element(), si in server_info(), p in policy()) {
        prop_assert_eq!(PoolElement::decode_param(&param::param_bytes(&pe)).unwrap(), pe);
        prop_assert_eq!(ServerInfo::decode_param(&param::param_bytes(&si)).unwrap(), si);
        prop_assert_eq!(Policy::decode_param(&param::param_bytes(&p)).unwrap(), p);
    }

    #[test]
    fn arbitrary_bytes_never_panic(b in vec(any::<u8>(), 0..200)) {
        let _ = AsapMessage::decode(&b);
        let _ = EnrpMessage::decode(&b);
        let _ = PoolElement::decode_param(&b);
        let _ = Transport::decode_param(&b);
    }

    #[test]
    fn messagey_bytes_never_panic_and_reencode(b in messagey()) {
        if let Ok(d) = AsapMessage::decode(&b) {
            prop_assert_eq!(AsapMessage::decode(&d.msg.to_bytes()).unwrap().msg, d.msg);
        }
        if let Ok(d) = EnrpMessage::decode(&b) {
            prop_assert_eq!(EnrpMessage::decode(&d.msg.to_bytes()).unwrap().msg, d.msg);
        }
    }

    #[test]
    fn mutated_messages_never_panic(m in asap(), e in enrp(), at in any::<usize>(), x in any::<u8>()) {
        for mut wire in [m.to_bytes(), e.to_bytes()] {
            let i = at % wire.len();
            wire[i] ^= x;
            if let Ok(d) = AsapMessage::decode(&wire) {
                prop_assert_eq!(AsapMessage::decode(&d.msg.to_bytes()).unwrap().msg, d.msg);
            }
            if let Ok(d) = EnrpMessage::decode(&wire) {
                prop_assert_eq!(EnrpMessage::decode(&d.msg.to_bytes()).unwrap().msg, d.msg);
            }
            for cut in [i, wire.len().saturating_sub(1)] {
                let _ = AsapMessage::decode(&wire[..cut]);
                let _ = EnrpMessage::decode(&wire[..cut]);
            }
        }
    }
}
