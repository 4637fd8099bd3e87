// A scripted WebSocket server for browser tests that must see exactly what the client sends: every frame and
// the close code and reason, as a server sees them. It also serves the built package and a page that loads it,
// from one loopback origin. Just enough of RFC 6455 for a browser peer: unfragmented frames, payloads under
// 64 KiB, the client's masking.
import http from "node:http";
import { createHash } from "node:crypto";
import { readFile } from "node:fs/promises";
import path from "node:path";

const GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const TYPES = { ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };

/// The page: loads the package and exposes `Client` as `window.Client`, then sets `window.loaded`.
const PAGE = `<!doctype html><meta charset="utf-8"><title>sockeye test</title>
<script type="module">
import init, { Client } from "/pkg/sockeye.js";
await init();
window.Client = Client;
window.loaded = true;
</script>`;

/** One client connection: what it sent (`frames`: {text} or {bytes}), and how it closed (`close`). */
class Peer {
  constructor(socket) {
    this.socket = socket;
    this.frames = [];
    this.close = null;
    this.buffer = Buffer.alloc(0);
    socket.on("data", (chunk) => this.#read(chunk));
    socket.on("error", () => {});
  }

  sendText(text) {
    this.#send(0x1, Buffer.from(text, "utf8"));
  }

  texts() {
    return this.frames.filter((f) => f.text !== undefined).map((f) => f.text);
  }

  #send(opcode, payload) {
    const head =
      payload.length < 126
        ? Buffer.from([0x80 | opcode, payload.length])
        : Buffer.from([0x80 | opcode, 126, payload.length >> 8, payload.length & 0xff]);
    if (!this.socket.destroyed) this.socket.write(Buffer.concat([head, payload]));
  }

  #read(chunk) {
    this.buffer = Buffer.concat([this.buffer, chunk]);
    for (;;) {
      const b = this.buffer;
      if (b.length < 2) return;
      const opcode = b[0] & 0x0f;
      let length = b[1] & 0x7f;
      let at = 2;
      if (length === 126) {
        if (b.length < 4) return;
        length = b.readUInt16BE(2);
        at = 4;
      } else if (length === 127) {
        throw new Error("raw-server: frames of 64 KiB and more are not supported");
      }
      if (b.length < at + 4 + length) return;
      const mask = b.subarray(at, at + 4);
      const payload = Buffer.from(b.subarray(at + 4, at + 4 + length));
      for (let i = 0; i < payload.length; i++) payload[i] ^= mask[i % 4];
      this.buffer = b.subarray(at + 4 + length);
      if (opcode === 0x1) this.frames.push({ text: payload.toString("utf8") });
      else if (opcode === 0x2) this.frames.push({ bytes: payload });
      else if (opcode === 0x8) {
        // RFC 6455 §7.4.1: no code in the frame is reported as 1005.
        const code = payload.length >= 2 ? payload.readUInt16BE(0) : 1005;
        this.close = { code, reason: payload.subarray(2).toString("utf8") };
        this.#send(0x8, payload.subarray(0, 2));
        this.socket.end();
      }
    }
  }
}

/**
 * Starts the server on a free loopback port. `onPeer(peer)` runs for each WebSocket (default: sends `ready`).
 * Returns { url, wsUrl, peers, close() }.
 */
export async function startRawServer(pkgDir, onPeer = (peer) => peer.sendText("ready")) {
  const peers = [];
  const server = http.createServer(async (req, res) => {
    const pathname = new URL(req.url, "http://x").pathname;
    if (pathname === "/") {
      res.writeHead(200, { "content-type": "text/html" }).end(PAGE);
      return;
    }
    const file = path.join(pkgDir, path.normalize(pathname.replace(/^\/pkg\//, "")));
    if (!pathname.startsWith("/pkg/") || !file.startsWith(pkgDir)) {
      res.writeHead(404).end();
      return;
    }
    try {
      const body = await readFile(file);
      res.writeHead(200, { "content-type": TYPES[path.extname(file)] ?? "application/octet-stream" }).end(body);
    } catch {
      res.writeHead(404).end();
    }
  });
  server.on("upgrade", (req, socket) => {
    const accept = createHash("sha1").update(`${req.headers["sec-websocket-key"]}${GUID}`).digest("base64");
    socket.write(
      "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
        `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: sockeye.v1\r\n\r\n`,
    );
    const peer = new Peer(socket);
    peers.push(peer);
    onPeer(peer);
  });
  await new Promise((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address();
  return {
    url: `http://127.0.0.1:${port}/`,
    wsUrl: `ws://127.0.0.1:${port}/ws`,
    peers,
    close: () =>
      new Promise((resolve) => {
        for (const peer of peers) peer.socket.destroy();
        server.close(resolve);
      }),
  };
}
