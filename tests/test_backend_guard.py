"""The compiled backend loads by default, the switch forces the pure one, and CI notices a
missing build."""

import os
import subprocess
import sys

import pytest

from pyv_edge_agent.cloud_sync import BACKEND
from pyv_edge_agent.cloud_sync._env import REQUIRE_EXTENSIONS_VAR, no_extensions, require_extensions

# The backend does not matter here: one run, on the backend in use (see ../conftest.py).
pytestmark = pytest.mark.parametrize("backend", [BACKEND], indirect=True)

PROBE = "import pyv_edge_agent.cloud_sync as c; print(c.BACKEND)"


def _backend_in_subprocess(**env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYV_EDGE_AGENT_")}
    environ.update(env)
    done = subprocess.run([sys.executable, "-c", PROBE], env=environ, capture_output=True, text=True, check=True)
    return done.stdout.strip()


@pytest.mark.skipif(no_extensions(), reason="the compiled backend is switched off")
def test_compiled_backend_is_the_default() -> None:
    assert _backend_in_subprocess() == "cython"


def test_switch_forces_pure_backend() -> None:
    assert _backend_in_subprocess(PYV_EDGE_AGENT_NO_EXTENSIONS="1") == "python"


def test_required_backend_really_loaded() -> None:
    import pyv_edge_agent.cloud_sync as package

    if require_extensions():
        assert package.BACKEND == "cython", f"{REQUIRE_EXTENSIONS_VAR}=1 but the compiled backend did not load"
    else:
        assert package.BACKEND in ("cython", "python")


def test_env_flags_parse_the_same_everywhere() -> None:
    assert no_extensions({"PYV_EDGE_AGENT_NO_EXTENSIONS": "1"})
    assert no_extensions({"PYV_EDGE_AGENT_NO_EXTENSIONS": "true"})
    assert not no_extensions({"PYV_EDGE_AGENT_NO_EXTENSIONS": "0"})
    assert not no_extensions({})
    assert require_extensions({"PYV_EDGE_AGENT_REQUIRE_EXTENSIONS": "1"})
    # Switching extensions off wins over requiring them.
    assert not require_extensions({"PYV_EDGE_AGENT_REQUIRE_EXTENSIONS": "1", "PYV_EDGE_AGENT_NO_EXTENSIONS": "1"})
