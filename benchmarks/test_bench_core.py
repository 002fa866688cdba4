"""First benchmarks of the core operations, on both backends (see ../conftest.py).

A plain run (``--benchmark-disable``) executes each scenario once as a test; a benchmark
run measures. Each scenario works on a fresh queue prepared outside the timed part.
"""

import os
import sqlite3
from typing import Any, Callable, List, Tuple

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue

N = 1000
PAYLOADS = [{"sensor": "motor", "value": float(i), "seq": i, "unit": "rpm"} for i in range(N)]


def _fresh(tmp_path: Any, name: str, **options: Any) -> CloudSyncQueue:
    path = os.path.join(tmp_path, name)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    return CloudSyncQueue(path, **options)


def _pedantic(benchmark: Any, target: Callable[..., Any], setup: Callable[[], Tuple[Tuple[Any, ...], dict]]) -> Any:
    return benchmark.pedantic(target, setup=setup, rounds=15, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_enqueue_single(benchmark: Any, tmp_path: Any, durability: str) -> None:
    queue = _fresh(tmp_path, "single.db", durability=durability)
    payload = PAYLOADS[0]
    benchmark(queue.enqueue, payload)
    assert queue.pending_count() >= 1


def test_enqueue_many_1000(benchmark: Any, tmp_path: Any) -> None:
    queues: List[CloudSyncQueue] = []

    def setup() -> Tuple[Tuple[Any, ...], dict]:
        queues.append(_fresh(tmp_path, f"many{len(queues)}.db"))
        return (PAYLOADS,), {}

    ids = _pedantic(benchmark, lambda payloads: queues[-1].enqueue_many(payloads), setup)
    assert len(ids) == N


def test_enqueue_many_floor_sqlite3(benchmark: Any, tmp_path: Any) -> None:
    """The floor: the same INSERTs through sqlite3 with parameters built in advance."""
    import orjson

    rows = [(orjson.dumps(p).decode(), 3, 1.0, 86400) for p in PAYLOADS]
    conns: List[sqlite3.Connection] = []

    def setup() -> Tuple[Tuple[Any, ...], dict]:
        queue = _fresh(tmp_path, f"floor{len(conns)}.db")
        conns.append(queue._conn())
        return (), {}

    def insert() -> None:
        conn = conns[-1]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            "INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds) VALUES (?, ?, ?, ?)", rows
        )
        conn.execute("COMMIT")

    _pedantic(benchmark, insert, setup)


def test_dequeue_1000(benchmark: Any, tmp_path: Any) -> None:
    queue = _fresh(tmp_path, "dequeue.db")
    queue.enqueue_many(PAYLOADS)
    items = benchmark(queue.dequeue, N)
    assert len(items) == N


def test_ack_1000(benchmark: Any, tmp_path: Any) -> None:
    queues: List[CloudSyncQueue] = []

    def setup() -> Tuple[Tuple[Any, ...], dict]:
        queue = _fresh(tmp_path, f"ack{len(queues)}.db")
        queues.append(queue)
        return (queue.enqueue_many(PAYLOADS),), {}

    deleted = _pedantic(benchmark, lambda ids: queues[-1].ack(ids), setup)
    assert deleted == N
