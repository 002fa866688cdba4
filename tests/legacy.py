"""A stand-in for the earlier release: the documented schema, a connection per operation,
``json.dumps(default=str)`` and the default rollback journal. Used to write databases that
the current release must open unchanged."""

import json
import sqlite3
import time
from typing import Any, Dict

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
