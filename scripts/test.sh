#!/usr/bin/env bash
# THE one command that runs every Sockeye test (README and .ci/run call it).
#
#   scripts/test.sh
#
# Installs what is missing (scripts/install.sh), then runs, stopping at the first failure:
#   fmt, clippy, cargo test (host), the core and the browser crate linted for wasm32 without std, the crates as
#   crates.io would get them (`cargo publish --dry-run`), two reference servers on free loopback ports, the browser
#   tests (headless Chromium through wasm-bindgen-test-runner + chromedriver), the npm package `@sockeye/client`
#   (built, packed, installed in a scratch project, imported and type-checked), the demo page (tests/e2e,
#   playwright-core) and the package against a scripted server (tests/e2e/liveness.test.mjs, the DevTools protocol).
# Every section prints a header and its time; a summary of all section times ends the run, pass or fail.
# Logs of the reference server go to target/sockeye-test/.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

LOG_DIR="$ROOT/target/sockeye-test"
SERVER_PIDS=()
SECTION=""
SECTION_T0=0
SUMMARY=()
RUN_T0="$(date +%s%N)"
if [[ -t 1 ]]; then
    BOLD=$'\033[1m' RED=$'\033[1;31m' GREEN=$'\033[1;32m' RESET=$'\033[0m'
else
    BOLD="" RED="" GREEN="" RESET=""
fi

# ---------------------------------------------------------------------------------------------------------------
# Sections: header, timing, summary
# ---------------------------------------------------------------------------------------------------------------
_ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }
_fmt_ms() { printf '%d.%01ds' $(($1 / 1000)) $((($1 % 1000) / 100)); }

section_begin() {
    SECTION="$1"
    SECTION_T0="$(date +%s%N)"
    printf '\n%s==> %s%s\n' "$BOLD" "$SECTION" "$RESET"
}

section_end() {
    local ms
    ms="$(_ms_since "$SECTION_T0")"
    SUMMARY+=("$(printf '  %-8s %8s  %s' ok "$(_fmt_ms "$ms")" "$SECTION")")
    printf '%s<== %s: ok in %s%s\n' "$BOLD" "$SECTION" "$(_fmt_ms "$ms")" "$RESET"
    SECTION=""
}

# run_section NAME CMD ARGS...: runs one command or shell function as a section. Not inside an `if`, so `set -e`
# stays in force within functions and the first failing command ends the run (the EXIT trap reports it).
run_section() {
    section_begin "$1"
    shift
    "$@"
    section_end
}

