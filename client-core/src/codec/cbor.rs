//! A minimal CBOR (RFC 8949) reader and writer over byte slices: item headers, and a walker that finds where
//! one data item ends.
//!
//! The walker is iterative with a fixed-size stack of open containers, so hostile nesting cannot overflow the
//! call stack; it never allocates, and it refuses any declared length that exceeds the bytes actually left
//! (a definite array of `n` items needs at least `n` more bytes, a map at least `2n`). It checks
//! well-formedness (RFC 8949 §3 and Appendix C), not validity: text strings inside a skipped item are not
//! checked for UTF-8, tags are not interpreted. Nothing here panics on any input.
//!
//! The one home of CBOR item headers in Rust: the envelope codec and every other crate read and write them
//! here. (The browser package's JS value walk, `client-wasm/js/errors.js`, has its own few lines in JS, where a
//! call into wasm per item would cost more than they do; its tests hold it to [`write_header`] and
//! [`read_header`].)

use super::envelope::MAX_DEPTH;
use crate::text::{n, Text};
use alloc::{string::String, vec::Vec};

/// Major type 0: unsigned integer.
pub const MAJOR_UINT: u8 = 0;
/// Major type 1: negative integer `-1 - n`.
pub const MAJOR_NINT: u8 = 1;
/// Major type 2: byte string.
pub const MAJOR_BYTES: u8 = 2;
/// Major type 3: UTF-8 text string.
pub const MAJOR_TEXT: u8 = 3;
/// Major type 4: array.
pub const MAJOR_ARRAY: u8 = 4;
/// Major type 5: map.
pub const MAJOR_MAP: u8 = 5;
/// Major type 6: tag.
pub const MAJOR_TAG: u8 = 6;
/// Major type 7: floats and simple values (`false`, `true`, `null`, …), and the break byte.
pub const MAJOR_SIMPLE: u8 = 7;

const BREAK: u8 = 0xff;

/// Why bytes are not one well-formed item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WalkError {
    /// The input ends inside an item, or a declared length exceeds the bytes left. `at` is the offset of the
    /// header that could not be satisfied.
    Truncated { at: usize },
    /// Not well-formed CBOR at offset `at`.
    Malformed { at: usize, what: &'static str },
    /// More than [`MAX_DEPTH`] arrays, maps and tags open at once.
    TooDeep,
}

impl WalkError {
    /// A short description for error messages.
    pub(crate) fn describe(&self) -> String {
        match self {
            WalkError::Truncated { at } => {
                Text::from("truncated item or length beyond the input at byte ").num(n(*at))
            }
            WalkError::Malformed { at, what } => Text::from(*what).str(" at byte ").num(n(*at)),
            WalkError::TooDeep => Text::from("nested deeper than ").num(n(MAX_DEPTH)),
        }
        .into()
    }
}

/// The argument of an item header: a number (value, length or count) or "indefinite length".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arg {
    /// The value, length or count, whichever the major type carries.
    Value(u64),
    /// Additional information 31: an indefinite-length string, array or map, or the break byte.
    Indefinite,
}

/// One decoded item header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The major type, 0–7 (`MAJOR_*`).
    pub major: u8,
    /// The low five bits of the initial byte, needed to tell floats and simple values apart.
    pub info: u8,
    /// The value, length or count the header carries.
    pub arg: Arg,
}

/// Reads the header at `pos`; returns it and the offset just after it.
///
/// The break byte `0xff` is returned as major 7 with [`Arg::Indefinite`]; callers that do not expect one
/// treat it as malformed.
///
/// # Errors
/// [`WalkError::Truncated`] when the header runs past the input, [`WalkError::Malformed`] for the reserved
/// additional-information values 28–30.
pub fn read_header(bytes: &[u8], pos: usize) -> Result<(Header, usize), WalkError> {
    let initial = *bytes.get(pos).ok_or(WalkError::Truncated { at: pos })?;
    let major = initial >> 5;
    let info = initial & 0x1f;
    let (arg, next) = match info {
        0..=23 => (Arg::Value(u64::from(info)), pos + 1),
        24..=27 => {
            let width = 1usize << (info - 24);
            let start = pos + 1;
            let field = bytes
                .get(start..start + width)
                .ok_or(WalkError::Truncated { at: pos })?;
            let value = field.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
            (Arg::Value(value), start + width)
        }
        28..=30 => {
            return Err(WalkError::Malformed {
                at: pos,
                what: "reserved additional information",
            })
        }
        _ => (Arg::Indefinite, pos + 1),
    };
    Ok((Header { major, info, arg }, next))
}

