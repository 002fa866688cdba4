"""Real parts for the tests of HTTPS to real clouds: certificates from trustme, a loopback
OAuth2 token endpoint, and Debian's tinyproxy with Basic auth."""

import base64
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs

import orjson
import pytest
from crypto_extra import import_or_skip


def trustme() -> Any:
    """The trustme module, or skip (cryptography has no wheel for musl armv7l)."""
    return import_or_skip("trustme")


def server_context(ca: Any, *, require_client_cert: bool = False) -> ssl.SSLContext:
    """A server context for 127.0.0.1 signed by ``ca``; optionally mutual TLS against ``ca``."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    if require_client_cert:
        ca.configure_trust(context)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def write_client_cert(ca: Any, directory: str, stem: str = "client") -> Tuple[str, str, str]:
    """Issue a client certificate; write it and its key to ``directory``; return the paths
    and the certificate's serial number as the server reports it (upper-case hex)."""
    issued = ca.issue_cert("gateway-7.example")
    cert_path = os.path.join(directory, f"{stem}.pem")
    key_path = os.path.join(directory, f"{stem}.key")
    issued.cert_chain_pems[0].write_to_path(cert_path)
    issued.private_key_pem.write_to_path(key_path)
    from cryptography import x509

    serial = x509.load_pem_x509_certificate(issued.cert_chain_pems[0].bytes()).serial_number
    text = f"{serial:X}"
    return cert_path, key_path, text.zfill(len(text) + len(text) % 2)  # whole bytes, as ssl shows it


def replace_file(path: str, data: bytes) -> None:
    """Write ``data`` beside ``path`` and rename it over ``path``, as rotation tools do."""
    with open(path + ".new", "wb") as handle:
        handle.write(data)
    os.replace(path + ".new", path)


class TokenServer:
    """An OAuth2 token endpoint on loopback (client credentials, HTTP Basic client auth)
    issuing tokens announced to live ``lifetime`` seconds but honoured ``valid_for``
    seconds (keys retired early, or clocks apart); ``accepts(headers)`` tells an ingest
    server whether a request carries a current token."""

    def __init__(
        self, client_id: str, client_secret: str, lifetime: float = 2.0, valid_for: Optional[float] = None
    ) -> None:
        self.client_id, self.client_secret, self.lifetime = client_id, client_secret, lifetime
        self.valid_for = lifetime if valid_for is None else valid_for
        self._valid: Dict[str, float] = {}
        self._lock = threading.Lock()
        self.issued = 0
        self.refused = 0
        # When set, issued instead of a new token (and never accepted): a broken renewal.
        self.malformed: Optional[str] = None
        self.forms: List[Dict[str, List[str]]] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                status, reply = owner._answer(self.headers.get("Authorization", ""), body)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/oauth2/token"
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def _answer(self, authorization: str, body: bytes) -> Tuple[int, bytes]:
        expected = "Basic " + base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
        form = parse_qs(body.decode())
        with self._lock:
            self.forms.append(form)
            if authorization != expected or form.get("grant_type") != ["client_credentials"]:
                self.refused += 1
                return 401, b'{"error": "invalid_client"}'
            self.issued += 1
            if self.malformed is not None:
                return 200, orjson.dumps({"access_token": self.malformed, "expires_in": self.lifetime})
            token = secrets.token_urlsafe(24)
            self._valid[token] = time.monotonic() + self.valid_for
        return 200, orjson.dumps({"access_token": token, "token_type": "Bearer", "expires_in": self.lifetime})

    def current(self, token: str) -> bool:
        """Whether ``token`` was issued here and has not expired or been revoked."""
        with self._lock:
            return self._valid.get(token, 0.0) > time.monotonic()

    def accepts(self, headers: Dict[str, str]) -> bool:
        """An ``IngestServer(authorize=...)`` check: a current bearer token."""
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return scheme == "Bearer" and self.current(token)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Tinyproxy:
    """Debian's tinyproxy on 127.0.0.1 with Basic auth, logging each CONNECT to a file."""

    def __init__(self, directory: str, user: str, password: str) -> None:
        binary = shutil.which("tinyproxy") or ("/usr/bin/tinyproxy" if os.path.exists("/usr/bin/tinyproxy") else None)
        if binary is None:
            pytest.skip("tinyproxy is not installed (tools/internal/system-packages.txt lists it)")
        self.user, self.password = user, password
        self.log_path = os.path.join(directory, "tinyproxy.log")
        config = os.path.join(directory, "tinyproxy.conf")
        self.port = _free_port()
        lines = [
            f"Port {self.port}",
            "Listen 127.0.0.1",
            "Timeout 30",
            f"Logfile {self.log_path!r}".replace("'", '"'),
            "LogLevel Connect",
            "MaxClients 20",
            # Required by tinyproxy 1.10 (bullseye); 1.11 only warns that they are obsolete.
            "StartServers 2",
            "MinSpareServers 1",
            "MaxSpareServers 5",
            f"BasicAuth {user} {password}",
            "DisableViaHeader Yes",
        ]
        if os.geteuid() == 0:
            lines += ["User root", "Group root"]
        with open(config, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        self._process = subprocess.Popen(
            [binary, "-d", "-c", config], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                break
            except OSError:
                if self._process.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    pytest.fail(f"tinyproxy did not start (exit {self._process.returncode})")
                time.sleep(0.05)

    def url(self, password: Optional[str] = None) -> str:
        """The proxy URL with credentials (``password`` to give a wrong one)."""
        return f"http://{self.user}:{self.password if password is None else password}@127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return ""

    def connects(self, port: int) -> int:
        """How many CONNECT tunnels to 127.0.0.1:``port`` the log shows."""
        return sum(1 for line in self.log().splitlines() if "CONNECT" in line and f"127.0.0.1:{port}" in line)

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
