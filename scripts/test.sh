#!/usr/bin/env bash
# The whole test suite: Rust unit and integration tests (real model, real
# databases, real HTTP) and the official OpenAI Python SDK against the real
# binaries. Installs and starts whatever a fresh machine lacks.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

"$root/scripts/setup.sh"
"$root/scripts/services.sh"

# Release profile: the model is unusably slow in a debug build, and the
# binaries the Python tests drive are the same ones the quick start runs.
# All targets in one build: the tests' dev-dependencies change the features
# of crates mistralrs uses, so building the binaries alone and then the
# tests compiled mistralrs twice (about ten minutes on two cores).
cargo build --release --workspace --all-targets
cargo test --release --workspace

"$root/.venv/bin/python" -m pytest -q tests/sdk tests/deploy
