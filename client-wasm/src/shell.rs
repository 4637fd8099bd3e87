//! The browser shell around `sockeye_core::Connection`: one `WebSocket` at a time, one `setTimeout`, the page's
//! `online`/`offline`/`visibilitychange`/`resume` events, and the application's callbacks and promises.
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
//! the timer, page listeners, abort signals, returned unsubscribe functions) holds a `Weak`, and the closures
//! themselves are owned by the shell (`Socket`, `State::tick`, `Listeners`, `Abort`) and detached from their
//! targets when dropped; nothing is `forget()`-ed. So `client.free()` (or the garbage collector: wasm-bindgen's
//! glue registers every `Client` with a `FinalizationRegistry`) drops the state, which closes the socket and
//! removes every listener and the timer. The unsubscribe functions handed to the application are the one
//! exception to "owned by the shell": they are the application's (`into_js_value`, freed by the GC), and hold
//! only a `Weak`, so they outlive the client harmlessly.

use alloc::borrow::ToOwned;
use alloc::collections::VecDeque;
use alloc::rc::{Rc, Weak};
use alloc::string::String;
use alloc::vec::Vec;
use core::cell::{Cell, RefCell};

use js_sys::{Function, Object, Reflect, Uint8Array};
use sockeye_core::handshake::{with_query_token, SUBPROTOCOL};
use sockeye_core::{
    CloseCode, Connection, DisconnectReason, ErrorCode, Event, Input, Instant, Output,
    RequestError, RequestId, SocketId, Status, Transition,
};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{AbortSignal, EventTarget, MessageEvent, WebSocket};

use crate::cbor;
use crate::errors::{self, apply, apply_to, error, request_error, settle, Kind};
use crate::options::{self, Hook, Lifecycle, Options, TopicCallbacks};

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
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

/// The page's `window`; `None` in a worker. (Not `web_sys::window()`, which finds the global object through
/// four imports first.)
///
/// Properties the shell reads once in a while (`window.document`, `navigator.onLine`, `document.hidden`,
/// `readyState`, a close event's `code` and `reason`) go through `Reflect.get` ([`get`]) rather than a typed
/// getter each: every typed getter is one more import in the package's `.wasm` and JS glue.
fn window() -> Option<EventTarget> {
    WINDOW.with(Option::clone).map(JsCast::unchecked_into)
}

/// `window.document`, when there is a window.
fn document() -> Option<EventTarget> {
    let window = window()?;
    let document = get(&window, "document");
    document.is_object().then(|| document.unchecked_into())
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
    /// A state change, with what the shell knew when it happened.
    Transition {
        transition: Transition,
        /// `ready` again after an earlier `ready` since `start()`.
        reconnected: bool,
        /// Code and reason of the socket's end, when this transition ends a connection.
        close: (u16, String),
    },
    Event(Event),
}

pub(crate) struct Inner {
    state: RefCell<State>,
    dispatching: Cell<bool>,
    /// The client was freed: run no more application code.
    dead: Cell<bool>,
}

struct State {
    conn: Connection,
    weak: Weak<Inner>,
    url: JsValue,
    token: JsValue,
    lifecycle: Lifecycle,
    /// Server-request handlers, one per method: `options.handlers` and `onRequest`. (Lists are `Vec`s
    /// throughout, searched linearly: every `BTreeMap` instantiation costs the package ~5 KB of code, and these
    /// lists are short; `requests` holds the requests in flight.)
    handlers: Vec<Listener>,
    /// Application work waiting for the borrow to end.
    actions: VecDeque<Action>,
    /// The current socket.
    socket: Option<Socket>,
    /// A socket the core asked for whose URL or token is still being resolved.
    opening: Option<SocketId>,
    /// How the last socket ended (for `onDisconnect`).
    last_close: (u16, String),
    /// The one timer, armed for the earliest deadline (the core's, or a `waitForStatus` timeout).
    timer: Option<Timer>,
    tick: Callback,
    /// `online`/`offline`/`visibilitychange`/`resume`, attached by `start()`, removed by `close()`.
    listeners: Option<Listeners>,
    hidden: bool,
    ever_ready: bool,
    requests: Vec<Pending>,
    topics: Vec<Listener>,
    transitions: Vec<Listener>,
    messages: Vec<Listener>,
    waiters: Vec<Pending>,
    next_id: u32,
}