/// Skips a string (major 2 or 3) whose header has just been read; returns the offset after it.
fn skip_string(
    bytes: &[u8],
    at: usize,
    header: Header,
    mut pos: usize,
) -> Result<usize, WalkError> {
    match header.arg {
        Arg::Value(len) => advance(bytes, at, pos, len),
        Arg::Indefinite => loop {
            // Chunks must be definite strings of the same major type (RFC 8949 §3.2.3).
            if bytes.get(pos) == Some(&BREAK) {
                return Ok(pos + 1);
            }
            let (chunk, next) = read_header(bytes, pos)?;
            match chunk.arg {
                Arg::Value(len) if chunk.major == header.major => {
                    pos = advance(bytes, pos, next, len)?
                }
                _ => {
                    return Err(WalkError::Malformed {
                        at: pos,
                        what: "bad chunk in indefinite-length string",
                    })
                }
            }
        },
    }
}

/// `pos + len`, when that many bytes are left; never trusts `len` beyond the input.
fn advance(bytes: &[u8], at: usize, pos: usize, len: u64) -> Result<usize, WalkError> {
    let left = bytes.len().saturating_sub(pos);
    match usize::try_from(len) {
        Ok(len) if len <= left => Ok(pos + len),
        _ => Err(WalkError::Truncated { at }),
    }
}

/// An open container on the walker's stack.
#[derive(Debug, Clone, Copy)]
enum Open {
    /// Items still to read in a definite array, map (2 per entry) or tag (1).
    Items(u64),
    /// An indefinite array or map; for a map, `odd` says a key is waiting for its value.
    Indefinite { map: bool, odd: bool },
}

// The stack holds each `Open` packed into a `u64`: set up as an array of the enum (16 bytes, written element by
// element), it took half of `skip_item`'s time in the codec benchmark's profile; 1 KiB of zeroes is one memset.
// A count never reaches the three values at the top: it is checked against the bytes left before it is pushed.
const PACKED_INDEFINITE_ARRAY: u64 = u64::MAX;
const PACKED_INDEFINITE_MAP: u64 = u64::MAX - 1;
const PACKED_INDEFINITE_MAP_ODD: u64 = u64::MAX - 2;

impl Open {
    fn pack(self) -> u64 {
        match self {
            Open::Items(n) => n,
            Open::Indefinite { map: false, .. } => PACKED_INDEFINITE_ARRAY,
            Open::Indefinite {
                map: true,
                odd: false,
            } => PACKED_INDEFINITE_MAP,
            Open::Indefinite {
                map: true,
                odd: true,
            } => PACKED_INDEFINITE_MAP_ODD,
        }
    }

    fn unpack(packed: u64) -> Open {
        match packed {
            PACKED_INDEFINITE_ARRAY => Open::Indefinite {
                map: false,
                odd: false,
            },
            PACKED_INDEFINITE_MAP => Open::Indefinite {
                map: true,
                odd: false,
            },
            PACKED_INDEFINITE_MAP_ODD => Open::Indefinite {
                map: true,
                odd: true,
            },
            n => Open::Items(n),
        }
    }
}

