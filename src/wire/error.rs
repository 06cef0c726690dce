//! Decoding errors: where in the message and what went wrong, plus what (if
//! anything) to report back to the sender in ASAP_ERROR / ENRP_ERROR.

use std::fmt;

use super::types::{cause, ErrorCause};

/// Why a message (or a single parameter) could not be decoded.
///
/// Every variant names the problem; [`DecodeError::offset`] says where.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Fewer than 4 bytes: not even a message header.
    ShortHeader {
        /// Bytes received.
        available: usize,
    },
    /// The message Length field is below the minimum for this message.
    MessageLengthTooSmall {
        /// The Length field.
        length: usize,
        /// The smallest acceptable Length (4, or more for fixed fields).
        min: usize,
    },
    /// The message Length runs past the bytes received.
    MessageTruncated {
        /// The Length field.
        length: usize,
        /// Bytes received.
        available: usize,
    },
    /// More bytes than `roundup4(Length)` were received.
    TrailingBytes {
        /// The Length field.
        length: usize,
        /// Bytes received.
        available: usize,
    },
    /// Unknown message type. `message` holds the whole message (for cause 0x2).
    UnknownMessage {
        /// The type byte.
        message_type: u8,
        /// The message bytes as received.
        message: Vec<u8>,
    },
    /// Fewer than 4 bytes left in a container where a parameter header starts.
    ShortParameterHeader {
        /// Bytes left in the container.
        available: usize,
    },
    /// A parameter (or error cause) Length below 4.
    ParameterLengthTooSmall {
        /// The parameter type (or cause code).
        param_type: u16,
        /// The Length field.
        length: usize,
    },
    /// A parameter (or error cause) Length running past its container.
    ParameterOverrun {
        /// The parameter type (or cause code).
        param_type: u16,
        /// The Length field.
        length: usize,
        /// Bytes left in the container from the parameter's start.
        available: usize,
    },
    /// An unknown parameter type whose action bits say "stop" (`00` or `01`).
    /// `tlv` holds the complete TLV (without padding), for cause 0x1.
    UnknownParameter {
        /// The parameter type.
        param_type: u16,
        /// The complete TLV.
        tlv: Vec<u8>,
    },
    /// A known parameter where the message (or container) does not allow it.
    UnexpectedParameter {
        /// The parameter type.
        param_type: u16,
        /// The message or parameter being decoded.
        context: &'static str,
    },
    /// A mandatory parameter is missing.
    MissingParameter {
        /// What was expected.
        expected: &'static str,
        /// The message or parameter being decoded.
        context: &'static str,
    },
    /// A well-framed parameter whose value is invalid (wrong fixed length, wrong
    /// number of addresses, wrong policy data size...). `tlv` holds the complete
    /// TLV (without padding), for cause 0x3.
    InvalidValue {
        /// The parameter type.
        param_type: u16,
        /// The problem, e.g. "length 7, expected 8".
        problem: String,
        /// The complete TLV.
        tlv: Vec<u8>,
    },
}

/// A decoding failure: the byte offset (from the start of the buffer handed to
/// the decoder) and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Byte offset of the offending header, parameter or field.
    pub offset: usize,
    /// What is wrong.
    pub kind: DecodeErrorKind,
}

impl DecodeError {
    pub(crate) fn new(offset: usize, kind: DecodeErrorKind) -> Self {
        DecodeError { offset, kind }
    }

    /// What to send back to the peer in ASAP_ERROR / ENRP_ERROR, if anything:
    ///
    /// - unknown parameter with action bits `01`: cause 0x1 carrying the TLV;
    /// - unknown message type with top bits `01`: cause 0x2 carrying the message;
    /// - a well-framed parameter with an invalid value: cause 0x3 carrying the TLV
    ///   (our choice: the peer can see which parameter we refused);
    /// - `None` for silent drops (action bits `00`, reserved `10`/`11` message
    ///   bits) and for broken framing (bad lengths, truncation), missing or
    ///   misplaced parameters, where no single TLV can be blamed reliably.
    pub fn report(&self) -> Option<ErrorCause> {
        match &self.kind {
            DecodeErrorKind::UnknownParameter { param_type, tlv }
                if param_type & 0xC000 == 0x4000 =>
            {
                Some(ErrorCause::with_info(
                    cause::UNRECOGNIZED_PARAMETER,
                    tlv.clone(),
                ))
            }
            DecodeErrorKind::UnknownMessage {
                message_type,
                message,
            } if message_type & 0xC0 == 0x40 => Some(ErrorCause::with_info(
                cause::UNRECOGNIZED_MESSAGE,
                message.clone(),
            )),
            DecodeErrorKind::InvalidValue { tlv, .. } => {
                Some(ErrorCause::with_info(cause::INVALID_VALUES, tlv.clone()))
            }
            _ => None,
        }
    }

    /// True if the message must be dropped without any report (digest §2.1/§2.2
    /// action bits `00`).
    pub fn is_silent_drop(&self) -> bool {
        matches!(&self.kind,
            DecodeErrorKind::UnknownParameter { param_type, .. } if param_type & 0xC000 == 0)
            || matches!(&self.kind,
            DecodeErrorKind::UnknownMessage { message_type, .. } if message_type & 0xC0 != 0x40)
    }
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use DecodeErrorKind::*;
        match self {
            ShortHeader { available } => {
                write!(f, "message header needs 4 bytes, only {available} present")
            }
            MessageLengthTooSmall { length, min } => {
                write!(f, "message length {length} is below {min}")
            }
            MessageTruncated { length, available } => write!(
                f,
                "message length {length} runs past the {available} bytes present"
            ),
            TrailingBytes { length, available } => write!(
                f,
                "{available} bytes present but message length is {length}"
            ),
            UnknownMessage { message_type, .. } => {
                write!(f, "unknown message type 0x{message_type:02x}")
            }
            ShortParameterHeader { available } => write!(
                f,
                "parameter header needs 4 bytes, only {available} left in container"
            ),
            ParameterLengthTooSmall { length, .. } => {
                write!(f, "parameter length {length} is below 4")
            }
            ParameterOverrun {
                param_type,
                length,
                available,
            } => write!(
                f,
                "parameter 0x{param_type:04x} length {length} runs past its container ({available} bytes left)"
            ),
            UnknownParameter { param_type, .. } => {
                write!(f, "unknown parameter type 0x{param_type:04x}")
            }
            UnexpectedParameter {
                param_type,
                context,
            } => write!(f, "parameter 0x{param_type:04x} not allowed in {context}"),
            MissingParameter { expected, context } => {
                write!(f, "{context} lacks its {expected} parameter")
            }
            InvalidValue {
                param_type,
                problem,
                ..
            } => write!(f, "invalid parameter 0x{param_type:04x}: {problem}"),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "malformed message at byte {}: {}",
            self.offset, self.kind
        )
    }
}

impl std::error::Error for DecodeError {}
