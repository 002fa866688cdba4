"""Links that come and go: pacing, batches sized to a time, probes and kick().

Nothing here measures speed: the token buckets run on a fake clock, batch sizes come from
a throughput seeded in the file, and the worker tests wait for an outcome with a patience
far below the backoff they end. The figures on a real shaped link are in
``test_shaped_link.py``.
"""

import logging
import os
import random
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import orjson
import pytest
import rawsql
from aio_support import eventually
from aio_support import run as aio_run
from waiting import wait_for as _wait_for

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority, SyncWorker, UploadError
from pyv_edge_agent.cloud_sync._flush.pacing import FIRST_BATCH_BYTES, Pacer, ThroughputMeter, TokenBucket
from pyv_edge_agent.cloud_sync._metrics import BY_KEY, prometheus_text
from pyv_edge_agent.cloud_sync.aio import AsyncCloudSyncQueue, AsyncSyncWorker
from pyv_edge_agent.cloud_sync.delivery.probe import prober
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"
LONG_BACKOFF = {"retry_base_seconds": 3000.0, "retry_max_seconds": 3000.0}


@pytest.fixture(autouse=True)
def longest_jitter(monkeypatch: pytest.MonkeyPatch) -> None:
    """Full jitter drawn at its top: every backoff here is as long as configured, so that
    only a probe, a kick or an accepted upload can end it before the test's patience."""
    monkeypatch.setattr(random, "uniform", lambda low, high: high)


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 100.0
        self.slept: List[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Recording:
    """A custom uploader: records batches and idempotency keys, fails on request."""

    def __init__(self, fail: int = 0, probe: Optional[Callable[[], Any]] = None) -> None:
        self.batches: List[List[Dict[str, Any]]] = []
        self.keys: List[str] = []
        self.fail = fail
        if probe is not None:
            self.probe = probe

    def post_encoded_batch(self, body: bytes, count: int, idempotency_key: str) -> bool:
        self.keys.append(idempotency_key)
        if self.fail:
            self.fail -= 1
            return False
        self.batches.append(orjson.loads(body))
        return True

    def post_batch(self, payloads: List[Dict[str, Any]]) -> bool:
        raise AssertionError("the flush hands encoded bodies")


# -- the token buckets -------------------------------------------------------------------


def test_bucket_starts_full_then_refills_at_its_rate() -> None:
    fake = FakeTime()
    bucket = TokenBucket(rate=50.0, capacity=10.0, clock=fake.clock)
    assert bucket.wait_for(10) == 0.0
    bucket.take(10)
    assert bucket.wait_for(10) == pytest.approx(0.2)
    fake.now += 0.1
    assert bucket.wait_for(10) == pytest.approx(0.1)
    fake.now += 100.0
    assert bucket.wait_for(10) == 0.0  # never more than the capacity held


def test_pacer_holds_the_rate_across_batches() -> None:
    fake = FakeTime()
    pacer = Pacer(50.0, None, 0.2, True, clock=fake.clock, sleep=fake.sleep)
    assert pacer.batch_bounds() == (10, None)
    start = fake.now
    for _ in range(51):
        pacer.admit(10, 1000, critical=False)
    # 510 items: the first 10 from the full bucket, the other 500 at 50 a second.
    assert fake.now - start == pytest.approx(10.0)


def test_pacer_bytes_and_a_batch_larger_than_the_bucket_goes_into_debt() -> None:
    fake = FakeTime()
    pacer = Pacer(None, 1000.0, 1.0, True, clock=fake.clock, sleep=fake.sleep)
    assert pacer.batch_bounds() == (None, 1000)
    assert pacer.admit(1, 3000, critical=False) == 0.0  # a full bucket lets one large item go
    assert pacer.admit(1, 100, critical=False) == pytest.approx(2.1)  # after the debt is paid


def test_critical_batches_skip_the_wait_unless_configured() -> None:
    fake = FakeTime()
    bypass = Pacer(10.0, None, 1.0, True, clock=fake.clock, sleep=fake.sleep)
    bypass.admit(10, 1, critical=False)
    assert bypass.admit(10, 1, critical=True) == 0.0
    assert bypass.admit(10, 1, critical=False) == pytest.approx(2.0)  # the critical ones counted
    paced = Pacer(10.0, None, 1.0, False, clock=fake.clock, sleep=fake.sleep)
    paced.admit(10, 1, critical=False)
    assert paced.admit(10, 1, critical=True) == pytest.approx(1.0)


def test_meter_sizes_batches_from_what_it_measured() -> None:
    meter = ThroughputMeter()
    assert meter.batch_bytes(2.0) == FIRST_BATCH_BYTES
    meter.record(8_000, 25, 0.25)
    # A batch grows at most fourfold on the largest measured: a small first batch's figure
    # (it fits in the link's buffers) is too good to size a large one by.
    assert meter.batch_bytes(2.0) == 32_000
    meter = ThroughputMeter()
    meter.record(32_000, 100, 1.0)
    assert meter.batch_bytes(2.0) == 64_000
    meter.record(16_000, 50, 1.0)
    # (32,000 / 2 + 16,000) / (1 / 2 + 1) bytes over seconds, older batches weighing half.
    assert meter.bytes_per_second == pytest.approx(64_000 / 3) and meter.items_per_second == pytest.approx(200 / 3)
    meter.record(10, 1, 0.05)  # a lone small item is mostly round trip: it hardly moves the rate
    assert meter.bytes_per_second == pytest.approx(20_012.5)
    meter.seed(1.0, 1.0)  # a seed never replaces a measurement
    assert meter.bytes_per_second == pytest.approx(20_012.5)


# -- options -----------------------------------------------------------------------------

NEW_OPTIONS = {
    "max_items_per_second": 50.0,
    "max_bytes_per_second": 32_000,
    "pacing_burst_seconds": 0.5,
    "critical_bypasses_pacing": False,
    "max_batch_seconds": 2.0,
    "probe_interval": None,
}


def test_from_dict_takes_every_new_key(tmp_path: Any) -> None:
    config = {"db_path": os.path.join(tmp_path, "q.db"), **NEW_OPTIONS}
    with CloudSyncQueue.from_dict(config) as queue:
        assert queue.probe_interval is None
    with CloudSyncQueue(os.path.join(tmp_path, "d.db")) as queue:
        assert queue.probe_interval == 10.0 and not queue.link_down


@pytest.mark.parametrize(
    "name, value, error",
    [
        ("max_items_per_second", 0, ValueError),
        ("max_items_per_second", -5.0, ValueError),
        ("max_items_per_second", "50", TypeError),
        ("max_bytes_per_second", float("inf"), ValueError),
        ("max_bytes_per_second", True, TypeError),
        ("pacing_burst_seconds", 0.0, ValueError),
        ("pacing_burst_seconds", None, TypeError),
        ("critical_bypasses_pacing", "false", TypeError),
        ("critical_bypasses_pacing", 1, TypeError),
        ("max_batch_seconds", 0, ValueError),
        ("max_batch_seconds", float("nan"), ValueError),
        ("probe_interval", -1.0, ValueError),
        ("probe_interval", "10", TypeError),
    ],
)
def test_bad_new_options_name_argument_and_value_and_write_nothing(
    tmp_path: Any, name: str, value: Any, error: type
) -> None:
    path = os.path.join(tmp_path, "sub", "q.db")
    with pytest.raises(error, match=name) as caught:
        CloudSyncQueue(path, **{name: value})
    assert repr(value)[:20] in str(caught.value) or type(value).__name__ in str(caught.value)
    assert not os.path.exists(os.path.dirname(path))


# -- batch sizing and pacing in a flush ------------------------------------------------------


def test_pacing_bounds_each_batch_to_the_bucket(db_path: str) -> None:
    uploader = Recording()
    with CloudSyncQueue(db_path, max_items_per_second=10_000.0, pacing_burst_seconds=0.001) as queue:
        queue.enqueue_many([{"i": i} for i in range(35)])
        assert queue.maybe_flush(uploader) == 35
    assert [len(batch) for batch in uploader.batches] == [10, 10, 10, 5]


def test_byte_pacing_bounds_each_batch(db_path: str) -> None:
    uploader = Recording()
    with CloudSyncQueue(db_path, max_bytes_per_second=100_000.0, pacing_burst_seconds=0.001) as queue:
        queue.enqueue_many([{"pad": "x" * 60} for _ in range(10)])  # 70 bytes stored each: one a batch
        assert queue.maybe_flush(uploader) == 10
    assert [len(batch) for batch in uploader.batches] == [1] * 10


def test_pacing_lasts_across_flush_calls(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    with CloudSyncQueue(db_path, max_items_per_second=1.0, pacing_burst_seconds=10.0) as queue:
        queue.enqueue_many([{"i": i} for i in range(10)])
        with caplog.at_level(logging.DEBUG, "pyv_edge_agent.cloud_sync"):
            assert queue.maybe_flush(Recording()) == 10  # the full bucket
            assert "paced" not in caplog.text
            queue.enqueue({"i": 10})
            assert queue.maybe_flush(Recording()) == 1
        # The call before spent the bucket: this one waited for the refill.
        assert "paced: waited" in caplog.text


def test_time_bounded_batches_start_small_then_follow_the_measured_link(db_path: str) -> None:
    uploader = Recording()
    with CloudSyncQueue(db_path, max_batch_seconds=1.0, max_batch_items=100_000, max_batch_bytes=1 << 24) as queue:
        queue.enqueue_many([{"pad": "y" * 90} for _ in range(400)])  # 100 bytes stored each
        first = queue.maybe_flush(uploader)
        assert first == 400
        assert len(uploader.batches[0]) * 100 <= FIRST_BATCH_BYTES
        stats = queue.get_stats()
        assert stats["link_bytes_per_second"] > 0 and stats["link_items_per_second"] > 0


def test_time_bounded_batches_start_from_the_throughput_in_the_file(db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        for key, value in (("link_bytes_per_second", 2048.0), ("link_items_per_second", 20.0)):
            rawsql.execute(queue, "INSERT OR REPLACE INTO sync_meta (key, value) VALUES (?, ?)", (key, value))
        queue.enqueue_many([{"pad": "z" * 90} for _ in range(60)])
    uploader = Recording()
    with CloudSyncQueue(db_path, max_batch_seconds=1.0) as queue:
        assert queue.get_stats()["link_bytes_per_second"] == 2048.0
        queue.maybe_flush(uploader)
    # 2,048 bytes a second for one second: 20 items of 100 bytes (a loopback is faster after).
    assert len(uploader.batches[0]) == 20


def test_a_critical_item_goes_alone_in_time_bounded_batches(db_path: str) -> None:
    uploader = Recording()
    with CloudSyncQueue(db_path, max_batch_seconds=5.0) as queue:
        queue.enqueue_many([{"t": i} for i in range(50)])
        queue.enqueue({"alarm": 1}, priority=Priority.CRITICAL)
        assert queue.maybe_flush(uploader) == 51
    assert uploader.batches[0] == [{"alarm": 1}]


def test_throughput_is_a_stat_and_a_prometheus_gauge(db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        assert queue.get_stats()["link_bytes_per_second"] is None
        queue.enqueue_many([{"i": i} for i in range(20)])
        queue.maybe_flush(Recording())
    with CloudSyncQueue(db_path) as queue:  # persisted: a restart and the CLI see it
        stats = queue.get_stats()
    assert stats["link_bytes_per_second"] > 0 and stats["link_items_per_second"] > 0
    text = prometheus_text(stats, db_path)
    assert "# TYPE cloud_sync_link_bytes_per_second gauge" in text
    assert "cloud_sync_link_items_per_second{" in text
    assert BY_KEY["link_bytes_per_second"].unit == "bytes_per_second"


# -- ending a backoff ----------------------------------------------------------------------------


def test_end_backoff_makes_the_held_batch_due_whole_under_the_same_key(db_path: str) -> None:
    uploader = Recording(fail=1)
    with CloudSyncQueue(db_path, max_batch_items=4, **LONG_BACKOFF) as queue:
        queue.enqueue_many([{"i": i} for i in range(10)])
        assert queue.maybe_flush(uploader) == 0
        assert queue.link_down and queue.next_due_in() > 0
        assert queue.end_backoff() and not queue.link_down
        assert queue.next_due_in() == 0.0
        assert queue.end_backoff() is False  # nothing left to end
        assert queue.maybe_flush(uploader) == 10
    # Fresh items go first, as ever; the held batch follows, whole, under its first key.
    retry = uploader.keys.index(uploader.keys[0], 1)
    assert uploader.batches[retry - 1] == [{"i": i} for i in range(4)]


def test_backoff_after_an_answer_or_refused_key_is_not_ended(db_path: str) -> None:
    with IngestServer(api_key=KEY) as server, CloudSyncQueue(db_path, **LONG_BACKOFF) as queue:
        queue.enqueue({"a": 1})
        server.set_outage(503)
        assert queue.maybe_flush(HTTPCloudUploader(server.url, KEY, timeout=5)) == 0
        assert not queue.link_down and queue.end_backoff() is False and queue.next_due_in() > 0
        server.set_outage(None)
        rawsql.execute(queue, "UPDATE sync_queue SET next_retry_at = 0")
        assert queue.maybe_flush(HTTPCloudUploader(server.url, "wrong-key", timeout=5)) == 0
        assert not queue.link_down and queue.end_backoff() is False and queue.backoff_seconds > 1000


def test_an_accepted_upload_releases_what_a_dead_link_held(db_path: str) -> None:
    uploader = Recording(fail=1)
    with CloudSyncQueue(db_path, **LONG_BACKOFF) as queue:
        queue.enqueue_many([{"i": i} for i in range(5)])
        queue.maybe_flush(uploader)
        queue.enqueue({"alarm": 1}, priority=Priority.CRITICAL)
        assert queue.maybe_flush(uploader) == 6  # the alarm proved the link; the batch followed
    assert uploader.batches == [[{"alarm": 1}], [{"i": i} for i in range(5)]]


# -- probes and the worker ---------------------------------------------------------------------


def test_prober_of_each_kind_of_uploader(db_path: str) -> None:
    assert prober(Recording()) is None
    assert prober(Recording(probe=lambda: True))(1.0) is True  # type: ignore[misc]
    assert prober(Recording(probe=lambda: 1 / 0))(1.0) is False  # type: ignore[misc]
    assert prober(Recording(probe=lambda: "yes"))(1.0) is False  # type: ignore[misc]
    with IngestServer() as server:
        probe = prober(HTTPCloudUploader(server.url, KEY))
        assert probe is not None and probe(1.0) is True
        port = server.port
    assert probe(1.0) is False
    assert prober(HTTPCloudUploader(f"https://127.0.0.1:{port}/x", KEY)) is not None


def test_worker_probe_ends_the_backoff_when_the_endpoint_returns(db_path: str) -> None:
    server = IngestServer(api_key=KEY).start()
    port = server.port
    server.stop()
    with CloudSyncQueue(db_path, probe_interval=0.1, **LONG_BACKOFF) as queue:
        queue.enqueue_many([{"i": i} for i in range(5)])
        uploader = HTTPCloudUploader(f"http://127.0.0.1:{port}/v1/ingest", KEY, timeout=5)
        with SyncWorker(queue, uploader, interval=3600, handle_sigterm=False):
            assert _wait_for(lambda: queue.link_down)
            assert queue.backoff_seconds > 60
            time.sleep(0.3)  # probes fail meanwhile: the port is closed
            assert queue.link_down
            with IngestServer(port=port, api_key=KEY) as back:
                assert _wait_for(lambda: len(back.items) == 5)
        assert queue.pending_count() == 0 and queue.backoff_seconds == 0.0


def test_worker_probe_does_not_end_a_refused_key_backoff(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, probe_interval=0.05) as queue:
        queue.enqueue({"a": 1})
        with SyncWorker(queue, HTTPCloudUploader(server.url, "wrong", timeout=5), interval=3600, handle_sigterm=False):
            assert _wait_for(lambda: len(server.requests) == 1 and queue.backoff_seconds > 0)
            time.sleep(0.5)  # ten probe intervals: a TCP probe would succeed every time
        assert len(server.requests) == 1 and queue.pending_count() == 1


def test_worker_uses_the_uploaders_own_probe(db_path: str) -> None:
    link = threading.Event()
    asked: List[int] = []
    uploader = Recording(fail=1, probe=lambda: asked.append(1) or link.is_set())
    with CloudSyncQueue(db_path, probe_interval=0.05, **LONG_BACKOFF) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)])
        with SyncWorker(queue, uploader, interval=3600, handle_sigterm=False):
            assert _wait_for(lambda: len(asked) >= 3)
            assert uploader.batches == []
            link.set()
            assert _wait_for(lambda: uploader.batches == [[{"i": 0}, {"i": 1}, {"i": 2}]])
    assert uploader.keys[0] == uploader.keys[1]


def test_kick_ends_the_wait_of_an_unprobed_link(db_path: str) -> None:
    uploader = Recording(fail=1)
    with CloudSyncQueue(db_path, **LONG_BACKOFF) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)])
        with SyncWorker(queue, uploader, interval=3600, handle_sigterm=False) as worker:
            assert _wait_for(lambda: queue.link_down)
            worker.kick()
            assert _wait_for(lambda: len(uploader.batches) == 1)
        assert queue.pending_count() == 0


