// Browser scenarios for the `@sockeye/client` package: each one uses only the public JS API, as a web app would.
// client_in_browser.rs runs them in headless Chromium (one wasm-bindgen test each) with `Client` (the exported
// class) and `env` ({ server, authServer }: ws:// URLs of reference servers, the second started with
// `--token secret`). A scenario resolves when it passed and throws (with a message saying what) when not.

// The package's own error classes: wasm-bindgen puts this crate's snippets (js/errors.js and this file) in one
// directory, so this is the very module the client builds its errors from, and `instanceof` works.
import * as errors from "../js/errors.js";

const DEAD = "ws://127.0.0.1:1/ws"; // nothing listens on port 1: refused at once

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function assert(condition, message) {
  if (!condition) throw new Error(`assertion failed: ${message}`);
}

function assertEq(actual, expected, message) {
  const a = JSON.stringify(actual, replacer);
  const e = JSON.stringify(expected, replacer);
  if (a !== e) throw new Error(`${message}: expected ${e}, got ${a}`);
}

function replacer(_key, value) {
  if (typeof value === "bigint") return `${value}n`;
  if (value instanceof Uint8Array) return `Uint8Array[${Array.from(value).join(",")}]`;
  if (value instanceof Map) return { Map: Array.from(value.entries()) };
  if (value === undefined) return "undefined";
  if (Object.is(value, -0)) return "-0";
  return value;
}

/** Resolves with the error the promise rejects with; throws if it resolves. */
async function rejection(promise, what) {
  try {
    const value = await promise;
    throw new Error(`${what}: expected a rejection, resolved with ${JSON.stringify(value, replacer)}`);
  } catch (e) {
    if (e instanceof Error && e.message.startsWith(`${what}: expected a rejection`)) throw e;
    return e;
  }
}

function thrown(fn, what) {
  try {
    fn();
  } catch (e) {
    return e;
  }
  throw new Error(`${what}: expected a throw`);
}

function assertError(e, name, code, what) {
  assert(e instanceof Error, `${what}: ${e} is an Error`);
  const cls = name === "TypeError" ? TypeError : errors[name];
  assert(cls && e instanceof cls, `${what}: ${e} is a ${name}`);
  if (name !== "TypeError") assert(e instanceof errors.SockeyeError, `${what}: ${e} is a SockeyeError`);
  assertEq(e.name, name, `${what}: name`);
  assertEq(e.code, code, `${what}: code`);
}

/** Polls `predicate` until true, failing after `ms`. */
async function until(predicate, ms, what) {
  const deadline = performance.now() + ms;
  while (!predicate()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(10);
  }
}

/** A client whose every transition is recorded, plus `client.close()` on the way out. */
async function withClient(Client, options, body) {
  const transitions = [];
  const client = new Client(options);
  client.subscribeToTransitions((t) => transitions.push(t));
  try {
    return await body(client, transitions);
  } finally {
    await client.close();
    client.free();
  }
}

// Runs `body(sockets, RealWebSocket)` with `globalThis.WebSocket` replaced by a subclass that records every socket
// the client creates; `before()` and `after(socket)` run inside its constructor. The real class is restored after.
async function withSocketSpy(body, { before = () => {}, after = () => {} } = {}) {
  const RealWebSocket = globalThis.WebSocket;
  const sockets = [];
  globalThis.WebSocket = class extends RealWebSocket {
    constructor(...args) {
      before();
      super(...args);
      sockets.push(this);
      after(this);
    }
  };
  try {
    return await body(sockets, RealWebSocket);
  } finally {
    globalThis.WebSocket = RealWebSocket;
  }
}

const fast = { enabled: true, baseDelayMs: 20, maxDelayMs: 100, maxAttempts: null };

