"""The statements of the queue and its flush, and the write transaction they run in.

Each statement is written once, here; the modules that run them import them. ``WHERE id
IN (...)`` comes in one prepared statement per chunk shape of ``_codec.id_chunks``, so that
a handful of cached statements serve every list length. The schema is in ``schema``; the
statements private to storage, clock and dead letters are in those modules.
"""

import contextlib
import sqlite3
from typing import Dict, Iterator

from .._types import ID_CHUNK_SHAPES, ROW_COLUMNS


def by_id_chunk_shape(template: str) -> Dict[int, str]:
    """Fill ``{ids}`` in ``template`` with a placeholder list for every chunk shape."""
    return {size: template.format(ids="(" + ",".join("?" * size) + ")") for size in ID_CHUNK_SHAPES}


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


# -- items ------------------------------------------------------------------------------

# Every SELECT of items names its columns in this order (``_types.Column``).
_COLUMNS = ", ".join(ROW_COLUMNS)
INSERT_SQL = "INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds) VALUES (?, ?, ?, ?)"
LAST_ROWID_SQL = "SELECT last_insert_rowid()"
# A sealing queue inserts with explicit ids (its associated data names them): the ids that
# AUTOINCREMENT would hand out next, read under the same transaction's write lock.
INSERT_ID_SQL = "INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds, id) VALUES (?, ?, ?, ?, ?)"
NEXT_ID_SQL = (
    "SELECT MAX(COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'sync_queue'), 0),"
    " COALESCE((SELECT MAX(id) FROM sync_queue), 0)) + 1"
)
# One query per priority: with ``priority = ?`` the index (priority, next_retry_at, rowid)
# yields rows already in the documented order, and items parked for a later retry are
# skipped by the range instead of scanned.
SELECT_ELIGIBLE_SQL = (
    f"SELECT {_COLUMNS} FROM sync_queue"
    " WHERE priority = ? AND next_retry_at <= ? AND created_at + ttl_seconds > ?"
    " ORDER BY next_retry_at, id LIMIT ?"
)
# Deletes items by id: an ack, an eviction, the move to the dead-letter table.
ACK_SQL = by_id_chunk_shape("DELETE FROM sync_queue WHERE id IN {ids}")
NACK_SQL = by_id_chunk_shape("UPDATE sync_queue SET retry_count = retry_count + 1, next_retry_at = ? WHERE id IN {ids}")
# Counting walks the small index; summing the bytes reads every payload (~30x slower).
COUNT_SQL = "SELECT COUNT(*) FROM sync_queue"
STATS_SQL = (
    "SELECT COUNT(*), MIN(created_at), COALESCE(SUM(retry_count), 0), COALESCE(SUM(retry_count > 0), 0) FROM sync_queue"
)
DEPTH_BY_PRIORITY_SQL = (
    "SELECT priority, COUNT(*), COALESCE(SUM(created_at + ttl_seconds <= ?), 0) FROM sync_queue GROUP BY priority"
)
# With ``priority = ?`` the index yields the earliest retry time first; expired items are
# stepped over.
NEXT_DUE_SQL = (
    "SELECT next_retry_at FROM sync_queue WHERE priority = ? AND created_at + ttl_seconds > ?"
    " ORDER BY next_retry_at LIMIT 1"
)

# -- counters in sync_meta --------------------------------------------------------------

READ_COUNTER_SQL = "SELECT value FROM sync_meta WHERE key = ?"
ADD_COUNTER_SQL = (
    "INSERT INTO sync_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = value + excluded.value"
)
SET_COUNTER_SQL = (
    "INSERT INTO sync_meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value"
)
# From the first sealed item on, the file's items are sealed from this id on (``seal``):
# every one when the file held no plain item then, else those written from then on, so
# that plain items from before encryption was turned on wait for ``rekey``.
SEALED_FROM_KEY = "sealed_from_id"
SEALED_FROM_ALL = -(2**63)
UNSEALED_REFUSED_KEY = "unsealed_refused_total"
ANY_PLAIN_SQL = (
    "SELECT EXISTS (SELECT 1 FROM sync_queue WHERE substr(payload, 1, 1) <> '~')"
    " OR EXISTS (SELECT 1 FROM sync_dead_letters WHERE substr(payload, 1, 1) <> '~')"
)
FIRST_SEALED_SQL = (
    "SELECT MIN(id) FROM (SELECT id FROM sync_queue WHERE substr(payload, 1, 1) = '~'"
    " UNION ALL SELECT id FROM sync_dead_letters WHERE substr(payload, 1, 1) = '~')"
)
COUNT_UNSEALED_SQL = "SELECT COUNT(*) FROM sync_queue WHERE id >= ? AND substr(payload, 1, 1) <> '~'"
# Every destination's daily counter too (``dest.<name>.messages_sent_today``).
RESET_DAILY_SQL = (
    "UPDATE sync_meta SET value = 0 WHERE key = 'messages_sent_today'"
    " OR (substr(key, 1, 5) = 'dest.' AND key LIKE '%.messages_sent_today')"
)
DELETE_COUNTER_SQL = "DELETE FROM sync_meta WHERE key = ?"

