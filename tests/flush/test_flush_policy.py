"""The classified flush policy against a real ingest server on 127.0.0.1: batching on the
wire, idempotency keys, every failure class, the daily budget, counters and statistics."""

import dataclasses
import email.utils
import logging
import os
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority, UploadError, UploadResult
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _uploader(server: IngestServer, **kwargs: Any) -> HTTPCloudUploader:
    return HTTPCloudUploader(server.url, KEY, timeout=kwargs.pop("timeout", 5), **kwargs)


def _retry_counts(queue: CloudSyncQueue) -> Dict[int, int]:
    return dict(rawsql.execute(queue, "SELECT id, retry_count FROM sync_queue").fetchall())


def _make_due(queue: CloudSyncQueue) -> None:
    """Move every retry time into the past, as if the backoff had passed (keeping the
    retried batches' shared times distinct, as they identify those batches)."""
    rawsql.execute(queue, "UPDATE sync_queue SET next_retry_at = next_retry_at - 1e8 WHERE next_retry_at > 0")
    queue._link.backoff_until = 0.0


# -- the wire -------------------------------------------------------------------------


def test_large_bodies_are_gzipped_and_small_ones_are_not(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, max_batch_items=10) as queue:
        queue.enqueue_many([{"i": i, "text": "reading " * 100} for i in range(10)])
        queue.enqueue({"small": 1})
        assert queue.maybe_flush(_uploader(server, gzip_min_bytes=2000)) == 11
    big, small = server.requests
    assert big.headers["content-encoding"] == "gzip" and len(big.body) < 2000
    assert "content-encoding" not in small.headers
    assert [item["i"] for item in server.items[:10]] == list(range(10)) and server.items[10] == {"small": 1}


def test_gzip_can_be_switched_off(queue: CloudSyncQueue, server: IngestServer) -> None:
    queue.enqueue({"text": "x" * 100_000})
    assert queue.maybe_flush(_uploader(server, gzip_min_bytes=None)) == 1
    assert "content-encoding" not in server.requests[0].headers


def test_retried_batch_has_the_same_idempotency_key_and_items(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, max_batch_items=3, retry_base_seconds=0.0) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)], priority=Priority.TELEMETRY)
        server.fail_next(503)
        uploader = _uploader(server)
        assert queue.maybe_flush(uploader) == 0
        # Items that arrive meanwhile and would sort first do not change the retried batch.
        queue.enqueue_many([{"new": i} for i in range(3)], priority=Priority.TELEMETRY)
        _make_due(queue)
        assert queue.maybe_flush(uploader) == 6
    first, fresh, retry = server.requests  # the new items never tried go first, on their own
    assert first.headers["idempotency-key"] == retry.headers["idempotency-key"]
    assert first.body == retry.body == b'[{"i":0},{"i":1},{"i":2}]'
    assert fresh.headers["idempotency-key"] != first.headers["idempotency-key"]
    assert len(first.headers["idempotency-key"]) >= 32


def test_lost_response_is_retried_and_the_server_drops_the_duplicate(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, retry_base_seconds=0.0) as queue:
        queue.enqueue_many([{"i": i} for i in range(5)])
        server.fail_next("lost")  # processed, then the connection drops before the answer
        assert queue.maybe_flush(_uploader(server)) == 0
        assert queue.pending_count() == 5
        _make_due(queue)
        assert queue.maybe_flush(_uploader(server)) == 5
    assert server.items == [{"i": i} for i in range(5)] and server.duplicates == 1


def test_idempotency_keys_differ_between_queue_files(tmp_path: Any, server: IngestServer) -> None:
    for name in ("a.db", "b.db"):
        with CloudSyncQueue(os.path.join(tmp_path, name)) as queue:
            queue.enqueue({"same": 1})
            assert queue.maybe_flush(_uploader(server)) == 1
    keys = {request.headers["idempotency-key"] for request in server.requests}
    assert len(keys) == 2 and len(server.items) == 2


# -- transient failures ---------------------------------------------------------------


