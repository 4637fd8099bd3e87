#!/usr/bin/env bash
# Installs everything Sockeye's build, tests and demo need on a fresh Debian machine that has only
# rustup/cargo, node/npm, gcc and python3. Idempotent: each step checks first and says what it skips.
#
#   scripts/install.sh            run it
#   source scripts/install.sh     same, and keep the PATH it sets up (scripts/test.sh and scripts/demo.sh do this)
#
# Installs:
#   - rustup target wasm32-unknown-unknown (+ rustfmt, clippy components if missing)
#   - wasm-pack $WASM_PACK_VERSION                    (cargo install --locked)
#   - wasm-bindgen-cli at the wasm-bindgen version in Cargo.lock (cargo install, NOT --locked: its lock file
#     names a crate the registry lacks); brings wasm-bindgen and wasm-bindgen-test-runner
#   - Debian chromium + chromium-driver             (apt-get; /usr/bin/chromium, /usr/bin/chromedriver)
#   - Debian redis-server                           (apt-get; the server's Redis scale-out tests start their own)
#   - wasm-opt from npm binaryen@$BINARYEN_VERSION  (into .tools/node_modules; Debian's binaryen is too old)
#   - terser@$TERSER_VERSION from npm                (into .tools/node_modules; minifies the npm package's JS glue)
#   - npm packages of the repo's own JS tests      (every package.json outside node_modules/, pkg/, target/)
set -euo pipefail

SOCKEYE_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WASM_PACK_VERSION="0.15.1"
BINARYEN_VERSION="132"
TERSER_VERSION="5.51.2"
SOCKEYE_TOOLS_DIR="$SOCKEYE_ROOT/.tools"

_inst_say() { printf '[install] %s\n' "$*"; }
_inst_skip() { printf '[install] skip: %s\n' "$*"; }
_inst_do() { printf '[install] DO:   %s\n' "$*"; }
_inst_die() {
    printf '[install] ERROR: %s\n' "$*" >&2
    exit 1
}

_inst_path_prepend() {
    case ":$PATH:" in
        *":$1:"*) ;;
        *) PATH="$1:$PATH" ;;
    esac
}

# Tools installed by this script must be found by it, by the scripts that source it, and by wasm-pack.
_inst_path_prepend "${CARGO_HOME:-$HOME/.cargo}/bin"
_inst_path_prepend "$SOCKEYE_TOOLS_DIR/node_modules/.bin"
export PATH

_inst_need() { command -v "$1" >/dev/null 2>&1 || _inst_die "'$1' not found: this script needs $2"; }