# -- rekey: the key a rekey moves every item to, kept until it has ------------------------

REKEY_TARGET_KEY = "rekey_target"
REKEY_UNFINISHED_SQL = (
    "SELECT (SELECT COUNT(*) FROM sync_queue WHERE substr(payload, 1, length(?1)) IS NOT ?1)"
    " + (SELECT COUNT(*) FROM sync_dead_letters WHERE substr(payload, 1, length(?1)) IS NOT ?1)"
    " + (SELECT COUNT(*) FROM sync_dead_deliveries WHERE substr(payload, 1, length(?1)) IS NOT ?1)"
)

# -- the flush: claims, leases, rejections ------------------------------------------------

# The flush reads stored text as bytes so it can be spliced into a body without decoding.
_ROW = _COLUMNS.replace("payload", "CAST(payload AS BLOB)", 1)
SELECT_CLAIM_SQL = (
    f"SELECT {_ROW} FROM sync_queue"
    " WHERE priority = ? AND next_retry_at <= ? AND created_at + ttl_seconds > ?"
    " ORDER BY next_retry_at, id LIMIT ?"
)
SELECT_GROUP_SQL = (
    f"SELECT {_ROW} FROM sync_queue"
    " WHERE priority = ? AND next_retry_at = ? AND created_at + ttl_seconds > ? ORDER BY id LIMIT ?"
)
# Gives an item that cannot be opened back as it was claimed.
RESTORE_RETRY_SQL = "UPDATE sync_queue SET next_retry_at = ? WHERE id = ?"
# A batch held back by a failure with no answer becomes due now, its items still together
# (they share one stamp); priority IN lets the (priority, next_retry_at) index find them.
RESUME_HELD_SQL = "UPDATE sync_queue SET next_retry_at = ? WHERE priority IN (1, 2, 3, 4) AND next_retry_at = ?"
# The stamps of the batches waiting in a backoff (each batch shares one), leaving out those
# a flush holds under a live lease (their stamp is the lease's end): retry_now.
WAITING_STAMPS_SQL = (
    "SELECT DISTINCT next_retry_at FROM sync_queue WHERE priority IN (1, 2, 3, 4) AND next_retry_at > ?"
    " AND next_retry_at NOT IN (SELECT expires_at FROM sync_leases WHERE expires_at > ?)"
)
RELEASE_SQL = by_id_chunk_shape("UPDATE sync_queue SET next_retry_at = ? WHERE id IN {ids}")
FORGET_REJECTIONS_SQL = by_id_chunk_shape("DELETE FROM sync_rejections WHERE id IN {ids}")
COUNT_REJECTION_SQL = (
    "INSERT INTO sync_rejections (id, rejections, last_status, last_error) VALUES (?, 1, ?, ?)"
    " ON CONFLICT(id) DO UPDATE SET rejections = rejections + 1,"
    " last_status = excluded.last_status, last_error = excluded.last_error"
)
SELECT_EXHAUSTED_SQL = by_id_chunk_shape("SELECT id FROM sync_rejections WHERE rejections >= ? AND id IN {ids}")
MOVE_TO_DEAD_SQL = by_id_chunk_shape(
    "INSERT OR REPLACE INTO sync_dead_letters"
    " (id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at, last_status, last_error, dead_at)"
    " SELECT id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at, ?, ?, ?"
    " FROM sync_queue WHERE id IN {ids}"
)
INSERT_LEASE_SQL = "INSERT INTO sync_leases (token, items, expires_at) VALUES (?, ?, ?)"
EXTEND_LEASE_SQL = "UPDATE sync_leases SET expires_at = ? WHERE token = ?"
DELETE_LEASE_SQL = "DELETE FROM sync_leases WHERE token = ?"
DELETE_EXPIRED_LEASES_SQL = "DELETE FROM sync_leases WHERE expires_at <= ?"
IN_FLIGHT_SQL = "SELECT COALESCE(SUM(items), 0) FROM sync_leases WHERE expires_at > ?"
