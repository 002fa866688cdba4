"""``SyncWorker``: the background sync loop that calls ``maybe_flush`` for an agent (one
loop per destination when the queue has several)."""

import logging
import threading
import time
from typing import Mapping, Optional, Union

from . import _validate
from ._flush.flusher import check_uploader
from ._queue import CloudSyncQueue, Destination
from ._sigterm import SigtermHook
from ._upload_types import Uploader
from .delivery.probe import prober

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# After a flush call that sent nothing although items were due, wait at least this long
# (or the interval, if shorter): a safety net against spinning on an uploader that
# neither accepts nor fails.
_IDLE_FLOOR_SECONDS = 1.0


class SyncWorker:
    """Flushes ``queue`` through ``uploader`` from a daemon thread; given a mapping of
    destination names to uploaders, each destination of the queue from a thread of its own,
    so that one that is down never delays another.

    The loop sleeps until an item is due (at most ``interval`` seconds), so a dead link
    costs no CPU: it sleeps through the backoff that the last failure set. When that
    failure got no answer at all (refused, unreachable, timed out), it probes the link
    every ``probe_interval`` of the queue (the uploader's ``probe()``, or a TCP connect to
    its endpoint) and ends the backoff as soon as the link answers; a backoff after refused
    credentials or an answer of the endpoint (5xx, 429) runs its course. Enqueueing a
    critical item through the same queue object wakes it at once, backoff or not, and
    ``kick()`` (a network-up hook) ends a wait from outside.
    ``stop()`` (or SIGTERM, see ``handle_sigterm``) lets the batch in flight finish and be
    acked or nacked, then ends the loop: no item is lost and none is acked twice.

    :param interval: the longest sleep between two looks at the queue, in seconds.
    :param handle_sigterm: when ``start()`` runs in the main thread, it installs a SIGTERM
        handler that stops the worker after the batch in flight is settled, and then:

        - if SIGTERM had its default disposition, ends the process with SIGTERM once the
          worker has ended (waiting at most the queue's ``lease_seconds``), so that
          ``systemctl stop`` and ``docker stop`` see it end at once, "killed by SIGTERM"
          as without a worker (status 143; systemd counts it a clean stop). If the
          application waits for the worker itself (``join()``, ``stop()``, the end of a
          ``with`` block), it ends the process its own way instead;
        - if the application installed a handler before ``start()``, calls it (the
          application decides; ``join()`` waits for the batch in flight);
        - if SIGTERM was ignored, only stops the worker.

        A second SIGTERM gets the handler that was there before (the default: the process
        ends at once). ``stop()`` from the main thread puts that handler back. With
        ``False``, SIGTERM is left alone: call ``stop()`` on the way out.
    """

    def __init__(
        self,
        queue: CloudSyncQueue,
        uploader: Union[Uploader, Mapping[str, Uploader]],
        *,
        interval: float = 10.0,
        handle_sigterm: bool = True,
        name: str = "cloud-sync-worker",
    ) -> None:
        if not isinstance(queue, CloudSyncQueue):
            raise TypeError(f"queue must be a CloudSyncQueue, got {type(queue).__name__}")
        interval = _validate.number("interval", interval, 0.0, allow_equal=False)
        if not isinstance(handle_sigterm, bool):
            raise TypeError(f"handle_sigterm must be a bool, got {type(handle_sigterm).__name__}")
        self._queue = queue
        self._uploader = uploader
        self._interval = interval
        self._handle_sigterm = handle_sigterm
        self._name = str(name)
        self._stop = threading.Event()
        # Set once the application waits for the loop: after SIGTERM it ends the process itself.
        self._joined = threading.Event()
        self._loops = [
            _Loop(queue, each, interval, self._stop, self._name)
            if target is None
            else _Loop(queue.destination(target), each, interval, self._stop, f"{self._name}-{target}")
            for target, each in _validate.destination_uploaders(queue.destinations, uploader)
        ]
        self._started = False
        self._sigterm = SigtermHook(self._ask_to_stop, self._ended, self._joined.is_set, queue.lease_seconds)

    @property
    def flushed(self) -> int:
        """How many items the loops have flushed so far."""
        return sum(loop.flushed for loop in self._loops)

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"SyncWorker(queue={self._queue!r}, uploader={self._uploader!r}, interval={self._interval!r}, {state})"

    def start(self) -> "SyncWorker":
        """Start the loops in daemon threads; returns self."""
        if self._started:
            raise RuntimeError("a SyncWorker can be started once")
        self._started = True
        if self._handle_sigterm:
            self._sigterm.install()
        for loop in self._loops:
            loop.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Ask the loops to end after the batch in flight and wait up to ``timeout`` seconds
        (None: as long as it takes); return True when they have ended. From the main thread
        it also puts back the SIGTERM handler that ``start()`` replaced."""
        self._ask_to_stop()
        self._sigterm.uninstall()
        return self.join(timeout)

    def kick(self) -> None:
        """End the loops' wait now: the link is back (call it from a network-up hook).

        A backoff after an upload that got no answer ends (the batches it held are due
        now) and the loop flushes at once; a backoff after refused credentials or an answer
        of the endpoint stays, and only what is due goes.
        """
        for loop in self._loops:
            loop.kick()

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the loops to end (after ``stop()`` or SIGTERM); return True when they have."""
        if not any(loop.is_current() for loop in self._loops):
            self._joined.set()
        return self._ended(timeout)

    def is_alive(self) -> bool:
        """True while a loop runs."""
        return any(loop.is_alive() for loop in self._loops)

    def __enter__(self) -> "SyncWorker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _ended(self, timeout: Optional[float]) -> bool:
        """Wait up to ``timeout`` seconds (in all) for the loops to end; True when they have."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for loop in self._loops:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not loop.ended(left):
                return False
        return True

    def _ask_to_stop(self) -> None:
        self._stop.set()
        for loop in self._loops:
            loop.wake()


class _Loop:
    """One sync loop: flushes ``target`` (the queue, or one of its destinations) through
    ``uploader`` in a daemon thread until ``stop`` is set."""

    def __init__(
        self,
        target: Union[CloudSyncQueue, Destination],
        uploader: Uploader,
        interval: float,
        stop: threading.Event,
        name: str,
    ) -> None:
        check_uploader(uploader, target.lease_seconds)  # now, rather than in the thread
        self._target = target
        self._uploader = uploader
        self._interval = interval
        self._stop = stop
        self._name = name
        self._wake = threading.Event()
        self._kicked = threading.Event()
        self._probe = prober(uploader)
        self._thread: Optional[threading.Thread] = None
        self.flushed = 0

    def start(self) -> None:
        """Start the loop's thread."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()

    def kick(self) -> None:
        """End the wait and any backoff a dead link set (see ``SyncWorker.kick``)."""
        self._kicked.set()
        self._wake.set()

    def wake(self) -> None:
        """End the wait (to stop, or to look at the queue again)."""
        self._wake.set()

    def is_current(self) -> bool:
        """Whether the calling thread is this loop's."""
        return threading.current_thread() is self._thread

    def is_alive(self) -> bool:
        """True while the loop runs."""
        return self._thread is not None and self._thread.is_alive()

    def ended(self, timeout: Optional[float]) -> bool:
        """Wait up to ``timeout`` seconds for the loop to end; True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _sleep_time(self, due: Optional[float]) -> float:
        """Through a backoff the whole way (nothing would be sent before it ends); else
        until the next item is due, looking again at least every ``interval``."""
        backoff = self._target.backoff_seconds
        if backoff > 0:
            return backoff
        return self._interval if due is None else min(due, self._interval)

    def _wait(self, seconds: float) -> None:
        """Sleep ``seconds`` or until woken; while the queue backs off after an upload that
        got no answer, probe the link every ``probe_interval`` and end the backoff (and the
        sleep) when it answers. Probes start every ``probe_interval`` whatever each one
        took, so one that hung until its timeout while the link came back does not delay the
        next by a whole interval."""
        now = time.monotonic()
        deadline = now + seconds
        next_probe = now + (self._target.probe_interval or 0.0)
        while True:
            now = time.monotonic()
            left = deadline - now
            interval = self._target.probe_interval
            if self._probe is None or interval is None or not self._target.link_down:
                self._wake.wait(max(0.0, left))
                return
            if left <= 0.0 or self._wake.wait(max(0.0, min(left, next_probe - now))):
                return
            if time.monotonic() < next_probe:
                continue
            next_probe = time.monotonic() + interval
            if self._target.link_down and self._probe(interval) and self._target.end_backoff():
                logger.info("the link answers again: ending the backoff early")
                return

    def _run(self) -> None:
        with self._target.waking(self._wake):
            self._loop()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                if self._kicked.is_set():
                    self._kicked.clear()
                    self._target.end_backoff()
                due = self._target.next_due_in()
                if not woken and due is not None and due > 0:
                    self._wait(self._sleep_time(due))
                    continue
                # The queue's own entry point, so that housekeeping (the purge of expired
                # items) and error translation run; with nothing due it is all it does.
                flushed = self._target.maybe_flush(self._uploader, stop=self._stop)
            except Exception as exc:  # a full disk or a closed queue must not kill the loop silently
                if not failing:
                    logger.error("the sync worker cannot flush: %s: %s", type(exc).__name__, exc)
                    failing = True
                self._wake.wait(self._interval)
                continue
            if failing:
                logger.info("the sync worker flushes again")
                failing = False
            self.flushed += flushed
            if due is None and not woken:
                self._wait(self._sleep_time(due))
            elif not flushed:
                self._wake.wait(min(self._interval, _IDLE_FLOOR_SECONDS))
