//! Topic subscriptions: the core counts them and reports each topic's state; the application's listeners per
//! topic, and who hears a topic's events and losses, are kept in JS (`on` and `emit` in `js/errors.js`).

use super::*;

impl Inner {
    /// `callbacks`: `[onError, onGap, onResumed, onState]` as `checkSubscribeOptions` returns them.
    pub(crate) fn subscribe(
        self: &Rc<Self>,
        topic: String,
        handler: &JsValue,
        callbacks: &js_sys::Array,
    ) -> Result<JsValue, JsValue> {
        self.with(|st, now| {
            let first = st
                .conn
                .subscribe(now, &topic)
                .map_err(|e| errors::send_error(&e))?;
            // The first subscriber hears `pending` from the core; a later one its topic's current state.
            let on_state = callbacks.get(3);
            if let (false, true, Some(state)) =
                (first, on_state.is_function(), st.conn.subscription(&topic))
            {
                st.actions
                    .push_back(Action::Call(on_state.unchecked_into(), state.name().into()));
            }
            // Added before the drain's events are delivered: the new subscriber hears them. Each unsubscribe
            // that removes a listener releases one in the core (`State::notify`); a refused topic's listeners are
            // gone already, and the core no longer counts them.
            Ok(self.on(List::Topics, &topic, handler, callbacks, st.notify.as_ref()))
        })
    }
}
