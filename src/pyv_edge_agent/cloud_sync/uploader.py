"""``HTTPCloudUploader``: posts batches to an HTTPS ingest endpoint over a keep-alive pool.

``UploadResult`` (the answer an uploader gives when the endpoint accepted only part of a
batch) lives in ``_upload_types`` and is importable from here too.
"""

import gzip
import ipaddress
import os
import time
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union
from urllib.parse import SplitResult, urlsplit, urlunsplit

import orjson

if TYPE_CHECKING:
    import urllib3

from . import _codec, _validate
from ._errors import UploadError
from ._upload_types import UploadResult as UploadResult  # also importable from here, as before

# Larger request bodies are gzip-compressed by default: on a metered link JSON shrinks
# several-fold, while small bodies are not worth the CPU of an ARM gateway.
DEFAULT_GZIP_MIN_BYTES = 4096
# Only this much of an error body is kept in a message: enough for the server's reason.
_ERROR_SNIPPET = 200


def _urllib3() -> Any:
    """urllib3, imported on first use: it is most of the package's import time, and a
    process that only enqueues never needs it."""
    import urllib3

    return urllib3


class _Secret:
    """Holds a credential so that no repr, log line or traceback shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def scrub(self, text: str) -> str:
        """Return ``text`` with the credential replaced, for text that came from elsewhere."""
        return text.replace(self._value, "***")

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def _split_endpoint(endpoint: str) -> SplitResult:
    """``urlsplit``, whose own error for a malformed host ("Invalid IPv6 URL") names nothing."""
    try:
        return urlsplit(endpoint)
    except ValueError:
        # Not shown: a URL that does not parse cannot have its credentials redacted.
        raise ValueError("endpoint must be an http:// or https:// URL with a host, got a malformed URL") from None


def _redact_url(url: str) -> str:
    """Drop any user:password part of a URL so it can be shown."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_retry_after(value: Optional[str], now: Optional[float] = None) -> Optional[float]:
    """Return the seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    import email.utils  # only for HTTP dates; it pulls in socket and datetime

    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def _rejected_indices(body: bytes, count: int) -> Tuple[List[int], Optional[str]]:
    """Read ``{"rejected": [indices], "error": ...}`` from a 2xx answer; anything else rejects nothing."""
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
    return valid, str(error)[:_ERROR_SNIPPET] if error is not None else None


class HTTPCloudUploader:
    """Posts a batch as a JSON array of payloads, authenticated with the API key.

    A 2xx answer accepts the batch, except the items whose indices a JSON answer lists
    in ``"rejected"`` (then ``post_batch`` returns an ``UploadResult``). Any other status,
    a refused or reset connection, a DNS failure or a timeout raises ``UploadError`` with
    the status (None without a response) and any ``Retry-After``; ``maybe_flush``
    classifies it. Connections are kept alive between batches.

    :param endpoint: the ingest URL. ``https://`` with certificate verification; plain
        ``http://`` only to a loopback host, or anywhere with ``allow_insecure_http=True``.
    :param api_key: the credential; never shown in a repr, a log line or an exception.
    :param timeout: seconds allowed for connecting and for each read.
    :param auth_header: the header that carries the key: ``"Authorization"`` (default)
        sends ``Bearer <api_key>``, any other name (e.g. ``"X-API-Key"``) sends the key as is.
    :param gzip_min_bytes: bodies of at least this many bytes are sent gzip-compressed
        (``Content-Encoding: gzip``); None never compresses.
    :param ca_certs: a PEM file of the certificate authorities to trust instead of the
        system's (a private CA).
    :param allow_insecure_http: permit ``http://`` to a host that is not loopback.
    """

    def __init__(
        self,
        endpoint: str,
        api_key: str,
        timeout: float = 30.0,
        *,
        auth_header: str = "Authorization",
        gzip_min_bytes: Optional[int] = DEFAULT_GZIP_MIN_BYTES,
        ca_certs: Optional[str] = None,
        allow_insecure_http: bool = False,
    ) -> None:
        if not isinstance(endpoint, str):
            raise TypeError(f"endpoint must be a str URL, got {type(endpoint).__name__}")
        parts = _split_endpoint(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http:// or https:// URL with a host, got {_redact_url(endpoint)!r}")
        if not isinstance(allow_insecure_http, bool):
            raise TypeError(f"allow_insecure_http must be a bool, got {type(allow_insecure_http).__name__}")
        if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
            raise ValueError(
                f"endpoint {_redact_url(endpoint)!r} is plain http to a host that is not loopback; use https:// "
                "or pass allow_insecure_http=True"
            )
        if not isinstance(api_key, str) or not api_key:
            raise TypeError("api_key must be a non-empty str")
        if not isinstance(auth_header, str) or not auth_header or not auth_header.replace("-", "").isalnum():
            raise ValueError(f"auth_header must be an HTTP header name such as 'X-API-Key', got {auth_header!r:.100}")
        if gzip_min_bytes is not None:
            gzip_min_bytes = _validate.integer("gzip_min_bytes", gzip_min_bytes, 0)
        if ca_certs is not None and not isinstance(ca_certs, str):
            raise TypeError(f"ca_certs must be a path to a PEM file, got {type(ca_certs).__name__}")
        self._endpoint = endpoint
        self._api_key = _Secret(api_key)
        self._timeout = _validate.number("timeout", timeout, 0.0, allow_equal=False)
        self._auth_header = auth_header
        self._gzip_min_bytes = gzip_min_bytes
        self._ca_certs = ca_certs
        self._pool: "Optional[urllib3.PoolManager]" = None
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
        return (
            f"HTTPCloudUploader(endpoint={self.endpoint!r}, timeout={self._timeout!r}, "
            f"auth_header={self._auth_header!r})"
        )

    def _get_pool(self) -> "urllib3.PoolManager":
        # A pool inherited through fork() would share sockets with the parent.
        if self._pool is None or self._pool_pid != os.getpid():
            urllib3 = _urllib3()
            self._pool = urllib3.PoolManager(
                num_pools=2,
                maxsize=1,
                retries=False,
                timeout=urllib3.Timeout(connect=self._timeout, read=self._timeout),
                cert_reqs="CERT_REQUIRED",
                ca_certs=self._ca_certs,
            )
            self._pool_pid = os.getpid()
        return self._pool

    def _headers(self, idempotency_key: str) -> Dict[str, str]:
        key = self._api_key.reveal()
        return {
            self._auth_header: "Bearer " + key if self._auth_header.lower() == "authorization" else key,
            "Content-Type": "application/json",
            "Idempotency-Key": idempotency_key,
        }

    def post_batch(
        self, payloads: Sequence[Dict[str, Any]], idempotency_key: Optional[str] = None
    ) -> Union[bool, UploadResult]:
        """Post payload dicts as one JSON array; return True when the endpoint accepted all
        of them, or an ``UploadResult`` naming the ones it rejected."""
        texts: List[bytes] = [_codec.encode_payload(payload).encode() for payload in payloads]
        return self.post_encoded_batch(_codec.splice_body(texts), len(texts), idempotency_key)

    def post_encoded_batch(
        self, body: bytes, count: int, idempotency_key: Optional[str] = None
    ) -> Union[bool, UploadResult]:
        """Post a ready JSON array body of ``count`` payloads (the flush's no-parse path).

        ``idempotency_key`` goes in the ``Idempotency-Key`` header; ``maybe_flush`` gives
        the same key whenever it retries the same items. Without one, a random key is sent.
        """
        headers = self._headers(idempotency_key or uuid.uuid4().hex)
        if self._gzip_min_bytes is not None and len(body) >= self._gzip_min_bytes:
            body = gzip.compress(body, compresslevel=5, mtime=0)
            headers["Content-Encoding"] = "gzip"
        try:
            response = self._get_pool().request("POST", self._endpoint, body=body, headers=headers, redirect=False)
        except (_urllib3().exceptions.HTTPError, OSError) as exc:
            # urllib3's message names the host and the cause, never the headers.
            reason = self._api_key.scrub(f"{type(exc).__name__}: {exc}")
            raise UploadError(f"cannot reach ingest endpoint {self.endpoint}: {reason}") from None
        status = response.status
        if 200 <= status < 300:
            rejected, error = _rejected_indices(response.data or b"", count)
            if rejected:
                return UploadResult(rejected=rejected, status=status, error=error)
            return True
        # Scrubbed before it is cut short, so that a cut cannot leave part of the key behind.
        text = self._api_key.scrub((response.data or b"")[:65536].decode("utf-8", "replace"))
        snippet = text[:_ERROR_SNIPPET].strip()
        raise UploadError(
            f"ingest endpoint {self.endpoint} answered HTTP {status} to a batch of {count} items"
            + (f": {snippet}" if snippet not in ("", "{}") else ""),
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )

    def close(self) -> None:
        """Close pooled connections."""
        if self._pool is not None:
            self._pool.clear()
            self._pool = None
