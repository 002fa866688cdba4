"""maybe_flush and HTTPCloudUploader against a real ingest server on 127.0.0.1."""

import gzip
import logging
import socket
import threading
import time
from typing import Any, List, Optional

import orjson
import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority, UploadError
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Recorder:
    """A custom uploader following the documented protocol."""

    def __init__(self, result: Any = True) -> None:
        self.result = result
        self.batches: List[List[Any]] = []

    def post_batch(self, payloads: List[Any]) -> Any:
        self.batches.append(payloads)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def test_flush_sends_in_priority_order_and_acks(queue: CloudSyncQueue, server: IngestServer) -> None:
    queue.enqueue_many([{"t": i} for i in range(5)])
    queue.enqueue({"c": 1}, priority=Priority.CRITICAL)
    queue.enqueue({"l": 1}, priority=Priority.LOGS)
    queue.enqueue({"a": 1}, priority=Priority.ANOMALY)
    uploader = HTTPCloudUploader(server.url, KEY, timeout=5)
    assert queue.maybe_flush(uploader) == 8
    assert server.items == [{"c": 1}, {"a": 1}] + [{"t": i} for i in range(5)] + [{"l": 1}]
    assert queue.pending_count() == 0 and queue.messages_sent_today == 8
    request = server.requests[0]
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.headers["content-type"] == "application/json"
    assert queue.maybe_flush(uploader) == 0


def test_body_is_the_stored_text_spliced(queue: CloudSyncQueue, server: IngestServer) -> None:
    queue.enqueue({"b": 2, "a": [1.5, "x"]})
    stored = rawsql.execute(queue, "SELECT payload FROM sync_queue").fetchone()[0]
    queue.maybe_flush(HTTPCloudUploader(server.url, KEY, timeout=5))
    assert server.requests[0].body == b"[" + stored.encode() + b"]"


def test_batches_are_bounded_by_items_and_bytes(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, max_batch_items=10, max_batch_bytes=300) as queue:
        queue.enqueue_many([{"i": i} for i in range(25)])
        queue.enqueue({"big": "x" * 1000})
        assert queue.maybe_flush(HTTPCloudUploader(server.url, KEY, timeout=5)) == 26
    assert [len(b) for b in server.batches] == [10, 10, 5, 1]
    assert all(len(r.body) <= 300 for r in server.requests[:3])


def test_failed_batch_is_nacked_and_kept(db_path: str, server: IngestServer) -> None:
    # A frozen clock: with full jitter the backoff may be a few milliseconds, which a busy
    # machine can spend between the flush and the peek.
    frozen = 1_800_000_000.0
    with CloudSyncQueue(db_path, max_batch_items=4, retry_base_seconds=10, clock=lambda: frozen) as queue:
        ids = queue.enqueue_many([{"i": i} for i in range(10)])
        server.fail_next(503)
        assert queue.maybe_flush(HTTPCloudUploader(server.url, KEY, timeout=5)) == 0
        assert len(server.requests) == 1  # stops at the first failed batch
        assert queue.pending_count() == 10
        retried = {item.id for item in queue.peek(n=20)}
        assert retried == set(ids[4:])
        stats = queue.get_stats()
        assert stats["retrying_items"] == 4 and queue.messages_sent_today == 0


@pytest.mark.parametrize("status", [400, 401, 403, 404, 408, 413, 429, 500, 502, 503])
def test_every_non_2xx_status_is_a_failure(queue: CloudSyncQueue, server: IngestServer, status: int) -> None:
    queue.enqueue({"a": 1})
    server.fail_next(status, retry_after="7")
    uploader = HTTPCloudUploader(server.url, KEY, timeout=5)
    with pytest.raises(UploadError) as excinfo:
        uploader.post_batch([{"a": 1}])
    assert excinfo.value.status == status and excinfo.value.retry_after == 7.0
    server.fail_next(status)
    assert queue.maybe_flush(uploader) == 0
    # Kept for a retry, except one item that is too large even alone.
    assert queue.pending_count() == (0 if status == 413 else 1)
    assert len(queue.dead_letters()) == (1 if status == 413 else 0)


def test_refused_connection_fails_fast(queue: CloudSyncQueue) -> None:
    queue.enqueue({"a": 1})
    uploader = HTTPCloudUploader(f"http://127.0.0.1:{_free_port()}/v1/ingest", KEY, timeout=5)
    started = time.monotonic()
    assert queue.maybe_flush(uploader) == 0
    assert time.monotonic() - started < 5
    assert queue.pending_count() == 1


def test_timeout_is_a_failure(queue: CloudSyncQueue) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts the connection, never answers
    try:
        queue.enqueue({"a": 1})
        uploader = HTTPCloudUploader(f"http://127.0.0.1:{listener.getsockname()[1]}/x", KEY, timeout=0.3)
        started = time.monotonic()
        assert queue.maybe_flush(uploader) == 0
        assert time.monotonic() - started < 5
        assert queue.pending_count() == 1
    finally:
        listener.close()


def test_keep_alive_reuses_one_connection(queue: CloudSyncQueue, server: IngestServer) -> None:
    uploader = HTTPCloudUploader(server.url, KEY, timeout=5)
    seen: List[Optional[int]] = []
    for i in range(3):
        queue.enqueue({"i": i})
        queue.maybe_flush(uploader)
        pool = uploader._get_pool().connection_from_url(server.url)
        seen.append(pool.num_connections)
    assert seen == [1, 1, 1]


