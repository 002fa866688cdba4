"""The core operations on both backends, each beside its SQLite floor and its peers.

Every group (``benchmark.group``) is one piece of work; its members are the two backends
(the autouse ``backend`` fixture), the floor, and where they can do the same work the
reference pattern and persist-queue (the ``backend`` parameter names each). Sizes are full
when measuring and small under ``--benchmark-disable`` (see conftest.py).
"""

import os
import time
from typing import Any, Dict, List, Tuple

import _cases
import pytest
from _support import (
    ReferenceQueue,
    Size,
    floor_chunks,
    floor_connection,
    floor_insert_many,
    floor_select,
    fresh_queue,
    id_chunk_params,
    payloads,
    persist_queue,
    rows,
    run,
)

from pyv_edge_agent.cloud_sync import CloudSyncQueue, QueueItem
from pyv_edge_agent.cloud_sync._store import sql

PEERS = ["floor", "reference", "persist-queue"]


def _path(tmp_path: Any, name: str) -> str:
    return os.path.join(os.fspath(tmp_path), name)


# -- single enqueue: one commit per item ---------------------------------------------------


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_enqueue_single(benchmark: Any, tmp_path: Any, size: Size, durability: str) -> None:
    benchmark.group = f"enqueue x1 ({durability})"
    count = size(300, 20)
    case = _cases.enqueue_single(_path(tmp_path, "q.db"), "queue", durability, count)
    run(benchmark, case.work, items=count, rounds=size(10, 1))
    assert case.stored() == count * (size(11, 1))


@pytest.mark.parametrize(
    "durability, backend", [(d, b) for d in ("full", "fast") for b in PEERS if (d, b) != ("fast", "persist-queue")]
)
def test_enqueue_single_peers(benchmark: Any, tmp_path: Any, size: Size, durability: str, backend: str) -> None:
    benchmark.group = f"enqueue x1 ({durability})"
    count = size(300, 20)
    if backend == "floor":
        case = _cases.enqueue_single(_path(tmp_path, "floor.db"), "floor", durability, count)
        work, stored = case.work, case.stored
    elif backend == "reference":
        count = size(100, 5)  # about a millisecond each
        reference = ReferenceQueue(_path(tmp_path, "reference.db"))
        items = payloads(count)

        def work() -> None:
            for payload in items:
                reference.enqueue(payload)

        def stored() -> int:
            return len(reference.dequeue(10**6))
    else:  # persist-queue has no mode without an fsync per commit
        pq = persist_queue(_path(tmp_path, "pq"))
        items = payloads(count)

        def work() -> None:
            for payload in items:
                pq.put(payload)

        def stored() -> int:
            return int(pq.qsize())

    rounds = size(10, 1) if backend != "reference" else size(5, 1)
    run(benchmark, work, items=count, rounds=rounds)
    assert stored() == count * (rounds + 1 if rounds > 1 else 1)


# -- enqueue_many ----------------------------------------------------------------------


@pytest.mark.parametrize("count", [1000, 100_000])
def test_enqueue_many(benchmark: Any, tmp_path: Any, size: Size, count: int) -> None:
    benchmark.group = f"enqueue_many {count:,}"
    n = size(count, min(count, 2000))
    case = _cases.enqueue_many(_path(tmp_path, "many.db"), "queue", n)
    ids = run(benchmark, case.work, items=n, rounds=size(8, 1), setup=case.setup)
    assert len(ids) == n and case.stored() == n


@pytest.mark.parametrize("count, backend", [(1000, "floor"), (100_000, "floor"), (1000, "persist-queue")])
def test_enqueue_many_peers(benchmark: Any, tmp_path: Any, size: Size, count: int, backend: str) -> None:
    benchmark.group = f"enqueue_many {count:,}"
    n = size(count, min(count, 2000))
    if backend == "floor":
        case = _cases.enqueue_many(_path(tmp_path, "floor.db"), "floor", n)
        run(benchmark, case.work, items=n, rounds=size(8, 1), setup=case.setup)
        assert case.stored() == n
        return
    # persist-queue has no batch put (and its ack queue refuses auto_commit=False): 1,000 puts.
    items = payloads(n)
    queues: List[Any] = []

    def setup_pq() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        queues.append(persist_queue(_path(tmp_path, f"pq{len(queues)}")))
        return (), {}

    def put_all() -> None:
        pq = queues[-1]
        for payload in items:
            pq.put(payload)

    run(benchmark, put_all, items=n, rounds=size(3, 1), setup=setup_pq)
    assert queues[-1].qsize() == n


# -- dequeue / peek with decoding -------------------------------------------------------


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Any]:
    """One queue file with 10,000 items, shared by the read benchmarks (which change nothing)."""
    path = _cases.fill(os.path.join(os.fspath(tmp_path_factory.mktemp("filled")), "filled.db"), 10_000)
    reference = ReferenceQueue(os.path.join(os.path.dirname(path), "reference.db"))
    conn = __import__("sqlite3").connect(reference.path)
    conn.executemany(sql.INSERT_SQL, rows(10_000))
    conn.commit()
    conn.close()
    return {"path": path, "reference": reference}


