//! The core's events as the application hears them: transitions and lifecycle callbacks, messages, topic
//! events, gaps and subscription states (all run with no borrow held). The listener tables and the objects the
//! callbacks get are built in JS (`emit` and `on` in `js/errors.js`): from Rust, each key of each object was a
//! `Reflect.set` call and each list its own `Vec` code (bench/SIZE.md has what each step saved).

use super::*;

/// A transition as `emit` gets it (`Emit::Transition`), besides `to`'s name and `at`: `(v, w, y)`.
/// `connecting`/`connected`: `y` the attempt; `reconnecting`: `y` the attempt, `v` the delay in ms, `w` when the
/// attempt starts (or undefined); `disconnected` with a reason: `v` the reason, `w` the message, `y` the close code
/// (NaN: none).
fn transition_parts(to: &Status) -> (JsValue, JsValue, f64) {
    let none = JsValue::UNDEFINED;
    match to {
        Status::Connecting { attempt } | Status::Connected { attempt } => {
            (none.clone(), none, f64::from(*attempt))
        }
        Status::Reconnecting {
            attempt,
            delay,
            next_attempt_at,
        } => {
            let next = next_attempt_at.map_or(none, |at| (at.as_millis() as f64).into());
            let delay = (delay.as_millis() as f64).into();
            (delay, next, f64::from(*attempt))
        }
        Status::Disconnected { reason: Some(r) } => {
            let (code, message) = match r {
                DisconnectReason::AuthFailed { reason } => {
                    (Some(CloseCode::AUTH_FAILED), reason.as_str())
                }
                DisconnectReason::PolicyViolation { reason } => {
                    (Some(CloseCode::POLICY_VIOLATION), reason.as_str())
                }
                DisconnectReason::Closed { code, reason }
                | DisconnectReason::MaxAttemptsExceeded { code, reason, .. } => {
                    (Some(*code), reason.as_str())
                }
                _ => (None, ""),
            };
            let code = code.map_or(f64::NAN, |c| c.0.into());
            (text(Some(r.as_str())), text(Some(message)), code)
        }
        _ => (none.clone(), none, 0.0),
    }
}

/// The kinds of event `emit` in `js/errors.js` tells apart (its `switch`).
#[derive(Clone, Copy)]
pub(super) enum Emit {
    /// `name`: the new status, `x`: when (ms), the rest: [`transition_parts`]. (`from` is the `to` before: JS keeps it.)
    Transition,
    /// `name`: the reason, `x`: the code, `y`: 1 when it will reconnect.
    Disconnected,
    Reconnected,
    Draining,
    /// `v`: the error.
    Notice,
    /// `name`, `v`: the data.
    Message,
    /// `name`: the topic, `v`: the data, `w`: the epoch (or undefined), `x`: `seq`.
    TopicEvent,
    /// `name`, `x`: from, `y`: to.
    Gap,
    /// `name`, `w`: the epoch.
    Reset,
    /// `name`, `x`: how many were replayed.
    Resumed,
    /// `name`, `w`: the state's name.
    SubscriptionState,
    /// `name`, `v`: the server's error.
    SubscriptionFailed,
    /// `name`: the method, `v`: the data, `x`: the id. Returns the handler's outcome (a promise) or undefined.
    Request,
    /// The client was freed: the tables are emptied, no callback runs any more, waiters are rejected.
    Freed,
    /// `x`: a request's id, `v`: its `AbortSignal` (or undefined), `w`: called with the id when it aborts. Returns
    /// the request's promise.
    Track,
    /// `x`: the id, `y`: 1 to resolve, 0 to reject, `v`: with this.
    Settle,
    /// `x`: the id of an acknowledged publish, `w`: the epoch, `y`: `seq`.
    Stored,
    /// `name`: the status awaited, `v`: the current one, `x`: the timeout in ms (NaN: none). Returns the promise.
    Wait,
    /// `name`: the status reached: its waiters resolve.
    Reached,
    /// `name`: why every waiter is rejected.
    Closed,
}

