"""The compiled backend loads by default, the switch forces the pure one, and CI notices a
missing build."""

import os
import subprocess
import sys
from typing import Dict

import pytest

from pyv_edge_agent.cloud_sync import BACKEND
from pyv_edge_agent.cloud_sync._codec._env import REQUIRE_EXTENSIONS_VAR, no_extensions, require_extensions

# The backend does not matter here: one run, on the backend in use (see ../conftest.py).
pytestmark = pytest.mark.parametrize("backend", [BACKEND], indirect=True)

PROBE = "import pyv_edge_agent.cloud_sync as c; print(c.BACKEND)"


def _clean_env(**env: str) -> Dict[str, str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("PYV_EDGE_AGENT_")}
    environ.update(env)
    return environ


def _backend_in_subprocess(**env: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], env=_clean_env(**env), capture_output=True, text=True, check=True
    )
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
    # Requiring the compiled backend while switching it off is a mistake, not a preference.
    both = {"PYV_EDGE_AGENT_REQUIRE_EXTENSIONS": "1", "PYV_EDGE_AGENT_NO_EXTENSIONS": "true"}
    for parse in (no_extensions, require_extensions):
        with pytest.raises(ValueError, match="PYV_EDGE_AGENT_NO_EXTENSIONS=1 .* PYV_EDGE_AGENT_REQUIRE_EXTENSIONS=1"):
            parse(both)


# Makes the compiled twin unimportable in a subprocess, as in an install whose build failed
# or had no compiler: a sitecustomize that Python runs at start-up.
NO_COMPILED_TWIN = """
import sys

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name == "pyv_edge_agent.cloud_sync._codec._c":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def _without_compiled_twin(tmp_path: "os.PathLike[str]", code: str, **env: str) -> "subprocess.CompletedProcess[str]":
    shim = os.path.join(os.fspath(tmp_path), "no-compiled-twin")
    os.makedirs(shim, exist_ok=True)
    with open(os.path.join(shim, "sitecustomize.py"), "w") as handle:
        handle.write(NO_COMPILED_TWIN)
    command = [sys.executable, "-c", code]
    return subprocess.run(command, env=_clean_env(PYTHONPATH=shim, **env), capture_output=True, text=True)


def test_a_fallback_is_a_warning_and_shows_in_version(tmp_path: "os.PathLike[str]") -> None:
    version = "from pyv_edge_agent.cloud_sync.cli import main; main(['--version'])"
    done = _without_compiled_twin(tmp_path, PROBE)
    assert done.returncode == 0 and done.stdout.strip() == "python"
    assert "RuntimeWarning" in done.stderr and "pure-Python backend" in done.stderr, done.stderr
    assert "PYV_EDGE_AGENT_NO_EXTENSIONS=1" in done.stderr  # how to choose it without the warning
    shown = _without_compiled_twin(tmp_path, version)
    assert "python backend: the compiled backend is not installed" in shown.stdout, shown.stdout + shown.stderr
    # Chosen on purpose: quiet, and --version says why.
    chosen = _without_compiled_twin(tmp_path, PROBE, PYV_EDGE_AGENT_NO_EXTENSIONS="1")
    assert chosen.returncode == 0 and chosen.stdout.strip() == "python" and chosen.stderr == ""
    shown = _without_compiled_twin(tmp_path, version, PYV_EDGE_AGENT_NO_EXTENSIONS="1")
    assert "python backend: PYV_EDGE_AGENT_NO_EXTENSIONS=1" in shown.stdout
    # Required: the fallback is an error.
    required = _without_compiled_twin(tmp_path, PROBE, PYV_EDGE_AGENT_REQUIRE_EXTENSIONS="1")
    assert required.returncode != 0 and "ModuleNotFoundError" in required.stderr and "_codec._c" in required.stderr


def test_requiring_and_switching_off_at_once_is_an_error(tmp_path: "os.PathLike[str]") -> None:
    both = {"PYV_EDGE_AGENT_NO_EXTENSIONS": "1", "PYV_EDGE_AGENT_REQUIRE_EXTENSIONS": "1"}
    done = subprocess.run([sys.executable, "-c", PROBE], env=_clean_env(**both), capture_output=True, text=True)
    assert done.returncode != 0 and done.stdout == ""
    assert "ImportError: PYV_EDGE_AGENT_NO_EXTENSIONS=1 switches the compiled backend off" in done.stderr
    # At build time too: setup.py parses them with the same helper.
    setup_py = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py")
    if not os.path.exists(setup_py):
        pytest.skip("no source tree here")
    # setup.py runs under the setuptools of build-system.requires (build isolation); the
    # venv's own may be older (bullseye's python3-venv gives 44, without CCompilerError).
    if not hasattr(pytest.importorskip("setuptools.errors"), "CCompilerError"):
        pytest.skip("this venv's setuptools is older than the build's; setup.py needs the build's")
    built = subprocess.run(
        [sys.executable, setup_py, "--name"], env=_clean_env(**both), capture_output=True, text=True, cwd=tmp_path
    )
    assert built.returncode != 0 and "unset one of them" in built.stderr, built.stderr
    assert "Traceback" not in built.stderr
