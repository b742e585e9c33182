#!/usr/bin/env bash
# Runs a scenario file (loadtest/scenarios/*.toml) against the local-process
# topology and writes its report (Markdown, SVG plots, JSON, CSV) to
# target/loadtest/<scenario>/: two edge workers serving the bundled model,
# the mock cloud standing in for a paid API (TTFT 500 ms, 60 tokens/s,
# priced), and a gateway in front of them (SQLite), with an admin token so
# the report joins every request with its ledger row.
#
#   ./scripts/loadtest.sh loadtest/scenarios/burst.toml
#   SCALE=4 ./scripts/loadtest.sh loadtest/scenarios/overload.toml
#
# SCALE (default 2) is the fleet's capacity in requests/s: scenario rates
# are multiples of it. The worker-loss scenario stops the second edge
# worker (SIGSTOP: its connections hang, as a wedged host's would) and
# resumes it (SIGCONT).
#
# The same scenario against another deployment, e.g. compose:
#   target/release/loadgen --url http://localhost:8080/v1 --scenario loadtest/scenarios/burst.toml \
#     --api-key "$KEY" --admin-token "$ADMIN_TOKEN" --scale 4
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scenario=${1:?usage: scripts/loadtest.sh <scenario.toml>}
bin="${CARGO_TARGET_DIR:-$root/target}/release"
"$root/scripts/setup.sh" --quickstart
model=$("$root/scripts/fetch-model.sh")
cargo build --release --bins --quiet

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

start() { # start <name> <cmd...>: sets $addr and $pid from the first stdout line
  local name=$1 line=""
  shift
  "$@" >"$work/$name.out" 2>"$work/$name.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 1 600); do
    line=$(head -n 1 "$work/$name.out")
    [[ -n "$line" ]] && break
    sleep 0.1
  done
  [[ -n "$line" ]] || { echo "error: $name did not start:" >&2; cat "$work/$name.log" >&2; exit 1; }
  addr="${line##* }"
}
wait_ready() {
  for _ in $(seq 1 900); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done
  echo "error: $1 not ready" >&2
  exit 1
}

head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$work/worker-token"
export EDGE_WORKER_TOKEN_FILE="$work/worker-token" GATEWAY_WORKER_TOKEN_FILE="$work/worker-token"
export CLOUD_API_KEY=mock-key
start mock-cloud "$bin/mock-cloud" --addr 127.0.0.1:0 --api-key mock-key \
  --models cloud-small --ttft-ms 500 --tokens-per-second 60
cloud=$addr
edges=()
for i in 1 2; do
  start "edge-$i" "$bin/edge-worker" --model-path "$model" --listen 127.0.0.1:0
  edges+=("$addr")
  edge_pid=$pid
done

export GATEWAY_SQLITE_PATH="$work/gateway.db"
SEED_DIR="$work" SEED_EDGE_URLS="${edges[*]}" SEED_CLOUD_URL="$cloud" \
  GATEWAY_BIN="$bin/gateway" sh "$root/deploy/gateway-seed/seed.sh" >"$work/seed.log"
key=$(cat "$work/api-key")
admin=$("$bin/gateway" admin-token create --name loadtest | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
start gateway "$bin/gateway" serve --listen 127.0.0.1:0
gateway=$addr
for e in "${edges[@]}"; do wait_ready "$e/readyz"; done
wait_ready "$gateway/readyz"

export WORKER_LOSS="kill -STOP $edge_pid" WORKER_BACK="kill -CONT $edge_pid"
LOADGEN_API_KEY="$key" LOADGEN_ADMIN_TOKEN="$admin" "$bin/loadgen" --url "$gateway/v1" \
  --scenario "$scenario" --scale "${SCALE:-2}" --timeout 120 --out "$root/target/loadtest"
