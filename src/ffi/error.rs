//! Stable error codes of the C API and `rserpool_strerror`.

use std::os::raw::{c_char, c_int};

use super::guard;

/// Result codes of the C API. 0 is success; failures are negative and grouped in
/// blocks by origin. Values are stable: a retired value is never reused.
///
/// - `-1 ..= -99`: the caller's arguments;
/// - `-100 ..= -199`: the peer's protocol answer (`-100 - cause` for the RFC 5354
///   error causes 0x0..0xa);
/// - `-200 ..= -299`: transport and operating system;
/// - `-300 ..= -399`: malformed input;
/// - `-900`: internal failure.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RserpoolErr {
    /// Success.
    Ok = 0,
    /// A required pointer argument was NULL.
    NullPointer = -1,
    /// An argument has a value outside its documented range.
    InvalidArgument = -2,
    /// An output buffer is too small; the function says how large it must be.
    BufferTooSmall = -3,
    /// The handle does not name a live object (closed, freed or never valid).
    InvalidHandle = -4,
    /// The operation is not possible in the object's current state.
    InvalidState = -5,
    /// No pool element with this identifier in the context (never registered,
    /// already deregistered, or given up by the library).
    UnknownPe = -6,
    /// A call that waits was made from a callback, on the context's own
    /// thread, which is the thread that would have to answer it (use the
    /// non-blocking form there: timeout 0, RSERPOOL_SESSION_NONBLOCK).
    WouldDeadlock = -7,
    /// The peer answered with an error cause this library does not know.
    ProtocolUnspecified = -100,
    /// Cause 0x1: the peer did not recognize a parameter.
    ProtocolUnrecognizedParameter = -101,
    /// Cause 0x2: the peer did not recognize a message.
    ProtocolUnrecognizedMessage = -102,
    /// Cause 0x3: the peer found invalid values.
    ProtocolInvalidValues = -103,
    /// Cause 0x4: the PE identifier is already used in the pool.
    ProtocolNonUniquePeId = -104,
    /// Cause 0x5: the policy differs from the pool's policy.
    ProtocolInconsistentPolicy = -105,
    /// Cause 0x6: the registrar lacks resources.
    ProtocolLackOfResources = -106,
    /// Cause 0x7: the transport type differs from the pool's.
    ProtocolInconsistentTransport = -107,
    /// Cause 0x8: the data/control configuration differs from the pool's.
    ProtocolInconsistentDataControl = -108,
    /// Cause 0x9: no pool with this handle.
    ProtocolUnknownPoolHandle = -109,
    /// Cause 0xa: rejected for security reasons.
    ProtocolSecurity = -110,
    /// No registrar could be reached.
    NoRegistrar = -200,
    /// The request timed out.
    Timeout = -201,
    /// The connection was lost.
    ConnectionLost = -202,
    /// The kernel has no SCTP support.
    NoSctp = -203,
    /// An operating system call failed.
    Os = -204,
    /// The operation would block (non-blocking call with nothing to do).
    WouldBlock = -205,
    /// Every pool element of the pool has been reported unreachable.
    NoUsableElement = -206,
    /// The session (or pool element server) is closed: by the application,
    /// by the peer, or because it gave up; nothing more will come.
    Closed = -207,
    /// The input is not a well-formed message.
    Malformed = -300,
    /// An internal failure (a bug): please report it.
    Internal = -900,
}

impl RserpoolErr {
    /// The code for RFC 5354 error cause `cause`.
    pub fn from_cause(cause: u16) -> RserpoolErr {
        use RserpoolErr::*;
        match cause {
            0x1 => ProtocolUnrecognizedParameter,
            0x2 => ProtocolUnrecognizedMessage,
            0x3 => ProtocolInvalidValues,
            0x4 => ProtocolNonUniquePeId,
            0x5 => ProtocolInconsistentPolicy,
            0x6 => ProtocolLackOfResources,
            0x7 => ProtocolInconsistentTransport,
            0x8 => ProtocolInconsistentDataControl,
            0x9 => ProtocolUnknownPoolHandle,
            0xa => ProtocolSecurity,
            _ => ProtocolUnspecified,
        }
    }

