#!/usr/bin/env bash
# The main job on a fresh machine: set everything up, generate text with
# llama-cli --backend smepilot on the default model, then A/B it against the stock CPU
# backend with llama-bench in one run (pp512 / tg128 and the ratio).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
"$repo/bench-scripts/setup.sh"
model=$("$repo/bench-scripts/fetch-model.sh")
bin="$repo/build/bin"

echo "== llama-cli --backend smepilot -m $(basename "$model")"
"$bin/llama-cli" --backend smepilot -m "$model" -p "Write one sentence about matrix units in CPUs." \
    -n 64 -st --temp 0 -lv 4 </dev/null 2>"$repo/build/main-cli.log"
grep -E "SMEPILOT|splits" "$repo/build/main-cli.log" | head -5 || true

echo
echo "== A/B against stock (llama-bench --backend cpu,smepilot)"
python3 "$repo/bench-scripts/ab.py" --models "$model" --out "$repo/build/ab-main.md" "$@"
