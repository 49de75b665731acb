#!/usr/bin/env bash
# Runs the fault scenarios of tests/js/faults.mjs against a real cluster
# (three tidings servers on a redis-server of their own, behind HAProxy run
# with deploy/haproxy.cfg, all started on free ports) with the official
# @microsoft/signalr client: Redis outages within and beyond the backplane
# buffer, a rolling restart of every server, kill -9 of one server, TCP cuts
# under stateful reconnect, clients that stop reading. Each prints sent,
# received, lost, duplicated and recovery times; the command fails on any
# loss beyond what the scenario states it expects (EXPECTATIONS in
# tests/js/faults.mjs).
#
#   bash scripts/faults.sh                   the full size on a release build (a few minutes);
#                                            writes the "Reliability" section of BENCHMARKS.md
#   bash scripts/faults.sh --short           the short size on a debug build (what the JS suite
#                                            runs, tests/js/faults.test.mjs); writes nothing
#   bash scripts/faults.sh --only kill-9,tcp-cuts   some scenarios only; writes nothing
#
# TIDINGS_BIN=path/to/tidings runs another build of the server instead.
set -euo pipefail
cd "$(dirname "$0")/.."

short=false
only=false
for arg in "$@"; do
    case "$arg" in
        --short) short=true ;;
        --only) only=true ;;
    esac
done

# The scenarios start their own redis-server and HAProxy (not the system
# services); install them where missing, as scripts/test.sh does.
if ! command -v redis-server > /dev/null || ! { command -v haproxy > /dev/null || [[ -x /usr/sbin/haproxy ]]; }; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq redis-server haproxy > /dev/null
fi

if [[ -z "${TIDINGS_BIN:-}" ]]; then
    if $short; then
        cargo build -p tidings-server
        TIDINGS_BIN="$PWD/target/debug/tidings"
    else
        cargo build --release -p tidings-server
        TIDINGS_BIN="$PWD/target/release/tidings"
    fi
fi
export TIDINGS_BIN

if [[ ! -d tests/js/node_modules ]]; then
    (cd tests/js && npm ci --no-audit --no-fund)
fi

args=("$@")
# Only a full run of every scenario is a record worth keeping.
if ! $short && ! $only; then
    args+=(--benchmarks "$PWD/BENCHMARKS.md")
fi
cd tests/js
exec node faults.mjs "${args[@]}"
