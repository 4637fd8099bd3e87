//! After `ready`: what each envelope does. Requests go to the application's handler, else a built-in, else
//! `UNIMPLEMENTED`; messages likewise; topic commands to [`super::topics`]; replies of every kind are built
//! by [`answer_envelope`].

use std::borrow::Cow;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use sockeye_core::codec::{Envelope, Payload};
use sockeye_core::error::{clip, ErrorCode, MAX_QUOTED_NAME};
use sockeye_core::RequestError;

use super::{Done, Session};
use crate::app::{Context, RpcError};
use crate::builtins::{self, Builtin};

/// A peer-chosen name, cut for quoting in a reply or a log.
pub(crate) fn quoted(name: &str) -> Cow<'_, str> {
    clip(name, MAX_QUOTED_NAME)
}

/// The envelope answering request `id` with `result` (`res` or `err` with the `id`); without an `id`, a
/// connection-level notice (`err` without `id`) for an error and nothing for a success. Every reply the
/// server sends is built here, with the core's envelope helpers the clients answer with too.
pub(crate) fn answer_envelope(
    id: Option<u64>,
    result: Result<Option<Payload>, RpcError>,
) -> Option<Envelope> {
    match (id, result) {
        (Some(id), result) => Some(Envelope::reply(id, result.map_err(RequestError::from))),
        (None, Err(error)) => Some(Envelope::error(None, error.into())),
        (None, Ok(_)) => None,
    }
}

/// The `UNIMPLEMENTED` answer to a request: the core's, which the clients give too.
fn unimplemented(method: &str) -> RpcError {
    RequestError::unimplemented(method).into()
}

impl Session {
    pub(super) fn dispatch(&mut self, envelope: Envelope) {
        match envelope {
            Envelope::Req { id, method, data } => self.on_request(id, &method, data),
            Envelope::Msg { name, data } => self.on_message(name, data),
            Envelope::Sub { id, topic, since } => self.on_subscribe(id, topic, since),
            Envelope::Unsub { id, topic } => {
                let reply = self.on_unsubscribe(&topic).map(|()| None);
                self.answer(Some(id), reply);
            }
            Envelope::Pub { id, topic, data } => self.on_publish(id, topic, data),
            Envelope::Res { id, .. } => {
                tracing::debug!(
                    connection = self.id,
                    id,
                    "res for no request of the server: ignored"
                );
            }
            Envelope::Err {
                id, code, message, ..
            } => {
                let message = quoted(&message);
                tracing::debug!(connection = self.id, ?id, %code, %message, "err from the client");
            }
            Envelope::Evt { .. } => {
                self.protocol_error();
                self.answer(
                    None,
                    Err(RpcError::invalid_argument("evt is sent by servers only")),
                );
            }
        }
    }

    fn context(&self) -> Context {
        Context {
            identity: self.identity.clone(),
            connection_id: self.id,
            shared: Arc::clone(&self.shared),
        }
    }

    fn on_request(&mut self, id: u64, method: &str, data: Option<Payload>) {
        if let Err(e) = self.may_start_inflight() {
            return self.answer(Some(id), Err(e));
        }
        if let Some(handler) = self.shared.app.methods.get(method) {
            let future = handler(self.context(), data);
            return self.spawn_request(id, future);
        }
        if !self.shared.config.builtins {
            return self.answer(Some(id), Err(unimplemented(method)));
        }
        if method == "stats" {
            // Include this connection's frames so far.
            self.publish_counters();
        }
        match builtins::call(method, data, &self.identity, self.id, &self.shared) {
            Some(Builtin::Reply(result)) => self.answer(Some(id), result),
            Some(Builtin::Later(future)) => self.spawn_request(id, future),
            Some(Builtin::Close { code, reason }) => {
                self.answer(Some(id), Ok(None));
                self.close(code, reason);
            }
            None => self.answer(Some(id), Err(unimplemented(method))),
        }
    }

    fn spawn_request(
        &mut self,
        id: u64,
        future: BoxFuture<'static, Result<Option<Payload>, RpcError>>,
    ) {
        self.spawn(Box::pin(AssertUnwindSafe(future).catch_unwind().map(
            move |result| Done::Reply {
                id,
                result:
                    result.unwrap_or_else(|_| Err(RpcError::internal("request handler panicked"))),
            },
        )));
    }

    fn on_message(&mut self, name: String, data: Option<Payload>) {
        if let Some(handler) = self.shared.app.messages.get(&name) {
            if self.inflight_full() {
                let limit = self.shared.config.limits.max_inflight;
                let message = format!(
                    "too many handlers in flight (limit {limit}): msg {:?} dropped",
                    quoted(&name)
                );
                return self.answer(
                    None,
                    Err(RpcError::new(ErrorCode::ResourceExhausted, message)),
                );
            }
            let future = handler(self.context(), data);
            self.spawn(Box::pin(AssertUnwindSafe(future).catch_unwind().map(
                |result| {
                    Done::Handled(
                        result.unwrap_or_else(|_| {
                            Err(RpcError::internal("message handler panicked"))
                        }),
                    )
                },
            )));
        } else if self.shared.config.builtins && name == "echo" {
            self.send_envelope(Envelope::Msg { name, data });
        } else {
            let message = format!("no handler for msg {:?}", quoted(&name));
            self.answer(None, Err(RpcError::new(ErrorCode::Unimplemented, message)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_names_are_cut_with_a_mark() {
        let name = "x".repeat(3 * 1024 * 1024);
        assert_eq!(quoted(&name).len(), MAX_QUOTED_NAME);
        assert!(quoted(&name).ends_with('…'));
    }

    #[test]
    fn answers_carry_the_id_and_a_success_without_one_says_nothing() {
        let ok = answer_envelope(Some(3), Ok(None));
        assert!(matches!(ok, Some(Envelope::Res { id: 3, data: None })));
        let notice = answer_envelope(None, Err(RpcError::internal("x")));
        assert!(matches!(notice, Some(Envelope::Err { id: None, .. })));
        assert!(answer_envelope(None, Ok(None)).is_none());
    }
}
