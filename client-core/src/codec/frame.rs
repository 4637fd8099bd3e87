//! Binary frame layout (PROTOCOL §3): byte 0 is the kind.
//!
//! | kind | after byte 0 |
//! |---|---|
//! | `0x00` COMPLETE | the CBOR envelope |
//! | `0x01` FRAGMENT | `msg_id: u32 BE`, `index: u16 BE`, `count: u16 BE`, chunk bytes |

use alloc::{string::String, vec::Vec};
use core::fmt;

use crate::error::CloseCode;
use crate::text::{n, Text};

/// Frame kind: a whole envelope follows.
pub const KIND_COMPLETE: u8 = 0x00;
/// Frame kind: a fragment header and one chunk of an envelope follow.
pub const KIND_FRAGMENT: u8 = 0x01;

/// Bytes in a FRAGMENT frame before the chunk: kind, `msg_id`, `index`, `count`.
pub(crate) const FRAGMENT_HEADER_LEN: usize = 1 + 4 + 2 + 2;

/// The header of a FRAGMENT frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FragmentHeader {
    /// Identifies the message, per connection and per sender.
    pub msg_id: u32,
    /// This chunk's position, `0..count`.
    pub index: u16,
    /// How many chunks the message has, at least 2.
    pub count: u16,
}

impl FragmentHeader {
    /// Appends the whole frame header (kind byte included).
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        out.push(KIND_FRAGMENT);
        out.extend_from_slice(&self.msg_id.to_be_bytes());
        out.extend_from_slice(&self.index.to_be_bytes());
        out.extend_from_slice(&self.count.to_be_bytes());
    }
}

/// A decoded binary frame, borrowing its body from the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A whole envelope (its CBOR bytes, not yet checked).
    Complete(&'a [u8]),
    /// One chunk of an envelope.
    Fragment(FragmentHeader, &'a [u8]),
}

/// A broken rule of PROTOCOL §3; [`ProtocolViolation::close_code`] says how to close.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProtocolViolation {
    /// A binary message with no bytes at all.
    EmptyFrame,
    /// Byte 0 is neither COMPLETE nor FRAGMENT.
    UnknownKind(u8),
    /// A FRAGMENT frame of `len` bytes, shorter than its 9-byte header.
    TruncatedHeader { len: usize },
    /// A FRAGMENT frame with `count < 2`.
    CountTooSmall { msg_id: u32, count: u16 },
    /// A FRAGMENT frame with `index >= count`.
    IndexOutOfRange { msg_id: u32, index: u16, count: u16 },
    /// Duplicate or out-of-order index.
    UnexpectedIndex {
        msg_id: u32,
        expected: u16,
        got: u16,
    },
    /// A `count` different from the one the message's first fragment declared.
    CountChanged { msg_id: u32, was: u16, now: u16 },
    /// A message (COMPLETE, or fragments so far) larger than the receiver's limit.
    MessageTooBig { size: usize, limit: usize },
    /// A new fragmented message while `limit` others are still incomplete.
    TooManyPartialMessages { limit: usize },
    /// A fragmented message not completed within the receiver's completion timeout.
    IncompleteMessageExpired { msg_id: u32 },
}

impl ProtocolViolation {
    /// The close code the protocol names (1002 for framing errors, 1009 for size); see `docs/protocol-notes.md`
    /// for the two limits PROTOCOL.md leaves without a code.
    ///
    /// 1002 for every framing rule and for an expired partial message; 1009 for [`MessageTooBig`] and
    /// [`TooManyPartialMessages`] (both are memory limits).
    ///
    /// [`MessageTooBig`]: ProtocolViolation::MessageTooBig
    /// [`TooManyPartialMessages`]: ProtocolViolation::TooManyPartialMessages
    pub fn close_code(&self) -> CloseCode {
        match self {
            ProtocolViolation::MessageTooBig { .. }
            | ProtocolViolation::TooManyPartialMessages { .. } => CloseCode::MESSAGE_TOO_BIG,
            ProtocolViolation::EmptyFrame
            | ProtocolViolation::UnknownKind(_)
            | ProtocolViolation::TruncatedHeader { .. }
            | ProtocolViolation::CountTooSmall { .. }
            | ProtocolViolation::IndexOutOfRange { .. }
            | ProtocolViolation::UnexpectedIndex { .. }
            | ProtocolViolation::CountChanged { .. }
            | ProtocolViolation::IncompleteMessageExpired { .. } => CloseCode::PROTOCOL_ERROR,
        }
    }
}

