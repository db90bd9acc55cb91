#!/bin/sh
# Cargo's runner for aarch64 test binaries (see .cargo/config.toml): runs them under the
# qemu-aarch64 that bench-scripts/setup-qemu.sh caches. SMEPILOT_QEMU_CPU picks the
# emulated CPU (default "max": NEON, SVE2, SME2; e.g. "max,sve=off,sme=off" for NEON
# only, "max,sme-default-vector-length=64" for a 512-bit streaming vector length).
qemu=${SMEPILOT_QEMU:-${SMEPILOT_CACHE:-$HOME/.cache/smepilot}/qemu/root/usr/bin/qemu-aarch64}
if [ ! -x "$qemu" ]; then
    echo "qemu-aarch64 not found at $qemu: run bench-scripts/setup-qemu.sh" >&2
    exit 127
fi
exec "$qemu" -cpu "${SMEPILOT_QEMU_CPU:-max}" -L /usr/aarch64-linux-gnu "$@"
