//! The package's typed errors: `Error` subclasses with a `code`, defined in `js/errors.js` (the package's one JS
//! file) and built from Rust.

use js_sys::Function;
use sockeye_core::{ErrorCode, RequestError, SendError};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

use crate::cbor;

#[wasm_bindgen(module = "/js/errors.js")]
extern "C" {
    #[wasm_bindgen(js_name = makeError)]
    fn make_error(kind: u8, code: &str, message: &str, details: &JsValue) -> JsValue;

    /// `done([true, value])` or `done([false, error])`, once, when `value` settles.
    pub(crate) fn settle(value: &JsValue, done: &JsValue);

    /// `[promise, resolve, reject]`.
    fn deferred() -> js_sys::Array;
}

/// A new promise and its `resolve` and `reject` functions.
pub(crate) fn promise() -> (js_sys::Promise, Function, Function) {
    let parts = deferred();
    (
        parts.get(0).unchecked_into(),
        parts.get(1).unchecked_into(),
        parts.get(2).unchecked_into(),
    )
}

/// A promise already rejected with `e`. (Built with `deferred()` rather than `Promise.reject`: one import fewer.)
pub(crate) fn rejected(e: &JsValue) -> js_sys::Promise {
    let (promise, _, reject) = promise();
    let _ = apply(&reject, &[e]);
    promise
}

/// A promise already resolved with `undefined`.
pub(crate) fn resolved() -> js_sys::Promise {
    let (promise, resolve, _) = promise();
    let _ = apply(&resolve, &[]);
    promise
}

/// Calls `f` with `args` and `this` undefined. (`Function.prototype.apply` for every arity: one import where
/// `call0`, `call1` and `call2` are three.)
pub(crate) fn apply(f: &Function, args: &[&JsValue]) -> Result<JsValue, JsValue> {
    apply_to(&JsValue::UNDEFINED, f, args)
}

/// Calls `f` with `args` and `this`.
pub(crate) fn apply_to(
    this: &JsValue,
    f: &Function,
    args: &[&JsValue],
) -> Result<JsValue, JsValue> {
    let list = js_sys::Array::new();
    for arg in args {
        list.push(arg);
    }
    f.apply(this, &list)
}

/// Which class `makeError` builds (the numbers `js/errors.js` switches on).
#[derive(Clone, Copy)]
#[repr(u8)]
pub(crate) enum Kind {
    Sockeye = 0,
    Timeout = 1,
    Server = 2,
    ConnectionClosed = 3,
    QueueFull = 4,
    Abort = 5,
}

pub(crate) fn error(kind: Kind, code: &str, message: &str) -> JsValue {
    make_error(kind as u8, code, message, &JsValue::UNDEFINED)
}

/// The error a failed request rejects with: a server `err` is a `ServerError` whatever its code; local failures
/// get the class of the code PROTOCOL §4 assigns them (`DEADLINE_EXCEEDED`, `UNAVAILABLE`, `CANCELLED`).
pub(crate) fn request_error(e: &RequestError) -> JsValue {
    let kind = match (e.from_server, &e.code) {
        (false, ErrorCode::DeadlineExceeded) => Kind::Timeout,
        (false, ErrorCode::Unavailable) => Kind::ConnectionClosed,
        (false, ErrorCode::Cancelled) => Kind::Abort,
        _ => Kind::Server,
    };
    let details = cbor::decode(e.data.as_ref());
    make_error(kind as u8, e.code.as_str(), &e.message, &details)
}

/// The error a refused `send`, `publish` or `request` throws (nothing was queued or sent).
pub(crate) fn send_error(e: &SendError) -> JsValue {
    let kind = match e {
        SendError::QueueFull { .. } => Kind::QueueFull,
        _ => Kind::Sockeye,
    };
    error(kind, e.code().as_str(), &e.message())
}

/// A `TypeError` for a bad option or argument.
pub(crate) fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}
