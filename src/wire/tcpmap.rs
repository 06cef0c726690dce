//! The TCP mapping (draft-ietf-rserpool-tcpmapping, digest §10): chunk framing.
//!
//! Over TCP, ASAP needs a shim that gives back what SCTP provides: message
//! boundaries, streams and a PPID, heartbeats and acknowledgements. Each peer
//! writes a sequence of chunks into its byte stream:
//!
//! ```text
//!  0        1        2                 4
//! +--------+--------+-----------------+------------------------------+
//! |  Type  | Flags  | Length (16 bit) | Value ... zero pad to 4      |
//! +--------+--------+-----------------+------------------------------+
//! ```
//!
//! Length counts the 4-byte header and the value but not the padding.
//!
//! # Layers
//!
//! * [`Chunk`] / [`DataChunk`]: owned values, with [`Chunk::encode`]. Handy for
//!   control traffic and tests.
//! * [`ChunkRef`] / [`DataRef`]: views borrowing the received bytes, produced by
//!   [`parse_chunk`] and [`ChunkDecoder::next_chunk`]. The data path uses these, so a
//!   payload is copied exactly once: from the decoder's buffer to wherever the
//!   application wants it. An owned `Vec` per message (or a `bytes::Bytes`
//!   dependency) would add an allocation per message for no gain, since the
//!   runtime hands payloads to C callers by copying into their buffers anyway.
//! * [`encode_data`] / [`encode_data_header`]: the sending fast path, writing a
//!   DATA header straight from a [`DataHeader`] and a `&[u8]` payload. The header
//!   form lets the runtime use a vectored write (header, payload, padding) and skip
//!   even the copy into an output buffer.
//! * [`ChunkDecoder`]: the receiving side of one connection. It takes bytes as they
//!   arrive (any split), enforces a hard bound on buffered bytes, enforces the
//!   INIT rules, decodes DATA with the flags of the peer's INIT, and checks the
//!   redundant TSN/SSN sequence. [`TxSequencer`] numbers the sending side.
//!
//! # Connection rules enforced by [`ChunkDecoder`]
//!
//! 1. **The first chunk must be INIT.** The draft says INIT is sent once, as the
//!    first chunk, and a DATA chunk cannot be parsed without the sender's INIT
//!    flags, so anything else first is [`DecodeErrorKind::FirstChunkNotInit`].
//! 2. **A second INIT is an error** ([`DecodeErrorKind::DuplicateInit`]): the
//!    flags are fixed for the life of the connection.
//! 3. Every INIT flag combination (including reserved bits) is accepted.
//! 4. Errors are sticky: framing cannot be recovered once lost, so after an error
//!    the decoder returns that same error forever. The caller closes the
//!    connection (digest §10.6).
//! 5. Unknown chunk types are returned as [`ChunkRef::Unknown`], not errors: the
//!    Length still frames them, so the stream stays in step and the caller decides.

use std::collections::HashMap;
use std::fmt;

/// Chunk type codes (digest §10.1).
pub mod chunk_type {
    /// DATA: one complete upper-layer message.
    pub const DATA: u8 = 0;
    /// INIT: sent once, first; its flags describe the sender's DATA headers.
    pub const INIT: u8 = 1;
    /// ACK: one per DATA chunk delivered to the upper layer.
    pub const ACK: u8 = 3;
    /// HEARTBEAT request.
    pub const HEARTBEAT: u8 = 4;
    /// HEARTBEAT ACK, echoing the request's Heartbeat Info TLV.
    pub const HEARTBEAT_ACK: u8 = 5;
}

/// Payload Protocol Identifiers carried in DATA chunks (digest §1, §10.3).
pub mod ppid {
    /// Unspecified (also what a DATA chunk without a PPID word means).
    pub const UNSPECIFIED: u32 = 0;
    /// ASAP: ASAP messages MUST use this.
    pub const ASAP: u32 = 11;
    /// ENRP.
    pub const ENRP: u32 = 12;
}

/// DATA chunk flag U: unordered delivery, the SSN is meaningless (digest §10.3).
pub const DATA_FLAG_UNORDERED: u8 = 0x04;

/// The Heartbeat Info TLV type inside HEARTBEAT / HEARTBEAT ACK (digest §10.5).
pub const HEARTBEAT_INFO_TYPE: u16 = 1;

/// Size of the chunk header (Type, Flags, Length).
pub const CHUNK_HEADER_LEN: usize = 4;

/// The largest chunk Length (the field is 16 bits).
pub const MAX_CHUNK_LEN: usize = u16::MAX as usize;

/// The largest DATA header (no INIT flags set): 16 bytes.
pub const MAX_DATA_HEADER_LEN: usize = 16;

/// Zero bytes for padding; `&PADDING[..padding_len(n)]`.
pub const PADDING: [u8; 3] = [0; 3];

/// The default bound of [`ChunkDecoder`]'s buffer: room for two chunks of
/// the largest possible size.
pub const DEFAULT_MAX_BUFFERED: usize = 2 * 65536;

/// Offsets inside the chunk header.
mod field {
    use std::ops::Range;
    pub const TYPE: usize = 0;
    pub const FLAGS: usize = 1;
    pub const LENGTH: Range<usize> = 2..4;
}

