"""Running the ``cloud-sync`` command as a user would: a subprocess on the backend under test
(the tests of tests/cli/)."""

import os
import subprocess
import sys
from typing import Dict


def cli_env(backend: str, **extra: str) -> Dict[str, str]:
    """The environment of a ``cloud-sync`` subprocess: none of the caller's package or
    command variables, the backend under test forced, and ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYV_EDGE_AGENT_", "CLOUD_SYNC_"))}
    if backend == "python":
        env["PYV_EDGE_AGENT_NO_EXTENSIONS"] = "1"
    else:
        env["PYV_EDGE_AGENT_REQUIRE_EXTENSIONS"] = "1"
    env.update(extra)
    return env


def run(backend: str, *args: str, timeout: float = 120, **env: str) -> "subprocess.CompletedProcess[str]":
    """Run ``cloud-sync --plain ARGS`` and return what it did (exit code, stdout, stderr)."""
    return subprocess.run(
        [sys.executable, "-m", "pyv_edge_agent.cloud_sync", "--plain", *args],
        env=cli_env(backend, **env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
