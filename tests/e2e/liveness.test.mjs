// The browser client as a server sees it, in Debian's headless Chromium: close codes on refusal, and the probe a
// frozen page sends as it resumes. The server is a scripted one (raw-server.mjs) that records every frame.
//
//   node --test tests/e2e/liveness.test.mjs      (client-wasm/pkg built first: scripts/build-npm.sh web)
//
// Chromium is launched here and driven over the DevTools protocol on a pipe, not through Playwright: Playwright
// turns focus emulation on for every page it attaches to (also over connectOverCDP), and a page with focus
// emulation on is never hidden, so Page.setWebLifecycleState("frozen") leaves it running (checked with Debian's
// Chromium: no freeze or resume event fires).
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromiumPath, chromiumArgs } from "./chromium.mjs";
import { startRawServer } from "./raw-server.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const pkgDir = path.resolve(process.env.SOCKEYE_PKG_DIR ?? path.join(root, "client-wasm/pkg"));
let chrome;
let profile;
let cdp;
let session;
let server;

/** Waits for `predicate()` to hold, polling every 10 ms, for at most `ms`. */
async function until(predicate, ms, what) {
  const deadline = Date.now() + ms;
  while (!(await predicate())) {
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** The DevTools protocol over Chromium's --remote-debugging-pipe: JSON messages ended by a NUL byte. */
class Cdp {
  constructor(writable, readable) {
    this.writable = writable;
    this.nextId = 0;
    this.pending = new Map();
    let buffered = "";
    readable.on("data", (chunk) => {
      buffered += chunk.toString("utf8");
      let end;
      while ((end = buffered.indexOf("\0")) >= 0) {
        const message = JSON.parse(buffered.slice(0, end));
        buffered = buffered.slice(end + 1);
        const waiter = this.pending.get(message.id);
        if (!waiter) continue; // an event
        this.pending.delete(message.id);
        message.error ? waiter.reject(new Error(`${waiter.method}: ${message.error.message}`)) : waiter.resolve(message.result);
      }
    });
  }

  send(method, params = {}, sessionId = undefined) {
    const id = ++this.nextId;
    return new Promise((resolve, reject) => {
      this.pending.set(id, { resolve, reject, method });
      this.writable.write(`${JSON.stringify({ id, method, params, sessionId })}\0`);
    });
  }
}

/** Evaluates `expression` in the page (awaiting a promise); returns its value or throws the page's exception. */
async function evaluate(expression) {
  const { result, exceptionDetails } = await cdp.send(
    "Runtime.evaluate",
    { expression, awaitPromise: true, returnByValue: true },
    session,
  );
  if (exceptionDetails) throw new Error(`in the page: ${exceptionDetails.exception?.description ?? exceptionDetails.text}`);
  return result.value;
}

before(async () => {
  assert.ok(existsSync(path.join(pkgDir, "sockeye.js")), `${pkgDir} holds the built package (scripts/build-npm.sh web)`);
  server = await startRawServer(pkgDir);
  profile = mkdtempSync(path.join(tmpdir(), "sockeye-chromium-"));
  chrome = spawn(
    chromiumPath,
    ["--headless", "--remote-debugging-pipe", `--user-data-dir=${profile}`, ...chromiumArgs, "about:blank"],
    // Its own process group, so the after hook ends Chromium's helper processes with it.
    { stdio: ["ignore", "ignore", "ignore", "pipe", "pipe"], detached: true },
  );
  cdp = new Cdp(chrome.stdio[3], chrome.stdio[4]);
  let page;
  await until(
    async () => (page = (await cdp.send("Target.getTargets")).targetInfos.find((t) => t.type === "page")),
    10_000,
    "Chromium's first tab",
  );
  ({ sessionId: session } = await cdp.send("Target.attachToTarget", { targetId: page.targetId, flatten: true }));
});

after(async () => {
  if (chrome && chrome.exitCode === null) {
    const exited = new Promise((resolve) => chrome.once("exit", resolve));
    chrome.kill("SIGTERM");
    await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 5_000))]);
    if (chrome.exitCode === null) chrome.kill("SIGKILL");
  }
  if (chrome) {
    try {
      process.kill(-chrome.pid, "SIGKILL"); // helpers left in the group (renderer, zygote, crashpad)
    } catch {
      // none left
    }
  }
  await server?.close();
  // Chromium's helper processes may still be writing the profile for a moment after the browser exits: retry
  // (rmSync retries ENOTEMPTY/EBUSY), and never let cleanup fail the run or leave it hanging.
  try {
    if (profile) rmSync(profile, { recursive: true, force: true, maxRetries: 20, retryDelay: 100 });
  } catch (error) {
    console.warn(`could not remove ${profile}: ${error.message}`);
  }
});

/** The tab, on the test page with the package loaded. */
async function openPage() {
  await cdp.send("Page.navigate", { url: server.url }, session);
  await until(() => evaluate("window.loaded === true"), 10_000, "the package to load");
}

/** Starts a client in the page against the raw server; resolves with its peer once it is `ready`. */
async function startClient(options = {}) {
  const before = server.peers.length;
  const config = JSON.stringify({ url: server.wsUrl, reconnect: false, ...options });
  await evaluate(`(async () => {
    window.client = new window.Client(${config});
    window.client.start();
    await window.client.waitForStatus("ready", { timeoutMs: 5000 });
  })()`);
  assert.equal(server.peers.length, before + 1, "one socket for the client");
  return server.peers.at(-1);
}

test("a refused frame quoted with long non-ASCII text closes with 4004 as the server sees it", async () => {
  await openPage();
  const peer = await startClient();
  // 40 emoji: quoted in the close reason they would be 152 bytes, more than a close frame carries; a browser's
  // close(code, reason) throws on that, and a bare close() is 1005 at the server.
  peer.sendText("🎉".repeat(40));
  await until(() => peer.close !== null, 5_000, "the client's close frame");
  assert.equal(peer.close.code, 4004, `close reason ${JSON.stringify(peer.close.reason)}`);
  assert.ok(Buffer.byteLength(peer.close.reason) <= 123, peer.close.reason);
  assert.match(peer.close.reason, /^unexpected text frame "🎉/);
  assert.equal(await evaluate("window.client.status"), "disconnected");
});

test("a page resumed after being frozen probes its connection with ping at once", async () => {
  await openPage();
  await evaluate(`window.lifecycle = [];
    for (const kind of ["freeze", "resume"]) document.addEventListener(kind, () => window.lifecycle.push(kind));`);
  // No keepalive ping falls within the test: the only ping is the probe on resume.
  const peer = await startClient({ keepaliveIntervalMs: 600_000 });
  await cdp.send("Page.setWebLifecycleState", { state: "frozen" }, session);
  await new Promise((resolve) => setTimeout(resolve, 500));
  assert.deepEqual(peer.texts(), [], "nothing sent while ready and frozen");
  await cdp.send("Page.setWebLifecycleState", { state: "active" }, session);
  // Chromium closes a frozen page's WebSocket right after it resumes: the probe must beat that.
  await until(() => peer.texts().includes("ping") || peer.socket.destroyed, 2_000, "the probe or the end of the socket");
  assert.deepEqual(await evaluate("window.lifecycle"), ["freeze", "resume"], "the page was frozen and resumed");
  assert.deepEqual(peer.texts(), ["ping"], "the probe went out as the page resumed");
});
