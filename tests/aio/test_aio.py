"""The asyncio API: a real file, a real loopback ingest server, an async uploader on
asyncio streams, and no SQLite statement ever run on the event loop's thread."""

import asyncio
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from typing import Any, Awaitable, Callable, Dict, List, Set

import pytest
from aio_support import PATIENCE, StreamPayloadUploader, StreamUploader, eventually, run

from pyv_edge_agent.cloud_sync import (
    CloudSyncError,
    CloudSyncQueue,
    HTTPCloudUploader,
    Priority,
    QueueFullError,
    SyncWorker,
)
from pyv_edge_agent.cloud_sync.aio import AsyncCloudSyncQueue, AsyncSyncWorker
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"


def stored_payloads(db_path: str) -> Dict[int, Any]:
    """Every stored item by id, read with a connection of its own."""
    with CloudSyncQueue(db_path) as queue:
        return {item.id: item.payload for item in queue.dequeue(batch_size=100_000)}


def raw_texts(db_path: str) -> Dict[int, str]:
    conn = sqlite3.connect(db_path)
    try:
        return dict(conn.execute("SELECT id, payload FROM sync_queue"))
    finally:
        conn.close()


class SqlThreads:
    """Records the thread of every SQL statement the queue's connection runs."""

    def __init__(self, queue: CloudSyncQueue) -> None:
        self.threads: Set[int] = set()
        self.statements = 0
        queue._store.conn().set_trace_callback(self._trace)

    def _trace(self, statement: str) -> None:
        self.threads.add(threading.get_ident())
        self.statements += 1


# -- the API ----------------------------------------------------------------------------


def test_every_call_works_like_the_sync_queue(db_path: str) -> None:
    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, durability="full") as queue:
            first = await queue.enqueue(
                {"sensor": "boiler", "value": 85.0}, priority=Priority.CRITICAL, ttl_seconds=3600
            )
            many = await queue.enqueue_many([{"i": i} for i in range(5)], Priority.LOGS)
            expired = await queue.enqueue({"old": True}, ttl_seconds=0)
            assert many == list(range(first + 1, first + 6)) and expired == first + 6
            assert await queue.pending_count() == 7
            up_next = await queue.peek(n=2)
            assert [item.id for item in up_next] == [first, many[0]]
            assert [item.id for item in await queue.peek(3, priority=Priority.LOGS)] == many[:3]
            batch = await queue.dequeue(batch_size=10)
            assert [item.id for item in batch] == [first] + many
            assert await queue.nack(many[:2], retry_delay_seconds=300.0) == 2
            assert [item.id for item in await queue.dequeue(10)] == [first] + many[2:]
            assert await queue.ack([first, many[4]]) == 2
            stats = await queue.get_stats()
            assert stats["depth"] == 5 and stats["retrying_items"] == 2 and stats["expired"] == 1
            assert await queue.purge_expired() == 1
            assert (await queue.next_due_in()) == 0
            assert queue.db_path == db_path and "AsyncCloudSyncQueue" in repr(queue)

    run(main)
    assert sorted(raw_texts(db_path).values()) == ['{"i":0}', '{"i":1}', '{"i":2}', '{"i":3}']


def test_stored_text_is_what_the_sync_queue_stores(db_path: str) -> None:
    payload = {"t": float("nan"), "big": 2**62, 3: "int key", "nested": {"u": "snowman \u2603", "l": [1.5, None]}}

    async def main() -> int:
        async with AsyncCloudSyncQueue(db_path) as queue:
            return await queue.enqueue(payload)

    async_id = run(main)
    with CloudSyncQueue(db_path) as queue:
        sync_id = queue.enqueue(payload)
    texts = raw_texts(db_path)
    assert texts[async_id] == texts[sync_id]


