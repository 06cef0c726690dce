//! Library version.

use std::os::raw::c_char;

use super::guard;

/// The version of the header: `major * 10000 + minor * 100 + patch`. Compare it
/// with `rserpool_version_number()` to detect a header/library mismatch.
pub const RSERPOOL_VERSION_NUMBER: u32 = 100;

const VERSION_C: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");

/// The library version as a static NUL-terminated string, e.g. "0.1.0".
///
/// Never NULL; the string must not be freed or modified. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_version() -> *const c_char {
    let p = guard(|| VERSION_C.as_ptr().cast::<c_char>());
    if p.is_null() {
        VERSION_C.as_ptr().cast()
    } else {
        p
    }
}

/// The library version as a number: `major * 10000 + minor * 100 + patch`.
///
/// Compare it with RSERPOOL_VERSION_NUMBER from the header to detect a header
/// and library mismatch. Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_version_number() -> u32 {
    guard(version_number)
}

fn version_number() -> u32 {
    let num = |s: &str| s.parse::<u32>().unwrap_or(0);
    num(env!("CARGO_PKG_VERSION_MAJOR")) * 10000
        + num(env!("CARGO_PKG_VERSION_MINOR")) * 100
        + num(env!("CARGO_PKG_VERSION_PATCH"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_matches_cargo() {
        let s = unsafe { std::ffi::CStr::from_ptr(rserpool_version()) };
        assert_eq!(s.to_str().unwrap(), env!("CARGO_PKG_VERSION"));
        assert_eq!(rserpool_version_number(), version_number());
        assert_eq!(
            RSERPOOL_VERSION_NUMBER,
            version_number(),
            "update RSERPOOL_VERSION_NUMBER with the version in Cargo.toml"
        );
    }
}
