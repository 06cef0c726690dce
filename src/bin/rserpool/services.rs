//! What `rserpool pe` serves and `rserpool pu` speaks: the classic services
//! over a session, RSPLIB's ping-pong, and the file transfer of the
//! applicability statement's fail-over example; their message formats and
//! cookies. Pure functions: the I/O is in `pe.rs` and `pu.rs`.
//!
//! # File transfer (`--service files=DIR`, `rserpool pu --fetch NAME`)
//!
//! The request/response protocol of draft-ietf-rserpool-applic §3.4, with
//! every number in network byte order, on PPID [`FILES_PPID`]:
//!
//! ```text
//! request  (PU -> PE):  offset u64 | name (UTF-8, the rest of the message)
//! response (PE -> PU):  offset u64 | length u32 | total u64 | data[length]
//! ```
//!
//! One request makes the PE send the file from `offset` to its end, in
//! responses of at most [`FILES_CHUNK`] data bytes, in order; `total` is the
//! whole file's length. The last response ends at `total` (an empty file or
//! an offset at the end: one response with `length` 0). An error (no such
//! file, a name leaving DIR, an offset past the end) is one response with
//! `length` 0xFFFFFFFF, `total` 0 and a UTF-8 reason as the rest of the
//! message. Names are relative to DIR; `..`, absolute names and NUL are
//! refused.
//!
//! After a fail-over the pool user asks the new PE again with the offset it
//! has reached (its fail-over callback, as in the draft), and keeps only the
//! bytes it has not written yet.
//!
//! # Ping-pong (`--service pingpong`, `rserpool pu --pingpong`)
//!
//! RSPLIB's `rspserver -pingpong` protocol, PPID 33, network byte order:
//! `Ping = type 1 | flags 0 | length u16 | message number u64 | data`,
//! `Pong = type 2 | flags 0 | length u16 | message number u64 | reply number
//! u64 | data` (`length` counts the whole message), and after each Pong the
//! cookie `"<PP-TD1>" | next reply number u64`. A new PE continues the reply
//! numbers from the cookie echo.
//!
//! # Cookies of the other services (`--cookies`)
//!
//! After each reply the PE sends the cookie `rserpool-SERVICE COUNT`
//! (text), COUNT being the replies the session has had from every PE so far
//! (for discard: messages taken). A PE that receives it as a cookie echo
//! continues counting from there (chargen continues its pattern).

use std::time::{SystemTime, UNIX_EPOCH};

/// PPID of the file transfer protocol (0: unspecified, like the classic
/// services' messages).
pub const FILES_PPID: u32 = 0;
/// Most data bytes in one file response.
pub const FILES_CHUNK: usize = 32 << 10;
/// The `length` of an error response.
pub const FILES_ERROR: u32 = u32::MAX;
/// Length of a file response header.
pub const FILES_HEADER: usize = 20;

/// RSPLIB's ping-pong PPID.
pub const PINGPONG_PPID: u32 = 33;
const PING: u8 = 1;
const PONG: u8 = 2;
const PP_COOKIE_ID: &[u8; 8] = b"<PP-TD1>";

/// A file request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRequest {
    /// Where to start.
    pub offset: u64,
    /// The file, relative to the PE's directory.
    pub name: String,
}

impl FileRequest {
    /// The request's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(8 + self.name.len());
        b.extend_from_slice(&self.offset.to_be_bytes());
        b.extend_from_slice(self.name.as_bytes());
        b
    }

    /// A request from its bytes (None: too short, not UTF-8, no name).
    pub fn decode(b: &[u8]) -> Option<FileRequest> {
        let offset = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let name = std::str::from_utf8(&b[8..]).ok()?;
        if name.is_empty() {
            return None;
        }
        Some(FileRequest {
            offset,
            name: name.to_string(),
        })
    }
}

/// A file response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileResponse {
    /// A portion of the file.
    Data {
        /// Where it starts.
        offset: u64,
        /// The whole file's length.
        total: u64,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The request failed.
    Error(String),
}

impl FileResponse {
    /// Header and data of a portion.
    pub fn encode_data(offset: u64, total: u64, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::with_capacity(FILES_HEADER + data.len());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(&total.to_be_bytes());
        b.extend_from_slice(data);
        b
    }

