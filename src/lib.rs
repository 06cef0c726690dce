//! Reliable Server Pooling (RSerPool, RFC 5351-5356).
//!
//! The crate is layered:
//! - [`wire`]: the ASAP/ENRP message codec (RFC 5352-5354) and the TCP mapping's
//!   chunk framing. Pure: bytes in, values out.
//! - [`handlespace`]: pools, pool elements, every RFC 5356 selection policy and the
//!   ENRP PE checksum. Pure: time comes in as an argument.
//! - [`api`]: the blocking application API ([`api::Context`]): PE and PU calls
//!   over the ASAP client running on its own loop thread.
//! - `ffi`: the C ABI (`rserpool_*`), a thin shell over the above.
#![warn(missing_debug_implementations)]

pub mod api;
pub mod asap;
pub mod handlespace;
pub mod registrar;
pub mod runtime;
#[doc(hidden)]
pub mod sim;
pub mod time;
pub mod wire;

pub mod ffi;

/// The library version, as in Cargo.toml.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
