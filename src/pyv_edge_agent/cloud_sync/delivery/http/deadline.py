"""What ``HTTPCloudUploader`` needs beyond urllib3: a deadline for a whole request, and
answers read within a fixed size.

urllib3's timeouts bound each socket operation, so a server that trickles a byte at a
time holds a request for as long as it likes; a ``Deadline`` shuts the request's socket
down when its time is up. Answer bodies are read raw and decompressed here, never more
than a set bound of decoded text (``MAX_ANSWER_BYTES`` for an error, ``MAX_ACCEPTED_ANSWER_BYTES``
for a 2xx answer, which may name rejected items), whatever the server sends or claims.
"""

import ipaddress
import logging
import socket
import threading
import time
import zlib
from typing import Any, Dict, List, Optional, Tuple

from ..._redact import redact_target

# More than enough for an error text: only its first 200 characters are ever shown.
MAX_ANSWER_BYTES = 64 * 1024
# A 2xx answer is read to its end, because the items it rejects may come last: a batch of
# 500 with a few hundred bytes of detail per rejected item (an echo of the item, a reason)
# is far beyond 64 KiB. The bound limits memory only; an answer beyond it is not read as
# accepting anything.
MAX_ACCEPTED_ANSWER_BYTES = 8 * 1024 * 1024
_READ_CHUNK = 16 * 1024

_current = threading.local()
# urllib3's loggers that may show a request's URL: its DEBUG line of each request
# (``"POST /v1/ingest?code=... HTTP/1.1" 200``), redirects and retries.
_URLLIB3_LOGGERS = ("urllib3.connectionpool", "urllib3.poolmanager", "urllib3.util.retry")


class QueryValuesHidden(logging.Filter):
    """Hides the query values of every URL argument of a log record: an endpoint's query
    string often carries a credential (``?code=``, ``?sig=``) that urllib3 logs as is."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record's string arguments that hold a query string; never drop it."""
        args = record.args
        if isinstance(args, tuple) and any(isinstance(arg, str) and "?" in arg for arg in args):
            record.args = tuple(redact_target(arg) if isinstance(arg, str) else arg for arg in args)
        return True


_QUERY_FILTER = QueryValuesHidden()


def hide_query_values_in_urllib3_logs() -> None:
    """Install ``QueryValuesHidden`` on urllib3's loggers (once per process)."""
    for name in _URLLIB3_LOGGERS:
        log = logging.getLogger(name)
        if _QUERY_FILTER not in log.filters:
            log.addFilter(_QUERY_FILTER)


class Deadline:
    """The time left for one request; at its end the sockets it uses are shut down."""

    def __init__(self, seconds: float) -> None:
        self._expires = time.monotonic() + seconds
        self._connections: List[Any] = []
        self._lock = threading.Lock()
        self.expired = False
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def remaining(self) -> float:
        """Seconds left, never below a millisecond (urllib3 refuses a zero timeout)."""
        return max(0.001, self._expires - time.monotonic())

    def passed(self) -> bool:
        """Whether the time is up (the sockets may not have been shut down yet)."""
        return self.expired or time.monotonic() >= self._expires

    def __enter__(self) -> "Deadline":
        _current.deadline = self
        self._timer.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._timer.cancel()
        _current.deadline = None

    def attach(self, connection: Any) -> None:
        """Put ``connection`` under this deadline (shut down at once if it has passed)."""
        with self._lock:
            if connection not in self._connections:
                self._connections.append(connection)
            if self.expired:
                _shut_down(connection)

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            for connection in self._connections:
                _shut_down(connection)


def remaining(default: float) -> float:
    """Seconds left of the calling thread's ``Deadline``, or ``default`` outside one."""
    deadline: Optional[Deadline] = getattr(_current, "deadline", None)
    return default if deadline is None else deadline.remaining()


