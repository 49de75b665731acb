#!/usr/bin/env bash
# Instructions per echo message (or per broadcast delivery) in a server,
# counted by valgrind's callgrind: unlike wall-clock or CPU time, the count
# repeats to within a fraction of a percent on a busy machine.
#
#   bash scripts/callgrind.sh echo                      # tidings, JSON
#   bash scripts/callgrind.sh echo --protocol messagepack --server raw
#   bash scripts/callgrind.sh broadcast --server raw-tws
#
# Servers: tidings (the standalone server, test hub, WebSockets only), raw
# (tidings-baseline, tungstenite) and raw-tws (tidings-baseline --codec
# tokio-websockets). The server runs under callgrind twice, each time fresh:
# once with a few messages and once with many more, from the load generator
# (`tidings-bench echo --echoes N`: every connection makes exactly N
# calls; `tidings-bench broadcast`: rate × 10 s messages to every
# listener, at rates low enough that each message reaches every listener
# before the next is sent, so no write carries more than one message and
# the count does not depend on timing). The difference of the two totals,
# divided by the difference of the messages (deliveries), is the cost of
# one message: startup, connection set-up, keep-alives and shutdown cancel
# out. The larger run's profile is
# kept in target/callgrind/ for `callgrind_annotate`.
#
# Options: --server, --protocol, --connections (echo: 100; broadcast:
# listeners, 1000), --few / --many (echo: calls per connection, 20 / 220;
# broadcast: messages per second for 10 s, 1 / 3), --bin-dir (the
# binaries to measure, e.g. copies of an earlier build; default: build
# target/release).
set -euo pipefail
cd "$(dirname "$0")/.."

scenario=${1:?usage: scripts/callgrind.sh echo|broadcast [--server tidings|raw|raw-tws] [--protocol json|messagepack]}
shift
server=tidings
protocol=json
connections=
few=
many=
bin=
while [[ $# -gt 0 ]]; do
    case "$1" in
        --server) server=$2; shift 2 ;;
        --protocol) protocol=$2; shift 2 ;;
        --connections) connections=$2; shift 2 ;;
        --few) few=$2; shift 2 ;;
        --many) many=$2; shift 2 ;;
        --bin-dir) bin=$2; shift 2 ;;
        *) echo "unknown option $1" >&2; exit 2 ;;
    esac
done
case "$scenario" in
    echo) connections=${connections:-100}; few=${few:-20}; many=${many:-220} ;;
    broadcast) connections=${connections:-1000}; few=${few:-1}; many=${many:-3} ;;
    *) echo "scenario: echo or broadcast" >&2; exit 2 ;;
esac
seconds=10

if [[ -z "$bin" ]]; then
    cargo build --release -p tidings-server -p tidings-bench >&2
    bin=target/release
fi
ulimit -n "$(ulimit -Hn)"
out=target/callgrind
mkdir -p "$out"

case "$server" in
    tidings) command=("$bin/tidings" --transports WebSockets --test-hub) ;;
    raw) command=("$bin/tidings-baseline") ;;
    raw-tws) command=("$bin/tidings-baseline" --codec tokio-websockets) ;;
    *) echo "server: tidings, raw or raw-tws" >&2; exit 2 ;;
esac

# Runs the server under callgrind with `amount` of work; prints its total
# instruction count.
measure() {
    local amount=$1 name="$out/$scenario-$server-$protocol-$1"
    rm -f "$name".out "$name".log
    RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$name.out" \
        "${command[@]}" --listen 127.0.0.1:0 >"$name.log" 2>"$name.valgrind" &
    local pid=$!
    local address=
    for _ in $(seq 600); do
        address=$(sed -n 's#^listening on http://##p' "$name.log" | head -1)
        [[ -n "$address" ]] && break
        sleep 0.1
    done
    if [[ -z "$address" ]]; then
        kill "$pid" 2>/dev/null || true
        echo "the server did not start: see $name.valgrind" >&2
        exit 1
    fi
    local load=(--server "$server" --url "$address" --protocol "$protocol" -n "$connections" --quiet)
    if [[ "$scenario" == echo ]]; then
        "$bin/tidings-bench" echo "${load[@]}" --warmup 0 --duration 600 \
            --echoes "$amount" --json "$name.json" >&2
    else
        "$bin/tidings-bench" broadcast "${load[@]}" --rate "$amount" \
            --duration "$seconds" --drain 60 --json "$name.json" >&2
    fi
    # SIGTERM: callgrind writes its profile when the program ends.
    kill -TERM "$pid"
    wait "$pid" || true
    sed -n 's/^totals: *//p' "$name.out" | awk '{print $1}'
}

small=$(measure "$few")
large=$(measure "$many")
if [[ "$scenario" == echo ]]; then
    units=$(( (many - few) * connections ))
    what="echo message"
else
    units=$(( (many - few) * seconds * connections ))
    what="delivery"
fi
per=$(( (large - small) / units ))
echo "$scenario $server $protocol: $small instructions with $few, $large with $many; ($large - $small) / $units = $per instructions per $what"
echo "profile of the larger run: callgrind_annotate $out/$scenario-$server-$protocol-$many.out"
