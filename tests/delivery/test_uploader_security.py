"""Transport security of HTTPCloudUploader: HTTPS verified by default, plain http only to
loopback or when allowed, a configurable auth header, and no secret anywhere it could leak."""

import logging
import shutil
import ssl
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Any, Iterator, Tuple

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, SyncWorker, UploadError
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

SECRET = "pyv_live_SECRET_9f8e7d"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> Tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key, made by the openssl command."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@pytest.fixture
def tls_server(tls_files: Tuple[str, str]) -> Iterator[IngestServer]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls_files)
    with IngestServer(api_key=SECRET, ssl_context=context) as server:
        yield server


@pytest.mark.parametrize("url", ["http://ingest.example/v1", "http://10.0.0.7:8080/x", "http://[2001:db8::1]/x"])
def test_plain_http_to_a_remote_host_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="allow_insecure_http"):
        HTTPCloudUploader(url, SECRET)
    assert HTTPCloudUploader(url, SECRET, allow_insecure_http=True).endpoint == url


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/x", "http://127.8.0.1/x", "http://localhost/x", "http://[::1]/x"])
def test_plain_http_to_loopback_is_allowed(url: str) -> None:
    assert HTTPCloudUploader(url, SECRET).endpoint == url


def test_https_verifies_the_certificate_by_default(db_path: str, tls_server: IngestServer) -> None:
    assert tls_server.url.startswith("https://")
    with CloudSyncQueue(db_path, retry_base_seconds=0.0) as queue:
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(HTTPCloudUploader(tls_server.url, SECRET, timeout=5)) == 0
        assert queue.pending_count() == 1 and tls_server.items == []  # an unknown CA is a failure, data kept
        assert "CERTIFICATE_VERIFY_FAILED" in queue.get_stats()["last_error"]


def test_https_with_a_private_ca(db_path: str, tls_server: IngestServer, tls_files: Tuple[str, str]) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(HTTPCloudUploader(tls_server.url, SECRET, timeout=5, ca_certs=tls_files[0])) == 1
    assert tls_server.items == [{"a": 1}]


def test_x_api_key_header_sends_the_bare_key(db_path: str) -> None:
    with IngestServer(api_key=SECRET, auth_header="X-API-Key") as server, CloudSyncQueue(db_path) as queue:
        queue.enqueue({"a": 1})
        assert queue.maybe_flush(HTTPCloudUploader(server.url, SECRET, timeout=5, auth_header="X-API-Key")) == 1
        assert server.requests[0].headers["x-api-key"] == SECRET and "authorization" not in server.requests[0].headers
        assert server.items == [{"a": 1}]
        with pytest.raises(UploadError) as excinfo:
            HTTPCloudUploader(server.url, SECRET, timeout=5).post_batch([{"a": 2}])  # Bearer is not what it wants
        assert excinfo.value.status == 401


@pytest.mark.parametrize("header", ["", "X API Key", "X-Key:", 7])
def test_bad_auth_header_names_are_refused(header: Any) -> None:
    with pytest.raises(ValueError, match="auth_header"):
        HTTPCloudUploader("https://ingest.example/v1", SECRET, auth_header=header)


class _EchoHandler(BaseHTTPRequestHandler):
    """Answers 422 with the request headers in the body, as a careless server might."""

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = ("bad request; you sent " + repr(dict(self.headers))).encode()
        self.send_response(422)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass


@pytest.mark.parametrize("auth_header", ["Authorization", "X-API-Key"])
def test_no_secret_in_reprs_logs_errors_stats_or_dead_letters(
    db_path: str, caplog: pytest.LogCaptureFixture, auth_header: str
) -> None:
    echo = HTTPServer(("127.0.0.1", 0), _EchoHandler)
    threading.Thread(target=echo.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{echo.server_address[1]}/v1"
        uploader = HTTPCloudUploader(url, SECRET, timeout=5, auth_header=auth_header)
        with CloudSyncQueue(db_path, max_attempts=1) as queue, caplog.at_level(logging.DEBUG):
            queue.enqueue_many([{"a": 1}, {"a": 2}])
            assert queue.maybe_flush(uploader) == 0
            with IngestServer(api_key="another-key") as refusing:
                queue.enqueue({"b": 1})
                bad_key = HTTPCloudUploader(refusing.url, SECRET, timeout=5, auth_header=auth_header)
                assert queue.maybe_flush(bad_key) == 0
            with pytest.raises(UploadError) as excinfo:
                uploader.post_batch([{"c": 1}])
            shown = [
                repr(uploader),
                str(uploader),
                repr(vars(uploader)),
                repr(SyncWorker(queue, uploader)),
                str(excinfo.value),
                repr(excinfo.value),
                repr(queue.get_stats()),
                repr(queue.dead_letters()),
            ] + [record.getMessage() for record in caplog.records]
            assert len(queue.dead_letters()) == 2 and "you sent" in str(excinfo.value)  # the echo was seen...
        assert all(SECRET not in text for text in shown)  # ...with the key scrubbed
    finally:
        echo.shutdown()
        echo.server_close()
