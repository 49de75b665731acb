#!/usr/bin/env bash
# Runs every check and test of the repository. Installs what the tests need
# where it is missing (npm packages for the JS-client suite, cargo-fuzz, the
# aiosignalr server for the Rust client's interop tests).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# The backplane tests start their own redis-server (on a free port).
if ! command -v redis-server > /dev/null; then
    step "installing redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq redis-server > /dev/null
fi

# The Python server of the Rust client's interop tests installs while Rust builds.
mkdir -p target
bash scripts/aiosignalr-venv.sh > target/aiosignalr-python 2> target/aiosignalr-venv.log &
venv_pid=$!

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The workspace build turns on `tidings/tls`; check the library without it.
cargo clippy -p tidings --all-targets -- -D warnings
# The workspace build turns on `tidings-client/rustls` (the server's tests use
# it); check the client without it.
cargo clippy -p tidings-client --all-targets -- -D warnings

step "cargo test"
if ! wait "$venv_pid"; then
    cat target/aiosignalr-venv.log >&2
    exit 1
fi
AIOSIGNALR_PYTHON="$(cat target/aiosignalr-python)" cargo test --workspace

if [[ -x scripts/fuzz-build.sh || -f scripts/fuzz-build.sh ]]; then
    step "fuzz targets build"
    bash scripts/fuzz-build.sh
fi

step "load generator smoke run"
cargo build -p tidings-server -p tidings-bench
# Every scenario against the raw baseline and tidings, JSON and MessagePack,
# with few connections and one-second phases; fails on any error or lost message.
target/debug/tidings-bench suite --quick --duration 1 --quiet --check \
    --server-bin target/debug/tidings --baseline-bin target/debug/tidings-baseline \
    --out-dir target/bench-smoke > target/bench-smoke.log 2>&1 \
    || { cat target/bench-smoke.log; exit 1; }

if [[ -f tests/js/package.json ]]; then
    step "JS-client end-to-end suite"
    cargo build -p tidings-server
    (cd tests/js && npm ci --no-audit --no-fund && TIDINGS_BIN="$PWD/../../target/debug/tidings" node --test)
fi

step "all checks passed"
