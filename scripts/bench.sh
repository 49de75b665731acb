#!/usr/bin/env bash
# Runs the benchmark suite: builds the release binaries, then the load
# generator starts the raw WebSocket baseline and the tidings server and runs
# every scenario (echo, broadcast, group, connect, idle) against both, with
# JSON and MessagePack. Results: bench-results/results.json, results.md
# (the tables of BENCHMARKS.md) and latency plots (SVG).
#
#   bash scripts/bench.sh                  # the full suite (about 25 minutes)
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
exec target/release/tidings-bench suite --out-dir bench-results "$@"
