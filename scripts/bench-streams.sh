#!/usr/bin/env bash
# The gateway's memory with many streams open at once: the mock cloud paced
# so that each answer streams for about STREAM_S seconds, the gateway set up
# as in bench-gateway.sh (embedded SQLite, full auth, classification,
# routing and ledger), and loadgen opening RATE streams a second for
# DURATION seconds, so that about RATE × STREAM_S are open together. Every
# half second it samples the gateway's resident memory and its open client
# connections; it prints the peaks and the resident memory at the end.
#
#   ./scripts/bench-streams.sh                       # about 1,000 open streams
#   RATE=400 ./scripts/bench-streams.sh              # about 2,000
#
# SKIP_BUILD=1 uses the release binaries as they are.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release --workspace --all-targets --quiet
rate=${RATE:-200}
duration=${DURATION:-20}
tokens=20
tps=4 # with a 500 ms first token: about 5.5 s a stream
ulimit -n "$(ulimit -Hn)"

# shellcheck source=lib/procs.sh
source "$root/scripts/lib/procs.sh"
scratch

start_mock --completion-tokens "$tokens" --ttft-ms 500 --tokens-per-second "$tps"
start_bench_gateway
port=${gateway##*:}

kib() { awk -v f="$1" '$1 == f":" {print $2}' "/proc/$gateway_pid/status"; }
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //'); $(nproc) cores, $(uptime | sed 's/.*load/load/')"
echo "gateway after start: $(($(kib VmRSS) / 1024)) MiB resident"
(
  peak_open=0
  while kill -0 "$gateway_pid" 2>/dev/null; do
    open=$(ss -Htn state established "( sport = :$port )" | wc -l)
    ((open > peak_open)) && peak_open=$open
    echo "$peak_open" >"$work/peak_open"
    sleep 0.5
  done
) &
sampler=$!
LOADGEN_API_KEY="$key" "$bin/loadgen" --url "$gateway/v1" --model mock-model --stream \
  --max-tokens "$tokens" --rate "$rate" --duration "$duration" --max-in-flight 20000 --timeout 60 |
  tee "$work/loadgen.txt" | grep -E 'requests|errors|total|ttft' || true
kill "$sampler" 2>/dev/null || true
echo "open client connections at most: $(cat "$work/peak_open" 2>/dev/null || echo ?)"
echo "gateway resident memory: peak $(($(kib VmHWM) / 1024)) MiB, at the end $(($(kib VmRSS) / 1024)) MiB"
sleep 2
rows=$(python3 -c "import sqlite3,sys; print(sqlite3.connect(sys.argv[1]).execute('select count(*) from request_ledger').fetchone()[0])" "$work/gateway.db")
echo "ledger rows: $rows"
