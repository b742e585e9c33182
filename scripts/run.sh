#!/usr/bin/env bash
# The quick start: builds the project, fetches the bundled model, and brings
# up the whole system on embedded defaults — one edge worker serving the
# model, and the gateway in front of it (SQLite, no Redis) at
# http://127.0.0.1:8080/v1 — then prints a demo API key for any OpenAI SDK.
#
# A cloud fallback is optional:
#   CLOUD_BASE_URL=https://api.example.com/v1 CLOUD_API_KEY=... CLOUD_MODEL=gpt-4o-mini ./scripts/run.sh
#   MOCK_CLOUD=1 ./scripts/run.sh     # the project's mock cloud stands in for one
# Ctrl-C stops everything.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
state="$root/.cache"
mkdir -p "$state"

# A C toolchain, the model and the SDK for the snippet below, if missing.
"$root/scripts/setup.sh" --quickstart
model=$("$root/scripts/fetch-model.sh")
# Only the binaries started below (the mock cloud only when asked for); the
# dependencies get the same features as in the whole workspace's build, so a
# later test.sh reuses them.
bins=(--bin edge-worker --bin gateway)
[[ "${MOCK_CLOUD:-0}" == 1 ]] && bins+=(--bin mock-cloud)
cargo build --release "${bins[@]}"

pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait; }
trap cleanup EXIT INT TERM

# Starts a binary that announces its address on its first stdout line, and
# sets $addr to that address. (Not run in a subshell, so $pids keeps the pid.)
start() { # start <name> <cmd...>
  local name=$1 out line=""
  shift
  out="$state/$name.out"
  : >"$out"
  "$@" >"$out" 2>"$state/$name.log" &
  pids+=($!)
  for _ in $(seq 1 600); do
    line=$(head -n 1 "$out")
    [[ -n "$line" ]] && break
    sleep 0.1
  done
  [[ -n "$line" ]] || { echo "error: $name did not start; see $state/$name.log" >&2; exit 1; }
  addr="${line##* }"
}
wait_ready() {
  for _ in $(seq 1 600); do curl -sf "$1" >/dev/null && return 0; sleep 0.2; done
  echo "error: $1 not ready; see the logs in $state" >&2
  exit 1
}

# The fleet's worker token: the edge worker serves only callers that present
# it, and the gateway presents it. Kept in the state folder across runs.
token_file="$state/worker-token"
[[ -s "$token_file" ]] || (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$token_file")
export EDGE_WORKER_TOKEN_FILE="$token_file" GATEWAY_WORKER_TOKEN_FILE="$token_file"

start edge-worker "$bin/edge-worker" --model-path "$model" --listen 127.0.0.1:8081
edge=$addr
echo "edge worker at $edge (loading the model)"

cloud_url=none
cloud_model=cloud-small
if [[ -n "${CLOUD_BASE_URL:-}" ]]; then
  cloud_url=$CLOUD_BASE_URL
  cloud_model=${CLOUD_MODEL:?set CLOUD_MODEL to the cloud model name}
elif [[ "${MOCK_CLOUD:-0}" == 1 ]]; then
  export CLOUD_API_KEY=mock-key
  start mock-cloud "$bin/mock-cloud" --addr 127.0.0.1:9000 \
    --api-key mock-key --models "$cloud_model" --ttft-ms 150 --tokens-per-second 80
  cloud_url=$addr
  echo "mock cloud at $cloud_url"
fi

export GATEWAY_SQLITE_PATH="$state/gateway.db"
SEED_DIR="$state" SEED_EDGE_URLS="$edge" SEED_CLOUD_URL="$cloud_url" SEED_CLOUD_MODEL="$cloud_model" \
  GATEWAY_BIN="$bin/gateway" sh "$root/deploy/gateway-seed/seed.sh" >"$state/seed.log"
key=$(cat "$state/api-key")

start gateway "$bin/gateway" serve --listen 127.0.0.1:8080
gateway=$addr
wait_ready "$edge/readyz"
wait_ready "$gateway/readyz"

cat <<EOF2

Ready. The gateway is at $gateway/v1 (logs in $state/).
Demo API key (tenant "demo"): $key

  $root/.venv/bin/python -c 'from openai import OpenAI
c = OpenAI(base_url="$gateway/v1", api_key="$key")
r = c.chat.completions.with_raw_response.create(model="auto", max_tokens=32,
    messages=[{"role": "user", "content": "Say hello in French."}])
print(r.headers["x-gateway-backend"], r.headers["x-gateway-route-reason"])
print(r.parse().choices[0].message.content)'

  curl -s $gateway/v1/chat/completions -H "Authorization: Bearer $key" \
    -H 'Content-Type: application/json' \
    -d '{"model": "auto", "max_tokens": 32, "messages": [{"role": "user", "content": "Say hello in French."}]}'

Ctrl-C stops everything.
EOF2
wait "${pids[@]}"
