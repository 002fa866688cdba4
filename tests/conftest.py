"""Fixtures for tests on real files and a real loopback server (backends: ../conftest.py)."""

import os
from typing import Iterator

import pytest
import reliability
from mounts import tmpfs_dir

from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

PROXY_VARIABLES = ("https_proxy", "http_proxy", "no_proxy", "all_proxy")


@pytest.fixture(autouse=True)
def _no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests talk to loopback servers directly: a developer's HTTPS_PROXY (which, as with
    curl, also covers 127.0.0.1) must not route them elsewhere. Proxy tests set their own."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)


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


@pytest.fixture
def small_fs(tmp_path: "os.PathLike[str]") -> Iterator[str]:
    """A directory on a real 8 MiB tmpfs file system (needs root), unmounted afterwards."""
    with tmpfs_dir(os.fspath(tmp_path), "small-fs", 8 * 1024 * 1024) as mount_point:
        yield mount_point


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Write the reliability figures (kills, items checked, lost, ...) and the power-cut
    figures at the end of the run."""
    sections = (
        ("reliability figures", reliability.summary_lines()),
        ("power-cut figures", reliability.power_cut_lines()),
    )
    for title, lines in sections:
        if lines:
            terminalreporter.write_sep("=", title)
            for line in lines:
                terminalreporter.write_line(line)
