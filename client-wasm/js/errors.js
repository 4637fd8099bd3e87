// The JavaScript side of `@sockeye/client`, in one file because each snippet file is one more request and gzip stream
// (~0.3 KB of the gzipped package for three): the error classes (src/errors.rs; scripts/build-npm.sh re-exports
// them from the package entry), the JS <-> CBOR walk (src/cbor.rs) and the option checks (src/options.rs).
//
// ---------------------------------------------------------------------------------------------------------------
// Error classes, constructed from Rust. Every error has `code`, one of PROTOCOL.md §4's error codes.
//
// Names are set explicitly: a minifier may rename the classes, `error.name` must not change.

export class SockeyeError extends Error {
  constructor(code, message, details) {
    super(message);
    this.name = "SockeyeError";
    this.code = code;
    if (details !== undefined) this.details = details;
  }
}

/** A request's deadline passed (`DEADLINE_EXCEEDED`), or `waitForStatus` timed out. */
export class TimeoutError extends SockeyeError {
  constructor(message) {
    super("DEADLINE_EXCEEDED", message);
    this.name = "TimeoutError";
  }
}

/** The server answered with an `err`: its `code`, `message` and `details` (the `d` of the reply). */
export class ServerError extends SockeyeError {
  constructor(code, message, details) {
    super(code, message, details);
    this.name = "ServerError";
  }
}

/** The connection was lost while the request was in flight (`UNAVAILABLE`), or the client was closed. */
export class ConnectionClosedError extends SockeyeError {
  constructor(message) {
    super("UNAVAILABLE", message);
    this.name = "ConnectionClosedError";
  }
}

/** The offline queue is at its bound (`RESOURCE_EXHAUSTED`); nothing was queued. */
export class QueueFullError extends SockeyeError {
  constructor(message) {
    super("RESOURCE_EXHAUSTED", message);
    this.name = "QueueFullError";
  }
}

/** The request was aborted with its `AbortSignal`, or cancelled by `close()` (`CANCELLED`). */
export class AbortError extends SockeyeError {
  constructor(message) {
    super("CANCELLED", message);
    this.name = "AbortError";
  }
}

// kind: 0 SockeyeError, 1 TimeoutError, 2 ServerError, 3 ConnectionClosedError, 4 QueueFullError, 5 AbortError.
export function makeError(kind, code, message, details) {
  switch (kind) {
    case 1: return new TimeoutError(message);
    case 2: return new ServerError(code, message, details);
    case 3: return new ConnectionClosedError(message);
    case 4: return new QueueFullError(message);
    case 5: return new AbortError(message);
    default: return new SockeyeError(code, message, details);
  }
}

// Calls `done([true, value])` or `done([false, error])` once, when `value` (a promise, a thenable or a plain
// value) settles. One callback instead of a pair: the Rust side keeps a single closure type (each costs size).
export function settle(value, done) {
  Promise.resolve(value).then(
    (v) => done([true, v]),
    (e) => done([false, e]),
  );
}

// `[promise, resolve, reject]`: cheaper in the package than a Rust closure passed to `new Promise`.
export function deferred() {
  let resolve, reject;
  const promise = new Promise((a, b) => {
    resolve = a;
    reject = b;
  });
  return [promise, resolve, reject];
}

// ---------------------------------------------------------------------------------------------------------------
// JS values <-> CBOR (RFC 8949) for payloads, called from src/cbor.rs. Written in JS rather than walked from Rust
// through js-sys: every property read, type test and array push from wasm is a call across the boundary and an
// import in the package, so the Rust walker cost ~3 KB gzipped more than this file (minified) and ran slower.
//
// | JS | CBOR | back to JS |
// |---|---|---|
// | `undefined` as `data` | no `d` key | `undefined` |
// | `null`, `undefined` inside arrays | null, undefined | `null`, `undefined` |
// | `true`/`false` | simple values | booleans |
// | number: a safe integer (not `-0`) | integer | number |
// | other numbers (fractions, `-0`, `NaN`, ±`Infinity`, beyond 2^53) | shortest lossless float | number |
// | `BigInt` in -2^64..2^64 | integer | number when safe, else `BigInt` |
// | string | text | string |
// | `Uint8Array`, `ArrayBuffer`, any `ArrayBuffer` view | byte string | `Uint8Array` |
// | `Array`, `Set` | array | `Array` |
// | `Map` | map, keys encoded as values | plain object when every key is text, else `Map` |
// | other objects | map of own enumerable string keys; `undefined` values are left out | plain object |
//
// Functions, symbols, bigger `BigInt`s and nesting deeper than 128 levels (or cycles) throw a `TypeError`; a
// getter or proxy trap that throws makes the encoding fail with its error, as in `JSON.stringify`. A detached
// `ArrayBuffer` (or a view of one) encodes as empty bytes. Headers take their shortest form (RFC 8949 §4.2.1); a
// float is written in the shortest of half, single and double precision that gives back exactly the same bits.
//
// Decoding gets only payloads the core has checked (one well-formed item, at most 128 levels deep), keeps a tag's
// content and drops the tag, decodes unassigned simple values as `undefined` and replaces invalid UTF-8 (U+FFFD).
// Plain objects are built with `Object.fromEntries`, so a "__proto__" key is an own property, never the prototype.

