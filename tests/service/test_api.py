"""The local API of a running ``cloud-sync serve``, through real clients: curl over the Unix
socket and over TCP, and Python's keep-alive HTTP client."""

import http.client
import os
import socket
import subprocess
from typing import Iterator, Tuple

import orjson
import pytest
from servicerun import KEY, TOKEN, ServiceFiles, ServiceProcess, curl
from waiting import wait_for

from pyv_edge_agent.cloud_sync import BACKEND
from pyv_edge_agent.cloud_sync.service.config import load
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

LIMITS = "max_body_bytes = 2000\nidle_timeout = 2\nmax_connections = 6\n"


@pytest.fixture(scope="module")
def service() -> Iterator[Tuple[ServiceFiles, IngestServer]]:
    """One service for the module, delivering to a reference ingest server."""
    files = ServiceFiles()
    with IngestServer(api_key=KEY) as endpoint:
        files.write(endpoint.url, LIMITS)
        process = ServiceProcess(BACKEND, files)
        yield files, endpoint
        assert process.stop() == 0, process.log
    files.cleanup()


def post(files: ServiceFiles, body: str, *headers: str, tcp: bool = False, token: str = TOKEN) -> dict:
    args = ["-X", "POST", "--data-binary", body]
    for header in headers:
        args += ["-H", header]
    return curl(files, "/v1/items", *args, tcp=tcp, token=token if tcp else None)


def test_curl_over_the_unix_socket_stores_and_delivers(service: Tuple[ServiceFiles, IngestServer]) -> None:
    files, endpoint = service
    one = post(files, '{"sensor": "boiler", "t": 81.5}')
    assert one["status"] == 201 and len(one["body"]["ids"]) == 1
    many = post(files, '[{"n": 1}, {"n": 2}, {"n": 3}]', "X-Priority: critical", "X-TTL-Seconds: 60")
    assert many["status"] == 201 and len(many["body"]["ids"]) == 3
    lines = '{"line": 1}\n{"line": 2}\n\n'
    ndjson = post(files, lines, "Content-Type: application/x-ndjson", "X-Destinations: cloud", "X-Priority: 4")
    assert ndjson["status"] == 201 and len(ndjson["body"]["ids"]) == 2
    assert wait_for(lambda: {"line": 2} in endpoint.items and {"sensor": "boiler", "t": 81.5} in endpoint.items)
    assert {"n": 3} in endpoint.items
    waiting = post(files, '{"expect": "continue"}', "Expect: 100-continue")
    assert waiting["status"] == 201


def test_tcp_needs_the_bearer_token(service: Tuple[ServiceFiles, IngestServer]) -> None:
    files, _ = service
    assert post(files, '{"a": 1}', tcp=True)["status"] == 201
    refused = curl(files, "/v1/items", "-X", "POST", "--data-binary", '{"a": 1}', "-i", tcp=True)
    assert refused["status"] == 401
    assert "WWW-Authenticate: Bearer" in str(refused["body"])
    assert post(files, '{"a": 1}', tcp=True, token=TOKEN + "x")["status"] == 401
    assert curl(files, "/v1/stats", tcp=True)["status"] == 401
    assert curl(files, "/v1/stats", tcp=True, token=TOKEN)["status"] == 200


@pytest.mark.parametrize(
    "body, headers, status, reason",
    [
        ('{"a": ', (), 400, "the body is not valid JSON"),
        ('"text"', (), 400, "item 0 is a JSON str, not an object"),
        ('[{"a": 1}, 2]', (), 400, "item 1 is a JSON int"),
        ("[]", (), 400, "no items in the body"),
        ('{"a": 1}\n[1]\n', ("Content-Type: application/x-ndjson",), 400, "item 1 is a JSON list"),
        ('{"a": 1}\n{"a": \n', ("Content-Type: application/x-ndjson",), 400, "line 2 is not valid JSON"),
        ('{"a": 1}', ("X-Priority: urgent",), 400, "X-Priority must be one of CRITICAL (1)"),
        ('{"a": 1}', ("X-Priority: 7",), 400, "got '7'"),
        ('{"a": 1}', ("X-TTL-Seconds: -1",), 400, "X-TTL-Seconds must be a whole number"),
        ('{"a": 1}', ("X-Destinations: cloud,archive",), 400, "unknown destination 'archive'"),
        ('{"a": 1}', ("X-Destinations: cloud,cloud",), 400, "names a destination twice"),
        ('{"a": "' + "x" * 3000 + '"}', (), 413, "over the limit of 2000 bytes"),
        ('{"a": "' + "x" * 3000 + '"}', ("Transfer-Encoding: chunked",), 413, "over the limit of 2000 bytes"),
        ('{"a": "' + "x" * 3000 + '"}', ("Expect: 100-continue",), 413, "over the limit of 2000 bytes"),
    ],
)
def test_bad_requests_get_their_status_and_store_nothing(
    service: Tuple[ServiceFiles, IngestServer], body: str, headers: Tuple[str, ...], status: int, reason: str
) -> None:
    files, _ = service
    before = post(files, '{"probe": 1}')["body"]["ids"][0]
    answer = post(files, body, *headers)
    assert answer["status"] == status
    assert reason in answer["body"]["error"]
    assert post(files, '{"probe": 2}')["body"]["ids"][0] == before + 1, "the refused request stored something"


