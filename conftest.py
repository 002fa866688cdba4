"""Fixtures shared by tests/ and benchmarks/: every test runs once per codec backend."""

import importlib
from types import ModuleType
from typing import Iterator

import pytest

from pyv_edge_agent.cloud_sync import _codec
from pyv_edge_agent.cloud_sync._env import no_extensions

BACKEND_MODULES = {"cython": "pyv_edge_agent.cloud_sync._codec_c", "python": "pyv_edge_agent.cloud_sync._codec_py"}
CODEC_FUNCTIONS = ("decode_payload", "decode_rows", "encode_payload", "encode_rows", "id_chunks", "splice_body")


def _load_backend(name: str) -> ModuleType:
    if name == "cython" and no_extensions():
        pytest.skip("PYV_EDGE_AGENT_NO_EXTENSIONS=1: the compiled backend is switched off")
    # Imported directly: a missing build fails the test instead of quietly testing Python twice.
    return importlib.import_module(BACKEND_MODULES[name])


@pytest.fixture(params=sorted(BACKEND_MODULES), autouse=True)
def backend(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Route every hot path through one backend for the duration of the test."""
    module = _load_backend(request.param)
    for name in CODEC_FUNCTIONS:
        monkeypatch.setattr(_codec, name, getattr(module, name))
    monkeypatch.setattr(_codec, "BACKEND", request.param)
    yield request.param


@pytest.fixture
def codec(backend: str) -> ModuleType:
    """The codec twin of the current backend, for direct calls."""
    return importlib.import_module(BACKEND_MODULES[backend])