const MAX_DEPTH = 128; // sockeye_core::codec::MAX_DEPTH
const BIG = 2n ** 64n;
const utf8 = new TextEncoder();
// `ignoreBOM`: a leading U+FEFF is text like any other, not a marker to drop.
const text = new TextDecoder("utf-8", { ignoreBOM: true });
const scratch = new DataView(new ArrayBuffer(8));

// The half-precision bits of `n` when they hold exactly `n`'s bits (NaNs: quiet ones whose payload fits), else -1.
function half(n) {
  scratch.setFloat64(0, n);
  const hi = scratch.getUint32(0);
  const sign = (hi >>> 16) & 0x8000;
  const exp = (hi >>> 20) & 0x7ff;
  const top = (hi >>> 10) & 0x3ff; // the 10 significand bits a half keeps
  const lost = hi & 0x3ff || scratch.getUint32(4);
  const e = exp - 1023;
  if (exp === 0) return (hi & 0xfffff) || lost ? -1 : sign; // ±0 (f64 subnormals are far below any half)
  if (exp === 0x7ff) return !lost && (!top || top & 0x200) ? sign | 0x7c00 | top : -1;
  if (e >= -14 && e <= 15) return lost ? -1 : sign | ((e + 15) << 10) | top;
  // Subnormal halves: m · 2^-24 with 0 < m < 1024.
  const m = Math.abs(n) * 16777216;
  return e >= -24 && e < -14 && Number.isInteger(m) ? sign | m : -1;
}

