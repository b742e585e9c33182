#!/usr/bin/env bash
# Makes sure PostgreSQL and Redis answer on 127.0.0.1 (5432 and 6379), the
# addresses the tests use. Installs them from Debian's packages if missing and
# starts them if stopped. Set SKIP_SERVICES=1 to manage them yourself.
set -euo pipefail
[[ "${SKIP_SERVICES:-0}" == 1 ]] && exit 0

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
wait_port() {
  for _ in $(seq 1 100); do port_open "$1" && return 0; sleep 0.1; done
  echo "error: nothing answers on 127.0.0.1:$1" >&2
  return 1
}

if ! port_open 5432; then
  if ! command -v pg_ctlcluster >/dev/null; then
    echo "installing PostgreSQL..." >&2
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >&2
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  conf="/etc/postgresql/$version/main/pg_hba.conf"
  # Local trust auth for the test user, as on the development machines.
  if ! as_root grep -q "^host all all 127.0.0.1/32 trust" "$conf"; then
    as_root sed -i '1i host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\nlocal all all trust' "$conf"
  fi
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  wait_port 5432
fi

if ! port_open 6379; then
  if ! command -v redis-server >/dev/null; then
    echo "installing Redis..." >&2
    as_root apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq redis-server >&2
  fi
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no >/dev/null
  wait_port 6379
fi

# The test database the suite connects to first (each test run then makes
# its own uniquely named database).
if ! psql -h 127.0.0.1 -U postgres -tAc "select 1 from pg_database where datname = 'test'" | grep -q 1; then
  psql -h 127.0.0.1 -U postgres -qc "create database test" >/dev/null
fi
