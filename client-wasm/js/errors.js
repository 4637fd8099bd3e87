// Error classes of the `@sockeye/client` package, constructed from Rust (src/errors.rs) and re-exported from the
// package entry by scripts/build-npm.sh. Every error has `code`, one of PROTOCOL.md §4's error codes.
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
