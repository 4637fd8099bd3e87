// The demo page, end to end: the reference server serves www/ (with the built package in www/pkg), Debian's
// headless Chromium opens it, and the test uses the page as a person would.
//
//   SOCKEYE_SERVER_BIN=target/debug/sockeye-server node --test tests/e2e/
//
// scripts/test.sh sets SOCKEYE_SERVER_BIN and builds www/pkg first.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromium } from "playwright-core";
import { chromiumPath, chromiumArgs } from "./chromium.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const serverBin = process.env.SOCKEYE_SERVER_BIN ?? path.join(root, "target/debug/sockeye-server");
let server;
let baseUrl;
let browser;

before(async () => {
  assert.ok(existsSync(path.join(root, "www/pkg/sockeye.js")), "www/pkg is built (scripts/demo.sh or scripts/test.sh)");
  server = spawn(serverBin, ["--addr", "127.0.0.1:0", "--static-dir", path.join(root, "www"), "--drain-window-ms", "100"], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  baseUrl = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("sockeye-server printed no address within 30 s")), 30_000);
    server.once("exit", (code) => reject(new Error(`sockeye-server exited with ${code}`)));
    createInterface({ input: server.stdout }).once("line", (line) => {
      clearTimeout(timer);
      const match = /^sockeye-server listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(line);
      match ? resolve(match[1]) : reject(new Error(`unexpected first line: ${line}`));
    });
  });
  browser = await chromium.launch({ executablePath: chromiumPath, args: chromiumArgs });
});

after(async () => {
  await browser?.close();
  server?.kill("SIGTERM");
});

async function openDemo() {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error));
  await page.goto(`${baseUrl}/`);
  await page.waitForSelector('#status[data-status="ready"]', { timeout: 10_000 });
  return { page, errors };
}

test("the page connects and shows the transitions up to ready", async () => {
  const { page, errors } = await openDemo();
  const transitions = await page.locator("#transitions li").allTextContents();
  assert.ok(transitions.some((t) => t.includes("connecting → ")), transitions.join("\n"));
  assert.deepEqual(errors, []);
  await page.close();
});

test("echo goes through request/response and a slow request times out with TimeoutError", async () => {
  const { page } = await openDemo();
  await page.fill("#echo-text", "salmon");
  await page.click("#echo-form button");
  await page.waitForFunction(() => document.querySelector("#echo-result").textContent.includes("salmon"));
  assert.equal(await page.textContent("#echo-result"), JSON.stringify({ text: "salmon" }));

  await page.check("#echo-slow");
  await page.click("#echo-form button");
  await page.waitForFunction(() => document.querySelector("#echo-result").textContent.includes("DEADLINE_EXCEEDED"));
  assert.match(await page.textContent("#echo-result"), /^TimeoutError \(DEADLINE_EXCEEDED\)/);
  await page.close();
});

test("a publish in one tab reaches every tab with the server's seq", async () => {
  const a = await openDemo();
  const b = await openDemo();
  // Both subscribed (the sub acknowledgement travels before anything else on the connection).
  await a.page.waitForTimeout(200);
  await a.page.fill("#pub-text", "hello from a");
  await a.page.click("#pub-form button");
  for (const { page } of [a, b]) {
    await page.waitForFunction(() => document.querySelector("#events li")?.textContent.includes("hello from a"));
    assert.match(await page.locator("#events li").first().textContent(), /^#\d+ {2}\{"text":"hello from a"/);
  }
  await a.page.close();
  await b.page.close();
});

test("when the server closes the connection the page reconnects to ready", async () => {
  const { page } = await openDemo();
  await page.click("#server-close");
  await page.waitForFunction(() =>
    [...document.querySelectorAll("#transitions li")].some((li) => li.textContent.includes("→ reconnecting")),
  );
  await page.waitForSelector('#status[data-status="ready"]', { timeout: 10_000 });
  await page.click("#close");
  await page.waitForSelector('#status[data-status="disconnected"]');
  await page.close();
});
