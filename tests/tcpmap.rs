//! The TCP mapping chunk codec and streaming decoder (digest §10) against
//! hand-built bytes, plus property tests for splits, round trips and garbage.

use proptest::prelude::*;
use rserpool::wire::tcpmap::*;

/// Decode a complete byte stream fed in one piece; all chunks, or the error.
fn decode_stream(bytes: &[u8]) -> Result<Vec<Chunk>, DecodeError> {
    decode_pieces(bytes, usize::MAX, DEFAULT_MAX_BUFFERED)
}

fn decode_pieces(bytes: &[u8], piece: usize, bound: usize) -> Result<Vec<Chunk>, DecodeError> {
    let mut dec = ChunkDecoder::new(bound);
    let mut out = Vec::new();
    let mut rest = bytes;
    loop {
        while let Some(c) = dec.next_chunk()? {
            out.push(c.to_chunk());
        }
        if rest.is_empty() {
            dec.finish()?;
            return Ok(out);
        }
        let n = dec.feed(&rest[..rest.len().min(piece)]);
        assert!(n > 0, "decoder refused bytes after draining");
        rest = &rest[n..];
    }
}

fn encode_all(chunks: &[Chunk]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in chunks {
        c.encode(&mut out).unwrap();
    }
    out
}

fn enc(c: &Chunk) -> Vec<u8> {
    encode_all(std::slice::from_ref(c))
}

fn data(tsn: Option<u32>, stream: Option<(u16, u16)>, ppid: Option<u32>, p: &[u8]) -> Chunk {
    Chunk::Data(DataChunk {
        unordered: false,
        tsn,
        stream,
        ppid,
        payload: p.to_vec(),
    })
}

/// `parse_chunk` on exactly `bytes` must yield `expect`, consuming all of it.
fn assert_parses(bytes: &[u8], peer: InitFlags, expect: &Chunk) {
    let (c, n) = parse_chunk(bytes, peer).unwrap().unwrap();
    assert_eq!(&c.to_chunk(), expect);
    assert_eq!(n, bytes.len());
}

#[test]
fn init_every_flag_combination() {
    for f in (0..=7u8).chain([0x08, 0x80, 0xff]) {
        let bytes = [1, f, 0, 4];
        let c = Chunk::Init {
            flags: InitFlags(f),
        };
        assert_eq!(enc(&c), bytes);
        assert_parses(&bytes, InitFlags::NONE, &c);
        // As a connection's first chunk.
        assert_eq!(decode_stream(&bytes).unwrap(), vec![c]);
    }
    assert_eq!(
        InitFlags::NO_TSN | InitFlags::NO_STREAM | InitFlags::NO_PPID,
        InitFlags(7)
    );
}

#[test]
fn init_with_value_is_rejected() {
    let e = decode_stream(&[1, 0, 0, 8, 0, 0, 0, 0]).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::BadInitLength(8));
}

#[test]
fn data_header_sizes() {
    assert_eq!(InitFlags(0).data_header_len(), 16);
    assert_eq!(InitFlags(1).data_header_len(), 12);
    assert_eq!(InitFlags(5).data_header_len(), 8);
    assert_eq!(InitFlags(7).data_header_len(), 4);
    assert_eq!(InitFlags(3).data_header_len(), 8);
    assert_eq!(InitFlags(0xf8).data_header_len(), 16);
}

