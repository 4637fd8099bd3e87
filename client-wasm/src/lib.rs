//! Sockeye for the browser: the npm package `@sockeye/client` (built by scripts/build-npm.sh).
//!
//! A thin shell that binds [`sockeye_core::Connection`] (every decision: lifecycle, backoff, keepalive, requests,
//! offline queue, topics, the wire codec) to `WebSocket`, one `setTimeout` and the page's `online`/`offline`/
//! `visibilitychange` events. The shell only carries out the core's outputs and reports what happens; see
//! `shell/mod.rs` for how it keeps application callbacks out of its borrows and how it owns its closures.
//!
//! The JS API (`Client`) is documented in `README.md` and typed by the `.d.ts` sections below; payloads are
//! converted by `cbor.rs` (no serde in this build).
//!
//! The npm package is built without the default `std` feature: `no_std` + `alloc`, and a panic is a trap
//! (`panic_handler` below). Tests and host builds keep std.

#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

use alloc::rc::Rc;
use alloc::string::String;

use js_sys::{Function, Promise};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;

mod cbor;
mod errors;
mod options;
mod shell;

use errors::{error, type_error, Kind};
use shell::{Inner, List, Target};

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &'static str = r#"
/** The connection's state (PROTOCOL §7). */
export type Status = "disconnected" | "connecting" | "connected" | "ready" | "reconnecting";

/** Why a client ended in `disconnected` and stopped trying. */
export type DisconnectReason = "stopped" | "auth-failed" | "policy-violation" | "closed" | "max-attempts";

/** PROTOCOL §4's error codes; a server may send others. */
export type ErrorCode =
  | "INVALID_ARGUMENT" | "NOT_FOUND" | "PERMISSION_DENIED" | "UNAUTHENTICATED" | "RESOURCE_EXHAUSTED"
  | "DEADLINE_EXCEEDED" | "UNAVAILABLE" | "INTERNAL" | "UNIMPLEMENTED" | "CANCELLED" | (string & {});

/** One change of `client.status`. */
export interface Transition {
  from: Status;
  to: Status;
  /** When, in milliseconds on the `performance.now()` clock. */
  at: number;
  /** `connecting`, `connected`, `reconnecting`: the attempt (from 1). */
  attempt?: number;
  /** `reconnecting`: the backoff before the attempt starts. */
  delayMs?: number;
  /** `reconnecting`: when the attempt starts, on the `performance.now()` clock; absent while the browser is
   *  offline (the attempt then starts when it comes back online, with another `reconnecting` transition before). */
  nextAttemptAt?: number;
  /** `disconnected`: why (absent before the first `start()`). */
  reason?: DisconnectReason;
  /** `disconnected`: the close reason or detail, e.g. the server's "authentication failed". */
  message?: string;
  /** `disconnected`: the close code behind the reason (4003 for `auth-failed`), when there is one. */
  code?: number;
}

/** `lifecycle.onDisconnect`: a connection that was open (`connected` or `ready`) ended. */
export interface DisconnectInfo {
  /** The WebSocket close code (1006 when the socket failed without one). */
  code: number;
  reason: string;
  /** False when the client ends in `disconnected`. */
  willReconnect: boolean;
}

export interface ReconnectOptions {
  /** Default true. `reconnect: false` is short for `{ enabled: false }`. */
  enabled?: boolean;
  /** Attempts since the connection was last stable; `null` or `Infinity` for unlimited. Default 10. */
  maxAttempts?: number | null;
  /** Default 1000. */
  baseDelayMs?: number;
  /** Default 30000. */
  maxDelayMs?: number;
  /** Default true: a delay uniform in [0, cap); false: the cap plus 0–20 %. */
  fullJitter?: boolean;
}

export interface QueueOptions {
  /** Default 1000. */
  maxMessages?: number;
  /** Sum of encoded sizes. Default 1 MiB. */
  maxBytes?: number;
}

