//! The digest §13 test vectors in both directions, byte-exact, plus the
//! negative cases of the receive rules (digest §2).

use std::net::{IpAddr, Ipv4Addr};

use rserpool::wire::param::param_bytes;
use rserpool::wire::*;

fn unhex(s: &str) -> Vec<u8> {
    let d: Vec<u8> = s
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_digit(16).unwrap() as u8)
        .collect();
    d.chunks(2).map(|p| p[0] << 4 | p[1]).collect()
}

fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(a, b, c, d))
}

const V1: &str = "01000044 0009000c 4563686f 506f6f6c 000a0034 12345678 00000000 0000012c
00040018 13880000 00010008 0a000001 00010008 0a000101 0008000c 40000001 40000000";
const V2: &str = "03010028 0009000c 4563686f 506f6f6c 000e0008 12345678 000c0010 0005000c
00080008 00000001";
const V3: &str = "0500000b 00090007 61626300";
const V4: &str = "05000014 00090007 61626300 803f0008 00000003";
const V5: &str = "0600001c 0009000e 4e6f5375 6368506f 6f6c0000 000c0008 00090004";
const V6: &str = "07010014 cafebabe 0009000c 4563686f 506f6f6c";
const V7: &str = "0b000011 000d000d 73746174 652d7631 21000000";
const V8: &str = "0e000014 000c0010 0001000c 41230008 01020304";
const V9: &str = "0101002c cafebabe 00000000 000f0006 ffff0000 000b0018 cafebabe 00040010
26ad0000 00010008 0a000009";
const V10: &str = "0201000c cafebabe deadbeef";
const V11: &str = "03020058 deadbeef cafebabe 0009000c 4563686f 506f6f6c 000a0040 12345678
deadbeef 0000012c 00040018 13880000 00010008 0a000001 00010008 0a000101
00080008 00000001 00040010 80e80000 00010008 0a000001";
const V12: &str = "0401005c deadbeef 00000000 00000000 0009000c 4563686f 506f6f6c 000a0040
12345678 deadbeef 0000012c 00040018 13880000 00010008 0a000001 00010008
0a000101 00080008 00000001 00040010 80e80000 00010008 0a000001";
const V13: &str = "07000010 cafebabe 00000000 deadbeef";

const ASAP_VECTORS: &[&str] = &[V1, V2, V3, V4, V5, V6, V7, V8];
const ENRP_VECTORS: &[&str] = &[V9, V10, V11, V12, V13];

fn echo() -> PoolHandle {
    PoolHandle::from("EchoPool")
}

fn user_sctp() -> Transport {
    Transport::Sctp {
        port: 5000,
        transport_use: 0,
        addrs: vec![v4(10, 0, 0, 1), v4(10, 0, 1, 1)],
    }
}

/// The PE of vectors 11/12: home 0xDEADBEEF, RR, ASAP transport SCTP 33000.
fn full_pe() -> PoolElement {
    PoolElement {
        id: 0x12345678,
        home: 0xDEADBEEF,
        reg_life: 300,
        user_transport: user_sctp(),
        policy: Policy::RoundRobin,
        asap_transport: Some(Transport::Sctp {
            port: 33000,
            transport_use: 0,
            addrs: vec![v4(10, 0, 0, 1)],
        }),
    }
}

