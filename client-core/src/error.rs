//! The protocol's vocabulary for failures: error codes (PROTOCOL §4) and close codes (§6).

use alloc::{borrow::ToOwned, string::String};
use core::fmt;

/// An error code as carried in an `err` envelope's `code` (PROTOCOL §4).
///
/// Clients raise local failures with the same vocabulary: a request timeout is
/// [`ErrorCode::DeadlineExceeded`], a full offline queue [`ErrorCode::ResourceExhausted`], a request cut off by
/// a lost connection [`ErrorCode::Unavailable`], an aborted request [`ErrorCode::Cancelled`].
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
    ResourceExhausted,
    DeadlineExceeded,
    Unavailable,
    Internal,
    Unimplemented,
    Cancelled,
    /// A code this version does not know, kept verbatim so nothing a peer said is lost.
    Other(String),
}

impl ErrorCode {
    /// The wire spelling, e.g. `"DEADLINE_EXCEEDED"`.
    pub fn as_str(&self) -> &str {
        match self {
            ErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::Unauthenticated => "UNAUTHENTICATED",
            ErrorCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            ErrorCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::Internal => "INTERNAL",
            ErrorCode::Unimplemented => "UNIMPLEMENTED",
            ErrorCode::Cancelled => "CANCELLED",
            ErrorCode::Other(code) => code,
        }
    }

