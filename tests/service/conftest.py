"""The service's tests run once, on the backend in use: each starts ``cloud-sync serve`` in
a process of its own and talks to it with real clients, and what they check (statuses,
signals, what reaches the endpoint) does not depend on the codec twin."""

import os
import shutil
from typing import Iterator

import pytest
from servicerun import KEY, HoldingEndpoint, ServiceFiles

from pyv_edge_agent.cloud_sync import BACKEND
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

pytest.importorskip("aiohttp", reason="the serve extra is not installed")
if shutil.which("curl") is None:
    if os.environ.get("PYV_EDGE_AGENT_REQUIRE_SYSTEM_DEPS") == "1":
        raise RuntimeError("curl is missing (apt-get install curl): the service's tests use it as their client")
    pytest.skip("curl is missing (apt-get install curl)", allow_module_level=True)


@pytest.fixture(autouse=True)
def backend() -> str:
    """In place of the both-backends fixture of ../../conftest.py: one run, on ``BACKEND``."""
    return BACKEND


@pytest.fixture
def files() -> Iterator[ServiceFiles]:
    """A service's directory: configuration, secrets, queue file, socket."""
    made = ServiceFiles()
    yield made
    made.cleanup()


@pytest.fixture
def endpoint() -> Iterator[IngestServer]:
    """The destination: the reference ingest server, requiring the service's key."""
    with IngestServer(api_key=KEY) as server:
        yield server


@pytest.fixture
def holding() -> Iterator[HoldingEndpoint]:
    """An endpoint that holds each batch until its ``release`` is set."""
    server = HoldingEndpoint()
    yield server
    server.release.set()
    server.shutdown()
    server.server_close()
