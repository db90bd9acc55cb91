#!/usr/bin/env bash
# Fetches the pinned llama.cpp (PyPI sdist llama-cpp-python==0.3.36, sha256-checked),
# applies llama-patches/*.patch, builds it with clang-19 and installs the binaries the
# project relies on into build/bin. The build is cached under ~/.cache/smepilot keyed
# by version and patch hash, and reused when nothing changed.
#
#   setup-llama.sh            the native (x86-64) build: build/bin, build/llama.cpp
#   setup-llama.sh --aarch64  a cross build for aarch64 (aarch64-toolchain.cmake, run
#                             under QEMU): a few tools and all their .so files into
#                             build/aarch64/bin, the tree linked as build/aarch64/llama.cpp
#   setup-llama.sh --baseline an x86-64 build of test-backend-ops for CPUs without AVX
#                             (SSE4.2 at most: qemu-x86_64 -cpu Nehalem runs it)
# Prints the tree's path on stdout.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
version=0.3.36
sdist_sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache=${SMEPILOT_CACHE:-$HOME/.cache/smepilot}
arch=native
case "${1:-}" in
    "") ;;
    --aarch64) arch=aarch64 ;;
    --baseline) arch=baseline ;;
    *) echo "usage: $0 [--aarch64|--baseline]" >&2; exit 2 ;;
esac

