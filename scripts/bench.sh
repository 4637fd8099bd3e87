#!/usr/bin/env bash
# The benchmark suite: every measure side by side with its baseline in the same run (see bench/REPORT.md).
#
#   scripts/bench.sh            full run (about 10 minutes)
#   scripts/bench.sh --quick    short run (under 3 minutes once built)
#
# Builds in release, runs the criterion codec benchmark pinned to core 0, then `sockeye-bench`, which starts
# servers and loads as separate processes (pinned with `taskset -c 0`, and unpinned), prints the table of
# ratios and writes bench/results.json, bench/REPORT.md and bench/plots/*.svg. Loopback only. Benchmarks
# report; they never fail on a timing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

QUICK=()
CRITERION=(--warm-up-time 2 --measurement-time 5)
if [[ "${1:-}" == "--quick" ]]; then
    QUICK=(--quick)
    CRITERION=(--warm-up-time 0.5 --measurement-time 1)
elif [[ $# -gt 0 ]]; then
    echo "usage: scripts/bench.sh [--quick]" >&2
    exit 2
fi

command -v taskset >/dev/null || { echo "scripts/bench.sh: taskset (util-linux) is needed" >&2; exit 1; }

cargo build --release -p sockeye-server -p sockeye-bench
taskset -c 0 cargo bench -p sockeye-bench --bench codec -- "${CRITERION[@]}"
target/release/sockeye-bench "${QUICK[@]}" --out bench --criterion target/criterion
