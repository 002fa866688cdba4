"""Links that come and go, measured on a real shaped link: 256 kbit/s on the
loopback of a network namespace made for the run (``tests/support/shapedlink.py``).

Figures, not rates: the drain time against the physical limit (bytes that crossed the
link, headers included, over its rate), the delay of a critical item enqueued mid-drain,
the items a second under ``max_items_per_second=50``, and the delay from restoring a cut
link to the first batch. Measuring runs the issue's sizes (20,000 items, a 30 s window);
a plain test run a small drain and a 3 s window. The targets are asserted in
``tests/flush/test_shaped_link.py``; here they are only reported (``extra_info`` and printed).
"""

import os
import sys
from typing import Any, Callable, Dict

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "support"))
import shapedlink  # noqa: E402 - lives with the tests, which assert the same scenarios

from pyv_edge_agent.cloud_sync import BACKEND  # noqa: E402

pytestmark = [
    pytest.mark.parametrize("backend", [BACKEND], indirect=True),
    pytest.mark.skipif(shapedlink.unshare_error() is not None, reason=str(shapedlink.unshare_error())),
]
Size = Callable[[int, int], int]


def _measure(benchmark: Any, scenario: str, workdir: str, **options: Any) -> Dict[str, Any]:
    benchmark.group = "shaped link"
    figures: Dict[str, Any] = benchmark.pedantic(
        lambda: shapedlink.run(scenario, workdir, timeout=900, **options), rounds=1, iterations=1
    )
    benchmark.extra_info["shaped_link"] = {"scenario": scenario, "rate": shapedlink.RATE, **options, **figures}
    print(f"\nshaped link {shapedlink.RATE}, {scenario}: {figures}")
    return figures


def test_drain_after_outage(benchmark: Any, tmp_path: Any, size: Size) -> None:
    figures = _measure(
        benchmark, "drain", str(tmp_path), items=size(20_000, 1000), max_batch_seconds=2.0, max_batch_items=5000
    )
    assert figures["delivered"] == figures["items"] + 1


def test_paced_items_per_second(benchmark: Any, tmp_path: Any, size: Size) -> None:
    figures = _measure(benchmark, "rate", str(tmp_path), items_per_second=50.0, window=float(size(30, 3)))
    assert figures["items_per_second"] > 0


def test_resume_after_link_cut(benchmark: Any, tmp_path: Any, size: Size) -> None:
    figures = _measure(benchmark, "cut", str(tmp_path), probe_interval=1.0, down_seconds=float(size(10, 1)))
    assert figures["delivered"] == 210
