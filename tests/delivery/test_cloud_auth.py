"""HTTPS that reaches real clouds, against real parts on loopback: mutual TLS with trustme
certificates (rotated mid-run), rotating credentials (a token file, an OAuth2 token
endpoint issuing 2-second tokens), and Debian's tinyproxy with Basic auth."""

import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import Any, Iterator, List

import pytest
import reliability
from cloudparts import Tinyproxy, TokenServer, replace_file, server_context, trustme, write_client_cert

from pyv_edge_agent.cloud_sync import (
    CloudSyncQueue,
    HTTPCloudUploader,
    OAuth2ClientCredentials,
    SyncWorker,
    TokenFileCredentials,
    UploadError,
)
from pyv_edge_agent.cloud_sync.delivery.http.proxy import NoProxy, ProxyRoutes
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

API_KEY = "pyv_live_Kx9-proxy-test-key"
CLIENT_SECRET = "oauth-client-s3cret-value"


@pytest.fixture(scope="module")
def ca() -> Any:
    return trustme().CA()


@pytest.fixture
def ca_file(ca: Any, tmp_path: Any) -> str:
    path = os.path.join(os.fspath(tmp_path), "ca.pem")
    ca.cert_pem.write_to_path(path)
    return path


@pytest.fixture
def mtls_server(ca: Any) -> Iterator[IngestServer]:
    """An HTTPS ingest server that refuses clients without a certificate from ``ca``."""
    with IngestServer(ssl_context=server_context(ca, require_client_cert=True)) as server:
        yield server


@pytest.fixture
def tinyproxy(tmp_path: Any) -> Iterator[Tinyproxy]:
    """Debian's tinyproxy on loopback with Basic auth (user ``gw``)."""
    proxy = Tinyproxy(os.fspath(tmp_path), "gw", "Prx-pa55-w0rd")
    yield proxy
    proxy.close()


def _fill(queue: CloudSyncQueue, count: int, start: int = 0) -> None:
    queue.enqueue_many([{"i": i} for i in range(start, start + count)])


# -- mutual TLS -------------------------------------------------------------------------------


def test_a_batch_goes_with_the_client_certificate_and_is_refused_without_it(
    mtls_server: IngestServer, ca: Any, ca_file: str, tmp_path: Any, db_path: str
) -> None:
    cert, key, serial = write_client_cert(ca, os.fspath(tmp_path))
    with_cert = HTTPCloudUploader(mtls_server.url, ca_certs=ca_file, client_cert=cert, client_key=key)
    anonymous = HTTPCloudUploader(mtls_server.url, API_KEY, ca_certs=ca_file)
    with CloudSyncQueue(db_path, retry_max_seconds=600) as queue:
        _fill(queue, 20)
        assert queue.maybe_flush(with_cert) == 20
        _fill(queue, 20, 20)
        assert queue.maybe_flush(anonymous) == 0
        # The credentials path: every item kept, a long backoff, nothing dead-lettered.
        assert queue.pending_count() == 20 and queue.dead_letters() == []
        assert queue.backoff_seconds >= 300
        stats = queue.get_stats()
        assert "client certificate" in stats["last_error"] and "TLS handshake" in stats["last_error"]
        assert API_KEY not in repr(stats)
    with_cert.close()
    anonymous.close()
    assert sorted(item["i"] for item in mtls_server.items) == list(range(20))
    assert {request.client_serial for request in mtls_server.requests} == {serial}


def test_certificate_files_replaced_mid_run_are_loaded_without_a_restart(
    mtls_server: IngestServer, ca: Any, ca_file: str, tmp_path: Any, db_path: str, caplog: Any
) -> None:
    directory = os.fspath(tmp_path)
    cert, key, old_serial = write_client_cert(ca, directory)
    spare_cert, spare_key, new_serial = write_client_cert(ca, directory, "spare")
    uploader = HTTPCloudUploader(mtls_server.url, ca_certs=ca_file, client_cert=cert, client_key=key)
    with CloudSyncQueue(db_path, max_batch_items=10) as queue:
        _fill(queue, 30)
        assert queue.maybe_flush(uploader) == 30
        # Half a rotation (the new certificate beside the old key) does not load: the old
        # pair stays in use, with a warning.
        with open(spare_cert, "rb") as handle:
            replace_file(cert, handle.read())
        _fill(queue, 30, 30)
        with caplog.at_level(logging.WARNING, logger="pyv_edge_agent.cloud_sync"):
            assert queue.maybe_flush(uploader) == 30
        assert "do not load" in caplog.text
        with open(spare_key, "rb") as handle:
            replace_file(key, handle.read())
        _fill(queue, 30, 60)
        assert queue.maybe_flush(uploader) == 30
    uploader.close()
    serials = [request.client_serial for request in mtls_server.requests]
    assert serials[:6] == [old_serial] * 6
    assert serials[6:] == [new_serial] * 3
    assert sorted(item["i"] for item in mtls_server.items) == list(range(90))