const scenarios = {
  async readyHandshake(Client, env) {
    const lifecycle = [];
    const options = {
      url: env.server,
      lifecycle: {
        onStateChange: (t) => lifecycle.push(`state:${t.to}`),
        onReady: () => lifecycle.push("ready"),
      },
    };
    await withClient(Client, options, async (client, transitions) => {
      assertEq(client.status, "disconnected", "status before start");
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      assertEq(client.status, "ready", "status");
      // `ready` may beat the socket's `open` event (PROTOCOL §2), so `connected` may be skipped.
      const path = transitions.map((t) => t.to);
      assert(
        JSON.stringify(path) === '["connecting","connected","ready"]' ||
          JSON.stringify(path) === '["connecting","ready"]',
        `transitions ${JSON.stringify(path)}`,
      );
      assertEq(transitions[0].from, "disconnected", "first transition's from");
      assertEq(transitions[0].attempt, 1, "first attempt");
      assert(typeof transitions[0].at === "number" && transitions[0].at > 0, "at is a performance.now() time");
      assertEq(lifecycle.at(-1), "ready", "onReady after onStateChange");
      assert(lifecycle.includes("state:ready"), "onStateChange saw ready");
      const me = await client.request("whoami");
      assert(typeof me.connection === "number", `whoami answers ${JSON.stringify(me)}`);
    });
  },

  async requestResponse(Client, env) {
    await withClient(Client, { url: env.server }, async (client) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      assertEq(await client.request("echo", { hello: "world" }, { timeoutMs: 2000 }), { hello: "world" }, "echo");
      assertEq(await client.request("echo"), undefined, "echo without data");
      const failed = await rejection(client.request("fail", { code: "NOT_FOUND", msg: "no such thing" }), "fail");
      assertError(failed, "ServerError", "NOT_FOUND", "fail");
      assertEq(failed.message, "no such thing", "server error message");
      const unknown = await rejection(client.request("no-such-method", 1), "unknown method");
      assertError(unknown, "ServerError", "UNIMPLEMENTED", "unknown method");
      // Many at once, answered out of order by sleep lengths, each to its own promise.
      const replies = await Promise.all(
        [30, 10, 20, 0].map((ms, i) => client.request("sleep", { ms }).then(() => i)),
      );
      assertEq(replies, [0, 1, 2, 3], "concurrent requests");
    });
  },

  async payloadRoundTrip(Client, env) {
    await withClient(Client, { url: env.server }, async (client) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const values = [
        null,
        true,
        false,
        0,
        -1,
        42,
        -0,
        1.5,
        -2.25,
        1e300,
        Number.MAX_SAFE_INTEGER,
        -Number.MAX_SAFE_INTEGER,
        2 ** 60, // beyond safe integers: a float
        Infinity,
        "",
        "héllo wörld ✓ 🐟",
        [],
        [1, "two", [3, [4]], null],
        {},
        { a: 1, nested: { b: [true, { c: "d" }] }, "": "empty key", "with space": 2 },
        new Uint8Array([0, 1, 2, 255]),
        new Uint8Array(0),
      ];
      for (const value of values) {
        assertEq(await client.request("echo", value), value, `echo ${JSON.stringify(value, replacer)}`);
      }
      // A "__proto__" key is an own property on the way back too, never the prototype.
      const proto = await client.request("echo", JSON.parse('{"__proto__": {"polluted": true}}'));
      assert(Object.getPrototypeOf(proto) === Object.prototype, "prototype untouched");
      assertEq(Object.getOwnPropertyDescriptor(proto, "__proto__")?.value, { polluted: true }, "own __proto__");
      assert(({}).polluted === undefined, "no pollution");
      const bytes = await client.request("echo", { blob: new Uint8Array([9, 8, 7]) });
      assert(bytes.blob instanceof Uint8Array, "bytes come back as Uint8Array");
      assertEq(await client.request("echo", new Uint16Array([1, 256]).buffer), new Uint8Array([1, 0, 0, 1]), "ArrayBuffer");
      assertEq(await client.request("echo", 2n ** 63n), 2n ** 63n, "u64 BigInt");
      assertEq(await client.request("echo", -(2n ** 64n)), -(2n ** 64n), "most negative CBOR integer");
      assertEq(await client.request("echo", 5n), 5, "small BigInt comes back as a number");
      assertEq(await client.request("echo", [undefined, 1]), [undefined, 1], "undefined in arrays");
      assertEq(await client.request("echo", { a: undefined, b: 1 }), { b: 1 }, "undefined properties are left out");
      const map = new Map([[1, "one"], ["two", 2]]);
      assertEq(await client.request("echo", map), map, "Map with a non-text key stays a Map");
      assertEq(await client.request("echo", new Map([["k", "v"]])), { k: "v" }, "Map with text keys: object");
      assertEq(await client.request("echo", new Set([1, 2])), [1, 2], "Set: array");
      // What cannot be encoded is refused before anything is sent.
      assertError(await rejection(client.request("echo", () => 1), "function"), "TypeError", undefined, "function");
      const cyclic = {};
      cyclic.self = cyclic;
      assertError(await rejection(client.request("echo", cyclic), "cyclic"), "TypeError", undefined, "cyclic");
      let deep = 1;
      for (let i = 0; i < 200; i++) deep = [deep];
      assertError(thrown(() => client.send("echo", deep), "deep"), "TypeError", undefined, "deep");
      let ok = 1;
      for (let i = 0; i < 128; i++) ok = [ok];
      assertEq(await client.request("echo", ok), ok, "128 levels are fine");
      assertError(await rejection(client.request("echo", 2n ** 64n), "BigInt"), "TypeError", undefined, "big BigInt");
    });
  },

  async requestTimeout(Client, env) {
    await withClient(Client, { url: env.server, requestTimeoutMs: 300 }, async (client) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const t0 = performance.now();
      const e = await rejection(client.request("sleep", { ms: 3000 }, { timeoutMs: 200 }), "sleep");
      const took = performance.now() - t0;
      assertError(e, "TimeoutError", "DEADLINE_EXCEEDED", "timeout");
      assert(took >= 190 && took < 1500, `timed out after ${took} ms`);
      // The default comes from requestTimeoutMs.
      const d = await rejection(client.request("sleep", { ms: 3000 }), "sleep default");
      assertError(d, "TimeoutError", "DEADLINE_EXCEEDED", "default timeout");
      // The connection is still fine.
      assertEq(await client.request("echo", 1), 1, "echo after timeouts");
    });
  },

  async abortSignal(Client, env) {
    await withClient(Client, { url: env.server }, async (client) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const controller = new AbortController();
      const pending = client.request("sleep", { ms: 3000 }, { signal: controller.signal });
      setTimeout(() => controller.abort(), 50);
      const t0 = performance.now();
      const e = await rejection(pending, "aborted sleep");
      assertError(e, "AbortError", "CANCELLED", "abort");
      assert(performance.now() - t0 < 1000, "aborted promptly");
      // Already aborted: rejected without sending.
      const early = await rejection(client.request("echo", 1, { signal: AbortSignal.abort() }), "pre-aborted");
      assertError(early, "AbortError", "CANCELLED", "pre-aborted");
      // A signal that never fires does not disturb a normal reply; aborting afterwards is harmless.
      const late = new AbortController();
      assertEq(await client.request("echo", 7, { signal: late.signal, timeoutMs: 2000 }), 7, "with signal");
      late.abort();
      assertEq(await client.request("echo", 8), 8, "after a late abort");
      // `request` never throws: a bad signal is a rejected promise naming the option.
      const bad = await rejection(client.request("echo", 1, { signal: 5 }), "bad signal");
      assertError(bad, "TypeError", undefined, "bad signal");
      assert(bad.message.includes("signal"), `names the option: ${bad.message}`);
      assertEq(await client.request("echo", 9, { signal: null }), 9, "signal: null is no signal (as for fetch)");
      const badTimeout = await rejection(client.request("echo", 1, { timeoutMs: -1 }), "bad timeoutMs");
      assertError(badTimeout, "TypeError", undefined, "bad timeoutMs");
      assert(badTimeout.message.includes("request options.timeoutMs"), `names it: ${badTimeout.message}`);
      // Aborting a request still in the offline queue: it ends at once and is never sent.
      await client.close();
      const queued = new AbortController();
      const q = client.request("echo", "never", { signal: queued.signal });
      queued.abort();
      assertError(await rejection(q, "queued"), "AbortError", "CANCELLED", "queued abort");
    });
  },

  async serverCloseReconnects(Client, env) {
    const events = [];
    const options = {
      url: env.server,
      reconnect: fast,
      lifecycle: {
        onDisconnect: (info) => events.push(["disconnect", info.code, info.reason, info.willReconnect]),
        onReconnecting: (t) => events.push(["reconnecting", t.attempt]),
        onReconnected: () => events.push(["reconnected"]),
      },
    };
    await withClient(Client, options, async (client, transitions) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const before = (await client.request("whoami")).connection;
      transitions.length = 0;
      const mark = 0;
      client.request("close", { code: 1012, reason: "restarting" }).catch(() => {});
      // Not `waitForStatus("reconnecting")`: full jitter may draw a zero delay, straight to `connecting`.
      await until(() => transitions.slice(mark).some((t) => t.from === "ready"), 5000, "the server's close");
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const after = (await client.request("whoami")).connection;
      assert(after !== before, "a new connection");
      assertEq(transitions[0].from, "ready", "left ready");
      assert(["reconnecting", "connecting"].includes(transitions[0].to), `then ${transitions[0].to}`);
      assertEq(transitions.at(-1).to, "ready", "back to ready");
      assertEq(events[0], ["disconnect", 1012, "restarting", true], "onDisconnect with the server's code");
      assert(events.some((e) => e[0] === "reconnected"), `onReconnected: ${JSON.stringify(events)}`);
    });
  },

  async offlineQueueFlushedInOrder(Client, env) {
    let down = false;
    const attempts = [];
    const options = {
      url: (attempt) => {
        attempts.push(attempt);
        return down ? DEAD : env.server;
      },
      reconnect: fast,
    };
    await withClient(Client, options, async (client, transitions) => {
      const got = [];
      client.subscribe("flush-order", (data, meta) => got.push([data, meta.seq]));
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      // The server goes away (close 1012 "service restart") and stays unreachable for a while.
      down = true;
      const downAt = transitions.length;
      const mark = downAt;
      client.request("close", { code: 1012, reason: "restart" }).catch(() => {});
      // Not `waitForStatus("reconnecting")`: full jitter may draw a zero delay, straight to `connecting`.
      await until(() => transitions.slice(mark).some((t) => t.from === "ready"), 5000, "the server's close");
      // Issued while down: everything waits in the offline queue.
      for (let i = 1; i <= 5; i++) client.publish("flush-order", { n: i });
      const echo = client.request("echo", "queued request", { timeoutMs: 10000 });
      await until(() => transitions.slice(downAt).filter((t) => t.to === "connecting").length >= 2, 5000, "failed attempts");
      assertEq(got, [], "nothing delivered while down");
      // The server is back.
      down = false;
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      assertEq(await echo, "queued request", "queued request answered after the flush");
      await until(() => got.length === 5, 3000, "5 events");
      assertEq(got.map(([d]) => d.n), [1, 2, 3, 4, 5], "published in order");
      const seqs = got.map(([, seq]) => seq);
      assert(seqs.every((s, i) => i === 0 || s === seqs[i - 1] + 1), `seq in order: ${seqs}`);
      assert(attempts.length >= 3, `attempts ${attempts}`);
    });
  },

  async subscriptionResumes(Client, env) {
    await withClient(Client, { url: env.server, reconnect: fast }, async (client, transitions) => {
      const got = [];
      const states = [];
      const unsubscribe = client.subscribe("room-resume", (data, meta) => got.push({ data, topic: meta.topic }), {
        onState: (state) => states.push(state),
      });
      assert(typeof unsubscribe === "function", "subscribe returns a function");
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      // Until the `sub` has been acknowledged. (Not a request sent after it: the server answers that one at once,
      // while the `sub` waits for its broker.)
      await until(() => states.length === 2, 3000, "the sub's acknowledgement");
      assertEq(states, ["pending", "live"], "the subscription's states");
      client.publish("room-resume", "before");
      await until(() => got.length === 1, 3000, "event before the reconnect");
      const mark = transitions.length;
      client.request("close", { code: 1001, reason: "going away" }).catch(() => {});
      // Not `waitForStatus("reconnecting")`: full jitter may draw a zero delay, straight to `connecting`.
      await until(() => transitions.slice(mark).some((t) => t.from === "ready"), 5000, "the server's close");
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      await until(() => states.length === 4, 3000, "the new sub's acknowledgement");
      assertEq(states, ["pending", "live", "pending", "live"], "pending while reconnecting, live again");
      // A second subscriber to the live topic hears its state at once; dropping it keeps the topic subscribed.
      const second = [];
      client.subscribe("room-resume", () => {}, { onState: (state) => second.push(state) })();
      assertEq(second, ["live"], "a later subscriber's first state");
      // Published by another client: proves the server knows the subscription again.
      const other = new Client({ url: env.server });
      other.start();
      await other.waitForStatus("ready", { timeoutMs: 5000 });
      other.publish("room-resume", "after");
      await until(() => got.length === 2, 3000, "event after the reconnect");
      assertEq(got, [{ data: "before", topic: "room-resume" }, { data: "after", topic: "room-resume" }], "events");
      unsubscribe();
      unsubscribe(); // idempotent
      await client.request("echo", 0);
      other.publish("room-resume", "unsubscribed");
      await other.request("echo", 0);
      await sleep(100);
      assertEq(got.length, 2, "nothing after unsubscribe");
      await other.close();
      other.free();
    });
  },

  async authFailureIsTerminal(Client, env) {
    const disconnects = [];
    const options = {
      url: env.authServer,
      token: "wrong",
      reconnect: fast,
      lifecycle: { onDisconnect: (info) => disconnects.push(info) },
    };
    await withClient(Client, options, async (client, transitions) => {
      client.start();
      await client.waitForStatus("disconnected", { timeoutMs: 5000 });
      const last = transitions.at(-1);
      assertEq(last.to, "disconnected", "terminal state");
      assertEq(last.reason, "auth-failed", "reason");
      assertEq(last.code, 4003, "close code");
      assert(last.message.length > 0, `the server's reason: ${last.message}`);
      await sleep(300);
      assertEq(client.status, "disconnected", "no retry");
      assertEq(transitions.filter((t) => t.to === "connecting").length, 1, "one attempt only");
      assertEq(disconnects.map((d) => [d.code, d.willReconnect]), [[4003, false]], "onDisconnect");
    });
    // The right token, from a provider called before every attempt, gets in.
    let calls = 0;
    const good = {
      url: env.authServer,
      getToken: async () => {
        calls += 1;
        await sleep(5);
        return "secret";
      },
    };
    await withClient(Client, good, async (client) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      assertEq((await client.request("whoami")).identity, "token-1", "identity");
      assertEq(calls, 1, "getToken called once per attempt");
    });
    // A provider that fails makes the attempt fail (and the next one retries).
    let failures = 0;
    const failing = {
      url: env.authServer,
      reconnect: fast,
      getToken: () => {
        failures += 1;
        if (failures < 3) throw new Error("token service down");
        return Promise.resolve("secret");
      },
    };
    await withClient(Client, failing, async (client) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      assertEq(failures, 3, "retried until the provider worked");
    });
  },

  async waitForStatus(Client, env) {
    await withClient(Client, { url: env.server }, async (client) => {
      await client.waitForStatus("disconnected"); // already there: at once
      const timedOut = await rejection(client.waitForStatus("ready", { timeoutMs: 100 }), "not started");
      assertError(timedOut, "TimeoutError", "DEADLINE_EXCEEDED", "waitForStatus timeout");
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const t0 = performance.now();
      const e = await rejection(client.waitForStatus("reconnecting", { timeoutMs: 150 }), "reconnecting");
      assertError(e, "TimeoutError", "DEADLINE_EXCEEDED", "timeout while ready");
      const took = performance.now() - t0;
      assert(took >= 140 && took < 1000, `timed out after ${took} ms`);
      const bad = thrown(() => client.waitForStatus("online"), "bad status");
      assertError(bad, "TypeError", undefined, "bad status");
      const badTimeout = thrown(() => client.waitForStatus("ready", { timeoutMs: 1.5 }), "bad timeoutMs");
      assertError(badTimeout, "TypeError", undefined, "bad timeoutMs");
      assert(badTimeout.message.includes("waitForStatus options.timeoutMs"), `names it: ${badTimeout.message}`);
      // A wait ended by close() rejects instead of hanging.
      const pending = client.waitForStatus("reconnecting");
      await client.close();
      assertError(await rejection(pending, "closed"), "ConnectionClosedError", "UNAVAILABLE", "closed wait");
    });
  },

  async fragmentation(Client, env) {
    // 1 KiB fragments out; the server fragments its 300 KB reply at its default 100 KiB threshold.
    await withClient(Client, { url: env.server, fragmentThreshold: 1024 }, async (client) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const big = new Uint8Array(300 * 1024);
      for (let i = 0; i < big.length; i++) big[i] = (i * 31 + 7) & 0xff;
      const reply = await client.request("echo", { big, tail: "end" }, { timeoutMs: 10000 });
      assert(reply.big instanceof Uint8Array, "bytes stay binary");
      assertEq(reply.big.length, big.length, "length");
      assert(reply.big.every((b, i) => b === big[i]), "same bytes");
      assertEq(reply.tail, "end", "rest of the map");
      const text = "x".repeat(5000);
      assertEq(await client.request("echo", text), text, "fragmented text");
    });
  },

  async closeLeavesNothing(Client, env) {
    // Count the timers and page listeners the client holds, through the globals it uses.
    const timers = new Set();
    const realSet = globalThis.setTimeout;
    const realClear = globalThis.clearTimeout;
    const listeners = new Map();
    const realAdd = window.addEventListener;
    const realRemove = window.removeEventListener;
    const realDocAdd = document.addEventListener;
    const realDocRemove = document.removeEventListener;
    let client;
    const transitionsAfterClose = [];
    let closed = false;
    try {
      globalThis.setTimeout = function (f, ms, ...rest) {
        const id = realSet.call(globalThis, (...a) => {
          timers.delete(id);
          f(...a);
        }, ms, ...rest);
        timers.add(id);
        return id;
      };
      globalThis.clearTimeout = function (id) {
        timers.delete(id);
        return realClear.call(globalThis, id);
      };
      const track = (target, add, remove) => {
        target.addEventListener = function (type, f, o) {
          listeners.set(type, (listeners.get(type) ?? 0) + 1);
          return add.call(this, type, f, o);
        };
        target.removeEventListener = function (type, f, o) {
          listeners.set(type, (listeners.get(type) ?? 0) - 1);
          return remove.call(this, type, f, o);
        };
      };
      track(window, realAdd, realRemove);
      track(document, realDocAdd, realDocRemove);

      client = new Client({
        url: env.server,
        keepaliveIntervalMs: 50,
        keepaliveTimeoutMs: 1000,
        reconnect: fast,
      });
      client.subscribeToTransitions((t) => {
        if (closed) transitionsAfterClose.push(t);
      });
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const slow = client.request("sleep", { ms: 2000 }, { timeoutMs: 5000 });
      await sleep(200); // keepalive pings go out meanwhile
      assert(timers.size >= 1, "a timer while ready");
      assert((listeners.get("online") ?? 0) === 1, `online listener: ${listeners.get("online")}`);
      assert((listeners.get("visibilitychange") ?? 0) === 1, "visibilitychange listener");
      await client.close();
      closed = true;
      assertEq(client.status, "disconnected", "status after close");
      assertError(await rejection(slow, "in flight at close"), "AbortError", "CANCELLED", "request at close");
      assertEq(timers.size, 0, "timers after close");
      for (const type of ["online", "offline", "visibilitychange"]) {
        assertEq(listeners.get(type) ?? 0, 0, `${type} listeners after close`);
      }
      await sleep(500);
      assertEq(transitionsAfterClose, [], "transitions after close");
      assertEq(timers.size, 0, "timers 500 ms after close");
      // It can start again, and close again.
      closed = false;
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      await client.close();
      assertEq(timers.size, 0, "timers after the second close");
    } finally {
      globalThis.setTimeout = realSet;
      globalThis.clearTimeout = realClear;
      window.addEventListener = realAdd;
      window.removeEventListener = realRemove;
      document.addEventListener = realDocAdd;
      document.removeEventListener = realDocRemove;
      client?.free();
    }
  },

  async freeClosesSocket(Client, env) {
    await withSocketSpy(async (sockets, RealWebSocket) => {
      const client = new Client({ url: env.server, keepaliveIntervalMs: 50 });
      const transitions = [];
      client.subscribeToTransitions((t) => transitions.push(t.to));
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const pending = client.request("sleep", { ms: 2000 });
      assertEq(sockets.length, 1, "one socket");
      assertEq(sockets[0].protocol, "sockeye.v1", "subprotocol");
      assertEq(sockets[0].binaryType, "arraybuffer", "binaryType");
      client.free();
      assert(sockets[0].readyState >= RealWebSocket.CLOSING, `readyState ${sockets[0].readyState} after free`);
      assertError(await rejection(pending, "pending at free"), "AbortError", "CANCELLED", "request at free");
      const seen = transitions.length;
      await sleep(300);
      assertEq(transitions.length, seen, "no callbacks after free");
      assertEq(sockets.length, 1, "no new socket after free");
      assertEq(sockets[0].readyState, RealWebSocket.CLOSED, "closed");
      // Methods of a freed client throw rather than acting.
      thrown(() => client.start(), "start after free");
    });
  },

  async browserAwareness(Client, env) {
    const options = { url: env.server, reconnect: { baseDelayMs: 20000, maxDelayMs: 30000, fullJitter: false } };
    await withClient(Client, options, async (client, transitions) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      // Offline: the core waits without burning attempts.
      window.dispatchEvent(new Event("offline"));
      client.request("close", { code: 1012, reason: "restart" }).catch(() => {});
      await client.waitForStatus("reconnecting", { timeoutMs: 5000 });
      const mark = transitions.length;
      await sleep(300);
      assertEq(transitions.length, mark, "no attempt while offline");
      // Online: the 20 s backoff is cut short.
      const t0 = performance.now();
      window.dispatchEvent(new Event("online"));
      await client.waitForStatus("ready", { timeoutMs: 3000 });
      assert(performance.now() - t0 < 3000, "reconnected at once");
      // While online, an `online` event during a backoff starts the attempt at once too.
      client.request("close", { code: 1012, reason: "restart" }).catch(() => {});
      await client.waitForStatus("reconnecting", { timeoutMs: 5000 });
      window.dispatchEvent(new Event("online"));
      await client.waitForStatus("ready", { timeoutMs: 3000 });
      // Becoming visible after being hidden does the same (document.hidden is faked: headless pages stay visible).
      let hidden = false;
      Object.defineProperty(document, "hidden", { configurable: true, get: () => hidden });
      try {
        hidden = true;
        document.dispatchEvent(new Event("visibilitychange"));
        client.request("close", { code: 1012, reason: "restart" }).catch(() => {});
        await client.waitForStatus("reconnecting", { timeoutMs: 5000 });
        await sleep(100);
        assertEq(client.status, "reconnecting", "still waiting out the 20 s backoff");
        hidden = false;
        document.dispatchEvent(new Event("visibilitychange"));
        await client.waitForStatus("ready", { timeoutMs: 3000 });
      } finally {
        delete document.hidden;
      }
    });
  },

  async invalidOptions(Client, env) {
    const cases = [
      [undefined, "options"],
      [{}, "options.url"],
      [{ url: 42 }, "options.url"],
      [{ url: "http://example.com/" }, "options.url"],
      [{ url: env.server, token: 5 }, "options.token"],
      [{ url: env.server, token: "a", getToken: () => "b" }, "options.getToken"],
      [{ url: env.server, getToken: "nope" }, "options.getToken"],
      [{ url: env.server, reconnect: { maxAttempts: 0 } }, "options.reconnect.maxAttempts"],
      [{ url: env.server, reconnect: { maxAttempts: 1.5 } }, "options.reconnect.maxAttempts"],
      [{ url: env.server, reconnect: { baseDelayMs: 5000, maxDelayMs: 1000 } }, "options.reconnect.baseDelayMs"],
      [{ url: env.server, reconnect: { enabled: "yes" } }, "options.reconnect.enabled"],
      [{ url: env.server, reconnect: { retries: 3 } }, "options.reconnect.retries"],
      [{ url: env.server, keepaliveIntervalMs: -1 }, "options.keepaliveIntervalMs"],
      [{ url: env.server, keepaliveTimeoutMs: 0 }, "options.keepaliveTimeoutMs"],
      [{ url: env.server, connectTimeoutMs: "10" }, "options.connectTimeoutMs"],
      [{ url: env.server, requestTimeoutMs: 0 }, "options.requestTimeoutMs"],
      [{ url: env.server, queue: { maxMessages: -5 } }, "options.queue.maxMessages"],
      [{ url: env.server, queue: 3 }, "options.queue"],
      [{ url: env.server, fragmentThreshold: NaN }, "options.fragmentThreshold"],
      [{ url: env.server, lifecycle: { onReady: 1 } }, "options.lifecycle.onReady"],
      [{ url: env.server, lifecycle: { onready: () => {} } }, "options.lifecycle.onready"],
      [{ url: env.server, handlers: { add: 1 } }, "options.handlers.add"],
      [{ url: env.server, reconect: {} }, "options.reconect"],
    ];
    for (const [options, name] of cases) {
      const e = thrown(() => new Client(options), name);
      assertError(e, "TypeError", undefined, name);
      assert(e.message.includes(name), `message names ${name}: ${e.message}`);
    }
    // Everything from the example is accepted.
    const client = new Client({
      url: env.server,
      token: "t",
      reconnect: { enabled: true, maxAttempts: 10, baseDelayMs: 1000, maxDelayMs: 30000, fullJitter: true },
      keepaliveIntervalMs: 30000,
      keepaliveTimeoutMs: 10000,
      connectTimeoutMs: 10000,
      queue: { maxMessages: 1000, maxBytes: 1 << 20 },
      fragmentThreshold: 102400,
      requestTimeoutMs: 30000,
      lifecycle: {
        onStateChange() {},
        onDisconnect() {},
        onReconnecting() {},
        onReconnected() {},
        onReady() {},
      },
    });
    client.free();
    new Client({ url: () => env.server, reconnect: false }).free();
    new Client({ url: env.server, reconnect: { maxAttempts: Infinity } }).free();
  },

  async queueFull(Client, env) {
    await withClient(Client, { url: env.server, queue: { maxMessages: 2, maxBytes: 1 << 20 } }, async (client) => {
      client.send("a", 1);
      client.publish("t", 2);
      const e = thrown(() => client.send("c", 3), "third send");
      assertError(e, "QueueFullError", "RESOURCE_EXHAUSTED", "queue full");
      const r = await rejection(client.request("echo", 4), "queued request");
      assertError(r, "QueueFullError", "RESOURCE_EXHAUSTED", "request into a full queue");
      const t = thrown(() => client.publish("$reserved", 1), "bad topic");
      assertError(t, "SockeyeError", "INVALID_ARGUMENT", "bad topic");
      const s = thrown(() => client.subscribe("", () => {}), "empty topic");
      assertError(s, "SockeyeError", "INVALID_ARGUMENT", "empty topic");
      assert(thrown(() => client.subscribe("x", 5), "no handler") instanceof TypeError, "handler must be a function");
      const onError = thrown(() => client.subscribe("x", () => {}, 5), "bad onError");
      assertError(onError, "TypeError", undefined, "bad onError");
      assert(onError.message.includes("onError"), `names onError: ${onError.message}`);
      client.subscribe("x", () => {}, null)();
      client.subscribe("x", () => {}, undefined)();
    });
  },

  async serverMessages(Client, env) {
    await withClient(Client, { url: env.server }, async (client) => {
      const named = [];
      const all = [];
      const off = client.onMessage("echo", (data, meta) => named.push([meta.name, data]));
      client.onMessage("*", (data, meta) => all.push(meta.name));
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      client.send("echo", { hi: [1, 2] });
      await until(() => named.length === 1, 3000, "the echoed msg");
      assertEq(named, [["echo", { hi: [1, 2] }]], "msg data");
      assertEq(all, ["echo"], "wildcard");
      off();
      client.send("echo", 2);
      await until(() => all.length === 2, 3000, "second msg");
      assertEq(named.length, 1, "removed handler not called");
      // A callback that throws does not break the client.
      client.onMessage("echo", () => {
        throw new Error("app bug");
      });
      client.send("echo", 3);
      await until(() => all.length === 3, 3000, "third msg");
      assertEq(await client.request("echo", "still fine"), "still fine", "after a throwing callback");
    });
  },
};

