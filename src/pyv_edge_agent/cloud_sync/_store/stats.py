"""What ``CloudSyncQueue.get_stats()`` reads from the file (``_metrics`` names and shows it)."""

from typing import Any, Dict

from .._types import Priority
from . import deadletter, destinations, integrity, storage
from .sql import DEPTH_BY_PRIORITY_SQL, IN_FLIGHT_SQL, STATS_SQL, UNSEALED_REFUSED_KEY
from .store import Store

# What a flush counts, for the queue and for each destination.
_DELIVERY_COUNTERS = (
    "messages_sent_total",
    "failed_batches",
    "dead_lettered_total",
    "last_success_at",
    "last_error",
    "last_error_at",
)
# Counters kept in sync_meta and shown by get_stats(); they survive a restart.
COUNTER_KEYS = (
    *_DELIVERY_COUNTERS,
    "link_bytes_per_second",
    "link_items_per_second",
    UNSEALED_REFUSED_KEY,
)
# Counters with no value until something happened (the others start at 0).
_UNSET_KEYS = ("last_success_at", "last_error", "last_error_at", "link_bytes_per_second", "link_items_per_second")


# A destination's own figures (``get_stats()["destinations"][name]``), from its counters.
DESTINATION_COUNTER_KEYS = ("dropped_total", "messages_sent_today", *_DELIVERY_COUNTERS)
# The file's figures of a queue with destinations add theirs up.
_SUMMED_KEYS = ("messages_sent_today", "messages_sent_total", "failed_batches", "dead_lettered_total")
DESTINATION_OLDEST_SQL = (
    "SELECT MIN(q.created_at) FROM sync_routes AS r JOIN sync_queue AS q ON q.id = r.item_id WHERE r.destinations & ?"
)
DESTINATION_IN_FLIGHT_SQL = (
    "SELECT COUNT(*) FROM sync_deliveries WHERE destination = ?"
    " AND next_retry_at IN (SELECT expires_at FROM sync_leases WHERE expires_at > ?)"
)


def collect_destination(store: Store, ident: int, scope: str, now: float) -> Dict[str, Any]:
    """The stored figures of the destination of id ``ident`` whose counters start with
    ``scope`` (the facade adds its link state)."""
    with store.lock:
        conn = store.conn()
        figures: Dict[str, Any] = {
            "depth": destinations.pending_count(conn, ident),
            "oldest_item_timestamp": conn.execute(DESTINATION_OLDEST_SQL, (1 << ident,)).fetchone()[0],
            "in_flight": int(conn.execute(DESTINATION_IN_FLIGHT_SQL, (ident, now)).fetchone()[0]),
            "dead_lettered": deadletter.count_dead(conn, ident),
        }
        counters = store.counters([scope + key for key in DESTINATION_COUNTER_KEYS])
        for key in DESTINATION_COUNTER_KEYS:
            figures[key] = counters.get(scope + key, None if key in _UNSET_KEYS else 0)
        figures["last_error"] = deadletter.open_note(store.sealer, figures["last_error"], store.queue_id)
    return figures


def add_up(stats: Dict[str, Any], each: Dict[str, Dict[str, Any]]) -> None:
    """Make the file's figures of a queue with destinations those of its destinations: the
    counts added up, the last success and the last error the latest of any."""
    for key in _SUMMED_KEYS:
        stats[key] = stats[key] + sum(figures[key] for figures in each.values())
    stats["dead_lettered"] += sum(figures["dead_lettered"] for figures in each.values())
    successes = [figures["last_success_at"] for figures in each.values() if figures["last_success_at"] is not None]
    if successes:
        stats["last_success_at"] = max(successes)
    errors = [figures for figures in each.values() if figures["last_error_at"] is not None]
    if errors:
        latest = max(errors, key=lambda figures: figures["last_error_at"])
        stats["last_error"], stats["last_error_at"] = latest["last_error"], latest["last_error_at"]


def collect(store: Store, now: float) -> Dict[str, Any]:
    """The figures of ``get_stats()`` at ``now``, read under the store's lock."""
    with store.lock:
        conn = store.conn()
        depth, oldest, retries, retrying = conn.execute(STATS_SQL).fetchone()
        by_priority = {level.name: 0 for level in Priority}
        expired = 0
        for level, count, stale in conn.execute(DEPTH_BY_PRIORITY_SQL, (now,)):
            by_priority[Priority(level).name] = count
            expired += stale
        stats: Dict[str, Any] = {
            "depth": depth,
            "oldest_item_timestamp": oldest,
            "total_retries": retries,
            "retrying_items": retrying,
            "messages_sent_today": store.sent_today(),
            "depth_by_priority": by_priority,
            "expired": expired,
            "in_flight": int(conn.execute(IN_FLIGHT_SQL, (now,)).fetchone()[0]),
            "dead_lettered": deadletter.count_dead(conn),
        }
        counters = store.counters(COUNTER_KEYS)
        for key in COUNTER_KEYS:
            stats[key] = counters.get(key, None if key in _UNSET_KEYS else 0)
        stats["last_error"] = deadletter.open_note(store.sealer, stats["last_error"], store.queue_id)
        # Storage and durability.
        stats.update(storage.counters(conn, store.path if store.is_file else None))
        stats["rekey_unfinished"] = integrity.rekey_unfinished(conn)
    return stats
