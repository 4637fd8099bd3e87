//! Topic subscriptions: the application's listeners per topic (the core counts them and reports each
//! topic's state), and who hears a topic's events and losses.

use super::*;

impl Inner {
    pub(crate) fn subscribe(
        self: &Rc<Self>,
        topic: String,
        handler: Function,
        callbacks: TopicCallbacks,
    ) -> Result<JsValue, JsValue> {
        let id = self.with(|st, now| {
            let first = st
                .conn
                .subscribe(now, &topic)
                .map_err(|e| errors::send_error(&e))?;
            // The first subscriber hears `pending` from the core; a later one its topic's current state.
            if let (false, Some(f), Some(state)) =
                (first, &callbacks.on_state, st.conn.subscription(&topic))
            {
                st.actions
                    .push_back(Action::Call(f.clone(), state.name().into()));
            }
            let id = st.next_id();
            st.topics.push(Listener {
                id,
                name: topic.clone(),
                f: handler,
                callbacks,
            });
            Ok::<_, JsValue>(id)
        })?;
        // The core counts subscribers: each unsubscribe that removes a listener releases one. (A refused topic's
        // listeners are gone already, and the core no longer counts them.)
        Ok(self.unsubscriber(move |st, now| {
            if let Some(at) = st.topics.iter().position(|l| l.id == id) {
                st.topics.swap_remove(at);
                st.conn.unsubscribe(now, &topic);
            }
        }))
    }

    /// The callbacks `pick` chooses from the listeners of `topic`, cloned so no borrow is held while they run.
    pub(super) fn topic_callbacks(
        &self,
        topic: &str,
        pick: impl Fn(&Listener) -> Option<&Function>,
    ) -> js_sys::Array {
        let st = self.state.borrow();
        snapshot(
            st.topics
                .iter()
                .filter(|l| l.name == topic)
                .filter_map(pick),
        )
    }

    /// A loss on `topic` goes to every `onGap`; never silently: without one, to the console.
    pub(super) fn report_gap(&self, topic: &str, info: &JsValue) {
        let handlers = self.topic_callbacks(topic, |l| l.callbacks.on_gap.as_ref());
        if handlers.length() == 0 {
            console_error("sockeye: events lost", info);
        }
        for f in options::items(&handlers) {
            self.call(f.unchecked_ref(), &[info]);
        }
    }
}
