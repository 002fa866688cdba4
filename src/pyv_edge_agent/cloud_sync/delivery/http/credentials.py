"""Credentials that change under a running agent, for ``HTTPCloudUploader(credentials=...)``.

A credentials object supplies the auth header(s) of each request (``headers()``) and is
told when the endpoint refused them (``refused()``): the uploader then asks again and
retries the batch at once; only a second refusal in a row counts as refused credentials
(the flush keeps the items and backs off long). Two built-ins:

- ``TokenFileCredentials``: a bearer token kept in a file by another program (a sidecar,
  a cron job), read again when the file changes and after a refusal;
- ``OAuth2ClientCredentials``: the OAuth 2.0 client-credentials grant, refreshed at about
  80% of each token's lifetime through the uploader's own connection pool.

Any object with ``headers()`` and ``refused()`` will do; ``secrets()`` (strings to scrub
from error texts besides the header values, which are always scrubbed) and
``bind(transport)`` (how to make HTTP requests) are optional.
"""

import base64
import logging
import os
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote, urlencode, urlsplit

import orjson

from ... import _validate
from ..._errors import UploadError
from ..._redact import Secret, redact_url

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# ``transport(url, body, headers)``: POST through the uploader's pool, within its request
# deadline; returns the status and at most 64 KiB of the answer.
Transport = Callable[[str, bytes, Mapping[str, str]], Tuple[int, bytes]]

# A token is renewed once this share of its lifetime has passed.
REFRESH_AT = 0.8


class Credentials:
    """Base class (optional) of credentials objects: override ``headers`` and ``refused``."""

    def headers(self) -> Mapping[str, str]:
        """The auth header(s) for the next request."""
        raise NotImplementedError

    def refused(self) -> None:
        """The endpoint refused the headers last given (401/403): get new ones, so that the
        next ``headers()`` call returns them (or the same, if there is nothing new)."""

    def secrets(self) -> Sequence[str]:
        """Strings to scrub from every text the uploader shows (the header values are scrubbed anyway)."""
        return ()

    def bind(self, transport: Transport) -> None:
        """Receive the uploader's way of making requests (its pool, proxy and TLS settings)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _check_visible(value: str, what: str) -> None:
    """Refuse a credential http.client would refuse at every request (naming the position, not the value)."""
    for position, char in enumerate(value):
        if not "!" <= char <= "~":
            raise ValueError(
                f"{what} must be visible ASCII characters only; it has U+{ord(char):04X} at position {position}"
            )


def _file_signature(path: str) -> Tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _read_one_line(path: str, what: str) -> str:
    """The file's text without one trailing newline; more lines or none is an error."""
    with open(path, encoding="utf-8", newline="") as handle:
        text = handle.read()
    text = text[:-2] if text.endswith("\r\n") else text[:-1] if text.endswith("\n") else text
    text = text.strip()
    if not text:
        raise ValueError(f"{what} {path!r:.200} is empty")
    if "\n" in text or "\r" in text:
        raise ValueError(f"{what} {path!r:.200} has more than one line; it must hold the credential alone")
    _check_visible(text, f"the credential in {what} {path!r:.200}")
    return text


def _check_header(header: Any) -> str:
    if not isinstance(header, str) or not header.isascii() or not header.replace("-", "").isalnum():
        raise ValueError(f"header must be an HTTP header name such as 'Authorization', got {header!r:.100}")
    return header


