#!/usr/bin/env bash
# Runs every check and test of the repository. Installs what the tests need
# where it is missing (npm packages for the JS-client suite, the demo app and
# the browser suite, redis-server, HAProxy and nginx, Chromium, cargo-fuzz,
# the aiosignalr server for the Rust client's interop tests, the Python
# clients, schemathesis for the REST API).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# The backplane tests start their own redis-server (on a free port), and a
# three-node Redis Cluster joined with redis-cli (Debian's redis-server
# package brings redis-tools).
if ! command -v redis-server > /dev/null || ! command -v redis-cli > /dev/null; then
    step "installing redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq redis-server > /dev/null
fi

# The load-balancer suite runs a cluster behind HAProxy and behind nginx,
# started by the test itself with the configurations of deploy/ (on a free
# port, files in a temporary directory); the packages' system services are
# not used by the tests.
if ! command -v haproxy > /dev/null || ! command -v nginx > /dev/null; then
    step "installing haproxy and nginx"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq haproxy nginx > /dev/null
fi

# The Python server of the Rust client's interop tests, and the Python clients
# of the JS-client suite, install while Rust builds.
mkdir -p target
bash scripts/aiosignalr-venv.sh > target/aiosignalr-python 2> target/aiosignalr-venv.log &
venv_pid=$!
bash scripts/python-clients.sh > target/python-clients-python 2> target/python-clients-venv.log &
clients_venv_pid=$!

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The workspace build turns on `tidings/tls`; check the library without it.
cargo clippy -p tidings --all-targets -- -D warnings
# The workspace build turns on `tidings-client/rustls` (the server's tests use
# it); check the client without it.
cargo clippy -p tidings-client --all-targets -- -D warnings

step "cargo doc"
# Broken intra-doc links and other rustdoc warnings fail the run; so does
# Cargo's warning of two targets writing the same docs (a binary named like a
# library would replace the library's docs), which no flag turns into an error.
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps 2> target/doc.log \
    || { cat target/doc.log; exit 1; }
if grep -q 'output filename collision' target/doc.log; then
    cat target/doc.log
    exit 1
fi

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

step "many-connections scenario, small: 3 000 connections over 3 servers on one Redis"
# The scenario of `scripts/bench.sh --million` at a size CI can hold: fails on
# any connection not opened or any broadcast or group delivery missing or doubled.
(ulimit -n "$(ulimit -Hn)" && target/debug/tidings-bench million --connections 3000 --servers 3 \
    --idle-seconds 2 --group-rate 300 --group-seconds 2 --drain 15 --quiet \
    --server-bin target/debug/tidings > target/million-smoke.log 2>&1) \
    || { cat target/million-smoke.log; exit 1; }

if [[ -f tests/js/package.json ]]; then
    step "JS-client end-to-end suite"
    # examples.test.mjs runs the programs of examples/ beside the server.
    cargo build -p tidings-server -p 'example-*'
    if ! wait "$clients_venv_pid"; then
        cat target/python-clients-venv.log >&2
        exit 1
    fi
    (cd tests/js && npm ci --no-audit --no-fund \
        && PYTHON_CLIENTS_PYTHON="$(cat ../../target/python-clients-python)" \
            TIDINGS_BIN="$PWD/../../target/debug/tidings" node --test)
fi

step "REST API against its OpenAPI document (schemathesis)"
bash scripts/schemathesis.sh > target/schemathesis.log 2>&1 \
    || { cat target/schemathesis.log; exit 1; }
tail -n 12 target/schemathesis.log

if [[ -f tests/ts/package.json ]]; then
    step "TypeScript of the hubs: tsc --strict, misspelled usage, run against the server"
    cargo build -p tidings-server
    (cd tests/ts && npm ci --no-audit --no-fund && TIDINGS_BIN="$PWD/../../target/debug/tidings" node --test typescript.test.mjs)
fi

step "demo web app: generated hub modules, strict types, committed bundle up to date"
cargo build -p tidings-server
for hub in chat dashboard; do
    target/debug/tidings typescript --hub "$hub" --check \
        --out "crates/tidings-server/web/src/generated/$hub.ts"
done
(cd crates/tidings-server/web && npm ci --no-audit --no-fund && npm run check)

step "browser suite (Chromium driven by Playwright)"
if ! command -v chromium > /dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq chromium > /dev/null
fi
cargo build -p tidings-server
# Screenshots of each test land in target/screenshots/.
(cd tests/browser && npm ci --no-audit --no-fund && TIDINGS_BIN="$PWD/../../target/debug/tidings" node --test)

step "all checks passed"
