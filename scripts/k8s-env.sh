#!/usr/bin/env bash
# Writes the Kubernetes topology's secrets into deploy/k8s/secrets.env (read
# by the secretGenerator of deploy/k8s/kustomization.yaml; git-ignored): the
# compose secrets from compose-env.sh, plus the fleet's worker token and the
# gateways' database URL for the in-cluster Postgres. Values already in the
# file are kept, so running it again changes nothing; for a managed Postgres,
# edit GATEWAY_DATABASE_URL afterwards.
#
#   ./scripts/k8s-env.sh && kubectl apply -k deploy/k8s
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
env_file="${1:-$root/deploy/k8s/secrets.env}"

"$root/scripts/compose-env.sh" "$env_file" 2>/dev/null
umask 077
if ! grep -q "^WORKER_TOKEN=." "$env_file"; then
  echo "WORKER_TOKEN=$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >>"$env_file"
fi
if ! grep -q "^GATEWAY_DATABASE_URL=." "$env_file"; then
  password=$(sed -n 's/^POSTGRES_PASSWORD=//p' "$env_file")
  echo "GATEWAY_DATABASE_URL=postgres://gateway:$password@postgres:5432/gateway" >>"$env_file"
fi
echo "secrets in $env_file" >&2
