//! The browser shell around `sockeye_core::Connection`: one `WebSocket` at a time, one `setTimeout`, the page's
//! `online`/`offline`/`visibilitychange`/`resume` events, and the application's callbacks and promises.
//!
//! Here: the state, the drain of the core's outputs, the one timer, and the commands that start and end it all.
//! By concern beside it: `socket.rs` (the `WebSocket`), `page.rs` (page events feeding `Wake` and the network
//! state), `requests.rs` (promises: requests, acknowledged publishes, `waitForStatus`), `subscriptions.rs`,
//! `server_requests.rs` (the server's `req`s), `events.rs` (the core's events as application callbacks). The
//! application's listeners and promises, the objects its callbacks get and the browser's event wiring are in
//! `js/errors.js`: each boundary call, import and Rust list costs the package more than the same in JS.
//!
//! # Borrow discipline (STYLE.md pitfall 3)
//!
//! All state sits in one `RefCell<State>`. A borrow is held only while the core is fed and drained and while
//! browser objects the shell owns are touched (`WebSocket`, timers, listeners, settling promises — a promise's
//! `resolve`/`reject` never runs application code synchronously). Anything that may run application code —
//! lifecycle callbacks, subscription and message handlers, server-request handlers, `url(attempt)`,
//! `getToken()` — is queued as an [`Action`] and run by [`Inner::dispatch`] after the borrow is released. A
//! callback that calls back into the client (say, `request` from `onReady`) borrows afresh; its own actions join
//! the same queue, so the application sees events in the order the core decided them.
//!
//! # Ownership
//!
//! The exported `Client` holds the only strong `Rc<Inner>`. Every closure handed to the browser (socket events,
//! `State::notify` for the timer, abort signals and topic unsubscribes, page listeners) holds a `Weak`, and the
//! closures themselves are owned by the shell (`Socket`, `State::notify`, `Listeners`) and detached from their
//! targets when dropped; nothing is `forget()`-ed. So `client.free()` (or the garbage collector: wasm-bindgen's
//! glue registers every `Client` with a `FinalizationRegistry`) drops the state, which closes the socket and
//! removes every listener and the timer. The application's listeners, the promises the shell settles later and
//! the unsubscribe functions it hands out are kept in JS (`emit` in `js/errors.js`); freeing the client empties
//! that table (`Emit::Freed`) before the closures go, so an unsubscribe function called later finds nothing to
//! remove and never calls into the freed client.

use alloc::borrow::ToOwned;
use alloc::collections::VecDeque;
use alloc::rc::{Rc, Weak};
use alloc::string::String;
use core::cell::{Cell, RefCell};

use js_sys::{Function, Reflect, Uint8Array};
use sockeye_core::handshake::{with_query_token, SUBPROTOCOL};
use sockeye_core::{
    CloseCode, Connection, DisconnectReason, ErrorCode, Event, Input, Instant, Output,
    RequestError, RequestId, SocketId, Status, SubscriptionState,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{AbortSignal, EventTarget, MessageEvent, WebSocket};

mod events;
mod page;
mod requests;
mod server_requests;
mod socket;
mod subscriptions;

pub(crate) use events::List;
use events::{emit_js, Emit};
use page::*;
pub(crate) use requests::Target;
use socket::*;

use crate::cbor;
use crate::errors::{self, apply, request_error, settle};
use crate::options::{self, Options};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
    // Bound by hand rather than through gloo-timers (0.4), measured with scripts/size.sh on this shell: its
    // `Timeout` (a `Closure::once` per arming, `unwrap_throw`) made the package 214 B larger gzipped (.wasm
    // 48,432 → 48,629 B, glue 5,895 → 5,912 B), and gloo-timers is a `std` crate, which the `no_std` npm build
    // cannot link. One closure (`State::notify`), reused for every arming, is all the shell needs.
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: f64) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(what: &str, error: &JsValue);
    /// `window`, or `undefined` outside a page (a worker).
    #[wasm_bindgen(thread_local_v2, js_name = window)]
    static WINDOW: Option<JsValue>;
}

