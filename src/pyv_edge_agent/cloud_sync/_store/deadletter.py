"""The dead-letter table: items the endpoint refused for good, kept for an operator.

``maybe_flush`` moves items here (see ``_flush.flusher``); these functions list them, put them
back in the queue, or drop them, on the queue's ``Store``.
"""

import sqlite3
from typing import Any, List, Optional, Sequence, Tuple

from .. import _codec, _validate
from .._types import ROW_COLUMNS, DeadLetter, Priority
from . import batchkeys, seal
from .sql import by_id_chunk_shape
from .store import Store

# An item row (``_types.ROW_COLUMNS``) and what the dead-letter table adds.
_DEAD_COLUMNS = (*ROW_COLUMNS, "last_status", "last_error", "dead_at")
_LAST_ERROR = _DEAD_COLUMNS.index("last_error")
SELECT_DEAD_SQL = f"SELECT {', '.join(_DEAD_COLUMNS)} FROM sync_dead_letters ORDER BY dead_at, id LIMIT ?"
COUNT_DEAD_SQL = "SELECT COUNT(*) FROM sync_dead_letters"
# A requeued item starts afresh: no attempts, due now, and its TTL counted from now, so
# that an item an operator chose to resend is not already expired.
_REQUEUE = (
    "INSERT INTO sync_queue (id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at)"
    " SELECT id, payload, priority, ?, ttl_seconds, 0, 0 FROM sync_dead_letters"
)
REQUEUE_ALL_SQL = _REQUEUE
REQUEUE_SQL = by_id_chunk_shape(_REQUEUE + " WHERE id IN {ids}")
DELETE_ALL_SQL = "DELETE FROM sync_dead_letters"
DELETE_SQL = by_id_chunk_shape("DELETE FROM sync_dead_letters WHERE id IN {ids}")


def list_dead(store: Store, limit: Any) -> List[DeadLetter]:
    """Return up to ``limit`` dead letters, oldest first."""
    count = _validate.integer("limit", limit, 1)
    with store.lock:
        rows = store.conn().execute(SELECT_DEAD_SQL, (count,)).fetchall()
        queue_id = store.queue_id
    # Dead letters stay sealed in the file; only the copies handed out are opened, their
    # error texts too (a server's may echo the payload).
    rows = [
        row[:_LAST_ERROR] + (open_note(store.sealer, row[_LAST_ERROR], queue_id),) + row[_LAST_ERROR + 1 :]
        for row in rows
    ]
    return seal.decoded(store.sealer, rows, queue_id, "sync_dead_letters", lambda found: [_decode(r) for r in found])


def open_note(sealer: Optional[seal.Sealer], text: Optional[str], queue_id: str) -> Optional[str]:
    """A stored error text as it reads: opened when sealed (a placeholder without the key)."""
    if not isinstance(text, str) or not text.startswith(seal.MARK):
        return text
    return seal.SEALED_NOTE if sealer is None else sealer.open_note(text, queue_id, "last_error")


def count_dead(conn: sqlite3.Connection) -> int:
    """Return how many items are in the dead-letter table."""
    return int(conn.execute(COUNT_DEAD_SQL).fetchone()[0])


def _id_chunks(ids: Any) -> Optional[List[Tuple[int, ...]]]:
    """Validate ``ids`` (None: every dead letter) before anything is written."""
    return None if ids is None else _codec.id_chunks(ids)


def requeue(store: Store, ids: Optional[Sequence[int]]) -> int:
    """Move dead letters (None: all) back into the queue, in one transaction; return how many.

    A requeued item goes out under a new Idempotency-Key: a server may have cached its
    answer to the old one (a rejection, say) and would replay it forever."""
    chunks = _id_chunks(ids)
    with store.write() as conn:
        now = store.now()
        batchkeys.forget_requeued(conn, chunks)
        if chunks is None:
            moved = conn.execute(REQUEUE_ALL_SQL, (now,)).rowcount
            conn.execute(DELETE_ALL_SQL)
            return int(moved)
        moved = 0
        for chunk in chunks:
            moved += conn.execute(REQUEUE_SQL[len(chunk)], (now,) + chunk).rowcount
            conn.execute(DELETE_SQL[len(chunk)], chunk)
        return moved


def drop(store: Store, ids: Optional[Sequence[int]]) -> int:
    """Delete dead letters (None: all) for good, in one transaction; return how many."""
    chunks = _id_chunks(ids)
    with store.write() as conn:
        if chunks is None:
            return int(conn.execute(DELETE_ALL_SQL).rowcount)
        return sum(conn.execute(DELETE_SQL[len(chunk)], chunk).rowcount for chunk in chunks)


def _decode(row: Tuple[Any, ...]) -> DeadLetter:
    row_id, text, priority, created_at, ttl, retries, next_retry_at, status, error, dead_at = row
    return DeadLetter(
        row_id,
        _codec.decode_payload(text),
        Priority(priority),
        created_at,
        ttl,
        retries,
        next_retry_at,
        status,
        error,
        dead_at,
    )