/// Number of zero bytes that pad `len` bytes to a multiple of 4.
pub const fn padding_len(len: usize) -> usize {
    (4 - (len & 3)) & 3
}

const fn roundup4(len: usize) -> usize {
    len + padding_len(len)
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// The flags of an INIT chunk: which optional DATA header words the INIT's
/// *sender* leaves out for the rest of the connection (digest §10.2).
///
/// Reserved bits are kept, so a decoded INIT re-encodes byte for byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct InitFlags(pub u8);

impl InitFlags {
    /// No flags: every DATA header word present (16-byte header).
    pub const NONE: InitFlags = InitFlags(0);
    /// T (0x01): DATA chunks carry no TSN; also asks the receiver of the INIT to
    /// leave the TSN out of the ACKs it sends back.
    pub const NO_TSN: InitFlags = InitFlags(0x01);
    /// S (0x02): DATA chunks carry no Stream Identifier / SSN word (stream 0).
    pub const NO_STREAM: InitFlags = InitFlags(0x02);
    /// P (0x04): DATA chunks carry no PPID (treated as 0). Don't set this on a
    /// connection that multiplexes ASAP control and data (digest §10.6).
    pub const NO_PPID: InitFlags = InitFlags(0x04);

    /// The raw flag byte, reserved bits included.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether T is set.
    pub const fn no_tsn(self) -> bool {
        self.0 & 0x01 != 0
    }

    /// Whether S is set.
    pub const fn no_stream(self) -> bool {
        self.0 & 0x02 != 0
    }

    /// Whether P is set.
    pub const fn no_ppid(self) -> bool {
        self.0 & 0x04 != 0
    }

    /// The DATA header size these flags imply: 16, 12, 8 or 4 bytes.
    pub const fn data_header_len(self) -> usize {
        CHUNK_HEADER_LEN
            + if self.no_tsn() { 0 } else { 4 }
            + if self.no_stream() { 0 } else { 4 }
            + if self.no_ppid() { 0 } else { 4 }
    }

    /// The largest DATA payload under these flags.
    pub const fn max_data_payload(self) -> usize {
        MAX_CHUNK_LEN - self.data_header_len()
    }
}

impl std::ops::BitOr for InitFlags {
    type Output = InitFlags;
    fn bitor(self, rhs: InitFlags) -> InitFlags {
        InitFlags(self.0 | rhs.0)
    }
}

/// An owned DATA chunk (digest §10.3).
///
/// Each optional word is `Some` exactly when the sender's INIT flags say it is
/// present; [`Chunk::encode`] writes the words that are `Some`. Reserved DATA
/// flag bits are ignored on receive and sent as 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct DataChunk {
    /// U flag: unordered delivery (the SSN is to be ignored).
    pub unordered: bool,
    /// Transmission Sequence Number, absent under INIT flag T.
    pub tsn: Option<u32>,
    /// (Stream Identifier, Stream Sequence Number), absent under INIT flag S.
    pub stream: Option<(u16, u16)>,
    /// Payload Protocol Identifier, absent under INIT flag P.
    pub ppid: Option<u32>,
    /// One complete upper-layer message.
    pub payload: Vec<u8>,
}

impl DataChunk {
    /// The INIT flags under which this chunk's header has this shape.
    pub fn header_flags(&self) -> InitFlags {
        InitFlags(
            u8::from(self.tsn.is_none())
                | u8::from(self.stream.is_none()) << 1
                | u8::from(self.ppid.is_none()) << 2,
        )
    }

    /// A borrowed view of this chunk.
    pub fn view(&self) -> DataRef<'_> {
        DataRef {
            unordered: self.unordered,
            tsn: self.tsn,
            stream: self.stream,
            ppid: self.ppid,
            payload: &self.payload,
        }
    }
}

/// An owned chunk of the TCP mapping.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Chunk {
    /// INIT (type 1), Length 4.
    Init {
        /// The sender's flags, reserved bits kept.
        flags: InitFlags,
    },
    /// DATA (type 0).
    Data(DataChunk),
    /// ACK (type 3): Length 8 with the cumulative TSN ack, 4 without.
    Ack {
        /// Cumulative TSN Ack; `None` when the peer's INIT had flag T.
        cum_tsn: Option<u32>,
    },
    /// HEARTBEAT (type 4): the opaque bytes of its Heartbeat Info TLV (type 1).
    Heartbeat {
        /// Sender-private bytes (e.g. a timestamp), echoed in the ACK.
        info: Vec<u8>,
    },
    /// HEARTBEAT ACK (type 5): the echoed Heartbeat Info bytes.
    HeartbeatAck {
        /// The bytes from the HEARTBEAT being answered.
        info: Vec<u8>,
    },
    /// A chunk type this module doesn't know (2, 6-255). Framed by its Length,
    /// so the stream stays in step; what to do is the caller's call.
    Unknown {
        /// The chunk type.
        chunk_type: u8,
        /// The chunk flags.
        flags: u8,
        /// The value, without padding.
        value: Vec<u8>,
    },
}

/// A borrowed view of a DATA chunk; the payload points into the received bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DataRef<'a> {
    /// U flag: unordered delivery.
    pub unordered: bool,
    /// TSN, absent under the sender's INIT flag T.
    pub tsn: Option<u32>,
    /// (Stream Identifier, SSN), absent under the sender's INIT flag S.
    pub stream: Option<(u16, u16)>,
    /// PPID, absent under the sender's INIT flag P.
    pub ppid: Option<u32>,
    /// The message.
    pub payload: &'a [u8],
}

