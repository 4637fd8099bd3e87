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
}
