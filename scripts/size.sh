#!/usr/bin/env bash
# Prints the size of the npm package `@sockeye/client`: the .wasm and the JS glue (the entry module plus its
# snippets), raw and gzipped (gzip -9), and their sum: what a page downloads.
#
#   scripts/size.sh             measures the web build, client-wasm/pkg (builds it first with
#                               scripts/build-npm.sh web if missing)
#   scripts/size.sh --build     rebuilds client-wasm/pkg first
#   scripts/size.sh DIR         measures another build directory (e.g. client-wasm/pkg/bundler)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DIR="client-wasm/pkg"
BUILD=0
for arg in "$@"; do
    case "$arg" in
    --build) BUILD=1 ;;
    -h | --help)
        sed -n '2,8p' "$0"
        exit 0
        ;;
    *) DIR="$arg" ;;
    esac
done

if [[ $BUILD == 1 || ! -f "$DIR/sockeye_bg.wasm" ]]; then
    [[ "$DIR" == "client-wasm/pkg" ]] || {
        echo "size.sh: $DIR/sockeye_bg.wasm not found" >&2
        exit 1
    }
    scripts/build-npm.sh web >&2
fi

raw() { cat "$@" | wc -c; }
gz() { cat "$@" | gzip -9 | wc -c; }
kb() { awk -v b="$1" 'BEGIN { printf "%.1f KB", b / 1000 }'; }

wasm=("$DIR"/*.wasm)
# The glue: every .js the page loads (entry, *_bg.js for bundlers, snippets). Not the .d.ts, and not the other
# build in the package's bundler/ directory.
mapfile -t glue < <(find "$DIR" -path "$DIR/bundler" -prune -o -name '*.js' -print | sort)

wasm_raw=$(raw "${wasm[@]}")
wasm_gz=$(gz "${wasm[@]}")
glue_raw=$(raw "${glue[@]}")
# Each file is fetched (and compressed) separately.
glue_gz=0
for f in "${glue[@]}"; do glue_gz=$((glue_gz + $(gz "$f"))); done

printf '%-28s %12s %12s\n' "$DIR" raw "gzip -9"
printf '%-28s %12s %12s\n' ".wasm" "$(kb "$wasm_raw")" "$(kb "$wasm_gz")"
printf '%-28s %12s %12s\n' "JS glue (${#glue[@]} files)" "$(kb "$glue_raw")" "$(kb "$glue_gz")"
printf '%-28s %12s %12s\n' "total" "$(kb $((wasm_raw + glue_raw)))" "$(kb $((wasm_gz + glue_gz)))"
printf 'bytes: wasm %d / %d gz, glue %d / %d gz\n' "$wasm_raw" "$wasm_gz" "$glue_raw" "$glue_gz"
