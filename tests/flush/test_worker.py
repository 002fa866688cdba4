"""SyncWorker: the background loop, against a real server and, for SIGTERM, a real process."""

import signal
import subprocess
import sys
import threading
import time
from typing import Any, List, Tuple

import pytest
from waiting import PATIENCE
from waiting import wait_for as _wait_for

from pyv_edge_agent.cloud_sync import BACKEND, CloudSyncQueue, HTTPCloudUploader, Priority, SyncWorker
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"


def test_worker_drains_the_queue_and_stops(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, max_batch_items=20) as queue:
        queue.enqueue_many([{"i": i} for i in range(100)])
        worker = SyncWorker(queue, HTTPCloudUploader(server.url, KEY, timeout=5), interval=0.05).start()
        assert _wait_for(lambda: queue.pending_count() == 0)
        queue.enqueue({"i": 100})
        assert _wait_for(lambda: len(server.items) == 101)
        assert worker.stop(timeout=PATIENCE) and not worker.is_alive()
        assert worker.flushed == 101 and queue._link.wakers == []
    assert sorted(item["i"] for item in server.items) == list(range(101))


def test_worker_sleeps_through_the_backoff(db_path: str, server: IngestServer) -> None:
    server.set_outage(503)
    with CloudSyncQueue(db_path, retry_base_seconds=0.4, retry_max_seconds=1.0) as queue:
        queue.enqueue({"a": 1})
        looks: List[float] = []
        next_due_in = queue.next_due_in
        queue.next_due_in = lambda: looks.append(1) or next_due_in()  # type: ignore[method-assign]
        with SyncWorker(queue, HTTPCloudUploader(server.url, KEY, timeout=5), interval=0.01):
            time.sleep(2.0)
        attempts = len(server.requests)
    # Polling every 10 ms would have made about 200 attempts and looks; the backoff allows a few.
    assert 1 <= attempts <= 15 and len(looks) <= 40


def test_critical_item_wakes_the_worker_at_once(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path) as queue:
        worker = SyncWorker(queue, HTTPCloudUploader(server.url, KEY, timeout=5), interval=3600).start()
        assert _wait_for(lambda: worker.is_alive())
        queue.enqueue({"t": 1})  # not critical: waits for the hour-long interval
        queue.enqueue({"alarm": 1}, priority=Priority.CRITICAL)
        assert _wait_for(lambda: {"alarm": 1} in server.items)
        assert worker.stop(timeout=PATIENCE)  # a long interval does not delay stop()


def test_critical_item_goes_even_during_a_backoff(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path, retry_base_seconds=3600, retry_max_seconds=3600) as queue:
        server.fail_next(503)
        queue.enqueue({"t": 1})
        with SyncWorker(queue, HTTPCloudUploader(server.url, KEY, timeout=5), interval=3600):
            assert _wait_for(lambda: queue.backoff_seconds > 0)
            queue.enqueue_many([{"alarm": 1}], priority=Priority.CRITICAL)
            assert _wait_for(lambda: {"alarm": 1} in server.items)
        assert queue.pending_count() == 1


def test_stop_lets_the_batch_in_flight_finish(db_path: str, server: IngestServer) -> None:
    server.set_delay(0.2)
    with CloudSyncQueue(db_path, max_batch_items=5) as queue:
        queue.enqueue_many([{"i": i} for i in range(50)])
        worker = SyncWorker(queue, HTTPCloudUploader(server.url, KEY, timeout=5), interval=0.01).start()
        assert _wait_for(lambda: len(server.requests) >= 1, PATIENCE)
        assert worker.stop(timeout=PATIENCE)
        left = queue.pending_count()
        assert left + len(server.items) == 50 and 0 < left < 50
        assert len(queue.peek(n=50)) == left  # nothing left leased: all due at once
        assert queue.get_stats()["in_flight"] == 0


