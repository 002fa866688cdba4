"""``CloudSyncQueue.rekey``: re-seal every stored payload under the newest key.

A read-only pass opens everything first, so that a missing key or a damaged item changes
nothing. Then each table is rewritten in chunks of one transaction each (enqueues of
other processes get their turn between chunks) with ``secure_delete`` fully on, and the
file is vacuumed and its WAL truncated: the old texts are not left in free pages or in
WAL frames. (The flash below may still hold old blocks until it reuses them: see the
README on keeping the key off the card.)
"""

import logging
import sqlite3
from typing import Any, Iterator, List, Optional, Tuple

from .._errors import CloudSyncError
from .seal import Sealer, unsealed_ids
from .sql import DELETE_COUNTER_SQL, NEXT_ID_SQL, REKEY_TARGET_KEY, SET_COUNTER_SQL, write_transaction
from .store import Store

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# Each table of sealed texts and the column of the item id its seals are bound to (a
# destination's dead letter keeps the item's id, beside a row id of its own).
TABLES = (("sync_queue", "id"), ("sync_dead_letters", "id"), ("sync_dead_deliveries", "item_id"))
CHUNK = 500
_SELECT = "SELECT id, {item}, payload, priority FROM {table} WHERE id > ? ORDER BY id LIMIT ?"
_UPDATE = "UPDATE {table} SET payload = ? WHERE id = ?"
# Ids are 64-bit: below the first, and a mark for "no chunk left" (SQLite never hands out 2**63).
FIRST = -(2**63)
STOP = 2**63


def _after(conn: sqlite3.Connection, table: str, item: str, last: int) -> List[Tuple[Any, ...]]:
    """The next chunk of ``table``'s ``(row id, item id, payload, priority)`` rows with row ids
    above ``last``."""
    return conn.execute(_SELECT.format(table=table, item=item), (last, CHUNK)).fetchall()


def _each_chunk(conn: sqlite3.Connection, table: str, item: str) -> Iterator[List[Tuple[Any, ...]]]:
    last = FIRST
    while True:
        rows = _after(conn, table, item, last)
        if not rows:
            return
        yield rows
        last = rows[-1][0]


def _reseal_chunk(
    conn: sqlite3.Connection,
    sealer: Sealer,
    queue_id: str,
    table: Tuple[str, str],
    last: int,
    sealed_from: Optional[int],
) -> Tuple[int, int]:
    """Re-seal the chunk after ``last`` in one transaction; return (re-sealed, last id, or ``STOP``).
    A plain item where items must be sealed (``sealed_from``) stays as it is, to be refused:
    sealing it would vouch for a text written without the key."""
    name, item = table
    with write_transaction(conn):
        rows = _after(conn, name, item, last)
        planted = unsealed_ids([row[1:] for row in rows], sealed_from)
        changed = [
            (sealer.reseal(text, item_id, priority, queue_id, name), row_id)
            for row_id, item_id, text, priority in rows
            if not sealer.is_current(text) and item_id not in planted
        ]
        conn.executemany(_UPDATE.format(table=name), changed)
    return len(changed), rows[-1][0] if rows else STOP


def rekey(store: Store) -> int:
    """Re-seal what is not under the newest key; return how many items were re-sealed."""
    sealer = store.sealer
    if sealer is None:
        raise CloudSyncError("rekey needs an encryption_key: the queue was opened without one")
    sealer.refresh()
    count = 0
    with store.lock:
        conn = store.conn()
        queue_id = store.queue_id
        sealed_from = store.read_sealed_from(conn)
        for name, item in TABLES:
            for rows in _each_chunk(conn, name, item):
                sealer.open_rows([row[1:] for row in rows], queue_id, name)
        # Kept until every chunk is done: a rekey cut short shows in get_stats() and check.
        with write_transaction(conn):
            conn.execute(SET_COUNTER_SQL, (REKEY_TARGET_KEY, sealer.header))
        conn.execute("PRAGMA secure_delete = ON")
        try:
            for table in TABLES:
                last = FIRST
                while last != STOP:
                    changed, last = _reseal_chunk(conn, sealer, queue_id, table, last, sealed_from)
                    count += changed
            with write_transaction(conn):
                conn.execute(DELETE_COUNTER_SQL, (REKEY_TARGET_KEY,))
        finally:
            conn.execute("PRAGMA secure_delete = FAST")
        # Every item is sealed now (unless a process without the key wrote some meanwhile):
        # from here on a plain one anywhere in the file is refused, not only the newer ones.
        with write_transaction(conn):
            mark = store.mark_sealed(conn, int(conn.execute(NEXT_ID_SQL).fetchone()[0]), again=True)
        store.sealed_from = mark
        store.compact()
        busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
    if busy:
        logger.warning(
            "rekey of %r: another connection holds the WAL; old texts stay in it until it resets", store.path
        )
    return count