def test_bad_input_raises_in_its_caller_and_writes_nothing(db_path: str) -> None:
    bad: List[Callable[[AsyncCloudSyncQueue], Awaitable[Any]]] = [
        lambda q: q.enqueue(["not", "a", "dict"]),  # type: ignore[arg-type]
        lambda q: q.enqueue({"a": 1}, priority=7),  # type: ignore[arg-type]
        lambda q: q.enqueue({"a": 1}, ttl_seconds=-1),
        lambda q: q.enqueue({"a": 1}, ttl_seconds="1"),  # type: ignore[arg-type]
        lambda q: q.enqueue_many([{"a": 1}, "bad"]),  # type: ignore[list-item]
        lambda q: q.enqueue_many(7),  # type: ignore[arg-type]
        lambda q: q.dequeue(0),
        lambda q: q.nack([1], retry_delay_seconds=-5),
        lambda q: q.ack(["x"]),  # type: ignore[list-item]
        lambda q: q.flush(object()),
    ]

    async def main() -> List[Any]:
        async with AsyncCloudSyncQueue(db_path) as queue:
            good = [queue.enqueue({"good": i}) for i in range(20)]
            return await asyncio.gather(*good[:10], *(call(queue) for call in bad), *good[10:], return_exceptions=True)

    outcomes = run(main)
    errors = outcomes[10:-10]
    assert all(isinstance(error, (TypeError, ValueError)) for error in errors), errors
    names = ["payload", "priority", "ttl_seconds", "ttl_seconds", "payload", "payloads", "batch_size", "retry_delay"]
    for error, name in zip(errors, names):
        assert name in str(error) or "dict" in str(error), (name, error)
    ids = outcomes[:10] + outcomes[-10:]
    assert stored_payloads(db_path) == {row_id: {"good": i} for i, row_id in enumerate(ids)}


def test_constructor_options_and_wrap(db_path: str) -> None:
    with pytest.raises(ValueError, match="durability"):
        AsyncCloudSyncQueue(db_path, durability="sometimes")
    with pytest.raises(TypeError, match="CloudSyncQueue"):
        AsyncCloudSyncQueue.wrap(db_path)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="durabilty"):
        AsyncCloudSyncQueue.from_dict({"db_path": db_path, "durabilty": "fast"})
    configured = AsyncCloudSyncQueue.from_dict({"db_path": db_path, "durability": "fast"})
    asyncio.run(configured.close())

    async def main() -> None:
        queue = await AsyncCloudSyncQueue.open(db_path, max_queue_items=10, durability="fast")
        await queue.enqueue_many([{"i": i} for i in range(10)], Priority.LOGS)
        await queue.enqueue({"i": 10}, Priority.LOGS)  # evicts the oldest, as the sync queue does
        assert (await queue.get_stats())["evicted_total"] == 1
        await queue.close()
        await queue.close()  # a second close is harmless
        assert queue.closed
        with pytest.raises(CloudSyncError, match="closed"):
            await queue.enqueue({"late": True})
        with pytest.raises(CloudSyncError, match="closed"):
            await queue.dequeue()

        with CloudSyncQueue(db_path) as shared:
            async with AsyncCloudSyncQueue.wrap(shared) as wrapped:
                await wrapped.enqueue({"wrapped": True})
            assert shared.pending_count() == 11  # close() left the wrapped queue open

    run(main)


# -- group commit -----------------------------------------------------------------------


