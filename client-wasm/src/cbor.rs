//! JS values ↔ CBOR for payloads: the walk itself is in `js/errors.js` (its header has the table of what maps to
//! what). Written in JS because walking JS values from Rust costs a boundary call and an import for every type
//! test and property read: the Rust walker this replaced was ~3 KB gzipped larger and slower.
//! Its item headers are the core's (`sockeye_core::codec::cbor`, the one Rust home of them): the tests below
//! hold the JS reader and writer to `read_header`/`write_header`.
//!
//! What JS hands back is checked again here (`Payload::from_cbor`: one well-formed item within `MAX_DEPTH`)
//! before the core sees it; decoding only ever gets payloads the core has checked.

use alloc::vec::Vec;

use sockeye_core::codec::Payload;
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::JsValue;

use crate::errors::type_error;

#[wasm_bindgen(module = "/js/errors.js")]
extern "C" {
    /// `undefined` → `None`; a `TypeError` (or a throwing getter's error) → `Err`.
    #[wasm_bindgen(catch, js_name = encode)]
    fn encode_js(data: &JsValue) -> Result<Option<Vec<u8>>, JsValue>;

    /// `catch`: an exception must not unwind through the shell's borrows (it cannot happen for a checked payload).
    #[wasm_bindgen(catch, js_name = decode)]
    fn decode_js(bytes: &[u8]) -> Result<JsValue, JsValue>;
}

/// Encodes `data` as a payload: `undefined` is no payload (the envelope's `d` is left out).
///
/// # Errors
/// A `TypeError` naming what cannot be encoded, or the error a getter threw.
pub(crate) fn encode(data: &JsValue) -> Result<Option<Payload>, JsValue> {
    let Some(bytes) = encode_js(data)? else {
        return Ok(None);
    };
    // Cannot fail for what js/errors.js writes, but a TypeError is better than a bad payload if it ever did.
    Payload::from_cbor(bytes)
        .map(Some)
        .map_err(|_| type_error("data: not encodable"))
}

