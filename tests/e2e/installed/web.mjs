// The web build (`@sockeye/client`), imported by name from a scratch project that installed the packed tarball:
// Node's ESM resolution goes through the package's "exports". Run by package.test.mjs.
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import init, * as sockeye from "@sockeye/client";
import { checkBuild } from "./checks.mjs";

assert.equal(typeof init, "function", "the default export is init()");
assert.equal(typeof sockeye.initSync, "function");
// init() fetches the .wasm next to sockeye.js (a browser's job; Node's fetch has no file: URLs). initSync
// instantiates the same bytes, found through the package's "./sockeye_bg.wasm" export.
const wasmUrl = import.meta.resolve("@sockeye/client/sockeye_bg.wasm");
assert.match(wasmUrl, /\/node_modules\/@sockeye\/client\/sockeye_bg\.wasm$/);
sockeye.initSync({ module: await readFile(new URL(wasmUrl)) });
checkBuild(sockeye);
console.log("web build: ok");