def test_concurrent_enqueues_share_one_transaction_off_the_loop(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    sync_queue = CloudSyncQueue(db_path)
    commits: List[int] = []
    enqueue_many = sync_queue.enqueue_many

    def recording(payloads: Any, *args: Any) -> List[int]:
        commits.append(len(payloads))
        return enqueue_many(payloads, *args)

    monkeypatch.setattr(sync_queue, "enqueue_many", recording)
    sql = SqlThreads(sync_queue)

    async def main() -> Dict[int, Any]:
        queue = AsyncCloudSyncQueue.wrap(sync_queue)
        payloads = [{"coroutine": i} for i in range(1000)]
        ids = await asyncio.gather(*(queue.enqueue(p) for p in payloads))
        # A second wave while the loop is busy: still grouped, never one commit per item.
        more = await asyncio.gather(*(queue.enqueue({"coroutine": 1000 + i}) for i in range(300)))
        await queue.close()
        assert threading.get_ident() not in sql.threads
        return dict(zip(ids + more, payloads + [{"coroutine": 1000 + i} for i in range(300)]))

    returned = run(main)
    sync_queue.close()
    assert len(returned) == 1300
    # Every coroutine that was ready when the first commit started went into it.
    assert commits[0] == 1000 and sum(commits) == 1300 and len(commits) < 30
    assert stored_payloads(db_path) == returned


def test_a_failed_item_fails_only_its_own_caller(db_path: str) -> None:
    with CloudSyncQueue(db_path, max_queue_items=4) as queue:
        queue.enqueue_many([{"held": i} for i in range(3)], Priority.CRITICAL)

        async def main() -> List[Any]:
            wrapped = AsyncCloudSyncQueue.wrap(queue)
            calls = [wrapped.enqueue({"new": i}, Priority.CRITICAL) for i in range(3)]
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
            with pytest.raises(QueueFullError):  # all or nothing, as in the sync queue
                await wrapped.enqueue_many([{"many": i} for i in range(2)], Priority.CRITICAL)
            await wrapped.close()
            return outcomes

        outcomes = run(main)
        ids = [outcome for outcome in outcomes if isinstance(outcome, int)]
        assert len(ids) == 1
        assert sum(isinstance(outcome, QueueFullError) for outcome in outcomes) == 2
        assert queue.pending_count() == 4
    assert sorted(stored_payloads(db_path).values(), key=str)[-1] == {"new": outcomes.index(ids[0])}


def test_cancelled_enqueues_are_stored_and_never_started_ones_are_not(db_path: str) -> None:
    async def main() -> None:
        queue = AsyncCloudSyncQueue(db_path)
        started = [asyncio.ensure_future(queue.enqueue({"started": i})) for i in range(200)]
        await asyncio.sleep(0)  # each coroutine runs up to its first await: its item is handed over
        never = [asyncio.ensure_future(queue.enqueue({"never": i})) for i in range(50)]
        for task in started + never:
            task.cancel()
        outcomes = await asyncio.gather(*started, *never, return_exceptions=True)
        assert all(isinstance(outcome, asyncio.CancelledError) for outcome in outcomes)
        await queue.close()  # returns once the handed-over items are stored

    run(main)
    assert sorted(payload["started"] for payload in stored_payloads(db_path).values()) == list(range(200))


# -- flushing ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["encoded", "decoded"])
def test_flush_awaits_an_async_uploader_on_the_loop(db_path: str, server: IngestServer, form: str) -> None:
    sent = [{"i": i, "p": i % 4 + 1} for i in range(230)]

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, max_batch_items=50) as queue:
            sql = SqlThreads(queue.queue)
            for priority in Priority:
                await queue.enqueue_many([p for p in sent if p["p"] == priority.value], priority)
            uploader: Any = (
                StreamUploader(server.url, KEY) if form == "encoded" else StreamPayloadUploader(server.url, KEY)
            )
            assert await queue.flush(uploader) == 230
            assert await queue.pending_count() == 0
            stream = uploader if form == "encoded" else uploader.stream
            assert stream.threads == {threading.get_ident()}  # the coroutines ran on this loop
            assert threading.get_ident() not in sql.threads and sql.statements > 0

    run(main)
    assert server.items == sorted(sent, key=lambda p: p["p"])  # priority order, nothing twice
    assert len(server.batches) == 5 and server.duplicates == 0
    keys = [request.headers.get("idempotency-key") for request in server.requests]
    assert all(keys) and len(set(keys)) == 5


def test_an_async_uploader_with_the_older_encoded_signature(db_path: str, server: IngestServer) -> None:
    """``post_encoded_batch(body, count)`` without the key: the flush sees the uploader's own
    signature through the bridge and leaves the key out."""

    class Older:
        def __init__(self) -> None:
            self.stream = StreamUploader(server.url, KEY)
            self.counts: List[int] = []

        async def post_batch(self, payloads: List[Any]) -> None:
            raise AssertionError("the encoded form is used when there is one")

        async def post_encoded_batch(self, body: bytes, count: int) -> None:
            self.counts.append(count)
            await self.stream.post_encoded_batch(body, count, f"older-{len(self.counts)}")

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, max_batch_items=4) as queue:
            await queue.enqueue_many([{"i": i} for i in range(10)])
            uploader = Older()
            assert await queue.flush(uploader) == 10 and uploader.counts == [4, 4, 2]

    run(main)
    assert [item["i"] for item in server.items] == list(range(10))


def test_the_sync_flush_refuses_an_async_uploader(db_path: str, server: IngestServer) -> None:
    """Never taken as accepting (the coroutine would not even have run): refused up front,
    or, for a plain method that returns an awaitable, a failed batch that is kept."""

    class Sneaky:
        def post_batch(self, payloads: List[Any]) -> Any:
            return asyncio.sleep(0)

    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)])
        with pytest.raises(TypeError, match="post_batch is a coroutine function.*AsyncCloudSyncQueue"):
            queue.maybe_flush(StreamUploader(server.url, KEY))
        with pytest.raises(TypeError, match="coroutine function"):
            SyncWorker(queue, StreamPayloadUploader(server.url, KEY))
        assert queue.get_stats()["retrying_items"] == 0
        assert queue.maybe_flush(Sneaky()) == 0
        stats = queue.get_stats()
        assert stats["depth"] == 3 and stats["retrying_items"] == 3 and "awaitable" in stats["last_error"]
    assert server.requests == []


