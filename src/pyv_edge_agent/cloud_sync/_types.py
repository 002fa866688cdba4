"""The value types users see: ``Priority``, ``QueueItem`` and ``DeadLetter``."""

import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Dict, Optional


class Priority(Enum):
    """Queue priority; a lower value is sent first."""

    CRITICAL = 1
    ANOMALY = 2
    TELEMETRY = 3
    LOGS = 4


@dataclass
class QueueItem:
    """One stored item, as returned by ``dequeue`` and ``peek``."""

    id: int
    payload: Dict[str, Any]
    priority: Priority
    created_at: float
    ttl_seconds: int
    retry_count: int = 0
    next_retry_at: float = field(default_factory=time.time)

    def to_dict(self) -> Dict[str, Any]:
        """Return a plain dict (priority as its integer value) that ``json.dumps`` accepts."""
        d = asdict(self)
        d["priority"] = self.priority.value
        return d


@dataclass
class DeadLetter:
    """An item the endpoint refused for good, as returned by ``dead_letters()``.

    The item's fields as they were when it left the queue, plus the last HTTP status
    (None when an uploader gave none), the last error message and when it was moved.
    """

    id: int
    payload: Dict[str, Any]
    priority: Priority
    created_at: float
    ttl_seconds: int
    retry_count: int
    next_retry_at: float
    last_status: Optional[int]
    last_error: Optional[str]
    dead_at: float

    def to_dict(self) -> Dict[str, Any]:
        """Return a plain dict (priority as its integer value) that ``json.dumps`` accepts."""
        d = asdict(self)
        d["priority"] = self.priority.value
        return d


# Indexed by the stored integer: a tuple lookup is much cheaper than ``Priority(n)``.
PRIORITY_BY_VALUE = (None, Priority.CRITICAL, Priority.ANOMALY, Priority.TELEMETRY, Priority.LOGS)
