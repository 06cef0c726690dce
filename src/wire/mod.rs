//! The wire codec: ASAP (RFC 5352) and ENRP (RFC 5353) messages with the
//! parameters of RFC 5354, and the TCP mapping's chunk framing.

pub mod tcpmap;
pub mod types;

pub use types::*;
