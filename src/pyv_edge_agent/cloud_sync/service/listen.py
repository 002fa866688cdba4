"""The service's listeners: aiohttp's HTTP server with the bounds the API promises, on a
Unix socket created with its mode and group, and on a loopback TCP port.

aiohttp closes a connection idle between requests after its keep-alive timeout; this
module adds the rest: at most ``max_connections`` at once (the next is closed on
arrival), and a connection whose first request's headers have not all arrived within
``idle_timeout`` is closed (a slow or silent client holds nothing for long).
"""

import asyncio
import os
import socket
import stat
from typing import Any, Awaitable, Callable, Dict, Optional

from .._errors import MissingExtraError

try:
    from aiohttp import web as web
    from aiohttp.web_protocol import RequestHandler
except ImportError:
    raise MissingExtraError("cloud-sync serve needs the serve extra: pip install 'pyv-edge-agent[serve]'") from None

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


class BoundedServer(web.Server):
    """aiohttp's low-level server with a cap on connections and a deadline for the first
    request's headers; the handler calls ``started(request)`` once it has them."""

    def __init__(self, handler: Handler, *, max_connections: int, idle_timeout: float, **kwargs: Any) -> None:
        super().__init__(handler, keepalive_timeout=idle_timeout, **kwargs)
        self.max_connections = max_connections
        self.idle_timeout = idle_timeout
        self._deadlines: Dict[RequestHandler, asyncio.TimerHandle] = {}

    def connection_made(self, handler: RequestHandler, transport: asyncio.Transport) -> None:
        """Count the connection in; close it at once over the cap, else start its deadline."""
        super().connection_made(handler, transport)
        if len(self.connections) > self.max_connections:
            transport.close()
            return
        loop = asyncio.get_running_loop()
        self._deadlines[handler] = loop.call_later(self.idle_timeout, transport.close)

    def connection_lost(self, handler: RequestHandler, exc: Optional[BaseException] = None) -> None:
        """Forget the connection and its deadline."""
        deadline = self._deadlines.pop(handler, None)
        if deadline is not None:
            deadline.cancel()
        super().connection_lost(handler, exc)

    def started(self, request: web.BaseRequest) -> None:
        """The request's headers are in: its connection's header deadline ends."""
        deadline = self._deadlines.pop(request.protocol, None)
        if deadline is not None:
            deadline.cancel()


def unix_listener(path: str, mode: int, group: Optional[int]) -> socket.socket:
    """A listening Unix socket at ``path``, never more open than ``mode`` (the umask covers
    the moment between bind and chmod); a stale socket left by a killed run is replaced,
    any other file at the path is an error."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
        else:
            raise OSError(f"unix_socket {path!r} exists and is not a socket; not replacing it")
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    finally:
        os.umask(old)
    if group is not None:
        os.chown(path, -1, group)
    os.chmod(path, mode)
    sock.listen(128)
    return sock