/** `data` as CBOR bytes; `undefined` (no payload) for `undefined`. Throws a `TypeError` for what it cannot encode. */
export function encode(data) {
  if (data === undefined) return undefined;
  let buf = new Uint8Array(64);
  let view = new DataView(buf.buffer);
  let len = 0;
  // Room for `n` more bytes; returns where they go. (Call it before reading `buf` or `view`: it may replace them.)
  const room = (n) => {
    if (len + n > buf.length) {
      const grown = new Uint8Array(Math.max(2 * buf.length, len + n));
      grown.set(buf);
      buf = grown;
      view = new DataView(buf.buffer);
    }
    const at = len;
    len += n;
    return at;
  };
  const byte = (b) => {
    const at = room(1);
    buf[at] = b;
  };
  // A big-endian number of `size` bytes (`set`: "Uint16", "Float32", ...), after `first`.
  const put = (first, size, set, n) => {
    const at = room(1 + size);
    buf[at] = first;
    view[`set${set}`](at + 1, n);
  };
  // An item header; `n` is a number or a BigInt below 2^64.
  const head = (major, n) => {
    major <<= 5;
    if (n < 24) byte(major | Number(n));
    else if (n < 0x100) put(major | 24, 1, "Uint8", Number(n));
    else if (n < 0x10000) put(major | 25, 2, "Uint16", Number(n));
    else if (n < 0x100000000) put(major | 26, 4, "Uint32", Number(n));
    else put(major | 27, 8, "BigUint64", BigInt(n));
  };
  const string = (major, bytes) => {
    head(major, bytes.length);
    const at = room(bytes.length);
    buf.set(bytes, at);
  };
  const number = (n) => {
    const h = Number.isSafeInteger(n) && !Object.is(n, -0) ? -2 : half(n);
    if (h === -2) n < 0 ? head(1, -1 - n) : head(0, n);
    else if (h >= 0) put(0xf9, 2, "Uint16", h);
    else if (Math.fround(n) === n) put(0xfa, 4, "Float32", n);
    else put(0xfb, 8, "Float64", n);
  };
  const items = (list, depth) => {
    head(4, list.length);
    for (let i = 0; i < list.length; i++) value(list[i], depth);
  };
  const value = (v, depth) => {
    switch (typeof v) {
      case "undefined":
        return byte(0xf7);
      case "boolean":
        return byte(v ? 0xf5 : 0xf4);
      case "number":
        return number(v);
      case "string":
        return string(3, utf8.encode(v));
      case "bigint":
        if (v >= -BIG && v < BIG) return v < 0n ? head(1, -1n - v) : head(0, v);
        throw new TypeError("data: BigInt outside -2^64..2^64");
      case "object": {
        if (v === null) return byte(0xf6);
        if (depth >= MAX_DEPTH) throw new TypeError("data: nested deeper than 128 levels (or cyclic)");
        depth++;
        // A detached buffer (or a view of one) has byteLength 0, and `new Uint8Array` would throw on it.
        if (ArrayBuffer.isView(v) || v instanceof ArrayBuffer) {
          const view = ArrayBuffer.isView(v);
          const length = v.byteLength;
          return string(2, length ? new Uint8Array(view ? v.buffer : v, view ? v.byteOffset : 0, length) : []);
        }
        if (Array.isArray(v)) return items(v, depth);
        if (v instanceof Set) return items([...v], depth);
        if (v instanceof Map) {
          head(5, v.size);
          return v.forEach((item, key) => {
            value(key, depth);
            value(item, depth);
          });
        }
        // Own enumerable string-keyed properties, like JSON; `undefined` values are left out.
        const entries = Object.entries(v).filter((entry) => entry[1] !== undefined);
        head(5, entries.length);
        for (const [key, item] of entries) string(3, utf8.encode(key)), value(item, depth);
        return;
      }
    }
    throw new TypeError(`data: cannot encode a ${typeof v}`);
  };
  value(data, 0);
  return buf.subarray(0, len);
}

// The number a half-precision float holds.
function fromHalf(h) {
  const exp = (h >> 10) & 31;
  const m = h & 0x3ff;
  const magnitude = exp === 31 ? (m ? NaN : Infinity) : exp ? (1024 + m) * 2 ** (exp - 25) : m * 2 ** -24;
  return h & 0x8000 ? -magnitude : magnitude;
}

/** The JS value of one CBOR item (a payload the core has checked). Byte strings are copied out of `bytes`. */
export function decode(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  let pos = 0;
  // True (and the break consumed) at the end of an indefinite-length item.
  const stop = () => bytes[pos] === 0xff && ++pos > 0;
  const item = () => {
    const initial = bytes[pos++];
    const major = initial >> 5;
    const info = initial & 31;
    let n = info; // 31: an indefinite length
    if (info === 24) n = bytes[pos];
    else if (info === 25) n = view.getUint16(pos);
    else if (info === 26) n = major === 7 ? view.getFloat32(pos) : view.getUint32(pos);
    else if (info === 27) n = major === 7 ? view.getFloat64(pos) : view.getBigUint64(pos);
    if (info > 23 && info < 28) pos += 1 << (info - 24);
    if (typeof n === "bigint" && n <= Number.MAX_SAFE_INTEGER) n = Number(n);
    const more = (count) => (info === 31 ? !stop() : count < n);
    switch (major) {
      case 0:
        return n;
      case 1:
        return typeof n === "bigint" || n === Number.MAX_SAFE_INTEGER ? -1n - BigInt(n) : -1 - n;
      case 2:
      case 3: {
        let parts = [];
        if (info === 31) while (!stop()) parts.push(item());
        else parts = [major === 2 ? bytes.slice(pos, (pos += n)) : text.decode(bytes.subarray(pos, (pos += n)))];
        if (major === 3) return parts.join("");
        if (parts.length === 1) return parts[0];
        const joined = new Uint8Array(parts.reduce((sum, p) => sum + p.length, 0));
        parts.reduce((at, p) => (joined.set(p, at), at + p.length), 0);
        return joined;
      }
      case 4: {
        const list = [];
        while (more(list.length)) list.push(item());
        return list;
      }
      case 5: {
        const entries = [];
        let textKeys = true;
        while (more(entries.length)) {
          textKeys &&= bytes[pos] >> 5 === 3;
          entries.push([item(), item()]);
        }
        return textKeys ? Object.fromEntries(entries) : new Map(entries);
      }
      case 6:
        return item();
    }
    // Major 7: floats and simple values.
    if (info === 25) return fromHalf(n);
    if (info === 26 || info === 27) return n;
    return n === 20 ? false : n === 21 ? true : n === 22 ? null : undefined;
  };
  return item();
}

