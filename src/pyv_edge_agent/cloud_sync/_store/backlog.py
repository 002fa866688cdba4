"""Backlog budgets: a destination that is down may hold at most so many undelivered items
(``max_backlog_items``) or stored bytes (``max_backlog_bytes``); beyond them it gives up
deliveries (``on_backlog_full``: its oldest or its newest), least important first and
critical items last, so that its backlog never crowds the others out of the file.

Dropping a delivery is what an ack is for that destination alone: its bit leaves the
item's route, and the item leaves the file once no destination needs it. An enqueue is
never refused for a budget. The counts come from ``sync_backlog``, which triggers on
``sync_routes`` keep for the destinations that have a budget, so that checking a budget
costs one lookup; the drop runs in the enqueue's transaction.
"""

import logging
import sqlite3
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from .. import _codec
from .._types import Priority
from .sql import ADD_COUNTER_SQL

if TYPE_CHECKING:
    from .deliveries import Deliveries

# How deliveries end (``Store.end_deliveries``): the destination's, the id chunks.
EndDeliveries = Callable[["Deliveries", List[Tuple[int, ...]]], int]

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

ON_FULL_CHOICES = ("drop_oldest", "drop_newest")
DROPPED_KEY = "dropped_total"

# Kept up by these from the first time a queue opens the file with a budget: a file where
# no destination ever had one pays nothing for them on its enqueues and acks.
TRIGGERS = (
    "CREATE TRIGGER IF NOT EXISTS sync_routes_added AFTER INSERT ON sync_routes BEGIN"
    " UPDATE sync_backlog SET items = items + 1, bytes = bytes + NEW.bytes"
    " WHERE (NEW.destinations >> destination) & 1; END",
    "CREATE TRIGGER IF NOT EXISTS sync_routes_changed AFTER UPDATE OF destinations ON sync_routes BEGIN"
    " UPDATE sync_backlog"
    " SET items = items + ((NEW.destinations >> destination) & 1) - ((OLD.destinations >> destination) & 1),"
    " bytes = bytes + (((NEW.destinations >> destination) & 1) - ((OLD.destinations >> destination) & 1))"
    " * NEW.bytes WHERE ((OLD.destinations | NEW.destinations) >> destination) & 1; END",
    "CREATE TRIGGER IF NOT EXISTS sync_routes_removed AFTER DELETE ON sync_routes BEGIN"
    " UPDATE sync_backlog SET items = items - 1, bytes = bytes - OLD.bytes"
    " WHERE (OLD.destinations >> destination) & 1; END",
)
TRACK_SQL = (
    "INSERT OR REPLACE INTO sync_backlog (destination, items, bytes)"
    " SELECT ?1, COUNT(*), COALESCE(SUM(bytes), 0) FROM sync_routes WHERE (destinations >> ?1) & 1"
)
COUNTS_SQL = "SELECT items, bytes FROM sync_backlog WHERE destination = ?"
# A destination's undelivered items of one priority, oldest first (newest first below).
# In a file with destinations an item's own ``next_retry_at`` stays 0, so the walk follows
# the queue's index in id order and stops as soon as enough were found.
_VICTIMS = (
    "SELECT q.id, r.bytes FROM sync_queue AS q JOIN sync_routes AS r ON r.item_id = q.id"
    " WHERE q.priority = ? AND q.next_retry_at = 0 AND (r.destinations >> ?) & 1 ORDER BY q.id"
)
OLDEST_SQL = _VICTIMS
NEWEST_SQL = _VICTIMS + " DESC"
# Least important first: critical items are the last to go.
DROP_ORDER = tuple(level.value for level in sorted(Priority, key=lambda level: -level.value))


@dataclass
class Budget:
    """One destination's backlog budget (at least one of the two limits is set)."""

    destination: int
    name: str
    deliveries: "Deliveries"
    max_items: Optional[int]
    max_bytes: Optional[int]
    drop_newest: bool
    # Whether the last enqueue found it over its budget: logged once per change.
    dropping: bool = field(default=False)

    def excess(self, items: int, size: int) -> bool:
        """Whether ``items`` undelivered items of ``size`` bytes are over the budget."""
        return (self.max_items is not None and items > self.max_items) or (
            self.max_bytes is not None and size > self.max_bytes
        )


class Backlog:
    """The budgets of a queue's destinations, enforced on each enqueue."""

    def __init__(self, budgets: Sequence[Budget]) -> None:
        self.budgets = list(budgets)
        self.mask = 0
        for budget in self.budgets:
            self.mask |= 1 << budget.destination

    def track(self, conn: sqlite3.Connection) -> None:
        """Count each budgeted destination's backlog afresh (inside a write transaction): a
        process without the budget may have written meanwhile, with no count kept."""
        for trigger in TRIGGERS:
            conn.execute(trigger)
        for budget in self.budgets:
            conn.execute(TRACK_SQL, (budget.destination,))

    def enforce(self, end: EndDeliveries, conn: sqlite3.Connection, route: int) -> None:
        """Bring each destination of ``route`` that has a budget back within it, inside the
        enqueue's transaction, ending the dropped deliveries with ``end``."""
        if not route & self.mask:
            return
        for budget in self.budgets:
            if route >> budget.destination & 1:
                self._enforce(end, conn, budget)

    def _enforce(self, end: EndDeliveries, conn: sqlite3.Connection, budget: Budget) -> None:
        items, size = conn.execute(COUNTS_SQL, (budget.destination,)).fetchone()
        if not budget.excess(items, size):
            if budget.dropping:
                budget.dropping = False
                logger.info("destination %r is within its backlog budget again", budget.name)
            return
        victims = _victims(conn, budget, items, size)
        if not victims:
            return
        dropped = end(budget.deliveries, _codec.id_chunks(victims))
        conn.execute(ADD_COUNTER_SQL, (budget.deliveries.scope + DROPPED_KEY, dropped))
        if not budget.dropping:
            budget.dropping = True
            which = "newest" if budget.drop_newest else "oldest"
            logger.warning(
                "destination %r is over its backlog budget (%s): dropping its %s undelivered items,"
                " least important first; counted in dropped_total",
                budget.name,
                _describe(budget),
                which,
            )


def _victims(conn: sqlite3.Connection, budget: Budget, items: int, size: int) -> List[int]:
    """The deliveries to drop to bring ``budget``'s destination within it."""
    statement = NEWEST_SQL if budget.drop_newest else OLDEST_SQL
    victims: List[int] = []
    for level in DROP_ORDER:
        for item_id, nbytes in conn.execute(statement, (level, budget.destination)):
            if not budget.excess(items, size):
                return victims
            victims.append(item_id)
            items, size = items - 1, size - nbytes
    return victims


def _describe(budget: Budget) -> str:
    parts: List[Tuple[str, int]] = []
    if budget.max_items is not None:
        parts.append(("max_backlog_items", budget.max_items))
    if budget.max_bytes is not None:
        parts.append(("max_backlog_bytes", budget.max_bytes))
    return ", ".join(f"{name}={value}" for name, value in parts)
