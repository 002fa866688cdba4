"""Several batches in flight (``max_in_flight_batches``): a long link kept busy, each batch
on its own lease and key, a failure settled without touching the others' outcomes, the
most important first. The long round trip comes from ``LatencyRelay`` (loopback); the one
timing comparison is a ratio of two drains measured in the same test."""

import asyncio
import collections
import os
import threading
import time
from typing import Any, Dict, List

import pytest
from aio_support import run as aio_run
from latencyrelay import LatencyRelay
from waiting import wait_for

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority, SyncWorker
from pyv_edge_agent.cloud_sync.aio import AsyncCloudSyncQueue
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"
ONE_WAY = 0.1  # a 200 ms round trip, an ordinary cellular one


def _relayed(relay: LatencyRelay) -> HTTPCloudUploader:
    return HTTPCloudUploader(f"http://127.0.0.1:{relay.port}/v1/ingest", KEY, timeout=20.0)


def _drain(db_path: str, server: IngestServer, in_flight: int, items: int) -> "tuple[float, int]":
    """Seconds to drain ``items`` telemetry items in batches of 100 through a 200 ms round
    trip, and the connections the uploader made."""
    with CloudSyncQueue(db_path, max_batch_items=100, max_in_flight_batches=in_flight) as queue:
        queue.enqueue_many([{"n": n} for n in range(items)])
        with LatencyRelay(server.port, ONE_WAY) as relay:
            uploader = _relayed(relay)
            started = time.monotonic()
            assert queue.maybe_flush(uploader) == items
            seconds = time.monotonic() - started
            uploader.close()
            assert queue.pending_count() == 0
        return seconds, relay.connections


def test_four_batches_in_flight_drain_a_long_link_in_well_under_half_the_time(tmp_path: Any) -> None:
    with IngestServer(api_key=KEY) as server:
        one, one_connections = _drain(str(tmp_path / "one.db"), server, 1, 3000)
        four, four_connections = _drain(str(tmp_path / "four.db"), server, 4, 3000)
        assert sorted(item["n"] for item in server.items) == sorted(list(range(3000)) * 2)
    # 30 round trips one after the other against about 8 four at a time.
    assert four < 0.4 * one, (one, four)
    # The keep-alive pool holds a connection per batch in flight, and no more.
    assert one_connections == 1
    assert 2 <= four_connections <= 4


def test_a_critical_item_waits_for_no_more_than_the_batches_in_flight(db_path: str) -> None:
    in_flight = 4
    with IngestServer(api_key=KEY) as server, LatencyRelay(server.port, ONE_WAY / 2) as relay:
        with CloudSyncQueue(db_path, max_batch_items=50, max_in_flight_batches=in_flight) as queue:
            queue.enqueue_many([{"kind": "telemetry", "n": n} for n in range(2000)])
            queue.enqueue({"kind": "critical", "n": -1}, Priority.CRITICAL)
            flush = threading.Thread(target=queue.maybe_flush, args=(_relayed(relay),))
            flush.start()
            assert wait_for(lambda: len(server.batches) >= 8)
            arrived = len(server.batches)
            queue.enqueue({"kind": "critical", "n": -2}, Priority.CRITICAL)
            flush.join(60)
            assert not flush.is_alive()
    batches = server.batches
    # Enqueued before the flush, it leads the first batch claimed; the batches claimed with
    # it may arrive before it, no others.
    first = next(index for index, batch in enumerate(batches) if {"kind": "critical", "n": -1} in batch)
    assert first < in_flight and batches[first][0] == {"kind": "critical", "n": -1}
    late = next(index for index, batch in enumerate(batches) if {"kind": "critical", "n": -2} in batch)
    # Behind at most the batches in flight when it came, and one being claimed at that moment.
    assert late - arrived <= in_flight + 1, (arrived, late)
    assert sum(len(batch) for batch in batches) == 2002


def test_a_503_on_every_third_batch_in_flight_loses_and_duplicates_nothing(db_path: str) -> None:
    with IngestServer(api_key=KEY) as server:
        server.set_delay(0.05)  # so that the batches overlap
        for _ in range(20):
            server.fail_next(200, 2)
            server.fail_next(503)
        options: Dict[str, Any] = {"retry_base_seconds": 0.0, "retry_max_seconds": 0.0}
        with CloudSyncQueue(db_path, max_batch_items=100, max_in_flight_batches=4, **options) as queue:
            queue.enqueue_many([{"n": n} for n in range(1200)])
            uploader = HTTPCloudUploader(server.url, KEY)
            flushes = 0
            while queue.pending_count() and flushes < 50:
                queue.maybe_flush(uploader)
                flushes += 1
            assert queue.pending_count() == 0
            stats = queue.get_stats()
        statuses = collections.Counter(request.status for request in server.requests)
    assert statuses[503] >= 2
    assert flushes >= 2  # each 503 ended a flush
    counts = collections.Counter(item["n"] for item in server.items)
    # At least once, and here exactly once: a retry carries its batch's key, and a 503'd
    # batch was never recorded.
    assert sorted(counts) == list(range(1200))
    assert set(counts.values()) == {1}
    assert stats["messages_sent_total"] == 1200
    assert stats["failed_batches"] == statuses[503]
    assert stats["in_flight"] == 0


