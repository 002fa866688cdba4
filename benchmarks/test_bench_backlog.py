"""Cost against the backlog: ``enqueue``, ``dequeue(100)`` and ``ack`` of 100 ids on queues of
1,000 and 1,000,000 items, and on 1,000 eligible items behind 100,000 nacked ones (waiting
for their retry time) or 100,000 expired ones (not yet purged).

The groups are named ``backlog <op>``; each state is one member, so the curve reads down the
group. Enqueues use ``durability="fast"`` so that the fsync does not hide the B-tree's cost.
"""

import os
import sqlite3
import time
from typing import Any, Dict, Iterator, List, Tuple

import orjson
import pytest
from _support import Size, payloads, run

from pyv_edge_agent.cloud_sync import CloudSyncQueue

STATES = ["1k", "big", "1k+nacked", "1k+expired"]
OPS = ["enqueue", "dequeue", "ack"]


def _rows(count: int, created_at: float, ttl: int, retry_count: int, next_retry_at: float) -> Iterator[Tuple[Any, ...]]:
    for p in payloads(count):
        yield (orjson.dumps(p).decode(), 3, created_at, ttl, retry_count, next_retry_at)


def _build(path: str, parts: List[Tuple[int, float, int, int, float]]) -> None:
    CloudSyncQueue(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for count, created_at, ttl, retry_count, next_retry_at in parts:
        conn.executemany(
            "INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds, retry_count, next_retry_at)"
            " VALUES (?, ?, ?, ?, ?, ?)",
            _rows(count, created_at, ttl, retry_count, next_retry_at),
        )
    conn.execute("COMMIT")
    conn.close()


@pytest.fixture(scope="module")
def backlogs(tmp_path_factory: pytest.TempPathFactory, size: Size) -> Dict[str, Tuple[str, int]]:
    """Queue files in each state, built once through sqlite3; value: (path, stored items)."""
    directory = os.fspath(tmp_path_factory.mktemp("backlog"))
    now = time.time()
    big = size(1_000_000, 20_000)
    waiting = size(100_000, 5_000)
    eligible = (1000, now, 86400, 0, 0.0)
    specs = {
        "1k": [eligible],
        "big": [(big, now, 86400, 0, 0.0)],
        # Nacked: retried once, due in a day; they sort before nothing that is eligible.
        "1k+nacked": [(waiting, now, 86400, 1, now + 86400.0), eligible],
        # Expired: written two days ago with a one-day TTL, never purged; they come first by id.
        "1k+expired": [(waiting, now - 2 * 86400.0, 86400, 0, 0.0), eligible],
    }
    built = {}
    for state, parts in specs.items():
        path = os.path.join(directory, f"{state}.db")
        _build(path, parts)
        built[state] = (path, sum(part[0] for part in parts))
    return built


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("op", OPS)
def test_backlog(benchmark: Any, backlogs: Dict[str, Tuple[str, int]], size: Size, op: str, state: str) -> None:
    path, stored = backlogs[state]
    label = f"{stored:,} items" if "+" not in state else f"1,000 + {stored - 1000:,} {state.split('+')[1]}"
    benchmark.group = f"backlog {op} ({'100 single' if op == 'enqueue' else '100'})"
    benchmark.extra_info["variant"] = label
    benchmark.extra_info["baseline"] = state == "1k"
    queue = CloudSyncQueue(path, durability="fast")
    fresh = payloads(100)
    rounds = size(20, 1)
    if op == "enqueue":

        def enqueue() -> int:
            for payload in fresh:
                queue.enqueue(payload)
            return 100

        first = queue.enqueue(fresh[0])
        run(benchmark, enqueue, items=100, rounds=rounds)
        # Take the added items out again so that every test sees the state it is named for.
        last = queue.enqueue(fresh[0])
        assert queue.ack(list(range(first, last + 1))) == last - first + 1
    elif op == "dequeue":
        items = run(benchmark, queue.dequeue, items=100, rounds=rounds, setup=lambda: ((100,), {}))
        assert len(items) == 100 and all(item.retry_count == 0 for item in items)
    else:

        def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
            queue.enqueue_many(fresh)  # the backlog keeps its size
            return ([item.id for item in queue.dequeue(100)],), {}

        assert run(benchmark, lambda ids: queue.ack(ids), items=100, rounds=rounds, setup=setup) == 100
    queue.close()