const extra = {
  async serverErrorsAreServerErrors(Client, env) {
    await withClient(Client, { url: env.server }, async (client) => {
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      // A server `err` is a ServerError whatever its code, even one a local failure would also use.
      for (const code of ["UNAVAILABLE", "DEADLINE_EXCEEDED", "CANCELLED", "RESOURCE_EXHAUSTED"]) {
        const e = await rejection(client.request("fail", { code, msg: "x" }), `fail ${code}`);
        assertError(e, "ServerError", code, `server err ${code}`);
        assert(!(e instanceof errors.ConnectionClosedError), `${code}: not a ConnectionClosedError`);
        assert(!(e instanceof errors.TimeoutError), `${code}: not a TimeoutError`);
        assertEq(e.message, "x", `${code}: the server's message`);
      }
      assertEq(client.status, "ready", "the connection is unaffected");
    });
  },

  async reentrantCallbacks(Client, env) {
    const seen = [];
    let client;
    let freed = false;
    let afterFree = 0;
    const options = {
      url: env.server,
      lifecycle: {
        onStateChange: (t) => {
          if (freed) return;
          seen.push(`${t.to}:${client.status}`);
          if (t.to === "ready") {
            client.send("echo", "from onStateChange");
            client.request("echo", "req from onStateChange").then((v) => seen.push(v));
            client.waitForStatus("ready").then(() => seen.push("waited"));
          }
        },
        onReady: () => {
          if (freed) afterFree++;
          else client.publish("reentrant", "from onReady");
        },
      },
    };
    client = new Client(options);
    try {
      client.onMessage("echo", (data) => seen.push(`msg:${data}`));
      const unsubscribe = client.subscribe("reentrant", (data) => {
        seen.push(`evt:${data}`);
        unsubscribe();
        client.publish("reentrant", "after unsubscribe");
        client.request("echo", "req from handler").then((v) => seen.push(v));
      });
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      await until(() => seen.includes("req from handler"), 3000, `callbacks ran: ${JSON.stringify(seen)}`);
      for (const s of ["msg:from onStateChange", "req from onStateChange", "waited", "evt:from onReady"]) {
        assert(seen.includes(s), `${s} in ${JSON.stringify(seen)}`);
      }
      assertEq(seen.filter((s) => s.startsWith("evt:")).length, 1, "unsubscribed from inside its handler");
      // close() and start() from inside callbacks.
      const closing = [];
      const unsub = client.subscribeToTransitions((t) => {
        closing.push(t.to);
        if (t.to === "connecting" && closing.length === 2) client.close();
      });
      await client.close();
      client.start();
      await client.waitForStatus("disconnected", { timeoutMs: 2000 });
      await sleep(200);
      assertEq(client.status, "disconnected", "closed from inside onStateChange");
      unsub();
      // free() from inside a callback: no callback runs after it, not even the rest of that transition's.
      const free = client.subscribeToTransitions((t) => {
        if (t.to === "ready") {
          client.free();
          freed = true;
        }
      });
      client.subscribeToTransitions(() => freed && afterFree++);
      client.start();
      await sleep(500);
      assertEq(afterFree, 0, "callbacks after free()");
      free();
    } finally {
      try { client.free(); } catch (_) {}
    }
  },

  async encodeFailuresReject(Client, env) {
    await withSocketSpy(async (sockets, RealWebSocket) => {
      const client = new Client({ url: env.server });
      client.start();
      await client.waitForStatus("ready", { timeoutMs: 5000 });
      const bad = { get boom() { throw new Error("getter threw"); } };
      let p;
      try {
        p = client.request("echo", bad);
      } catch (e) {
        throw new Error(`request threw synchronously: ${e}`);
      }
      const e = await rejection(p, "throwing getter");
      assert(e instanceof Error, `rejected with ${e}`);
      assertEq(e.message, "getter threw", "the getter's error");
      const t = thrown(() => client.send("echo", bad), "send with a throwing getter");
      assertEq(t.message, "getter threw", "send throws the getter's error");
      const items = [1];
      Object.defineProperty(items, 0, { get() { throw new Error("index getter threw"); } });
      assertEq((await rejection(client.request("echo", [items]), "index getter")).message, "index getter threw", "index");
      const trap = new Proxy({}, { ownKeys() { throw new Error("trap threw"); } });
      assertEq((await rejection(client.request("echo", { trap }), "proxy")).message, "trap threw", "proxy trap");
      // A transferred (detached) buffer, or a view of one, encodes as empty bytes rather than throwing.
      const buffer = new ArrayBuffer(8);
      const view = new Uint8Array(buffer, 2, 4);
      structuredClone(buffer, { transfer: [buffer] });
      assertEq(await client.request("echo", buffer), new Uint8Array(0), "detached buffer");
      assertEq(await client.request("echo", view), new Uint8Array(0), "view of a detached buffer");
      assertEq(await client.request("echo", 1), 1, "still works");
      client.free();
      await sleep(100);
      assertEq(sockets[0].readyState, RealWebSocket.CLOSED, "freed client's socket closed");
    });
  },

  async appWebSocketCallsBack(Client, env) {
    // A `WebSocket` of the application's (a wrapper, a test double) whose constructor calls into the client.
    const statuses = [];
    let client;
    let closeInside = false;
    const hooks = {
      before: () => statuses.push(client.status),
      after: () => closeInside && client.close(),
    };
    await withSocketSpy(async (sockets, RealWebSocket) => {
      client = new Client({ url: env.server, reconnect: fast });
      try {
        client.start();
        await client.waitForStatus("ready", { timeoutMs: 5000 });
        assertEq(statuses, ["connecting"], "status read inside the constructor");
        // close() from inside the next attempt's constructor: that socket is closed, not kept.
        closeInside = true;
        client.request("close", { code: 1012, reason: "restart" }).catch(() => {});
        await until(() => sockets.length === 2, 5000, "the second attempt");
        await sleep(100);
        assertEq(client.status, "disconnected", "closed from the constructor");
        assert(sockets[1].readyState >= RealWebSocket.CLOSING, `second socket readyState ${sockets[1].readyState}`);
        closeInside = false;
        client.start();
        await client.waitForStatus("ready", { timeoutMs: 5000 });
        assertEq(await client.request("echo", 1), 1, "works after");
      } finally {
        await client.close();
        client.free();
      }
    }, hooks);
  },

  // The backoff timer, an `AbortSignal` and an unsubscribe function call into the client through one closure:
  // calling the last two from a callback the timer runs works (wasm-bindgen refuses to re-enter an `FnMut` one).
  async callbacksFromTheTimerMayUnsubscribeAndAbort(Client) {
    const reconnect = { baseDelayMs: 10, maxDelayMs: 20, fullJitter: false, maxAttempts: 5 };
    // Port 1 on loopback: refused at once, so the second attempt waits for the backoff timer.
    await withClient(Client, { url: "ws://127.0.0.1:1/ws", reconnect }, async (client) => {
      const unsubscribe = client.subscribe("timer-reentry", () => {});
      const controller = new AbortController();
      const queued = client.request("echo", 1, { signal: controller.signal });
      const errors = [];
      let done = false;
      client.subscribeToTransitions((t) => {
        if (done || t.to !== "connecting" || t.attempt !== 2) return;
        done = true;
        try {
          unsubscribe();
          controller.abort();
        } catch (e) {
          errors.push(e);
        }
      });
      client.start();
      await until(() => done, 5000, "the second attempt, started by the backoff timer");
      assertEq(errors.map(String), [], "calls from the timer's callback");
      assertError(await rejection(queued, "aborted"), "AbortError", "CANCELLED", "aborted from the timer's callback");
    });
  },
};
Object.assign(scenarios, extra);

