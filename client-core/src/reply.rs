//! Answers to requests, made once for every peer: the client's [`Connection::respond`](crate::Connection::respond)
//! and the reference server build their `res`/`err` envelopes and their `UNIMPLEMENTED` answer here, so the
//! wire spelling cannot drift between the shells and the server.

use alloc::string::String;

use crate::codec::{Envelope, Payload};
use crate::error::{clip, ErrorCode, MAX_QUOTED_NAME};
use crate::requests::RequestError;
use crate::text::push_quoted;

impl Envelope {
    /// The answer to request `id`: `res` with the data, or `err` with the error's code, message and details.
    pub fn reply(id: u64, result: Result<Option<Payload>, RequestError>) -> Envelope {
        match result {
            Ok(data) => Envelope::Res { id, data },
            Err(error) => Envelope::error(Some(id), error),
        }
    }

    /// An `err` envelope: the answer to request `id`, or a connection-level notice (`id: None`).
    pub fn error(id: Option<u64>, error: RequestError) -> Envelope {
        let RequestError {
            code,
            message,
            data,
            ..
        } = error;
        Envelope::Err {
            id,
            code,
            message,
            data,
        }
    }
}

impl RequestError {
    /// The one answer to a request for a method nobody handles: `UNIMPLEMENTED`, naming the method quoted and
    /// escaped, cut to [`MAX_QUOTED_NAME`] bytes (a cut name ends in `…`).
    pub fn unimplemented(method: &str) -> RequestError {
        let mut message = String::from("unknown method ");
        push_quoted(&mut message, &clip(method, MAX_QUOTED_NAME), usize::MAX);
        RequestError::local(ErrorCode::Unimplemented, message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_carry_the_result_and_errors_keep_code_message_and_details() {
        assert_eq!(
            Envelope::reply(3, Ok(None)),
            Envelope::Res { id: 3, data: None }
        );
        let details = Payload::null();
        let mut error = RequestError::local(ErrorCode::NotFound, "gone");
        error.data = Some(details.clone());
        assert_eq!(
            Envelope::reply(4, Err(error.clone())),
            Envelope::Err {
                id: Some(4),
                code: ErrorCode::NotFound,
                message: "gone".into(),
                data: Some(details),
            }
        );
        assert_eq!(Envelope::error(None, error).id(), None);
    }

    #[test]
    fn unimplemented_names_the_method_quoted_escaped_and_cut() {
        let e = RequestError::unimplemented("a\"b\n");
        assert_eq!(e.code, ErrorCode::Unimplemented);
        assert_eq!(e.message, r#"unknown method "a\"b\n""#);
        let long = RequestError::unimplemented(&"é".repeat(1000));
        assert_eq!(
            long.message,
            ["unknown method \"", &"é".repeat(62), "…\""].concat()
        );
    }
}
