//! Messages assembled without `core::fmt`.
//!
//! Every `format!`/`write!` call site, and the `Display` impls and integer formatting behind it, is code the
//! browser package downloads; these messages (close reasons, `err` replies, refusals) are built by appending
//! instead. The `Display` impls of the error types print the same text through [`Text`], so native users see
//! no difference. A message of two or three pieces is `String::from(a) + b`: `[a, b].concat()` brings std's
//! `join_generic_copy` (0.3 KB of the gzipped package, bench/SIZE.md).

use alloc::{borrow::ToOwned, string::String};

/// A message built by appending pieces: `Text::from("more than ").num(max).str(" requests").into()`.
#[derive(Default)]
pub(crate) struct Text(String);

impl Text {
    pub(crate) fn str(mut self, s: &str) -> Text {
        self.0.push_str(s);
        self
    }

    /// `n` in decimal.
    pub(crate) fn num(self, n: impl Into<u64>) -> Text {
        self.decimal(n.into())
    }

    // One copy of the digit loop, not one per integer type `num` is called with (bench/SIZE.md).
    fn decimal(mut self, mut n: u64) -> Text {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        loop {
            at -= 1;
            digits[at] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        // Only ASCII digits were written.
        self.0
            .push_str(core::str::from_utf8(&digits[at..]).unwrap_or_default());
        self
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text(s.to_owned())
    }
}

impl From<Text> for String {
    fn from(t: Text) -> String {
        t.0
    }
}

/// `usize` as the `u64` [`Text::num`] takes (lossless on every target Rust supports).
pub(crate) fn n(n: usize) -> u64 {
    n as u64
}

/// Appends the first `max` characters of `text` in double quotes, escaping quotes, backslashes and control
/// characters the way `{:?}` does (`\"`, `\\`, `\n`, `\u{1b}`) — without the `Debug` machinery, which costs the
/// browser package several KB. (`{:?}` would also escape a few other unprintable characters.)
pub(crate) fn push_quoted(out: &mut String, text: &str, max: usize) {
    out.push('"');
    for c in text.chars().take(max) {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\0' => out.push_str("\\0"),
            c if c.is_control() => {
                let n = u32::from(c);
                out.push_str("\\u{");
                for digit in [n >> 4, n & 0xf].into_iter().skip(usize::from(n < 0x10)) {
                    out.extend(char::from_digit(digit, 16));
                }
                out.push('}');
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_written_like_display() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX] {
            let text: String = Text::from("n=").num(n).str("!").into();
            assert_eq!(text, format!("n={n}!"));
        }
    }

    #[test]
    fn quoting_matches_debug_for_ascii_controls_and_printable_text() {
        let mut all_controls: String = (0u32..0x20)
            .chain(0x7f..0xa0)
            .filter_map(char::from_u32)
            .collect();
        all_controls.push_str("\"quoted\" back\\slash, 'single', é ü 日本 🎉");
        for text in [
            "",
            "hello",
            "a\"b\\c",
            "tab\there\nnew\rline\0nul",
            &all_controls,
        ] {
            let mut out = String::new();
            push_quoted(&mut out, text, usize::MAX);
            assert_eq!(out, format!("{text:?}"));
        }
        let mut out = String::new();
        push_quoted(&mut out, "ééééé", 3);
        assert_eq!(out, "\"ééé\"");
    }
}