/// (INIT flags, chunk, bytes) for DATA with header 16/12/8/4 and payload "abcde".
fn data_vectors() -> Vec<(u8, Chunk, Vec<u8>)> {
    let p = b"abcde";
    vec![
        (
            0x00,
            data(Some(0x01020304), Some((5, 6)), Some(ppid::ASAP), p),
            vec![
                0, 0, 0, 21, 1, 2, 3, 4, 0, 5, 0, 6, 0, 0, 0, 11, b'a', b'b', b'c', b'd', b'e', 0,
                0, 0,
            ],
        ),
        (
            0x01,
            data(None, Some((0xfffe, 0xffff)), Some(ppid::ENRP), p),
            vec![
                0, 0, 0, 17, 0xff, 0xfe, 0xff, 0xff, 0, 0, 0, 12, b'a', b'b', b'c', b'd', b'e', 0,
                0, 0,
            ],
        ),
        (
            0x05,
            data(None, Some((1, 2)), None, p),
            vec![
                0, 0, 0, 13, 0, 1, 0, 2, b'a', b'b', b'c', b'd', b'e', 0, 0, 0,
            ],
        ),
        (
            0x07,
            data(None, None, None, p),
            vec![0, 0, 0, 9, b'a', b'b', b'c', b'd', b'e', 0, 0, 0],
        ),
    ]
}

#[test]
fn data_each_header_size_byte_exact() {
    for (flags, chunk, bytes) in data_vectors() {
        assert_eq!(enc(&chunk), bytes, "encode, flags {flags:#x}");
        assert_eq!(chunk.encoded_len(), bytes.len());
        assert_parses(&bytes, InitFlags(flags), &chunk);
        // The fast path writes the same bytes.
        let Chunk::Data(d) = &chunk else {
            unreachable!()
        };
        let hdr = DataHeader {
            unordered: false,
            tsn: d.tsn.unwrap_or(0),
            stream: d.stream.map_or(0, |s| s.0),
            ssn: d.stream.map_or(0, |s| s.1),
            ppid: d.ppid.unwrap_or(0),
        };
        let mut fast = vec![0xaa]; // appends, doesn't overwrite
        encode_data(&mut fast, InitFlags(flags), &hdr, &d.payload).unwrap();
        assert_eq!(&fast[1..], &bytes[..]);
        let mut h = [0u8; MAX_DATA_HEADER_LEN];
        let n = encode_data_header(InitFlags(flags), &hdr, 5, &mut h).unwrap();
        assert_eq!(n, InitFlags(flags).data_header_len());
        assert_eq!(&h[..n], &bytes[..n]);
    }
}

#[test]
fn data_header_flags_track_optional_words() {
    for (flags, chunk, _) in data_vectors() {
        let Chunk::Data(d) = chunk else {
            unreachable!()
        };
        assert_eq!(d.header_flags(), InitFlags(flags));
    }
}

#[test]
fn data_unordered_flag() {
    let c = Chunk::Data(DataChunk {
        unordered: true,
        tsn: None,
        stream: None,
        ppid: None,
        payload: vec![],
    });
    let bytes = [0, 0x04, 0, 4];
    assert_eq!(enc(&c), bytes);
    assert_parses(&bytes, InitFlags(7), &c);
    // Reserved DATA flag bits are ignored on receive.
    assert_parses(&[0, 0xfb, 0, 4], InitFlags(7), &data(None, None, None, &[]));
    assert_parses(&[0, 0xff, 0, 4], InitFlags(7), &c);
}

#[test]
fn data_shorter_than_peer_header() {
    // Peer INIT flags 0 → 16-byte header, but Length 12.
    let e = parse_chunk(&[0, 0, 0, 12, 0, 0, 0, 0, 0, 0, 0, 0], InitFlags(0)).unwrap_err();
    assert_eq!(
        e.kind,
        DecodeErrorKind::DataTooShort {
            len: 12,
            header: 16
        }
    );
}

#[test]
fn padding_for_payload_lengths_0_to_8() {
    for n in 0..=8usize {
        let payload: Vec<u8> = (1..=n as u8).collect();
        let c = data(None, None, Some(7), &payload);
        let bytes = enc(&c);
        let len = 8 + n;
        assert_eq!(bytes.len(), len.div_ceil(4) * 4, "n={n}");
        assert_eq!(&bytes[2..4], &(len as u16).to_be_bytes());
        assert!(bytes[len..].iter().all(|&b| b == 0));
        assert_eq!(padding_len(len), bytes.len() - len);
        assert_parses(&bytes, InitFlags(3), &c);
        // Pad bytes are ignored, whatever they hold.
        let mut dirty = bytes.clone();
        for b in &mut dirty[len..] {
            *b = 0xee;
        }
        assert_parses(&dirty, InitFlags(3), &c);
        // Without the padding it is not complete yet.
        if len < bytes.len() {
            assert!(parse_chunk(&bytes[..len], InitFlags(3)).unwrap().is_none());
        }
    }
}