fn asap_expected() -> Vec<(AsapMessage, u8)> {
    vec![
        (
            AsapMessage::Registration {
                pool_handle: echo(),
                pe: PoolElement {
                    id: 0x12345678,
                    home: 0,
                    reg_life: 300,
                    user_transport: user_sctp(),
                    policy: Policy::LeastUsed { load: 0x40000000 },
                    asap_transport: None,
                },
            },
            0,
        ),
        (
            AsapMessage::RegistrationResponse {
                reject: true,
                pool_handle: echo(),
                pe_id: 0x12345678,
                error: Some(vec![ErrorCause::with_info(
                    cause::INCONSISTENT_POLICY,
                    param_bytes(&Policy::RoundRobin),
                )]),
            },
            1,
        ),
        (
            AsapMessage::HandleResolution {
                subscribe: false,
                pool_handle: PoolHandle::from("abc"),
                items: None,
            },
            0,
        ),
        (
            AsapMessage::HandleResolution {
                subscribe: false,
                pool_handle: PoolHandle::from("abc"),
                items: Some(3),
            },
            0,
        ),
        (
            AsapMessage::HandleResolutionResponse {
                accepted: false,
                pool_handle: PoolHandle::from("NoSuchPool"),
                policy: None,
                elements: vec![],
                error: Some(vec![ErrorCause::new(cause::UNKNOWN_POOL_HANDLE)]),
            },
            0,
        ),
        (
            AsapMessage::EndpointKeepAlive {
                home: true,
                server_id: 0xCAFEBABE,
                pool_handle: echo(),
                pe_id: None,
            },
            1,
        ),
        (AsapMessage::Cookie(b"state-v1!".to_vec()), 0),
        (
            AsapMessage::Error(vec![ErrorCause::with_info(
                cause::UNRECOGNIZED_PARAMETER,
                unhex("41230008 01020304"),
            )]),
            0,
        ),
    ]
}

fn enrp_expected() -> Vec<(EnrpMessage, u8)> {
    vec![
        (
            EnrpMessage {
                sender: 0xCAFEBABE,
                receiver: 0,
                body: EnrpBody::Presence {
                    reply_required: true,
                    checksum: Some(0xFFFF),
                    server_info: Some(ServerInfo {
                        server_id: 0xCAFEBABE,
                        transport: Transport::Sctp {
                            port: 9901,
                            transport_use: 0,
                            addrs: vec![v4(10, 0, 0, 9)],
                        },
                    }),
                },
            },
            1,
        ),
        (
            EnrpMessage {
                sender: 0xCAFEBABE,
                receiver: 0xDEADBEEF,
                body: EnrpBody::HandleTableRequest {
                    own_children_only: true,
                },
            },
            1,
        ),
        (
            EnrpMessage {
                sender: 0xDEADBEEF,
                receiver: 0xCAFEBABE,
                body: EnrpBody::HandleTableResponse {
                    reject: false,
                    more: true,
                    pools: vec![(echo(), vec![full_pe()])],
                },
            },
            2,
        ),
        (
            EnrpMessage {
                sender: 0xDEADBEEF,
                receiver: 0,
                body: EnrpBody::HandleUpdate {
                    takeover_suggested: true,
                    action: UpdateAction::ADD_PE,
                    pool_handle: echo(),
                    pe: full_pe(),
                },
            },
            1,
        ),
        (
            EnrpMessage {
                sender: 0xCAFEBABE,
                receiver: 0,
                body: EnrpBody::InitTakeover { target: 0xDEADBEEF },
            },
            0,
        ),
    ]
}

#[test]
fn asap_vectors_decode_and_encode() {
    for (i, (hex, (msg, flags))) in ASAP_VECTORS.iter().zip(asap_expected()).enumerate() {
        let wire = unhex(hex);
        let d = AsapMessage::decode(&wire).unwrap_or_else(|e| panic!("vector {}: {e}", i + 1));
        assert_eq!(d.msg, msg, "vector {} decode", i + 1);
        assert_eq!(d.flags, flags, "vector {} flags", i + 1);
        assert!(d.unrecognized.is_empty());
        assert_eq!(msg.to_bytes(), wire, "vector {} encode", i + 1);
        assert_eq!(
            msg.encoded_len(),
            wire.len(),
            "vector {} encoded_len",
            i + 1
        );
    }
}