@pytest.mark.parametrize("fault", [408, 425, 429, 500, 502, 503, 504, 404, "reset"])
def test_transient_failure_nacks_and_ends_the_call(db_path: str, server: IngestServer, fault: Any) -> None:
    with CloudSyncQueue(db_path, max_batch_items=2, retry_base_seconds=30.0) as queue:
        ids = queue.enqueue_many([{"i": i} for i in range(6)])
        server.fail_next(fault)
        assert queue.maybe_flush(_uploader(server)) == 0
        assert len(server.requests) == 1  # nothing more in that call
        assert _retry_counts(queue) == {ids[0]: 1, ids[1]: 1, ids[2]: 0, ids[3]: 0, ids[4]: 0, ids[5]: 0}
        assert queue.dead_letters() == []
        stats = queue.get_stats()
        assert stats["failed_batches"] == 1 and stats["last_error"] and stats["last_error_at"]
        assert stats["depth"] == 6 and stats["in_flight"] == 0


@pytest.mark.parametrize("where", ["refused", "dns"])
def test_unreachable_endpoint_is_transient(db_path: str, where: str) -> None:
    if where == "refused":
        uploader = HTTPCloudUploader(f"http://127.0.0.1:{_free_port()}/v1/ingest", KEY, timeout=5)
    else:
        uploader = HTTPCloudUploader("http://no-such-host.invalid/v1", KEY, timeout=5, allow_insecure_http=True)
    with CloudSyncQueue(db_path, retry_base_seconds=30.0) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)])
        assert queue.maybe_flush(uploader) == 0
        assert set(_retry_counts(queue).values()) == {1}
        assert queue.get_stats()["failed_batches"] == 1
        assert queue.backoff_seconds > 0 and queue.next_due_in() == pytest.approx(queue.backoff_seconds, abs=1)


def test_backoff_is_exponential_with_full_jitter_and_a_cap(queue: CloudSyncQueue) -> None:
    policy = dataclasses.replace(queue._policy, retry_base_seconds=1.0, retry_max_seconds=20.0)
    for attempts, ceiling in [(0, 1.0), (1, 2.0), (3, 8.0), (5, 20.0), (60, 20.0)]:
        delays = [policy.backoff_delay(attempts) for _ in range(300)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8 and min(delays) < ceiling * 0.2  # spread over the whole range


@pytest.mark.parametrize("header", ["30", "date"])
def test_retry_after_is_honoured(db_path: str, server: IngestServer, header: str) -> None:
    value = "30" if header == "30" else email.utils.formatdate(time.time() + 30, usegmt=True)
    with CloudSyncQueue(db_path, retry_base_seconds=0.0) as queue:
        queue.enqueue({"a": 1})
        server.fail_next(429, retry_after=value)
        before = time.time()
        assert queue.maybe_flush(_uploader(server)) == 0
        (next_retry_at,) = rawsql.execute(queue, "SELECT next_retry_at FROM sync_queue").fetchone()
        assert next_retry_at >= before + 28
        assert queue.peek() == [] and queue.next_due_in() > 25


def test_transient_log_line_once_per_state_change(
    db_path: str, server: IngestServer, caplog: pytest.LogCaptureFixture
) -> None:
    with CloudSyncQueue(db_path, retry_base_seconds=0.0) as queue, caplog.at_level(logging.INFO):
        queue.enqueue({"a": 1})
        uploader = _uploader(server)
        server.set_outage(503)
        for _ in range(4):
            _make_due(queue)
            assert queue.maybe_flush(uploader) == 0
        server.set_outage(None)
        _make_due(queue)
        assert queue.maybe_flush(uploader) == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "pyv_edge_agent.cloud_sync"]
    assert len(messages) == 2 and "failing" in messages[0] and "accepted again" in messages[1]


# -- too large -------------------------------------------------------------------------


def test_413_splits_at_once_and_dead_letters_a_single_oversized_item(db_path: str, server: IngestServer) -> None:
    server.set_limits(max_body_bytes=120)
    with CloudSyncQueue(db_path, max_batch_items=8) as queue:
        ids = queue.enqueue_many([{"i": i} for i in range(3)])
        huge = queue.enqueue({"huge": "x" * 500})
        ids += queue.enqueue_many([{"i": i} for i in range(3, 7)])
        assert queue.maybe_flush(_uploader(server)) == 7
        assert queue.pending_count() == 0
        (dead,) = queue.dead_letters()
    assert [item["i"] for item in server.items] == list(range(7))  # order kept across the halves
    assert dead.id == huge and dead.payload == {"huge": "x" * 500} and dead.last_status == 413
    assert "413" in (dead.last_error or "") and dead.dead_at > 0


