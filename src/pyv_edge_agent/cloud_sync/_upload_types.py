"""The contract between a flush and an uploader, whatever carries the batch (HTTP, MQTT, ...).

``Uploader`` and ``AsyncUploader`` (what a flush calls), ``OutgoingItem`` (one item as
``post_items`` gets it), ``UploadResult`` (the endpoint took part of a batch),
``UploadError`` (an attempt failed) and ``OutcomeKind`` (how the flush treats an attempt).
Nothing here imports transport code, so a flush, and an uploader for another protocol,
need none.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Any, Dict, List, NamedTuple, Optional, Protocol, Sequence

from ._errors import UploadError
from ._types import Priority

__all__ = ["AsyncUploader", "OutcomeKind", "OutgoingItem", "UploadError", "UploadResult", "Uploader"]

# The most batches one flush uploads at once (``max_in_flight_batches``): the most threads
# that may call one uploader at the same time, and the connections a transport keeps for it.
MAX_IN_FLIGHT_BATCHES = 16


class Uploader(Protocol):
    """What ``maybe_flush`` and ``SyncWorker`` send through: any object with a
    ``post_batch(payloads)`` method (``HTTPCloudUploader`` and ``MQTTUploader`` are two).

    ``post_batch`` gets the decoded payloads of one batch, most important first. Returning
    (None, True or anything else) means the endpoint took them all; ``False`` or raising
    means the batch failed and is retried later (an ``UploadError`` with a ``status`` is
    classified like that HTTP status); an ``UploadResult`` says which items were refused.

    A flush also uses these when the uploader has them (they are looked up, not required):

    - ``post_encoded_batch(body, count, idempotency_key=...)``: the batch as one JSON array
      spliced from the stored texts, with a key that its retries share, instead of
      ``post_batch``;
    - ``post_items(items)``: a list of ``OutgoingItem``, for a transport that sends items one
      by one, instead of both;
    - ``timeout``: seconds; must be below the queue's ``lease_seconds``;
    - ``probe()``: whether the link works now, asked while a worker backs off (see
      ``SyncWorker``), and ``endpoint``, a URL probed with a TCP connect when there is no
      ``probe``;
    - ``credentials_subject``: who refused the credentials, for the log line.

    With ``max_in_flight_batches`` above 1 a flush calls the uploader from that many
    threads at once (one batch each), so its methods must be safe to call concurrently.
    """

    def post_batch(self, payloads: List[Dict[str, Any]]) -> object:
        """Send one batch; see the class docstring for what the return value means."""


class AsyncUploader(Protocol):
    """What ``AsyncCloudSyncQueue.flush`` and ``AsyncSyncWorker`` also take: an ``Uploader``
    whose methods (``post_batch``, ``post_encoded_batch``, ``post_items``, ``probe``) are
    coroutine functions, run on the event loop while the flush waits in its thread."""

    async def post_batch(self, payloads: List[Dict[str, Any]]) -> object:
        """Send one batch; as ``Uploader.post_batch``."""


class OutgoingItem(NamedTuple):
    """One item of a batch for ``post_items(items)`` (a tuple: a flush makes one per item).

    Its fields: ``id``, the item's queue id; ``text``, the payload's JSON text as stored
    (UTF-8 bytes); ``priority``; ``ttl_left``, seconds until the item expires by the
    queue's clock (at least 0); ``key``, an idempotency key for this item alone: the same
    on every retry of the item, different for every other item of the same queue file.
    """

    id: int
    text: bytes
    priority: Priority
    ttl_left: float
    key: str


class OutcomeKind(Enum):
    """How a flush settles one upload attempt (see ``_flush.flusher``)."""

    ACCEPTED = "accepted"
    TRANSIENT = "transient"
    TOO_LARGE = "too large"
    REJECTED = "rejected"
    CREDENTIALS = "credentials"


@dataclass(frozen=True)
class UploadResult:
    """What an uploader returns when the endpoint accepted only part of a batch.

    Indices refer to the ``payloads`` list given to ``post_batch`` (or the items given to
    ``post_items``). Items in ``rejected`` were refused for good (they count towards the
    dead-letter table, see ``max_attempts``); items in ``too_large`` can never be taken
    (they move to the dead-letter table at once, like a single item answered with 413);
    items in ``retry`` failed transiently (the flush backs off, honouring ``retry_after``
    seconds, and ends); items in ``credentials`` were refused for want of rights (like 401
    or 403: they are kept, together with any in ``retry``, and the flush backs off long and
    ends); every other item was accepted and is removed from the queue.

    :param status: the HTTP status to record with rejected items, if any.
    :param error: why the items were rejected or failed, recorded with them.
    """

    rejected: Sequence[int] = ()
    retry: Sequence[int] = ()
    status: Optional[int] = None
    error: Optional[str] = None
    retry_after: Optional[float] = None
    too_large: Sequence[int] = ()
    credentials: Sequence[int] = ()