#[test]
fn ack_with_and_without_tsn() {
    let with = Chunk::Ack {
        cum_tsn: Some(0xdeadbeef),
    };
    let bytes = [3, 0, 0, 8, 0xde, 0xad, 0xbe, 0xef];
    assert_eq!(enc(&with), bytes);
    assert_parses(&bytes, InitFlags(0), &with);
    // Length tells, whatever the INIT flags.
    assert_parses(&bytes, InitFlags(1), &with);
    let without = Chunk::Ack { cum_tsn: None };
    assert_eq!(enc(&without), [3, 0, 0, 4]);
    assert_parses(&[3, 0, 0, 4], InitFlags(0), &without);
    let e = parse_chunk(&[3, 0, 0, 6, 0, 0, 0, 0], InitFlags(0)).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::BadAckLength(6));
}

#[test]
fn heartbeat_and_ack() {
    let hb = Chunk::Heartbeat {
        info: b"stamp".to_vec(),
    };
    let bytes = [
        4, 0, 0, 13, 0, 1, 0, 9, b's', b't', b'a', b'm', b'p', 0, 0, 0,
    ];
    assert_eq!(enc(&hb), bytes);
    assert_parses(&bytes, InitFlags(0), &hb);
    let ack = Chunk::HeartbeatAck { info: vec![] };
    assert_eq!(enc(&ack), [5, 0, 0, 8, 0, 1, 0, 4]);
    assert_parses(&[5, 0, 0, 8, 0, 1, 0, 4], InitFlags(0), &ack);
}

#[test]
fn heartbeat_info_with_padded_chunk_length_is_accepted() {
    // TLV Length 6 (2 info bytes), chunk Length 12 counting the TLV's padding.
    let bytes = [4, 0, 0, 12, 0, 1, 0, 6, b'a', b'b', 0, 0];
    assert_parses(
        &bytes,
        InitFlags(0),
        &Chunk::Heartbeat {
            info: b"ab".to_vec(),
        },
    );
}

#[test]
fn heartbeat_malformed() {
    let kind = |b: &[u8]| parse_chunk(b, InitFlags(0)).unwrap_err().kind;
    assert_eq!(kind(&[4, 0, 0, 4]), DecodeErrorKind::HeartbeatInfoMissing);
    assert_eq!(
        kind(&[5, 0, 0, 8, 0, 2, 0, 4]),
        DecodeErrorKind::HeartbeatInfoType(2)
    );
    assert_eq!(
        kind(&[4, 0, 0, 12, 0, 1, 0, 12, 0, 0, 0, 0]),
        DecodeErrorKind::HeartbeatInfoLength {
            tlv_len: 12,
            value_len: 8
        }
    );
    assert_eq!(
        kind(&[4, 0, 0, 12, 0, 1, 0, 3, 0, 0, 0, 0]),
        DecodeErrorKind::HeartbeatInfoLength {
            tlv_len: 3,
            value_len: 8
        }
    );
}

#[test]
fn unknown_chunk_types_keep_the_stream_in_step() {
    let mut bytes = vec![1, 0, 0, 4];
    bytes.extend_from_slice(&[2, 0x55, 0, 7, 9, 8, 7, 0]);
    bytes.extend_from_slice(&[0xff, 1, 0, 4]);
    bytes.extend_from_slice(&[3, 0, 0, 4]);
    let chunks = decode_stream(&bytes).unwrap();
    assert_eq!(
        chunks,
        vec![
            Chunk::Init {
                flags: InitFlags(0)
            },
            Chunk::Unknown {
                chunk_type: 2,
                flags: 0x55,
                value: vec![9, 8, 7]
            },
            Chunk::Unknown {
                chunk_type: 0xff,
                flags: 1,
                value: vec![]
            },
            Chunk::Ack { cum_tsn: None },
        ]
    );
    assert_eq!(encode_all(&chunks), bytes);
}

