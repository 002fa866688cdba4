"""Bounded storage: queue limits and eviction, free-disk margin, expiry purge, space reclaim.

``StorageGuard.admit`` is called by every enqueue path inside its write transaction,
before the insert: it makes room by evicting the lowest priority, oldest items first
(Logs, then Telemetry, then Anomaly; Critical never), or raises ``QueueFullError`` so that
the transaction writes nothing. ``StorageGuard.maintain`` runs, at most once per
``MAINTENANCE_INTERVAL``, outside any transaction: it gives freed pages back to the file
system (incremental auto-vacuum) and keeps the WAL bounded.
"""

import contextlib
import logging
import math
import os
import sqlite3
import time
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from .. import _codec, _validate
from .._errors import DiskFullError, QueueFullError
from . import destinations
from .sql import ACK_SQL, ADD_COUNTER_SQL, COUNT_SQL, write_transaction

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

DEFAULT_MIN_FREE_DISK_BYTES = 8 * 1024 * 1024
DEFAULT_PURGE_INTERVAL = 60.0
MAINTENANCE_INTERVAL = 1.0
# A WAL larger than this is checkpointed and truncated. SQLite's own checkpoint after
# each commit past 1000 pages keeps it near 4 MiB unless readers are never all idle.
WAL_LIMIT_BYTES = 16 * 1024 * 1024
CHECKPOINT_WAIT_MS = 200
# SQLite truncates a reset WAL back to this size instead of keeping its largest size.
JOURNAL_SIZE_LIMIT = 4 * 1024 * 1024
# Free pages are kept for reuse up to this many; beyond it they go back to the disk.
KEEP_FREE_PAGES = 256
# A database from an earlier release (no auto-vacuum) is converted by a VACUUM once its
# live content is this small, typically when its backlog has been drained: the rewrite
# then copies at most this much, never a backlog.
CONVERT_MAX_LIVE_PAGES = 256
EVICTABLE_PRIORITIES = (4, 3, 2)
AUTO_VACUUM_INCREMENTAL = 2
SQLITE_FULL = 13

USAGE_SQL = "SELECT COUNT(*), COALESCE(SUM(LENGTH(CAST(payload AS BLOB))), 0) FROM sync_queue"
# NOT INDEXED: a rowid scan from the last evicted id of a priority yields its oldest items
# first without sorting the whole priority.
EVICT_CANDIDATES_SQL = (
    "SELECT id, LENGTH(CAST(payload AS BLOB)) FROM sync_queue NOT INDEXED"
    " WHERE id > ? AND priority = ? ORDER BY id LIMIT ?"
)
PURGE_EXPIRED_SQL = "DELETE FROM sync_queue WHERE created_at + ttl_seconds <= ?"
EVICTED_KEY = "evicted_total"
PURGED_KEY = "expired_purged_total"
COUNTER_KEYS = (EVICTED_KEY, PURGED_KEY, "quarantined_total", "clock_jumps_total")
READ_COUNTERS_SQL = f"SELECT key, value FROM sync_meta WHERE key IN ({', '.join('?' * len(COUNTER_KEYS))})"


def is_file_path(path: str) -> bool:
    """True when ``path`` names a file on disk: not ``:memory:`` (``file:`` URIs are refused
    by ``_validate.db_path``)."""
    return path != ":memory:"


def is_disk_full(exc: BaseException) -> bool:
    """True for SQLite's ``SQLITE_FULL`` (disk full, or ``max_page_count`` reached)."""
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return bool(code & 0xFF == SQLITE_FULL)
    return isinstance(exc, sqlite3.OperationalError) and "database or disk is full" in str(exc)


def disk_full_error(path: str, exc: BaseException) -> DiskFullError:
    """The error raised when SQLite runs out of space; nothing of the failed call was written."""
    return DiskFullError(
        28,
        f"no space left for the queue database (nothing of this call was written; stored items are kept): {exc}",
        path,
    )


def configure(conn: sqlite3.Connection) -> None:
    """Per-connection space settings; on a database with no pages yet, incremental auto-vacuum.

    ``auto_vacuum`` can only be chosen before the first table exists; an earlier release's
    file is converted later by ``StorageGuard.maintain`` or ``compact()``.
    """
    if conn.execute("PRAGMA page_count").fetchone()[0] == 0:
        conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute(f"PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}")


