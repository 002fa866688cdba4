"""``AsyncCloudSyncQueue``: the queue's API as coroutines, over an ordinary ``CloudSyncQueue``
whose blocking work runs in threads (see the package docstring)."""

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import threading
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Set, Tuple, TypeVar, Union

from .. import _validate
from .._errors import CloudSyncError
from .._queue import CloudSyncQueue
from .._types import DeadLetter, Priority, QueueItem
from .._upload_types import AsyncUploader, Uploader
from .commit import GroupWriter, own_copy
from .loop_uploader import LoopUploader, check_uploader
from .threads import LoopWake, in_thread, off_loop

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

T = TypeVar("T")

# Reads, acks and flushes run beside the writer; a few threads let a long upload by a sync
# uploader leave room for the others.
CALL_THREADS = 4


class AsyncCloudSyncQueue:
    """A ``CloudSyncQueue`` for asyncio programs: every method is awaitable and none blocks
    the event loop.

    Takes the arguments of ``CloudSyncQueue`` (``db_path`` and the keyword options,
    ``destinations`` included) and opens the file at once; ``await
    AsyncCloudSyncQueue.open(...)`` opens it off the loop, and
    ``AsyncCloudSyncQueue.wrap(queue)`` puts an existing queue object behind it. The queue
    works from any event loop and any number of them; ``close()`` (or ``async with``) waits
    for the work handed to its threads, then closes the file.
    """

    def __init__(self, db_path: "str | os.PathLike[str]" = "sync_queue.db", **options: Any) -> None:
        self._setup(CloudSyncQueue(db_path, **options), owned=True)

    @classmethod
    async def open(cls, db_path: "str | os.PathLike[str]" = "sync_queue.db", **options: Any) -> "AsyncCloudSyncQueue":
        """Open the queue file in a thread (it may create, check or migrate the file)."""
        queue = await in_thread(lambda: CloudSyncQueue(db_path, **options), "cloud-sync-open")
        return cls._around(queue, owned=True)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "AsyncCloudSyncQueue":
        """Build the queue from a configuration mapping, as ``CloudSyncQueue.from_dict`` does
        (unknown keys are a ``ValueError``)."""
        return cls._around(CloudSyncQueue.from_dict(d), owned=True)

    @classmethod
    def wrap(cls, queue: CloudSyncQueue) -> "AsyncCloudSyncQueue":
        """Put an existing ``CloudSyncQueue`` behind the asyncio API; ``close()`` then leaves
        that queue open for its other users."""
        if not isinstance(queue, CloudSyncQueue):
            raise TypeError(f"queue must be a CloudSyncQueue, got {type(queue).__name__}")
        return cls._around(queue, owned=False)

    @classmethod
    def _around(cls, queue: CloudSyncQueue, owned: bool) -> "AsyncCloudSyncQueue":
        instance = cls.__new__(cls)
        cls._setup(instance, queue, owned)
        return instance

    def _setup(self, queue: CloudSyncQueue, owned: bool) -> None:
        self._queue = queue
        self._owned = owned
        self._writer_thread = concurrent.futures.ThreadPoolExecutor(1, "cloud-sync-writer")
        self._calls = concurrent.futures.ThreadPoolExecutor(CALL_THREADS, "cloud-sync-call")
        self._writer = GroupWriter(queue, self._writer_thread)
        self._flush_stops: Set[threading.Event] = set()
        # Workers' wake-up events, set by close() so that a sleeping worker ends at once.
        self._close_wakers: Set[asyncio.Event] = set()
        self._closing = False
        self._closed: Optional["asyncio.Future[None]"] = None

    @property
    def queue(self) -> CloudSyncQueue:
        """The ``CloudSyncQueue`` underneath, for sync code (its calls block)."""
        return self._queue

    @property
    def db_path(self) -> str:
        """The path of the SQLite file."""
        return self._queue.db_path

    @property
    def destinations(self) -> Tuple[str, ...]:
        """The names of the destinations this queue feeds (empty: a queue without them)."""
        return self._queue.destinations

    def __repr__(self) -> str:
        state = " closed" if self._closing else ""
        return f"AsyncCloudSyncQueue({self._queue!r}{state})"

    async def __aenter__(self) -> "AsyncCloudSyncQueue":
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    @property
    def closed(self) -> bool:
        """True once ``close()`` has been called."""
        return self._closing

    def _check_open(self) -> None:
        if self._closing:
            raise CloudSyncError(f"the queue on {self.db_path!r} is closed")

    def _call(self, func: Callable[..., T], *args: Any) -> "asyncio.Future[T]":
        self._check_open()
        return off_loop(self._calls, func, *args)

    # -- writing ----------------------------------------------------------------------

    async def enqueue(
        self,
        payload: Dict[str, Any],
        priority: Priority = Priority.TELEMETRY,
        ttl_seconds: int = 86400,
        destinations: Optional[Sequence[str]] = None,
    ) -> int:
        """Store one payload for ``destinations`` (None: every destination of the queue)
        and return its id once it is durable.

        The payload is checked and encoded at once, so bad input raises here and nothing is
        written; the item is then committed by the writer thread together with those of
        the other coroutines enqueueing meanwhile (an unknown destination raises
        ``ValueError`` from there, and nothing of that item is written). Cancelled, it is
        stored all the same.
        """
        self._check_open()
        return await self._writer.add(payload, priority, ttl_seconds, destinations)

    async def enqueue_many(
        self,
        payloads: Sequence[Dict[str, Any]],
        priority: Priority = Priority.TELEMETRY,
        ttl_seconds: int = 86400,
        destinations: Optional[Sequence[str]] = None,
    ) -> List[int]:
        """Store many payloads for ``destinations`` (None: every destination) in one
        transaction and return their ids in input order.

        As ``CloudSyncQueue.enqueue_many``: one bad payload or destination stores none of
        them. The payloads are encoded in the writer thread; leave them unchanged until
        this returns.
        """
        self._check_open()
        _validate.iterable("payloads", payloads)
        return await off_loop(
            self._writer_thread,
            self._queue.enqueue_many,
            list(payloads),
            priority,
            ttl_seconds,
            own_copy(destinations),
        )

    async def ack(self, ids: Sequence[int]) -> int:
        """Delete the given items; return how many rows were deleted."""
        return await self._call(self._queue.ack, ids)

    async def nack(self, ids: Sequence[int], retry_delay_seconds: float = 60.0) -> int:
        """Count a failed attempt on the given items and hide them for ``retry_delay_seconds``."""
        return await self._call(self._queue.nack, ids, retry_delay_seconds)

    async def purge_expired(self) -> int:
        """Delete the items whose TTL has run out and return how many."""
        return await self._call(self._queue.purge_expired)

    # -- reading ----------------------------------------------------------------------

    async def dequeue(self, batch_size: int = 10, *, destination: Optional[str] = None) -> List[QueueItem]:
        """Return up to ``batch_size`` eligible items in priority order without removing them
        (with several destinations: those ``destination`` still has to send)."""
        return await self._call(lambda: self._queue.dequeue(batch_size, destination=destination))

    async def peek(
        self, n: int = 5, *, priority: Optional[Priority] = None, destination: Optional[str] = None
    ) -> List[QueueItem]:
        """Return up to ``n`` eligible items, as ``dequeue`` would, for inspection."""
        return await self._call(lambda: self._queue.peek(n, priority=priority, destination=destination))

    async def pending_count(self, destination: Optional[str] = None) -> int:
        """Return the number of stored items, whatever their TTL or retry state; with
        ``destination``, how many of them that destination still has to deliver."""
        return await self._call(self._queue.pending_count, destination)

    async def get_stats(self) -> Dict[str, Any]:
        """Return the statistics of ``CloudSyncQueue.get_stats``."""
        return await self._call(self._queue.get_stats)

    async def next_due_in(self, destination: Optional[str] = None) -> Optional[float]:
        """Seconds until ``flush`` has something to send (0: now; None: nothing stored), for
        ``destination`` when the queue has several."""
        return await self._call(self._queue.next_due_in, destination)

    # -- flushing ---------------------------------------------------------------------

    async def flush(
        self,
        uploader: Union[Uploader, AsyncUploader],
        *,
        stop: Optional[threading.Event] = None,
        destination: Optional[str] = None,
    ) -> int:
        """Send eligible items through ``uploader`` as ``CloudSyncQueue.maybe_flush`` does and
        return how many were acked; with several destinations, ``destination`` (required)
        names the one ``uploader`` delivers to.

        The flush runs in a thread. Uploader methods that are coroutine functions (an
        ``async def post_batch`` or ``post_encoded_batch``) are awaited on this loop;
        plain ones run in the flush thread. Once ``stop`` is set no further batch starts;
        the one in flight is still acked or nacked. Cancelling this call and closing the
        queue set ``stop`` (a new event when none is given).
        """
        check_uploader(uploader)
        if stop is None:
            stop = threading.Event()
        bridged = LoopUploader(uploader, asyncio.get_running_loop())
        future = self._call(lambda: self._queue.maybe_flush(bridged, stop=stop, destination=destination))
        self._flush_stops.add(stop)
        try:
            return await future
        except asyncio.CancelledError:
            stop.set()
            raise
        finally:
            self._flush_stops.discard(stop)

    @contextlib.contextmanager
    def waking(self, event: asyncio.Event) -> Iterator[asyncio.Event]:
        """While the block runs, set ``event`` whenever a critical item is enqueued through
        this queue (by a coroutine, or by sync code in any thread through ``queue``), and
        when the queue is closed; an async sync loop waits on it (``AsyncSyncWorker`` does)."""
        self._close_wakers.add(event)
        try:
            with self._queue.waking(LoopWake(asyncio.get_running_loop(), event)):
                yield event
        finally:
            self._close_wakers.discard(event)

    async def backoff_seconds(self, destination: Optional[str] = None) -> float:
        """Seconds left of the backoff that the last failed upload set (0 if none); with
        ``destination``, that destination's own."""
        names = self.destinations
        if destination is None and len(names) == 1:
            destination = names[0]  # the only one: its link is what the flush backs off
        if destination is None:
            return await self._call(lambda: self._queue.backoff_seconds)
        view = self._queue.destination(destination)
        return await self._call(lambda: view.backoff_seconds)

    async def end_backoff(self, destination: Optional[str] = None) -> bool:
        """End a backoff after an upload that got no answer, because the link is back; see
        ``CloudSyncQueue.end_backoff``. Returns whether a backoff ended."""
        return await self._call(self._queue.end_backoff, destination)

    async def retry_now(self, destination: Optional[str] = None) -> int:
        """End every backoff now, whatever set it; see ``CloudSyncQueue.retry_now``. Returns
        how many items became due."""
        return await self._call(self._queue.retry_now, destination)

    # -- dead letters and destinations --------------------------------------------------

    async def dead_letters(self, limit: int = 100, destination: Optional[str] = None) -> List[DeadLetter]:
        """Return up to ``limit`` dead letters, oldest first; with several destinations each
        names the ``destination`` that refused it, and ``destination`` lists that one's alone."""
        return await self._call(self._queue.dead_letters, limit, destination)

    async def requeue_dead_letters(self, ids: Optional[Sequence[int]] = None, destination: Optional[str] = None) -> int:
        """Move dead letters (all, or those with the given ids; ``destination``'s only) back
        into the queue, due now; see ``CloudSyncQueue.requeue_dead_letters``. Returns how many."""
        return await self._call(self._queue.requeue_dead_letters, ids, destination)

    async def drop_dead_letters(self, ids: Optional[Sequence[int]] = None, destination: Optional[str] = None) -> int:
        """Delete dead letters (all, or those with the given ids; ``destination``'s only) for
        good; return how many."""
        return await self._call(self._queue.drop_dead_letters, ids, destination)

    async def remove_destination(self, name: str) -> int:
        """Stop feeding ``name`` and drop, on purpose, what it still had to deliver; see
        ``CloudSyncQueue.remove_destination``. Returns how many deliveries were dropped."""
        return await self._call(self._queue.remove_destination, name)

    # -- closing ----------------------------------------------------------------------

    async def close(self) -> None:
        """Stop accepting calls, let running flushes end after their batch in flight, wait
        for every call already handed over (cancelled enqueues included) and close the
        file (unless the queue came from ``wrap``). Later calls raise ``CloudSyncError``."""
        if self._closed is None:
            self._closing = True
            for stop in list(self._flush_stops):
                stop.set()
            for wake in list(self._close_wakers):
                wake.set()
            barrier = self._writer.barrier()
            self._closed = asyncio.ensure_future(self._finish(barrier))
        # Shielded: a cancelled close() still closes, and a second close() waits as well.
        await asyncio.shield(self._closed)

    async def _finish(self, barrier: "asyncio.Future[int]") -> None:
        await barrier

        def shut_down() -> None:
            self._writer_thread.shutdown(wait=True)
            self._calls.shutdown(wait=True)
            if self._owned:
                self._queue.close()

        await in_thread(shut_down, "cloud-sync-close")
