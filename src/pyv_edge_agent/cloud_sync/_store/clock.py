"""The queue's notion of "now": the wall clock, made safe against steps in either direction.

Gateways without a real-time clock boot with a stale date and step it at NTP sync. The
queue reads the wall clock through one injectable function and keeps a persisted
high-water mark (``clock_high_water`` in ``sync_meta``), so that:

- "now" never runs backwards: when the wall clock is behind the last reading (set back
  while running, or a stale date at boot), the queue's time advances from the high-water
  mark at the rate of the elapsed-time clock instead, so nothing is stamped in the past
  and a nacked item waits its delay, not years;
- a forward step seen while running (the wall clock moving far more than the elapsed-time
  clock) shifts the timestamps of the items stored before it by the size of the step, so
  the step does not expire them or make every backoff due at once.
"""

import logging
import sqlite3
import threading
import time
from typing import Callable, Optional, Tuple

from .sql import write_transaction

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# A wall clock that moves more than this beyond the elapsed-time clock between two
# readings has been stepped. NTP slews small errors and rarely steps by more than seconds.
JUMP_THRESHOLD_SECONDS = 60.0
# The persisted mark is written this far ahead of the time handed out, so that it is
# always at or above every stored timestamp while written at most this often.
HIGH_WATER_LEAD_SECONDS = 1.0

READ_HIGH_WATER_SQL = "SELECT value FROM sync_meta WHERE key = 'clock_high_water'"
WRITE_HIGH_WATER_SQL = (
    "INSERT INTO sync_meta (key, value) VALUES ('clock_high_water', ?)"
    " ON CONFLICT(key) DO UPDATE SET value = MAX(value, excluded.value)"
)
COUNT_JUMP_SQL = (
    "INSERT INTO sync_meta (key, value) VALUES ('clock_jumps_total', 1)"
    " ON CONFLICT(key) DO UPDATE SET value = value + 1"
)
# Items stamped before the step move with it; items another process already stamped on the
# far side of the step (created_at above the midpoint) are left alone.
SHIFT_SQL = (
    "UPDATE sync_queue SET created_at = created_at + ?,"
    " next_retry_at = CASE WHEN next_retry_at > 0 THEN next_retry_at + ? ELSE next_retry_at END"
    " WHERE created_at < ?"
)


def _boot_time_clock() -> Callable[[], float]:
    # CLOCK_BOOTTIME keeps counting through a suspend, so a resumed gateway is not taken
    # for a clock step; elsewhere the monotonic clock is the best there is.
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is not None:
        try:
            time.clock_gettime(boottime)
        except OSError:
            return time.monotonic
        return lambda: time.clock_gettime(boottime)
    return time.monotonic


ELAPSED = _boot_time_clock()


class QueueClock:
    """Hands out the queue's timestamps from ``wall`` (``time.time`` by default).

    :param wall: the wall clock, seconds since the epoch.
    :param elapsed: a clock that is never stepped (monotonic, counting suspends).
    """

    def __init__(self, wall: Callable[[], float], elapsed: Callable[[], float] = ELAPSED) -> None:
        self._wall = wall
        self._elapsed = elapsed
        self._lock = threading.Lock()
        self._last_now: Optional[float] = None
        self._last_elapsed = 0.0
        # How far the queue's time runs ahead of the wall clock after a backward step.
        self._offset = 0.0
        self._persisted = float("-inf")
        self.pending_jump: Optional[Tuple[float, float]] = None

    def after_fork(self) -> None:
        """In a forked child: the lock may have been held by a thread that is not there."""
        self._lock = threading.Lock()

    def start(self, high_water: float) -> None:
        """Resume from the persisted high-water mark (0 when there is none)."""
        with self._lock:
            wall = self._read_wall()
            base = max(wall, high_water)
            self._offset = base - wall
            self._last_now = base
            self._last_elapsed = self._elapsed()
            self._persisted = high_water
            self.pending_jump = None

    def now(self) -> float:
        """Return the queue's current time; never less than an earlier return."""
        with self._lock:
            wall = self._read_wall()
            elapsed = self._elapsed()
            if self._last_now is None:
                self._last_now, self._last_elapsed = wall, elapsed
                return wall
            expected = self._last_now + max(0.0, elapsed - self._last_elapsed)
            candidate = wall + self._offset
            if candidate > expected + JUMP_THRESHOLD_SECONDS:
                step = candidate - expected
                # A wall clock catching up with a queue that ran ahead is not a jump.
                absorbed = min(self._offset, step)
                self._offset -= absorbed
                step -= absorbed
                if step > JUMP_THRESHOLD_SECONDS:
                    self.pending_jump = (expected, step)
                now = wall + self._offset
            elif candidate < self._last_now:
                self._offset = expected - wall
                now = expected
            else:
                now = candidate
            self._last_now, self._last_elapsed = now, elapsed
            return now

    def take_jump(self) -> Optional[Tuple[float, float]]:
        """Return and forget the forward step seen by ``now``: ``(time before it, size)``."""
        with self._lock:
            jump, self.pending_jump = self.pending_jump, None
            return jump

    def high_water_due(self) -> Optional[float]:
        """Return the mark to persist if the time handed out has reached the last one written."""
        with self._lock:
            if self._last_now is None or self._last_now < self._persisted:
                return None
            return self._last_now + HIGH_WATER_LEAD_SECONDS

    def persisted(self, value: float) -> None:
        """Record that ``value`` was written as the high-water mark."""
        with self._lock:
            self._persisted = max(self._persisted, value)

    def _read_wall(self) -> float:
        value = self._wall()
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
            raise TypeError(f"clock must return seconds since the epoch as a number, got {value!r:.100}")
        return float(value)


def read_high_water(conn: sqlite3.Connection) -> float:
    """The persisted high-water mark, 0.0 when none was written yet."""
    row = conn.execute(READ_HIGH_WATER_SQL).fetchone()
    return float(row[0]) if row else 0.0


def shift_for_jump(conn: sqlite3.Connection, before: float, step: float) -> bool:
    """Move the timestamps of the items stored before a forward step of the wall clock.

    Run inside a write transaction. Several processes see the same step; the first one
    moves the items and the mark, the others find the mark already past the step and
    return False.
    """
    if read_high_water(conn) >= before + step - JUMP_THRESHOLD_SECONDS:
        return False
    conn.execute(SHIFT_SQL, (step, step, before + step / 2))
    conn.execute(WRITE_HIGH_WATER_SQL, (before + step + HIGH_WATER_LEAD_SECONDS,))
    conn.execute(COUNT_JUMP_SQL)
    return True


def apply_jump(conn: sqlite3.Connection, clock: QueueClock) -> None:
    """Move stored timestamps with the forward step ``clock`` saw, in the open transaction
    if there is one, else in a transaction of its own."""
    jump = clock.take_jump()
    if jump is None:
        return
    before, step = jump
    if conn.in_transaction:
        shifted = shift_for_jump(conn, before, step)
    else:
        with write_transaction(conn):
            shifted = shift_for_jump(conn, before, step)
    clock.persisted(before + step + HIGH_WATER_LEAD_SECONDS)
    if shifted:
        logger.warning(
            "wall clock stepped forward by %.0f s; moved the timestamps of stored items with it so that "
            "the step expires none of them",
            step,
        )


def persist_high_water(conn: sqlite3.Connection, clock: QueueClock) -> None:
    """Write the high-water mark if it is due; call inside a write transaction."""
    due = clock.high_water_due()
    if due is not None:
        conn.execute(WRITE_HIGH_WATER_SQL, (due,))
        clock.persisted(due)
