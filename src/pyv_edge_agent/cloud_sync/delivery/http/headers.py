"""The auth headers of one request: taken from a credentials object and checked before
sending, and the secrets they carry (to scrub from any text shown)."""

from typing import Any, Dict, List, Mapping

from ..._errors import UploadError

# Headers the uploader writes itself; the key cannot go in one of them.
OWNED_HEADERS = frozenset(
    ("host", "content-type", "content-length", "content-encoding", "transfer-encoding", "connection", "idempotency-key")
)


def header_secrets(headers: Mapping[str, str]) -> List[str]:
    """The auth header values as sent, and the token after a scheme word (``Bearer x``)."""
    found = []
    for value in headers.values():
        found.append(value)
        scheme, space, token = value.partition(" ")
        if space and token:
            found.append(token)
    return found


def auth_headers(credentials: Any) -> Dict[str, str]:
    """The credentials object's headers, refused before sending if http.client would choke
    on them (its error would quote the value)."""
    headers = credentials.headers()
    if not isinstance(headers, Mapping) or not headers:
        raise UploadError(
            f"credentials.headers() must return a non-empty mapping of header names to values, "
            f"got {type(headers).__name__}",
            credentials_refused=True,
        )
    out: Dict[str, str] = {}
    for name, value in headers.items():
        bad_name = not isinstance(name, str) or not name.isascii() or not name.replace("-", "").isalnum()
        if bad_name or str(name).lower() in OWNED_HEADERS:
            raise UploadError(f"credentials.headers() gave a header name that cannot be used: {name!r:.60}")
        if not isinstance(value, str) or not value or any(not " " <= char <= "~" for char in value):
            raise UploadError(
                f"credentials.headers() gave a value for {name} that is empty or not printable ASCII (not shown)",
                credentials_refused=True,
            )
        out[name] = value
    return out
