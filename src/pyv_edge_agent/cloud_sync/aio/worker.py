"""``AsyncSyncWorker``: the task that flushes an ``AsyncCloudSyncQueue`` (one task per
destination when the queue has several), sleeping until an item is due or a critical one
wakes it, and probing a dead link while it backs off.
"""

import asyncio
import inspect
import logging
import threading
from typing import Awaitable, Callable, List, Mapping, Optional, Union

from .. import _validate
from .._queue import CloudSyncQueue, Destination
from .._sigterm import SigtermHook
from .._upload_types import AsyncUploader, Uploader
from ..delivery.probe import prober
from .loop_uploader import check_uploader
from .queue import AsyncCloudSyncQueue
from .threads import in_thread

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# After a flush that sent nothing although items were due, the worker waits at least this
# long (or its interval, if shorter).
IDLE_FLOOR_SECONDS = 1.0


class AsyncSyncWorker:
    """Flushes ``queue`` through ``uploader`` from a task on the running event loop; given a
    mapping of destination names to uploaders, each destination of the queue from a task of
    its own, with its own backoff and probe, so that one that is down never delays another.

    Like ``SyncWorker``: the loop sleeps until an item is due (at most ``interval``
    seconds) and through the backoff the last failure set, so a dead link costs no CPU;
    a critical item enqueued through the same queue (by a coroutine, or by sync code
    through ``queue.queue`` in another thread) wakes it at once, backoff or not. ``await
    stop()`` lets the batch in flight finish and be acked or nacked: nothing is lost or
    sent twice. The loop also ends when the queue is closed. While it backs off after an
    upload that got no answer it probes the link every ``probe_interval`` of the queue (the
    uploader's ``probe()``, awaited when it is a coroutine function, or a TCP connect to its
    endpoint in a thread) and ends the backoff when the link answers; ``kick()`` ends a
    wait from outside (every destination's).

    :param interval: the longest sleep between two looks at the queue, in seconds.
    :param handle_sigterm: as for ``SyncWorker``: when ``start()`` runs in the main thread,
        SIGTERM stops the loops after the batches in flight are settled, and then ends the
        process with SIGTERM (at most the longest ``lease_seconds`` of its destinations
        later) unless the application awaits ``stop()`` itself or had installed a SIGTERM
        handler, which is called (a ``loop.add_signal_handler`` one included).
    """

    def __init__(
        self,
        queue: AsyncCloudSyncQueue,
        uploader: Union[Uploader, AsyncUploader, Mapping[str, Union[Uploader, AsyncUploader]]],
        *,
        interval: float = 10.0,
        handle_sigterm: bool = True,
        name: str = "cloud-sync-worker",
    ) -> None:
        if not isinstance(queue, AsyncCloudSyncQueue):
            raise TypeError(f"queue must be an AsyncCloudSyncQueue, got {type(queue).__name__}")
        self._interval = _validate.number("interval", interval, 0.0, allow_equal=False)
        if not isinstance(handle_sigterm, bool):
            raise TypeError(f"handle_sigterm must be a bool, got {type(handle_sigterm).__name__}")
        self._queue = queue
        self._uploader = uploader
        self._handle_sigterm = handle_sigterm
        self._name = str(name)
        self._stop = threading.Event()
        self._loops = [
            _Loop(
                queue,
                target,
                each,
                self._interval,
                self._stop,
                self._name if target is None else f"{self._name}-{target}",
            )
            for target, each in _validate.destination_uploaders(queue.destinations, uploader)
        ]
        # Set when every task is done, and when the application awaits stop(): what
        # SIGTERM's handler (in another thread) waits for and asks.
        self._ended = threading.Event()
        self._awaited = threading.Event()
        lease = max(loop.lease_seconds for loop in self._loops)
        self._sigterm = SigtermHook(self._ask_to_stop, self._ended.wait, self._awaited.is_set, lease)
        self._loop: Optional[asyncio.AbstractEventLoop] = None
        self._tasks: List["asyncio.Task[None]"] = []

    @property
    def flushed(self) -> int:
        """How many items the loops have flushed so far."""
        return sum(loop.flushed for loop in self._loops)

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return (
            f"AsyncSyncWorker(queue={self._queue!r}, uploader={self._uploader!r}, interval={self._interval!r}, {state})"
        )

    def start(self) -> "AsyncSyncWorker":
        """Start the loops as tasks of the running event loop; returns self."""
        if self._loop is not None:
            raise RuntimeError("an AsyncSyncWorker can be started once")
        self._loop = asyncio.get_running_loop()
        self._tasks = [loop.start() for loop in self._loops]
        for task in self._tasks:
            task.add_done_callback(self._task_done)
        if self._handle_sigterm:
            self._sigterm.install()
        return self

    def _task_done(self, _: "asyncio.Task[None]") -> None:
        if all(task.done() for task in self._tasks):
            self._ended.set()

    async def stop(self) -> None:
        """Ask the loops to end after the batch in flight and wait until they have. From the
        main thread it also puts back the SIGTERM handler that ``start()`` replaced."""
        self._awaited.set()
        self._stop.set()
        for loop in self._loops:
            loop.wake()
        self._sigterm.uninstall()
        if self._tasks:
            await asyncio.wait(self._tasks)  # cancelling this wait leaves the tasks be

    def is_alive(self) -> bool:
        """True while a loop runs."""
        return any(not task.done() for task in self._tasks)

    def kick(self) -> None:
        """End the loops' wait now: the link is back (a network-up hook; call it on the
        loop's thread, or through ``loop.call_soon_threadsafe``). As ``SyncWorker.kick``: a
        backoff after an upload that got no answer ends, one after refused credentials or
        an answer of the endpoint stays."""
        for loop in self._loops:
            loop.kick()

    def _ask_to_stop(self) -> None:
        """Stop from SIGTERM's handler, which may run between two steps of the loop."""
        self._stop.set()
        loop = self._loop
        if loop is not None and not loop.is_closed():
            for each in self._loops:
                loop.call_soon_threadsafe(each.wake)

    async def __aenter__(self) -> "AsyncSyncWorker":
        return self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()