def _encrypted_key(key_path: str, password: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    with open(key_path, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )


def test_an_encrypted_key_loads_with_its_password(
    mtls_server: IngestServer, ca: Any, ca_file: str, tmp_path: Any
) -> None:
    cert, key, _ = write_client_cert(ca, os.fspath(tmp_path))
    replace_file(key, _encrypted_key(key, b"k3y-pa55word"))
    uploader = HTTPCloudUploader(
        mtls_server.url, ca_certs=ca_file, client_cert=cert, client_key=key, key_password="k3y-pa55word"
    )
    assert uploader.post_batch([{"i": 1}]) is True
    assert "k3y-pa55word" not in repr(uploader)
    uploader.close()


NOT_UTF8_PASSWORD = b"\xffk3y\xfe-pa55\x80"


def test_a_key_password_in_bytes_that_are_not_utf8_loads(
    mtls_server: IngestServer, ca: Any, ca_file: str, tmp_path: Any
) -> None:
    cert, key, _ = write_client_cert(ca, os.fspath(tmp_path))
    replace_file(key, _encrypted_key(key, NOT_UTF8_PASSWORD))
    options = dict(ca_certs=ca_file, client_cert=cert, client_key=key)
    uploader = HTTPCloudUploader(mtls_server.url, key_password=NOT_UTF8_PASSWORD, **options)
    assert uploader.post_batch([{"i": 1}]) is True
    assert "k3y" not in repr(uploader) and "pa55" not in repr(uploader)
    uploader.close()
    with pytest.raises(ValueError, match="key_password") as wrong:
        HTTPCloudUploader(mtls_server.url, key_password=b"\xffwr0ng\xfe", **options)
    with pytest.raises(ValueError, match="key_password") as surrogate:
        HTTPCloudUploader(mtls_server.url, key_password="k3y\udcff-pa55", **options)
    for excinfo in (wrong, surrogate):
        assert "wr0ng" not in str(excinfo.value) and "pa55" not in str(excinfo.value)


def _construction_error(**kwargs: Any) -> str:
    kwargs.setdefault("endpoint", "https://127.0.0.1:9/v1/ingest")
    with pytest.raises((ValueError, TypeError)) as info:
        HTTPCloudUploader(**kwargs)
    return str(info.value)


def test_bad_tls_and_auth_settings_are_refused_at_construction_naming_the_argument(
    ca: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = os.fspath(tmp_path)
    cert, key, _ = write_client_cert(ca, directory)
    other_cert, other_key, _ = write_client_cert(ca, directory, "other")
    locked = os.path.join(directory, "enc.key")
    with open(locked, "wb") as handle:
        handle.write(_encrypted_key(key, b"right-horse-battery"))
    garbage = os.path.join(directory, "garbage.pem")
    with open(garbage, "w") as handle:
        handle.write("not a certificate\n")

    missing = _construction_error(api_key=API_KEY, client_cert=os.path.join(directory, "nope.pem"), client_key=key)
    assert missing.startswith("client_cert") and "no file" in missing
    assert "client_key" in _construction_error(api_key=API_KEY, client_cert=cert, client_key=directory)
    assert "client_cert" in _construction_error(api_key=API_KEY, client_cert=garbage, client_key=key)
    assert "do not match" in _construction_error(api_key=API_KEY, client_cert=cert, client_key=other_key)
    wrong = _construction_error(api_key=API_KEY, client_cert=cert, client_key=locked, key_password="wrong-horse")
    assert "key_password" in wrong and "wrong-horse" not in wrong
    assert "give key_password" in _construction_error(api_key=API_KEY, client_cert=cert, client_key=locked)
    # Bytes go to OpenSSL as they are (test_a_key_password_in_bytes_that_are_not_utf8_loads):
    # a wrong one is only wrong, and never shown.
    not_utf8 = _construction_error(api_key=API_KEY, client_cert=cert, client_key=locked, key_password=b"\xffh0rse")
    assert "key_password" in not_utf8 and "h0rse" not in not_utf8
    assert "client_cert" in _construction_error(api_key=API_KEY, client_key=key)

    token_path = os.path.join(directory, "token")
    with open(token_path, "w") as handle:
        handle.write("a-token-value\n")
    both = _construction_error(api_key=API_KEY, credentials=TokenFileCredentials(token_path))
    assert "not both" in both and API_KEY not in both
    neither = _construction_error()
    assert "api_key" in neither and "credentials" in neither
    assert "headers()" in _construction_error(credentials=object())

    for bad, expected in (
        ("http://gw:Sekr1t-pw@[::1", "malformed"),
        ("socks5://gw:Sekr1t-pw@127.0.0.1:1080", "http:// proxy"),
        ("http://gw:Sekr1t-pw@127.0.0.1:99999", "malformed"),
        ("http://gw:Sekr1t-pw@:3128", "host"),
        ("http://gw:Sekr1t-pw@127.0.0.1:3128/path", "address alone"),
    ):
        error = _construction_error(api_key=API_KEY, proxy_url=bad)
        assert "proxy_url" in error and expected in error and "Sekr1t-pw" not in error, error
    monkeypatch.setenv("HTTPS_PROXY", "ftp://gw:Sekr1t-pw@127.0.0.1:21")
    error = _construction_error(api_key=API_KEY)
    assert "HTTPS_PROXY" in error and "Sekr1t-pw" not in error
    HTTPCloudUploader("https://127.0.0.1:9/v1/ingest", API_KEY, trust_env=False)  # the environment ignored


# -- credentials that change ------------------------------------------------------------------


def test_a_token_file_is_read_again_when_it_changes_and_after_a_refusal(tmp_path: Any, db_path: str) -> None:
    token_path = os.path.join(os.fspath(tmp_path), "token")
    accepted = {"value": "token-AAAA-1111"}
    with open(token_path, "w") as handle:
        handle.write("token-AAAA-1111\n")
    credentials = TokenFileCredentials(token_path)
    with IngestServer(authorize=lambda h: h.get("authorization") == "Bearer " + accepted["value"]) as server:
        uploader = HTTPCloudUploader(server.url, credentials=credentials)
        with CloudSyncQueue(db_path, retry_max_seconds=600) as queue:
            _fill(queue, 5)
            assert queue.maybe_flush(uploader) == 5
            # Rotated on both sides: the change on disk is seen before the request.
            accepted["value"] = "token-BBBB-2222"
            replace_file(token_path, b"token-BBBB-2222\n")
            _fill(queue, 5, 5)
            assert queue.maybe_flush(uploader) == 5
            assert [r.status for r in server.requests] == [200, 200]
            # A change stat() cannot see (same inode, size and time): the refusal makes the
            # file be read again, and the batch goes at once, within the same flush.
            accepted["value"] = "token-CCCC-3333"
            before = os.stat(token_path)
            with open(token_path, "w") as handle:
                handle.write("token-CCCC-3333\n")
            os.utime(token_path, ns=(before.st_atime_ns, before.st_mtime_ns))
            _fill(queue, 5, 10)
            assert queue.maybe_flush(uploader) == 5
            assert [r.status for r in server.requests] == [200, 200, 401, 200]
            assert queue.get_stats()["failed_batches"] == 0
        uploader.close()
    assert sorted(item["i"] for item in server.items) == list(range(15))


def test_a_second_refusal_costs_one_long_backoff_and_keeps_every_item(tmp_path: Any, db_path: str) -> None:
    token_path = os.path.join(os.fspath(tmp_path), "token")
    with open(token_path, "w") as handle:
        handle.write("token-never-accepted\n")
    with IngestServer(authorize=lambda headers: False) as server:
        uploader = HTTPCloudUploader(server.url, credentials=TokenFileCredentials(token_path))
        with CloudSyncQueue(db_path, retry_max_seconds=600) as queue:
            _fill(queue, 7)
            assert queue.maybe_flush(uploader) == 0
            assert [r.status for r in server.requests] == [401, 401]  # one refresh, one retry
            assert queue.backoff_seconds >= 300
            assert queue.pending_count() == 7 and queue.dead_letters() == []
            assert "token-never-accepted" not in repr(queue.get_stats())
        uploader.close()


def test_oauth2_tokens_rotating_every_two_seconds_lose_nothing(db_path: str) -> None:
    """10,000 items over 12 s of 2-second tokens that the ingest side retires after 1.5 s,
    before the uploader renews them at 80% (1.6 s): every token is refused once. Nothing
    is lost, at most one request is refused per rotation, and no refusal costs a backoff
    (a long one would outlast the test). 12 s rather than a minute: its 7 or so rotations
    show the same, and the suite shares a time budget."""
    tokens = TokenServer("gateway-7", CLIENT_SECRET, lifetime=2.0, valid_for=1.5)
    credentials = OAuth2ClientCredentials(tokens.url, "gateway-7", CLIENT_SECRET, scope="ingest:write")
    total, steps, seconds = 10_000, 100, 12.0
    with IngestServer(authorize=tokens.accepts) as server:
        uploader = HTTPCloudUploader(server.url, credentials=credentials, timeout=10.0)
        with CloudSyncQueue(db_path, max_batch_items=50, retry_max_seconds=600) as queue:
            worker = SyncWorker(queue, uploader, interval=0.05, handle_sigterm=False)
            worker.start()
            try:
                for step in range(steps):
                    _fill(queue, total // steps, step * (total // steps))
                    time.sleep(seconds / steps)
                deadline = time.monotonic() + 60
                while queue.pending_count() and time.monotonic() < deadline:
                    time.sleep(0.05)
            finally:
                worker.stop()
            stats = queue.get_stats()
        uploader.close()
    tokens.close()
    delivered = sorted(item["i"] for item in server.items)
    assert delivered == list(range(total)), f"lost {total - len(set(delivered))}"
    refused = sum(1 for request in server.requests if request.status == 401)
    rotations = tokens.issued - 1
    reliability.add("OAuth2 token rotations under load (10,000 items)", rotations)
    reliability.add("  requests refused during them (at most one per rotation)", refused)
    assert rotations >= 5 and 1 <= refused <= rotations, (refused, rotations)
    assert stats["failed_batches"] == 0
    assert tokens.forms[0]["scope"] == ["ingest:write"]
    assert CLIENT_SECRET not in repr(stats) and CLIENT_SECRET not in repr(uploader)


def test_a_token_endpoint_refusing_the_client_is_refused_credentials(db_path: str, caplog: Any) -> None:
    tokens = TokenServer("gateway-7", CLIENT_SECRET)
    credentials = OAuth2ClientCredentials(tokens.url, "gateway-7", "a-wrong-secret-value")
    with IngestServer(authorize=tokens.accepts) as server:
        uploader = HTTPCloudUploader(server.url, credentials=credentials)
        with CloudSyncQueue(db_path, retry_max_seconds=600) as queue, caplog.at_level(logging.DEBUG):
            _fill(queue, 3)
            assert queue.maybe_flush(uploader) == 0
            assert queue.backoff_seconds >= 300 and queue.pending_count() == 3
            assert "refused the client" in queue.get_stats()["last_error"]
        assert server.requests == []
        uploader.close()
    tokens.close()
    assert "a-wrong-secret-value" not in caplog.text


def test_a_token_endpoint_that_is_down_is_a_transient_failure(db_path: str) -> None:
    tokens = TokenServer("gateway-7", CLIENT_SECRET)
    tokens.close()  # nothing listens on its port now
    credentials = OAuth2ClientCredentials(tokens.url, "gateway-7", CLIENT_SECRET)
    with IngestServer(authorize=tokens.accepts) as server:
        uploader = HTTPCloudUploader(server.url, credentials=credentials, timeout=5.0)
        with CloudSyncQueue(db_path, retry_base_seconds=0.5, retry_max_seconds=600) as queue:
            _fill(queue, 3)
            assert queue.maybe_flush(uploader) == 0
            assert queue.pending_count() == 3 and queue.backoff_seconds < 300
            last_error = queue.get_stats()["last_error"]
            assert "cannot reach" in last_error and CLIENT_SECRET not in last_error
        uploader.close()


@pytest.mark.parametrize("malformed", ["tok\r\nX-Injected: 1", "tok with spaces", "tok\u00e9"])
def test_a_malformed_renewed_token_keeps_the_current_one_until_it_expires(
    db_path: str, caplog: pytest.LogCaptureFixture, malformed: str
) -> None:
    """Tokens of 5 s are renewed at 4 s; every renewal is malformed. Between 4 s and 5 s
    the current token goes on being used (one warning); after 5 s the upload fails as a
    failed token request, naming the access_token but not quoting it."""
    tokens = TokenServer("gateway-7", CLIENT_SECRET, lifetime=5.0)
    credentials = OAuth2ClientCredentials(tokens.url, "gateway-7", CLIENT_SECRET)
    with IngestServer(authorize=tokens.accepts) as server, caplog.at_level(logging.WARNING):
        uploader = HTTPCloudUploader(server.url, credentials=credentials, timeout=5.0)
        start = time.monotonic()
        assert uploader.post_batch([{"i": 0}]) is True
        tokens.malformed = malformed
        time.sleep(max(0.0, start + 4.1 - time.monotonic()))
        assert uploader.post_batch([{"i": 1}]) is True and uploader.post_batch([{"i": 2}]) is True
        assert tokens.issued >= 3  # each renewal was tried, and failed
        warnings = [record.getMessage() for record in caplog.records if "renew" in record.getMessage()]
        assert len(warnings) == 1 and "access_token" in warnings[0], warnings
        time.sleep(max(0.0, start + 5.2 - time.monotonic()))
        with pytest.raises(UploadError, match="access_token") as excinfo:
            uploader.post_batch([{"i": 3}])
        uploader.close()
    tokens.close()
    assert "tok" not in str(excinfo.value).replace("token", "") and "tok" not in caplog.text.replace("token", "")
    assert [item["i"] for item in server.items] == [0, 1, 2]


# -- proxies ----------------------------------------------------------------------------------


def test_no_proxy_matches_like_curl() -> None:
    rules = NoProxy.parse(" .corp.example, internal.example ,10.0.0.0/8,[::1] 192.168.1.7")
    assert rules.bypasses("corp.example") and rules.bypasses("a.b.corp.example")
    assert rules.bypasses("internal.example") and rules.bypasses("x.internal.example")
    assert not rules.bypasses("notinternal.example") and not rules.bypasses("internal.example.org")
    assert rules.bypasses("10.20.30.40") and not rules.bypasses("11.0.0.1")
    assert rules.bypasses("::1") and rules.bypasses("[::1]") and rules.bypasses("192.168.1.7")
    # As curl and pip: loopback is proxied unless NO_PROXY names it.
    assert not rules.bypasses("127.0.0.1") and not rules.bypasses("localhost")
    assert NoProxy.parse("*").bypasses("anything.example")
    routes = ProxyRoutes.configure(
        None, True, {"https_proxy": "proxy.corp:3128", "HTTPS_PROXY": "http://ignored:1", "NO_PROXY": "localhost"}
    )
    assert routes.proxy_for("https", "cloud.example") is not None
    assert str(routes.proxy_for("https", "cloud.example")) == "http://proxy.corp:3128"
    assert routes.proxy_for("https", "localhost") is None and routes.proxy_for("http", "cloud.example") is None
    cgi = ProxyRoutes.configure(None, True, {"HTTP_PROXY": "http://evil:8080", "REQUEST_METHOD": "GET"})
    assert cgi.proxy_for("http", "cloud.example") is None
    assert ProxyRoutes.configure(None, False, {"HTTPS_PROXY": "proxy:3128"}).proxy_for("https", "x") is None


def test_no_proxy_entries_with_a_port_match_that_port(monkeypatch: pytest.MonkeyPatch) -> None:
    rules = NoProxy.parse("internal.example:8443, .corp.example:443, 10.1.2.3:8080, [::1]:9000, plain.example")
    assert rules.bypasses("internal.example", 8443) and not rules.bypasses("internal.example", 443)
    assert rules.bypasses("a.corp.example", 443) and not rules.bypasses("a.corp.example", 8443)
    assert rules.bypasses("10.1.2.3", 8080) and not rules.bypasses("10.1.2.3", 80)
    assert rules.bypasses("::1", 9000) and not rules.bypasses("::1", 9001)
    assert rules.bypasses("plain.example", 1234) and rules.bypasses("plain.example")
    monkeypatch.setenv("NO_PROXY", "ingest.example:8443")
    proxy = "http://127.0.0.1:3128"
    assert HTTPCloudUploader("https://ingest.example:8443/v1", API_KEY, proxy_url=proxy).proxy is None
    assert HTTPCloudUploader("https://ingest.example/v1", API_KEY, proxy_url=proxy).proxy == proxy
    monkeypatch.setenv("NO_PROXY", "ingest.example:443")
    assert HTTPCloudUploader("https://ingest.example/v1", API_KEY, proxy_url=proxy).proxy is None


@pytest.mark.parametrize("password", ["12/34", "12?34", "12#34", "98/76/54", "/1234", "5678/"])
def test_a_proxy_password_with_an_unencoded_character_is_never_shown(
    password: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"http://gateway:{password}@127.0.0.1:3128"
    with pytest.raises(ValueError, match="proxy_url") as given:
        HTTPCloudUploader("https://ingest.example/v1", API_KEY, proxy_url=url)
    monkeypatch.setenv("HTTPS_PROXY", url)
    with pytest.raises(ValueError, match="HTTPS_PROXY") as from_env:
        HTTPCloudUploader("https://ingest.example/v1", API_KEY)
    for excinfo in (given, from_env):
        text = str(excinfo.value)
        assert all(part not in text for part in password.replace("?", "/").replace("#", "/").split("/") if part), text
        assert "percent-encode" in text or "malformed" in text, text


def test_https_through_tinyproxy_shows_the_tunnel_and_no_secret(
    tinyproxy: Any, ca: Any, ca_file: str, db_path: str, caplog: Any
) -> None:
    errors: List[str] = []
    with IngestServer(api_key=API_KEY, ssl_context=server_context(ca)) as server:
        server.set_limits(reject=lambda item: item.get("bad", False))
        uploader = HTTPCloudUploader(server.url, API_KEY, ca_certs=ca_file, proxy_url=tinyproxy.url(), trust_env=False)
        assert uploader.proxy == f"http://127.0.0.1:{tinyproxy.port}"
        with caplog.at_level(logging.DEBUG), CloudSyncQueue(db_path, max_attempts=1) as queue:
            _fill(queue, 50)
            assert queue.maybe_flush(uploader) == 50
            assert tinyproxy.connects(server.port) >= 1
            queue.enqueue({"bad": True})
            queue.maybe_flush(uploader)
            assert len(queue.dead_letters()) == 1
            # A wrong proxy password: refused credentials, nothing lost.
            wrong = HTTPCloudUploader(
                server.url, API_KEY, ca_certs=ca_file, proxy_url=tinyproxy.url("Wr0ng-pa55"), trust_env=False
            )
            with pytest.raises(UploadError) as info:
                wrong.post_batch([{"i": -1}])
            assert info.value.credentials_refused and "refused its credentials" in str(info.value)
            errors += [str(info.value), repr(wrong)]
            _fill(queue, 2, 100)
            assert queue.maybe_flush(wrong) == 0 and queue.pending_count() == 2
            wrong.close()
            shown = [repr(queue.get_stats()), repr(queue.dead_letters()), repr(uploader)]
        uploader.close()
    with pytest.raises(UploadError) as info:  # the endpoint is gone now
        HTTPCloudUploader(server.url, API_KEY, ca_certs=ca_file, proxy_url=tinyproxy.url(), trust_env=False).post_batch(
            [{"i": 0}]
        )
    errors.append(str(info.value))
    for text in [caplog.text, *errors, *shown]:
        for secret in (tinyproxy.password, "Wr0ng-pa55", API_KEY):
            assert secret not in text
    # The key travelled inside the tunnel: the proxy never saw it.
    assert API_KEY not in tinyproxy.log()


def test_the_environment_proxy_is_honoured_and_no_proxy_bypasses_it(
    tinyproxy: Any, ca: Any, ca_file: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with IngestServer(api_key=API_KEY, ssl_context=server_context(ca)) as server:
        monkeypatch.setenv("HTTPS_PROXY", tinyproxy.url())
        monkeypatch.delenv("https_proxy", raising=False)
        via_env = HTTPCloudUploader(server.url, API_KEY, ca_certs=ca_file)
        assert via_env.post_batch([{"i": 1}]) is True
        tunnels = tinyproxy.connects(server.port)
        assert tunnels >= 1
        monkeypatch.setenv("NO_PROXY", "example.org, 127.0.0.1")
        bypassing = HTTPCloudUploader(server.url, API_KEY, ca_certs=ca_file)
        assert bypassing.proxy is None and bypassing.post_batch([{"i": 2}]) is True
        monkeypatch.delenv("NO_PROXY")
        ignoring = HTTPCloudUploader(server.url, API_KEY, ca_certs=ca_file, trust_env=False)
        assert ignoring.proxy is None and ignoring.post_batch([{"i": 3}]) is True
        assert tinyproxy.connects(server.port) == tunnels
        for uploader in (via_env, bypassing, ignoring):
            uploader.close()
    assert [item["i"] for item in server.items] == [1, 2, 3]


def test_concurrent_posts_share_one_uploader(mtls_server: IngestServer, ca: Any, ca_file: str, tmp_path: Any) -> None:
    cert, key, _ = write_client_cert(ca, os.fspath(tmp_path))
    uploader = HTTPCloudUploader(mtls_server.url, ca_certs=ca_file, client_cert=cert, client_key=key)
    results: List[Any] = []
    threads = [threading.Thread(target=lambda i=i: results.append(uploader.post_batch([{"i": i}]))) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    uploader.close()
    assert results == [True] * 4


# -- the command line -------------------------------------------------------------------------


def _cli(*args: str, **env: str) -> "subprocess.CompletedProcess[str]":
    clean = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and not k.startswith("CLOUD_SYNC")}
    return subprocess.run(
        [sys.executable, "-m", "pyv_edge_agent.cloud_sync", "--plain", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_flush_with_a_client_certificate_and_a_token_file_through_the_proxy(
    tinyproxy: Tinyproxy, ca: Any, ca_file: str, tmp_path: Any, db_path: str
) -> None:
    directory = os.fspath(tmp_path)
    cert, key, serial = write_client_cert(ca, directory)
    token_path = os.path.join(directory, "token")
    with open(token_path, "w") as handle:
        handle.write("cli-token-7f3a\n")
    login = os.path.join(directory, "proxy-login")
    with open(login, "w") as handle:
        handle.write(f"{tinyproxy.user}:{tinyproxy.password}\n")
    with CloudSyncQueue(db_path) as queue:
        _fill(queue, 12)
    context = server_context(ca, require_client_cert=True)
    with IngestServer(
        ssl_context=context, authorize=lambda h: h.get("authorization") == "Bearer cli-token-7f3a"
    ) as server:
        done = _cli(
            "flush", db_path, "--endpoint", server.url, "--json", "--ca-certs", ca_file,
            "--client-cert", cert, "--client-key", key, "--token-file", token_path,
            "--proxy", f"127.0.0.1:{tinyproxy.port}", "--proxy-credentials-file", login,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["flushed"] == 12
        assert {request.client_serial for request in server.requests} == {serial}
        assert tinyproxy.connects(server.port) >= 1
        refused = _cli(
            "flush", db_path, "--endpoint", server.url, "--token-file", token_path,
            "--proxy", f"http://gw:{tinyproxy.password}@127.0.0.1:{tinyproxy.port}",
        )  # fmt: skip
        assert refused.returncode == 2 and "--proxy takes no user:password" in refused.stderr
        assert tinyproxy.password not in refused.stderr + refused.stdout


def test_cli_flush_with_oauth2_client_credentials_from_the_environment(db_path: str) -> None:
    tokens = TokenServer("cli-client", CLIENT_SECRET)
    with CloudSyncQueue(db_path) as queue:
        _fill(queue, 5)
    with IngestServer(authorize=tokens.accepts) as server:
        args = ("flush", db_path, "--endpoint", server.url, "--oauth-token-url", tokens.url)
        missing = _cli(*args, "--oauth-client-id", "cli-client")
        assert missing.returncode == 2 and "CLOUD_SYNC_OAUTH_CLIENT_SECRET" in missing.stderr
        done = _cli(*args, "--oauth-client-id", "cli-client", CLOUD_SYNC_OAUTH_CLIENT_SECRET=CLIENT_SECRET)
        assert done.returncode == 0, done.stderr
    tokens.close()
    assert len(server.items) == 5 and tokens.issued == 1
