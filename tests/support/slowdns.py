"""A DNS server that answers late, in a network and mount namespace of its own.

``run(posts)`` starts ``unshare -n -m`` with this file as a script: in the new namespaces
it brings ``lo`` up, bind-mounts a ``resolv.conf`` naming 127.0.0.1 over
``/etc/resolv.conf`` (private to the namespace: the host's stays as it is), and answers
every A query with 127.0.0.1: for a name whose first label is ``slow`` after
``SLOW_SECONDS``, for any other after ``FAST_SECONDS``. It serves an ``IngestServer``
there and posts one batch to it for each ``(host, timeout)`` in turn. What each post did,
and whether the DNS server had answered for its name by the time it returned, comes back
as one JSON line. ``unshare_error()`` says why the namespaces cannot be made here (None
when they can).
"""

import json
import os
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Dict, List, Optional, Set, Tuple

# A network namespace, and a mount namespace whose mounts never reach the host's.
UNSHARE = ("unshare", "-n", "-m", "--propagation", "private")
SLOW_SECONDS = 20.0
FAST_SECONDS = 0.5


def unshare_error() -> Optional[str]:
    """Why this machine cannot run the scenario (None: it can)."""
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux)"
    probe = subprocess.run(
        [*UNSHARE, "sh", "-c", "ip link set lo up && mount --bind /etc/hosts /etc/hosts"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot make network and mount namespaces here: {probe.stderr.strip() or probe.returncode}"
    return None


def run(posts: List[Tuple[str, float]]) -> List[Dict[str, Any]]:
    """Post one batch to each ``(host, timeout)`` in turn; return what each did."""
    with tempfile.TemporaryDirectory(prefix="slowdns-") as workdir:
        resolv = os.path.join(workdir, "resolv.conf")
        with open(resolv, "w") as handle:
            handle.write("nameserver 127.0.0.1\noptions timeout:30 attempts:1\n")
        script = (
            f"ip link set lo up && mount --bind {resolv} /etc/resolv.conf && "
            f"exec {sys.executable} {os.path.abspath(__file__)} {shlex.quote(json.dumps(posts))}"
        )
        done = subprocess.run(
            [*UNSHARE, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
    if done.returncode != 0:
        raise RuntimeError(f"the slow-DNS scenario failed ({done.returncode}): {done.stderr[-2000:]}")
    return list(json.loads(done.stdout.strip().splitlines()[-1]))


def _question(query: bytes) -> Tuple[str, int, int]:
    """The name asked for, its type, and where the question ends."""
    labels, end = [], 12
    while query[end] != 0:
        labels.append(query[end + 1 : end + 1 + query[end]].decode("ascii", "replace"))
        end += 1 + query[end]
    (qtype,) = struct.unpack("!H", query[end + 1 : end + 3])
    return ".".join(labels).lower(), qtype, end + 5


def _answer(query: bytes) -> bytes:
    """An answer to a one-question query: 127.0.0.1 for A, no records for anything else."""
    (ident,) = struct.unpack("!H", query[:2])
    _, qtype, end = _question(query)
    records = b""
    if qtype == 1:
        records = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton("127.0.0.1")
    header = struct.pack("!HHHHHH", ident, 0x8180, 1, 1 if records else 0, 0, 0)
    return header + query[12:end] + records


ANSWERED: Set[str] = set()


def _serve_dns(sock: socket.socket) -> None:
    while True:
        query, client = sock.recvfrom(512)
        name = _question(query)[0]
        delay = SLOW_SECONDS if name.startswith("slow.") else FAST_SECONDS

        def reply(query: bytes = query, client: Any = client, name: str = name, delay: float = delay) -> None:
            time.sleep(delay)
            ANSWERED.add(name)
            sock.sendto(_answer(query), client)

        threading.Thread(target=reply, daemon=True).start()


def _scenario(posts: List[Tuple[str, float]]) -> None:
    from pyv_edge_agent.cloud_sync import HTTPCloudUploader, UploadError
    from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 53))
    threading.Thread(target=_serve_dns, args=(dns,), daemon=True).start()
    results: List[Dict[str, Any]] = []
    with IngestServer(api_key="dns-key") as server:
        for host, timeout in posts:
            uploader = HTTPCloudUploader(
                f"http://{host}:{server.port}/v1/ingest", "dns-key", timeout=timeout, allow_insecure_http=True
            )
            outcome: Dict[str, Any] = {"accepted": False, "error": None}
            try:
                outcome["accepted"] = uploader.post_batch([{"host": host}]) is True
            except UploadError as exc:
                outcome["error"] = str(exc)
            outcome["resolved_first"] = host in ANSWERED
            uploader.close()
            results.append(outcome)
        results.append({"stored": len(server.items)})
    print(json.dumps(results))


if __name__ == "__main__":
    _scenario([(host, float(timeout)) for host, timeout in json.loads(sys.argv[1])])
