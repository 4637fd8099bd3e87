//! What every shell puts on the upgrade request (PROTOCOL §1, §5): the subprotocol, and the token in the URL
//! for clients that cannot set headers (browsers) or are told to use the query.

use alloc::string::String;

/// The WebSocket subprotocol every Sockeye client offers and a Sockeye server selects (PROTOCOL §1).
pub const SUBPROTOCOL: &str = "sockeye.v1";

/// `text` percent-encoded for a query value: UTF-8, every byte outside RFC 3986's unreserved characters
/// (`A–Z a–z 0–9 - . _ ~`) as `%XX`.
///
/// Hand-written rather than the `percent-encoding` crate: measured in the browser package (wasm-release,
/// wasm-opt -Oz), the crate's encoder cost 1.3 KB of wasm (0.7 KB gzipped) more than this loop.
pub fn encode_query_value(text: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(text.len());
    for &byte in text.as_bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(byte >> 4)]));
            out.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
    }
    out
}

/// `url` with `token=<token>` appended to its query (before any `#fragment`), the token percent-encoded.
pub fn with_query_token(url: &str, token: &str) -> String {
    // Byte scans, not `split_once('#')` / `contains('?')`: those bring `memchr` into the browser package, and
    // `&url[..at]` the formatting of str slicing's panic (bench/SIZE.md). `#` is ASCII: the split never fails.
    let split = url.bytes().position(|b| b == b'#');
    let (base, fragment) = match split.and_then(|at| url.split_at_checked(at)) {
        Some((base, rest)) => (base, rest.get(1..)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len() + token.len() + 8);
    out.push_str(base);
    let has_query = base.bytes().any(|b| b == b'?');
    out.push(if has_query { '&' } else { '?' });
    out.push_str("token=");
    out.push_str(&encode_query_value(token));
    if let Some(fragment) = fragment {
        out.push('#');
        out.push_str(fragment);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_tokens_are_percent_encoded_and_appended_before_the_fragment() {
        assert_eq!(
            with_query_token("ws://h/ws", "a b+c"),
            "ws://h/ws?token=a%20b%2Bc"
        );
        assert_eq!(
            with_query_token("ws://h/ws?x=1#f", "t"),
            "ws://h/ws?x=1&token=t#f"
        );
        // A `?` in the fragment is not a query; the split is at the first `#`, after any multi-byte character.
        assert_eq!(
            with_query_token("ws://h/é#a?b#c", "t"),
            "ws://h/é?token=t#a?b#c"
        );
        assert_eq!(with_query_token("ws://h/#", "t"), "ws://h/?token=t#");
        assert_eq!(
            encode_query_value("-._~Az09/?&=é"),
            "-._~Az09%2F%3F%26%3D%C3%A9"
        );
    }
}
