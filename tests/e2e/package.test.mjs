// The npm package as a user gets it: `npm pack` of client-wasm/pkg (scripts/build-npm.sh) ships exactly the files
// listed below, and the tarball installs into a scratch project where Node imports both builds by name and
// `tsc --strict` checks a TypeScript file against the installed typings (tests/e2e/installed/).
//
//   scripts/build-npm.sh && node --test tests/e2e/package.test.mjs
//
// scripts/test.sh runs it after building the package.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkgDir = path.resolve(here, "../../client-wasm/pkg");
// typescript from this directory's devDependencies (scripts/install.sh installs them), found through its "bin".
const tsPackageJson = createRequire(import.meta.url).resolve("typescript/package.json");
const tsc = path.join(path.dirname(tsPackageJson), JSON.parse(readFileSync(tsPackageJson, "utf8")).bin.tsc);

// What a user needs and nothing else: the web build at the root, the bundler build in bundler/, the typings of
// each, the JS snippets (error classes, option checks, the CBOR walk), README, LICENSE. The snippet directory
// carries a hash of the crate.
const EXPECTED_FILES = [
  "LICENSE",
  "README.md",
  "bundler/snippets/sockeye-wasm-HASH/js/cbor.js",
  "bundler/snippets/sockeye-wasm-HASH/js/errors.js",
  "bundler/snippets/sockeye-wasm-HASH/js/options.js",
  "bundler/sockeye.d.ts",
  "bundler/sockeye.js",
  "bundler/sockeye_bg.js",
  "bundler/sockeye_bg.wasm",
  "package.json",
  "snippets/sockeye-wasm-HASH/js/cbor.js",
  "snippets/sockeye-wasm-HASH/js/errors.js",
  "snippets/sockeye-wasm-HASH/js/options.js",
  "sockeye.d.ts",
  "sockeye.js",
  "sockeye_bg.wasm",
];

let scratch;

// Runs a command with a bounded time; its output is returned, and shown in the failure if it fails.
function run(command, args, cwd) {
  try {
    return execFileSync(command, args, { cwd, encoding: "utf8", timeout: 120_000, stdio: "pipe" });
  } catch (error) {
    throw new Error(`${command} ${args.join(" ")} (in ${cwd}) failed:\n${error.stdout ?? ""}${error.stderr ?? ""}`);
  }
}

function npm(args, cwd) {
  return run("npm", [...args, "--no-audit", "--no-fund", "--loglevel=error"], cwd);
}

before(() => {
  assert.ok(existsSync(path.join(pkgDir, "package.json")), `${pkgDir} is built (scripts/build-npm.sh)`);
  scratch = mkdtempSync(path.join(tmpdir(), "sockeye-npm-"));
});

after(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

test("package.json names @sockeye/client with both builds in its exports", () => {
  const pkg = JSON.parse(readFileSync(path.join(pkgDir, "package.json"), "utf8"));
  assert.equal(pkg.name, "@sockeye/client");
  assert.equal(pkg.type, "module");
  assert.equal(pkg.license, "MIT");
  assert.equal(pkg.publishConfig?.access, "public", "a scoped package is private unless published public");
  assert.deepEqual(Object.keys(pkg.exports), [".", "./bundler", "./sockeye_bg.wasm", "./package.json"]);
  assert.deepEqual(pkg.sideEffects, ["./bundler/sockeye.js"]);
  assert.match(pkg.repository.url, /github\.com\/sockeye\/sockeye/);
  // The README opens with installing.
  const readme = readFileSync(path.join(pkgDir, "README.md"), "utf8");
  assert.match(readme.split("\n## ")[1] ?? "", /^Install[\s\S]*npm install @sockeye\/client/);
});

test("npm pack --dry-run lists exactly what a user needs", () => {
  const [report] = JSON.parse(npm(["pack", "--dry-run", "--json"], pkgDir));
  const files = report.files.map((f) => f.path.replace(/\/sockeye-wasm-[0-9a-f]+\//, "/sockeye-wasm-HASH/")).sort();
  assert.deepEqual(files, EXPECTED_FILES);
});

test("the tarball installs into a scratch project, imports by name and type-checks", () => {
  const [packed] = JSON.parse(npm(["pack", "--json", "--pack-destination", scratch], pkgDir));
  assert.equal(packed.filename, `sockeye-client-${packed.version}.tgz`);

  writeFileSync(
    path.join(scratch, "package.json"),
    JSON.stringify({ name: "scratch", private: true, type: "module" }, null, 2),
  );
  cpSync(path.join(here, "installed"), scratch, { recursive: true });
  // The package has no dependencies: the tarball alone installs, offline.
  npm(["install", "--offline", `./${packed.filename}`], scratch);
  const installed = JSON.parse(readFileSync(path.join(scratch, "node_modules/@sockeye/client/package.json"), "utf8"));
  assert.equal(installed.version, packed.version);

  assert.match(run(process.execPath, ["web.mjs"], scratch), /web build: ok/);
  assert.match(
    run(process.execPath, ["--experimental-wasm-modules", "--no-warnings", "bundler.mjs"], scratch),
    /bundler build: ok/,
  );
  run(process.execPath, [tsc, "--project", "tsconfig.json"], scratch);
});