def counters(conn: sqlite3.Connection, path: Optional[str]) -> Dict[str, int]:
    """The storage figures of ``get_stats()``: persisted counters and ``storage_bytes`` (the
    file and its WAL; 0 when ``path`` is None, an in-memory or URI database)."""
    stats = dict.fromkeys(COUNTER_KEYS, 0)
    stats.update((key, int(value)) for key, value in conn.execute(READ_COUNTERS_SQL, COUNTER_KEYS))
    size = 0
    if path is not None:
        for name in (path, path + "-wal"):
            try:
                size += os.path.getsize(name)
            except OSError:
                pass
    stats["storage_bytes"] = size
    return stats


class StorageLimits:
    """Validated storage options of one queue."""

    def __init__(
        self,
        max_items: Optional[int],
        max_bytes: Optional[int],
        min_free_disk_bytes: int,
        purge_interval: Optional[float],
    ) -> None:
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.min_free_disk_bytes = min_free_disk_bytes
        self.purge_interval = purge_interval

    @classmethod
    def validated(
        cls,
        max_queue_items: Optional[int],
        max_queue_bytes: Optional[int],
        min_free_disk_bytes: int,
        purge_interval: Optional[float],
    ) -> "StorageLimits":
        """The limits from the queue's options of these names, each checked."""
        return cls(
            max_items=None if max_queue_items is None else _validate.integer("max_queue_items", max_queue_items, 1),
            max_bytes=None if max_queue_bytes is None else _validate.integer("max_queue_bytes", max_queue_bytes, 1),
            min_free_disk_bytes=_validate.integer("min_free_disk_bytes", min_free_disk_bytes, 0),
            purge_interval=None if purge_interval is None else _validate.number("purge_interval", purge_interval, 0.0),
        )