impl DataRef<'_> {
    /// Copy into an owned [`DataChunk`].
    pub fn to_chunk(&self) -> DataChunk {
        DataChunk {
            unordered: self.unordered,
            tsn: self.tsn,
            stream: self.stream,
            ppid: self.ppid,
            payload: self.payload.to_vec(),
        }
    }
}

/// A borrowed view of a chunk; byte fields point into the received bytes.
/// See [`Chunk`] for the meaning of each variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChunkRef<'a> {
    /// INIT.
    Init {
        /// The sender's flags.
        flags: InitFlags,
    },
    /// DATA.
    Data(DataRef<'a>),
    /// ACK.
    Ack {
        /// Cumulative TSN Ack, if the chunk carried one.
        cum_tsn: Option<u32>,
    },
    /// HEARTBEAT.
    Heartbeat {
        /// The Heartbeat Info TLV's opaque bytes.
        info: &'a [u8],
    },
    /// HEARTBEAT ACK.
    HeartbeatAck {
        /// The Heartbeat Info TLV's opaque bytes.
        info: &'a [u8],
    },
    /// Unknown chunk type.
    Unknown {
        /// The chunk type.
        chunk_type: u8,
        /// The chunk flags.
        flags: u8,
        /// The value, without padding.
        value: &'a [u8],
    },
}

impl ChunkRef<'_> {
    /// Copy into an owned [`Chunk`].
    pub fn to_chunk(&self) -> Chunk {
        match *self {
            ChunkRef::Init { flags } => Chunk::Init { flags },
            ChunkRef::Data(d) => Chunk::Data(d.to_chunk()),
            ChunkRef::Ack { cum_tsn } => Chunk::Ack { cum_tsn },
            ChunkRef::Heartbeat { info } => Chunk::Heartbeat {
                info: info.to_vec(),
            },
            ChunkRef::HeartbeatAck { info } => Chunk::HeartbeatAck {
                info: info.to_vec(),
            },
            ChunkRef::Unknown {
                chunk_type,
                flags,
                value,
            } => Chunk::Unknown {
                chunk_type,
                flags,
                value: value.to_vec(),
            },
        }
    }

    /// The chunk type code.
    pub fn chunk_type(&self) -> u8 {
        match self {
            ChunkRef::Init { .. } => chunk_type::INIT,
            ChunkRef::Data(_) => chunk_type::DATA,
            ChunkRef::Ack { .. } => chunk_type::ACK,
            ChunkRef::Heartbeat { .. } => chunk_type::HEARTBEAT,
            ChunkRef::HeartbeatAck { .. } => chunk_type::HEARTBEAT_ACK,
            ChunkRef::Unknown { chunk_type, .. } => *chunk_type,
        }
    }

    /// Append this chunk to `out`; see [`Chunk::encode`].
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        match *self {
            ChunkRef::Init { flags } => {
                put_header(out, chunk_type::INIT, flags.0, CHUNK_HEADER_LEN);
                Ok(())
            }
            ChunkRef::Data(d) => encode_data_ref(out, &d),
            ChunkRef::Ack { cum_tsn } => {
                match cum_tsn {
                    Some(tsn) => {
                        put_header(out, chunk_type::ACK, 0, 8);
                        out.extend_from_slice(&tsn.to_be_bytes());
                    }
                    None => put_header(out, chunk_type::ACK, 0, CHUNK_HEADER_LEN),
                }
                Ok(())
            }
            ChunkRef::Heartbeat { info } => encode_heartbeat(out, chunk_type::HEARTBEAT, info),
            ChunkRef::HeartbeatAck { info } => {
                encode_heartbeat(out, chunk_type::HEARTBEAT_ACK, info)
            }
            ChunkRef::Unknown {
                chunk_type,
                flags,
                value,
            } => {
                let len = checked_len(CHUNK_HEADER_LEN, value.len())?;
                put_header(out, chunk_type, flags, len);
                out.extend_from_slice(value);
                out.extend_from_slice(&PADDING[..padding_len(len)]);
                Ok(())
            }
        }
    }
}

impl Chunk {
    /// A borrowed view of this chunk.
    pub fn view(&self) -> ChunkRef<'_> {
        match self {
            Chunk::Init { flags } => ChunkRef::Init { flags: *flags },
            Chunk::Data(d) => ChunkRef::Data(d.view()),
            Chunk::Ack { cum_tsn } => ChunkRef::Ack { cum_tsn: *cum_tsn },
            Chunk::Heartbeat { info } => ChunkRef::Heartbeat { info },
            Chunk::HeartbeatAck { info } => ChunkRef::HeartbeatAck { info },
            Chunk::Unknown {
                chunk_type,
                flags,
                value,
            } => ChunkRef::Unknown {
                chunk_type: *chunk_type,
                flags: *flags,
                value,
            },
        }
    }

    /// Append this chunk to `out`: header, value, zero padding to a multiple of 4.
    /// Length excludes the padding. A DATA chunk's header carries exactly the
    /// optional words that are `Some`.
    ///
    /// Fails, leaving `out` unchanged, when the chunk would not fit the 16-bit
    /// Length (there is no fragmentation).
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        self.view().encode(out)
    }

    /// The encoded size, padding included.
    pub fn encoded_len(&self) -> usize {
        let len = match self {
            Chunk::Init { .. } => CHUNK_HEADER_LEN,
            Chunk::Data(d) => d.header_flags().data_header_len() + d.payload.len(),
            Chunk::Ack { cum_tsn } => CHUNK_HEADER_LEN + if cum_tsn.is_some() { 4 } else { 0 },
            Chunk::Heartbeat { info } | Chunk::HeartbeatAck { info } => 8 + info.len(),
            Chunk::Unknown { value, .. } => CHUNK_HEADER_LEN + value.len(),
        };
        roundup4(len)
    }
}

