"""The benchmark gate: a short measured pass that fails when the queue gets slower.

    python benchmarks/gate.py                       # measure, print the table, exit 1 on a breach
    python benchmarks/gate.py --markdown FILE       # also append the table to FILE (CI job summary)
    python benchmarks/gate.py --json run1.json      # also keep the measured ratios
    python benchmarks/gate.py --propose run*.json   # thresholds from several kept runs

Each scenario (``SCENARIOS``, built from ``_cases``: the same work as the pytest-benchmark
scenarios) runs on the compiled backend, the pure one and its floor (the same SQL through
the stdlib ``sqlite3``), taking turns call by call so that a neighbour's burst lands on all
three alike. After one warm-up call each, ``ROUNDS`` calls each are timed. A ratio is the
median over the rounds of time(backend) / time(floor) within the round, and compiled/pure
the median of time(compiled) / time(pure): above 1 is slower. Each must stay at or under
its threshold in ``thresholds.json``. A scenario that breaches one is measured again once,
after the others, and the gate fails when a check is over its limit in both measurements:
one noisy neighbour does not fail a run, a real regression does.
"""

import argparse
import functools
import importlib.util
import json
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple

import _cases
from report import fmt_rate

HERE = os.path.dirname(os.path.abspath(__file__))
THRESHOLDS = os.path.join(HERE, "thresholds.json")
ROUNDS = 21
IMPLS = ("floor", "compiled", "pure")
BACKENDS = {"compiled": "cython", "pure": "python"}
CHECKS = ("compiled", "pure", "compiled/pure")
# --propose: a limit is the median over the recorded runs plus a margin of twice the widest
# upward deviation from it, and at least MIN_MARGIN of the median: on this shared machine a
# ratio to the C floor also climbs with the load (dequeue's by 5 % at a load average of 8,
# 15 % at 10), because the queue's Python suffers more from a neighbour. Compiled/pure: the same
# with a margin of at least MIN_MARGIN_COMPILED, never under 1 + MIN_MARGIN_COMPILED (the
# compiled backend may lose to the pure one by noise) and never over MAX_COMPILED (a quarter
# slower is a regression, however noisy the runs were). Rounded up to 0.01.
SPREAD_FACTOR = 2.0
MIN_MARGIN = 0.15
MIN_MARGIN_COMPILED = 0.05
MAX_COMPILED = 1.25


@functools.lru_cache(maxsize=None)
def _load_routing() -> Callable[[str], None]:
    # The backend switch of the test suite (the root conftest.py), loaded by path: inside
    # benchmarks/ the name ``conftest`` is this directory's own.
    spec = importlib.util.spec_from_file_location("_root_conftest", os.path.join(os.path.dirname(HERE), "conftest.py"))
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.route_backend  # type: ignore[no-any-return]


@dataclass
class Scenario:
    """One gated piece of work: ``build(directory, impl)`` makes its ``_cases.Case``."""

    name: str
    build: Callable[[str, str], _cases.Case]


def _read(directory: str, impl: str) -> _cases.Case:
    return _cases.read(_cases.fill(os.path.join(directory, "filled.db"), 10_000), impl, "dequeue", 1000)


def _file(directory: str) -> str:
    return os.path.join(directory, "q.db")


SCENARIOS = [
    Scenario("enqueue x1 (full)", lambda d, impl: _cases.enqueue_single(_file(d), impl, "full", 300)),
    Scenario("enqueue x1 (fast)", lambda d, impl: _cases.enqueue_single(_file(d), impl, "fast", 1000)),
    Scenario("enqueue_many 10,000", lambda d, impl: _cases.enqueue_many(_file(d), impl, 10_000)),
    Scenario("dequeue 1,000", _read),
    Scenario("ack 10,000 ids", lambda d, impl: _cases.ack_nack(_file(d), impl, "ack", 10_000)),
    Scenario("nack 10,000 ids", lambda d, impl: _cases.ack_nack(_file(d), impl, "nack", 10_000)),
    Scenario("flush 20,000", lambda d, impl: _cases.flush(_file(d), impl, 20_000)),
    Scenario("enqueue x1 from 8 threads (full)", lambda d, impl: _cases.threads(_file(d), impl, "full", 150)),
    Scenario("enqueue x1 from 8 threads (fast)", lambda d, impl: _cases.threads(_file(d), impl, "fast", 150)),
]


@dataclass
class Measurement:
    """Seconds per call of each implementation, round by round, for ``items`` items a call."""

    items: int
    times: Dict[str, List[float]]

    def rate(self, impl: str) -> float:
        """Items per second at the median time."""
        return self.items / statistics.median(self.times[impl])

    def ratio(self, impl: str, base: str = "floor") -> float:
        """Median over the rounds of time(impl) / time(base) within each round."""
        return statistics.median(t / b for t, b in zip(self.times[impl], self.times[base]))

    def checks(self) -> Dict[str, float]:
        """The gated figures: each backend's time vs the floor, and compiled vs pure."""
        return {
            "compiled": self.ratio("compiled"),
            "pure": self.ratio("pure"),
            "compiled/pure": self.ratio("compiled", "pure"),
        }


