"""Group commit. The committer on its own, without a queue: concurrent submits share
writes, each caller gets its own item's id or error, and a forked child never waits for the
parent's threads. Through the queue: concurrent single enqueues share transactions, and
every returned id is durable, attributed to its own caller, and safe across fork and
kill -9."""

import os
import signal
import subprocess
import sys
import threading
from typing import Any, Dict, List, Tuple

import pytest

from pyv_edge_agent.cloud_sync import BACKEND, CloudSyncQueue
from pyv_edge_agent.cloud_sync._store.group_commit import GroupCommitter

THREADS = 8
# The committer on its own involves no codec: one run, on the backend in use (see
# ../../conftest.py). Through the queue, every test runs on both backends.
ONE_BACKEND = pytest.mark.parametrize("backend", [BACKEND], indirect=True)


# -- the committer on its own -----------------------------------------------------------


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


@ONE_BACKEND
def test_concurrent_submits_share_writes_and_get_their_own_ids() -> None:
    storage = Storage()
    committer = GroupCommitter(storage.write)
    items = [[f"t{t}-{i}" for i in range(20)] for t in range(THREADS)]
    outcomes = _submit_from_threads(committer, items)
    assert max(len(group) for group in storage.groups) > 1
    assert sum(len(group) for group in storage.groups) == THREADS * 20
    assert not storage.overlapped  # one write at a time
    assert {row_id: item for item, row_id in outcomes.items()} == storage.stored


@ONE_BACKEND
def test_a_lone_caller_writes_alone() -> None:
    storage = Storage(pause=0.0)
    committer = GroupCommitter(storage.write)
    assert [committer.submit(f"i{i}") for i in range(5)] == [1, 2, 3, 4, 5]
    assert storage.groups == [[f"i{i}"] for i in range(5)]


@ONE_BACKEND
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


@ONE_BACKEND
def test_a_lone_failure_is_raised_as_is() -> None:
    committer = GroupCommitter(Storage(pause=0.0).write)
    with pytest.raises(OSError, match="poison"):
        committer.submit("poison")
    assert committer.submit("fine") == 1  # the committer is free again


@ONE_BACKEND
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


