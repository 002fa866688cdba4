"""What importing the package and opening a queue loads, and opening files whose paths
need escaping in a SQLite URI."""

import os
import subprocess
import sys
from typing import Any, Dict

import pytest

import pyv_edge_agent.cloud_sync as cloud_sync
from pyv_edge_agent.cloud_sync import CloudSyncQueue

# The backend does not matter here: one run, on the backend in use (see ../conftest.py).
pytestmark = pytest.mark.parametrize("backend", [cloud_sync.BACKEND], indirect=True)

# Modules an enqueue-only process never needs (see __getattr__ in the package).
DEFERRED = tuple(
    f"pyv_edge_agent.cloud_sync.{name}"
    for name in ("_flush.flusher", "_flush.claim", "_flush.outgoing", "delivery", "uploader", "worker")
)

OPEN_SCRIPT = """
import sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue
with CloudSyncQueue(sys.argv[1]) as queue:
    queue.enqueue({"n": 1})
    queue.dequeue(1)
print(" ".join(sorted(sys.modules)))
"""


def test_opening_a_queue_leaves_the_flush_modules_unloaded(tmp_path: Any) -> None:
    path = os.path.join(os.fspath(tmp_path), "q.db")
    for _ in range(2):  # created, then opened as an existing file
        loaded = subprocess.run(
            [sys.executable, "-c", OPEN_SCRIPT, path], check=True, capture_output=True, text=True, timeout=120
        ).stdout.split()
        assert not set(DEFERRED + ("urllib.parse", "urllib3")) & set(loaded)


@pytest.mark.parametrize("name", cloud_sync.__all__)
def test_every_public_name_imports(name: str) -> None:
    namespace: Dict[str, Any] = {}
    exec(f"from pyv_edge_agent.cloud_sync import {name}", namespace)
    assert namespace[name] is getattr(cloud_sync, name)
    assert name in dir(cloud_sync)


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no_such_name"):
        cloud_sync.no_such_name  # noqa: B018


@pytest.mark.parametrize("directory", ["100% done", "what?", "a#b", "sp ace", "%3F"])
def test_paths_that_need_escaping_in_a_uri(tmp_path: Any, directory: str) -> None:
    path = os.path.join(os.fspath(tmp_path), directory, "q.db")
    with CloudSyncQueue(path) as queue:
        item = queue.enqueue({"n": 1})
    # Reopening runs the read-only checks of an existing file through a URI.
    with CloudSyncQueue(path) as queue:
        assert [entry.id for entry in queue.dequeue(5)] == [item]
    report = CloudSyncQueue.verify_file(path)
    assert report.ok, report.messages
    assert os.listdir(os.fspath(tmp_path)) == [directory]  # nothing opened or made beside it