    /// An error response for a request at `offset`.
    pub fn encode_error(offset: u64, reason: &str) -> Vec<u8> {
        let mut b = Vec::with_capacity(FILES_HEADER + reason.len());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&FILES_ERROR.to_be_bytes());
        b.extend_from_slice(&0u64.to_be_bytes());
        b.extend_from_slice(reason.as_bytes());
        b
    }

    /// A response from its bytes (None: malformed).
    pub fn decode(b: &[u8]) -> Option<FileResponse> {
        let offset = u64::from_be_bytes(b.get(..8)?.try_into().ok()?);
        let length = u32::from_be_bytes(b.get(8..12)?.try_into().ok()?);
        let total = u64::from_be_bytes(b.get(12..20)?.try_into().ok()?);
        let rest = &b[FILES_HEADER..];
        if length == FILES_ERROR {
            return Some(FileResponse::Error(
                String::from_utf8_lossy(rest).into_owned(),
            ));
        }
        if rest.len() != length as usize || offset.checked_add(u64::from(length))? > total {
            return None;
        }
        Some(FileResponse::Data {
            offset,
            total,
            data: rest.to_vec(),
        })
    }
}

/// A file name a request may use: relative, no `..`, no NUL, not empty.
pub fn safe_file_name(name: &str) -> bool {
    !name.is_empty()
        && !name.contains('\0')
        && !name.starts_with('/')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != ".." && c != ".")
}

/// A Ping.
pub fn encode_ping(message_no: u64, data: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(12 + data.len()).ok()?;
    let mut b = Vec::with_capacity(usize::from(len));
    b.extend_from_slice(&[PING, 0]);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&message_no.to_be_bytes());
    b.extend_from_slice(data);
    Some(b)
}

