#!/usr/bin/env bash
# Build and test pyv-edge-agent for ARM on an x86-64 Linux host, under qemu-user emulation.
#
# The target is what Raspberry Pi OS Bullseye ships: a Debian bullseye root (debootstrap)
# with its own Python 3.9 and SQLite 3.34. Inside it we build an sdist from this checkout,
# compile a wheel from that sdist (as cibuildwheel does), install it with the test extras
# into a fresh venv and run the test suite with PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1, after
# checking that BACKEND == "cython". Benchmarks are not run: emulated code is 8-10x slower.
#
# Usage (as root, on a Debian/Ubuntu host):
#   tools/arm_emulation.sh [arm64|armhf] [-- extra pytest args]
#
# Environment:
#   ARM_ROOTS       where the roots live (default /var/tmp/arm-roots; keep it outside the repo)
#   DEBIAN_MIRROR   mirror for debootstrap (default http://deb.debian.org/debian)
#   HOST_CA_BUNDLE  CA bundle copied into the root for pip (default: $PIP_CERT, $SSL_CERT_FILE
#                   or /etc/ssl/certs/ca-certificates.crt)
#   FRESH=1         delete and rebuild the root
#   ROOT_ONLY=1     make (or check) the root and stop
#
# The root is made once and reused; the package is rebuilt from the checkout on every run.
set -euo pipefail

ARCH="${1:-arm64}"
shift || true
if [[ "${1:-}" == "--" ]]; then shift; fi
PYTEST_ARGS=("$@")

case "$ARCH" in
    arm64) QEMU_BINFMT=qemu-aarch64; UNAME_M=aarch64 ;;
    armhf) QEMU_BINFMT=qemu-arm; UNAME_M=armv7l ;;
    *) echo "usage: $0 [arm64|armhf] [-- pytest args]" >&2; exit 2 ;;
esac

SUITE=bullseye
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROOTS="${ARM_ROOTS:-/var/tmp/arm-roots}"
ROOT="$ROOTS/$SUITE-$ARCH"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
CA_BUNDLE="${HOST_CA_BUNDLE:-${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}}"
# What the root needs to build and test: Python 3.9 with headers and venv, a C compiler.
# libsqlite3-0 comes with python3.9 and is bullseye's 3.34.1.
PACKAGES=python3,python3-dev,python3-venv,gcc,libc6-dev,ca-certificates

log() { printf '\n=== %s\n' "$*"; }

