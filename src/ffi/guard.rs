//! The panic guard around every exported function.

use std::os::raw::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::RserpoolErr;

/// What an exported function returns when its body panicked.
pub(crate) trait PanicFallback {
    fn on_panic() -> Self;
}

impl PanicFallback for c_int {
    fn on_panic() -> Self {
        RserpoolErr::Internal as c_int
    }
}

impl PanicFallback for *const c_char {
    fn on_panic() -> Self {
        std::ptr::null()
    }
}

impl PanicFallback for u32 {
    fn on_panic() -> Self {
        0
    }
}

impl PanicFallback for usize {
    fn on_panic() -> Self {
        0
    }
}

impl PanicFallback for () {
    fn on_panic() -> Self {}
}

/// Runs `f`, turning a panic into the return type's fallback value.
///
/// The closure is asserted unwind-safe: after a panic the caller only gets an
/// error code, and objects touched by the panicking call are protected by their
/// own locks (a poisoned or half-updated object reports errors afterwards).
pub(crate) fn guard<T: PanicFallback>(f: impl FnOnce() -> T) -> T {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => v,
        Err(_) => T::on_panic(),
    }
}
