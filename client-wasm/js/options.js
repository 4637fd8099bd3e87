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
 * `[url, token, getToken, lifecycle callbacks (in LIFECYCLE's order), handlers ([method, function] pairs), then
 * the numbers: reconnect.enabled, reconnect.fullJitter, reconnect.baseDelayMs, reconnect.maxDelayMs,
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
    // `null` is no callback, as `undefined` is.
    LIFECYCLE.map((key) => lifecycle?.[key] ?? undefined).map(
      (f, i) => f === undefined ? f : callback(f, `options.lifecycle.${LIFECYCLE[i]}`),
    ),
    Object.keys(handlers).map((key) => [key, callback(handlers[key], `options.handlers.${key}`)]),
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
