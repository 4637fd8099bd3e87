//! The protocol's vocabulary for failures: error codes (PROTOCOL §4) and close codes (§6).

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
}
