"""Turn pytest-benchmark JSON into the Markdown tables of docs/performance.md.

    python -m pytest benchmarks --benchmark-json=run1.json     # as many runs as you like
    python benchmarks/report.py run1.json [run2.json ...] > bench.md

One table row per implementation within each benchmark group (a piece of work): its median
items/s, and its median time as a multiple of the floor's (the same SQL through the stdlib
``sqlite3`` with parameters built in advance and nothing decoded) measured in the same run.
Given several runs, each figure is the median over the runs, and each ratio the median of the
per-run ratios: on a shared machine a neighbour's burst slows one test of one run, and the
median across runs drops it. Figures that are not times get a table of their own.
"""

import json
import statistics
import sys
from collections import OrderedDict
from typing import Any, Dict, List, Optional, TextIO, Tuple

ORDER = ["cython", "python", "floor", "reference", "persist-queue"]
NAMES = {
    "cython": "compiled",
    "python": "pure Python",
    "floor": "sqlite3 floor",
    "reference": "reference pattern",
    "persist-queue": "persist-queue",
}


def _label(bench: Dict[str, Any]) -> str:
    if bench.get("extra_info", {}).get("label"):
        return str(bench["extra_info"]["label"])  # a floor that is not SQL (the MQTT one)
    backend = str(bench.get("params", {}).get("backend", "?"))
    variant = bench.get("extra_info", {}).get("variant")
    name = NAMES.get(backend, backend)
    return f"{name}, {variant}" if variant else name


def _rate(bench: Dict[str, Any]) -> float:
    return float(bench["extra_info"].get("items", 1)) / float(bench["stats"]["median"])


def fmt_rate(rate: float) -> str:
    """Items per second, short: 950, 12.3k, 1.25M."""
    if rate >= 1e6:
        return f"{rate / 1e6:.2f}M"
    if rate >= 1e3:
        return f"{rate / 1e3:.1f}k"
    return f"{rate:.0f}"


def _sort_key(bench: Dict[str, Any]) -> Any:
    backend = str(bench.get("params", {}).get("backend", ""))
    return (ORDER.index(backend) if backend in ORDER else len(ORDER), _label(bench))


def _key(bench: Dict[str, Any]) -> Tuple[str, str]:
    return (str(bench.get("group") or bench["name"]), _label(bench))


def timing_table(runs: List[List[Dict[str, Any]]]) -> str:
    """The main table: one line per implementation within each group, medians over runs."""
    groups: "OrderedDict[str, Dict[str, Dict[str, Any]]]" = OrderedDict()
    rates: Dict[Tuple[str, str], List[float]] = {}
    ratios: Dict[Tuple[str, str], List[float]] = {}
    for benchmarks in runs:
        # The reference of each row: the floor of its group, or where a group has none, the
        # member of the same backend marked as the baseline (the 1,000-item backlog, ...).
        floors = {str(b.get("group")): b for b in benchmarks if b.get("params", {}).get("backend") == "floor"}
        baselines = {
            (str(b.get("group")), str(b.get("params", {}).get("backend"))): b
            for b in benchmarks
            if b.get("extra_info", {}).get("baseline")
        }
        for bench in benchmarks:
            if "items" not in bench.get("extra_info", {}) or _is_figure(bench):
                continue
            key = _key(bench)
            groups.setdefault(key[0], {}).setdefault(key[1], bench)
            rates.setdefault(key, []).append(_rate(bench))
            base = floors.get(key[0]) or baselines.get((key[0], str(bench.get("params", {}).get("backend"))))
            if base is not None:
                ratios.setdefault(key, []).append(_rate(base) / _rate(bench))
    lines = [
        "| work | implementation | median items/s | time vs floor (or baseline*) |",
        "|---|---|---:|---:|",
    ]
    for group, members in groups.items():
        for label, _bench in sorted(members.items(), key=lambda item: _sort_key(item[1])):
            key = (group, label)
            ratio = f"{statistics.median(ratios[key]):.2f}x" if key in ratios else ""
            lines.append(f"| {group} | {label} | {fmt_rate(statistics.median(rates[key]))} | {ratio} |")
    return "\n".join(lines)


