//! `new Client(options)`: the JS options object read into the core's [`Config`] plus what the shell keeps
//! (where to connect, the token, the application's callbacks). Anything invalid throws a `TypeError` naming the
//! option, e.g. `options.reconnect.maxAttempts must be a positive integer, null or Infinity`.

use js_sys::{Function, Object, Reflect};
use sockeye_core::{Config, ConfigError, Duration};
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

const TOP: &[&str] = &[
    "url",
    "token",
    "getToken",
    "reconnect",
    "keepaliveIntervalMs",
    "keepaliveTimeoutMs",
    "connectTimeoutMs",
    "stablePeriodMs",
    "queue",
    "fragmentThreshold",
    "requestTimeoutMs",
    "lifecycle",
    "handlers",
];
const RECONNECT: &[&str] = &[
    "enabled",
    "maxAttempts",
    "baseDelayMs",
    "maxDelayMs",
    "fullJitter",
];
const QUEUE: &[&str] = &["maxMessages", "maxBytes"];
const LIFECYCLE: [&str; 7] = [
    "onStateChange",
    "onDisconnect",
    "onReconnecting",
    "onReconnected",
    "onReady",
    "onError",
    "onDraining",
];

/// Reads `new Client(options)`.
///
/// # Errors
/// A `TypeError` naming the first invalid option.
pub(crate) fn parse(options: &JsValue, seed: u64) -> Result<Options, JsValue> {
    let top = object(options, "options", TOP)?
        .ok_or_else(|| type_error("options must be an object with at least `url`"))?;
    let mut config = Config {
        seed,
        ..Config::default()
    };

    let url = match get(&top, "url") {
        v if v.is_function() => Url::Dynamic(v.unchecked_into()),
        v => match v.as_string() {
            Some(s) if is_ws_url(&s) => Url::Fixed(s),
            _ => {
                return Err(type_error(
                    "options.url must be a ws:// or wss:// URL or a function (attempt) => url",
                ))
            }
        },
    };
    let token = match (get(&top, "token"), get(&top, "getToken")) {
        (t, g) if !t.is_undefined() && !g.is_undefined() => {
            return Err(type_error(
                "options.token and options.getToken cannot both be set",
            ))
        }
        (t, _) if !t.is_undefined() => Token::Fixed(
            t.as_string()
                .ok_or_else(|| type_error("options.token must be a string"))?,
        ),
        (_, g) if !g.is_undefined() => Token::Provider(function(g, "options.getToken")?),
        _ => Token::None,
    };

    let reconnect = get(&top, "reconnect");
    if let Some(enabled) = reconnect.as_bool() {
        config.reconnect.enabled = enabled;
    } else if let Some(r) = object(&reconnect, "options.reconnect", RECONNECT)? {
        const PREFIX: &str = "options.reconnect.";
        let c = &mut config.reconnect;
        for (key, slot) in [
            ("enabled", &mut c.enabled),
            ("fullJitter", &mut c.full_jitter),
        ] {
            if let Some(b) = boolean(&r, PREFIX, key)? {
                *slot = b;
            }
        }
        for (key, slot) in [
            ("baseDelayMs", &mut c.base_delay),
            ("maxDelayMs", &mut c.max_delay),
        ] {
            set_ms(&r, PREFIX, key, slot)?;
        }
        let max = get(&r, "maxAttempts");
        if max.is_null() || max.as_f64() == Some(f64::INFINITY) {
            c.max_attempts = None;
        } else if !max.is_undefined() {
            c.max_attempts = Some(
                count(&max)
                    .filter(|&n| n >= 1)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(|| {
                        type_error("options.reconnect.maxAttempts must be a positive integer, null or Infinity")
                    })?,
            );
        }
    }

    // One loop per kind of option: the same checks, in the same order, without a copy of the code for each.
    for (key, slot) in [
        ("keepaliveIntervalMs", &mut config.keepalive_interval),
        ("keepaliveTimeoutMs", &mut config.keepalive_timeout),
        ("connectTimeoutMs", &mut config.connect_timeout),
        ("stablePeriodMs", &mut config.stable_period),
        ("requestTimeoutMs", &mut config.request_timeout),
    ] {
        set_ms(&top, "options.", key, slot)?;
    }
    set_count(
        &top,
        "options.",
        "fragmentThreshold",
        &mut config.fragment_threshold,
    )?;
    if let Some(q) = object(&get(&top, "queue"), "options.queue", QUEUE)? {
        for (key, slot) in [
            ("maxMessages", &mut config.queue.max_messages),
            ("maxBytes", &mut config.queue.max_bytes),
        ] {
            set_count(&q, "options.queue.", key, slot)?;
        }
    }

    let mut lifecycle = Lifecycle::default();
    if let Some(l) = object(&get(&top, "lifecycle"), "options.lifecycle", &LIFECYCLE)? {
        let mut callbacks = [const { None }; LIFECYCLE.len()];
        for (key, slot) in LIFECYCLE.iter().zip(&mut callbacks) {
            *slot = optional_function(&l, key, "options.lifecycle.")?;
        }
        // In LIFECYCLE's order.
        let [on_state_change, on_disconnect, on_reconnecting, on_reconnected, on_ready, on_error, on_draining] =
            callbacks;
        lifecycle = Lifecycle {
            on_state_change,
            on_disconnect,
            on_reconnecting,
            on_reconnected,
            on_ready,
            on_error,
            on_draining,
        };
    }

    let mut handlers = Vec::new();
    if let Some(h) = object(&get(&top, "handlers"), "options.handlers", &[])? {
        for key in crate::cbor::items(&Object::keys(h.unchecked_ref::<Object>())) {
            let method = key.as_string().unwrap_or_default();
            let name = format!("options.handlers.{method}");
            let handler = function(get(&h, &method), &name)?;
            handlers.push((method, handler));
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

/// `ws://` or `wss://` (any case) followed by something.
fn is_ws_url(url: &str) -> bool {
    let lower = url.get(..6).unwrap_or(url).to_ascii_lowercase();
    (lower.starts_with("ws://") && url.len() > 5) || (lower.starts_with("wss://") && url.len() > 6)
}

/// The core's complaint about a combination of options, with the option spelled as in JS.
fn config_error(e: &ConfigError) -> JsValue {
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
    type_error(&format!("options.{option} {problem}"))
}

/// `subscribe`'s callbacks besides the handler.
#[derive(Default)]
pub(crate) struct TopicCallbacks {
    /// The server refused the subscription (which ends it).
    pub(crate) on_error: Option<Function>,
    /// Events were lost (`{ topic, from, to }`), or the topic's sequence started anew (`{ topic, reset, ep }`).
    pub(crate) on_gap: Option<Function>,
    /// A re-subscription lost nothing (`{ topic, replayed }`).
    pub(crate) on_resumed: Option<Function>,
}

const SUBSCRIBE: &[&str] = &["onError", "onGap", "onResumed"];

/// `subscribe(topic, handler, options)`'s `options`: `{ onError, onGap, onResumed }`, or a function, which is
/// `onError` (the argument's meaning before the other callbacks existed). `undefined` and `null`: none.
///
/// # Errors
/// A `TypeError` for anything else, or a key or callback that is not one of those functions.
pub(crate) fn topic_callbacks(v: &JsValue) -> Result<TopicCallbacks, JsValue> {
    if v.is_undefined() || v.is_null() {
        return Ok(TopicCallbacks::default());
    }
    if v.is_function() {
        return Ok(TopicCallbacks {
            on_error: Some(v.clone().unchecked_into()),
            ..TopicCallbacks::default()
        });
    }
    if !v.is_object() || js_sys::Array::is_array(v) {
        return Err(type_error(
            "subscribe: the third argument must be an onError function or { onError, onGap, onResumed }",
        ));
    }
    let o = object(v, "subscribe options", SUBSCRIBE)?.unwrap_or_default();
    const PREFIX: &str = "subscribe options.";
    Ok(TopicCallbacks {
        on_error: optional_function(&o, "onError", PREFIX)?,
        on_gap: optional_function(&o, "onGap", PREFIX)?,
        on_resumed: optional_function(&o, "onResumed", PREFIX)?,
    })
}

pub(crate) fn get(obj: &JsValue, key: &str) -> JsValue {
    Reflect::get(obj, &JsValue::from_str(key)).unwrap_or(JsValue::UNDEFINED)
}

/// `Some(object)` for an object whose keys are all in `known` (any keys when `known` is empty), `None` for
/// `undefined`.
fn object(v: &JsValue, name: &str, known: &[&str]) -> Result<Option<JsValue>, JsValue> {
    if v.is_undefined() {
        return Ok(None);
    }
    if !v.is_object() || v.is_null() || v.is_function() || js_sys::Array::is_array(v) {
        return Err(type_error(&format!("{name} must be an object")));
    }
    if !known.is_empty() {
        for key in crate::cbor::items(&Object::keys(v.unchecked_ref::<Object>())) {
            let key = key.as_string().unwrap_or_default();
            if !known.contains(&key.as_str()) {
                return Err(type_error(&format!("{name}.{key} is not a known option")));
            }
        }
    }
    Ok(Some(v.clone()))
}

fn function(v: JsValue, name: &str) -> Result<Function, JsValue> {
    v.dyn_into::<Function>()
        .map_err(|_| type_error(&format!("{name} must be a function")))
}

fn optional_function(obj: &JsValue, key: &str, prefix: &str) -> Result<Option<Function>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() || v.is_null() {
        return Ok(None);
    }
    function(v, &format!("{prefix}{key}")).map(Some)
}

/// `obj[key]` as a boolean, `None` when absent; the error names the option as `{prefix}{key}`.
fn boolean(obj: &JsValue, prefix: &str, key: &str) -> Result<Option<bool>, JsValue> {
    let v = get(obj, key);
    if v.is_undefined() {
        return Ok(None);
    }
    v.as_bool()
        .map(Some)
        .ok_or_else(|| type_error(&format!("{prefix}{key} must be a boolean")))
}

/// A non-negative integer number.
fn count(v: &JsValue) -> Option<u64> {
    let n = v.as_f64()?;
    (n >= 0.0 && n.fract() == 0.0 && n <= (1u64 << 53) as f64).then_some(n as u64)
}

fn set_count(obj: &JsValue, prefix: &str, key: &str, slot: &mut usize) -> Result<(), JsValue> {
    let v = get(obj, key);
    if !v.is_undefined() {
        *slot = count(&v)
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| type_error(&format!("{prefix}{key} must be a non-negative integer")))?;
    }
    Ok(())
}

fn set_ms(obj: &JsValue, prefix: &str, key: &str, slot: &mut Duration) -> Result<(), JsValue> {
    let v = get(obj, key);
    if !v.is_undefined() {
        *slot = Duration::from_millis(count(&v).ok_or_else(|| {
            type_error(&format!(
                "{prefix}{key} must be a non-negative integer (milliseconds)"
            ))
        })?);
    }
    Ok(())
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
    if get(options, "timeoutMs").is_undefined() {
        return Ok(None);
    }
    let mut d = Duration::ZERO;
    set_ms(options, prefix, "timeoutMs", &mut d)?;
    Ok(Some(d))
}
