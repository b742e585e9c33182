#!/usr/bin/env bash
# The edge worker against llama.cpp with both built for AVX2 only
# (x86-64-v3: AVX2, FMA, F16C, BMI2; no AVX-512), on whatever CPU this is.
# On a CPU with AVX-512 this is how the pair behaves on the AVX2-only
# machines the project also runs on, instruction set for instruction set;
# the microarchitecture is still this one's, so it is a stand-in for such a
# machine, not a measurement of one.
#
#   ./scripts/bench-edge-avx2.sh [bench-edge.py arguments, e.g. --rounds 3]
#
# Builds the edge worker with RUSTFLAGS="-C target-cpu=x86-64-v3" into
# target/x86-64-v3 (a cold build of mistralrs the first time) and
# llama-cpp-python, at the version the test suite pins, with ggml's native
# tuning off and AVX-512 off into .cache/llama-avx2 (about 4 minutes once),
# then runs scripts/bench-edge.py with both.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/setup.sh"
"$root/scripts/fetch-model.sh" >/dev/null

target="$root/target/x86-64-v3"
RUSTFLAGS="-C target-cpu=x86-64-v3" cargo build --release --locked \
  -p edge-worker --bin edge-worker --target-dir "$target"

venv="$root/.cache/llama-avx2"
spec=$(grep -m1 '^llama-cpp-python' tests/sdk/requirements.txt)
cmake_args="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
-DGGML_BMI2=ON -DGGML_AVX_VNNI=OFF -DGGML_AVX512=OFF -DGGML_AVX512_VBMI=OFF \
-DGGML_AVX512_VNNI=OFF -DGGML_AVX512_BF16=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
-DGGML_AMX_BF16=OFF"
want=$(echo "$spec $cmake_args" | sha256sum | cut -d' ' -f1)
if [[ ! -f "$venv/.stamp" || "$(cat "$venv/.stamp")" != "$want" ]]; then
  echo "building llama.cpp for AVX2 only into $venv (about 4 minutes)..." >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  CMAKE_ARGS="$cmake_args" "$venv/bin/pip" install --quiet --disable-pip-version-check \
    --no-cache-dir "$spec" "$(grep -m1 '^httpx' tests/sdk/requirements.txt)" >&2
  echo "$want" >"$venv/.stamp"
fi
# What the llama.cpp build says it uses, so the report shows no AVX-512.
"$venv/bin/python" -c 'import llama_cpp; print("llama.cpp:", llama_cpp.llama_print_system_info().decode())'

exec "$root/.venv/bin/python" scripts/bench-edge.py --edge-binary "$target/release/edge-worker" \
  --llama-python "$venv/bin/python" --simd "AVX2 (x86-64-v3)" "$@"
