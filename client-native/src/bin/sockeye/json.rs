//! JSON in, JSON out: the CLI's view of CBOR payloads.
//!
//! In: JSON is encoded as the corresponding CBOR (serde_json's `Value` through `Payload::encode`) (objects → maps with text keys, integers → integers, other
//! numbers → floats). Out: CBOR is decoded and written as JSON, with these rules for what JSON lacks:
//! byte strings become base64 strings (standard alphabet, padded); tags are dropped (their content is kept);
//! integers beyond 64 bits and non-finite floats become strings; map keys that are not text become their JSON
//! text (e.g. the key `1` becomes `"1"`).

use ciborium::Value as Cbor;
use serde_json::Value as Json;
use sockeye::{Error, Payload};

/// Decodes a payload (absent: `null`) as JSON, by the rules in the module docs.
pub fn from_payload(payload: Option<&Payload>) -> Result<Json, Error> {
    match payload {
        None => Ok(Json::Null),
        Some(payload) => Ok(cbor_to_json(&payload.decode::<Cbor>()?)),
    }
}

/// Payloads are depth-limited by the codec (128 levels), so this recursion is bounded.
pub fn cbor_to_json(value: &Cbor) -> Json {
    match value {
        Cbor::Null => Json::Null,
        Cbor::Bool(b) => Json::Bool(*b),
        Cbor::Integer(i) => {
            let i = i128::from(*i);
            if let Ok(n) = i64::try_from(i) {
                Json::from(n)
            } else if let Ok(n) = u64::try_from(i) {
                Json::from(n)
            } else {
                Json::String(i.to_string())
            }
        }
        Cbor::Float(f) => serde_json::Number::from_f64(*f)
            .map_or_else(|| Json::String(f.to_string()), Json::Number),
        Cbor::Text(s) => Json::String(s.clone()),
        Cbor::Bytes(b) => Json::String(base64(b)),
        Cbor::Tag(_, inner) => cbor_to_json(inner),
        Cbor::Array(items) => Json::Array(items.iter().map(cbor_to_json).collect()),
        Cbor::Map(entries) => Json::Object(
            entries
                .iter()
                .map(|(k, v)| {
                    let key = match k {
                        Cbor::Text(s) => s.clone(),
                        other => cbor_to_json(other).to_string(),
                    };
                    (key, cbor_to_json(v))
                })
                .collect(),
        ),
        // `Value` is non-exhaustive in spirit; anything new is shown as null rather than failing.
        #[allow(unreachable_patterns)]
        _ => Json::Null,
    }
}

/// Standard base64 with padding (RFC 4648 §4).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn base64_matches_rfc_4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected);
        }
    }

    #[test]
    fn json_round_trips_through_cbor() {
        let value = json!({ "a": [1, -2, 3.5, "x", null, true], "nested": { "k": 18446744073709551615u64 } });
        let payload = Payload::encode(&value).unwrap();
        assert_eq!(from_payload(Some(&payload)).unwrap(), value);
        assert_eq!(from_payload(None).unwrap(), Json::Null);
    }

    #[test]
    fn what_json_lacks_is_rendered_by_the_documented_rules() {
        let value = Cbor::Map(vec![
            (Cbor::Integer(1.into()), Cbor::Bytes(b"foo".to_vec())),
            (
                Cbor::Text("tagged".into()),
                Cbor::Tag(1, Box::new(Cbor::Integer(5.into()))),
            ),
            (Cbor::Text("nan".into()), Cbor::Float(f64::NAN)),
        ]);
        assert_eq!(
            cbor_to_json(&value),
            json!({ "1": "Zm9v", "tagged": 5, "nan": "NaN" })
        );
    }
}
