"""Turn pytest-benchmark JSON into the README's Markdown tables.

    python -m pytest benchmarks --benchmark-json=bench.json
    python benchmarks/report.py bench.json > bench.md

One table row per benchmark group (a piece of work): the median items/s of each
implementation, and each implementation's median time as a multiple of the floor's (the
same SQL through the stdlib ``sqlite3`` with parameters built in advance and nothing
decoded) measured in the same run. Groups without a floor are compared with the compiled
backend instead. Figures that are not times (bytes written, memory) get a table of their own.
"""

import json
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, TextIO

ORDER = ["cython", "python", "floor", "reference", "persist-queue"]
NAMES = {
    "cython": "compiled",
    "python": "pure Python",
    "floor": "sqlite3 floor",
    "reference": "reference pattern",
    "persist-queue": "persist-queue",
}


def _label(bench: Dict[str, Any]) -> str:
    backend = str(bench.get("params", {}).get("backend", "?"))
    variant = bench.get("extra_info", {}).get("variant")
    name = NAMES.get(backend, backend)
    return f"{name}, {variant}" if variant else name


def _rate(bench: Dict[str, Any]) -> float:
    return float(bench["extra_info"].get("items", 1)) / float(bench["stats"]["median"])


def _fmt_rate(rate: float) -> str:
    if rate >= 1e6:
        return f"{rate / 1e6:.2f}M"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f}k"
    return f"{rate:.0f}"


def _sort_key(bench: Dict[str, Any]) -> Any:
    backend = str(bench.get("params", {}).get("backend", ""))
    return (ORDER.index(backend) if backend in ORDER else len(ORDER), _label(bench))


def timing_table(benchmarks: List[Dict[str, Any]]) -> str:
    """The main table: one line per implementation within each group."""
    groups: "OrderedDict[str, List[Dict[str, Any]]]" = OrderedDict()
    for bench in benchmarks:
        if "items" in bench.get("extra_info", {}) and not _is_figure(bench):
            groups.setdefault(bench.get("group") or bench["name"], []).append(bench)
    lines = [
        "| work | implementation | median items/s | time vs floor |",
        "|---|---|---:|---:|",
    ]
    for group, members in groups.items():
        members.sort(key=_sort_key)
        floor = _floor(members)
        for bench in members:
            ratio = ""
            if floor is not None:
                ratio = f"{float(bench['stats']['median']) / float(floor['stats']['median']):.2f}x"
            lines.append(f"| {group} | {_label(bench)} | {_fmt_rate(_rate(bench))} | {ratio} |")
    return "\n".join(lines)


def _floor(members: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    for bench in members:
        if bench.get("params", {}).get("backend") == "floor":
            return bench
    return None


def _is_figure(bench: Dict[str, Any]) -> bool:
    info = bench.get("extra_info", {})
    return any(key in info for key in ("bytes_per_item", "peak_rss_growth_mb", "import_open_ms"))


def figures_table(benchmarks: List[Dict[str, Any]]) -> str:
    """Figures that are not rates: bytes written per item, RSS growth, import time."""
    lines = ["| figure | implementation | value |", "|---|---|---:|"]
    for bench in sorted((b for b in benchmarks if _is_figure(b)), key=_sort_key):
        info = bench["extra_info"]
        backend = NAMES.get(str(bench.get("params", {}).get("backend")), "?")
        if "bytes_per_item" in info:
            lines.append(f"| bytes written per item ({info['variant']}) | {backend} | {info['bytes_per_item']:,} |")
        if "peak_rss_growth_mb" in info:
            lines.append(f"| peak RSS growth, {info['variant']} | {backend} | {info['peak_rss_growth_mb']} MB |")
        if "import_open_ms" in info:
            lines.append(f"| import + open a queue | {backend} | {info['import_open_ms']} ms |")
    return "\n".join(lines)


def report(data: Dict[str, Any], out: TextIO) -> None:
    """Write both tables and the machine they were measured on."""
    machine = data.get("machine_info", {})
    commit = data.get("commit_info", {})
    out.write(
        f"Measured {data.get('datetime', '?')[:16]} on {machine.get('cpu', {}).get('brand_raw', '?')}, "
        f"Python {machine.get('python_version', '?')}, commit {str(commit.get('id', '?'))[:10]}.\n\n"
    )
    out.write(timing_table(data["benchmarks"]) + "\n\n")
    out.write(figures_table(data["benchmarks"]) + "\n")


def main(argv: List[str]) -> int:
    """Entry point: ``report.py RESULTS.json``."""
    if len(argv) != 2:
        sys.stderr.write("usage: python benchmarks/report.py RESULTS.json\n")
        return 2
    with open(argv[1]) as results:
        report(json.load(results), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
