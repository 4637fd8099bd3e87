//! Requests from the server: the application's handler answers, or the core's one `UNIMPLEMENTED` answer.

use super::*;

impl Inner {
    /// A server `req`: the handler's value (or promise) becomes `res`, its exception (or rejection) `err`.
    pub(super) fn serve(
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
            self.with(|st, now| st.conn.respond_unimplemented(now, socket, id, method));
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

    pub(super) fn respond(self: &Rc<Self>, socket: SocketId, id: u64, ok: bool, value: &JsValue) {
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
}
