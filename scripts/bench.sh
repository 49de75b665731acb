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
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -p tidings-server -p tidings-bench
exec target/release/tidings-bench suite --out-dir bench-results "$@"
