//! The common message header (RFC 5354 §2, digest §2.1) and the decode result.

use super::error::{DecodeError, DecodeErrorKind};
use super::tlv::{be16, roundup4};
use super::types::ErrorCause;

/// Largest value of a 16-bit Length field: no message or parameter can be longer.
pub const MAX_LENGTH: usize = 0xFFFF;

/// A successfully decoded message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<T> {
    /// The message.
    pub msg: T,
    /// The flags byte as received (undefined bits included).
    pub flags: u8,
    /// Cause 0x1 reports for unknown parameters that were skipped with action
    /// bits `11`; each carries the complete offending TLV. Send them back in
    /// ASAP_ERROR / ENRP_ERROR.
    pub unrecognized: Vec<ErrorCause>,
}

/// The parsed common header.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Header {
    pub ty: u8,
    pub flags: u8,
    /// The Length field: the message occupies `buf[..len]`.
    pub len: usize,
}

/// Check the common header against the buffer (digest §2.3: accept
/// `Length == buf.len()` or `roundup4(Length) == buf.len()`), then the type.
pub(crate) fn header(buf: &[u8], known: impl Fn(u8) -> bool) -> Result<Header, DecodeError> {
    if buf.len() < 4 {
        return Err(DecodeError::new(
            buf.len(),
            DecodeErrorKind::ShortHeader {
                available: buf.len(),
            },
        ));
    }
    let len = be16(buf, 2) as usize;
    if len < 4 {
        return Err(DecodeError::new(
            2,
            DecodeErrorKind::MessageLengthTooSmall {
                length: len,
                min: 4,
            },
        ));
    }
    if buf.len() < len {
        return Err(DecodeError::new(
            2,
            DecodeErrorKind::MessageTruncated {
                length: len,
                available: buf.len(),
            },
        ));
    }
    if buf.len() != len && buf.len() != roundup4(len) {
        return Err(DecodeError::new(
            2,
            DecodeErrorKind::TrailingBytes {
                length: len,
                available: buf.len(),
            },
        ));
    }
    let ty = buf[0];
    if !known(ty) {
        return Err(DecodeError::new(
            0,
            DecodeErrorKind::UnknownMessage {
                message_type: ty,
                message: buf.to_vec(),
            },
        ));
    }
    Ok(Header {
        ty,
        flags: buf[1],
        len,
    })
}

/// Require a minimum message Length (fixed fields after the header).
pub(crate) fn require_len(h: &Header, min: usize) -> Result<(), DecodeError> {
    if h.len < min {
        return Err(DecodeError::new(
            2,
            DecodeErrorKind::MessageLengthTooSmall { length: h.len, min },
        ));
    }
    Ok(())
}

/// Write the common header with a zero Length; returns the start for `end_tlv`.
#[inline]
pub(crate) fn begin_message(out: &mut Vec<u8>, ty: u8, flags: u8) -> usize {
    let start = out.len();
    out.extend_from_slice(&[ty, flags, 0, 0]);
    start
}