// ---------------------------------------------------------------------------------------------------------------
// `new Client(options)`, checked here and handed to src/options.rs as a flat array. In JS because reading and
// checking a JS object from Rust costs a boundary call and an import per test, and a message per check: the Rust
// version was ~2 KB gzipped larger than this file (minified). Combinations of options (base delay at most the
// maximum, ...) are the core's to check (`Config::validate`); the defaults are the core's too.
//
// Anything invalid throws a TypeError naming the option, e.g. `options.reconnect.maxAttempts must be a positive
// integer, null or Infinity`; unknown option names are refused too.

const LIFECYCLE = ["onStateChange", "onDisconnect", "onReconnecting", "onReconnected", "onReady", "onError", "onDraining"];
const RECONNECT = ["enabled", "maxAttempts", "baseDelayMs", "maxDelayMs", "fullJitter"];
const QUEUE = ["maxMessages", "maxBytes"];
const MS = ["keepaliveIntervalMs", "keepaliveTimeoutMs", "connectTimeoutMs", "stablePeriodMs", "requestTimeoutMs"];
const TOP = ["url", "token", "getToken", "reconnect", ...MS, "queue", "fragmentThreshold", "lifecycle", "handlers"];

const fail = (message) => {
  throw new TypeError(message);
};

// `o` when it is an object whose keys are all in `known` (any keys without `known`); undefined when absent.
function object(o, name, known) {
  if (o === undefined) return o;
  if (typeof o !== "object" || o === null || Array.isArray(o)) fail(`${name} must be an object`);
  for (const key of Object.keys(o)) if (known && !known.includes(key)) fail(`${name}.${key} is not a known option`);
  return o;
}

// `o[key]` as an integer in 0..=max (NaN when absent). Counts are `usize` in the core: at most 2^32 - 1 here.
function count(o, name, key, max = 2 ** 32 - 1, what = "a non-negative integer") {
  const n = o?.[key];
  if (n === undefined) return NaN;
  return Number.isInteger(n) && n >= 0 && n <= max ? n : fail(`${name}${key} must be ${what}`);
}

const ms = (o, name, key) => count(o, name, key, 2 ** 53, "a non-negative integer (milliseconds)");

// `o[key]` as 1 or 0 (NaN when absent).
function flag(o, key) {
  const b = o?.[key];
  if (b === undefined) return NaN;
  return typeof b === "boolean" ? +b : fail(`options.reconnect.${key} must be a boolean`);
}

function callback(f, name) {
  return typeof f === "function" ? f : fail(`${name} must be a function`);
}

/**
 * The `options` of `request` and an acknowledged `publish` (`withSignal`), and of `waitForStatus`: `[timeoutMs
 * (NaN: none), signal (undefined: none)]`; `prefix` names the object in errors. `null` options or signal are none,
 * as for `fetch`.
 */
export function callOptions(options, prefix, withSignal) {
  const timeout = ms(options, prefix, "timeoutMs");
  const signal = withSignal ? (options?.signal ?? undefined) : undefined;
  if (signal !== undefined && !(signal instanceof AbortSignal)) fail(`${prefix}signal must be an AbortSignal`);
  return [timeout, signal];
}

/**
 * `[url, token, getToken, the listener tables (`emit`: the lifecycle callbacks in LIFECYCLE's order, the server
 * request handlers by method), then the numbers: reconnect.enabled, reconnect.fullJitter, reconnect.baseDelayMs, reconnect.maxDelayMs,
 * reconnect.maxAttempts (Infinity: unlimited), the MS options in MS's order, fragmentThreshold, queue.maxMessages,
 * queue.maxBytes]`; absent options are `undefined` or NaN.
 */
