"""Raw SQL beside the queue's API, on the queue's own connection: for tests that look at
or change stored rows and pragmas directly. The one place tests reach into the queue."""

import sqlite3
from typing import Any, Sequence

from pyv_edge_agent.cloud_sync import CloudSyncQueue


def connection(queue: CloudSyncQueue) -> sqlite3.Connection:
    """The queue's open connection (opened again if a quarantine dropped it)."""
    return queue._store.conn()


def execute(queue: CloudSyncQueue, sql: str, params: Sequence[Any] = ()) -> sqlite3.Cursor:
    """Run one statement on the queue's connection, under its lock."""
    with queue._store.lock:
        return connection(queue).execute(sql, params)