#[wasm_bindgen(module = "/js/errors.js")]
extern "C" {
    /// One event for the application's listeners; see there.
    #[wasm_bindgen(js_name = emit)]
    pub(super) fn emit_js(
        hub: &JsValue,
        kind: u8,
        name: &str,
        v: &JsValue,
        w: &JsValue,
        x: f64,
        y: f64,
    ) -> JsValue;

    /// Adds a listener; returns the function that removes it. See there.
    #[wasm_bindgen(js_name = on)]
    fn on_js(
        hub: &JsValue,
        list: u8,
        name: &str,
        f: &JsValue,
        callbacks: &JsValue,
        notify: &JsValue,
    ) -> JsValue;
}

/// The lists `on` adds to.
#[derive(Clone, Copy)]
pub(crate) enum List {
    Transitions,
    Messages,
    Requests,
    Topics,
}

/// A string as a JS value, `undefined` for none.
fn text(s: Option<&str>) -> JsValue {
    s.map_or(JsValue::UNDEFINED, JsValue::from_str)
}

impl Inner {
    pub(super) fn emit(
        &self,
        kind: Emit,
        name: &str,
        v: &JsValue,
        w: &JsValue,
        x: f64,
        y: f64,
    ) -> JsValue {
        emit_js(&self.hub, kind as u8, name, v, w, x, y)
    }

    /// Adds `f` to `list` under `name` (with a topic's `callbacks`, and `notify` for its unsubscribe); returns
    /// the function that removes it.
    pub(crate) fn on(
        &self,
        list: List,
        name: &str,
        f: &JsValue,
        callbacks: &JsValue,
        notify: &JsValue,
    ) -> JsValue {
        on_js(&self.hub, list as u8, name, f, callbacks, notify)
    }

    pub(super) fn deliver(self: &Rc<Self>, event: Event) {
        let none = || JsValue::UNDEFINED;
        // What `emit` gets, per kind (one call of it here, not one per kind).
        let (kind, name, v, w, x, y): (Emit, &str, JsValue, JsValue, f64, f64) = match &event {
            Event::Message { name, data } => {
                let data = cbor::decode(data.as_ref());
                (Emit::Message, name, data, none(), 0.0, 0.0)
            }
            Event::TopicEvent {
                topic,
                seq,
                ep,
                data,
            } => {
                let data = cbor::decode(data.as_ref());
                let ep = text(ep.as_deref());
                (Emit::TopicEvent, topic, data, ep, *seq as f64, 0.0)
            }
            Event::TopicGap { topic, from, to } => {
                (Emit::Gap, topic, none(), none(), *from as f64, *to as f64)
            }
            Event::TopicReset { topic, ep } => {
                (Emit::Reset, topic, none(), text(Some(ep)), 0.0, 0.0)
            }
            Event::TopicResumed { topic, replayed } => {
                (Emit::Resumed, topic, none(), none(), *replayed as f64, 0.0)
            }
            Event::SubscriptionChanged {
                topic,
                state: SubscriptionState::Failed(error),
            } => {
                let error = request_error(error);
                (Emit::SubscriptionFailed, topic, error, none(), 0.0, 0.0)
            }
            Event::SubscriptionChanged { topic, state } => {
                let state = text(Some(state.name()));
                (Emit::SubscriptionState, topic, none(), state, 0.0, 0.0)
            }
            Event::Request {
                socket,
                id,
                method,
                data,
            } => return self.serve(*socket, *id, method, data.as_ref()),
            Event::Notice(e) => (Emit::Notice, "", request_error(e), none(), 0.0, 0.0),
            Event::Draining => (Emit::Draining, "", none(), none(), 0.0, 0.0),
            Event::StateChanged(t) => {
                let (v, w, y) = transition_parts(&t.to);
                (
                    Emit::Transition,
                    t.to.name(),
                    v,
                    w,
                    t.at.as_millis() as f64,
                    y,
                )
            }
            Event::Disconnected {
                code,
                reason,
                will_reconnect,
            } => {
                let again = f64::from(u8::from(*will_reconnect));
                (
                    Emit::Disconnected,
                    reason.as_str(),
                    none(),
                    none(),
                    code.0.into(),
                    again,
                )
            }
            Event::Reconnected => (Emit::Reconnected, "", none(), none(), 0.0, 0.0),
            // Settled in `State::event`.
            Event::Reply { .. } | Event::Published { .. } => return,
        };
        self.emit(kind, name, &v, &w, x, y);
    }
}
