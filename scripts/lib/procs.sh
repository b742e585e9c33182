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
