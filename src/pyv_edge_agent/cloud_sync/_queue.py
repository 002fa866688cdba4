"""``CloudSyncQueue``: the connection, locking and SQL of the queue (the flush policy is in ``_flush``)."""

import functools
import logging
import os
import sqlite3
import threading
import time
import weakref
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, TypeVar, cast

from . import _batchkeys, _clock, _codec, _deadletter, _integrity, _schema, _storage, _validate
from ._errors import CloudSyncError, CorruptDatabaseError
from ._integrity import IntegrityReport
from ._sql import ACK_SQL, NACK_SQL, write_transaction
from ._types import DeadLetter, Priority, QueueItem

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

_COLUMNS = "id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at"
INSERT_SQL = "INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds) VALUES (?, ?, ?, ?)"
LAST_ROWID_SQL = "SELECT last_insert_rowid()"
# One query per priority: with ``priority = ?`` the index (priority, next_retry_at, rowid)
# yields rows already in the documented order, and items parked for a later retry are
# skipped by the range instead of scanned.
SELECT_ELIGIBLE_SQL = (
    f"SELECT {_COLUMNS} FROM sync_queue"
    " WHERE priority = ? AND next_retry_at <= ? AND created_at + ttl_seconds > ?"
    " ORDER BY next_retry_at, id LIMIT ?"
)
COUNT_SQL = "SELECT COUNT(*) FROM sync_queue"
STATS_SQL = (
    "SELECT COUNT(*), MIN(created_at), COALESCE(SUM(retry_count), 0), COALESCE(SUM(retry_count > 0), 0) FROM sync_queue"
)
DEPTH_BY_PRIORITY_SQL = (
    "SELECT priority, COUNT(*), COALESCE(SUM(created_at + ttl_seconds <= ?), 0) FROM sync_queue GROUP BY priority"
)
IN_FLIGHT_SQL = "SELECT COALESCE(SUM(items), 0) FROM sync_leases WHERE expires_at > ?"
# With ``priority = ?`` the index yields the earliest retry time first; expired items are
# stepped over.
NEXT_DUE_SQL = (
    "SELECT next_retry_at FROM sync_queue WHERE priority = ? AND created_at + ttl_seconds > ?"
    " ORDER BY next_retry_at LIMIT 1"
)
READ_COUNTER_SQL = "SELECT value FROM sync_meta WHERE key = ?"
RESET_DAILY_SQL = "UPDATE sync_meta SET value = 0 WHERE key = 'messages_sent_today'"


CONFIG_KEYS = (
    "db_path",
    "durability",
    "busy_timeout",
    "max_batch_items",
    "max_batch_bytes",
    "retry_base_seconds",
    "retry_max_seconds",
    "lease_seconds",
    "max_queue_items",
    "max_queue_bytes",
    "min_free_disk_bytes",
    "purge_interval",
    "on_corrupt",
    "max_attempts",
    "daily_message_limit",
)
# Counters kept in sync_meta and shown by get_stats(); they survive a restart.
COUNTER_KEYS = (
    "messages_sent_total",
    "failed_batches",
    "dead_lettered_total",
    "last_success_at",
    "last_error",
    "last_error_at",
)

_Method = TypeVar("_Method", bound=Callable[..., Any])


