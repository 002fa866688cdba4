"""HTTPCloudUploader against careless and hostile endpoints (real loopback servers): keys
that cannot leak in any echoed form, answers read within a bound, a deadline for the whole
request, and answers that cannot break the failure classification."""

import html
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator, List

import pytest
import slowdns

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, SyncWorker, UploadError, UploadResult
from pyv_edge_agent.cloud_sync.delivery.http.uploader import parse_retry_after
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

# Visible ASCII with the characters that each escaping scheme changes: / " ' \ and %.
SECRET = "pyv/live'SE\"CR\\ET%9f8e"
ESC = "\x1b]0;owned\x07\x1b[2J"  # a terminal title change and a screen wipe

Answer = Callable[[BaseHTTPRequestHandler], None]


class ScriptedServer:
    """A loopback HTTP server whose every POST is answered by ``answer(handler)``; the
    request body, as sent, is ``handler.body``."""

    def __init__(self, answer: Answer) -> None:
        script = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                self.body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                script.answer(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.answer = answer
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Callable[[Answer], ScriptedServer]]:
    servers: List[ScriptedServer] = []

    def start(answer: Answer) -> ScriptedServer:
        servers.append(ScriptedServer(answer))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def reply(handler: BaseHTTPRequestHandler, status: int, body: bytes, **headers: str) -> None:
    handler.send_response(status)
    for name, value in headers.items():
        handler.send_header(name.replace("_", "-"), value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


# -- keys that could leak ------------------------------------------------------------------


@pytest.mark.parametrize("key", [SECRET + "\n", SECRET + "\r\nX-Other: 1", "two\nlines", "sp ace", "tab\tbed", "é" * 8])
def test_a_key_that_is_not_visible_ascii_is_refused_unshown(key: str) -> None:
    with pytest.raises(ValueError, match="api_key") as excinfo:
        HTTPCloudUploader("http://127.0.0.1:9/x", key)
    assert key.strip() not in str(excinfo.value) and "position" in str(excinfo.value)


def test_every_failure_on_the_request_path_is_a_scrubbed_upload_error(server: IngestServer) -> None:
    uploader = HTTPCloudUploader(server.url, "test-key", timeout=5)
    # http.client refuses the header value and quotes it; here the quoted value holds the key.
    with pytest.raises(UploadError) as excinfo:
        uploader.post_encoded_batch(b"[1]", 1, idempotency_key="k\r\n" + "test-key")
    assert "test-key" not in str(excinfo.value) and excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def _echo_forms(key: str) -> List[str]:
    return [
        json.dumps({"you sent": key}).replace("/", "\\/"),  # JSON with the solidus escaped
        "".join(f"\\u{ord(c):04x}" for c in key),  # every character a JSON \u escape
        urllib.parse.quote(key, safe=""),  # percent-encoded, as in a logged URL
        urllib.parse.quote(urllib.parse.quote(key, safe=""), safe=""),  # twice
        repr({"authorization": "Bearer " + key}),  # a Python repr of the headers
        json.dumps(json.dumps(key)),  # JSON inside JSON
    ]


@pytest.mark.parametrize("form", range(6))
@pytest.mark.parametrize("status", [200, 422])
def test_echoes_of_the_key_in_any_form_are_scrubbed(
    db_path: str, scripted: Callable[[Answer], ScriptedServer], caplog: pytest.LogCaptureFixture, form: int, status: int
) -> None:
    echo = ESC + _echo_forms(SECRET)[form]
    if status == 200:  # a 2xx naming the rejected items, with the echo as its error text
        body = json.dumps({"rejected": [0], "error": echo}).encode()
    else:
        body = ("bad request; " + echo).encode()
    server = scripted(lambda handler: reply(handler, status, body))
    uploader = HTTPCloudUploader(server.url, SECRET, timeout=5)
    with CloudSyncQueue(db_path, max_attempts=1) as queue, caplog.at_level(logging.DEBUG):
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(uploader) == 0
        letters = queue.dead_letters()
        shown = [repr(queue.get_stats()), repr(letters)] + [record.getMessage() for record in caplog.records]
    assert len(letters) == 1 and letters[0].last_status == status and letters[0].last_error
    for text in shown + [letters[0].last_error]:
        # No piece of the key in any form: its middle raw, or its first letter escaped.
        assert "live" not in text and "9f8e" not in text and "u0070" not in text.lower(), text
        assert "\x1b" not in text and "\x07" not in text, text


HTML_SECRET = "pyv&live<SE>CR\"ET'9f8e"


@pytest.mark.parametrize("form", ["html", "html twice", "html without quotes"])
@pytest.mark.parametrize("status", [200, 422])
def test_html_entity_echoes_of_the_key_are_scrubbed(
    db_path: str, scripted: Callable[[Answer], ScriptedServer], caplog: pytest.LogCaptureFixture, form: str, status: int
) -> None:
    """A server that shows the request as HTML: ``&amp;``, ``&lt;``, ``&gt;``, ``&quot;``."""
    echo = {
        "html": html.escape(HTML_SECRET),
        "html twice": html.escape(html.escape(HTML_SECRET)),
        "html without quotes": html.escape(HTML_SECRET, quote=False),
    }[form]
    echo = f"<p>your key {echo} is not valid here</p>"
    if status == 200:
        body = json.dumps({"rejected": [0], "error": echo}).encode()
    else:
        body = ("bad request; " + echo).encode()
    server = scripted(lambda handler: reply(handler, status, body))
    uploader = HTTPCloudUploader(server.url, HTML_SECRET, timeout=5, auth_header="X-API-Key")
    with CloudSyncQueue(db_path, max_attempts=1) as queue, caplog.at_level(logging.DEBUG):
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(uploader) == 0
        letters = queue.dead_letters()
        shown = [repr(queue.get_stats()), repr(letters)] + [record.getMessage() for record in caplog.records]
    assert len(letters) == 1 and letters[0].last_error and "is not valid here" in letters[0].last_error
    for text in shown + [letters[0].last_error]:
        assert "live" not in text and "9f8e" not in text and "SE&" not in text and "SE&gt;" not in text, text


def test_credentials_in_the_query_string_are_hidden(scripted: Callable[[Answer], ScriptedServer]) -> None:
    token = "sig-0123456789abcdef"

    def echo_path(handler: BaseHTTPRequestHandler) -> None:
        reply(handler, 500, f"no route for {handler.path}".encode())

    server = scripted(echo_path)
    uploader = HTTPCloudUploader(f"{server.url}?code={token}&v=2", "the-key", timeout=5)
    assert token not in repr(uploader) and "code=***" in uploader.endpoint
    with pytest.raises(UploadError) as excinfo:
        uploader.post_batch([{"a": 1}])
    assert excinfo.value.status == 500 and "no route for /v1" in str(excinfo.value)
    assert token not in str(excinfo.value) and urllib.parse.quote(token) not in str(excinfo.value)


def test_urllib3_debug_log_hides_a_query_string_credential(
    scripted: Callable[[Answer], ScriptedServer], caplog: pytest.LogCaptureFixture
) -> None:
    token = "sig-0123456789abcdef"
    server = scripted(lambda handler: reply(handler, 200, b"{}"))
    uploader = HTTPCloudUploader(f"{server.url}?code={token}&v=2", "the-key", timeout=5)
    with caplog.at_level(logging.DEBUG):
        assert uploader.post_batch([{"a": 1}]) is True
    uploader.close()
    lines = [record.getMessage() for record in caplog.records if record.name.startswith("urllib3")]
    assert any("POST /v1?code=***" in line for line in lines), lines
    assert all(token not in line for line in lines), lines


# -- settings refused when the uploader is made -------------------------------------------


@pytest.mark.parametrize("header", ["Host", "content-type", "Content-Length", "Content-Encoding",
                                    "Transfer-Encoding", "Connection", "Idempotency-Key"])  # fmt: skip
def test_an_auth_header_the_uploader_writes_itself_is_refused(header: str) -> None:
    with pytest.raises(ValueError, match="auth_header"):
        HTTPCloudUploader("http://127.0.0.1:9/x", "key", auth_header=header)


def test_a_missing_ca_file_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="ca_certs"):
        HTTPCloudUploader("https://127.0.0.1/x", "key", ca_certs=os.path.join(tmp_path, "missing.pem"))


