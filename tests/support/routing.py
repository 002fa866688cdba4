"""The two destinations of the fault loads on a queue with destinations, and the routes
their items take.

An item's key starts with its route's name (``both.s3-17``), so a check knows where the
item was addressed even when the load was killed before journaling it.
"""

import sqlite3
from typing import Dict, List, Optional, Set, Tuple

DESTINATIONS = ("iot", "archive")
ROUTES = {"both": DESTINATIONS, "iot": ("iot",), "archive": ("archive",)}


def routes_of(key: str) -> Tuple[str, ...]:
    """The destinations the item of ``key`` was addressed to."""
    return ROUTES[key.split(".", 1)[0]]


def destinations_argument(route: str) -> Optional[Tuple[str, ...]]:
    """What ``enqueue`` is given for ``route``: None (every destination, the default a
    plain caller takes) for ``both``, the names otherwise."""
    return None if route == "both" else ROUTES[route]


def stored_routes(conn: sqlite3.Connection) -> Dict[int, Tuple[Optional[str], Set[str], int]]:
    """id -> (payload key, the destinations its route still names, its pending count) of
    every stored item; an item without a route names none."""
    import orjson

    names = dict(conn.execute("SELECT id, name FROM sync_destinations"))
    rows = conn.execute(
        "SELECT q.id, q.payload, COALESCE(r.destinations, 0), COALESCE(r.pending, 0)"
        " FROM sync_queue AS q LEFT JOIN sync_routes AS r ON r.item_id = q.id"
    )
    return {
        row_id: (orjson.loads(text).get("key"), {name for ident, name in names.items() if mask >> ident & 1}, pending)
        for row_id, text, mask, pending in rows
    }


def route_problems(conn: sqlite3.Connection) -> List[str]:
    """What is inconsistent in the routes of a file with the ``DESTINATIONS`` (empty:
    nothing): every item is still owed to some of the destinations it was addressed to, and
    its pending count says how many; every route and every delivery row has its item, and a
    delivery row's destination is one the item is still owed to."""
    problems = []
    registered = sorted(name for (name,) in conn.execute("SELECT name FROM sync_destinations"))
    if registered != sorted(DESTINATIONS):
        problems.append(f"registered destinations {registered}")
    for row_id, (key, owing, pending) in stored_routes(conn).items():
        if key is None or not owing or not owing <= set(routes_of(key)) or pending != len(owing):
            problems.append(f"item {row_id} ({key}) is owed to {sorted(owing)}, pending {pending}")
    orphans = conn.execute("SELECT item_id FROM sync_routes WHERE item_id NOT IN (SELECT id FROM sync_queue)")
    problems += [f"route of item {item_id}, which is gone" for (item_id,) in orphans]
    stray = conn.execute(
        "SELECT d.destination, d.item_id FROM sync_deliveries AS d LEFT JOIN sync_routes AS r ON r.item_id = d.item_id"
        " WHERE r.item_id IS NULL OR NOT (r.destinations >> d.destination) & 1"
    )
    problems += [f"delivery row of item {item_id} for destination {ident}, not owed" for ident, item_id in stray]
    return problems
