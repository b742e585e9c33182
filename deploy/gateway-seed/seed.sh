#!/bin/sh
# One-shot set-up of the compose topology's gateway database: migrations, a
# tenant, the mock cloud as a backend, the `auto` alias and one API key. The
# edge workers register themselves with the gateways (EDGE_GATEWAY_URL), so
# none is added here unless SEED_EDGE_URLS names some. Idempotent: every step
# checks what is already there, so `docker compose up` can run it on every
# start.
#
# The API key's plaintext is shown once by `gateway key create`; it is kept in
# $SEED_DIR/api-key (a named volume) and printed at the end of every run:
#   docker compose logs gateway-seed
#   docker compose run --rm --no-deps --entrypoint cat gateway-seed /var/lib/gateway/api-key
set -eu

: "${SEED_TENANT:=demo}"
: "${SEED_MODEL:=smollm2-135m-instruct}"
: "${SEED_CLOUD_MODEL:=cloud-small}"
: "${SEED_DIR:=/var/lib/gateway}"
# Edge workers to add statically as edge-1, edge-2, ... (none by default: the
# compose topology's workers register themselves) and the cloud base URL
# ("none" adds no cloud).
: "${SEED_EDGE_URLS:=}"
: "${SEED_CLOUD_URL:=http://mock-cloud:9000}"
: "${GATEWAY_BIN:=gateway}"
key_file="$SEED_DIR/api-key"

gw() { "$GATEWAY_BIN" "$@"; }

# `gateway <noun> list` prints one compact JSON object per line.
listed() { # listed <noun> <name>
  gw "$1" list | grep -q "\"name\":\"$2\""
}

gw migrate

if listed tenant "$SEED_TENANT"; then
  echo "tenant $SEED_TENANT: present"
else
  gw tenant create "$SEED_TENANT"
fi

# Edge workers: on-prem, energy and speed come from their live load reports.
n=0
for url in $SEED_EDGE_URLS; do
  n=$((n + 1))
  if listed backend "edge-$n"; then
    echo "backend edge-$n: present"
  else
    gw backend add --name "edge-$n" --kind edge --url "$url" \
      --model "$SEED_MODEL" --context-length 8192 --rtt-ms 1 --prefill-tps 150 --decode-tps 60
  fi
done

# The mock cloud stands in for a paid OpenAI-compatible API: priced per 1000
# tokens, a WAN round trip, joules per token estimated for a hosted model
# with data-centre overhead (no cloud reports its energy), and a bearer key read from CLOUD_API_KEY by the
# gateways (the seed stores the variable's name, never the key).
if [ "$SEED_CLOUD_URL" = none ]; then
  echo "backend cloud: none configured"
elif listed backend cloud; then
  echo "backend cloud: present"
else
  gw backend add --name cloud --kind cloud --url "$SEED_CLOUD_URL" \
    --model "$SEED_MODEL=$SEED_CLOUD_MODEL" --api-key-env CLOUD_API_KEY \
    --price-in 0.00015 --price-out 0.0006 --rtt-ms 80 --prefill-tps 5000 --decode-tps 80 \
    --j-prompt 0.05 --j-output 0.5 \
    --context-length 128000
fi

# Upsert: safe to repeat.
gw alias set auto "$SEED_MODEL"

# A key is created unless the stored one is still listed and not revoked
# (the listing shows each key's display prefix, which begins its plaintext).
key_ok=false
if [ -s "$key_file" ]; then
  key=$(cat "$key_file")
  for prefix in $(gw key list --tenant "$SEED_TENANT" \
      | grep '"revoked_at":null' \
      | sed -n 's/.*"display_prefix":"\([^"]*\)".*/\1/p'); do
    case "$key" in "$prefix"*) key_ok=true ;; esac
  done
fi
if [ "$key_ok" = true ]; then
  echo "api key: present"
else
  gw key create --tenant "$SEED_TENANT" \
    | sed -n 's/.*"api_key":"\([^"]*\)".*/\1/p' >"$key_file.tmp"
  if [ ! -s "$key_file.tmp" ]; then
    echo "error: key create printed no key" >&2
    exit 1
  fi
  chmod 600 "$key_file.tmp"
  mv "$key_file.tmp" "$key_file"
  echo "api key: created"
fi

echo "gateway seeded; the API key of tenant $SEED_TENANT is in $key_file"
