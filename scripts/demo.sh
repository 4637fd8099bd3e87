#!/usr/bin/env bash
# Starts the Sockeye demo: builds the npm package, puts it in www/pkg and serves www/ from the reference server.
#
#   scripts/demo.sh               then open the printed URL (default http://127.0.0.1:8080/)
#   PORT=9000 scripts/demo.sh     another port
#
# Installs what is missing first (scripts/install.sh). Stop the server with Ctrl-C.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# shellcheck source=scripts/install.sh
source "$ROOT/scripts/install.sh"

PORT="${PORT:-8080}"

printf '\n==> npm package @sockeye/client: scripts/build-npm.sh web, copied to www/pkg\n'
# The web build users get from `@sockeye/client` (profile wasm-release + wasm-opt, error classes exported); the
# page imports it by name through the import map in www/index.html.
scripts/build-npm.sh web
rm -rf www/pkg
cp -r client-wasm/pkg www/pkg
ls -l www/pkg/sockeye_bg.wasm

printf '\n==> reference server: cargo run --release -p sockeye-server -- --addr 127.0.0.1:%s --static-dir www\n' "$PORT"

if [[ "$PORT" == 0 ]]; then
    printf '\n    Open the address the server prints below ("sockeye-server listening on ...") in a browser.\n\n'
else
    printf '\n    Open http://127.0.0.1:%s/ in a browser (Ctrl-C stops the server).\n\n' "$PORT"
fi
exec cargo run --release -p sockeye-server -- --addr "127.0.0.1:$PORT" --static-dir www
