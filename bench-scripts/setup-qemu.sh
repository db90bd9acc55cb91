#!/usr/bin/env bash
# Installs the aarch64 test toolchain: Debian's cross linker and libc, the Rust target,
# and a static qemu-aarch64 that emulates SME2 (Debian trixie-backports' qemu-user 11.x,
# fetched with a private apt configuration that leaves the system's sources alone and
# cached under ~/.cache/smepilot/qemu). Prints the qemu-aarch64 path.
set -euo pipefail
cache=${SMEPILOT_CACHE:-$HOME/.cache/smepilot}
d="$cache/qemu"
qemu="$d/root/usr/bin/qemu-aarch64"
want_major=11
say() { printf '[setup-qemu] %s\n' "$*" >&2; }

. "$(dirname "$0")/apt-need.sh"
apt_need gcc-aarch64-linux-gnu libc6-dev-arm64-cross
rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu || {
    say "adding the Rust target aarch64-unknown-linux-gnu"; rustup target add aarch64-unknown-linux-gnu >&2; }

version_ok() { [ -x "$qemu" ] && "$qemu" --version 2>/dev/null | grep -qE "version $want_major\."; }
if ! version_ok; then
    say "fetching qemu-user $want_major.x from Debian trixie-backports (private apt configuration)"
    rm -rf "$d"; mkdir -p "$d/lists/partial" "$d/cache/archives/partial"
    mirror=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror trixie-backports main" >"$d/sources.list"
    A=(-o "Dir::Etc::sourcelist=$d/sources.list" -o "Dir::Etc::sourceparts=-" -o "Dir::State::Lists=$d/lists" -o "Dir::Cache=$d/cache")
    apt-get "${A[@]}" update -q >/dev/null
    (cd "$d" && apt-get "${A[@]}" download -q qemu-user >/dev/null 2>&1 && dpkg-deb -x qemu-user_*.deb root)
    version_ok || { say "qemu-aarch64 $want_major.x not found after download"; exit 1; }
fi
say "$("$qemu" --version | head -1)"
echo "$qemu"