class TokenFileCredentials(Credentials):
    """A token kept in a file, sent as ``Authorization: Bearer <token>`` (or in ``header``).

    The file is stat()ed before each request and read again when it changed, and read
    again after a refusal. A file caught missing or empty mid-rotation keeps the last
    good token in use (with one warning).

    :param path: the file; one line, the token alone (one trailing newline is dropped).
    :param header: the header that carries it; ``"Authorization"`` adds the ``scheme``.
    :param scheme: the prefix in ``Authorization`` (default ``"Bearer"``).
    """

    def __init__(self, path: "str | os.PathLike[str]", *, header: str = "Authorization", scheme: str = "Bearer"):
        self._path = _validate.file_path("path", path)
        self._header = _check_header(header)
        if not isinstance(scheme, str) or not scheme.isalnum():
            raise ValueError(f"scheme must be a word such as 'Bearer', got {scheme!r:.100}")
        self._scheme = scheme
        self._lock = threading.RLock()  # secrets() is called while a token request fails
        try:
            self._signature = _file_signature(self._path)
            token = _read_one_line(self._path, "the token file")
        except OSError as exc:
            raise ValueError(
                f"path: cannot read the token file {self._path!r:.200} ({exc.strerror or type(exc).__name__})"
            ) from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ValueError(f"path: {exc}") from None
        self._token = Secret(token)
        self._old: List[str] = []
        self._warned = False

    def __repr__(self) -> str:
        return f"TokenFileCredentials(path={self._path!r}, header={self._header!r})"

    def headers(self) -> Mapping[str, str]:
        """The header with the token, read again first if the file changed."""
        with self._lock:
            try:
                changed = _file_signature(self._path) != self._signature
            except OSError:
                changed = True
            if changed:
                self._read()
            token = self._token.reveal()
        value = f"{self._scheme} {token}" if self._header.lower() == "authorization" else token
        return {self._header: value}

    def refused(self) -> None:
        """Read the file again, changed or not."""
        with self._lock:
            self._read()

    def _read(self) -> None:
        try:
            signature = _file_signature(self._path)
            token = _read_one_line(self._path, "the token file")
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            if not self._warned:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                logger.warning("cannot read the token file %r (%s); keeping the last token", self._path, reason)
                self._warned = True
            return
        self._warned = False
        if token != self._token.reveal():
            # Kept for scrubbing: an answer to a request made with it may still arrive.
            self._old = [self._token.reveal()]
            self._token = Secret(token)
        self._signature = signature

    def secrets(self) -> Sequence[str]:
        """The current token and the one before it."""
        with self._lock:
            return [self._token.reveal(), *self._old]


