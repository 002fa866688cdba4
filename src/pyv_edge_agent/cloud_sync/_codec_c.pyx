# cython: language_level=3, embedsignature=True
"""Compiled hot paths. ``_codec_py.py`` is the pure twin: same names, same results.

The functions take and return plain Python objects so that the queue never knows which
twin it is calling. Stored payload text is compact JSON from orjson, whichever twin wrote
it: unknown types go through ``str``, non-string keys are allowed, NaN and infinities
become ``null``.
"""

cimport cython

import json
import operator

import orjson

from ._types import PRIORITY_BY_VALUE, Priority, QueueItem

cdef object _orjson_dumps = orjson.dumps
cdef object _orjson_loads = orjson.loads
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _JSONEncodeError = orjson.JSONEncodeError
cdef object _DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS
cdef tuple _PRIORITY_BY_VALUE = PRIORITY_BY_VALUE
cdef object _object_new = object.__new__
cdef object _INT64_MIN = -(2**63)
cdef object _INT64_MAX = 2**63 - 1

ID_CHUNK_SHAPES = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
MAX_ID_CHUNK = 512
cdef Py_ssize_t _MAX_ID_CHUNK = 512


cdef str _dumps(object payload, str argument):
    try:
        return (<bytes>_orjson_dumps(payload, default=str, option=_DUMPS_OPTIONS)).decode()
    except (_JSONEncodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{argument} cannot be stored as JSON: {exc}") from None


def encode_payload(payload):
    """Return the stored JSON text of one payload; ``TypeError`` if it is not a dict."""
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}: {payload!r:.200}")
    return _dumps(payload, "payload")


def encode_rows(payloads, priority, created_at, ttl_seconds):
    """Return insert parameters for many payloads, validating every one before any is stored."""
    cdef list rows = []
    cdef Py_ssize_t index = 0
    if isinstance(payloads, (dict, str, bytes)):
        raise TypeError(f"payloads must be a sequence of dicts, got {type(payloads).__name__}")
    for payload in payloads:
        if not isinstance(payload, dict):
            raise TypeError(
                f"payloads[{index}] must be a dict, got {type(payload).__name__}: {payload!r:.200}"
            )
        rows.append((_dumps(payload, f"payloads[{index}]"), priority, created_at, ttl_seconds))
        index += 1
    return rows


def decode_payload(text):
    """Parse stored payload text; falls back to ``json`` for NaN written by earlier releases."""
    try:
        return _orjson_loads(text)
    except _JSONDecodeError:
        return json.loads(text)


@cython.wraparound(False)  # every index below is a non-negative constant
def decode_rows(rows):
    """Turn ``(id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at)``
    rows into ``QueueItem`` objects."""
    cdef list items = []
    cdef tuple row
    cdef object priority, level, text
    for row in rows:
        priority = row[2]
        level = None
        if type(priority) is int and 0 < <long long>priority < 5:
            # 0 < priority < 5 == len(_PRIORITY_BY_VALUE): the index is in range. The row
            # indexes keep their bounds checks: rows of the wrong length are an IndexError.
            with cython.boundscheck(False):
                level = _PRIORITY_BY_VALUE[<Py_ssize_t>priority]
        if level is None:
            level = Priority(priority)
        text = row[1]
        try:
            payload = _orjson_loads(text)
        except _JSONDecodeError:
            payload = json.loads(text)
        # The dataclass's own __init__ costs about as much as parsing the payload; setting
        # the same attributes in the same order on a bare instance gives an equal object
        # (same class, same __dict__, same pickle) in half the time.
        item = _object_new(QueueItem)
        item.id = row[0]
        item.payload = payload
        item.priority = level
        item.created_at = row[3]
        item.ttl_seconds = row[4]
        item.retry_count = row[5]
        item.next_retry_at = row[6]
        items.append(item)
    return items


def splice_body(texts):
    """Join stored payload texts into one JSON array body without parsing them."""
    return b"[" + b",".join(texts) + b"]"


# The only index, chunk[size - 1], has size >= 1 (start < total) and is never negative.
@cython.boundscheck(False)
@cython.wraparound(False)
def id_chunks(ids, str argument="ids"):
    """Validate and de-duplicate ids and split them into padded ``IN (...)`` parameter tuples.

    Every tuple has a length from ``ID_CHUNK_SHAPES``; short ones repeat their last id,
    which changes nothing in an ``IN`` list.
    """
    cdef dict unique = {}
    cdef Py_ssize_t index = 0, start, size, shape, total
    cdef list flat, chunk, chunks = []
    if isinstance(ids, (str, bytes, dict)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{argument} must be a sequence of integer ids, got {type(ids).__name__}")
    for value in ids:
        if type(value) is not int:
            if isinstance(value, bool) or not hasattr(type(value), "__index__"):
                raise TypeError(
                    f"{argument}[{index}] must be an integer id, got {type(value).__name__}: {value!r:.100}"
                )
            value = operator.index(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{argument}[{index}] is out of the 64-bit id range: {value}")
        unique[value] = None
        index += 1
    flat = list(unique)
    total = len(flat)
    for start in range(0, total, _MAX_ID_CHUNK):
        chunk = flat[start:start + _MAX_ID_CHUNK]
        size = len(chunk)
        if size < _MAX_ID_CHUNK:
            shape = 1
            while shape < size:
                shape <<= 1
            chunk.extend([chunk[size - 1]] * (shape - size))
        chunks.append(tuple(chunk))
    return chunks
