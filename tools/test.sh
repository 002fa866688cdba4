#!/usr/bin/env bash
# Set up a virtualenv, build and install the package with its compiled backend, and run
# the whole suite: every queue and codec test on both backends, and each benchmark once.
#   PYTHON=python3.9 bash tools/test.sh      # another interpreter
#   bash tools/test.sh -k flush              # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-test}
# The compiled backend is expected here: a failed build or import is an error, not a
# quiet fallback. Set it to 0 to test a machine without a compiler.
export PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=${PYV_EDGE_AGENT_REQUIRE_EXTENSIONS:-1}
bash tools/internal/system-deps.sh
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ".[test,crypto,serve]"
"$VENV/bin/python" -c 'import pyv_edge_agent.cloud_sync as c, sqlite3, sys; print("python", sys.version.split()[0], "sqlite", sqlite3.sqlite_version, "backend", c.BACKEND)'
exec "$VENV/bin/python" -m pytest tests benchmarks --benchmark-disable -q "$@"