#[test]
fn length_below_four_is_an_error() {
    for len in 0..4u8 {
        let e = parse_chunk(&[3, 0, 0, len, 0, 0, 0, 0], InitFlags(0)).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::LengthTooSmall(len.into()));
        let e = decode_stream(&[1, 0, 0, 4, 0, 0, 0, len]).unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::LengthTooSmall(len.into()));
        assert_eq!(e.offset, 4);
    }
}

#[test]
fn first_chunk_must_be_init() {
    for t in [0u8, 2, 3, 4, 5, 0xff] {
        let mut dec = ChunkDecoder::default();
        // One byte is enough to know.
        dec.feed(&[t]);
        let e = dec.next_chunk().unwrap_err();
        assert_eq!(e.kind, DecodeErrorKind::FirstChunkNotInit(t));
        assert_eq!(e.offset, 0);
    }
}

#[test]
fn second_init_is_an_error() {
    let e = decode_stream(&[1, 0, 0, 4, 3, 0, 0, 4, 1, 7, 0, 4]).unwrap_err();
    assert_eq!(e.kind, DecodeErrorKind::DuplicateInit);
    assert_eq!(e.offset, 8);
}

#[test]
fn errors_are_sticky_and_display_as_one_line() {
    let mut dec = ChunkDecoder::default();
    dec.feed(&[1, 0, 0, 4, 0, 0, 0, 2]);
    assert!(dec.next_chunk().unwrap().is_some());
    let e = dec.next_chunk().unwrap_err();
    dec.feed(&[3, 0, 0, 4]);
    assert_eq!(dec.next_chunk().unwrap_err(), e);
    assert_eq!(dec.error(), Some(e));
    assert_eq!(dec.finish().unwrap_err(), e);
    let s = e.to_string();
    assert!(!s.contains('\n'));
    assert!(s.contains("byte 4"), "{s}");
    assert!(s.contains("Length 2"), "{s}");
}

#[test]
fn truncated_input_needs_more() {
    // INIT flags 7 so the DATA vector carries no sequence numbers to check.
    let mut stream = vec![1, 7, 0, 4];
    let (_, c, bytes) = data_vectors().remove(3);
    stream.extend_from_slice(&bytes);
    for cut in 0..stream.len() {
        let mut dec = ChunkDecoder::default();
        dec.feed(&stream[..cut]);
        let mut got = 0;
        while dec.next_chunk().unwrap().is_some() {
            got += 1;
        }
        assert_eq!(got, usize::from(cut >= 4));
        if cut == 0 || cut == 4 {
            dec.finish().unwrap();
        } else {
            assert!(matches!(
                dec.finish().unwrap_err().kind,
                DecodeErrorKind::Truncated { .. }
            ));
        }
        // The rest completes it.
        dec.feed(&stream[cut..]);
        let mut all = Vec::new();
        while let Some(ch) = dec.next_chunk().unwrap() {
            all.push(ch.to_chunk());
        }
        assert_eq!(all.last(), Some(&c));
        dec.finish().unwrap();
    }
}

