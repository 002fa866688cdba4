"""The destinations a queue file feeds: their names and ids, and which items each one still
has to deliver (``sync_routes``).

Each destination has an id from 1 to 62 and is one bit of an item's route: the bit is set
while that destination still has to deliver the item, and the item leaves the file when
its last bit is cleared (``pending`` counts them). A destination registered later receives
the items enqueued from then on (``first_item_id``).
"""

import re
import sqlite3
from typing import Any, Dict, Iterable, List, Sequence, Tuple

from .deliveries import scope_of
from .sql import by_id_chunk_shape

MAX_DESTINATIONS = 62
# A name shows in metric labels, log lines and command lines: kept to a plain word.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")

SELECT_ALL_SQL = "SELECT name, id FROM sync_destinations"
REGISTER_SQL = "INSERT INTO sync_destinations (id, name, added_at, first_item_id) VALUES (?, ?, ?, ?)"
COUNT_DEAD_SQL = "SELECT COUNT(*) FROM sync_dead_deliveries WHERE destination = ?"


def dead_count(conn: sqlite3.Connection, ident: int) -> int:
    """How many dead letters the destination of id ``ident`` has."""
    return int(conn.execute(COUNT_DEAD_SQL, (ident,)).fetchone()[0])


ROUTE_SQL = "INSERT INTO sync_routes (item_id, destinations, pending, bytes) VALUES (?, ?, ?, ?)"
# Counting walks the routes: a destination's bit can be anywhere.
COUNT_PENDING_SQL = "SELECT COUNT(*) FROM sync_routes WHERE destinations & ?"
ANY_PENDING_SQL = "SELECT EXISTS (SELECT 1 FROM sync_routes WHERE destinations & ?)"
# Items of the file written without destinations (no route): such a file cannot be split
# between destinations without saying whose they are.
UNROUTED_SQL = "SELECT COUNT(*) FROM sync_queue WHERE id NOT IN (SELECT item_id FROM sync_routes)"


def names_of(destinations: Iterable[Any]) -> Tuple[str, ...]:
    """The destination names of a constructor's ``destinations`` (a sequence of names or a
    mapping of names to options), checked; raises ``ValueError``/``TypeError`` naming it."""
    if isinstance(destinations, (str, bytes)) or not hasattr(destinations, "__iter__"):
        raise TypeError(
            "destinations must be a sequence of names or a mapping of names to options,"
            f" got {type(destinations).__name__}: {destinations!r:.100}"
        )
    names = tuple(destinations)
    if not names:
        raise ValueError("destinations must name at least one destination, got none")
    if len(names) > MAX_DESTINATIONS:
        raise ValueError(f"destinations may name at most {MAX_DESTINATIONS}, got {len(names)}")
    for name in names:
        if not isinstance(name, str) or NAME.fullmatch(name) is None:
            raise ValueError(
                f"destinations: {name!r:.100} is not a destination name (letters, digits, '_', '.', '-';"
                " at most 64, starting with a letter or digit)"
            )
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"destinations names {duplicates} more than once")
    return names


def register(conn: sqlite3.Connection, names: Sequence[str], next_item_id: int, now: float) -> Dict[str, int]:
    """Bring the file's registry in line with ``names`` inside the caller's write
    transaction and return each name's id. A new name is registered to receive the items
    from ``next_item_id`` on. A registered name left out while it still has items to
    deliver is a ``ValueError`` naming it and ``remove_destination``: nothing is dropped
    unasked; so is one with dead letters. One left out with nothing left is unregistered
    (its cursors and counters go with it)."""
    registered: Dict[str, int] = dict(conn.execute(SELECT_ALL_SQL).fetchall())
    if not registered:
        unrouted = int(conn.execute(UNROUTED_SQL).fetchone()[0])
        if unrouted:
            raise ValueError(
                f"destinations: the file holds {unrouted} items of a queue without destinations; deliver"
                " them (or purge them) before opening it with destinations"
            )
    for name, ident in sorted(registered.items()):
        if name in names:
            continue
        if conn.execute(ANY_PENDING_SQL, (1 << ident,)).fetchone()[0]:
            pending = int(conn.execute(COUNT_PENDING_SQL, (1 << ident,)).fetchone()[0])
            raise ValueError(
                f"destinations: {name!r} is missing but still has {pending} items to deliver; open the"
                f" queue with it, and call remove_destination({name!r}) to drop them on purpose"
            )
        dead = dead_count(conn, ident)
        if dead:
            raise ValueError(
                f"destinations: {name!r} is missing but still has {dead} dead letters; open the queue with it"
                f" and requeue or drop them (drop_dead_letters(destination={name!r})), or call"
                f" remove_destination({name!r})"
            )
        remove(conn, ident, scope_of(name))
        del registered[name]
    free = [ident for ident in range(1, MAX_DESTINATIONS + 1) if ident not in registered.values()]
    for name in names:
        if name not in registered:
            registered[name] = free.pop(0)
            conn.execute(REGISTER_SQL, (registered[name], name, now, next_item_id))
    return {name: registered[name] for name in names}


