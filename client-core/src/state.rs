//! The client's lifecycle states (PROTOCOL §7) and the close-code policy (§6).

use alloc::{borrow::ToOwned, string::String};
use core::fmt;

use crate::error::CloseCode;
use crate::time::{Duration, Instant};

/// Where the connection is. Each state carries its own data, so impossible combinations cannot be written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not connected and not trying. `reason` is `None` before the first `start`.
    Disconnected { reason: Option<DisconnectReason> },
    /// A socket for this attempt is being opened.
    Connecting { attempt: u32 },
    /// The socket is open; waiting for the server's `ready`.
    Connected { attempt: u32 },
    /// `ready` seen: sends go out directly.
    Ready,
    /// Waiting out the backoff (`delay`) before attempt `attempt`, which starts at `next_attempt_at`: always
    /// the deadline [`Connection::poll_timeout`](crate::Connection::poll_timeout) reports for it. `None` while
    /// the platform reports no network: the attempt starts when it comes back.
    Reconnecting {
        attempt: u32,
        delay: Duration,
        next_attempt_at: Option<Instant>,
    },
}

impl Status {
    /// The state's name as the JS API spells it: `"disconnected"`, `"connecting"`, `"connected"`, `"ready"`,
    /// `"reconnecting"`.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Disconnected { .. } => "disconnected",
            Status::Connecting { .. } => "connecting",
            Status::Connected { .. } => "connected",
            Status::Ready => "ready",
            Status::Reconnecting { .. } => "reconnecting",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why the connection ended in `disconnected` and stopped trying.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The application asked (`stop`/`close`).
    Stopped,
    /// The server closed with 4003 (or a native upgrade saw HTTP 401/403).
    AuthFailed { reason: String },
    /// The server closed with 1008 (e.g. an origin not on its allowlist).
    PolicyViolation { reason: String },
    /// Reconnecting is disabled and the connection closed.
    Closed { code: CloseCode, reason: String },
    /// The attempt limit was reached; `code` and `reason` of the last close.
    MaxAttemptsExceeded {
        attempts: u32,
        code: CloseCode,
        reason: String,
    },
}

impl DisconnectReason {
    /// A short stable identifier: `stopped`, `auth-failed`, `policy-violation`, `closed`, `max-attempts`.
    pub fn as_str(&self) -> &'static str {
        match self {
            DisconnectReason::Stopped => "stopped",
            DisconnectReason::AuthFailed { .. } => "auth-failed",
            DisconnectReason::PolicyViolation { .. } => "policy-violation",
            DisconnectReason::Closed { .. } => "closed",
            DisconnectReason::MaxAttemptsExceeded { .. } => "max-attempts",
        }
    }
}

impl fmt::Display for DisconnectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DisconnectReason::Stopped => f.write_str("stopped by the application"),
            DisconnectReason::AuthFailed { reason } => write!(f, "authentication failed: {reason}"),
            DisconnectReason::PolicyViolation { reason } => write!(f, "policy violation: {reason}"),
            DisconnectReason::Closed { code, reason } => write!(f, "closed ({code}): {reason}"),
            DisconnectReason::MaxAttemptsExceeded {
                attempts,
                code,
                reason,
            } => {
                write!(
                    f,
                    "gave up after {attempts} attempts; last close {code}: {reason}"
                )
            }
        }
    }
}

/// One change of [`Status`], observable by the application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Status,
    pub to: Status,
    pub at: Instant,
}

/// What a close code means for the next step (PROTOCOL §6), for a close the client did not ask for.
///
/// 4003 and 1008 are terminal; everything else (1000 included, when the server sent it) is retried.
pub fn terminal_reason(code: CloseCode, reason: &str) -> Option<DisconnectReason> {
    match code {
        CloseCode::AUTH_FAILED => Some(DisconnectReason::AuthFailed {
            reason: reason.to_owned(),
        }),
        CloseCode::POLICY_VIOLATION => Some(DisconnectReason::PolicyViolation {
            reason: reason.to_owned(),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_auth_failure_and_policy_violation_are_terminal() {
        for code in [
            1000, 1001, 1002, 1006, 1007, 1009, 1011, 1012, 1013, 4000, 4001, 4002, 4004,
        ] {
            assert_eq!(terminal_reason(CloseCode(code), ""), None, "{code}");
        }
        assert_eq!(
            terminal_reason(CloseCode(4003), "bad").unwrap().as_str(),
            "auth-failed"
        );
        assert_eq!(
            terminal_reason(CloseCode(1008), "origin").unwrap().as_str(),
            "policy-violation"
        );
    }
}