/// The shell's clock: `performance.now()` in whole milliseconds.
pub(crate) fn now() -> Instant {
    Instant::from_millis(performance_now() as u64)
}

/// Seed for the core's jitter generator: 64 bits from `Math.random`.
pub(crate) fn seed() -> u64 {
    let half = || (js_sys::Math::random() * 4_294_967_296.0) as u64;
    (half() << 32) | half()
}

/// Work that may run application code: done by [`Inner::dispatch`] with no borrow held.
enum Action {
    /// `Output::OpenSocket`: resolve the URL and token (application code), then open the socket.
    Open {
        socket: SocketId,
        attempt: u32,
    },
    Event(Event),
    /// One callback for one listener (a new subscriber hears its topic's current state).
    Call(Function, JsValue),
}

pub(crate) struct Inner {
    state: RefCell<State>,
    /// The application's listeners, kept in JS (`emit` in `js/errors.js`); outside the `RefCell` so that freeing
    /// the client always reaches them.
    hub: JsValue,
    dispatching: Cell<bool>,
    /// The client was freed: run no more application code.
    dead: Cell<bool>,
}

struct State {
    conn: Connection,
    weak: Weak<Inner>,
    url: JsValue,
    token: JsValue,
    /// Application work waiting for the borrow to end.
    actions: VecDeque<Action>,
    /// The current socket.
    socket: Option<Socket>,
    /// A socket the core asked for whose URL or token is still being resolved.
    opening: Option<SocketId>,
    /// The one timer, armed for the earliest deadline (the core's, or a `waitForStatus` timeout).
    timer: Option<Timer>,
    /// The one closure JS calls the client back with (one rather than three: each costs package size): the timer
    /// (no argument), a request's `AbortSignal` (the request's id), a topic subscription's unsubscribe function
    /// (the topic: the core counts subscribers).
    notify: Callback,
    /// `online`/`offline`/`visibilitychange`/`resume`, attached by `start()`, removed by `close()`.
    listeners: Option<Listeners>,
    hidden: bool,
    /// `Inner::hub`, for settling promises while the state is borrowed (which runs no application code).
    hub: JsValue,
}

struct Timer {
    handle: JsValue,
    at: Instant,
}

impl Drop for Timer {
    fn drop(&mut self) {
        clear_timeout(&self.handle);
    }
}

impl State {
    /// Feeds one input and drains the core (the drain rule).
    fn feed(&mut self, now: Instant, input: Input<'_>) {
        self.conn.handle_input(now, input);
        self.drain(now);
    }

    /// Acts on every output: socket work here, application work queued. Then arms the timer.
    fn drain(&mut self, now: Instant) {
        while let Some(output) = self.conn.poll_output() {
            match output {
                Output::OpenSocket { socket, attempt } => {
                    self.socket = None;
                    self.opening = Some(socket);
                    self.actions.push_back(Action::Open { socket, attempt });
                }
                Output::CloseSocket {
                    socket,
                    code,
                    reason,
                } => {
                    if self.opening == Some(socket) {
                        self.opening = None;
                    }
                    if let Some(s) = self.socket.take_if(|s| s.id == socket) {
                        s.close(code.0, &reason);
                    }
                }
                Output::SendText(text) => {
                    if let Some(s) = &self.socket {
                        let _ = s.ws.send_with_str(text);
                    }
                }
                Output::SendBinary(frame) => {
                    if let Some(s) = &self.socket {
                        let _ = s.ws.send_with_u8_array(&frame);
                    }
                }
                Output::Event(event) => self.event(event),
            }
        }
        self.arm(now);
    }