export interface LifecycleCallbacks {
  /** Every transition. */
  onStateChange?: (transition: Transition) => void;
  /** A connection that was `connected` or `ready` ended. */
  onDisconnect?: (info: DisconnectInfo) => void;
  /** Waiting out a backoff before the next attempt (again, without `nextAttemptAt`, when the browser goes offline
   *  during the wait). */
  onReconnecting?: (transition: Transition) => void;
  /** `ready` again after an earlier `ready` since `start()`. */
  onReconnected?: () => void;
  /** Every `ready`. */
  onReady?: () => void;
  /** A connection-level `err` from the server (one without a request id). */
  onError?: (error: ServerError) => void;
  /** The server said `bye`: it is draining and will close this connection. */
  onDraining?: () => void;
}

/** What a server request handler gets besides the data. */
export interface RequestMeta { method: string; id: number }
/** Answers a server `req`: the value (or the promise's value) is the reply; a throw or rejection is an `err`
 *  with the error's `code` (default `INTERNAL`), `message` and `details`. */
export type RequestHandler = (data: any, meta: RequestMeta) => unknown;

export interface ClientOptions {
  /** `ws://` or `wss://` URL, or a function of the attempt number (from 1) returning one. */
  url: string | ((attempt: number) => string);
  /** Sent as `?token=`. Exclusive with `getToken`. */
  token?: string;
  /** Called before every attempt; sent as `?token=`. */
  getToken?: () => string | Promise<string>;
  reconnect?: ReconnectOptions | boolean;
  /** In `ready`, send `ping` this often; 0 turns keepalive off. Default 30000. */
  keepaliveIntervalMs?: number;
  /** Close with 4000 and reconnect when nothing arrives this long after a `ping`. Default 10000. */
  keepaliveTimeoutMs?: number;
  /** An attempt not `ready` within this fails. Default 10000. */
  connectTimeoutMs?: number;
  /** Staying `ready` this long resets the attempt counter. Default 5000. */
  stablePeriodMs?: number;
  queue?: QueueOptions;
  /** Messages whose envelope is larger are sent in fragments of at most this many bytes; 0: never. Default 102400. */
  fragmentThreshold?: number;
  /** Deadline of requests without their own `timeoutMs`. Default 30000. */
  requestTimeoutMs?: number;
  lifecycle?: LifecycleCallbacks;
  /** Server requests by method (see also `client.onRequest`). Others are answered `UNIMPLEMENTED`. */
  handlers?: Record<string, RequestHandler>;
}

export interface RequestOptions {
  /** Counted from the call, queued time included. Default `requestTimeoutMs`. */
  timeoutMs?: number;
  /** Aborting rejects the request with `AbortError` (`CANCELLED`); a queued request is never sent. */
  signal?: AbortSignal;
}

export interface WaitOptions {
  /** Reject with `TimeoutError` after this long. Default: wait until reached or `close()`. */
  timeoutMs?: number;
}

/** What a topic handler gets besides the data. */
export interface EventMeta {
  topic: string;
  /** The event's number in its topic's sequence. */
  seq: number;
  /** The epoch `seq` counts in (PROTOCOL §9); absent from a server that does not name one. */
  ep?: string;
}

/** `onGap` for a lost range: the events `from`..=`to` (inclusive) of `topic` will never be delivered. */
export interface GapInfo { topic: string; from: number; to: number; reset?: undefined }
/** `onGap` for a new epoch: the topic's sequence started anew (the server lost its history), so how many events
 *  were missed cannot be known. Later events count in epoch `ep`. */
export interface ResetInfo { topic: string; reset: true; ep: string }
/** `onResumed`: after a reconnect the topic went on without a loss; `replayed` events the server kept in its
 *  history were delivered to the handler (before this call). */
export interface ResumedInfo { topic: string; replayed: number }

/** Where a subscription stands: `pending` until the server acknowledged it on the current connection (and
 *  again while reconnecting), `live` once it did (every event published from then on is delivered), `failed`
 *  when the server refused it (which ends it). */
export type SubscriptionState = "pending" | "live" | "failed";

export interface SubscribeOptions {
  /** The server refused the subscription (which ends it). */
  onError?: (error: ServerError) => void;
  /** Every state the subscription takes, starting with its current one (`live` at once when another
   *  subscription to the topic is live already). */
  onState?: (state: SubscriptionState) => void;
  /** Events were lost, or the sequence started anew. Without `onGap`, a loss is reported on the console. */
  onGap?: (info: GapInfo | ResetInfo) => void;
  /** A re-subscription after a reconnect lost nothing. */
  onResumed?: (info: ResumedInfo) => void;
}