def test_kick_does_not_end_an_endpoints_backoff(db_path: str) -> None:
    class Busy(Recording):
        def post_encoded_batch(self, body: bytes, count: int, idempotency_key: str) -> bool:
            self.keys.append(idempotency_key)
            raise UploadError("busy", status=503)

    uploader = Busy()
    with CloudSyncQueue(db_path, **LONG_BACKOFF) as queue:
        queue.enqueue({"a": 1})
        with SyncWorker(queue, uploader, interval=3600, handle_sigterm=False) as worker:
            assert _wait_for(lambda: len(uploader.keys) == 1 and queue.backoff_seconds > 0)
            worker.kick()
            time.sleep(0.3)
        assert len(uploader.keys) == 1 and queue.backoff_seconds > 0


def test_async_worker_probes_with_an_async_probe_and_takes_a_kick(db_path: str) -> None:
    # A flag, not an asyncio.Event: on Python 3.9 that binds to a loop when it is made.
    link = threading.Event()
    asked: List[int] = []

    class AsyncRecording(Recording):
        async def probe(self) -> bool:
            asked.append(1)
            return link.is_set()

    async def main() -> None:
        uploader = AsyncRecording(fail=1)
        async with AsyncCloudSyncQueue(db_path, probe_interval=0.05, **LONG_BACKOFF) as queue:
            await queue.enqueue_many([{"i": i} for i in range(3)])
            async with AsyncSyncWorker(queue, uploader, interval=3600):
                assert await eventually(lambda: len(asked) >= 3)
                assert uploader.batches == [] and queue.queue.link_down
                link.set()
                assert await eventually(lambda: len(uploader.batches) == 1)
            assert uploader.keys[0] == uploader.keys[1]
            unprobed = Recording(fail=1)
            await queue.enqueue({"i": 3})
            async with AsyncSyncWorker(queue, unprobed, interval=3600) as worker:
                assert await eventually(lambda: queue.queue.link_down)
                worker.kick()
                assert await eventually(lambda: unprobed.batches == [[{"i": 3}]])

    aio_run(main)


