"""Fixtures for tests on real files and a real loopback server (backends: ../conftest.py)."""

import os
from typing import Iterator

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync.ingest_server import IngestServer


@pytest.fixture
def db_path(tmp_path: "os.PathLike[str]") -> str:
    """A path for a fresh queue file in a directory that does not exist yet."""
    return os.path.join(os.fspath(tmp_path), "data", "sync.db")


@pytest.fixture
def queue(db_path: str) -> Iterator[CloudSyncQueue]:
    """A fresh queue on a real file."""
    q = CloudSyncQueue(db_path)
    yield q
    q.close()


@pytest.fixture
def server() -> Iterator[IngestServer]:
    """A real ingest endpoint on 127.0.0.1 that accepts the key ``test-key``."""
    with IngestServer(api_key="test-key") as srv:
        yield srv
