//! TLV framing shared by every parameter (RFC 5354 §2, digest §2.2-§2.3):
//! a bounds-checked cursor over a container, the unknown-type action bits, and
//! the write-header-then-patch-length helpers used by the encoders.

use super::error::{DecodeError, DecodeErrorKind};
use super::types::{cause, ptype, ErrorCause};

/// `x` rounded up to a multiple of 4.
#[inline]
pub const fn roundup4(x: usize) -> usize {
    (x + 3) & !3
}

/// Wire size (padded) of a TLV whose value is `value_len` bytes long.
#[inline]
pub const fn tlv_size(value_len: usize) -> usize {
    roundup4(4 + value_len)
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

// ---------------------------------------------------------------- encoding

/// Start a TLV (or message header): write type and a zero Length, return the
/// start position for [`end_tlv`].
#[inline]
pub(crate) fn begin_tlv(out: &mut Vec<u8>, t: u16) -> usize {
    let start = out.len();
    out.extend_from_slice(&t.to_be_bytes());
    out.extend_from_slice(&[0, 0]);
    start
}

/// Finish the TLV (or message) started at `start`: patch its Length, which
/// excludes `inner_pad` (the padding after its last nested TLV, RFC 5354 §2),
/// then pad to 4. Returns the trailing padding now at the end of `out`, which
/// the enclosing container must exclude from its own Length.
#[inline]
pub(crate) fn end_tlv(out: &mut Vec<u8>, start: usize, inner_pad: usize) -> usize {
    let written = out.len() - start;
    let len = written - inner_pad;
    debug_assert!(
        len <= 0xFFFF,
        "parameter or message longer than 65535 bytes"
    );
    out[start + 2..start + 4].copy_from_slice(&(len as u16).to_be_bytes());
    let pad = roundup4(written) - written;
    out.resize(out.len() + pad, 0);
    pad + inner_pad
}

/// Write a leaf TLV with the given value; returns its padding.
#[inline]
pub(crate) fn put_leaf(out: &mut Vec<u8>, t: u16, value: &[u8]) -> usize {
    let start = begin_tlv(out, t);
    out.extend_from_slice(value);
    end_tlv(out, start, 0)
}

// ---------------------------------------------------------------- decoding

/// One TLV seen by the cursor. Offsets are absolute (into the buffer given to
/// the decoder).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Tlv<'a> {
    /// Parameter type.
    pub ty: u16,
    /// Offset of the TLV header.
    pub off: usize,
    /// Header and value, without padding (what causes 0x1/0x3 carry).
    pub raw: &'a [u8],
    /// The value.
    pub value: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// Offset of the value.
    pub fn value_off(&self) -> usize {
        self.off + 4
    }

    /// An `InvalidValue` error for this TLV.
    pub fn invalid(&self, problem: String) -> DecodeError {
        DecodeError::new(
            self.off,
            DecodeErrorKind::InvalidValue {
                param_type: self.ty,
                problem,
                tlv: self.raw.to_vec(),
            },
        )
    }

    /// Check a fixed TLV Length.
    pub fn expect_len(&self, len: usize) -> Result<(), DecodeError> {
        if self.raw.len() != len {
            return Err(self.invalid(format!("length {}, expected {len}", self.raw.len())));
        }
        Ok(())
    }

    /// Check a minimum value length (fixed fields before nested TLVs).
    pub fn expect_min_value(&self, min: usize) -> Result<(), DecodeError> {
        if self.value.len() < min {
            return Err(self.invalid(format!(
                "length {}, expected at least {}",
                self.raw.len(),
                4 + min
            )));
        }
        Ok(())
    }

    /// A cursor over the TLVs nested in this one's value after `skip` fixed bytes.
    pub fn nested(&self, buf: &'a [u8], skip: usize) -> Cursor<'a> {
        let start = self.value_off() + skip;
        Cursor {
            buf,
            pos: start,
            end: self.off + self.raw.len(),
        }
    }
}

/// A bounds-checked walk over the TLVs of one container `buf[pos..end]`.
/// A TLV's Length must be >= 4 and fit in the container; the next TLV starts
/// at `roundup4(Length)`, clipped to the container end (so a container Length
/// that excludes or includes its last child's padding both work, digest §2.3).
#[derive(Debug, Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

impl<'a> Cursor<'a> {
    /// A cursor over `buf[pos..end]`; `end <= buf.len()` is the caller's duty.
    pub fn new(buf: &'a [u8], pos: usize, end: usize) -> Self {
        debug_assert!(pos <= end && end <= buf.len());
        Cursor { buf, pos, end }
    }

    /// Current position (where a missing parameter would have started).
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// The next framed TLV, whatever its type; `code` names type-like fields in
    /// errors (used for error causes too).
    pub fn next_raw(&mut self) -> Result<Option<Tlv<'a>>, DecodeError> {
        if self.pos >= self.end {
            return Ok(None);
        }
        let off = self.pos;
        let left = self.end - off;
        if left < 4 {
            return Err(DecodeError::new(
                off,
                DecodeErrorKind::ShortParameterHeader { available: left },
            ));
        }
        let ty = be16(self.buf, off);
        let len = be16(self.buf, off + 2) as usize;
        if len < 4 {
            return Err(DecodeError::new(
                off,
                DecodeErrorKind::ParameterLengthTooSmall {
                    param_type: ty,
                    length: len,
                },
            ));
        }
        if len > left {
            return Err(DecodeError::new(
                off,
                DecodeErrorKind::ParameterOverrun {
                    param_type: ty,
                    length: len,
                    available: left,
                },
            ));
        }
        self.pos = (off + roundup4(len)).min(self.end);
        let raw = &self.buf[off..off + len];
        Ok(Some(Tlv {
            ty,
            off,
            raw,
            value: &raw[4..],
        }))
    }
}

