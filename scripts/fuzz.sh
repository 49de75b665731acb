#!/usr/bin/env bash
# Runs every fuzz target (fuzz/) for a fixed number of executions and prints the totals.
#
#   scripts/fuzz.sh                     every target, 500000 executions each
#   scripts/fuzz.sh --runs 1000000      every target, one million executions each
#   scripts/fuzz.sh --runs 200000 post_bodies negotiate_query
#
# Each target starts from the committed seeds (fuzz/seeds/<target>) plus the corpus earlier runs
# left in fuzz/corpus/<target> (ignored by git). A crash stops that target, leaves its input in
# fuzz/artifacts/<target>/ and makes the script exit with status 1 after the others have run.
# Record the table this prints in fuzz/RESULTS.md.
#
# libFuzzer instrumentation needs unstable rustc flags; RUSTC_BOOTSTRAP=1 lets the stable
# toolchain accept them.
set -euo pipefail

cd "$(dirname "$0")/.."

runs=500000
if [[ "${1:-}" == "--runs" ]]; then
    runs="${2:?--runs needs a number of executions}"
    shift 2
fi
if ! [[ "$runs" =~ ^[0-9]+$ ]]; then
    echo "--runs needs a number, not '$runs'" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "cargo-fuzz not found; installing it" >&2
    cargo install cargo-fuzz --locked
fi
export RUSTC_BOOTSTRAP=1

if [[ $# -gt 0 ]]; then
    targets="$*"
else
    targets=$(cargo fuzz list --fuzz-dir fuzz)
fi

echo "building fuzz targets" >&2
cargo fuzz build --fuzz-dir fuzz >&2

logs=$(mktemp -d)
trap 'rm -rf "$logs"' EXIT
failed=0
rows=()
for target in $targets; do
    mkdir -p "fuzz/corpus/$target"
    echo "fuzzing $target for $runs executions" >&2
    status=ok
    if ! cargo fuzz run --fuzz-dir fuzz "$target" "fuzz/corpus/$target" "fuzz/seeds/$target" \
        -- -runs="$runs" -print_final_stats=1 >"$logs/$target" 2>&1; then
        status="FAILED (see fuzz/artifacts/$target/)"
        failed=1
        tail -n 40 "$logs/$target" >&2
    fi
    # libFuzzer's final statistics: executions, speed, and the last coverage line.
    executed=$(sed -n 's/^stat::number_of_executed_units: *//p' "$logs/$target" | tail -n 1)
    speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$logs/$target" | tail -n 1)
    seconds=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$logs/$target" | tail -n 1)
    last=$(grep -E '^#[0-9]+' "$logs/$target" | tail -n 1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    features=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    corpus=$(sed -n 's/.* corp: \([0-9]*\)\/.*/\1/p' <<<"$last")
    rows+=("| \`$target\` | ${executed:-?} | ${seconds:-?} | ${speed:-?} | ${cov:-?} | ${features:-?} | ${corpus:-?} | $status |")
done

echo
echo "| target | executions | seconds | exec/s | coverage (edges) | features | corpus | result |"
echo "|---|---|---|---|---|---|---|---|"
printf '%s\n' "${rows[@]}"
exit "$failed"
