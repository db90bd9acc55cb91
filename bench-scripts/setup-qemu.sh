#!/usr/bin/env bash
# Installs the aarch64 test toolchain: Debian's cross linker and libc, the Rust target,
# and a static qemu-aarch64 that emulates SME2 (Debian trixie-backports' qemu-user 11.1.x,
# fetched with a private apt configuration that leaves the system's sources alone and
# cached under ~/.cache/smepilot/qemu), with its qemu-x86_64 beside it (older x86 CPUs).
# Prints the qemu-aarch64 path.
#
#   setup-qemu.sh          qemu-user 11.1.x (SME2), ~/.cache/smepilot/qemu
#   setup-qemu.sh --sme1   qemu-user 10.0.x from Debian trixie, ~/.cache/smepilot/qemu10:
#                          it emulates SME without SME2 (QEMU 11 cannot switch SME2 off)
#   setup-qemu.sh --x86    as the first, printing the qemu-x86_64 path
set -euo pipefail
cache=${SMEPILOT_CACHE:-$HOME/.cache/smepilot}
print=aarch64
case "${1:-}" in
    "") d="$cache/qemu" suite=trixie-backports want=11.1 ;;
    --sme1) d="$cache/qemu10" suite=trixie want=10.0 ;;
    --x86) d="$cache/qemu" suite=trixie-backports want=11.1 print=x86_64 ;;
    *) echo "usage: $0 [--sme1|--x86]" >&2; exit 2 ;;
esac
qemu="$d/root/usr/bin/qemu-aarch64"
qemu_x86="$d/root/usr/bin/qemu-x86_64"
say() { printf '[setup-qemu] %s\n' "$*" >&2; }

. "$(dirname "$0")/apt-need.sh"
apt_need gcc-aarch64-linux-gnu libc6-dev-arm64-cross
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu || {
    say "adding the Rust target aarch64-unknown-linux-gnu"; rustup target add aarch64-unknown-linux-gnu >&2; }

version_ok() { [ -x "$qemu" ] && [ -x "$qemu_x86" ] && "$qemu" --version 2>/dev/null | grep -qF "version $want."; }
if ! version_ok; then
    say "fetching qemu-user $want.x from Debian $suite (private apt configuration)"
    rm -rf "$d"; mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror $suite main" >"$d/sources.list"
    A=(-o APT::Sandbox::User=root -o "Dir::Etc::sourcelist=$d/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache")
    apt-get "${A[@]}" update -q >/dev/null
    (cd "$d" && apt-get "${A[@]}" download -q qemu-user >/dev/null 2>&1 && dpkg-deb -x qemu-user_*.deb root)
    # qemu-aarch64 and qemu-x86_64 are static and the only files needed: drop the other
    # ~500 MB.
    if [ -x "$qemu" ] && [ -x "$qemu_x86" ]; then
        mv "$qemu" "$d/qemu-aarch64.keep" && mv "$qemu_x86" "$d/qemu-x86_64.keep"
        rm -rf "$d/root" "$d/lists" "$d/cache" "$d"/qemu-user_*.deb
        mkdir -p "$d/root/usr/bin" && mv "$d/qemu-aarch64.keep" "$qemu" && mv "$d/qemu-x86_64.keep" "$qemu_x86"
    fi
    version_ok || { say "qemu-aarch64 $want.x and qemu-x86_64 not found after download from $suite (got: $("$qemu" --version 2>/dev/null | head -1 || echo nothing))"; exit 1; }
fi
say "$("$qemu" --version | head -1)"
if [ "$print" = x86_64 ]; then echo "$qemu_x86"; else echo "$qemu"; fi
