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
    "deliveries checked, two destinations in one file": 0,
    "  sent to a destination they were not addressed to (must be 0)": 0,
    "bad inputs tried": 0,
}
LOAD_OPS_PER_SECOND: List[float] = []

# Seconds of the multi-process contention run per backend; the full minute is
# ``PYV_RELIABILITY_SECONDS=60 bash tools/test.sh -k contention``.
CONTENTION_SECONDS = float(os.environ.get("PYV_RELIABILITY_SECONDS", "12"))
# SIGKILL rounds per backend (each kills two workers).
KILL_ROUNDS = int(os.environ.get("PYV_RELIABILITY_KILL_ROUNDS", "25"))
# Rounds of the same with two destinations in the file (each kills two workers too).
KILL_ROUNDS_TWO_DESTINATIONS = max(4, KILL_ROUNDS // 2)


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


# Power cuts on the crash file system (tests/support/crashfs.py, tests/faults/test_power_cuts.py).
POWER_CUTS: Dict[str, int] = {
    "cuts": 0,
    "  of them with two destinations in the file": 0,
    "items checked": 0,
    "lost in full mode (must be 0)": 0,
    "acked items back in full mode (must be 0)": 0,
    "integrity failures (must be 0)": 0,
    "lost in fast mode (last transactions)": 0,
    "unsynced 4 KiB pieces at the cuts": 0,
    "  of them written anyway (torn, reordered)": 0,
    "full-mode cuts amid a commit (unsynced WAL or database writes)": 0,
    "route problems in full mode (must be 0)": 0,
    "self-test, fsync ignored: cuts": 0,
    "self-test, fsync ignored: lost (must be > 0)": 0,
}
# Bytes synced per item, "pattern, durability" -> bytes (whole 4 KiB pages at each fsync).
SYNCED_PER_ITEM: Dict[str, float] = {}
# Cuts per backend: full mode, and half as many in fast mode. A longer run:
# ``PYV_POWERCUT_CUTS=1000 bash tools/test.sh -k power_cut``.
POWER_CUTS_FULL = int(os.environ.get("PYV_POWERCUT_CUTS", "150"))
# Cuts per backend of the load with two destinations (full mode).
POWER_CUTS_TWO_DESTINATIONS = max(12, POWER_CUTS_FULL // 5)
# The longest the load runs before a cut, in seconds (each cut picks a time up to this).
# Emulated runs (qemu-user, 8-10x slower) raise it so that the load still does real work.
POWER_CUT_WINDOW = float(os.environ.get("PYV_POWERCUT_WINDOW", "0.15"))


def power_cut_lines() -> List[str]:
    """The power-cut figures as lines of text; empty when no power-cut test ran."""
    lines = [f"{name}: {value}" for name, value in POWER_CUTS.items()] if POWER_CUTS["cuts"] else []
    if SYNCED_PER_ITEM:
        lines.append("bytes synced per item: " + ", ".join(f"{k} {v:,.0f}" for k, v in SYNCED_PER_ITEM.items()))
    return lines
