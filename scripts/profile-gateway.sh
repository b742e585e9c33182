#!/usr/bin/env bash
# Where the gateway's CPU goes: the gateway set up as in bench-gateway.sh
# (embedded SQLite, one cloud backend on the unpaced mock, every request
# authenticated, classified, routed and written to the ledger), driven at a
# fixed open-loop rate by loadgen while `perf record` samples the gateway
# process with DWARF call stacks.
#
#   ./scripts/profile-gateway.sh                    # 1000/s, 15 s, non-streaming
#   RATE=100 DURATION=20 STREAM=1 ./scripts/profile-gateway.sh
#
# Writes to target/profile/: perf.data, the top functions by their own
# samples (self.txt) and with what they call (children.txt), the samples per
# thread (threads.txt), and the CPU per request from /proc. Needs `perf`
# (Debian: linux-perf). SKIP_BUILD=1 uses the release binaries as they are.
#
# SCHED=1 records the scheduler instead (`perf sched record`, every CPU):
# how long the gateway's threads, once woken, waited for a CPU, and which
# tasks held it meanwhile (scripts/lib/schedwait.py), the same for the
# mock cloud, and loadgen's latencies beside them. This is what shows
# whether a latency tail is the gateway's work or time spent runnable but
# not running on a machine whose cores the client and upstream share.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release --bins --quiet
rate=${RATE:-1000}
duration=${DURATION:-15}
out="$root/target/profile"
rm -rf "$out"
mkdir -p "$out"
command -v perf >/dev/null || { echo "perf is missing (Debian: apt-get install linux-perf)" >&2; exit 1; }

# shellcheck source=lib/procs.sh
source "$root/scripts/lib/procs.sh"
scratch

start_mock --completion-tokens 16
start_bench_gateway

flags=()
[[ "${STREAM:-0}" == 1 ]] && flags+=(--stream)
# A warm-up, so that connection set-up and first-use allocations are not
# what the profile shows.
LOADGEN_API_KEY="$key" "$bin/loadgen" --url "$gateway/v1" --model mock-model --rate "$rate" --duration 3 "${flags[@]}" >/dev/null

ticks() { awk '{print $14 + $15}' "/proc/$gateway_pid/stat"; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')$(grep -qw avx512f /proc/cpuinfo && echo ', avx512f' || echo ', no avx512f'); $(nproc) cores, $(uptime | sed 's/.*load/load/')"
if [[ "${SCHED:-0}" == 1 ]]; then
  perf sched record -a -o "$out/sched.data" -- sleep "$((duration + 1))" 2>"$out/perf-record.log" &
  perf_pid=$!
  sleep 0.5
  LOADGEN_API_KEY="$key" "$bin/loadgen" --url "$gateway/v1" --model mock-model --rate "$rate" --duration "$duration" "${flags[@]}" | tee "$out/loadgen.txt"
  wait "$perf_pid" || true
  perf sched timehist -i "$out/sched.data" 2>/dev/null >"$out/timehist.txt" || true
  echo "== the gateway's threads"
  python3 "$root/scripts/lib/schedwait.py" --pid "$gateway_pid" <"$out/timehist.txt" | tee "$out/sched-gateway.txt"
  echo "== the mock cloud's threads"
  python3 "$root/scripts/lib/schedwait.py" --pid "${pids[0]}" <"$out/timehist.txt" | tee "$out/sched-mock.txt"
  echo "reports in $out"
  exit 0
fi

if [[ "${SYSCALLS:-0}" == 1 ]]; then
  perf trace -s -p "$gateway_pid" -o "$out/syscalls.txt" -- sleep "$((duration + 1))" 2>"$out/perf-trace.log" &
  perf_pid=$!
  sleep 0.5
  LOADGEN_API_KEY="$key" "$bin/loadgen" --url "$gateway/v1" --model mock-model --rate "$rate" --duration "$duration" "${flags[@]}" | tee "$out/loadgen.txt"
  wait "$perf_pid" || true
  echo "== system calls per request, all threads ($((rate * duration)) requests)"
  python3 "$root/scripts/lib/syscalls.py" --requests "$((rate * duration))" <"$out/syscalls.txt" | tee "$out/syscalls-per-request.txt"
  echo "reports in $out"
  exit 0
fi

t0=$(ticks)
perf record -q -F 999 --call-graph dwarf,16384 -p "$gateway_pid" -o "$out/perf.data" -- sleep "$((duration + 1))" 2>"$out/perf-record.log" &
perf_pid=$!
sleep 0.5
LOADGEN_API_KEY="$key" "$bin/loadgen" --url "$gateway/v1" --model mock-model --rate "$rate" --duration "$duration" "${flags[@]}" | tee "$out/loadgen.txt"
t1=$(ticks)
wait "$perf_pid" || true
requests=$((rate * duration))
echo "gateway CPU: $(( (t1 - t0) * 1000000 / $(getconf CLK_TCK) / requests )) us per request ($requests requests at $rate/s, perf sampling included)" | tee "$out/cpu.txt"

perf report -i "$out/perf.data" --no-children --sort symbol --percent-limit 0.5 --stdio -g none 2>/dev/null | grep -v '^$' >"$out/self.txt" || true
perf report -i "$out/perf.data" --children --sort symbol --percent-limit 2 --stdio -g none 2>/dev/null | grep -v '^$' >"$out/children.txt" || true
perf report -i "$out/perf.data" --no-children --sort comm --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' >"$out/threads.txt" || true
echo "== threads"; head -12 "$out/threads.txt"
echo "== top functions (self)"; grep -v '^#' "$out/self.txt" | head -40
echo "reports in $out"
