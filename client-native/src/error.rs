//! The one error type of the client, in the protocol's vocabulary (PROTOCOL §4).

use sockeye_core::codec::{InvalidTopic, Payload, PayloadError};
use sockeye_core::{DisconnectReason, ErrorCode, RequestError, SendError};

/// Everything that can go wrong in this crate. Each variant maps to one protocol error code ([`Error::code`]).
///
/// Local failures use the same vocabulary as a server's `err` replies: a request timeout is
/// [`Error::DeadlineExceeded`], a request cut off by a lost connection [`Error::Unavailable`], a request
/// cancelled by dropping its future or by [`Client::close`](crate::Client::close) [`Error::Cancelled`], a full
/// offline queue [`Error::ResourceExhausted`].
///
/// # Example
///
/// ```
/// use sockeye::{Error, ErrorCode};
///
/// let err = Error::server(ErrorCode::NotFound, "no such user");
/// assert_eq!(err.code(), ErrorCode::NotFound);
/// assert_eq!(err.to_string(), "server error NOT_FOUND: no such user");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A request did not get its reply within its deadline (`DEADLINE_EXCEEDED`), or
    /// [`Client::wait_for`](crate::Client::wait_for) timed out.
    #[error("deadline exceeded: {message}")]
    DeadlineExceeded { message: String },
    /// The connection was lost while the request was in flight (`UNAVAILABLE`).
    #[error("unavailable: {message}")]
    Unavailable { message: String },
    /// The request was cancelled: its future was dropped, or the client was closed (`CANCELLED`).
    #[error("cancelled: {message}")]
    Cancelled { message: String },
    /// The offline queue is full, or a message is too large to be framed (`RESOURCE_EXHAUSTED`).
    #[error("resource exhausted: {message}")]
    ResourceExhausted { message: String },
    /// The peer answered with an `err` envelope: its code, message and optional details (`d`).
    #[error("server error {code}: {message}")]
    Server {
        code: ErrorCode,
        message: String,
        details: Option<Payload>,
    },
    /// A payload could not be encoded to CBOR or decoded into the requested type (`INVALID_ARGUMENT`).
    #[error("payload: {0}")]
    Payload(#[from] PayloadError),
    /// A topic name breaks PROTOCOL §4 (`INVALID_ARGUMENT`).
    #[error("invalid topic: {0}")]
    InvalidTopic(#[from] InvalidTopic),
    /// The client's configuration cannot work, e.g. a malformed URL or header (`INVALID_ARGUMENT`).
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The client has given up connecting (authentication failed, attempts exhausted, reconnect disabled) or
    /// was stopped; returned by [`Client::wait_for`](crate::Client::wait_for) and
    /// [`ClientBuilder::connect`](crate::ClientBuilder::connect).
    #[error("disconnected: {0}")]
    Disconnected(DisconnectReason),
    /// A subscription or listener stream fell behind and this many items were dropped
    /// (`RESOURCE_EXHAUSTED`). The stream continues after this item.
    #[error("stream lagged: {skipped} items dropped")]
    Lagged { skipped: u64 },
    /// The client was closed ([`Client::close`](crate::Client::close)); nothing more can be sent (`CANCELLED`).
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// An error with a protocol code and message, e.g. for a request handler to return. Codes that also
    /// name local failures (`DEADLINE_EXCEEDED`, `UNAVAILABLE`, `CANCELLED`, `RESOURCE_EXHAUSTED`) still
    /// become [`Error::Server`] here; only [`Error::code`] matters on the wire.
    pub fn server(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Server {
            code,
            message: message.into(),
            details: None,
        }
    }

    /// The protocol error code (PROTOCOL §4) for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::DeadlineExceeded { .. } => ErrorCode::DeadlineExceeded,
            Error::Unavailable { .. } => ErrorCode::Unavailable,
            Error::Cancelled { .. } | Error::Closed => ErrorCode::Cancelled,
            Error::ResourceExhausted { .. } | Error::Lagged { .. } => ErrorCode::ResourceExhausted,
            Error::Server { code, .. } => code.clone(),
            Error::Payload(_) | Error::InvalidTopic(_) | Error::Config(_) => {
                ErrorCode::InvalidArgument
            }
            Error::Disconnected(reason) => match reason {
                DisconnectReason::AuthFailed { .. } => ErrorCode::Unauthenticated,
                DisconnectReason::PolicyViolation { .. } => ErrorCode::PermissionDenied,
                DisconnectReason::Stopped => ErrorCode::Cancelled,
                _ => ErrorCode::Unavailable,
            },
        }
    }

    /// The details (`d`) of a server `err`, decoded into `T`; `None` when there are none.
    ///
    /// # Errors
    /// [`Error::Payload`] when the details do not fit `T`.
    pub fn details<T: serde::de::DeserializeOwned>(&self) -> Result<Option<T>, Error> {
        match self {
            Error::Server {
                details: Some(details),
                ..
            } => Ok(Some(details.decode()?)),
            _ => Ok(None),
        }
    }

    /// The error a request handler's failure is sent as.
    pub(crate) fn to_request_error(&self) -> RequestError {
        match self {
            Error::Server {
                code,
                message,
                details,
            } => RequestError {
                code: code.clone(),
                message: message.clone(),
                data: details.clone(),
                from_server: false,
            },
            other => RequestError::local(other.code(), other.to_string()),
        }
    }
}

