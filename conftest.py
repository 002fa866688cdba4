"""Fixtures shared by tests/ and benchmarks/: every test runs once per codec backend,
except in the folders where the backend does not matter (tests/cli/, tests/delivery/),
whose conftest.py puts a ``backend`` fixture of its own in place of this one: one run, on
the backend in use."""

import importlib
from types import ModuleType
from typing import Any, Callable, Iterator

import pytest

from pyv_edge_agent.cloud_sync import _codec
from pyv_edge_agent.cloud_sync._codec._env import no_extensions

BACKEND_MODULES = {"cython": "pyv_edge_agent.cloud_sync._codec._c", "python": "pyv_edge_agent.cloud_sync._codec._py"}
CODEC_FUNCTIONS = ("decode_payload", "decode_rows", "encode_payload", "encode_rows", "id_chunks", "splice_body")


def _load_backend(name: str) -> ModuleType:
    if name == "cython" and no_extensions():
        pytest.skip("PYV_EDGE_AGENT_NO_EXTENSIONS=1: the compiled backend is switched off")
    # Imported directly: a missing build fails the test instead of quietly testing Python twice.
    return importlib.import_module(BACKEND_MODULES[name])


def route_backend(name: str, set_attribute: Callable[[Any, str, Any], None] = setattr) -> None:
    """Point the dispatcher's hot paths at one backend (benchmarks/gate.py switches with it too)."""
    module = importlib.import_module(BACKEND_MODULES[name])
    for function in CODEC_FUNCTIONS:
        set_attribute(_codec, function, getattr(module, function))
    set_attribute(_codec, "BACKEND", name)


@pytest.fixture(params=sorted(BACKEND_MODULES), autouse=True)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Route every hot path through one backend for the duration of the test."""
    _load_backend(request.param)
    route_backend(request.param, monkeypatch.setattr)
    yield request.param


@pytest.fixture
def codec(backend: str) -> ModuleType:
    """The codec twin of the current backend, for direct calls."""
    return importlib.import_module(BACKEND_MODULES[backend])
