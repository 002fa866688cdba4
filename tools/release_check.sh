#!/usr/bin/env bash
# What a release publishes, checked before it is tagged: `python -m build` makes the sdist
# and a wheel from it, `twine check --strict` renders their metadata as PyPI would, and the
# long description must be README.md, the version the one `__version__` literal, and the
# changelog must have an entry for that version below its "Unreleased" heading.
# Uses VENV (default .venv-docs; .ci/run passes .venv-ci) and adds the release extra's
# requirements to it. Python 3.11, as on the CI host.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv-docs}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$VENV/bin/python" tools/internal/extra_requirements.py release > "$out/requirements.txt"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$out/requirements.txt"
"$VENV/bin/python" -m build --outdir "$out/dist" . > "$out/build.log" 2>&1 || { cat "$out/build.log"; exit 1; }
"$VENV/bin/python" -m twine check --strict "$out"/dist/*
"$VENV/bin/python" - "$out/dist" <<'PY'
import re
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

dist = Path(sys.argv[1])
text = Path("src/pyv_edge_agent/cloud_sync/__init__.py").read_text()
version = re.search(r'^__version__ = "([^"]+)"$', text, re.M).group(1)
wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
problems = []
if len(wheels) != 1 or len(sdists) != 1:
    problems.append(f"expected one wheel and one sdist, got {[p.name for p in dist.iterdir()]}")
for path in wheels + sdists:
    if f"-{version}" not in path.name:
        problems.append(f"{path.name} does not carry __version__ {version}")
with zipfile.ZipFile(wheels[0]) as whl:
    name = next(n for n in whl.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = Parser().parsestr(whl.read(name).decode())
if metadata.get("Version") != version:
    problems.append(f"wheel metadata version {metadata.get('Version')} is not __version__ {version}")
if metadata.get("Description-Content-Type") != "text/markdown":
    problems.append(f"long description type {metadata.get('Description-Content-Type')}, not text/markdown")
if metadata.get_payload().strip() != Path("README.md").read_text().strip():
    problems.append("the long description is not README.md")
with tarfile.open(sdists[0]) as sdist:
    names = sdist.getnames()
for wanted in ("README.md", "CHANGELOG.md", "mkdocs.yml", "docs/index.md"):
    if not any(n.endswith("/" + wanted) for n in names):
        problems.append(f"the sdist lacks {wanted}")
headings = re.findall(r"^## (.+)$", Path("CHANGELOG.md").read_text(), re.M)
if not headings or headings[0] != "Unreleased":
    problems.append(f'CHANGELOG.md must open with "## Unreleased", found {headings[:1]}')
if not any(h.split()[0] == version for h in headings[1:]):
    problems.append(f"CHANGELOG.md has no entry for {version}")
readme_lines = len(Path("README.md").read_text().splitlines())
if readme_lines > 300:
    problems.append(f"README.md has {readme_lines} lines; the long description stays under 300")
for problem in problems:
    print("release check:", problem, file=sys.stderr)
if problems:
    sys.exit(1)
print(f"release check: ok, {version}: {', '.join(p.name for p in wheels + sdists)}; README {readme_lines} lines")
PY