impl From<RequestError> for Error {
    /// A server `err` is always [`Error::Server`], whatever its code; local failures become their own variants.
    fn from(e: RequestError) -> Self {
        let RequestError {
            code,
            message,
            data,
            from_server,
        } = e;
        match (from_server, code) {
            (false, ErrorCode::DeadlineExceeded) => Error::DeadlineExceeded { message },
            (false, ErrorCode::Unavailable) => Error::Unavailable { message },
            (false, ErrorCode::Cancelled) => Error::Cancelled { message },
            (false, ErrorCode::ResourceExhausted) => Error::ResourceExhausted { message },
            (_, code) => Error::Server {
                code,
                message,
                details: data,
            },
        }
    }
}

impl From<SendError> for Error {
    fn from(e: SendError) -> Self {
        match e {
            SendError::InvalidTopic(t) => Error::InvalidTopic(t),
            other => Error::ResourceExhausted {
                message: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sockeye_core::{CloseCode, QueueLimits};

    #[test]
    fn every_variant_maps_to_a_protocol_code() {
        let cases = [
            (
                Error::DeadlineExceeded {
                    message: String::new(),
                },
                ErrorCode::DeadlineExceeded,
            ),
            (
                Error::Unavailable {
                    message: String::new(),
                },
                ErrorCode::Unavailable,
            ),
            (
                Error::Cancelled {
                    message: String::new(),
                },
                ErrorCode::Cancelled,
            ),
            (
                Error::ResourceExhausted {
                    message: String::new(),
                },
                ErrorCode::ResourceExhausted,
            ),
            (Error::server(ErrorCode::NotFound, "x"), ErrorCode::NotFound),
            (Error::Config("x".into()), ErrorCode::InvalidArgument),
            (Error::Lagged { skipped: 1 }, ErrorCode::ResourceExhausted),
            (Error::Closed, ErrorCode::Cancelled),
            (
                Error::Disconnected(DisconnectReason::AuthFailed {
                    reason: "bad".into(),
                }),
                ErrorCode::Unauthenticated,
            ),
            (
                Error::Disconnected(DisconnectReason::Closed {
                    code: CloseCode(1000),
                    reason: String::new(),
                }),
                ErrorCode::Unavailable,
            ),
        ];
        for (error, code) in cases {
            assert_eq!(error.code(), code, "{error}");
        }
    }

    #[test]
    fn local_failures_become_their_own_variants_and_server_errs_stay_server_errors() {
        let e = Error::from(RequestError::local(
            ErrorCode::DeadlineExceeded,
            "request timed out",
        ));
        assert!(matches!(e, Error::DeadlineExceeded { .. }));
        // A server `err` with a code clients also raise locally is still the server's.
        let e = Error::from(RequestError::from_peer(
            ErrorCode::Unavailable,
            "busy".into(),
            None,
        ));
        assert!(matches!(
            e,
            Error::Server {
                code: ErrorCode::Unavailable,
                ..
            }
        ));
        let e = Error::from(SendError::QueueFull {
            limits: QueueLimits::default(),
        });
        assert_eq!(e.code(), ErrorCode::ResourceExhausted);
    }
}
