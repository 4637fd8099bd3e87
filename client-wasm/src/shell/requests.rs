//! Promises the shell settles later: requests and acknowledged publishes (with their `AbortSignal`), and
//! `waitForStatus`, kept in JS (`emit` in `js/errors.js`: a `Vec` of them and a closure per `AbortSignal` cost
//! the package more); also the one-way `send` and `publish`.

use super::*;

/// What [`Inner::track`] issues.
pub(crate) enum Target {
    /// A request calling this method.
    Method(String),
    /// An acknowledged publish to this topic.
    Publish(String),
}

impl Inner {
    /// `waitForStatus(status)`'s promise (kept and settled in JS: `emit`'s `Wait`, `Reached`, `Closed`).
    pub(crate) fn wait_for(
        &self,
        status: &str,
        timeout: Option<sockeye_core::Duration>,
    ) -> js_sys::Promise {
        let now = JsValue::from_str(self.status());
        let ms = timeout.map_or(f64::NAN, |d| d.as_millis() as f64);
        self.emit(Emit::Wait, status, &now, &JsValue::UNDEFINED, ms, 0.0)
            .unchecked_into()
    }

    /// Issues a request or an acknowledged publish; its promise (kept in JS: `emit`'s `Track`) settles with its
    /// outcome, and `signal` (when given) cancels it.
    pub(crate) fn track(
        self: &Rc<Self>,
        target: Target,
        data: Option<sockeye_core::codec::Payload>,
        timeout: Option<sockeye_core::Duration>,
        signal: Option<AbortSignal>,
    ) -> js_sys::Promise {
        self.with(|st, now| {
            let issued = match &target {
                Target::Method(method) => st.conn.request(now, method, data, timeout),
                Target::Publish(topic) => st.conn.publish_acked(now, topic, data, timeout),
            };
            match issued {
                Err(e) => errors::rejected(&errors::send_error(&e)),
                // Kept before the drain: a reply it brings finds the promise.
                Ok(id) => {
                    let signal = signal.map_or(JsValue::UNDEFINED, JsValue::from);
                    let promise = self.emit(
                        Emit::Track,
                        "",
                        &signal,
                        st.notify.as_ref(),
                        id.0 as f64,
                        0.0,
                    );
                    promise.unchecked_into()
                }
            }
        })
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