# The version of a crate as resolved in Cargo.lock (first match).
_inst_lock_version() {
    awk -v want="$1" '
        /^\[\[package\]\]/ { name = "" }
        /^name = / { name = $3; gsub(/"/, "", name) }
        /^version = / && name == want { v = $3; gsub(/"/, "", v); print v; exit }
    ' "$SOCKEYE_ROOT/Cargo.lock"
}

inst_rust() {
    _inst_need rustup "rustup (https://rustup.rs) with a Rust toolchain"
    _inst_need cargo "cargo"
    if rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        _inst_skip "rustup target wasm32-unknown-unknown (installed)"
    else
        _inst_do "rustup target add wasm32-unknown-unknown"
        rustup target add wasm32-unknown-unknown
    fi
    local comp
    for comp in rustfmt clippy; do
        if rustup component list --installed | grep -q "^$comp"; then
            _inst_skip "rustup component $comp (installed)"
        else
            _inst_do "rustup component add $comp"
            rustup component add "$comp"
        fi
    done
}

inst_wasm_pack() {
    local have
    have="$(wasm-pack --version 2>/dev/null || true)"
    if [[ "$have" == "wasm-pack $WASM_PACK_VERSION" ]]; then
        _inst_skip "wasm-pack $WASM_PACK_VERSION (installed)"
    else
        _inst_do "cargo install wasm-pack --locked --version $WASM_PACK_VERSION (found: ${have:-none})"
        cargo install wasm-pack --locked --version "$WASM_PACK_VERSION"
    fi
}

inst_wasm_bindgen() {
    local want have
    want="$(_inst_lock_version wasm-bindgen)"
    [[ -n "$want" ]] || _inst_die "no wasm-bindgen package in $SOCKEYE_ROOT/Cargo.lock"
    have="$(wasm-bindgen --version 2>/dev/null || true)"
    if [[ "$have" == "wasm-bindgen $want" ]] && command -v wasm-bindgen-test-runner >/dev/null 2>&1; then
        _inst_skip "wasm-bindgen-cli $want (installed, matches Cargo.lock)"
    else
        # Not --locked: wasm-bindgen-cli's own lock file names a crate the registry lacks.
        _inst_do "cargo install wasm-bindgen-cli --version $want (Cargo.lock wants $want; found: ${have:-none})"
        cargo install wasm-bindgen-cli --version "$want"
    fi
}

# apt-get install PACKAGES (as root, or through sudo).
_inst_apt() {
    local sudo=()
    if [[ "$(id -u)" -ne 0 ]]; then
        _inst_need sudo "sudo (or run as root) to apt-get install $*"
        sudo=(sudo)
    fi
    _inst_do "apt-get install $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$@"
}

inst_chromium() {
    if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
        _inst_skip "chromium + chromium-driver ($(/usr/bin/chromium --version 2>/dev/null || echo '?'))"
        return
    fi
    _inst_apt chromium chromium-driver
}

inst_redis() {
    if command -v redis-server >/dev/null 2>&1; then
        _inst_skip "redis-server ($(redis-server --version 2>/dev/null | cut -d' ' -f3 || echo '?'))"
        return
    fi
    # Only the binary is needed: the tests start redis-server themselves on a port of their own.
    _inst_apt redis-server
}

# _inst_npm_tool BIN PACKAGE VERSION PATTERN: installs npm PACKAGE@VERSION into $SOCKEYE_TOOLS_DIR unless
# `BIN --version` already matches the glob PATTERN, and checks it does afterwards.
_inst_npm_tool() {
    local bin="$1" package="$2" version="$3" pattern="$4" have
    _inst_need npm "node and npm"
    have="$("$bin" --version 2>/dev/null || true)"
    # shellcheck disable=SC2053 # PATTERN is a glob on purpose
    if [[ "$have" == $pattern ]]; then
        _inst_skip "$bin from $package@$version (at $(command -v "$bin"))"
        return
    fi
    _inst_do "npm install $package@$version into $SOCKEYE_TOOLS_DIR (found: ${have:-none})"
    mkdir -p "$SOCKEYE_TOOLS_DIR"
    [[ -f "$SOCKEYE_TOOLS_DIR/package.json" ]] || echo '{ "private": true }' >"$SOCKEYE_TOOLS_DIR/package.json"
    npm install --prefix "$SOCKEYE_TOOLS_DIR" --no-audit --no-fund "$package@$version"
    hash -r
    have="$("$bin" --version 2>/dev/null || true)"
    # shellcheck disable=SC2053
    [[ "$have" == $pattern ]] ||
        _inst_die "$bin on PATH is '${have:-none}' after installing $package@$version ($(command -v "$bin" || true))"
}

inst_wasm_opt() { _inst_npm_tool wasm-opt binaryen "$BINARYEN_VERSION" "*version $BINARYEN_VERSION*"; }

inst_terser() { _inst_npm_tool terser terser "$TERSER_VERSION" "terser $TERSER_VERSION"; }

# Every package.json of the repo's own JS (tests, page), not generated or installed ones.
_inst_js_projects() {
    find "$SOCKEYE_ROOT" \
        -type d \( -name node_modules -o -name target -o -name .git -o -name .tools -o -name 'pkg*' \) -prune -o \
        -type f -name package.json -print | sort
}

inst_js_deps() {
    local pj dir lock stamp found=0
    while IFS= read -r pj; do
        found=1
        dir="$(dirname "$pj")"
        lock="$dir/package-lock.json"
        stamp="$dir/node_modules/.package-lock.json" # npm rewrites it on every install
        if [[ -f "$stamp" && ! "$pj" -nt "$stamp" && ! ( -f "$lock" && "$lock" -nt "$stamp" ) ]]; then
            _inst_skip "npm packages of ${dir#"$SOCKEYE_ROOT"/} (node_modules up to date)"
        elif [[ -f "$lock" ]]; then
            _inst_do "npm ci in ${dir#"$SOCKEYE_ROOT"/}"
            (cd "$dir" && npm ci --no-audit --no-fund)
        else
            _inst_do "npm install in ${dir#"$SOCKEYE_ROOT"/}"
            (cd "$dir" && npm install --no-audit --no-fund)
        fi
    done < <(_inst_js_projects)
    [[ "$found" == 1 ]] || _inst_skip "npm packages (no package.json in the repo yet)"
}

sockeye_install() {
    local t0=$SECONDS
    _inst_say "checking tools (repo: $SOCKEYE_ROOT)"
    inst_rust
    inst_wasm_pack
    inst_wasm_bindgen
    inst_chromium
    inst_redis
    inst_wasm_opt
    inst_terser
    inst_js_deps
    _inst_say "tools ready in $((SECONDS - t0))s"
}

sockeye_install
