"""A reference ingest endpoint on loopback, used by the demo, the tests and operators.

It accepts ``POST`` bodies that are JSON arrays of payloads (optionally gzip-encoded),
records every accepted batch, and can be scripted to fail: the next N requests with a
status code (and ``Retry-After``), or every request while an outage is switched on.
"""

import gzip
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import IO, Any, Deque, Dict, List, Optional, Tuple

import orjson


@dataclass
class RecordedRequest:
    """One request as the server saw it."""

    path: str
    headers: Dict[str, str]
    body: bytes
    status: int


@dataclass
class _Script:
    failures: Deque[Tuple[int, Optional[str]]] = field(default_factory=deque)
    outage_status: Optional[int] = None


class IngestServer:
    """An HTTP ingest endpoint on 127.0.0.1 that records what it accepts.

    :param port: the TCP port; 0 picks a free one (see ``url``).
    :param api_key: when set, requests without ``Authorization: Bearer <api_key>`` get 401.
    :param record_to: an open text file that receives each accepted payload as a JSON line.
    """

    def __init__(
        self,
        port: int = 0,
        *,
        host: str = "127.0.0.1",
        api_key: Optional[str] = None,
        record_to: Optional[IO[str]] = None,
    ) -> None:
        self._host = host
        self._port = port
        self._api_key = api_key
        self._record_to = record_to
        self._lock = threading.Lock()
        self._script = _Script()
        self._server: Optional[ThreadingHTTPServer] = None
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
        return f"http://{self._host}:{self._port}/v1/ingest"

    @property
    def items(self) -> List[Any]:
        """Every accepted payload, in arrival order."""
        with self._lock:
            return [item for batch in self.batches for item in batch]

    def fail_next(self, status: int, times: int = 1, retry_after: Optional[str] = None) -> None:
        """Answer the next ``times`` requests with ``status`` (and an optional Retry-After)."""
        with self._lock:
            self._script.failures.extend([(status, retry_after)] * times)

    def set_outage(self, status: Optional[int]) -> None:
        """Answer every request with ``status`` until called again with None."""
        with self._lock:
            self._script.outage_status = status

    def start(self) -> "IngestServer":
        """Bind and serve in a background thread; the same port is reused after ``stop``."""
        server = ThreadingHTTPServer((self._host, self._port), self._handler_class())
        server.daemon_threads = True
        self._server = server
        self._port = server.server_address[1]
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="ingest-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket, so that connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def __enter__(self) -> "IngestServer":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _respond_status(self, headers: Dict[str, str]) -> Tuple[int, Optional[str]]:
        with self._lock:
            if self._api_key is not None and headers.get("authorization") != f"Bearer {self._api_key}":
                return 401, None
            if self._script.outage_status is not None:
                return self._script.outage_status, None
            if self._script.failures:
                return self._script.failures.popleft()
        return 200, None

    def _accept(self, request: RecordedRequest) -> Tuple[int, bytes]:
        body = request.body
        if request.headers.get("content-encoding", "").lower() == "gzip":
            body = gzip.decompress(body)
        try:
            batch = orjson.loads(body)
        except orjson.JSONDecodeError:
            return 400, b'{"error": "body is not JSON"}'
        if not isinstance(batch, list):
            return 400, b'{"error": "body is not a JSON array"}'
        with self._lock:
            self.batches.append(batch)
            if self._record_to is not None:
                for item in batch:
                    self._record_to.write(orjson.dumps(item).decode() + "\n")
                self._record_to.flush()
        return 200, orjson.dumps({"accepted": len(batch)})

    def _handler_class(self) -> type:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 - the name http.server dispatches to
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                headers = {key.lower(): value for key, value in self.headers.items()}
                status, retry_after = server._respond_status(headers)
                reply = b"{}"
                if status == 200:
                    status, reply = server._accept(RecordedRequest(self.path, headers, body, status))
                with server._lock:
                    server.requests.append(RecordedRequest(self.path, headers, body, status))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                if retry_after is not None:
                    self.send_header("Retry-After", retry_after)
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # quiet: the tests and the demo report what matters

        return Handler
