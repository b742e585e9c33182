#!/usr/bin/env bash
# Measures the gateway's added latency over calling the mock cloud directly,
# at fixed open-loop rates, non-streaming and streaming, with A/B rounds
# (A = mock direct, B = gateway in front of the same mock).
#
# The mock and the gateway must already be running, the gateway with the mock
# as a backend for $MODEL. Reports are written as JSON to $OUT and summarised.
#
#   MOCK_URL=http://127.0.0.1:9000/v1 GATEWAY_URL=http://127.0.0.1:8080/v1 \
#   LOADGEN_API_KEY=sk-... loadtest/scripts/overhead.sh
#
# With NGINX_URL set (a plain reverse proxy in front of the same mock), each
# rate is followed at once by a second comparison, mock direct (DIRECT_URL,
# by default MOCK_URL) against that proxy: the added latency of one proxy
# hop, the floor for the gateway's, at the same rate. The load generator
# compares two targets at a time, so the two comparisons run back to back,
# not in the same rounds.
set -euo pipefail

MOCK_URL=${MOCK_URL:-http://127.0.0.1:9000/v1}
A_NAME=${A_NAME:-direct}  # what A is called in the summary
GATEWAY_URL=${GATEWAY_URL:?set GATEWAY_URL to the gateway base URL}
NGINX_URL=${NGINX_URL:-}
DIRECT_URL=${DIRECT_URL:-$MOCK_URL}
MODEL=${MODEL:-mock-model}
RATES=${RATES:-500 1000 2000}
DURATION=${DURATION:-20}
OUT=${OUT:-target/overhead}
LOADGEN=${LOADGEN:-target/release/loadgen}

summary() { # summary <report> <mode> <rate> <A's name> <B's name>
  python3 - "$@" <<'PY'
import json, sys
report, mode, rate, a_name, b_name = sys.argv[1:]
r = json.load(open(report))
a, b, d = r["a"], r["b"], r["added"]
errors = sum(a["errors"].values()) + sum(b["errors"].values()) + a["dropped"] + b["dropped"]
print(f"{mode:>6} {rate:>5}/s  {a_name} p50 {a['latency']['p50_us']:>6} p99 {a['latency']['p99_us']:>6}"
      f"  {b_name} p50 {b['latency']['p50_us']:>6} p99 {b['latency']['p99_us']:>6}"
      f"  added p50 {d['p50_us']:>+6} p99 {d['p99_us']:>+6} us  errors+drops {errors}")
PY
}

mkdir -p "$OUT"
for mode in plain stream; do
  for rate in $RATES; do
    flags=()
    [[ $mode == stream ]] && flags+=(--stream)
    report="$OUT/$mode-$rate.json"
    "$LOADGEN" --compare "$MOCK_URL" "$GATEWAY_URL" --model "$MODEL" \
      --rate "$rate" --duration "$DURATION" "${flags[@]}" --json >"$report"
    summary "$report" "$mode" "$rate" "$A_NAME" gateway
    if [[ -n "$NGINX_URL" ]]; then
      report="$OUT/$mode-$rate-nginx.json"
      "$LOADGEN" --compare "$DIRECT_URL" "$NGINX_URL" --model "$MODEL" \
        --rate "$rate" --duration "$DURATION" "${flags[@]}" --json >"$report"
      summary "$report" "$mode" "$rate" direct "nginx  "
    fi
  done
done