def test_async_worker_probes_an_http_endpoint_in_a_thread(db_path: str) -> None:
    server = IngestServer(api_key=KEY).start()
    port = server.port
    server.stop()

    async def main() -> None:
        async with AsyncCloudSyncQueue(db_path, probe_interval=0.1, **LONG_BACKOFF) as queue:
            await queue.enqueue_many([{"i": i} for i in range(4)])
            uploader = HTTPCloudUploader(f"http://127.0.0.1:{port}/v1/ingest", KEY, timeout=5)
            async with AsyncSyncWorker(queue, uploader, interval=3600):
                assert await eventually(lambda: queue.queue.link_down)
                with IngestServer(port=port, api_key=KEY) as back:
                    assert await eventually(lambda: len(back.items) == 4)

    aio_run(main)


# -- the command line ----------------------------------------------------------------------------


def _cli(*args: str, **env: str) -> "subprocess.CompletedProcess[str]":
    environment = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_SYNC_")}
    environment.update(env)
    command = [sys.executable, "-m", "pyv_edge_agent.cloud_sync", "--plain", *args]
    return subprocess.run(command, env=environment, capture_output=True, text=True, timeout=120)


def test_cli_flush_honours_pacing_and_refuses_bad_values(db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(25)])
    with IngestServer(api_key=KEY) as server:
        bad = _cli("flush", db_path, "--endpoint", server.url, "--max-items-per-second", "-3", CLOUD_SYNC_API_KEY=KEY)
        assert bad.returncode == 2 and "max_items_per_second" in bad.stderr and "-3" in bad.stderr
        done = _cli(
            "flush",
            db_path,
            "--endpoint",
            server.url,
            "--max-items-per-second",
            "10000",
            "--pacing-burst-seconds",
            "0.001",
            "--max-batch-seconds",
            "30",
            CLOUD_SYNC_API_KEY=KEY,
        )
        assert done.returncode == 0, done.stderr
        assert [len(batch) for batch in server.batches] == [10, 10, 5]
    stats = _cli("stats", db_path, "--json")
    assert orjson.loads(stats.stdout)["link_items_per_second"] > 0
