#!/usr/bin/env bash
# Builds the npm package `@sockeye/client` (crate sockeye-wasm, client-wasm/) into client-wasm/pkg:
#
#   client-wasm/pkg/           --target web      `import init, { Client } from "@sockeye/client"`: a plain
#                                                 <script type="module"> page, and any bundler that handles
#                                                 `new URL("sockeye_bg.wasm", import.meta.url)` (Vite, webpack 5, ...)
#   client-wasm/pkg/bundler/   --target bundler  `import { Client } from "@sockeye/client/bundler"`: for bundlers
#                                                 that load .wasm as an ES module themselves (webpack's
#                                                 asyncWebAssembly, vite-plugin-wasm); no init()
#
#   scripts/build-npm.sh            the package, both builds
#   scripts/build-npm.sh web        only the web build (the demo page); not the package to publish
#
# One package with a subpath export rather than two packages: users install and version one name, the two builds
# come from the same crate at the same version with the same typings, and "exports" conditions cannot choose
# between them (no condition tells a bundler with wasm-as-ES-module support from one without), so the choice is
# the user's, by import path. The web build is the default because it works everywhere without a plugin.
#
# Profile: `--profile wasm-release` (the workspace's [profile.wasm-release]: opt-level "z", LTO, codegen-units 1,
# panic abort, strip) without the crate's default `std` feature (`no_std` + `alloc`, a panic traps: bench/SIZE.md) plus wasm-opt -Oz with the arguments in client-wasm/Cargo.toml
# [package.metadata.wasm-pack.profile.custom]; wasm-opt is binaryen's, found on PATH. That was the smallest of
# the builds measured (see client-wasm/README.md "Package size"; scripts/size.sh prints the figures).
#
# After each wasm-pack run the entry module re-exports the error classes (SockeyeError, TimeoutError, ...) from the
# js/errors.js snippet, which the .d.ts already declares, so `import { TimeoutError } from "@sockeye/client"` works.
# Then package.json is written here (wasm-pack's names the crate and lists one build), wasm-pack's .gitignore and
# the raw-exports typings (sockeye_bg.wasm.d.ts, which nothing imports) are dropped, and the outputs are checked.
# The imports and exports get short names (scripts/minify-wasm-names.mjs) and every .js is minified with terser:
# the glue is part of what a page downloads.
# tests/e2e/package.test.mjs packs the result, installs the tarball in a scratch project and imports it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PKG="client-wasm/pkg"
ERRORS="SockeyeError, TimeoutError, ServerError, ConnectionClosedError, QueueFullError, AbortError"

fail() {
    echo "build-npm.sh: $*" >&2
    exit 1
}

# wasm_pack TARGET DIR: one wasm-pack build into DIR (relative to the repository root), error classes re-exported.
wasm_pack() {
    local target="$1" dir="$2"
    # `--no-default-features`: the crate without `std` (no_std + alloc, a panic traps; client-wasm/Cargo.toml).
    local args=(build client-wasm --target "$target" --out-dir "${dir#client-wasm/}" --out-name sockeye
        --profile wasm-release --no-default-features)
    echo "==> wasm-pack ${args[*]}"
    rm -rf "$dir"
    # The panic locations of dependencies carry the builder's registry path: cut to the crate's name (the same
    # bytes on every machine, and fewer of them).
    RUSTFLAGS="--remap-path-prefix=${CARGO_HOME:-$HOME/.cargo}/registry/src/=" wasm-pack "${args[@]}"

    local snippet
    snippet="$(cd "$dir" && find snippets -path '*/js/errors.js' | head -n 1)"
    [[ -n "$snippet" ]] || fail "no snippets/*/js/errors.js in $dir"
    grep -q "export { $ERRORS }" "$dir/sockeye.js" ||
        printf '\n// The error classes (scripts/build-npm.sh).\nexport { %s } from "./%s";\n' "$ERRORS" "$snippet" \
            >>"$dir/sockeye.js"
    rm -f "$dir/.gitignore" "$dir/sockeye_bg.wasm.d.ts"

    # Short import and export names in the .wasm, the glue and the typings (wasm-bindgen's carry 16-digit
    # hashes): 2 KB less gzipped.
    node scripts/minify-wasm-names.mjs "$dir"

    # The JS glue minified last (terser, from scripts/install.sh): local names and whitespace go; exports,
    # property names and the `@ts-self-types` comment stay. 6.7 KB -> 4.4 KB gzipped (client-wasm/README.md).
    local js
    while IFS= read -r -d '' js; do
        terser "$js" --module --compress --mangle --comments '/@ts-self-types/' --output "$js.min"
        mv "$js.min" "$js"
    done < <(find "$dir" -name '*.js' -print0)
}

