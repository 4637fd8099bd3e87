//! The page around the client: its `window` and `document`, and the `online`/`offline`/`visibilitychange`/
//! `resume` events that feed the core `NetworkChanged` and `Wake`.

use super::*;

/// The page's `window`; `None` in a worker. (Not `web_sys::window()`, which finds the global object through
/// four imports first.)
///
/// Properties the shell reads once in a while (`window.document`, `navigator.onLine`, `document.hidden`,
/// `readyState`, a close event's `code` and `reason`) go through `Reflect.get` ([`get`]) rather than a typed
/// getter each: every typed getter is one more import in the package's `.wasm` and JS glue.
pub(super) fn window() -> Option<EventTarget> {
    WINDOW.with(Option::clone).map(JsCast::unchecked_into)
}

/// `window.document`, when there is a window.
pub(super) fn document() -> Option<EventTarget> {
    let window = window()?;
    let document = get(&window, "document");
    document.is_object().then(|| document.unchecked_into())
}

#[wasm_bindgen(module = "/js/errors.js")]
extern "C" {
    /// Adds (`on`) or removes `handler` for the page's events; false outside a window (a worker).
    #[wasm_bindgen(js_name = pageEvents)]
    fn page_events(on: bool, handler: &JsValue) -> bool;
}

/// The shell's handler on the page's `online`/`offline` (window), `visibilitychange` and `resume` (document: the
/// Page Lifecycle's `resume`, a frozen page runs again, its timers and socket may have been stopped for any length
/// of time) events, removed when dropped.
pub(super) struct Listeners {
    handler: Callback,
}

impl Listeners {
    /// `None` outside a window (a worker): no page events to follow there.
    pub(super) fn attach(weak: Weak<Inner>) -> Option<Listeners> {
        let handler = callback(move |event| {
            if let Some(inner) = weak.upgrade() {
                inner.page_event(&event.unchecked_into::<web_sys::Event>().type_());
            }
        });
        page_events(true, handler.as_ref()).then_some(Listeners { handler })
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        page_events(false, self.handler.as_ref());
    }
}

/// `document.hidden` (false outside a window).
pub(super) fn page_hidden() -> bool {
    document().is_some_and(|d| get(&d, "hidden").as_bool() == Some(true))
}

impl Inner {
    pub(super) fn page_event(self: &Rc<Self>, kind: &str) {
        self.with(|st, now| match kind {
            "online" => {
                st.feed(now, Input::NetworkChanged { online: true });
                st.feed(now, Input::Wake);
            }
            "offline" => st.feed(now, Input::NetworkChanged { online: false }),
            // Fed here, in the event's handler: the probe is sent before the page does anything else.
            "resume" => st.feed(now, Input::Wake),
            _ => {
                if page_hidden() {
                    st.hidden = true;
                } else if st.hidden {
                    st.hidden = false;
                    st.feed(now, Input::Wake);
                }
            }
        });
    }
}
