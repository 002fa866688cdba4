"""Which rows the next batch of a flush takes, and the ``Claim`` that leases them.

The claim's statements run inside the ``Flusher``'s write transaction; the only write
here is a named destination's cursor (``advance_cursors``), once the batch is chosen.
"""

import sqlite3
from dataclasses import dataclass, field
from typing import AbstractSet, Dict, List, Optional, Tuple

from .._store.deliveries import Deliveries, FreshScan
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


@dataclass
class Scanned:
    """What a named destination's scan of one priority found past its cursor: the ids it
    returned, in order, and where the level ended when nothing was left out (else None)."""

    ids: List[int]
    end: Optional[int]


def pick(
    conn: sqlite3.Connection,
    deliveries: Deliveries,
    now: float,
    policy: FlushPolicy,
    budget: Optional[int],
    bounds: Tuple[int, int],
    rejected: AbstractSet[int],
    scans: Optional[Dict[int, Scanned]] = None,
) -> List[Row]:
    """The next batch: the group of a batch being retried, or fresh items (within
    ``bounds``, items and bytes), whichever comes first in priority order; never an item
    in ``rejected``, and no more than the daily ``budget`` allows. For a named destination
    ``scans`` receives what each priority's scan found (see ``advance_cursors``)."""
    levels = CRITICAL_LEVEL if budget == 0 else ALL_LEVELS
    first = next(
        (rows[0] for level in levels for rows in [_select(conn, deliveries, now, level, 1, rejected, scans)] if rows),
        None,
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
            found = _select(conn, deliveries, now, level, room, rejected, scans) if room > 0 else []
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
    conn: sqlite3.Connection,
    deliveries: Deliveries,
    now: float,
    level: int,
    limit: int,
    rejected: AbstractSet[int],
    scans: Optional[Dict[int, Scanned]] = None,
) -> List[Row]:
    """Up to ``limit`` rows of ``level`` in the order they are due: a named destination's
    fresh items (its scan) before its retried ones, as a plain queue's come."""
    rows: List[Row] = []
    if deliveries.fresh is not None:
        rows = _scan(conn, deliveries.fresh, now, level, limit, scans)
        if len(rows) >= limit:
            return rows
    found = conn.execute(deliveries.claim, deliveries.key + (level, now, now, limit + len(rejected))).fetchall()
    if rejected:
        found = [row for row in found if row[Column.ID] not in rejected]
    return (rows + found)[:limit]


def _scan(
    conn: sqlite3.Connection,
    fresh: FreshScan,
    now: float,
    level: int,
    limit: int,
    scans: Optional[Dict[int, Scanned]],
) -> List[Row]:
    """A named destination's unclaimed items of ``level`` past its cursor."""
    found = conn.execute(fresh.read_cursor, (fresh.destination, level)).fetchone()
    cursor = 0 if found is None else int(found[0])
    rows: List[Row] = conn.execute(fresh.scan, (level, cursor, now, fresh.bit, limit)).fetchall()
    if scans is not None:
        end = int(conn.execute(fresh.level_end, (level,)).fetchone()[0]) if len(rows) < limit else None
        scans[level] = Scanned([row[Column.ID] for row in rows], end)
    return rows


def advance_cursors(
    conn: sqlite3.Connection, deliveries: Deliveries, taken: List[Row], scans: Dict[int, Scanned]
) -> None:
    """Move a named destination's cursor past what its claim took (in the claim's
    transaction): past every item it examined when the batch took all it found at that
    priority, else past the last item taken (items are taken in id order at each level;
    newest first, the cursor waits until the level was taken whole)."""
    fresh = deliveries.fresh
    if fresh is None:
        return
    ids = {row[Column.ID] for row in taken}
    for level, scanned in scans.items():
        kept = [item_id for item_id in scanned.ids if item_id in ids]
        if scanned.end is not None and len(kept) == len(scanned.ids):
            last: Optional[int] = scanned.end
        elif fresh.newest_first:
            last = None  # items below those taken were not examined yet
        else:
            last = kept[-1] if kept else None
        if last is not None:
            conn.execute(fresh.write_cursor, (fresh.destination, level, last))


def _bounded(rows: List[Row], limit: int) -> List[Row]:
    size = 0
    for count, row in enumerate(rows):
        size += len(row[Column.PAYLOAD])
        if size > limit and count:
            return rows[:count]
    return rows
