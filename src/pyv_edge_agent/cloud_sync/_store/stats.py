"""What ``CloudSyncQueue.get_stats()`` reads from the file (``cli._metrics`` names and shows it)."""

from typing import Any, Dict

from .._types import Priority
from . import deadletter, integrity, storage
from .sql import DEPTH_BY_PRIORITY_SQL, IN_FLIGHT_SQL, STATS_SQL, UNSEALED_REFUSED_KEY
from .store import Store

# Counters kept in sync_meta and shown by get_stats(); they survive a restart.
COUNTER_KEYS = (
    "messages_sent_total",
    "failed_batches",
    "dead_lettered_total",
    "last_success_at",
    "last_error",
    "last_error_at",
    "link_bytes_per_second",
    "link_items_per_second",
    UNSEALED_REFUSED_KEY,
)
# Counters with no value until something happened (the others start at 0).
_UNSET_KEYS = ("last_success_at", "last_error", "last_error_at", "link_bytes_per_second", "link_items_per_second")


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