    /// Promises are settled here (that runs no application code); everything else is queued.
    fn event(&mut self, event: Event) {
        let none = &JsValue::UNDEFINED;
        let id = |id: RequestId| id.0 as f64;
        match event {
            Event::Reply { id: i, result } => {
                let (ok, value) = match result {
                    Ok(data) => (1.0, cbor::decode(data.as_ref())),
                    Err(e) => (0.0, request_error(&e)),
                };
                emit_js(&self.hub, Emit::Settle as u8, "", &value, none, id(i), ok);
            }
            Event::Published { id: i, result } => match result {
                Ok(at) => {
                    let ep = JsValue::from_str(&at.ep);
                    emit_js(
                        &self.hub,
                        Emit::Stored as u8,
                        "",
                        none,
                        &ep,
                        id(i),
                        at.seq as f64,
                    );
                }
                Err(e) => {
                    emit_js(
                        &self.hub,
                        Emit::Settle as u8,
                        "",
                        &request_error(&e),
                        none,
                        id(i),
                        0.0,
                    );
                }
            },
            Event::StateChanged(transition) => {
                let name = transition.to.name();
                emit_js(&self.hub, Emit::Reached as u8, name, none, none, 0.0, 0.0);
                self.actions
                    .push_back(Action::Event(Event::StateChanged(transition)));
            }
            other => self.actions.push_back(Action::Event(other)),
        }
    }

    /// Arms the one timer for the earliest deadline, replacing (and clearing) a timer for another one.
    fn arm(&mut self, now: Instant) {
        let deadline = self.conn.poll_timeout();
        if self.timer.as_ref().map(|t| t.at) == deadline {
            return;
        }
        self.timer = deadline.map(|at| {
            let ms = at
                .as_millis()
                .saturating_sub(now.as_millis())
                .min(i32::MAX as u64);
            Timer {
                handle: set_timeout(self.notify.as_ref().unchecked_ref(), ms as f64),
                at,
            }
        });
    }
}

impl Inner {
    pub(crate) fn new(options: Options) -> Result<Rc<Inner>, JsValue> {
        let Options {
            config,
            url,
            token,
            hub,
        } = options;
        let conn = Connection::new(config).map_err(|e| options::config_error(&e))?;
        Ok(Rc::new_cyclic(|weak: &Weak<Inner>| {
            let w = weak.clone();
            let notify = callback(move |v| {
                let Some(inner) = w.upgrade() else { return };
                if v.is_undefined() {
                    inner.on_timer();
                } else if let Some(id) = v.as_f64() {
                    inner.with(|st, now| st.conn.cancel(now, RequestId(id as u64)));
                } else {
                    let topic = v.as_string().unwrap_or_default();
                    inner.with(|st, now| st.conn.unsubscribe(now, &topic));
                }
            });
            let state = State {
                conn,
                weak: weak.clone(),
                url,
                token,
                actions: VecDeque::new(),
                socket: None,
                opening: None,
                timer: None,
                notify,
                listeners: None,
                hidden: false,
                hub: hub.clone(),
            };
            Inner {
                state: RefCell::new(state),
                hub,
                dispatching: Cell::new(false),
                dead: Cell::new(false),
            }
        }))
    }

    /// Runs `f` on the state with the clock read once, drains the core, then runs queued application work.
    fn with<R>(self: &Rc<Self>, f: impl FnOnce(&mut State, Instant) -> R) -> R {
        let now = now();
        let result = {
            let mut st = self.state.borrow_mut();
            let result = f(&mut st, now);
            st.drain(now);
            result
        };
        self.dispatch();
        result
    }

    fn input(self: &Rc<Self>, input: Input<'_>) {
        self.with(|st, now| st.feed(now, input));
    }

    /// Runs queued actions in order. Re-entrant calls (from a callback) only queue; the outermost loop runs.
    fn dispatch(self: &Rc<Self>) {
        if self.dispatching.replace(true) {
            return;
        }
        loop {
            let action = self.state.borrow_mut().actions.pop_front();
            let Some(action) = action else { break };
            if self.dead.get() {
                continue;
            }
            match action {
                Action::Open { socket, attempt } => self.open(socket, attempt),
                Action::Event(event) => self.deliver(event),
                Action::Call(f, arg) => self.call(&f, &[&arg]),
            }
        }
        self.dispatching.set(false);
    }

