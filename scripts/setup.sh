#!/usr/bin/env bash
# Prepares a fresh machine for the project: system packages, the bundled
# model, and the Python environment used by the SDK tests and benchmarks.
# Idempotent and quiet when everything is already there.
#
#   setup.sh               everything the test suite and benchmarks need
#   setup.sh --quickstart  only what `run.sh` needs: a C toolchain for the
#                          crates that build C, the model, and the OpenAI SDK
#                          in .venv for the snippet it prints
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
quickstart=0
[[ "${1:-}" == --quickstart ]] && quickstart=1

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

# Rust toolchain: the project builds with the stable toolchain on PATH.
if ! command -v cargo >/dev/null; then
  echo "error: cargo not found; install Rust (https://rustup.rs) first" >&2
  exit 1
fi

# C toolchain for -sys crates (and, with cmake, llama.cpp's build in
# llama-cpp-python); curl for the model download and run.sh's checks.
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v pkg-config >/dev/null || need+=(pkg-config)
command -v curl >/dev/null || need+=(curl)
if ((!quickstart)); then
  command -v cmake >/dev/null || need+=(cmake)
  # The gateway benchmark reads its SQLite ledger with the sqlite3 shell.
  command -v sqlite3 >/dev/null || need+=(sqlite3)
  # Validators for the deployment files (tests/deploy): no container engine
  # is needed to check the compose file and the Prometheus config.
  command -v promtool >/dev/null || need+=(prometheus)
  command -v docker-compose >/dev/null || docker compose version >/dev/null 2>&1 || need+=(docker-compose)
  # Renders deploy/k8s (kubectl kustomize) for tests/deploy/test_k8s.py.
  command -v kubectl >/dev/null || need+=(kubectl)
  # Headless Chromium for the admin dashboard's browser tests: Playwright
  # drives this system browser and downloads none of its own.
  command -v chromium >/dev/null || need+=(chromium)
fi
command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null || need+=(python3-venv)
if ((${#need[@]})); then
  echo "installing ${need[*]}..." >&2
  as_root apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >&2
fi

# The bundled model.
"$root/scripts/fetch-model.sh" >/dev/null

# Python environment.
venv="$root/.venv"
if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
fi
if ((quickstart)); then
  # The SDK at the version the tests pin, for the snippet run.sh prints.
  if ! "$venv/bin/python" -c 'import openai' 2>/dev/null; then
    echo "installing the OpenAI Python SDK into .venv..." >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
      "$(grep -m1 '^openai==' tests/sdk/requirements.txt)" >&2
  fi
  exit 0
fi
# llama.cpp builds for the host CPU; on CPUs with AMX that includes its AMX
# matmul, which crashes (SIGSEGV in ggml_backend_amx_mul_mat) on the virtual
# machines we run on. Build without AMX; the AVX-512/VNNI kernels remain. The
# flags are part of the stamp so that a changed build reinstalls, and pip's
# wheel cache is bypassed because it does not key on them.
llama_cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
stamp="$venv/.requirements.sha256"
want=$({ cat tests/sdk/requirements.txt; echo "$llama_cflags"; } | sha256sum | cut -d' ' -f1)
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  echo "installing Python test dependencies (llama.cpp builds from source once, ~3 min)..." >&2
  CFLAGS="$llama_cflags" CXXFLAGS="$llama_cflags" "$venv/bin/pip" install --quiet \
    --disable-pip-version-check --no-cache-dir --force-reinstall --no-deps \
    "$(grep -m1 '^llama-cpp-python' tests/sdk/requirements.txt)" >&2
  "$venv/bin/pip" install --quiet --disable-pip-version-check -r tests/sdk/requirements.txt >&2
  echo "$want" >"$stamp"
fi
