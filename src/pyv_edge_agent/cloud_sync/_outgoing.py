"""``OutgoingItem``: one stored item as the flush hands it to an uploader that sends items one
by one (an MQTT publish per item) rather than as one body."""

from typing import NamedTuple

from ._types import Priority


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