on_exit() {
    local rc=$?
    set +e
    stop_test_servers
    if [[ -n "$SECTION" ]]; then
        local ms
        ms="$(_ms_since "$SECTION_T0")"
        SUMMARY+=("$(printf '  %-8s %8s  %s' FAILED "$(_fmt_ms "$ms")" "$SECTION")")
        printf '\n%s<== %s: FAILED (exit %d) after %s%s\n' "$RED" "$SECTION" "$rc" "$(_fmt_ms "$ms")" "$RESET"
    fi
    printf '\n%s==> Summary (total %s)%s\n' "$BOLD" "$(_fmt_ms "$(_ms_since "$RUN_T0")")" "$RESET"
    printf '%s\n' "${SUMMARY[@]}"
    if [[ $rc -eq 0 ]]; then
        printf '%sscripts/test.sh: all sections passed%s\n' "$GREEN" "$RESET"
    else
        printf '%sscripts/test.sh: FAILED in section "%s" (exit %d)%s\n' "$RED" "${SECTION:-?}" "$rc" "$RESET"
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------------------------
# The reference server (sockeye-server) on 127.0.0.1 with a port picked at run time
# ---------------------------------------------------------------------------------------------------------------
# Path of the sockeye-server binary, building it if needed.
server_binary() {
    cargo build -q -p sockeye-server --bin sockeye-server --message-format=json-render-diagnostics |
        python3 -c '
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    target = msg.get("target", {})
    if msg.get("reason") == "compiler-artifact" and target.get("name") == "sockeye-server" \
            and "bin" in target.get("kind", []) and msg.get("executable"):
        print(msg["executable"])
'
}

# start_server ENV_VAR LOG_NAME [ARGS...]: starts sockeye-server on 127.0.0.1 with a port picked at run time, waits
# for its `sockeye-server listening on http://127.0.0.1:PORT` line and exports ENV_VAR=ws://127.0.0.1:PORT/ws.
start_server() {
    local var="$1" name="$2" bin out err line port pattern deadline pid
    shift 2
    mkdir -p "$LOG_DIR"
    bin="$(server_binary)"
    [[ -n "$bin" && -x "$bin" ]] || {
        echo "scripts/test.sh: could not find the sockeye-server binary after building it" >&2
        return 1
    }
    out="$LOG_DIR/$name.stdout"
    err="$LOG_DIR/$name.stderr"
    echo "starting: $bin --addr 127.0.0.1:0 $*   (stdout: ${out#"$ROOT"/}, stderr: ${err#"$ROOT"/})"
    # A short drain window: at the end of the run the server exits promptly on SIGTERM.
    "$bin" --addr 127.0.0.1:0 --drain-window-ms 200 "$@" >"$out" 2>"$err" </dev/null &
    pid=$!
    SERVER_PIDS+=("$pid")

    pattern='^sockeye-server listening on http://127\.0\.0\.1:([0-9]+)$'
    deadline=$((SECONDS + 30))
    port=""
    while [[ -z "$port" ]]; do
        line="$(head -n 1 "$out" 2>/dev/null || true)"
        if [[ "$line" =~ $pattern ]]; then
            port="${BASH_REMATCH[1]}"
        elif ! kill -0 "$pid" 2>/dev/null; then
            echo "scripts/test.sh: sockeye-server exited before printing its address; stderr:" >&2
            tail -n 20 "$err" >&2
            return 1
        elif ((SECONDS >= deadline)); then
            echo "scripts/test.sh: sockeye-server printed no 'sockeye-server listening on http://127.0.0.1:PORT' line" \
                "within 30s (first stdout line: '${line}')" >&2
            return 1
        else
            sleep 0.1
        fi
    done
    export "$var=ws://127.0.0.1:$port/ws"
    echo "sockeye-server (pid $pid) listening on 127.0.0.1:$port; $var=ws://127.0.0.1:$port/ws"
}

# The servers the browser tests talk to: one open, one that accepts only the token `secret`.
start_test_servers() {
    start_server SOCKEYE_TEST_SERVER server
    start_server SOCKEYE_TEST_AUTH_SERVER auth-server --token secret
}

stop_test_servers() {
    local pid
    for pid in "${SERVER_PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -9 "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
        echo "stopped sockeye-server (pid $pid)"
    done
    SERVER_PIDS=()
}

# ---------------------------------------------------------------------------------------------------------------
# Browser tests: wasm tests of sockeye-wasm in headless Chromium (Debian's chromium + chromedriver)
# ---------------------------------------------------------------------------------------------------------------
browser_tests() {
    # No extra configuration needed, also as root: wasm-bindgen-test-runner itself passes headless, no-sandbox and
    # disable-dev-shm-usage to Chrome (checked with wasm-bindgen-cli 0.2.130 + Debian chromium 156). Its per-test
    # timeout is WASM_BINDGEN_TEST_TIMEOUT (default 20s), read from the environment if set.
    echo "SOCKEYE_TEST_SERVER=${SOCKEYE_TEST_SERVER:-<unset>} SOCKEYE_TEST_AUTH_SERVER=${SOCKEYE_TEST_AUTH_SERVER:-<unset>} WASM_BINDGEN_TEST_TIMEOUT=${WASM_BINDGEN_TEST_TIMEOUT:-<default 20s>}"
    CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
        CHROMEDRIVER=/usr/bin/chromedriver \
        cargo test -p sockeye-wasm --target wasm32-unknown-unknown
}

# ---------------------------------------------------------------------------------------------------------------
# The crates as crates.io gets them: packaged and built from the packages, in dependency order (cargo resolves the
# unpublished sockeye-core and sockeye-server through a local registry of the packages it just made)
# ---------------------------------------------------------------------------------------------------------------
crate_packages() {
    # cargo builds sockeye-server and sockeye against the sockeye-core it just packaged, taken from a local registry
    # like any crates.io dependency, and so treats it as immutable: the sources unpacked into
    # $CARGO_HOME/registry/src/-<hash>/NAME-VERSION and the library built from them are reused by every later run
    # with the same version, even after the crate changed (the check then fails, or passes, on old code). So those
    # copies are dropped first, and the verification builds in a target directory of its own, where everything
    # named sockeye* is one of these packages and is cleaned (the dependencies stay built between runs).
    local target_dir="$ROOT/target/publish-check" crates=(-p sockeye-core -p sockeye-server -p sockeye)
    rm -rf "${CARGO_HOME:-$HOME/.cargo}"/registry/src/-*/sockeye-{core-,server-,}[0-9]*
    [[ ! -d "$target_dir" ]] || cargo clean -q --target-dir "$target_dir" "${crates[@]}"
    # --allow-dirty: what is checked is the packages, not whether the work tree is committed.
    cargo publish --dry-run --allow-dirty --target-dir "$target_dir" "${crates[@]}"
    # The library without its CLI (feature `cli`) must not pull in the CLI's dependencies.
    local cli_deps
    cli_deps="$(cargo tree -p sockeye --no-default-features -e normal --prefix none |
        grep -E '^(clap|clap_[a-z]+|tracing-subscriber|serde_json) ' || true)"
    if [[ -n "$cli_deps" ]]; then
        echo "scripts/test.sh: sockeye --no-default-features depends on the CLI's crates:" >&2
        echo "$cli_deps" >&2
        return 1
    fi
    echo "sockeye --no-default-features: no clap, tracing-subscriber or serde_json"
}

