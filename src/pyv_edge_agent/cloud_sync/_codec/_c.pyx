# cython: language_level=3, embedsignature=True
"""Compiled hot paths. ``_py.py`` is the pure twin: the same statements in the same
order, with C types added here; keep them so (tests/test_codec.py compares their results,
errors included).

The functions take and return plain Python objects so that the queue never knows which
twin it is calling. Stored payload text is compact JSON from orjson, whichever twin wrote
it: unknown types go through ``str``, non-string keys are allowed, NaN and infinities
become ``null``.
"""

cimport cython

import json
import operator

import orjson

from .._types import ID_CHUNK_SHAPES, PRIORITY_BY_VALUE, ROW_COLUMNS, Priority, QueueItem, shown

cdef object _orjson_dumps = orjson.dumps
cdef object _orjson_loads = orjson.loads
cdef object _JSONDecodeError = orjson.JSONDecodeError
cdef object _JSONEncodeError = orjson.JSONEncodeError
cdef object _DUMPS_OPTIONS = orjson.OPT_NON_STR_KEYS
cdef dict _PRIORITY_BY_VALUE = PRIORITY_BY_VALUE
cdef object _object_new = object.__new__
cdef object _INT64_MIN = -(2**63)
cdef object _INT64_MAX = 2**63 - 1
cdef Py_ssize_t _COLUMNS = len(ROW_COLUMNS)

MAX_ID_CHUNK = ID_CHUNK_SHAPES[-1]
cdef Py_ssize_t _MAX_ID_CHUNK = MAX_ID_CHUNK


cdef str _dumps(object payload, str argument):
    try:
        return (<bytes>_orjson_dumps(payload, default=str, option=_DUMPS_OPTIONS)).decode()
    except (_JSONEncodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{argument} cannot be stored as JSON: {exc}") from None


def encode_payload(payload):
    """Return the stored JSON text of one payload; ``TypeError`` if it is not a dict."""
    if not isinstance(payload, dict):
        raise TypeError(f"payload must be a dict, got {type(payload).__name__}: {shown(payload, 200)}")
    return _dumps(payload, "payload")


def encode_rows(payloads, priority, created_at, ttl_seconds):
    """Return insert parameters for many payloads, validating every one before any is stored."""
    cdef list rows = []
    cdef Py_ssize_t index
    if isinstance(payloads, (dict, str, bytes)):
        raise TypeError(f"payloads must be a sequence of dicts, got {type(payloads).__name__}")
    for index, payload in enumerate(payloads):
        if not isinstance(payload, dict):
            raise TypeError(f"payloads[{index}] must be a dict, got {type(payload).__name__}: {shown(payload, 200)}")
        rows.append((_dumps(payload, f"payloads[{index}]"), priority, created_at, ttl_seconds))
    return rows


def decode_payload(text):
    """Parse stored payload text; falls back to ``json`` for NaN written by earlier releases."""
    try:
        return _orjson_loads(text)
    except _JSONDecodeError:
        return json.loads(text)


cdef object _bad_row(Py_ssize_t index, object row):
    if type(row) is not tuple:
        return TypeError(f"rows[{index}] must be a tuple, got {type(row).__name__}: {shown(row, 200)}")
    return ValueError(
        f"rows[{index}] must have the {_COLUMNS} columns {ROW_COLUMNS}, got {len(row)}: {shown(row, 200)}"
    )


def decode_rows(rows):
    """Turn ``(id, payload, priority, created_at, ttl_seconds, retry_count, next_retry_at)``
    tuples into ``QueueItem`` objects; a row of another shape is a ``TypeError`` or
    ``ValueError``, an unknown priority a ``ValueError``."""
    cdef list items = []
    cdef Py_ssize_t index
    cdef object level
    for index, row in enumerate(rows):
        if type(row) is not tuple or len(<tuple>row) != _COLUMNS:
            raise _bad_row(index, row)
        row_id, text, priority, created_at, ttl_seconds, retry_count, next_retry_at = <tuple>row
        level = _PRIORITY_BY_VALUE.get(priority) if type(priority) is int else None
        if level is None:
            level = Priority(priority)
        try:
            payload = _orjson_loads(text)
        except _JSONDecodeError:
            payload = json.loads(text)
        # The dataclass's own __init__ costs about as much as parsing the payload; setting
        # the same attributes in the same order on a bare instance gives an equal object
        # (same class, same __dict__, same pickle) in less time.
        item = _object_new(QueueItem)
        item.id = row_id
        item.payload = payload
        item.priority = level
        item.created_at = created_at
        item.ttl_seconds = ttl_seconds
        item.retry_count = retry_count
        item.next_retry_at = next_retry_at
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
    cdef list chunks = []
    cdef list flat, chunk
    cdef Py_ssize_t index, total, start, size, shape
    if isinstance(ids, (str, bytes, dict)) or not hasattr(ids, "__iter__"):
        raise TypeError(f"{argument} must be a sequence of integer ids, got {type(ids).__name__}")
    for index, value in enumerate(ids):
        if type(value) is not int:
            if isinstance(value, bool) or not hasattr(type(value), "__index__"):
                raise TypeError(
                    f"{argument}[{index}] must be an integer id, got {type(value).__name__}: {shown(value, 100)}"
                )
            value = operator.index(value)
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise ValueError(f"{argument}[{index}] is out of the 64-bit id range: {value}")
        unique[value] = None
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
