// The browser benchmark's page side (run.mjs drives it): `client.request` round trips per second with a fixed
// number in flight, for the wasm package and for a plain-JS client that sends the same CBOR frames on a raw
// `WebSocket`, against the same server, in the same page. Each run is bounded by its request count and by a
// deadline (a run that misses it rejects).
import init, { Client } from "/client-wasm/pkg/sockeye.js";

// Keeps `inflight` requests going until `total` have been answered; resolves with round trips per second.
function pump(request, total, inflight, deadlineMs) {
  return new Promise((resolve, reject) => {
    let sent = 0;
    let done = 0;
    const t0 = performance.now();
    const timer = setTimeout(() => reject(new Error(`run not done in ${deadlineMs} ms (${done}/${total})`)), deadlineMs);
    const next = () => {
      sent++;
      request().then(() => {
        done++;
        if (done === total) {
          clearTimeout(timer);
          resolve((total * 1000) / (performance.now() - t0));
        } else if (sent < total) next();
      }, reject);
    };
    for (let i = 0; i < Math.min(inflight, total); i++) next();
  });
}

async function wasmRun(url, payload, total, inflight, deadlineMs) {
  const client = new Client({ url, reconnect: false });
  try {
    client.start();
    await client.waitForStatus("ready", { timeoutMs: 5000 });
    return await pump(() => client.request("echo", payload), total, inflight, deadlineMs);
  } finally {
    await client.close();
    client.free();
  }
}

// ---- The plain-JS client: PROTOCOL.md frames written and read by hand, one promise per request. ----

const utf8 = new TextEncoder();

// A CBOR item header (major type, argument up to 2^32 - 1).
function head(out, major, n) {
  major <<= 5;
  if (n < 24) out.push(major | n);
  else if (n < 0x100) out.push(major | 24, n);
  else if (n < 0x10000) out.push(major | 25, n >> 8, n & 0xff);
  else out.push(major | 26, n >>> 24, (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff);
}

// Frame kind 0x00 (COMPLETE) + the envelope `{t: "req", id, m: method, d: bytes}`, keys in the order the wasm
// client writes them.
function requestFrame(id, method, bytes) {
  const out = [0x00];
  head(out, 5, 4);
  for (const [key, value] of [["t", "req"], ["id", id], ["m", method], ["d", bytes]]) {
    const k = utf8.encode(key);
    head(out, 3, k.length);
    out.push(...k);
    if (typeof value === "number") head(out, 0, value);
    else {
      const v = typeof value === "string" ? utf8.encode(value) : value;
      head(out, typeof value === "string" ? 3 : 2, v.length);
      for (const b of v) out.push(b);
    }
  }
  return new Uint8Array(out);
}

// `{id, d}` of a `res` frame: reads the map's text keys and uint, text or byte-string values.
function readReply(frame) {
  let pos = 1;
  const arg = () => {
    const info = frame[pos++] & 31;
    if (info < 24) return info;
    let n = 0;
    for (let i = 0; i < 1 << (info - 24); i++) n = n * 256 + frame[pos++];
    return n;
  };
  const item = () => {
    const major = frame[pos] >> 5;
    const n = arg();
    if (major === 0) return n;
    if (major === 2 || major === 3) return frame.subarray((pos += n) - n, pos);
    throw new Error(`unexpected CBOR major type ${major} in a reply`);
  };
  const reply = {};
  for (let entries = arg(); entries > 0; entries--) {
    const key = String.fromCharCode(...item());
    reply[key] = item();
  }
  return reply;
}

async function rawRun(url, payload, total, inflight, deadlineMs) {
  const ws = new WebSocket(url, "sockeye.v1");
  ws.binaryType = "arraybuffer";
  const pending = new Map();
  let nextId = 0;
  try {
    await new Promise((resolve, reject) => {
      ws.onmessage = (e) => e.data === "ready" && resolve();
      ws.onerror = () => reject(new Error("WebSocket error"));
    });
    ws.onmessage = (e) => {
      if (typeof e.data === "string") return;
      const reply = readReply(new Uint8Array(e.data));
      const settle = pending.get(reply.id);
      pending.delete(reply.id);
      settle?.(reply.d.slice());
    };
    const request = () =>
      new Promise((resolve) => {
        const id = ++nextId;
        pending.set(id, resolve);
        ws.send(requestFrame(id, "echo", payload));
      });
    return await pump(request, total, inflight, deadlineMs);
  } finally {
    ws.close();
  }
}

function median(values) {
  const s = [...values].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

// One warm-up run of each, then `runs` rounds of both, alternating which goes first.
window.runBench = async ({ url, total, inflight, payloadBytes, runs, deadlineMs }) => {
  const payload = new Uint8Array(payloadBytes).map((_, i) => i);
  const clients = { wasm: wasmRun, raw: rawRun };
  for (const run of Object.values(clients)) await run(url, payload, Math.min(total, 2000), inflight, deadlineMs);
  const results = { wasm: [], raw: [] };
  for (let r = 0; r < runs; r++) {
    const order = r % 2 ? ["raw", "wasm"] : ["wasm", "raw"];
    for (const name of order) results[name].push(await clients[name](url, payload, total, inflight, deadlineMs));
  }
  return {
    wasm: { runs: results.wasm, median: median(results.wasm) },
    raw: { runs: results.raw, median: median(results.raw) },
    ratio: median(results.wasm) / median(results.raw),
    userAgent: navigator.userAgent,
  };
};

await init();
window.benchReady = true;
