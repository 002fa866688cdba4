#!/usr/bin/env bash
# Runs INSIDE a Debian root made by tools/internal/debian_root.sh, with /work/src a copy of the
# checkout: build the sdist with this release's Python, compile a wheel from that sdist
# (as cibuildwheel does; a failed or warning compile is an error), install the wheel with
# the test extras into a fresh venv and run the suite on both backends, compiled required.
# Environment: EXPECT_MACHINE (uname -m), EXTRAS (the package extras to install), SUITE
# (pytest paths and options), PYTEST_ARGS (extra pytest arguments, shell-quoted).
set -euo pipefail
cd /work
step() { printf '\n--- %s (%d s so far)\n' "$*" "$SECONDS"; }

. /etc/os-release
echo "$PRETTY_NAME, $(uname -m), $(python3 --version), SQLite $(python3 -c 'import sqlite3; print(sqlite3.sqlite_version)')"
if [[ "$(uname -m)" != "$EXPECT_MACHINE" ]]; then
    echo "running as $(uname -m), not $EXPECT_MACHINE" >&2
    exit 1
fi

step "venv and build tools"
python3 -m venv venv
# Bullseye's pip 20.3 cannot build a setuptools>=77 project: upgrade it first.
venv/bin/python -m pip install -q --upgrade pip build

step "sdist, then a wheel from the sdist"
export PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1
if ! venv/bin/python -m build --outdir dist src > build.log 2>&1; then
    tail -n 60 build.log
    exit 1
fi
grep -E "^ *[a-z0-9_-]*gcc .* -c " build.log | cut -c1-160 || true
# Cython and the C compiler (flags include -Wall) must be warning-free.
if grep -E "(\.(c|h|pyx|pxd):[0-9]+(:[0-9]+)?: warning:|warning: .*\.pyx:)" build.log; then
    echo "compiler warnings above" >&2
    exit 1
fi
ls dist

step "installing the wheel with the extras $EXTRAS"
wheel=$(ls dist/*.whl)
extra_tools=()
if [[ ",$EXTRAS," == *,crypto,* ]]; then
    # With the crypto extra the encryption, mutual-TLS and MQTT-over-TLS tests must run:
    # a skip of theirs is a failure. trustme makes their certificates; the test extra
    # leaves it out on armv7l because musllinux armv7l has no cryptography wheel, but
    # this glibc root has one.
    export PYV_EDGE_AGENT_REQUIRE_CRYPTO=1
    extra_tools+=("trustme>=1.0")
fi
# Wheels pip builds here from an sdist (cffi on armv7l) land in the shared cache for the
# next run.
venv/bin/python -m pip install -q "$wheel[$EXTRAS]" "${extra_tools[@]}"

step "suite"
# The native roots have the suite's Debian packages (the recipe installs them): a test
# that would skip for want of one fails instead, as on the host.
if [[ "${REQUIRE_SYSTEM_DEPS:-0}" == 1 ]]; then
    export PYV_EDGE_AGENT_REQUIRE_SYSTEM_DEPS=1
fi
cd /work/src
# Run from the copy, not ./src: the installed wheel is what gets imported.
/work/venv/bin/python -c "import platform, sqlite3, pyv_edge_agent.cloud_sync as cs; print('BACKEND =', cs.BACKEND, '| python', platform.python_version(), platform.machine(), '| sqlite', sqlite3.sqlite_version, '|', cs.__file__); assert cs.BACKEND == 'cython', cs.BACKEND"
eval "/work/venv/bin/python -m pytest $SUITE -p no:cacheprovider $PYTEST_ARGS"
step "done"