/// The sender's side of a DATA header, for [`encode_data`]. Which words are
/// written is decided by the sender's own INIT flags, not by this struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct DataHeader {
    /// U flag.
    pub unordered: bool,
    /// TSN (skipped under INIT flag T).
    pub tsn: u32,
    /// Stream Identifier (skipped under INIT flag S).
    pub stream: u16,
    /// Stream Sequence Number (skipped under INIT flag S).
    pub ssn: u16,
    /// PPID (skipped under INIT flag P).
    pub ppid: u32,
}

/// Why a chunk could not be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EncodeError {
    /// The chunk would need a Length above 65535.
    TooLarge {
        /// The value bytes (payload / info / value) requested.
        value_len: usize,
        /// The largest value that fits with this chunk's header.
        max: usize,
    },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLarge { value_len, max } => write!(
                f,
                "TCP mapping chunk too large: {value_len} value bytes, at most {max} fit the 16-bit Length"
            ),
        }
    }
}

impl std::error::Error for EncodeError {}

fn checked_len(header: usize, value_len: usize) -> Result<usize, EncodeError> {
    let max = MAX_CHUNK_LEN - header;
    if value_len > max {
        Err(EncodeError::TooLarge { value_len, max })
    } else {
        Ok(header + value_len)
    }
}

fn put_header(out: &mut Vec<u8>, ty: u8, flags: u8, len: usize) {
    debug_assert!(len <= MAX_CHUNK_LEN);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(len as u16).to_be_bytes());
}

fn encode_heartbeat(out: &mut Vec<u8>, ty: u8, info: &[u8]) -> Result<(), EncodeError> {
    let len = checked_len(8, info.len())?;
    put_header(out, ty, 0, len);
    out.extend_from_slice(&HEARTBEAT_INFO_TYPE.to_be_bytes());
    out.extend_from_slice(&((len - CHUNK_HEADER_LEN) as u16).to_be_bytes());
    out.extend_from_slice(info);
    out.extend_from_slice(&PADDING[..padding_len(len)]);
    Ok(())
}

fn encode_data_ref(out: &mut Vec<u8>, d: &DataRef<'_>) -> Result<(), EncodeError> {
    let hdr = DataHeader {
        unordered: d.unordered,
        tsn: d.tsn.unwrap_or(0),
        stream: d.stream.map_or(0, |s| s.0),
        ssn: d.stream.map_or(0, |s| s.1),
        ppid: d.ppid.unwrap_or(0),
    };
    let flags = InitFlags(
        u8::from(d.tsn.is_none())
            | u8::from(d.stream.is_none()) << 1
            | u8::from(d.ppid.is_none()) << 2,
    );
    encode_data(out, flags, &hdr, d.payload)
}

/// Write a DATA chunk header into `buf` for a payload of `payload_len` bytes,
/// leaving out the words the sender's INIT flags `my_flags` declared absent.
/// Returns the header size (16, 12, 8 or 4); the payload and
/// `padding_len(header + payload_len)` zero bytes follow on the wire.
///
/// This is the form for a vectored write: header, payload, padding.
pub fn encode_data_header(
    my_flags: InitFlags,
    hdr: &DataHeader,
    payload_len: usize,
    buf: &mut [u8; MAX_DATA_HEADER_LEN],
) -> Result<usize, EncodeError> {
    let header_len = my_flags.data_header_len();
    let len = checked_len(header_len, payload_len)?;
    buf[0] = chunk_type::DATA;
    buf[1] = if hdr.unordered {
        DATA_FLAG_UNORDERED
    } else {
        0
    };
    buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
    let mut at = CHUNK_HEADER_LEN;
    if !my_flags.no_tsn() {
        buf[at..at + 4].copy_from_slice(&hdr.tsn.to_be_bytes());
        at += 4;
    }
    if !my_flags.no_stream() {
        buf[at..at + 2].copy_from_slice(&hdr.stream.to_be_bytes());
        buf[at + 2..at + 4].copy_from_slice(&hdr.ssn.to_be_bytes());
        at += 4;
    }
    if !my_flags.no_ppid() {
        buf[at..at + 4].copy_from_slice(&hdr.ppid.to_be_bytes());
        at += 4;
    }
    Ok(at)
}

