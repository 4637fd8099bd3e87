//! JS values ↔ CBOR, read and written here byte by byte with `js-sys` (no serde, no CBOR library, no JSON
//! strings in between: each generic CBOR library costs the package kilobytes, and a payload needs only item
//! headers).
//!
//! | JS | CBOR | back to JS |
//! |---|---|---|
//! | `undefined` as `data` | no `d` key | `undefined` |
//! | `null`, `undefined` inside arrays | null, undefined | `null`, `undefined` |
//! | `true`/`false` | simple values | booleans |
//! | number: a safe integer (not `-0`) | integer | number |
//! | other numbers (fractions, `-0`, `NaN`, ±`Infinity`, beyond 2^53) | shortest lossless float | number |
//! | `BigInt` in -2^64..2^64 | integer | number when safe, else `BigInt` |
//! | string | text | string |
//! | `Uint8Array`, `ArrayBuffer`, any `ArrayBuffer` view | byte string | `Uint8Array` |
//! | `Array`, `Set` | array | `Array` |
//! | `Map` | map, keys encoded as values | plain object when every key is text, else `Map` |
//! | other objects | map of own enumerable string keys; `undefined` values are left out | plain object |
//!
//! Functions, symbols, bigger `BigInt`s and nesting deeper than [`MAX_DEPTH`] (or cycles) throw a `TypeError`; a
//! getter or proxy trap that throws makes the encoding fail with its error (as `JSON.stringify` does), which
//! `request` turns into a rejection. A detached `ArrayBuffer` (or a view of one) encodes as empty bytes.
//! Decoding keeps tags' content and drops the tag; unassigned simple values decode as `undefined`; invalid UTF-8
//! in text is replaced (U+FFFD). Plain objects are built with `Object.fromEntries`, so a `"__proto__"` key is an
//! own property, never the prototype. Decoding never allocates from a declared length: every length is checked
//! against the bytes actually left first, and containers grow as their items arrive.
//!
//! Headers use the shortest form (RFC 8949 §4.2.1 preferred serialization); a float is written in the shortest of
//! half, single and double precision that gives back exactly the same bits.

use js_sys::{Array, ArrayBuffer, Map, Object, Reflect, Set, Uint8Array};
use sockeye_core::codec::cbor::{
    read_header, write_header as head, Arg, Header, MAJOR_ARRAY, MAJOR_BYTES, MAJOR_MAP,
    MAJOR_NINT, MAJOR_SIMPLE, MAJOR_TAG, MAJOR_TEXT, MAJOR_UINT,
};
use sockeye_core::codec::{Payload, MAX_DEPTH};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};

use crate::errors::type_error;
use crate::shell::get;

/// The largest integer a JS number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE: u64 = (1 << 53) - 1;

const FALSE: u8 = 0xf4;
const TRUE: u8 = 0xf5;
const NULL: u8 = 0xf6;
const UNDEFINED: u8 = 0xf7;
const BREAK: u8 = 0xff;

/// The additional information that marks an indefinite length.
const INDEFINITE: u8 = 31;

#[wasm_bindgen]
extern "C" {
    /// `Object.entries(o)`, with a throwing getter or proxy trap as an `Err`. (js-sys's binding has no `catch`:
    /// the exception would unwind through the wasm frames, out of `request` as a synchronous throw and past
    /// wasm-bindgen's borrow of the `Client`.)
    #[wasm_bindgen(catch, js_namespace = Object, js_name = entries)]
    fn entries(o: &JsValue) -> Result<Array, JsValue>;
}

/// Encodes `data` as a payload: `undefined` is no payload (the envelope's `d` is left out).
///
/// # Errors
/// A `TypeError` naming what cannot be encoded.
pub(crate) fn encode(data: &JsValue) -> Result<Option<Payload>, JsValue> {
    if data.is_undefined() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    encode_value(&mut bytes, data, 0)?;
    // Re-checks the invariant Payload keeps (one well-formed item within MAX_DEPTH); cannot fail for what the
    // encoder above writes, but a TypeError is better than a panic if it ever did.
    Payload::from_cbor(bytes)
        .map(Some)
        .map_err(|e| type_error(&format!("data: {e}")))
}

