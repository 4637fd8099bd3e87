#!/usr/bin/env bash
# The browser benchmark (see run.mjs): builds the release server and the npm package if missing, installs
# playwright-core (npm ci), then runs it. `--quick`: fewer and shorter runs. `--build`: rebuild both first.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
# shellcheck source=/dev/null
source scripts/install.sh >/dev/null
BUILD=0
ARGS=()
for arg in "$@"; do
    case "$arg" in
    --build) BUILD=1 ;;
    *) ARGS+=("$arg") ;;
    esac
done
if [[ $BUILD == 1 || ! -x target/release/sockeye-server ]]; then
    cargo build --release -q -p sockeye-server --bin sockeye-server
fi
if [[ $BUILD == 1 || ! -f client-wasm/pkg/sockeye.js ]]; then
    scripts/build-npm.sh web
fi
exec node bench/browser/run.mjs "${ARGS[@]}"
