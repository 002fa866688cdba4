"""The ``Idempotency-Key`` of each batch: random when the batch is first claimed, stored
with it, and the same on every retry of exactly that batch.

A key derived from the item ids (as it once was) is not unique: a dead letter requeued
keeps its id, a queue file cloned onto several gateways shares its ids, and a power cut in
``durability="fast"`` (or a restore from a backup) rolls ids back so that new items reuse
ids already sent. A deduplicating server then drops new data as a replay. So a batch gets
a random key, stored in ``sync_batch_keys`` under a digest of its item ids, in the same
transaction as its lease: a retry of the same items, in any process and after a restart,
finds it. It is forgotten when the batch is settled other than by a retry (accepted,
rejected, split, dead-lettered), when its items are regrouped, and when its items are
requeued from the dead-letter table, so that a different batch never reuses it.
"""

import sqlite3
import uuid
from typing import Iterable, Optional, Sequence, Tuple

from .sql import by_id_chunk_shape

SELECT_KEY_SQL = "SELECT batch_key FROM sync_batch_keys WHERE digest = ?"
INSERT_KEY_SQL = "INSERT INTO sync_batch_keys (digest, batch_key, first_id) VALUES (?, ?, ?)"
FORGET_SQL = "DELETE FROM sync_batch_keys WHERE digest = ?"
FORGET_FIRST_IDS_SQL = by_id_chunk_shape("DELETE FROM sync_batch_keys WHERE first_id IN {ids}")
FORGET_ALL_DEAD_SQL = "DELETE FROM sync_batch_keys WHERE first_id IN (SELECT id FROM sync_dead_letters)"
# A batch whose first item is gone (acked through ``ack()``, evicted, purged) can never be
# claimed again as it was.
COLLECT_SQL = "DELETE FROM sync_batch_keys WHERE first_id NOT IN (SELECT id FROM sync_queue)"


def _digest(ids: Sequence[int], scope: str) -> str:
    import hashlib  # on first use: a process that only enqueues never loads it

    return hashlib.sha256((scope + ",".join(map(str, ids))).encode()).hexdigest()[:32]


def key_for(conn: sqlite3.Connection, ids: Sequence[int], scope: str = "") -> str:
    """The key of the batch of ``ids`` (in the order sent) to the destination of ``scope``
    ("" for a queue's only one): the stored one when exactly these items were sent there
    before, else a new random one, stored. Call in a transaction."""
    digest = _digest(ids, scope)
    row = conn.execute(SELECT_KEY_SQL, (digest,)).fetchone()
    if row is not None:
        return str(row[0])
    key = uuid.uuid4().hex
    conn.execute(INSERT_KEY_SQL, (digest, key, ids[0]))
    return key


def forget(conn: sqlite3.Connection, ids: Sequence[int], scope: str = "") -> None:
    """Drop the key of the batch of ``ids`` to the destination of ``scope``: it will not be
    sent again as it was."""
    conn.execute(FORGET_SQL, (_digest(ids, scope),))


def forget_requeued(conn: sqlite3.Connection, chunks: Optional[Iterable[Tuple[int, ...]]]) -> None:
    """Drop the keys of batches led by dead letters about to be requeued (None: all of them),
    so that a requeued item goes out under a new key. Call before they leave the table."""
    if chunks is None:
        conn.execute(FORGET_ALL_DEAD_SQL)
        return
    for chunk in chunks:
        conn.execute(FORGET_FIRST_IDS_SQL[len(chunk)], chunk)


def collect(conn: sqlite3.Connection) -> None:
    """Drop the keys of batches that can no longer be claimed as they were."""
    conn.execute(COLLECT_SQL)
