//! The C ABI: every `extern "C"` function of the library lives below this module.
//!
//! Rules every function here follows (they are repeated in the header):
//! - its whole body runs inside the panic guard (`guard`), so no panic crosses into C;
//! - every pointer is checked before use, and buffers come with explicit lengths;
//! - output parameters are written only on success unless documented otherwise;
//! - results are `int`: [`RserpoolErr::Ok`] (0) or a negative, stable code.

/// Returns RSERPOOL_ERR_NULL_POINTER from the enclosing function when any of
/// the pointers is NULL.
macro_rules! nonnull {
    ($($p:expr),+) => {
        if $($p.is_null())||+ {
            return $crate::ffi::RserpoolErr::NullPointer as std::os::raw::c_int;
        }
    };
}

pub mod client;
mod decode;
pub mod error;
mod guard;
mod handles;
pub mod registrar;
pub mod session;
mod version;

pub use decode::{RSERPOOL_PPID_ASAP, RSERPOOL_PPID_ENRP};
pub use error::RserpoolErr;
pub use version::RSERPOOL_VERSION_NUMBER;

/// Success: the value every function returns when it worked.
pub const RSERPOOL_OK: std::os::raw::c_int = 0;
pub(crate) use guard::guard;
