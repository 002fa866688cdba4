"""``CloudSyncQueue``: the public face of the queue. It validates, encodes and hands work to
the parts it holds: its ``Store`` (connection, lock and error translation, transactions,
clock, storage limits), a ``GroupCommitter`` for single enqueues, its ``FlushPolicy`` and
this process's ``LinkState``, and for each flush a ``Flusher``. See docs/architecture.md."""

import contextlib
import dataclasses
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

from . import _codec, _validate
from ._flush.policy import ALL_LEVELS, FlushPolicy, LinkState, release_held
from ._store import deadletter, integrity, schema, seal, stats, storage
from ._store.backlog import ON_FULL_CHOICES, Backlog, Budget
from ._store.clock import HIGH_WATER_LEAD_SECONDS
from ._store.deliveries import ORDERS, SINGLE, Deliveries, for_destination
from ._store.destinations import mask_of
from ._store.destinations import names_of as destination_names
from ._store.group_commit import GroupCommitter
from ._store.integrity import IntegrityReport
from ._store.sql import (
    ACK_SQL,
    RESET_DAILY_SQL,
)
from ._store.store import Store
from ._types import CRITICAL, Column, DeadLetter, Priority, QueueItem
from ._upload_types import Uploader

# The constructor's arguments that ``from_dict`` takes (all but ``clock``).
CONFIG_KEYS = tuple(
    "db_path durability busy_timeout max_batch_items max_batch_bytes retry_base_seconds retry_max_seconds"
    " lease_seconds max_queue_items max_queue_bytes min_free_disk_bytes purge_interval on_corrupt max_attempts"
    " daily_message_limit encryption_key encryption_cipher max_items_per_second max_bytes_per_second"
    " pacing_burst_seconds critical_bypasses_pacing max_batch_seconds probe_interval max_in_flight_batches"
    " destinations".split()
)
logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# The options a destination may set for itself: how it is flushed. Storage limits and
# durability belong to the file.
DESTINATION_KEYS = tuple(
    "max_batch_items max_batch_bytes retry_base_seconds retry_max_seconds lease_seconds max_attempts"
    " daily_message_limit max_items_per_second max_bytes_per_second pacing_burst_seconds"
    " critical_bypasses_pacing max_batch_seconds probe_interval max_in_flight_batches order"
    " max_backlog_items max_backlog_bytes on_backlog_full".split()
)
# The options of a destination that are not its flush policy.
_OTHER_DESTINATION_KEYS = ("order", "max_backlog_items", "max_backlog_bytes", "on_backlog_full")
# Each entry a single enqueue hands the group committer: text, priority, TTL, route.
_Entry = Tuple[str, int, int, int]


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
        queue never lets its time run backwards, see ``_store.clock``.
    :param max_attempts: how many times the endpoint may reject an item (HTTP 400/422 or
        an ``UploadResult``) before it moves to the dead-letter table.
    :param daily_message_limit: when set, ``maybe_flush`` sends no more non-critical
        items once ``messages_sent_today`` reaches it; critical items always go.
    :param encryption_key: seal every payload before it is stored (encryption at rest,
        needs ``pyv-edge-agent[crypto]``): 32 random bytes, the path of a key file (32 raw
        bytes, 64 hex digits or base64), or a callable for key rotation: ``f(None)``
        returns the newest ``(key_id, key)``, used for new items; ``f(key_id)`` returns
        that key's 32 bytes, or None. Items stay readable while their key is supplied;
        ``rekey()`` re-seals them under the newest. None (default): stored as plain JSON.
    :param encryption_cipher: ``"chacha20-poly1305"`` (default; the faster one without
        AES instructions, as on a Raspberry Pi) or ``"aes-256-gcm"``, for new items.
    :param max_items_per_second: pace uploads to at most this many items a second over
        time (None: no pacing), across the batches of a flush and across flushes of this
        queue object; a token bucket of ``pacing_burst_seconds`` lets a burst go at once.
    :param max_bytes_per_second: the same for stored payload bytes (before compression).
    :param pacing_burst_seconds: each bucket holds this many seconds of its rate; no
        batch is larger than a full bucket.
    :param critical_bypasses_pacing: a batch holding a critical item goes without waiting
        for the bucket (its items still count).
    :param max_batch_seconds: size batches so that each takes about this long to upload,
        from the throughput measured so far (never above ``max_batch_items`` or
        ``max_batch_bytes``), so that a critical item enqueued during a long drain waits
        about one batch (None: batches are bounded by items and bytes only).
    :param probe_interval: while a ``SyncWorker`` backs off after an upload that got no
        answer (refused, unreachable, timed out), it probes the link this often and ends
        the backoff when the probe succeeds (None: never probe).
    :param max_in_flight_batches: how many batches one flush uploads at once (1 to 16), each
        under its own lease and idempotency key and settled on its own answer; more than 1
        keeps a long link busy during each round trip. The uploader is then called from
        that many threads at once. A batch is claimed only when one of them is free, so a
        critical item waits for at most the batches already in flight.
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
        min_free_disk_bytes: int = storage.DEFAULT_MIN_FREE_DISK_BYTES,
        purge_interval: Optional[float] = storage.DEFAULT_PURGE_INTERVAL,
        on_corrupt: str = "raise",
        clock: Callable[[], float] = time.time,
        max_attempts: int = 5,
        daily_message_limit: Optional[int] = None,
        encryption_key: Any = None,
        encryption_cipher: str = seal.DEFAULT_CIPHER,
        max_items_per_second: Optional[float] = None,
        max_bytes_per_second: Optional[float] = None,
        pacing_burst_seconds: float = 1.0,
        critical_bypasses_pacing: bool = True,
        max_batch_seconds: Optional[float] = None,
        probe_interval: Optional[float] = 10.0,
        max_in_flight_batches: int = 1,
        destinations: "Optional[Union[Sequence[str], Mapping[str, Mapping[str, Any]]]]" = None,
    ) -> None:
        path = _validate.db_path(db_path)
        durability = _validate.choice("durability", durability, tuple(schema.SYNCHRONOUS))
        busy_timeout = _validate.number("busy_timeout", busy_timeout, 0.0, maximum=schema.MAX_BUSY_TIMEOUT)
        policy = FlushPolicy(
            max_batch_items,
            max_batch_bytes,
            retry_base_seconds,
            retry_max_seconds,
            lease_seconds,
            max_attempts,
            daily_message_limit,
            max_items_per_second,
            max_bytes_per_second,
            pacing_burst_seconds,
            critical_bypasses_pacing,
            max_batch_seconds,
            probe_interval,
            max_in_flight_batches,
        )
        link = LinkState(policy.pacer())
        on_corrupt = _validate.choice("on_corrupt", on_corrupt, integrity.ON_CORRUPT_CHOICES)
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds since the epoch, got {clock!r:.100}")
        limits = storage.StorageLimits.validated(max_queue_items, max_queue_bytes, min_free_disk_bytes, purge_interval)
        cipher = _validate.choice("encryption_cipher", encryption_cipher, seal.CIPHERS)
        sealer = None if encryption_key is None else seal.Sealer(encryption_key, cipher)
        names = None if destinations is None else destination_names(destinations)
        options: Mapping[str, Any] = destinations if isinstance(destinations, Mapping) else {}
        policies = {name: _destination_policy(policy, name, options.get(name, {})) for name in names or ()}
        for name in names or ():
            _check_budget(name, options.get(name, {}))
        orders = {
            name: _validate.choice(f"destinations[{name!r}]['order']", options[name]["order"], ORDERS)
            for name in names or ()
            if "order" in options.get(name, {})
        }
        store = Store(
            path,
            durability=durability,
            busy_timeout=busy_timeout,
            on_corrupt=on_corrupt,
            clock=clock,
            limits=limits,
            sealer=sealer,
        )
        self._store = store
        self._policy = policy
        self._link = link
        self._deliveries = SINGLE
        # What a queue without destinations flushes with.
        self._own = _Target(SINGLE, link, policy)
        self._clock: Callable[[], float] = store.now
        # Each destination's id, which is its bit in an item's route (none: one destination).
        self._destinations: Dict[str, int] = store.register_destinations(names or ())
        self._all_routes = mask_of(list(self._destinations.values()))
        budgets = [
            _budget(ident, name, for_destination(ident, name), options.get(name, {}))
            for name, ident in self._destinations.items()
        ]
        if any(budgets):
            store.track_backlog(Backlog([budget for budget in budgets if budget is not None]))
        # Each destination's statements, flush options and link state (backoff, pacing).
        self._targets: Dict[str, _Target] = {
            name: _Target(
                for_destination(ident, name, orders.get(name, "oldest_first")),
                LinkState(policies[name].pacer()),
                policies[name],
            )
            for name, ident in self._destinations.items()
        }
        self._committer: GroupCommitter[_Entry] = GroupCommitter(self._write_group)

    def close(self) -> None:
        """Close the connection; later calls raise ``CloudSyncError``."""
        self._store.close()

    def __enter__(self) -> "CloudSyncQueue":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        durability = self._store.durability
        sealer = self._store.sealer
        sealed = "" if sealer is None else f", cipher={sealer.cipher!r}, key_id={sealer.key_id!r}"
        return (
            f"CloudSyncQueue(db_path={self.db_path!r}, durability={durability!r}{sealed}, backend={_codec.BACKEND!r})"
        )

    @property
    def db_path(self) -> str:
        """The path of the SQLite file."""
        return self._store.path

    @property
    def encryption_key_id(self) -> Optional[str]:
        """The key id new items are sealed under (None: the queue has no ``encryption_key``)."""
        sealer = self._store.sealer
        return None if sealer is None else sealer.key_id

    # -- writing ----------------------------------------------------------------------

    def enqueue(
        self,
        payload: Dict[str, Any],
        priority: Priority = Priority.TELEMETRY,
        ttl_seconds: int = 86400,
        destinations: Optional[Sequence[str]] = None,
    ) -> int:
        """Store one payload and return its id; the id is durable when this returns.

        Concurrent calls from several threads share one transaction and one fsync (group
        commit); each still returns only after its own item is committed.

        Raises ``QueueFullError`` (nothing written) when a storage limit cannot be met.
        """
        text = _codec.encode_payload(payload)
        level = _validate.priority_value(priority)
        ttl = _validate.integer("ttl_seconds", ttl_seconds, 0)
        route = self._route(destinations)
        row_id = self._committer.submit((text, level, ttl, route))
        if level == CRITICAL and self._link.wakers:
            self._link.wake()
        return row_id

    def _write_group(self, entries: List[_Entry]) -> List[int]:
        """The group committer's write: one transaction for every entry, stamped alike (one
        per route, when entries go to different destinations)."""
        now = self._clock()
        route = entries[0][3]
        if all(entry[3] == route for entry in entries):
            return self._insert_rows([(text, level, now, ttl) for text, level, ttl, _ in entries], route)
        ids: Dict[int, int] = {}
        for each in sorted({entry[3] for entry in entries}):
            group = [index for index, entry in enumerate(entries) if entry[3] == each]
            rows = [(entries[i][0], entries[i][1], now, entries[i][2]) for i in group]
            ids.update(zip(group, self._insert_rows(rows, each)))
        return [ids[index] for index in range(len(entries))]

    def _insert_rows(self, rows: List[Tuple[str, int, float, int]], route: int = 0) -> List[int]:
        """Insert ``rows`` in one write transaction and return their ids in order; every
        enqueue path goes through here."""
        return self._store.insert(rows, route)

    def _route(self, destinations: Optional[Sequence[str]]) -> int:
        """The route bits of an enqueue's ``destinations`` (None: every destination; 0 for a
        queue without destinations); raises ``ValueError`` naming the argument."""
        if destinations is None:
            return self._all_routes
        if not self._destinations:
            raise ValueError(f"destinations: this queue has no destinations, got {destinations!r:.100}")
        if isinstance(destinations, str) or not isinstance(destinations, Sequence):
            raise TypeError(f"destinations must be a sequence of destination names or None, got {destinations!r:.100}")
        if not destinations:
            raise ValueError("destinations must name at least one destination (None: every destination)")
        if len(set(destinations)) != len(destinations):
            raise ValueError(f"destinations names one more than once: {list(destinations)!r:.200}")
        unknown = [name for name in destinations if name not in self._destinations]
        if unknown:
            raise ValueError(
                f"destinations: unknown destination {unknown[0]!r:.100}; this queue's are {sorted(self._destinations)}"
            )
        return mask_of([self._destinations[name] for name in destinations])

    def enqueue_many(
        self,
        payloads: Sequence[Dict[str, Any]],
        priority: Priority = Priority.TELEMETRY,
        ttl_seconds: int = 86400,
        destinations: Optional[Sequence[str]] = None,
    ) -> List[int]:
        """Store many payloads in one transaction; return their ids in input order.

        Every payload is validated and encoded before anything is written: one bad
        payload stores none of them.
        """
        level = _validate.priority_value(priority)
        ttl = _validate.integer("ttl_seconds", ttl_seconds, 0)
        _validate.iterable("payloads", payloads)
        route = self._route(destinations)
        rows = _codec.encode_rows(payloads, level, self._clock(), ttl)
        if not rows:
            return []
        ids = self._insert_rows(rows, route)
        if level == CRITICAL and self._link.wakers:
            self._link.wake()
        return ids

    def ack(self, ids: Sequence[int], *, destination: Optional[str] = None) -> int:
        """Delete the given items; return how many rows were deleted. Unknown ids are ignored.

        With several destinations, ``destination`` names the one that delivered them: they
        leave its list, and the file once no destination needs them; returns how many
        left its list."""
        chunks = _codec.id_chunks(ids)
        deliveries = self._target(destination).deliveries
        with self._store.lock:
            if deliveries is SINGLE:
                deleted = self._store.run_chunks(ACK_SQL, (), chunks)
            else:
                with self._store.write():
                    deleted = self._store.end_deliveries(deliveries, chunks)
            self._store.storage.maintain(self._store.conn())
            return deleted

    def nack(self, ids: Sequence[int], retry_delay_seconds: float = 60.0, *, destination: Optional[str] = None) -> int:
        """Count a failed attempt on the given items and hide them for ``retry_delay_seconds``
        (with several destinations: from ``destination`` only).

        Returns the number of rows updated.
        """
        delay = _validate.number("retry_delay_seconds", retry_delay_seconds, 0.0)
        chunks = _codec.id_chunks(ids)
        deliveries = self._target(destination).deliveries
        with self._store.lock:
            return self._store.run_chunks(deliveries.nack_by_hand, deliveries.key + (self._clock() + delay,), chunks)

    # -- reading ----------------------------------------------------------------------

    def dequeue(self, batch_size: int = 10, *, destination: Optional[str] = None) -> List[QueueItem]:
        """Return up to ``batch_size`` eligible items in priority order without removing them.

        Eligible: ``next_retry_at <= now`` and ``created_at + ttl_seconds > now``. Order:
        priority, then ``next_retry_at``, then id. Call ``ack`` after a successful upload.
        With several destinations, ``destination`` names whose items these are.
        """
        limit = _validate.integer("batch_size", batch_size, 1)
        return self._eligible(limit, ALL_LEVELS, destination)

    def peek(
        self, n: int = 5, *, priority: Optional[Priority] = None, destination: Optional[str] = None
    ) -> List[QueueItem]:
        """Return up to ``n`` eligible items, exactly as ``dequeue`` would, for inspection;
        ``priority`` keeps only that level, ``destination`` names whose items."""
        limit = _validate.integer("n", n, 1)
        levels = ALL_LEVELS if priority is None else (_validate.priority_value(priority),)
        return self._eligible(limit, levels, destination)

    def _eligible(self, limit: int, levels: Tuple[int, ...], destination: Optional[str]) -> List[QueueItem]:
        rows: List[Tuple[Any, ...]] = []
        deliveries = self._target(destination).deliveries
        eligible, key, fresh = deliveries.eligible, deliveries.key, deliveries.fresh
        with self._store.lock:
            now = self._clock()
            conn = self._store.conn()
            for level in levels:
                if fresh is not None:  # a named destination's unclaimed items come first
                    found = conn.execute(fresh.read_cursor, (fresh.destination, level)).fetchone()
                    cursor = 0 if found is None else int(found[0])
                    rows += conn.execute(fresh.eligible, (level, cursor, now, fresh.bit, limit - len(rows))).fetchall()
                    if len(rows) >= limit:
                        break
                rows += conn.execute(eligible, key + (level, now, now, limit - len(rows))).fetchall()
                if len(rows) >= limit:
                    break
            queue_id = self._store.queue_id
            unsealed = seal.unsealed_ids(rows, self._store.sealed_from)
        if unsealed:  # never handed out: a flush moves them to the dead-letter table
            rows = [row for row in rows if row[Column.ID] not in unsealed]
        return seal.decoded(self._store.sealer, rows, queue_id, "sync_queue", _codec.decode_rows)

    def pending_count(self, destination: Optional[str] = None) -> int:
        """Return the number of stored items, whatever their TTL or retry state; with
        ``destination``, how many of them that destination still has to deliver."""
        if destination is not None:
            return self._store.pending_for(self._destination_id(destination))
        with self._store.lock:
            return int(self._store.conn().execute(self._deliveries.count, self._deliveries.key).fetchone()[0])

    def _destination_id(self, destination: str) -> int:
        if destination not in self._destinations:
            known = sorted(self._destinations) or "none (a queue without destinations)"
            raise ValueError(f"destination: unknown destination {destination!r:.100}; this queue's are {known}")
        return self._destinations[destination]

    def get_stats(self) -> Dict[str, Any]:
        """Return queue statistics.

        The documented keys ``depth``, ``oldest_item_timestamp``, ``total_retries`` and
        ``retrying_items``; ``messages_sent_today``; ``depth_by_priority`` (priority name
        to count), ``expired`` (stored but past their TTL), ``in_flight`` (leased by a
        flush in progress), ``dead_lettered`` (in the dead-letter table); and the
        persisted counters ``messages_sent_total``, ``failed_batches``,
        ``dead_lettered_total``, ``last_success_at``, ``last_error`` and ``last_error_at``;
        the storage figures ``evicted_total``, ``expired_purged_total``, ``quarantined_total``,
        ``clock_jumps_total`` and ``storage_bytes`` (the file and its WAL); ``rekey_unfinished``
        (items a ``rekey`` that was cut short left under an older key or in plain text).

        With several destinations, ``destinations`` maps each name to its own figures:
        ``depth`` (items it still has to deliver), ``oldest_item_timestamp``, ``in_flight``,
        ``dead_lettered``, ``messages_sent_today``, ``messages_sent_total``,
        ``failed_batches``, ``dead_lettered_total``, ``last_success_at``, ``last_error``,
        ``last_error_at``, and this queue object's ``backoff_seconds`` and ``link_down``;
        the file's counters add theirs up.
        """
        now = self._clock()
        figures = stats.collect(self._store, now)
        if self._destinations:
            each = {}
            for name, ident in self._destinations.items():
                target = self._targets[name]
                each[name] = stats.collect_destination(self._store, ident, target.deliveries.scope, now)
                each[name]["backoff_seconds"] = target.link.backoff_seconds(now)
                each[name]["link_down"] = target.link.link_down
            stats.add_up(figures, each)
            figures["destinations"] = each
        return figures

    # -- storage and integrity --------------------------------------------------------

    def purge_expired(self) -> int:
        """Delete the items whose TTL has run out and return how many; counted in
        ``get_stats()["expired_purged_total"]``."""
        return self._store.purge_expired(when_due=False)

    def rekey(self) -> int:
        """Re-seal every stored item and dead letter under the newest key (asked of a
        callable ``encryption_key`` again) and the configured cipher, plain ones from before
        encryption was turned on included; return how many were re-sealed.

        Every item is opened first: a missing key or a damaged item raises
        ``DecryptionError`` and nothing is changed. Then the file is rewritten (``VACUUM``)
        and its WAL truncated, so that the old texts do not linger in free pages.
        """
        from ._store import rekey as _rekey

        return _rekey.rekey(self._store)

    @property
    def destinations(self) -> Tuple[str, ...]:
        """The names of the destinations this queue feeds (empty: a queue without them)."""
        return tuple(self._destinations)

    @staticmethod
    def destinations_of(db_path: "str | os.PathLike[str]") -> Tuple[str, ...]:
        """The destination names registered in the queue file at ``db_path``, read without
        opening it as a queue (a tool opens the file with them: ``cloud-sync --destination``)."""
        return integrity.destinations_of(os.fspath(db_path))

    @staticmethod
    def verify_file(db_path: "str | os.PathLike[str]") -> IntegrityReport:
        """Check a queue file without opening it as a queue: read-only, never creates or
        changes anything, and reports a damaged or unreadable file instead of raising."""
        return integrity.verify_file(os.fspath(db_path))

    def verify(self) -> IntegrityReport:
        """Check the whole file with SQLite's ``integrity_check``, and with destinations their
        bookkeeping (routes, delivery rows, cursors); writes nothing.

        Returns an ``IntegrityReport`` (``ok``, ``messages``, ``schema_version``, ``path``).
        """
        with self._store.lock:
            return integrity.verify(self._store.conn(), self.db_path)

    def compact(self) -> None:
        """Rewrite the file to its smallest size (SQLite ``VACUUM``) and switch a file made by
        an earlier release to incremental auto-vacuum, so that it shrinks by itself from
        then on. Needs free disk space about the size of the stored items."""
        self._store.compact()

    # -- flushing, the link's backoff and the daily counter -------------------------------

    @property
    def lease_seconds(self) -> float:
        """How long a batch being uploaded stays hidden from other flushers; an uploader's
        ``timeout`` must be below it (with destinations, the longest of theirs: each one's
        is ``destination(name).lease_seconds``)."""
        return max(target.policy.lease_seconds for target in self._flushed_targets())

    @property
    def messages_sent_today(self) -> int:
        """Items acked by ``maybe_flush`` since the last ``reset_daily_counters()``; persisted."""
        return self._store.sent_today()

    def reset_daily_counters(self) -> None:
        """Reset ``messages_sent_today`` to 0; call it from a job at midnight."""
        with self._store.lock:
            self._store.conn().execute(RESET_DAILY_SQL)

    def maybe_flush(
        self,
        uploader: Optional[Uploader] = None,
        *,
        stop: Optional[threading.Event] = None,
        destination: Optional[str] = None,
    ) -> int:
        """Send eligible items through ``uploader.post_batch`` in priority order; return how
        many were acked.

        Items go in batches bounded by ``max_batch_items`` and ``max_batch_bytes``; each
        accepted batch is acked. A failure is classified (see the README): a transient
        one nacks the batch with backoff and ends the call, a 413 splits the batch, a
        rejection isolates the bad items and in the end dead-letters them, refused
        credentials keep every item and back off long. Without an uploader nothing is
        sent and nothing is removed. Once ``stop`` is set, the call returns after the
        batch in flight (``SyncWorker`` stops this way). With several destinations,
        ``destination`` names the one ``uploader`` delivers to; each has its own backoff.
        """
        target = self._target(destination)
        if stop is not None and not isinstance(stop, threading.Event):
            raise TypeError(f"stop must be a threading.Event or None, got {type(stop).__name__}: {stop!r:.100}")
        if uploader is None:
            return 0
        # The flush machinery loads on the first flush: a process that only enqueues never
        # needs it, and it is a tenth of the import time.
        from ._flush.flusher import Flusher

        # Checks the uploader before anything is written.
        flusher = Flusher(self._store, target.policy, target.link, uploader, stop, deliveries=target.deliveries)
        # Housekeeping on the way: expired items go every ``purge_interval``, space goes back.
        self._store.purge_expired(when_due=True)
        return flusher.run()

    def _target(self, destination: Optional[str]) -> "_Target":
        """The delivery statements, flush options and link state of ``destination`` (None:
        the only one)."""
        if destination is None:
            if len(self._destinations) > 1:
                raise ValueError(
                    f"destination is required: this queue feeds {sorted(self._destinations)}; name the one to flush"
                )
            if not self._destinations:
                return self._own
            destination = next(iter(self._destinations))
        self._destination_id(destination)
        return self._targets[destination]

    @property
    def backoff_seconds(self) -> float:
        """Seconds left of the backoff that the last failed upload of this queue object set (0 if none);
        with several destinations, the longest of theirs (each one's: ``destination(name)``)."""
        now = self._clock()
        return max(target.link.backoff_seconds(now) for target in self._flushed_targets())

    @property
    def probe_interval(self) -> Optional[float]:
        """How often a sync loop probes the link while backing off after an upload that got
        no answer (None: it does not); with one destination, its own."""
        return self._flushed_targets()[0].policy.probe_interval

    @property
    def link_down(self) -> bool:
        """True while this queue object backs off after an upload that got no answer at
        all (refused, unreachable, timed out): the kind of backoff a probe may end; with
        several destinations, while any of them does."""
        return any(target.link.link_down for target in self._flushed_targets())

    def _flushed_targets(self) -> List["_Target"]:
        """What ``maybe_flush`` without a destination name backs off on: the queue's own
        link, or its destinations'."""
        if self._targets:
            return list(self._targets.values())
        return [self._own]

    def end_backoff(self, destination: Optional[str] = None) -> bool:
        """End a backoff after an upload that got no answer, because the link is back (a
        probe succeeded, a network-up hook ran): the batches it held are due now, each
        still whole, so its retry carries the same idempotency key. Returns whether a
        backoff ended. A backoff after refused credentials (401/403) or an answer of the
        endpoint (5xx, 429, ``Retry-After``) stays: a working link does not end those.
        With several destinations, ``destination`` names whose backoff ends."""
        deliveries, link, _ = self._target(destination)
        with self._store.lock:
            stamps = link.resume(self._clock())
            if stamps is None:
                return False
            with self._store.write() as conn:
                release_held(conn, deliveries, stamps)
        return True

    def retry_now(self, destination: Optional[str] = None) -> int:
        """End every backoff now, whatever failure set it and whichever process: the items
        waiting for a retry are due at once, each retried batch still whole (so it carries
        the same idempotency key) and in its order. Items that a flush is sending (under a
        live lease) are left alone. Returns how many items became due.

        For an operator who fixed the cause (a key, a certificate, the endpoint) and wants
        the queue sent now (``cloud-sync flush --now``); ``end_backoff`` is the narrower
        call for a link that came back. With several destinations, ``destination`` names
        whose backoff ends.
        """
        deliveries, link, _ = self._target(destination)
        with self._store.lock:
            now = self._clock()
            with self._store.write() as conn:
                stamps = sorted(
                    stamp for (stamp,) in conn.execute(deliveries.waiting_stamps, deliveries.key + (now, now))
                )
                link.end()
                if not stamps:
                    return 0
                # One shift for all, as LinkState.resume does: batches keep distinct stamps.
                # The last lands a clock lead before now: another process's clock (which
                # may be behind this one by up to the lead, see _store/clock.py) finds it due too.
                shift = stamps[-1] - (now - HIGH_WATER_LEAD_SECONDS)
                return release_held(conn, deliveries, [(stamp, stamp - shift) for stamp in stamps])

    def next_due_in(self, destination: Optional[str] = None) -> Optional[float]:
        """Seconds until ``maybe_flush`` has something to send: 0 when an item is due now,
        None when nothing is stored but expired items (with several destinations: for
        ``destination``).

        Counts the current backoff, and leaves out non-critical items once the daily
        message budget is spent. A sync loop sleeps this long instead of polling.
        """
        deliveries, link, policy = self._target(destination)
        with self._store.lock:
            now = self._clock()
            levels = policy.levels(lambda: self._store.sent_today(deliveries.scope))
            due = self._store.earliest_due(deliveries, levels, now)
        return None if due is None else max(0.0, due - now, link.backoff_until - now)

    def destination(self, name: str) -> "Destination":
        """One destination of this queue as a sync loop sees it: its flush, backoff and
        link (``SyncWorker`` runs one loop per destination on these)."""
        target = self._target(name)
        return Destination(self, name, target, self._clock)

    @contextlib.contextmanager
    def waking(self, event: threading.Event) -> Iterator[threading.Event]:
        """While the block runs, set ``event`` whenever a critical item is enqueued through
        this queue object (a sync loop waits on it; ``SyncWorker`` does)."""
        self._link.wakers.append(event)
        try:
            yield event
        finally:
            self._link.wakers.remove(event)

    # -- dead letters -----------------------------------------------------------------

    def dead_letters(self, limit: int = 100, destination: Optional[str] = None) -> List[DeadLetter]:
        """Return up to ``limit`` items from the dead-letter table, oldest first. With
        several destinations, each dead letter names the ``destination`` that refused it;
        ``destination`` lists that one's alone."""
        if not self._destinations:
            if destination is not None:
                self._destination_id(destination)
            return deadletter.list_dead(self._store, limit)
        return deadletter.list_dead(self._store, limit, self._ids_of(destination))

    def requeue_dead_letters(self, ids: Optional[Sequence[int]] = None, destination: Optional[str] = None) -> int:
        """Move dead letters (all, or those with the given ids) back into the queue, due now
        and with a fresh TTL; return how many moved. With several destinations, a dead
        letter goes back to the destination that refused it (``destination``: that one's
        only); an item the others still hold keeps its TTL."""
        if not self._destinations:
            if destination is not None:
                self._destination_id(destination)
            return deadletter.requeue(self._store, ids)
        return sum(deadletter.requeue_for(self._store, ids, ident) for ident in self._ids_of(destination))

    def drop_dead_letters(self, ids: Optional[Sequence[int]] = None, destination: Optional[str] = None) -> int:
        """Delete dead letters (all, or those with the given ids) for good; return how many
        (with several destinations: ``destination``'s only, or every destination's)."""
        if not self._destinations:
            if destination is not None:
                self._destination_id(destination)
            return deadletter.drop(self._store, ids)
        return sum(deadletter.drop_for(self._store, ids, ident) for ident in self._ids_of(destination))

    def remove_destination(self, name: str) -> int:
        """Stop feeding the destination ``name`` and drop, on purpose, everything it still
        had to deliver (items no other destination needs leave the file), its dead letters
        and its counters; return how many deliveries were dropped. The way to open the file
        without it afterwards: opening without a destination that still has items to
        deliver is refused, so that nothing is discarded silently."""
        ident = self._destination_id(name)
        dropped = self._store.remove_destination(ident, self._targets[name].deliveries.scope)
        del self._destinations[name], self._targets[name]
        self._all_routes = mask_of(list(self._destinations.values()))
        logger.warning("removed destination %r: dropped the %d items it still had to deliver", name, dropped)
        return dropped

    def _ids_of(self, destination: Optional[str]) -> Dict[int, str]:
        """The id and name of ``destination`` (None: of every destination)."""
        if destination is None:
            return {ident: name for name, ident in self._destinations.items()}
        return {self._destination_id(destination): destination}

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