export interface PublishOptions {
  /** `true`: the server acknowledges the publish, and `publish` returns a promise of where the event was stored. */
  ack?: boolean;
  /** With `ack`: counted from the call, queued time included. Default `requestTimeoutMs`. */
  timeoutMs?: number;
  /** With `ack`: aborting rejects with `AbortError` (a queued publish is never sent). */
  signal?: AbortSignal;
}

/** Where an acknowledged publish was stored: its topic's epoch and the event's `seq`. */
export interface Published { ep: string; seq: number }
export interface MessageMeta { name: string }

/** Base of every error this package raises; `code` is one of PROTOCOL §4's codes. */
export class SockeyeError extends Error {
  readonly code: ErrorCode;
  /** A server error's `d`, decoded. */
  readonly details?: unknown;
}
/** `DEADLINE_EXCEEDED`: a request's deadline passed, or `waitForStatus` timed out. */
export class TimeoutError extends SockeyeError { readonly code: "DEADLINE_EXCEEDED"; }
/** The server answered a request with an `err`: its code, message and `details`. */
export class ServerError extends SockeyeError {}
/** `UNAVAILABLE`: the connection was lost while the request was in flight. */
export class ConnectionClosedError extends SockeyeError { readonly code: "UNAVAILABLE"; }
/** `RESOURCE_EXHAUSTED`: the offline queue is full; nothing was queued. */
export class QueueFullError extends SockeyeError { readonly code: "RESOURCE_EXHAUSTED"; }
/** `CANCELLED`: aborted through its `AbortSignal`, or cancelled by `close()`. */
export class AbortError extends SockeyeError { readonly code: "CANCELLED"; }

/**
 * The Sockeye client: one connection that reconnects, keeps alive, and keeps requests, the offline queue and
 * topic subscriptions across reconnects.
 *
 * @example
 * import init, { Client } from "@sockeye/client"; // or "@sockeye/client/bundler" (no init) for webpack/Vite wasm plugins
 * await init();
 * const client = new Client({ url: "wss://example.com/ws", getToken: async () => "…" });
 * client.start();
 * const reply = await client.request("echo", { hello: "world" }, { timeoutMs: 2000 });
 */
export interface Client {
  /** Connects (and keeps reconnecting, as configured). Also follows the page's `online`/`offline` and visibility
   *  changes until `close()`. Does nothing while already started. */
  start(): void;
  /** The current state. */
  readonly status: Status;
  /** Closes the connection (code 1000; no reconnect), fails pending requests with `AbortError`, and removes every
   *  event listener and the timer. `start()` may be called again later. Resolves once that is done. */
  close(): Promise<void>;
  /** Calls `handler` with every transition (`{ from, to, at, … }`); returns the unsubscribe function. */
  subscribeToTransitions(handler: (transition: Transition) => void): () => void;
  /** Answers server requests for `method` with `handler` (replacing an earlier one); returns the function that
   *  removes it. Requests for methods without a handler are answered `UNIMPLEMENTED`. */
  onRequest(method: string, handler: RequestHandler): () => void;
  /** Resolves when the client is in `status` (at once when it is already); rejects with `TimeoutError` after
   *  `options.timeoutMs`, or with `ConnectionClosedError` when `close()` ends the wait. */
  waitForStatus(status: Status, options?: WaitOptions): Promise<void>;
  /** Sends a one-way `msg` (now when `ready`, else from the offline queue). Throws `QueueFullError` when the
   *  offline queue is full, `TypeError` when `data` cannot be encoded. */
  send(name: string, data?: unknown): void;
  /** Publishes to `topic` (now when `ready`, else from the offline queue). Throws `QueueFullError` when the
   *  offline queue is full, `SockeyeError` (`INVALID_ARGUMENT`) for a bad topic name, `TypeError` when `data`
   *  cannot be encoded. */
  publish(topic: string, data?: unknown, options?: PublishOptions & { ack?: false }): void;
  /** Publishes to `topic` and resolves once the server stored the event, with its `{ ep, seq }`. Rejects like
   *  `request`: `ServerError` for the server's refusal, `TimeoutError`, `ConnectionClosedError` when the
   *  connection dropped while it was in flight (it may or may not have been stored), `QueueFullError`,
   *  `AbortError`. */
  publish(topic: string, data: unknown, options: PublishOptions & { ack: true }): Promise<Published>;
  /** Sends a request; resolves with the reply's data, rejects with a `SockeyeError` subclass. Issued while not
   *  `ready`, it waits in the offline queue (its deadline still counts). `data` may be any value `cbor.rs`
   *  encodes (`undefined`: no data). */
  request<T = any>(method: string, data?: unknown, options?: RequestOptions): Promise<T>;
  /** Calls `handler` for every event on `topic`, once each, across reconnects (a reconnect resumes from the last
   *  event delivered: a server that keeps history replays what was missed); returns the unsubscribe function.
   *  `options.onGap` hears every loss, `options.onResumed` every reconnect that lost nothing, `options.onState`
   *  whether the server has acknowledged it, `options.onError` the server's refusal of the subscription (which
   *  ends it); a function in place of `options` is `onError`. Several subscriptions to one topic share one `sub`
   *  on the wire; the last one to unsubscribe sends `unsub`. */
  subscribe<T = any>(
    topic: string,
    handler: (data: T, meta: EventMeta) => void,
    options?: SubscribeOptions | ((error: ServerError) => void),
  ): () => void;
  /** Calls `handler` for every server `msg` named `name` (`"*"`: every message); returns the unsubscribe function. */
  onMessage<T = any>(name: string, handler: (data: T, meta: MessageMeta) => void): () => void;
}
"#;

