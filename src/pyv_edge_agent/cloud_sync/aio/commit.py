"""Group commit for coroutines: ``AsyncCloudSyncQueue.enqueue`` calls made while a commit is
under way are stored together, off the event loop, in one transaction and one fsync (per
priority, TTL and destinations among them).

Each call is checked and encoded on the loop (so bad input raises in its caller before
anything is written) and appended to a list; one writer thread takes everything waiting,
stores it with ``CloudSyncQueue.enqueue_many`` (one transaction per priority, TTL and
destinations present) and hands each caller its own id once it is committed. The queue
checks an item's ``destinations`` in the writer thread, before the item's transaction:
an unknown name fails that caller alone, and writes nothing. A failed shared
transaction is retried item by item, so that each caller gets its own item's outcome.
"""

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .. import _codec, _validate
from .._queue import CloudSyncQueue
from .._types import Priority

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# A commit wakes at most this many waiting coroutines per turn of the event loop, so that a
# thousand callers resuming at once do not hold up everything else on the loop.
WAKE_CHUNK = 64
# The text of a barrier entry: no encoded payload is empty.
BARRIER = ""


class _Entry:
    """One ``enqueue`` call waiting for the writer, or a ``BARRIER``."""

    __slots__ = ("text", "level", "ttl", "destinations", "future", "row_id", "error")

    def __init__(self, text: str, level: int, ttl: int, destinations: Any, future: "asyncio.Future[int]") -> None:
        self.text = text
        self.level = level
        self.ttl = ttl
        self.destinations = destinations
        self.future = future
        self.row_id = 0
        self.error: Optional[BaseException] = None


class GroupWriter:
    """Commits the items of concurrent ``enqueue`` calls together in ``executor``'s thread."""

    def __init__(self, queue: CloudSyncQueue, executor: concurrent.futures.Executor) -> None:
        self._queue = queue
        self._executor = executor
        # Held only for list operations, by the loop and the writer thread alike.
        self._mutex = threading.Lock()
        self._pending: List[_Entry] = []
        self._draining = False

    def add(
        self, payload: Any, priority: Any, ttl_seconds: Any, destinations: Optional[Sequence[str]]
    ) -> "asyncio.Future[int]":
        """Check and encode one item, hand it to the writer and return the future of its id.

        From here on the item is stored whatever becomes of the future: cancelling it only
        gives up the id.
        """
        text = _codec.encode_payload(payload)
        level = _validate.priority_value(priority)
        ttl = _validate.integer("ttl_seconds", ttl_seconds, 0)
        route = own_copy(destinations)
        return self._append(_Entry(text, level, ttl, route, asyncio.get_running_loop().create_future()))

    def barrier(self) -> "asyncio.Future[int]":
        """A future that completes once every item added before it has been committed."""
        return self._append(_Entry(BARRIER, 0, 0, None, asyncio.get_running_loop().create_future()))

    def _append(self, entry: _Entry) -> "asyncio.Future[int]":
        with self._mutex:
            self._pending.append(entry)
            start = not self._draining
            self._draining = True
        if start:
            # Started on the next turn of the loop, so that the coroutines ready in this turn
            # add their items first and share the first commit.
            entry.future.get_loop().call_soon(self._executor.submit, self._drain)
        return entry.future

    def _drain(self) -> None:
        """Writer thread: commit everything waiting, then come back for what arrived
        meanwhile as a new job, after any ``enqueue_many`` queued in between."""
        with self._mutex:
            batch, self._pending = self._pending, []
        items = [entry for entry in batch if entry.text != BARRIER]
        try:
            self._commit(items)
        except BaseException as exc:  # noqa: B036 - handed to every caller; the writer must go on
            for entry in items:
                if not entry.row_id and entry.error is None:
                    entry.error = exc
        self._report(batch)
        with self._mutex:
            more = self._draining = bool(self._pending)
        if more:
            self._executor.submit(self._drain)

    def _commit(self, entries: List[_Entry]) -> None:
        # A list searched by equality, not a dict: a bad ``destinations`` (a set, say) may be
        # unhashable, and must reach the queue's check to fail its caller clearly.
        groups: List[Tuple[Tuple[int, int, Any], List[_Entry]]] = []
        for entry in entries:
            key = (entry.level, entry.ttl, entry.destinations)
            for known, group in groups:
                if known == key:
                    group.append(entry)
                    break
            else:
                groups.append((key, [entry]))
        for key, group in groups:
            try:
                self._store(group, *key)
            except Exception as exc:
                if len(group) == 1:
                    group[0].error = exc
                    continue
                for entry in group:
                    try:
                        self._store([entry], *key)
                    except Exception as single_exc:
                        entry.error = single_exc

    def _store(self, group: List[_Entry], level: int, ttl: int, destinations: Any) -> None:
        # The writer stores its own decoded copy of the text checked on the loop: the
        # caller's dict may change after the call returned, or after it was cancelled.
        payloads = [_codec.decode_payload(entry.text) for entry in group]
        ids = self._queue.enqueue_many(payloads, Priority(level), ttl, destinations)
        for entry, row_id in zip(group, ids):
            entry.row_id = row_id

    def _report(self, batch: List[_Entry]) -> None:
        """Hand each caller its outcome on its own loop, a chunk per turn of the loop."""
        by_loop: Dict[asyncio.AbstractEventLoop, List[_Entry]] = {}
        for entry in batch:
            by_loop.setdefault(entry.future.get_loop(), []).append(entry)
        for loop, entries in by_loop.items():
            try:
                loop.call_soon_threadsafe(_wake_callers, loop, entries)
            except RuntimeError:
                _log_unheard(entries)  # that loop has closed


def own_copy(destinations: Any) -> Any:
    """A copy of an enqueue's ``destinations`` that the caller cannot change while the item
    waits for the writer (a list becomes a tuple); anything but a sequence of names is left
    as it is, for the queue to refuse."""
    if isinstance(destinations, (list, tuple)):
        return tuple(destinations)
    return destinations


def _wake_callers(loop: asyncio.AbstractEventLoop, entries: List[_Entry]) -> None:
    for entry in entries[:WAKE_CHUNK]:
        future = entry.future
        if future.done():  # cancelled: the item is stored (or failed) all the same
            _log_unheard([entry])
        elif entry.error is not None:
            future.set_exception(entry.error)
        else:
            future.set_result(entry.row_id)
    if len(entries) > WAKE_CHUNK:
        loop.call_soon(_wake_callers, loop, entries[WAKE_CHUNK:])


def _log_unheard(entries: List[_Entry]) -> None:
    """A failure whose caller stopped waiting must not vanish silently."""
    for entry in entries:
        if entry.error is not None:
            error = entry.error
            logger.error("an enqueue whose caller was cancelled failed: %s: %s", type(error).__name__, error)
