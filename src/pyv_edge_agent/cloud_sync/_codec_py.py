"""Pure-Python hot paths. ``_codec_c.pyx`` is the compiled twin: same names, same results.

The functions take and return plain Python objects so that the queue never knows which
twin it is calling. Stored payload text is compact JSON from orjson, whichever twin wrote
it: unknown types go through ``str``, non-string keys are allowed, NaN and infinities
become ``null``.
"""

import json
import operator
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import orjson

from ._types import PRIORITY_BY_VALUE, Priority, QueueItem

_DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS
_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# Chunk shapes for ``WHERE id IN (?, ...)``: a short id list is padded up to the next
# shape so that a handful of prepared statements serve every list length. 512 stays
# under SQLite's 999-variable limit (before 3.32) with room for the other parameters.
ID_CHUNK_SHAPES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MAX_ID_CHUNK = ID_CHUNK_SHAPES[-1]


def _dumps(payload: Any, argument: str) -> str:
    try:
        return orjson.dumps(payload, default=str, option=_DUMPS_OPTIONS).decode()
    except (orjson.JSONEncodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{argument} cannot be stored as JSON: {exc}") from None


def encode_payload(payload: Any) -> str:
    """Return the stored JSON text of one payload; ``TypeError`` if it is not a dict."""
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}: {payload!r:.200}")
    return _dumps(payload, "payload")


def encode_rows(
    payloads: Iterable[Any], priority: int, created_at: float, ttl_seconds: int
) -> List[Tuple[str, int, float, int]]:
    """Return insert parameters for many payloads, validating every one before any is stored."""
    if isinstance(payloads, (dict, str, bytes)):
        raise TypeError(f"payloads must be a sequence of dicts, got {type(payloads).__name__}")
    rows = []
    for index, payload in enumerate(payloads):
        if not isinstance(payload, dict):
            raise TypeError(f"payloads[{index}] must be a dict, got {type(payload).__name__}: {payload!r:.200}")
        rows.append((_dumps(payload, f"payloads[{index}]"), priority, created_at, ttl_seconds))
    return rows


def decode_payload(text: Any) -> Any:
    """Parse stored payload text; falls back to ``json`` for NaN written by earlier releases."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return json.loads(text)


def decode_rows(rows: Sequence[Tuple[Any, ...]]) -> List[QueueItem]:
    """Turn ``(id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at)``
    rows into ``QueueItem`` objects."""
    items = []
    for row_id, text, priority, created_at, ttl_seconds, retry_count, next_retry_at in rows:
        level = PRIORITY_BY_VALUE[priority] if type(priority) is int and 0 < priority < 5 else None
        if level is None:
            level = Priority(priority)
        items.append(
            QueueItem(row_id, decode_payload(text), level, created_at, ttl_seconds, retry_count, next_retry_at)
        )
    return items


def splice_body(texts: Sequence[bytes]) -> bytes:
    """Join stored payload texts into one JSON array body without parsing them."""
    return b"[" + b",".join(texts) + b"]"


def id_chunks(ids: Any, argument: str = "ids") -> List[Tuple[int, ...]]:
    """Validate and de-duplicate ids and split them into padded ``IN (...)`` parameter tuples.

    Every tuple has a length from ``ID_CHUNK_SHAPES``; short ones repeat their last id,
    which changes nothing in an ``IN`` list.
    """
    if isinstance(ids, (str, bytes, dict)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{argument} must be a sequence of integer ids, got {type(ids).__name__}")
    unique: Dict[int, None] = {}
    for index, value in enumerate(ids):
        if type(value) is not int:
            if isinstance(value, bool) or not hasattr(type(value), "__index__"):
                raise TypeError(
                    f"{argument}[{index}] must be an integer id, got {type(value).__name__}: {value!r:.100}"
                )
            value = operator.index(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{argument}[{index}] is out of the 64-bit id range: {value}")
        unique[value] = None
    flat = list(unique)
    chunks = []
    for start in range(0, len(flat), MAX_ID_CHUNK):
        chunk = flat[start : start + MAX_ID_CHUNK]
        size = len(chunk)
        if size < MAX_ID_CHUNK:
            shape = next(s for s in ID_CHUNK_SHAPES if s >= size)
            chunk.extend([chunk[-1]] * (shape - size))
        chunks.append(tuple(chunk))
    return chunks
