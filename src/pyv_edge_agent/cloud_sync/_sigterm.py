"""SIGTERM and the sync workers (``SyncWorker``, ``AsyncSyncWorker``): the loop stops
after the batch in flight is settled, and then the process ends the way SIGTERM ends it.

What happens after the stop depends on what was there before the worker's handler:

- the default disposition: once every stopping worker has ended (at most its queue's
  ``lease_seconds``), SIGTERM is raised again with the default disposition, so the process
  ends "killed by SIGTERM" (status 143 in a shell or Docker, a clean stop for systemd), as
  it would have without a worker. Unless the application waits for the worker itself
  (``join``, ``stop``, the end of a ``with`` block): then it ends the process as it likes;
- a handler of the application's: it is called at once and decides (the worker stops
  after its batch all the same);
- ``SIG_IGN``: the worker stops; the process goes on.

Why not a clean exit: the handler runs in the main thread between two of its bytecodes,
perhaps while it holds the queue's lock, so it must not wait there for the worker; and a
``SystemExit`` raised there would end an application's sensor loop wherever it happens to
be. The worker's end is awaited in a thread of its own, which can only end the process by
a signal; re-raising SIGTERM gives exactly what a service manager expects.
"""

import logging
import os
import signal
import threading
import time
from types import FrameType
from typing import Any, Callable, List, Optional

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# The hooks whose worker SIGTERM stopped: the process ends after all of them, so that a
# second worker (whose handler chained to the first one's) settles its batch too.
_stopping: List["SigtermHook"] = []
_stopping_lock = threading.Lock()


class SigtermHook:
    """The SIGTERM handler of one worker: ``stop`` asks it to end after the batch in
    flight, ``ended(timeout)`` waits for that, ``waited_for()`` says whether the
    application waits for the worker itself, ``timeout`` bounds the wait in seconds."""

    def __init__(
        self,
        stop: Callable[[], None],
        ended: Callable[[float], bool],
        waited_for: Callable[[], bool],
        timeout: float,
    ) -> None:
        self._stop = stop
        self.ended = ended
        self.waited_for = waited_for
        self.timeout = timeout
        self._previous: Any = None
        self._installed = False

    def install(self) -> bool:
        """Install the handler (from the main thread only, as Python requires); return
        whether it was installed."""
        if threading.current_thread() is not threading.main_thread():
            return False
        self._previous = signal.signal(signal.SIGTERM, self._handle)
        self._installed = True
        return True

    def uninstall(self) -> None:
        """Put back the handler that was there before, if ours is still the one installed
        and this is the main thread (a worker stopped by its application)."""
        if not self._installed or threading.current_thread() is not threading.main_thread():
            return
        self._installed = False
        if signal.getsignal(signal.SIGTERM) == self._handle:
            signal.signal(signal.SIGTERM, _restorable(self._previous))

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        logger.info("SIGTERM: stopping the sync worker after the batch in flight")
        self._stop()
        with _stopping_lock:
            _stopping.append(self)
        previous, self._installed = self._previous, False
        # A second SIGTERM gets the handler that was there before: the default ends the
        # process at once.
        signal.signal(signal.SIGTERM, _restorable(previous))
        if callable(previous):
            previous(signum, frame)  # the application's (or another worker's) handler decides
        elif previous != signal.SIG_IGN:
            threading.Thread(target=_end_process, name="cloud-sync-sigterm", daemon=True).start()


def _restorable(handler: Any) -> Any:
    # None: a handler installed from outside Python, which cannot be put back.
    return signal.SIG_DFL if handler is None else handler


def _end_process() -> None:
    """Wait (bounded) until every stopped worker has settled its batch, then end the
    process with SIGTERM under its default disposition, unless the application waits for
    a worker itself and so ends the process its own way."""
    with _stopping_lock:
        hooks = list(_stopping)
    deadline = time.monotonic() + max(hook.timeout for hook in hooks)
    for hook in hooks:
        if not hook.ended(max(0.0, deadline - time.monotonic())):
            logger.warning(
                "SIGTERM: a sync worker did not end within its lease; ending the process anyway "
                "(its batch is sent again once the lease runs out)"
            )
    if any(hook.waited_for() for hook in hooks):
        logger.info("SIGTERM: the sync worker has stopped; the application ends the process")
        return
    logger.info("SIGTERM: the batch in flight is settled; ending the process")
    os.kill(os.getpid(), signal.SIGTERM)
