"""The flush options of a queue (``FlushPolicy``) and the state of its link in this process
(``LinkState``): what a flush is allowed to do, and what the last ones found."""

import logging
import random
import sqlite3
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

from .. import _validate
from .._store.deliveries import Deliveries
from .._types import CRITICAL, Priority
from .._upload_types import MAX_IN_FLIGHT_BATCHES, OutcomeKind
from .pacing import Pacer, ThroughputMeter

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# The priority levels a flush reads, in order (as stored: plain ints), and those it reads
# once the daily message budget is spent.
ALL_LEVELS = tuple(priority.value for priority in Priority)
CRITICAL_LEVEL = (CRITICAL,)


@dataclass(frozen=True)
class FlushPolicy:
    """The validated flush options of one queue (the constructor arguments of the same names)."""

    max_batch_items: int = 500
    max_batch_bytes: int = 512 * 1024
    retry_base_seconds: float = 1.0
    retry_max_seconds: float = 300.0
    lease_seconds: float = 300.0
    max_attempts: int = 5
    daily_message_limit: Optional[int] = None
    max_items_per_second: Optional[float] = None
    max_bytes_per_second: Optional[float] = None
    pacing_burst_seconds: float = 1.0
    critical_bypasses_pacing: bool = True
    max_batch_seconds: Optional[float] = None
    probe_interval: Optional[float] = 10.0
    max_in_flight_batches: int = 1

    def __post_init__(self) -> None:
        def put(name: str, value: object) -> None:
            object.__setattr__(self, name, value)

        put("max_batch_items", _validate.integer("max_batch_items", self.max_batch_items, 1))
        put("max_batch_bytes", _validate.integer("max_batch_bytes", self.max_batch_bytes, 1))
        base = _validate.number("retry_base_seconds", self.retry_base_seconds, 0.0)
        ceiling = _validate.number("retry_max_seconds", self.retry_max_seconds, 0.0)
        if ceiling < base:
            raise ValueError(
                f"retry_max_seconds ({self.retry_max_seconds!r}) must be at least "
                f"retry_base_seconds ({self.retry_base_seconds!r})"
            )
        put("retry_base_seconds", base)
        put("retry_max_seconds", ceiling)
        put("lease_seconds", _validate.number("lease_seconds", self.lease_seconds, 0.0, allow_equal=False))
        put("max_attempts", _validate.integer("max_attempts", self.max_attempts, 1))
        if self.daily_message_limit is not None:
            put("daily_message_limit", _validate.integer("daily_message_limit", self.daily_message_limit, 0))
        for name in ("max_items_per_second", "max_bytes_per_second", "max_batch_seconds", "probe_interval"):
            value = getattr(self, name)
            if value is not None:
                put(name, _validate.number(name, value, 0.0, allow_equal=False))
        put(
            "pacing_burst_seconds",
            _validate.number("pacing_burst_seconds", self.pacing_burst_seconds, 0.0, allow_equal=False),
        )
        put("critical_bypasses_pacing", _validate.boolean("critical_bypasses_pacing", self.critical_bypasses_pacing))
        put(
            "max_in_flight_batches",
            _validate.integer("max_in_flight_batches", self.max_in_flight_batches, 1, MAX_IN_FLIGHT_BATCHES),
        )

    def pacer(self) -> Pacer:
        """A fresh pair of token buckets for ``max_items_per_second`` and ``max_bytes_per_second``."""
        return Pacer(
            self.max_items_per_second,
            self.max_bytes_per_second,
            self.pacing_burst_seconds,
            self.critical_bypasses_pacing,
        )

    def backoff_delay(self, attempts: int) -> float:
        """Exponential backoff with full jitter: uniform in [0, min(max, base * 2**attempts)].

        Full jitter spreads a fleet's retries after a shared outage.
        """
        ceiling = min(self.retry_max_seconds, self.retry_base_seconds * 2.0 ** min(attempts, 32))
        return random.uniform(0.0, ceiling)

    def credentials_delay(self) -> float:
        """The long wait after refused credentials: a bad key is fixed by a person, not by retrying."""
        return random.uniform(self.retry_max_seconds / 2.0, self.retry_max_seconds)

    def budget_left(self, sent_today: Callable[[], int]) -> Optional[int]:
        """Non-critical items that may still go today under ``daily_message_limit`` (None: no
        limit; ``sent_today`` is only asked when there is one)."""
        if self.daily_message_limit is None:
            return None
        return max(0, self.daily_message_limit - sent_today())

    def levels(self, sent_today: Callable[[], int]) -> "tuple[int, ...]":
        """The priorities a flush may send now: only Critical once the daily budget is spent."""
        return CRITICAL_LEVEL if self.budget_left(sent_today) == 0 else ALL_LEVELS


