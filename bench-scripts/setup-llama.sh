#!/usr/bin/env bash
# Fetches the pinned llama.cpp (PyPI sdist llama-cpp-python==0.3.36, sha256-checked),
# applies llama-patches/*.patch, builds it with clang-19 and installs the binaries the
# project relies on into build/bin. The build is cached under ~/.cache/smepilot keyed
# by version and patch hash, and reused when nothing changed.
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
version=0.3.36
sdist_sha=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
cache=${SMEPILOT_CACHE:-$HOME/.cache/smepilot}

patch_hash=$(cat "$repo"/llama-patches/*.patch 2>/dev/null | sha256sum | cut -c1-12)
key="$version-$patch_hash"
tree="$cache/llama.cpp/$key"
say() { printf '[setup-llama] %s\n' "$*" >&2; }

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
    ccache_flag=OFF
    command -v ccache >/dev/null && ccache_flag=ON
    export CCACHE_BASEDIR="$tree"  # relative paths: cache hits across patch-hash trees
    CC=clang-19 CXX=clang++-19 cmake -S "$tree/src" -B "$tree/build" -G Ninja \
        -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DBUILD_SHARED_LIBS=ON \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=ON -DLLAMA_BUILD_EXAMPLES=ON \
        -DGGML_CCACHE=$ccache_flag >"$tree/cmake.log" 2>&1 || {
        tail -30 "$tree/cmake.log"; say "cmake failed (log: $tree/cmake.log)"; exit 1; }
    say "building llama.cpp with clang-19 (about 6 minutes on 2 cores without ccache)"
    # ninja prints [done/total] per step; keep one line per 25 steps as progress, on stderr
    # like every other message (stdout is the tree path alone, for callers to capture).
    ninja -C "$tree/build" 2>&1 | tee "$tree/build.log" | awk '/^\[[0-9]+\/[0-9]+\]/ { s = $1; gsub(/[][]/, "", s); split(s, a, "/"); if (a[1] % 25 == 0 || a[1] == a[2]) { printf "[setup-llama] build %s/%s\n", a[1], a[2] > "/dev/stderr"; fflush("/dev/stderr") } }'
    [ "${PIPESTATUS[0]}" -eq 0 ] || { tail -40 "$tree/build.log"; say "build failed (log: $tree/build.log)"; exit 1; }
    touch "$tree/.built"
    # Trees of earlier patch sets are not needed any more (ccache keeps rebuilds cheap).
    for old in "$cache/llama.cpp/$version-"*; do
        [ "$old" != "$tree" ] && rm -rf "$old"
    done
else
    say "reusing cached llama.cpp build $tree"
fi

# Install copies (not symlinks) so the plugin found "next to the executable" is ours.
mkdir -p "$repo/build/bin"
for b in llama-cli llama-server llama-bench llama-perplexity llama-quantize llama-completion test-backend-ops; do
    [ -f "$tree/build/bin/$b" ] && cp -f "$tree/build/bin/$b" "$repo/build/bin/"
done
ln -sfn "$tree/src" "$repo/build/llama.cpp"
ln -sfn "$tree/build" "$repo/build/llama.cpp-build"
echo "$tree"