#[test]
fn bound_is_enforced() {
    // Bound 32: a 36-byte chunk is refused as soon as its header arrives.
    let mut dec = ChunkDecoder::new(32);
    assert_eq!(dec.bound(), 32);
    dec.feed(&[1, 7, 0, 4, 0, 0, 0, 33]);
    assert!(dec.next_chunk().unwrap().is_some());
    assert_eq!(
        dec.next_chunk().unwrap_err().kind,
        DecodeErrorKind::ChunkTooLarge {
            size: 36,
            bound: 32
        }
    );
    // Exactly the bound is fine; feed takes no more than the bound.
    let mut dec = ChunkDecoder::new(32);
    let mut stream = vec![1, 7, 0, 4];
    for _ in 0..3 {
        stream.extend_from_slice(&[0, 0, 0, 32]);
        stream.extend_from_slice(&[0x11; 28]);
    }
    let mut rest = &stream[..];
    let mut chunks = 0;
    while !rest.is_empty() {
        let n = dec.feed(rest);
        assert!(n > 0);
        assert!(dec.buffered() <= 32);
        rest = &rest[n..];
        while dec.next_chunk().unwrap().is_some() {
            chunks += 1;
        }
    }
    assert_eq!(chunks, 4);
    // A tiny bound is raised to the 4-byte header.
    assert_eq!(ChunkDecoder::new(0).bound(), 4);
}

#[test]
fn spare_and_commit_read_path() {
    let mut stream = vec![1, 0, 0, 4];
    let mut tx = TxSequencer::new();
    for i in 0..200u32 {
        let hdr = tx.next_header((i % 3) as u16, ppid::ASAP, false);
        encode_data(
            &mut stream,
            InitFlags(0),
            &hdr,
            &vec![i as u8; i as usize * 37],
        )
        .unwrap();
    }
    let mut dec = ChunkDecoder::new(8192);
    let mut src = &stream[..];
    let mut n_data = 0;
    while !src.is_empty() {
        let spare = dec.spare();
        assert!(!spare.is_empty());
        let n = spare.len().min(src.len()).min(1000);
        spare[..n].copy_from_slice(&src[..n]);
        dec.commit(n);
        src = &src[n..];
        while let Some(c) = dec.next_chunk().unwrap() {
            if let ChunkRef::Data(d) = c {
                assert_eq!(d.payload.len(), n_data * 37);
                assert!(d.payload.iter().all(|&b| b == n_data as u8));
                assert_eq!(d.tsn, Some(n_data as u32));
                n_data += 1;
            }
        }
        assert!(dec.buffered() <= 8192);
    }
    assert_eq!(n_data, 200);
    dec.finish().unwrap();
}

#[test]
fn tsn_and_ssn_are_checked() {
    let mut init = vec![1, 0, 0, 4];
    let mut tx = TxSequencer::new();
    for (stream, unordered) in [(0, false), (1, false), (0, true), (0, false), (1, false)] {
        let h = tx.next_header(stream, 0, unordered);
        encode_data(&mut init, InitFlags(0), &h, b"m").unwrap();
    }
    let chunks = decode_stream(&init).unwrap();
    let seq: Vec<_> = chunks
        .iter()
        .filter_map(|c| match c {
            Chunk::Data(d) => Some((d.tsn.unwrap(), d.stream.unwrap())),
            _ => None,
        })
        .collect();
    assert_eq!(
        seq,
        [
            (0, (0, 0)),
            (1, (1, 0)),
            (2, (0, 0)),
            (3, (0, 1)),
            (4, (1, 1))
        ]
    );
    assert_eq!(tx.peek_tsn(), 5);

    let mut bad_tsn = vec![1, 0, 0, 4];
    encode_data(&mut bad_tsn, InitFlags(0), &DataHeader::default(), b"").unwrap();
    let h = DataHeader {
        tsn: 2,
        ..Default::default()
    };
    encode_data(&mut bad_tsn, InitFlags(0), &h, b"").unwrap();
    let e = decode_stream(&bad_tsn).unwrap_err();
    assert_eq!(
        e.kind,
        DecodeErrorKind::TsnMismatch {
            expected: 1,
            got: 2
        }
    );
    assert_eq!(e.offset, 20);

    let mut bad_ssn = vec![1, 1, 0, 4];
    let h = DataHeader {
        stream: 9,
        ssn: 1,
        ..Default::default()
    };
    encode_data(&mut bad_ssn, InitFlags(1), &h, b"").unwrap();
    assert_eq!(
        decode_stream(&bad_ssn).unwrap_err().kind,
        DecodeErrorKind::SsnMismatch {
            stream: 9,
            expected: 0,
            got: 1
        }
    );
    // Checks can be turned off.
    let mut dec = ChunkDecoder::default();
    dec.set_check_sequence(false);
    dec.feed(&bad_tsn);
    while dec.next_chunk().unwrap().is_some() {}
    dec.finish().unwrap();
}