    fn on_timer(self: &Rc<Self>) {
        self.with(|st, now| {
            st.timer = None;
            st.feed(now, Input::Timeout);
        });
    }

    /// Calls an application callback, unless the client was freed meanwhile (by an earlier callback of the same
    /// event).
    fn call(&self, f: &Function, args: &[&JsValue]) {
        if !self.dead.get() {
            call(f, args);
        }
    }

    pub(crate) fn start(self: &Rc<Self>) {
        self.with(|st, now| {
            if st.listeners.is_none() {
                st.listeners = Listeners::attach(st.weak.clone());
                st.hidden = page_hidden();
            }
            let online = window()
                .is_none_or(|w| get(&get(&w, "navigator"), "onLine").as_bool() == Some(true));
            st.feed(now, Input::NetworkChanged { online });
            st.feed(now, Input::Start);
        });
    }

    /// `close()`: stop the core (close 1000), then drop every listener and the timer.
    pub(crate) fn close(self: &Rc<Self>) {
        self.with(|st, now| {
            st.feed(now, Input::Stop);
            st.opening = None;
            st.socket = None;
            st.listeners = None;
            let none = &JsValue::UNDEFINED;
            emit_js(
                &st.hub,
                Emit::Closed as u8,
                "the client was closed",
                none,
                none,
                0.0,
                0.0,
            );
        });
    }

    /// The exported `Client` was freed: like `close()`, but no application callback runs any more, and every
    /// callback the shell held is released.
    pub(crate) fn shutdown(&self) {
        self.dead.set(true);
        if let Ok(mut st) = self.state.try_borrow_mut() {
            let now = now();
            st.feed(now, Input::Stop);
            st.actions.clear();
            st.opening = None;
            st.socket = None;
            st.listeners = None;
            st.timer = None;
        }
        // After the stop, which settles the requests: the rest is forgotten, the waiters rejected.
        let none = &JsValue::UNDEFINED;
        self.emit(Emit::Freed, "", none, none, 0.0, 0.0);
    }

    pub(crate) fn status(&self) -> &'static str {
        self.state.borrow().conn.status().name()
    }
}

/// The one closure type the shell hands to the browser (each distinct closure type costs package size). `Fn`, not
/// `FnMut`: wasm-bindgen refuses to re-enter an `FnMut` closure, and `unsubscribed` may be called again from a
/// callback that runs while it is on the stack.
type Callback = Closure<dyn Fn(JsValue)>;

fn callback(f: impl Fn(JsValue) + 'static) -> Callback {
    Closure::new(f)
}

/// `[ok, value]` from `settle`.
fn outcome_parts(outcome: &JsValue) -> (bool, JsValue) {
    let parts: &js_sys::Array = outcome.unchecked_ref();
    (parts.get(0).as_bool() == Some(true), parts.get(1))
}

/// `o[key]`; `undefined` when `o` is not an object.
pub(crate) fn get(o: &JsValue, key: &str) -> JsValue {
    if !o.is_object() {
        return JsValue::UNDEFINED;
    }
    Reflect::get(o, &key.into()).unwrap_or(JsValue::UNDEFINED)
}

/// Calls an application callback; an exception is reported on the console and does not stop the client.
fn call(f: &Function, args: &[&JsValue]) {
    if let Err(e) = apply(f, args) {
        console_error("sockeye: a callback threw", &e);
    }
}

/// `prefix: message` for a thrown value: its `message` when it has one, else the value if it is a string.
fn describe(prefix: &str, e: &JsValue) -> String {
    let message = e
        .as_string()
        .or_else(|| get(e, "message").as_string())
        .unwrap_or_else(|| "unknown error".into());
    if prefix.is_empty() {
        message
    } else {
        String::from(prefix) + ": " + &message
    }
}
