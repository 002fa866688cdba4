#!/usr/bin/env bash
# Build and test pyv-edge-agent on another Debian release, natively: a Debian root of that
# release for this machine's own architecture (debootstrap, cached and reused), in which the
# sdist and a wheel are built with the release's Python and SQLite, the wheel is installed
# and the whole suite runs on both backends, compiled backend required. Raspberry Pi OS
# follows Debian: bullseye is Python 3.9 / SQLite 3.34, trixie Python 3.13 / SQLite 3.46.
#
# Usage (as root, on a Debian/Ubuntu host):
#   tools/debian_release.sh bullseye [-- extra pytest args]
#
# The root is made once (about a minute) under $DEBIAN_ROOTS and remade when its recipe
# (release, packages, tools/internal/debian_root.sh's recipe version) changes or it is older than
# ROOT_MAX_AGE_DAYS; the package is rebuilt from the checkout on every run. See
# tools/internal/debian_root.sh for the environment it reads.
set -euo pipefail

RELEASE="${1:-}"
if [[ ! "$RELEASE" =~ ^[a-z]+$ ]]; then
    echo "usage: $0 RELEASE [-- pytest args]   (e.g. bullseye, bookworm, trixie)" >&2
    exit 2
fi
shift
if [[ "${1:-}" == "--" ]]; then shift; fi

. "$(dirname "${BASH_SOURCE[0]}")/internal/debian_root.sh"
root_enter_namespace "$RELEASE" -- "$@"
ARCH="$(dpkg --print-architecture)"
root_setup
root_ensure
if [[ "${ROOT_ONLY:-0}" == 1 ]]; then log "root ready: $ROOT"; exit 0; fi
root_mount
# What tools/test.sh installs and runs on the host: every test and each benchmark once, untimed.
REQUIRE_SYSTEM_DEPS=1 root_run "$(uname -m)" test,crypto,serve "tests benchmarks --benchmark-disable -q" "$@"
log "OK in $SECONDS s"
