"""How a flush hands a claimed batch to an uploader: decoded for ``post_batch``, spliced into
one body for ``post_encoded_batch``, or as ``OutgoingItem``s for ``post_items`` (a transport
that sends items one by one, such as MQTT)."""

import hashlib
import inspect
from typing import Any, Callable, List, Tuple

from .. import _codec
from .._types import PRIORITY_BY_VALUE, Column, expires_at
from .._upload_types import OutgoingItem, Uploader

# An async uploader given to the sync flush is refused, never taken as accepting.
ASYNC_HINT = "an async uploader is flushed by pyv_edge_agent.cloud_sync.aio.AsyncCloudSyncQueue.flush"

# A claimed row: the columns of ``_types.ROW_COLUMNS``, the stored text as bytes.
Row = Tuple[int, bytes, int, float, int, int, float]
# How the flush calls an uploader: the rows of one part, the part's idempotency key, and
# the queue's time and file id (for the items' own keys and what is left of their TTL).
Post = Callable[[List[Row], str, float, str], object]


def item_key(queue_id: str, item_id: int, text: bytes, expires_at: float) -> str:
    """The idempotency key of one item: the same on every retry of it, unlike a batch's
    (which changes when the batch is regrouped). Besides the file's id and the item's id it
    covers what the item holds and when it expires, so that an item that reuses an id (a
    cloned file, a restored or rolled-back one) or a requeued dead letter is a new key."""
    digest = hashlib.sha256(f"{queue_id}:item:{item_id}:{expires_at!r}:".encode())
    digest.update(text)
    return digest.hexdigest()[:40]


def outgoing_items(rows: List[Row], now: float, queue_id: str) -> List[OutgoingItem]:
    """The rows as ``post_items`` takes them, each with a key of its own that its retries share."""
    items = []
    for row in rows:
        row_id, text, expiry = row[Column.ID], row[Column.PAYLOAD], expires_at(row)
        priority = PRIORITY_BY_VALUE[row[Column.PRIORITY]]
        items.append(
            OutgoingItem(row_id, text, priority, max(0.0, expiry - now), item_key(queue_id, row_id, text, expiry))
        )
    return items


def poster(uploader: Uploader) -> Post:
    """Return how to hand claimed rows to ``uploader``: as ``OutgoingItem``s when it sends
    items one by one (``post_items``), spliced into a body when it takes one
    (``post_encoded_batch``), else decoded for ``post_batch``."""
    post_batch = getattr(uploader, "post_batch", None)
    if not callable(post_batch):
        raise TypeError(f"uploader must have a post_batch(payloads) method, got {type(uploader).__name__}")
    post_encoded = getattr(uploader, "post_encoded_batch", None)
    post_items = getattr(uploader, "post_items", None)
    for name, method in (("post_batch", post_batch), ("post_encoded_batch", post_encoded), ("post_items", post_items)):
        if inspect.iscoroutinefunction(method):
            raise TypeError(f"uploader.{name} is a coroutine function; {ASYNC_HINT}")
    if callable(post_items):
        return lambda rows, key, now, queue_id: post_items(outgoing_items(rows, now, queue_id))
    if not callable(post_encoded):
        return lambda rows, key, now, queue_id: post_batch([_codec.decode_payload(row[Column.PAYLOAD]) for row in rows])
    if _takes_idempotency_key(post_encoded):
        return lambda rows, key, now, queue_id: post_encoded(_body(rows), len(rows), idempotency_key=key)
    return lambda rows, key, now, queue_id: post_encoded(_body(rows), len(rows))


def _body(rows: List[Row]) -> bytes:
    return _codec.splice_body([row[Column.PAYLOAD] for row in rows])


def _takes_idempotency_key(method: Callable[..., Any]) -> bool:
    """Whether ``post_encoded_batch`` accepts the key: wrappers written against the older
    ``(body, count)`` form keep working, without it."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "idempotency_key" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
