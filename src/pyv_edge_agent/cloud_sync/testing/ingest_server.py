"""A reference ingest endpoint on loopback, used by the demo, the tests and operators.

It accepts ``POST`` bodies that are JSON arrays of payloads (optionally gzip-encoded),
records every accepted batch, answers a repeated ``Idempotency-Key`` without recording the
batch again, and can be scripted to fail the way real links and endpoints fail: the next
N requests with a status code (and ``Retry-After``) or a dropped connection, every
request while an outage is switched on, a random share of requests (``set_chaos``), slow
answers, a body size limit (413) and items it rejects (400/422, or a 2xx naming them).

At its door it spends little on a stranger: ``POST`` to its one path only (404, 405
otherwise), 401 and 413 answered from the headers without reading the body, each request
bounded in time (``request_timeout``, idle time included), and at most ``max_connections``
served at once (503 to the rest).
"""

import hmac
import random
import socket
import ssl
import sys
import threading
import time
import zlib
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Callable, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union
from urllib.parse import urlsplit

import orjson

from .. import _validate
from .._validate import is_loopback


@dataclass
class RecordedRequest:
    """One request as the server saw it; ``status`` 0 when it was dropped unanswered."""

    path: str
    headers: Dict[str, str]
    body: bytes
    status: int
    # The serial number (hex) of the client certificate, over mutual TLS.
    client_serial: Optional[str] = None


# A scripted failure: an HTTP status, "reset" (close the connection before reading the
# batch), "lost" (record the batch, then close without answering: the response is lost)
# or "slow" (answer after ``slow_seconds``, later than a short client timeout).
Fault = Union[int, str]
DROP_FAULTS = ("reset", "lost", "slow")
# The most a request body may hold, as sent and decompressed, unless ``set_limits`` says less.
MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_PATH = "/v1/ingest"
DEFAULT_REQUEST_TIMEOUT = 30.0
DEFAULT_MAX_CONNECTIONS = 64
_BUSY = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


class _Watchdog:
    """Shuts down the sockets of requests past their deadline: one thread for all of them,
    where a per-read timeout would let a client trickle a byte at a time for ever."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._deadlines: Dict[socket.socket, float] = {}
        self._cut: Set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ingest-server-watchdog", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching (the sockets it watched are left as they are)."""
        self._stop.set()
        self._thread.join()

    def watch(self, sock: socket.socket) -> None:
        """Give ``sock`` ``seconds`` from now (a new request, or the wait for one)."""
        with self._lock:
            self._deadlines[sock] = time.monotonic() + self.seconds

    def release(self, sock: socket.socket) -> None:
        """The request on ``sock`` has arrived whole (or its connection ended): not timed now."""
        with self._lock:
            self._deadlines.pop(sock, None)
            self._cut.discard(sock)

    def was_cut(self, sock: socket.socket) -> bool:
        """Whether ``sock`` was shut down at its deadline: what was read of it is not a request."""
        with self._lock:
            return sock in self._cut

    def _run(self) -> None:
        tick = min(0.25, self.seconds / 4)
        while not self._stop.wait(tick):
            now = time.monotonic()
            with self._lock:
                late = [sock for sock, deadline in self._deadlines.items() if deadline <= now]
                for sock in late:
                    del self._deadlines[sock]
                self._cut.update(late)
            for sock in late:
                try:
                    # The plain call, also for TLS: it wakes the handler's blocked read.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                except OSError:
                    pass


