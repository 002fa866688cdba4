"""Probing an uploader's link, so that a sync loop can end a backoff early when it is back.

The probe protocol: an uploader may have a ``probe()`` method, called with no arguments
while the worker backs off after a failure that got no answer. It returns True when the
link to the endpoint works now and False (or raises) when it does not; it should cost
little (no payload), send nothing that the endpoint would record, and return within a few
seconds. An uploader without one but with an ``http://`` or ``https://`` ``endpoint``
attribute (``HTTPCloudUploader``) is probed with a TCP connect to that host and port; any
other uploader is not probed, and its backoff runs out as before.
"""

import logging
import socket
from typing import Any, Callable, Optional, Tuple, Union
from urllib.parse import urlsplit

from .._upload_types import AsyncUploader, Uploader

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# A probe that hangs longer than this says the link is not usable yet.
MAX_PROBE_SECONDS = 5.0
_DEFAULT_PORTS = {"http": 80, "https": 443}

Probe = Callable[[float], bool]


def prober(uploader: Union[Uploader, AsyncUploader]) -> Optional[Probe]:
    """How to probe the link of ``uploader`` (None: it cannot be probed). The probe takes a
    timeout in seconds (a TCP connect honours it; an uploader's own ``probe()`` keeps its own)."""
    own = getattr(uploader, "probe", None)
    if callable(own):
        return lambda timeout: _own_probe(own)
    address = _endpoint_address(getattr(uploader, "endpoint", None))
    if address is None:
        return None
    return lambda timeout: tcp_probe(address, timeout)


def _own_probe(probe: Callable[[], Any]) -> bool:
    try:
        return probe() is True
    except Exception as exc:  # a probe that fails says the link is down, nothing more
        logger.debug("the uploader's probe failed: %s: %s", type(exc).__name__, exc)
        return False


def _endpoint_address(endpoint: Any) -> Optional[Tuple[str, int]]:
    if not isinstance(endpoint, str):
        return None
    try:
        parts = urlsplit(endpoint)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in _DEFAULT_PORTS or not parts.hostname:
        return None
    return parts.hostname, port if port is not None else _DEFAULT_PORTS[parts.scheme]


def tcp_probe(address: Tuple[str, int], timeout: float) -> bool:
    """True when a TCP connection to ``address`` opens within ``timeout`` seconds; it is
    closed at once, before anything is sent."""
    try:
        with socket.create_connection(address, timeout=min(timeout, MAX_PROBE_SECONDS)):
            return True
    except OSError:
        return False
