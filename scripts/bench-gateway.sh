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
# In the same run, three more things:
#
# - The floor: nginx (Debian's nginx-light, installed if missing) as a plain
#   reverse proxy in front of the same mock (keep-alive upstream, no access
#   log, no buffering), run as a local process on its own configuration.
#   After each A/B comparison, mock direct against nginx at the same rate
#   (loadtest/scripts/overhead.sh): what one proxy hop costs on this machine.
# - The highest rate held: for the gateway, nginx and A when A is not the
#   bare mock (LiteLLM, a baseline gateway), the highest rate of a ladder
#   (HOLD_RATES, default 250 500 1000 2000 4000 8000; from 25 with LITELLM)
#   at which the p99 added over the mock direct stays under HOLD_P99_US
#   (1000) with no errors and no drops. Each rung compares the mock direct
#   with one target in alternating rounds (HOLD_DURATION seconds, default
#   DURATION; HOLD_MODE=plain or stream, default plain); the targets take
#   turns at each rung, and a target stops climbing at its first failure.
#   HOLD_TRIES=n (default 1) lets a rung be tried up to n times before it
#   counts as failed, for machines where other work stalls everything now
#   and then. HOLD_RATES="" skips it.
# - Memory: peak and final resident memory (VmHWM, VmRSS) of the gateway,
#   nginx (master and workers summed) and LiteLLM (its process tree summed);
#   CPU per request of the gateway, and of nginx and LiteLLM.
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
#
# With BARE_PROXY=1, A is `bare-proxy` (loadtest/src/bin/bare_proxy.rs): the
# gateway's HTTP stack (axum and hyper in, reqwest out, one single-threaded
# runtime per CPU) relaying to the same mock with nothing in between. The
# figures are then what the gateway's own work (authentication,
# classification, routing, metrics, the ledger) adds over its libraries.
#
# With DATABASE_URL=postgres://USER@HOST:PORT/DB (a server on which the user may
# create databases), the gateway stores into a fresh database of its own on
# that server, dropped at the end, instead of the embedded SQLite: the
# ledger's inserts then run in Postgres's processes, whose CPU per request
# (the server's whole process tree) is reported beside the gateway's. Not
# with BASELINE_GATEWAY, BASELINE_ENV or REDIS_URL, whose A side is a copy of
# the SQLite file.
#
# With SERIES=1, after the comparisons one more non-streaming run per rate,
# A against the gateway, keeps every request's due time and latency
# (loadgen --series, in target/overhead/series-RATE.csv) and prints the
# gateway's stalls: its requests slower than its own p99, grouped, and the time
# between them (scripts/lib/stalls.py), to tell a periodic cause from others.
#
# With NOISE=BYTES (and NOISE_EVERY, seconds, default 0.5), a background
# client sends each gateway under test (B, and A when it is a gateway) a
# request of BYTES random printable characters every NOISE_EVERY seconds,
# one at a time, throughout the comparisons: what a long prompt's privacy
# scan does to the other requests' latency. With BASELINE_ENV=
# "GATEWAY_CLASSIFY_INLINE_BYTES=2000000", A scans every body where it is
# served and B on its classify pool.
#
# SKIP_BUILD=1 uses the release binaries as they are instead of running
# `cargo build` first. JSON reports of the last run are in target/overhead/.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
if [[ -n "${LITELLM:-}" ]]; then # absolute: LiteLLM starts in the work directory
  [[ $LITELLM == */* ]] || LITELLM=$(command -v "$LITELLM")
  LITELLM=$(realpath -s "$LITELLM")
fi
cd "$root"
bin="${CARGO_TARGET_DIR:-$root/target}/release"
[[ "${SKIP_BUILD:-0}" == 1 ]] || cargo build --release --bins --quiet
export DURATION=${DURATION:-10}
hold_p99_us=${HOLD_P99_US:-1000}
hold_duration=${HOLD_DURATION:-$DURATION}
hold_mode=${HOLD_MODE:-plain}
hold_tries=${HOLD_TRIES:-1}
if [[ -n "${LITELLM:-}" ]]; then
  hold_rates=${HOLD_RATES-25 50 100 250 500 1000 2000 4000 8000}
else
  hold_rates=${HOLD_RATES-250 500 1000 2000 4000 8000}
fi
out="$root/target/overhead"
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
  if [[ -n "${GATEWAY_REDIS_PREFIX:-}" ]]; then # this run's keys only
    redis-cli -u "$REDIS_URL" --scan --pattern "$GATEWAY_REDIS_PREFIX*" 2>/dev/null \
      | xargs -r redis-cli -u "$REDIS_URL" del >/dev/null 2>&1 || true
  fi
  if [[ -n "${bench_db:-}" ]]; then
    psql "$DATABASE_URL" -qc "drop database if exists $bench_db" >/dev/null 2>&1 || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT INT TERM

# shellcheck source=lib/procs.sh
source "$root/scripts/lib/procs.sh"

# Unpaced mock: answers at once, so what is measured is transport and the
# gateway, not simulated generation.
start_mock --completion-tokens 16
mock_hostport=${mock#*://}
mock_hostport=${mock_hostport%%/*}

# nginx in front of the same mock, as a plain local process: its own
# configuration, prefix and temp paths in the work directory, in the
# foreground, no access log; a keep-alive pool to the mock and no buffering
# (SSE passes through as it comes), as the compose load balancer does.
nginx_port=$(free_port)
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
    keepalive_requests 1000000;
    upstream mock {
        server $mock_hostport;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
NGINX
"$nginx_bin" -p "$work/nginx" -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log" &
nginx_pid=$!
pids+=("$nginx_pid")
for _ in $(seq 1 100); do port_open "$nginx_port" && break; sleep 0.1; done
nginx_url="http://127.0.0.1:$nginx_port/v1"

export GATEWAY_SQLITE_PATH="$work/gateway.db"
pg_pid=""
if [[ -n "${DATABASE_URL:-}" ]]; then
  if [[ -n "${BASELINE_GATEWAY:-}${BASELINE_ENV:-}${REDIS_URL:-}" ]]; then
    echo "error: DATABASE_URL cannot be combined with BASELINE_GATEWAY, BASELINE_ENV or REDIS_URL" >&2
    exit 2
  fi
  bench_db="bench_gateway_$$"
  psql "$DATABASE_URL" -qc "create database $bench_db" >/dev/null
  export GATEWAY_DATABASE_URL="${DATABASE_URL%/*}/$bench_db"
  # The server's first process, whose tree holds every backend.
  pg_pid=$(pgrep -o -x postgres || true)
fi
# The gateway's ledger, by status, one "status|count" line each.
ledger_query() { # ledger_query <sql>
  if [[ -n "${GATEWAY_DATABASE_URL:-}" ]]; then
    psql "$GATEWAY_DATABASE_URL" -tAc "$1" 2>/dev/null
  else
    sqlite3 "$work/gateway.db" "$1" 2>/dev/null
  fi
}
gw() { "$bin/gateway" "$@" >/dev/null; }
gw migrate
gw tenant create bench
gw backend add --name cloud --kind cloud --url "$mock" --model mock-model --rtt-ms 1
limits=()
[[ -n "${REDIS_URL:-}" ]] && limits=(--rpm 100000000 --tpm 2000000000 --budget 1000000)
key=$("$bin/gateway" key create --tenant bench "${limits[@]}" | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')

start_env=() # NAME=value settings for the next start_gateway only
noise_pids=()
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
  port=$(free_port)
  (cd "$work" && LITELLM_MASTER_KEY="$key" LITELLM_LOCAL_MODEL_COST_MAP=True exec "$LITELLM" --config "$work/litellm.yaml" \
    --host 127.0.0.1 --port "$port" --num_workers 1 >"$work/litellm.log" 2>&1) &
  peer_pid=$!
  pids+=("$peer_pid")
  for _ in $(seq 1 300); do curl -sf "http://127.0.0.1:$port/health/liveliness" >/dev/null && break; sleep 0.3; done
  baseline_url="http://127.0.0.1:$port/v1"
  a_name=litellm
elif [[ "${BARE_PROXY:-0}" == 1 ]]; then
  "$bin/bare-proxy" --upstream "$mock" >"$work/bare.out" 2>"$work/bare.log" &
  peer_pid=$!
  pids+=("$peer_pid")
  baseline_url="$(first_line "$work/bare.out")/v1"
  a_name=bare
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

# One request through the gateway and one through nginx must succeed before
# measuring anything.
for target in "$gateway/v1" "$nginx_url"; do
  curl -sf "$target/chat/completions" -H "authorization: Bearer $key" \
    -H 'content-type: application/json' \
    -d '{"model":"mock-model","messages":[{"role":"user","content":"hi"}]}' >/dev/null
done

noise_targets=()
if [[ -n "${NOISE:-}" ]]; then
  # Printable ASCII but for the quote and the backslash, so the text goes
  # into JSON as it is. Each request starts with its own number: the same
  # text again would be found in the privacy memo and not scanned.
  noise_text=$(python3 -c 'import random, sys
chars = [chr(c) for c in range(33, 127) if chr(c) not in "\\\""]
print("".join(random.choice(chars) for _ in range(int(sys.argv[1]))))' "$NOISE")
  noise_targets=("$gateway/v1")
  [[ -n "${baseline_pid:-}" ]] && noise_targets+=("$baseline_url")
  for target in "${noise_targets[@]}"; do
    (
      n=0
      trap 'echo "$n" >"$work/noise-$BASHPID.count"; exit 0' TERM
      body="$work/noise-$BASHPID.json"
      while :; do
        printf '{"model":"mock-model","max_tokens":4,"messages":[{"role":"user","content":"%s %s"}]}' \
          "$BASHPID-$n" "$noise_text" >"$body"
        curl -s -o /dev/null "$target/chat/completions" -H "authorization: Bearer $key" \
          -H 'content-type: application/json' --data-binary @"$body" || true
        n=$((n + 1))
        sleep "${NOISE_EVERY:-0.5}"
      done
    ) &
    pids+=("$!")
    noise_pids+=("$!")
  done
  echo "noise: $NOISE bytes of random characters every ${NOISE_EVERY:-0.5} s to ${noise_targets[*]}"
fi

echo "A $baseline_url, B (gateway) $gateway/v1, nginx $nginx_url ($(nproc) cores, $(uptime | sed 's/.*load/load/'))"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')$(grep -qw avx512f /proc/cpuinfo && echo ', avx512f' || echo ', no avx512f')"
cpu_ticks() { # cpu_ticks <pid>…: user + system ticks of the processes and their descendants
  local p t=0
  for p in $(tree "$@"); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
gateway_cpu0=$(cpu_ticks "$gateway_pid")
[[ -n "$pg_pid" ]] && pg_cpu0=$(cpu_ticks "$pg_pid")
nginx_cpu0=$(cpu_ticks "$nginx_pid")
[[ -n "${baseline_pid:-}" ]] && baseline_cpu0=$(cpu_ticks "$baseline_pid")
[[ -n "${peer_pid:-}" ]] && peer_cpu0=$(cpu_ticks "$peer_pid")
A_NAME="$a_name" MOCK_URL="$baseline_url" GATEWAY_URL="$gateway/v1" LOADGEN_API_KEY="$key" LOADGEN="$bin/loadgen" \
  MODEL=mock-model OUT="$out" NGINX_URL="$nginx_url" DIRECT_URL="$mock" "$root/loadtest/scripts/overhead.sh"

if ((${#noise_targets[@]})); then
  kill "${noise_pids[@]}" 2>/dev/null || true
  wait "${noise_pids[@]}" 2>/dev/null || true
  echo "noise requests sent: $(cat "$work"/noise-*.count 2>/dev/null | awk '{ n += $1 } END { print n + 0 }') (to ${#noise_targets[@]} gateways; the CPU per request below includes their scans)"
fi

if [[ "${SERIES:-0}" == 1 ]]; then
  for rate in ${RATES:-500 1000 2000}; do
    LOADGEN_API_KEY="$key" "$bin/loadgen" --compare "$baseline_url" "$gateway/v1" --model mock-model \
      --rate "$rate" --duration "$DURATION" --series "$out/series-$rate.csv" --json >"$out/series-$rate.json"
    echo "stalls at $rate/s ($a_name against the gateway):"
    python3 "$root/scripts/lib/stalls.py" "$out/series-$rate.csv"
  done
fi

# The highest rate each target holds: climbing the ladder, each target
# compared with the mock direct, until its added p99 reaches the limit or it
# fails or drops a request.
if [[ -n "$hold_rates" ]]; then
  targets=("gateway $gateway/v1" "nginx $nginx_url")
  [[ "$a_name" != direct ]] && targets+=("$a_name $baseline_url")
  declare -A held=() failed=()
  climbing=("${targets[@]}")
  hold_flags=()
  [[ $hold_mode == stream ]] && hold_flags+=(--stream)
  for rate in $hold_rates; do
    ((${#climbing[@]})) || break
    still=()
    for t in "${climbing[@]}"; do
      read -r name target <<<"$t"
      for try in $(seq 1 "$hold_tries"); do
        report="$out/held-$name-$rate-$try.json"
        LOADGEN_API_KEY="$key" "$bin/loadgen" --compare "$mock" "$target" --model mock-model \
          --rate "$rate" --duration "$hold_duration" "${hold_flags[@]}" --json >"$report"
        verdict=$(python3 - "$report" "$hold_p99_us" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
a, b, d = r["a"], r["b"], r["added"]
bad_a = sum(a["errors"].values()) + a["dropped"]
bad_b = sum(b["errors"].values()) + b["dropped"]
ok = bad_a == 0 and bad_b == 0 and d["p99_us"] < int(sys.argv[2])
note = f"added p99 {d['p99_us']:+} us, errors+drops {bad_b}, {b['achieved_rate']:.0f}/s achieved"
if bad_a:
    note += f"; the mock direct itself had {bad_a} errors+drops"
print(("held " if ok else "failed ") + note)
PY
)
        echo "  held? $hold_mode $rate/s $name (try $try): $verdict"
        [[ $verdict == held* ]] && break
      done
      if [[ $verdict == held* ]]; then
        held[$name]=$rate
        still+=("$t")
      else
        failed[$name]="$rate/s: ${verdict#failed }"
      fi
    done
    climbing=("${still[@]}")
  done
  echo "highest rate held ($hold_mode, added p99 under $hold_p99_us us over the mock direct, no errors or drops; ladder: $hold_rates; tries per rung: $hold_tries):"
  for t in "${targets[@]}"; do
    read -r name _ <<<"$t"
    if [[ -n "${failed[$name]:-}" ]]; then
      echo "  $(printf '%-9s' "$name") ${held[$name]:-none}$([[ -n "${held[$name]:-}" ]] && echo /s)  (first failure at ${failed[$name]})"
    else
      echo "  $(printf '%-9s' "$name") ${held[$name]}/s or more (the top of the ladder)"
    fi
  done
fi

# CPU each process spent per request it served (warm-ups included): how
# much of a core the figures above cost.
per_request() { # per_request <pid> <ticks before> <requests>
  local ticks
  ticks=$(( $(cpu_ticks "$1") - $2 ))
  (( $3 > 0 )) && echo "$(( ticks * 1000000 / $(getconf CLK_TCK) / $3 )) us CPU/request over $3 requests"
}
ledger_rows() { # ledger_rows [<sqlite db>]: once the writer has stored its last batches (at most 30 s)
  local n=-1 now
  for _ in $(seq 1 30); do
    if [[ -n "${1:-}" ]]; then
      now=$(sqlite3 "$1" "select count(*) from request_ledger" 2>/dev/null || echo 0)
    else
      now=$(ledger_query "select count(*) from request_ledger" || echo 0)
    fi
    ((now == n)) && break
    n=$now
    sleep 1
  done
  echo "$n"
}
sent_to() { # sent_to <url>: requests the load generator sent to it in this run, warm-ups included
  python3 - "$out" "$1" <<'PY'
import glob, json, sys
n = 0
for path in glob.glob(sys.argv[1] + "/*.json"):
    r = json.load(open(path))
    for side in (r["a"], r["b"]):
        if side["target"] == sys.argv[2]:
            n += side["sent"] + int(side["rate"])  # plus the one-second warm-up
print(n)
PY
}
gateway_rows=$(ledger_rows)
echo "gateway: $(per_request "$gateway_pid" "$gateway_cpu0" "$gateway_rows")"
[[ -n "$pg_pid" ]] && echo "postgres: $(per_request "$pg_pid" "$pg_cpu0" "$gateway_rows") (the server's process tree, per gateway request)"
[[ -n "${baseline_pid:-}" ]] && echo "baseline: $(per_request "$baseline_pid" "$baseline_cpu0" "$(ledger_rows "$work/baseline.db")")"
echo "nginx: $(per_request "$nginx_pid" "$nginx_cpu0" "$(sent_to "$nginx_url")") (master and workers)"
[[ -n "${peer_pid:-}" ]] && echo "$a_name: $(per_request "$peer_pid" "$peer_cpu0" "$(sent_to "$baseline_url")") (its process tree)"

# With Redis: the time each request's admission waited on it, as the
# gateway timed it (the end-to-end difference above is two noisy tails).
[[ -n "${REDIS_URL:-}" ]] && python3 "$root/scripts/lib/redis-wait.py" "gateway=$gateway"
rows=$(ledger_query "select status, count(*) from request_ledger group by status" || true)
[[ -n "$rows" ]] && echo "ledger rows by status: $(echo "$rows" | tr '\n' ' ')"

# Resident memory at the end of the run: the peak (VmHWM) and now (VmRSS),
# summed over a process tree (a sum of peaks: an upper bound on the tree's
# peak when its processes peaked at different times).
memory() { # memory <name> <pid>
  local p files=()
  for p in $(tree "$2"); do [[ -r /proc/$p/status ]] && files+=("/proc/$p/status"); done
  ((${#files[@]})) || return 0
  awk -v name="$1" -v n="${#files[@]}" '
    /^VmHWM:/ { hwm += $2 } /^VmRSS:/ { rss += $2 }
    END { printf "  %-9s peak %7.1f MiB  final %7.1f MiB  (%d process%s)\n", name, hwm / 1024, rss / 1024, n, (n > 1 ? "es" : "") }
  ' "${files[@]}"
}
echo "resident memory (peak = VmHWM, final = VmRSS):"
memory gateway "$gateway_pid"
[[ -n "${baseline_pid:-}" ]] && memory "$a_name" "$baseline_pid"
memory nginx "$nginx_pid"
[[ -n "${peer_pid:-}" ]] && memory "$a_name" "$peer_pid"
true