READS = [("dequeue", 1000), ("dequeue", 10_000), ("peek", 1000)]  # peek runs dequeue's code


@pytest.mark.parametrize("method, count", READS)
def test_read(benchmark: Any, filled: Dict[str, Any], size: Size, count: int, method: str) -> None:
    benchmark.group = f"{method} {count:,}"
    case = _cases.read(filled["path"], "queue", method, count)
    items = run(benchmark, case.work, items=count, rounds=size(30, 1), setup=case.setup)
    assert len(items) == count and isinstance(items[0], QueueItem)


@pytest.mark.parametrize("method, count", READS)
@pytest.mark.parametrize("backend", ["floor", "reference"])
def test_read_peers(benchmark: Any, filled: Dict[str, Any], size: Size, count: int, method: str, backend: str) -> None:
    benchmark.group = f"{method} {count:,}"
    if backend == "floor":
        read = _cases.read(filled["path"], "floor", method, count).work
    else:
        read = lambda: filled["reference"].dequeue(count)  # noqa: E731
    found = run(benchmark, read, items=count, rounds=size(30, 1))
    assert len(found) == count


# -- ack / nack of many ids ------------------------------------------------------------


@pytest.mark.parametrize("operation", ["ack", "nack"])
def test_ack_nack(benchmark: Any, tmp_path: Any, size: Size, operation: str) -> None:
    benchmark.group = f"{operation} 10,000 ids"
    count = size(10_000, 2000)
    case = _cases.ack_nack(_path(tmp_path, "ack.db"), "queue", operation, count)
    changed = run(benchmark, case.work, items=count, rounds=size(15, 1), setup=case.setup)
    assert changed == count and case.stored() == (0 if operation == "ack" else count)


@pytest.mark.parametrize("operation, backend", [("ack", "floor"), ("nack", "floor"), ("ack", "reference")])
def test_ack_nack_peers(benchmark: Any, tmp_path: Any, size: Size, operation: str, backend: str) -> None:
    benchmark.group = f"{operation} 10,000 ids"
    count = size(10_000, 2000)
    if backend == "reference":
        prepared = rows(count)
        ids = list(range(1, count + 1))
        refs: List[ReferenceQueue] = []

        def setup_ref() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            refs.append(ReferenceQueue(_path(tmp_path, "reference.db")))
            conn = __import__("sqlite3").connect(refs[-1].path)
            conn.executemany(sql.INSERT_SQL, prepared)
            conn.commit()
            conn.close()
            return (), {}

        changed = run(benchmark, lambda: refs[-1].ack(ids), items=count, rounds=size(15, 1), setup=setup_ref)
        assert changed == count
        return
    case = _cases.ack_nack(_path(tmp_path, "floor.db"), "floor", operation, count)
    changed = run(benchmark, case.work, items=count, rounds=size(15, 1), setup=case.setup)
    assert changed == count


# -- consuming: read, then remove, 1,000 items -------------------------------------------


def test_consume(benchmark: Any, tmp_path: Any, size: Size) -> None:
    benchmark.group = "consume 1,000 (read + ack)"
    count = size(1000, 200)
    prepared = rows(count)
    queues: List[CloudSyncQueue] = []

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if queues:
            queues[-1].close()
        queues.append(fresh_queue(_path(tmp_path, "consume.db")))
        queues[-1]._insert_rows(prepared)
        return (), {}

    def consume() -> int:
        queue = queues[-1]
        return queue.ack([item.id for item in queue.dequeue(count)])

    assert run(benchmark, consume, items=count, rounds=size(10, 1), setup=setup) == count


@pytest.mark.parametrize("backend", PEERS)
def test_consume_peers(benchmark: Any, tmp_path: Any, size: Size, backend: str) -> None:
    benchmark.group = "consume 1,000 (read + ack)"
    count = size(1000, 200)
    prepared = rows(count)
    state: List[Any] = []
    if backend == "floor":

        def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            state.append(floor_connection(_path(tmp_path, f"floor{len(state)}.db")))
            floor_insert_many(state[-1], prepared)
            return (), {}

        def consume() -> int:
            conn = state[-1]
            found = floor_select(conn, sql.SELECT_ELIGIBLE_SQL, count, time.time())
            return floor_chunks(conn, sql.ACK_SQL, (), id_chunk_params([row[0] for row in found]))

    elif backend == "reference":

        def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            state.append(ReferenceQueue(_path(tmp_path, f"reference{len(state)}.db")))
            conn = __import__("sqlite3").connect(state[-1].path)
            conn.executemany(sql.INSERT_SQL, prepared)
            conn.commit()
            conn.close()
            return (), {}

        def consume() -> int:
            reference = state[-1]
            return reference.ack([item.id for item in reference.dequeue(count)])

    else:
        items = payloads(count)

        def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            state.append(persist_queue(_path(tmp_path, f"pq{len(state)}")))
            for payload in items:
                state[-1].put(payload)
            return (), {}

        def consume() -> int:
            pq = state[-1]
            done = 0
            for _ in range(count):
                pq.ack(pq.get(block=False))
                done += 1
            return done

    rounds = size(3 if backend == "persist-queue" else 10, 1)
    assert run(benchmark, consume, items=count, rounds=rounds, setup=setup) == count
