#!/usr/bin/env bash
# Makes (once) the Python virtual environment with the Python SignalR clients
# that tests/python drives (pysignalr, signalrcore), and prints the path of its
# python. Safe to run concurrently (a lock file serializes installs).
set -euo pipefail
cd "$(dirname "$0")/.."
REQUIREMENTS=("pysignalr==1.3.*" "signalrcore==1.0.*")
VENV="${PYTHON_CLIENTS_VENV:-$PWD/target/python-clients-venv}"
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
installed() {
    "$VENV/bin/python" - "${REQUIREMENTS[@]}" 2>/dev/null <<'PY'
import fnmatch, importlib.metadata as m, sys
for requirement in sys.argv[1:]:
    name, pattern = requirement.split("==")
    if not fnmatch.fnmatch(m.version(name), pattern):
        sys.exit(1)
PY
}
if ! installed; then
    rm -rf "$VENV"
    if ! python3 -m venv "$VENV" >&2; then
        # Debian splits venv support into its own package.
        apt-get install -y python3-venv >&2
        python3 -m venv "$VENV" >&2
    fi
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "${REQUIREMENTS[@]}" >&2
fi
echo "$VENV/bin/python"
