#!/usr/bin/env bash
# Build or smoke-test a pyv-edge-agent wheel in a Debian root of one release and
# architecture (amd64 natively, arm64 and armhf under qemu-user), with that release's own
# Python: what cibuildwheel would do for Linux, without GitHub or its containers. The roots
# are tools/internal/debian_root.sh's (made once, cached, never written by a run); the in-root steps
# are tools/internal/root_wheel.sh's.
#
# Usage (as root, on a Debian/Ubuntu host):
#   tools/internal/wheel_root.sh build ARCH [RELEASE]   # sdist + wheel, auditwheel repair to
#                                              # manylinux_2_<glibc>_<machine>, checked, into
#                                              # $WHEELHOUSE (default: wheelhouse/ here)
#   tools/internal/wheel_root.sh smoke ARCH RELEASE [-- pytest args]
#                                              # that wheel from a local index, binaries only,
#                                              # in a fresh venv of a clean root: smoke tests
#   tools/internal/wheel_root.sh fallback ARCH RELEASE  # the built sdist with no compiler: pure backend,
#                                              # and the warning line
# RELEASE defaults to bullseye (glibc 2.31, Python 3.9: the oldest Raspberry Pi OS we
# support), whose wheel is tagged manylinux_2_31 and installs on every later release with
# the same Python. tools/wheels.sh runs this for all architectures.
set -euo pipefail

MODE="${1:-}"
ARCH="${2:-}"
RELEASE=bullseye
shift 2 || true
if [[ "${1:-}" =~ ^[a-z]+$ ]]; then RELEASE="$1"; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
if [[ ! "$MODE" =~ ^(build|smoke|fallback)$ || ! "$ARCH" =~ ^(amd64|arm64|armhf)$ ]]; then
    echo "usage: $0 build|smoke|fallback amd64|arm64|armhf [RELEASE] [-- pytest args]" >&2
    exit 2
fi

. "$(dirname "${BASH_SOURCE[0]}")/debian_root.sh"
root_enter_namespace "$MODE" "$ARCH" "$RELEASE" -- "$@"
# The same recipe as tools/arm_emulation.sh's roots, so both share them (a differing
# recipe would remake the root on every switch between the two tools).
if [[ "$ARCH" != "$(dpkg --print-architecture)" ]]; then ROOT_EXTRA_PACKAGES=(libffi-dev); fi

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
root_script tools/internal/root_wheel.sh MODE="$MODE" EXPECT_MACHINE="$(root_machine "$ARCH")" SMOKE_ARGS="$quoted"
log "$MODE OK in $SECONDS s"
