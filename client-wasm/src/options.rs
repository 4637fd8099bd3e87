//! `new Client(options)`: the JS options object read into the core's [`Config`] plus what the shell keeps
//! (where to connect, the token, the application's callbacks). `checkOptions` in `js/errors.js` checks each
//! option (anything invalid throws a `TypeError` naming it, e.g. `options.reconnect.maxAttempts must be a
//! positive integer, null or Infinity`); the core checks their combination (`Config::validate`).

use alloc::string::String;

use js_sys::Array;
use sockeye_core::{Config, ConfigError, Duration};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};
use web_sys::AbortSignal;

use crate::errors::type_error;

pub(crate) struct Options {
    pub(crate) config: Config,
    /// Where to connect: a `ws://` or `wss://` URL, or `(attempt) => url`, called before every attempt.
    pub(crate) url: JsValue,
    /// Appended as `?token=`: a string, `getToken()` (returning a string or a promise of one, called before every
    /// attempt), or `undefined`. (Kept as the JS values `checkOptions` checked: Rust enums of them cost more code.)
    pub(crate) token: JsValue,
    /// The application's listener tables, kept in JS (`emit` in `js/errors.js`): `options.lifecycle`,
    /// `options.handlers`, and the handlers added later.
    pub(crate) hub: JsValue,
}

#[wasm_bindgen(module = "/js/errors.js")]
extern "C" {
    /// Checks every option (a `TypeError` names the first bad one) and returns them as a flat array; see there.
    #[wasm_bindgen(catch, js_name = checkOptions)]
    fn check_options(options: &JsValue) -> Result<Array, JsValue>;

    /// `[timeoutMs (NaN: none), signal (undefined: none)]`; see [`call_options`].
    #[wasm_bindgen(catch, js_name = callOptions)]
    fn check_call_options(
        options: &JsValue,
        prefix: &str,
        with_signal: bool,
    ) -> Result<Array, JsValue>;

    /// `subscribe`'s third argument as `[onError, onGap, onResumed, onState]` (absent ones undefined); see there.
    #[wasm_bindgen(catch, js_name = checkSubscribeOptions)]
    fn check_subscribe_options(options: &JsValue) -> Result<Array, JsValue>;
}

/// Reads `new Client(options)`.
///
/// # Errors
/// A `TypeError` naming the first invalid option.
pub(crate) fn parse(options: &JsValue, seed: u64) -> Result<Options, JsValue> {
    let parts = check_options(options)?;
    let url = parts.get(0);
    let token = Some(parts.get(1))
        .filter(|t| !t.is_undefined())
        .unwrap_or_else(|| parts.get(2));
    let hub = parts.get(3);

    // The numbers, in checkOptions' order; NaN (absent) keeps the core's default.
    let mut numbers = (4..).map(|i| parts.get(i).as_f64().filter(|n| !n.is_nan()));
    let mut config = Config {
        seed,
        ..Config::default()
    };
    let c = &mut config;
    for slot in [&mut c.reconnect.enabled, &mut c.reconnect.full_jitter] {
        if let Some(n) = numbers.next().flatten() {
            *slot = n != 0.0;
        }
    }
    for slot in [&mut c.reconnect.base_delay, &mut c.reconnect.max_delay] {
        if let Some(n) = numbers.next().flatten() {
            *slot = Duration::from_millis(n as u64);
        }
    }
    if let Some(n) = numbers.next().flatten() {
        c.reconnect.max_attempts = n.is_finite().then_some(n as u32);
    }
    for slot in [
        &mut c.keepalive_interval,
        &mut c.keepalive_timeout,
        &mut c.connect_timeout,
        &mut c.stable_period,
        &mut c.request_timeout,
    ] {
        if let Some(n) = numbers.next().flatten() {
            *slot = Duration::from_millis(n as u64);
        }
    }
    for slot in [
        &mut c.fragment_threshold,
        &mut c.queue.max_messages,
        &mut c.queue.max_bytes,
    ] {
        if let Some(n) = numbers.next().flatten() {
            *slot = n as usize;
        }
    }

    config.validate().map_err(|e| config_error(&e))?;
    Ok(Options {
        config,
        url,
        token,
        hub,
    })
}

/// The core's complaint about a combination of options, with the option spelled as in JS.
pub(crate) fn config_error(e: &ConfigError) -> JsValue {
    let option = match e.option {
        "reconnect.base_delay" => "reconnect.baseDelayMs",
        "reconnect.max_attempts" => "reconnect.maxAttempts",
        "connect_timeout" => "connectTimeoutMs",
        "keepalive_timeout" => "keepaliveTimeoutMs",
        "request_timeout" => "requestTimeoutMs",
        other => other,
    };
    let problem = match e.problem {
        "must not exceed reconnect.max_delay" => "must not exceed reconnect.maxDelayMs",
        other => other,
    };
    type_error(&(String::from("options.") + option + " " + problem))
}

/// `subscribe(topic, handler, options)`'s `options`: `{ onError, onGap, onResumed, onState }`, or a function, which is
/// `onError`; `undefined` and `null`: none. Checked by `checkSubscribeOptions` in `js/errors.js`, which returns
/// them as `[onError, onGap, onResumed, onState]` (absent ones undefined), the form `emit` reads.
///
/// # Errors
/// A `TypeError` for anything else, or a key or callback that is not one of those functions.
pub(crate) fn topic_callbacks(v: &JsValue) -> Result<Array, JsValue> {
    check_subscribe_options(v)
}

/// `{ timeoutMs, signal }` of `request` and an acknowledged `publish` (`with_signal`), and `{ timeoutMs }` of
/// `waitForStatus`, checked by `callOptions` in `js/errors.js`; `prefix` names the options object in errors, e.g.
/// `"request options."`.
///
/// # Errors
/// A `TypeError` naming the bad option.
pub(crate) fn call_options(
    options: &JsValue,
    prefix: &str,
    with_signal: bool,
) -> Result<(Option<Duration>, Option<AbortSignal>), JsValue> {
    let parts = check_call_options(options, prefix, with_signal)?;
    let timeout = parts.get(0).as_f64().filter(|n| !n.is_nan());
    let signal = Some(parts.get(1)).filter(|s| !s.is_undefined());
    Ok((
        timeout.map(|n| Duration::from_millis(n as u64)),
        signal.map(JsCast::unchecked_into),
    ))
}
