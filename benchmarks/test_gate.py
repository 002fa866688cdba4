"""The gate's judgement on synthetic timings: ratios, thresholds, the one re-measurement, the
exit status, and the committed thresholds file matching the gated scenarios."""

import json
import os
from typing import Any, Dict, Iterator, List

import gate
import pytest

# Nothing here runs the codec: once, not once per backend.
pytestmark = pytest.mark.parametrize("backend", ["none"])

LIMITS = {"compiled": 1.3, "pure": 1.4, "compiled/pure": 1.1}


def _timings(compiled: float, pure: float, floor: float = 1.0, rounds: int = 5) -> gate.Measurement:
    """Every round alike except a neighbour's burst on the floor in round 0 (dropped by the median)."""
    times = {"floor": [floor] * rounds, "compiled": [compiled] * rounds, "pure": [pure] * rounds}
    times["floor"][0] = floor * 10
    return gate.Measurement(items=1000, times=times)


def _scenario(name: str = "enqueue x1 (full)") -> gate.Scenario:
    return gate.Scenario(name, lambda directory, impl: pytest.fail("synthetic: nothing is built"))


def _replay(*measurements: gate.Measurement) -> Any:
    sequence: Iterator[gate.Measurement] = iter(measurements)
    calls: List[str] = []

    def measure_one(scenario: gate.Scenario) -> gate.Measurement:
        calls.append(scenario.name)
        return next(sequence)

    measure_one.calls = calls  # type: ignore[attr-defined]
    return measure_one


def test_ratios_are_medians_of_same_round_ratios(backend: str) -> None:
    measured = gate.Measurement(
        items=100,
        times={"floor": [1.0, 2.0, 1.0], "compiled": [1.1, 2.2, 5.0], "pure": [1.0, 2.0, 2.0]},
    )
    checks = measured.checks()
    assert checks["compiled"] == pytest.approx(1.1)  # 1.1, 1.1, 5.0
    assert checks["pure"] == pytest.approx(1.0)  # 1.0, 1.0, 2.0
    assert checks["compiled/pure"] == pytest.approx(1.1)  # 1.1, 1.1, 2.5
    assert measured.rate("floor") == pytest.approx(100.0)


def test_within_thresholds_passes_without_remeasuring(backend: str) -> None:
    measure_one = _replay(_timings(compiled=1.2, pure=1.3))
    outcomes = gate.run_gate([_scenario()], {"enqueue x1 (full)": LIMITS}, measure_one)
    assert measure_one.calls == ["enqueue x1 (full)"]
    assert not outcomes[0].failed and outcomes[0].breached == []
    assert "Benchmark gate passed" in gate.summary(outcomes, 1.0, gate.python_version())


def test_a_breach_that_does_not_repeat_passes(backend: str) -> None:
    measure_one = _replay(_timings(compiled=1.9, pure=1.3), _timings(compiled=1.2, pure=1.3))
    outcomes = gate.run_gate([_scenario()], {"enqueue x1 (full)": LIMITS}, measure_one)
    assert measure_one.calls == ["enqueue x1 (full)"] * 2
    assert outcomes[0].breached == ["compiled", "compiled/pure"] and not outcomes[0].failed
    text = gate.table(outcomes)
    assert "ok on re-measure (first 1.90)" in text and "FAIL" not in text


@pytest.mark.parametrize(
    "slow, check",
    [
        ({"compiled": 1.6, "pure": 1.6}, "compiled"),  # both 40 % slower: time vs floor
        ({"compiled": 1.25, "pure": 1.0}, "compiled/pure"),  # compiled slower than pure
    ],
)
def test_a_repeated_breach_fails(backend: str, slow: Dict[str, float], check: str) -> None:
    regressed = _timings(**slow)
    other = gate.Scenario("dequeue 1,000", _scenario().build)
    measure_one = _replay(regressed, _timings(compiled=1.0, pure=1.1), regressed)
    thresholds = {"enqueue x1 (full)": LIMITS, "dequeue 1,000": LIMITS}
    outcomes = gate.run_gate([_scenario(), other], thresholds, measure_one)
    # Re-measured once, after the other scenarios.
    assert measure_one.calls == ["enqueue x1 (full)", "dequeue 1,000", "enqueue x1 (full)"]
    assert outcomes[0].failed and not outcomes[1].failed and check in outcomes[0].breached
    assert "Benchmark gate FAILED: enqueue x1 (full)" in gate.summary(outcomes, 1.0, gate.python_version())
    assert "**FAIL**" in gate.table(outcomes)


