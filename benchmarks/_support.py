"""What the queue is measured against: the SQLite floor, the reference pattern and persist-queue.

Floor: the queue's own SQL through the stdlib ``sqlite3`` on a connection configured like the
queue's, with every parameter built before the clock starts and nothing decoded. Reference:
the earlier release's pattern (``tests/support/legacy.py``): a connection opened per operation,
``json`` for payloads, the default rollback journal. persist-queue: its ``SQLiteAckQueue``
with the JSON serialiser (a bench-only dependency; scenarios skip without it).
"""

import os
import sqlite3
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import orjson
import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue, Priority, QueueItem, _codec
from pyv_edge_agent.cloud_sync._store import schema
from pyv_edge_agent.cloud_sync._store import sql as _sql

# The earlier release's pattern lives with the tests' helpers, which write legacy databases
# with it (on sys.path already under pytest; gate.py runs without it).
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "support"))
import legacy  # noqa: E402

Row = Tuple[str, int, float, int]
# The ``size`` fixture (full size when measuring, small in a plain run) and a
# pytest-benchmark setup callable.
Size = Callable[[int, int], int]
Setup = Callable[[], Tuple[Tuple[Any, ...], Dict[str, Any]]]


def run(
    benchmark: Any,
    target: Callable[..., Any],
    *,
    items: int,
    rounds: int,
    setup: Optional[Callable[[], Tuple[Tuple[Any, ...], dict]]] = None,
    **extra: Any,
) -> Any:
    """Time ``target`` for ``rounds`` rounds of one call each (after one warm-up round), each
    on the state ``setup`` prepares, recording how many items one call handles."""
    benchmark.extra_info["items"] = items
    benchmark.extra_info.update(extra)
    return benchmark.pedantic(target, setup=setup, rounds=rounds, iterations=1, warmup_rounds=1 if rounds > 1 else 0)


def remove_db(path: str) -> None:
    """Delete a database file and its WAL companions."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)


def fresh_queue(path: str, **options: Any) -> CloudSyncQueue:
    """A queue on a new, empty file."""
    remove_db(path)
    return CloudSyncQueue(path, **options)


def payloads(count: int, start: int = 0) -> List[Dict[str, Any]]:
    """Typical sensor readings (about 70 bytes of JSON each)."""
    return [{"sensor": "motor", "value": float(i) * 0.5, "seq": i, "unit": "rpm"} for i in range(start, start + count)]


def rows(count: int, priority: int = 3, created_at: Optional[float] = None, ttl: int = 86400) -> List[Row]:
    """Insert parameters for ``payloads(count)``, built ahead of any timing."""
    now = time.time() if created_at is None else created_at
    return [(orjson.dumps(p).decode(), priority, now, ttl) for p in payloads(count)]


# -- the SQLite floor -------------------------------------------------------------------


def floor_connection(path: str, durability: str = "full", *, fresh: bool = True) -> sqlite3.Connection:
    """A raw connection on a queue file (a new, empty one unless ``fresh=False``), configured
    exactly as the queue configures its own."""
    if fresh:
        remove_db(path)
    CloudSyncQueue(path, durability=durability).close()
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, cached_statements=256)
    schema.configure(conn, durability, 30.0)
    return conn


def floor_insert_many(conn: sqlite3.Connection, prepared: Sequence[Row]) -> None:
    """``enqueue_many``'s SQL: one transaction of INSERTs."""
    conn.execute("BEGIN IMMEDIATE")
    conn.executemany(_sql.INSERT_SQL, prepared)
    conn.execute("COMMIT")


def floor_select(conn: sqlite3.Connection, sql: str, limit: int, now: float) -> List[Tuple[Any, ...]]:
    """``dequeue``'s SQL: one query per priority, fetched and not decoded."""
    found: List[Tuple[Any, ...]] = []
    for level in (1, 2, 3, 4):
        found += conn.execute(sql, (level, now, now, limit - len(found))).fetchall()
        if len(found) >= limit:
            break
    return found


def id_chunk_params(ids: Sequence[int]) -> List[Tuple[int, ...]]:
    """``WHERE id IN (...)`` parameters in chunks of 512, padded like the queue's."""
    chunks = []
    for start in range(0, len(ids), 512):
        chunk = list(ids[start : start + 512])
        shape = next(s for s in _codec.ID_CHUNK_SHAPES if s >= len(chunk))
        chunks.append(tuple(chunk + [chunk[-1]] * (shape - len(chunk))))
    return chunks


