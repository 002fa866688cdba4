"""How fast a flush may and can send: the token buckets behind ``max_items_per_second`` and
``max_bytes_per_second``, and the measured link throughput that sizes batches to
``max_batch_seconds``. Both live as long as the queue object (``LinkState`` holds them), so
they hold across the batches of one flush and across flushes."""

import threading
import time
from typing import Callable, Optional, Tuple

# A batch sized to ``max_batch_seconds`` before anything was measured: small enough to go
# in about a second on a 128 kbit/s link, and one round trip on anything faster.
FIRST_BATCH_BYTES = 16 * 1024
# What the earlier batches weigh against the newest in the throughput: the link's rate
# changes (a modem switching cells), so a few batches should be enough to follow it.
_OLDER_WEIGHT = 0.5
_GROWTH = 4
# A wait shorter than this is rounding, not pacing: the clock may not even move that much.
_NO_WAIT = 1e-6


class TokenBucket:
    """``rate`` tokens a second, at most ``capacity`` held; starts full.

    A take larger than the capacity (one item bigger than the byte burst) waits for a full
    bucket and leaves it in debt, so that the rate holds over time.
    """

    def __init__(self, rate: float, capacity: float, clock: Callable[[], float]) -> None:
        self.rate = rate
        self.capacity = capacity
        self._clock = clock
        self._tokens = capacity
        self._stamp = clock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_for(self, amount: float) -> float:
        """Seconds until ``amount`` tokens (at most the capacity) are there; 0 when they are."""
        self._refill()
        missing = min(amount, self.capacity) - self._tokens
        return max(0.0, missing / self.rate)

    def take(self, amount: float) -> None:
        """Spend ``amount`` tokens, into debt if there are not so many."""
        self._refill()
        self._tokens -= amount


class Pacer:
    """The two token buckets of one queue object (each optional), shared by its flushes.

    :param burst_seconds: each bucket holds this many seconds of its rate; a batch is
        never larger than a full bucket.
    :param exempt_critical: a batch holding a critical item goes without waiting (its
        items and bytes are still spent, so the rate holds over time).
    """

    def __init__(
        self,
        items_per_second: Optional[float],
        bytes_per_second: Optional[float],
        burst_seconds: float,
        exempt_critical: bool,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._items = self._bucket(items_per_second, burst_seconds, clock)
        self._bytes = self._bucket(bytes_per_second, burst_seconds, clock)
        self._exempt_critical = exempt_critical
        self._sleep = sleep
        self._lock = threading.Lock()

    @staticmethod
    def _bucket(rate: Optional[float], burst_seconds: float, clock: Callable[[], float]) -> Optional[TokenBucket]:
        if rate is None:
            return None
        # Room for one item at the least, whatever the burst.
        return TokenBucket(rate, max(1.0, rate * burst_seconds), clock)

    @property
    def active(self) -> bool:
        """Whether any rate is set."""
        return self._items is not None or self._bytes is not None

    def batch_bounds(self) -> Tuple[Optional[int], Optional[int]]:
        """The most items and bytes one batch may hold: a full bucket (None: no bound)."""
        items = None if self._items is None else int(self._items.capacity)
        size = None if self._bytes is None else int(self._bytes.capacity)
        return items, size

    def admit(self, items: int, size: int, critical: bool) -> float:
        """Wait until a batch of ``items`` items and ``size`` bytes may go, spend them, and
        return the seconds waited."""
        waited = 0.0
        while True:
            with self._lock:
                wait = 0.0
                if not (critical and self._exempt_critical):
                    wait = max(self._wait(self._items, items), self._wait(self._bytes, size))
                if wait <= _NO_WAIT:
                    for bucket, amount in ((self._items, items), (self._bytes, size)):
                        if bucket is not None:
                            bucket.take(amount)
                    return waited
            # Outside the lock: another thread's flush may spend tokens meanwhile, so look again.
            self._sleep(wait)
            waited += wait

    @staticmethod
    def _wait(bucket: Optional[TokenBucket], amount: float) -> float:
        return 0.0 if bucket is None else bucket.wait_for(amount)


class ThroughputMeter:
    """What uploads achieved lately: payload bytes and items a second, timed from handing a
    batch to the uploader until its answer.

    Bytes, items and seconds are summed with older batches weighing less and less, and the
    rates are their ratios: a batch counts by its size, so that one lone critical item (all
    round trip, hardly any bytes) does not make the link look slow.
    """

    def __init__(self) -> None:
        self._bytes = 0.0
        self._items = 0.0
        self._seconds = 0.0
        self._largest = 0
        self._lock = threading.Lock()

    @property
    def bytes_per_second(self) -> Optional[float]:
        """Payload bytes a second (None before anything was measured)."""
        return self._bytes / self._seconds if self._seconds > 0.0 else None

    @property
    def items_per_second(self) -> Optional[float]:
        """Items a second (None before anything was measured)."""
        return self._items / self._seconds if self._seconds > 0.0 else None

    def seed(self, bytes_per_second: Optional[float], items_per_second: Optional[float]) -> None:
        """Start from figures measured earlier (a restart keeps sizing batches well); they
        weigh as one second of uploading."""
        with self._lock:
            if self._seconds == 0.0 and bytes_per_second:
                self._bytes, self._items, self._seconds = float(bytes_per_second), float(items_per_second or 0.0), 1.0

    def record(self, size: int, items: int, seconds: float) -> None:
        """Add one accepted upload of ``size`` payload bytes and ``items`` items."""
        with self._lock:
            self._bytes = self._bytes * _OLDER_WEIGHT + size
            self._items = self._items * _OLDER_WEIGHT + items
            self._seconds = self._seconds * _OLDER_WEIGHT + max(seconds, 1e-6)
            self._largest = max(self._largest, size)

    def batch_bytes(self, max_batch_seconds: float) -> int:
        """The payload bytes that should take about ``max_batch_seconds`` to upload."""
        rate = self.bytes_per_second
        if rate is None:
            return FIRST_BATCH_BYTES
        # A small batch fits in the link's buffers and looks faster than the link: grow at
        # most fourfold on the largest batch measured, like TCP's slow start.
        ceiling = _GROWTH * max(self._largest, FIRST_BATCH_BYTES // _GROWTH)
        return max(1, min(int(rate * max_batch_seconds), ceiling))
