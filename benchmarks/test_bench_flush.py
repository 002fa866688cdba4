"""The flush path (claim, body, ack) and concurrent single enqueues (group commit)."""

import os
from typing import Any, Callable, Dict, Sequence

import _cases
import orjson
import pytest
from _support import (
    ReferenceQueue,
    Size,
    payloads,
    persist_queue,
    rows,
    run,
)

from pyv_edge_agent.cloud_sync import HTTPCloudUploader, _codec
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer


class ReencodingUploader:
    """Accepts every batch at once after decoding the payloads and encoding a body again: what
    a flush costs when stored text is parsed instead of spliced."""

    def __init__(self) -> None:
        self.received = 0

    def post_batch(self, payloads: Sequence[Dict[str, Any]]) -> bool:
        self.received += len(orjson.dumps(list(payloads))) and len(payloads)
        return True


@pytest.fixture(scope="module")
def server() -> Any:
    """A loopback ingest endpoint for the whole module."""
    with IngestServer(api_key="bench-key") as srv:
        yield srv


@pytest.mark.parametrize("uploader", ["splice", "decode+re-encode", "http"])
def test_flush(benchmark: Any, tmp_path: Any, size: Size, uploader: str, server: IngestServer) -> None:
    count = size(100_000, 2000)
    benchmark.group = f"flush {count:,} (loopback HTTP)" if uploader == "http" else f"flush {count:,}"
    if uploader == "http":
        target: Any = HTTPCloudUploader(server.url, api_key="bench-key")
    elif uploader == "splice":
        target = _cases.SplicingUploader()
    else:
        target = ReencodingUploader()
    case = _cases.flush(os.path.join(os.fspath(tmp_path), "flush.db"), "queue", count, target)

    def flush() -> int:
        server.batches.clear()
        server.requests.clear()
        return int(case.work())

    benchmark.extra_info["variant"] = uploader
    flushed = run(benchmark, flush, items=count, rounds=size(4, 1), setup=case.setup)
    assert flushed == count and case.stored() == 0


@pytest.mark.parametrize("backend", ["floor"])
def test_flush_floor(benchmark: Any, tmp_path: Any, size: Size, backend: str) -> None:
    count = size(100_000, 2000)
    benchmark.group = f"flush {count:,}"
    case = _cases.flush(os.path.join(os.fspath(tmp_path), "floor.db"), "floor", count)
    assert run(benchmark, case.work, items=count, rounds=size(4, 1), setup=case.setup) == count
    assert case.stored() == 0


@pytest.mark.parametrize("body", ["splice", "decode+re-encode"])
def test_flush_body(benchmark: Any, size: Size, body: str) -> None:
    """Only the body of one 500-item batch: stored text spliced, or parsed and encoded again."""
    benchmark.group = "flush body of 500 items"
    texts = [row[0].encode() for row in rows(500)]
    if body == "splice":
        make: Callable[[], bytes] = lambda: _codec.splice_body(texts)  # noqa: E731
    else:
        make = lambda: orjson.dumps([_codec.decode_payload(text) for text in texts])  # noqa: E731
    benchmark.extra_info["variant"] = body
    benchmark.extra_info["baseline"] = body == "splice"
    result = run(benchmark, make, items=500, rounds=size(200, 1))
    assert orjson.loads(result) == orjson.loads(_codec.splice_body(texts))


# -- eight threads, each enqueueing one item at a time --------------------------------------

THREADS = _cases.THREADS


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_threads(benchmark: Any, tmp_path: Any, size: Size, durability: str) -> None:
    benchmark.group = f"enqueue x1 from {THREADS} threads ({durability})"
    per_thread = size(150, 10)
    case = _cases.threads(os.path.join(os.fspath(tmp_path), "threads.db"), "queue", durability, per_thread)
    rounds = size(8, 1)
    run(benchmark, case.work, items=case.items, rounds=rounds)
    assert case.stored() == case.items * (rounds + 1 if rounds > 1 else 1)


@pytest.mark.parametrize(
    "durability, backend", [("full", "floor"), ("full", "reference"), ("full", "persist-queue"), ("fast", "floor")]
)
def test_threads_peers(benchmark: Any, tmp_path: Any, size: Size, durability: str, backend: str) -> None:
    benchmark.group = f"enqueue x1 from {THREADS} threads ({durability})"
    per_thread = size(150 if backend != "reference" else 25, 5)
    path = os.path.join(os.fspath(tmp_path), "peer.db")
    items = payloads(per_thread)
    if backend == "floor":
        case = _cases.threads(path, "floor", durability, per_thread)
        work, stored = case.work, case.stored
    elif backend == "reference":
        reference = ReferenceQueue(path)

        def enqueue(worker: int) -> None:
            for payload in items:
                reference.enqueue(payload)

        def work() -> None:
            _cases.in_threads(enqueue)

        def stored() -> int:
            return len(reference.dequeue(10**6))

    else:
        pq = persist_queue(os.path.join(os.fspath(tmp_path), "pq"), multithreading=True)

        def put(worker: int) -> None:
            for payload in items:
                pq.put(payload)

        def work() -> None:
            _cases.in_threads(put)

        def stored() -> int:
            return int(pq.qsize())

    rounds = size(8 if backend != "reference" else 3, 1)
    run(benchmark, work, items=per_thread * THREADS, rounds=rounds)
    assert stored() == per_thread * THREADS * (rounds + 1 if rounds > 1 else 1)