#[test]
fn peer_without_tsn_is_not_tsn_checked() {
    // Peer omits TSNs (T): only the SSNs are checked.
    let mut s = vec![1, 1, 0, 4];
    let mut tx = TxSequencer::new();
    for _ in 0..3 {
        let h = DataHeader {
            tsn: 99,
            ..tx.next_header(0, 0, false)
        };
        encode_data(&mut s, InitFlags(1), &h, b"x").unwrap();
    }
    assert_eq!(decode_stream(&s).unwrap().len(), 4);
}

#[test]
fn oversized_payload_is_an_error_not_truncation() {
    for flags in [0u8, 1, 5, 7] {
        let f = InitFlags(flags);
        let max = f.max_data_payload();
        assert_eq!(max, 65535 - f.data_header_len());
        let ok = vec![0u8; max];
        let mut out = Vec::new();
        encode_data(&mut out, f, &DataHeader::default(), &ok).unwrap();
        assert_eq!(&out[2..4], &[0xff, 0xff]);
        assert_eq!(out.len(), 65536);
        // The largest chunk decodes with the default bound.
        let mut stream = vec![1, flags, 0, 4];
        stream.extend_from_slice(&out);
        assert_eq!(decode_stream(&stream).unwrap().len(), 2);

        let big = vec![0u8; max + 1];
        let mut out = vec![1, 2, 3];
        let e = encode_data(&mut out, f, &DataHeader::default(), &big).unwrap_err();
        assert_eq!(
            e,
            EncodeError::TooLarge {
                value_len: max + 1,
                max
            }
        );
        assert_eq!(out, [1, 2, 3], "output untouched on error");
        assert!(e.to_string().contains("16-bit Length"));
    }
    let mut out = Vec::new();
    let hb = Chunk::Heartbeat {
        info: vec![0; 65528],
    };
    assert!(hb.encode(&mut out).is_err());
    assert!(out.is_empty());
    let hb = Chunk::Heartbeat {
        info: vec![0; 65527],
    };
    hb.encode(&mut out).unwrap();
    let unk = Chunk::Unknown {
        chunk_type: 9,
        flags: 0,
        value: vec![0; 65532],
    };
    assert!(unk.encode(&mut Vec::new()).is_err());
}

// ---- property tests ----

fn arb_flags() -> impl Strategy<Value = InitFlags> {
    any::<u8>().prop_map(InitFlags)
}

fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..64)
}

/// A DATA chunk shaped by the given sender flags (sequence numbers arbitrary).
fn arb_data(f: InitFlags) -> impl Strategy<Value = Chunk> {
    (
        any::<bool>(),
        any::<u32>(),
        any::<(u16, u16)>(),
        any::<u32>(),
        arb_payload(),
    )
        .prop_map(move |(unordered, tsn, stream, ppid, payload)| {
            Chunk::Data(DataChunk {
                unordered,
                tsn: (!f.no_tsn()).then_some(tsn),
                stream: (!f.no_stream()).then_some(stream),
                ppid: (!f.no_ppid()).then_some(ppid),
                payload,
            })
        })
}

