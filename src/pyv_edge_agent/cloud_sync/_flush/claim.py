"""Which rows the next batch of a flush takes, and the ``Claim`` that leases them.

The claim's statements run inside the ``Flusher``'s write transaction; nothing here
writes.
"""

import sqlite3
from dataclasses import dataclass, field
from typing import AbstractSet, Dict, List, Optional, Tuple

from .._store.deliveries import Deliveries
from .._types import CRITICAL, Column
from .outgoing import Row
from .policy import ALL_LEVELS, CRITICAL_LEVEL, FlushPolicy


@dataclass
class Claim:
    """A leased batch: its rows, the lease's token, the parts not sent yet, and the
    ``Idempotency-Key`` of each part."""

    rows: List[Row]
    token: str
    pending: List[List[Row]] = field(default_factory=list)
    # The Idempotency-Key of each part, by its ids.
    keys: Dict[Tuple[int, ...], str] = field(default_factory=dict)


def pick(
    conn: sqlite3.Connection,
    deliveries: Deliveries,
    now: float,
    policy: FlushPolicy,
    budget: Optional[int],
    bounds: Tuple[int, int],
    rejected: AbstractSet[int],
) -> List[Row]:
    """The next batch: the group of a batch being retried, or fresh items (within
    ``bounds``, items and bytes), whichever comes first in priority order; never an item
    in ``rejected``, and no more than the daily ``budget`` allows."""
    levels = CRITICAL_LEVEL if budget == 0 else ALL_LEVELS
    first = next(
        (rows[0] for level in levels for rows in [_select(conn, deliveries, now, level, 1, rejected)] if rows), None
    )
    if first is None:
        return []
    rows: List[Row] = []
    if first[Column.NEXT_RETRY_AT] > 0:
        # A retried batch goes whole: under the fixed bounds, which it was formed within.
        limit, size = policy.max_batch_items, policy.max_batch_bytes
        for level in levels:
            rows += conn.execute(
                deliveries.group, deliveries.key + (level, first[Column.NEXT_RETRY_AT], now, limit)
            ).fetchall()
        rows = [row for row in rows if row[Column.ID] not in rejected]
    else:
        limit, size = bounds
        for level in levels:
            room = limit - len(rows)
            found = _select(conn, deliveries, now, level, room, rejected) if room > 0 else []
            fresh = [row for row in found if row[Column.NEXT_RETRY_AT] <= 0]
            rows += fresh
            if len(fresh) < len(found) or len(rows) >= limit:
                break  # a retried group comes next in priority order: it goes alone
        if policy.max_batch_seconds is not None and rows and rows[0][Column.PRIORITY] == CRITICAL:
            # Critical items go alone, in one round trip, not behind a batch's worth.
            rows = [row for row in rows if row[Column.PRIORITY] == CRITICAL]
    if budget is not None:
        critical = [row for row in rows if row[Column.PRIORITY] == CRITICAL]
        rows = critical + [row for row in rows if row[Column.PRIORITY] != CRITICAL][: max(0, budget - len(critical))]
    return _bounded(rows[:limit], size)


def _select(
    conn: sqlite3.Connection, deliveries: Deliveries, now: float, level: int, limit: int, rejected: AbstractSet[int]
) -> List[Row]:
    rows = conn.execute(deliveries.claim, deliveries.key + (level, now, now, limit + len(rejected))).fetchall()
    if rejected:
        rows = [row for row in rows if row[Column.ID] not in rejected]
    return rows[:limit]


def _bounded(rows: List[Row], limit: int) -> List[Row]:
    size = 0
    for count, row in enumerate(rows):
        size += len(row[Column.PAYLOAD])
        if size > limit and count:
            return rows[:count]
    return rows