@dataclass
class Outcome:
    """A scenario's first measurement and, after a breach, its one re-measurement."""

    name: str
    first: Measurement
    limits: Dict[str, float]
    second: Optional[Measurement] = None
    breached: List[str] = field(default_factory=list)

    @property
    def final(self) -> Measurement:
        """The measurement the verdict stands on."""
        return self.second or self.first

    @property
    def failed_checks(self) -> List[str]:
        """The checks over their limits in both measurements."""
        if self.second is None:
            return []
        return [check for check in breaches(self.second, self.limits) if check in self.breached]

    @property
    def failed(self) -> bool:
        """True when a check was over its limit in the first measurement and the second."""
        return bool(self.failed_checks)


def breaches(measurement: Measurement, limits: Dict[str, float]) -> List[str]:
    """The checks whose ratio is above its threshold."""
    # Compared at the precision of the limits and of the table.
    return [check for check, value in measurement.checks().items() if round(value, 2) > limits[check]]


def measure(scenario: Scenario, rounds: int = ROUNDS) -> Measurement:
    """Time ``rounds`` calls of each implementation, taking turns, after a warm-up call each."""
    route = _load_routing()
    with tempfile.TemporaryDirectory(prefix="pyv-gate-") as tmp:
        cases: Dict[str, _cases.Case] = {}
        for impl in IMPLS:
            directory = os.path.join(tmp, impl)
            os.mkdir(directory)
            if impl in BACKENDS:
                route(BACKENDS[impl])
            cases[impl] = scenario.build(directory, "queue" if impl in BACKENDS else "floor")
        times: Dict[str, List[float]] = {impl: [] for impl in IMPLS}
        for round_ in range(rounds + 1):
            shift = round_ % len(IMPLS)
            for impl in IMPLS[shift:] + IMPLS[:shift]:
                if impl in BACKENDS:
                    route(BACKENDS[impl])
                elapsed = _cases.time_call(cases[impl])
                if round_:
                    times[impl].append(elapsed)
        items = cases["floor"].items
    return Measurement(items, times)


def run_gate(
    scenarios: Sequence[Scenario],
    thresholds: Dict[str, Dict[str, float]],
    measure_one: Optional[Callable[[Scenario], Measurement]] = None,
    progress: Optional[TextIO] = None,
) -> List[Outcome]:
    """Measure every scenario (with ``measure_one``, default ``measure``), then re-measure
    once each one that breached a threshold."""
    measure_one = measure_one or measure
    outcomes = []
    for scenario in scenarios:
        if progress:
            progress.write(f"gate: {scenario.name}\n")
        outcome = Outcome(scenario.name, measure_one(scenario), thresholds[scenario.name])
        outcome.breached = breaches(outcome.first, outcome.limits)
        outcomes.append(outcome)
    for scenario, outcome in zip(scenarios, outcomes):
        if outcome.breached:
            if progress:
                progress.write(f"gate: {scenario.name} breached {', '.join(outcome.breached)}: measuring again\n")
            outcome.second = measure_one(scenario)
    return outcomes


def _verdict(outcome: Outcome, check: str) -> str:
    if outcome.second is None:
        return "ok"
    first = outcome.first.checks()[check]
    value = outcome.second.checks()[check]
    if check in outcome.failed_checks:
        return f"**FAIL** ({first:.2f}, then {value:.2f})"
    if check in outcome.breached:
        return f"ok on re-measure (first {first:.2f})"
    if check in breaches(outcome.second, outcome.limits):
        return f"ok, over only once ({first:.2f}, then {value:.2f})"
    return "ok"


def table(outcomes: Sequence[Outcome]) -> str:
    """The Markdown table: one row per implementation and one for compiled/pure per scenario."""
    lines = [
        "| scenario | backend | items/s | time ratio | threshold | verdict |",
        "|---|---|---:|---:|---:|---|",
    ]
    for outcome in outcomes:
        final = outcome.final
        checks = final.checks()
        lines.append(f"| {outcome.name} | sqlite3 floor | {fmt_rate(final.rate('floor'))} | 1.00 | | |")
        for impl in ("compiled", "pure"):
            lines.append(
                f"| {outcome.name} | {impl} | {fmt_rate(final.rate(impl))} | {checks[impl]:.2f} vs floor"
                f" | {outcome.limits[impl]:.2f} | {_verdict(outcome, impl)} |"
            )
        lines.append(
            f"| {outcome.name} | compiled / pure | | {checks['compiled/pure']:.2f}"
            f" | {outcome.limits['compiled/pure']:.2f} | {_verdict(outcome, 'compiled/pure')} |"
        )
    return "\n".join(lines)


def summary(outcomes: Sequence[Outcome], seconds: float, limits_of: str) -> str:
    """The table under a one-line verdict; ``limits_of`` is the Python version whose limits applied."""
    failed = [outcome.name for outcome in outcomes if outcome.failed]
    verdict = f"FAILED: {', '.join(failed)}" if failed else "passed"
    running = python_version()
    limits = (
        f"Python {running}'s limits" if limits_of == running else f"Python {limits_of}'s limits (none for {running})"
    )
    return (
        f"### Benchmark gate {verdict}\n\n{len(outcomes)} scenarios, median of {ROUNDS} rounds each against the"
        f" floor measured in the same rounds, {seconds:.0f} s, {limits}. Time ratios: above 1 is slower.\n\n"
        f"{table(outcomes)}\n"
    )


