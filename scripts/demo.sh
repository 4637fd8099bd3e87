#!/usr/bin/env bash
# Starts the Sockeye demo: builds the browser package into www/pkg and serves www/ from the reference server.
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

printf '\n==> npm package: wasm-pack build client-wasm --target web --profile wasm-release --out-dir ../www/pkg\n'
# wasm-pack's --profile builds with the workspace's [profile.wasm-release] (like --release, but opt-level "z");
# wasm-opt's arguments come from [package.metadata.wasm-pack.profile.custom] in client-wasm/Cargo.toml.
wasm-pack build client-wasm --target web --profile wasm-release --out-dir ../www/pkg
ls -l www/pkg/*.wasm

printf '\n==> reference server: cargo run --release -p sockeye-server -- --addr 127.0.0.1:%s --static-dir www\n' "$PORT"


if [[ "$PORT" == 0 ]]; then
    printf '\n    Open the address the server prints below ("sockeye-server listening on ...") in a browser.\n\n'
else
    printf '\n    Open http://127.0.0.1:%s/ in a browser (Ctrl-C stops the server).\n\n' "$PORT"
fi
exec cargo run --release -p sockeye-server -- --addr "127.0.0.1:$PORT" --static-dir www
