//! Text a peer controls (error messages, close reasons, names, payloads), made safe for a terminal.
//!
//! A server's `err` message or close reason could otherwise clear the screen (`ESC [2J`), retitle the window,
//! overwrite the previous line (`CR`), or reorder what is shown (bidirectional overrides). Everything the CLI
//! prints passes through here: plain text with [`plain`], JSON lines with [`json`].

use std::borrow::Cow;
use std::fmt::Write;

/// True for characters that do something other than show a glyph: C0 and C1 controls and DEL (escape
/// sequences, carriage returns, bells), and Unicode's invisible format characters (bidirectional marks and
/// overrides, zero-width characters, line and paragraph separators, byte-order mark, interlinear annotation,
/// tags).
fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{180e}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{206f}'
                | '\u{feff}'
                | '\u{fff9}'..='\u{fffb}'
                | '\u{e0000}'..='\u{e007f}'
        )
}

/// Plain text with every unsafe character written as Rust writes it in `{:?}`: `\n`, `\r`, `\t`, `\u{1b}`.
pub fn plain(text: &str) -> Cow<'_, str> {
    if !text.chars().any(is_unsafe) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if is_unsafe(c) => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A line of JSON from `serde_json`, with the unsafe characters it leaves raw (DEL, C1 controls, format
/// characters) written as `\uXXXX` escapes. In serialized JSON such characters can only occur inside strings,
/// where the escape means the same character: the line decodes to the same value.
pub fn json(line: &str) -> Cow<'_, str> {
    if !line.chars().any(is_unsafe) {
        return Cow::Borrowed(line);
    }
    let mut out = String::with_capacity(line.len() + 16);
    for c in line.chars() {
        if is_unsafe(c) {
            for unit in c.encode_utf16(&mut [0; 2]) {
                let _ = write!(out, "\\u{unit:04x}");
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_invisible_formatting_are_escaped_in_plain_text() {
        assert_eq!(plain("ok: é 日本 🎉"), "ok: é 日本 🎉");
        assert_eq!(
            plain("\u{1b}[2J\r\n\t\u{7}\u{7f}\u{9b}31m\u{202e}x\u{e0041}"),
            "\\u{1b}[2J\\r\\n\\t\\u{7}\\u{7f}\\u{9b}31m\\u{202e}x\\u{e0041}"
        );
    }

    #[test]
    fn json_lines_keep_their_value_without_raw_controls() {
        let value = serde_json::json!({ "reason": "\u{1b}[2J \u{9b}2J \u{202e}txt \u{e0041} é" });
        let line = value.to_string();
        let safe = json(&line);
        assert!(!safe.chars().any(is_unsafe), "{safe}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&safe).unwrap(),
            value
        );
    }
}