def test_worker_survives_a_failing_uploader_and_logs_once(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    calls: List[int] = []

    class Broken:
        def post_batch(self, payloads: List[Any]) -> None:
            calls.append(len(payloads))
            raise RuntimeError("no route")

    with CloudSyncQueue(db_path, retry_base_seconds=0.0, retry_max_seconds=0.0) as queue:
        queue.enqueue({"a": 1})
        with SyncWorker(queue, Broken(), interval=0.02):
            assert _wait_for(lambda: len(calls) >= 3)
        assert queue.pending_count() == 1
    assert len([r for r in caplog.records if "failing" in r.getMessage()]) == 1


def test_bad_worker_arguments(queue: CloudSyncQueue) -> None:
    with pytest.raises(TypeError, match="post_batch"):
        SyncWorker(queue, object())
    with pytest.raises(ValueError, match="interval"):
        SyncWorker(queue, HTTPCloudUploader("https://ingest.example/v1", "k"), interval=0)
    with pytest.raises(TypeError, match="queue"):
        SyncWorker("sync.db", HTTPCloudUploader("https://ingest.example/v1", "k"))  # type: ignore[arg-type]


WORKER_SCRIPT = """
import sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, SyncWorker
queue = CloudSyncQueue(sys.argv[1], max_batch_items=10)
worker = SyncWorker(queue, HTTPCloudUploader(sys.argv[2], "test-key", timeout=10), interval=0.05).start()
print("started", flush=True)
worker.join()
queue.close()
print("stopped cleanly", flush=True)
"""


def test_sigterm_stops_the_worker_cleanly(db_path: str, server: IngestServer) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(2000)])
    server.set_delay(0.02)
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, db_path, server.url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "started\n"
        assert _wait_for(lambda: len(server.items) >= 50)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=PATIENCE)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and out == "stopped cleanly\n"
    delivered = [item["i"] for item in server.items]
    assert len(delivered) == len(set(delivered)) < 2000  # stopped early, nothing sent twice
    with CloudSyncQueue(db_path) as queue:
        left = [item.payload["i"] for item in queue.peek(n=2000)]  # every remaining item due: none leased
        assert queue.pending_count() == len(left)
    assert sorted(delivered + left) == list(range(2000))  # nothing lost


def test_sigterm_handler_only_from_the_main_thread(queue: CloudSyncQueue) -> None:
    before = signal.getsignal(signal.SIGTERM)
    started: List[SyncWorker] = []
    uploader = HTTPCloudUploader("https://ingest.example/v1", "k")
    thread = threading.Thread(target=lambda: started.append(SyncWorker(queue, uploader, interval=60).start()))
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) is before
    assert started[0].stop(timeout=PATIENCE)
    worker = SyncWorker(queue, uploader, interval=60, handle_sigterm=False).start()
    assert signal.getsignal(signal.SIGTERM) is before
    assert worker.stop(timeout=PATIENCE)
    worker = SyncWorker(queue, uploader, interval=60).start()
    assert signal.getsignal(signal.SIGTERM) is not before
    assert worker.stop(timeout=PATIENCE)
    assert signal.getsignal(signal.SIGTERM) is before  # stop() from the main thread puts it back


@pytest.mark.parametrize("live", [0, 1])
def test_worker_purges_expired_items_like_maybe_flush(db_path: str, server: IngestServer, live: int) -> None:
    # The worker flushes through maybe_flush, so its housekeeping runs too: with
    # purge_interval=0 every expired item goes, whether or not something is due as well.
    with CloudSyncQueue(db_path, purge_interval=0) as queue:
        queue.enqueue_many([{"stale": i} for i in range(5)], ttl_seconds=0)
        queue.enqueue_many([{"live": i} for i in range(live)])
        with SyncWorker(queue, HTTPCloudUploader(server.url, KEY, timeout=5), interval=0.05):
            assert _wait_for(lambda: queue.get_stats()["expired_purged_total"] == 5)
            assert _wait_for(lambda: queue.pending_count() == 0)
    assert [item for item in server.items if "stale" in item] == []
    assert len(server.items) == live


# The backend does not matter to what a process does with SIGTERM: one run.
ONE_BACKEND = pytest.mark.parametrize("backend", [BACKEND], indirect=True)

