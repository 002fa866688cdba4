"""Figures gathered by the reliability tests and printed at the end of the run.

Tests add to ``FIGURES``; the ``pytest_terminal_summary`` hook in ``conftest.py`` writes
them to the output of the run (and so to ``.ci/run``'s), so the claim "nothing is lost"
comes with the numbers behind it.
"""

import os
from typing import Dict, List

FIGURES: Dict[str, int] = {
    "kills survived": 0,
    "items checked": 0,
    "in flight at a kill, sent again": 0,
    "lost": 0,
    "duplicates (re-sent after a kill, at-least-once)": 0,
    "duplicates without a kill": 0,
    "bad inputs tried": 0,
}
LOAD_OPS_PER_SECOND: List[float] = []

# Seconds of the multi-process contention run per backend; the full minute is
# ``PYV_RELIABILITY_SECONDS=60 bash tools/test.sh -k contention``.
CONTENTION_SECONDS = float(os.environ.get("PYV_RELIABILITY_SECONDS", "12"))
# SIGKILL rounds per backend (each kills two workers).
KILL_ROUNDS = int(os.environ.get("PYV_RELIABILITY_KILL_ROUNDS", "25"))


def add(name: str, value: int) -> None:
    """Add ``value`` to the figure ``name``."""
    FIGURES[name] = FIGURES.get(name, 0) + value


def summary_lines() -> List[str]:
    """The figures as lines of text; empty when no reliability test ran."""
    if not any(FIGURES.values()) and not LOAD_OPS_PER_SECOND:
        return []
    lines = [f"{name}: {value}" for name, value in FIGURES.items() if not name.startswith("killed during")]
    places = [
        f"{name[len('killed during ') :]} {value}"
        for name, value in FIGURES.items()
        if name.startswith("killed during")
    ]
    if places:
        lines.insert(1, "  where the kills landed: " + ", ".join(places))
    if LOAD_OPS_PER_SECOND:
        rates = ", ".join(f"{rate:.0f}" for rate in LOAD_OPS_PER_SECOND)
        lines.append(f"load held under contention (ops/s, per run): {rates}")
    return lines