/// The Sockeye client. See README.md for the API; the `.d.ts` describes every option and callback.
#[wasm_bindgen]
pub struct Client {
    inner: Rc<Inner>,
}

// The methods carry `skip_jsdoc` and plain `//` comments and, but for the constructor, `skip_typescript`: their
// documentation lives once, in the `.d.ts` section above (`interface Client`, merged into the class), instead of
// also as JSDoc in the JS glue every page downloads (~1 KB gzipped).
#[wasm_bindgen]
impl Client {
    /// Checks the options (a `TypeError` names the first bad one) and creates a client in `disconnected`.
    #[wasm_bindgen(constructor, skip_jsdoc)]
    pub fn new(
        #[wasm_bindgen(unchecked_param_type = "ClientOptions")] options: JsValue,
    ) -> Result<Client, JsValue> {
        let options = options::parse(&options, shell::seed())?;
        Ok(Client {
            inner: Inner::new(options)?,
        })
    }

    // Connects (and keeps reconnecting, as configured). Also follows the page's `online`/`offline` and
    // visibility changes until `close()`. Does nothing while already started.
    #[wasm_bindgen(skip_typescript, skip_jsdoc)]
    pub fn start(&self) {
        self.inner.start();
    }

    // The current state.
    #[wasm_bindgen(getter, skip_typescript, skip_jsdoc)]
    pub fn status(&self) -> JsValue {
        // A JS string made from the `&'static str` (no `String` handed over to be freed by the glue).
        JsValue::from_str(self.inner.status())
    }

    // Resolves when the client is in `status` (at once when it is already); rejects with `TimeoutError` after
    // `timeoutMs`, or with `ConnectionClosedError` when `close()` ends the wait.
    #[wasm_bindgen(js_name = waitForStatus, skip_typescript, skip_jsdoc)]
    pub fn wait_for_status(&self, status: String, options: JsValue) -> Result<Promise, JsValue> {
        const NAMES: [&str; 5] = [
            "disconnected",
            "connecting",
            "connected",
            "ready",
            "reconnecting",
        ];
        if !NAMES.contains(&status.as_str()) {
            return Err(type_error(
                "waitForStatus: status must be one of disconnected, connecting, connected, ready, reconnecting",
            ));
        }
        let (timeout, _) = options::call_options(&options, "waitForStatus options.", false)?;
        Ok(self.inner.wait_for(&status, timeout))
    }

    // See the `.d.ts` (`request<T>`).
    #[wasm_bindgen(skip_typescript, skip_jsdoc)]
    pub fn request(&self, method: String, data: JsValue, options: JsValue) -> Promise {
        self.awaited(Target::Method(method), &data, &options)
    }