/// Finds the end of the one data item starting at `pos`, allowing at most [`MAX_DEPTH`] nested arrays, maps
/// and tags. Never allocates and never recurses.
///
/// # Errors
/// [`WalkError`] when the item is truncated, malformed or too deep.
pub(crate) fn skip_item(bytes: &[u8], mut pos: usize) -> Result<usize, WalkError> {
    // Fast path for the common scalar and string items: no stack to set up.
    let (header, next) = read_header(bytes, pos)?;
    match (header.major, header.arg) {
        (MAJOR_UINT | MAJOR_NINT, Arg::Value(_)) => return Ok(next),
        (MAJOR_BYTES | MAJOR_TEXT, _) => return skip_string(bytes, pos, header, next),
        _ => {}
    }
    let mut stack = [0u64; MAX_DEPTH];
    let mut depth = 0usize;
    loop {
        let at = pos;
        // Read one item (or the break that closes an indefinite container).
        let completed_item = if bytes.get(pos) == Some(&BREAK) {
            match depth.checked_sub(1).map(|top| Open::unpack(stack[top])) {
                Some(Open::Indefinite { map, odd }) => {
                    if map && odd {
                        return Err(WalkError::Malformed {
                            at,
                            what: "indefinite map ends after a key",
                        });
                    }
                    depth -= 1;
                    pos += 1;
                    true
                }
                _ => {
                    return Err(WalkError::Malformed {
                        at,
                        what: "unexpected break",
                    })
                }
            }
        } else {
            let (header, next) = read_header(bytes, pos)?;
            pos = next;
            let open = match (header.major, header.arg) {
                (MAJOR_UINT | MAJOR_NINT, Arg::Value(_)) => None,
                (MAJOR_BYTES | MAJOR_TEXT, _) => {
                    pos = skip_string(bytes, at, header, pos)?;
                    None
                }
                (MAJOR_ARRAY, Arg::Value(0)) | (MAJOR_MAP, Arg::Value(0)) => None,
                (MAJOR_ARRAY, Arg::Value(n)) => {
                    // Each item takes at least one byte: a count beyond the input is a lie.
                    advance(bytes, at, pos, n)?;
                    Some(Open::Items(n))
                }
                (MAJOR_MAP, Arg::Value(n)) => {
                    let items = n.checked_mul(2).ok_or(WalkError::Truncated { at })?;
                    advance(bytes, at, pos, items)?;
                    Some(Open::Items(items))
                }
                (MAJOR_ARRAY, Arg::Indefinite) => Some(Open::Indefinite {
                    map: false,
                    odd: false,
                }),
                (MAJOR_MAP, Arg::Indefinite) => Some(Open::Indefinite {
                    map: true,
                    odd: false,
                }),
                (MAJOR_TAG, Arg::Value(_)) => Some(Open::Items(1)),
                (MAJOR_SIMPLE, Arg::Value(value)) => {
                    // Two-byte simple values below 32 are not well-formed (RFC 8949 §3.3).
                    if header.info == 24 && value < 32 {
                        return Err(WalkError::Malformed {
                            at,
                            what: "two-byte simple value below 32",
                        });
                    }
                    None
                }
                _ => {
                    return Err(WalkError::Malformed {
                        at,
                        what: "indefinite length on a non-container",
                    })
                }
            };
            match open {
                Some(open) => {
                    let slot = stack.get_mut(depth).ok_or(WalkError::TooDeep)?;
                    *slot = open.pack();
                    depth += 1;
                    false
                }
                None => true,
            }
        };
        if !completed_item {
            continue;
        }
        // An item is complete: count it against its parents, closing every definite container it fills.
        loop {
            let Some(top) = depth.checked_sub(1) else {
                return Ok(pos);
            };
            let slot = &mut stack[top];
            match Open::unpack(*slot) {
                Open::Items(left) if left > 1 => {
                    *slot = left - 1;
                    break;
                }
                Open::Items(_) => depth -= 1,
                Open::Indefinite { map, odd } => {
                    *slot = Open::Indefinite { map, odd: !odd }.pack();
                    break;
                }
            }
        }
    }
}

