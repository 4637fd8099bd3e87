//! Requests from the server: the application's handler answers (found and called by `emit` in `js/errors.js`), or
//! the core's one `UNIMPLEMENTED` answer.

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
        let outcome = self.emit(
            Emit::Request,
            method,
            &cbor::decode(data),
            &JsValue::UNDEFINED,
            id as f64,
            0.0,
        );
        if outcome.is_undefined() {
            self.with(|st, now| st.conn.respond_unimplemented(now, socket, id, method));
            return;
        }
        let weak = Rc::downgrade(self);
        let done = callback(move |outcome| {
            if let Some(inner) = weak.upgrade() {
                let (ok, value) = outcome_parts(&outcome);
                inner.respond(socket, id, ok, &value);
            }
        });
        settle(&outcome, &done.into_js_value());
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
}