# -- rejected items ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 422])
def test_rejected_items_are_isolated_then_dead_lettered(db_path: str, server: IngestServer, status: int) -> None:
    server.set_limits(reject=lambda item: bool(item.get("bad")), reject_status=status)
    with CloudSyncQueue(db_path, max_batch_items=16, max_attempts=2, retry_base_seconds=0.0) as queue:
        ids = queue.enqueue_many([{"i": i, "bad": i in (3, 11)} for i in range(16)])
        uploader = _uploader(server)
        assert queue.maybe_flush(uploader) == 14  # the good ones all go in the same call
        assert sorted(item["i"] for item in server.items) == [i for i in range(16) if i not in (3, 11)]
        assert len(server.requests) <= 17  # bisection: at most 2 k log2(n) + 1 requests for k bad items
        assert sorted(_retry_counts(queue)) == [ids[3], ids[11]] and queue.dead_letters() == []
        _make_due(queue)
        assert queue.maybe_flush(uploader) == 0
        dead = queue.dead_letters()
        assert [d.id for d in dead] == [ids[3], ids[11]] and queue.pending_count() == 0
        assert all(d.last_status == status and "invalid" in (d.last_error or "") for d in dead)
        stats = queue.get_stats()
        assert stats["dead_lettered"] == 2 and stats["dead_lettered_total"] == 2


def test_transient_failures_never_dead_letter(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, max_attempts=1, retry_base_seconds=0.0) as queue:
        queue.enqueue({"a": 1})
        server.set_outage(500)
        for _ in range(5):
            _make_due(queue)
            queue.maybe_flush(_uploader(server))
        assert queue.pending_count() == 1 and queue.dead_letters() == []


def test_2xx_answer_naming_rejected_indices(db_path: str, server: IngestServer) -> None:
    server.set_limits(reject=lambda item: item["i"] % 4 == 1, reject_status=200)
    with CloudSyncQueue(db_path, max_attempts=1) as queue:
        ids = queue.enqueue_many([{"i": i} for i in range(8)])
        assert queue.maybe_flush(_uploader(server)) == 6
        assert len(server.requests) == 1
        assert [d.id for d in queue.dead_letters()] == [ids[1], ids[5]]
        assert queue.dead_letters()[0].last_status == 200 and queue.pending_count() == 0
    uploader = _uploader(server)
    assert uploader.post_batch([{"i": 1}, {"i": 2}]) == UploadResult(rejected=[0], status=200, error="invalid item")


# -- credentials -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_bad_credentials_keep_everything_and_log_once(
    db_path: str, server: IngestServer, status: int, caplog: pytest.LogCaptureFixture
) -> None:
    with CloudSyncQueue(db_path, max_attempts=1, retry_max_seconds=100.0) as queue, caplog.at_level(logging.INFO):
        queue.enqueue_many([{"i": i} for i in range(5)])
        uploader = _uploader(server)
        server.set_outage(status)
        for _ in range(3):
            before = time.time()
            assert queue.maybe_flush(uploader) == 0
            assert queue.peek() == [] and queue.next_due_in() >= 49  # backs off long
            assert min(r for (r,) in rawsql.execute(queue, "SELECT next_retry_at FROM sync_queue")) >= before + 49
            _make_due(queue)
        assert queue.pending_count() == 5 and queue.dead_letters() == []
        server.set_outage(None)
        assert queue.maybe_flush(uploader) == 5
    records = [r for r in caplog.records if r.name == "pyv_edge_agent.cloud_sync"]
    assert [r.levelname for r in records] == ["ERROR", "INFO"]
    assert "credentials" in records[0].getMessage() and str(status) in records[0].getMessage()


# -- custom uploaders ----------------------------------------------------------------------


class Scripted:
    """A custom uploader that answers with the next value of ``results``."""

    def __init__(self, *results: Any) -> None:
        self.results = list(results)
        self.batches: List[List[Any]] = []

    def post_batch(self, payloads: List[Any]) -> Any:
        self.batches.append(payloads)
        result = self.results.pop(0) if self.results else True
        if isinstance(result, Exception):
            raise result
        return result


