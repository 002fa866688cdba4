"""What became of one upload attempt: the failure class of a status, and ``Outcome``, read
from whatever the uploader returned or raised."""

import inspect
from dataclasses import dataclass
from typing import Any, List, Optional

from .._upload_types import OutcomeKind, UploadError, UploadResult
from .outgoing import ASYNC_HINT, Post, Row

ACCEPTED = OutcomeKind.ACCEPTED
TRANSIENT = OutcomeKind.TRANSIENT
TOO_LARGE = OutcomeKind.TOO_LARGE
REJECTED = OutcomeKind.REJECTED
CREDENTIALS = OutcomeKind.CREDENTIALS

TRANSIENT_STATUSES = frozenset({408, 425, 429})
REJECTED_STATUSES = frozenset({400, 422})
CREDENTIAL_STATUSES = frozenset({401, 403})


def classify(status: Optional[int]) -> OutcomeKind:
    """Return the failure class of an HTTP status (None: no response at all)."""
    if status is None or status in TRANSIENT_STATUSES or status >= 500:
        return TRANSIENT
    if status == 413:
        return TOO_LARGE
    if status in REJECTED_STATUSES:
        return REJECTED
    if status in CREDENTIAL_STATUSES:
        return CREDENTIALS
    if 200 <= status < 300:
        return ACCEPTED
    # Anything else (a redirect, 404, 409 ...) is most likely a configuration problem
    # that an operator will fix: keep the data and retry later.
    return TRANSIENT


@dataclass(frozen=True)
class Outcome(UploadResult):
    """What became of one upload attempt: an ``UploadResult`` (indices into the part that
    was sent) and how the flush settles it."""

    kind: OutcomeKind = OutcomeKind.ACCEPTED


def _outcome_of_result(result: Any, count: int) -> Outcome:
    """Read what an uploader returned; anything it should not have returned is transient."""
    if inspect.isawaitable(result):
        # Never awaited, so nothing was sent: counting it as accepted would drop the batch.
        if inspect.iscoroutine(result):
            result.close()
        return Outcome(kind=TRANSIENT, error=f"the uploader returned an awaitable; {ASYNC_HINT}")
    if result is False:
        return Outcome(kind=TRANSIENT, error="the uploader returned False")
    if not isinstance(result, UploadResult):
        return Outcome()
    rejected, retry = list(result.rejected), list(result.retry)
    too_large, credentials = list(result.too_large), list(result.credentials)
    indices = rejected + retry + too_large + credentials
    if len(set(indices)) != len(indices) or not all(type(i) is int and 0 <= i < count for i in indices):
        return Outcome(
            kind=TRANSIENT, error=f"the uploader returned an UploadResult with bad indices for {count} items"
        )
    return Outcome(rejected, retry, result.status, result.error, result.retry_after, too_large, credentials)


def send(post: Post, part: List[Row], key: str, now: float, queue_id: str) -> Outcome:
    """Upload one part and classify what happened; never raises an ``Exception``."""
    try:
        result = post(part, key, now, queue_id)
    except UploadError as exc:
        kind = CREDENTIALS if getattr(exc, "credentials_refused", False) else classify(exc.status)
        return Outcome(kind=kind, status=exc.status, error=str(exc), retry_after=exc.retry_after)
    except Exception as exc:  # any failure of a user-supplied uploader is a failed batch
        return Outcome(kind=TRANSIENT, error=f"{type(exc).__name__}: {exc}")
    return _outcome_of_result(result, len(part))
