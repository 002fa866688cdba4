"""Files and directories the queue creates are private to their owner (payloads can be
sensitive), whatever the umask: 0600 for the database, its -wal and -shm and a fresh file
after a quarantine, 0700 for directories."""

import os
import stat
from typing import Any, Iterator

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue


def _mode(path: str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(params=[0o000, 0o022])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def test_new_files_and_directories_are_private(tmp_path: Any, umask: int) -> None:
    top = os.path.join(tmp_path, "data")
    path = os.path.join(top, "agent", "sync.db")
    with CloudSyncQueue(path) as queue:
        queue.enqueue({"secret": "reading"})
        assert os.path.exists(path + "-wal") and os.path.exists(path + "-shm")
        modes = {name: _mode(path + name) for name in ("", "-wal", "-shm")}
    assert modes == {"": 0o600, "-wal": 0o600, "-shm": 0o600}
    assert _mode(top) == _mode(os.path.dirname(path)) == 0o700


def test_the_fresh_file_after_a_quarantine_is_private(tmp_path: Any, umask: int) -> None:
    path = os.path.join(tmp_path, "sync.db")
    with open(path, "wb") as handle:
        handle.write(b"not a database at all" * 100)
    with CloudSyncQueue(path, on_corrupt="quarantine") as queue:
        queue.enqueue({"a": 1})
        assert queue.get_stats()["quarantined_total"] == 1
    assert _mode(path) == 0o600


def test_an_existing_file_keeps_the_mode_its_owner_gave_it(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "sync.db")
    CloudSyncQueue(path).close()
    os.chmod(path, 0o640)  # say, group-readable for a monitoring agent
    CloudSyncQueue(path).close()
    assert _mode(path) == 0o640
