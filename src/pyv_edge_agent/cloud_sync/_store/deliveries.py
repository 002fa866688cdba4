"""Where a destination's delivery state lives, as the statements that read and change it.

A queue without destinations keeps each item's delivery state (``retry_count``,
``next_retry_at``) in its ``sync_queue`` row, exactly as earlier releases did: ``SINGLE``
holds those statements (the very ones of ``sql``), so that such a queue runs the same SQL
at the same speed. A named destination keeps its state in ``sync_deliveries``, one row per
item it still has to deliver, and reads the payload from ``sync_queue``
(``for_destination``). The flush and the facade take a ``Deliveries`` and never know which.

Every statement that takes the destination takes it as its first parameter (``?1``): call
it with ``deliveries.key + (...)`` (``key`` is empty for ``SINGLE``).
"""

from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .._types import ROW_COLUMNS
from .sql import (
    ACK_SQL,
    COUNT_REJECTION_SQL,
    COUNT_SQL,
    FORGET_REJECTIONS_SQL,
    MOVE_TO_DEAD_SQL,
    NACK_SQL,
    NEXT_DUE_SQL,
    RELEASE_SQL,
    RESTORE_RETRY_SQL,
    RESUME_HELD_SQL,
    SELECT_CLAIM_SQL,
    SELECT_ELIGIBLE_SQL,
    SELECT_EXHAUSTED_SQL,
    SELECT_GROUP_SQL,
    WAITING_STAMPS_SQL,
    by_id_chunk_shape,
)


@dataclass(frozen=True)
class Deliveries:
    """The statements of one destination's delivery state (see the module docstring).

    :param key: the parameters that name the destination, put before each statement's own.
    :param after_ack: statements run on the same id chunks after an ack, each with its
        own leading parameters: for a named destination, clearing its bit in the routes and
        removing the items no destination needs any more (none: the ack removed them).
    :param fresh: how a named destination finds items it has not claimed yet (None: they are
        rows of ``claim`` like any other).
    :param scope: what the destination's counters (``sync_meta`` keys) and batch-key
        digests start with, so that each destination keeps its own ("" for the only one).
    :param nack_by_hand: ``nack()``: a failed attempt on items a flush may not have claimed.
    :param count_rejection: one rejection of an item (parameters: id, status, error).
    :param exhausted: which of the ids were rejected at least ``max_attempts`` times
        (parameters: the limit, then the ids).
    :param forget_rejections: drop the rejection counts of settled items (None: they go
        with the delivery row).
    :param move_to_dead: copy items to the dead-letter table (parameters: status, error,
        when, then the ids) before they are removed.
    """

    key: Tuple[int, ...]
    eligible: str
    claim: str
    group: str
    count: str
    next_due: str
    waiting_stamps: str
    resume_held: str
    restore_retry: str
    release: Dict[int, str]
    ack: Dict[int, str]
    nack: Dict[int, str]
    nack_by_hand: Dict[int, str]
    count_rejection: str
    exhausted: Dict[int, str]
    move_to_dead: Dict[int, str]
    forget_rejections: Optional[Dict[int, str]] = None
    after_ack: Tuple[Tuple[Dict[int, str], Tuple[int, ...]], ...] = ()
    fresh: Optional["FreshScan"] = None
    scope: str = ""
    name: Optional[str] = None


@dataclass(frozen=True)
class FreshScan:
    """How a named destination finds the items it has not claimed yet: a scan of the items
    of one priority past its cursor (the last id its claims took or passed), keeping those
    whose route carries its ``bit``. Every item is examined once per destination, whatever
    the others' backlogs."""

    destination: int
    bit: int
    scan: str
    read_cursor: str
    write_cursor: str
    level_end: str
    eligible: str
    # Newest first: the scan runs down from the newest item, skipping those already
    # claimed, and the cursor moves only once every item past it was examined.
    newest_first: bool = False


SINGLE = Deliveries(
    key=(),
    eligible=SELECT_ELIGIBLE_SQL,
    claim=SELECT_CLAIM_SQL,
    group=SELECT_GROUP_SQL,
    count=COUNT_SQL,
    next_due=NEXT_DUE_SQL,
    waiting_stamps=WAITING_STAMPS_SQL,
    resume_held=RESUME_HELD_SQL,
    restore_retry=RESTORE_RETRY_SQL,
    release=RELEASE_SQL,
    ack=ACK_SQL,
    nack=NACK_SQL,
    nack_by_hand=NACK_SQL,
    count_rejection=COUNT_REJECTION_SQL,
    exhausted=SELECT_EXHAUSTED_SQL,
    move_to_dead=MOVE_TO_DEAD_SQL,
    forget_rejections=FORGET_REJECTIONS_SQL,
)

# The item row (``_types.ROW_COLUMNS``) of a delivery: the payload from the item, the
# delivery state from the destination's own row.
_STATE = {"retry_count": "d.retry_count", "next_retry_at": "d.next_retry_at", "priority": "d.priority"}
_COLUMNS = ", ".join(_STATE.get(column, f"q.{column}") for column in ROW_COLUMNS)
_ROW = _COLUMNS.replace("q.payload", "CAST(q.payload AS BLOB)", 1)
_FROM = "FROM sync_deliveries AS d JOIN sync_queue AS q ON q.id = d.item_id WHERE d.destination = ?"
_DUE = " AND d.priority = ? AND d.next_retry_at <= ? AND q.created_at + q.ttl_seconds > ?"

