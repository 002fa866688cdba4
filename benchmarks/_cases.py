"""One definition of each scenario that the CI gate measures: the queue's work and its floor's.

A ``Case`` is one timed call (``work``) with what it needs: ``setup`` prepares, untimed, the
state of each call and returns its arguments (None: no setup), ``items`` is how many items
one call handles, ``stored`` counts what the case's file holds now. The pytest-benchmark
scenarios (``test_bench_*.py``) and the gate (``gate.py``) both build their cases here, so
the two measure the same work. ``impl`` is ``"queue"`` (whichever backend is routed in) or
``"floor"`` (see ``_support``).
"""

import gc
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from _support import (
    Row,
    Setup,
    SplicingUploader,
    floor_chunks,
    floor_connection,
    floor_flush,
    floor_insert_many,
    floor_select,
    fresh_queue,
    id_chunk_params,
    payloads,
    rows,
)

from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync._store import sql

THREADS = 8


@dataclass
class Case:
    """One timed call and its untimed preparation."""

    work: Callable[..., Any]
    items: int
    stored: Callable[[], int]
    setup: Optional[Setup] = None


def settle() -> None:
    """Collect earlier calls' garbage and write out their dirty pages: not the next call's cost."""
    gc.collect()
    os.sync()


def time_call(case: Case) -> float:
    """Seconds of one call of ``case.work``, on the state its ``setup`` prepared untimed."""
    args, kwargs = case.setup() if case.setup else ((), {})
    settle()
    started = time.perf_counter()
    case.work(*args, **kwargs)
    return time.perf_counter() - started


def _count(conn: sqlite3.Connection) -> int:
    return int(conn.execute(sql.COUNT_SQL).fetchone()[0])


def enqueue_single(path: str, impl: str, durability: str, count: int) -> Case:
    """``count`` single enqueues, one commit each, on a queue that keeps growing."""
    if impl == "floor":
        conn = floor_connection(path, durability)
        prepared = rows(count)

        def insert() -> None:
            for row in prepared:
                conn.execute(sql.INSERT_SQL, row)

        return Case(insert, count, lambda: _count(conn))
    queue = fresh_queue(path, durability=durability)
    items = payloads(count)

    def enqueue() -> None:
        for payload in items:
            queue.enqueue(payload)

    return Case(enqueue, count, queue.pending_count)


def _fresh_floors(path: str, prepared: Sequence[Row] = ()) -> Tuple[List[sqlite3.Connection], Setup]:
    """A setup that gives each call a new floor file holding ``prepared``, and the list of
    connections it opened (the last is the current call's)."""
    conns: List[sqlite3.Connection] = []

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if conns:
            conns[-1].close()
        conns.append(floor_connection(path))
        if prepared:
            floor_insert_many(conns[-1], prepared)
        return (), {}

    return conns, setup


def _fresh_queues(
    path: str, prepared: Sequence[Row] = (), args: Tuple[Any, ...] = ()
) -> Tuple[List[CloudSyncQueue], Setup]:
    """A setup that gives each call a new queue file holding ``prepared`` and the call
    arguments ``args``, and the list of queues it opened (the last is the current call's)."""
    queues: List[CloudSyncQueue] = []

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if queues:
            queues[-1].close()
        queues.append(fresh_queue(path))
        if prepared:
            queues[-1]._insert_rows(list(prepared))
        return args, {}

    return queues, setup


def enqueue_many(path: str, impl: str, count: int) -> Case:
    """One ``enqueue_many`` of ``count`` items into a new, empty file per call."""
    if impl == "floor":
        prepared = rows(count)
        conns, setup_floor = _fresh_floors(path)
        return Case(lambda: floor_insert_many(conns[-1], prepared), count, lambda: _count(conns[-1]), setup_floor)
    queues, setup = _fresh_queues(path, args=(payloads(count),))
    return Case(lambda batch: queues[-1].enqueue_many(batch), count, lambda: queues[-1].pending_count(), setup)


def fill(path: str, count: int) -> str:
    """A new queue file holding ``count`` eligible items, for the read cases; returns ``path``."""
    with fresh_queue(path) as queue:
        queue.enqueue_many(payloads(count))
    return path


def read(path: str, impl: str, method: str, count: int) -> Case:
    """``dequeue`` or ``peek`` of ``count`` items from a file made by ``fill`` (changes nothing)."""
    if impl == "floor":
        conn = floor_connection(path, fresh=False)
        return Case(
            lambda: floor_select(conn, sql.SELECT_ELIGIBLE_SQL, count, time.time()), count, lambda: _count(conn)
        )
    queue = CloudSyncQueue(path)
    return Case(getattr(queue, method), count, queue.pending_count, lambda: ((count,), {}))


def ack_nack(path: str, impl: str, operation: str, count: int) -> Case:
    """``ack`` or ``nack`` of ``count`` ids, all stored, in a new file per call."""
    prepared = rows(count)
    ids = list(range(1, count + 1))
    if impl == "floor":
        chunks = id_chunk_params(ids)
        conns, setup_floor = _fresh_floors(path, prepared)

        def change() -> int:
            if operation == "ack":
                return floor_chunks(conns[-1], sql.ACK_SQL, (), chunks)
            return floor_chunks(conns[-1], sql.NACK_SQL, (time.time() + 60.0,), chunks)

        return Case(change, count, lambda: _count(conns[-1]), setup_floor)
    queues, setup = _fresh_queues(path, prepared, (ids,))

    def target(batch: List[int]) -> int:
        return queues[-1].ack(batch) if operation == "ack" else queues[-1].nack(batch)

    return Case(target, count, lambda: queues[-1].pending_count(), setup)


def flush(path: str, impl: str, count: int, uploader: Any = None) -> Case:
    """A flush of ``count`` stored items, accepted at once (by ``uploader``, default a
    ``SplicingUploader``), from a new file per call."""
    prepared = rows(count)
    if impl == "floor":
        conns, setup_floor = _fresh_floors(path, prepared)
        return Case(lambda: floor_flush(conns[-1]), count, lambda: _count(conns[-1]), setup_floor)
    target = SplicingUploader() if uploader is None else uploader
    queues, setup = _fresh_queues(path, prepared)
    return Case(lambda: queues[-1].maybe_flush(target), count, lambda: queues[-1].pending_count(), setup)


def in_threads(work: Callable[[int], None]) -> None:
    """Run ``work(worker)`` in ``THREADS`` threads at once and wait for all of them."""
    workers = [threading.Thread(target=work, args=(worker,)) for worker in range(THREADS)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


def threads(path: str, impl: str, durability: str, per_thread: int) -> Case:
    """``THREADS`` threads each enqueueing ``per_thread`` items one at a time: the queue's
    group commit, against the floor's own best (a connection per thread, one autocommit
    INSERT per item)."""
    if impl == "floor":
        conns = [floor_connection(path, durability, fresh=not worker) for worker in range(THREADS)]
        prepared = rows(per_thread)

        def insert(worker: int) -> None:
            conn = conns[worker]
            for row in prepared:
                conn.execute(sql.INSERT_SQL, row)

        return Case(lambda: in_threads(insert), per_thread * THREADS, lambda: _count(conns[0]))
    queue = fresh_queue(path, durability=durability)
    items = payloads(per_thread)

    def enqueue(worker: int) -> None:
        for payload in items:
            queue.enqueue(payload)

    return Case(lambda: in_threads(enqueue), per_thread * THREADS, queue.pending_count)
