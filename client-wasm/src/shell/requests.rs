//! Promises the shell settles later: requests and acknowledged publishes (with their `AbortSignal`), and
//! `waitForStatus`; also the one-way `send` and `publish`.

use super::*;

/// A promise the shell settles later: a request's (found by `id`, with its `AbortSignal` listener) or a
/// `waitForStatus`'s (found by `status`, rejected at `deadline`). One type for both lists, as `Listener` is.
pub(super) struct Pending {
    pub(super) id: u64,
    pub(super) status: String,
    pub(super) deadline: Option<Instant>,
    pub(super) resolve: Function,
    pub(super) reject: Function,
    pub(super) _abort: Option<Abort>,
}

/// The `abort` listener of a request's `AbortSignal`, removed when the request ends.
pub(super) struct Abort {
    signal: AbortSignal,
    handler: Callback,
}

impl Drop for Abort {
    fn drop(&mut self) {
        let _ = self
            .signal
            .remove_event_listener_with_callback("abort", self.handler.as_ref().unchecked_ref());
    }
}

/// What [`Inner::track`] issues.
pub(crate) enum Target {
    /// A request calling this method.
    Method(String),
    /// An acknowledged publish to this topic.
    Publish(String),
}

impl State {
    /// Resolves or rejects the promise of request `id` (a request or an acknowledged publish).
    pub(super) fn settle(&mut self, id: RequestId, result: Result<JsValue, RequestError>) {
        if let Some(i) = self.requests.iter().position(|p| p.id == id.0) {
            let p = self.requests.swap_remove(i);
            let _ = match result {
                Ok(value) => apply(&p.resolve, &[&value]),
                Err(e) => apply(&p.reject, &[&request_error(&e)]),
            };
        }
    }

    /// Rejects every `waitForStatus` still waiting.
    pub(super) fn reject_waiters(&mut self, message: &str) {
        for w in self.waiters.drain(..) {
            let _ = apply(
                &w.reject,
                &[&error(Kind::ConnectionClosed, "UNAVAILABLE", message)],
            );
        }
    }
}

impl Inner {
    pub(crate) fn wait_for(
        self: &Rc<Self>,
        status: String,
        timeout: Option<sockeye_core::Duration>,
        resolve: Function,
        reject: Function,
    ) {
        self.with(|st, now| {
            if st.conn.status().name() == status {
                let _ = apply(&resolve, &[]);
                return;
            }
            st.waiters.push(Pending {
                id: 0,
                status,
                deadline: timeout.map(|d| now + d),
                resolve,
                reject,
                _abort: None,
            });
        });
    }

    /// Issues a request or an acknowledged publish; `resolve` or `reject` settles with its outcome, and `signal`
    /// (when given) cancels it.
    pub(crate) fn track(
        self: &Rc<Self>,
        target: Target,
        data: Option<sockeye_core::codec::Payload>,
        timeout: Option<sockeye_core::Duration>,
        signal: Option<AbortSignal>,
        resolve: Function,
        reject: Function,
    ) {
        self.with(|st, now| {
            let issued = match &target {
                Target::Method(method) => st.conn.request(now, method, data, timeout),
                Target::Publish(topic) => st.conn.publish_acked(now, topic, data, timeout),
            };
            match issued {
                Err(e) => {
                    let _ = apply(&reject, &[&errors::send_error(&e)]);
                }
                Ok(id) => {
                    let abort = signal.map(|signal| {
                        let weak = st.weak.clone();
                        let handler = callback(move |_| {
                            if let Some(inner) = weak.upgrade() {
                                inner.with(|st, now| st.conn.cancel(now, RequestId(id.0)));
                            }
                        });
                        let _ = signal.add_event_listener_with_callback(
                            "abort",
                            handler.as_ref().unchecked_ref(),
                        );
                        Abort { signal, handler }
                    });
                    st.requests.push(Pending {
                        id: id.0,
                        status: String::new(),
                        deadline: None,
                        resolve,
                        reject,
                        _abort: abort,
                    });
                }
            }
        });
    }

    pub(crate) fn send(
        self: &Rc<Self>,
        name: &str,
        data: Option<sockeye_core::codec::Payload>,
    ) -> Result<(), JsValue> {
        self.with(|st, now| st.conn.send(now, name, data))
            .map_err(|e| errors::send_error(&e))
    }

    pub(crate) fn publish(
        self: &Rc<Self>,
        topic: &str,
        data: Option<sockeye_core::codec::Payload>,
    ) -> Result<(), JsValue> {
        self.with(|st, now| st.conn.publish(now, topic, data))
            .map_err(|e| errors::send_error(&e))
    }
}