class _Loop:
    """One sync loop: flushes ``destination`` of ``queue`` (None: the queue, as one)
    through ``uploader`` in a task until ``stop`` is set or the queue is closed."""

    def __init__(
        self,
        queue: AsyncCloudSyncQueue,
        destination: Optional[str],
        uploader: Union[Uploader, AsyncUploader],
        interval: float,
        stop: threading.Event,
        name: str,
    ) -> None:
        check_uploader(uploader)
        if destination is None and queue.destinations:
            destination = queue.destinations[0]  # the only one: its link is what the flush backs off
        self._queue = queue
        self._destination = destination
        # Backoff state read on the loop: plain attributes, no SQL. A destination's view
        # also checks its name now, rather than in the task.
        self._link: Union[CloudSyncQueue, Destination] = (
            queue.queue if destination is None else queue.queue.destination(destination)
        )
        self._uploader = uploader
        self._interval = interval
        self._stop = stop
        self._name = name
        self._wake: Optional[asyncio.Event] = None
        self._kicked = False
        self._error: Optional[Exception] = None
        self._probe = _async_prober(uploader)
        self.flushed = 0

    @property
    def lease_seconds(self) -> float:
        """How long this loop's batch in flight may take at most."""
        return self._link.lease_seconds

    def start(self) -> "asyncio.Task[None]":
        """Start the loop as a task of the running event loop."""
        self._wake = asyncio.Event()
        return asyncio.get_running_loop().create_task(self._run(self._wake), name=self._name)

    def wake(self) -> None:
        """End the wait (to stop, or to look at the queue again)."""
        if self._wake is not None:
            self._wake.set()

    def kick(self) -> None:
        """End the wait and any backoff a dead link set (see ``AsyncSyncWorker.kick``)."""
        self._kicked = True
        self.wake()

    async def _run(self, wake: asyncio.Event) -> None:
        queue, destination = self._queue, self._destination
        with queue.waking(wake):
            while not self._stop.is_set() and not queue.closed:
                woken = wake.is_set()
                wake.clear()
                try:
                    if self._kicked:
                        self._kicked = False
                        await queue.end_backoff(destination)
                    sleep = await self._sleep_time()
                    if not woken and sleep > 0:
                        await self._sleep(wake, sleep)
                        continue
                    flushed = await queue.flush(self._uploader, stop=self._stop, destination=destination)
                except Exception as exc:  # a full disk must not end the loop silently
                    if queue.closed:
                        break
                    self._failing(exc)
                    await _wait(wake, self._interval)
                    continue
                self._failing(None)
                self.flushed += flushed
                if not flushed:  # items were due, yet none went: never spin on such an uploader
                    await _wait(wake, min(self._interval, IDLE_FLOOR_SECONDS))

    async def _sleep(self, wake: asyncio.Event, seconds: float) -> None:
        """Sleep ``seconds`` or until woken; while the queue backs off after an upload that
        got no answer, probe the link every ``probe_interval`` and end the backoff (and the
        sleep) when it answers. Probes start every ``probe_interval`` whatever each one
        took (see ``SyncWorker._wait``)."""
        link = self._link
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        next_probe = loop.time() + (link.probe_interval or 0.0)
        while True:
            now = loop.time()
            left = deadline - now
            interval = link.probe_interval
            if self._probe is None or interval is None or not link.link_down:
                await _wait(wake, max(0.0, left))
                return
            if left <= 0.0:
                return
            await _wait(wake, max(0.0, min(left, next_probe - now)))
            if wake.is_set():
                return
            if loop.time() < next_probe:
                continue
            next_probe = loop.time() + interval
            if link.link_down and await self._probe(interval) and await self._queue.end_backoff(self._destination):
                logger.info("the link answers again: ending the backoff early")
                return

    async def _sleep_time(self) -> float:
        """How long the loop may sleep (0: flush now): through a backoff the whole way, else
        until the next item is due, looking again at least every ``interval``."""
        due = await self._queue.next_due_in(self._destination)
        if due == 0:
            return 0.0
        backoff = await self._queue.backoff_seconds(self._destination)
        if backoff > 0:
            return backoff
        return self._interval if due is None else min(due, self._interval)

    def _failing(self, error: Optional[Exception]) -> None:
        """Log the start and the end of a run of failed looks at the queue, once each."""
        if error is not None and self._error is None:
            logger.error("the sync worker cannot flush: %s: %s", type(error).__name__, error)
        elif error is None and self._error is not None:
            logger.info("the sync worker flushes again")
        self._error = error


def _async_prober(uploader: Union[Uploader, AsyncUploader]) -> Optional[Callable[[float], Awaitable[bool]]]:
    """How to probe the link of ``uploader`` from the loop (None: it cannot be probed): an
    ``async def probe()`` is awaited, anything else runs in a thread (see ``delivery.probe``)."""
    own = getattr(uploader, "probe", None)
    if inspect.iscoroutinefunction(own):

        async def probe_own(timeout: float) -> bool:
            try:
                return (await own()) is True
            except Exception as exc:  # a probe that fails says the link is down, nothing more
                logger.debug("the uploader's probe failed: %s: %s", type(exc).__name__, exc)
                return False

        return probe_own
    blocking = prober(uploader)
    if blocking is None:
        return None
    return lambda timeout: in_thread(lambda: blocking(timeout), "cloud-sync-probe")


async def _wait(event: asyncio.Event, timeout: float) -> None:
    """Sleep until ``event`` is set or ``timeout`` seconds have passed."""
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except asyncio.TimeoutError:
        pass
