# Helpers shared by the benchmark scripts that start the project's processes
# on loopback. Source it; it defines functions only.

# first_line <file>: waits (up to 30 s) for a process's address banner, the
# last word of the first line it writes, and prints it.
first_line() {
  for _ in $(seq 1 300); do
    [[ -s "$1" ]] && { head -n 1 "$1" | awk '{print $NF}'; return; }
    sleep 0.1
  done
  echo "no banner in $1" >&2
  exit 1
}
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# scratch: makes $work (a scratch directory) and an empty pids array, and
# on exit kills every pid in it and removes $work. For scripts that need
# no other clean-up.
scratch() {
  work=$(mktemp -d)
  pids=()
  trap '((${#pids[@]})) && kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT INT TERM
}

# The functions below use the caller's $bin (release binaries), $work (a
# scratch directory) and pids (an array the caller's cleanup kills).

# start_mock [mock-cloud flags…]: starts the mock cloud serving mock-model
# and sets $mock to its URL.
start_mock() {
  "$bin/mock-cloud" --addr 127.0.0.1:0 --models mock-model "$@" >"$work/mock.out" 2>/dev/null &
  pids+=($!)
  mock=$(first_line "$work/mock.out")
}

# start_bench_gateway: a gateway on embedded SQLite in $work, with $mock as
# its one cloud backend and one tenant; sets $key (an API key), $gateway
# (its URL) and $gateway_pid, and waits until it is ready.
start_bench_gateway() {
  export GATEWAY_SQLITE_PATH="$work/gateway.db"
  "$bin/gateway" migrate >/dev/null
  "$bin/gateway" tenant create bench >/dev/null
  "$bin/gateway" backend add --name cloud --kind cloud --url "$mock" --model mock-model --rtt-ms 1 >/dev/null
  key=$("$bin/gateway" key create --tenant bench | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p')
  RUST_LOG=warn "$bin/gateway" serve --listen 127.0.0.1:0 >"$work/gateway.out" 2>"$work/gateway.log" &
  gateway_pid=$!
  pids+=("$gateway_pid")
  gateway=$(first_line "$work/gateway.out")
  for _ in $(seq 1 100); do curl -sf "$gateway/readyz" >/dev/null && break; sleep 0.1; done
}