class OAuth2ClientCredentials(Credentials):
    """OAuth 2.0 client credentials (RFC 6749 section 4.4): a token from ``token_url``,
    sent as ``Authorization: Bearer <token>``.

    A token is fetched on first use and again at about 80% of its lifetime (``expires_in``)
    or after a refusal, through the uploader's connection pool (its proxy, CA bundle and
    client certificate apply). If a renewal fails (the endpoint is down, or answers a token
    that cannot be sent, with a line break or a space) while the token still has time
    left, the old one goes on being used, with one warning. The client secret and every token are scrubbed from error
    texts like the API key.

    :param token_url: the token endpoint (``https://``; ``http://`` only to loopback).
    :param client_id: the client's id.
    :param client_secret: the secret as a string, or ...
    :param client_secret_file: ... a file holding it (read at each token request, so a
        rotated secret is picked up). Exactly one of the two.
    :param scope: the space-separated scopes to ask for, if any.
    :param audience: the ``audience`` parameter some providers want (Auth0 and others).
    :param client_auth: ``"basic"`` (HTTP Basic, what RFC 6749 requires servers to take)
        or ``"post"`` (``client_id``/``client_secret`` in the form body).
    """

    def __init__(
        self,
        token_url: str,
        client_id: str,
        client_secret: Optional[str] = None,
        *,
        client_secret_file: "Optional[str | os.PathLike[str]]" = None,
        scope: Optional[str] = None,
        audience: Optional[str] = None,
        client_auth: str = "basic",
    ) -> None:
        self._token_url = _check_token_url(token_url)
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty str")
        self._client_id = client_id
        if (client_secret is None) == (client_secret_file is None):
            raise ValueError("give exactly one of client_secret and client_secret_file")
        self._secret_file: Optional[str] = None
        self._secret: Optional[Secret] = None
        if client_secret is not None:
            if not isinstance(client_secret, str) or not client_secret:
                raise TypeError("client_secret must be a non-empty str")
            self._secret = Secret(client_secret)
        else:
            self._secret_file = _validate.file_path("client_secret_file", client_secret_file)
            try:
                self._secret = Secret(_read_one_line(self._secret_file, "client_secret_file"))
            except OSError as exc:
                raise ValueError(
                    f"client_secret_file: cannot read {self._secret_file!r:.200} ({exc.strerror or type(exc).__name__})"
                ) from None
            except UnicodeDecodeError:
                raise ValueError(f"client_secret_file {self._secret_file!r:.200} is not UTF-8 text") from None
        for name, value in (("scope", scope), ("audience", audience)):
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty str or None, got {value!r:.100}")
        self._scope = scope
        self._audience = audience
        self._client_auth = _validate.choice("client_auth", client_auth, ("basic", "post"))
        self._transport: Optional[Transport] = None
        self._lock = threading.RLock()  # secrets() is called while a token request fails
        self._token: Optional[Secret] = None
        self._old: List[str] = []
        self._refresh_at = 0.0
        self._expires_at = 0.0
        self._renewal_warned = False
        self.fetched = 0  # tokens fetched so far: a figure for tests and operators

    def __repr__(self) -> str:
        return f"OAuth2ClientCredentials(token_url={redact_url(self._token_url)!r}, client_id={self._client_id!r})"

    def bind(self, transport: Transport) -> None:
        """Use the uploader's pool for token requests."""
        self._transport = transport

    def headers(self) -> Mapping[str, str]:
        """``Authorization: Bearer <token>``, fetching a token first when it is due."""
        with self._lock:
            now = time.monotonic()
            if self._token is None or now >= self._refresh_at:
                try:
                    self._fetch(now)
                except UploadError as exc:
                    if self._token is None or now >= self._expires_at:
                        raise
                    if not self._renewal_warned:  # tried again at each request: said once
                        logger.warning(
                            "renewing the OAuth2 token failed (%s); the current one is valid for %.0f s more, using it",
                            exc,
                            self._expires_at - now,
                        )
                        self._renewal_warned = True
            assert self._token is not None
            return {"Authorization": "Bearer " + self._token.reveal()}

    def refused(self) -> None:
        """The token was refused: the next ``headers()`` fetches a new one."""
        with self._lock:
            self._refresh_at = 0.0
            self._expires_at = 0.0

    def secrets(self) -> Sequence[str]:
        """The client secret, the current token and the one before it."""
        with self._lock:
            found = [] if self._secret is None else [self._secret.reveal()]
            if self._token is not None:
                found.append(self._token.reveal())
            return found + self._old

    def _client_secret(self) -> str:
        if self._secret_file is not None:
            try:
                self._secret = Secret(_read_one_line(self._secret_file, "client_secret_file"))
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else str(exc)
                logger.warning("cannot read client_secret_file (%s); using the secret read before", reason)
        assert self._secret is not None
        return self._secret.reveal()

    def _request(self) -> Tuple[bytes, Dict[str, str]]:
        form = {"grant_type": "client_credentials"}
        if self._scope is not None:
            form["scope"] = self._scope
        if self._audience is not None:
            form["audience"] = self._audience
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        secret = self._client_secret()
        if self._client_auth == "basic":
            # RFC 6749 2.3.1: id and secret are form-encoded before they are joined.
            pair = f"{quote(self._client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode("ascii")
        else:
            form.update(client_id=self._client_id, client_secret=secret)
        return urlencode(form).encode("ascii"), headers

    def _fetch(self, now: float) -> None:
        if self._transport is None:
            raise UploadError("OAuth2ClientCredentials is not bound to an uploader: pass it as credentials=")
        body, headers = self._request()
        status, answer = self._transport(self._token_url, body, headers)
        where = redact_url(self._token_url)
        if status in (400, 401, 403):
            # invalid_client, unauthorized_client, invalid_scope: a person must fix them.
            refusal = f"the token endpoint {where} refused the client (HTTP {status})"
            raise UploadError(refusal, credentials_refused=True)
        if not 200 <= status < 300:
            # No status of the ingest endpoint: the flush retries as after a network failure.
            raise UploadError(f"the token endpoint {where} answered HTTP {status}")
        try:
            token_answer = orjson.loads(answer)
        except orjson.JSONDecodeError:
            token_answer = None
        token = token_answer.get("access_token") if isinstance(token_answer, dict) else None
        if not isinstance(token, str) or not token:
            raise UploadError(f"the token endpoint {where} answered without an access_token")
        try:
            _check_visible(token, "the access_token from the token endpoint")
        except ValueError as exc:
            # Not sendable in a header: a failed renewal, never a crash of the upload.
            raise UploadError(f"{exc} (token endpoint {where})") from None
        lifetime = token_answer.get("expires_in") if isinstance(token_answer, dict) else None
        if self._token is not None:
            self._old = [self._token.reveal()]
        self._token = Secret(token)
        self._renewal_warned = False
        self.fetched += 1
        if isinstance(lifetime, (int, float)) and not isinstance(lifetime, bool) and lifetime > 0:
            self._refresh_at = now + REFRESH_AT * float(lifetime)
            self._expires_at = now + float(lifetime)
        else:
            # No lifetime given: used until refused.
            self._refresh_at = self._expires_at = float("inf")


def _check_token_url(token_url: Any) -> str:
    if not isinstance(token_url, str):
        raise TypeError(f"token_url must be a str URL, got {type(token_url).__name__}")
    try:
        parts = urlsplit(token_url)
        parts.port  # noqa: B018 - raises for a port out of range
    except ValueError:
        raise ValueError("token_url must be an https:// URL with a host, got a malformed URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"token_url must be an https:// URL with a host, got {redact_url(token_url)!r}")
    if "@" in parts.netloc:
        raise ValueError(f"token_url {redact_url(token_url)!r} carries a user:password part; give client_secret")
    if parts.scheme == "http" and not _validate.is_loopback(parts.hostname):
        raise ValueError(f"token_url {redact_url(token_url)!r} is plain http to a host that is not loopback")
    return token_url