ELIGIBLE_SQL = f"SELECT {_COLUMNS} {_FROM}{_DUE} ORDER BY d.next_retry_at, d.item_id LIMIT ?"
CLAIM_SQL = f"SELECT {_ROW} {_FROM}{_DUE} ORDER BY d.next_retry_at, d.item_id LIMIT ?"
GROUP_SQL = (
    f"SELECT {_ROW} {_FROM} AND d.priority = ? AND d.next_retry_at = ? AND q.created_at + q.ttl_seconds > ?"
    " ORDER BY d.item_id LIMIT ?"
)
# What the destination still has to deliver, expired or not (the items it was addressed).
COUNT_DELIVERIES_SQL = "SELECT COUNT(*) FROM sync_deliveries WHERE destination = ?"
NEXT_DUE_DELIVERY_SQL = (
    f"SELECT d.next_retry_at {_FROM} AND d.priority = ? AND q.created_at + q.ttl_seconds > ?"
    " ORDER BY d.next_retry_at LIMIT 1"
)
WAITING_DELIVERY_STAMPS_SQL = (
    "SELECT DISTINCT next_retry_at FROM sync_deliveries WHERE destination = ? AND priority IN (1, 2, 3, 4)"
    " AND next_retry_at > ? AND next_retry_at NOT IN (SELECT expires_at FROM sync_leases WHERE expires_at > ?)"
)
# The destination is ?1 wherever the statement's own parameters come first in the text; a
# plain ? after ?2 is ?3, and so on (SQLite numbers it one past the largest so far).
RESUME_HELD_DELIVERIES_SQL = (
    "UPDATE sync_deliveries SET next_retry_at = ?2"
    " WHERE destination = ?1 AND priority IN (1, 2, 3, 4) AND next_retry_at = ?3"
)
RESTORE_DELIVERY_SQL = "UPDATE sync_deliveries SET next_retry_at = ?2 WHERE destination = ?1 AND item_id = ?3"
ACK_DELIVERIES_SQL = by_id_chunk_shape("DELETE FROM sync_deliveries WHERE destination = ? AND item_id IN {ids}")
NACK_DELIVERIES_SQL = by_id_chunk_shape(
    "UPDATE sync_deliveries SET retry_count = retry_count + 1, next_retry_at = ?2"
    " WHERE destination = ?1 AND item_id IN {ids}"
)
# A rejection is counted in the delivery row, which every claimed item has.
COUNT_DELIVERY_REJECTION_SQL = (
    "UPDATE sync_deliveries SET rejections = rejections + 1, last_status = ?3, last_error = ?4"
    " WHERE destination = ?1 AND item_id = ?2"
)
EXHAUSTED_DELIVERIES_SQL = by_id_chunk_shape(
    "SELECT item_id FROM sync_deliveries WHERE destination = ?1 AND rejections >= ?2 AND item_id IN {ids}"
)
# The payload is copied: the item leaves the file once the other destinations are done.
MOVE_DELIVERIES_TO_DEAD_SQL = by_id_chunk_shape(
    "INSERT OR REPLACE INTO sync_dead_deliveries (destination, item_id, payload, priority, created_at,"
    " ttl_seconds, retry_count, next_retry_at, last_status, last_error, dead_at)"
    " SELECT ?1, q.id, q.payload, q.priority, q.created_at, q.ttl_seconds, d.retry_count, d.next_retry_at,"
    " ?2, ?3, ?4 FROM sync_queue AS q JOIN sync_deliveries AS d ON d.item_id = q.id AND d.destination = ?1"
    " WHERE q.id IN {ids}"
)
# The destination's new items of one priority past its cursor (params: level, cursor, now,
# bit, limit; {destination}: its id); their delivery state is the fresh one (no attempt,
# due now). An item past the cursor with a delivery row was claimed (newest first) or
# nacked by hand already: it comes with the retried ones.
FRESH_SQL = (
    "SELECT q.id, CAST(q.payload AS BLOB), q.priority, q.created_at, q.ttl_seconds, 0, 0.0"
    " FROM sync_queue AS q JOIN sync_routes AS r ON r.item_id = q.id"
    " WHERE q.priority = ? AND q.next_retry_at = 0 AND q.id > ? AND q.created_at + q.ttl_seconds > ?"
    " AND r.destinations & ?"
    " AND NOT EXISTS (SELECT 1 FROM sync_deliveries AS d WHERE d.destination = {destination} AND d.item_id = q.id)"
    " ORDER BY q.next_retry_at, q.id LIMIT ?"
)
# ``order="newest_first"``: the same items from the newest down.
FRESH_NEWEST_SQL = FRESH_SQL.replace("ORDER BY q.next_retry_at, q.id", "ORDER BY q.id DESC", 1)
ORDERS = ("oldest_first", "newest_first")
# ``nack()`` by hand: the item may not have been claimed, so its delivery row may be new
# (params: destination, until, then the ids; {bit}: the destination's).
NACK_BY_HAND_SQL = by_id_chunk_shape(
    "INSERT INTO sync_deliveries (destination, item_id, priority, retry_count, next_retry_at)"
    " SELECT ?1, q.id, q.priority, 1, ?2 FROM sync_queue AS q JOIN sync_routes AS r ON r.item_id = q.id"
    " WHERE q.id IN {ids} AND r.destinations & {{bit}}"
    " ON CONFLICT(destination, item_id) DO UPDATE SET retry_count = retry_count + 1,"
    " next_retry_at = excluded.next_retry_at"
)
READ_CURSOR_SQL = "SELECT last_id FROM sync_cursors WHERE destination = ? AND priority = ?"
WRITE_CURSOR_SQL = (
    "INSERT INTO sync_cursors (destination, priority, last_id) VALUES (?, ?, ?)"
    " ON CONFLICT(destination, priority) DO UPDATE SET last_id = max(last_id, excluded.last_id)"
)
LEVEL_END_SQL = "SELECT COALESCE(MAX(id), 0) FROM sync_queue WHERE priority = ? AND next_retry_at = 0"
# A claim leases fresh and retried items alike: a delivery row is written for a fresh one.
LEASE_DELIVERIES_SQL = by_id_chunk_shape(
    "INSERT INTO sync_deliveries (destination, item_id, priority, next_retry_at)"
    " SELECT ?1, id, priority, ?2 FROM sync_queue WHERE id IN {ids} AND true"
    " ON CONFLICT(destination, item_id) DO UPDATE SET next_retry_at = excluded.next_retry_at"
)
# An ack clears the destination's bit; an item whose last bit went leaves with its route.
CLEAR_ROUTES_SQL = by_id_chunk_shape(
    "UPDATE sync_routes SET destinations = destinations & ~?1, pending = pending - 1"
    " WHERE destinations & ?1 AND item_id IN {ids}"
)
LEAVE_ROUTED_SQL = by_id_chunk_shape(
    "DELETE FROM sync_queue WHERE id IN {ids} AND id IN (SELECT item_id FROM sync_routes WHERE pending <= 0)"
)
DROP_ROUTES_SQL = by_id_chunk_shape("DELETE FROM sync_routes WHERE pending <= 0 AND item_id IN {ids}")


