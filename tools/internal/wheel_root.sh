#!/usr/bin/env bash
# Build or smoke-test pyv-edge-agent wheels in Debian roots, with each release's own Python:
# what cibuildwheel would do for Linux, without GitHub or its containers. The roots are
# tools/internal/debian_root.sh's (made once, cached, never written by a run); the in-root
# steps are tools/internal/root_wheel.sh's.
#
# Usage (as root, on a Debian/Ubuntu amd64 host):
#   tools/internal/wheel_root.sh build "ARCH..." [RELEASE]
#       the sdist and a wheel for each ARCH (amd64 arm64 armhf), all in one amd64 root of
#       RELEASE that also holds Debian's cross compilers and each target's libpython3-dev
#       (multiarch): x86_64 natively, aarch64 and armv7l cross-compiled, no emulation.
#       Each is repaired by auditwheel to manylinux_2_<glibc>_<machine> and checked, into
#       $WHEELHOUSE (default: wheelhouse/ here).
#   tools/internal/wheel_root.sh smoke ARCH RELEASE [-- pytest args]
#       that wheel from a local index, binaries only, in a fresh venv of a clean root of the
#       release for ARCH (the ARM ones under qemu-user): smoke tests
#   tools/internal/wheel_root.sh fallback ARCH RELEASE
#       the built sdist with no compiler: pure backend, and the warning line
# RELEASE defaults to bullseye (glibc 2.31, Python 3.9: the oldest Raspberry Pi OS we
# support), whose wheels are tagged manylinux_2_31 and install on every later release with
# the same Python. tools/wheels.sh runs this for all architectures.
set -euo pipefail

MODE="${1:-}"
ARCH="${2:-}"
RELEASE=bullseye
shift 2 || true
if [[ "${1:-}" =~ ^[a-z]+$ ]]; then RELEASE="$1"; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
usage() {
    echo "usage: $0 build \"amd64 arm64 armhf\" [RELEASE] | smoke|fallback amd64|arm64|armhf RELEASE [-- pytest args]" >&2
    exit 2
}
[[ "$MODE" =~ ^(build|smoke|fallback)$ ]] || usage
for arch in $ARCH; do [[ "$arch" =~ ^(amd64|arm64|armhf)$ ]] || usage; done
[[ "$MODE" == build || "$ARCH" =~ ^[a-z0-9]+$ ]] || usage

. "$(dirname "${BASH_SOURCE[0]}")/debian_root.sh"
root_enter_namespace "$MODE" "$ARCH" "$RELEASE" -- "$@"
if [[ "$MODE" == build ]]; then
    targets=""
    for arch in $ARCH; do targets+="$(root_machine "$arch") "; done
    if [[ "$(dpkg --print-architecture)" != amd64 ]]; then
        echo "the cross-compiling root is amd64: build on an amd64 host" >&2
        exit 2
    fi
    # One amd64 root for every target: its own flavour, beside the release's plain root.
    ARCH=amd64
    ROOT_FLAVOUR=cross
    ROOT_FOREIGN_ARCHS=(arm64 armhf)
    ROOT_EXTRA_PACKAGES=(gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf libpython3-dev:arm64 libpython3-dev:armhf)
elif [[ "$ARCH" != "$(dpkg --print-architecture)" ]]; then
    # The same recipe as tools/arm_emulation.sh's roots, so both share them (a differing
    # recipe would remake the root on every switch between the two tools).
    ROOT_EXTRA_PACKAGES=(libffi-dev)
fi

root_setup
WHEELHOUSE="$(mkdir -p "${WHEELHOUSE:-$REPO/wheelhouse}" && cd "${WHEELHOUSE:-$REPO/wheelhouse}" && pwd)"
root_qemu_setup
root_ensure
if [[ "${ROOT_ONLY:-0}" == 1 ]]; then log "root ready: $ROOT"; exit 0; fi
root_mount
root_qemu_bind
# The host's wheel directory as /work/wheelhouse: written by a build, read by a smoke run.
mkdir -p "$RUN_DIR/work/wheelhouse"
root_bind "$WHEELHOUSE" "$ROOT/work/wheelhouse"
quoted=""
if (($#)); then quoted="$(printf '%q ' "$@")"; fi
log "$MODE inside the root"
root_script tools/internal/root_wheel.sh MODE="$MODE" EXPECT_MACHINE="$(root_machine "$ARCH")" \
    TARGETS="${targets:-}" EMULATED="$([[ -n "$QEMU_BINFMT" ]] && echo 1 || echo 0)" SMOKE_ARGS="$quoted"
log "$MODE OK in $SECONDS s"
