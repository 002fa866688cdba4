#!/usr/bin/env bash
# Build the documentation site from docs/ with MkDocs, strict: a broken link or anchor, a
# page missing from the nav, or any other warning fails the build. The API reference is
# generated from the docstrings in src/ (read, not imported: the package is not installed).
#   bash tools/docs.sh                    # into site/ (gitignored)
#   SITE_DIR=/tmp/site bash tools/docs.sh # elsewhere
# Uses VENV (default .venv-docs; .ci/run passes .venv-ci) and adds the docs extra's
# requirements to it. Python 3.11, as on the CI host.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-docs}
SITE_DIR=${SITE_DIR:-site}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
requirements=$(mktemp)
trap 'rm -f "$requirements"' EXIT
"$VENV/bin/python" tools/internal/extra_requirements.py docs > "$requirements"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements"
# Material prints a banner about its successor on every build unless told not to.
NO_MKDOCS_2_WARNING=1 "$VENV/bin/python" -m mkdocs build --strict --site-dir "$SITE_DIR" "$@"
echo "docs: built into $SITE_DIR"