/// Appends a definite byte or text string.
fn string(out: &mut Vec<u8>, major: u8, bytes: &[u8]) {
    head(out, major, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn encode_value(out: &mut Vec<u8>, v: &JsValue, depth: usize) -> Result<(), JsValue> {
    if v.is_null() {
        out.push(NULL);
    } else if v.is_undefined() {
        out.push(UNDEFINED);
    } else if let Some(b) = v.as_bool() {
        out.push(if b { TRUE } else { FALSE });
    } else if let Some(n) = v.as_f64() {
        number(out, n);
    } else if let Some(s) = v.as_string() {
        string(out, MAJOR_TEXT, s.as_bytes());
    } else if v.is_bigint() {
        let n = i128::try_from(v.clone()).ok();
        if !n.is_some_and(|n| integer(out, n)) {
            return Err(type_error("data: BigInt outside -2^64..2^64"));
        }
    } else if v.is_object() && !v.is_function() {
        if depth >= MAX_DEPTH {
            const _: () = assert!(MAX_DEPTH == 128, "update the message below");
            return Err(type_error(
                "data: nested deeper than 128 levels (or cyclic)",
            ));
        }
        encode_object(out, v, depth + 1)?;
    } else {
        let what = v.js_typeof().as_string().unwrap_or_default();
        return Err(type_error(&format!("data: cannot encode a {what}")));
    }
    Ok(())
}

fn encode_object(out: &mut Vec<u8>, v: &JsValue, depth: usize) -> Result<(), JsValue> {
    let view = ArrayBuffer::is_view(v);
    if view || v.is_instance_of::<ArrayBuffer>() {
        // Any view (a `Uint8Array` too) has buffer, byteOffset and byteLength; a buffer has byteLength (read with
        // `Reflect.get`: typed getters are one import each). A detached buffer (transferred elsewhere) reads as
        // empty: `new Uint8Array` would throw on it.
        let number = |key| get(v, key).as_f64().unwrap_or(0.0) as u32;
        let (buffer, offset) = if view {
            (get(v, "buffer"), number("byteOffset"))
        } else {
            (v.clone(), 0)
        };
        let length = number("byteLength");
        let bytes = match length {
            0 => Vec::new(),
            _ => Uint8Array::new_with_byte_offset_and_length(&buffer, offset, length).to_vec(),
        };
        string(out, MAJOR_BYTES, &bytes);
    } else if Array::is_array(v) {
        encode_items(out, v.unchecked_ref(), depth)?;
    } else if let Some(set) = v.dyn_ref::<Set>() {
        encode_items(out, &Array::from(set), depth)?;
    } else if let Some(map) = v.dyn_ref::<Map>() {
        let size = get(map, "size").as_f64().unwrap_or(0.0) as u64;
        head(out, MAJOR_MAP, size);
        let mut result = Ok(());
        map.for_each(&mut |value, key| {
            if result.is_ok() {
                result =
                    encode_value(out, &key, depth).and_then(|()| encode_value(out, &value, depth));
            }
        });
        result?;
    } else {
        // Own enumerable string-keyed properties, like JSON; `undefined` values are left out.
        let entries: Vec<Array> = items(&entries(v)?)
            .map(JsCast::unchecked_into::<Array>)
            .filter(|e| !e.get(1).is_undefined())
            .collect();
        head(out, MAJOR_MAP, entries.len() as u64);
        for entry in entries {
            encode_value(out, &entry.get(0), depth)?;
            encode_value(out, &entry.get(1), depth)?;
        }
    }
    Ok(())
}

fn encode_items(out: &mut Vec<u8>, items: &Array, depth: usize) -> Result<(), JsValue> {
    head(out, MAJOR_ARRAY, u64::from(items.length()));
    // `Reflect.get` rather than `items()`: an index may be a getter (or a proxy trap) that throws.
    for i in 0..items.length() {
        encode_value(out, &Reflect::get(items, &i.into())?, depth)?;
    }
    Ok(())
}

/// The items of a JS array, read by index. (`Array::iter` needs an import of its own.)
pub(crate) fn items(array: &Array) -> impl Iterator<Item = JsValue> + '_ {
    (0..array.length()).map(|i| array.get(i))
}

/// A safe integer as a CBOR integer, anything else as the shortest float that holds it exactly.
fn number(out: &mut Vec<u8>, n: f64) {
    let safe =
        n.fract() == 0.0 && n.abs() <= MAX_SAFE as f64 && !(n == 0.0 && n.is_sign_negative());
    if safe && n >= 0.0 {
        head(out, MAJOR_UINT, n as u64);
    } else if safe {
        head(out, MAJOR_NINT, (-1.0 - n) as u64);
    } else if let Some(half) = f16_bits(n) {
        out.push(0xf9);
        out.extend_from_slice(&half.to_be_bytes());
    } else if f64::from(n as f32).to_bits() == n.to_bits() {
        out.push(0xfa);
        out.extend_from_slice(&(n as f32).to_be_bytes());
    } else {
        out.push(0xfb);
        out.extend_from_slice(&n.to_be_bytes());
    }
}

/// Appends `n` as a CBOR integer; false (nothing written) outside -2^64..2^64.
fn integer(out: &mut Vec<u8>, n: i128) -> bool {
    let (major, value) = if n >= 0 {
        (MAJOR_UINT, u64::try_from(n))
    } else {
        (MAJOR_NINT, u64::try_from(-1 - n))
    };
    let Ok(value) = value else { return false };
    head(out, major, value);
    true
}

/// The IEEE 754 half-precision bits of `n` when converting them back gives exactly `n`'s bits (the same rule
/// as `f64::from(half::f16::from_f64(n)).to_bits() == n.to_bits()`): zeros, infinities, quiet NaNs whose payload
/// fits, and finite values whose significand fits in 11 bits within the half range, subnormals included.
fn f16_bits(n: f64) -> Option<u16> {
    let bits = n.to_bits();
    let sign = ((bits >> 48) & 0x8000) as u16;
    let exp = ((bits >> 52) & 0x7ff) as i32;
    let man = bits & ((1 << 52) - 1);
    // Half precision keeps the top 10 of the 52 significand bits.
    let lost = man & ((1 << 42) - 1);
    let half = |bits: u64| Some(sign | bits as u16);
    match exp {
        // ±0 (f64 subnormals are far below the smallest half).
        0 => (man == 0).then_some(sign),
        // ±Infinity, and NaNs: converting back sets the quiet bit, so only quiet NaNs round-trip.
        0x7ff if lost == 0 && (man == 0 || man >> 51 == 1) => half(0x7c00 | man >> 42),
        0x7ff => None,
        _ => match exp - 1023 {
            // Normal halves: exponent -14..=15.
            e @ -14..=15 if lost == 0 => half(((e + 15) as u64) << 10 | man >> 42),
            // Subnormal halves: m · 2^-24 with 0 < m < 1024, so 1.man · 2^e needs its low (28 - e) bits zero.
            e @ -24..=-15 => {
                let significand = man | 1 << 52;
                let shift = 28 - e;
                (significand & ((1 << shift) - 1) == 0)
                    .then(|| sign | (significand >> shift) as u16)
            }
            _ => None,
        },
    }
}

/// The f64 a half-precision float holds (NaNs keep their payload, with the quiet bit set).
fn f16_to_f64(half: u16) -> f64 {
    let sign = u64::from(half & 0x8000) << 48;
    let exp = u64::from(half >> 10 & 0x1f);
    let man = u64::from(half & 0x3ff);
    f64::from_bits(
        sign | match exp {
            // Zero or subnormal: man · 2^-24, exact in f64.
            0 => (man as f64 / 16_777_216.0).to_bits(),
            0x1f if man == 0 => 0x7ff0_0000_0000_0000,
            0x1f => 0x7ff8_0000_0000_0000 | man << 42,
            // Rebias the exponent: -15 + 1023.
            _ => (exp + 1008) << 52 | man << 42,
        },
    )
}

/// The payload as a JS value; no payload is `undefined`.
pub(crate) fn decode(payload: Option<&Payload>) -> JsValue {
    let Some(payload) = payload else {
        return JsValue::UNDEFINED;
    };
    let mut reader = Reader {
        bytes: payload.as_cbor(),
        pos: 0,
    };
    // A Payload is one well-formed item within MAX_DEPTH (its invariant), so this does not fail in practice.
    decode_item(&mut reader, 0).unwrap_or(JsValue::UNDEFINED)
}

/// Why decoding stopped; the walker already checked the payload, so this only guards the invariant.
struct Invalid;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// The definite length or count of a header; `None` for an indefinite one.
fn len(head: &Header) -> Option<u64> {
    match head.arg {
        Arg::Value(n) => Some(n),
        Arg::Indefinite => None,
    }
}

impl<'a> Reader<'a> {
    /// The next `n` bytes; never more than are left.
    fn take(&mut self, n: u64) -> Result<&'a [u8], Invalid> {
        let left = &self.bytes[self.pos..];
        let n = usize::try_from(n)
            .ok()
            .filter(|&n| n <= left.len())
            .ok_or(Invalid)?;
        self.pos += n;
        Ok(&left[..n])
    }

    /// The next item header, read by the core's codec; an indefinite length only where one may stand (strings,
    /// containers, and the break).
    fn head(&mut self) -> Result<Header, Invalid> {
        let (head, next) = read_header(self.bytes, self.pos).map_err(|_| Invalid)?;
        if head.arg == Arg::Indefinite
            && !matches!(head.major, MAJOR_BYTES..=MAJOR_MAP | MAJOR_SIMPLE)
        {
            return Err(Invalid);
        }
        self.pos = next;
        Ok(head)
    }

    /// True (and the break consumed) at the end of an indefinite container.
    fn at_break(&mut self) -> bool {
        let at = self.bytes.get(self.pos) == Some(&BREAK);
        self.pos += usize::from(at);
        at
    }

    /// The content of a byte or text string; an indefinite one's chunks must be definite strings of the same
    /// major type (RFC 8949 §3.2.3).
    fn string(&mut self, head: &Header) -> Result<Vec<u8>, Invalid> {
        if let Some(len) = len(head) {
            return Ok(self.take(len)?.to_vec());
        }
        let mut out = Vec::new();
        while !self.at_break() {
            let chunk = self.head()?;
            match len(&chunk) {
                Some(len) if chunk.major == head.major => out.extend_from_slice(self.take(len)?),
                _ => return Err(Invalid),
            }
        }
        Ok(out)
    }

    /// Whether a container of `len` items (`None`: indefinite) that has `seen` so far has another one.
    fn more(&mut self, len: Option<u64>, seen: u32) -> bool {
        match len {
            Some(len) => u64::from(seen) < len,
            None => !self.at_break(),
        }
    }
}