/// Any non-INIT chunk a peer with flags `f` could send.
fn arb_chunk(f: InitFlags) -> impl Strategy<Value = Chunk> {
    prop_oneof![
        arb_data(f),
        any::<Option<u32>>().prop_map(|cum_tsn| Chunk::Ack { cum_tsn }),
        arb_payload().prop_map(|info| Chunk::Heartbeat { info }),
        arb_payload().prop_map(|info| Chunk::HeartbeatAck { info }),
        (
            any::<u8>().prop_filter("unknown type", |t| ![0, 1, 3, 4, 5].contains(t)),
            any::<u8>(),
            arb_payload()
        )
            .prop_map(|(chunk_type, flags, value)| Chunk::Unknown {
                chunk_type,
                flags,
                value
            }),
    ]
}

/// A connection: INIT, then chunks; sequence checks off since TSN/SSN are random.
fn arb_connection() -> impl Strategy<Value = Vec<Chunk>> {
    arb_flags().prop_flat_map(|f| {
        prop::collection::vec(arb_chunk(f), 0..16).prop_map(move |mut v| {
            v.insert(0, Chunk::Init { flags: f });
            v
        })
    })
}

fn decode_unchecked(bytes: &[u8], splits: &[usize]) -> Vec<Chunk> {
    let mut dec = ChunkDecoder::default();
    dec.set_check_sequence(false);
    let mut out = Vec::new();
    let mut at = 0;
    for &s in splits.iter().chain([&bytes.len()]) {
        let s = s.clamp(at, bytes.len());
        assert_eq!(dec.feed(&bytes[at..s]), s - at);
        at = s;
        while let Some(c) = dec.next_chunk().unwrap() {
            out.push(c.to_chunk());
        }
    }
    dec.finish().unwrap();
    out
}

proptest! {
    #[test]
    fn round_trip_every_chunk_kind(c in arb_flags().prop_flat_map(arb_chunk)) {
        let flags = match &c {
            Chunk::Data(d) => d.header_flags(),
            _ => InitFlags(0),
        };
        let bytes = enc(&c);
        prop_assert_eq!(bytes.len() % 4, 0);
        prop_assert_eq!(bytes.len(), c.encoded_len());
        let (got, n) = parse_chunk(&bytes, flags).unwrap().unwrap();
        prop_assert_eq!(got.to_chunk(), c);
        prop_assert_eq!(n, bytes.len());
    }

    #[test]
    fn stream_split_anywhere_decodes_the_same(
        conn in arb_connection(),
        mut splits in prop::collection::vec(0usize..2000, 0..20),
    ) {
        let bytes = encode_all(&conn);
        splits.sort_unstable();
        prop_assert_eq!(&decode_unchecked(&bytes, &splits), &conn);
        // One byte at a time.
        let every: Vec<usize> = (0..bytes.len()).collect();
        prop_assert_eq!(&decode_unchecked(&bytes, &every), &conn);
    }

    #[test]
    fn sequenced_connections_pass_the_checks(
        f in arb_flags(),
        msgs in prop::collection::vec((0u16..4, any::<bool>(), arb_payload()), 0..20),
    ) {
        let mut bytes = enc(&Chunk::Init { flags: f });
        let mut tx = TxSequencer::new();
        for (stream, unordered, p) in &msgs {
            let h = tx.next_header(*stream, ppid::ASAP, *unordered);
            encode_data(&mut bytes, f, &h, p).unwrap();
        }
        let chunks = decode_pieces(&bytes, 7, 80).unwrap();
        prop_assert_eq!(chunks.len(), msgs.len() + 1);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in prop::collection::vec(any::<u8>(), 0..300)) {
        // Through the fuzz oracle (split-independence and re-encode checks)...
        prop_assert_eq!(fuzz_check(&data), Ok(()));
        // ...and the stateless parser with every flag set.
        for f in 0..8 {
            let _ = parse_chunk(&data, InitFlags(f));
        }
    }

    #[test]
    fn arbitrary_bytes_after_init_never_panic(
        f in any::<u8>(),
        data in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        let mut s = vec![0x80, 1, f, 0, 4];
        s.extend_from_slice(&data);
        prop_assert_eq!(fuzz_check(&s), Ok(()));
    }
}
