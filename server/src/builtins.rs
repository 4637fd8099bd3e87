//! Built-in request methods for tests and the demo: `echo`, `sleep`, `fail`, `whoami`, `close`, `stats`.
//!
//! | method | `d` | reply |
//! |---|---|---|
//! | `echo` | anything | `res` with the same `d` (absent stays absent) |
//! | `sleep` | `{ms: uint}`, at most 10 000 | `res` without `d` after `ms` milliseconds |
//! | `fail` | `{code: text, msg?: text}` | `err` with that code and message |
//! | `whoami` | — | `res` `{identity: text, connection: uint}` |
//! | `close` | `{code: uint, reason?: text}` | `res`, then the server closes the connection with that code |
//! | `stats` | — | `res` with the server's counters ([`crate::Stats`]) |

use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};
use sockeye_core::codec::Payload;
use sockeye_core::error::{CloseCode, ErrorCode};

use crate::app::{decode_payload, Identity, RpcError};
use crate::server::Shared;

/// The longest `sleep` accepted.
pub const MAX_SLEEP: Duration = Duration::from_secs(10);

pub(crate) enum Builtin {
    /// Answer now.
    Reply(Result<Option<Payload>, RpcError>),
    /// Answer when this finishes (runs concurrently with the connection's other requests).
    Later(BoxFuture<'static, Result<Option<Payload>, RpcError>>),
    /// Answer `res`, then close the connection.
    Close { code: CloseCode, reason: String },
}

#[derive(Deserialize)]
struct SleepArgs {
    ms: u64,
}

#[derive(Deserialize)]
struct FailArgs {
    code: String,
    #[serde(default)]
    msg: String,
}

#[derive(Deserialize)]
struct CloseArgs {
    code: u16,
    #[serde(default)]
    reason: String,
}

#[derive(Serialize)]
struct Whoami<'a> {
    identity: &'a str,
    connection: u64,
}

/// Runs built-in `method`, or `None` when there is no such built-in.
pub(crate) fn call(
    method: &str,
    data: Option<Payload>,
    identity: &Identity,
    connection: u64,
    shared: &Shared,
) -> Option<Builtin> {
    let builtin = match method {
        "echo" => Builtin::Reply(Ok(data)),
        "sleep" => match decode_payload::<SleepArgs>(data.as_ref()) {
            Ok(SleepArgs { ms }) if Duration::from_millis(ms) <= MAX_SLEEP => {
                Builtin::Later(Box::pin(async move {
                    tokio::time::sleep(Duration::from_millis(ms)).await;
                    Ok(None)
                }))
            }
            Ok(SleepArgs { ms }) => Builtin::Reply(Err(RpcError::invalid_argument(format!(
                "sleep of {ms} ms is longer than the maximum of {} ms",
                MAX_SLEEP.as_millis()
            )))),
            Err(e) => Builtin::Reply(Err(e)),
        },
        "fail" => match decode_payload::<FailArgs>(data.as_ref()) {
            Ok(FailArgs { code, msg }) => {
                Builtin::Reply(Err(RpcError::new(ErrorCode::parse(&code), msg)))
            }
            Err(e) => Builtin::Reply(Err(e)),
        },
        "whoami" => Builtin::Reply(encode(&Whoami {
            identity: identity.as_str(),
            connection,
        })),
        "close" => match decode_payload::<CloseArgs>(data.as_ref()) {
            Ok(CloseArgs { code, reason }) if sendable_close_code(code) => Builtin::Close {
                code: CloseCode(code),
                reason,
            },
            Ok(CloseArgs { code, .. }) => Builtin::Reply(Err(RpcError::invalid_argument(format!(
                "{code} cannot be sent in a close frame"
            )))),
            Err(e) => Builtin::Reply(Err(e)),
        },
        "stats" => Builtin::Reply(encode(&shared.stats())),
        _ => return None,
    };
    Some(builtin)
}

fn encode<T: Serialize>(value: &T) -> Result<Option<Payload>, RpcError> {
    Payload::encode(value)
        .map(Some)
        .map_err(|e| RpcError::internal(format!("cannot encode the reply: {e}")))
}

/// Codes an endpoint may put in a close frame (RFC 6455 §7.4: not 1004–1006, 1015, nor unassigned ones).
fn sendable_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_close_codes_cannot_be_requested() {
        for code in [1000, 1001, 1008, 1013, 3000, 4002, 4999] {
            assert!(sendable_close_code(code), "{code}");
        }
        for code in [0, 999, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(!sendable_close_code(code), "{code}");
        }
    }
}