struct Socket {
    id: SocketId,
    ws: WebSocket,
    handler: Callback,
}

/// The socket events the shell follows, all with one handler. (`addEventListener` rather than the `on…`
/// properties: one import instead of four setters.)
const SOCKET_EVENTS: [&str; 4] = ["open", "message", "close", "error"];

impl Drop for Socket {
    /// Detaches the shell's handler and makes sure the socket does not stay open without an owner.
    fn drop(&mut self) {
        let ws = &self.ws;
        let f = self.handler.as_ref().unchecked_ref();
        for kind in SOCKET_EVENTS {
            let _ = ws.remove_event_listener_with_callback(kind, f);
        }
        // CONNECTING (0) or OPEN (1).
        if get(ws, "readyState")
            .as_f64()
            .is_some_and(|state| state <= 1.0)
        {
            close(ws, 1000, "client closed");
        }
    }
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

struct Listeners {
    window: EventTarget,
    document: Option<EventTarget>,
    handler: Callback,
}

const WINDOW_EVENTS: [&str; 2] = ["online", "offline"];
const VISIBILITY: &str = "visibilitychange";
/// `visibilitychange`, and the Page Lifecycle's `resume` (a frozen page runs again: its timers and socket
/// may have been stopped for any length of time).
const DOCUMENT_EVENTS: [&str; 2] = [VISIBILITY, "resume"];

impl Listeners {
    /// `None` outside a window (a worker): no page events to follow there.
    fn attach(weak: Weak<Inner>) -> Option<Listeners> {
        let window = window()?;
        let handler = callback(move |event| {
            if let Some(inner) = weak.upgrade() {
                inner.page_event(&event.unchecked_into::<web_sys::Event>().type_());
            }
        });
        let f = handler.as_ref().unchecked_ref();
        for kind in WINDOW_EVENTS {
            let _ = window.add_event_listener_with_callback(kind, f);
        }
        let document = document();
        if let Some(document) = &document {
            for kind in DOCUMENT_EVENTS {
                let _ = document.add_event_listener_with_callback(kind, f);
            }
        }
        Some(Listeners {
            window,
            document,
            handler,
        })
    }
}

impl Drop for Listeners {
    fn drop(&mut self) {
        let f = self.handler.as_ref().unchecked_ref();
        for kind in WINDOW_EVENTS {
            let _ = self.window.remove_event_listener_with_callback(kind, f);
        }
        if let Some(document) = &self.document {
            for kind in DOCUMENT_EVENTS {
                let _ = document.remove_event_listener_with_callback(kind, f);
            }
        }
    }
}

/// A promise the shell settles later: a request's (found by `id`, with its `AbortSignal` listener) or a
/// `waitForStatus`'s (found by `status`, rejected at `deadline`). One type for both lists, as `Listener` is.
struct Pending {
    id: u64,
    status: String,
    deadline: Option<Instant>,
    resolve: Function,
    reject: Function,
    _abort: Option<Abort>,
}

/// The `abort` listener of a request's `AbortSignal`, removed when the request ends.
struct Abort {
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

/// An application callback under a name: a topic (with its other callbacks), a message name, a server-request
/// method, or none (transitions). One element type for the four lists: each distinct one costs the package its
/// own copy of `Vec`'s code (~250 bytes gzipped each).
struct Listener {
    id: u32,
    name: String,
    f: Function,
    callbacks: TopicCallbacks,
}

fn listener(id: u32, name: String, f: Function) -> Listener {
    Listener {
        id,
        name,
        f,
        callbacks: TopicCallbacks::default(),
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
                        close(&s.ws, code.0, &reason);
                    }
                    self.last_close = (code.0, reason.into_string());
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
        match event {
            Event::Reply { id, result } => {
                self.settle(id, result.map(|data| cbor::decode(data.as_ref())));
            }
            Event::Published { id, result } => {
                let stored = result.map(|at| {
                    let o = Object::new();
                    set(&o, "ep", &at.ep.into());
                    set(&o, "seq", &(at.seq as f64).into());
                    o.into()
                });
                self.settle(id, stored);
            }
            Event::StateChanged(transition) => {
                let name = transition.to.name();
                self.waiters.retain(|w| {
                    let reached = w.status == name;
                    if reached {
                        let _ = apply(&w.resolve, &[]);
                    }
                    !reached
                });
                let ready = matches!(transition.to, Status::Ready);
                let reconnected = ready && self.ever_ready;
                if ready {
                    self.ever_ready = true;
                }
                self.actions.push_back(Action::Transition {
                    transition,
                    reconnected,
                    close: self.last_close.clone(),
                });
            }
            other => self.actions.push_back(Action::Event(other)),
        }
    }