def _floor(members: List[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    for bench in members:
        if bench.get("params", {}).get("backend") == "floor":
            return bench
    return None


def _is_figure(bench: Dict[str, Any]) -> bool:
    info = bench.get("extra_info", {})
    figures = (
        "bytes_per_item",
        "peak_rss_growth_mb",
        "import_open_ms",
        "lag_p99_ms",
        "shaped_link",
        "destinations",
        "long_link",
    )
    return any(key in info for key in figures)


def figures_table(benchmarks: List[Dict[str, Any]]) -> str:
    """Figures that are not rates: bytes written per item, RSS growth, import time, loop lag,
    and the destinations scenarios' same-run ratios."""
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
        if "lag_p99_ms" in info:
            lag = f"{info['lag_p50_ms']} / {info['lag_p99_ms']} / {info['lag_max_ms']} ms"
            lines.append(f"| event-loop lag p50 / p99 / max, {info['variant']} | {backend} | {lag} |")
        if "shaped_link" in info:
            figures = info["shaped_link"]
            lines.append(f"| {_shaped_link_figure(figures)} | {backend} | {_shaped_link_value(figures)} |")
        if "long_link" in info:
            link = info["long_link"]
            trip = f"{link['round_trip'] * 1000:.0f} ms round trip"
            figure = f"drain {link['items']:,} items, {trip}, {link['in_flight']} in flight"
            lines.append(f"| {figure} | {backend} | {link['seconds']:.2f} s, {link['ratio']:.2f}x the limit |")
        if "destinations" in info:
            lines += _destination_lines(info["destinations"], backend)
    return "\n".join(lines)


def _destination_lines(figures: Dict[str, Any], backend: str) -> List[str]:
    """One line per same-run ratio of a destinations scenario, with the issue's target."""
    lines = []
    for label, ratio in figures["ratios"].items():
        target = figures["targets"].get(label)
        goal = f" (target <= {target}x)" if target is not None else ""
        lines.append(f"| {figures['scenario']}: {label} | {backend} | {ratio:.2f}x{goal} |")
    return lines


def _shaped_link_figure(figures: Dict[str, Any]) -> str:
    scenario = figures["scenario"]
    if scenario == "drain":
        return (
            f"drain {figures['items']:,} items at {figures['rate']} (max_batch_seconds {figures['max_batch_seconds']})"
        )
    if scenario == "rate":
        return f"max_items_per_second 50 at {figures['rate']}, over {figures['window']:.0f} s"
    return f"link cut and restored at {figures['rate']} (probe_interval {figures['probe_interval']} s)"


def _shaped_link_value(figures: Dict[str, Any]) -> str:
    scenario = figures["scenario"]
    if scenario == "drain":
        seconds, ratio, critical = figures["seconds"], figures["ratio"], figures["critical_delay"]
        return f"{seconds:.1f} s, {ratio:.3f}x the limit; critical item {critical:.2f} s"
    if scenario == "rate":
        return f"{figures['items_per_second']:.1f} items/s"
    delay, left = figures["resume_delay"], figures["backoff_left_at_restore"]
    return f"first batch {delay:.2f} s after restore ({left:.0f} s of backoff left)"


def report(runs: List[Dict[str, Any]], out: TextIO) -> None:
    """Write both tables and the machine they were measured on."""
    first = runs[0]
    machine = first.get("machine_info", {})
    commit = first.get("commit_info", {})
    out.write(
        f"{len(runs)} run(s) from {first.get('datetime', '?')[:16]} on {machine.get('cpu', {}).get('brand_raw', '?')}"
        f" ({machine.get('cpu', {}).get('count', '?')} cores), Python {machine.get('python_version', '?')},"
        f" commit {str(commit.get('id', '?'))[:10]}.\n\n"
    )
    out.write(timing_table([run["benchmarks"] for run in runs]) + "\n\n")
    out.write("*Groups without a floor: time relative to the row marked as baseline of the same backend.\n\n")
    out.write(figures_table(runs[-1]["benchmarks"]) + "\n")


def main(argv: List[str]) -> int:
    """Entry point: ``report.py RESULTS.json [MORE.json ...]``."""
    if len(argv) < 2:
        sys.stderr.write("usage: python benchmarks/report.py RESULTS.json [MORE.json ...]\n")
        return 2
    runs = []
    for name in argv[1:]:
        with open(name) as results:
            runs.append(json.load(results))
    report(runs, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
