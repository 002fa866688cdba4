"""``HTTPCloudUploader``: posts batches to an HTTPS ingest endpoint over a keep-alive pool."""

import email.utils
import os
import time
from typing import Any, Dict, List, Optional, Sequence
from urllib.parse import urlsplit, urlunsplit

import urllib3

from . import _codec, _validate
from ._errors import UploadError


class _Secret:
    """Holds a credential so that no repr, log line or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def _redact_url(url: str) -> str:
    """Drop any user:password part of a URL so it can be shown."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Return the seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HTTPCloudUploader:
    """Posts a batch as a JSON array of payloads with ``Authorization: Bearer <api_key>``.

    Any 2xx answer means the batch was accepted; any other status, a refused connection
    or a timeout raises ``UploadError`` (which ``maybe_flush`` treats as a failed batch).
    Connections are kept alive between batches.

    :param endpoint: the ingest URL, ``https://`` (or ``http://``).
    :param api_key: the bearer token; never shown in a repr, a log line or an exception.
    :param timeout: seconds allowed for connecting and for each read.
    """

    def __init__(self, endpoint: str, api_key: str, timeout: float = 30.0) -> None:
        if not isinstance(endpoint, str):
            raise TypeError(f"endpoint must be a str URL, got {type(endpoint).__name__}")
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http:// or https:// URL with a host, got {_redact_url(endpoint)!r}")
        if not isinstance(api_key, str) or not api_key:
            raise TypeError("api_key must be a non-empty str")
        self._endpoint = endpoint
        self._api_key = _Secret(api_key)
        self._timeout = _validate.number("timeout", timeout, 0.0, allow_equal=False)
        self._pool: Optional[urllib3.PoolManager] = None
        self._pool_pid = 0

    @property
    def endpoint(self) -> str:
        """The ingest URL, with any credentials in it removed."""
        return _redact_url(self._endpoint)

    @property
    def timeout(self) -> float:
        """Seconds allowed for connecting and for each read."""
        return self._timeout

    def __repr__(self) -> str:
        return f"HTTPCloudUploader(endpoint={self.endpoint!r}, timeout={self._timeout!r})"

    def _get_pool(self) -> urllib3.PoolManager:
        # A pool inherited through fork() would share sockets with the parent.
        if self._pool is None or self._pool_pid != os.getpid():
            self._pool = urllib3.PoolManager(
                num_pools=2,
                maxsize=1,
                retries=False,
                timeout=urllib3.Timeout(connect=self._timeout, read=self._timeout),
            )
            self._pool_pid = os.getpid()
        return self._pool

    def _headers(self) -> Dict[str, str]:
        return {
            "Authorization": "Bearer " + self._api_key.reveal(),
            "Content-Type": "application/json",
        }

    def post_batch(self, payloads: Sequence[Dict[str, Any]]) -> bool:
        """Post payload dicts as one JSON array; return True when the endpoint accepted them."""
        texts: List[bytes] = [_codec.encode_payload(payload).encode() for payload in payloads]
        return self.post_encoded_batch(_codec.splice_body(texts), len(texts))

    def post_encoded_batch(self, body: bytes, count: int) -> bool:
        """Post a ready JSON array body of ``count`` payloads (the flush's no-parse path)."""
        try:
            response = self._get_pool().request(
                "POST", self._endpoint, body=body, headers=self._headers(), redirect=False
            )
        except urllib3.exceptions.HTTPError as exc:
            # urllib3's message names the host and the cause, never the headers.
            raise UploadError(f"cannot reach ingest endpoint {self.endpoint}: {type(exc).__name__}: {exc}") from None
        status = response.status
        if 200 <= status < 300:
            return True
        raise UploadError(
            f"ingest endpoint {self.endpoint} answered HTTP {status} to a batch of {count} items",
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def close(self) -> None:
        """Close pooled connections."""
        if self._pool is not None:
            self._pool.clear()
            self._pool = None
