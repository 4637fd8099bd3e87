// What both builds of the installed package must do once their .wasm is instantiated: the exports a user imports,
// and calls that run the .wasm (option checking, the topic rule) and raise the package's own error classes.
import assert from "node:assert/strict";

export function checkBuild(sockeye) {
  const { Client, SockeyeError, TimeoutError, ServerError, ConnectionClosedError, QueueFullError, AbortError } =
    sockeye;
  assert.equal(typeof Client, "function", "Client is exported");
  for (const [cls, name] of [
    [TimeoutError, "TimeoutError"],
    [ServerError, "ServerError"],
    [ConnectionClosedError, "ConnectionClosedError"],
    [QueueFullError, "QueueFullError"],
    [AbortError, "AbortError"],
  ]) {
    assert.equal(typeof cls, "function", `${name} is exported`);
    assert.ok(cls.prototype instanceof SockeyeError, `${name} extends SockeyeError`);
  }
  assert.ok(SockeyeError.prototype instanceof Error);

  const client = new Client({ url: "ws://127.0.0.1:9/ws", reconnect: { maxAttempts: 3 } });
  assert.equal(client.status, "disconnected");
  // The .wasm refuses a topic the protocol forbids with the package's own error class (from its JS snippet).
  assert.throws(
    () => client.publish("$system", { text: "hi" }),
    (e) => e instanceof SockeyeError && e.code === "INVALID_ARGUMENT",
  );
  client.free();

  assert.throws(() => new Client({ url: "ws://127.0.0.1:9/ws", reconnect: { maxAttempts: -1 } }), {
    name: "TypeError",
    message: /reconnect\.maxAttempts/,
  });
  assert.throws(() => new Client({ url: "ws://127.0.0.1:9/ws", reconect: true }), {
    name: "TypeError",
    message: /reconect/,
  });
}
