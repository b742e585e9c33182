#!/usr/bin/env bash
# Writes the compose topology's secrets into .env (read by `docker compose`
# from the project folder): the Postgres password, the Grafana admin
# password and the mock cloud's API key, each random, the file readable by
# its owner only. Values already in .env are kept, so running it again
# changes nothing. docker-compose.yml has no defaults for these: it refuses
# to start without them.
#
#   ./scripts/compose-env.sh && docker compose up -d --build
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
env_file="${1:-$root/.env}"

umask 077
touch "$env_file"
chmod 600 "$env_file"
for name in POSTGRES_PASSWORD GRAFANA_ADMIN_PASSWORD MOCK_CLOUD_API_KEY; do
  if ! grep -q "^$name=." "$env_file"; then
    # Hex only: safe inside a URL (the gateway's database URL) and a YAML value.
    echo "$name=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$env_file"
  fi
done
echo "secrets in $env_file (Grafana: user admin, password GRAFANA_ADMIN_PASSWORD)" >&2
