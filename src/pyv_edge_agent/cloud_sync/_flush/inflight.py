"""``InFlight``: the batches one flush uploads at once (``max_in_flight_batches`` above 1).

Each batch is sent and settled by one of up to ``limit`` threads, started as they are needed
and kept for the flush (a thread started per batch waits to be scheduled, several
milliseconds on a busy machine); the flush's thread claims the next batch only when one of
them is free, so a claim's lease starts when its upload can start,
and a critical item waits for at most the batches already in flight. Settling goes
through the store, under its lock, as with one batch at a time: only the uploads overlap.
"""

import threading
import time
from collections import deque
from typing import Callable, Deque, List, Optional, Tuple

from .._types import CRITICAL, Column
from .claim import Claim

# What a batch's thread runs: send and settle one claim, return (go on, items acked).
Deliver = Callable[[Claim], Tuple[bool, int]]


class InFlight:
    """Up to ``limit`` batches in flight, what they came to, and the time the link was busy.

    Used as a context manager by the flush: leaving the block waits for every batch still
    in flight, then raises the first error a batch's thread raised (a failure of the
    store, never of the upload: those are outcomes).
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._changed = threading.Condition()
        self._running = 0
        self._threads: List[threading.Thread] = []
        # Batches handed over and not yet taken by a thread; threads waiting for one.
        self._work: Deque[Tuple[Claim, Deliver, int]] = deque()
        self._idle = 0
        self._closing = False
        self._error: Optional[BaseException] = None
        self.acked = 0
        # A batch failed (or a thread raised): claim no more, let the others finish.
        self.failed = False
        # Non-critical items in flight: not counted in ``messages_sent_today`` yet.
        self.reserved = 0
        # Seconds during which at least one batch was in flight: closed spans, the start
        # of the open one, and how much of it ``busy_seconds`` has handed out.
        self._busy = 0.0
        self._busy_since = 0.0
        self._counted = 0.0

    def __enter__(self) -> "InFlight":
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        with self._changed:
            self._closing = True
            self._changed.notify_all()
        for thread in self._threads:
            thread.join()
        if kind is None and self._error is not None:
            raise self._error

    def wait_for_room(self) -> bool:
        """Wait until fewer than ``limit`` batches are in flight; False once one failed."""
        with self._changed:
            while self._running >= self._limit and not self.failed:
                self._changed.wait()
            return not self.failed

    def start(self, claim: Claim, deliver: Deliver) -> None:
        """Send and settle ``claim`` in one of the flush's threads."""
        reserved = sum(1 for row in claim.rows if row[Column.PRIORITY] != CRITICAL)
        with self._changed:
            if self._running == 0:
                self._busy_since = time.monotonic()
            self._running += 1
            self.reserved += reserved
            self._work.append((claim, deliver, reserved))
            if self._idle or len(self._threads) >= self._limit:
                self._changed.notify_all()  # a thread waiting, or about to wait, takes it
                return
            thread = threading.Thread(target=self._serve, name="cloud-sync-batch", daemon=True)
            self._threads.append(thread)
        thread.start()

    def _serve(self) -> None:
        """Take batches as they are handed over until the flush ends."""
        while True:
            with self._changed:
                self._idle += 1
                while not self._work and not self._closing:
                    self._changed.wait()
                self._idle -= 1
                if not self._work:
                    return
                claim, deliver, reserved = self._work.popleft()
            self._run(claim, deliver, reserved)

    def _run(self, claim: Claim, deliver: Deliver, reserved: int) -> None:
        done, count, error = False, 0, None
        try:
            done, count = deliver(claim)
        except BaseException as exc:  # noqa: BLE001 - handed to the flush's thread, raised there
            error = exc
        with self._changed:
            self.acked += count
            self.failed = self.failed or not done
            if error is not None and self._error is None:
                self._error = error
            self.reserved -= reserved
            self._running -= 1
            if self._running == 0:
                self._busy += time.monotonic() - self._busy_since
            self._changed.notify_all()

    def busy_seconds(self) -> float:
        """Seconds the link was busy (at least one batch in flight) since the last call: the
        time an accepted batch is measured over, so that the batches in flight count
        together in the throughput that sizes batches (``max_batch_seconds``)."""
        with self._changed:
            busy = self._busy + (time.monotonic() - self._busy_since if self._running else 0.0)
            seconds, self._counted = busy - self._counted, busy
            return seconds