def test_upload_result_accepts_part_of_a_batch(db_path: str) -> None:
    with CloudSyncQueue(db_path, max_batch_items=6, max_attempts=1, retry_base_seconds=30.0) as queue:
        ids = queue.enqueue_many([{"i": i} for i in range(8)])
        uploader = Scripted(UploadResult(rejected=[1], retry=[4, 5], status=422, error="schema"))
        assert queue.maybe_flush(uploader) == 3  # 0, 2, 3 accepted; the call ends at the retry
        assert len(uploader.batches) == 1
        (dead,) = queue.dead_letters()
        assert dead.id == ids[1] and dead.last_status == 422 and dead.last_error == "schema"
        assert _retry_counts(queue) == {ids[4]: 1, ids[5]: 1, ids[6]: 0, ids[7]: 0}
        assert [item.id for item in queue.peek()] == [ids[6], ids[7]]  # not claimed, so not held back


@pytest.mark.parametrize("result", [False, RuntimeError("link down"), UploadResult(rejected=[7]), UploadError("x")])
def test_failing_custom_uploader_is_transient(queue: CloudSyncQueue, result: Any) -> None:
    queue.enqueue_many([{"i": i} for i in range(2)])
    assert queue.maybe_flush(Scripted(result)) == 0
    assert queue.pending_count() == 2 and queue.dead_letters() == []
    assert queue.get_stats()["failed_batches"] == 1


def test_custom_uploader_can_raise_classified_errors(queue: CloudSyncQueue) -> None:
    queue.enqueue_many([{"i": i} for i in range(2)])
    uploader = Scripted(UploadError("too big", status=413), True, UploadError("too big", status=413))
    assert queue.maybe_flush(uploader) == 1
    assert [len(batch) for batch in uploader.batches] == [2, 1, 1]
    assert [d.payload for d in queue.dead_letters()] == [{"i": 1}]


# -- budget, counters, statistics -----------------------------------------------------------


def test_daily_budget_holds_back_non_critical_items_only(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, daily_message_limit=5) as queue:
        queue.enqueue_many([{"t": i} for i in range(10)])
        queue.enqueue_many([{"c": i} for i in range(2)], priority=Priority.CRITICAL)
        uploader = _uploader(server)
        assert queue.maybe_flush(uploader) == 5
        assert queue.messages_sent_today == 5 and queue.next_due_in() is None
        queue.enqueue({"c": 2}, priority=Priority.CRITICAL)
        assert queue.next_due_in() == 0
        assert queue.maybe_flush(uploader) == 1
        assert queue.maybe_flush(uploader) == 0
        queue.reset_daily_counters()
        assert queue.maybe_flush(uploader) == 5
    assert server.items[:2] == [{"c": 0}, {"c": 1}] and server.items[5] == {"c": 2}
    assert len(server.items) == 11


def test_counters_and_stats_survive_a_restart(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, max_attempts=1, retry_base_seconds=0.0) as queue:
        queue.enqueue_many([{"i": i} for i in range(4)])
        queue.enqueue({"huge": "x" * 300})
        server.set_limits(max_body_bytes=200)
        assert queue.maybe_flush(_uploader(server)) == 4
        server.fail_next(500)
        queue.enqueue({"late": 1})
        assert queue.maybe_flush(_uploader(server)) == 0
    with CloudSyncQueue(db_path) as queue:
        stats = queue.get_stats()
    assert stats["messages_sent_today"] == 4 and stats["messages_sent_total"] == 4
    assert stats["failed_batches"] == 1 and stats["dead_lettered_total"] == 1 and stats["dead_lettered"] == 1
    assert stats["last_success_at"] > 0 and "500" in stats["last_error"]