    /// Parses the wire spelling; unknown spellings become [`ErrorCode::Other`].
    pub fn parse(code: &str) -> ErrorCode {
        match code {
            "INVALID_ARGUMENT" => ErrorCode::InvalidArgument,
            "NOT_FOUND" => ErrorCode::NotFound,
            "PERMISSION_DENIED" => ErrorCode::PermissionDenied,
            "UNAUTHENTICATED" => ErrorCode::Unauthenticated,
            "RESOURCE_EXHAUSTED" => ErrorCode::ResourceExhausted,
            "DEADLINE_EXCEEDED" => ErrorCode::DeadlineExceeded,
            "UNAVAILABLE" => ErrorCode::Unavailable,
            "INTERNAL" => ErrorCode::Internal,
            "UNIMPLEMENTED" => ErrorCode::Unimplemented,
            "CANCELLED" => ErrorCode::Cancelled,
            other => ErrorCode::Other(other.to_owned()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A WebSocket close code (RFC 6455 §7.4, PROTOCOL §6). Open: any `u16` is representable; the ones the
/// protocol names have constants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    pub const NORMAL: CloseCode = CloseCode(1000);
    pub const GOING_AWAY: CloseCode = CloseCode(1001);
    pub const PROTOCOL_ERROR: CloseCode = CloseCode(1002);
    /// Local only: the socket ended without a close frame.
    pub const ABNORMAL: CloseCode = CloseCode(1006);
    pub const INVALID_PAYLOAD: CloseCode = CloseCode(1007);
    pub const POLICY_VIOLATION: CloseCode = CloseCode(1008);
    pub const MESSAGE_TOO_BIG: CloseCode = CloseCode(1009);
    pub const INTERNAL_ERROR: CloseCode = CloseCode(1011);
    pub const SERVICE_RESTART: CloseCode = CloseCode(1012);
    pub const TRY_AGAIN_LATER: CloseCode = CloseCode(1013);
    /// Client: no inbound frame within the keepalive timeout.
    pub const KEEPALIVE_TIMEOUT: CloseCode = CloseCode(4000);
    /// Server: not authenticated in time.
    pub const AUTH_TIMEOUT: CloseCode = CloseCode(4001);
    /// Server: no inbound frame from the client within its heartbeat limit.
    pub const HEARTBEAT_TIMEOUT: CloseCode = CloseCode(4002);
    /// Server: authentication failed. Terminal for clients.
    pub const AUTH_FAILED: CloseCode = CloseCode(4003);
    /// Client: the server sent something the client must refuse.
    pub const REFUSED: CloseCode = CloseCode(4004);
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A close frame's reason: at most [`CloseReason::MAX_BYTES`] bytes of UTF-8 (RFC 6455 §5.5), so every
/// shell and the server can put it in a close frame as it is. A longer text is cut on a character boundary and
/// ends in `…`, so a reader sees that it was cut.
///
/// A browser's `WebSocket.close(code, reason)` throws on a longer reason (and a shell falling back to a bare
/// `close()` would send 1005 instead of the code), and tungstenite refuses to send one: the bound is kept here,
/// where reasons are made, not in each shell.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct CloseReason(String);

impl CloseReason {
    /// The most a close frame carries: 125 bytes of payload less the 2-byte code.
    pub const MAX_BYTES: usize = 123;

    /// `reason`, cut to [`Self::MAX_BYTES`] when longer.
    pub fn new(reason: impl Into<String>) -> Self {
        let mut reason = reason.into();
        clip_in_place(&mut reason, Self::MAX_BYTES);
        CloseReason(reason)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

/// Bytes of a peer-chosen name (method, `msg` name, topic) quoted in an error message or a log: enough to
/// recognise it, never an echo of a large name. Cut by [`clip`], so a cut name ends in `…`.
pub const MAX_QUOTED_NAME: usize = 128;

/// What marks a text cut by [`clip`].
const CUT_MARK: &str = "…";

/// `text` cut to at most `max` bytes on a character boundary, ending in `…` when cut (peers choose names and
/// reasons of up to a whole message; nothing quotes them at that size). `max` below the mark's 3 bytes gives
/// an empty text when cut.
pub fn clip(text: &str, max: usize) -> alloc::borrow::Cow<'_, str> {
    if text.len() <= max {
        return alloc::borrow::Cow::Borrowed(text);
    }
    let mut owned = String::with_capacity(max);
    // `get`, not `&text[..at]` (`at` is a boundary): str slicing's panic path formats its message, which costs
    // the npm package ~3 KB gzipped (bench/SIZE.md).
    let at = boundary_at_most(text, max.saturating_sub(CUT_MARK.len()));
    owned.push_str(text.get(..at).unwrap_or_default());
    if max >= CUT_MARK.len() {
        owned.push_str(CUT_MARK);
    }
    alloc::borrow::Cow::Owned(owned)
}

fn clip_in_place(text: &mut String, max: usize) {
    if text.len() > max {
        text.truncate(boundary_at_most(text, max.saturating_sub(CUT_MARK.len())));
        if max >= CUT_MARK.len() {
            text.push_str(CUT_MARK);
        }
    }
}

/// The largest character boundary of `text` at or below `at`.
fn boundary_at_most(text: &str, mut at: usize) -> usize {
    at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl From<String> for CloseReason {
    fn from(reason: String) -> Self {
        CloseReason::new(reason)
    }
}

impl From<&str> for CloseReason {
    fn from(reason: &str) -> Self {
        CloseReason::new(reason)
    }
}

impl core::ops::Deref for CloseReason {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for CloseReason {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for CloseReason {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_round_trip_through_their_wire_spelling() {
        for code in [
            ErrorCode::InvalidArgument,
            ErrorCode::NotFound,
            ErrorCode::PermissionDenied,
            ErrorCode::Unauthenticated,
            ErrorCode::ResourceExhausted,
            ErrorCode::DeadlineExceeded,
            ErrorCode::Unavailable,
            ErrorCode::Internal,
            ErrorCode::Unimplemented,
            ErrorCode::Cancelled,
            ErrorCode::Other("TEAPOT".into()),
        ] {
            assert_eq!(ErrorCode::parse(code.as_str()), code);
        }
    }

    #[test]
    fn close_reasons_fit_a_close_frame_and_are_cut_on_a_character_boundary() {
        assert_eq!(CloseReason::new("short"), "short");
        let exact = "x".repeat(CloseReason::MAX_BYTES);
        assert_eq!(CloseReason::new(exact.clone()), exact.as_str());
        // 32 emoji are 128 bytes; with a quoting prefix more still.
        for long in [
            "🎉".repeat(32),
            "é".repeat(100),
            format!("a{}", "日".repeat(60)),
        ] {
            let cut = CloseReason::new(long.clone());
            assert!(cut.len() <= CloseReason::MAX_BYTES, "{} bytes", cut.len());
            let kept = cut
                .strip_suffix(CUT_MARK)
                .expect("a cut reason ends in the mark");
            assert!(long.starts_with(kept));
            assert!(
                cut.len() > CloseReason::MAX_BYTES - 4 - CUT_MARK.len(),
                "cut no more than needed"
            );
        }
    }

    #[test]
    fn clip_borrows_what_fits_and_marks_what_it_cuts() {
        assert!(matches!(
            clip("abc", 3),
            alloc::borrow::Cow::Borrowed("abc")
        ));
        assert_eq!(clip("abcdef", 5), "ab…");
        assert_eq!(clip("ééé", 4), "…");
        assert_eq!(clip("abcdef", 2), "");
    }
}
