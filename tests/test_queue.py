"""Queue semantics on a real SQLite file: eligibility, order, ids, counters, connections."""

import decimal
import math
import multiprocessing
import os
import sqlite3
import threading
import time
from typing import Any, List

import legacy
import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, DatabaseError, Priority, QueueItem
from pyv_edge_agent.cloud_sync._store.schema import QUEUE_DDL, SCHEMA_VERSION


def _ids(items: List[QueueItem]) -> List[int]:
    return [item.id for item in items]


def test_documented_table_and_index_exactly(queue: CloudSyncQueue, db_path: str) -> None:
    conn = sqlite3.connect(db_path)
    table_sql, index_sql = (
        conn.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0]
        for name in ("sync_queue", "idx_sync_queue_priority")
    )
    conn.close()
    documented = QUEUE_DDL.replace("IF NOT EXISTS ", "").split(";\n")
    assert table_sql == documented[0]
    assert index_sql == documented[1]


def test_directory_is_created(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "a", "b", "c", "q.db")
    CloudSyncQueue(path).close()
    assert os.path.isfile(path)


def test_order_is_priority_then_retry_time_then_id(queue: CloudSyncQueue) -> None:
    logs = queue.enqueue({"n": "logs"}, priority=Priority.LOGS)
    tel1 = queue.enqueue({"n": "t1"})
    crit = queue.enqueue({"n": "crit"}, priority=Priority.CRITICAL)
    tel2 = queue.enqueue({"n": "t2"}, priority=3)
    anomaly = queue.enqueue({"n": "anomaly"}, priority=2)
    tel3 = queue.enqueue({"n": "t3"})
    # A nacked item that is due again sorts after fresh items of its priority.
    queue.nack([tel1], retry_delay_seconds=0)
    assert _ids(queue.dequeue(batch_size=10)) == [crit, anomaly, tel2, tel3, tel1, logs]
    assert _ids(queue.peek(n=3)) == [crit, anomaly, tel2]


def test_dequeue_and_peek_never_remove(queue: CloudSyncQueue) -> None:
    queue.enqueue_many([{"i": i} for i in range(5)])
    assert queue.dequeue(batch_size=3) == queue.dequeue(batch_size=3)
    assert len(queue.peek(n=10)) == 5
    assert queue.pending_count() == 5


def test_nacked_items_wait_for_their_retry_time(queue: CloudSyncQueue) -> None:
    ids = queue.enqueue_many([{"i": i} for i in range(3)])
    assert queue.nack(ids[:2], retry_delay_seconds=0.3) == 2
    assert _ids(queue.dequeue()) == [ids[2]]
    time.sleep(0.35)
    items = queue.dequeue()
    assert _ids(items) == [ids[2], ids[0], ids[1]]
    assert [item.retry_count for item in items] == [0, 1, 1]
    assert items[1].next_retry_at > items[1].created_at


def test_expired_items_are_skipped_but_counted(queue: CloudSyncQueue) -> None:
    short = queue.enqueue({"short": True}, ttl_seconds=1)
    long = queue.enqueue({"short": False})
    zero = queue.enqueue({"zero": True}, ttl_seconds=0)
    assert _ids(queue.dequeue()) == [short, long]
    time.sleep(1.05)
    assert _ids(queue.dequeue()) == [long]
    assert queue.pending_count() == 3
    assert queue.get_stats()["depth"] == 3
    assert queue.ack([short, zero]) == 2


def test_enqueue_many_returns_ids_in_input_order(queue: CloudSyncQueue) -> None:
    first = queue.enqueue({"x": 0})
    ids = queue.enqueue_many([{"i": i} for i in range(1500)], priority=Priority.ANOMALY, ttl_seconds=60)
    assert ids == list(range(first + 1, first + 1501))
    items = queue.dequeue(batch_size=2000)
    assert [item.payload for item in items[:1500]] == [{"i": i} for i in range(1500)]
    assert {item.priority for item in items[:1500]} == {Priority.ANOMALY}
    assert queue.enqueue_many([]) == []


def test_ids_keep_growing_after_ack(queue: CloudSyncQueue) -> None:
    ids = queue.enqueue_many([{"i": i} for i in range(3)])
    queue.ack(ids)
    # AUTOINCREMENT: an acked id is never handed out again.
    assert queue.enqueue({"i": 3}) == ids[-1] + 1


def test_ack_and_nack_many_ids_and_duplicates(queue: CloudSyncQueue) -> None:
    ids = queue.enqueue_many([{"i": i} for i in range(2000)])
    assert queue.nack(ids[:1300] + ids[:10], retry_delay_seconds=0) == 1300
    assert queue.get_stats()["total_retries"] == 1300
    assert queue.ack([]) == 0
    assert queue.ack(iter(ids[:1000])) == 1000
    assert queue.ack(ids[:1000]) == 0
    assert queue.ack(ids[1000:] + [10**12]) == 1000
    assert queue.pending_count() == 0


def test_ack_uses_one_statement_per_chunk(queue: CloudSyncQueue) -> None:
    ids = queue.enqueue_many([{"i": i} for i in range(1100)])
    statements: List[str] = []
    rawsql.connection(queue).set_trace_callback(statements.append)
    try:
        assert queue.ack(ids) == 1100
    finally:
        rawsql.connection(queue).set_trace_callback(None)
    deletes = [s for s in statements if s.startswith("DELETE")]
    assert len(deletes) == 3  # 512 + 512 + 76 (padded to 128)