// PROTOCOL §9: resume without gaps, losses reported through `onGap`, acknowledged publish. Topics are unique per
// run: the test servers keep each topic's history for the life of their process.
const uniqueTopic = (name) => `${name}-${Date.now()}-${Math.floor(Math.random() * 1e9)}`;

/** A started, ready client that publishes (acknowledged) for a scenario. */
async function publisher(Client, env) {
  const client = new Client({ url: env.server });
  client.start();
  await client.waitForStatus("ready", { timeoutMs: 5000 });
  return client;
}

/**
 * A client subscribed to a fresh topic, recording its events and `onGap`/`onResumed` calls, which a scenario can
 * keep away from the server (`away(true)`: it is kicked off and every attempt goes to a dead port) while another
 * client publishes.
 */
async function resumeScenario(Client, env, body) {
  let down = false;
  const options = { url: () => (down ? DEAD : env.server), reconnect: fast };
  await withClient(Client, options, async (client, transitions) => {
    const topic = uniqueTopic("resume");
    const seen = { events: [], gaps: [], resumed: [] };
    client.subscribe(topic, (data, meta) => seen.events.push({ data, ...meta }), {
      onGap: (info) => seen.gaps.push(info),
      onResumed: (info) => seen.resumed.push(info),
    });
    client.start();
    await client.waitForStatus("ready", { timeoutMs: 5000 });
    await client.request("echo", 0); // answered after the `sub`: the subscription is acknowledged
    const other = await publisher(Client, env);
    const away = async (gone) => {
      down = gone;
      if (gone) {
        const mark = transitions.length;
        client.request("close", { code: 1012, reason: "restart" }).catch(() => {});
        await until(() => transitions.slice(mark).some((t) => t.from === "ready"), 5000, "the server's close");
      } else {
        await client.waitForStatus("ready", { timeoutMs: 5000 });
      }
    };
    try {
      await body({ client, other, topic, seen, away });
    } finally {
      await other.close();
      other.free();
    }
  });
}

