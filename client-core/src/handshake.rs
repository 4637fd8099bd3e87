//! What every shell puts on the upgrade request (PROTOCOL §1, §5): the subprotocol, and the token in the URL
//! for clients that cannot set headers (browsers) or are told to use the query.

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// The WebSocket subprotocol every Sockeye client offers and a Sockeye server selects (PROTOCOL §1).
pub const SUBPROTOCOL: &str = "sockeye.v1";

/// Everything but RFC 3986's unreserved characters (`A–Z a–z 0–9 - . _ ~`) is percent-encoded.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// `text` percent-encoded for a query value: UTF-8, every byte outside the unreserved characters as `%XX`.
pub fn encode_query_value(text: &str) -> String {
    // Collected from the encoder's `&str` pieces: no `fmt` machinery in the browser package.
    utf8_percent_encode(text, QUERY_VALUE).collect()
}

/// `url` with `token=<token>` appended to its query (before any `#fragment`), the token percent-encoded.
pub fn with_query_token(url: &str, token: &str) -> String {
    let (base, fragment) = match url.split_once('#') {
        Some((base, fragment)) => (base, Some(fragment)),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len() + token.len() + 8);
    out.push_str(base);
    out.push(if base.contains('?') { '&' } else { '?' });
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
        assert_eq!(
            encode_query_value("-._~Az09/?&=é"),
            "-._~Az09%2F%3F%26%3D%C3%A9"
        );
    }
}