# check_build DIR: the files and declarations every build must have.
check_build() {
    local dir="$1" f decl
    for f in sockeye_bg.wasm sockeye.js sockeye.d.ts; do
        [[ -s "$dir/$f" ]] || fail "$dir/$f is missing"
    done
    for decl in "export class Client" "export class TimeoutError" "export interface ClientOptions" \
        "request<T = any>" "@sockeye/client"; do
        grep -qF "$decl" "$dir/sockeye.d.ts" || fail "$dir/sockeye.d.ts lacks '$decl'"
    done
}

# write_package_json: package.json for what $PKG holds (the web build, and bundler/ when built).
write_package_json() {
    node - "$PKG" <<'EOF'
const fs = require("fs");
const path = require("path");
const dir = process.argv[2];
// wasm-pack's package.json: only its version (the crate's) is kept.
const { version } = JSON.parse(fs.readFileSync(path.join(dir, "package.json"), "utf8"));
const bundler = fs.existsSync(path.join(dir, "bundler", "sockeye.js"));
const pkg = {
  name: "@sockeye/client",
  version,
  description:
    "WebSocket client for the browser that reconnects with backoff, keeps alive, and keeps requests with " +
    "deadlines, an offline queue and topic subscriptions across reconnects.",
  keywords: ["websocket", "reconnect", "client", "pubsub", "cbor", "wasm"],
  homepage: "https://github.com/sockeye/sockeye/tree/main/client-wasm#readme",
  bugs: "https://github.com/sockeye/sockeye/issues",
  repository: { type: "git", url: "git+https://github.com/sockeye/sockeye.git", directory: "client-wasm" },
  license: "MIT",
  type: "module",
  main: "./sockeye.js",
  types: "./sockeye.d.ts",
  exports: {
    ".": { types: "./sockeye.d.ts", default: "./sockeye.js" },
    ...(bundler && { "./bundler": { types: "./bundler/sockeye.d.ts", default: "./bundler/sockeye.js" } }),
    // For `init({ module_or_path })` with a URL the application chooses (e.g. Vite's `?url` import).
    "./sockeye_bg.wasm": "./sockeye_bg.wasm",
    "./package.json": "./package.json",
  },
  files: ["sockeye.js", "sockeye.d.ts", "sockeye_bg.wasm", "snippets/", ...(bundler ? ["bundler/"] : [])],
  // The bundler entry instantiates the .wasm when it is evaluated: a tree-shaker must keep it. Everything else only
  // defines what it exports (the snippet: the error classes and two helpers), so an unused import may be dropped.
  sideEffects: bundler ? ["./bundler/sockeye.js"] : false,
  // A scoped package is published private unless told otherwise.
  publishConfig: { access: "public" },
};
fs.writeFileSync(path.join(dir, "package.json"), JSON.stringify(pkg, null, 2) + "\n");
EOF
}

build() {
    local with_bundler="$1"
    wasm_pack web "$PKG"
    check_build "$PKG"
    if [[ "$with_bundler" == 1 ]]; then
        local tmp="client-wasm/pkg-bundler"
        wasm_pack bundler "$tmp"
        check_build "$tmp"
        mkdir "$PKG/bundler"
        # Only what the bundler entry loads: not wasm-pack's package.json, README and LICENSE (the package's own).
        mv "$tmp"/{sockeye.js,sockeye_bg.js,sockeye.d.ts,sockeye_bg.wasm,snippets} "$PKG/bundler/"
        rm -rf "$tmp"
    fi
    write_package_json
    for f in README.md LICENSE package.json; do
        [[ -s "$PKG/$f" ]] || fail "$PKG/$f is missing"
    done
    grep -q '"name": "@sockeye/client"' "$PKG/package.json" || fail "$PKG/package.json is not @sockeye/client"
    echo "==> $PKG:" $(cd "$PKG" && find . -type f | sort)
}

case "${1:-all}" in
web) build 0 ;;
all) build 1 ;;
*)
    echo "usage: scripts/build-npm.sh [web|all]" >&2
    exit 2
    ;;
esac