    /// Resolves or rejects the promise of request `id` (a request or an acknowledged publish).
    fn settle(&mut self, id: RequestId, result: Result<JsValue, RequestError>) {
        if let Some(i) = self.requests.iter().position(|p| p.id == id.0) {
            let p = self.requests.swap_remove(i);
            let _ = match result {
                Ok(value) => apply(&p.resolve, &[&value]),
                Err(e) => apply(&p.reject, &[&request_error(&e)]),
            };
        }
    }

    /// Arms the one timer for the earliest deadline, replacing (and clearing) a timer for another one.
    fn arm(&mut self, now: Instant) {
        let waiter = self.waiters.iter().filter_map(|w| w.deadline).min();
        let deadline = [self.conn.poll_timeout(), waiter]
            .into_iter()
            .flatten()
            .min();
        if self.timer.as_ref().map(|t| t.at) == deadline {
            return;
        }
        self.timer = deadline.map(|at| {
            let ms = at
                .as_millis()
                .saturating_sub(now.as_millis())
                .min(i32::MAX as u64);
            Timer {
                handle: set_timeout(self.tick.as_ref().unchecked_ref(), ms as f64),
                at,
            }
        });
    }

    /// The socket `socket` ended (its `close` or `error` event): release it if it is the current one.
    fn finish_socket(&mut self, socket: SocketId, code: u16, reason: &str) {
        if self.socket.take_if(|s| s.id == socket).is_some() {
            self.last_close = (code, reason.to_owned());
        }
    }

    fn next_id(&mut self) -> u32 {
        self.next_id = self.next_id.wrapping_add(1);
        self.next_id
    }