def _budget(ident: int, name: str, deliveries: Deliveries, options: Mapping[str, Any]) -> Optional[Budget]:
    """The backlog budget a destination's ``options`` set (None: no budget)."""
    max_items = options.get("max_backlog_items")
    max_bytes = options.get("max_backlog_bytes")
    if max_items is None and max_bytes is None:
        return None
    return Budget(
        ident,
        name,
        deliveries,
        max_items,
        max_bytes,
        options.get("on_backlog_full", "drop_oldest") == "drop_newest",
    )


def _check_budget(name: str, options: Mapping[str, Any]) -> None:
    """Check a destination's backlog options before anything is written."""
    where = f"destinations[{name!r}]"
    for key in ("max_backlog_items", "max_backlog_bytes"):
        if options.get(key) is not None:
            _validate.integer(f"{where}[{key!r}]", options[key], 1)
    if "on_backlog_full" in options:
        _validate.choice(f"{where}['on_backlog_full']", options["on_backlog_full"], ON_FULL_CHOICES)
        if options.get("max_backlog_items") is None and options.get("max_backlog_bytes") is None:
            raise ValueError(f"{where}: on_backlog_full needs max_backlog_items or max_backlog_bytes")


class _Target(NamedTuple):
    """What a flush of one destination works with."""

    deliveries: Deliveries
    link: LinkState
    policy: FlushPolicy