    /// Issues something the server answers (a request, an acknowledged publish) with `{ timeoutMs, signal }`
    /// from `options`; the promise settles with its outcome. (A `Target` rather than a closure: one copy of this
    /// in the package, not one per caller.)
    fn awaited(&self, target: Target, data: &JsValue, options: &JsValue) -> Promise {
        let prefix = match target {
            Target::Method(_) => "request options.",
            Target::Publish(_) => "publish options.",
        };
        let parsed = (|| {
            let payload = cbor::encode(data)?;
            let (timeout, signal) = options::call_options(options, prefix, true)?;
            Ok::<_, JsValue>((payload, timeout, signal))
        })();
        let (payload, timeout, signal) = match parsed {
            Ok(p) => p,
            Err(e) => return errors::rejected(&e),
        };
        if signal
            .as_ref()
            .is_some_and(|s| shell::get(s, "aborted").as_bool() == Some(true))
        {
            return errors::rejected(&error(
                Kind::Abort,
                "CANCELLED",
                "aborted before it was sent",
            ));
        }
        self.inner.track(target, payload, timeout, signal)
    }

    // Sends a one-way message `name` (now when `ready`, else from the offline queue).
    //
    // Throws `QueueFullError` when the offline queue is full, `TypeError` when `data` cannot be encoded.
    #[wasm_bindgen(skip_typescript, skip_jsdoc)]
    pub fn send(&self, name: String, data: JsValue) -> Result<(), JsValue> {
        let payload = cbor::encode(&data)?;
        self.inner.send(&name, payload)
    }

    // See the `.d.ts` (`publish`): fire-and-forget, or with `{ ack: true }` a promise of `{ ep, seq }`.
    #[wasm_bindgen(skip_typescript, skip_jsdoc)]
    pub fn publish(
        &self,
        topic: String,
        data: JsValue,
        options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let ack = shell::get(&options, "ack");
        if !ack.is_undefined() && ack.as_bool().is_none() {
            return Err(type_error("publish options.ack must be a boolean"));
        }
        // `as_bool`, not `is_truthy`: one JS import fewer (`ack` is a boolean or undefined here).
        if ack.as_bool() == Some(true) {
            return Ok(self.awaited(Target::Publish(topic), &data, &options).into());
        }
        let payload = cbor::encode(&data)?;
        self.inner.publish(&topic, payload)?;
        Ok(JsValue::UNDEFINED)
    }

    // See the `.d.ts` (`subscribe<T>`).
    #[wasm_bindgen(skip_typescript, skip_jsdoc)]
    pub fn subscribe(
        &self,
        topic: String,
        handler: JsValue,
        options: JsValue,
    ) -> Result<JsValue, JsValue> {
        let handler = callback(handler, "subscribe: handler")?;
        // Checked here, not when a callback is first needed: a bad one would only fail (on the console) when the
        // server refuses the subscription or an event is lost.
        let callbacks = options::topic_callbacks(&options)?;
        self.inner.subscribe(topic, &handler, &callbacks)
    }

    // Calls `handler` with every transition (`{ from, to, at, … }`); returns the unsubscribe function.
    #[wasm_bindgen(js_name = subscribeToTransitions, skip_typescript, skip_jsdoc)]
    pub fn subscribe_to_transitions(&self, handler: JsValue) -> Result<JsValue, JsValue> {
        self.listen(
            List::Transitions,
            "",
            handler,
            "subscribeToTransitions: handler",
        )
    }

    // See the `.d.ts` (`onMessage<T>`).
    #[wasm_bindgen(js_name = onMessage, skip_typescript, skip_jsdoc)]
    pub fn on_message(&self, name: String, handler: JsValue) -> Result<JsValue, JsValue> {
        self.listen(List::Messages, &name, handler, "onMessage: handler")
    }

    // Answers server requests for `method` with `handler` (replacing an earlier one); returns the function that
    // removes it. Requests for methods without a handler are answered `UNIMPLEMENTED`.
    #[wasm_bindgen(js_name = onRequest, skip_typescript, skip_jsdoc)]
    pub fn on_request(&self, method: String, handler: JsValue) -> Result<JsValue, JsValue> {
        self.listen(List::Requests, &method, handler, "onRequest: handler")
    }

