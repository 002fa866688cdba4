"""The value types users see (``Priority``, ``QueueItem``, ``DeadLetter``), and the item row
layout (``ROW_COLUMNS``, ``Column``) that the codec twins, the store and the flush share."""

import time
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Any, Dict, Final, Optional, Tuple


def shown(value: Any, width: int) -> str:
    """``repr(value)`` cut to ``width`` characters, for error messages. A value nested too
    deeply for ``repr`` (a list inside a list, thousands deep) is said to be, instead of the
    ``RecursionError`` that ``repr`` would raise in the middle of reporting bad input."""
    try:
        return repr(value)[:width]
    except RecursionError:
        return f"<a {type(value).__name__} nested too deeply to show>"


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
    (None when an uploader gave none), the last error message and when it was moved; with
    several destinations, the ``destination`` that refused it (None: a queue without them).
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
    destination: Optional[str] = None

    def to_dict(self) -> Dict[str, Any]:
        """Return a plain dict (priority as its integer value) that ``json.dumps`` accepts."""
        d = asdict(self)
        d["priority"] = self.priority.value
        return d


# Constants both codec twins share, so that they are written once.
# The stored integer to its member: a dict lookup is much cheaper than ``Priority(n)``.
PRIORITY_BY_VALUE = {member.value: member for member in Priority}
# The columns of an item row, in the one order of every SELECT of items (a dead letter's
# row adds its own after them); ``decode_rows`` turns such a row into a ``QueueItem``.
ROW_COLUMNS = ("id", "payload", "priority", "created_at", "ttl_seconds", "retry_count", "next_retry_at")


class Column:
    """Where each of ``ROW_COLUMNS`` is in an item row: ``row[Column.PRIORITY]``."""

    ID: Final = 0
    PAYLOAD: Final = 1
    PRIORITY: Final = 2
    CREATED_AT: Final = 3
    TTL_SECONDS: Final = 4
    RETRY_COUNT: Final = 5
    NEXT_RETRY_AT: Final = 6


# ``Priority.CRITICAL`` as stored, to compare with a row's priority column.
CRITICAL: Final[int] = Priority.CRITICAL.value


def expires_at(row: Tuple[Any, ...]) -> float:
    """When the item of an item row expires (``created_at + ttl_seconds``)."""
    return float(row[Column.CREATED_AT] + row[Column.TTL_SECONDS])


# Chunk shapes for ``WHERE id IN (?, ...)``: a short id list is padded up to the next
# shape so that a handful of prepared statements serve every list length. 512 stays
# under SQLite's 999-variable limit (before 3.32) with room for the other parameters.
# Powers of two: the twins find a list's shape by doubling.
ID_CHUNK_SHAPES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