/// The payload as a JS value; no payload is `undefined`.
pub(crate) fn decode(payload: Option<&Payload>) -> JsValue {
    payload
        .and_then(|p| decode_js(p.as_cbor()).ok())
        .unwrap_or(JsValue::UNDEFINED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

    wasm_bindgen_test_configure!(run_in_browser);

    /// The f64 a half-precision float holds (NaNs keep their payload, with the quiet bit set): the reference the
    /// JS encoder is held to.
    fn f16_to_f64(half: u16) -> f64 {
        let sign = u64::from(half & 0x8000) << 48;
        let exp = u64::from(half >> 10 & 0x1f);
        let man = u64::from(half & 0x3ff);
        f64::from_bits(
            sign | match exp {
                0 => (man as f64 / 16_777_216.0).to_bits(),
                0x1f if man == 0 => 0x7ff0_0000_0000_0000,
                0x1f => 0x7ff8_0000_0000_0000 | man << 42,
                _ => (exp + 1008) << 52 | man << 42,
            },
        )
    }

    fn encoded(n: f64) -> Vec<u8> {
        encode_js(&JsValue::from(n))
            .ok()
            .flatten()
            .expect("numbers encode")
    }

    fn decoded(bytes: &[u8]) -> f64 {
        decode_js(bytes)
            .ok()
            .and_then(|v| v.as_f64())
            .expect("a number")
    }

    /// Every half-precision value is written as a half (or, when it is a safe integer, as an integer), and
    /// every one of its neighbours among f64s comes back with exactly its bits.
    #[wasm_bindgen_test]
    fn floats_take_the_shortest_form_that_keeps_their_bits() {
        for half in 0..=u16::MAX {
            let n = f16_to_f64(half);
            if n.is_nan() {
                // JS engines may canonicalize NaN payloads; it must still be a half NaN.
                assert!(decoded(&encoded(n)).is_nan());
                continue;
            }
            let bytes = encoded(n);
            let safe_integer =
                n.fract() == 0.0 && n.abs() < 9_007_199_254_740_992.0 && n.to_bits() != 1 << 63;
            if !safe_integer {
                let [hi, lo] = half.to_be_bytes();
                assert_eq!(bytes, [0xf9, hi, lo], "{half:#06x} = {n}");
            }
            assert_eq!(decoded(&bytes).to_bits(), n.to_bits(), "{half:#06x}");
            for delta in [1u64, 1 << 20, 1 << 41, 1 << 42] {
                for m in [
                    n.to_bits().wrapping_add(delta),
                    n.to_bits().wrapping_sub(delta),
                ] {
                    let m = f64::from_bits(m);
                    if !m.is_nan() {
                        assert_eq!(decoded(&encoded(m)).to_bits(), m.to_bits(), "{m:e}");
                    }
                }
            }
        }
        assert_eq!(encoded(1.0 / 3.0)[0], 0xfb);
        assert_eq!(encoded(65520.0)[0], 0x19, "a safe integer");
        assert_eq!(encoded(65520.5)[0], 0xfa);
        assert_eq!(encoded(5e-324)[0], 0xfb);
    }

    /// The JS walk writes and reads item headers as the core does (`codec::cbor`, the one Rust home of them):
    /// shortest form, every width, integers of both signs and the lengths of strings, arrays and maps.
    #[wasm_bindgen_test]
    fn headers_are_the_cores() {
        use sockeye_core::codec::cbor::{
            read_header, write_header, Arg, MAJOR_ARRAY, MAJOR_MAP, MAJOR_NINT, MAJOR_TEXT,
            MAJOR_UINT,
        };
        let core = |major, n| {
            let mut out = Vec::new();
            write_header(&mut out, major, n);
            out
        };
        let widths = [
            0u64,
            23,
            24,
            255,
            256,
            65_535,
            65_536,
            u32::MAX.into(),
            1 << 32,
            1 << 53,
            u64::MAX,
        ];
        for n in widths {
            for (major, value) in [
                (MAJOR_UINT, JsValue::from(n)),
                (MAJOR_NINT, JsValue::from(-1 - i128::from(n))),
            ] {
                let bytes = encode_js(&value).ok().flatten();
                assert_eq!(bytes, Some(core(major, n)), "major {major}, {n}");
                // Back: a number when safe, else a BigInt, with the value the core reads.
                let back = decode_js(&core(major, n)).expect("decodes");
                let back = back
                    .as_f64()
                    .map_or_else(|| i128::try_from(back).ok(), |f| Some(f as i128));
                let Ok((header, _)) = read_header(&core(major, n), 0) else {
                    panic!("the core reads its own header")
                };
                let Arg::Value(read) = header.arg else {
                    panic!("a value")
                };
                let expected = if major == MAJOR_UINT {
                    i128::from(read)
                } else {
                    -1 - i128::from(read)
                };
                assert_eq!(back, Some(expected), "major {major}, {n}");
            }
        }
        // Lengths: a string of n bytes, an array and a map of n items begin with the core's header for n.
        for n in [0u32, 23, 24, 255, 256, 65_536] {
            let text = JsValue::from("a".repeat(n as usize));
            let list = js_sys::Array::new_with_length(n).fill(&JsValue::NULL, 0, n);
            let map = js_sys::Map::new();
            for i in 0..n {
                map.set(&JsValue::from(i), &JsValue::NULL);
            }
            for (major, value) in [
                (MAJOR_TEXT, text),
                (MAJOR_ARRAY, list.into()),
                (MAJOR_MAP, map.into()),
            ] {
                let bytes = encode_js(&value).ok().flatten().expect("encodes");
                let header = core(major, n.into());
                assert_eq!(
                    bytes.get(..header.len()),
                    Some(&header[..]),
                    "major {major}, {n}"
                );
            }
        }
    }
}
