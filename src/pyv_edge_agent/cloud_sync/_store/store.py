"""``Store``: one queue file's connection, lock, transactions, error translation and clock.

Every use of the file runs under ``Store.lock``, and the lock is where SQLite's errors
become the package's (a full disk, a damaged file, naming the path): no caller can forget
the translation.

Opening (integrity precheck, pragmas, migration) is ``integrity.open_database``; a damaged
file is refused or, with ``on_corrupt="quarantine"``, moved aside and started afresh. After
a fork the child drops the parent's connection and locks (see ``after_fork``).
"""

import contextlib
import logging
import os
import sqlite3
import threading
import weakref
from types import TracebackType
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Type

from .._errors import CloudSyncError, CorruptDatabaseError, MissingKeyError
from . import batchkeys, destinations, integrity, storage
from . import clock as _clock
from .backlog import Backlog
from .sql import (
    ADD_COUNTER_SQL,
    ANY_PLAIN_SQL,
    FIRST_SEALED_SQL,
    INSERT_ID_SQL,
    INSERT_SQL,
    LAST_ROWID_SQL,
    NEXT_ID_SQL,
    READ_COUNTER_SQL,
    SEALED_FROM_ALL,
    SEALED_FROM_KEY,
    SET_COUNTER_SQL,
    write_transaction,
)

if TYPE_CHECKING:
    from .deliveries import Deliveries
    from .seal import Sealer

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# A forked child must not use, or even close, the parent's connection: closing it there
# could checkpoint and delete the WAL under the parent. Inherited connections are parked
# here forever instead.
_ALL_STORES: "weakref.WeakSet[Store]" = weakref.WeakSet()
_INHERITED: List[sqlite3.Connection] = []


def _after_fork_in_child() -> None:
    for store in list(_ALL_STORES):
        store.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class FileLock:
    """The store's lock: reentrant, and a SQLite error that leaves the block becomes the
    package's error (``Store.translate_error``), translated while the lock is still held."""

    __slots__ = ("_lock", "_translate")

    def __init__(self, translate: Callable[[sqlite3.Error], Optional[Exception]]) -> None:
        self._lock = threading.RLock()
        self._translate = translate

    def __enter__(self) -> "FileLock":
        self._lock.acquire()
        return self

    def __exit__(
        self, exc_type: Optional[Type[BaseException]], exc: Optional[BaseException], tb: Optional[TracebackType]
    ) -> None:
        try:
            if isinstance(exc, sqlite3.Error):
                error = self._translate(exc)
                if error is not None:
                    raise error from exc
        finally:
            self._lock.release()


