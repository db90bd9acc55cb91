#!/usr/bin/env bash
# Runs an aarch64 program under the qemu-aarch64 cached by setup-qemu.sh, as one of the
# emulated CPU profiles below, with build/aarch64/bin on the library path (the tools of
# setup-arm.sh find their .so files and the plugin there) and XDG_CACHE_HOME set to a
# directory per profile, so calibration under emulation stays out of the host's cache.
#
#   qemu.sh [--cpu PROFILE] CMD ARGS...   CMD without a slash: build/aarch64/bin/CMD
#   qemu.sh --runner CMD ARGS...          cargo's runner (.cargo/config.toml): the profile
#                                         from SMEPILOT_QEMU_CPU, default max; no banner
#   qemu.sh --list                        the profiles
#
# PROFILE is a name from the table or a raw -cpu string for QEMU 11 (e.g.
# "max,sme-default-vector-length=32"); without --cpu, SMEPILOT_QEMU_CPU, then m4.
# SMEPILOT_QEMU / SMEPILOT_QEMU10 point at other qemu-aarch64 binaries; QEMU_LD_PREFIX
# replaces /usr/aarch64-linux-gnu.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
cache=${SMEPILOT_CACHE:-$HOME/.cache/smepilot}

# name | QEMU (11 = 11.1.x, 10 = 10.0.x) | -cpu | what it stands for
profiles="\
m4|11|max,sve=off,sme_fa64=off,sme-default-vector-length=64|Apple M4-like: SME2, SVL 512, no non-streaming SVE, NEON traps in streaming mode
c1|11|max,sme-default-vector-length=64|Arm C1-like: SME2, SVL 512, SVE2
sme1|10|max,sme-default-vector-length=64|SME without SME2, SVL 512, SVE2 (QEMU 10.0, which predates SME2)
sve128|11|max,sme-default-vector-length=16|SME2 at the shortest SVL, 128, SVE2
neon|11|max,sve=off,sme=off|NEON only (dotprod, i8mm, bf16), no SVE or SME
max|11|max|QEMU's max: SME2, SVL 256, SVE2 (cargo's default)"

usage() { echo "usage: $0 [--cpu PROFILE | --runner | --list] CMD ARGS..." >&2; exit 2; }
profile=${SMEPILOT_QEMU_CPU:-m4}
banner=1
case "${1:-}" in
    --cpu) [ $# -ge 2 ] || usage; profile=$2; shift 2 ;;
    --runner) profile=${SMEPILOT_QEMU_CPU:-max}; banner=0; shift ;;
    --list) echo "$profiles" | awk -F'|' '{ printf "%-7s QEMU %s  -cpu %-55s %s\n", $1, $2 == 11 ? "11.1" : "10.0", $3, $4 }'; exit 0 ;;
    -h|--help|"") usage ;;
esac
[ $# -ge 1 ] || usage
[ "${SMEPILOT_QEMU_QUIET:-0}" = 1 ] && banner=0

row=$(echo "$profiles" | awk -F'|' -v p="$profile" '$1 == p')
if [ -n "$row" ]; then
    IFS='|' read -r _ major cpu _ <<<"$row"
    xdg_name=$profile
elif [[ $profile == *max* || $profile == *=* ]]; then
    major=11 cpu=$profile
    xdg_name="cpu-$(printf '%s' "$cpu" | sha256sum | cut -c1-12)"
else
    echo "qemu.sh: unknown CPU profile \"$profile\"; profiles:" >&2
    "$0" --list >&2; exit 2
fi

if [ "$major" = 11 ]; then
    qemu=${SMEPILOT_QEMU:-$cache/qemu/root/usr/bin/qemu-aarch64} want=11.1 setup="bench-scripts/setup-qemu.sh"
else
    qemu=${SMEPILOT_QEMU10:-$cache/qemu10/root/usr/bin/qemu-aarch64} want=10.0 setup="bench-scripts/setup-qemu.sh --sme1"
fi
if [ ! -x "$qemu" ]; then
    echo "qemu.sh: qemu-aarch64 $want.x for profile $profile not found at $qemu: run $setup" >&2
    exit 127
fi
# The pinned version: CPU models and their defaults change between QEMU releases.
version=$("$qemu" --version | sed -n '1s/.*version \([0-9][0-9.]*\).*/\1/p')
if [[ $version != "$want".* ]]; then
    echo "qemu.sh: $qemu is QEMU $version, profile $profile needs $want.x (run $setup)" >&2
    exit 127
fi
[ "$banner" = 1 ] && echo "[qemu.sh] QEMU $version, profile $profile: -cpu $cpu" >&2

cmd=$1; shift
[[ $cmd != */* && -f "$repo/build/aarch64/bin/$cmd" ]] && cmd="$repo/build/aarch64/bin/$cmd"
xdg="$cache/qemu-xdg/$xdg_name"
mkdir -p "$xdg"
exec "$qemu" -cpu "$cpu" -L "${QEMU_LD_PREFIX:-/usr/aarch64-linux-gnu}" \
    -E LD_LIBRARY_PATH="$repo/build/aarch64/bin" -E XDG_CACHE_HOME="$xdg" "$cmd" "$@"
