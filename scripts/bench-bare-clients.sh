#!/usr/bin/env bash
# What reqwest itself costs a relayed request: `bare-proxy` (the gateway's
# HTTP stack with nothing in between, loadtest/src/bin/bare_proxy.rs) with
# reqwest as its upstream client (A, as the gateway has it) against the
# same proxy with hyper-util's pooled client alone (B, the layer reqwest is
# built on), both in front of one mock cloud, driven by loadgen in
# alternating rounds at fixed open-loop rates, non-streaming and streaming.
# Prints each side's latency from the scheduled send and its CPU per
# request (user + system time over the requests it answered).
#
#   RATES="250 1000" DURATION=10 ./scripts/bench-bare-clients.sh
#
# SKIP_BUILD=1 uses the release binaries as they are.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release --quiet -p loadtest --bins
# shellcheck source=lib/procs.sh
. "$root/scripts/lib/procs.sh"
scratch
start_mock --completion-tokens 16
"$bin/bare-proxy" --upstream "$mock" --client reqwest >"$work/a.out" 2>"$work/a.log" &
a_pid=$!
pids+=("$a_pid")
"$bin/bare-proxy" --upstream "$mock" --client hyper >"$work/b.out" 2>"$work/b.log" &
b_pid=$!
pids+=("$b_pid")
a="$(first_line "$work/a.out")/v1"
b="$(first_line "$work/b.out")/v1"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')$(grep -qw avx512f /proc/cpuinfo && echo ', avx512f' || echo ', no avx512f'), $(nproc) cores"
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
for mode in plain stream; do
  flags=()
  [[ $mode == stream ]] && flags+=(--stream)
  for rate in ${RATES:-250 1000}; do
    a0=$(ticks "$a_pid")
    b0=$(ticks "$b_pid")
    "$bin/loadgen" --compare "$a" "$b" --model mock-model --rate "$rate" \
      --duration "${DURATION:-10}" "${flags[@]}" --json >"$work/report.json"
    a1=$(ticks "$a_pid")
    b1=$(ticks "$b_pid")
    python3 - "$work/report.json" "$mode" "$rate" $((a1 - a0)) $((b1 - b0)) "$hz" <<'PY'
import json, sys
report, mode, rate, ta, tb, hz = sys.argv[1:]
r = json.load(open(report))
a, b = r["a"], r["b"]
cpu = lambda ticks, side: int(ticks) / int(hz) / max(side["ok"], 1) * 1e6
errors = sum(a["errors"].values()) + sum(b["errors"].values()) + a["dropped"] + b["dropped"]
print(f"{mode:>6} {rate:>5}/s  reqwest p50 {a['latency']['p50_us']:>5} p99 {a['latency']['p99_us']:>6} "
      f"CPU {cpu(ta, a):>4.0f} us/req  |  hyper-util p50 {b['latency']['p50_us']:>5} p99 {b['latency']['p99_us']:>6} "
      f"CPU {cpu(tb, b):>4.0f} us/req  |  CPU ratio {cpu(tb, b) / max(cpu(ta, a), 1e-9):.2f}  errors+drops {errors}")
PY
  done
done
