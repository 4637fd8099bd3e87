#!/usr/bin/env bash
# Builds the npm package `sockeye` (crate sockeye-wasm, client-wasm/) with wasm-pack, twice:
#
#   client-wasm/pkg          --target web      for a plain <script type="module"> page (`await init()`)
#   client-wasm/pkg-bundler  --target bundler  for webpack, Vite, Rollup, ... (the bundler loads the .wasm)
#
#   scripts/build-npm.sh            both
#   scripts/build-npm.sh web        only pkg/ (or: bundler)
#
# Profile: `--profile wasm-release` (the workspace's [profile.wasm-release]: opt-level "z", LTO, codegen-units 1,
# panic abort, strip) plus wasm-opt -Oz with the arguments in client-wasm/Cargo.toml
# [package.metadata.wasm-pack.profile.custom]; wasm-opt is binaryen's, found on PATH. That was the smallest of
# the builds measured (see client-wasm/README.md "Package size"; scripts/size.sh prints the figures).
#
# After each wasm-pack run:
# - package.json is renamed `sockeye` (wasm-pack names it after the crate, `sockeye-wasm`);
# - the entry module re-exports the error classes (SockeyeError, TimeoutError, ...) from the js/errors.js snippet,
#   which the .d.ts already declares, so `import { TimeoutError } from "sockeye"` works;
# - the imports and exports get short names (scripts/minify-wasm-names.mjs) and every .js is minified with terser: the
#   glue is part of what a page downloads;
# - the outputs are checked: .wasm, .js, .d.ts (with `class Client` and the error classes) and README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

ERRORS="SockeyeError, TimeoutError, ServerError, ConnectionClosedError, QueueFullError, AbortError"

build() {
    local target="$1" out="$2"
    echo "==> wasm-pack build client-wasm --target $target --out-dir $out --out-name sockeye --profile wasm-release"
    rm -rf "client-wasm/$out"
    wasm-pack build client-wasm --target "$target" --out-dir "$out" --out-name sockeye --profile wasm-release
    local dir="client-wasm/$out"

    local snippet
    snippet="$(cd "$dir" && find snippets -path '*/js/errors.js' | head -n 1)"
    [[ -n "$snippet" ]] || {
        echo "build-npm.sh: no snippets/*/js/errors.js in $dir" >&2
        return 1
    }
    grep -q "export { $ERRORS }" "$dir/sockeye.js" ||
        printf '\n// The error classes (scripts/build-npm.sh).\nexport { %s } from "./%s";\n' "$ERRORS" "$snippet" \
            >>"$dir/sockeye.js"

    node - "$dir/package.json" <<'EOF'
const fs = require("fs");
const path = process.argv[2];
const pkg = JSON.parse(fs.readFileSync(path, "utf8"));
pkg.name = "sockeye";
pkg.description = "Sockeye WebSocket client for the browser: reconnects with backoff, keepalive, requests with deadlines, an offline queue and topic subscriptions that survive reconnects.";
pkg.keywords = ["websocket", "reconnect", "cbor", "wasm"];
pkg.files = Array.from(new Set([...(pkg.files || []), "README.md"]));
fs.writeFileSync(path, JSON.stringify(pkg, null, 2) + "\n");
EOF

    for f in sockeye_bg.wasm sockeye.js sockeye.d.ts README.md package.json; do
        [[ -s "$dir/$f" ]] || {
            echo "build-npm.sh: $dir/$f is missing" >&2
            return 1
        }
    done
    for decl in "export class Client" "export class TimeoutError" "export interface ClientOptions" \
        "request<T = any>"; do
        grep -qF "$decl" "$dir/sockeye.d.ts" || {
            echo "build-npm.sh: $dir/sockeye.d.ts lacks '$decl'" >&2
            return 1
        }
    done
    grep -q '"name": "sockeye"' "$dir/package.json"

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
    echo "==> $dir:" "$dir"/*
}

case "${1:-all}" in
web) build web pkg ;;
bundler) build bundler pkg-bundler ;;
all)
    build web pkg
    build bundler pkg-bundler
    ;;
*)
    echo "usage: scripts/build-npm.sh [web|bundler|all]" >&2
    exit 2
    ;;
esac