@pytest.mark.parametrize("port", ["0", "65536", "99999999"])
def test_a_port_out_of_range_is_refused_without_the_password(port: str) -> None:
    with pytest.raises(ValueError, match="endpoint") as excinfo:
        HTTPCloudUploader(f"https://user:pass-w0rd@ingest.example:{port}/x", "key")
    assert "pass-w0rd" not in str(excinfo.value)
    with pytest.raises(ValueError, match="port"):
        HTTPCloudUploader(f"https://ingest.example:{port}/x", "key")


# -- answers that could break classification -----------------------------------------------


@pytest.mark.parametrize("value", ["²", "١٢", "12\u0663", " 7 "])
def test_retry_after_takes_ascii_digits_only(value: str) -> None:
    assert parse_retry_after(value) == (7.0 if value.strip() == "7" else None)


def test_a_413_with_a_strange_retry_after_is_still_split(db_path: str, server: IngestServer) -> None:
    server.fail_next(413, retry_after="²")
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": 0}, {"i": 1}])
        assert queue.maybe_flush(HTTPCloudUploader(server.url, "test-key", timeout=5)) == 2
    assert [len(batch) for batch in server.batches] == [1, 1]


def test_a_redirect_names_its_redacted_target_and_keeps_the_data(
    db_path: str, scripted: Callable[[Answer], ScriptedServer]
) -> None:
    target = "https://elsewhere.example/in?token=tok-0123456789" + ESC
    server = scripted(lambda handler: reply(handler, 307, b"", Location=target))
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(HTTPCloudUploader(server.url, "the-key", timeout=5)) == 0
        assert queue.pending_count() == 1
        error = queue.get_stats()["last_error"]
    assert "307" in error and "https://elsewhere.example/in?token=***" in error
    assert "tok-0123456789" not in error and "\x1b" not in error