case "$ROOTS/" in
    "$REPO"/*) echo "ARM_ROOTS must be outside the repository ($REPO)" >&2; exit 2 ;;
esac
if [[ $EUID -ne 0 ]]; then
    echo "$0 needs root (debootstrap, chroot, mounts)" >&2
    exit 2
fi

ensure_host_tools() {
    local missing=()
    command -v debootstrap >/dev/null || missing+=(debootstrap)
    command -v update-binfmts >/dev/null || missing+=(binfmt-support)
    [[ -e /usr/bin/qemu-aarch64-static ]] || missing+=(qemu-user-static)
    if ((${#missing[@]})); then
        log "installing host tools: ${missing[*]}"
        apt-get update
        DEBIAN_FRONTEND=noninteractive apt-get install -y qemu-user-static binfmt-support debootstrap
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
    # The F flag makes the kernel open the interpreter now, so it works inside the chroot
    # without copying qemu into it.
    if ! grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/$QEMU_BINFMT"; then
        echo "note: $QEMU_BINFMT lacks the F flag; copying the interpreter into the root" >&2
        NEED_QEMU_COPY=1
    fi
}

make_root() {
    if [[ "${FRESH:-0}" == 1 && -d "$ROOT" ]]; then
        log "FRESH=1: removing $ROOT"
        umount_root
        rm -rf --one-file-system "$ROOT"
    fi
    if [[ -f "$ROOT/.pyv-root-ready" ]]; then
        log "reusing $ROOT"
        return
    fi
    rm -rf --one-file-system "$ROOT"
    mkdir -p "$ROOTS"
    log "debootstrap $SUITE $ARCH into $ROOT (takes a while under emulation)"
    debootstrap --arch="$ARCH" --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOT" "$MIRROR"
    touch "$ROOT/.pyv-root-ready"
}

MOUNTS=()
mount_root() {
    local target
    for target in proc sys dev dev/pts dev/shm; do
        mkdir -p "$ROOT/$target"
    done
    mount -t proc proc "$ROOT/proc" && MOUNTS+=("$ROOT/proc")
    mount --rbind /sys "$ROOT/sys" && mount --make-rslave "$ROOT/sys" && MOUNTS+=("$ROOT/sys")
    mount --bind /dev "$ROOT/dev" && MOUNTS+=("$ROOT/dev")
    mount --bind /dev/pts "$ROOT/dev/pts" && MOUNTS+=("$ROOT/dev/pts")
    mount -t tmpfs tmpfs "$ROOT/dev/shm" && MOUNTS+=("$ROOT/dev/shm")
}

umount_root() {
    local i
    for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
        umount -l "${MOUNTS[$i]}" 2>/dev/null || true
    done
    MOUNTS=()
}
trap umount_root EXIT

copy_inputs() {
    log "copying checkout and host CA bundle into the root"
    cp /etc/resolv.conf "$ROOT/etc/resolv.conf"
    cp /etc/hosts "$ROOT/etc/hosts"
    # pip inside the root must trust whatever the host trusts (a proxy's CA included).
    cp "$CA_BUNDLE" "$ROOT/etc/ssl/certs/host-ca-bundle.crt"
    if [[ "${NEED_QEMU_COPY:-0}" == 1 ]]; then
        cp "/usr/bin/$QEMU_BINFMT-static" "$ROOT/usr/bin/"
    fi
    rm -rf "$ROOT/work"
    mkdir -p "$ROOT/work/src"
    # Only what is in the checkout (tracked or new, not ignored): no build/, *.so or venvs.
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard) |
        (cd "$REPO" && xargs -0 cp --parents -t "$ROOT/work/src" 2>/dev/null || true)
}

run_in_root() {
    log "building and testing inside the $ARCH root"
    local quoted_args=""
    if ((${#PYTEST_ARGS[@]})); then
        quoted_args="$(printf '%q ' "${PYTEST_ARGS[@]}")"
    fi
    chroot "$ROOT" /usr/bin/env -i \
        HOME=/root PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt \
        SSL_CERT_FILE=/etc/ssl/certs/host-ca-bundle.crt \
        PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=0 PIP_DEFAULT_TIMEOUT=180 \
        PYTEST_ARGS="$quoted_args" EXPECT_MACHINE="$UNAME_M" \
        /bin/bash -euo pipefail -c '
            cd /work
            echo "machine: $(uname -m)  $(python3 --version)  SQLite $(python3 -c "import sqlite3; print(sqlite3.sqlite_version)")"
            [[ "$(uname -m)" == "$EXPECT_MACHINE" ]] || { echo "not running as $EXPECT_MACHINE" >&2; exit 1; }
            rm -rf venv-build venv-test dist wheelhouse
            python3 -m venv venv-build
            venv-build/bin/python -m pip install -q --upgrade pip build
            venv-build/bin/python -m build --sdist --outdir dist src
            # Compile the wheel from the sdist, as cibuildwheel does; a failed compile is an error.
            if ! PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1 venv-build/bin/python -m pip wheel -v --no-deps -w wheelhouse dist/*.tar.gz > wheel-build.log 2>&1; then
                tail -n 60 wheel-build.log; exit 1
            fi
            grep -E "^ *[a-z0-9_-]*gcc .* -c " wheel-build.log | cut -c1-160 || true
            # Cython and the C compiler (flags include -Wall) must be warning-free.
            if grep -E "(\.(c|h|pyx|pxd):[0-9]+(:[0-9]+)?: warning:|warning: .*\.pyx:)" wheel-build.log; then
                echo "compiler warnings above" >&2; exit 1
            fi
            echo "compiler: no warnings"
            ls -l wheelhouse
            python3 -m venv venv-test
            venv-test/bin/python -m pip install -q --upgrade pip
            wheel=$(ls wheelhouse/*.whl)
            venv-test/bin/python -m pip install -q "$wheel[test]"
            export PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1
            cd /work/src
            # -P / safe path: import the installed wheel, never ./src.
            /work/venv-test/bin/python -c "import platform, sqlite3, pyv_edge_agent.cloud_sync as cs; print(\"BACKEND =\", cs.BACKEND, \"| python\", platform.python_version(), platform.machine(), \"| sqlite\", sqlite3.sqlite_version); assert cs.BACKEND == \"cython\", cs.BACKEND"
            if [[ -d tests ]]; then
                eval "/work/venv-test/bin/python -m pytest tests -p no:cacheprovider $PYTEST_ARGS"
            else
                echo "no tests/ in the checkout: ran the import check only" >&2
            fi
        '
}

ensure_host_tools
make_root
if [[ "${ROOT_ONLY:-0}" == 1 ]]; then log "root ready: $ROOT"; exit 0; fi
mount_root
copy_inputs
run_in_root
log "$ARCH: OK"
