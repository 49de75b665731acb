#!/usr/bin/env bash
# Property-based test of the REST publish API against its OpenAPI document
# with schemathesis (PyPI): starts the standalone server with an access key,
# generates requests for every operation (valid and invalid), and checks
# status codes, content types and bodies against the document.
#
#   bash scripts/schemathesis.sh            # 50 examples per operation
#   MAX_EXAMPLES=200 bash scripts/schemathesis.sh
#
# Uses target/debug/tidings (or $TIDINGS_BIN); installs schemathesis into
# target/schemathesis-venv once. The output is kept in
# target/schemathesis/run.log, with a JUnit report beside it; the exit
# status is schemathesis's (non-zero on any failed check).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=4.32.5
VENV="${SCHEMATHESIS_VENV:-$PWD/target/schemathesis-venv}"
BIN="${TIDINGS_BIN:-$PWD/target/debug/tidings}"
REPORTS="$PWD/target/schemathesis"
MAX_EXAMPLES="${MAX_EXAMPLES:-50}"

mkdir -p "$(dirname "$VENV")" "$REPORTS"
exec 9>"$VENV.lock"
flock 9
if ! "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('schemathesis') != '$VERSION')" 2>/dev/null; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >&2; then
        apt-get install -y python3-venv >&2
        python3 -m venv "$VENV" >&2
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$VERSION" >&2
fi
exec 9>&-

[ -x "$BIN" ] || cargo build -p tidings-server
export TIDINGS_ACCESS_KEY="schemathesis-access-key-0123456789"
LOG="$REPORTS/server.log"
# --test-hub: the hooks publish to the test hub as well as to chat.
"$BIN" --listen 127.0.0.1:0 --test-hub --access-key "$TIDINGS_ACCESS_KEY" >"$LOG" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    TIDINGS_URL="$(sed -n 's/^listening on \(http:\/\/[0-9.:]*\)$/\1/p' "$LOG")"
    [ -n "$TIDINGS_URL" ] && break
    sleep 0.1
done
[ -n "$TIDINGS_URL" ] || { cat "$LOG" >&2; echo "the server did not start" >&2; exit 1; }
export TIDINGS_URL

# Run from the reports directory: schemathesis keeps its own files in the
# working directory.
SCRIPTS="$PWD/scripts"
cd "$REPORTS"
PYTHONPATH="$SCRIPTS" SCHEMATHESIS_HOOKS=schemathesis_hooks \
    "$VENV/bin/schemathesis" run "$TIDINGS_URL/api/openapi.json" \
    --url "$TIDINGS_URL" \
    --checks all \
    --max-examples "$MAX_EXAMPLES" \
    --seed "${SEED:-1}" \
    --generation-database none \
    --report junit --report-dir "$REPORTS" \
    --no-color 2>&1 | tee "$REPORTS/run.log"
