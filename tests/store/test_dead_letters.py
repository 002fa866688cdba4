"""The dead-letter table: listing, requeueing and dropping, and the schema migrations to
version 2 from an earlier release's file (version 0) and from version 1."""

import os
import sqlite3
from typing import Any, List

import legacy
import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, DeadLetter, HTTPCloudUploader, Priority, UploadError
from pyv_edge_agent.cloud_sync._store.schema import SCHEMA_VERSION
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

# Version 1 as the first release of this package wrote it.
V1_META_DDL = """
CREATE TABLE IF NOT EXISTS sync_meta (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;
INSERT OR IGNORE INTO sync_meta (key, value) VALUES ('messages_sent_today', 3);
INSERT OR IGNORE INTO sync_meta (key, value) VALUES ('messages_sent_total', 40);
PRAGMA user_version = 1;
"""


class TooLarge:
    """Refuses every batch as too large: single items end up dead-lettered."""

    def post_batch(self, payloads: List[Any]) -> None:
        raise UploadError("payload too large", status=413)


def _kill(queue: CloudSyncQueue, count: int, priority: Priority = Priority.TELEMETRY) -> List[int]:
    ids = queue.enqueue_many([{"n": i} for i in range(count)], priority=priority)
    assert queue.maybe_flush(TooLarge()) == 0
    return ids