#[test]
fn enrp_vectors_decode_and_encode() {
    for (i, (hex, (msg, flags))) in ENRP_VECTORS.iter().zip(enrp_expected()).enumerate() {
        let wire = unhex(hex);
        let d = EnrpMessage::decode(&wire).unwrap_or_else(|e| panic!("vector {}: {e}", i + 9));
        assert_eq!(d.msg, msg, "vector {} decode", i + 9);
        assert_eq!(d.flags, flags, "vector {} flags", i + 9);
        assert_eq!(msg.to_bytes(), wire, "vector {} encode", i + 9);
        assert_eq!(
            msg.encoded_len(),
            wire.len(),
            "vector {} encoded_len",
            i + 9
        );
    }
}

#[test]
fn encode_appends() {
    let mut out = vec![0xAA];
    let (m, _) = &asap_expected()[2];
    m.encode(&mut out);
    assert_eq!(out[0], 0xAA);
    assert_eq!(&out[1..], &unhex(V3)[..]);
}

#[test]
fn rfc_length_and_unpadded_buffer_accepted() {
    // Vector 3: Length 11, wire 12. Also the buffer without the final pad.
    let wire = unhex(V3);
    assert!(AsapMessage::decode(&wire[..11]).is_ok());
    let wire = unhex(V7);
    let d = AsapMessage::decode(&wire[..17]).unwrap();
    assert_eq!(d.msg, AsapMessage::Cookie(b"state-v1!".to_vec()));
}

#[test]
fn rsplib_roundup_length_accepted() {
    // RSPLIB counts the final padding in the message Length: 11 -> 12, 17 -> 20.
    for (hex, new_len) in [(V3, 12u8), (V7, 20u8)] {
        let mut wire = unhex(hex);
        wire[3] = new_len;
        let a = AsapMessage::decode(&wire).unwrap();
        let b = AsapMessage::decode(&unhex(hex)).unwrap();
        assert_eq!(a.msg, b.msg);
    }
    // Keep-alive with RSPLIB's extra PE Identifier.
    let wire = unhex("0700001c cafebabe 0009000c 4563686f 506f6f6c 000e0008 12345678");
    match AsapMessage::decode(&wire).unwrap().msg {
        AsapMessage::EndpointKeepAlive { pe_id, home, .. } => {
            assert_eq!(pe_id, Some(0x12345678));
            assert!(!home);
        }
        m => panic!("{m:?}"),
    }
    // Business card with RSPLIB's policy TLV between handle and PEs.
    let pe = full_pe();
    let m = AsapMessage::BusinessCard {
        pool_handle: echo(),
        policy: Some(Policy::RoundRobin),
        elements: vec![pe],
    };
    assert_eq!(AsapMessage::decode(&m.to_bytes()).unwrap().msg, m);
}

#[test]
fn nested_container_may_count_last_child_padding() {
    // A PE whose last child (the policy, Other with 1 data byte) is padded: the PE
    // Length may exclude or include that padding.
    let pe = PoolElement {
        policy: Policy::Other {
            policy_type: 0xB000_0001,
            data: vec![7],
        },
        asap_transport: None,
        ..full_pe()
    };
    let m = AsapMessage::Registration {
        pool_handle: echo(),
        pe: pe.clone(),
    };
    let mut wire = m.to_bytes();
    // Message Length and PE Length exclude the policy's 3 pad bytes.
    let msg_len = u16::from_be_bytes([wire[2], wire[3]]) as usize;
    assert_eq!(msg_len, wire.len() - 3);
    let pe_off = 4 + 12;
    let pe_len = u16::from_be_bytes([wire[pe_off + 2], wire[pe_off + 3]]) as usize;
    assert_eq!(pe_off + pe_len, msg_len);
    // RSPLIB style: both count the padding.
    wire[3] += 3;
    wire[pe_off + 3] += 3;
    assert_eq!(AsapMessage::decode(&wire).unwrap().msg, m);
}