# -- a long partial-success answer ----------------------------------------------------------


def test_a_long_partial_success_answer_keeps_every_refused_item(
    db_path: str, scripted: Callable[[Answer], ScriptedServer]
) -> None:
    """500 items, every odd one refused with a ~100-byte reason in a 2xx answer longer
    than 64 KiB (it was cut, failed to parse, and all 500 were acked as delivered)."""
    stored: List[int] = []
    sizes: List[int] = []

    def partial(handler: BaseHTTPRequestHandler) -> None:
        body = handler.body  # type: ignore[attr-defined]
        if handler.headers.get("Content-Encoding") == "gzip":
            body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
        items = json.loads(body)
        refused = [index for index, item in enumerate(items) if item["n"] % 2]
        stored.extend(item["n"] for item in items if not item["n"] % 2)
        reason = "failed validation: odd values are not accepted here".ljust(90, ".")
        details = [
            {
                "index": index,
                "loc": ["body", index, "n"],
                "input": items[index],
                "type": "value_error",
                "url": "https://errors.example/v1/errors/value_error#odd-values",
                "reason": f"item {items[index]['n']} {reason}",
            }
            for index in refused
        ]
        answer = json.dumps({"accepted": len(items) - len(refused), "rejected": refused, "errors": details}).encode()
        sizes.append(len(answer))
        reply(handler, 200, answer, Content_Type="application/json")

    server = scripted(partial)
    uploader = HTTPCloudUploader(server.url, "the-key", timeout=20)
    with CloudSyncQueue(db_path, max_batch_items=500, max_attempts=1) as queue:
        queue.enqueue_many([{"n": n} for n in range(500)])
        queue.maybe_flush(uploader)
        pending = queue.pending_count()
        dead = [letter.payload["n"] for letter in queue.dead_letters(1000)]
        sent_total = queue.get_stats()["messages_sent_total"]
    uploader.close()
    assert sizes and sizes[0] > 64 * 1024
    assert sorted(stored) == list(range(0, 500, 2))
    assert sorted(dead) == list(range(1, 500, 2)) and pending == 0, "a refused item was acked as delivered"
    assert sent_total == len(stored)


