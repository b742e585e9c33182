#!/usr/bin/env bash
# Two gateways behind a load balancer against one: the compose topology
# (docker-compose.yml) as local processes on loopback, without edge workers:
# one mock cloud (unpaced: it answers at once), Postgres and Redis shared by
# two `gateway serve` processes, and nginx (Debian's nginx-light, installed if
# missing) balancing them as deploy/nginx/gateway-lb.conf does. The load
# generator drives, at the same open-loop rates and in alternating rounds in
# one run, A = one gateway directly (gateway-1) and B = nginx in front of
# gateway-1 and gateway-2, non-streaming and streaming; it reports each
# side's throughput achieved and latency, and B − A.
#
#   ./scripts/bench-fleet.sh                     # rates 500 1000 2000, 10 s each
#   RATES="250 1000" DURATION=10 ./scripts/bench-fleet.sh
#
# The key has requests/min, tokens/min and a budget (the backend has prices),
# so every request runs its admission script (both rates and a budget hold)
# and a settlement in Redis, as in the compose topology; every request leaves a ledger row in
# Postgres. Postgres and Redis are started by scripts/services.sh when they
# do not answer on 127.0.0.1:5432 and :6379 (SKIP_SERVICES=1 to manage them
# yourself; PG_URL, default postgres://postgres@127.0.0.1:5432, and
# REDIS_URL, default redis://127.0.0.1:6379/0, to use others). Each run makes
# a fresh database and Redis key prefix and removes both at the end.
#
# SKIP_BUILD=1 uses the release binaries as they are instead of running
# `cargo build` first. JSON reports of the last run are in target/fleet/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release --bins --quiet
rates=${RATES:-500 1000 2000}
duration=${DURATION:-10}
pg_url=${PG_URL:-postgres://postgres@127.0.0.1:5432}
redis_url=${REDIS_URL:-redis://127.0.0.1:6379/0}
out="$root/target/fleet"
rm -rf "$out"
mkdir -p "$out"

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
nginx_bin=$(command -v nginx || true)
[[ -z "$nginx_bin" && -x /usr/sbin/nginx ]] && nginx_bin=/usr/sbin/nginx
if [[ -z "$nginx_bin" ]]; then
  echo "installing nginx-light..." >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq nginx-light >&2
  nginx_bin=$(command -v nginx || echo /usr/sbin/nginx)
fi
"$root/scripts/services.sh"

db="bench_fleet_$$_$RANDOM"
prefix="bench-fleet-$$-$RANDOM:"
work=$(mktemp -d)
pids=()
tree() { # tree <pid>…: the processes and all their descendants
  local p
  for p in "$@"; do
    echo "$p"
    # shellcheck disable=SC2046 # one pid per word
    tree $(pgrep -P "$p" || true)
  done
}
cleanup() {
  local all=()
  if ((${#pids[@]})); then
    mapfile -t all < <(tree "${pids[@]}")
    kill "${pids[@]}" 2>/dev/null || true
    sleep 0.2
    kill "${all[@]}" 2>/dev/null || true
  fi
  wait 2>/dev/null || true
  psql "$pg_url/postgres" -qc "drop database if exists $db with (force)" >/dev/null 2>&1 || true
  redis-cli -u "$redis_url" --scan --pattern "$prefix*" 2>/dev/null \
    | xargs -r redis-cli -u "$redis_url" del >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# shellcheck source=lib/procs.sh
source "$root/scripts/lib/procs.sh"

start_mock --completion-tokens 16

psql "$pg_url/postgres" -qc "create database $db" >/dev/null
export GATEWAY_DATABASE_URL="$pg_url/$db" GATEWAY_REDIS_URL="$redis_url" GATEWAY_REDIS_PREFIX="$prefix"
gw() { "$bin/gateway" "$@" >/dev/null; }
gw migrate
gw tenant create bench
# Priced like the compose seed's cloud, so budget holds are not zero.
gw backend add --name cloud --kind cloud --url "$mock" --model mock-model --rtt-ms 1 \
  --price-in 0.00015 --price-out 0.0006
key=$("$bin/gateway" key create --tenant bench --rpm 100000000 --tpm 2000000000 --budget 1000000 \
  | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')

gateway_pids=()
gateway_urls=()
for n in 1 2; do
  RUST_LOG=warn "$bin/gateway" serve --listen 127.0.0.1:0 >"$work/gateway-$n.out" 2>"$work/gateway-$n.log" &
  pids+=($!)
  gateway_pids+=($!)
  url=$(first_line "$work/gateway-$n.out")
  for _ in $(seq 1 100); do curl -sf "$url/readyz" >/dev/null && break; sleep 0.1; done
  gateway_urls+=("$url")
done

# The load balancer: deploy/nginx/gateway-lb.conf's public server, on
# loopback, with its upstream pointing at the two local gateways; as a plain
# local process (own prefix and temp paths, foreground, no access log).
lb_port=$(free_port)
mkdir -p "$work/nginx"
cat >"$work/nginx/nginx.conf" <<NGINX
daemon off;
worker_processes auto;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $work/nginx/body;
    proxy_temp_path $work/nginx/proxy;
    fastcgi_temp_path $work/nginx/fastcgi;
    uwsgi_temp_path $work/nginx/uwsgi;
    scgi_temp_path $work/nginx/scgi;
    upstream gateways {
        server ${gateway_urls[0]#http://} max_fails=2 fail_timeout=5s;
        server ${gateway_urls[1]#http://} max_fails=2 fail_timeout=5s;
        keepalive 32;
    }
    server {
        listen 127.0.0.1:$lb_port;
        client_max_body_size 2m;
        location / {
            proxy_pass http://gateways;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_buffering off;
            proxy_request_buffering off;
            proxy_read_timeout 600s;
            proxy_send_timeout 600s;
            proxy_next_upstream error timeout;
            proxy_next_upstream_tries 2;
        }
    }
}
NGINX
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
nginx_pid=$!
pids+=("$nginx_pid")
for _ in $(seq 1 100); do port_open "$lb_port" && break; sleep 0.1; done
lb="http://127.0.0.1:$lb_port"

# Both gateways must answer through the balancer before measuring anything.
for _ in 1 2 3 4; do
  curl -sf "$lb/v1/chat/completions" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' \
    -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null
done

echo "A (one gateway) ${gateway_urls[0]}/v1, B (two gateways behind nginx) $lb/v1 ($(nproc) cores, $(uptime | sed 's/.*load/load/'))"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')$(grep -qw avx512f /proc/cpuinfo && echo ', avx512f' || echo ', no avx512f')"
cpu_ticks() { # cpu_ticks <pid>…: user + system ticks of the processes and their descendants
  local p t=0
  for p in $(tree "$@"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
cpu0=()
for p in "${gateway_pids[@]}" "$nginx_pid"; do cpu0+=("$(cpu_ticks "$p")"); done

for mode in plain stream; do
  for rate in $rates; do
    flags=()
    [[ $mode == stream ]] && flags+=(--stream)
    report="$out/$mode-$rate.json"
    LOADGEN_API_KEY="$key" "$bin/loadgen" --compare "${gateway_urls[0]}/v1" "$lb/v1" --model mock-model \
      --rate "$rate" --duration "$duration" "${flags[@]}" --json >"$report"
    python3 - "$report" "$mode" "$rate" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a, b, d = r["a"], r["b"], r["added"]
bad = lambda s: sum(s["errors"].values()) + s["dropped"]
print(f"{sys.argv[2]:>6} {sys.argv[3]:>5}/s"
      f"  one: {a['achieved_rate']:>6.0f}/s p50 {a['latency']['p50_us']:>6} p99 {a['latency']['p99_us']:>6}"
      f"  two+lb: {b['achieved_rate']:>6.0f}/s p50 {b['latency']['p50_us']:>6} p99 {b['latency']['p99_us']:>6}"
      f"  B-A p50 {d['p50_us']:>+6} p99 {d['p99_us']:>+6} us  errors+drops {bad(a)} / {bad(b)}")
PY
  done
done

# Where the requests went and what they cost: ledger rows by status (every
# request, warm-ups included), CPU per request of the two gateways together
# and of nginx, and resident memory.
total=-1 # until the ledger writers' last batches are in (at most 30 s)
for _ in $(seq 1 30); do
  sleep 1
  now=$(psql "$pg_url/$db" -tAc "select count(*) from request_ledger")
  ((now == total)) && break
  total=$now
done
rows=$(psql "$pg_url/$db" -tAc "select status || ' ' || count(*) from request_ledger group by status")
echo "ledger rows by status: $(echo "$rows" | tr '\n' ' ')"
through_lb=$(python3 - "$out" "$lb/v1" <<'PY'
import glob, json, sys
n = 4  # the requests that checked the balancer
for path in glob.glob(sys.argv[1] + "/*.json"):
    b = json.load(open(path))["b"]
    if b["target"] == sys.argv[2]:
        n += b["sent"] + int(b["rate"])  # plus the one-second warm-up
print(n)
PY
)
hz=$(getconf CLK_TCK)
ticks=()
i=0
for p in "${gateway_pids[@]}" "$nginx_pid"; do
  ticks+=($(( $(cpu_ticks "$p") - cpu0[i] )))
  i=$((i + 1))
done
echo "CPU: gateway-1 $(( ticks[0] * 1000 / hz )) ms, gateway-2 $(( ticks[1] * 1000 / hz )) ms," \
  "together $(( total > 0 ? (ticks[0] + ticks[1]) * 1000000 / hz / total : 0 )) us per request over $total;" \
  "nginx $(( ticks[2] * 1000 / hz )) ms, $(( ticks[2] * 1000000 / hz / through_lb )) us per request over $through_lb"
# That the limits ran in Redis: the keys under this run's prefix, and each
# gateway's count of the gateways it sees through Redis, of limit checks
# that fell back to its local share and of failed Redis calls.
echo "redis keys under $prefix: $(redis-cli -u "$redis_url" --scan --pattern "$prefix*" | wc -l)"
for n in 1 2; do
  curl -sf "${gateway_urls[n - 1]}/metrics" | awk -v name="gateway-$n" '
    /^gateway_fleet_gateways / { fleet = $2 }
    /^gateway_limits_fallback_total/ { fallback += $NF }
    /^gateway_(limits_)?redis_errors_total/ { errors += $NF }
    END { printf "%s: sees %d gateways; %d limit checks fell back to its local share; %d Redis calls failed\n", name, fleet, fallback, errors }'
done
# The time each request's admission waited on Redis, as each gateway timed
# it: what Redis cost a request, apart from the rest of the machine's noise.
python3 "$root/scripts/lib/redis-wait.py" "gateway-1=${gateway_urls[0]}" "gateway-2=${gateway_urls[1]}"
memory() { # memory <name> <pid>: VmHWM and VmRSS summed over its process tree
  local p files=()
  for p in $(tree "$2"); do [[ -r /proc/$p/status ]] && files+=("/proc/$p/status"); done
  ((${#files[@]})) || return 0
  awk -v name="$1" -v n="${#files[@]}" '
    /^VmHWM:/ { hwm += $2 } /^VmRSS:/ { rss += $2 }
    END { printf "  %-9s peak %7.1f MiB  final %7.1f MiB  (%d process%s)\n", name, hwm / 1024, rss / 1024, n, (n > 1 ? "es" : "") }
  ' "${files[@]}"
}
echo "resident memory (peak = VmHWM, final = VmRSS):"
memory gateway-1 "${gateway_pids[0]}"
memory gateway-2 "${gateway_pids[1]}"
memory nginx "$nginx_pid"