impl<'a> Frame<'a> {
    /// Splits one binary WebSocket message into its kind, header and body, checking the rules a single frame
    /// can break on its own (sequence rules are the [`Reassembler`](super::Reassembler)'s).
    ///
    /// # Errors
    /// [`ProtocolViolation::EmptyFrame`], [`UnknownKind`](ProtocolViolation::UnknownKind),
    /// [`TruncatedHeader`](ProtocolViolation::TruncatedHeader), [`CountTooSmall`](ProtocolViolation::CountTooSmall)
    /// or [`IndexOutOfRange`](ProtocolViolation::IndexOutOfRange). Never panics, never allocates.
    pub fn decode(bytes: &'a [u8]) -> Result<Frame<'a>, ProtocolViolation> {
        let (&kind, body) = bytes.split_first().ok_or(ProtocolViolation::EmptyFrame)?;
        match kind {
            KIND_COMPLETE => Ok(Frame::Complete(body)),
            KIND_FRAGMENT => {
                let (header, chunk) = match body.split_first_chunk::<8>() {
                    Some(split) => split,
                    None => return Err(ProtocolViolation::TruncatedHeader { len: bytes.len() }),
                };
                let msg_id = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
                let index = u16::from_be_bytes([header[4], header[5]]);
                let count = u16::from_be_bytes([header[6], header[7]]);
                if count < 2 {
                    return Err(ProtocolViolation::CountTooSmall { msg_id, count });
                }
                if index >= count {
                    return Err(ProtocolViolation::IndexOutOfRange {
                        msg_id,
                        index,
                        count,
                    });
                }
                Ok(Frame::Fragment(
                    FragmentHeader {
                        msg_id,
                        index,
                        count,
                    },
                    chunk,
                ))
            }
            other => Err(ProtocolViolation::UnknownKind(other)),
        }
    }
}

impl ProtocolViolation {
    /// The close reason: the broken rule, with the numbers involved (built without `core::fmt`, see `text.rs`).
    pub(crate) fn message(&self) -> String {
        let t = |s: &str| Text::from(s);
        let msg_id = |t: Text, msg_id: &u32| t.str(" (msg_id ").num(*msg_id).str(")");
        match self {
            ProtocolViolation::EmptyFrame => t("empty binary frame"),
            ProtocolViolation::UnknownKind(kind) => {
                // `{kind:02x}` by hand.
                let hex = |n: u8| b"0123456789abcdef"[usize::from(n & 0xf)];
                let digits = [hex(kind >> 4), hex(*kind)];
                t("unknown frame kind 0x").str(core::str::from_utf8(&digits).unwrap_or_default())
            }
            ProtocolViolation::TruncatedHeader { len } => t("fragment frame of ")
                .num(n(*len))
                .str(" bytes is shorter than its ")
                .num(n(FRAGMENT_HEADER_LEN))
                .str("-byte header"),
            ProtocolViolation::CountTooSmall { msg_id: id, count } => {
                msg_id(t("fragment count ").num(*count).str(" < 2"), id)
            }
            ProtocolViolation::IndexOutOfRange {
                msg_id: id,
                index,
                count,
            } => msg_id(
                t("fragment index ")
                    .num(*index)
                    .str(" >= count ")
                    .num(*count),
                id,
            ),
            ProtocolViolation::UnexpectedIndex {
                msg_id: id,
                expected,
                got,
            } => msg_id(
                t("fragment index ")
                    .num(*got)
                    .str(", expected ")
                    .num(*expected),
                id,
            ),
            ProtocolViolation::CountChanged {
                msg_id: id,
                was,
                now,
            } => msg_id(
                t("fragment count changed from ")
                    .num(*was)
                    .str(" to ")
                    .num(*now),
                id,
            ),
            ProtocolViolation::MessageTooBig { size, limit } => t("message of ")
                .num(n(*size))
                .str(" bytes exceeds the ")
                .num(n(*limit))
                .str("-byte limit"),
            ProtocolViolation::TooManyPartialMessages { limit } => {
                t("more than ").num(n(*limit)).str(" partial messages")
            }
            ProtocolViolation::IncompleteMessageExpired { msg_id: id } => {
                msg_id(t("fragmented message not completed in time"), id)
            }
        }
        .into()
    }
}

impl fmt::Display for ProtocolViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())
    }
}

