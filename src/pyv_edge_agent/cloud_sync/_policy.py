"""The flush options of a queue (``FlushPolicy``) and the state of its link in this process
(``LinkState``): what a flush is allowed to do, and what the last ones found."""

import logging
import random
import threading
from dataclasses import dataclass
from typing import Callable, List, Optional

from . import _validate
from ._upload_types import OutcomeKind

logger = logging.getLogger("pyv_edge_agent.cloud_sync")


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
        return (1,) if self.budget_left(sent_today) == 0 else (1, 2, 3, 4)


_STATE_LOG = {
    OutcomeKind.TRANSIENT: (logging.WARNING, "uploads are failing, backing off: %s"),
    OutcomeKind.CREDENTIALS: (logging.ERROR, "the ingest endpoint refused the credentials; fix the API key: %s"),
    OutcomeKind.ACCEPTED: (logging.INFO, "uploads are accepted again%s"),
}


class LinkState:
    """The link of one queue object as this process sees it: when it may be tried again,
    whether it works, fails or refuses the key (each change logged once), and the events of
    the sync loops to wake when a critical item arrives."""

    def __init__(self) -> None:
        self.backoff_until = 0.0
        self.state: Optional[OutcomeKind] = None
        self.wakers: List[threading.Event] = []

    def backoff_seconds(self, now: float) -> float:
        """Seconds left of the backoff at ``now`` (0 if none)."""
        return max(0.0, self.backoff_until - now)

    def accepted(self) -> None:
        """An upload went through: no backoff, and the link works."""
        self.backoff_until = 0.0
        self._change(OutcomeKind.ACCEPTED, "")

    def failed(self, kind: OutcomeKind, detail: str, until: float) -> None:
        """An upload failed with ``kind``: back off until ``until`` at least."""
        self.backoff_until = max(self.backoff_until, until)
        self._change(kind, detail)

    def _change(self, state: OutcomeKind, detail: str) -> None:
        """Log one line when the link changes between working, failing and refusing the key."""
        if state == self.state or (state == OutcomeKind.ACCEPTED and self.state is None):
            self.state = state
            return
        self.state = state
        level, message = _STATE_LOG[state]
        logger.log(level, message, detail)

    def wake(self) -> None:
        """Tell the sync loops waiting on this queue that a critical item arrived."""
        for event in list(self.wakers):
            event.set()
