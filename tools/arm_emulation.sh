#!/usr/bin/env bash
# Build and test pyv-edge-agent for ARM on an x86-64 Linux host, under qemu-user emulation.
#
# The target is what Raspberry Pi OS ships: a Debian root (debootstrap) of the release,
# bullseye by default (Python 3.9, SQLite 3.34), with its own Python and SQLite. Inside it
# we build an sdist from this checkout, compile a wheel from that sdist (as cibuildwheel
# does), install it with every extra the tests use into a fresh venv and run the test
# suite on both backends with PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1 and
# PYV_EDGE_AGENT_REQUIRE_CRYPTO=1, after checking that BACKEND == "cython". Benchmarks are
# not run: emulated code is 8-10x slower. The same root-making and in-root steps serve
# tools/debian_release.sh, which does this natively for another Debian release.
#
# Usage (as root, on a Debian/Ubuntu host):
#   tools/arm_emulation.sh [arm64|armhf] [RELEASE] [-- extra pytest args]
#
# Roots are cached under $DEBIAN_ROOTS (default /var/cache/pyv-edge-agent-roots) and reused;
# see tools/internal/debian_root.sh for the environment it reads (FRESH=1, ROOT_ONLY=1, ...).
set -euo pipefail

ARCH="${1:-arm64}"
shift || true
RELEASE=bullseye
if [[ "${1:-}" =~ ^[a-z]+$ ]]; then RELEASE="$1"; shift; fi
if [[ "${1:-}" == "--" ]]; then shift; fi
case "$ARCH" in
    arm64 | armhf) ;;
    *) echo "usage: $0 [arm64|armhf] [RELEASE] [-- pytest args]" >&2; exit 2 ;;
esac

. "$(dirname "${BASH_SOURCE[0]}")/internal/debian_root.sh"
root_enter_namespace "$ARCH" "$RELEASE" -- "$@"
# cffi (under cryptography, the crypto extra) publishes no armv7l wheel: pip builds it from
# its sdist, which needs libffi's headers. cryptography itself has a cp39-abi3 armv7l wheel,
# so no Rust. Both ARM roots get the same recipe; pip's cache keeps the built wheel.
ROOT_EXTRA_PACKAGES=(libffi-dev)

root_setup
root_qemu_setup
root_ensure
if [[ "${ROOT_ONLY:-0}" == 1 ]]; then log "root ready: $ROOT"; exit 0; fi
root_mount
root_qemu_bind
# Every extra the tests use: encryption at rest, mutual TLS and MQTT over TLS run on ARM too.
root_run "$(root_machine "$ARCH")" test,crypto,mqtt,serve tests "$@"
log "OK in $SECONDS s"