def test_api_key_never_shown(queue: CloudSyncQueue, caplog: pytest.LogCaptureFixture) -> None:
    secret = "pyv_live_SECRET_abc123"
    uploader = HTTPCloudUploader(f"http://127.0.0.1:{_free_port()}/v1/ingest", secret, timeout=2)
    assert secret not in repr(uploader) and secret not in str(uploader)
    with pytest.raises(UploadError) as excinfo:
        uploader.post_batch([{"a": 1}])
    assert secret not in str(excinfo.value) and secret not in repr(excinfo.value)
    queue.enqueue({"a": 1})
    with caplog.at_level(logging.DEBUG):
        queue.maybe_flush(uploader)
    assert caplog.records and all(secret not in r.getMessage() for r in caplog.records)
    assert secret not in repr(vars(uploader))
    with IngestServer(api_key="other") as server:
        with pytest.raises(UploadError) as excinfo:
            HTTPCloudUploader(server.url, secret, timeout=2).post_batch([{"a": 1}])
        assert excinfo.value.status == 401 and secret not in str(excinfo.value)


def test_credentials_in_the_endpoint_are_refused_unshown() -> None:
    with pytest.raises(ValueError, match="api_key") as excinfo:
        HTTPCloudUploader("https://user:hunter2@ingest.example/v1", "k")
    assert "hunter2" not in str(excinfo.value)


@pytest.mark.parametrize("result, flushed", [(True, 3), (None, 3), (1, 3), (False, 0), (RuntimeError("down"), 0)])
def test_custom_uploader_protocol(queue: CloudSyncQueue, result: Any, flushed: int) -> None:
    queue.enqueue_many([{"i": i} for i in range(3)])
    uploader = Recorder(result)
    assert queue.maybe_flush(uploader) == flushed
    assert uploader.batches == [[{"i": 0}, {"i": 1}, {"i": 2}]]
    assert queue.pending_count() == 3 - flushed


def test_without_uploader_nothing_is_sent_or_removed(queue: CloudSyncQueue) -> None:
    queue.enqueue({"a": 1})
    assert queue.maybe_flush() == 0
    assert queue.pending_count() == 1


def test_concurrent_flushers_never_send_an_item_twice(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path) as producer:
        producer.enqueue_many([{"i": i} for i in range(3000)])
    queues = [CloudSyncQueue(db_path, max_batch_items=50) for _ in range(3)]
    uploader_results: List[int] = []

    def flush(q: CloudSyncQueue) -> None:
        uploader_results.append(q.maybe_flush(HTTPCloudUploader(server.url, KEY, timeout=10)))

    threads = [threading.Thread(target=flush, args=(q,)) for q in queues]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    received = [item["i"] for item in server.items]
    assert sorted(received) == list(range(3000))
    assert sum(uploader_results) == 3000
    for q in queues:
        q.close()


def test_flusher_that_dies_mid_upload_leaves_items_for_later(db_path: str) -> None:
    class Dies:
        def post_batch(self, payloads: List[Any]) -> None:
            raise KeyboardInterrupt  # not an Exception: propagates, as a kill would

    with CloudSyncQueue(db_path, lease_seconds=0.3) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)])
        with pytest.raises(KeyboardInterrupt):
            queue.maybe_flush(Dies())
        assert queue.peek() == [] and queue.pending_count() == 3  # leased
        time.sleep(0.35)
        recorder = Recorder()
        assert queue.maybe_flush(recorder) == 3


def test_ingest_server_accepts_gzip_bodies(server: IngestServer) -> None:
    import urllib3

    body = gzip.compress(orjson.dumps([{"z": 1}]))
    response = urllib3.PoolManager().request(
        "POST", server.url, body=body, headers={"Authorization": f"Bearer {KEY}", "Content-Encoding": "gzip"}
    )
    assert response.status == 200 and server.items == [{"z": 1}]


def test_a_set_stop_event_sends_nothing_and_a_bad_one_is_refused(queue: CloudSyncQueue, server: IngestServer) -> None:
    queue.enqueue_many([{"i": i} for i in range(3)])
    uploader = HTTPCloudUploader(server.url, "test-key", timeout=5)
    stop = threading.Event()
    stop.set()
    assert queue.maybe_flush(uploader, stop=stop) == 0 and server.items == []
    with pytest.raises(TypeError, match="stop must be a threading.Event"):
        queue.maybe_flush(uploader, stop=True)  # type: ignore[arg-type]
    assert queue.maybe_flush(uploader, stop=threading.Event()) == 3


def test_retry_now_ends_every_backoff_but_leaves_a_batch_in_flight(queue: CloudSyncQueue, db_path: str) -> None:
    first = queue.enqueue_many([{"g": 1, "i": i} for i in range(3)])
    second = queue.enqueue_many([{"g": 2, "i": i} for i in range(2)])
    queue.nack(first, retry_delay_seconds=600)
    queue.nack(second, retry_delay_seconds=3600)  # credentials-long
    flying = queue.enqueue_many([{"g": 3, "i": i} for i in range(2)])
    seen: List[List[Any]] = []

    class Meanwhile:
        """While its batch is in flight, an operator (another queue object on the file,
        as `cloud-sync flush --now` in another process) ends the backoff."""

        def post_batch(self, payloads: List[Any]) -> bool:
            seen.append(payloads)
            if len(seen) == 1:
                with CloudSyncQueue(db_path) as other:
                    assert other.retry_now() == 5  # the two waiting batches, not this one
                    assert {item.id for item in other.peek(n=10)} == set(first + second)
            return True

    assert queue.maybe_flush(Meanwhile()) == 7
    # The flying batch went once; the two retried batches went whole, in the order they were due.
    assert [sorted(p["i"] for p in batch) for batch in seen] == [[0, 1], [0, 1, 2], [0, 1]]
    assert [batch[0]["g"] for batch in seen] == [3, 1, 2]
    assert queue.pending_count() == 0 and queue.retry_now() == 0 and len(flying) == 2