fn decode_item(r: &mut Reader<'_>, depth: usize) -> Result<JsValue, Invalid> {
    if depth > MAX_DEPTH {
        return Err(Invalid);
    }
    let head = r.head()?;
    // 0 for an indefinite length: only strings and containers read it as a length, through `len`.
    let n = len(&head).unwrap_or(0);
    Ok(match head.major {
        MAJOR_UINT if n <= MAX_SAFE => JsValue::from(n as f64),
        MAJOR_UINT => JsValue::from(n),
        MAJOR_NINT if n < MAX_SAFE => JsValue::from(-1.0 - n as f64),
        MAJOR_NINT => JsValue::from(-1 - i128::from(n)),
        MAJOR_BYTES => Uint8Array::from(r.string(&head)?.as_slice()).into(),
        MAJOR_TEXT => {
            let bytes = r.string(&head)?;
            let text = String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            JsValue::from(text)
        }
        MAJOR_ARRAY => {
            let items = Array::new();
            while r.more(len(&head), items.length()) {
                items.push(&decode_item(r, depth + 1)?);
            }
            items.into()
        }
        MAJOR_MAP => {
            let entries = Array::new();
            let mut text_keys = true;
            while r.more(len(&head), entries.length()) {
                text_keys &= r.bytes.get(r.pos).is_some_and(|b| b >> 5 == MAJOR_TEXT);
                let key = decode_item(r, depth + 1)?;
                let value = decode_item(r, depth + 1)?;
                let entry = Array::new();
                entry.push(&key);
                entry.push(&value);
                entries.push(&entry);
            }
            if text_keys {
                Object::from_entries(&entries).map_err(|_| Invalid)?.into()
            } else {
                let map = Map::new();
                for entry in items(&entries) {
                    let entry: Array = entry.unchecked_into();
                    map.set(&entry.get(0), &entry.get(1));
                }
                map.into()
            }
        }
        MAJOR_TAG => decode_item(r, depth + 1)?,
        // Major 7: simple values and floats.
        _ => match head.info {
            25 => JsValue::from(f16_to_f64(n as u16)),
            26 => JsValue::from(f64::from(f32::from_bits(n as u32))),
            27 => JsValue::from(f64::from_bits(n)),
            INDEFINITE => return Err(Invalid), // a break where an item belongs
            _ => match n {
                20 => JsValue::FALSE,
                21 => JsValue::TRUE,
                22 => JsValue::NULL,
                _ => JsValue::UNDEFINED,
            },
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

    wasm_bindgen_test_configure!(run_in_browser);

    /// Every half-precision value, and its neighbours among f64s, against the definition.
    #[wasm_bindgen_test(unsupported = test)]
    fn f16_bits_is_exact_round_trip_through_half_precision() {
        for half in 0..=u16::MAX {
            let n = f16_to_f64(half);
            if n.is_nan() {
                // NaN payloads: the quiet bit is set on the way back; every half NaN is then a quiet f64 NaN.
                let back = f16_bits(n).expect("a quiet NaN with a 10-bit payload fits");
                assert_eq!(f16_to_f64(back).to_bits(), n.to_bits(), "{half:#06x}");
                continue;
            }
            assert_eq!(f16_bits(n), Some(half), "{half:#06x} = {n}");
            for delta in [1u64, 1 << 20, 1 << 41, 1 << 42] {
                for m in [
                    n.to_bits().wrapping_add(delta),
                    n.to_bits().wrapping_sub(delta),
                ] {
                    let m = f64::from_bits(m);
                    if let Some(h) = f16_bits(m) {
                        assert_eq!(
                            f16_to_f64(h).to_bits(),
                            m.to_bits(),
                            "{m:e} from {half:#06x}"
                        );
                    }
                }
            }
        }
        assert_eq!(f16_bits(1.0 / 3.0), None);
        assert_eq!(f16_bits(65520.0), None);
        assert_eq!(f16_bits(f64::from_bits(0x7ff0_0000_0000_0001)), None); // signaling NaN
        assert_eq!(f16_bits(5e-324), None);
    }

    #[wasm_bindgen_test(unsupported = test)]
    fn headers_are_shortest() {
        for (value, expected) in [
            (0u64, &[0x00][..]),
            (23, &[0x17]),
            (24, &[0x18, 24]),
            (255, &[0x18, 255]),
            (256, &[0x19, 1, 0]),
            (65536, &[0x1a, 0, 1, 0, 0]),
            (
                u64::MAX,
                &[0x1b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
            ),
        ] {
            let mut out = Vec::new();
            head(&mut out, MAJOR_UINT, value);
            assert_eq!(out, expected);
            let mut r = Reader {
                bytes: &out,
                pos: 0,
            };
            assert!(r
                .head()
                .is_ok_and(|h| h.arg == Arg::Value(value) && r.pos == out.len()));
        }
    }
}
