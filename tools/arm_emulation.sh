#!/usr/bin/env bash
# Build and test pyv-edge-agent for ARM on an x86-64 Linux host, under qemu-user emulation.
#
# The target is what Raspberry Pi OS Bullseye ships: a Debian bullseye root (debootstrap)
# with its own Python 3.9 and SQLite 3.34. Inside it we build an sdist from this checkout,
# compile a wheel from that sdist (as cibuildwheel does), install it with the test extras
# into a fresh venv and run the test suite on both backends with
# PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1, after checking that BACKEND == "cython". Benchmarks
# are not run: emulated code is 8-10x slower. The same root-making and in-root steps serve
# tools/debian_release.sh, which does this natively for another Debian release.
#
# Usage (as root, on a Debian/Ubuntu host):
#   tools/arm_emulation.sh [arm64|armhf] [-- extra pytest args]
#
# Roots are cached under $DEBIAN_ROOTS (default /var/cache/pyv-edge-agent-roots) and reused;
# see tools/debian_root.sh for the environment it reads (FRESH=1, ROOT_ONLY=1, ...).
set -euo pipefail

ARCH="${1:-arm64}"
shift || true
if [[ "${1:-}" == "--" ]]; then shift; fi

case "$ARCH" in
    arm64) QEMU_BINFMT=qemu-aarch64; UNAME_M=aarch64 ;;
    armhf) QEMU_BINFMT=qemu-arm; UNAME_M=armv7l ;;
    *) echo "usage: $0 [arm64|armhf] [-- pytest args]" >&2; exit 2 ;;
esac
RELEASE=bullseye

. "$(dirname "${BASH_SOURCE[0]}")/debian_root.sh"
root_enter_namespace "$ARCH" -- "$@"

ensure_qemu() {
    local missing=()
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    [[ -e /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
    if ((${#missing[@]})); then
        log "installing host tools: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-user-static binfmt-support
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
        mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
    fi
    if [[ ! -e /proc/sys/fs/binfmt_misc/$QEMU_BINFMT ]]; then
        update-binfmts --enable "$QEMU_BINFMT" || update-binfmts --import "$QEMU_BINFMT"
    fi
    if ! grep -q '^enabled' "/proc/sys/fs/binfmt_misc/$QEMU_BINFMT"; then
        echo "binfmt handler $QEMU_BINFMT is not enabled" >&2
        exit 1
    fi
}

# The F flag makes the kernel open the interpreter at registration, so it works inside the
# chroot; without it, the interpreter is bound into the root for the run.
bind_qemu_if_needed() {
    local qemu="/usr/bin/$QEMU_BINFMT-static"
    if ! grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/$QEMU_BINFMT"; then
        echo "note: $QEMU_BINFMT lacks the F flag; binding the interpreter into the root" >&2
        [[ -e "$ROOT$qemu" ]] || touch "$ROOT$qemu"
        root_bind "$qemu" "$ROOT$qemu"
    fi
}

root_setup
ensure_qemu
root_ensure
if [[ "${ROOT_ONLY:-0}" == 1 ]]; then log "root ready: $ROOT"; exit 0; fi
root_mount
bind_qemu_if_needed
# Without the crypto extra: on armv7l cffi builds from source (pyproject.toml), which needs
# libffi-dev in the root and a long emulated compile; the encryption tests skip here.
root_run "$UNAME_M" test tests "$@"
log "OK in $SECONDS s"