const resume = {
  async resumeDeliversEveryMissedEventOnce(Client, env) {
    await resumeScenario(Client, env, async ({ other, topic, seen, away }) => {
      const first = await other.publish(topic, 0, { ack: true });
      assertEq(Object.keys(first).sort(), ["ep", "seq"], "an acknowledged publish resolves to { ep, seq }");
      await until(() => seen.events.length === 1, 3000, "the first event");
      assertEq(seen.events[0], { data: 0, topic, seq: first.seq, ep: first.ep }, "handler meta");
      await away(true);
      // Published while the client is away, some concurrently: all stored before it comes back.
      const stored = await Promise.all(Array.from({ length: 20 }, (_, i) => other.publish(topic, i + 1, { ack: true })));
      assertEq(stored.map((s) => s.ep), stored.map(() => first.ep), "one epoch");
      await away(false);
      await until(() => seen.resumed.length === 1, 5000, "onResumed");
      assertEq(seen.resumed, [{ topic, replayed: 20 }], "resumed with every missed event replayed");
      await other.publish(topic, 21, { ack: true });
      await until(() => seen.events.length === 22, 5000, "the live event after the replay");
      const seqs = seen.events.map((e) => e.seq);
      assertEq(seqs, seqs.map((_, i) => first.seq + i), "every seq exactly once, in order");
      assertEq(new Set(seen.events.map((e) => e.data)).size, 22, "every event once");
      assertEq(seen.gaps, [], "nothing lost");
    });
  },

  async resumeReportsAGapWhenHistoryIsTooShort(Client, env) {
    await resumeScenario(Client, env, async ({ other, topic, seen, away }) => {
      const first = await other.publish(topic, "first", { ack: true });
      await until(() => seen.events.length === 1, 3000, "the first event");
      await away(true);
      // More than the server's history keeps per topic (1000 by default): the oldest missed ones are gone.
      const count = 1100;
      for (let i = 1; i < count; i++) other.publish(topic, i);
      const last = await other.publish(topic, count, { ack: true, timeoutMs: 20000 });
      assertEq(last.seq, first.seq + count, "the server numbered every event");
      await away(false);
      await until(() => seen.gaps.length === 1, 5000, "onGap");
      assertEq(seen.gaps, [{ topic, from: first.seq + 1, to: last.seq }], "the gap names exactly the lost events");
      assertEq(seen.resumed, [], "not resumed: events were lost");
      await other.publish(topic, "live", { ack: true });
      await until(() => seen.events.length === 2, 3000, "the live event");
      assertEq(seen.events.map((e) => [e.data, e.seq]), [["first", first.seq], ["live", last.seq + 1]], "events");
    });
  },

  async subscribeAndPublishOptions(Client, env) {
    await withClient(Client, { url: env.server, requestTimeoutMs: 60000 }, async (client) => {
      const bad = (fn, what, needle) => {
        const e = thrown(fn, what);
        assertError(e, "TypeError", undefined, what);
        assert(e.message.includes(needle), `${what} names ${needle}: ${e.message}`);
      };
      bad(() => client.subscribe("x", () => {}, { onGap: 5 }), "onGap not a function", "onGap");
      bad(() => client.subscribe("x", () => {}, { onResumed: "no" }), "onResumed not a function", "onResumed");
      bad(() => client.subscribe("x", () => {}, { onGaps: () => {} }), "unknown option", "onGaps");
      bad(() => client.publish("x", 1, { ack: "yes" }), "ack not a boolean", "ack");
      client.subscribe("x", () => {}, { onError: () => {}, onGap: () => {}, onResumed: () => {} })();
      client.subscribe("x", () => {}, {})();
      assertEq(client.publish("x", 1), undefined, "fire-and-forget returns nothing");
      assertEq(client.publish("x", 1, { ack: false }), undefined, "ack: false is fire-and-forget");
      // Not started: an acknowledged publish waits in the offline queue, under its own deadline.
      const late = await rejection(client.publish("x", 1, { ack: true, timeoutMs: 50 }), "queued past its deadline");
      assertError(late, "TimeoutError", "DEADLINE_EXCEEDED", "acknowledged publish timeout");
      const reserved = await rejection(client.publish("$x", 1, { ack: true }), "reserved topic");
      assertError(reserved, "SockeyeError", "INVALID_ARGUMENT", "reserved topic");
      // `{ timeoutMs, signal }` are checked as `request`'s are, named as the publish's.
      const badSignal = await rejection(client.publish("x", 1, { ack: true, signal: 5 }), "bad signal");
      assertError(badSignal, "TypeError", undefined, "signal not an AbortSignal");
      assert(badSignal.message.startsWith("publish options.signal"), `names the option: ${badSignal.message}`);
      const badTimeout = await rejection(client.publish("x", 1, { ack: true, timeoutMs: -1 }), "bad timeoutMs");
      assert(badTimeout.message.startsWith("publish options.timeoutMs"), `names the option: ${badTimeout.message}`);
      const controller = new AbortController();
      const aborted = client.publish("x", 1, { ack: true, signal: controller.signal });
      controller.abort();
      assertError(await rejection(aborted, "aborted"), "AbortError", "CANCELLED", "aborted publish");
      const closed = client.publish("x", 1, { ack: true });
      await client.close();
      assertError(await rejection(closed, "closed"), "AbortError", "CANCELLED", "publish cut off by close()");
    });
  },
};
Object.assign(scenarios, resume);

export function runScenario(name, Client, env) {
  const scenario = scenarios[name];
  if (!scenario) return Promise.reject(new Error(`no scenario ${name}`));
  return scenario(Client, env);
}
