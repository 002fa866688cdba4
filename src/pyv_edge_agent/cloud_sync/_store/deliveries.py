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
    COUNT_SQL,
    NACK_SQL,
    NEXT_DUE_SQL,
    RELEASE_SQL,
    RESTORE_RETRY_SQL,
    RESUME_HELD_SQL,
    SELECT_CLAIM_SQL,
    SELECT_ELIGIBLE_SQL,
    SELECT_GROUP_SQL,
    WAITING_STAMPS_SQL,
    by_id_chunk_shape,
)


@dataclass(frozen=True)
class Deliveries:
    """The statements of one destination's delivery state (see the module docstring).

    :param key: the parameters that name the destination, put before each statement's own.
    :param leave: removes the items that no destination needs any more after an ack (None:
        the ack itself removed them).
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
    leave: Optional[Dict[int, str]] = None


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
RELEASE_DELIVERIES_SQL = by_id_chunk_shape(
    "UPDATE sync_deliveries SET next_retry_at = ?2 WHERE destination = ?1 AND item_id IN {ids}"
)
ACK_DELIVERIES_SQL = by_id_chunk_shape("DELETE FROM sync_deliveries WHERE destination = ? AND item_id IN {ids}")
NACK_DELIVERIES_SQL = by_id_chunk_shape(
    "UPDATE sync_deliveries SET retry_count = retry_count + 1, next_retry_at = ?2"
    " WHERE destination = ?1 AND item_id IN {ids}"
)
# After a destination's ack: the items of those ids that no destination needs any more.
LEAVE_SQL = by_id_chunk_shape(
    "DELETE FROM sync_queue WHERE id IN {ids}"
    " AND NOT EXISTS (SELECT 1 FROM sync_deliveries AS d WHERE d.item_id = sync_queue.id)"
)


def for_destination(destination: int) -> Deliveries:
    """The statements of the destination registered under the id ``destination``."""
    return Deliveries(
        key=(destination,),
        eligible=ELIGIBLE_SQL,
        claim=CLAIM_SQL,
        group=GROUP_SQL,
        count=COUNT_DELIVERIES_SQL,
        next_due=NEXT_DUE_DELIVERY_SQL,
        waiting_stamps=WAITING_DELIVERY_STAMPS_SQL,
        resume_held=RESUME_HELD_DELIVERIES_SQL,
        restore_retry=RESTORE_DELIVERY_SQL,
        release=RELEASE_DELIVERIES_SQL,
        ack=ACK_DELIVERIES_SQL,
        nack=NACK_DELIVERIES_SQL,
        leave=LEAVE_SQL,
    )