def test_the_sync_flush_stops_between_batches_when_asked(db_path: str, server: IngestServer) -> None:
    stop = threading.Event()

    class StopAfterFirst(HTTPCloudUploader):
        def post_encoded_batch(self, body: bytes, count: int, idempotency_key: str = "") -> Any:
            stop.set()  # as another thread would, while this batch is in flight
            return super().post_encoded_batch(body, count, idempotency_key=idempotency_key)

    with CloudSyncQueue(db_path, max_batch_items=10) as queue:
        queue.enqueue_many([{"i": i} for i in range(30)])
        with pytest.raises(TypeError, match="stop must be a threading.Event"):
            queue.maybe_flush(StopAfterFirst(server.url, KEY, timeout=5), stop=True)  # type: ignore[arg-type]
        assert queue.maybe_flush(StopAfterFirst(server.url, KEY, timeout=5), stop=stop) == 10
        assert queue.pending_count() == 20 and queue.get_stats()["in_flight"] == 0
        assert queue.maybe_flush(StopAfterFirst(server.url, KEY, timeout=5), stop=stop) == 0  # set: nothing starts
    assert [item["i"] for item in server.items] == list(range(10))


def test_flush_runs_a_sync_uploader_off_the_loop(db_path: str, server: IngestServer) -> None:
    class Recording(HTTPCloudUploader):
        threads: Set[int] = set()

        def post_encoded_batch(self, body: bytes, count: int, idempotency_key: str = "") -> Any:
            self.threads.add(threading.get_ident())
            return super().post_encoded_batch(body, count, idempotency_key=idempotency_key)

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, max_batch_items=40) as queue:
            await queue.enqueue_many([{"i": i} for i in range(100)])
            uploader = Recording(server.url, KEY, timeout=5)
            assert await queue.flush(uploader) == 100
            assert uploader.threads and threading.get_ident() not in uploader.threads

    run(main)
    assert [item["i"] for item in server.items] == list(range(100))


def test_async_upload_outcomes_are_classified_as_for_sync_ones(db_path: str, server: IngestServer) -> None:
    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path) as queue:
            uploader = StreamUploader(server.url, KEY)
            await queue.enqueue_many([{"i": i} for i in range(10)])
            server.set_limits(reject=lambda item: item["i"] == 3, reject_status=200)
            assert await queue.flush(uploader) == 9  # an UploadResult: the rest accepted
            stats = await queue.get_stats()
            assert stats["depth"] == 1 and stats["retrying_items"] == 1
            server.set_limits()
            await queue.enqueue_many([{"i": i} for i in range(10, 15)])
            server.fail_next(503, retry_after="120")
            assert await queue.flush(uploader) == 0  # an UploadError raised on the loop
            stats = await queue.get_stats()
            assert stats["failed_batches"] == 1 and stats["retrying_items"] == 6
            assert "503" in stats["last_error"] and queue.queue.backoff_seconds > 100  # Retry-After

    run(main)
    assert sorted(item["i"] for item in server.items) == [0, 1, 2, 4, 5, 6, 7, 8, 9]


def test_a_cancelled_flush_settles_its_batch_and_sends_no_more(db_path: str, server: IngestServer) -> None:
    server.set_delay(1.0)  # time enough to stop it before a second batch

    async def main() -> None:
        queue = AsyncCloudSyncQueue(db_path, max_batch_items=10)
        await queue.enqueue_many([{"i": i} for i in range(100)])
        uploader = StreamUploader(server.url, KEY)
        flush = asyncio.ensure_future(queue.flush(uploader))
        assert await eventually(lambda: uploader.started == 1)
        flush.cancel()
        with pytest.raises(asyncio.CancelledError):
            await flush
        await queue.close()  # waits for the batch in flight to be settled
        assert uploader.started == uploader.finished == 1

    run(main)
    assert [item["i"] for item in server.items] == list(range(10))
    with CloudSyncQueue(db_path) as queue:
        stats = queue.get_stats()
        assert stats["depth"] == 90 and stats["in_flight"] == 0 and stats["messages_sent_total"] == 10
        assert len(queue.dequeue(100)) == 90  # the rest is not leased: it goes with the next flush


