"""Statements over id lists and the write transaction, shared by the modules that run them.

``WHERE id IN (...)`` comes in one prepared statement per chunk shape of
``_codec.id_chunks``, so that a handful of cached statements serve every list length.
"""

import contextlib
import sqlite3
from typing import Dict, Iterator

from . import _codec


def by_id_chunk_shape(template: str) -> Dict[int, str]:
    """Fill ``{ids}`` in ``template`` with a placeholder list for every chunk shape."""
    return {size: template.format(ids="(" + ",".join("?" * size) + ")") for size in _codec.ID_CHUNK_SHAPES}


ACK_SQL = by_id_chunk_shape("DELETE FROM sync_queue WHERE id IN {ids}")
NACK_SQL = by_id_chunk_shape("UPDATE sync_queue SET retry_count = retry_count + 1, next_retry_at = ? WHERE id IN {ids}")


@contextlib.contextmanager
def write_transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error.

    SQLite rolls a transaction back by itself on some errors (``SQLITE_FULL``), so the
    rollback is only issued while one is open: a failing ``ROLLBACK`` must not hide the
    original error.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