def test_a_failure_keeps_its_backoff_while_the_batches_in_flight_are_accepted(db_path: str) -> None:
    with IngestServer(api_key=KEY) as server:
        server.set_delay(0.1)
        server.fail_next(503)
        with CloudSyncQueue(db_path, max_batch_items=10, max_in_flight_batches=4, retry_base_seconds=60.0) as queue:
            queue.enqueue_many([{"n": n} for n in range(100)])
            acked = queue.maybe_flush(HTTPCloudUploader(server.url, KEY))
            assert 0 < acked <= 30  # the three batches in flight beside the failed one
            assert queue.backoff_seconds > 0
            assert queue.pending_count() == 100 - acked
    assert len(server.items) == acked


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (17, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError)]
)
def test_bad_values_are_refused_naming_the_argument(db_path: str, value: Any, error: type) -> None:
    with pytest.raises(error, match="max_in_flight_batches"):
        CloudSyncQueue(db_path, max_in_flight_batches=value)
    with pytest.raises(error, match="max_in_flight_batches"):
        CloudSyncQueue.from_dict({"db_path": db_path, "max_in_flight_batches": value})
    with pytest.raises(error, match=r"destinations\['a'\].*max_in_flight_batches"):
        CloudSyncQueue(db_path, destinations={"a": {"max_in_flight_batches": value}})
    assert not os.path.exists(db_path)


def test_each_destination_has_its_own_number_in_flight(db_path: str) -> None:
    config = {
        "db_path": db_path,
        "max_batch_items": 50,
        "destinations": {"fast": {"max_in_flight_batches": 4}, "slow": {}},
    }
    with IngestServer(api_key=KEY) as server, CloudSyncQueue.from_dict(config) as queue:
        queue.enqueue_many([{"n": n} for n in range(600)])
        connections = {}
        for name in ("fast", "slow"):
            with LatencyRelay(server.port, ONE_WAY / 4) as relay:
                assert queue.maybe_flush(_relayed(relay), destination=name) == 600
            connections[name] = relay.connections
        assert queue.pending_count() == 0
    assert 2 <= connections["fast"] <= 4
    assert connections["slow"] == 1
    assert collections.Counter(item["n"] for item in server.items) == collections.Counter(list(range(600)) * 2)


class _CountingUploader:
    """A coroutine uploader that remembers how many of its calls overlapped at most."""

    def __init__(self) -> None:
        self.running = 0
        self.most = 0
        self.received: List[Any] = []

    async def post_batch(self, payloads: List[Any]) -> bool:
        self.running += 1
        self.most = max(self.most, self.running)
        await asyncio.sleep(0.05)
        self.received += payloads
        self.running -= 1
        return True


def test_the_asyncio_flush_keeps_batches_in_flight(db_path: str) -> None:
    async def main() -> "tuple[int, _CountingUploader]":
        uploader = _CountingUploader()
        async with await AsyncCloudSyncQueue.open(db_path, max_batch_items=10, max_in_flight_batches=3) as queue:
            await queue.enqueue_many([{"n": n} for n in range(120)])
            acked = await queue.flush(uploader)
        return acked, uploader

    acked, uploader = aio_run(main)
    assert acked == 120
    assert uploader.most == 3
    assert sorted(item["n"] for item in uploader.received) == list(range(120))


def test_the_worker_keeps_batches_in_flight(db_path: str) -> None:
    with IngestServer(api_key=KEY) as server, LatencyRelay(server.port, ONE_WAY / 4) as relay:
        with CloudSyncQueue(db_path, max_batch_items=50, max_in_flight_batches=3) as queue:
            with SyncWorker(queue, _relayed(relay), interval=0.1, handle_sigterm=False):
                queue.enqueue_many([{"n": n} for n in range(600)])
                assert wait_for(lambda: queue.pending_count() == 0)
    assert 2 <= relay.connections <= 3
    assert sorted(item["n"] for item in server.items) == list(range(600))


def test_the_daily_limit_counts_the_items_in_flight(db_path: str) -> None:
    with IngestServer(api_key=KEY) as server:
        server.set_delay(0.05)  # so that the batches overlap
        with CloudSyncQueue(db_path, max_batch_items=100, max_in_flight_batches=4, daily_message_limit=250) as queue:
            queue.enqueue_many([{"n": n} for n in range(1000)])
            assert queue.maybe_flush(HTTPCloudUploader(server.url, KEY)) == 250
            assert queue.messages_sent_today == 250
    assert len(server.items) == 250


def test_the_request_deadline_holds_per_batch_in_flight(db_path: str) -> None:
    with IngestServer(api_key=KEY) as server:
        server.set_delay(0.05, slow_seconds=5.0)
        server.fail_next("slow")  # the first request gets no answer within the uploader's timeout
        with CloudSyncQueue(db_path, max_batch_items=10, max_in_flight_batches=4, retry_base_seconds=60.0) as queue:
            queue.enqueue_many([{"n": n} for n in range(100)])
            acked = queue.maybe_flush(HTTPCloudUploader(server.url, KEY, timeout=1.0))
            stats = queue.get_stats()
    # The other slots went on while it waited, and every other batch was acked; it failed
    # on its own deadline, and its items stay queued.
    assert acked == 90
    assert stats["failed_batches"] == 1 and stats["depth"] == 10 and stats["in_flight"] == 0
    assert "did not answer within timeout=1 s" in stats["last_error"]
    # Whichever batch came first was the slow one; it may have been recorded too (its
    # answer came too late): at least once.
    assert len({item["n"] for item in server.items}) >= 90
