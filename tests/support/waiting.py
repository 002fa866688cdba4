"""Waiting for an outcome in tests of background loops: a guard against hanging, never a
measure of speed (the machine is shared and noisy)."""

import time
from typing import Callable

PATIENCE = 30.0


def wait_for(condition: Callable[[], bool], timeout: float = PATIENCE) -> bool:
    """Poll ``condition`` every 10 ms until it holds or ``timeout`` seconds pass; return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()