def test_an_upload_cut_short_by_the_loop_ending_keeps_its_batch(db_path: str, server: IngestServer) -> None:
    """``asyncio.run`` returns with the flush still uploading: the loop cancels the upload
    coroutine, the flush thread hears of it, and the batch is nacked, not lost."""
    server.set_delay(1.0)
    queue = AsyncCloudSyncQueue(db_path, retry_base_seconds=0, retry_max_seconds=0)
    uploader = StreamUploader(server.url, KEY)

    async def main() -> None:
        await queue.enqueue_many([{"i": i} for i in range(10)])
        asyncio.ensure_future(queue.flush(uploader))
        # Sent, not only begun: a cancel before the request left would give the server nothing.
        assert await eventually(lambda: uploader.sent == 1)

    run(main)
    sync_queue = queue.queue
    deadline = time.monotonic() + PATIENCE
    while sync_queue.get_stats()["failed_batches"] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    stats = sync_queue.get_stats()
    assert stats["failed_batches"] == 1 and stats["depth"] == 10 and stats["in_flight"] == 0
    assert "cancelled" in str(stats["last_error"])
    # The server got the batch all the same: the retry carries the same key and is dropped.
    while len(server.batches) < 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    server.set_delay(0)
    assert sync_queue.maybe_flush(HTTPCloudUploader(server.url, KEY, timeout=5)) == 10
    assert [item["i"] for item in server.items] == list(range(10)) and server.duplicates == 1
    sync_queue.close()


# -- the worker -------------------------------------------------------------------------


def test_worker_drains_the_queue_and_stops(db_path: str, server: IngestServer) -> None:
    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, max_batch_items=20) as queue:
            await queue.enqueue_many([{"i": i} for i in range(100)])
            worker = AsyncSyncWorker(queue, StreamUploader(server.url, KEY), interval=0.05).start()
            assert await eventually(lambda: len(server.items) == 100)
            await queue.enqueue({"i": 100})
            assert await eventually(lambda: len(server.items) == 101)
            await worker.stop()
            assert not worker.is_alive() and worker.flushed == 101 and queue.queue._link.wakers == []
            assert "stopped" in repr(worker)

    run(main)
    assert sorted(item["i"] for item in server.items) == list(range(101))


def test_a_critical_item_wakes_the_worker_from_a_coroutine_or_a_thread(db_path: str, server: IngestServer) -> None:
    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path) as queue:
            async with AsyncSyncWorker(queue, StreamUploader(server.url, KEY), interval=3600) as worker:
                assert worker.is_alive()
                await asyncio.sleep(0.2)  # the first look found nothing: it sleeps for the hour
                await queue.enqueue({"t": 1})  # not critical: waits for the interval
                await queue.enqueue({"alarm": 1}, priority=Priority.CRITICAL)
                assert await eventually(lambda: len(server.items) == 2)
                # Sync code in another thread, through the queue underneath.
                thread = threading.Thread(target=queue.queue.enqueue, args=({"alarm": 2}, Priority.CRITICAL))
                thread.start()
                assert await eventually(lambda: len(server.items) == 3)
                thread.join()

    run(main)
    # The flush the alarm started took the waiting item along (or, on a machine too busy
    # for the worker to be asleep by then, the item went first).
    assert sorted(map(str, server.items[:2])) == ["{'alarm': 1}", "{'t': 1}"] and server.items[2] == {"alarm": 2}


def test_stopping_the_worker_settles_the_batch_in_flight(db_path: str, server: IngestServer) -> None:
    server.set_delay(1.0)  # time enough to stop it before a second batch

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, max_batch_items=10) as queue:
            await queue.enqueue_many([{"i": i} for i in range(100)])
            uploader = StreamUploader(server.url, KEY)
            worker = AsyncSyncWorker(queue, uploader, interval=0.05).start()
            assert await eventually(lambda: uploader.started == 1)
            await worker.stop()
            assert uploader.finished == 1 and worker.flushed == 10
            stats = await queue.get_stats()
            assert stats["depth"] == 90 and stats["in_flight"] == 0

    run(main)
    assert [item["i"] for item in server.items] == list(range(10))


def test_the_worker_sleeps_through_a_backoff_and_ends_with_the_queue(db_path: str, server: IngestServer) -> None:
    server.set_outage(503)

    async def main() -> None:
        queue = AsyncCloudSyncQueue(db_path, retry_base_seconds=0.4, retry_max_seconds=1.0)
        await queue.enqueue({"a": 1})
        worker = AsyncSyncWorker(queue, StreamUploader(server.url, KEY), interval=0.01).start()
        await asyncio.sleep(2.0)
        # Polling every 10 ms would have made about 200 attempts; the backoff allows a few.
        assert 1 <= len(server.requests) <= 15
        await queue.close()
        assert await eventually(lambda: not worker.is_alive())
        await worker.stop()

    run(main)