#[test]
fn truncation_at_every_position_is_an_error() {
    for hex in ASAP_VECTORS.iter().chain(ENRP_VECTORS) {
        let wire = unhex(hex);
        let length = u16::from_be_bytes([wire[2], wire[3]]) as usize;
        for cut in 0..wire.len() {
            let a = AsapMessage::decode(&wire[..cut]);
            let e = EnrpMessage::decode(&wire[..cut]);
            if cut < length {
                assert!(a.is_err() && e.is_err(), "{hex} cut at {cut}");
            }
        }
    }
}

#[test]
fn length_below_four_and_past_end() {
    // Pool handle Length 2.
    let mut wire = unhex(V3);
    wire[7] = 2;
    let e = AsapMessage::decode(&wire).unwrap_err();
    assert_eq!(e.offset, 4);
    assert!(matches!(
        e.kind,
        DecodeErrorKind::ParameterLengthTooSmall { length: 2, .. }
    ));
    assert_eq!(
        e.to_string(),
        "malformed message at byte 4: parameter length 2 is below 4"
    );
    assert_eq!(e.report(), None);
    // Pool handle Length past the message.
    let mut wire = unhex(V3);
    wire[7] = 9;
    let e = AsapMessage::decode(&wire).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::ParameterOverrun { .. }));
    // Message Length below 4, and past the buffer.
    let mut wire = unhex(V3);
    wire[3] = 3;
    assert!(matches!(
        AsapMessage::decode(&wire).unwrap_err().kind,
        DecodeErrorKind::MessageLengthTooSmall { .. }
    ));
    wire[3] = 16;
    assert!(matches!(
        AsapMessage::decode(&wire).unwrap_err().kind,
        DecodeErrorKind::MessageTruncated { .. }
    ));
    // Extra bytes beyond roundup4(Length).
    let mut wire = unhex(V3);
    wire.extend_from_slice(&[0; 4]);
    assert!(matches!(
        AsapMessage::decode(&wire).unwrap_err().kind,
        DecodeErrorKind::TrailingBytes { .. }
    ));
    // A nested address running past its transport.
    let mut wire = unhex(V1);
    wire[43] = 0x0c; // first IPv4 address Length 8 -> 12 (still inside the SCTP TLV)
    assert!(AsapMessage::decode(&wire).is_err());
    wire[43] = 0x20; // past the SCTP transport
    assert!(matches!(
        AsapMessage::decode(&wire).unwrap_err().kind,
        DecodeErrorKind::ParameterOverrun { .. }
    ));
}

/// Vector 4 with the option's type replaced by `t`.
fn with_unknown(t: u16) -> Vec<u8> {
    let mut wire = unhex(V4);
    wire[12..14].copy_from_slice(&t.to_be_bytes());
    wire
}

#[test]
fn unknown_parameter_action_bits() {
    // 00: stop, silent.
    let e = AsapMessage::decode(&with_unknown(0x0123)).unwrap_err();
    assert_eq!(e.offset, 12);
    assert!(e.is_silent_drop());
    assert_eq!(e.report(), None);
    // 01: stop, report cause 0x1 with the complete TLV.
    let e = AsapMessage::decode(&with_unknown(0x4123)).unwrap_err();
    assert!(!e.is_silent_drop());
    assert_eq!(
        e.report(),
        Some(ErrorCause::with_info(
            cause::UNRECOGNIZED_PARAMETER,
            unhex("41230008 00000003")
        ))
    );
    // 10: skip silently.
    let d = AsapMessage::decode(&with_unknown(0x8123)).unwrap();
    assert!(d.unrecognized.is_empty());
    assert_eq!(
        d.msg,
        AsapMessage::HandleResolution {
            subscribe: false,
            pool_handle: PoolHandle::from("abc"),
            items: None
        }
    );
    // 11: skip and report.
    let d = AsapMessage::decode(&with_unknown(0xC123)).unwrap();
    assert_eq!(
        d.unrecognized,
        vec![ErrorCause::with_info(
            cause::UNRECOGNIZED_PARAMETER,
            unhex("c1230008 00000003")
        )]
    );
    // The report round-trips through ASAP_ERROR like vector 8.
    let err = AsapMessage::Error(d.unrecognized.clone());
    assert_eq!(AsapMessage::decode(&err.to_bytes()).unwrap().msg, err);
    // The hropt type itself (0x803f, bits 10) is skipped outside handle resolution.
    let mut wire = unhex(V6);
    wire.extend_from_slice(&unhex("803f0008 00000003"));
    wire[3] = 28;
    assert!(AsapMessage::decode(&wire).unwrap().unrecognized.is_empty());
}