@pytest.mark.parametrize("cut", ["gzip stream", "content-length"])
def test_a_2xx_answer_cut_short_is_not_taken_as_accepting_everything(
    db_path: str, scripted: Callable[[Answer], ScriptedServer], caplog: pytest.LogCaptureFixture, cut: str
) -> None:
    answer = json.dumps({"rejected": [1], "error": "item 1 is invalid"}).encode()

    def cut_short(handler: BaseHTTPRequestHandler) -> None:
        if cut == "gzip stream":  # whole as sent, but the compressed stream stops halfway
            compressed = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
            body = (compressed.compress(answer) + compressed.flush())[:-12]
            reply(handler, 200, body, Content_Encoding="gzip", Connection="close")
        else:  # fewer bytes than announced, then the connection closes
            handler.send_response(200)
            handler.send_header("Content-Length", str(len(answer) + 100))
            handler.send_header("Connection", "close")
            handler.end_headers()
            handler.wfile.write(answer)
            handler.close_connection = True

    server = scripted(cut_short)
    with CloudSyncQueue(db_path) as queue, caplog.at_level(logging.WARNING):
        queue.enqueue_many([{"n": 0}, {"n": 1}])
        assert queue.maybe_flush(HTTPCloudUploader(server.url, "the-key", timeout=5)) == 0
        assert queue.pending_count() == 2 and queue.get_stats()["messages_sent_total"] == 0
        last_error = queue.get_stats()["last_error"]
    # urllib3 2 itself refuses a body shorter than announced ("IncompleteRead"); 1.26 does not.
    assert "could not be read to its end" in last_error or (cut == "content-length" and "IncompleteRead" in last_error)
    assert "could not be read to its end" in caplog.text or cut == "content-length"


# -- a deadline for the whole request --------------------------------------------------------


def test_timeout_is_a_deadline_for_the_whole_request(scripted: Callable[[Answer], ScriptedServer]) -> None:
    """A server trickling its answer a byte at a time, each well within the timeout, is cut
    off: the uploader hangs up before the server has finished."""
    finished = threading.Event()
    cut_off = threading.Event()

    def trickle(handler: BaseHTTPRequestHandler) -> None:
        handler.send_response(200)
        handler.send_header("Content-Length", "40")
        handler.end_headers()
        try:
            for _ in range(40):
                handler.wfile.write(b" ")
                handler.wfile.flush()
                time.sleep(0.2)  # 8 s in all, each byte 5 times faster than the timeout
            finished.set()
        except OSError:
            cut_off.set()

    server = scripted(trickle)
    uploader = HTTPCloudUploader(server.url, "the-key", timeout=1.0)
    with pytest.raises(UploadError, match="within timeout"):
        uploader.post_batch([{"a": 1}])
    assert cut_off.wait(30) and not finished.is_set()


def test_timeout_bounds_name_resolution_too() -> None:
    """A DNS server that answers a name after 20 s (in namespaces of their own): under
    timeout=1 the post fails at its deadline, before that answer comes (it used to wait
    for the answer, then fail); a name answered in 0.5 s is resolved and posted to."""
    why = slowdns.unshare_error()
    if why is not None:
        pytest.skip(why)
    late, quick, counts = slowdns.run([("slow.ingest.test", 1.0), ("fast.ingest.test", 15.0)])
    assert late["accepted"] is False and "within timeout=1 s" in late["error"], late
    assert late["resolved_first"] is False, "the post waited for the name to resolve, past its deadline"
    assert quick["accepted"] is True and quick["resolved_first"] is True, quick
    assert counts == {"stored": 1}


def test_an_uploader_slower_than_the_lease_is_refused(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, lease_seconds=30.0) as queue:
        queue.enqueue({"a": 1})
        with pytest.raises(ValueError, match="lease_seconds") as excinfo:
            queue.maybe_flush(HTTPCloudUploader(server.url, "test-key", timeout=30.0))
        assert "timeout" in str(excinfo.value)
        assert queue.pending_count() == 1 and queue.get_stats()["in_flight"] == 0 and server.requests == []
        assert queue.maybe_flush(HTTPCloudUploader(server.url, "test-key", timeout=29.0)) == 1
        with pytest.raises(ValueError, match="lease_seconds"):  # refused before its thread starts
            SyncWorker(queue, HTTPCloudUploader(server.url, "test-key", timeout=45.0))


