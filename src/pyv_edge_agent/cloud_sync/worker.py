"""``SyncWorker``: the background sync loop that calls ``maybe_flush`` for an agent."""

import logging
import signal
import threading
from types import FrameType
from typing import Any, Optional

from . import _flush, _validate
from ._queue import CloudSyncQueue

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# After a flush call that sent nothing although items were due, wait at least this long
# (or the interval, if shorter): a safety net against spinning on an uploader that
# neither accepts nor fails.
_IDLE_FLOOR_SECONDS = 1.0


class SyncWorker:
    """Flushes ``queue`` through ``uploader`` from a daemon thread.

    The loop sleeps until an item is due (at most ``interval`` seconds), so a dead link
    costs no CPU: it sleeps through the backoff that the last failure set. Enqueueing a
    critical item through the same queue object wakes it at once, backoff or not.
    ``stop()`` (or SIGTERM, see ``handle_sigterm``) lets the batch in flight finish and be
    acked or nacked, then ends the loop: no item is lost and none is acked twice.

    :param interval: the longest sleep between two looks at the queue, in seconds.
    :param handle_sigterm: when ``start()`` runs in the main thread, SIGTERM stops the
        worker (and then goes on to any handler installed before it).
    """

    def __init__(
        self,
        queue: CloudSyncQueue,
        uploader: Any,
        *,
        interval: float = 10.0,
        handle_sigterm: bool = True,
        name: str = "cloud-sync-worker",
    ) -> None:
        if not isinstance(queue, CloudSyncQueue):
            raise TypeError(f"queue must be a CloudSyncQueue, got {type(queue).__name__}")
        _flush.poster(uploader)  # refuses an object without post_batch now rather than in the thread
        self._queue = queue
        self._uploader = uploader
        self._interval = _validate.number("interval", interval, 0.0, allow_equal=False)
        if not isinstance(handle_sigterm, bool):
            raise TypeError(f"handle_sigterm must be a bool, got {type(handle_sigterm).__name__}")
        self._handle_sigterm = handle_sigterm
        self._name = str(name)
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._previous_handler: Any = None
        self.flushed = 0

    def __repr__(self) -> str:
        state = "running" if self.is_alive() else "stopped"
        return f"SyncWorker(queue={self._queue!r}, uploader={self._uploader!r}, interval={self._interval!r}, {state})"

    def start(self) -> "SyncWorker":
        """Start the loop in a daemon thread; returns self."""
        if self._thread is not None:
            raise RuntimeError("a SyncWorker can be started once")
        if self._handle_sigterm and threading.current_thread() is threading.main_thread():
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: Optional[float] = None) -> bool:
        """Ask the loop to end after the batch in flight and wait up to ``timeout`` seconds
        (None: as long as it takes); return True when it has ended."""
        self._stop.set()
        self._wake.set()
        return self.join(timeout)

    def join(self, timeout: Optional[float] = None) -> bool:
        """Wait for the loop to end (after ``stop()`` or SIGTERM); return True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def is_alive(self) -> bool:
        """True while the loop runs."""
        return self._thread is not None and self._thread.is_alive()

    def __enter__(self) -> "SyncWorker":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _on_sigterm(self, signum: int, frame: Optional[FrameType]) -> None:
        logger.info("SIGTERM: stopping the sync worker after the batch in flight")
        self._stop.set()
        self._wake.set()
        previous, self._previous_handler = self._previous_handler, None
        # A second SIGTERM gets the handler that was there before.
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)

    def _sleep_time(self, due: Optional[float]) -> float:
        """Through a backoff the whole way (nothing would be sent before it ends); else
        until the next item is due, looking again at least every ``interval``."""
        backoff = self._queue.backoff_seconds
        if backoff > 0:
            return backoff
        return self._interval if due is None else min(due, self._interval)

    def _run(self) -> None:
        with self._queue.waking(self._wake):
            self._loop()

    def _loop(self) -> None:
        failing = False
        while not self._stop.is_set():
            woken = self._wake.is_set()
            self._wake.clear()
            try:
                due = self._queue.next_due_in()
                if not woken and due is not None and due > 0:
                    self._wake.wait(self._sleep_time(due))
                    continue
                # The queue's own entry point, so that housekeeping (the purge of expired
                # items) and error translation run; with nothing due it is all it does.
                flushed = self._queue.maybe_flush(self._uploader, stop=self._stop)
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
                self._wake.wait(self._sleep_time(due))
            elif not flushed:
                self._wake.wait(min(self._interval, _IDLE_FLOOR_SECONDS))
