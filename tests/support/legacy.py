"""A stand-in for the earlier release: the documented schema, a connection per operation,
``json.dumps(default=str)`` and the default rollback journal. The tests use it to write
databases that the current release must open unchanged; the benchmarks measure it as the
reference pattern."""

import json
import sqlite3
import time
from typing import Any, Dict, List, Sequence, Tuple

DDL = """
CREATE TABLE IF NOT EXISTS sync_queue (
id INTEGER PRIMARY KEY AUTOINCREMENT,
payload TEXT NOT NULL,
priority INTEGER NOT NULL,
created_at REAL NOT NULL,
ttl_seconds INTEGER NOT NULL,
retry_count INTEGER NOT NULL DEFAULT 0,
next_retry_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS idx_sync_queue_priority
ON sync_queue(priority, next_retry_at);
"""


def create(path: str) -> None:
    """Create the documented table and index, as the earlier release did on construction."""
    conn = sqlite3.connect(path)
    try:
        conn.executescript(DDL)
        conn.commit()
    finally:
        conn.close()


def enqueue(path: str, payload: Dict[str, Any], priority: int = 3, ttl_seconds: int = 86400) -> int:
    """Insert one item the way the earlier release did."""
    conn = sqlite3.connect(path)
    try:
        cursor = conn.execute(
            "INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds) VALUES (?, ?, ?, ?)",
            (json.dumps(payload, default=str), priority, time.time(), ttl_seconds),
        )
        conn.commit()
        return int(cursor.lastrowid)  # type: ignore[arg-type]
    finally:
        conn.close()


def dequeue(path: str, batch_size: int = 10) -> List[Tuple[Any, ...]]:
    """Select eligible rows in the documented order and decode payloads with ``json``."""
    now = time.time()
    conn = sqlite3.connect(path)
    try:
        found = conn.execute(
            "SELECT id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at FROM sync_queue"
            " WHERE next_retry_at <= ? AND created_at + ttl_seconds > ?"
            " ORDER BY priority ASC, next_retry_at ASC LIMIT ?",
            (now, now, batch_size),
        ).fetchall()
    finally:
        conn.close()
    return [(r[0], json.loads(r[1]), *r[2:]) for r in found]


def ack(path: str, ids: Sequence[int]) -> int:
    """Delete the ids, in chunks of 500, on a connection of its own."""
    conn = sqlite3.connect(path)
    try:
        deleted = 0
        for start in range(0, len(ids), 500):
            chunk = list(ids[start : start + 500])
            deleted += conn.execute(
                f"DELETE FROM sync_queue WHERE id IN ({','.join('?' * len(chunk))})", chunk
            ).rowcount
        conn.commit()
        return deleted
    finally:
        conn.close()
