//! The wire codec: ASAP (RFC 5352) and ENRP (RFC 5353) messages with the
//! parameters of RFC 5354, and the TCP mapping's chunk framing.
//!
//! Layout, smoltcp-style:
//! - [`types`]: the parameter values shared with the rest of the crate;
//! - [`param`]: one codec per parameter ([`Param`] trait), usable on its own
//!   (e.g. to put a Policy TLV into cause 0x5);
//! - [`AsapMessage`] / [`EnrpMessage`]: `encode` (RFC form: Length excludes
//!   the final padding), `encoded_len`, `decode` returning [`Decoded`] or a
//!   [`DecodeError`] with a byte offset and, via [`DecodeError::report`], the
//!   error cause to send back;
//! - [`json`]: `serde_json::Value` renderings for the command-line tools.
//!
//! Receive rules (digest §2): a message is accepted if its Length equals the
//! buffer size or rounds up to it; TLV Lengths must be >= 4 and stay inside
//! their container; unknown parameter types follow their two action bits; the
//! decoder never panics and allocates only for bytes it has checked exist.
#![forbid(unsafe_code)]

mod asap;
mod enrp;
mod error;
pub mod json;
mod msg;
pub mod param;
pub mod tcpmap;
mod tlv;
pub mod types;

pub use asap::{asap_flag, asap_type, AsapMessage};
pub use enrp::{enrp_flag, enrp_type, EnrpBody, EnrpMessage};
pub use error::{DecodeError, DecodeErrorKind};
pub use msg::{Decoded, MAX_LENGTH};
pub use param::Param;
pub use tlv::{roundup4, tlv_size};
pub use types::*;