/// Append a DATA chunk (header, payload, padding) to `out` straight from a
/// payload slice, without building a [`Chunk`]. `my_flags` are the flags of the
/// INIT this side sent. Fails, leaving `out` unchanged, if the payload is larger
/// than [`InitFlags::max_data_payload`].
pub fn encode_data(
    out: &mut Vec<u8>,
    my_flags: InitFlags,
    hdr: &DataHeader,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let mut h = [0u8; MAX_DATA_HEADER_LEN];
    let n = encode_data_header(my_flags, hdr, payload.len(), &mut h)?;
    let pad = padding_len(n + payload.len());
    out.reserve(n + payload.len() + pad);
    out.extend_from_slice(&h[..n]);
    out.extend_from_slice(payload);
    out.extend_from_slice(&PADDING[..pad]);
    Ok(())
}

/// What is wrong with the received byte stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Chunk Length below 4.
    LengthTooSmall(u16),
    /// The chunk (padded) would not fit the decoder's buffer bound.
    ChunkTooLarge {
        /// The chunk's padded size.
        size: usize,
        /// The decoder's bound.
        bound: usize,
    },
    /// The connection's first chunk was not INIT (rule 1 in the module docs).
    FirstChunkNotInit(u8),
    /// A second INIT arrived (rule 2).
    DuplicateInit,
    /// INIT Length other than 4.
    BadInitLength(u16),
    /// ACK Length other than 4 or 8.
    BadAckLength(u16),
    /// DATA Length shorter than the header the peer's INIT flags imply.
    DataTooShort {
        /// The chunk Length.
        len: u16,
        /// The header size implied by the peer's INIT flags.
        header: usize,
    },
    /// HEARTBEAT / HEARTBEAT ACK value shorter than a TLV header.
    HeartbeatInfoMissing,
    /// The HEARTBEAT value's TLV is not type 1.
    HeartbeatInfoType(u16),
    /// The Heartbeat Info TLV Length disagrees with the chunk Length.
    HeartbeatInfoLength {
        /// The TLV's Length field.
        tlv_len: u16,
        /// The bytes the chunk holds for it.
        value_len: usize,
    },
    /// A DATA TSN is not the one after the previous (the first is 0).
    TsnMismatch {
        /// The TSN expected.
        expected: u32,
        /// The TSN received.
        got: u32,
    },
    /// An ordered DATA chunk's SSN is not the next on its stream (starting at 0).
    SsnMismatch {
        /// The stream.
        stream: u16,
        /// The SSN expected.
        expected: u16,
        /// The SSN received.
        got: u16,
    },
    /// The connection ended in the middle of a chunk.
    Truncated {
        /// Bytes of the unfinished chunk received.
        buffered: usize,
    },
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind::*;
        match *self {
            LengthTooSmall(l) => write!(f, "chunk Length {l} is below the 4-byte header"),
            ChunkTooLarge { size, bound } => {
                write!(
                    f,
                    "chunk of {size} bytes exceeds the {bound}-byte buffer bound"
                )
            }
            FirstChunkNotInit(t) => write!(f, "first chunk is type {t}, not INIT"),
            DuplicateInit => f.write_str("second INIT on the connection"),
            BadInitLength(l) => write!(f, "INIT Length {l}, must be 4"),
            BadAckLength(l) => write!(f, "ACK Length {l}, must be 4 or 8"),
            DataTooShort { len, header } => write!(
                f,
                "DATA Length {len} is shorter than the {header}-byte header the peer's INIT implies"
            ),
            HeartbeatInfoMissing => f.write_str("heartbeat without a Heartbeat Info TLV"),
            HeartbeatInfoType(t) => write!(f, "heartbeat TLV type {t}, expected 1"),
            HeartbeatInfoLength { tlv_len, value_len } => write!(
                f,
                "Heartbeat Info Length {tlv_len} does not match the {value_len} bytes in the chunk"
            ),
            TsnMismatch { expected, got } => write!(f, "DATA TSN {got}, expected {expected}"),
            SsnMismatch {
                stream,
                expected,
                got,
            } => write!(f, "DATA SSN {got} on stream {stream}, expected {expected}"),
            Truncated { buffered } => {
                write!(
                    f,
                    "connection ended inside a chunk ({buffered} bytes received)"
                )
            }
        }
    }
}

/// A framing error: where in the byte stream and what. The offset is that of the
/// offending chunk's first byte, counted from the start of the connection (for
/// [`parse_chunk`], from the start of its input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecodeError {
    /// Stream byte offset of the chunk at fault.
    pub offset: u64,
    /// The problem.
    pub kind: DecodeErrorKind,
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "TCP mapping framing error at byte {}: {}",
            self.offset, self.kind
        )
    }
}

impl std::error::Error for DecodeError {}

/// Check what the 4-byte header alone can tell: Length >= 4, padded size within
/// `bound`. Returns (type, flags, length, padded size).
fn check_header(b: &[u8], bound: usize) -> Result<(u8, u8, u16, usize), DecodeErrorKind> {
    let len = be16(b, field::LENGTH.start);
    if (len as usize) < CHUNK_HEADER_LEN {
        return Err(DecodeErrorKind::LengthTooSmall(len));
    }
    let size = roundup4(len as usize);
    if size > bound {
        return Err(DecodeErrorKind::ChunkTooLarge { size, bound });
    }
    Ok((b[field::TYPE], b[field::FLAGS], len, size))
}