/// Appends a header with the shortest encoding of `value` (RFC 8949 §4.2.1 preferred serialization).
pub fn write_header(out: &mut Vec<u8>, major: u8, value: u64) {
    let major = major << 5;
    // The casts below are range-checked by the match arms.
    match value {
        0..=23 => out.push(major | value as u8),
        24..=0xff => out.extend_from_slice(&[major | 24, value as u8]),
        0x100..=0xffff => {
            out.push(major | 25);
            out.extend_from_slice(&(value as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(major | 26);
            out.extend_from_slice(&(value as u32).to_be_bytes());
        }
        _ => {
            out.push(major | 27);
            out.extend_from_slice(&value.to_be_bytes());
        }
    }
}

/// Appends a definite text string.
pub(crate) fn write_text(out: &mut Vec<u8>, text: &str) {
    write_header(out, MAJOR_TEXT, text.len() as u64);
    out.extend_from_slice(text.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn skip_all(bytes: &[u8]) -> Result<usize, WalkError> {
        skip_item(bytes, 0)
    }

    #[test]
    fn skips_every_major_type() {
        let items: &[&[u8]] = &[
            &[0x00],
            &[0x1b, 0, 0, 0, 0, 0, 0, 0, 1],
            &[0x38, 0x63],
            &[0x43, 1, 2, 3],
            &[0x63, b'a', b'b', b'c'],
            &[0x82, 0x01, 0x02],
            &[0xa1, 0x61, b'k', 0x01],
            &[0xc1, 0x1a, 0, 0, 0, 1],
            &[0xf4],
            &[0xf6],
            &[0xf8, 0x20],
            &[0xf9, 0x3c, 0x00],
            &[0xfa, 0, 0, 0, 0],
            &[0xfb, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0x5f, 0x41, 1, 0x42, 2, 3, 0xff],
            &[0x7f, 0x61, b'a', 0xff],
            &[0x9f, 0x01, 0x9f, 0xff, 0xff],
            &[0xbf, 0x61, b'a', 0x01, 0xff],
            &[0x80],
            &[0xa0],
        ];
        for item in items {
            assert_eq!(skip_all(item), Ok(item.len()), "{item:02x?}");
        }
    }

    #[test]
    fn refuses_malformed_items() {
        let items: &[&[u8]] = &[
            &[0x1c],                   // reserved additional information
            &[0xff],                   // break outside an indefinite container
            &[0x1f],                   // indefinite unsigned integer
            &[0xdf],                   // indefinite tag
            &[0xf8, 0x10],             // two-byte simple value below 32
            &[0x5f, 0x61, b'a', 0xff], // text chunk inside a byte string
            &[0x5f, 0x5f, 0xff, 0xff], // nested indefinite chunk
            &[0xbf, 0x01, 0xff],       // indefinite map ending after a key
        ];
        for item in items {
            assert!(
                matches!(skip_all(item), Err(WalkError::Malformed { .. })),
                "{item:02x?}"
            );
        }
    }

    #[test]
    fn refuses_declared_lengths_beyond_the_input_without_allocating() {
        let huge_bytes = [0x5b, 0x80, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(skip_all(&huge_bytes), Err(WalkError::Truncated { at: 0 }));
        let huge_array = [0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00];
        assert_eq!(skip_all(&huge_array), Err(WalkError::Truncated { at: 0 }));
        let huge_map = [0xbb, 0x80, 0, 0, 0, 0, 0, 0, 0, 0x00, 0x00];
        assert_eq!(skip_all(&huge_map), Err(WalkError::Truncated { at: 0 }));
        assert_eq!(skip_all(&[0x82, 0x01]), Err(WalkError::Truncated { at: 0 }));
        assert_eq!(skip_all(&[0x9f, 0x01]), Err(WalkError::Truncated { at: 2 }));
        assert_eq!(skip_all(&[]), Err(WalkError::Truncated { at: 0 }));
    }

    #[test]
    fn allows_max_depth_nesting_and_refuses_one_more() {
        let mut ok = vec![0x81; MAX_DEPTH];
        ok.push(0x00);
        assert_eq!(skip_all(&ok), Ok(ok.len()));
        let mut deep = vec![0x81; MAX_DEPTH + 1];
        deep.push(0x00);
        assert_eq!(skip_all(&deep), Err(WalkError::TooDeep));
        let mut tags = vec![0xc6; MAX_DEPTH + 1];
        tags.push(0x00);
        assert_eq!(skip_all(&tags), Err(WalkError::TooDeep));
    }

    #[test]
    fn writes_shortest_headers() {
        for (value, expected) in [
            (0u64, vec![0x00]),
            (23, vec![0x17]),
            (24, vec![0x18, 24]),
            (256, vec![0x19, 1, 0]),
            (65536, vec![0x1a, 0, 1, 0, 0]),
            (
                u64::MAX,
                vec![0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ] {
            let mut out = Vec::new();
            write_header(&mut out, MAJOR_UINT, value);
            assert_eq!(out, expected);
            assert_eq!(
                read_header(&out, 0),
                Ok((
                    Header {
                        major: 0,
                        info: out[0] & 0x1f,
                        arg: Arg::Value(value)
                    },
                    out.len()
                ))
            );
        }
    }
}
