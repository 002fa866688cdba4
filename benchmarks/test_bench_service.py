"""``cloud-sync serve``: items per second stored through its Unix socket, each beside direct
library calls doing the same work in the same run, and the daemon's idle memory.

- "NDJSON batches": one keep-alive client posts batches of 500 items as NDJSON; the library
  does ``enqueue_many`` of the same batches.
- "16 clients x1": 16 keep-alive clients (threads) post one item per request; the library
  has 16 threads calling ``enqueue`` (its group commit).

Both store durably (``durability="full"``) for one destination whose endpoint is down (so
no delivery runs meanwhile). The figures go to ``extra_info`` (the report prints them):
``service_items_per_s``, ``library_items_per_s``, their ``ratio``, and the service's
``idle_rss_mib`` (VmRSS after start, before any request). Each rate is the best of as many
rounds as pytest-benchmark makes. Nothing asserts a time.
"""

import http.client
import os
import socket
import threading
import time
from typing import Any, Callable, List

import orjson
import pytest
from _support import fresh_queue, payloads, run
from servicerun import ServiceFiles, ServiceProcess, free_port

Size = Callable[[int, int], int]
BATCH = 500
CLIENTS = 16

pytest.importorskip("aiohttp", reason="the serve extra is not installed")


class UnixConnection(http.client.HTTPConnection):
    """http.client over a Unix socket, kept alive between requests."""

    def __init__(self, path: str) -> None:
        super().__init__("localhost", timeout=60)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.path)

    def post(self, body: bytes, content_type: str) -> List[int]:
        self.request("POST", "/v1/items", body=body, headers={"Content-Type": content_type})
        answer = self.getresponse()
        data = answer.read()
        assert answer.status == 201, data
        return list(orjson.loads(data)["ids"])


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    raise AssertionError("no VmRSS")


def _timed(work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _threads(count: int, work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("scenario", ["NDJSON batches", "16 clients x1"])
def test_service_ingest_against_the_library(
    benchmark: Any, tmp_path: Any, size: Size, scenario: str, backend: str
) -> None:
    benchmark.group = f"cloud-sync serve: {scenario} over the Unix socket (full)"
    files = ServiceFiles()
    files.write(f"http://127.0.0.1:{free_port()}/v1/ingest")  # down: no delivery meanwhile
    service = ServiceProcess(backend, files)
    try:
        idle_rss = _rss_mib(service.proc.pid)
        batches = size(40, 2)
        each = size(150, 10)
        items = payloads(BATCH)
        library = fresh_queue(os.path.join(os.fspath(tmp_path), "library.db"), destinations=("cloud",))
        ndjson = b"\n".join(orjson.dumps(item) for item in items)
        singles = [orjson.dumps(item) for item in items]

        if scenario == "NDJSON batches":
            count = batches * BATCH
            client = UnixConnection(files.socket)

            def direct() -> None:
                for _ in range(batches):
                    library.enqueue_many(items)

            def served() -> None:
                for _ in range(batches):
                    client.post(ndjson, "application/x-ndjson")

        else:
            count = CLIENTS * each
            clients = [UnixConnection(files.socket) for _ in range(CLIENTS)]

            def direct() -> None:
                _threads(CLIENTS, lambda w: [library.enqueue(items[n % BATCH]) for n in range(each)])

            def served() -> None:
                _threads(
                    CLIENTS, lambda w: [clients[w].post(singles[n % BATCH], "application/json") for n in range(each)]
                )

        rounds = size(3, 1)
        library_times = [_timed(direct) for _ in range(rounds + (rounds > 1))]  # as many as run() makes
        library.close()
        service_times: List[float] = []
        run(benchmark, lambda: service_times.append(_timed(served)), items=count, rounds=rounds)
        service_rate = count / min(service_times)
        library_rate = count / min(library_times)
        benchmark.extra_info.update(
            service_items_per_s=round(service_rate),
            library_items_per_s=round(library_rate),
            ratio=round(service_rate / library_rate, 3),
            idle_rss_mib=idle_rss,
        )
        print(f"\n{scenario}:", benchmark.extra_info)
    finally:
        assert service.stop() == 0, service.log
        files.cleanup()