#[test]
fn unknown_parameter_nested_in_pe() {
    // Insert an unknown 11-TLV at the end of the PE of vector 1.
    let mut wire = unhex(V1);
    wire.extend_from_slice(&unhex("c0010006 abcd0000"));
    wire[3] = 68 + 6; // message Length excludes the final padding
    wire[19] = 0x34 + 6; // PE Length too
    let d = AsapMessage::decode(&wire).unwrap();
    assert_eq!(
        d.unrecognized,
        vec![ErrorCause::with_info(1, unhex("c0010006 abcd"))]
    );
    // Same with bits 00: the whole message is dropped.
    wire[68] = 0x01; // type 0x0101: unknown, bits 00
    let e = AsapMessage::decode(&wire).unwrap_err();
    assert_eq!(e.offset, 68);
    assert!(e.is_silent_drop());
}

#[test]
fn unknown_message_type() {
    let e = AsapMessage::decode(&unhex("0f000004")).unwrap_err();
    assert!(e.is_silent_drop());
    assert_eq!(e.report(), None);
    let e = AsapMessage::decode(&unhex("41000008 01020304")).unwrap_err();
    assert_eq!(
        e.report(),
        Some(ErrorCause::with_info(
            cause::UNRECOGNIZED_MESSAGE,
            unhex("41000008 01020304")
        ))
    );
    let e = EnrpMessage::decode(&unhex("4b00000c 00000001 00000000")).unwrap_err();
    assert_eq!(
        e.report().map(|c| c.code),
        Some(cause::UNRECOGNIZED_MESSAGE)
    );
    assert!(EnrpMessage::decode(&unhex("0b00000c 00000001 00000000"))
        .unwrap_err()
        .is_silent_drop());
    assert!(EnrpMessage::decode(&unhex("8b00000c 00000001 00000000"))
        .unwrap_err()
        .is_silent_drop());
}

#[test]
fn wrong_fixed_lengths() {
    // IPv4 address Length 12 with the transport grown to match.
    let pe_with_addr = |addr: &str| {
        let t = unhex(&format!("00040000 13880000 {addr}"));
        let mut t = t;
        let l = t.len() as u16;
        t[2..4].copy_from_slice(&l.to_be_bytes());
        t
    };
    for addr in [
        "0001000c 0a000001 00000000",
        "00020008 0a000001",
        "00010014 0a000001 00000000 00000000 00000000 00000000",
    ] {
        let t = pe_with_addr(addr);
        let e = Transport::decode_param(&t).unwrap_err();
        assert!(
            matches!(e.kind, DecodeErrorKind::InvalidValue { .. }),
            "{addr}: {e}"
        );
        assert_eq!(e.offset, 8);
        assert_eq!(e.report().unwrap().code, cause::INVALID_VALUES);
    }
    // PE Identifier Length 12.
    let wire = unhex("0200001c 0009000c 4563686f 506f6f6c 000e000c 12345678 00000000");
    let e = AsapMessage::decode(&wire).unwrap_err();
    assert_eq!(e.offset, 16);
    assert_eq!(
        e.report(),
        Some(ErrorCause::with_info(
            3,
            unhex("000e000c 12345678 00000000")
        ))
    );
    // PE checksum Length 8.
    let mut wire = unhex(V9);
    wire[15] = 8;
    assert!(matches!(
        EnrpMessage::decode(&wire).unwrap_err().kind,
        DecodeErrorKind::InvalidValue { .. }
    ));
    // hropt Length 12.
    let wire = unhex("05000018 00090007 61626300 803f000c 00000003 00000000");
    assert!(AsapMessage::decode(&wire).is_err());
    // LU policy without its load word.
    let e = Policy::decode_param(&unhex("00080008 40000001")).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::InvalidValue { .. }));
    // Unknown policy types are kept with their data.
    assert_eq!(
        Policy::decode_param(&unhex("0008000e b0002001 00000001 0002")).unwrap(),
        Policy::Other {
            policy_type: 0xB000_2001,
            data: vec![0, 0, 0, 1, 0, 2]
        }
    );
    // ENRP fixed-size messages shorter than their fixed fields.
    assert!(EnrpMessage::decode(&unhex("07000008 cafebabe")).is_err());
    assert!(EnrpMessage::decode(&unhex("0700000c cafebabe 00000000")).is_err());
    assert!(AsapMessage::decode(&unhex("07010004")).is_err());
}

