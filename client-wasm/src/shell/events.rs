//! The core's events as the application hears them: transitions and lifecycle callbacks, messages, topic
//! events, gaps and subscription states (all run with no borrow held).

use super::*;

/// `{ from, to, at, ... }`: status names, `at` in ms on the `performance.now()` clock, and the new state's data.
pub(super) fn transition_object(t: &Transition) -> JsValue {
    let o = Object::new();
    set(&o, "from", &t.from.name().into());
    set(&o, "to", &t.to.name().into());
    set(&o, "at", &(t.at.as_millis() as f64).into());
    match &t.to {
        Status::Connecting { attempt } | Status::Connected { attempt } => {
            set(&o, "attempt", &(*attempt).into());
        }
        Status::Reconnecting {
            attempt,
            delay,
            next_attempt_at,
        } => {
            set(&o, "attempt", &(*attempt).into());
            set(&o, "delayMs", &(delay.as_millis() as f64).into());
            if let Some(at) = next_attempt_at {
                set(&o, "nextAttemptAt", &(at.as_millis() as f64).into());
            }
        }
        Status::Disconnected { reason: Some(r) } => {
            set(&o, "reason", &r.as_str().into());
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
            if let Some(code) = code {
                set(&o, "code", &code.0.into());
            }
            set(&o, "message", &message.into());
        }
        _ => {}
    }
    o.into()
}

impl Inner {
    pub(super) fn deliver_transition(self: &Rc<Self>, t: &Transition) {
        let (listeners, on_reconnecting, on_ready) = {
            let st = self.state.borrow();
            let l = &st.lifecycle;
            let on_state_change = l.get(Hook::StateChange);
            let listeners = snapshot(
                on_state_change
                    .iter()
                    .chain(st.transitions.iter().map(|l| &l.f)),
            );
            (listeners, l.get(Hook::Reconnecting), l.get(Hook::Ready))
        };
        let object = transition_object(t);
        for f in options::items(&listeners) {
            self.call(f.unchecked_ref(), &[&object]);
        }
        match (&t.to, on_reconnecting, on_ready) {
            (Status::Reconnecting { .. }, Some(f), _) => self.call(&f, &[&object]),
            (Status::Ready, _, Some(f)) => self.call(&f, &[]),
            _ => {}
        }
    }

    /// The lifecycle callback `hook`, if the application gave one, with `args`.
    pub(super) fn lifecycle(&self, hook: Hook, args: &[&JsValue]) {
        let f = self.state.borrow().lifecycle.get(hook);
        if let Some(f) = f {
            self.call(&f, args);
        }
    }

    pub(super) fn deliver(self: &Rc<Self>, event: Event) {
        match event {
            Event::Message { name, data } => {
                let handlers = snapshot(
                    self.state
                        .borrow()
                        .messages
                        .iter()
                        .filter(|l| l.name == name || l.name == "*")
                        .map(|l| &l.f),
                );
                if handlers.length() == 0 {
                    return;
                }
                let data = cbor::decode(data.as_ref());
                let meta = Object::new();
                set(&meta, "name", &name.into());
                for f in options::items(&handlers) {
                    self.call(f.unchecked_ref(), &[&data, &meta]);
                }
            }
            Event::TopicEvent {
                topic,
                seq,
                ep,
                data,
            } => {
                let handlers = self.topic_callbacks(&topic, |l| Some(&l.f));
                let data = cbor::decode(data.as_ref());
                let meta = Object::new();
                set(&meta, "topic", &topic.into());
                set(&meta, "seq", &(seq as f64).into());
                if let Some(ep) = ep {
                    set(&meta, "ep", &(*ep).into());
                }
                for f in options::items(&handlers) {
                    self.call(f.unchecked_ref(), &[&data, &meta]);
                }
            }
            Event::TopicGap { topic, from, to } => {
                let info = Object::new();
                set(&info, "topic", &topic.as_str().into());
                set(&info, "from", &(from as f64).into());
                set(&info, "to", &(to as f64).into());
                self.report_gap(&topic, &info);
            }
            Event::TopicReset { topic, ep } => {
                let info = Object::new();
                set(&info, "topic", &topic.as_str().into());
                set(&info, "reset", &true.into());
                set(&info, "ep", &ep.into());
                self.report_gap(&topic, &info);
            }
            Event::TopicResumed { topic, replayed } => {
                let handlers = self.topic_callbacks(&topic, |l| l.callbacks.on_resumed.as_ref());
                let info = Object::new();
                set(&info, "topic", &topic.into());
                set(&info, "replayed", &(replayed as f64).into());
                for f in options::items(&handlers) {
                    self.call(f.unchecked_ref(), &[&info]);
                }
            }
            Event::SubscriptionChanged {
                topic,
                state: SubscriptionState::Failed(error),
            } => {
                let removed: Vec<Listener> = {
                    let mut st = self.state.borrow_mut();
                    let (gone, kept) = core::mem::take(&mut st.topics)
                        .into_iter()
                        .partition(|l| l.name == topic);
                    st.topics = kept;
                    gone
                };
                let e = request_error(&error);
                let failed = JsValue::from_str("failed");
                for l in removed {
                    if let Some(f) = l.callbacks.on_state {
                        self.call(&f, &[&failed]);
                    }
                    match l.callbacks.on_error {
                        Some(f) => self.call(&f, &[&e]),
                        None => console_error("sockeye: subscription refused", &e),
                    }
                }
            }
            Event::SubscriptionChanged { topic, state } => {
                let handlers = self.topic_callbacks(&topic, |l| l.callbacks.on_state.as_ref());
                let state = JsValue::from_str(state.name());
                for f in options::items(&handlers) {
                    self.call(f.unchecked_ref(), &[&state]);
                }
            }
            Event::Request {
                socket,
                id,
                method,
                data,
            } => self.serve(socket, id, &method, data.as_ref()),
            Event::Notice(e) => {
                let f = self.state.borrow().lifecycle.get(Hook::Error);
                match f {
                    Some(f) => self.call(&f, &[&request_error(&e)]),
                    None => console_error("sockeye: server error", &request_error(&e)),
                }
            }
            Event::Draining => self.lifecycle(Hook::Draining, &[]),
            Event::StateChanged(t) => self.deliver_transition(&t),
            Event::Disconnected {
                code,
                reason,
                will_reconnect,
            } => {
                let info = Object::new();
                set(&info, "code", &code.0.into());
                set(&info, "reason", &reason.as_str().into());
                set(&info, "willReconnect", &will_reconnect.into());
                self.lifecycle(Hook::Disconnect, &[&info]);
            }
            Event::Reconnected => self.lifecycle(Hook::Reconnected, &[]),
            // Settled in `State::event`.
            Event::Reply { .. } | Event::Published { .. } => {}
        }
    }

    pub(crate) fn on_transition(self: &Rc<Self>, handler: Function) -> JsValue {
        let id = self.with(|st, _| {
            let id = st.next_id();
            st.transitions.push(listener(id, String::new(), handler));
            id
        });
        self.unsubscriber(move |st, _| st.transitions.retain(|l| l.id != id))
    }

    pub(crate) fn on_message(self: &Rc<Self>, name: String, handler: Function) -> JsValue {
        let id = self.with(|st, _| {
            let id = st.next_id();
            st.messages.push(listener(id, name, handler));
            id
        });
        self.unsubscriber(move |st, _| st.messages.retain(|l| l.id != id))
    }
}