export function checkOptions(options) {
  if (options === undefined) fail("options must be an object with at least `url`");
  const o = object(options, "options", TOP);
  const { url, token, getToken } = o;
  if (typeof url !== "function" && !(typeof url === "string" && /^wss?:\/\/./i.test(url))) {
    fail("options.url must be a ws:// or wss:// URL or a function (attempt) => url");
  }
  if (token !== undefined && getToken !== undefined) fail("options.token and options.getToken cannot both be set");
  if (token !== undefined && typeof token !== "string") fail("options.token must be a string");
  if (getToken !== undefined) callback(getToken, "options.getToken");

  let reconnect = o.reconnect;
  if (typeof reconnect === "boolean") reconnect = { enabled: reconnect };
  reconnect = object(reconnect, "options.reconnect", RECONNECT);
  let attempts = reconnect?.maxAttempts;
  if (attempts === null || attempts === Infinity) attempts = Infinity;
  else if (attempts !== undefined && !(Number.isInteger(attempts) && attempts >= 1 && attempts < 2 ** 32)) {
    fail("options.reconnect.maxAttempts must be a positive integer, null or Infinity");
  }
  const r = "options.reconnect.";

  const lifecycle = object(o.lifecycle, "options.lifecycle", LIFECYCLE);
  const handlers = object(o.handlers, "options.handlers") ?? {};
  const queue = object(o.queue, "options.queue", QUEUE);
  return [
    url,
    token,
    getToken,
    // The client's listener tables (see `emit`).
    {
      // `null` is no callback, as `undefined` is.
      l: LIFECYCLE.map((key) => lifecycle?.[key] ?? undefined).map(
        (f, i) => f === undefined ? f : callback(f, `options.lifecycle.${LIFECYCLE[i]}`),
      ),
      t: [],
      m: [],
      s: [],
      h: new Map(Object.keys(handlers).map((key) => [key, { f: callback(handlers[key], `options.handlers.${key}`) }])),
      p: new Map(),
      w: [],
    },
    flag(reconnect, "enabled"),
    flag(reconnect, "fullJitter"),
    ms(reconnect, r, "baseDelayMs"),
    ms(reconnect, r, "maxDelayMs"),
    attempts ?? NaN,
    ...MS.map((key) => ms(o, "options.", key)),
    count(o, "options.", "fragmentThreshold"),
    count(queue, "options.queue.", "maxMessages"),
    count(queue, "options.queue.", "maxBytes"),
  ];
}

const SUBSCRIBE = ["onError", "onGap", "onResumed", "onState"];

/**
 * `subscribe(topic, handler, options)`'s `options` as `[onError, onGap, onResumed, onState]` (absent: undefined):
 * `{ onError, onGap, onResumed, onState }`, or a function, which is `onError` (the argument's meaning before the other
 * callbacks existed); `undefined` and `null` are none.
 */
export function checkSubscribeOptions(options) {
  if (options === undefined || options === null) return [];
  if (typeof options === "function") return [options];
  if (typeof options !== "object" || Array.isArray(options)) {
    fail("subscribe: the third argument must be an onError function or { onError, onGap, onResumed, onState }");
  }
  object(options, "subscribe options", SUBSCRIBE);
  return SUBSCRIBE.map((key) => options[key] ?? undefined).map(
    (f, i) => f === undefined ? f : callback(f, `subscribe options.${SUBSCRIBE[i]}`),
  );
}

// ---------------------------------------------------------------------------------------------------------------
// The application's listeners and the core's events as the objects its callbacks get (src/shell/events.rs). In JS
// because building each object from Rust costs a `Reflect.set` call per key, and each listener list a `Vec` type:
// the package was 2.7 KB gzipped larger with them in Rust (bench/SIZE.md).
//
// A client's tables (built by `checkOptions`): `l` the lifecycle callbacks (LIFECYCLE's order), `t` the transition
// handlers, `m` the message handlers and `s` the topic subscriptions (`{ n: name, f: handler, c: [onError, onGap,
// onResumed, onState] }` each), `h` the server request handlers by method (`{ f }`), `d` set once the client is
// freed (no callback runs any more), `z` the status the last transition reached. And the promises the client
// settles later: `p` the requests and acknowledged publishes by id (`{ d: deferred(), s: signal, a: its abort
// listener }`), `w` the `waitForStatus` waiters (`{ n: status, d: deferred(), t: timer }`).

