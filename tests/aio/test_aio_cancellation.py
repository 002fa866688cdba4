"""Cancellation storms on the asyncio API: enqueues and flushes cancelled at random points
against a real loopback server that fails, drops and loses answers at random; then every
item must be stored or delivered exactly once, and the file intact."""

import asyncio
import random
import sqlite3
import time
from typing import Dict, List, Set

import orjson
import reliability
from aio_support import StreamUploader, run

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority
from pyv_edge_agent.cloud_sync.aio import AsyncCloudSyncQueue
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"
ROUNDS = 25
PRODUCERS = 40


def stored_uids(db_path: str) -> Dict[int, int]:
    """Row id to uid of every stored item, whatever its retry state."""
    conn = sqlite3.connect(db_path)
    try:
        return {
            row_id: orjson.loads(text)["uid"] for row_id, text in conn.execute("SELECT id, payload FROM sync_queue")
        }
    finally:
        conn.close()


def test_cancellation_storm(db_path: str, server: IngestServer, backend: str) -> None:
    server.set_chaos(0.3, [503, "lost", "reset"], seed=18)
    server.set_delay(0.002)
    rng = random.Random(f"storm-{backend}")
    started: Set[int] = set()  # uids whose enqueue began: their items were handed over
    returned: Dict[int, int] = {}  # row id to uid, for the callers that got their id
    figures = {"enqueues cancelled": 0, "flushes cancelled": 0}

    async def produce(queue: AsyncCloudSyncQueue, uid: int) -> None:
        started.add(uid)
        returned[await queue.enqueue({"uid": uid}, rng.choice(list(Priority)))] = uid

    async def produce_many(queue: AsyncCloudSyncQueue, uids: List[int]) -> None:
        started.update(uids)
        ids = await queue.enqueue_many([{"uid": uid} for uid in uids], Priority.LOGS)
        returned.update(zip(ids, uids))

    async def main() -> int:
        queue = AsyncCloudSyncQueue(db_path, max_batch_items=7, retry_base_seconds=0, retry_max_seconds=0.02)
        uploader = StreamUploader(server.url, KEY)
        uid = 0
        for _ in range(ROUNDS):
            tasks = [asyncio.ensure_future(produce(queue, uid + i)) for i in range(PRODUCERS)]
            tasks.append(asyncio.ensure_future(produce_many(queue, list(range(uid + PRODUCERS, uid + PRODUCERS + 5)))))
            uid += PRODUCERS + 5
            for task in rng.sample(tasks, 3):
                task.cancel()  # before it ever ran: stores nothing
            flushes = [asyncio.ensure_future(queue.flush(uploader)) for _ in range(2)]
            await asyncio.sleep(0)  # the enqueues have begun; their commit has not
            for task in rng.sample(tasks, PRODUCERS // 3):
                if not task.done():
                    figures["enqueues cancelled"] += 1
                    task.cancel()
            await asyncio.sleep(rng.uniform(0, 0.03))
            for task in [f for f in flushes if rng.random() < 0.6]:
                if not task.done():
                    figures["flushes cancelled"] += 1
                    task.cancel()
            await asyncio.gather(*tasks, *flushes, return_exceptions=True)
        await queue.close()
        return uid

    issued = run(main)
    assert figures["enqueues cancelled"] > 50 and figures["flushes cancelled"] > 5, figures

    # Right after the storm: every handed-over item is stored or was delivered (both, when
    # the server's answer was lost: it is sent again under the same key), nothing else is
    # there, and every id a caller got holds that caller's item (or it was delivered).
    delivered = [item["uid"] for item in server.items]
    stored = stored_uids(db_path)
    assert len(delivered) == len(set(delivered)), "an item was delivered twice"
    assert set(stored.values()) | set(delivered) == started and len(stored) == len(set(stored.values()))
    for row_id, uid in returned.items():
        assert stored.get(row_id, uid) == uid and (row_id in stored or uid in delivered)
    assert len(started) < issued  # the tasks cancelled before they ran stored nothing
    with CloudSyncQueue(db_path, retry_base_seconds=0, retry_max_seconds=0.02) as queue:
        assert queue.verify().ok
        stats = queue.get_stats()
        assert stats["in_flight"] == 0 and stats["dead_lettered"] == 0
        # Drain what is left over a healthy link: each item arrives exactly once in all.
        server.set_chaos(0.0, [])
        uploader = HTTPCloudUploader(server.url, KEY, timeout=5)
        for _ in range(200):
            queue.maybe_flush(uploader)
            if queue.pending_count() == 0:
                break
            time.sleep(0.02)
        assert queue.pending_count() == 0
    delivered = [item["uid"] for item in server.items]
    assert sorted(delivered) == sorted(started)
    reliability.add("asyncio storm: enqueues cancelled", figures["enqueues cancelled"])
    reliability.add("asyncio storm: flushes cancelled", figures["flushes cancelled"])
    reliability.add("asyncio storm: items checked", len(started))
    reliability.add("asyncio storm: repeats dropped by the server", server.duplicates)