def _in_order(statement: str, order: str) -> str:
    """A statement over retried deliveries with their items in ``order``: a retried batch
    must come back in the order it was sent, or its Idempotency-Key would not be found."""
    if order != "newest_first":
        return statement
    return statement.replace("ORDER BY d.next_retry_at, d.item_id", "ORDER BY d.next_retry_at, d.item_id DESC").replace(
        "ORDER BY d.item_id", "ORDER BY d.item_id DESC"
    )


def scope_of(name: str) -> str:
    """What the ``sync_meta`` keys of the destination ``name`` start with."""
    return f"dest.{name}."


def for_destination(destination: int, name: str, order: str = "oldest_first") -> Deliveries:
    """The statements of the destination ``name``, registered under the id ``destination``,
    taking the items of each priority in ``order`` (FIFO, or the newest first)."""
    bit = 1 << destination
    newest_first = order == "newest_first"
    scan = (FRESH_NEWEST_SQL if newest_first else FRESH_SQL).format(destination=int(destination))
    # The same rows as ``dequeue`` reads them: the payload as stored text.
    eligible = scan.replace("CAST(q.payload AS BLOB)", "q.payload", 1)
    fresh = FreshScan(
        destination, bit, scan, READ_CURSOR_SQL, WRITE_CURSOR_SQL, LEVEL_END_SQL, eligible, newest_first=newest_first
    )
    return Deliveries(
        key=(destination,),
        eligible=_in_order(ELIGIBLE_SQL, order),
        claim=_in_order(CLAIM_SQL, order),
        group=_in_order(GROUP_SQL, order),
        count=COUNT_DELIVERIES_SQL,
        next_due=NEXT_DUE_DELIVERY_SQL,
        waiting_stamps=WAITING_DELIVERY_STAMPS_SQL,
        resume_held=RESUME_HELD_DELIVERIES_SQL,
        restore_retry=RESTORE_DELIVERY_SQL,
        release=LEASE_DELIVERIES_SQL,
        ack=ACK_DELIVERIES_SQL,
        nack=NACK_DELIVERIES_SQL,
        nack_by_hand={size: text.format(bit=bit) for size, text in NACK_BY_HAND_SQL.items()},
        count_rejection=COUNT_DELIVERY_REJECTION_SQL,
        exhausted=EXHAUSTED_DELIVERIES_SQL,
        move_to_dead=MOVE_DELIVERIES_TO_DEAD_SQL,
        after_ack=((CLEAR_ROUTES_SQL, (bit,)), (LEAVE_ROUTED_SQL, ()), (DROP_ROUTES_SQL, ())),
        scope=scope_of(name),
        name=name,
        fresh=fresh,
    )