/// Decode the value of a chunk whose `len` bytes (no padding) are all in `b`.
fn parse_value(
    b: &[u8],
    ty: u8,
    flags: u8,
    len: u16,
    peer: InitFlags,
) -> Result<ChunkRef<'_>, DecodeErrorKind> {
    let value = &b[CHUNK_HEADER_LEN..len as usize];
    Ok(match ty {
        chunk_type::INIT => {
            if len as usize != CHUNK_HEADER_LEN {
                return Err(DecodeErrorKind::BadInitLength(len));
            }
            ChunkRef::Init {
                flags: InitFlags(flags),
            }
        }
        chunk_type::DATA => {
            let header = peer.data_header_len();
            if (len as usize) < header {
                return Err(DecodeErrorKind::DataTooShort { len, header });
            }
            let mut at = CHUNK_HEADER_LEN;
            let mut word = |present: bool| {
                present.then(|| {
                    let w = be32(b, at);
                    at += 4;
                    w
                })
            };
            let tsn = word(!peer.no_tsn());
            let stream = word(!peer.no_stream()).map(|w| ((w >> 16) as u16, w as u16));
            let ppid = word(!peer.no_ppid());
            ChunkRef::Data(DataRef {
                unordered: flags & DATA_FLAG_UNORDERED != 0,
                tsn,
                stream,
                ppid,
                payload: &b[header..len as usize],
            })
        }
        chunk_type::ACK => match len {
            4 => ChunkRef::Ack { cum_tsn: None },
            8 => ChunkRef::Ack {
                cum_tsn: Some(be32(value, 0)),
            },
            _ => return Err(DecodeErrorKind::BadAckLength(len)),
        },
        chunk_type::HEARTBEAT | chunk_type::HEARTBEAT_ACK => {
            if value.len() < 4 {
                return Err(DecodeErrorKind::HeartbeatInfoMissing);
            }
            let tlv_type = be16(value, 0);
            if tlv_type != HEARTBEAT_INFO_TYPE {
                return Err(DecodeErrorKind::HeartbeatInfoType(tlv_type));
            }
            let tlv_len = be16(value, 2);
            // The TLV normally ends where the chunk does; also accept a TLV whose
            // own padding was counted in the chunk Length (digest §2.3 style).
            let t = tlv_len as usize;
            if t < 4 || !(t == value.len() || (t < value.len() && roundup4(t) == value.len())) {
                return Err(DecodeErrorKind::HeartbeatInfoLength {
                    tlv_len,
                    value_len: value.len(),
                });
            }
            let info = &value[4..t];
            if ty == chunk_type::HEARTBEAT {
                ChunkRef::Heartbeat { info }
            } else {
                ChunkRef::HeartbeatAck { info }
            }
        }
        _ => ChunkRef::Unknown {
            chunk_type: ty,
            flags,
            value,
        },
    })
}

/// Parse one chunk from the front of `buf`, decoding DATA with the flags of the
/// peer's INIT. Returns the chunk and the bytes it occupies (padding included),
/// or `Ok(None)` when `buf` doesn't yet hold the whole padded chunk.
///
/// Stateless: the INIT-first rule and sequence checks are [`ChunkDecoder`]'s.
/// Error offsets are 0 (the start of `buf`).
pub fn parse_chunk(
    buf: &[u8],
    peer: InitFlags,
) -> Result<Option<(ChunkRef<'_>, usize)>, DecodeError> {
    let err = |kind| DecodeError { offset: 0, kind };
    if buf.len() < CHUNK_HEADER_LEN {
        return Ok(None);
    }
    let (ty, flags, len, size) = check_header(buf, MAX_CHUNK_LEN + 1).map_err(err)?;
    if buf.len() < size {
        return Ok(None);
    }
    let chunk = parse_value(&buf[..size], ty, flags, len, peer).map_err(err)?;
    Ok(Some((chunk, size)))
}

/// The receiving half of one TCP-mapped connection: bytes in, chunks out.
///
/// Feed bytes with [`feed`](Self::feed), or read straight from the socket into
/// [`spare`](Self::spare) and [`commit`](Self::commit) the count; then call
/// [`next_chunk`](Self::next_chunk) until it returns `Ok(None)`. Any split of the
/// stream works, one byte at a time included.
///
/// The buffer never holds more than the bound given to [`new`](Self::new); a
/// chunk that could not fit is an error ([`DecodeErrorKind::ChunkTooLarge`])
/// raised as soon as its header arrives. Because every acceptable chunk fits,
/// after `next_chunk` has returned `Ok(None)` the spare area is never empty.
///
/// See the module docs for the connection rules (INIT first, once; sticky errors).
#[derive(Debug)]
pub struct ChunkDecoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    bound: usize,
    /// Stream offset of `buf[start]`.
    offset: u64,
    peer: Option<InitFlags>,
    check_sequence: bool,
    next_tsn: u32,
    /// The next SSN of each stream, indexed by stream (grown on demand, at
    /// most 64 Ki entries): a lookup per DATA chunk, so no hashing.
    next_ssn: Vec<u16>,
    failed: Option<DecodeError>,
}

impl Default for ChunkDecoder {
    fn default() -> Self {
        ChunkDecoder::new(DEFAULT_MAX_BUFFERED)
    }
}

/// The buffer starts this small and doubles up to the bound as needed.
const INITIAL_BUFFER: usize = 4096;