# Items that left the file for all destinations at once (evicted, expired) take their
# routes and delivery rows with them, in the same transaction.
FORGET_ROUTES_SQL = by_id_chunk_shape("DELETE FROM sync_routes WHERE item_id IN {ids}")
FORGET_DELIVERIES_SQL = by_id_chunk_shape(
    "DELETE FROM sync_deliveries WHERE destination IN (SELECT id FROM sync_destinations) AND item_id IN {ids}"
)
FORGET_ORPHAN_ROUTES_SQL = "DELETE FROM sync_routes WHERE item_id NOT IN (SELECT id FROM sync_queue)"
FORGET_ORPHAN_DELIVERIES_SQL = "DELETE FROM sync_deliveries WHERE item_id NOT IN (SELECT id FROM sync_queue)"


def forget(conn: sqlite3.Connection, chunks: Iterable[Tuple[int, ...]]) -> None:
    """Drop the routes and delivery rows of items deleted by id (an eviction)."""
    for chunk in chunks:
        conn.execute(FORGET_ROUTES_SQL[len(chunk)], chunk)
        conn.execute(FORGET_DELIVERIES_SQL[len(chunk)], chunk)


def forget_orphans(conn: sqlite3.Connection) -> None:
    """Drop the routes and delivery rows whose item is gone (after a purge of expired items)."""
    conn.execute(FORGET_ORPHAN_ROUTES_SQL)
    conn.execute(FORGET_ORPHAN_DELIVERIES_SQL)


def route(conn: sqlite3.Connection, first_id: int, texts: Sequence[str], mask: int) -> None:
    """Address the items of the stored ``texts``, with ids from ``first_id`` on, to the
    destinations of ``mask``, inside the transaction that inserted them (the fan-out: all
    of them or none); each route keeps its item's size for the backlog budgets."""
    pending = bin(mask).count("1")
    conn.executemany(
        ROUTE_SQL, [(item_id, mask, pending, len(text.encode())) for item_id, text in enumerate(texts, first_id)]
    )


def pending_count(conn: sqlite3.Connection, ident: int) -> int:
    """How many items the destination of id ``ident`` still has to deliver."""
    return int(conn.execute(COUNT_PENDING_SQL, (1 << ident,)).fetchone()[0])


def mask_of(ids: Sequence[int]) -> int:
    """The route bits of the destinations of ``ids``."""
    mask = 0
    for ident in ids:
        mask |= 1 << ident
    return mask


def ids_in(mask: int) -> List[int]:
    """The destination ids whose bit is set in ``mask``."""
    return [ident for ident in range(1, MAX_DESTINATIONS + 1) if mask >> ident & 1]


# Dropping a destination: its bit leaves every route, items no one needs any more leave the
# file, and everything it kept (delivery rows, cursors, dead letters, counters) goes.
UNROUTE_SQL = "UPDATE sync_routes SET destinations = destinations & ~?1, pending = pending - 1 WHERE destinations & ?1"
LEAVE_UNNEEDED_SQL = "DELETE FROM sync_queue WHERE id IN (SELECT item_id FROM sync_routes WHERE pending <= 0)"
DROP_UNNEEDED_ROUTES_SQL = "DELETE FROM sync_routes WHERE pending <= 0"
DROP_KEPT_SQL = tuple(
    f"DELETE FROM {table} WHERE {column} = ?"
    for table, column in (
        ("sync_deliveries", "destination"),
        ("sync_cursors", "destination"),
        ("sync_dead_deliveries", "destination"),
        ("sync_backlog", "destination"),
        ("sync_destinations", "id"),
    )
)
DROP_COUNTERS_SQL = "DELETE FROM sync_meta WHERE substr(key, 1, length(?1)) = ?1"


def remove(conn: sqlite3.Connection, ident: int, scope: str) -> int:
    """Unregister the destination of id ``ident`` (counters under ``scope``) inside the
    caller's write transaction, dropping what it still had to deliver; return how many."""
    dropped = int(conn.execute(UNROUTE_SQL, (1 << ident,)).rowcount)
    conn.execute(LEAVE_UNNEEDED_SQL)
    conn.execute(DROP_UNNEEDED_ROUTES_SQL)
    for statement in DROP_KEPT_SQL:
        conn.execute(statement, (ident,))
    conn.execute(DROP_COUNTERS_SQL, (scope,))
    return dropped