// Settles request `id`'s promise (`how`: 1 resolve, 2 reject) with `value`, if it is still pending.
function finish(hub, id, how, value) {
  const p = hub.p.get(id);
  if (p) {
    hub.p.delete(id);
    p.s?.removeEventListener("abort", p.a);
    p.d[how](value);
  }
}

// Settles the waiters `pick` chooses (`how`: 1 resolve, 2 reject) with `value`.
function release(hub, pick, how, value) {
  hub.w = hub.w.filter((w) => !pick(w) || (clearTimeout(w.t), w.d[how](value), false));
}

const MAX_TIMEOUT = 2 ** 31 - 1; // setTimeout's longest delay
// The states whose transitions carry the attempt.
const ATTEMPTS = ["connecting", "connected", "reconnecting"];

// Calls an application callback (when there is one, and the client lives); a throw is reported on the console and
// does not stop the client.
function call(hub, f, ...args) {
  if (f && !hub.d) {
    try {
      f(...args);
    } catch (e) {
      console.error("sockeye: a callback threw", e);
    }
  }
}

/**
 * Adds a listener to a table (`list`: 0 transitions, 1 messages, 2 server requests (replacing the method's
 * handler), 3 topics with `c`, the checked subscribe callbacks); returns the function that removes it, which for a
 * topic also calls `notify(topic)` (the core counts subscribers). Removing twice, or after the client was freed,
 * does nothing.
 */
export function on(hub, list, name, f, c, notify) {
  const entry = { n: name, f, c };
  if (list === 2) {
    hub.h.set(name, entry);
    return () => {
      if (hub.h.get(name) === entry) hub.h.delete(name);
    };
  }
  const key = "tm_s"[list];
  hub[key].push(entry);
  return () => {
    const at = hub[key].indexOf(entry);
    if (at >= 0) {
      hub[key].splice(at, 1);
      if (notify) notify(name);
    }
  };
}

/**
 * One core event for the application (src/shell/events.rs `Emit` numbers the kinds): `name` is a topic, message
 * name, method or disconnect reason, `v` the data or error (a transition: its object), `w` an epoch or state name,
 * `x` and `y` numbers. Every list is copied before its callbacks run: one added meanwhile hears the next event.
 * A server request (12) returns its handler's outcome as a promise, or undefined when no handler takes it. Kinds 14
 * to 19 keep and settle the promises of requests (14 returns it) and of `waitForStatus` (17 returns it), which runs
 * no application code.
 */
