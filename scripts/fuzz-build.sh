#!/usr/bin/env bash
# Builds the protocol fuzz targets (fuzz/), installing cargo-fuzz first if it is missing.
#
#   scripts/fuzz-build.sh              build every target
#   scripts/fuzz-build.sh --run 20     build, then run each target for 20 seconds
#
# libFuzzer instrumentation needs unstable rustc flags (-Zsanitizer, sancov); RUSTC_BOOTSTRAP=1 lets
# the stable toolchain accept them, so no nightly toolchain is required.
set -euo pipefail

cd "$(dirname "$0")/.."

run_seconds=""
if [[ "${1:-}" == "--run" ]]; then
    run_seconds="${2:?--run needs a number of seconds}"
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
targets=$(cargo fuzz list --fuzz-dir fuzz)

echo "building fuzz targets: $(echo $targets)" >&2
cargo fuzz build --fuzz-dir fuzz

if [[ -n "$run_seconds" ]]; then
    for target in $targets; do
        echo "running $target for ${run_seconds}s" >&2
        mkdir -p "fuzz/corpus/$target"
        # New findings go to the (ignored) corpus dir; the committed seeds are read-only inputs.
        cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
            -- -max_total_time="$run_seconds"
    done
fi
echo "fuzz targets built: $(echo $targets)" >&2
