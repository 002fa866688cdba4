"""Fixtures for tests on real files and a real loopback server (backends: ../conftest.py)."""

import os
import shutil
import subprocess
from typing import Iterator

import pytest
import reliability

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


@pytest.fixture
def small_fs(tmp_path: "os.PathLike[str]") -> Iterator[str]:
    """A directory on a real 8 MiB tmpfs file system (needs root), unmounted afterwards."""
    mount_point = os.path.join(os.fspath(tmp_path), "small-fs")
    os.mkdir(mount_point)
    if not mount_tmpfs(mount_point, 8 * 1024 * 1024):
        pytest.skip("cannot mount a small tmpfs here (needs root)")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", mount_point], check=False)


def mount_tmpfs(mount_point: str, size: int, *, read_only: bool = False) -> bool:
    """Mount a tmpfs of ``size`` bytes at ``mount_point``; False when not permitted."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    options = f"size={size}" + (",ro" if read_only else "")
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", mount_point], capture_output=True)
    return result.returncode == 0


def remount_read_only(mount_point: str) -> None:
    """Switch a mounted tmpfs to read-only, as a failing SD card gets remounted."""
    subprocess.run(["mount", "-o", "remount,ro", mount_point], check=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Write the reliability figures (kills, items checked, lost, ...) at the end of the run."""
    lines = reliability.summary_lines()
    if lines:
        terminalreporter.write_sep("=", "reliability figures")
        for line in lines:
            terminalreporter.write_line(line)