def test_a_keep_alive_client_posts_many_on_one_connection(service: Tuple[ServiceFiles, IngestServer]) -> None:
    files, endpoint = service
    connection = http.client.HTTPConnection("127.0.0.1", files.http_port, timeout=30)
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    ids = []
    connection.connect()
    first = connection.sock
    for n in range(20):
        connection.request("POST", "/v1/items", body=f'{{"keepalive": {n}}}', headers=headers)
        answer = connection.getresponse()
        assert answer.status == 201
        ids += orjson.loads(answer.read())["ids"]
    assert connection.sock is first, "the connection was not kept alive"
    connection.close()
    assert ids == sorted(ids) and len(set(ids)) == 20
    assert wait_for(lambda: {"keepalive": 19} in endpoint.items)


def test_health_readiness_metrics_and_stats(service: Tuple[ServiceFiles, IngestServer]) -> None:
    files, _ = service
    assert curl(files, "/healthz")["body"] == {"status": "ok"}
    assert curl(files, "/readyz") == {"status": 200, "body": {"status": "ready"}}
    metrics = str(curl(files, "/metrics")["body"])
    assert 'cloud_sync_destination_depth{db="' in metrics and 'destination="cloud"' in metrics
    assert "cloud_sync_ingest_items_total" in metrics
    stats = curl(files, "/v1/stats")["body"]
    assert "cloud" in stats["destinations"]
    assert curl(files, "/v1/items")["status"] == 405
    assert curl(files, "/nowhere")["status"] == 404


def test_a_silent_connection_is_closed(service: Tuple[ServiceFiles, IngestServer]) -> None:
    files, _ = service
    with socket.socket(socket.AF_UNIX) as sock:
        sock.connect(files.socket)
        sock.settimeout(30)
        sock.sendall(b"POST /v1/items HTTP/1.1\r\nHost: x\r\n")  # and never the rest of the headers
        assert sock.recv(100) == b""


def test_connections_over_the_cap_are_closed_on_arrival(service: Tuple[ServiceFiles, IngestServer]) -> None:
    files, _ = service
    held = []
    try:
        for _ in range(6):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(files.socket)
            held.append(sock)
        with socket.socket(socket.AF_UNIX) as extra:
            extra.settimeout(30)
            extra.connect(files.socket)
            try:
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                answer = extra.recv(100)
            except (ConnectionResetError, BrokenPipeError):  # closed with the request unread
                answer = b""
            assert answer == b"", "a seventh connection was served"
    finally:
        for sock in held:
            sock.close()
    assert wait_for(lambda: curl(files, "/healthz")["status"] == 200)


def test_tcp_with_tls_may_serve_beyond_loopback(backend: str, files: ServiceFiles) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(os.path.join(files.dir, "ca.pem"))
    server.private_key_and_cert_chain_pem.write_to_path(os.path.join(files.dir, "server.pem"))
    with IngestServer(api_key=KEY) as endpoint:
        files.write(endpoint.url, 'tls_cert = "server.pem"\n')
        text = open(files.config).read()
        with open(files.config, "w") as handle:
            handle.write(text.replace(f"127.0.0.1:{files.http_port}", f"0.0.0.0:{files.http_port}"))
        assert load(files.config).ingest.http == ("0.0.0.0", files.http_port)  # refused without tls_cert
        with open(files.config, "w") as handle:
            handle.write(text)  # the test itself listens on loopback only
        process = ServiceProcess(backend, files)
        done = subprocess.run(
            [
                "curl",
                "-s",
                "--cacert",
                os.path.join(files.dir, "ca.pem"),
                "-H",
                f"Authorization: Bearer {TOKEN}",
                "--data-binary",
                '{"over": "tls"}',
                f"https://127.0.0.1:{files.http_port}/v1/items",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert orjson.loads(done.stdout)["ids"] == [1], done.stderr
        assert wait_for(lambda: {"over": "tls"} in endpoint.items)
        assert f"listening on https://127.0.0.1:{files.http_port}" in process.log
        assert process.stop() == 0