    // Closes the connection (code 1000; no reconnect), fails pending requests with `AbortError`, and removes
    // every event listener and the timer. `start()` may be called again later. Resolves once that is done.
    #[wasm_bindgen(skip_typescript, skip_jsdoc)]
    pub fn close(&self) -> Promise {
        self.inner.close();
        errors::resolved()
    }
}

impl Client {
    /// Adds `handler` (checked to be a function; `what` names it) to `list` under `name`; returns the function
    /// that removes it.
    fn listen(
        &self,
        list: List,
        name: &str,
        handler: JsValue,
        what: &str,
    ) -> Result<JsValue, JsValue> {
        let handler = callback(handler, what)?;
        let none = &JsValue::UNDEFINED;
        Ok(self.inner.on(list, name, &handler, none, none))
    }
}

impl Drop for Client {
    /// `client.free()`: the socket is closed and every listener and the timer removed; pending requests reject.
    fn drop(&mut self) {
        self.inner.shutdown();
    }
}

fn callback(v: JsValue, name: &str) -> Result<Function, JsValue> {
    v.dyn_into::<Function>()
        .map_err(|_| type_error(&(String::from(name) + " must be a function")))
}

/// The heap: Talc instead of the standard library's dlmalloc, which costs the package ~8 KB of code where Talc
/// costs ~1.5 KB (2.3 KB less gzipped); Talc is also faster on wasm. It grows linear memory as needed
/// (`memory.grow`) and, like dlmalloc there, never returns it.
#[cfg(all(not(target_feature = "atomics"), target_family = "wasm"))]
#[global_allocator]
static TALC: talc::wasm::WasmDynamicTalc = talc::wasm::new_wasm_dynamic_allocator();

/// Without std (the npm build) a panic traps at once. std's hook would format the message and location first,
/// with nowhere to print them on wasm32-unknown-unknown, and then trap the same way (bench/SIZE.md: the code that
/// costs). Nothing the network sends panics (see sockeye-core), so this is a bug's path only; it surfaces in JS as
/// a `RuntimeError: unreachable` thrown from the call that hit it, as before.
#[cfg(all(not(feature = "std"), target_arch = "wasm32"))]
#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    core::arch::wasm32::unreachable()
}

#[cfg(test)]
mod tests {
    use wasm_bindgen_test::{wasm_bindgen_test, wasm_bindgen_test_configure};

    wasm_bindgen_test_configure!(run_in_browser);

    /// Random allocations, growth, shrinking and frees, small and up to 17 MiB (past the reassembly limit),
    /// every block checked for its contents before it changes: the global allocator (Talc, in the browser)
    /// never hands out overlapping memory.
    #[wasm_bindgen_test(unsupported = test)]
    fn the_heap_survives_random_churn() {
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        // Each block is filled with one byte (`fill` and slice comparison are memset and memcmp, fast even in
        // debug builds).
        let check = |block: &[u8], tag: u8| {
            let pattern = [tag; 4096];
            assert!(
                block.chunks(4096).all(|c| c == &pattern[..c.len()]),
                "tag {tag}"
            );
        };
        let mut slots: Vec<(Vec<u8>, u8)> = (0..64).map(|_| (Vec::new(), 0)).collect();
        for step in 0..4000u32 {
            let r = next();
            let slot = (r % 64) as usize;
            let size = match r >> 56 {
                _ if step % 1000 == 999 => 17 << 20,
                0..=2 => (r >> 8) as usize % (2 << 20),
                3..=40 => (r >> 8) as usize % 65_536,
                _ => (r >> 8) as usize % 512,
            };
            let (block, tag) = &mut slots[slot];
            check(block, *tag);
            *tag = step as u8;
            match (r >> 40) % 3 {
                0 => *block = vec![0; size],
                1 => block.resize(size, 0),
                _ => {
                    block.truncate(size);
                    block.shrink_to_fit();
                }
            }
            block.fill(*tag);
        }
        for (block, tag) in &slots {
            check(block, *tag);
        }
    }
}