/// A Ping's message number and data.
pub fn decode_ping(b: &[u8]) -> Option<(u64, &[u8])> {
    if b.len() < 12 || b[0] != PING {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if len < 12 || len > b.len() {
        return None;
    }
    let no = u64::from_be_bytes(b[4..12].try_into().ok()?);
    Some((no, &b[12..len]))
}

/// A Pong.
pub fn encode_pong(message_no: u64, reply_no: u64, data: &[u8]) -> Option<Vec<u8>> {
    let len = u16::try_from(20 + data.len()).ok()?;
    let mut b = Vec::with_capacity(usize::from(len));
    b.extend_from_slice(&[PONG, 0]);
    b.extend_from_slice(&len.to_be_bytes());
    b.extend_from_slice(&message_no.to_be_bytes());
    b.extend_from_slice(&reply_no.to_be_bytes());
    b.extend_from_slice(data);
    Some(b)
}

/// A Pong's message number, reply number and data.
pub fn decode_pong(b: &[u8]) -> Option<(u64, u64, &[u8])> {
    if b.len() < 20 || b[0] != PONG {
        return None;
    }
    let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if len < 20 || len > b.len() {
        return None;
    }
    let m = u64::from_be_bytes(b[4..12].try_into().ok()?);
    let r = u64::from_be_bytes(b[12..20].try_into().ok()?);
    Some((m, r, &b[20..len]))
}

/// RSPLIB's ping-pong cookie: the next reply number.
pub fn pingpong_cookie(next_reply: u64) -> Vec<u8> {
    let mut b = PP_COOKIE_ID.to_vec();
    b.extend_from_slice(&next_reply.to_be_bytes());
    b
}

/// The next reply number from a ping-pong cookie.
pub fn parse_pingpong_cookie(b: &[u8]) -> Option<u64> {
    if b.len() != 16 || &b[..8] != PP_COOKIE_ID {
        return None;
    }
    Some(u64::from_be_bytes(b[8..16].try_into().ok()?))
}

/// The cookie of the other services: `rserpool-SERVICE COUNT`.
pub fn service_cookie(service: &str, count: u64) -> Vec<u8> {
    format!("rserpool-{service} {count}").into_bytes()
}

/// The count of a service cookie for `service` (None: not ours, or another
/// service's).
pub fn parse_service_cookie(service: &str, b: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(b).ok()?;
    let rest = s.strip_prefix("rserpool-")?.strip_prefix(service)?;
    rest.strip_prefix(' ')?.parse().ok()
}

/// Line `n` of the RFC 864 character generator: 72 printable characters
/// (the 95 from ' ' to '~', each line starting one further), then CR LF.
pub fn chargen_line(n: u64) -> Vec<u8> {
    let start = (n % 95) as u8;
    let mut b: Vec<u8> = (0..72u8).map(|i| b' ' + (start + i) % 95).collect();
    b.extend_from_slice(b"\r\n");
    b
}

/// The time of day as RFC 867 suggests (any readable form): e.g.
/// `Monday, 22-February-1982 17:37:43.000123 UTC`, then LF.
pub fn daytime_text(now: SystemTime) -> String {
    const DAYS: [&str; 7] = [
        "Thursday",
        "Friday",
        "Saturday",
        "Sunday",
        "Monday",
        "Tuesday",
        "Wednesday",
    ];
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = secs / 86_400;
    let sod = secs % 86_400;
    let (y, m, day) = civil_from_days(days as i64);
    format!(
        "{}, {:02}-{}-{} {:02}:{:02}:{:02}.{:06} UTC\n",
        DAYS[(days % 7) as usize],
        day,
        MONTHS[(m - 1) as usize],
        y,
        sod / 3600,
        sod / 60 % 60,
        sod % 60,
        d.subsec_micros()
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's
/// civil_from_days algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn file_messages_round_trip() {
        let r = FileRequest {
            offset: 0x0102_0304_0506_0708,
            name: "a/b.txt".into(),
        };
        let b = r.encode();
        assert_eq!(&b[..8], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(FileRequest::decode(&b), Some(r));
        assert_eq!(FileRequest::decode(&[0; 8]), None, "no name");
        assert_eq!(FileRequest::decode(&[0; 5]), None);
        let b = FileResponse::encode_data(10, 13, b"abc");
        assert_eq!(
            b,
            [0, 0, 0, 0, 0, 0, 0, 10, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 13, b'a', b'b', b'c']
        );
        assert_eq!(
            FileResponse::decode(&b),
            Some(FileResponse::Data {
                offset: 10,
                total: 13,
                data: b"abc".to_vec()
            })
        );
        let e = FileResponse::encode_error(5, "no such file");
        assert_eq!(
            FileResponse::decode(&e),
            Some(FileResponse::Error("no such file".into()))
        );
        // Length and data disagree, or past the total: malformed.
        assert_eq!(FileResponse::decode(&b[..22]), None);
        assert_eq!(
            FileResponse::decode(&FileResponse::encode_data(11, 13, b"abc")),
            None
        );
        assert_eq!(FileResponse::decode(&[0; 19]), None);
    }

    #[test]
    fn file_names_stay_inside_the_directory() {
        for ok in ["a", "a/b", "x.txt", "a..b"] {
            assert!(safe_file_name(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../b",
            "a//b",
            "a/",
            "./a",
            "a\0b",
        ] {
            assert!(!safe_file_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn pingpong_as_rsplib_lays_it_out() {
        let p = encode_ping(7, b"hi").unwrap();
        assert_eq!(p, [1, 0, 0, 14, 0, 0, 0, 0, 0, 0, 0, 7, b'h', b'i']);
        assert_eq!(decode_ping(&p), Some((7, &b"hi"[..])));
        let q = encode_pong(7, 3, b"hi").unwrap();
        assert_eq!(&q[..4], &[2, 0, 0, 22]);
        assert_eq!(decode_pong(&q), Some((7, 3, &b"hi"[..])));
        assert_eq!(decode_pong(&p), None);
        assert_eq!(decode_ping(&q), None);
        assert_eq!(decode_ping(&[1, 0, 0, 40, 0, 0, 0, 0, 0, 0, 0, 0]), None);
        let c = pingpong_cookie(9);
        assert_eq!(c.len(), 16);
        assert_eq!(&c[..8], b"<PP-TD1>");
        assert_eq!(parse_pingpong_cookie(&c), Some(9));
        assert_eq!(parse_pingpong_cookie(b"<PP-TD1>"), None);
        assert!(encode_ping(0, &[0; 65535]).is_none());
    }

    #[test]
    fn service_cookies() {
        let c = service_cookie("echo", 12);
        assert_eq!(c, b"rserpool-echo 12");
        assert_eq!(parse_service_cookie("echo", &c), Some(12));
        assert_eq!(parse_service_cookie("chargen", &c), None);
        assert_eq!(parse_service_cookie("echo", b"rserpool-echo x"), None);
    }

    #[test]
    fn chargen_and_daytime() {
        let l0 = chargen_line(0);
        assert_eq!(l0.len(), 74);
        assert!(l0.starts_with(b" !\"#$%"));
        assert!(l0.ends_with(b"\r\n"));
        assert!(chargen_line(1).starts_with(b"!\"#$%"));
        assert_eq!(chargen_line(95), l0);
        let t = UNIX_EPOCH + Duration::from_secs(383_247_463) + Duration::from_micros(123);
        assert_eq!(
            daytime_text(t),
            "Monday, 22-February-1982 17:37:43.000123 UTC\n"
        );
        assert_eq!(
            daytime_text(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "Tuesday, 29-February-2000 00:00:00.000000 UTC\n"
        );
    }
}
