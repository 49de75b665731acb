#!/usr/bin/env bash
# Runs the benchmark suite: builds the release binaries, then the load
# generator starts the raw WebSocket baseline and the tidings server and runs
# every scenario (echo, broadcast, group, connect, idle) against both, with
# JSON and MessagePack. Results: bench-results/results.json, results.md
# (the tables of BENCHMARKS.md) and latency plots (SVG).
#
#   bash scripts/bench.sh                  # the full suite (about 32 minutes)
#   bash scripts/bench.sh --quick          # a short run to check the tools
#   bash scripts/bench.sh --scenarios echo,idle --protocols json
#
# The many-connections scenario starts its own redis-server and as many
# tidings servers and load-generator processes as the count needs (each
# holds at most ~19 800 connections), then writes its report into the
# "Many connections" section of BENCHMARKS.md (that section only):
#
#   bash scripts/bench.sh --million                        # 1 000 000 connections
#   bash scripts/bench.sh --million --connections 100000   # fewer
#   bash scripts/bench.sh --million --connections 500000 --keep-alive 60 \
#       --idle-seconds 60 --group-rate 400,300,200,100,50 --drain 120
#       # the run in BENCHMARKS.md: keep-alive 60 s both ways, group rates
#       # stepped down until one keeps the p99 under one second
#
# The durability scenario (tests/js/durability-cost.mjs) measures what the
# Redis durability mode (--redis-durable-ms) costs against the mode off:
# echo and broadcast throughput, server and Redis CPU per message, Redis
# commands and memory, over rounds that alternate the modes, each with a
# redis-server and one server of its own; it writes the "Durability mode:
# what it costs" section of BENCHMARKS.md (between its markers only):
#
#   bash scripts/bench.sh --durability                    # 3 rounds of each mode (about 5 minutes)
#   bash scripts/bench.sh --durability --rounds 1 --seconds 5
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tidings-server -p tidings-bench
# Every process started from here may open as many files as allowed.
ulimit -n "$(ulimit -Hn)"
if [[ "${1:-}" == "--million" ]]; then
    shift
    exec target/release/tidings-bench million --benchmarks-md BENCHMARKS.md \
        --json bench-results/million.json "$@"
fi
if [[ "${1:-}" == "--durability" ]]; then
    shift
    if ! command -v redis-server > /dev/null; then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq && apt-get install -y -qq redis-server > /dev/null
    fi
    if [[ ! -d tests/js/node_modules ]]; then
        (cd tests/js && npm ci --no-audit --no-fund)
    fi
    export TIDINGS_BIN="$PWD/target/release/tidings"
    export DURABILITY_COST_COMMAND="bash scripts/bench.sh --durability${*:+ $*}"
    cd tests/js
    exec node durability-cost.mjs --benchmarks ../../BENCHMARKS.md "$@"
fi
exec target/release/tidings-bench suite --out-dir bench-results "$@"
