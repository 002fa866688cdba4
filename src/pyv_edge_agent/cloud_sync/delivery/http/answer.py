"""Reading an ingest endpoint's answer: ``Retry-After``, and the items a 2xx answer rejects."""

import re
import time
from typing import List, Optional, Tuple

import orjson

# Only this much of an error body is kept in a message: enough for the server's reason.
ERROR_SNIPPET = 200
_DELTA_SECONDS = re.compile("[0-9]+")


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Return the seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if _DELTA_SECONDS.fullmatch(value):  # ASCII digits only: str.isdigit() also takes "²"
        return float(value)
    import email.utils  # only for HTTP dates; it pulls in socket and datetime

    try:
        when = email.utils.parsedate_to_datetime(value)
        if when is None:
            return None
        return max(0.0, when.timestamp() - (time.time() if now is None else now))
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def rejected_indices(body: bytes, count: int) -> Tuple[List[int], Optional[str]]:
    """Read ``{"rejected": [indices], "error": ...}`` from a 2xx answer; anything else
    rejects nothing. The error text is the server's: the caller scrubs it."""
    if not body.lstrip().startswith(b"{"):
        return [], None
    try:
        answer = orjson.loads(body)
    except orjson.JSONDecodeError:
        return [], None
    indices = answer.get("rejected") if isinstance(answer, dict) else None
    if not isinstance(indices, list):
        return [], None
    valid = sorted({i for i in indices if type(i) is int and 0 <= i < count})
    error = answer.get("error")
    return valid, str(error) if error is not None else None