patch_hash=$(cat "$repo"/llama-patches/*.patch 2>/dev/null | sha256sum | cut -c1-12)
say() { printf '[setup-llama] %s\n' "$*" >&2; }

ccache_flag=OFF
command -v ccache >/dev/null && ccache_flag=ON
if [ "$arch" = native ]; then
    key="$version-$patch_hash"
    stale_glob="$version-*"
    cmake_flags=(-DGGML_NATIVE=ON)
    targets=()  # everything
    tools=(llama-cli llama-server llama-bench llama-perplexity llama-quantize llama-completion test-backend-ops)
    bin_out="$repo/build/bin"
    minutes=6
elif [ "$arch" = baseline ]; then
    cmake_flags=(-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF -DGGML_F16C=OFF
        -DGGML_BMI2=OFF -DGGML_AVX512=OFF -DGGML_AVX_VNNI=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
        -DGGML_OPENMP=OFF -DLLAMA_BUILD_SERVER=OFF)
    flag_hash=$(printf '%s\n' "${cmake_flags[@]}" | sha256sum | cut -c1-12)
    key="baseline-$version-$patch_hash-$flag_hash"
    stale_glob="baseline-$version-*"
    tools=(test-backend-ops)
    targets=("${tools[@]}")
    bin_out="$repo/build/baseline/bin"
    minutes=3
else
    # ARMv8.6-A with the int8 and bf16 dot products (Apple M4, Arm C1 have them): ggml's
    # NEON/i8mm kernels, no SVE kernels. KleidiAI's configure step downloads its sources
    # (and it is the only SME code in stock ggml), OpenMP is not in the cross packages.
    cmake_flags=(-DGGML_NATIVE=OFF -DGGML_CPU_ARM_ARCH=armv8.6-a+dotprod+i8mm+bf16 -DGGML_CPU_KLEIDIAI=OFF -DGGML_OPENMP=OFF)
    toolchain="$repo/bench-scripts/aarch64-toolchain.cmake"
    # The key covers the flags and the toolchain file; "aarch64-" keeps these trees out
    # of the native build's clean-up of older patch sets.
    flag_hash=$( { printf '%s\n' "${cmake_flags[@]}"; cat "$toolchain"; } | sha256sum | cut -c1-12)
    key="aarch64-$version-$patch_hash-$flag_hash"
    stale_glob="aarch64-$version-*"
    tools=(llama-cli llama-bench llama-perplexity llama-quantize llama-completion test-backend-ops)
    targets=("${tools[@]}")
    bin_out="$repo/build/aarch64/bin"
    minutes=6
fi
tree="$cache/llama.cpp/$key"

fetch_sdist() {
    local dl="$cache/dl" file="$cache/dl/llama_cpp_python-$version.tar.gz"
    mkdir -p "$dl"
    if [ ! -f "$file" ] || ! echo "$sdist_sha  $file" | sha256sum -c --status; then
        say "downloading llama-cpp-python==$version source distribution"
        rm -f "$file"
        python3 -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==$version" -d "$dl"
    fi
    echo "$sdist_sha  $file" | sha256sum -c --status || {
        say "sha256 mismatch for $file (expected $sdist_sha)"; exit 1; }
    echo "$file"
}

if [ ! -f "$tree/.built" ]; then
    sdist=$(fetch_sdist)
    say "extracting vendor/llama.cpp into $tree/src"
    rm -rf "$tree"
    mkdir -p "$tree"
    tar xzf "$sdist" -C "$tree" "llama_cpp_python-$version/vendor/llama.cpp"
    mv "$tree/llama_cpp_python-$version/vendor/llama.cpp" "$tree/src"
    rm -rf "$tree/llama_cpp_python-$version" "$tree/src/.git"
    for p in "$repo"/llama-patches/*.patch; do
        [ -e "$p" ] || continue
        say "applying $(basename "$p")"
        patch -p1 -s -d "$tree/src" < "$p"
    done
    export CCACHE_BASEDIR="$tree"  # relative paths: cache hits across patch-hash trees
    if [ "$arch" != aarch64 ]; then
        export CC=clang-19 CXX=clang++-19
    else
        # A copy in the tree: the cached build must not depend on where the repo is.
        cp "$toolchain" "$tree/aarch64-toolchain.cmake"
        cmake_flags+=(-DCMAKE_TOOLCHAIN_FILE="$tree/aarch64-toolchain.cmake")
    fi
    cmake -S "$tree/src" -B "$tree/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release "${cmake_flags[@]}" -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_EXAMPLES=ON \
        -DGGML_CCACHE=$ccache_flag >"$tree/cmake.log" 2>&1 || {
        tail -30 "$tree/cmake.log"; say "cmake failed (log: $tree/cmake.log)"; exit 1; }
    say "building llama.cpp ($arch) with clang-19 (about $minutes minutes on 2 cores without ccache)"
    # ninja prints [done/total] per step; keep one line per 25 steps as progress, on stderr
    # like every other message (stdout is the tree path alone, for callers to capture).
    ninja -C "$tree/build" "${targets[@]}" 2>&1 | tee "$tree/build.log" | awk '/^\[[0-9]+\/[0-9]+\]/ { s = $1; gsub(/[][]/, "", s); split(s, a, "/"); if (a[1] % 25 == 0 || a[1] == a[2]) { printf "[setup-llama] build %s/%s\n", a[1], a[2] > "/dev/stderr"; fflush("/dev/stderr") } }'
    [ "${PIPESTATUS[0]}" -eq 0 ] || { tail -40 "$tree/build.log"; say "build failed (log: $tree/build.log)"; exit 1; }
    touch "$tree/.built"
    # Trees of earlier patch sets are not needed any more (ccache keeps rebuilds cheap).
    for old in "$cache/llama.cpp/"$stale_glob; do
        [ "$old" != "$tree" ] && rm -rf "$old"
    done
else
    say "reusing cached llama.cpp build $tree"
fi

# Install copies (not symlinks) so the plugin found "next to the executable" is ours.
# Unchanged files are left alone and changed ones replaced by rename: a tool still
# running keeps the file it mapped (rewriting it in place crashes that process).
mkdir -p "$bin_out"
install_copy() { # src dir
    local dst="$2/$(basename "$1")"
    if [ -L "$1" ]; then ln -sfn "$(readlink "$1")" "$dst"; return; fi
    cmp -s "$1" "$dst" && return
    cp -f "$1" "$dst.tmp.$$" && mv -f "$dst.tmp.$$" "$dst"
}
for b in "${tools[@]}"; do
    if [ -f "$tree/build/bin/$b" ]; then install_copy "$tree/build/bin/$b" "$bin_out"; fi
done
if [ "$arch" = native ]; then
    ln -sfn "$tree/src" "$repo/build/llama.cpp"
    ln -sfn "$tree/build" "$repo/build/llama.cpp-build"
elif [ "$arch" = baseline ]; then
    for f in "$tree"/build/bin/lib*.so*; do install_copy "$f" "$bin_out"; done
else
    # The tools link libllama-*-impl.so and the ggml libraries: all of them beside the
    # binaries (qemu.sh puts that directory on the library path), soname links included.
    for f in "$tree"/build/bin/lib*.so*; do install_copy "$f" "$bin_out"; done
    ln -sfn "$tree/src" "$repo/build/aarch64/llama.cpp"
    ln -sfn "$tree/build" "$repo/build/aarch64/llama.cpp-build"
fi
echo "$tree"
