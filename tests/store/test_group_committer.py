"""The group committer on its own, without a queue: concurrent submits share writes, each
caller gets its own item's id or error, and a forked child never waits for the parent's
threads."""

import os
import signal
import threading
from typing import Dict, List

import pytest

from pyv_edge_agent.cloud_sync import BACKEND
from pyv_edge_agent.cloud_sync._store.group_commit import GroupCommitter

# No codec involved: one run, on the backend in use (see ../../conftest.py).
pytestmark = pytest.mark.parametrize("backend", [BACKEND], indirect=True)

THREADS = 8


class Storage:
    """A stand-in transaction: numbers items in order, slowly (as an fsync would), and
    refuses any group holding a poisoned item."""

    def __init__(self, pause: float = 0.02) -> None:
        self.pause = pause
        self.groups: List[List[str]] = []
        self.stored: Dict[int, str] = {}
        self.writing = 0
        self.overlapped = False
        self.release = threading.Event()
        self.release.set()

    def write(self, items: List[str]) -> List[int]:
        self.writing += 1
        self.overlapped |= self.writing > 1
        try:
            self.groups.append(list(items))
            self.release.wait()
            threading.Event().wait(self.pause)
            if any(item.startswith("poison") for item in items):
                raise OSError("refused the poison item")
            first = len(self.stored) + 1
            ids = list(range(first, first + len(items)))
            self.stored.update(zip(ids, items))
            return ids
        finally:
            self.writing -= 1


def _submit_from_threads(committer: GroupCommitter[str], items: List[List[str]]) -> Dict[str, object]:
    outcomes: Dict[str, object] = {}

    def produce(mine: List[str]) -> None:
        for item in mine:
            try:
                outcomes[item] = committer.submit(item)
            except OSError as exc:
                outcomes[item] = exc

    threads = [threading.Thread(target=produce, args=(mine,)) for mine in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return outcomes


def test_concurrent_submits_share_writes_and_get_their_own_ids() -> None:
    storage = Storage()
    committer = GroupCommitter(storage.write)
    items = [[f"t{t}-{i}" for i in range(20)] for t in range(THREADS)]
    outcomes = _submit_from_threads(committer, items)
    assert max(len(group) for group in storage.groups) > 1
    assert sum(len(group) for group in storage.groups) == THREADS * 20
    assert not storage.overlapped  # one write at a time
    assert {row_id: item for item, row_id in outcomes.items()} == storage.stored


def test_a_lone_caller_writes_alone() -> None:
    storage = Storage(pause=0.0)
    committer = GroupCommitter(storage.write)
    assert [committer.submit(f"i{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    assert storage.groups == [[f"i{i}"] for i in range(5)]


def test_a_failing_shared_write_reaches_only_its_own_caller() -> None:
    storage = Storage()
    committer = GroupCommitter(storage.write)
    items = [[f"t{t}-{i}" for i in range(10)] for t in range(THREADS)]
    items[3][4] = "poison-1"
    items[6][7] = "poison-2"
    outcomes = _submit_from_threads(committer, items)
    for poison in ("poison-1", "poison-2"):
        assert isinstance(outcomes.pop(poison), OSError)
    assert sorted(outcomes.values()) == sorted(storage.stored)  # every other item stored once
    assert {row_id: item for item, row_id in outcomes.items()} == storage.stored
    assert ["poison-1"] in storage.groups  # retried alone after its group failed


def test_a_lone_failure_is_raised_as_is() -> None:
    committer = GroupCommitter(Storage(pause=0.0).write)
    with pytest.raises(OSError, match="poison"):
        committer.submit("poison")
    assert committer.submit("fine") == 1  # the committer is free again


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_child_does_not_wait_for_the_parents_leader() -> None:
    storage = Storage(pause=0.0)
    committer = GroupCommitter(storage.write)
    storage.release.clear()  # the next write blocks: a leader is mid-commit
    leader = threading.Thread(target=committer.submit, args=("parent",))
    leader.start()
    while not storage.groups:
        threading.Event().wait(0.01)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        signal.alarm(20)  # a child that waits for the parent's leader dies instead of hanging
        try:
            storage.release.set()  # the child's own writes go through
            code = 0 if committer.submit("child") >= 1 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    storage.release.set()
    leader.join(60)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert committer.submit("after") == 2  # the parent's committer goes on as before
