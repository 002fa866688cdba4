"""Sizes for the benchmarks: full when measuring, scaled down when a plain test run executes
each scenario once (``--benchmark-disable``), so that the suite stays quick there."""

import os
from typing import Callable

import pytest


@pytest.fixture(scope="session")
def measuring(pytestconfig: pytest.Config) -> bool:
    """True when pytest-benchmark measures (not ``--benchmark-disable`` or ``--benchmark-skip``)."""
    return not (pytestconfig.getoption("benchmark_disable") or pytestconfig.getoption("benchmark_skip"))


@pytest.fixture(scope="session")
def size(measuring: bool) -> Callable[[int, int], int]:
    """``size(full, small)``: the full size when measuring, the small one in a plain test run."""
    return lambda full, small: full if measuring else small


@pytest.fixture(autouse=True)
def settled_disk(measuring: bool) -> None:
    """When measuring, write out what earlier scenarios left dirty in the page cache first,
    so that the kernel's writeback of their files does not stall this one's fsyncs."""
    if measuring and hasattr(os, "sync"):
        os.sync()
