//! JS values ↔ CBOR, written with `ciborium-ll` and `js-sys` (no serde, no JSON strings in between).
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
//! Functions, symbols, bigger `BigInt`s and nesting deeper than [`MAX_DEPTH`] (or cycles) throw a `TypeError`.
//! Decoding keeps tags' content and drops the tag; unassigned simple values decode as `undefined`; invalid UTF-8
//! in text is replaced (U+FFFD). Plain objects are built with `Object.fromEntries`, so a `"__proto__"` key is an
//! own property, never the prototype. Decoding never allocates from a declared length: strings are read in
//! fixed-size chunks and containers grow as their items arrive.

use ciborium_ll::{simple, Decoder, Encoder, Header};
use js_sys::{Array, ArrayBuffer, Map, Object, Set, Uint8Array};
use sockeye_core::codec::{Payload, MAX_DEPTH};
use wasm_bindgen::{JsCast, JsValue};

use crate::errors::type_error;

/// The largest integer a JS number holds exactly (`Number.MAX_SAFE_INTEGER`).
const MAX_SAFE: u64 = (1 << 53) - 1;

type Enc<'a> = Encoder<&'a mut Vec<u8>>;

/// Encodes `data` as a payload: `undefined` is no payload (the envelope's `d` is left out).
///
/// # Errors
/// A `TypeError` naming what cannot be encoded.
pub(crate) fn encode(data: &JsValue) -> Result<Option<Payload>, JsValue> {
    if data.is_undefined() {
        return Ok(None);
    }
    let mut bytes = Vec::new();
    encode_value(&mut Encoder::from(&mut bytes), data, 0)?;
    // Re-checks the invariant Payload keeps (one well-formed item within MAX_DEPTH); cannot fail for what the
    // encoder above writes, but a TypeError is better than a panic if it ever did.
    Payload::from_cbor(bytes)
        .map(Some)
        .map_err(|e| type_error(&format!("data: {e}")))
}

fn encode_value(enc: &mut Enc<'_>, v: &JsValue, depth: usize) -> Result<(), JsValue> {
    // Writing into a Vec cannot fail.
    let put = |enc: &mut Enc<'_>, h| {
        let _ = enc.push(h);
    };
    if v.is_null() {
        put(enc, Header::Simple(simple::NULL));
    } else if v.is_undefined() {
        put(enc, Header::Simple(simple::UNDEFINED));
    } else if let Some(b) = v.as_bool() {
        put(
            enc,
            Header::Simple(if b { simple::TRUE } else { simple::FALSE }),
        );
    } else if let Some(n) = v.as_f64() {
        put(enc, number(n));
    } else if let Some(s) = v.as_string() {
        let _ = enc.text(&s, None);
    } else if v.is_bigint() {
        let n = i128::try_from(v.clone())
            .map_err(|_| type_error("data: BigInt outside -2^64..2^64"))?;
        put(
            enc,
            integer(n).ok_or_else(|| type_error("data: BigInt outside -2^64..2^64"))?,
        );
    } else if v.is_object() && !v.is_function() {
        if depth >= MAX_DEPTH {
            return Err(type_error(&format!(
                "data: nested deeper than {MAX_DEPTH} levels (or cyclic)"
            )));
        }
        encode_object(enc, v, depth + 1)?;
    } else {
        let what = v.js_typeof().as_string().unwrap_or_default();
        return Err(type_error(&format!("data: cannot encode a {what}")));
    }
    Ok(())
}

fn encode_object(enc: &mut Enc<'_>, v: &JsValue, depth: usize) -> Result<(), JsValue> {
    if let Some(bytes) = v.dyn_ref::<Uint8Array>() {
        let _ = enc.bytes(&bytes.to_vec(), None);
    } else if let Some(buffer) = v.dyn_ref::<ArrayBuffer>() {
        let _ = enc.bytes(&Uint8Array::new(buffer).to_vec(), None);
    } else if ArrayBuffer::is_view(v) {
        let view: &js_sys::DataView = v.unchecked_ref(); // any view has buffer, byteOffset and byteLength
        let bytes = Uint8Array::new_with_byte_offset_and_length(
            &view.buffer(),
            view.byte_offset() as u32,
            view.byte_length() as u32,
        );
        let _ = enc.bytes(&bytes.to_vec(), None);
    } else if Array::is_array(v) {
        encode_items(enc, v.unchecked_ref(), depth)?;
    } else if let Some(set) = v.dyn_ref::<Set>() {
        encode_items(enc, &Array::from(set), depth)?;
    } else if let Some(map) = v.dyn_ref::<Map>() {
        let _ = enc.push(Header::Map(Some(map.size() as usize)));
        let mut result = Ok(());
        map.for_each(&mut |value, key| {
            if result.is_ok() {
                result =
                    encode_value(enc, &key, depth).and_then(|()| encode_value(enc, &value, depth));
            }
        });
        result?;
    } else {
        // Own enumerable string-keyed properties, like JSON; `undefined` values are left out.
        let entries: Vec<Array> = Object::entries(v.unchecked_ref())
            .iter()
            .map(JsCast::unchecked_into::<Array>)
            .filter(|e| !e.get(1).is_undefined())
            .collect();
        let _ = enc.push(Header::Map(Some(entries.len())));
        for entry in entries {
            encode_value(enc, &entry.get(0), depth)?;
            encode_value(enc, &entry.get(1), depth)?;
        }
    }
    Ok(())
}

fn encode_items(enc: &mut Enc<'_>, items: &Array, depth: usize) -> Result<(), JsValue> {
    let _ = enc.push(Header::Array(Some(items.length() as usize)));
    for item in items.iter() {
        encode_value(enc, &item, depth)?;
    }
    Ok(())
}

