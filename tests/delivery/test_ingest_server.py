"""The reference ingest server at its door, with real sockets: what it refuses from the
headers alone, how long a request may take, how many connections it serves at once, and
the one path and method it takes."""

import socket
import threading
import time
from typing import Any, Iterator, List, Tuple

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, UploadError
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "door-key-0123"
MIB = 1024 * 1024


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def _read_answer(sock: socket.socket) -> bytes:
    """What the server sends before it closes or goes quiet (a bounded wait)."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def _send_head(port: int, head: str, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode() + body)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (anything it sends first is skipped)."""
    sock.settimeout(within)
    end = time.monotonic() + within
    try:
        while time.monotonic() < end:
            if not sock.recv(4096):
                return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    return False


@pytest.fixture
def guarded() -> Iterator[IngestServer]:
    with IngestServer(api_key=KEY, request_timeout=1.0, max_connections=8) as server:
        yield server


# -- refused from the headers ------------------------------------------------------------------


def test_a_big_body_without_credentials_gets_401_before_it_is_read(server: IngestServer) -> None:
    """Headers announcing 60 MiB and no key: 401 comes back while the client has sent only
    its first 64 KiB (the server read the whole body before answering)."""
    head = f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: text/json\r\nContent-Length: {60 * MIB}\r\n\r\n"
    with _send_head(server.port, head, b"[" + b" " * (64 * 1024)) as sock:
        answer = _read_answer(sock)
        assert _status(answer) == 401 and b"connection: close" in answer.lower()
        assert _closed_by_server(sock, 10)
    assert [(request.status, request.body) for request in server.requests] == [(401, b"")]


def test_a_body_over_the_limit_gets_413_before_it_is_read(server: IngestServer) -> None:
    server.set_limits(max_body_bytes=1000)
    head = f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\nContent-Length: {10 * MIB}\r\n"
    head += "\r\n"
    with _send_head(server.port, head, b"[1") as sock:
        assert _status(_read_answer(sock)) == 413
    assert server.items == []


def test_the_uploader_sees_the_401_to_a_big_batch(server: IngestServer) -> None:
    uploader = HTTPCloudUploader(server.url, "wrong-key", timeout=20, gzip_min_bytes=None)
    with pytest.raises(UploadError) as excinfo:
        uploader.post_encoded_batch(b"[" + b" " * (16 * MIB) + b"1]", 1)
    uploader.close()
    assert excinfo.value.status == 401 and server.items == []


# -- slow and idle requests, and how many at once ----------------------------------------------


def _handler_threads() -> int:
    return sum(1 for thread in threading.enumerate() if thread.name.startswith("ingest-server-request"))


def test_half_sent_requests_are_bounded_then_timed_out(guarded: IngestServer, db_path: str) -> None:
    """30 clients that send half a request hold at most ``max_connections`` threads; those
    turned away get 503, the others are closed when ``request_timeout`` passes, and the
    server then serves a real upload."""
    socks: List[socket.socket] = []
    answers: List[Tuple[int, bool]] = []
    most = 0
    try:
        for _ in range(30):
            socks.append(_send_head(guarded.port, "POST /v1/ingest HTTP/1.1\r\nHost: x\r\nContent-Le"))
            most = max(most, _handler_threads())
        for sock in socks:
            most = max(most, _handler_threads())
            sock.settimeout(15)
            try:
                first = sock.recv(4096)
            except ConnectionResetError:
                first = b""
            answers.append((_status(first), _closed_by_server(sock, 15) if first else True))
    finally:
        for sock in socks:
            sock.close()
    assert 1 <= most <= 8
    assert 503 in [status for status, _ in answers] and all(closed for _, closed in answers), answers
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(HTTPCloudUploader(guarded.url, KEY, timeout=5)) == 1


def test_a_request_trickling_in_is_closed_at_its_deadline(guarded: IngestServer) -> None:
    """One header byte every 0.1 s, each well within any per-read timeout: the server hangs
    up once ``request_timeout`` has passed since the request began."""
    request = f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nX-Padding: {'p' * 400}\r\n"
    closed = False
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        try:
            for char in request:  # 40 s if nothing stopped it
                sock.sendall(char.encode())
                time.sleep(0.1)
        except OSError:
            closed = True
        closed = closed or _closed_by_server(sock, 1)
    assert closed
    assert guarded.requests == []


def test_an_idle_connection_is_closed_after_request_timeout(guarded: IngestServer) -> None:
    with socket.create_connection(("127.0.0.1", guarded.port), timeout=10) as sock:
        assert _closed_by_server(sock, 15)


@pytest.mark.parametrize(
    "option, value, error",
    [
        ("request_timeout", 0, ValueError),
        ("request_timeout", "5", TypeError),
        ("max_connections", 0, ValueError),
        ("max_connections", 2.5, TypeError),
        ("path", "v1/ingest", ValueError),
    ],
)
def test_bad_door_options_are_refused_naming_the_argument(option: str, value: Any, error: type) -> None:
    with pytest.raises(error, match=option):
        IngestServer(**{option: value})


# -- one path, one method ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, status",
    [("POST", "/v1/ingestt", 404), ("POST", "/", 404), ("GET", "/v1/ingest", 405), ("PUT", "/v1/ingest", 405),
     ("DELETE", "/v1/ingest", 405), ("GET", "/v2/ingest", 404)],
)  # fmt: skip
def test_only_post_to_the_ingest_path_is_taken(server: IngestServer, method: str, path: str, status: int) -> None:
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\nContent-Length: 5\r\n\r\n"
    with _send_head(server.port, head, b"[1,2]") as sock:
        answer = _read_answer(sock)
    assert _status(answer) == status and server.items == []
    if status == 405:
        assert b"\r\nallow: post\r\n" in answer.lower()


def test_a_typo_in_the_endpoint_path_is_not_delivered(server: IngestServer, db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(HTTPCloudUploader(server.url + "s", "test-key", timeout=5)) == 0
        assert queue.pending_count() == 1 and "HTTP 404" in queue.get_stats()["last_error"]
    assert server.items == []


def test_the_path_can_be_chosen(db_path: str) -> None:
    with IngestServer(path="/api/telemetry") as server, CloudSyncQueue(db_path) as queue:
        assert server.url.endswith(":%d/api/telemetry" % server.port)
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(HTTPCloudUploader(server.url + "?v=2", "k", timeout=5)) == 1