def _destination_policy(policy: FlushPolicy, name: str, options: Any) -> FlushPolicy:
    """The queue's flush options with a destination's own ``options`` over them, checked
    like the constructor's; errors name the destination."""
    if not isinstance(options, Mapping):
        raise TypeError(f"destinations[{name!r}] must be a mapping of options, got {type(options).__name__}")
    unknown = sorted(str(key) for key in options if key not in DESTINATION_KEYS)
    if unknown:
        raise ValueError(
            f"destinations[{name!r}]: unknown options {unknown}; a destination may set {list(DESTINATION_KEYS)}"
        )
    flush_options = {key: value for key, value in options.items() if key not in _OTHER_DESTINATION_KEYS}
    if not flush_options:
        return policy
    try:
        return dataclasses.replace(policy, **flush_options)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"destinations[{name!r}]: {exc}") from None


class Destination:
    """One destination of a ``CloudSyncQueue`` (``queue.destination(name)``): what a sync
    loop calls, for that destination alone."""

    def __init__(self, queue: CloudSyncQueue, name: str, target: _Target, clock: Callable[[], float]) -> None:
        self.queue = queue
        self.name = name
        self._link = target.link
        self._policy = target.policy
        self._clock = clock

    def __repr__(self) -> str:
        return f"Destination({self.name!r} of {self.queue!r})"

    @property
    def lease_seconds(self) -> float:
        """This destination's ``lease_seconds``."""
        return self._policy.lease_seconds

    @property
    def probe_interval(self) -> Optional[float]:
        """This destination's ``probe_interval``."""
        return self._policy.probe_interval

    @property
    def backoff_seconds(self) -> float:
        """Seconds left of this destination's backoff (0 if none)."""
        return self._link.backoff_seconds(self._clock())

    @property
    def link_down(self) -> bool:
        """True while this destination backs off after an upload that got no answer."""
        return self._link.link_down

    def maybe_flush(self, uploader: Optional[Uploader] = None, *, stop: Optional[threading.Event] = None) -> int:
        """``CloudSyncQueue.maybe_flush`` for this destination."""
        return self.queue.maybe_flush(uploader, stop=stop, destination=self.name)

    def next_due_in(self) -> Optional[float]:
        """``CloudSyncQueue.next_due_in`` for this destination."""
        return self.queue.next_due_in(self.name)

    def end_backoff(self) -> bool:
        """``CloudSyncQueue.end_backoff`` for this destination."""
        return self.queue.end_backoff(self.name)

    def waking(self, event: threading.Event) -> "contextlib.AbstractContextManager[threading.Event]":
        """``CloudSyncQueue.waking``: a critical item wakes every destination's loop."""
        return self.queue.waking(event)