def test_closing_the_queue_ends_a_sleeping_worker(db_path: str) -> None:
    async def main() -> None:
        queue = AsyncCloudSyncQueue(db_path)
        worker = AsyncSyncWorker(queue, StreamUploader("http://127.0.0.1:9/x", KEY), interval=3600).start()
        await asyncio.sleep(0.2)  # asleep for the hour
        await queue.close()
        assert await eventually(lambda: not worker.is_alive())
        await worker.stop()
        assert queue.queue._link.wakers == []

    run(main)


def test_worker_arguments_are_checked(db_path: str) -> None:
    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path) as queue:
            with pytest.raises(TypeError, match="post_batch"):
                AsyncSyncWorker(queue, object())
            with pytest.raises(ValueError, match="interval"):
                AsyncSyncWorker(queue, StreamUploader("http://127.0.0.1:9/x", KEY), interval=0)
            with pytest.raises(TypeError, match="AsyncCloudSyncQueue"):
                AsyncSyncWorker(queue.queue, StreamUploader("http://127.0.0.1:9/x", KEY))  # type: ignore[arg-type]
            with pytest.raises(TypeError, match="handle_sigterm must be a bool, got str"):
                AsyncSyncWorker(queue, StreamUploader("http://127.0.0.1:9/x", KEY), handle_sigterm="yes")  # type: ignore[arg-type]

    run(main)


def test_worker_puts_the_sigterm_handler_back_when_stopped(db_path: str) -> None:
    before = signal.getsignal(signal.SIGTERM)

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path) as queue:
            async with AsyncSyncWorker(queue, StreamUploader("http://127.0.0.1:9/x", KEY), interval=3600):
                assert signal.getsignal(signal.SIGTERM) is not before  # from the main thread: installed
            assert signal.getsignal(signal.SIGTERM) is before
            async with AsyncSyncWorker(queue, StreamUploader("http://127.0.0.1:9/x", KEY), handle_sigterm=False):
                assert signal.getsignal(signal.SIGTERM) is before

    run(main)


# -- sharing the file -------------------------------------------------------------------

WRITER_SCRIPT = """
import sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue
with CloudSyncQueue(sys.argv[1]) as queue:
    for i in range(int(sys.argv[2])):
        queue.enqueue({"process": i})
"""


def test_the_file_is_shared_with_sync_threads_and_processes(db_path: str) -> None:
    async def main() -> Dict[int, Any]:
        async with AsyncCloudSyncQueue(db_path) as queue:
            other = CloudSyncQueue(db_path)
            thread = threading.Thread(target=lambda: [other.enqueue({"thread": i}) for i in range(200)])
            process = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, db_path, "200"])
            thread.start()
            payloads = [{"coroutine": i} for i in range(500)]
            ids: List[int] = []
            for start in range(0, 500, 100):
                ids += await asyncio.gather(*(queue.enqueue(p) for p in payloads[start : start + 100]))
            thread.join(PATIENCE)
            other.close()
            assert await asyncio.get_running_loop().run_in_executor(None, process.wait, PATIENCE) == 0
            return dict(zip(ids, payloads))

    returned = run(main)
    stored = stored_payloads(db_path)
    assert len(stored) == 900 and all(stored[row_id] == payload for row_id, payload in returned.items())
    assert CloudSyncQueue.verify_file(db_path).ok


def test_a_loop_that_stops_under_an_upload_does_not_hold_the_flush(db_path: str, server: IngestServer) -> None:
    """A loop stopped (not closed) with the upload coroutine pending: the flush thread
    notices, counts a failed batch and keeps it, instead of waiting for ever."""
    server.set_delay(1.0)
    loop = asyncio.new_event_loop()
    queue = AsyncCloudSyncQueue(db_path)
    uploader = StreamUploader(server.url, KEY)

    async def start() -> None:
        await queue.enqueue_many([{"i": i} for i in range(10)])
        asyncio.ensure_future(queue.flush(uploader))
        assert await eventually(lambda: uploader.started == 1)

    try:
        loop.run_until_complete(start())  # returns with the flush and its upload pending
        deadline = time.monotonic() + PATIENCE
        while queue.queue.get_stats()["failed_batches"] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        stats = queue.queue.get_stats()
        assert stats["failed_batches"] == 1 and stats["depth"] == 10 and stats["in_flight"] == 0
        assert "stopped" in str(stats["last_error"])
    finally:
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(queue.close())
        loop.close()