def test_a_check_over_its_limit_in_only_one_of_the_two_measurements_passes(backend: str) -> None:
    # First the pure backend is over its limit, then the compiled one: neither is over twice.
    measure_one = _replay(_timings(compiled=1.2, pure=1.5), _timings(compiled=1.35, pure=1.3))
    outcomes = gate.run_gate([_scenario()], {"enqueue x1 (full)": LIMITS}, measure_one)
    assert not outcomes[0].failed and outcomes[0].breached == ["pure"]
    rows = {line.split(" | ")[1]: line for line in gate.table(outcomes).splitlines()[2:]}
    assert "ok, over only once (1.20, then 1.35)" in rows["compiled"]
    assert "ok on re-measure (first 1.50)" in rows["pure"]
    assert rows["compiled / pure"].endswith("| ok |")


def test_main_exits_1_on_a_repeated_breach(backend: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setattr(gate, "measure", lambda scenario: _timings(compiled=3.0, pure=1.0))
    summary_file = tmp_path / "summary.md"
    assert gate.main(["--only", "dequeue", "--markdown", str(summary_file)]) == 1
    assert "| dequeue 1,000 | compiled | " in summary_file.read_text()


def test_main_refuses_a_thresholds_file_missing_a_scenario(backend: str, tmp_path: Any) -> None:
    broken = tmp_path / "thresholds.json"
    limits = {"dequeue 1,000": {"compiled": 2.0, "pure": 2.0}}
    broken.write_text(json.dumps({"thresholds": {gate.python_version(): limits}}))
    assert gate.main(["--thresholds", str(broken), "--only", "dequeue"]) == 2


def test_limits_of_the_nearest_python_version_apply_when_this_one_has_none(backend: str, tmp_path: Any) -> None:
    path = tmp_path / "thresholds.json"
    limits = {scenario.name: LIMITS for scenario in gate.SCENARIOS}
    path.write_text(json.dumps({"thresholds": {"3.9": limits, "3.11": dict(limits), "3.13": limits}}))
    assert gate.load_thresholds(str(path), gate.SCENARIOS, "3.11")[0] == "3.11"
    assert gate.load_thresholds(str(path), gate.SCENARIOS, "3.12")[0] == "3.11"
    assert gate.load_thresholds(str(path), gate.SCENARIOS, "3.14")[0] == "3.13"
    assert gate.load_thresholds(str(path), gate.SCENARIOS, "3.8")[0] == "3.9"


def test_committed_thresholds_cover_exactly_the_gated_scenarios(backend: str) -> None:
    with open(gate.THRESHOLDS) as source:
        versions = json.load(source)["thresholds"]
    # The interpreters .ci/run and the bench workflow run the gate on.
    assert {"3.9", "3.11", "3.13"} <= set(versions)
    for version in versions:
        used, limits = gate.load_thresholds(gate.THRESHOLDS, gate.SCENARIOS, version)
        assert used == version and set(limits) == {scenario.name for scenario in gate.SCENARIOS}
        for name, checks in limits.items():
            # Compiled never slower than pure beyond noise: a limit near 1, never a loophole.
            assert 1.0 <= checks["compiled/pure"] <= 1.25, (version, name)
            assert checks["compiled"] > 0 and checks["pure"] > 0, (version, name)


def test_propose_adds_a_margin_from_the_spread(backend: str, tmp_path: Any) -> None:
    runs = []
    for compiled, faster, noisy in ((1.10, 0.80, 1.0), (1.20, 0.81, 1.1), (1.30, 0.92, 1.4), (1.16, 0.78, 1.0)):
        ratios = {"compiled": compiled, "pure": 2.0, "compiled/pure": 1.0}
        scenarios = {
            "s": {"ratios": ratios},
            "t": {"ratios": dict(ratios, **{"compiled/pure": faster})},
            "u": {"ratios": dict(ratios, **{"compiled/pure": noisy})},
        }
        runs.append({"python": "3.11", "scenarios": scenarios})
    # Another interpreter's runs make limits of their own.
    runs.append({"python": "3.9", "scenarios": {"s": {"ratios": {"compiled": 9.0, "pure": 9.0, "compiled/pure": 1.0}}}})
    proposal = gate.propose(runs)
    assert set(proposal) == {"3.9", "3.11"} and proposal["3.9"]["s"]["compiled"] == pytest.approx(10.35)
    limits = proposal["3.11"]
    assert limits["s"]["compiled"] == pytest.approx(1.18 + 2 * 0.12)  # median + twice the upward spread
    assert limits["s"]["pure"] == pytest.approx(2.30)  # no spread: 15 % of the median
    assert limits["s"]["compiled/pure"] == pytest.approx(1.05)  # noise allowance above parity
    assert limits["t"]["compiled/pure"] == pytest.approx(1.05)  # 0.805 + 2 x 0.115, but never below 1.05
    assert limits["u"]["compiled/pure"] == pytest.approx(1.25)  # 1.05 + 2 x 0.35, but never above 1.25
    names = []
    for index, run in enumerate(runs):
        path = os.path.join(os.fspath(tmp_path), f"run{index}.json")
        with open(path, "w") as out:
            json.dump(run, out)
        names.append(path)
    assert gate.main(["--propose", *names]) == 0
