//! The one `WebSocket`: opening it (URL and token first), its events fed to the core, and closing it.

use super::*;

pub(super) struct Socket {
    pub(super) id: SocketId,
    pub(super) ws: WebSocket,
    pub(super) handler: Callback,
}

#[wasm_bindgen(module = "/js/errors.js")]
extern "C" {
    /// `new WebSocket(url, protocol)` receiving binary messages as `ArrayBuffer`s, `handler` on its events.
    #[wasm_bindgen(catch, js_name = openSocket)]
    fn open_socket(url: &str, protocol: &str, handler: &JsValue) -> Result<WebSocket, JsValue>;

    /// Detaches `handler` and closes the socket (with `code` and `reason` when the browser takes those) unless it
    /// is closing or closed.
    #[wasm_bindgen(js_name = closeSocket)]
    fn close_socket(ws: &WebSocket, handler: &JsValue, code: u16, reason: &str);
}

impl Socket {
    /// Closes the socket with `code` and `reason` (see [`close_socket`]); its events are no longer followed.
    pub(super) fn close(&self, code: u16, reason: &str) {
        close_socket(&self.ws, self.handler.as_ref(), code, reason);
    }
}

impl Drop for Socket {
    /// Makes sure the socket does not stay open without an owner.
    fn drop(&mut self) {
        self.close(1000, "client closed");
    }
}

impl State {
    /// The socket `socket` ended (its `close` or `error` event): release it if it is the current one.
    pub(super) fn finish_socket(&mut self, socket: SocketId) {
        self.socket.take_if(|s| s.id == socket);
    }
}

impl Inner {
    /// `Output::OpenSocket`: the URL (`url(attempt)`), the token (`getToken()`, awaited), then the socket.
    pub(super) fn open(self: &Rc<Self>, socket: SocketId, attempt: u32) {
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
    pub(super) fn connect(self: &Rc<Self>, socket: SocketId, url: &str, token: Option<&str>) {
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
        let weak = Rc::downgrade(self);
        let handler = callback(move |event| {
            if let Some(inner) = weak.upgrade() {
                inner.socket_event(socket, event.unchecked_ref());
            }
        });
        let ws = match open_socket(&url, SUBPROTOCOL, handler.as_ref()) {
            Ok(ws) => ws,
            Err(e) => return self.fail_open(socket, &describe("new WebSocket() failed", &e)),
        };
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

    pub(super) fn fail_open(self: &Rc<Self>, socket: SocketId, message: &str) {
        self.with(|st, now| {
            if st.opening == Some(socket) {
                st.opening = None;
            }
            st.feed(now, Input::SocketError { socket, message });
        });
    }

    pub(super) fn socket_event(self: &Rc<Self>, socket: SocketId, event: &web_sys::Event) {
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
                    st.finish_socket(socket);
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
                    st.finish_socket(socket);
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
}