impl ChunkDecoder {
    /// A decoder that buffers at most `max_buffered` bytes (raised to at least 4).
    /// With a bound of at least 65536 every legal chunk fits; a smaller bound
    /// also caps the chunk size the peer may send.
    pub fn new(max_buffered: usize) -> Self {
        ChunkDecoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            bound: max_buffered.max(CHUNK_HEADER_LEN),
            offset: 0,
            peer: None,
            check_sequence: true,
            next_tsn: 0,
            next_ssn: vec![0],
            failed: None,
        }
    }

    /// Turn the redundant TSN/SSN checks on (the default) or off. With them on,
    /// DATA TSNs must run 0, 1, 2, … (wrapping) and ordered DATA SSNs must run
    /// 0, 1, 2, … per stream; unordered chunks' SSNs are not checked.
    pub fn set_check_sequence(&mut self, on: bool) {
        self.check_sequence = on;
    }

    /// The flags of the peer's INIT, once received.
    pub fn peer_init(&self) -> Option<InitFlags> {
        self.peer
    }

    /// Bytes received but not yet returned as chunks.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// The buffer bound.
    pub fn bound(&self) -> usize {
        self.bound
    }

    /// Stream offset of the next byte [`next_chunk`](Self::next_chunk) will look at.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The error that stopped this decoder, if any.
    pub fn error(&self) -> Option<DecodeError> {
        self.failed
    }

    /// Move unconsumed bytes to the front when that frees a useful amount of
    /// room, and grow (up to the bound) when there is no room at all.
    fn make_room(&mut self) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.start > 0 && self.buf.len() - self.end < self.buf.len() / 2 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() && self.buf.len() < self.bound {
            let grown = (self.buf.len() * 2).max(INITIAL_BUFFER).min(self.bound);
            self.buf.resize(grown, 0);
        }
    }

    /// Free buffer space to read into, e.g. `let n = sock.read(dec.spare())?;
    /// dec.commit(n);`. Empty only if the buffer is full of undecoded chunks, which
    /// can't happen once `next_chunk` has returned `Ok(None)`; so drain
    /// `next_chunk` first (which also keeps the compaction cheap).
    pub fn spare(&mut self) -> &mut [u8] {
        self.make_room();
        let end = self.end;
        &mut self.buf[end..]
    }

    /// Declare that `n` bytes were written at the front of [`spare`](Self::spare).
    ///
    /// # Panics
    /// If `n` exceeds the length of the last `spare()` slice (a caller bug, like
    /// `ReadBuf::advance`).
    pub fn commit(&mut self, n: usize) {
        assert!(
            n <= self.buf.len() - self.end,
            "commit({n}) beyond the spare area"
        );
        self.end += n;
    }

    /// Copy as much of `data` as fits under the bound; returns how many bytes were
    /// taken. When it is less than `data.len()`, drain
    /// [`next_chunk`](Self::next_chunk) and feed the rest.
    pub fn feed(&mut self, data: &[u8]) -> usize {
        let mut taken = 0;
        while taken < data.len() {
            let spare = self.spare();
            let n = spare.len().min(data.len() - taken);
            if n == 0 {
                break;
            }
            spare[..n].copy_from_slice(&data[taken..taken + n]);
            self.end += n;
            taken += n;
        }
        taken
    }

    /// Call at end of stream: an error if the peer stopped in the middle of a chunk.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        match self.buffered() {
            0 => Ok(()),
            buffered => Err(DecodeError {
                offset: self.offset,
                kind: DecodeErrorKind::Truncated { buffered },
            }),
        }
    }

    /// The next whole chunk, `Ok(None)` if more bytes are needed, or the error
    /// that ends the connection (sticky: returned again on every later call).
    pub fn next_chunk(&mut self) -> Result<Option<ChunkRef<'_>>, DecodeError> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let offset = self.offset;
        let avail = &self.buf[self.start..self.end];
        let result = Self::decode_one(
            avail,
            self.bound,
            self.peer,
            self.check_sequence,
            &mut self.next_tsn,
            &mut self.next_ssn,
        );
        match result {
            Ok(None) => Ok(None),
            Ok(Some((chunk, size))) => {
                if let ChunkRef::Init { flags } = chunk {
                    self.peer = Some(flags);
                }
                self.start += size;
                self.offset += size as u64;
                Ok(Some(chunk))
            }
            Err(kind) => {
                let e = DecodeError { offset, kind };
                self.failed = Some(e);
                Err(e)
            }
        }
    }

    fn decode_one<'a>(
        avail: &'a [u8],
        bound: usize,
        peer: Option<InitFlags>,
        check_sequence: bool,
        next_tsn: &mut u32,
        next_ssn: &mut Vec<u16>,
    ) -> Result<Option<(ChunkRef<'a>, usize)>, DecodeErrorKind> {
        // The INIT-first rule needs only the type byte: fail as early as possible.
        match (avail.first(), peer) {
            (None, _) => return Ok(None),
            (Some(&t), None) if t != chunk_type::INIT => {
                return Err(DecodeErrorKind::FirstChunkNotInit(t))
            }
            _ => {}
        }
        if avail.len() < CHUNK_HEADER_LEN {
            return Ok(None);
        }
        let (ty, flags, len, size) = check_header(avail, bound)?;
        if ty == chunk_type::INIT && peer.is_some() {
            return Err(DecodeErrorKind::DuplicateInit);
        }
        if avail.len() < size {
            return Ok(None);
        }
        let chunk = parse_value(&avail[..size], ty, flags, len, peer.unwrap_or_default())?;
        if let (ChunkRef::Data(d), true) = (&chunk, check_sequence) {
            if let Some(tsn) = d.tsn {
                if tsn != *next_tsn {
                    return Err(DecodeErrorKind::TsnMismatch {
                        expected: *next_tsn,
                        got: tsn,
                    });
                }
            }
            if let (Some((stream, ssn)), false) = (d.stream, d.unordered) {
                let expected = next_ssn.get(usize::from(stream)).copied().unwrap_or(0);
                if ssn != expected {
                    return Err(DecodeErrorKind::SsnMismatch {
                        stream,
                        expected,
                        got: ssn,
                    });
                }
                let i = usize::from(stream);
                if i >= next_ssn.len() {
                    next_ssn.resize(i + 1, 0);
                }
                next_ssn[i] = expected.wrapping_add(1);
            }
            // The TSN counts every DATA chunk, also when the peer omits it.
            *next_tsn = next_tsn.wrapping_add(1);
        }
        Ok(Some((chunk, size)))
    }
}