class Store:
    """The SQLite side of one queue object: every call that touches the file goes through it.

    ``lock`` (a reentrant ``FileLock``) serialises this object's use of its one connection
    and translates SQLite's errors; ``conn()`` opens it again after a quarantine and
    refuses once ``close()`` ran.

    :param path: the database path (``:memory:`` is no file on disk).
    :param clock: the wall clock; ``now()`` is the queue's time built on it (see ``clock``).
    :param limits: the storage limits that every insert is admitted under (``storage``).
    :param sealer: seals payloads before they are stored (None: stored as they come); see
        ``seal``. ``queue_id`` is the open file's identity, which sealing binds items to;
        ``sealed_from`` the id from which on its items must be sealed (None: the file never
        held a sealed item), as last read.
    """

    def __init__(
        self,
        path: str,
        *,
        durability: str,
        busy_timeout: float,
        on_corrupt: str,
        clock: Callable[[], float],
        limits: storage.StorageLimits,
        sealer: "Optional[Sealer]" = None,
    ) -> None:
        self.path = path
        self.sealer = sealer
        self.queue_id = ""
        self.sealed_from: Optional[int] = None
        self.durability = durability
        self.is_file = storage.is_file_path(path)
        self._busy_timeout = busy_timeout
        self._on_corrupt = on_corrupt
        self._wall = clock
        self.clock = _clock.QueueClock(clock)
        self.storage = storage.StorageGuard(path, limits)
        # The destinations' backlog budgets, enforced by ``insert`` (None: none has one).
        self.backlog: Optional[Backlog] = None
        self.lock = FileLock(self.translate_error)
        self._db: Optional[sqlite3.Connection] = None
        self._hold = integrity.FileHold(None)
        self._closed = False
        self._created_dirs: List[str] = []
        if self.is_file:
            self._created_dirs = integrity.make_directories(os.path.dirname(os.path.abspath(path)), path)
        self._connect()
        _ALL_STORES.add(self)

    # -- the connection -----------------------------------------------------------------

    def conn(self) -> sqlite3.Connection:
        """The open connection; call under ``lock``. Raises ``CloudSyncError`` once closed."""
        conn = self._db
        if conn is not None:
            return conn
        if self._closed:
            raise CloudSyncError(f"the queue on {self.path!r} is closed")
        return self._connect()

    def _connect(self) -> sqlite3.Connection:
        if self._on_corrupt == "quarantine" and self.is_file:
            with integrity.quarantine_lock(self.path):
                conn = self._open_or_quarantine()
        else:
            conn = self._open()
        self._db = conn
        return conn

    def _open_or_quarantine(self) -> sqlite3.Connection:
        try:
            return self._open()
        except CorruptDatabaseError as exc:
            aside = integrity.quarantine(self.path, self._wall())
            logger.error(
                "queue database %r is damaged (%s); moved it to %r and started an empty queue", self.path, exc, aside
            )
        conn = self._open()
        with write_transaction(conn):
            conn.execute(ADD_COUNTER_SQL, (integrity.QUARANTINED_KEY, 1))
        return conn

    def _open(self) -> sqlite3.Connection:
        conn, held = integrity.open_database(
            self.path,
            self.durability,
            self._busy_timeout,
            thorough=self._on_corrupt == "quarantine",
            created_dirs=self._created_dirs,
        )
        self._created_dirs = []
        try:
            self.clock.start(_clock.read_high_water(conn))
            self.queue_id = str(conn.execute(READ_COUNTER_SQL, ("queue_id",)).fetchone()[0])
            self.read_sealed_from(conn)
        except BaseException:
            conn.close()
            held.close()
            raise
        self._hold.close()
        self._hold = held
        return conn

    def translate_error(self, exc: sqlite3.Error) -> Optional[Exception]:
        """The package's error for ``exc`` (a full disk, a damaged file), or None to let it be.

        With ``on_corrupt="quarantine"`` a damaged file also drops the connection: the next
        call reopens, finds the damage and moves the file aside.
        """
        error = integrity.translate_error(exc, self.path)
        if isinstance(error, CorruptDatabaseError) and self._on_corrupt == "quarantine" and self._db is not None:
            _INHERITED.append(self._db)
            self._db = None
            self._hold.close()  # this queue's own lock must not stop its quarantine
        return error

    def after_fork(self) -> None:
        """In a forked child: new locks (threads of the parent may have held them) and the
        parent's connection parked, never used or closed; the next call reopens."""
        self.lock = FileLock(self.translate_error)
        self.clock.after_fork()
        # The parent keeps its lock: it belongs to the descriptor, which the parent holds too.
        self._hold.close()
        if self._db is not None:
            _INHERITED.append(self._db)
            self._db = None

    def close(self) -> None:
        """Close the connection; later calls raise ``CloudSyncError``."""
        with self.lock:
            self._closed = True
            try:
                if self._db is not None:
                    self._db.close()
            finally:
                self._db = None
                self._hold.close()

    # -- time -------------------------------------------------------------------------

    def now(self) -> float:
        """The queue's time (see ``clock``); moves stored timestamps after a forward step."""
        now = self.clock.now()
        if self.clock.pending_jump is not None:
            with self.lock:
                _clock.apply_jump(self.conn(), self.clock)
        return now

    # -- statements -------------------------------------------------------------------

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Hold ``lock`` and run the block in one write transaction on the connection."""
        with self.lock:
            conn = self.conn()
            with write_transaction(conn):
                yield conn

    def end_deliveries(self, deliveries: "Deliveries", chunks: List[Tuple[int, ...]]) -> int:
        """Take items off a destination's list (delivered, dead-lettered, acked by hand);
        they leave the file once no destination needs them. Returns how many deliveries
        ended: for a named destination the bits cleared, so that an item delivered twice
        (a lease that ran out) is counted once. Call under ``lock``."""
        removed = self.run_chunks(deliveries.ack, deliveries.key, chunks)
        if deliveries.forget_rejections is not None:
            self.run_chunks(deliveries.forget_rejections, (), chunks)
        for index, (statements, leading) in enumerate(deliveries.after_ack):
            changed = self.run_chunks(statements, leading, chunks)
            if index == 0:
                removed = changed
        return removed

    def run_chunks(self, statements: Dict[int, str], prefix: Tuple[Any, ...], chunks: List[Tuple[int, ...]]) -> int:
        """Run one statement per id chunk, in one transaction when there are several; return
        the rows changed. Call under ``lock``."""
        if not chunks:
            return 0
        conn = self.conn()
        if len(chunks) == 1 or conn.in_transaction:
            return sum(conn.execute(statements[len(chunk)], prefix + chunk).rowcount for chunk in chunks)
        with write_transaction(conn):
            changed = sum(conn.execute(statements[len(chunk)], prefix + chunk).rowcount for chunk in chunks)
        return changed

    # -- sealing --------------------------------------------------------------------------

    def read_sealed_from(self, conn: sqlite3.Connection) -> Optional[int]:
        """Read ``sealed_from`` from the file again (another process may have sealed items)."""
        found = conn.execute(READ_COUNTER_SQL, (SEALED_FROM_KEY,)).fetchone()
        self.sealed_from = None if found is None else int(found[0])
        return self.sealed_from

    def mark_sealed(self, conn: sqlite3.Connection, next_id: int, *, again: bool = False) -> int:
        """Record from which id on the file's items must be sealed, in the caller's write
        transaction, before the first sealed item is written (``again``: once more, after a
        rekey): every item when none is plain, else the first sealed one's (or ``next_id``).
        Returns the mark; ``sealed_from`` takes it once the transaction is committed."""
        found = None if again else conn.execute(READ_COUNTER_SQL, (SEALED_FROM_KEY,)).fetchone()
        if found is not None:
            return int(found[0])
        mark = SEALED_FROM_ALL
        if conn.execute(ANY_PLAIN_SQL).fetchone()[0]:
            first = conn.execute(FIRST_SEALED_SQL).fetchone()[0]
            mark = next_id if first is None else min(int(first), next_id)
        conn.execute(SET_COUNTER_SQL, (SEALED_FROM_KEY, mark))
        return mark

    # -- items --------------------------------------------------------------------------

    def insert(self, rows: List[Tuple[str, int, float, int]], route: int = 0) -> List[int]:
        """Insert ``rows`` in one write transaction, admitted by ``storage`` (it may evict or
        raise ``QueueFullError``, and then nothing is written); return their ids in order.
        ``route``: the bits of the destinations they go to (0: a queue without destinations),
        written in the same transaction.
        With a ``sealer`` the payloads are sealed first, under the ids they get; without
        one, a file that holds sealed items refuses them (``MissingKeyError``): a plain item
        there would be plaintext in a sealed file, and a flush would not deliver it."""
        if self.sealer is None and self.sealed_from is not None:
            raise MissingKeyError(
                f"the queue file {self.path!r} holds sealed items: enqueue with its encryption_key"
                " (a plain item there would never be delivered); nothing was written"
            )
        mark: Optional[int] = None
        with self.lock:
            conn = self.conn()
            with self.storage.transaction(conn):
                params: Sequence[Tuple[Any, ...]] = rows
                sql = INSERT_SQL
                if self.sealer is not None:
                    first = int(conn.execute(NEXT_ID_SQL).fetchone()[0])
                    if self.sealed_from is None:
                        mark = self.mark_sealed(conn, first)
                    params, sql = self.sealer.seal_rows(rows, first, self.queue_id), INSERT_ID_SQL
                self.storage.admit(conn, [row[0] for row in params], rows[0][2])
                _clock.persist_high_water(conn, self.clock)
                if len(rows) == 1:
                    last: int = conn.execute(sql, params[0]).lastrowid  # type: ignore[assignment]
                else:
                    conn.executemany(sql, params)
                    last = conn.execute(LAST_ROWID_SQL).fetchone()[0]
                if route:
                    destinations.route(conn, last - len(rows) + 1, [row[0] for row in params], route)
                    if self.backlog is not None:
                        self.backlog.enforce(self.end_deliveries, conn, route)
            if mark is not None:
                self.sealed_from = mark
            self.storage.maintain(conn)
        # AUTOINCREMENT under the write lock hands out consecutive ids.
        return list(range(last - len(rows) + 1, last + 1))

    def register_destinations(self, names: Sequence[str]) -> Dict[str, int]:
        """Register ``names`` as the file's destinations (see ``destinations.register``) and
        return each one's id. With no names (a queue opened without destinations), a file
        that has some is checked the same way: only one whose destinations have nothing
        left becomes a file without them; one read when it has none."""
        if not names:
            with self.lock:
                if not self.conn().execute(destinations.SELECT_ALL_SQL).fetchone():
                    return {}
        with self.write() as conn:
            next_id = int(conn.execute(NEXT_ID_SQL).fetchone()[0])
            return destinations.register(conn, names, next_id, self.now())

    def remove_destination(self, ident: int, scope: str) -> int:
        """Unregister a destination and drop its deliveries (see ``destinations.remove``);
        return how many it had left."""
        with self.write() as conn:
            dropped = destinations.remove(conn, ident, scope)
            batchkeys.collect(conn)
        return dropped

    def track_backlog(self, backlog: Backlog) -> None:
        """Enforce ``backlog``'s budgets from now on, its counts taken afresh."""
        with self.write() as conn:
            backlog.track(conn)
        self.backlog = backlog

    def pending_for(self, destination: int) -> int:
        """How many items the destination of id ``destination`` still has to deliver."""
        with self.lock:
            return destinations.pending_count(self.conn(), destination)

    def purge_expired(self, *, when_due: bool) -> int:
        """Delete the items whose TTL has run out (``when_due``: only if ``purge_interval`` has
        passed) and give space back; return how many were deleted."""
        with self.lock:
            conn = self.conn()
            deleted = 0
            if not when_due or self.storage.purge_due():
                now = self.now()
                with write_transaction(conn):
                    deleted = self.storage.purge_expired(conn, now)
                    batchkeys.collect(conn)
            self.storage.maintain(conn, force=not when_due)
        return deleted

    def earliest_due(self, deliveries: "Deliveries", levels: Sequence[int], now: float) -> Optional[float]:
        """The earliest ``next_retry_at`` of an unexpired item of ``levels`` that
        ``deliveries`` still has to deliver (None: none)."""
        statement, key, fresh = deliveries.next_due, deliveries.key, deliveries.fresh
        with self.lock:
            conn = self.conn()
            if fresh is not None:  # a named destination: an unclaimed item is due now
                for level in levels:
                    found = conn.execute(fresh.read_cursor, (fresh.destination, level)).fetchone()
                    cursor = 0 if found is None else int(found[0])
                    if conn.execute(fresh.scan, (level, cursor, now, fresh.bit, 1)).fetchone() is not None:
                        return 0.0
            due = [float(due) for level in levels for (due,) in conn.execute(statement, key + (level, now))]
        return min(due) if due else None

    def counter(self, key: str, default: Any = 0) -> Any:
        """The value of ``key`` in ``sync_meta`` (``default`` when absent)."""
        with self.lock:
            row = self.conn().execute(READ_COUNTER_SQL, (key,)).fetchone()
        return default if row is None else row[0]

    def sent_today(self, scope: str = "") -> int:
        """The persisted ``messages_sent_today`` counter (of the destination of ``scope``)."""
        return int(self.counter(scope + "messages_sent_today"))

    def compact(self) -> None:
        """Rewrite the file to its smallest size, switching it to incremental auto-vacuum."""
        with self.lock:
            conn = self.conn()
            storage.convert_to_incremental(conn)
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()

    def counters(self, keys: Sequence[str]) -> Dict[str, Any]:
        """The values of ``keys`` that ``sync_meta`` holds."""
        with self.lock:
            conn = self.conn()
            rows = {key: conn.execute(READ_COUNTER_SQL, (key,)).fetchone() for key in keys}
        return {key: row[0] for key, row in rows.items() if row is not None}
