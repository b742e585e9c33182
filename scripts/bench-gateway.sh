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
#
# With BASELINE_GATEWAY=<path to another gateway binary>, A is that gateway
# instead of the bare mock (same mock, same settings, a copy of the same
# database): the figures are then what this build adds over the baseline.
#
# With BASELINE_ENV="NAME=value …" (and no BASELINE_GATEWAY), A is this same
# gateway started with those settings, e.g. BASELINE_ENV="GATEWAY_SETTINGS_CACHE_MS=600000
# GATEWAY_KEY_CACHE_MS=600000" asks whether cache refreshes still cost the
# request path anything.
#
# With REDIS_URL=redis://127.0.0.1:6379/0, A is the same gateway without
# Redis and B the gateway with it (limits, budget holds and settlements,
# health and registrations shared through Redis, under a fresh key prefix),
# and the key gets limits and a budget so that every request runs the Redis
# scripts: the figures are then what Redis adds to a request.
#
# With LITELLM=<path to the litellm executable> (pip install 'litellm[proxy]'),
# A is LiteLLM's proxy (one worker) in front of the same mock, with the
# gateway's key as its master key: the figures are then this gateway against
# LiteLLM. LiteLLM saturates far below the default rates; use e.g.
# RATES="25 50".
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
limits=()
[[ -n "${REDIS_URL:-}" ]] && limits=(--rpm 100000000 --tpm 2000000000 --budget 1000000)
key=$("$bin/gateway" key create --tenant bench "${limits[@]}" | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')

start_env=() # NAME=value settings for the next start_gateway only
start_gateway() { # start_gateway <binary> <name>: sets $url and $pid
  env "${start_env[@]}" RUST_LOG=warn "$1" serve --listen 127.0.0.1:0 >"$work/$2.out" 2>"$work/$2.log" &
  pid=$!
  pids+=("$pid")
  url=$(first_line "$work/$2.out")
  for _ in $(seq 1 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done
}
baseline_url="$mock"
a_name=direct
if [[ -n "${LITELLM:-}" ]]; then
  cat >"$work/litellm.yaml" <<YAML
model_list:
  - model_name: mock-model
    litellm_params:
      model: openai/mock-model
      api_base: $mock
      api_key: unused
YAML
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  (cd "$work" && LITELLM_MASTER_KEY="$key" exec "$LITELLM" --config "$work/litellm.yaml" \
    --host 127.0.0.1 --port "$port" --num_workers 1 >"$work/litellm.log" 2>&1) &
  pids+=($!)
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/health/liveliness" >/dev/null && break; sleep 0.3; done
  baseline_url="http://127.0.0.1:$port/v1"
  a_name=litellm
elif [[ -n "${REDIS_URL:-}" ]]; then
  for f in "$work"/gateway.db*; do cp "$f" "$work/baseline${f#"$work"/gateway}"; done
  GATEWAY_SQLITE_PATH="$work/baseline.db" start_gateway "$bin/gateway" baseline
  baseline_url="$url/v1"
  baseline_pid=$pid
  a_name=no-redis
  export GATEWAY_REDIS_URL="$REDIS_URL" GATEWAY_REDIS_PREFIX="bench-$$-$RANDOM:"
elif [[ -n "${BASELINE_GATEWAY:-}${BASELINE_ENV:-}" ]]; then
  for f in "$work"/gateway.db*; do cp "$f" "$work/baseline${f#"$work"/gateway}"; done
  read -r -a start_env <<<"${BASELINE_ENV:-}"
  start_env+=("GATEWAY_SQLITE_PATH=$work/baseline.db")
  start_gateway "${BASELINE_GATEWAY:-$bin/gateway}" baseline
  start_env=()
  baseline_url="$url/v1"
  baseline_pid=$pid
  a_name=baseline
fi
start_gateway "$bin/gateway" gateway
gateway="$url"
gateway_pid=$pid

# One request through the gateway must succeed before measuring anything.
curl -sf "$gateway/v1/chat/completions" -H "authorization: Bearer $key" \
  -H 'content-type: application/json' \
  -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null

echo "A $baseline_url, B (gateway) $gateway/v1 ($(nproc) cores, $(uptime | sed 's/.*load/load/'))"
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # user + system
gateway_cpu0=$(cpu_ticks "$gateway_pid")
[[ -n "${baseline_pid:-}" ]] && baseline_cpu0=$(cpu_ticks "$baseline_pid")
A_NAME="$a_name" MOCK_URL="$baseline_url" GATEWAY_URL="$gateway/v1" LOADGEN_API_KEY="$key" LOADGEN="$bin/loadgen" \
  MODEL=mock-model OUT="$root/target/overhead" "$root/loadtest/scripts/overhead.sh"

# CPU the gateway process spent per request it served (warm-ups included):
# how much of a core the figures above cost.
per_request() { # per_request <pid> <ticks before> <db>
  local ticks n
  ticks=$(( $(cpu_ticks "$1") - $2 ))
  n=$(sqlite3 "$3" "select count(*) from request_ledger" 2>/dev/null || echo 0)
  (( n > 0 )) && echo "$(( ticks * 1000000 / $(getconf CLK_TCK) / n )) us CPU/request over $n requests"
}
echo "gateway: $(per_request "$gateway_pid" "$gateway_cpu0" "$work/gateway.db")"
[[ -n "${baseline_pid:-}" ]] && echo "baseline: $(per_request "$baseline_pid" "$baseline_cpu0" "$work/baseline.db")"

rows=$(sqlite3 "$work/gateway.db" "select status, count(*) from request_ledger group by status" 2>/dev/null || true)
[[ -n "$rows" ]] && echo "ledger rows by status: $(echo "$rows" | tr '\n' ' ')"