def _sqlite_errors(method: _Method) -> _Method:
    """Turn a full disk and a damaged file into the package's errors, naming the path."""

    @functools.wraps(method)
    def wrapper(self: "CloudSyncQueue", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            error = self._translate_error(exc)
            if error is None:
                raise
            raise error from exc

    return cast(_Method, wrapper)


# A forked child must not use, or even close, the parent's connection: closing it there
# could checkpoint and delete the WAL under the parent. Inherited connections are parked
# here forever instead.
_ALL_QUEUES: "weakref.WeakSet[CloudSyncQueue]" = weakref.WeakSet()
_INHERITED: List[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for queue in list(_ALL_QUEUES):
        queue._forget_connection_after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class _PendingEnqueue:
    """One ``enqueue`` call taking part in a group commit (see ``CloudSyncQueue._group_enqueue``)."""

    __slots__ = ("text", "level", "ttl", "row_id", "error", "lead", "wake")

    def __init__(self, text: str, level: int, ttl: int) -> None:
        self.text = text
        self.level = level
        self.ttl = ttl
        self.row_id = 0
        self.error: Optional[BaseException] = None
        self.lead = False
        # Held until the leader has an outcome for this call, or promotes it to leader.
        self.wake: Optional[threading.Lock] = None


class CloudSyncQueue:
    """A persistent, priority-ordered store-and-forward queue backed by one SQLite file.

    Thread-safe through one ``threading.RLock``; several processes may share the file
    (WAL journal, busy timeout). Items stay stored until acked.

    :param db_path: the SQLite file; its directory is created if needed.
    :param durability: ``"full"`` (default): a returned id survives power loss.
        ``"fast"``: survives a crash of the process, but a power cut may lose the last
        transactions (never the file).
    :param busy_timeout: seconds to wait for another process's write lock.
    :param max_batch_items: most items in one upload by ``maybe_flush``.
    :param max_batch_bytes: most stored payload bytes in one upload (a single larger item
        is still sent alone).
    :param retry_base_seconds: first backoff step after a failed upload.
    :param retry_max_seconds: cap of the exponential backoff.
    :param lease_seconds: how long a batch being uploaded is hidden from other flushers; a
        flusher that dies mid-upload leaves its items to come back after this.
    :param max_queue_items: most items stored (None: no limit). A new item beyond it
        evicts the oldest item of the lowest priority (Logs, then Telemetry, then
        Anomaly); Critical items are never evicted, and when only they are left the new
        item is refused with ``QueueFullError`` and nothing is written.
    :param max_queue_bytes: most stored payload bytes (the JSON text; None: no limit),
        enforced like ``max_queue_items``.
    :param min_free_disk_bytes: below this much free space on the file system the queue
        stops growing: new items replace evicted ones or are refused (0: no margin).
    :param purge_interval: ``maybe_flush`` deletes expired items at most this often, in
        seconds (None: never; ``purge_expired()`` always can).
    :param on_corrupt: ``"raise"`` (default): a damaged file is a ``CorruptDatabaseError``
        and stays untouched. ``"quarantine"``: it is renamed aside with a timestamp and an
        empty queue starts, so an unattended agent never wedges on it.
    :param clock: the wall clock, seconds since the epoch (default ``time.time``); the
        queue never lets its time run backwards, see ``_clock``.
    :param max_attempts: how many times the endpoint may reject an item (HTTP 400/422 or
        an ``UploadResult``) before it moves to the dead-letter table.
    :param daily_message_limit: when set, ``maybe_flush`` sends no more non-critical
        items once ``messages_sent_today`` reaches it; critical items always go.
    """

    def __init__(
        self,
        db_path: "str | os.PathLike[str]" = "sync_queue.db",
        *,
        durability: str = "full",
        busy_timeout: float = 30.0,
        max_batch_items: int = 500,
        max_batch_bytes: int = 512 * 1024,
        retry_base_seconds: float = 1.0,
        retry_max_seconds: float = 300.0,
        lease_seconds: float = 300.0,
        max_queue_items: Optional[int] = None,
        max_queue_bytes: Optional[int] = None,
        min_free_disk_bytes: int = _storage.DEFAULT_MIN_FREE_DISK_BYTES,
        purge_interval: Optional[float] = _storage.DEFAULT_PURGE_INTERVAL,
        on_corrupt: str = "raise",
        clock: Callable[[], float] = time.time,
        max_attempts: int = 5,
        daily_message_limit: Optional[int] = None,
    ) -> None:
        path = self._path = _validate.db_path(db_path)
        self._durability = _validate.choice("durability", durability, tuple(_schema.SYNCHRONOUS))
        self._busy_timeout = _validate.number("busy_timeout", busy_timeout, 0.0, maximum=_schema.MAX_BUSY_TIMEOUT)
        self._max_batch_items = _validate.integer("max_batch_items", max_batch_items, 1)
        self._max_batch_bytes = _validate.integer("max_batch_bytes", max_batch_bytes, 1)
        self._retry_base = _validate.number("retry_base_seconds", retry_base_seconds, 0.0)
        self._retry_max = _validate.number("retry_max_seconds", retry_max_seconds, 0.0)
        if self._retry_max < self._retry_base:
            raise ValueError(
                f"retry_max_seconds ({retry_max_seconds!r}) must be at least "
                f"retry_base_seconds ({retry_base_seconds!r})"
            )
        self._lease = _validate.number("lease_seconds", lease_seconds, 0.0, allow_equal=False)
        self._max_attempts = _validate.integer("max_attempts", max_attempts, 1)
        self._daily_limit = (
            None if daily_message_limit is None else _validate.integer("daily_message_limit", daily_message_limit, 0)
        )
        # Flush state of this process: when the link may be tried again, and whether it
        # works, fails or refuses the key (so that each change is logged once).
        self._backoff_until = 0.0
        self._link_state: Optional[str] = None
        self._wakers: List[threading.Event] = []
        self._on_corrupt = _validate.choice("on_corrupt", on_corrupt, _integrity.ON_CORRUPT_CHOICES)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds since the epoch, got {clock!r:.100}")
        self._wall = clock
        self._time = _clock.QueueClock(clock)
        self._clock: Callable[[], float] = self._now
        self._storage = _storage.StorageGuard(
            path,
            _storage.StorageLimits(
                max_items=None if max_queue_items is None else _validate.integer("max_queue_items", max_queue_items, 1),
                max_bytes=None if max_queue_bytes is None else _validate.integer("max_queue_bytes", max_queue_bytes, 1),
                min_free_disk_bytes=_validate.integer("min_free_disk_bytes", min_free_disk_bytes, 0),
                purge_interval=None
                if purge_interval is None
                else _validate.number("purge_interval", purge_interval, 0.0),
            ),
        )
        self._lock = threading.RLock()
        self._reset_group_commit()
        self._db: Optional[sqlite3.Connection] = None
        self._closed = False
        self._created_dirs: List[str] = []
        if self._is_file():
            self._created_dirs = _integrity.make_directories(os.path.dirname(os.path.abspath(path)), path)
        self._connect()
        _ALL_QUEUES.add(self)

    # -- connection -------------------------------------------------------------------

    def _is_file(self) -> bool:
        return self._path != ":memory:"

    def _connect(self) -> sqlite3.Connection:
        if self._on_corrupt == "quarantine" and self._is_file():
            with _integrity.quarantine_lock(self._path):
                conn = self._open_or_quarantine()
        else:
            conn = self._open()
        self._db = conn
        return conn

    def _open_or_quarantine(self) -> sqlite3.Connection:
        try:
            return self._open()
        except CorruptDatabaseError as exc:
            aside = _integrity.quarantine(self._path, self._wall())
            logger.error(
                "queue database %r is damaged (%s); moved it to %r and started an empty queue", self._path, exc, aside
            )
        conn = self._open()
        with write_transaction(conn):
            conn.execute(_storage.ADD_COUNTER_SQL, (_integrity.QUARANTINED_KEY, 1))
        return conn

    def _open(self) -> sqlite3.Connection:
        conn = _integrity.open_database(
            self._path,
            self._durability,
            self._busy_timeout,
            thorough=self._on_corrupt == "quarantine",
            created_dirs=self._created_dirs,
        )
        self._created_dirs = []
        try:
            self._time.start(_clock.read_high_water(conn))
        except BaseException:
            conn.close()
            raise
        return conn

    def _translate_error(self, exc: sqlite3.Error) -> Optional[Exception]:
        error = _integrity.translate_error(exc, self._path)
        if isinstance(error, CorruptDatabaseError) and self._on_corrupt == "quarantine" and self._db is not None:
            # The next call reopens, finds the damage and moves the file aside.
            _INHERITED.append(self._db)
            self._db = None
        return error

    # -- time -------------------------------------------------------------------------

    def _now(self) -> float:
        """The queue's time (see ``_clock``); moves stored timestamps after a forward step."""
        now = self._time.now()
        if self._time.pending_jump is not None:
            with self._lock:
                _clock.apply_jump(self._conn(), self._time)
        return now

    def _admit(self, conn: sqlite3.Connection, texts: Sequence[str], now: float) -> None:
        """Make room for ``texts`` or raise ``QueueFullError``; call inside the insert's
        write transaction (see ``_storage.StorageGuard.admit``)."""
        self._storage.admit(conn, texts, now)
        _clock.persist_high_water(conn, self._time)

    def _conn(self) -> sqlite3.Connection:
        conn = self._db
        if conn is not None:
            return conn
        if self._closed:
            raise CloudSyncError(f"the queue on {self._path!r} is closed")
        return self._connect()

    def _reset_group_commit(self) -> None:
        # Lock order: ``_group_mutex`` is only ever held for a few list operations and
        # never while taking ``_lock``; a follower waits holding neither.
        self._group_mutex = threading.Lock()
        self._group_pending: List[_PendingEnqueue] = []
        self._group_busy = False
        self._group_last = 1  # size of the latest group

    def _forget_connection_after_fork(self) -> None:
        # The locks may have been held, and a group commit led, by threads that do not
        # exist in the child.
        self._lock = threading.RLock()
        self._time.after_fork()
        self._reset_group_commit()
        if self._db is not None:
            _INHERITED.append(self._db)
            self._db = None

    def close(self) -> None:
        """Close the connection; later calls raise ``CloudSyncError``."""
        with self._lock:
            self._closed = True
            if self._db is not None:
                try:
                    self._db.close()
                finally:
                    self._db = None

    def __enter__(self) -> "CloudSyncQueue":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CloudSyncQueue(db_path={self._path!r}, durability={self._durability!r}, backend={_codec.BACKEND!r})"

    @property
    def db_path(self) -> str:
        """The path of the SQLite file."""
        return self._path

    # -- writing ----------------------------------------------------------------------

    @_sqlite_errors
    def enqueue(
        self,
        payload: Dict[str, Any],
        priority: Priority = Priority.TELEMETRY,
        ttl_seconds: int = 86400,
    ) -> int:
        """Store one payload and return its id; the id is durable when this returns.

        Concurrent calls from several threads share one transaction and one fsync (group
        commit); each still returns only after its own item is committed.

        Raises ``QueueFullError`` (nothing written) when a storage limit cannot be met.
        """
        text = _codec.encode_payload(payload)
        level = _validate.priority_value(priority)
        ttl = _validate.integer("ttl_seconds", ttl_seconds, 0)
        return self._group_enqueue(_PendingEnqueue(text, level, ttl))

    def _group_enqueue(self, entry: _PendingEnqueue) -> int:
        """Commit ``entry`` together with whatever other threads enqueue meanwhile.

        Leader/follower: a caller that finds no commit under way leads and commits at once,
        so a lone caller pays nothing extra. Callers arriving while a leader commits queue
        up and wait; the leader then promotes the first of them, which commits everything
        queued so far in one transaction and wakes the others with their ids.
        """
        with self._group_mutex:
            if self._group_busy:
                entry.wake = threading.Lock()
                entry.wake.acquire()
                self._group_pending.append(entry)
            else:
                self._group_busy = True
        if entry.wake is not None:
            try:
                entry.wake.acquire()
            except BaseException:
                self._abandon(entry)
                raise
            if not entry.lead:
                if entry.error is not None:
                    raise entry.error
                return entry.row_id
            with self._group_mutex:
                group, self._group_pending = self._group_pending, []
        elif self._group_last > 1:
            # Other threads were enqueueing a moment ago and are about to come back with
            # their next items: let them queue behind this one rather than commit alone.
            time.sleep(0)
            with self._group_mutex:
                group, self._group_pending = [entry] + self._group_pending, []
        else:
            group = [entry]
        self._group_last = len(group)
        try:
            self._commit_group(group, entry)
        finally:
            with self._group_mutex:
                self._hand_off()
            # Only now wake this group's callers: the next leader's commit (its fsync runs
            # with the GIL released) overlaps with their taking the GIL in turn to return.
            for other in group:
                if other is not entry and (other.row_id or other.error is not None):
                    other.wake.release()  # type: ignore[union-attr]
        if entry.error is not None:
            raise entry.error
        return entry.row_id

    def _hand_off(self) -> None:
        """Promote the first waiting caller to leader, or mark no commit under way.

        Called with ``_group_mutex`` held.
        """
        if self._group_pending:
            successor = self._group_pending[0]
            successor.lead = True
            successor.wake.release()  # type: ignore[union-attr]
        else:
            self._group_busy = False

    def _abandon(self, entry: _PendingEnqueue) -> None:
        """Withdraw a waiting caller interrupted by an exception (KeyboardInterrupt) so that
        the group commit never waits for a thread that has gone."""
        with self._group_mutex:
            if entry.lead:
                self._hand_off()
            elif entry in self._group_pending:
                self._group_pending.remove(entry)

    def _commit_group(self, group: List[_PendingEnqueue], leader: _PendingEnqueue) -> None:
        """Insert every entry of ``group`` in one transaction and record each one's outcome.

        If the shared transaction fails, each entry is retried alone so that every caller
        gets the outcome of its own item, not of its neighbours'.
        """
        try:
            now = self._clock()
            try:
                ids = self._insert_rows([(e.text, e.level, now, e.ttl) for e in group])
                for entry, row_id in zip(group, ids):
                    entry.row_id = row_id
                if self._wakers and any(e.level == 1 for e in group):
                    self._wake()
            except Exception as exc:
                if len(group) == 1:
                    leader.error = exc
                for entry in group if len(group) > 1 else ():
                    try:
                        entry.row_id = self._insert_rows([(entry.text, entry.level, self._clock(), entry.ttl)])[0]
                    except Exception as single_exc:
                        entry.error = single_exc
                if self._wakers and any(e.level == 1 and e.error is None for e in group):
                    self._wake()
        except BaseException:
            # The leader's thread is being interrupted: callers without an outcome go back
            # to the front of the queue for the next leader.
            with self._group_mutex:
                self._group_pending[:0] = [e for e in group if e is not leader and e.row_id == 0 and e.error is None]
            raise

    def _insert_rows(self, rows: List[Tuple[str, int, float, int]]) -> List[int]:
        """Insert ``rows`` in one write transaction and return their ids in order.

        Every enqueue path goes through here, so a check that must see the rows inside
        the same transaction (such as a storage bound) belongs in this method.
        """
        with self._lock:
            conn = self._conn()
            with self._storage.transaction(conn):
                self._admit(conn, [row[0] for row in rows], rows[0][2])
                if len(rows) == 1:
                    last: int = conn.execute(INSERT_SQL, rows[0]).lastrowid  # type: ignore[assignment]
                else:
                    conn.executemany(INSERT_SQL, rows)
                    last = conn.execute(LAST_ROWID_SQL).fetchone()[0]
            self._storage.maintain(conn)
        # AUTOINCREMENT under the write lock hands out consecutive ids.
        return list(range(last - len(rows) + 1, last + 1))

    @_sqlite_errors
    def enqueue_many(
        self,
        payloads: Sequence[Dict[str, Any]],
        priority: Priority = Priority.TELEMETRY,
        ttl_seconds: int = 86400,
    ) -> List[int]:
        """Store many payloads in one transaction; return their ids in input order.

        Every payload is validated and encoded before anything is written: one bad
        payload stores none of them.
        """
        level = _validate.priority_value(priority)
        ttl = _validate.integer("ttl_seconds", ttl_seconds, 0)
        _validate.iterable("payloads", payloads)
        rows = _codec.encode_rows(payloads, level, self._clock(), ttl)
        if not rows:
            return []
        ids = self._insert_rows(rows)
        if level == 1 and self._wakers:
            self._wake()
        return ids

    @_sqlite_errors
    def ack(self, ids: Sequence[int]) -> int:
        """Delete the given items; return how many rows were deleted. Unknown ids are ignored."""
        chunks = _codec.id_chunks(ids)
        with self._lock:
            deleted = self._run_chunks(ACK_SQL, (), chunks)
            self._storage.maintain(self._conn())
            return deleted

    @_sqlite_errors
    def nack(self, ids: Sequence[int], retry_delay_seconds: float = 60.0) -> int:
        """Count a failed attempt on the given items and hide them for ``retry_delay_seconds``.

        Returns the number of rows updated.
        """
        delay = _validate.number("retry_delay_seconds", retry_delay_seconds, 0.0)
        chunks = _codec.id_chunks(ids)
        with self._lock:
            return self._run_chunks(NACK_SQL, (self._clock() + delay,), chunks)

    def _run_chunks(self, statements: Dict[int, str], prefix: Tuple[Any, ...], chunks: List[Tuple[int, ...]]) -> int:
        """Run one statement per id chunk, in one transaction when there are several."""
        if not chunks:
            return 0
        conn = self._conn()
        if len(chunks) == 1 or conn.in_transaction:
            return sum(conn.execute(statements[len(chunk)], prefix + chunk).rowcount for chunk in chunks)
        with write_transaction(conn):
            changed = sum(conn.execute(statements[len(chunk)], prefix + chunk).rowcount for chunk in chunks)
        return changed

    # -- reading ----------------------------------------------------------------------

    @_sqlite_errors
    def dequeue(self, batch_size: int = 10) -> List[QueueItem]:
        """Return up to ``batch_size`` eligible items in priority order without removing them.

        Eligible: ``next_retry_at <= now`` and ``created_at + ttl_seconds > now``. Order:
        priority, then ``next_retry_at``, then id. Call ``ack`` after a successful upload.
        """
        limit = _validate.integer("batch_size", batch_size, 1)
        return self._eligible(limit)

    @_sqlite_errors
    def peek(self, n: int = 5, *, priority: Optional[Priority] = None) -> List[QueueItem]:
        """Return up to ``n`` eligible items, exactly as ``dequeue`` would, for inspection;
        ``priority`` keeps only that level."""
        limit = _validate.integer("n", n, 1)
        levels = (1, 2, 3, 4) if priority is None else (_validate.priority_value(priority),)
        return self._eligible(limit, levels)

    def _select_eligible(
        self, sql: str, limit: int, now: float, levels: Tuple[int, ...] = (1, 2, 3, 4)
    ) -> List[Tuple[Any, ...]]:
        conn = self._conn()
        rows: List[Tuple[Any, ...]] = []
        for level in levels:
            rows += conn.execute(sql, (level, now, now, limit - len(rows))).fetchall()
            if len(rows) >= limit:
                break
        return rows

    def _eligible(self, limit: int, levels: Tuple[int, ...] = (1, 2, 3, 4)) -> List[QueueItem]:
        with self._lock:
            rows = self._select_eligible(SELECT_ELIGIBLE_SQL, limit, self._clock(), levels)
        return _codec.decode_rows(rows)

    @_sqlite_errors
    def pending_count(self) -> int:
        """Return the number of stored items, whatever their TTL or retry state."""
        with self._lock:
            return int(self._conn().execute(COUNT_SQL).fetchone()[0])

    @_sqlite_errors
    def get_stats(self) -> Dict[str, Any]:
        """Return queue statistics.

        The documented keys ``depth``, ``oldest_item_timestamp``, ``total_retries`` and
        ``retrying_items``; ``messages_sent_today``; ``depth_by_priority`` (priority name
        to count), ``expired`` (stored but past their TTL), ``in_flight`` (leased by a
        flush in progress), ``dead_lettered`` (in the dead-letter table); and the
        persisted counters ``messages_sent_total``, ``failed_batches``,
        ``dead_lettered_total``, ``last_success_at``, ``last_error`` and ``last_error_at``;
        the storage figures ``evicted_total``, ``expired_purged_total``, ``quarantined_total``,
        ``clock_jumps_total`` and ``storage_bytes`` (the file and its WAL).
        """
        with self._lock:
            conn = self._conn()
            now = self._clock()
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
                "messages_sent_today": self._counter("messages_sent_today"),
                "depth_by_priority": by_priority,
                "expired": expired,
                "in_flight": int(conn.execute(IN_FLIGHT_SQL, (now,)).fetchone()[0]),
                "dead_lettered": _deadletter.count_dead(conn),
            }
            for key in COUNTER_KEYS:
                row = conn.execute(READ_COUNTER_SQL, (key,)).fetchone()
                stats[key] = row[0] if row else (None if key.startswith("last_") else 0)
            # Storage and durability (issue 4).
            stats.update(_storage.counters(conn, self._path if self._is_file() else None))
        return stats

    # -- storage and integrity --------------------------------------------------------

    @_sqlite_errors
    def purge_expired(self) -> int:
        """Delete the items whose TTL has run out and return how many; counted in
        ``get_stats()["expired_purged_total"]``."""
        with self._lock:
            conn = self._conn()
            now = self._clock()
            with write_transaction(conn):
                deleted = self._storage.purge_expired(conn, now)
            self._storage.maintain(conn, force=True)
        return deleted

    @staticmethod
    def verify_file(db_path: "str | os.PathLike[str]") -> IntegrityReport:
        """Check a queue file without opening it as a queue: read-only, never creates or
        changes anything, and reports a damaged or unreadable file instead of raising."""
        return _integrity.verify_file(os.fspath(db_path))

    def verify(self) -> IntegrityReport:
        """Check the whole file with SQLite's ``integrity_check``; writes nothing.

        Returns an ``IntegrityReport`` (``ok``, ``messages``, ``schema_version``, ``path``).
        """
        with self._lock:
            return _integrity.verify(self._conn(), self._path)

    @_sqlite_errors
    def compact(self) -> None:
        """Rewrite the file to its smallest size (SQLite ``VACUUM``) and switch a file made by
        an earlier release to incremental auto-vacuum, so that it shrinks by itself from
        then on. Needs free disk space about the size of the stored items."""
        with self._lock:
            conn = self._conn()
            _storage.convert_to_incremental(conn)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    # -- counters ---------------------------------------------------------------------

    def _counter(self, key: str) -> int:
        row = self._conn().execute(READ_COUNTER_SQL, (key,)).fetchone()
        return int(row[0]) if row else 0

    @property
    def messages_sent_today(self) -> int:
        """Items acked by ``maybe_flush`` since the last ``reset_daily_counters()``; persisted."""
        with self._lock:
            return self._counter("messages_sent_today")

    @_sqlite_errors
    def reset_daily_counters(self) -> None:
        """Reset ``messages_sent_today`` to 0; call it from a job at midnight."""
        with self._lock:
            self._conn().execute(RESET_DAILY_SQL)

    # -- flushing ---------------------------------------------------------------------

    @_sqlite_errors
    def maybe_flush(self, uploader: Any = None) -> int:
        """Send eligible items through ``uploader.post_batch`` in priority order; return how
        many were acked.

        Items go in batches bounded by ``max_batch_items`` and ``max_batch_bytes``; each
        accepted batch is acked. A failure is classified (see the README): a transient
        one nacks the batch with backoff and ends the call, a 413 splits the batch, a
        rejection isolates the bad items and in the end dead-letters them, refused
        credentials keep every item and back off long. Without an uploader nothing is
        sent and nothing is removed.
        """
        if uploader is None:
            return 0
        # The flush machinery (and the uploader module it uses) loads on the first flush: a
        # process that only enqueues never needs it, and it is a tenth of the import time.
        from . import _flush

        flusher = _flush.Flusher(self, uploader)  # checks the uploader before anything is written
        self._housekeeping()
        return flusher.run()

    def _housekeeping(self) -> None:
        """On the way of a flush: purge expired items (every ``purge_interval``) and give
        space back (see ``_storage.StorageGuard.maintain``)."""
        with self._lock:
            conn = self._conn()
            if self._storage.purge_due():
                now = self._clock()
                with write_transaction(conn):
                    self._storage.purge_expired(conn, now)
                    _batchkeys.collect(conn)
            self._storage.maintain(conn)

    @property
    def backoff_seconds(self) -> float:
        """Seconds left of the backoff that the last failed upload of this queue object set (0 if none)."""
        return max(0.0, self._backoff_until - self._clock())

    def next_due_in(self) -> Optional[float]:
        """Seconds until ``maybe_flush`` has something to send: 0 when an item is due now,
        None when nothing is stored but expired items.

        Counts the current backoff, and leaves out non-critical items once the daily
        message budget is spent. A sync loop sleeps this long instead of polling.
        """
        from . import _flush  # see maybe_flush

        with self._lock:
            conn = self._conn()
            now = self._clock()
            levels = (1,) if _flush.budget_left(self, conn) == 0 else (1, 2, 3, 4)
            due = [float(row[0]) for level in levels for row in conn.execute(NEXT_DUE_SQL, (level, now))]
        if not due:
            return None
        return max(0.0, min(due) - now, self._backoff_until - now)

    def _wake(self) -> None:
        """Tell sync loops waiting on this queue that a critical item arrived."""
        for event in list(self._wakers):
            event.set()

    # -- dead letters -----------------------------------------------------------------

    def dead_letters(self, limit: int = 100) -> List[DeadLetter]:
        """Return up to ``limit`` items from the dead-letter table, oldest first."""
        with self._lock:
            return _deadletter.list_dead(self._conn(), limit)

    def requeue_dead_letters(self, ids: Optional[Sequence[int]] = None) -> int:
        """Move dead letters (all, or those with the given ids) back into the queue, due now
        and with a fresh TTL; return how many moved."""
        chunks = _deadletter.id_chunks(ids)
        with self._lock:
            return self._in_transaction(lambda conn: _deadletter.requeue(conn, chunks, self._clock()))

    def drop_dead_letters(self, ids: Optional[Sequence[int]] = None) -> int:
        """Delete dead letters (all, or those with the given ids) for good; return how many."""
        chunks = _deadletter.id_chunks(ids)
        with self._lock:
            return self._in_transaction(lambda conn: _deadletter.drop(conn, chunks))

    def _in_transaction(self, work: Callable[[sqlite3.Connection], int]) -> int:
        conn = self._conn()
        with write_transaction(conn):
            result = work(conn)
        return result

    # -- construction from configuration ------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "CloudSyncQueue":
        """Build a queue from a configuration mapping whose keys are the constructor's
        arguments (``db_path``, ``durability``, ...). Unknown keys are a ``ValueError``."""
        if not isinstance(d, Mapping):
            raise TypeError(f"d must be a mapping of configuration keys, got {type(d).__name__}")
        unknown = sorted(str(key) for key in d if key not in CONFIG_KEYS)
        if unknown:
            raise ValueError(f"unknown CloudSyncQueue configuration keys {unknown}; valid keys are {list(CONFIG_KEYS)}")
        return cls(**d)
