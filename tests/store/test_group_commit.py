"""Group commit: concurrent single enqueues share transactions, and every returned id is
durable, attributed to its own caller, and safe across fork and kill -9."""

import os
import signal
import subprocess
import sys
import threading
from typing import Any, Dict, List, Tuple

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue

THREADS = 8


def _slow_commits(queue: CloudSyncQueue, monkeypatch: pytest.MonkeyPatch) -> List[int]:
    """Make every transaction wait a little (as a slow fsync would) and record its size."""
    sizes: List[int] = []
    insert_rows = queue._insert_rows
    pause = threading.Event()

    def slow(rows: List[Tuple[str, int, float, int]]) -> List[int]:
        sizes.append(len(rows))
        pause.wait(0.02)
        return insert_rows(rows)

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

    def refuse_poison(rows: List[Tuple[str, int, float, int]]) -> List[int]:
        sizes.append(len(rows))
        threading.Event().wait(0.02)
        if any("poison" in row[0] for row in rows):
            raise OSError("disk refused the poison item")
        return insert_rows(rows)

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

    def held(rows: List[Tuple[str, int, float, int]]) -> List[int]:
        if threading.current_thread() is not threading.main_thread():
            entered.set()
            release.wait(60)
        return insert_rows(rows)

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
