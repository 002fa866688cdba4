"""The flushing side of ``CloudSyncQueue``: ``maybe_flush``, the link's backoff as the
queue shows it, ending it early, when the next item is due, waking sync loops, and the
daily counter; and ``sqlite_errors``, which every public method that touches the file
wears.

``FlushingQueue`` owns the queue's ``Store``, ``FlushPolicy`` and ``LinkState``;
``CloudSyncQueue`` (``_queue``) is the one subclass and adds the rest of the API.
"""

import contextlib
import functools
import sqlite3
import threading
from typing import Any, Callable, Iterator, Optional, TypeVar, cast

from ._clock import HIGH_WATER_LEAD_SECONDS
from ._policy import FlushPolicy, LinkState
from ._sql import RESET_DAILY_SQL, RESUME_HELD_SQL, WAITING_STAMPS_SQL
from ._store import Store

_Method = TypeVar("_Method", bound=Callable[..., Any])


def sqlite_errors(method: _Method) -> _Method:
    """Turn a full disk and a damaged file into the package's errors, naming the path."""

    @functools.wraps(method)
    def wrapper(self: "FlushingQueue", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            error = self._store.translate_error(exc)
            if error is None:
                raise
            raise error from exc

    return cast(_Method, wrapper)


class FlushingQueue:
    """The part of ``CloudSyncQueue`` that sends: it owns the queue's ``Store``, its
    ``FlushPolicy`` and this process's ``LinkState``."""

    def __init__(self, store: Store, policy: FlushPolicy, link: LinkState) -> None:
        self._store = store
        self._policy = policy
        self._link = link
        self._clock: Callable[[], float] = store.now

    @property
    def lease_seconds(self) -> float:
        """How long a batch being uploaded stays hidden from other flushers; an uploader's
        ``timeout`` must be below it."""
        return self._policy.lease_seconds

    @property
    def messages_sent_today(self) -> int:
        """Items acked by ``maybe_flush`` since the last ``reset_daily_counters()``; persisted."""
        return self._store.sent_today()

    @sqlite_errors
    def reset_daily_counters(self) -> None:
        """Reset ``messages_sent_today`` to 0; call it from a job at midnight."""
        with self._store.lock:
            self._store.conn().execute(RESET_DAILY_SQL)

    @sqlite_errors
    def maybe_flush(self, uploader: Any = None, *, stop: Optional[threading.Event] = None) -> int:
        """Send eligible items through ``uploader.post_batch`` in priority order; return how
        many were acked.

        Items go in batches bounded by ``max_batch_items`` and ``max_batch_bytes``; each
        accepted batch is acked. A failure is classified (see the README): a transient
        one nacks the batch with backoff and ends the call, a 413 splits the batch, a
        rejection isolates the bad items and in the end dead-letters them, refused
        credentials keep every item and back off long. Without an uploader nothing is
        sent and nothing is removed. Once ``stop`` is set, the call returns after the
        batch in flight (``SyncWorker`` stops this way).
        """
        if stop is not None and not isinstance(stop, threading.Event):
            raise TypeError(f"stop must be a threading.Event or None, got {type(stop).__name__}: {stop!r:.100}")
        if uploader is None:
            return 0
        # The flush machinery loads on the first flush: a process that only enqueues never
        # needs it, and it is a tenth of the import time.
        from . import _flush

        # Checks the uploader before anything is written.
        flusher = _flush.Flusher(self._store, self._policy, self._link, uploader, stop)
        # Housekeeping on the way: expired items go every ``purge_interval``, space goes back.
        self._store.purge_expired(when_due=True)
        return flusher.run()

    @property
    def backoff_seconds(self) -> float:
        """Seconds left of the backoff that the last failed upload of this queue object set (0 if none)."""
        return self._link.backoff_seconds(self._clock())

    @property
    def probe_interval(self) -> Optional[float]:
        """How often a sync loop probes the link while backing off after an upload that got
        no answer (None: it does not)."""
        return self._policy.probe_interval

    @property
    def link_down(self) -> bool:
        """True while this queue object backs off after an upload that got no answer at
        all (refused, unreachable, timed out): the kind of backoff a probe may end."""
        return self._link.link_down

    @sqlite_errors
    def end_backoff(self) -> bool:
        """End a backoff after an upload that got no answer, because the link is back (a
        probe succeeded, a network-up hook ran): the batches it held are due now, each
        still whole, so its retry carries the same idempotency key. Returns whether a
        backoff ended. A backoff after refused credentials (401/403) or an answer of the
        endpoint (5xx, 429, ``Retry-After``) stays: a working link does not end those."""
        from ._resume import release_held

        with self._store.lock:
            stamps = self._link.resume(self._clock())
            if stamps is None:
                return False
            with self._store.write() as conn:
                release_held(conn, stamps)
        return True

    @sqlite_errors
    def retry_now(self) -> int:
        """End every backoff now, whatever failure set it and whichever process: the items
        waiting for a retry are due at once, each retried batch still whole (so it carries
        the same idempotency key) and in its order. Items that a flush is sending (under a
        live lease) are left alone. Returns how many items became due.

        For an operator who fixed the cause (a key, a certificate, the endpoint) and wants
        the queue sent now (``cloud-sync flush --now``); ``end_backoff`` is the narrower
        call for a link that came back.
        """
        with self._store.lock:
            now = self._clock()
            with self._store.write() as conn:
                stamps = sorted(row[0] for row in conn.execute(WAITING_STAMPS_SQL, (now, now)))
                self._link.end()
                if not stamps:
                    return 0
                # One shift for all, as LinkState.resume does: batches keep distinct stamps.
                # The last lands a clock lead before now: another process's clock (which
                # may be behind this one by up to the lead, see _clock) finds it due too.
                shift = stamps[-1] - (now - HIGH_WATER_LEAD_SECONDS)
                return int(conn.executemany(RESUME_HELD_SQL, [(stamp - shift, stamp) for stamp in stamps]).rowcount)

    def next_due_in(self) -> Optional[float]:
        """Seconds until ``maybe_flush`` has something to send: 0 when an item is due now,
        None when nothing is stored but expired items.

        Counts the current backoff, and leaves out non-critical items once the daily
        message budget is spent. A sync loop sleeps this long instead of polling.
        """
        with self._store.lock:
            now = self._clock()
            due = self._store.earliest_due(self._policy.levels(self._store.sent_today), now)
        return None if due is None else max(0.0, due - now, self._link.backoff_until - now)

    @contextlib.contextmanager
    def waking(self, event: threading.Event) -> Iterator[threading.Event]:
        """While the block runs, set ``event`` whenever a critical item is enqueued through
        this queue object (a sync loop waits on it; ``SyncWorker`` does)."""
        self._link.wakers.append(event)
        try:
            yield event
        finally:
            self._link.wakers.remove(event)