/// A safe integer as a CBOR integer, anything else as a float (ciborium-ll picks the shortest lossless width).
fn number(n: f64) -> Header {
    let safe =
        n.fract() == 0.0 && n.abs() <= MAX_SAFE as f64 && !(n == 0.0 && n.is_sign_negative());
    if safe {
        if let Some(h) = integer(n as i128) {
            return h;
        }
    }
    Header::Float(n)
}

fn integer(n: i128) -> Option<Header> {
    if n >= 0 {
        u64::try_from(n).ok().map(Header::Positive)
    } else {
        u64::try_from(-1 - n).ok().map(Header::Negative)
    }
}

/// The payload as a JS value; no payload is `undefined`.
pub(crate) fn decode(payload: Option<&Payload>) -> JsValue {
    let Some(payload) = payload else {
        return JsValue::UNDEFINED;
    };
    let mut dec = Decoder::from(payload.as_cbor());
    // A Payload is one well-formed item within MAX_DEPTH (its invariant), so this does not fail in practice.
    decode_value(&mut dec, 0).unwrap_or(JsValue::UNDEFINED)
}

/// Why decoding stopped; the walker already checked the payload, so this only guards the invariant.
struct Invalid;

impl<T> From<ciborium_ll::Error<T>> for Invalid {
    fn from(_: ciborium_ll::Error<T>) -> Self {
        Invalid
    }
}

type Dec<'a> = Decoder<&'a [u8]>;

fn decode_value(dec: &mut Dec<'_>, depth: usize) -> Result<JsValue, Invalid> {
    let header = dec.pull()?;
    decode_item(dec, header, depth)
}

fn decode_item(dec: &mut Dec<'_>, header: Header, depth: usize) -> Result<JsValue, Invalid> {
    if depth > MAX_DEPTH {
        return Err(Invalid);
    }
    Ok(match header {
        Header::Positive(n) if n <= MAX_SAFE => JsValue::from(n as f64),
        Header::Positive(n) => JsValue::from(n),
        Header::Negative(n) if n < MAX_SAFE => JsValue::from(-1.0 - n as f64),
        Header::Negative(n) => JsValue::from(-1 - i128::from(n)),
        Header::Float(f) => JsValue::from(f),
        Header::Simple(simple::FALSE) => JsValue::FALSE,
        Header::Simple(simple::TRUE) => JsValue::TRUE,
        Header::Simple(simple::NULL) => JsValue::NULL,
        Header::Simple(_) => JsValue::UNDEFINED,
        Header::Tag(_) => decode_value(dec, depth + 1)?,
        Header::Break => return Err(Invalid),
        Header::Bytes(len) => {
            let bytes = read_bytes(dec, len, false)?;
            Uint8Array::from(bytes.as_slice()).into()
        }
        Header::Text(len) => {
            let bytes = read_bytes(dec, len, true)?;
            let text = String::from_utf8(bytes)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
            JsValue::from(text)
        }
        Header::Array(len) => {
            let items = Array::new();
            while let Some(header) = next(dec, len, items.length() as usize)? {
                items.push(&decode_item(dec, header, depth + 1)?);
            }
            items.into()
        }
        Header::Map(len) => {
            let entries = Array::new();
            let mut text_keys = true;
            while let Some(header) = next(dec, len, entries.length() as usize)? {
                text_keys &= matches!(header, Header::Text(_));
                let key = decode_item(dec, header, depth + 1)?;
                let value = decode_value(dec, depth + 1)?;
                entries.push(&Array::of2(&key, &value));
            }
            if text_keys {
                Object::from_entries(&entries).map_err(|_| Invalid)?.into()
            } else {
                let map = Map::new();
                for entry in entries.iter() {
                    let entry: Array = entry.unchecked_into();
                    map.set(&entry.get(0), &entry.get(1));
                }
                map.into()
            }
        }
    })
}

/// The next item's header in a container of `len` items (`None`: indefinite) that has `seen` so far, or `None`
/// at its end.
fn next(dec: &mut Dec<'_>, len: Option<usize>, seen: usize) -> Result<Option<Header>, Invalid> {
    match len {
        Some(len) if seen >= len => Ok(None),
        Some(_) => Ok(Some(dec.pull()?)),
        None => match dec.pull()? {
            Header::Break => Ok(None),
            header => Ok(Some(header)),
        },
    }
}

/// The content of a byte or text string, read in fixed-size pieces: the buffer grows only as bytes actually
/// arrive, never from the declared length. Text is read as bytes too (its UTF-8 is checked once, by the caller,
/// which replaces what is invalid); an indefinite-length text's chunks must be definite texts (RFC 8949 §3.2.3).
fn read_bytes(dec: &mut Dec<'_>, len: Option<usize>, text: bool) -> Result<Vec<u8>, Invalid> {
    let mut out = Vec::new();
    match (len, text) {
        (Some(_), _) | (None, false) => append(dec, len, &mut out)?,
        (None, true) => loop {
            match dec.pull()? {
                Header::Break => break,
                Header::Text(Some(chunk)) => append(dec, Some(chunk), &mut out)?,
                _ => return Err(Invalid),
            }
        },
    }
    Ok(out)
}

/// Appends a byte string's content (`Decoder::bytes` re-reads the header it is given).
fn append(dec: &mut Dec<'_>, len: Option<usize>, out: &mut Vec<u8>) -> Result<(), Invalid> {
    let mut buf = [0u8; 4096];
    let mut segments = dec.bytes(len);
    while let Some(mut segment) = segments.pull()? {
        while let Some(chunk) = segment.pull(&mut buf)? {
            out.extend_from_slice(chunk);
        }
    }
    Ok(())
}