# -- through the queue ------------------------------------------------------------------
def _slow_commits(queue: CloudSyncQueue, monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Make every transaction wait a little (as a slow fsync would) and record its size."""
    sizes: List[int] = []
    insert_rows = queue._insert_rows
    pause = threading.Event()

    def slow(rows: List[Tuple[str, int, float, int]], route: int) -> List[int]:
        sizes.append(len(rows))
        pause.wait(0.02)
        return insert_rows(rows, route)

    monkeypatch.setattr(queue, "_insert_rows", slow)
    return sizes


def _enqueue_from_threads(queue: CloudSyncQueue, per_thread: int) -> Dict[int, Dict[str, Any]]:
    returned: Dict[int, Dict[str, Any]] = {}
    lock = threading.Lock()

    def produce(worker: int) -> None:
        for i in range(per_thread):
            payload = {"w": worker, "i": i}
            row_id = queue.enqueue(payload)
            with lock:
                returned[row_id] = payload

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return returned


def test_concurrent_enqueues_share_transactions(queue: CloudSyncQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _slow_commits(queue, monkeypatch)
    returned = _enqueue_from_threads(queue, 20)
    assert len(returned) == THREADS * 20
    assert max(sizes) > 1 and sum(sizes) == THREADS * 20
    # Every caller got the id of its own payload.
    stored = {item.id: item.payload for item in queue.dequeue(batch_size=1000)}
    assert stored == returned


def test_lone_caller_commits_alone(queue: CloudSyncQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _slow_commits(queue, monkeypatch)
    ids = [queue.enqueue({"i": i}) for i in range(5)]
    assert sizes == [1] * 5 and ids == sorted(ids)


def test_failure_in_a_shared_transaction_reaches_only_its_caller(
    queue: CloudSyncQueue, monkeypatch: pytest.MonkeyPatch
) -> None:
    insert_rows = queue._insert_rows
    sizes: List[int] = []

    def refuse_poison(rows: List[Tuple[str, int, float, int]], route: int) -> List[int]:
        sizes.append(len(rows))
        threading.Event().wait(0.02)
        if any("poison" in row[0] for row in rows):
            raise OSError("disk refused the poison item")
        return insert_rows(rows, route)

    monkeypatch.setattr(queue, "_insert_rows", refuse_poison)
    outcomes: Dict[str, Any] = {}

    def produce(name: str) -> None:
        try:
            outcomes[name] = queue.enqueue({"name": name})
        except OSError as exc:
            outcomes[name] = exc

    names = ["poison"] + [f"good{i}" for i in range(THREADS - 1)]
    threads = [threading.Thread(target=produce, args=(name,)) for name in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert isinstance(outcomes["poison"], OSError)
    good = {name: row_id for name, row_id in outcomes.items() if name != "poison"}
    assert all(isinstance(row_id, int) for row_id in good.values())
    assert {item.payload["name"]: item.id for item in queue.dequeue(100)} == good
    assert max(sizes) > 1  # the poison item did share a transaction with others


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_fork_during_a_group_commit(queue: CloudSyncQueue, monkeypatch: pytest.MonkeyPatch) -> None:
    """A child forked while another thread leads a commit can enqueue (nothing inherited waits)."""
    insert_rows = queue._insert_rows
    entered, release = threading.Event(), threading.Event()

    def held(rows: List[Tuple[str, int, float, int]], route: int = 0) -> List[int]:
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            release.wait(60)
        return insert_rows(rows, route)

    monkeypatch.setattr(queue, "_insert_rows", held)
    leader = threading.Thread(target=queue.enqueue, args=({"from": "leader"},))
    leader.start()
    assert entered.wait(60)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        signal.alarm(30)  # a deadlock fails the test instead of hanging it
        code = 1
        try:
            queue.enqueue({"from": "child"})
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    release.set()
    leader.join(60)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert sorted(item.payload["from"] for item in queue.dequeue(10)) == ["child", "leader"]


KILL_SCRIPT = """
import sys, threading
from pyv_edge_agent.cloud_sync import CloudSyncQueue

queue = CloudSyncQueue(sys.argv[1])
out = threading.Lock()

def produce(worker):
    i = 0
    while True:
        row_id = queue.enqueue({"w": worker, "i": i})
        with out:
            sys.stdout.write(f"{row_id} {worker} {i}\\n")
            sys.stdout.flush()
        i += 1

for worker in range(8):
    threading.Thread(target=produce, args=(worker,), daemon=True).start()
threading.Event().wait()
"""


@pytest.mark.slow
def test_every_returned_id_survives_kill_9(db_path: str, backend: str) -> None:
    """Eight threads enqueue one item at a time in a child that is killed with SIGKILL;
    every id the child saw returned is stored with its payload."""
    CloudSyncQueue(db_path).close()
    env = dict(os.environ, PYV_EDGE_AGENT_NO_EXTENSIONS="1" if backend == "python" else "")
    if backend == "python":  # requiring the compiled backend while switching it off is an error
        env.pop("PYV_EDGE_AGENT_REQUIRE_EXTENSIONS", None)
    child = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, db_path], stdout=subprocess.PIPE, text=True, env=env)
    assert child.stdout is not None
    returned: Dict[int, Tuple[int, int]] = {}
    try:
        while len(returned) < 1500:
            line = child.stdout.readline()
            assert line, "the child stopped before it was killed"
            row_id, worker, i = (int(x) for x in line.split())
            returned[row_id] = (worker, i)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(60)
    assert child.returncode == -signal.SIGKILL
    with CloudSyncQueue(db_path) as queue:
        stored = {item.id: (item.payload["w"], item.payload["i"]) for item in queue.dequeue(10**6)}
    assert set(returned) <= set(stored)
    assert all(stored[row_id] == pair for row_id, pair in returned.items())


def _threads_in_process(path: str, worker: int, per_thread: int, out: Any) -> None:
    with CloudSyncQueue(path) as queue:
        ids: List[int] = []
        lock = threading.Lock()

        def produce(thread: int) -> None:
            for i in range(per_thread):
                row_id = queue.enqueue({"p": worker, "t": thread, "i": i})
                with lock:
                    ids.append(row_id)

        threads = [threading.Thread(target=produce, args=(t,)) for t in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        out.put(ids)


def test_group_commits_of_several_processes_share_one_file(db_path: str) -> None:
    """Each process groups its own threads' items; their transactions interleave on the file."""
    import multiprocessing

    CloudSyncQueue(db_path).close()
    context = multiprocessing.get_context("spawn")
    out = context.Queue()
    procs = [context.Process(target=_threads_in_process, args=(db_path, w, 50, out)) for w in range(3)]
    for p in procs:
        p.start()
    returned = [row_id for _ in procs for row_id in out.get(timeout=120)]
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len(returned) == len(set(returned)) == 3 * 4 * 50
    with CloudSyncQueue(db_path) as queue:
        stored = {item.id: item.payload for item in queue.dequeue(10_000)}
    assert set(stored) == set(returned)
    assert len({(p["p"], p["t"], p["i"]) for p in stored.values()}) == 600