_STATE_LOG = {
    OutcomeKind.TRANSIENT: (logging.WARNING, "uploads are failing, backing off: %s"),
    OutcomeKind.CREDENTIALS: (logging.ERROR, "%s; fix them: %s"),
    OutcomeKind.ACCEPTED: (logging.INFO, "uploads are accepted again%s"),
}


class LinkState:
    """The link of one queue object as this process sees it: when it may be tried again,
    whether it works, fails or refuses the key (each change logged once), the batches a
    failure with no answer held back (a probe or ``kick`` may release them), the token
    buckets that pace its flushes, the throughput they measured, and the events of the
    sync loops to wake when a critical item arrives."""

    def __init__(self, pacer: Optional[Pacer] = None) -> None:
        self.backoff_until = 0.0
        self.state: Optional[OutcomeKind] = None
        self.link_down = False
        self.wakers: List[threading.Event] = []
        self.pacer = pacer
        self.meter = ThroughputMeter()
        self._held: List[float] = []

    def backoff_seconds(self, now: float) -> float:
        """Seconds left of the backoff at ``now`` (0 if none)."""
        return max(0.0, self.backoff_until - now)

    def accepted(self, now: float) -> List[Tuple[float, float]]:
        """An upload went through: no backoff, and the link works. Returns the stamps that
        make the batches a failure with no answer held back due now (see ``release_held``)."""
        self.backoff_until = 0.0
        self.link_down = False
        self._change(OutcomeKind.ACCEPTED, "")
        return self._take_held(now)

    def failed(
        self, kind: OutcomeKind, detail: str, until: float, held: Sequence[float] = (), subject: str = ""
    ) -> None:
        """An upload failed with ``kind``: back off until ``until`` at least.

        ``held``: the ``next_retry_at`` stamps of the batches held back, given when the
        failure got no answer at all (refused, unreachable, timed out), so that the link
        itself may be down and a probe may end the backoff. ``subject``: who refused the
        credentials, for the log line (the uploader's ``credentials_subject``).
        """
        self.backoff_until = max(self.backoff_until, until)
        self.link_down = bool(held)
        self._held = self._held + list(held) if held else []
        self._change(kind, detail, subject)

    def resume(self, now: float) -> Optional[List[Tuple[float, float]]]:
        """End a backoff after a failure that got no answer (the link is back): return the
        ``(old, new)`` ``next_retry_at`` stamps that make the held batches due now.

        None when there is no such backoff: none at all, or one after refused credentials
        or an answer of the endpoint (5xx, 429, ``Retry-After``), which a working link
        does not end.
        """
        if not self.link_down:
            return None
        self.backoff_until = 0.0
        self.link_down = False
        return self._take_held(now)

    def end(self) -> None:
        """End any backoff, whatever its cause (an operator said so: ``retry_now``)."""
        self.backoff_until = 0.0
        self.link_down = False
        self._held = []

    def _take_held(self, now: float) -> List[Tuple[float, float]]:
        # One shift for all: each batch keeps its own stamp (so its retry sends the same
        # items under the same key) and the batches keep their order.
        stamps = sorted(stamp for stamp in set(self._held) if stamp > now)
        self._held = []
        if not stamps:
            return []
        shift = stamps[-1] - now
        return [(stamp, stamp - shift) for stamp in stamps]

    def _change(self, state: OutcomeKind, detail: str, subject: str = "") -> None:
        """Log one line when the link changes between working, failing and refusing the key."""
        if state == self.state or (state == OutcomeKind.ACCEPTED and self.state is None):
            self.state = state
            return
        self.state = state
        level, message = _STATE_LOG[state]
        if state == OutcomeKind.CREDENTIALS:
            logger.log(level, message, subject or "the receiving end refused the credentials", detail)
        else:
            logger.log(level, message, detail)

    def wake(self) -> None:
        """Tell the sync loops waiting on this queue that a critical item arrived."""
        for event in list(self.wakers):
            event.set()


def release_held(conn: sqlite3.Connection, deliveries: Deliveries, stamps: List[Tuple[float, float]]) -> int:
    """Move each held batch of ``deliveries`` from its old ``next_retry_at`` stamp to its
    new one (see ``LinkState.resume``), inside the caller's write transaction; return how
    many items moved."""
    if not stamps:
        return 0
    return int(conn.executemany(deliveries.resume_held, [deliveries.key + (new, old) for old, new in stamps]).rowcount)
