"""The command line's tests run once, on the backend in use: each runs the command in a
process of its own, which picks its backend as any program does, and what they check
(arguments, output, exit codes) does not depend on the codec twin."""

import pytest

from pyv_edge_agent.cloud_sync import BACKEND


@pytest.fixture(autouse=True)
def backend() -> str:
    """In place of the both-backends fixture of ../../conftest.py: one run, on ``BACKEND``."""
    return BACKEND
