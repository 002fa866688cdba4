"""``cloud-sync serve`` as a real process for the tests of tests/service/: its files in a
short directory (a Unix socket path has at most 107 bytes), its log, curl as the client."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional

import orjson
from clirun import cli_env
from waiting import wait_for

TOKEN = "ingest-token-for-tests"
KEY = "service-api-key-for-tests"


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceFiles:
    """A directory holding a service's configuration, secrets, queue file and socket."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="cs-", dir="/tmp")
        self.socket = os.path.join(self.dir, "ingest.sock")
        self.db = os.path.join(self.dir, "queue.db")
        self.config = os.path.join(self.dir, "cloud-sync.toml")
        self.http_port = free_port()
        for name, text in (("token", TOKEN), ("api-key", KEY)):
            with open(os.path.join(self.dir, name), "w") as handle:
                handle.write(text + "\n")

    def write(
        self, endpoint: str, extra: str = "", *, queue: str = "", destination: str = "", tables: str = ""
    ) -> None:
        """The configuration: one HTTPS-type destination ``cloud`` posting to ``endpoint``
        (``tables``: more tables after it, such as other destinations)."""
        with open(self.config, "w") as handle:
            handle.write(
                f'[queue]\ndb_path = "{self.db}"\n{queue}\n'
                f'[destinations.cloud]\ntype = "https"\nendpoint = "{endpoint}"\napi_key_file = "api-key"\n'
                f"retry_max_seconds = 1\n{destination}\n{tables}\n"
                f'[ingest]\nunix_socket = "{self.socket}"\nhttp = "127.0.0.1:{self.http_port}"\n'
                f'token_file = "token"\n{extra}\n[service]\nstop_timeout = 20\n'
            )

    def cleanup(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class ServiceProcess:
    """One run of ``cloud-sync serve --config FILE``; its log (stderr) is in ``log``."""

    def __init__(self, backend: str, files: ServiceFiles, **env: str) -> None:
        self.files = files
        self.log_path = os.path.join(files.dir, f"serve-{len(os.listdir(files.dir))}.log")
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyv_edge_agent.cloud_sync", "serve", "--config", files.config],
            env=cli_env(backend, **env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        assert wait_for(lambda: "ready:" in self.log or self.proc.poll() is not None), self.log
        assert self.proc.poll() is None, self.log

    @property
    def log(self) -> str:
        with open(self.log_path) as handle:
            return handle.read()

    def signal(self, signum: int) -> None:
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 60) -> int:
        code = self.proc.wait(timeout)
        self._log.close()
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        return self.wait()


def curl(
    files: ServiceFiles, path: str, *args: str, tcp: bool = False, token: Optional[str] = None
) -> Dict[str, object]:
    """Run curl against the service; return the status and the JSON (or text) answer."""
    command: List[str] = ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", "30"]
    if tcp:
        url = f"http://127.0.0.1:{files.http_port}{path}"
        if token is not None:
            command += ["-H", f"Authorization: Bearer {token}"]
    else:
        command += ["--unix-socket", files.socket]
        url = f"http://localhost{path}"
    done = subprocess.run([*command, *args, url], capture_output=True, text=True, timeout=60)
    body, _, status = done.stdout.rpartition("\n")
    try:
        parsed: object = orjson.loads(body)
    except orjson.JSONDecodeError:
        parsed = body
    return {"status": int(status or 0), "body": parsed}


class HoldingEndpoint(ThreadingHTTPServer):
    """An ingest endpoint that holds each batch until ``release`` is set, so that a test
    knows a batch is in flight."""

    daemon_threads = True

    def __init__(self) -> None:
        self.received = threading.Event()
        self.release = threading.Event()
        self.bodies: List[bytes] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server name
                outer.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                outer.received.set()
                outer.release.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1/ingest"
