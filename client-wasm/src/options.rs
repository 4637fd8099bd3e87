//! `new Client(options)`: the JS options object read into the core's [`Config`] plus what the shell keeps
//! (where to connect, the token, the application's callbacks). `js/options.js` checks each option (anything
//! invalid throws a `TypeError` naming it, e.g. `options.reconnect.maxAttempts must be a positive integer, null
//! or Infinity`); the core checks their combination (`Config::validate`).

use js_sys::{Array, Function, Reflect};
use sockeye_core::{Config, ConfigError, Duration};
use wasm_bindgen::prelude::wasm_bindgen;
use wasm_bindgen::{JsCast, JsValue};

use crate::errors::type_error;

/// Where to connect.
pub(crate) enum Url {
    Fixed(String),
    /// `(attempt) => url`, called before every attempt.
    Dynamic(Function),
}

/// The token appended as `?token=`.
pub(crate) enum Token {
    None,
    Fixed(String),
    /// `getToken()`, returning a string or a promise of one, called before every attempt.
    Provider(Function),
}

/// `options.lifecycle`.
#[derive(Default)]
pub(crate) struct Lifecycle {
    pub(crate) on_state_change: Option<Function>,
    pub(crate) on_disconnect: Option<Function>,
    pub(crate) on_reconnecting: Option<Function>,
    pub(crate) on_reconnected: Option<Function>,
    pub(crate) on_ready: Option<Function>,
    pub(crate) on_error: Option<Function>,
    pub(crate) on_draining: Option<Function>,
}

pub(crate) struct Options {
    pub(crate) config: Config,
    pub(crate) url: Url,
    pub(crate) token: Token,
    pub(crate) lifecycle: Lifecycle,
    /// `options.handlers`: server requests by method.
    pub(crate) handlers: Vec<(String, Function)>,
}

#[wasm_bindgen(module = "/js/options.js")]
extern "C" {
    /// Checks every option (a `TypeError` names the first bad one) and returns them as a flat array; see there.
    #[wasm_bindgen(catch, js_name = checkOptions)]
    fn check_options(options: &JsValue) -> Result<Array, JsValue>;
}

/// Reads `new Client(options)`.
///
/// # Errors
/// A `TypeError` naming the first invalid option.
pub(crate) fn parse(options: &JsValue, seed: u64) -> Result<Options, JsValue> {
    let parts = check_options(options)?;
    let url = parts.get(0);
    let url = match url.as_string() {
        Some(url) => Url::Fixed(url),
        None => Url::Dynamic(url.unchecked_into()),
    };
    let get_token = parts.get(2);
    let token = match parts.get(1).as_string() {
        Some(token) => Token::Fixed(token),
        None if get_token.is_function() => Token::Provider(get_token.unchecked_into()),
        None => Token::None,
    };
    let callbacks: Array = parts.get(3).unchecked_into();
    let callback = |i| {
        Some(callbacks.get(i))
            .filter(JsValue::is_function)
            .map(JsCast::unchecked_into)
    };
    let lifecycle = Lifecycle {
        on_state_change: callback(0),
        on_disconnect: callback(1),
        on_reconnecting: callback(2),
        on_reconnected: callback(3),
        on_ready: callback(4),
        on_error: callback(5),
        on_draining: callback(6),
    };
    let handlers = items(parts.get(4).unchecked_ref())
        .map(|pair| {
            let pair: &Array = pair.unchecked_ref();
            (
                pair.get(0).as_string().unwrap_or_default(),
                pair.get(1).unchecked_into(),
            )
        })
        .collect();

    // The numbers, in checkOptions' order; NaN (absent) keeps the core's default.
    let mut numbers = (5..).map(|i| parts.get(i).as_f64().filter(|n| !n.is_nan()));
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
        lifecycle,
        handlers,
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
    type_error(&["options.", option, " ", problem].concat())
}

/// The items of a JS array, read by index. (`Array::iter` needs an import of its own.)
fn items(array: &Array) -> impl Iterator<Item = JsValue> + '_ {
    (0..array.length()).map(|i| array.get(i))
}

pub(crate) fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// `{ timeoutMs }` of `request` and `waitForStatus`: `Ok(None)` when the options or the key are absent.
/// `prefix` names the options object in errors, e.g. `"request options."`.
pub(crate) fn timeout_ms(
    options: Option<&JsValue>,
    prefix: &str,
) -> Result<Option<Duration>, JsValue> {
    let Some(options) = options.filter(|o| !o.is_undefined() && !o.is_null()) else {
        return Ok(None);
    };
    let v = get(options, "timeoutMs");
    if v.is_undefined() {
        return Ok(None);
    }
    v.as_f64()
        .filter(|n| *n >= 0.0 && n.fract() == 0.0 && *n <= (1u64 << 53) as f64)
        .map(|n| Some(Duration::from_millis(n as u64)))
        .ok_or_else(|| {
            type_error(
                &[
                    prefix,
                    "timeoutMs must be a non-negative integer (milliseconds)",
                ]
                .concat(),
            )
        })
}
