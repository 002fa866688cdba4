"""The dead-letter tables: items the endpoint refused for good, kept for an operator.

``maybe_flush`` moves items here (see ``_flush.flusher``): a queue without destinations to
``sync_dead_letters``, a named destination to ``sync_dead_deliveries`` (its own, with a
copy of the payload). These functions list them, put them back in the queue, or drop them,
on the queue's ``Store``; ``destinations`` maps the ids of the destinations meant to their
names (None: the queue has none).
"""

import sqlite3
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import _codec, _validate
from .._types import ROW_COLUMNS, DeadLetter, Priority
from . import batchkeys, seal
from .destinations import dead_count
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


# A destination's dead letters: the item row with its id as the item's (the seal is bound
# to it), then who refused it.
_DEAD_DELIVERY_COLUMNS = ", ".join(("item_id", *_DEAD_COLUMNS[1:], "destination"))
SELECT_DEAD_DELIVERIES_SQL = (
    f"SELECT {_DEAD_DELIVERY_COLUMNS} FROM sync_dead_deliveries WHERE destination = ? ORDER BY dead_at, id LIMIT ?"
)
SELECT_REQUEUED_SQL = "SELECT item_id, payload, priority, ttl_seconds FROM sync_dead_deliveries WHERE destination = ?"
STILL_STORED_SQL = "SELECT 1 FROM sync_queue WHERE id = ?"
# The item is back on the destination's list: its bit in the route, and a delivery row due
# now (its cursor is past the item, so the scan of new items would not find it again).
ROUTE_AGAIN_SQL = (
    "UPDATE sync_routes SET destinations = destinations | ?2, pending = pending + 1"
    " WHERE item_id = ?1 AND NOT destinations & ?2"
)
STORE_AGAIN_SQL = (
    "INSERT INTO sync_queue (id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at)"
    " VALUES (?, ?, ?, ?, ?, 0, 0)"
)
NEW_ROUTE_SQL = (
    "INSERT INTO sync_routes (item_id, destinations, pending, bytes) VALUES (?, ?, 1, length(CAST(? AS BLOB)))"
)
DUE_AGAIN_SQL = (
    "INSERT INTO sync_deliveries (destination, item_id, priority, retry_count, next_retry_at)"
    " VALUES (?, ?, ?, 0, 0) ON CONFLICT(destination, item_id) DO UPDATE SET retry_count = 0,"
    " next_retry_at = 0, rejections = 0, last_status = NULL, last_error = NULL"
)
DELETE_DEAD_DELIVERY_SQL = "DELETE FROM sync_dead_deliveries WHERE destination = ? AND item_id = ?"
DELETE_DEAD_DELIVERIES_SQL = "DELETE FROM sync_dead_deliveries WHERE destination = ?"


def list_dead(store: Store, limit: Any, destinations: Optional[Dict[int, str]] = None) -> List[DeadLetter]:
    """Return up to ``limit`` dead letters, oldest first (with ``destinations``: theirs, and
    any a queue without destinations left in the file before)."""
    count = _validate.integer("limit", limit, 1)
    with store.lock:
        conn = store.conn()
        rows = conn.execute(SELECT_DEAD_SQL, (count,)).fetchall()
        for ident in destinations or ():
            rows += conn.execute(SELECT_DEAD_DELIVERIES_SQL, (ident, count)).fetchall()
        queue_id = store.queue_id
    if destinations is not None:
        dead_at = _DEAD_COLUMNS.index("dead_at")
        rows = sorted(rows, key=lambda row: (row[dead_at], row[0]))[:count]
    # Dead letters stay sealed in the file; only the copies handed out are opened, their
    # error texts too (a server's may echo the payload).
    rows = [
        row[:_LAST_ERROR] + (open_note(store.sealer, row[_LAST_ERROR], queue_id),) + row[_LAST_ERROR + 1 :]
        for row in rows
    ]
    names = destinations or {}
    return seal.decoded(
        store.sealer, rows, queue_id, "sync_dead_letters", lambda found: [_decode(r, names) for r in found]
    )


def open_note(sealer: Optional[seal.Sealer], text: Optional[str], queue_id: str) -> Optional[str]:
    """A stored error text as it reads: opened when sealed (a placeholder without the key)."""
    if not isinstance(text, str) or not text.startswith(seal.MARK):
        return text
    return seal.SEALED_NOTE if sealer is None else sealer.open_note(text, queue_id, "last_error")


def count_dead(conn: sqlite3.Connection, destination: Optional[int] = None) -> int:
    """Return how many items are in the dead-letter table (of the destination of that id)."""
    if destination is not None:
        return dead_count(conn, destination)
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


def requeue_for(store: Store, ids: Optional[Sequence[int]], destination: int) -> int:
    """Put a destination's dead letters (None: all) back on its list, due now, in one
    transaction; return how many. An item the other destinations still hold gets the
    destination's bit again; one that had left the file comes back under its id, with a
    fresh TTL, for this destination alone."""
    chunks = _id_chunks(ids)
    wanted = None if chunks is None else {item for chunk in chunks for item in chunk}
    bit = 1 << destination
    with store.write() as conn:
        now = store.now()
        batchkeys.forget_requeued(conn, chunks)
        moved = 0
        for item_id, payload, priority, ttl in conn.execute(SELECT_REQUEUED_SQL, (destination,)).fetchall():
            if wanted is not None and item_id not in wanted:
                continue
            if conn.execute(STILL_STORED_SQL, (item_id,)).fetchone() is None:
                conn.execute(STORE_AGAIN_SQL, (item_id, payload, priority, now, ttl))
                conn.execute(NEW_ROUTE_SQL, (item_id, bit, payload))
            else:
                conn.execute(ROUTE_AGAIN_SQL, (item_id, bit))
            conn.execute(DUE_AGAIN_SQL, (destination, item_id, priority))
            conn.execute(DELETE_DEAD_DELIVERY_SQL, (destination, item_id))
            moved += 1
        return moved


def drop_for(store: Store, ids: Optional[Sequence[int]], destination: int) -> int:
    """Delete a destination's dead letters (None: all) for good; return how many."""
    chunks = _id_chunks(ids)
    with store.write() as conn:
        if chunks is None:
            return int(conn.execute(DELETE_DEAD_DELIVERIES_SQL, (destination,)).rowcount)
        items = [(destination, item) for chunk in chunks for item in chunk]
        return int(conn.executemany(DELETE_DEAD_DELIVERY_SQL, items).rowcount)


def drop(store: Store, ids: Optional[Sequence[int]]) -> int:
    """Delete dead letters (None: all) for good, in one transaction; return how many."""
    chunks = _id_chunks(ids)
    with store.write() as conn:
        if chunks is None:
            return int(conn.execute(DELETE_ALL_SQL).rowcount)
        return sum(conn.execute(DELETE_SQL[len(chunk)], chunk).rowcount for chunk in chunks)


def _decode(row: Tuple[Any, ...], names: Dict[int, str]) -> DeadLetter:
    row_id, text, priority, created_at, ttl, retries, next_retry_at, status, error, dead_at = row[:10]
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
        names.get(row[10]) if len(row) > 10 else None,
    )