impl core::error::Error for ProtocolViolation {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A FRAGMENT frame built by hand (the codec's tests share it).
    pub(crate) fn fragment(msg_id: u32, index: u16, count: u16, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        FragmentHeader {
            msg_id,
            index,
            count,
        }
        .write_to(&mut out);
        out.extend_from_slice(chunk);
        out
    }

    #[test]
    fn decodes_complete_frame_body() {
        assert_eq!(Frame::decode(&[0x00, 0xa0]), Ok(Frame::Complete(&[0xa0])));
    }

    #[test]
    fn decodes_fragment_header_big_endian() {
        let bytes = fragment(0x0102_0304, 1, 3, b"abc");
        assert_eq!(bytes[..FRAGMENT_HEADER_LEN], [1, 1, 2, 3, 4, 0, 1, 0, 3]);
        let header = FragmentHeader {
            msg_id: 0x0102_0304,
            index: 1,
            count: 3,
        };
        assert_eq!(Frame::decode(&bytes), Ok(Frame::Fragment(header, b"abc")));
    }

    /// The messages are built without `core::fmt` (text.rs); they read as the `format!` strings they replaced.
    #[test]
    fn messages_read_as_their_format_strings() {
        let cases = [
            (ProtocolViolation::EmptyFrame, "empty binary frame".to_owned()),
            (
                ProtocolViolation::TruncatedHeader { len: 3 },
                format!("fragment frame of 3 bytes is shorter than its {FRAGMENT_HEADER_LEN}-byte header"),
            ),
            (
                ProtocolViolation::CountTooSmall { msg_id: 7, count: 1 },
                "fragment count 1 < 2 (msg_id 7)".to_owned(),
            ),
            (
                ProtocolViolation::IndexOutOfRange { msg_id: 7, index: 4, count: 3 },
                "fragment index 4 >= count 3 (msg_id 7)".to_owned(),
            ),
            (
                ProtocolViolation::UnexpectedIndex { msg_id: 7, expected: 1, got: 2 },
                "fragment index 2, expected 1 (msg_id 7)".to_owned(),
            ),
            (
                ProtocolViolation::CountChanged { msg_id: 7, was: 3, now: 4 },
                "fragment count changed from 3 to 4 (msg_id 7)".to_owned(),
            ),
            (
                ProtocolViolation::MessageTooBig { size: 17_000_000, limit: 16_777_216 },
                "message of 17000000 bytes exceeds the 16777216-byte limit".to_owned(),
            ),
            (
                ProtocolViolation::TooManyPartialMessages { limit: 8 },
                "more than 8 partial messages".to_owned(),
            ),
            (
                ProtocolViolation::IncompleteMessageExpired { msg_id: 4_294_967_295 },
                "fragmented message not completed in time (msg_id 4294967295)".to_owned(),
            ),
        ];
        for (violation, text) in cases {
            assert_eq!(violation.to_string(), text);
        }
    }

    #[test]
    fn refuses_empty_frame_with_1002() {
        let e = Frame::decode(&[]).unwrap_err();
        assert_eq!(e, ProtocolViolation::EmptyFrame);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn refuses_unknown_kind_with_1002() {
        let e = Frame::decode(&[0x02, 0xa0]).unwrap_err();
        assert_eq!(e, ProtocolViolation::UnknownKind(2));
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        for kind in [0x02, 0x0a, 0x10, 0xab, 0xff] {
            assert_eq!(
                ProtocolViolation::UnknownKind(kind).to_string(),
                format!("unknown frame kind 0x{kind:02x}")
            );
        }
    }

    #[test]
    fn refuses_fragment_shorter_than_its_header_with_1002() {
        for len in 1..FRAGMENT_HEADER_LEN {
            let bytes = &fragment(7, 0, 2, b"")[..len];
            let e = Frame::decode(bytes).unwrap_err();
            assert_eq!(e, ProtocolViolation::TruncatedHeader { len });
            assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn refuses_count_below_two_with_1002() {
        for count in [0, 1] {
            let e = Frame::decode(&fragment(7, 0, count, b"x")).unwrap_err();
            assert_eq!(e, ProtocolViolation::CountTooSmall { msg_id: 7, count });
            assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn refuses_index_at_or_beyond_count_with_1002() {
        let e = Frame::decode(&fragment(7, 2, 2, b"x")).unwrap_err();
        assert_eq!(
            e,
            ProtocolViolation::IndexOutOfRange {
                msg_id: 7,
                index: 2,
                count: 2
            }
        );
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn size_limits_close_with_1009_and_framing_rules_with_1002() {
        assert_eq!(
            ProtocolViolation::MessageTooBig { size: 2, limit: 1 }.close_code(),
            CloseCode::MESSAGE_TOO_BIG
        );
        assert_eq!(
            ProtocolViolation::TooManyPartialMessages { limit: 8 }.close_code(),
            CloseCode::MESSAGE_TOO_BIG
        );
        for v in [
            ProtocolViolation::UnexpectedIndex {
                msg_id: 1,
                expected: 1,
                got: 0,
            },
            ProtocolViolation::CountChanged {
                msg_id: 1,
                was: 2,
                now: 3,
            },
            ProtocolViolation::IncompleteMessageExpired { msg_id: 1 },
        ] {
            assert_eq!(v.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }
}
