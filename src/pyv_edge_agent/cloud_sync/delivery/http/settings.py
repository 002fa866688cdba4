"""Checks of ``HTTPCloudUploader``'s settings, made at construction: each error names the
argument and never quotes a secret."""

from typing import Any
from urllib.parse import SplitResult, urlsplit

from ..._redact import redact_url


def split_endpoint(endpoint: str) -> SplitResult:
    """``urlsplit``, whose own error for a malformed host ("Invalid IPv6 URL") names nothing."""
    try:
        return urlsplit(endpoint)
    except ValueError:
        # Not shown: a URL that does not parse cannot have its credentials redacted.
        raise ValueError("endpoint must be an http:// or https:// URL with a host, got a malformed URL") from None


def check_port(parts: SplitResult, endpoint: str) -> None:
    """Refuse a port out of range now, not at the first upload (whose error would quote the URL)."""
    try:
        port = parts.port
    except ValueError:
        port = -1
    if port is not None and not 1 <= port <= 65535:
        raise ValueError(f"endpoint {redact_url(endpoint)!r} has a port out of range; ports are 1..65535")


def check_api_key(api_key: Any) -> None:
    """Refuse a key http.client would refuse at every upload, in an error that quotes it:
    the message says where the bad character is, never the key."""
    if not isinstance(api_key, str) or not api_key:
        raise TypeError("api_key must be a non-empty str")
    for position, char in enumerate(api_key):
        if not "!" <= char <= "~":
            what = "a line break" if char in "\r\n" else "a space" if char == " " else "a character"
            raise ValueError(
                f"api_key must be visible ASCII characters only; it has {what} (U+{ord(char):04X}) at "
                f"position {position} of {len(api_key)} (was it read from a file without stripping the newline?)"
            )


def check_credentials(credentials: Any) -> None:
    """Refuse an object that cannot be asked for headers or told of a refusal."""
    for method in ("headers", "refused"):
        if not callable(getattr(credentials, method, None)):
            raise TypeError(
                f"credentials must have headers() and refused() methods (see pyv_edge_agent.cloud_sync.credentials), "
                f"got {type(credentials).__name__} without {method}()"
            )