#[test]
fn transport_address_counts() {
    // TCP with two addresses, SCTP with none.
    let tcp2 = unhex("00050018 00500000 00010008 0a000001 00010008 0a000002");
    assert!(Transport::decode_param(&tcp2).is_err());
    let sctp0 = unhex("00040008 00500000");
    assert!(Transport::decode_param(&sctp0).is_err());
    // An address TLV at message level is not allowed.
    let wire = unhex("0a000010 cafebabe 00010008 0a000001");
    assert!(matches!(
        AsapMessage::decode(&wire).unwrap_err().kind,
        DecodeErrorKind::UnexpectedParameter { .. }
    ));
    // Any Transport Use value in TCP is accepted and kept.
    let t = Transport::Tcp {
        port: 80,
        transport_use: 0xBEEF,
        addr: v4(1, 2, 3, 4),
    };
    assert_eq!(Transport::decode_param(&param_bytes(&t)).unwrap(), t);
}

#[test]
fn missing_mandatory_parameters() {
    let e = AsapMessage::decode(&unhex("01000010 0009000c 4563686f 506f6f6c")).unwrap_err();
    assert!(matches!(e.kind, DecodeErrorKind::MissingParameter { .. }));
    assert_eq!(e.offset, 16);
    assert!(AsapMessage::decode(&unhex("0e000004")).is_err());
    assert!(AsapMessage::decode(&unhex("05000004")).is_err());
}

#[test]
fn unknown_cause_codes_kept() {
    let m = AsapMessage::Error(vec![
        ErrorCause::with_info(0x100a, vec![1, 2, 3]),
        ErrorCause::new(0xF003),
    ]);
    let wire = m.to_bytes();
    assert_eq!(AsapMessage::decode(&wire).unwrap().msg, m);
}

#[test]
fn single_parameter_codecs() {
    let pe = full_pe();
    let b = param_bytes(&pe);
    assert_eq!(PoolElement::decode_param(&b).unwrap(), pe);
    let si = ServerInfo {
        server_id: 7,
        transport: Transport::Tcp {
            port: 3863,
            transport_use: 1,
            addr: "::1".parse().unwrap(),
        },
    };
    let mut v = Vec::new();
    si.encode_param(&mut v);
    assert_eq!(v.len(), si.param_len());
    assert_eq!(ServerInfo::decode_param(&v).unwrap(), si);
    let causes = vec![ErrorCause::new(9), ErrorCause::with_info(5, vec![9])];
    let mut v = Vec::new();
    param::encode_operation_error(&causes, &mut v);
    assert_eq!(param::decode_operation_error(&v).unwrap(), causes);
    // Trailing bytes after one parameter are refused.
    let mut b = param_bytes(&Policy::RoundRobin);
    b.extend_from_slice(&[0; 4]);
    assert!(Policy::decode_param(&b).is_err());
}