class StorageGuard:
    """Enforces the limits of one queue on its connection; all calls under the queue lock.

    The stored item count and payload bytes are cached while they are known exactly: a
    commit by another connection (``PRAGMA data_version``) or any change by this one that
    did not go through ``admit`` (``total_changes``) makes the next check recount. The
    count is only needed while a limit is set or the disk is low.
    """

    def __init__(self, path: str, limits: StorageLimits) -> None:
        self._path = path
        self.limits = limits
        self._directory = os.path.dirname(os.path.abspath(path)) if is_file_path(path) else ""
        self._usage: Optional[Tuple[int, int]] = None
        self._usage_stamp: Tuple[int, int] = (-1, -1)
        self._usage_has_bytes = False
        self._pending: Optional[Tuple[int, int]] = None
        self._evict_after: Dict[int, int] = {}
        self._pending_cursors: Optional[Dict[int, int]] = None
        self._evicting = False
        self._refusing = False
        self._disk_checked_at = -math.inf
        self._disk_headroom = math.inf
        self._written_since_check = 0
        self._maintained_at = -math.inf
        self._purged_at = -math.inf

    # -- admission ----------------------------------------------------------------------

    @contextlib.contextmanager
    def transaction(self, conn: sqlite3.Connection) -> Iterator[None]:
        """A write transaction around ``admit`` and the insert it admits."""
        try:
            with write_transaction(conn):
                yield
        except BaseException:
            self.rolled_back()
            raise
        self.committed(conn)

    def admit(self, conn: sqlite3.Connection, texts: Sequence[str], now: float) -> None:
        """Make room for the payload ``texts`` about to be inserted, or raise ``QueueFullError``.

        Call inside the write transaction, before the insert; the transaction must be
        rolled back if this raises, so that nothing is written.
        """
        limits = self.limits
        count = len(texts)
        estimate = sum(map(len, texts))
        low_disk = self._low_on_disk(estimate)
        self._written_since_check += estimate
        if limits.max_items is None and limits.max_bytes is None and not low_disk:
            self._pending = None
            self._end_episode()
            return
        nbytes = sum(len(text.encode()) for text in texts)
        need_bytes = limits.max_bytes is not None or low_disk
        items, size = self._current_usage(conn, need_bytes)
        max_items = limits.max_items if limits.max_items is not None else math.inf
        max_bytes = limits.max_bytes if limits.max_bytes is not None else math.inf
        if low_disk:
            # Below the free-disk margin the queue may not grow: the new item has to reuse
            # the space of items evicted for it.
            max_bytes = min(max_bytes, size)
        if count > max_items or nbytes > max_bytes:
            self._refuse(f"{count} item(s) of {nbytes} bytes can never fit within {self._describe(low_disk)}")
        excess_items = items + count - max_items
        excess_bytes = size + nbytes - max_bytes
        if excess_items > 0 or excess_bytes > 0:
            if self.purge_due():
                purged = self.purge_expired(conn, now)
                items, size = self._current_usage(conn, need_bytes) if purged else (items, size)
                excess_items = items + count - max_items
                excess_bytes = size + nbytes - max_bytes
        if excess_items > 0 or excess_bytes > 0:
            evicted, freed = self._evict(conn, excess_items, excess_bytes, low_disk)
            items -= evicted
            size -= freed
        elif not low_disk and items + count <= 0.9 * max_items and size + nbytes <= 0.9 * max_bytes:
            # Ten per cent below the limits, so that a queue hovering at them logs once.
            self._end_episode()
        self._pending = (items + count, size + nbytes)

    def _end_episode(self) -> None:
        if self._evicting or self._refusing:
            logger.info("queue %r is within its storage limits again", self._path)
            self._evicting = self._refusing = False

    def committed(self, conn: sqlite3.Connection) -> None:
        """Record, after the commit of an admitted insert, the usage it left."""
        if self._pending is not None:
            self._usage = self._pending
            self._usage_stamp = (self._data_version(conn), conn.total_changes)
            self._pending = None
        if self._pending_cursors is not None:
            self._evict_after = self._pending_cursors
            self._pending_cursors = None

    def rolled_back(self) -> None:
        """Forget what an admitted transaction that did not commit was going to store."""
        self._pending = None
        self._pending_cursors = None
        self._usage = None

    def _current_usage(self, conn: sqlite3.Connection, need_bytes: bool) -> Tuple[int, int]:
        """Stored items and payload bytes (bytes 0 unless ``need_bytes``; then exact)."""
        stamp = (self._data_version(conn), conn.total_changes)
        if self._usage is None or stamp != self._usage_stamp or (need_bytes and not self._usage_has_bytes):
            if need_bytes:
                count, size = conn.execute(USAGE_SQL).fetchone()
            else:
                count, size = conn.execute(COUNT_SQL).fetchone()[0], 0
            self._usage = (int(count), int(size))
            self._usage_stamp = stamp
            self._usage_has_bytes = need_bytes
        return self._usage

    @staticmethod
    def _data_version(conn: sqlite3.Connection) -> int:
        return int(conn.execute("PRAGMA data_version").fetchone()[0])

    def _evict(
        self, conn: sqlite3.Connection, excess_items: float, excess_bytes: float, low_disk: bool
    ) -> Tuple[int, int]:
        victims: List[int] = []
        freed = 0
        cursors = dict(self._evict_after)
        for level in EVICTABLE_PRIORITIES:
            while excess_items > len(victims) or excess_bytes > freed:
                rows = conn.execute(EVICT_CANDIDATES_SQL, (cursors.get(level, 0), level, 256)).fetchall()
                if not rows:
                    break
                for row_id, size in rows:
                    victims.append(row_id)
                    freed += int(size)
                    cursors[level] = row_id
                    if excess_items <= len(victims) and excess_bytes <= freed:
                        break
            if excess_items <= len(victims) and excess_bytes <= freed:
                break
        else:
            self._refuse(f"only Critical items are left to evict, and it is at {self._describe(low_disk)}")
        chunks = _codec.id_chunks(victims)
        for chunk in chunks:
            conn.execute(ACK_SQL[len(chunk)], chunk)
        destinations.forget(conn, chunks)
        conn.execute(ADD_COUNTER_SQL, (EVICTED_KEY, len(victims)))
        # Every item of a priority up to its last victim is gone and ids only grow, so the
        # next scan of that priority starts there, once this transaction has committed.
        self._pending_cursors = cursors
        if not self._evicting:
            logger.warning(
                "queue %r is full (%s): evicting the oldest items of the lowest priorities to make room",
                self._path,
                self._describe(low_disk),
            )
            self._evicting = True
        self._refusing = False
        return len(victims), freed

    def _refuse(self, reason: str) -> None:
        if not self._refusing:
            logger.warning("queue %r refuses new items: %s", self._path, reason)
            self._refusing = True
        raise QueueFullError(f"queue {self._path!r} is full: {reason}; nothing was written")

    def _describe(self, low_disk: bool) -> str:
        parts = []
        if self.limits.max_items is not None:
            parts.append(f"max_queue_items={self.limits.max_items}")
        if self.limits.max_bytes is not None:
            parts.append(f"max_queue_bytes={self.limits.max_bytes}")
        if low_disk:
            parts.append(f"less than min_free_disk_bytes={self.limits.min_free_disk_bytes} free on disk")
        return ", ".join(parts)

    # -- free disk ------------------------------------------------------------------------

    def _low_on_disk(self, nbytes: int) -> bool:
        margin = self.limits.min_free_disk_bytes
        if margin == 0 or not self._directory:
            return False
        now = time.monotonic()
        # statvfs is cheap but not free: look again after a second, or sooner when the
        # writes since the last look could have used half the headroom it showed.
        if now - self._disk_checked_at > 1.0 or 2 * (self._written_since_check + nbytes) > self._disk_headroom:
            try:
                stat = os.statvfs(self._directory)
            except OSError:
                return False
            try:
                wal_size = os.path.getsize(self._path + "-wal")
            except OSError:
                wal_size = 0
            # The WAL grows to about JOURNAL_SIZE_LIMIT before a checkpoint starts it over:
            # that growth is spoken for already.
            self._disk_headroom = stat.f_bavail * stat.f_frsize - margin - max(0, JOURNAL_SIZE_LIMIT - wal_size)
            self._disk_checked_at = now
            self._written_since_check = 0
        return self._disk_headroom - self._written_since_check - nbytes < 0

    # -- expiry ---------------------------------------------------------------------------

    def purge_due(self) -> bool:
        """True when ``purge_interval`` has passed since the last purge of expired items."""
        interval = self.limits.purge_interval
        return interval is not None and time.monotonic() - self._purged_at >= interval

    def purge_expired(self, conn: sqlite3.Connection, now: float) -> int:
        """Delete the items whose TTL has run out at ``now`` and count them; return how many.

        Runs in the caller's transaction if one is open.
        """
        self._purged_at = time.monotonic()
        deleted = int(conn.execute(PURGE_EXPIRED_SQL, (now,)).rowcount)
        if deleted:
            destinations.forget_orphans(conn)
            conn.execute(ADD_COUNTER_SQL, (PURGED_KEY, deleted))
            logger.info("purged %d expired items from %r", deleted, self._path)
        return deleted

    # -- reclaiming space -----------------------------------------------------------------

    def maintain(self, conn: sqlite3.Connection, *, force: bool = False) -> None:
        """Give free pages back to the disk and bound the WAL; at most once per interval.

        Call outside any transaction. Failures are logged, never raised: the caller's
        operation has already succeeded.
        """
        now = time.monotonic()
        if not force and now - self._maintained_at < MAINTENANCE_INTERVAL:
            return
        self._maintained_at = now
        if conn.in_transaction or not self._directory:
            return
        try:
            self._checkpoint_if_large(conn)
            self._reclaim(conn)
        except sqlite3.Error as exc:
            logger.info("space maintenance of %r postponed: %s", self._path, exc)

    def _checkpoint_if_large(self, conn: sqlite3.Connection) -> None:
        try:
            wal_size = os.path.getsize(self._path + "-wal")
        except OSError:
            return
        if wal_size > WAL_LIMIT_BYTES:
            # The checkpoint waits for readers through the busy handler: briefly, so that an
            # enqueue is never held up for the full busy timeout by another process's reader.
            timeout = conn.execute("PRAGMA busy_timeout").fetchone()[0]
            conn.execute(f"PRAGMA busy_timeout = {CHECKPOINT_WAIT_MS}")
            try:
                busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            finally:
                conn.execute(f"PRAGMA busy_timeout = {int(timeout)}")
            if busy:
                logger.info("WAL of %r is %d bytes; its checkpoint waits for readers", self._path, wal_size)

    def _reclaim(self, conn: sqlite3.Connection) -> None:
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        if conn.execute("PRAGMA auto_vacuum").fetchone()[0] == AUTO_VACUUM_INCREMENTAL:
            if free > KEEP_FREE_PAGES:
                # executescript steps the pragma to completion; execute would free one page.
                conn.executescript(f"PRAGMA incremental_vacuum({free - KEEP_FREE_PAGES // 2})")
            return
        live = int(conn.execute("PRAGMA page_count").fetchone()[0]) - free
        if live <= CONVERT_MAX_LIVE_PAGES:
            convert_to_incremental(conn)
            logger.info("converted %r to incremental auto-vacuum (live content %d pages)", self._path, live)


def convert_to_incremental(conn: sqlite3.Connection) -> None:
    """Switch a database to incremental auto-vacuum; rewrites the whole file (VACUUM)."""
    conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
    conn.execute("VACUUM")
