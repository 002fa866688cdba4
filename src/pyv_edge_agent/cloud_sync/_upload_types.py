"""What an uploader hands back to a flush, whatever carries the batch (HTTP, MQTT, ...).

``UploadResult`` (the endpoint took part of a batch), ``UploadError`` (an attempt failed)
and ``OutcomeKind`` (how the flush treats an attempt). Nothing here imports transport code,
so a flush, and an uploader for another protocol, need none.
"""

from dataclasses import dataclass
from enum import Enum
from typing import Optional, Sequence

from ._errors import UploadError

__all__ = ["OutcomeKind", "UploadError", "UploadResult"]


class OutcomeKind(Enum):
    """How a flush settles one upload attempt (see ``_flush``)."""

    ACCEPTED = "accepted"
    TRANSIENT = "transient"
    TOO_LARGE = "too large"
    REJECTED = "rejected"
    CREDENTIALS = "credentials"


@dataclass(frozen=True)
class UploadResult:
    """What an uploader returns when the endpoint accepted only part of a batch.

    Indices refer to the ``payloads`` list given to ``post_batch``. Items in ``rejected``
    were refused for good (they count towards the dead-letter table, see ``max_attempts``);
    items in ``retry`` failed transiently (the flush backs off, honouring ``retry_after``
    seconds, and ends); every other item was accepted and is removed from the queue.

    :param status: the HTTP status to record with rejected items, if any.
    :param error: why the items were rejected or failed, recorded with them.
    """

    rejected: Sequence[int] = ()
    retry: Sequence[int] = ()
    status: Optional[int] = None
    error: Optional[str] = None
    retry_after: Optional[float] = None