def floor_chunks(conn: sqlite3.Connection, statements: Dict[int, str], prefix: Tuple[Any, ...], chunks: Any) -> int:
    """ack/nack's SQL: one statement per id chunk in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    changed = sum(conn.execute(statements[len(chunk)], prefix + chunk).rowcount for chunk in chunks)
    conn.execute("COMMIT")
    return changed


def floor_flush(conn: sqlite3.Connection, batch_items: int = 500, lease: float = 300.0) -> int:
    """The flush path's SQL per batch, as ``maybe_flush`` runs it for a batch the endpoint
    accepts: claim (select, lease the rows, record the lease) in one transaction, splice the
    stored bytes, then delete, count and end the lease in another."""
    sent = 0
    token = 0
    while True:
        now = time.time()
        conn.execute("BEGIN IMMEDIATE")
        if not floor_select(conn, _sql.SELECT_CLAIM_SQL, 1, now):
            conn.execute("COMMIT")
            return sent
        batch = floor_select(conn, _sql.SELECT_CLAIM_SQL, batch_items, now)
        chunks = id_chunk_params([row[0] for row in batch])
        token += 1
        for chunk in chunks:
            conn.execute(_sql.RELEASE_SQL[len(chunk)], (now + lease,) + chunk)
        conn.execute(_sql.DELETE_EXPIRED_LEASES_SQL, (now,))
        conn.execute(_sql.INSERT_LEASE_SQL, (str(token), len(batch), now + lease))
        conn.execute("COMMIT")
        body = b"[" + b",".join([row[1] for row in batch]) + b"]"
        assert body
        conn.execute("BEGIN IMMEDIATE")
        deleted = sum(conn.execute(_sql.ACK_SQL[len(chunk)], chunk).rowcount for chunk in chunks)
        for chunk in chunks:
            conn.execute(_sql.FORGET_REJECTIONS_SQL[len(chunk)], chunk)
        conn.execute(_sql.ADD_COUNTER_SQL, ("messages_sent_today", deleted))
        conn.execute(_sql.ADD_COUNTER_SQL, ("messages_sent_total", deleted))
        conn.execute(_sql.SET_COUNTER_SQL, ("last_success_at", now))
        conn.execute(_sql.DELETE_LEASE_SQL, (str(token),))
        conn.execute("COMMIT")
        sent += deleted


# -- the reference implementation's pattern ---------------------------------------------


class ReferenceQueue:
    """The earlier release's pattern (``tests/support/legacy.py``), building ``QueueItem`` objects as
    it did."""

    def __init__(self, path: str) -> None:
        remove_db(path)
        self.path = path
        legacy.create(path)

    def enqueue(self, payload: Dict[str, Any], priority: int = 3, ttl_seconds: int = 86400) -> int:
        """Insert one item on its own connection."""
        return legacy.enqueue(self.path, payload, priority, ttl_seconds)

    def dequeue(self, batch_size: int = 10) -> List[QueueItem]:
        """Select eligible items in order and decode them with ``json``."""
        return [
            QueueItem(r[0], r[1], Priority(r[2]), r[3], r[4], r[5], r[6]) for r in legacy.dequeue(self.path, batch_size)
        ]

    def ack(self, ids: Sequence[int]) -> int:
        """Delete the ids on a connection of its own."""
        return legacy.ack(self.path, ids)


# -- persist-queue ----------------------------------------------------------------------


def persist_queue(path: str, **options: Any) -> Any:
    """A persist-queue ``SQLiteAckQueue`` in a new directory (skips when it is not installed)."""
    persistqueue = pytest.importorskip("persistqueue", reason="persist-queue is a bench-only dependency")
    from persistqueue.serializers import json as pq_json

    if os.path.isdir(path):
        for name in os.listdir(path):
            os.remove(os.path.join(path, name))
    return persistqueue.SQLiteAckQueue(path, serializer=pq_json, **options)


# Encryption at rest, for the benchmarks that compare each cipher with none.
CIPHER_KEY = bytes(range(32))
CIPHERS = ["none", "chacha20-poly1305", "aes-256-gcm"]


def cipher_options(cipher: str) -> Dict[str, Any]:
    """The queue options for ``cipher`` ("none": no key)."""
    return {} if cipher == "none" else {"encryption_key": CIPHER_KEY, "encryption_cipher": cipher}


class SplicingUploader:
    """Accepts every batch at once, taking the spliced body (the path HTTPCloudUploader uses)."""

    def __init__(self) -> None:
        self.received = 0

    def post_batch(self, items: Sequence[Dict[str, Any]]) -> bool:
        raise AssertionError("the flush must take the post_encoded_batch path")

    def post_encoded_batch(self, body: bytes, count: int) -> bool:
        self.received += count
        return True
