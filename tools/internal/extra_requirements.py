"""Print the requirements of optional extras named in pyproject.toml, one a line.

The docs and release checks need only their tools, not the package (mkdocstrings reads
src/ without importing it), so they install these instead of ``.[docs]``: no compile of
the extension, and a virtualenv that already holds the package keeps its build.

    python tools/internal/extra_requirements.py docs release > requirements.txt
"""

import sys
from pathlib import Path

import tomllib  # Python 3.11+: these checks run on the CI host only


def main(extras: "list[str]") -> int:
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    optional = pyproject["project"]["optional-dependencies"]
    unknown = [name for name in extras if name not in optional]
    if unknown or not extras:
        print(f"unknown or no extras {unknown}; pyproject.toml has {sorted(optional)}", file=sys.stderr)
        return 2
    for name in extras:
        print("\n".join(optional[name]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
