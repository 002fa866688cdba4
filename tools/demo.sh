#!/usr/bin/env bash
# Set up a virtualenv, install the package, and run the store-and-forward demo against the
# built-in loopback ingest endpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
"$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check ".[cli]"
exec "$VENV/bin/cloud-sync" demo "$@"