def test_get_stats_documented_keys(queue: CloudSyncQueue) -> None:
    stats = queue.get_stats()
    assert stats["depth"] == 0 and stats["oldest_item_timestamp"] is None
    assert stats["total_retries"] == 0 and stats["retrying_items"] == 0
    before = time.time()
    ids = queue.enqueue_many([{"i": i} for i in range(4)])
    queue.nack(ids[:2], retry_delay_seconds=0)
    queue.nack(ids[:1], retry_delay_seconds=0)
    stats = queue.get_stats()
    assert stats["depth"] == 4
    assert before - 1 <= stats["oldest_item_timestamp"] <= time.time()
    assert stats["total_retries"] == 3 and stats["retrying_items"] == 2


def test_awkward_payloads_round_trip(queue: CloudSyncQueue) -> None:
    payload = {
        "unicode": "ünïcødé ☃ 𝄞",
        "control": "a\x00b\x1fc\n",
        "nested": {"empty_list": [], "empty_dict": {}, "deep": [[[{}]]]},
        "big": 1e308,
        "tiny": 5e-324,
        "nan": math.nan,
        "inf": -math.inf,
        "decimal": decimal.Decimal("1.10"),
        1: "int key",
    }
    item_id = queue.enqueue(payload)
    (item,) = queue.dequeue()
    assert item.id == item_id
    assert item.payload == {
        "unicode": "ünïcødé ☃ 𝄞",
        "control": "a\x00b\x1fc\n",
        "nested": {"empty_list": [], "empty_dict": {}, "deep": [[[{}]]]},
        "big": 1e308,
        "tiny": 5e-324,
        "nan": None,
        "inf": None,
        "decimal": "1.10",
        "1": "int key",
    }


def test_earlier_release_database_opens_and_keeps_items(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "old.db")
    legacy.create(path)
    old_ids = [legacy.enqueue(path, {"old": i, "when": time.gmtime(0)}, priority=1 + i % 4) for i in range(6)]
    legacy.enqueue(path, {"nan": math.nan})  # json.dumps writes a bare NaN
    with CloudSyncQueue(path) as queue:
        assert queue.pending_count() == 7
        items = queue.dequeue(batch_size=10)
        assert sorted(_ids(items)) == old_ids + [old_ids[-1] + 1]
        assert [item.priority.value for item in items] == sorted(1 + i % 4 for i in range(7))
        assert math.isnan(next(item.payload["nan"] for item in items if "nan" in item.payload))
        new_id = queue.enqueue({"new": True})
        assert new_id == old_ids[-1] + 2
    # ... and the earlier release can still use it afterwards.
    assert legacy.enqueue(path, {"old": "again"}) == new_id + 1
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()


@pytest.mark.parametrize("durability, level", [("full", 2), ("fast", 1)])
def test_durability_modes_set_wal_and_synchronous(db_path: str, durability: str, level: int) -> None:
    with CloudSyncQueue(db_path, durability=durability) as queue:
        conn = rawsql.connection(queue)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == level
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30000


def test_counters_persist_across_instances(db_path: str, server: Any) -> None:
    from pyv_edge_agent.cloud_sync import HTTPCloudUploader

    uploader = HTTPCloudUploader(server.url, "test-key", timeout=5)
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(7)])
        assert queue.maybe_flush(uploader) == 7
        assert queue.messages_sent_today == 7
    with CloudSyncQueue(db_path) as queue:
        assert queue.messages_sent_today == 7
        assert queue.get_stats()["messages_sent_today"] == 7
        queue.reset_daily_counters()
        assert queue.messages_sent_today == 0
    with CloudSyncQueue.from_dict({"db_path": db_path, "durability": "fast"}) as queue:
        assert queue.messages_sent_today == 0


def test_one_long_lived_connection(queue: CloudSyncQueue) -> None:
    conn = rawsql.connection(queue)
    queue.enqueue({"a": 1})
    queue.dequeue()
    queue.ack([1])
    assert rawsql.connection(queue) is conn


def test_closed_queue_refuses_work(db_path: str) -> None:
    queue = CloudSyncQueue(db_path)
    queue.close()
    with pytest.raises(Exception, match="closed"):
        queue.enqueue({"a": 1})


def test_threads_enqueue_concurrently(queue: CloudSyncQueue) -> None:
    def produce(worker: int) -> None:
        for i in range(100):
            queue.enqueue({"w": worker, "i": i})

    threads = [threading.Thread(target=produce, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = queue.dequeue(batch_size=1000)
    assert len(items) == 800
    assert len({(item.payload["w"], item.payload["i"]) for item in items}) == 800


def _produce_in_process(path: str, worker: int, count: int) -> None:
    with CloudSyncQueue(path) as queue:
        for i in range(count):
            queue.enqueue({"w": worker, "i": i})


def test_processes_share_one_file(db_path: str) -> None:
    CloudSyncQueue(db_path).close()
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=_produce_in_process, args=(db_path, w, 150)) for w in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    with CloudSyncQueue(db_path) as queue:
        assert queue.pending_count() == 450


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_forked_child_reopens_its_own_connection(queue: CloudSyncQueue) -> None:
    queue.enqueue({"parent": "before"})
    parent_conn = rawsql.connection(queue)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            queue.enqueue({"child": True})
            child_conn = rawsql.connection(queue)
            code = 0 if child_conn is not parent_conn and queue.pending_count() == 2 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    queue.enqueue({"parent": "after"})
    assert [item.payload for item in queue.dequeue()] == [{"parent": "before"}, {"child": True}, {"parent": "after"}]


def test_newer_schema_is_refused(db_path: str) -> None:
    CloudSyncQueue(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(DatabaseError, match="newer release"):
        CloudSyncQueue(db_path)
