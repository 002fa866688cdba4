"""Every example of the API reference, as written, with the endpoint on loopback."""

import json
import os
import time
from typing import Any

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority, QueueItem
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer


def test_enqueue_example(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    queue = CloudSyncQueue(db_path=os.path.join(tmp_path, "data", "sync.db"))
    item_id = queue.enqueue(
        payload={"sensor": "boiler", "value": 85.0, "alert": "overheat"},
        priority=Priority.CRITICAL,
        ttl_seconds=3600,
    )
    print(f"Enqueued item {item_id}")
    assert capsys.readouterr().out == "Enqueued item 1\n"


def test_dequeue_peek_ack_nack_examples(queue: CloudSyncQueue, capsys: pytest.CaptureFixture[str]) -> None:
    for i in range(60):
        queue.enqueue({"i": i})
    items = queue.dequeue(batch_size=50)
    for item in items:
        print(f"ID={item.id}, Priority={item.priority.name}, Retry={item.retry_count}")
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 50 and lines[0] == "ID=1, Priority=TELEMETRY, Retry=0"

    up_next = queue.peek(n=3)
    for item in up_next:
        print(item.payload)
    assert capsys.readouterr().out == "{'i': 0}\n{'i': 1}\n{'i': 2}\n"

    success_ids = [item.id for item in items]
    deleted = queue.ack(success_ids)
    print(f"Acknowledged {deleted} items")
    assert capsys.readouterr().out == "Acknowledged 50 items\n"

    items = queue.dequeue(batch_size=50)
    failed_ids = [item.id for item in items]
    updated = queue.nack(failed_ids, retry_delay_seconds=300.0)
    print(f"Scheduled {updated} items for retry in 5 minutes")
    assert capsys.readouterr().out == "Scheduled 10 items for retry in 5 minutes\n"
    assert queue.dequeue(batch_size=50) == []


def test_maybe_flush_example(queue: CloudSyncQueue, capsys: pytest.CaptureFixture[str]) -> None:
    queue.enqueue({"sensor": "boiler", "value": 85.0})
    with IngestServer(api_key="pyv_live_xxxxxxxx") as server:
        uploader = HTTPCloudUploader(
            endpoint=server.url,
            api_key="pyv_live_xxxxxxxx",
            timeout=30.0,
        )
        flushed = queue.maybe_flush(uploader=uploader)
        print(f"Flushed {flushed} items to cloud")
    assert capsys.readouterr().out == "Flushed 1 items to cloud\n"
    assert server.items == [{"sensor": "boiler", "value": 85.0}]


def test_stats_and_from_dict_examples(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    config = {"db_path": os.path.join(tmp_path, "queue.db")}
    queue = CloudSyncQueue.from_dict(config)
    queue.enqueue({"a": 1})
    stats = queue.get_stats()
    print(f"Depth: {stats['depth']}, Retrying: {stats['retrying_items']}")
    assert capsys.readouterr().out == "Depth: 1, Retrying: 0\n"
    queue.reset_daily_counters()
    assert queue.messages_sent_today == 0


def test_queue_item_dataclass_as_documented() -> None:
    before = time.time()
    item = QueueItem(id=1, payload={"a": 1}, priority=Priority.LOGS, created_at=1.5, ttl_seconds=10)
    assert item.retry_count == 0 and before <= item.next_retry_at <= time.time()
    d = item.to_dict()
    assert json.loads(json.dumps(d)) == {
        "id": 1,
        "payload": {"a": 1},
        "priority": 4,
        "created_at": 1.5,
        "ttl_seconds": 10,
        "retry_count": 0,
        "next_retry_at": item.next_retry_at,
    }
    assert [p.value for p in Priority] == [1, 2, 3, 4]
    assert [p.name for p in Priority] == ["CRITICAL", "ANOMALY", "TELEMETRY", "LOGS"]


def test_complete_workflow_example(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    with IngestServer(api_key="pyv_test_xxxxxxxx") as server:
        queue = CloudSyncQueue(db_path=os.path.join(tmp_path, "edge_queue.db"))

        # Enqueue readings from multiple sensors
        for i in range(100):
            queue.enqueue(
                payload={"sensor": "motor", "value": float(i), "timestamp": time.time()},
                priority=Priority.TELEMETRY,
            )

        # Check queue depth
        print(f"Pending: {queue.pending_count()}")

        # Peek at next batch
        print(queue.peek(n=3))

        # Simulate upload
        uploader = HTTPCloudUploader(
            endpoint=server.url,
            api_key="pyv_test_xxxxxxxx",
            timeout=10.0,
        )
        flushed = queue.maybe_flush(uploader=uploader)
        print(f"Flushed: {flushed}")

        # Final stats
        print(queue.get_stats())

    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "Pending: 100"
    assert lines[1].startswith("[QueueItem(id=1, payload={'sensor': 'motor', 'value': 0.0")
    assert lines[2] == "Flushed: 100"
    assert "'depth': 0" in lines[3] and "'messages_sent_today': 100" in lines[3]
    assert [item["value"] for item in server.items] == [float(i) for i in range(100)]
