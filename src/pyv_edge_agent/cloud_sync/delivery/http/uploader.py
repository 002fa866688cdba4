"""``HTTPCloudUploader``: posts batches to an HTTPS ingest endpoint over a keep-alive pool.

``UploadResult`` (the answer an uploader gives when the endpoint accepted only part of a
batch) lives in ``_upload_types`` and is importable from here too.
"""

import gzip
import logging
import os
import re
import ssl
import threading
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union
from urllib.parse import urlsplit

if TYPE_CHECKING:
    import urllib3

from ... import _codec, _validate
from ..._errors import UploadError
from ..._redact import Secret, clean, query_values, redact_url, scrub
from ..._upload_types import MAX_IN_FLIGHT_BATCHES
from ..._upload_types import UploadResult as UploadResult  # also importable from here, as before
from .. import tls
from . import deadline as _deadline
from . import proxy as _proxy
from . import settings
from .answer import ERROR_SNIPPET, rejected_indices
from .answer import parse_retry_after as parse_retry_after  # importable from here, as before
from .headers import OWNED_HEADERS as OWNED_HEADERS  # importable from here, as before
from .headers import auth_headers, header_secrets

# Larger request bodies are gzip-compressed by default: on a metered link JSON shrinks
# several-fold, while small bodies are not worth the CPU of an ARM gateway.
DEFAULT_GZIP_MIN_BYTES = 4096
# A proxy refusing the CONNECT for its credentials: 407, or 401 from some (tinyproxy).
_PROXY_REFUSAL = re.compile(r"Tunnel connection failed: (407|401)\b")
# Answers that refuse the credentials: refreshed once and retried at once.
REFUSED_STATUSES = frozenset({401, 403})

logger = logging.getLogger("pyv_edge_agent.cloud_sync")


def _urllib3() -> Any:
    """urllib3, imported on first use: it is most of the package's import time, and a
    process that only enqueues never needs it."""
    import urllib3

    return urllib3


class _CertificateRefused(UploadError):
    """The server's TLS alert refused our client certificate (or its absence)."""