/// Numbering for the sending half of a connection: one TSN per DATA chunk,
/// starting at 0 and wrapping; one SSN per ordered chunk per stream, starting at
/// 0 and wrapping. Unordered chunks get SSN 0 and don't advance their stream.
/// The numbers match what [`ChunkDecoder`]'s sequence checks expect.
#[derive(Debug, Clone, Default)]
pub struct TxSequencer {
    next_tsn: u32,
    next_ssn: HashMap<u16, u16>,
}

impl TxSequencer {
    /// A fresh connection's numbering.
    pub fn new() -> Self {
        Self::default()
    }

    /// The TSN the next DATA chunk will get.
    pub fn peek_tsn(&self) -> u32 {
        self.next_tsn
    }

    /// Number the next DATA chunk: returns its header.
    pub fn next_header(&mut self, stream: u16, ppid: u32, unordered: bool) -> DataHeader {
        let tsn = self.next_tsn;
        self.next_tsn = tsn.wrapping_add(1);
        let ssn = if unordered {
            0
        } else {
            let e = self.next_ssn.entry(stream).or_insert(0);
            let ssn = *e;
            *e = ssn.wrapping_add(1);
            ssn
        };
        DataHeader {
            unordered,
            tsn,
            stream,
            ssn,
            ppid,
        }
    }
}

/// Decode all of `bytes` with a fresh decoder (bound `bound`), feeding it in
/// pieces of at most `piece` bytes; the chunks and the error that stopped it.
fn decode_all(bytes: &[u8], bound: usize, piece: usize) -> (Vec<Chunk>, Option<DecodeError>) {
    let mut dec = ChunkDecoder::new(bound);
    let mut chunks = Vec::new();
    let mut rest = bytes;
    loop {
        loop {
            match dec.next_chunk() {
                Ok(Some(c)) => chunks.push(c.to_chunk()),
                Ok(None) => break,
                Err(e) => return (chunks, Some(e)),
            }
        }
        if rest.is_empty() {
            return (chunks, dec.finish().err());
        }
        let n = dec.feed(&rest[..rest.len().min(piece)]);
        if n == 0 {
            // Can't happen (see ChunkDecoder docs); report rather than spin.
            let kind = DecodeErrorKind::Truncated {
                buffered: usize::MAX,
            };
            return (
                chunks,
                Some(DecodeError {
                    offset: u64::MAX,
                    kind,
                }),
            );
        }
        rest = &rest[n..];
    }
}

/// The fuzzing oracle, shared by `fuzz/fuzz_targets/tcpmap.rs` and the corpus
/// replay test; not part of the API. The first byte picks the buffer bound and
/// how the rest is split; the rest is the stream. Checks that decoding is
/// independent of the split (large pieces vs. one byte at a time) and that
/// re-encoding the decoded chunks decodes to the same chunks without error.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) -> Result<(), String> {
    let Some((&b0, stream)) = data.split_first() else {
        return Ok(());
    };
    let bound = if b0 & 0x80 != 0 {
        DEFAULT_MAX_BUFFERED
    } else {
        CHUNK_HEADER_LEN + usize::from(b0) * 8
    };
    let piece = 1 + usize::from(b0 & 0x1f) * 97;
    let (chunks, err) = decode_all(stream, bound, piece);
    let (chunks1, err1) = decode_all(stream, bound, 1);
    if (&chunks, err) != (&chunks1, err1) {
        return Err(format!(
            "split-dependent decode: {chunks:?} {err:?} vs byte-wise {chunks1:?} {err1:?}"
        ));
    }
    let mut again = Vec::new();
    for c in &chunks {
        c.encode(&mut again)
            .map_err(|e| format!("re-encoding {c:?}: {e}"))?;
    }
    let (chunks2, err2) = decode_all(&again, bound, usize::MAX);
    if chunks2 != chunks || err2.is_some() {
        return Err(format!(
            "round trip: {chunks:?} re-decoded as {chunks2:?} {err2:?}"
        ));
    }
    if let Some(e) = err {
        // Exercise Display on every error path.
        let _ = e.to_string();
    }
    Ok(())
}