def test_stats_per_priority_expired_and_in_flight(queue: CloudSyncQueue) -> None:
    queue.enqueue_many([{"t": i} for i in range(3)])
    queue.enqueue({"c": 1}, priority=Priority.CRITICAL)
    queue.enqueue({"gone": 1}, priority=Priority.LOGS, ttl_seconds=0)
    seen: List[Dict[str, Any]] = []

    class Peeks:
        def post_batch(self, payloads: List[Any]) -> None:
            seen.append(queue.get_stats())

    stats = queue.get_stats()
    assert stats["depth_by_priority"] == {"CRITICAL": 1, "ANOMALY": 0, "TELEMETRY": 3, "LOGS": 1}
    assert stats["expired"] == 1 and stats["in_flight"] == 0 and stats["dead_lettered"] == 0
    assert stats["last_success_at"] is None and stats["last_error"] is None
    assert {"depth", "oldest_item_timestamp", "total_retries", "retrying_items"} <= set(stats)
    assert queue.maybe_flush(Peeks()) == 4
    assert seen[0]["in_flight"] == 4 and queue.get_stats()["in_flight"] == 0


# -- concurrent flushers --------------------------------------------------------------------

FLUSH_SCRIPT = """
import sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader
queue = CloudSyncQueue(sys.argv[1], max_batch_items=25)
uploader = HTTPCloudUploader(sys.argv[2], "test-key", timeout=10)
total = 0
for _ in range(200):
    total += queue.maybe_flush(uploader)
    if not queue.pending_count():
        break
print(total)
"""


def test_two_processes_flushing_one_file_never_send_an_item_twice(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(1000)])
    server.set_delay(0.005)  # slow answers keep both flushers' batches in flight together
    procs = [
        subprocess.Popen([sys.executable, "-c", FLUSH_SCRIPT, db_path, server.url], stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    totals = [int(proc.communicate(timeout=120)[0]) for proc in procs]
    received = [item["i"] for item in server.items]
    assert sorted(received) == list(range(1000))  # each once
    assert sum(totals) == 1000 and all(totals)  # both took part
    assert server.duplicates == 0


def test_new_options_are_configuration_keys(db_path: str, server: IngestServer) -> None:
    config = {"db_path": db_path, "max_attempts": 1, "daily_message_limit": 2, "max_batch_items": 1}
    with CloudSyncQueue.from_dict(config) as queue:
        queue.enqueue_many([{"i": i} for i in range(4)])
        assert queue.maybe_flush(_uploader(server)) == 2 and len(server.requests) == 2
        assert queue._policy.max_attempts == 1


def test_wrapper_with_the_older_encoded_signature_still_works(queue: CloudSyncQueue, server: IngestServer) -> None:
    inner = _uploader(server)

    class Wrapper:
        def post_batch(self, payloads: List[Any]) -> Any:
            return inner.post_batch(payloads)

        def post_encoded_batch(self, body: bytes, count: int) -> Any:
            return inner.post_encoded_batch(body, count)

    queue.enqueue_many([{"i": i} for i in range(3)])
    assert queue.maybe_flush(Wrapper()) == 3 and server.items == [{"i": 0}, {"i": 1}, {"i": 2}]
    assert server.requests[0].headers["idempotency-key"]  # a random one from the inner uploader


def test_batch_of_a_flusher_that_died_comes_back_whole_with_its_key(db_path: str, server: IngestServer) -> None:
    keys: List[str] = []

    class DiesMidUpload:
        def post_batch(self, payloads: List[Any]) -> None:
            raise AssertionError("the encoded path is used")

        def post_encoded_batch(self, body: bytes, count: int, idempotency_key: str) -> None:
            keys.append(idempotency_key)
            raise KeyboardInterrupt  # not an Exception: propagates, as a kill would

    with CloudSyncQueue(db_path, max_batch_items=3, lease_seconds=0.2) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)])
        with pytest.raises(KeyboardInterrupt):
            queue.maybe_flush(DiesMidUpload())
        assert queue.get_stats()["in_flight"] == 3
        queue.enqueue_many([{"late": i} for i in range(3)])  # never tried: batched on their own
        time.sleep(0.25)
    # Another handle with a lease longer than the uploader's timeout (a pairing check).
    with CloudSyncQueue(db_path) as queue:
        assert queue.maybe_flush(_uploader(server)) == 6
    assert [request.headers["idempotency-key"] for request in server.requests][1] == keys[0]
    assert server.batches[1] == [{"i": 0}, {"i": 1}, {"i": 2}]