def python_version() -> str:
    """This interpreter's ``major.minor``: the limits are kept per Python version, whose
    interpreter speed moves the Python-level share of each scenario."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def _nearest(versions: Sequence[str], wanted: str) -> str:
    def distance(version: str) -> Tuple[int, int]:
        minor = int(version.split(".")[1])
        return (abs(minor - int(wanted.split(".")[1])), minor)

    return min(versions, key=distance)


def load_thresholds(path: str, scenarios: Sequence[Scenario], version: str) -> Tuple[str, Dict[str, Dict[str, float]]]:
    """Read the limits recorded for Python ``version`` (or the nearest version recorded) from
    ``thresholds.json``; every scenario needs every check, and no other name is allowed.
    Returns the version used and its limits."""
    with open(path) as source:
        by_version: Dict[str, Dict[str, Dict[str, float]]] = json.load(source)["thresholds"]
    if not by_version:
        raise ValueError(f"{path}: no thresholds")
    used = version if version in by_version else _nearest(sorted(by_version), version)
    limits = by_version[used]
    names = {scenario.name for scenario in SCENARIOS}
    unknown = sorted(set(limits) - names)
    if unknown:
        raise ValueError(f"{path}: Python {used} has thresholds for scenarios the gate does not run: {unknown}")
    for scenario in scenarios:
        missing = [check for check in CHECKS if check not in limits.get(scenario.name, {})]
        if missing:
            raise ValueError(f"{path}: Python {used}: scenario {scenario.name!r} has no threshold for {missing}")
    return used, limits


def record(outcomes: Sequence[Outcome]) -> Dict[str, Any]:
    """The first measurement of each scenario (a re-measurement would bias the spread low)."""
    return {
        "python": python_version(),
        "rounds": ROUNDS,
        "scenarios": {
            o.name: {
                "items": o.first.items,
                "rates": {impl: round(o.first.rate(impl)) for impl in IMPLS},
                "ratios": {check: round(value, 4) for check, value in o.first.checks().items()},
            }
            for o in outcomes
        },
    }


def propose(runs: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Dict[str, float]]]:
    """Thresholds from recorded runs (``--json``), per Python version: the median over that
    version's runs plus a margin from their spread."""
    proposal: Dict[str, Dict[str, Dict[str, float]]] = {}
    for version in sorted({run["python"] for run in runs}):
        same = [run for run in runs if run["python"] == version]
        limits = proposal[version] = {}
        for name in same[0]["scenarios"]:
            limits[name] = {}
            for check in CHECKS:
                values = [run["scenarios"][name]["ratios"][check] for run in same]
                middle = statistics.median(values)
                spread = SPREAD_FACTOR * (max(values) - middle)
                if check == "compiled/pure":
                    limit = middle + max(spread, MIN_MARGIN_COMPILED)
                    limit = min(MAX_COMPILED, max(1.0 + MIN_MARGIN_COMPILED, limit))
                else:
                    limit = middle + max(spread, MIN_MARGIN * middle)
                limits[name][check] = math.ceil(round(limit * 100, 6)) / 100
    return proposal


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit status (0 passed, 1 a threshold breached twice, 2 bad use)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--thresholds", default=THRESHOLDS, help="the thresholds file (default: %(default)s)")
    parser.add_argument("--only", default="", help="run only the scenarios whose name contains this text")
    parser.add_argument("--markdown", help="append the table to this file (for $GITHUB_STEP_SUMMARY)")
    parser.add_argument("--json", help="write the measured ratios of this run to this file")
    parser.add_argument("--propose", nargs="+", metavar="RUN.json", help="print thresholds from recorded runs")
    args = parser.parse_args(argv)
    if args.propose:
        runs = []
        for name in args.propose:
            with open(name) as source:
                runs.append(json.load(source))
        print(json.dumps(propose(runs), indent=2))
        return 0
    scenarios = [scenario for scenario in SCENARIOS if args.only in scenario.name]
    if not scenarios:
        parser.error(f"no scenario name contains {args.only!r}")
    try:
        version, thresholds = load_thresholds(args.thresholds, scenarios, python_version())
    except (OSError, ValueError, KeyError) as exc:
        sys.stderr.write(f"gate: cannot use the thresholds: {exc}\n")
        return 2
    started = time.perf_counter()
    outcomes = run_gate(scenarios, thresholds, progress=sys.stderr)
    text = summary(outcomes, time.perf_counter() - started, version)
    sys.stdout.write(text)
    if args.markdown:
        with open(args.markdown, "a") as out:
            out.write(text)
    if args.json:
        with open(args.json, "w") as out:
            json.dump(record(outcomes), out, indent=2)
    return 1 if any(outcome.failed for outcome in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