def _shut_down(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        try:
            # The plain socket call, also for TLS: it wakes a read blocked in another thread.
            socket.socket.shutdown(sock, socket.SHUT_RDWR)
        except OSError:
            pass


def _resolve(host: str, port: int, deadline: Deadline) -> List[str]:
    """The addresses of ``host``, looked up in a thread of its own so that the wait ends
    with the deadline: a resolver that does not answer holds the lookup (its own timeouts,
    5 s times the attempts, or more), never the request."""
    from urllib3.util.connection import allowed_gai_family

    found: Dict[str, Any] = {}
    done = threading.Event()

    def look_up() -> None:
        try:
            found["infos"] = socket.getaddrinfo(host, port, allowed_gai_family(), socket.SOCK_STREAM)
        except OSError as exc:
            found["error"] = exc
        finally:
            done.set()

    threading.Thread(target=look_up, name="resolve", daemon=True).start()
    if not done.wait(deadline.remaining()):
        raise socket.timeout(f"resolving {host} took longer than the request's timeout")
    if "error" in found:
        raise found["error"]
    addresses: List[str] = []
    for info in found["infos"]:
        address = str(info[4][0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    return True


def _watched(base: type) -> type:
    """A subclass of the urllib3 connection class ``base`` that puts itself under the
    calling thread's ``Deadline`` whenever it resolves a name, connects or sends a request."""

    class Watched(base):  # type: ignore[misc]
        _dns_host: str  # urllib3's (1.26 and 2.x): the name or address it connects to

        def connect(self) -> None:
            _attach(self)  # a TLS handshake can trickle too
            super().connect()
            _attach(self)  # the deadline may have passed while connecting

        def _new_conn(self) -> Any:
            # urllib3 resolves the name in the calling thread, unbounded by any timeout:
            # resolved here within the deadline, then each address is tried in turn as
            # urllib3 would (the name itself stays for TLS: only the connect uses it).
            deadline: Optional[Deadline] = getattr(_current, "deadline", None)
            host = self._dns_host
            if deadline is None or _is_address(host):
                return super()._new_conn()
            from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

            try:
                addresses = _resolve(host, self.port, deadline)
            except socket.timeout as exc:
                raise ConnectTimeoutError(self, str(exc)) from None
            except OSError as exc:
                raise NewConnectionError(self, f"Failed to resolve {host!r} ({exc})") from None
            failure: Optional[Exception] = None
            for address in addresses:
                self._dns_host = address
                try:
                    return super()._new_conn()
                except NewConnectionError as exc:
                    failure = exc
                finally:
                    self._dns_host = host
            raise failure or NewConnectionError(self, f"{host!r} resolved to no address")

        def request(self, *args: Any, **kwargs: Any) -> Any:
            _attach(self)
            return super().request(*args, **kwargs)

    Watched.__name__ = Watched.__qualname__ = "Watched" + base.__name__
    return Watched


def _attach(connection: Any) -> None:
    deadline: Optional[Deadline] = getattr(_current, "deadline", None)
    if deadline is not None:
        deadline.attach(connection)


_POOL_CLASSES: Dict[str, type] = {}


def pool_classes(urllib3: Any) -> Dict[str, type]:
    """urllib3 pool classes by scheme whose connections obey the thread's ``Deadline``."""
    if not _POOL_CLASSES:
        for scheme, pool in (("http", urllib3.HTTPConnectionPool), ("https", urllib3.HTTPSConnectionPool)):
            watched = type("Watched" + pool.__name__, (pool,), {"ConnectionCls": _watched(pool.ConnectionCls)})
            _POOL_CLASSES[scheme] = watched
    return dict(_POOL_CLASSES)


def _decoder(encoding: str) -> "Optional[Any]":
    encoding = encoding.strip().lower()
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return zlib.decompressobj()
    return None


def read_answer(response: Any, limit: int = MAX_ANSWER_BYTES) -> Tuple[bytes, bool]:
    """Read at most ``limit`` decoded bytes of an answer opened with ``preload_content=False``;
    return them and whether that was all of it, read to its end (a compressed stream to
    its end, as many bytes as ``Content-Length`` announced).

    A gzip or deflate body is decompressed here, bounded (a 64 KiB gzip bomb holds 64
    MiB). An answer not read to its end closes its connection, so that no leftover bytes
    are taken for the next answer.
    """
    decoder = _decoder(response.headers.get("Content-Encoding", ""))
    out = bytearray()
    raw = 0
    # Compressed text that decodes to less than the limit is not worth reading further.
    max_raw = 2 * limit
    complete = False
    try:
        while len(out) <= limit and raw <= max_raw:
            room = limit + 1 - len(out)
            if decoder is not None and decoder.unconsumed_tail:
                out += decoder.decompress(decoder.unconsumed_tail, room)
                continue
            chunk = response.read(_READ_CHUNK, decode_content=False)
            if not chunk:
                complete = True
                break
            raw += len(chunk)
            out += decoder.decompress(chunk, room) if decoder is not None else chunk[:room]
    except zlib.error:
        pass  # what decoded so far is all there is to show
    if complete:
        response.release_conn()
    else:
        response.close()
        response.release_conn()
    # Cut short: a compressed stream that did not reach its end, or fewer bytes than the
    # server announced (urllib3 1.26 does not check that by default).
    whole = complete and len(out) <= limit and (decoder is None or decoder.eof)
    announced = response.headers.get("Content-Length", "").strip()
    if announced.isascii() and announced.isdigit() and int(announced) != raw:
        whole = False
    return bytes(out[:limit]), whole
