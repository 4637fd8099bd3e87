// The browser benchmark (issue 14): `client.request` round trips per second with 64 in flight, the wasm package
// against a plain-JS client sending the same CBOR frames on a raw `WebSocket`, in the same page of Debian's
// headless Chromium, against the same sockeye-server. Prints both medians and their ratio and writes them to
// bench/browser.json. It reports; it never fails on a figure.
//
//   bench/browser/run.sh [--quick]        (builds what is missing, then runs this)
//   node bench/browser/run.mjs [--quick]  env: SOCKEYE_SERVER_BIN (default target/release/sockeye-server),
//                                         CHROMIUM (default /usr/bin/chromium), BENCH_OUT (default bench/browser.json)
//
// The server serves the repository (--static-dir): the page is /bench/browser/page.html, the package
// /client-wasm/pkg/ (scripts/build-npm.sh web). Loopback only.
import { spawn, execFileSync } from "node:child_process";
import { createInterface } from "node:readline";
import { existsSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import path from "node:path";
import { chromium } from "playwright-core";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const quick = process.argv.includes("--quick");
const serverBin = process.env.SOCKEYE_SERVER_BIN ?? path.join(root, "target/release/sockeye-server");
const chromiumBin = process.env.CHROMIUM ?? "/usr/bin/chromium";
const out = process.env.BENCH_OUT ?? path.join(root, "bench/browser.json");
const params = {
  total: quick ? 2000 : 20000,
  inflight: 64,
  payloadBytes: 64,
  runs: quick ? 3 : 5,
  deadlineMs: 60_000,
};

for (const [what, file] of [
  ["the server (cargo build --release -p sockeye-server)", serverBin],
  ["the package (scripts/build-npm.sh web)", path.join(root, "client-wasm/pkg/sockeye.js")],
  ["Chromium", chromiumBin],
]) {
  if (!existsSync(file)) throw new Error(`${file} is missing: build ${what} first`);
}

const server = spawn(serverBin, ["--addr", "127.0.0.1:0", "--static-dir", root, "--drain-window-ms", "100"], {
  stdio: ["ignore", "pipe", "ignore"],
});
let browser;
try {
  const base = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("sockeye-server printed no address within 30 s")), 30_000);
    server.once("exit", (code) => reject(new Error(`sockeye-server exited with ${code}`)));
    createInterface({ input: server.stdout }).once("line", (line) => {
      clearTimeout(timer);
      const match = /^sockeye-server listening on http:\/\/(127\.0\.0\.1:\d+)$/.exec(line);
      match ? resolve(match[1]) : reject(new Error(`unexpected first line: ${line}`));
    });
  });
  browser = await chromium.launch({
    executablePath: chromiumBin,
    args: ["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-sync"],
  });
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.goto(`http://${base}/bench/browser/page.html`);
  await page.waitForFunction(() => window.benchReady === true, null, { timeout: 10_000 });
  const result = await page.evaluate((args) => window.runBench(args), { url: `ws://${base}/ws`, ...params });
  if (errors.length) throw errors[0];

  const k = (n) => `${(n / 1000).toFixed(2)} k/s`;
  console.log(`browser: ${params.payloadBytes} B requests, ${params.inflight} in flight, ${params.total} per run, medians of ${params.runs}`);
  console.log(`  wasm client.request   ${k(result.wasm.median)}   runs: ${result.wasm.runs.map(k).join(", ")}`);
  console.log(`  plain JS, raw socket  ${k(result.raw.median)}   runs: ${result.raw.runs.map(k).join(", ")}`);
  console.log(`  ratio wasm / raw      ${result.ratio.toFixed(2)}x   (goal >= 0.80x)`);

  let commit = null;
  try {
    commit = execFileSync("git", ["-C", root, "rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {}
  const report = {
    measure: "browser: client.request msgs/s, wasm package vs plain-JS client on a raw WebSocket (same CBOR frames)",
    date: new Date().toISOString(),
    commit,
    browser: `${chromiumBin} ${browser.version()}`,
    quick,
    ...params,
    wasm_msgs_per_s: { median: result.wasm.median, runs: result.wasm.runs },
    raw_msgs_per_s: { median: result.raw.median, runs: result.raw.runs },
    ratio: result.ratio,
    goal_ratio: 0.8,
  };
  writeFileSync(out, JSON.stringify(report, null, 2) + "\n");
  console.log(`wrote ${path.relative(process.cwd(), out)}`);
} finally {
  await browser?.close();
  server.kill("SIGTERM");
}