class _DoorServer(ThreadingHTTPServer):
    """A threading HTTP server that serves at most ``max_connections`` at once and turns
    the rest away at once (503, or a close over TLS), instead of a thread for each."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: Tuple[str, int], handler: type, max_connections: int, watchdog: _Watchdog) -> None:
        super().__init__(address, handler)
        self.slots = threading.BoundedSemaphore(max_connections)
        self.watchdog = watchdog

    def process_request(self, request: Any, client_address: Any) -> None:
        """Serve ``request`` in a thread of its own if a slot is free; else turn it away."""
        if not self.slots.acquire(blocking=False):
            self._turn_away(request)
            return
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name="ingest-server-request",
            daemon=True,
        )
        try:
            thread.start()
        except RuntimeError:
            self.slots.release()
            self.shutdown_request(request)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        """Serve the connection, then free its slot."""
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.watchdog.release(request)
            self.slots.release()

    def _turn_away(self, request: Any) -> None:
        if not isinstance(request, ssl.SSLSocket):  # no handshake yet: nothing can be said over TLS
            try:
                request.setblocking(False)
                request.send(_BUSY)
            except OSError:
                pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that went away or was cut off at its deadline is no error worth a traceback."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


def _gunzip(body: bytes, limit: int) -> Optional[bytes]:
    """Decompress a gzip body, or None when it decodes to more than ``limit`` bytes."""
    decoder = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = decoder.decompress(body, limit + 1)
    return None if len(data) > limit else data


def _check_fault(fault: Fault) -> Fault:
    if isinstance(fault, bool) or not (isinstance(fault, int) and 100 <= fault <= 599 or fault in DROP_FAULTS):
        raise ValueError(f"a fault is an HTTP status 100..599 or one of {DROP_FAULTS}, got {fault!r}")
    return fault


@dataclass
class _Script:
    failures: Deque[Tuple[Fault, Optional[str]]] = field(default_factory=deque)
    outage_status: Optional[int] = None
    chaos_rate: float = 0.0
    chaos_faults: Sequence[Fault] = ()
    chaos_random: random.Random = field(default_factory=random.Random)
    delay: float = 0.0
    slow_seconds: float = 1.0
    max_body_bytes: Optional[int] = None
    reject: Optional[Callable[[Any], Union[bool, int]]] = None
    reject_status: int = 422


class IngestServer:
    """An HTTP ingest endpoint on 127.0.0.1 that records what it accepts.

    :param port: the TCP port; 0 picks a free one (see ``url``).
    :param api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
    :param auth_header: another header name (e.g. ``X-API-Key``) that must carry the bare key instead.
    :param record_to: an open text file that receives each accepted payload as a JSON line.
    :param ssl_context: serve HTTPS with this server-side context (with ``verify_mode``
        ``CERT_REQUIRED``, clients without a certificate it trusts are refused in the handshake).
    :param host: the address to bind; one that is not loopback needs an ``api_key``.
    :param authorize: instead of ``api_key``, a function of the request headers (lower-case
        names) that says whether to accept it; refused requests get 401 (rotating tokens).
    :param path: the one path that takes ``POST`` (404 elsewhere, 405 to other methods).
    :param request_timeout: seconds a request may take to arrive whole, from the moment the
        server waits for it (so an idle keep-alive connection is closed after it too).
    :param max_connections: connections served at once; more are answered 503 and closed.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        api_key: Optional[str] = None,
        record_to: Optional[IO[str]] = None,
        ssl_context: Optional[ssl.SSLContext] = None,
        auth_header: str = "Authorization",
        authorize: Optional[Callable[[Dict[str, str]], bool]] = None,
        path: str = DEFAULT_PATH,
        request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
    ) -> None:
        if not isinstance(path, str) or not path.startswith("/") or not path.isprintable() or " " in path:
            raise ValueError(f"path must be a URL path starting with '/', such as '/v1/ingest', got {path!r:.100}")
        self._path = path
        self._request_timeout = _validate.number("request_timeout", request_timeout, 0.0, allow_equal=False)
        self._max_connections = _validate.integer("max_connections", max_connections, 1)
        if api_key is not None and authorize is not None:
            raise ValueError("give api_key or authorize, not both")
        if api_key is None and authorize is None and not is_loopback(host):
            raise ValueError(
                f"host {host!r} is not loopback: require a key (api_key, or the command's --api-key-env), "
                "or anyone who can reach it may post"
            )
        self._host = host
        self._port = port
        self._api_key = api_key
        self._record_to = record_to
        self._ssl_context = ssl_context
        self._auth_header = auth_header.lower()
        self._authorize = authorize
        self._answers: Dict[str, bytes] = {}
        self._in_progress: Set[str] = set()
        self.duplicates = 0
        self._lock = threading.Lock()
        self._script = _Script()
        self._server: Optional[_DoorServer] = None
        self._thread: Optional[threading.Thread] = None
        self.batches: List[List[Any]] = []
        self.requests: List[RecordedRequest] = []

    @property
    def port(self) -> int:
        """The bound port (after ``start``)."""
        return self._port

    @property
    def url(self) -> str:
        """The ingest URL to give an uploader."""
        scheme = "https" if self._ssl_context is not None else "http"
        return f"{scheme}://{self._host}:{self._port}{self._path}"

    @property
    def items(self) -> List[Any]:
        """Every accepted payload, in arrival order."""
        with self._lock:
            return [item for batch in self.batches for item in batch]

    def fail_next(self, status: Fault, times: int = 1, retry_after: Optional[str] = None) -> None:
        """Answer the next ``times`` requests with ``status`` (and an optional Retry-After),
        or fail them with "reset", "lost" or "slow"."""
        _check_fault(status)
        with self._lock:
            self._script.failures.extend([(status, retry_after)] * times)

    def set_outage(self, status: Optional[int]) -> None:
        """Answer every request with ``status`` until called again with None."""
        with self._lock:
            self._script.outage_status = status

    def set_chaos(self, rate: float, faults: Sequence[Fault], seed: int = 0) -> None:
        """Fail a random ``rate`` share of requests with a fault drawn from ``faults``."""
        with self._lock:
            self._script.chaos_rate = rate
            self._script.chaos_faults = tuple(_check_fault(fault) for fault in faults)
            self._script.chaos_random = random.Random(seed)

    def set_delay(self, seconds: float, slow_seconds: Optional[float] = None) -> None:
        """Wait ``seconds`` before answering each request; ``slow_seconds`` is the wait of a "slow" fault."""
        with self._lock:
            self._script.delay = seconds
            if slow_seconds is not None:
                self._script.slow_seconds = slow_seconds

    def set_limits(
        self,
        max_body_bytes: Optional[int] = None,
        reject: Optional[Callable[[Any], Union[bool, int]]] = None,
        reject_status: int = 422,
    ) -> None:
        """Answer 413 to bodies over ``max_body_bytes`` (uncompressed), and refuse the items
        for which ``reject(item)`` is true (or a status): with a 4xx (``reject_status`` for
        true) the whole batch is refused; with a 2xx the others are accepted and the
        refused ones named in ``"rejected"``."""
        with self._lock:
            self._script.max_body_bytes = max_body_bytes
            self._script.reject = reject
            self._script.reject_status = reject_status

    def start(self) -> "IngestServer":
        """Bind and serve in a background thread; the same port is reused after ``stop``."""
        watchdog = _Watchdog(self._request_timeout)
        server = _DoorServer((self._host, self._port), self._handler_class(watchdog), self._max_connections, watchdog)
        if self._ssl_context is not None:
            # Handshakes run in the handler threads: a slow or refused client does not hold
            # up the accepting thread.
            server.socket = self._ssl_context.wrap_socket(
                server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ingest-server", daemon=True
        )
        self._thread.start()
        watchdog.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket, so that connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.watchdog.stop()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "IngestServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _decide(self, headers: Dict[str, str]) -> Tuple[Fault, Optional[str]]:
        """Choose the answer before the body is read: a fault, 200, or "replay" for a key
        already answered. A key still being processed gets 409, as idempotent APIs answer."""
        with self._lock:
            script = self._script
            if not self._authorized(headers):
                return 401, None
            if script.outage_status is not None:
                return script.outage_status, None
            key = headers.get("idempotency-key")
            if key is not None and key in self._answers:
                return "replay", None
            if key is not None and key in self._in_progress:
                return 409, None
            fault: Fault = 200
            retry_after = None
            if script.failures:
                fault, retry_after = script.failures.popleft()
            elif script.chaos_rate and script.chaos_random.random() < script.chaos_rate:
                fault = script.chaos_random.choice(script.chaos_faults)
            if key is not None and fault in (200, "lost", "slow"):
                self._in_progress.add(key)
            return fault, retry_after

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self.requests.append(request)

    def _abandon(self, headers: Dict[str, str]) -> None:
        """A request whose body never arrived whole: its key is no longer in progress."""
        with self._lock:
            self._in_progress.discard(headers.get("idempotency-key") or "")

    def _authorized(self, headers: Dict[str, str]) -> bool:
        if self._authorize is not None:
            return bool(self._authorize(headers))
        if self._api_key is None:
            return True
        expected = f"Bearer {self._api_key}" if self._auth_header == "authorization" else str(self._api_key)
        # Compared in constant time, so that the time taken tells nothing of the key.
        return hmac.compare_digest(headers.get(self._auth_header, "").encode(), expected.encode())

    def _accept(self, headers: Dict[str, str], body: bytes) -> Tuple[int, bytes]:
        key = headers.get("idempotency-key")
        try:
            return self._process(key, headers, body)
        finally:
            with self._lock:
                self._in_progress.discard(key or "")

    def _process(self, key: Optional[str], headers: Dict[str, str], body: bytes) -> Tuple[int, bytes]:
        with self._lock:
            script = self._script
            limit, reject, reject_status = script.max_body_bytes, script.reject, script.reject_status
        limit = MAX_REQUEST_BYTES if limit is None else limit
        if headers.get("content-encoding", "").lower() == "gzip":
            try:
                decoded = _gunzip(body, limit)
            except zlib.error:
                return 400, b'{"error": "body is not gzip"}'
            if decoded is None:
                return 413, b'{"error": "body too large"}'
            body = decoded
        if len(body) > limit:
            return 413, b'{"error": "body too large"}'
        try:
            batch = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, b'{"error": "body is not JSON"}'
        if not isinstance(batch, list):
            return 400, b'{"error": "body is not a JSON array"}'
        verdicts = [(index, reject(item) if reject is not None else False) for index, item in enumerate(batch)]
        statuses = {index: reject_status if verdict is True else int(verdict) for index, verdict in verdicts if verdict}
        bad = sorted(statuses)
        refusal = min((status for status in statuses.values() if not 200 <= status < 300), default=None)
        if refusal is not None:
            return refusal, orjson.dumps({"error": f"{len(bad)} invalid items"})
        skip = set(bad)
        accepted = [item for index, item in enumerate(batch) if index not in skip]
        answer: Dict[str, Any] = {"accepted": len(accepted)}
        if bad:
            answer.update(rejected=bad, error="invalid item")
        reply = orjson.dumps(answer)
        with self._lock:
            self.batches.append(accepted)
            if key is not None:
                self._answers[key] = reply
            if self._record_to is not None:
                for item in accepted:
                    self._record_to.write(orjson.dumps(item).decode() + "\n")
                self._record_to.flush()
        return (statuses[bad[0]] if bad else 200), reply

    def _handler_class(self, watchdog: _Watchdog) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # The reply goes out in two writes (headers, body); with Nagle's algorithm the
            # second waits for the client's delayed ACK, about 40 ms per request.
            disable_nagle_algorithm = True
            # Each read and write; the watchdog bounds a whole request.
            timeout = server._request_timeout

            def handle(self) -> None:
                if isinstance(self.connection, ssl.SSLSocket):
                    watchdog.watch(self.connection)
                    try:
                        self.connection.do_handshake()
                    except (ssl.SSLError, OSError):
                        # As servers linger on close: the alert that says why (a missing or
                        # untrusted client certificate) reaches the client before the socket
                        # closes, instead of being lost to a reset.
                        time.sleep(0.2)
                        self.close_connection = True
                        return
                super().handle()

            def handle_one_request(self) -> None:
                watchdog.watch(self.connection)
                try:
                    super().handle_one_request()
                finally:
                    watchdog.release(self.connection)

            def _check_door(self, method: str) -> bool:
                """Answer a wrong path, a wrong method or a missing credential from the
                request line and headers alone; True when the request may go on."""
                if watchdog.was_cut(self.connection):  # what came before the cut is no request
                    self.close_connection = True
                elif urlsplit(self.path).path != server._path:
                    self._refuse(404, b'{"error": "no such path"}')
                elif method != "POST":
                    self._refuse(405, b'{"error": "method not allowed"}', Allow="POST")
                elif not server._authorized({key.lower(): value for key, value in self.headers.items()}):
                    self._refuse(401, b'{"error": "unauthorized"}')
                else:
                    return True
                return False

            def _not_allowed(self) -> None:
                self._check_door(self.command)

            # 405 on the ingest path, 404 elsewhere; other methods get http.server's 501.
            do_GET = do_HEAD = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed  # noqa: N815

            def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
                if not self._check_door("POST"):
                    return None
                headers = {key.lower(): value for key, value in self.headers.items()}
                length = (self.headers.get("Content-Length") or "0").strip()
                if not (length.isascii() and length.isdigit()):
                    return self._refuse(400, b'{"error": "bad Content-Length"}')
                with server._lock:
                    limit = server._script.max_body_bytes
                identity = headers.get("content-encoding", "identity").lower() == "identity"
                if int(length) > MAX_REQUEST_BYTES or (identity and limit is not None and int(length) > limit):
                    return self._refuse(413, b'{"error": "body too large"}')
                fault, retry_after = server._decide(headers)
                body = b""
                if fault != "reset":
                    body = self.rfile.read(int(length))
                    if len(body) < int(length) or watchdog.was_cut(self.connection):  # gone, or cut off
                        server._abandon(headers)
                        self.close_connection = True
                        return None
                watchdog.release(self.connection)
                with server._lock:
                    delay = server._script.slow_seconds if fault == "slow" else server._script.delay
                if delay:
                    time.sleep(delay)
                reply = b"{}"
                status = fault
                if fault == "replay":
                    with server._lock:
                        server.duplicates += 1
                        reply = server._answers[headers["idempotency-key"]]
                    status = 200
                elif fault in (200, "lost", "slow"):
                    status, reply = server._accept(headers, body)
                if fault in ("reset", "lost"):
                    server._record(RecordedRequest(self.path, headers, body, 0, self._client_serial()))
                    self.close_connection = True
                    return None
                assert isinstance(status, int)
                server._record(RecordedRequest(self.path, headers, body, status, self._client_serial()))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(reply)
                return None

            def _client_serial(self) -> Optional[str]:
                getpeercert = getattr(self.connection, "getpeercert", None)
                cert = getpeercert() if getpeercert is not None else None
                return str(cert["serialNumber"]) if cert else None

            def _refuse(self, status: int, reply: bytes, **extra: str) -> None:
                """Answer without reading the body, and close: the rest of the stream is unusable."""
                headers = {key.lower(): value for key, value in self.headers.items()}
                server._record(RecordedRequest(self.path, headers, b"", status, self._client_serial()))
                self.close_connection = True
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.send_header("Connection", "close")
                for name, value in extra.items():
                    self.send_header(name, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: the tests and the demo report what matters

        return Handler
