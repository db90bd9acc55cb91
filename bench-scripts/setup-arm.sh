#!/usr/bin/env bash
# Sets up the aarch64 build, run under QEMU on this x86 host (setup.sh --arm runs it after
# the x86 setup): the cross toolchain, qemu-aarch64 11.1.x (SME2) and 10.0.x (SME1), the
# pinned llama.cpp cross-built (cached like the x86 build), and the plugin cross-built.
# Installs the tools, their .so files, libggml-smepilot.so and smepilot into
# build/aarch64/bin; run them with bench-scripts/qemu.sh. Idempotent: reruns are quick.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
say() { printf '[setup-arm] %s\n' "$*" >&2; }

# 1. Cross toolchain (Debian): clang-19 compiles, the aarch64 GCC links and provides libc
#    and libstdc++ (clang finds them through it); llvm-19 for llvm-objdump-19, which the
#    instruction counter of the Arm work reads disassembly with.
. "$(dirname "$0")/apt-need.sh"
apt_need clang-19 cmake ninja-build libclang-dev ccache gcc-aarch64-linux-gnu libc6-dev-arm64-cross libstdc++-12-dev-arm64-cross llvm-19
command -v cargo >/dev/null || { say "cargo not found: install Rust (rustup) first"; exit 1; }

# 2. QEMU (and the Rust target): 11.1.x for SME2, 10.0.x for the sme1 profile. Without
#    the latter only that profile is lost, so it warns and goes on.
"$repo/bench-scripts/setup-qemu.sh" >/dev/null
"$repo/bench-scripts/setup-qemu.sh" --sme1 >/dev/null || say "WARNING: no QEMU 10.0.x: the sme1 profile of qemu.sh will not run"

# 3. llama.cpp cross-built; its tools and libraries land in build/aarch64/bin.
llama_tree=$("$repo/bench-scripts/setup-llama.sh" --aarch64)
say "llama.cpp aarch64 tree: $llama_tree"

# 4. The plugin, against the aarch64 tree's headers and libggml-base (bindgen gets the
#    target from cargo, so the bindings have aarch64's layouts).
out="$repo/build/aarch64/bin"
say "building libggml-smepilot.so for aarch64 (cargo build --release --target aarch64-unknown-linux-gnu)"
(cd "$repo" && SMEPILOT_LLAMA_SRC="$repo/build/aarch64/llama.cpp" SMEPILOT_LLAMA_LIBDIR="$repo/build/aarch64/llama.cpp-build/bin" \
    cargo build --release --quiet --target aarch64-unknown-linux-gnu)
# Copy, then rename: a process still running the old plugin keeps its file intact.
install_file() { cp -f "$1" "$2.tmp.$$" && mv -f "$2.tmp.$$" "$2"; }
install_file "$repo/target/aarch64-unknown-linux-gnu/release/libggml_smepilot.so" "$out/libggml-smepilot.so"
install_file "$repo/target/aarch64-unknown-linux-gnu/release/smepilot" "$out/smepilot"
say "ready: build/aarch64/bin (run with bench-scripts/qemu.sh [--cpu m4|c1|sme1|sve128|neon] CMD)"
