// The bundler build (`@sockeye/client/bundler`): its entry imports the .wasm as an ES module, as webpack's
// asyncWebAssembly or vite-plugin-wasm do; Node does the same with --experimental-wasm-modules. No init().
// Run by package.test.mjs in the scratch project.
import * as sockeye from "@sockeye/client/bundler";
import assert from "node:assert/strict";
import { checkBuild } from "./checks.mjs";

assert.equal(sockeye.default, undefined, "the bundler build has no init()");
checkBuild(sockeye);
console.log("bundler build: ok");