# -- answers read within a bound --------------------------------------------------------------

_MEMORY_PROBE = r"""
import gzip, resource, sys, threading, zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pyv_edge_agent.cloud_sync import HTTPCloudUploader, UploadError

MIB = 1024 * 1024
kind = sys.argv[1]
compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
bomb = b"".join(compressor.compress(bytes(MIB)) for _ in range(64)) + compressor.flush()
del compressor

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(500 if self.path.endswith("hostile") else 200)
        if self.path.endswith("hostile") and kind == "gzip":
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)
        elif self.path.endswith("hostile"):
            self.send_header("Content-Length", str(64 * MIB))
            self.end_headers()
            try:
                for _ in range(64 * 16):
                    self.wfile.write(bytes(MIB // 16))
            except OSError:
                pass
        else:
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")
    def log_message(self, *args):
        pass

httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
httpd.daemon_threads = True
threading.Thread(target=httpd.serve_forever, daemon=True).start()
base = "http://127.0.0.1:%d/" % httpd.server_address[1]
HTTPCloudUploader(base + "warm", "key", timeout=20).post_batch([{"a": 1}])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    HTTPCloudUploader(base + "hostile", "key", timeout=20).post_batch([{"a": 1}])
except UploadError as exc:
    assert exc.status == 500, exc
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print((after - before) * 1024)
"""


@pytest.mark.parametrize("kind", ["gzip", "plain"])
def test_a_huge_or_bomb_answer_costs_little_memory(kind: str) -> None:
    """A 64 KiB gzip bomb (64 MiB decoded) or a 64 MiB body raises the peak RSS of a fresh
    interpreter by less than 8 MiB."""
    result = subprocess.run(
        [sys.executable, "-c", _MEMORY_PROBE, kind], capture_output=True, text=True, timeout=120, check=True
    )
    growth = int(result.stdout.split()[-1])
    assert growth < 8 * 1024 * 1024, f"peak RSS grew by {growth / 1048576:.1f} MiB"


# -- the reference server --------------------------------------------------------------------


def _raw_post(port: int, content_length: str) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\n"
            f"Content-Length: {content_length}\r\n\r\n[]".encode()
        )
        return sock.recv(4096)


@pytest.mark.parametrize("length, status", [("-1", b"400"), ("abc", b"400"), (str(2**40), b"413")])
def test_the_ingest_server_answers_a_bad_content_length(server: IngestServer, length: str, status: bytes) -> None:
    answer = _raw_post(server.port, length)
    assert answer.split(b" ")[1] == status and server.items == []


@pytest.mark.parametrize("how", ["raise", "result"])
def test_a_custom_uploader_passing_on_server_text_stores_it_inert(db_path: str, how: str) -> None:
    class PassesOn:
        def post_batch(self, payloads: List[Any]) -> Any:
            if how == "raise":
                raise UploadError("broker said: " + ESC + "no", status=422)
            return UploadResult(rejected=[0], error="broker said: " + ESC + "no")

    with CloudSyncQueue(db_path, max_attempts=1) as queue:
        queue.enqueue({"a": 1})
        queue.maybe_flush(PassesOn())
        (letter,) = queue.dead_letters()
    assert letter.last_error is not None and "broker said" in letter.last_error
    assert "\x1b" not in letter.last_error and "\x07" not in letter.last_error


def test_the_ingest_server_bounds_a_decompressed_body(server: IngestServer) -> None:
    """A gzip body that decodes to more than the server takes is refused with 413 (it was
    inflated whole, then refused as not JSON)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    chunk = bytes(1024 * 1024)
    bomb = b"".join(compressor.compress(chunk) for _ in range(65))  # 65 MiB, over the 64 MiB limit
    bomb += compressor.flush()
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
        sock.sendall(
            f"POST /v1/ingest HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-key\r\nContent-Encoding: gzip\r\n"
            f"Content-Length: {len(bomb)}\r\n\r\n".encode()
            + bomb
        )
        assert sock.recv(4096).split(b" ")[1] == b"413"
    assert server.items == []
