#!/usr/bin/env bash
# Makes (once) the Python virtual environment with the aiosignalr server that the
# Rust client's interop tests run, and prints the path of its python. Safe to run
# concurrently (a lock file serializes installs).
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=0.1.1
VENV="${AIOSIGNALR_VENV:-$PWD/target/aiosignalr-venv}"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
installed() {
    "$VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('aiosignalr') != '$VERSION')" 2>/dev/null
}
if ! installed; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >&2; then
        # Debian splits venv support into its own package.
        apt-get install -y python3-venv >&2
        python3 -m venv "$VENV" >&2
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "aiosignalr==$VERSION" >&2
fi
echo "$VENV/bin/python"