# The usual agent: the main thread reads sensors and enqueues, a SyncWorker sends. With
# "own-handler" the application installed a SIGTERM handler first and ends by itself.
AGENT_SCRIPT = """
import signal, sys, time
from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, SyncWorker
db, url, mode = sys.argv[1:4]
called = []
if mode == "own-handler":
    def own(signum, frame):
        print("the application's handler", flush=True)
        called.append(signum)
    signal.signal(signal.SIGTERM, own)
queue = CloudSyncQueue(db, max_batch_items=5)
worker = SyncWorker(queue, HTTPCloudUploader(url, "test-key", timeout=20), interval=0.05).start()
n = 0
while not called:
    queue.enqueue({"n": n})
    print(n, flush=True)
    n += 1
    time.sleep(0.005)
worker.stop()
queue.close()
print("the application ends", flush=True)
"""

ASYNC_AGENT_SCRIPT = """
import asyncio, sys
from pyv_edge_agent.cloud_sync import HTTPCloudUploader
from pyv_edge_agent.cloud_sync.aio import AsyncCloudSyncQueue, AsyncSyncWorker
db, url, mode = sys.argv[1:4]

async def main():
    queue = AsyncCloudSyncQueue(db, max_batch_items=5)
    AsyncSyncWorker(queue, HTTPCloudUploader(url, "test-key", timeout=20), interval=0.05).start()
    n = 0
    while True:
        await queue.enqueue({"n": n})
        print(n, flush=True)
        n += 1
        await asyncio.sleep(0.005)

asyncio.run(main())
"""


def run_agent_until_sigterm(script: str, db_path: str, server: IngestServer, mode: str) -> Tuple[int, List[str]]:
    """Run an agent process, send it SIGTERM while a batch is in flight (the server takes
    2 s to answer each), and return its exit status and what it printed."""
    server.set_delay(2.0)
    proc = subprocess.Popen(
        [sys.executable, "-c", script, db_path, server.url, mode], stdout=subprocess.PIPE, text=True
    )
    lines: List[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or ()), daemon=True)
    reader.start()
    try:
        assert _wait_for(lambda: len(server.batches) >= 2, timeout=PATIENCE * 2)
        time.sleep(0.5)  # the next batch is on its way: the server holds it for 2 s
        proc.send_signal(signal.SIGTERM)
        # Bounded: the batch in flight (2 s), not systemd's or docker's timeout.
        status = proc.wait(timeout=PATIENCE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(PATIENCE)
    return status, [line.strip() for line in lines]


def assert_settled(db_path: str, server: IngestServer, printed: List[str]) -> None:
    """Nothing the agent was told was stored is lost, and the batch in flight was settled:
    every item is either delivered once or still stored, due (no lease left over)."""
    delivered = [item["n"] for item in server.items]
    assert len(delivered) == len(set(delivered)) and delivered
    with CloudSyncQueue(db_path) as queue:
        stored = [item.payload["n"] for item in queue.peek(n=100_000)]
        assert queue.pending_count() == len(stored)  # none leased: every stored item is due
    assert not set(delivered) & set(stored)  # the batch in flight was acked, not left to go again
    told = {int(line) for line in printed if line.isdigit()}
    assert told <= set(delivered) | set(stored)


@ONE_BACKEND
def test_sigterm_ends_an_agent_whose_main_thread_enqueues(db_path: str, server: IngestServer) -> None:
    status, printed = run_agent_until_sigterm(AGENT_SCRIPT, db_path, server, "default")
    # As a service manager expects: ended by SIGTERM (143 in a shell), once the batch settled.
    assert status == -signal.SIGTERM
    assert "the application ends" not in printed
    assert_settled(db_path, server, printed)


@ONE_BACKEND
def test_sigterm_goes_to_the_applications_own_handler(db_path: str, server: IngestServer) -> None:
    status, printed = run_agent_until_sigterm(AGENT_SCRIPT, db_path, server, "own-handler")
    assert status == 0 and "the application's handler" in printed and printed[-1] == "the application ends"
    assert_settled(db_path, server, printed)


@ONE_BACKEND
def test_sigterm_ends_an_asyncio_agent_after_the_batch_in_flight(db_path: str, server: IngestServer) -> None:
    status, printed = run_agent_until_sigterm(ASYNC_AGENT_SCRIPT, db_path, server, "default")
    assert status == -signal.SIGTERM
    assert_settled(db_path, server, printed)