export function emit(hub, kind, name, v, w, x, y) {
  const { l } = hub;
  const each = (fs, ...args) => fs.forEach((f) => call(hub, f, ...args));
  // The callbacks `pick` chooses from the subscriptions to topic `name`.
  const topic = (pick) => hub.s.filter((e) => e.n === name).map(pick).filter(Boolean);
  // A loss goes to every `onGap`; never silently: without one, to the console.
  const gap = (info) => {
    const fs = topic((e) => e.c[1]);
    if (!fs.length) console.error("sockeye: events lost", info);
    each(fs, info);
  };
  switch (kind) {
    case 0: {
      // `{ from, to, at, ... }` (src/shell/events.rs `transition_parts`); `from` is the `to` before.
      const t = { from: hub.z ?? "disconnected", to: name, at: x };
      hub.z = name;
      if (ATTEMPTS.includes(name)) t.attempt = y;
      if (name === "reconnecting") {
        t.delayMs = v;
        if (w !== undefined) t.nextAttemptAt = w;
      }
      if (name === "disconnected" && v !== undefined) {
        t.reason = v;
        if (y === y) t.code = y;
        t.message = w;
      }
      each([l[0], ...hub.t.map((e) => e.f)], t);
      if (name === "reconnecting") call(hub, l[2], t);
      if (name === "ready") call(hub, l[4]);
      return;
    }
    case 1:
      return call(hub, l[1], { code: x, reason: name, willReconnect: !!y });
    case 2:
      return call(hub, l[3]);
    case 3:
      return call(hub, l[6]);
    case 4:
      return l[5] ? call(hub, l[5], v) : console.error("sockeye: server error", v);
    case 5:
      return each(hub.m.filter((e) => e.n === name || e.n === "*").map((e) => e.f), v, { name });
    case 6:
      return each(topic((e) => e.f), v, w === undefined ? { topic: name, seq: x } : { topic: name, seq: x, ep: w });
    case 7:
      return gap({ topic: name, from: x, to: y });
    case 8:
      return gap({ topic: name, reset: true, ep: w });
    case 9:
      return each(topic((e) => e.c[2]), { topic: name, replayed: x });
    case 10:
      return each(topic((e) => e.c[3]), w);
    case 11: {
      // Refused: the subscriptions end (the core no longer counts them).
      const gone = hub.s.filter((e) => e.n === name);
      hub.s = hub.s.filter((e) => e.n !== name);
      for (const e of gone) {
        call(hub, e.c[3], "failed");
        e.c[0] ? call(hub, e.c[0], v) : console.error("sockeye: subscription refused", v);
      }
      return;
    }
    case 12: {
      const f = hub.h.get(name)?.f;
      // A throw is a rejection: the server gets an `err` either way.
      return f && new Promise((resolve) => resolve(f(v, { method: name, id: x })));
    }
    case 13:
      hub.d = true;
      hub.l = hub.t = hub.m = hub.s = [];
      hub.h.clear();
      // Pending requests are forgotten (their abort listeners removed); waiters are told.
      hub.p.forEach((p) => p.s?.removeEventListener("abort", p.a));
      hub.p.clear();
      return release(hub, () => true, 2, new ConnectionClosedError("the client was freed"));
    case 14: {
      // A request or acknowledged publish `x` with its `AbortSignal` `v` (or undefined), which calls `w(x)`.
      const p = { d: deferred(), s: v, a: () => w(x) };
      v?.addEventListener("abort", p.a);
      hub.p.set(x, p);
      return p.d[0];
    }
    case 15:
      return finish(hub, x, y ? 1 : 2, v);
    case 16:
      return finish(hub, x, 1, { ep: w, seq: y });
    case 17: {
      // `waitForStatus(name)` in status `v`, `x` ms at most (NaN: no limit).
      const d = deferred();
      if (v === name) d[1]();
      else {
        const waiter = { n: name, d };
        hub.w.push(waiter);
        const fail = () => release(hub, (o) => o === waiter, 2, new TimeoutError(`status "${name}" not reached in time`));
        const arm = (left) => (waiter.t = setTimeout(left > MAX_TIMEOUT ? () => arm(left - MAX_TIMEOUT) : fail, Math.min(left, MAX_TIMEOUT)));
        if (x === x) arm(x);
      }
      return d[0];
    }
    case 18:
      return release(hub, (o) => o.n === name, 1);
    case 19:
      return release(hub, () => true, 2, new ConnectionClosedError(name));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The WebSocket (src/shell/socket.rs): in JS, one call each way rather than a boundary call per property and
// listener.

const SOCKET_EVENTS = ["open", "message", "close", "error"];

/** `new WebSocket(url, protocol)` receiving binary messages as `ArrayBuffer`s, with `handler` on its events. */
export function openSocket(url, protocol, handler) {
  const ws = new WebSocket(url, protocol);
  ws.binaryType = "arraybuffer";
  for (const kind of SOCKET_EVENTS) ws.addEventListener(kind, handler);
  return ws;
}

/**
 * Detaches `handler` from `ws` and, unless it is closing or closed, closes it with `code` and `reason`; `ws.close()`
 * when the browser refuses those (it sends only 1000 and 3000-4999, and at most 123 bytes of reason, which the
 * core's `CloseReason` keeps to).
 */
export function closeSocket(ws, handler, code, reason) {
  for (const kind of SOCKET_EVENTS) ws.removeEventListener(kind, handler);
  if (ws.readyState > 1) return;
  try {
    ws.close(code, reason);
  } catch {
    ws.close();
  }
}

// The page's events the client follows (src/shell/page.rs): on the window, then on its document.
const PAGE_EVENTS = [["online", "offline"], ["visibilitychange", "resume"]];

/** Adds (`on`) or removes `handler` for the page's events; false outside a window (a worker). */
export function pageEvents(on, handler) {
  if (typeof window !== "object") return false;
  [window, window.document].forEach((target, i) => {
    for (const kind of PAGE_EVENTS[i]) target?.[on ? "addEventListener" : "removeEventListener"](kind, handler);
  });
  return true;
}