def _tables(path: str) -> List[str]:
    conn = sqlite3.connect(path)
    try:
        return sorted(row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    finally:
        conn.close()


def test_dead_letters_carry_the_item_and_why(queue: CloudSyncQueue) -> None:
    (item_id,) = _kill(queue, 1, Priority.ANOMALY)
    (dead,) = queue.dead_letters()
    assert isinstance(dead, DeadLetter)
    assert (dead.id, dead.payload, dead.priority, dead.ttl_seconds) == (item_id, {"n": 0}, Priority.ANOMALY, 86400)
    assert dead.last_status == 413 and dead.last_error == "payload too large" and dead.dead_at >= dead.created_at
    assert dead.to_dict()["priority"] == 2 and queue.pending_count() == 0


def test_dead_letters_limit_and_order(queue: CloudSyncQueue) -> None:
    ids = _kill(queue, 5)
    assert [d.id for d in queue.dead_letters(limit=3)] == ids[:3]
    assert [d.id for d in queue.dead_letters()] == ids


def test_requeue_some_then_all(queue: CloudSyncQueue, server: IngestServer) -> None:
    ids = _kill(queue, 4)
    assert queue.requeue_dead_letters([ids[1], ids[3], 10_000]) == 2
    assert [item.id for item in queue.peek(n=10)] == [ids[1], ids[3]]  # same ids, due now
    assert all(item.retry_count == 0 for item in queue.peek(n=10))
    assert [d.id for d in queue.dead_letters()] == [ids[0], ids[2]]
    assert queue.requeue_dead_letters() == 2 and queue.dead_letters() == []
    assert queue.maybe_flush(HTTPCloudUploader(server.url, "test-key", timeout=5)) == 4
    assert sorted(item["n"] for item in server.items) == [0, 1, 2, 3]


def test_requeued_item_gets_a_fresh_ttl(db_path: str) -> None:
    # Without the purge of expired items that maybe_flush does by default.
    with CloudSyncQueue(db_path, purge_interval=None) as queue:
        _requeued_item_gets_a_fresh_ttl(queue)


def _requeued_item_gets_a_fresh_ttl(queue: CloudSyncQueue) -> None:
    (item_id,) = queue.enqueue_many([{"n": 0}], ttl_seconds=3600)
    rawsql.execute(queue, "UPDATE sync_queue SET created_at = created_at - 7200")  # long expired
    queue.maybe_flush(TooLarge())  # nothing eligible: an expired item is not sent
    rawsql.execute(queue, "UPDATE sync_queue SET created_at = created_at + 7200")
    queue.maybe_flush(TooLarge())
    rawsql.execute(queue, "UPDATE sync_dead_letters SET created_at = created_at - 7200")
    assert queue.requeue_dead_letters() == 1
    assert [item.id for item in queue.peek()] == [item_id]


def test_drop_some_then_all(queue: CloudSyncQueue) -> None:
    ids = _kill(queue, 3)
    assert queue.drop_dead_letters([ids[0]]) == 1
    assert [d.id for d in queue.dead_letters()] == ids[1:]
    assert queue.drop_dead_letters() == 2 and queue.dead_letters() == []
    assert queue.get_stats()["dead_lettered"] == 0 and queue.get_stats()["dead_lettered_total"] == 3


@pytest.mark.parametrize(
    "call",
    [
        lambda q: q.requeue_dead_letters("12"),
        lambda q: q.drop_dead_letters([1, "x"]),
        lambda q: q.drop_dead_letters(5),
        lambda q: q.dead_letters(limit=0),
        lambda q: q.dead_letters(limit="9"),
    ],
)
def test_bad_dead_letter_arguments_change_nothing(queue: CloudSyncQueue, call: Any) -> None:
    _kill(queue, 2)
    with pytest.raises((TypeError, ValueError)):
        call(queue)
    assert len(queue.dead_letters()) == 2 and queue.pending_count() == 0


def test_item_that_dies_twice_is_kept_once(queue: CloudSyncQueue) -> None:
    (item_id,) = _kill(queue, 1)
    queue.requeue_dead_letters()
    queue.maybe_flush(TooLarge())
    assert [d.id for d in queue.dead_letters()] == [item_id]
    assert queue.get_stats()["dead_lettered_total"] == 2


def test_migration_from_an_earlier_release(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "v0.db")
    legacy.create(path)
    old = [legacy.enqueue(path, {"old": i}) for i in range(3)]
    with CloudSyncQueue(path) as queue:
        assert [item.id for item in queue.peek()] == old
        assert queue.dead_letters() == [] and queue.get_stats()["failed_batches"] == 0
        _kill(queue, 1)
        assert [d.id for d in queue.dead_letters()] == old + [old[-1] + 1]
    assert {"sync_dead_letters", "sync_meta", "sync_queue"} <= set(_tables(path))


def test_migration_from_version_1_keeps_items_and_counters(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "v1.db")
    legacy.create(path)
    old = [legacy.enqueue(path, {"old": i}) for i in range(3)]
    conn = sqlite3.connect(path)
    conn.executescript(V1_META_DDL)
    conn.close()
    with CloudSyncQueue(path) as queue:
        assert [item.id for item in queue.peek()] == old
        stats = queue.get_stats()
        assert stats["messages_sent_today"] == 3 and stats["messages_sent_total"] == 40 and stats["dead_lettered"] == 0
        queue_id = rawsql.execute(queue, "SELECT value FROM sync_meta WHERE key = 'queue_id'").fetchone()[0]
    assert len(queue_id) == 32
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert "sync_batch_keys" in _tables(path)
    conn.close()
    with CloudSyncQueue(path) as queue:  # the identity is made once
        assert rawsql.execute(queue, "SELECT value FROM sync_meta WHERE key = 'queue_id'").fetchone()[0] == queue_id


@pytest.mark.parametrize("reject_status", [422, 200], ids=["batch-refused", "items-named-in-2xx"])
def test_rejections_show_as_last_error(queue: CloudSyncQueue, server: IngestServer, reject_status: int) -> None:
    # Every item refused, by a 422 to the whole batch or by name in a 2xx answer: the
    # operator's first look (get_stats, cloud-sync stats) must say so, without the key.
    server.set_limits(reject=lambda item: True, reject_status=reject_status)
    queue.enqueue_many([{"n": i} for i in range(4)])
    before = queue.get_stats()
    assert before["last_error"] is None
    assert queue.maybe_flush(HTTPCloudUploader(server.url, "test-key", timeout=5)) == 0
    stats = queue.get_stats()
    assert stats["last_error"] and "invalid item" in stats["last_error"]
    assert "test-key" not in stats["last_error"] and stats["last_error_at"] > 0
    assert stats["failed_batches"] == 0 and server.items == []
