"""Soak: thousands of items through a loopback server that fails at random in every way
the flush policy knows, over many flush calls. Every item must end up delivered exactly
once or in the dead-letter table; none may be lost."""

import collections
import time
from typing import Any, Dict

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

ITEMS = 3000
FAULTS = [408, 425, 429, 500, 502, 503, 504, 404, 413, 400, 422, 401, 403, "reset", "lost", "slow"]
# Bounds that make a hang fail instead of running on; the expected run is a few seconds.
MAX_CALLS = 5000
MAX_SECONDS = 120.0


def _payload(i: int) -> Dict[str, Any]:
    payload: Dict[str, Any] = {"n": i, "v": i * 0.5}
    if i % 701 == 0:
        payload["bad"] = 422 if i % 2 else 200  # the endpoint rejects it: the batch, or in a 2xx answer
    if i % 997 == 5:
        payload["blob"] = "x" * 3000  # larger than the endpoint takes in any batch
    return payload


@pytest.mark.slow
def test_soak_every_item_delivered_once_or_dead_lettered(db_path: str) -> None:
    with (
        IngestServer(api_key="soak-key") as server,
        CloudSyncQueue(
            db_path, max_batch_items=60, max_attempts=3, retry_base_seconds=0.0, retry_max_seconds=0.01
        ) as queue,
    ):
        levels = [Priority.TELEMETRY, Priority.LOGS, Priority.ANOMALY, Priority.CRITICAL]
        for start in range(0, ITEMS, 500):
            queue.enqueue_many([_payload(i) for i in range(start, start + 500)], priority=levels[start // 500 % 4])
        server.set_limits(max_body_bytes=2500, reject=lambda item: item.get("bad", False))
        server.set_delay(0.0, slow_seconds=0.4)
        server.set_chaos(rate=0.3, faults=FAULTS, seed=20261126)
        uploader = HTTPCloudUploader(server.url, "soak-key", timeout=0.25, gzip_min_bytes=1500)

        calls, started = 0, time.monotonic()
        while queue.pending_count() and calls < MAX_CALLS and time.monotonic() - started < MAX_SECONDS:
            calls += 1
            if queue.maybe_flush(uploader) == 0:
                time.sleep(min(queue.next_due_in() or 0.0, 0.02))

        assert queue.pending_count() == 0, f"{queue.pending_count()} items left after {calls} calls"
        dead = [d.payload["n"] for d in queue.dead_letters(limit=ITEMS)]
        stats = queue.get_stats()
        statuses = collections.Counter(request.status for request in server.requests)
        stats_rejected_in_2xx = sum(1 for d in queue.dead_letters(limit=ITEMS) if d.last_status == 200)

    delivered = collections.Counter(item["n"] for item in server.items)
    twice = [n for n, count in delivered.items() if count > 1]
    assert not twice, f"delivered more than once: {twice[:10]}"
    assert not set(delivered) & set(dead), "an item was delivered and dead-lettered"
    assert sorted(list(delivered) + dead) == list(range(ITEMS)), "items were lost"
    # The rejected and oversized items are among the dead, and the run saw every class.
    assert {i for i in range(ITEMS) if i % 701 == 0 or i % 997 == 5} <= set(dead)
    assert {408, 429, 500, 413, 400, 422, 401, 403, 0} <= set(statuses)
    assert stats_rejected_in_2xx > 0
    assert server.duplicates > 0  # lost answers happened and their retries were recognised
    assert stats["messages_sent_total"] == len(delivered) and stats["dead_lettered"] == len(dead)
    assert calls > 10