class HTTPCloudUploader:
    """Posts a batch as a JSON array of payloads, authenticated with a key, changing
    credentials or a client certificate.

    A 2xx answer accepts the batch, except the items whose indices a JSON answer lists
    in ``"rejected"`` (then ``post_batch`` returns an ``UploadResult``). Any other status,
    a refused or reset connection, a DNS failure or a timeout raises ``UploadError`` with
    the status (None without a response) and any ``Retry-After``; ``maybe_flush``
    classifies it. Connections are kept alive between batches, one for each batch in flight
    (``max_in_flight_batches`` of the queue); the uploader may be called from several threads.

    A refusal (401, 403, or a TLS alert about the client certificate) is answered at once:
    ``credentials`` are told (a token is fetched or read again), certificate files that
    changed are loaded, and the batch is sent once more. Only a second refusal in a row
    reaches the flush, which keeps the items and backs off long.

    :param endpoint: the ingest URL. ``https://`` with certificate verification; plain
        ``http://`` only to a loopback host, or anywhere with ``allow_insecure_http=True``.
    :param api_key: a fixed key; never shown in a repr, a log line or an exception.
    :param timeout: seconds a whole request may take, from connecting to the last byte of the
        answer (a token request and the retry after a refusal included); it must be below the
        queue's ``lease_seconds``.
    :param auth_header: the header that carries ``api_key``: ``"Authorization"`` (default)
        sends ``Bearer <api_key>``, any other name (e.g. ``"X-API-Key"``) sends the key as is.
    :param gzip_min_bytes: bodies of at least this many bytes are sent gzip-compressed
        (``Content-Encoding: gzip``); None never compresses.
    :param ca_certs: a PEM file of the certificate authorities to trust instead of the
        system's (a private CA).
    :param allow_insecure_http: permit ``http://`` to a host that is not loopback.
    :param client_cert: a PEM file of the client certificate for mutual TLS (AWS IoT Core);
        read again whenever it (or ``client_key``) changes on disk.
    :param client_key: the PEM file of its private key, if not in ``client_cert``.
    :param key_password: the password of an encrypted ``client_key`` (a str, sent in UTF-8, or
        bytes as they are); never shown.
    :param credentials: an object supplying the auth headers of each request and told when
        they are refused, such as ``TokenFileCredentials`` or ``OAuth2ClientCredentials``.
        Exactly one of ``api_key`` and ``credentials``, or neither with ``client_cert``.
    :param proxy_url: an ``http://[user:password@]host:port`` proxy (https goes through a
        CONNECT tunnel); its credentials are never shown.
    :param trust_env: honour ``HTTPS_PROXY``, ``HTTP_PROXY`` and ``NO_PROXY`` as curl and pip
        do (``NO_PROXY`` applies to ``proxy_url`` too); False ignores them.
    """

    def __init__(
        self,
        endpoint: str,
        api_key: Optional[str] = None,
        timeout: float = 30.0,
        *,
        auth_header: str = "Authorization",
        gzip_min_bytes: Optional[int] = DEFAULT_GZIP_MIN_BYTES,
        ca_certs: Optional[str] = None,
        allow_insecure_http: bool = False,
        client_cert: "Optional[str | os.PathLike[str]]" = None,
        client_key: "Optional[str | os.PathLike[str]]" = None,
        key_password: Optional[Union[str, bytes]] = None,
        credentials: Any = None,
        proxy_url: Optional[str] = None,
        trust_env: bool = True,
    ) -> None:
        if not isinstance(endpoint, str):
            raise TypeError(f"endpoint must be a str URL, got {type(endpoint).__name__}")
        parts = settings.split_endpoint(endpoint)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"endpoint must be an http:// or https:// URL with a host, got {redact_url(endpoint)!r}")
        if "@" in parts.netloc:
            # urllib3 never sends it, so the request would go unauthenticated.
            raise ValueError(
                f"endpoint {redact_url(endpoint)!r} carries a user:password part, which is never sent; "
                "give the credential as api_key (and auth_header) instead"
            )
        settings.check_port(parts, endpoint)
        if not isinstance(allow_insecure_http, bool):
            raise TypeError(f"allow_insecure_http must be a bool, got {type(allow_insecure_http).__name__}")
        if parts.scheme == "http" and not allow_insecure_http and not _validate.is_loopback(parts.hostname):
            raise ValueError(
                f"endpoint {redact_url(endpoint)!r} is plain http to a host that is not loopback; use https:// "
                "or pass allow_insecure_http=True"
            )
        if api_key is not None and credentials is not None:
            raise ValueError("give api_key (a fixed key) or credentials (keys that change), not both")
        if api_key is None and credentials is None and client_cert is None:
            raise ValueError(
                "give api_key (a fixed key) or credentials (keys that change, such as TokenFileCredentials), "
                "or client_cert for an endpoint that authenticates by certificate alone"
            )
        if api_key is not None:
            settings.check_api_key(api_key)
        if credentials is not None:
            settings.check_credentials(credentials)
        if not isinstance(auth_header, str) or not auth_header.isascii() or not auth_header.replace("-", "").isalnum():
            raise ValueError(f"auth_header must be an HTTP header name such as 'X-API-Key', got {auth_header!r:.100}")
        if auth_header.lower() in OWNED_HEADERS:
            raise ValueError(f"auth_header {auth_header!r} is a header the uploader writes itself; choose another name")
        if auth_header != "Authorization" and api_key is None:
            raise ValueError("auth_header names the header of api_key; a credentials object names its own headers")
        if gzip_min_bytes is not None:
            gzip_min_bytes = _validate.integer("gzip_min_bytes", gzip_min_bytes, 0)
        ca_certs = tls.check_ca_certs(ca_certs)
        self._endpoint = endpoint
        self._timeout = _validate.number("timeout", timeout, 0.0, allow_equal=False)
        self._ca_certs = ca_certs
        self._certificate: Optional[tls.ClientCertificate] = None
        self._ssl_context: Optional[ssl.SSLContext] = None
        if client_cert is not None:
            self._certificate = tls.ClientCertificate(client_cert, client_key, key_password)
            self._ssl_context = self._tls_context()
            self._certificate.load_into(self._ssl_context)
        elif client_key is not None or key_password is not None:
            raise ValueError("client_key and key_password need client_cert (the certificate of that key)")
        _deadline.hide_query_values_in_urllib3_logs()
        self._routes = _proxy.ProxyRoutes.configure(proxy_url, trust_env)
        self._proxy = self._routes.proxy_for(parts.scheme, parts.hostname, parts.port)
        self._api_key = None if api_key is None else Secret(api_key)
        self._credentials = credentials
        # Scrubbed wherever they might surface; held as Secrets, so that not even vars() shows them.
        self._fixed_secrets = [
            Secret(value)
            for value in (
                *([] if api_key is None else [api_key]),
                *query_values(parts),
                *(() if self._certificate is None else self._certificate.secrets()),
                *self._routes.secrets(),
            )
        ]
        self._auth_header = auth_header
        self._gzip_min_bytes = gzip_min_bytes
        self._lock = threading.Lock()
        self._pools: "Dict[Optional[_proxy.Proxy], urllib3.PoolManager]" = {}
        self._pool_pid = 0
        if credentials is not None and callable(getattr(credentials, "bind", None)):
            credentials.bind(self._fetch)

    @property
    def endpoint(self) -> str:
        """The ingest URL as it may be shown: query values hidden (they often carry a token)."""
        return redact_url(self._endpoint)

    @property
    def timeout(self) -> float:
        """Seconds a whole request may take, from connecting to the last byte of the answer."""
        return self._timeout

    @property
    def proxy(self) -> Optional[str]:
        """The proxy the endpoint is reached through (``http://host:port``, no credentials), or None."""
        return None if self._proxy is None else self._proxy.url

    def __repr__(self) -> str:
        extra = ""
        if self._credentials is not None:
            extra += f", credentials={self._credentials!r}"
        if self._certificate is not None:
            extra += f", client_cert={self._certificate.paths()[0]!r}"
        if self._proxy is not None:
            extra += f", proxy={str(self._proxy)!r}"
        return (
            f"HTTPCloudUploader(endpoint={self.endpoint!r}, timeout={self._timeout!r}, "
            f"auth_header={self._auth_header!r}{extra})"
        )

    # -- connections ----------------------------------------------------------------------

    def _tls_context(self) -> ssl.SSLContext:
        """The context for mutual TLS: urllib3's defaults, the trusted authorities, and
        (loaded by the caller) the client certificate."""
        from urllib3.util.ssl_ import create_urllib3_context

        context = create_urllib3_context(cert_reqs=ssl.CERT_REQUIRED)
        if self._ca_certs is not None:
            context.load_verify_locations(self._ca_certs)
        else:
            context.load_default_certs()
        return context

    def _pool_for(self, proxy: "Optional[_proxy.Proxy]") -> "urllib3.PoolManager":
        with self._lock:
            # Pools inherited through fork() would share sockets with the parent; a rotated
            # client certificate needs new connections.
            if self._pool_pid != os.getpid():
                self._pools = {}
                self._pool_pid = os.getpid()
            if self._certificate is not None and self._certificate.changed():
                context = self._certificate.reload(self._tls_context)
                if context is not None:
                    self._ssl_context = context
                    self._clear_pools()
            pool = self._pools.get(proxy)
            if pool is None:
                pool = self._pools[proxy] = self._new_pool(proxy)
            return pool

    def _get_pool(self) -> "urllib3.PoolManager":
        """The pool the endpoint is reached through."""
        return self._pool_for(self._proxy)

    def _new_pool(self, proxy: "Optional[_proxy.Proxy]") -> "urllib3.PoolManager":
        lib = _urllib3()
        options: Dict[str, Any] = dict(
            num_pools=2,
            # A connection per batch in flight (``max_in_flight_batches``), opened only when
            # that many requests overlap: one batch at a time keeps reusing one connection.
            maxsize=MAX_IN_FLIGHT_BATCHES,
            retries=False,
            timeout=lib.Timeout(connect=self._timeout, read=self._timeout),
            cert_reqs="CERT_REQUIRED",
            ca_certs=self._ca_certs,
        )
        if self._ssl_context is not None:
            options["ssl_context"] = self._ssl_context
        pool: "urllib3.PoolManager"
        if proxy is None:
            pool = lib.PoolManager(**options)
        else:
            auth = proxy.auth_header()
            headers = None if auth is None else {"Proxy-Authorization": auth}
            pool = lib.ProxyManager(proxy.url, proxy_headers=headers, **options)
        pool.pool_classes_by_scheme = _deadline.pool_classes(lib)
        return pool

    def _clear_pools(self) -> None:
        for pool in self._pools.values():
            pool.clear()
        self._pools = {}

    def _secrets(self, sent: Mapping[str, str]) -> List[str]:
        """Everything to scrub from a text shown: fixed secrets, the credentials' own, and
        the auth header values of the request."""
        found = [secret.reveal() for secret in self._fixed_secrets]
        if self._credentials is not None and callable(getattr(self._credentials, "secrets", None)):
            found += [secret for secret in self._credentials.secrets() if isinstance(secret, str)]
        return found + header_secrets(sent)

    def _failure(self, exc: Exception, sent: Mapping[str, str], deadline: "_deadline.Deadline") -> UploadError:
        """An ``UploadError`` for whatever failed below (http.client, ssl, urllib3): its text
        may quote a header, so it is scrubbed, and the original is not chained."""
        if deadline.passed():
            return UploadError(f"ingest endpoint {self.endpoint} did not answer within timeout={self._timeout:g} s")
        reason = scrub(f"{type(exc).__name__}: {exc}", self._secrets(sent))
        refusal = _PROXY_REFUSAL.search(tls.error_chain_text(exc)) if self._proxy is not None else None
        if refusal is not None and self._proxy is not None:
            return UploadError(
                f"the proxy {self._proxy.url} refused its credentials (HTTP {refusal.group(1)}) on the way to "
                f"{self.endpoint}",
                credentials_refused=True,
            )
        if tls.refused_certificate(exc):
            what = (
                "the client certificate" if self._certificate is not None else "a connection without client certificate"
            )
            return _CertificateRefused(
                f"ingest endpoint {self.endpoint} refused {what} in the TLS handshake: {reason}",
                credentials_refused=True,
            )
        return UploadError(f"cannot reach ingest endpoint {self.endpoint}: {reason}")

    def _fetch(self, url: str, body: bytes, headers: Mapping[str, str]) -> Tuple[int, bytes]:
        """POST for a credentials object (a token request): this uploader's pools, proxy,
        TLS settings and deadline; failures come back as scrubbed ``UploadError``."""
        parts = urlsplit(url)
        proxy = self._routes.proxy_for(parts.scheme, parts.hostname or "", parts.port)
        urllib3 = _urllib3()
        try:
            left = _deadline.remaining(self._timeout)
            response = self._pool_for(proxy).request(
                "POST",
                url,
                body=body,
                headers=dict(headers),
                redirect=False,
                preload_content=False,
                timeout=urllib3.Timeout(connect=left, read=left),
            )
            answer, _ = _deadline.read_answer(response)
        except Exception as exc:  # noqa: BLE001 - whatever fails on the way is a failed request
            reason = scrub(f"{type(exc).__name__}: {exc}", self._secrets(headers))
            raise UploadError(f"cannot reach {redact_url(url)}: {reason}") from None
        return response.status, answer

    # -- posting ---------------------------------------------------------------------------

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
        the same key whenever it retries exactly the same batch. Without one, a random key
        is sent. A refusal is answered by one refresh and one immediate retry, under the
        same key and within the same ``timeout``.
        """
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        if self._gzip_min_bytes is not None and len(body) >= self._gzip_min_bytes:
            body = gzip.compress(body, compresslevel=5, mtime=0)
            headers["Content-Encoding"] = "gzip"
        with _deadline.Deadline(self._timeout) as deadline:
            try:
                return self._attempt(body, count, headers, deadline)
            except UploadError as refusal:
                if not self._refreshed_after(refusal):
                    raise
            logger.info("ingest endpoint %s refused the credentials; refreshed them, sending again", self.endpoint)
            return self._attempt(body, count, headers, deadline)

    def _refreshed_after(self, error: UploadError) -> bool:
        """Whether ``error`` is a refusal worth one immediate retry, after refreshing what
        can be refreshed: credentials are told, certificate files are checked."""
        reloaded = self._certificate is not None and self._certificate.changed()
        if isinstance(error, _CertificateRefused):
            return reloaded
        if error.status not in REFUSED_STATUSES:
            return False
        if self._credentials is not None:
            try:
                self._credentials.refused()
            except Exception as exc:  # noqa: BLE001 - a failing refresh leaves the first refusal to report
                logger.warning("the credentials could not refresh: %s", scrub(str(exc), self._secrets({})))
                return False
            return True
        return reloaded

    def _attempt(
        self, body: bytes, count: int, headers: Dict[str, str], deadline: "_deadline.Deadline"
    ) -> Union[bool, UploadResult]:
        sent: Dict[str, str] = {}
        try:
            if self._api_key is not None:
                key = self._api_key.reveal()
                sent = {self._auth_header: "Bearer " + key if self._auth_header.lower() == "authorization" else key}
            elif self._credentials is not None:
                sent = auth_headers(self._credentials)
            pool = self._get_pool()
            urllib3 = _urllib3()
            response = pool.request(
                "POST",
                self._endpoint,
                body=body,
                headers={**headers, **sent},
                redirect=False,
                preload_content=False,
                timeout=urllib3.Timeout(connect=deadline.remaining(), read=deadline.remaining()),
            )
            accepted = 200 <= response.status < 300
            limit = _deadline.MAX_ACCEPTED_ANSWER_BYTES if accepted else _deadline.MAX_ANSWER_BYTES
            answer, complete = _deadline.read_answer(response, limit)
        except UploadError as exc:
            # Raised by the credentials (a token endpoint that failed): scrubbed, not chained.
            raise UploadError(
                scrub(str(exc), self._secrets(sent)),
                status=exc.status,
                retry_after=exc.retry_after,
                credentials_refused=exc.credentials_refused,
            ) from None
        except Exception as exc:  # noqa: BLE001 - whatever fails on the way is a failed upload
            raise self._failure(exc, sent, deadline) from None
        if accepted and not complete:
            # Its end may name rejected items: taking the batch as accepted would delete them.
            message = (
                f"ingest endpoint {self.endpoint} answered HTTP {response.status} to a batch of {count} items, but "
                f"its answer could not be read to its end (more than {limit} bytes, or broken); the batch is not "
                "counted as delivered and will be sent again under the same Idempotency-Key"
            )
            logger.warning("%s", message)
            raise UploadError(message)
        return self._outcome(response, answer, count, sent)

    def _outcome(self, response: Any, answer: bytes, count: int, sent: Mapping[str, str]) -> Union[bool, UploadResult]:
        status = response.status
        secrets = self._secrets(sent)
        if 200 <= status < 300:
            rejected, error = rejected_indices(answer, count)
            if rejected:
                reason = None if error is None else scrub(error, secrets)[:ERROR_SNIPPET]
                return UploadResult(rejected=rejected, status=status, error=reason)
            return True
        # Scrubbed before it is cut short, so that a cut cannot leave part of the key behind.
        snippet = scrub(answer.decode("utf-8", "replace"), secrets)[:ERROR_SNIPPET].strip()
        location = response.headers.get("Location")
        where = ""
        if 300 <= status < 400 and location:
            # Not followed: a redirect would take the key and the data elsewhere.
            where = f" redirecting to {scrub(redact_url(clean(location)), secrets)[:ERROR_SNIPPET]!r}"
        raise UploadError(
            f"ingest endpoint {self.endpoint} answered HTTP {status}{where} to a batch of {count} items"
            + (f": {snippet}" if snippet not in ("", "{}") else ""),
            status=status,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            # A proxy in front of a plain-http endpoint answers 407 itself.
            credentials_refused=status == 407 and self._proxy is not None,
        )

    def close(self) -> None:
        """Close pooled connections."""
        with self._lock:
            self._clear_pools()
