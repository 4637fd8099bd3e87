//! JS values ↔ CBOR for payloads: the walk itself is in `js/errors.js` (its header has the table of what maps to
//! what). Written in JS because walking JS values from Rust costs a boundary call and an import for every type
//! test and property read: the Rust walker this replaced was ~3 KB gzipped larger and slower.
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

    #[wasm_bindgen_test]
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
            let bytes = encode_js(&JsValue::from(value)).ok().flatten();
            assert_eq!(bytes.as_deref(), Some(expected), "{value}");
            // A number when safe, else a BigInt.
            let back = decode_js(expected).expect("decodes");
            let number = back.as_f64().map(|n| n as u64);
            assert_eq!(number.or_else(|| u64::try_from(back).ok()), Some(value));
        }
    }
}