    const ALL: &'static [RserpoolErr] = {
        use RserpoolErr::*;
        &[
            Ok,
            NullPointer,
            InvalidArgument,
            BufferTooSmall,
            InvalidHandle,
            InvalidState,
            UnknownPe,
            WouldDeadlock,
            ProtocolUnspecified,
            ProtocolUnrecognizedParameter,
            ProtocolUnrecognizedMessage,
            ProtocolInvalidValues,
            ProtocolNonUniquePeId,
            ProtocolInconsistentPolicy,
            ProtocolLackOfResources,
            ProtocolInconsistentTransport,
            ProtocolInconsistentDataControl,
            ProtocolUnknownPoolHandle,
            ProtocolSecurity,
            NoRegistrar,
            Timeout,
            ConnectionLost,
            NoSctp,
            Os,
            WouldBlock,
            NoUsableElement,
            Closed,
            Malformed,
            Internal,
        ]
    };

    /// The code with value `code`, if it is one.
    pub fn from_code(code: c_int) -> Option<RserpoolErr> {
        Self::ALL.iter().copied().find(|e| *e as c_int == code)
    }

    /// A static, NUL-terminated description.
    pub fn message(self) -> &'static str {
        use RserpoolErr::*;
        match self {
            Ok => "success\0",
            NullPointer => "a required pointer argument is NULL\0",
            InvalidArgument => "invalid argument\0",
            BufferTooSmall => "output buffer too small\0",
            InvalidHandle => "invalid or closed handle\0",
            InvalidState => "operation not possible in the current state\0",
            ProtocolUnspecified => "registrar reported an unspecified error\0",
            ProtocolUnrecognizedParameter => "peer did not recognize a parameter\0",
            ProtocolUnrecognizedMessage => "peer did not recognize a message\0",
            ProtocolInvalidValues => "registrar rejected invalid values\0",
            ProtocolNonUniquePeId => "pool element identifier already in use\0",
            ProtocolInconsistentPolicy => "policy differs from the pool's policy\0",
            ProtocolLackOfResources => "registrar lacks resources\0",
            ProtocolInconsistentTransport => "transport type differs from the pool's\0",
            ProtocolInconsistentDataControl => {
                "data/control configuration differs from the pool's\0"
            }
            ProtocolUnknownPoolHandle => "unknown pool handle\0",
            ProtocolSecurity => "rejected due to security considerations\0",
            NoRegistrar => "no registrar reachable\0",
            Timeout => "request timed out\0",
            ConnectionLost => "connection lost\0",
            NoSctp => "the kernel has no SCTP support\0",
            Os => "operating system error\0",
            WouldBlock => "operation would block\0",
            UnknownPe => "no such pool element in this context\0",
            NoUsableElement => "every pool element of the pool is unreachable\0",
            WouldDeadlock => "a waiting call from a callback on the context's thread\0",
            Closed => "the session is closed\0",
            Malformed => "malformed message\0",
            Internal => "internal error\0",
        }
    }
}

/// Describes a result code.
///
/// Returns a static NUL-terminated string, never NULL; unknown codes give
/// "unknown error code". The string must not be freed or modified.
/// Thread-safe.
#[no_mangle]
pub extern "C" fn rserpool_strerror(code: c_int) -> *const c_char {
    const UNKNOWN: &str = "unknown error code\0";
    let p = guard(|| {
        let s = match RserpoolErr::from_code(code) {
            Some(e) => e.message(),
            None => UNKNOWN,
        };
        s.as_ptr().cast::<c_char>()
    });
    if p.is_null() {
        UNKNOWN.as_ptr().cast()
    } else {
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::CStr;

    #[test]
    fn every_code_has_a_distinct_message() {
        let mut seen = std::collections::HashSet::new();
        for &e in RserpoolErr::ALL {
            assert_eq!(RserpoolErr::from_code(e as c_int), Some(e));
            let m = e.message();
            assert!(m.ends_with('\0') && m.len() > 1);
            seen.insert(e as c_int);
        }
        assert_eq!(seen.len(), 29);
    }

    #[test]
    fn strerror_never_returns_null() {
        for code in -1000..10 {
            let p = rserpool_strerror(code);
            assert!(!p.is_null());
            let s = unsafe { CStr::from_ptr(p) }.to_str().unwrap();
            assert!(!s.is_empty());
        }
        let s = unsafe { CStr::from_ptr(rserpool_strerror(12345)) };
        assert_eq!(s.to_str().unwrap(), "unknown error code");
    }

    #[test]
    fn causes_map_to_their_block() {
        for c in 0u16..=0xa {
            let e = RserpoolErr::from_cause(c);
            if c == 0 {
                assert_eq!(e, RserpoolErr::ProtocolUnspecified);
            } else {
                assert_eq!(e as c_int, -100 - c_int::from(c));
            }
        }
        assert_eq!(
            RserpoolErr::from_cause(0xF001),
            RserpoolErr::ProtocolUnspecified
        );
    }
}
