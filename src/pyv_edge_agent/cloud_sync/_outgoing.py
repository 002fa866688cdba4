"""How a flush hands a claimed batch to an uploader: decoded for ``post_batch``, spliced into
one body for ``post_encoded_batch``, or as ``OutgoingItem``s for ``post_items`` (a transport
that sends items one by one, such as MQTT)."""

import hashlib
import inspect
from typing import Any, Callable, List, NamedTuple, Optional, Tuple

from . import _codec
from ._types import Priority

# An async uploader given to the sync flush is refused, never taken as accepting.
ASYNC_HINT = "an async uploader is flushed by pyv_edge_agent.cloud_sync.aio.AsyncCloudSyncQueue.flush"

# A claimed row: (id, stored text as bytes, retry_count, priority, next_retry_at, expires_at)
Row = Tuple[int, bytes, int, int, float, float]
# How the flush calls an uploader: the rows of one part and the part's idempotency key.
Post = Callable[[List[Row], str], Any]

_PRIORITIES = {priority.value: priority for priority in Priority}


class OutgoingItem(NamedTuple):
    """One item of a batch for ``post_items(items)`` (a tuple: a flush makes one per item).

    :param id: the item's queue id.
    :param text: the stored JSON text of the payload, as stored (UTF-8).
    :param priority: the item's priority.
    :param ttl_left: seconds until the item expires, by the queue's clock (at least 0).
    :param key: an idempotency key for this item alone: the same on every retry of the
        item, different for every other item of the same queue file.
    """

    id: int
    text: bytes
    priority: Priority
    ttl_left: float
    key: str


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
    return [
        OutgoingItem(
            row[0], row[1], _PRIORITIES[row[3]], max(0.0, row[5] - now), item_key(queue_id, row[0], row[1], row[5])
        )
        for row in rows
    ]


def poster(uploader: Any, outgoing: Optional[Callable[[List[Row]], List[OutgoingItem]]] = None) -> Post:
    """Return how to hand claimed rows to ``uploader``: as ``OutgoingItem``s when it sends
    items one by one (``post_items``, given ``outgoing`` to build them), spliced into a
    body when it takes one (``post_encoded_batch``), else decoded for ``post_batch``."""
    post_batch = getattr(uploader, "post_batch", None)
    if not callable(post_batch):
        raise TypeError(f"uploader must have a post_batch(payloads) method, got {type(uploader).__name__}")
    post_encoded = getattr(uploader, "post_encoded_batch", None)
    post_items = getattr(uploader, "post_items", None)
    for name, method in (("post_batch", post_batch), ("post_encoded_batch", post_encoded), ("post_items", post_items)):
        if inspect.iscoroutinefunction(method):
            raise TypeError(f"uploader.{name} is a coroutine function; {ASYNC_HINT}")
    if callable(post_items) and outgoing is not None:
        return lambda rows, key: post_items(outgoing(rows))
    if not callable(post_encoded):
        return lambda rows, key: post_batch([_codec.decode_payload(row[1]) for row in rows])
    if _takes_idempotency_key(post_encoded):
        return lambda rows, key: post_encoded(_body(rows), len(rows), idempotency_key=key)
    return lambda rows, key: post_encoded(_body(rows), len(rows))


def _body(rows: List[Row]) -> bytes:
    return _codec.splice_body([row[1] for row in rows])


def _takes_idempotency_key(method: Callable[..., Any]) -> bool:
    """Whether ``post_encoded_batch`` accepts the key: wrappers written against the older
    ``(body, count)`` form keep working, without it."""
    try:
        parameters = inspect.signature(method).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(p.name == "idempotency_key" or p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)