    /// Rejects every `waitForStatus` still waiting.
    fn reject_waiters(&mut self, message: &str) {
        for w in self.waiters.drain(..) {
            let _ = apply(
                &w.reject,
                &[&error(Kind::ConnectionClosed, "UNAVAILABLE", message)],
            );
        }
    }
}

impl Inner {
    pub(crate) fn new(options: Options) -> Result<Rc<Inner>, JsValue> {
        let Options {
            config,
            url,
            token,
            lifecycle,
            handlers,
        } = options;
        let conn = Connection::new(config).map_err(|e| options::config_error(&e))?;
        Ok(Rc::new_cyclic(|weak: &Weak<Inner>| {
            let w = weak.clone();
            let tick = callback(move |_| {
                if let Some(inner) = w.upgrade() {
                    inner.on_timer();
                }
            });
            let mut state = State {
                conn,
                weak: weak.clone(),
                url,
                token,
                lifecycle,
                handlers: Vec::new(),
                actions: VecDeque::new(),
                socket: None,
                opening: None,
                last_close: (1006, String::new()),
                timer: None,
                tick,
                listeners: None,
                hidden: false,
                ever_ready: false,
                requests: Vec::new(),
                topics: Vec::new(),
                transitions: Vec::new(),
                messages: Vec::new(),
                waiters: Vec::new(),
                next_id: 0,
            };
            for pair in options::items(&handlers) {
                let pair: js_sys::Array = pair.unchecked_into();
                let id = state.next_id();
                let method = pair.get(0).as_string().unwrap_or_default();
                state
                    .handlers
                    .push(listener(id, method, pair.get(1).unchecked_into()));
            }
            Inner {
                state: RefCell::new(state),
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
                Action::Transition {
                    transition,
                    reconnected,
                    close,
                } => self.deliver_transition(&transition, reconnected, close),
                Action::Event(event) => self.deliver(event),
            }
        }
        self.dispatching.set(false);
    }

    fn on_timer(self: &Rc<Self>) {
        self.with(|st, now| {
            st.timer = None;
            st.feed(now, Input::Timeout);
            st.waiters.retain(|w| {
                let expired = w.deadline.is_some_and(|d| d <= now);
                if expired {
                    let message = String::from("status \"") + &w.status + "\" not reached in time";
                    let _ = apply(
                        &w.reject,
                        &[&error(Kind::Timeout, "DEADLINE_EXCEEDED", &message)],
                    );
                }
                !expired
            });
        });
    }

    fn page_event(self: &Rc<Self>, kind: &str) {
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

    // ---------------------------------------------------------------------------------------------------------
    // Sockets
    // ---------------------------------------------------------------------------------------------------------

    /// `Output::OpenSocket`: the URL (`url(attempt)`), the token (`getToken()`, awaited), then the socket.
    fn open(self: &Rc<Self>, socket: SocketId, attempt: u32) {
        let (url, token) = {
            let st = self.state.borrow();
            if st.opening != Some(socket) {
                return;
            }
            (st.url.clone(), st.token.clone())
        };
        let url = if url.is_function() {
            match apply(url.unchecked_ref(), &[&attempt.into()]) {
                Ok(url) => url,
                Err(e) => {
                    return self.fail_open(socket, &describe("options.url(attempt) threw", &e))
                }
            }
        } else {
            url
        };
        let Some(url) = url.as_string() else {
            return self.fail_open(socket, "options.url(attempt) returned no string");
        };
        if !token.is_function() {
            return self.connect(socket, &url, token.as_string().as_deref());
        }
        match apply(token.unchecked_ref(), &[]) {
            Err(e) => self.fail_open(socket, &describe("getToken() threw", &e)),
            Ok(promise) => {
                let weak = Rc::downgrade(self);
                let done = callback(move |outcome| {
                    let Some(inner) = weak.upgrade() else { return };
                    let (ok, value) = outcome_parts(&outcome);
                    match (ok, value.as_string()) {
                        (true, Some(token)) => inner.connect(socket, &url, Some(&token)),
                        (true, None) => inner.fail_open(socket, "getToken() resolved to no string"),
                        (false, _) => {
                            inner.fail_open(socket, &describe("getToken() failed", &value))
                        }
                    }
                });
                settle(&promise, &done.into_js_value());
            }
        }
    }

    /// Opens the WebSocket for `socket`, unless the core has given up on it meanwhile.
    fn connect(self: &Rc<Self>, socket: SocketId, url: &str, token: Option<&str>) {
        let url = match token {
            Some(token) => with_query_token(url, token),
            None => url.to_owned(),
        };
        if self.state.borrow().opening != Some(socket) {
            return;
        }
        // No borrow is held from here until the socket is stored: `WebSocket` may be the application's (a wrapper,
        // a test double) and call back into the client. `opening` stays set meanwhile, so a `close()` (or any
        // other end of this attempt) from there is noticed below.
        let ws = match WebSocket::new_with_str(&url, SUBPROTOCOL) {
            Ok(ws) => ws,
            Err(e) => return self.fail_open(socket, &describe("new WebSocket() failed", &e)),
        };
        set(ws.unchecked_ref(), "binaryType", &"arraybuffer".into());
        let weak = Rc::downgrade(self);
        let handler = callback(move |event| {
            if let Some(inner) = weak.upgrade() {
                inner.socket_event(socket, event.unchecked_ref());
            }
        });
        let f = handler.as_ref().unchecked_ref();
        for kind in SOCKET_EVENTS {
            let _ = ws.add_event_listener_with_callback(kind, f);
        }
        let mut created = Some(Socket {
            id: socket,
            ws,
            handler,
        });
        {
            let mut st = self.state.borrow_mut();
            if st.opening == Some(socket) {
                st.opening = None;
                st.socket = created.take();
            }
        }
        // Not wanted any more: dropping it detaches the handler and closes the socket.
        drop(created);
    }

    fn fail_open(self: &Rc<Self>, socket: SocketId, message: &str) {
        self.with(|st, now| {
            if st.opening == Some(socket) {
                st.opening = None;
                st.last_close = (1006, message.to_owned());
            }
            st.feed(now, Input::SocketError { socket, message });
        });
    }

    fn socket_event(self: &Rc<Self>, socket: SocketId, event: &web_sys::Event) {
        match event.type_().as_str() {
            "open" => self.input(Input::SocketOpened { socket }),
            "message" => {
                let data = event.unchecked_ref::<MessageEvent>().data();
                match data.as_string() {
                    Some(text) => self.input(Input::SocketText {
                        socket,
                        text: &text,
                    }),
                    None => {
                        let bytes = Uint8Array::new(&data).to_vec();
                        self.input(Input::SocketBinary {
                            socket,
                            data: &bytes,
                        });
                    }
                }
            }
            "close" => {
                let code = get(event, "code").as_f64().unwrap_or(0.0) as u16;
                let reason = get(event, "reason").as_string().unwrap_or_default();
                self.with(|st, now| {
                    st.finish_socket(socket, code, &reason);
                    st.feed(
                        now,
                        Input::SocketClosed {
                            socket,
                            code: CloseCode(code),
                            reason: &reason,
                        },
                    );
                });
            }
            _ => {
                const MESSAGE: &str = "WebSocket error";
                self.with(|st, now| {
                    st.finish_socket(socket, CloseCode::ABNORMAL.0, MESSAGE);
                    st.feed(
                        now,
                        Input::SocketError {
                            socket,
                            message: MESSAGE,
                        },
                    );
                });
            }
        }
    }

    // ---------------------------------------------------------------------------------------------------------
    // Application callbacks (no borrow held)
    // ---------------------------------------------------------------------------------------------------------

    fn deliver_transition(
        self: &Rc<Self>,
        t: &Transition,
        reconnected: bool,
        close: (u16, String),
    ) {
        let (listeners, lc) = {
            let st = self.state.borrow();
            let l = &st.lifecycle;
            let on_state_change = l.get(Hook::StateChange);
            let listeners = snapshot(
                on_state_change
                    .iter()
                    .chain(st.transitions.iter().map(|l| &l.f)),
            );
            let lc = (
                l.get(Hook::Disconnect),
                l.get(Hook::Reconnecting),
                l.get(Hook::Ready),
                l.get(Hook::Reconnected),
            );
            (listeners, lc)
        };
        let (on_disconnect, on_reconnecting, on_ready, on_reconnected) = lc;
        let object = transition_object(t);
        for f in options::items(&listeners) {
            self.call(f.unchecked_ref(), &[&object]);
        }
        let was_open = matches!(t.from, Status::Connected { .. } | Status::Ready);
        let is_open = matches!(t.to, Status::Connected { .. } | Status::Ready);
        if was_open && !is_open {
            if let Some(f) = on_disconnect {
                let info = Object::new();
                set(&info, "code", &close.0.into());
                set(&info, "reason", &close.1.into());
                let again = !matches!(t.to, Status::Disconnected { .. });
                set(&info, "willReconnect", &again.into());
                self.call(&f, &[&info]);
            }
        }
        match &t.to {
            Status::Reconnecting { .. } => {
                if let Some(f) = on_reconnecting {
                    self.call(&f, &[&object]);
                }
            }
            Status::Ready => {
                if let Some(f) = on_ready {
                    self.call(&f, &[]);
                }
                if let (true, Some(f)) = (reconnected, on_reconnected) {
                    self.call(&f, &[]);
                }
            }
            _ => {}
        }
    }

    /// Calls an application callback, unless the client was freed meanwhile (by an earlier callback of the same
    /// event).
    fn call(&self, f: &Function, args: &[&JsValue]) {
        if !self.dead.get() {
            call(f, args);
        }
    }

    fn deliver(self: &Rc<Self>, event: Event) {
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
            Event::SubscribeFailed { topic, error } => {
                let removed: Vec<Listener> = {
                    let mut st = self.state.borrow_mut();
                    let (gone, kept) = core::mem::take(&mut st.topics)
                        .into_iter()
                        .partition(|l| l.name == topic);
                    st.topics = kept;
                    gone
                };
                let e = request_error(&error);
                for l in removed {
                    match l.callbacks.on_error {
                        Some(f) => self.call(&f, &[&e]),
                        None => console_error("sockeye: subscription refused", &e),
                    }
                }
            }
            Event::Request {
                socket,
                id,
                method,
                data,
            } => self.serve(socket, id, &method, data.as_ref()),
            // Events flow once acknowledged; nothing for the page to do.
            Event::Subscribed { .. } => {}
            Event::Notice(e) => {
                let f = self.state.borrow().lifecycle.get(Hook::Error);
                match f {
                    Some(f) => self.call(&f, &[&request_error(&e)]),
                    None => console_error("sockeye: server error", &request_error(&e)),
                }
            }
            Event::Draining => {
                let f = self.state.borrow().lifecycle.get(Hook::Draining);
                if let Some(f) = f {
                    self.call(&f, &[]);
                }
            }
            // Settled in `State::event`; transitions come as `Action::Transition`.
            Event::Reply { .. } | Event::Published { .. } | Event::StateChanged(_) => {}
        }
    }

    /// The callbacks `pick` chooses from the listeners of `topic`, cloned so no borrow is held while they run.
    fn topic_callbacks(
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
    fn report_gap(&self, topic: &str, info: &JsValue) {
        let handlers = self.topic_callbacks(topic, |l| l.callbacks.on_gap.as_ref());
        if handlers.length() == 0 {
            console_error("sockeye: events lost", info);
        }
        for f in options::items(&handlers) {
            self.call(f.unchecked_ref(), &[info]);
        }
    }

    /// A server `req`: the handler's value (or promise) becomes `res`, its exception (or rejection) `err`.
    fn serve(
        self: &Rc<Self>,
        socket: SocketId,
        id: u64,
        method: &str,
        data: Option<&sockeye_core::codec::Payload>,
    ) {
        let handler = self
            .state
            .borrow()
            .handlers
            .iter()
            .find(|l| l.name == method)
            .map(|l| l.f.clone());
        let Some(handler) = handler else {
            let message = String::from("no handler for method \"") + method + "\"";
            self.with(|st, now| {
                st.conn.respond(
                    now,
                    socket,
                    id,
                    Err(RequestError::local(ErrorCode::Unimplemented, message)),
                )
            });
            return;
        };
        let meta = Object::new();
        set(&meta, "method", &method.into());
        set(&meta, "id", &(id as f64).into());
        let outcome = apply(&handler, &[&cbor::decode(data), &meta]);
        let weak = Rc::downgrade(self);
        match outcome {
            Ok(value) => {
                let done = callback(move |outcome| {
                    if let Some(inner) = weak.upgrade() {
                        let (ok, value) = outcome_parts(&outcome);
                        inner.respond(socket, id, ok, &value);
                    }
                });
                settle(&value, &done.into_js_value());
            }
            Err(e) => self.respond(socket, id, false, &e),
        }
    }

    fn respond(self: &Rc<Self>, socket: SocketId, id: u64, ok: bool, value: &JsValue) {
        let result = if ok {
            cbor::encode(value).map_err(|e| {
                RequestError::local(
                    ErrorCode::Internal,
                    describe("handler result not encodable", &e),
                )
            })
        } else {
            let code = get(value, "code")
                .as_string()
                .map_or(ErrorCode::Internal, |c| ErrorCode::parse(&c));
            let details = cbor::encode(&get(value, "details")).ok().flatten();
            Err(RequestError {
                code,
                message: describe("", value),
                data: details,
                from_server: false,
            })
        };
        self.with(|st, now| st.conn.respond(now, socket, id, result));
    }

    // ---------------------------------------------------------------------------------------------------------
    // Commands (called from the exported `Client`)
    // ---------------------------------------------------------------------------------------------------------

    pub(crate) fn start(self: &Rc<Self>) {
        self.with(|st, now| {
            if let Status::Disconnected { .. } = st.conn.status() {
                st.ever_ready = false;
            }
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
            st.reject_waiters("the client was closed");
        });
    }

    /// The exported `Client` was freed: like `close()`, but no application callback runs any more, and every
    /// callback the shell held is released.
    pub(crate) fn shutdown(&self) {
        self.dead.set(true);
        let Ok(mut st) = self.state.try_borrow_mut() else {
            return;
        };
        let now = now();
        st.feed(now, Input::Stop);
        st.actions.clear();
        st.opening = None;
        st.socket = None;
        st.listeners = None;
        st.reject_waiters("the client was freed");
        st.requests.clear();
        st.topics.clear();
        st.transitions.clear();
        st.messages.clear();
        st.handlers.clear();
        st.lifecycle = Lifecycle::default();
        st.timer = None;
    }

    pub(crate) fn status(&self) -> &'static str {
        self.state.borrow().conn.status().name()
    }

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

    pub(crate) fn subscribe(
        self: &Rc<Self>,
        topic: String,
        handler: Function,
        callbacks: TopicCallbacks,
    ) -> Result<JsValue, JsValue> {
        let id = self.with(|st, now| {
            st.conn
                .subscribe(now, &topic)
                .map_err(|e| errors::send_error(&e))?;
            let id = st.next_id();
            st.topics.push(Listener {
                id,
                name: topic.clone(),
                f: handler,
                callbacks,
            });
            Ok::<_, JsValue>(id)
        })?;
        Ok(self.unsubscriber(move |st, now| {
            let before = st.topics.len();
            st.topics.retain(|l| l.id != id);
            let last = !st.topics.iter().any(|l| l.name == topic);
            if st.topics.len() < before && last {
                st.conn.unsubscribe(now, &topic);
            }
        }))
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

    pub(crate) fn on_request(self: &Rc<Self>, method: String, handler: Function) -> JsValue {
        let id = self.with(|st, _| {
            let id = st.next_id();
            st.handlers.retain(|l| l.name != method);
            st.handlers.push(listener(id, method.clone(), handler));
            id
        });
        self.unsubscriber(move |st, _| {
            st.handlers.retain(|l| l.id != id);
        })
    }

    /// A JS function that runs `undo` on the state; idempotent, a no-op once the client is gone. The function is
    /// handed to JS (`into_js_value`): the GC frees it with its last reference.
    fn unsubscriber(self: &Rc<Self>, undo: impl Fn(&mut State, Instant) + 'static) -> JsValue {
        let weak = Rc::downgrade(self);
        callback(move |_| {
            if let Some(inner) = weak.upgrade() {
                inner.with(|st, now| undo(st, now));
            }
        })
        .into_js_value()
    }
}

/// The one closure type the shell hands to the browser (each distinct closure type costs package size).
type Callback = Closure<dyn FnMut(JsValue)>;

fn callback(f: impl FnMut(JsValue) + 'static) -> Callback {
    Closure::new(f)
}

/// The callbacks to call for one event, copied out so that none runs while the state is borrowed. (Into a JS array:
/// a `Vec<Function>` would be one more `Vec` element type in the package.)
fn snapshot<'a>(callbacks: impl Iterator<Item = &'a Function>) -> js_sys::Array {
    let list = js_sys::Array::new();
    for f in callbacks {
        list.push(f);
    }
    list
}

/// `[ok, value]` from `settle`.
fn outcome_parts(outcome: &JsValue) -> (bool, JsValue) {
    let parts: &js_sys::Array = outcome.unchecked_ref();
    (parts.get(0).as_bool() == Some(true), parts.get(1))
}

/// `{ from, to, at, ... }`: status names, `at` in ms on the `performance.now()` clock, and the new state's data.
fn transition_object(t: &Transition) -> JsValue {
    let o = Object::new();
    set(&o, "from", &t.from.name().into());
    set(&o, "to", &t.to.name().into());
    set(&o, "at", &(t.at.as_millis() as f64).into());
    match &t.to {
        Status::Connecting { attempt } | Status::Connected { attempt } => {
            set(&o, "attempt", &(*attempt).into());
        }
        Status::Reconnecting { attempt, delay, .. } => {
            set(&o, "attempt", &(*attempt).into());
            set(&o, "delayMs", &(delay.as_millis() as f64).into());
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

/// `ws.close(code, reason)`; when the browser refuses those (it sends only 1000 and 3000–4999, and at most 123
/// bytes of reason, which the core's `CloseReason` keeps to), `ws.close()`. Called through `Reflect.get` and `apply` rather than two typed imports: a
/// socket is closed once.
fn close(ws: &WebSocket, code: u16, reason: &str) {
    let close: Function = get(ws, "close").unchecked_into();
    if apply_to(ws, &close, &[&code.into(), &reason.into()]).is_err() {
        let _ = apply_to(ws, &close, &[]);
    }
}

/// `document.hidden` (false outside a window).
fn page_hidden() -> bool {
    document().is_some_and(|d| get(&d, "hidden").as_bool() == Some(true))
}

fn set(o: &Object, key: &str, value: &JsValue) {
    let _ = Reflect::set(o, &key.into(), value);
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