/// True for the parameter types this codec understands anywhere (0x0001-0x0010).
/// The Handle Resolution option (0x803f) is only understood inside
/// ASAP_HANDLE_RESOLUTION; elsewhere its action bits (`10`) apply.
#[inline]
fn is_known(t: u16, hropt: bool) -> bool {
    (ptype::IPV4_ADDRESS..=ptype::OPAQUE_TRANSPORT).contains(&t)
        || (hropt && t == ptype::HANDLE_RESOLUTION_OPTION)
}

/// A TLV sequence with one TLV of look-ahead, applying the unknown-parameter
/// action bits (digest §2.2) and collecting skip-and-report causes.
#[derive(Debug)]
pub(crate) struct Params<'a, 'r> {
    cur: Cursor<'a>,
    buf: &'a [u8],
    unrec: &'r mut Vec<ErrorCause>,
    peeked: Option<Tlv<'a>>,
    hropt: bool,
    context: &'static str,
}

impl<'a, 'r> Params<'a, 'r> {
    /// Walk `cur`, naming `context` in errors.
    pub fn new(
        buf: &'a [u8],
        cur: Cursor<'a>,
        unrec: &'r mut Vec<ErrorCause>,
        context: &'static str,
    ) -> Self {
        Params {
            cur,
            buf,
            unrec,
            peeked: None,
            hropt: false,
            context,
        }
    }

    /// Also understand the Handle Resolution option (0x803f).
    pub fn with_hropt(mut self) -> Self {
        self.hropt = true;
        self
    }

    /// The whole buffer (for nested cursors).
    pub fn buf(&self) -> &'a [u8] {
        self.buf
    }

    /// The cause list nested decoders must add to.
    pub fn unrec(&mut self) -> &mut Vec<ErrorCause> {
        self.unrec
    }

    fn fetch(&mut self) -> Result<Option<Tlv<'a>>, DecodeError> {
        loop {
            let Some(t) = self.cur.next_raw()? else {
                return Ok(None);
            };
            if is_known(t.ty, self.hropt) {
                return Ok(Some(t));
            }
            match t.ty & 0xC000 {
                0x0000 | 0x4000 => {
                    return Err(DecodeError::new(
                        t.off,
                        DecodeErrorKind::UnknownParameter {
                            param_type: t.ty,
                            tlv: t.raw.to_vec(),
                        },
                    ))
                }
                0x8000 => {}
                _ => self.unrec.push(ErrorCause::with_info(
                    cause::UNRECOGNIZED_PARAMETER,
                    t.raw.to_vec(),
                )),
            }
        }
    }

    /// Type of the next known parameter, without consuming it.
    pub fn peek(&mut self) -> Result<Option<u16>, DecodeError> {
        if self.peeked.is_none() {
            self.peeked = self.fetch()?;
        }
        Ok(self.peeked.map(|t| t.ty))
    }

    /// The next known parameter.
    pub fn next(&mut self) -> Result<Option<Tlv<'a>>, DecodeError> {
        match self.peeked.take() {
            Some(t) => Ok(Some(t)),
            None => self.fetch(),
        }
    }

    /// The next parameter if it has type `ty`.
    pub fn take_if(&mut self, ty: u16) -> Result<Option<Tlv<'a>>, DecodeError> {
        if self.peek()? == Some(ty) {
            self.next()
        } else {
            Ok(None)
        }
    }

    /// The next parameter, which must pass `ok`; `expected` names it in errors.
    pub fn expect_with(
        &mut self,
        ok: impl Fn(u16) -> bool,
        expected: &'static str,
    ) -> Result<Tlv<'a>, DecodeError> {
        match self.next()? {
            Some(t) if ok(t.ty) => Ok(t),
            Some(t) => Err(self.unexpected(&t)),
            None => Err(DecodeError::new(
                self.cur.pos(),
                DecodeErrorKind::MissingParameter {
                    expected,
                    context: self.context,
                },
            )),
        }
    }

    /// The next parameter, which must have type `ty`.
    pub fn expect(&mut self, ty: u16, expected: &'static str) -> Result<Tlv<'a>, DecodeError> {
        self.expect_with(|t| t == ty, expected)
    }

    /// The error for a known parameter that is not allowed here.
    pub fn unexpected(&self, t: &Tlv<'_>) -> DecodeError {
        DecodeError::new(
            t.off,
            DecodeErrorKind::UnexpectedParameter {
                param_type: t.ty,
                context: self.context,
            },
        )
    }

    /// Require that no known parameter is left (unknown ones are handled by
    /// their action bits).
    pub fn finish(mut self) -> Result<(), DecodeError> {
        match self.next()? {
            Some(t) => Err(self.unexpected(&t)),
            None => Ok(()),
        }
    }
}
