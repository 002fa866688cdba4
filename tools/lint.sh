#!/usr/bin/env bash
# Static checks: ruff (lint and format), mypy strict on src/, cython-lint on the .pyx, and the
# import layers of the package (import-linter, contracts in pyproject.toml) read from src/.
# Uses the test virtualenv (VENV, default .venv-test) and adds the lint extra to it.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-test}
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ".[lint,cli,crypto,mqtt,serve]"
export PATH="$(cd "$VENV/bin" && pwd):$PATH"
ruff check src tests benchmarks tools conftest.py setup.py
ruff format --check src tests benchmarks tools conftest.py setup.py
mypy src
cython-lint --max-line-length 120 src/pyv_edge_agent/cloud_sync/_codec/*.pyx
PYTHONPATH=src lint-imports --no-cache
echo "lint: ok"
