//! Decoding a message through the C API: for tools, logs and tests written in C.

use std::os::raw::c_int;

use super::{guard, RserpoolErr};
use crate::wire::{json, AsapMessage, EnrpMessage};

/// SCTP payload protocol identifier of ASAP messages.
pub const RSERPOOL_PPID_ASAP: u32 = 11;
/// SCTP payload protocol identifier of ENRP messages.
pub const RSERPOOL_PPID_ENRP: u32 = 12;

/// Decodes one ASAP (`ppid` 11) or ENRP (`ppid` 12) message and renders it as
/// compact JSON: message type name, flags, every parameter with its fields.
///
/// - `msg`, `msg_len`: the message bytes (not NULL, even when `msg_len` is 0).
/// - `json`, `json_cap`: the caller's buffer for the NUL-terminated JSON text;
///   `json` may be NULL only when `json_cap` is 0 (to ask for the size).
/// - `json_len` (not NULL): on success, the length of the JSON text without its
///   NUL. On `RSERPOOL_ERR_BUFFER_TOO_SMALL` it receives the buffer size needed,
///   NUL included (an exception to the output-parameter rule, so the caller can
///   retry with a large enough buffer).
/// - `error_offset` (may be NULL): on `RSERPOOL_ERR_MALFORMED`, the byte offset
///   of the problem (an exception to the output-parameter rule).
///
/// Returns `RSERPOOL_OK`, `RSERPOOL_ERR_NULL_POINTER`,
/// `RSERPOOL_ERR_INVALID_ARGUMENT` (ppid neither 11 nor 12),
/// `RSERPOOL_ERR_MALFORMED` or `RSERPOOL_ERR_BUFFER_TOO_SMALL`.
/// Thread-safe; nothing is retained after the call.
///
/// # Safety
/// `msg` must point to `msg_len` readable bytes and `json` to `json_cap`
/// writable bytes; `json_len` and `error_offset` (if not NULL) must be valid
/// for writing.
#[no_mangle]
pub unsafe extern "C" fn rserpool_decode_json(
    msg: *const u8,
    msg_len: usize,
    ppid: u32,
    json: *mut std::os::raw::c_char,
    json_cap: usize,
    json_len: *mut usize,
    error_offset: *mut usize,
) -> c_int {
    guard(|| {
        if msg.is_null() || json_len.is_null() || (json.is_null() && json_cap != 0) {
            return RserpoolErr::NullPointer as c_int;
        }
        // SAFETY: the caller guarantees `msg_len` readable bytes at `msg`.
        let bytes = unsafe { std::slice::from_raw_parts(msg, msg_len) };
        let decoded = match ppid {
            RSERPOOL_PPID_ASAP => AsapMessage::decode(bytes).map(|d| json::asap_decoded(&d)),
            RSERPOOL_PPID_ENRP => EnrpMessage::decode(bytes).map(|d| json::enrp_decoded(&d)),
            _ => return RserpoolErr::InvalidArgument as c_int,
        };
        let value = match decoded {
            Ok(v) => v,
            Err(e) => {
                if !error_offset.is_null() {
                    // SAFETY: checked non-NULL; the caller guarantees it is writable.
                    unsafe { *error_offset = e.offset };
                }
                return RserpoolErr::Malformed as c_int;
            }
        };
        let text = value.to_string();
        let needed = text.len() + 1;
        if needed > json_cap {
            // SAFETY: checked non-NULL above.
            unsafe { *json_len = needed };
            return RserpoolErr::BufferTooSmall as c_int;
        }
        // SAFETY: `json` has `json_cap >= needed` writable bytes (caller's promise).
        unsafe {
            std::ptr::copy_nonoverlapping(text.as_ptr(), json.cast::<u8>(), text.len());
            *json.add(text.len()) = 0;
            *json_len = text.len();
        }
        RserpoolErr::Ok as c_int
    })
}
