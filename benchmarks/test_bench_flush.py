"""The flush path (claim, body, ack) and concurrent single enqueues (group commit)."""

import os
import threading
from typing import Any, Callable, Dict, List, Sequence, Tuple

import orjson
import pytest
from _support import (
    ReferenceQueue,
    Setup,
    Size,
    floor_connection,
    floor_flush,
    floor_insert_many,
    fresh_queue,
    payloads,
    persist_queue,
    rows,
    run,
)

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, _codec, _sql
from pyv_edge_agent.cloud_sync.ingest_server import IngestServer


class SplicingUploader:
    """Accepts every batch at once, taking the spliced body (the path HTTPCloudUploader uses)."""

    def __init__(self) -> None:
        self.received = 0

    def post_batch(self, payloads: Sequence[Dict[str, Any]]) -> bool:
        raise AssertionError("the flush must take the post_encoded_batch path")

    def post_encoded_batch(self, body: bytes, count: int) -> bool:
        self.received += count
        return True


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


def _filled_queues(tmp_path: Any, count: int) -> Tuple[List[CloudSyncQueue], Setup]:
    prepared = rows(count)
    queues: List[CloudSyncQueue] = []

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if queues:
            queues[-1].close()
        queues.append(fresh_queue(os.path.join(os.fspath(tmp_path), "flush.db")))
        queues[-1]._insert_rows(prepared)
        return (), {}

    return queues, setup


@pytest.mark.parametrize("uploader", ["splice", "decode+re-encode", "http"])
def test_flush(benchmark: Any, tmp_path: Any, size: Size, uploader: str, server: IngestServer) -> None:
    count = size(100_000, 2000)
    benchmark.group = f"flush {count:,} (loopback HTTP)" if uploader == "http" else f"flush {count:,}"
    queues, setup = _filled_queues(tmp_path, count)
    if uploader == "http":
        target: Any = HTTPCloudUploader(server.url, api_key="bench-key")
    elif uploader == "splice":
        target = SplicingUploader()
    else:
        target = ReencodingUploader()

    def flush() -> int:
        server.batches.clear()
        server.requests.clear()
        return queues[-1].maybe_flush(target)

    benchmark.extra_info["variant"] = uploader
    flushed = run(benchmark, flush, items=count, rounds=size(4, 1), setup=setup)
    assert flushed == count and queues[-1].pending_count() == 0


@pytest.mark.parametrize("backend", ["floor"])
def test_flush_floor(benchmark: Any, tmp_path: Any, size: Size, backend: str) -> None:
    count = size(100_000, 2000)
    benchmark.group = f"flush {count:,}"
    prepared = rows(count)
    conns: List[Any] = []

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if conns:
            conns[-1].close()
        conns.append(floor_connection(os.path.join(os.fspath(tmp_path), "floor.db")))
        floor_insert_many(conns[-1], prepared)
        return (), {}

    assert run(benchmark, lambda: floor_flush(conns[-1]), items=count, rounds=size(4, 1), setup=setup) == count


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

THREADS = 8


def _in_threads(work: Callable[[int], None]) -> None:
    threads = [threading.Thread(target=work, args=(worker,)) for worker in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


@pytest.mark.parametrize("durability", ["full", "fast"])
def test_threads(benchmark: Any, tmp_path: Any, size: Size, durability: str) -> None:
    benchmark.group = f"enqueue x1 from {THREADS} threads ({durability})"
    per_thread = size(150, 10)
    queue = fresh_queue(os.path.join(os.fspath(tmp_path), "threads.db"), durability=durability)
    items = payloads(per_thread)

    def work(worker: int) -> None:
        for payload in items:
            queue.enqueue(payload)

    rounds = size(8, 1)
    run(benchmark, lambda: _in_threads(work), items=per_thread * THREADS, rounds=rounds)
    assert queue.pending_count() == per_thread * THREADS * (rounds + 1 if rounds > 1 else 1)


@pytest.mark.parametrize(
    "durability, backend", [("full", "floor"), ("full", "reference"), ("full", "persist-queue"), ("fast", "floor")]
)
def test_threads_peers(benchmark: Any, tmp_path: Any, size: Size, durability: str, backend: str) -> None:
    benchmark.group = f"enqueue x1 from {THREADS} threads ({durability})"
    per_thread = size(150 if backend != "reference" else 25, 5)
    path = os.path.join(os.fspath(tmp_path), "peer.db")
    prepared = rows(per_thread)
    items = payloads(per_thread)
    if backend == "floor":
        # The floor's own best: a connection per thread, one autocommit INSERT per item.
        conns = [floor_connection(path, durability, fresh=not worker) for worker in range(THREADS)]

        def work(worker: int) -> None:
            conn = conns[worker]
            for row in prepared:
                conn.execute(_sql.INSERT_SQL, row)

        def stored() -> int:
            return int(conns[0].execute(_sql.COUNT_SQL).fetchone()[0])

    elif backend == "reference":
        reference = ReferenceQueue(path)

        def work(worker: int) -> None:
            for payload in items:
                reference.enqueue(payload)

        def stored() -> int:
            return len(reference.dequeue(10**6))

    else:
        pq = persist_queue(os.path.join(os.fspath(tmp_path), "pq"), multithreading=True)

        def work(worker: int) -> None:
            for payload in items:
                pq.put(payload)

        def stored() -> int:
            return int(pq.qsize())

    rounds = size(8 if backend != "reference" else 3, 1)
    run(benchmark, lambda: _in_threads(work), items=per_thread * THREADS, rounds=rounds)
    assert stored() == per_thread * THREADS * (rounds + 1 if rounds > 1 else 1)