# ---------------------------------------------------------------------------------------------------------------
# The npm package @sockeye/client: both builds (scripts/build-npm.sh checks their files), its size, and the packed
# tarball: its file list, installed in a scratch project, imported by Node, type-checked by tsc --strict
# ---------------------------------------------------------------------------------------------------------------
npm_package() {
    scripts/build-npm.sh all
    scripts/size.sh client-wasm/pkg
    npm --prefix tests/e2e run test:package
}

# ---------------------------------------------------------------------------------------------------------------
# The demo page in headless Chromium (playwright-core driving Debian's /usr/bin/chromium; no browser download)
# ---------------------------------------------------------------------------------------------------------------
demo_page_tests() {
    rm -rf www/pkg
    cp -r client-wasm/pkg www/pkg
    SOCKEYE_SERVER_BIN="$(server_binary)" npm --prefix tests/e2e run test:demo
    # The package against a scripted server in a Chromium driven over the DevTools protocol (close codes as the
    # server sees them, the probe a frozen page sends as it resumes).
    npm --prefix tests/e2e run test:liveness
}

# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
section_begin "install tools (scripts/install.sh)"
# shellcheck source=scripts/install.sh
source "$ROOT/scripts/install.sh"
section_end

run_section "cargo fmt --all -- --check" cargo fmt --all -- --check
run_section "cargo clippy --workspace --all-targets -- -D warnings" \
    cargo clippy --workspace --all-targets -- -D warnings
run_section "cargo test --workspace" cargo test --workspace
# The crates as the npm package builds them: without `std` (no_std + alloc; the host builds above keep std).
run_section "cargo clippy -p sockeye-core -p sockeye-wasm --target wasm32-unknown-unknown --no-default-features" \
    cargo clippy -p sockeye-core -p sockeye-wasm --target wasm32-unknown-unknown --no-default-features -- -D warnings
run_section "crates: cargo publish --dry-run (sockeye-core, sockeye-server, sockeye)" crate_packages
run_section "start reference servers (sockeye-server --addr 127.0.0.1:0, open and with --token)" start_test_servers
run_section "browser tests: cargo test -p sockeye-wasm --target wasm32-unknown-unknown (headless Chrome)" browser_tests
run_section "npm package @sockeye/client: scripts/build-npm.sh, scripts/size.sh, pack + scratch install (tests/e2e)" \
    npm_package
run_section "demo page tests: tests/e2e (playwright-core, headless Chromium)" demo_page_tests
run_section "benchmark suite builds (release; scripts/bench.sh --quick runs it)" cargo build --release -p sockeye-bench --all-targets
