#!/usr/bin/env bash
# Gateway overhead: the latency the gateway adds over calling the mock cloud
# directly, at fixed open-loop rates (non-streaming and streaming), measured
# in alternating A/B rounds in one run (A = mock direct, B = gateway in front
# of the same mock). The gateway runs as in the quick start: embedded SQLite,
# no Redis, every request authenticated, classified, routed and written to
# the ledger.
#
#   ./scripts/bench-gateway.sh                     # rates 500 1000 2000, 10 s each
#   RATES="1000" DURATION=30 ./scripts/bench-gateway.sh
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
cargo build --release --bins --quiet

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT INT TERM

first_line() { # first_line <file>: waits for a process's address banner
  for _ in $(seq 1 300); do
    [[ -s "$1" ]] && { head -n 1 "$1" | awk '{print $NF}'; return; }
    sleep 0.1
  done
  echo "no banner in $1" >&2
  exit 1
}

# Unpaced mock: answers at once, so what is measured is transport and the
# gateway, not simulated generation.
"$bin/mock-cloud" --addr 127.0.0.1:0 --models mock-model --completion-tokens 16 >"$work/mock.out" 2>/dev/null &
pids+=($!)
mock=$(first_line "$work/mock.out")

export GATEWAY_SQLITE_PATH="$work/gateway.db"
gw() { "$bin/gateway" "$@" >/dev/null; }
gw migrate
gw tenant create bench
gw backend add --name cloud --kind cloud --url "$mock" --model mock-model --rtt-ms 1
key=$("$bin/gateway" key create --tenant bench | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')

RUST_LOG=warn "$bin/gateway" serve --listen 127.0.0.1:0 >"$work/gateway.out" 2>"$work/gateway.log" &
pids+=($!)
gateway=$(first_line "$work/gateway.out")
for _ in $(seq 1 100); do curl -sf "$gateway/readyz" >/dev/null && break; sleep 0.1; done

# One request through the gateway must succeed before measuring anything.
curl -sf "$gateway/v1/chat/completions" -H "authorization: Bearer $key" \
  -H 'content-type: application/json' \
  -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null

echo "mock $mock, gateway $gateway/v1 ($(nproc) cores, $(uptime | sed 's/.*load/load/'))"
MOCK_URL="$mock" GATEWAY_URL="$gateway/v1" LOADGEN_API_KEY="$key" LOADGEN="$bin/loadgen" \
  MODEL=mock-model OUT="$root/target/overhead" "$root/loadtest/scripts/overhead.sh"

rows=$(sqlite3 "$work/gateway.db" "select status, count(*) from request_ledger group by status" 2>/dev/null || true)
[[ -n "$rows" ]] && echo "ledger rows by status: $(echo "$rows" | tr '\n' ' ')"
