"""Bounded storage on real files: limits and eviction order, expiry purge, space coming
back (incremental vacuum, bounded WAL), the free-disk margin and a disk that fills up."""

import errno
import logging
import os
import sqlite3
import threading
import time
from typing import Any, List

import legacy
import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, DiskFullError, Priority, QueueFullError
from pyv_edge_agent.cloud_sync._store import storage as _storage

LOGS, TELEMETRY, ANOMALY, CRITICAL = Priority.LOGS, Priority.TELEMETRY, Priority.ANOMALY, Priority.CRITICAL


def _stored_ids(queue: CloudSyncQueue) -> List[int]:
    return [row[0] for row in rawsql.execute(queue, "SELECT id FROM sync_queue ORDER BY id")]


def _integrity(path: str) -> str:
    conn = sqlite3.connect(path)
    try:
        return str(conn.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        conn.close()


def test_eviction_order_lowest_priority_oldest_first(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    with CloudSyncQueue(db_path, max_queue_items=6) as queue:
        log1, tel1, log2, ano1, tel2, crit1 = (
            queue.enqueue({"n": name}, priority=level)
            for name, level in [
                ("log1", LOGS),
                ("tel1", TELEMETRY),
                ("log2", LOGS),
                ("ano1", ANOMALY),
                ("tel2", TELEMETRY),
                ("crit1", CRITICAL),
            ]
        )
        with caplog.at_level(logging.INFO, logger="pyv_edge_agent.cloud_sync"):
            evicted_order = []
            for i in range(5):
                before = set(_stored_ids(queue))
                queue.enqueue({"crit": i}, priority=CRITICAL)
                evicted_order += sorted(before - set(_stored_ids(queue)))
                assert queue.pending_count() == 6
        assert evicted_order == [log1, log2, tel1, tel2, ano1]
        assert queue.get_stats()["evicted_total"] == 5
        # Only Critical items are left: the next one is refused and nothing is written.
        before = _stored_ids(queue)
        with pytest.raises(QueueFullError, match="only Critical"):
            queue.enqueue({"crit": "one too many"}, priority=CRITICAL)
        with pytest.raises(QueueFullError):
            queue.enqueue_many([{"t": 1}, {"t": 2}])
        assert _stored_ids(queue) == before and crit1 in before
        assert queue.get_stats()["evicted_total"] == 5
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len([m for m in warnings if "evicting" in m]) == 1  # once per episode, not per item


def test_enqueue_many_that_cannot_fit_evicts_nothing(db_path: str) -> None:
    with CloudSyncQueue(db_path, max_queue_items=10) as queue:
        queue.enqueue_many([{"t": i} for i in range(4)], priority=TELEMETRY)
        queue.enqueue_many([{"c": i} for i in range(4)], priority=CRITICAL)
        before = _stored_ids(queue)
        with pytest.raises(QueueFullError):
            queue.enqueue_many([{"c": i} for i in range(7)], priority=CRITICAL)
        with pytest.raises(QueueFullError, match="can never fit"):
            queue.enqueue_many([{"c": i} for i in range(11)], priority=LOGS)
        assert _stored_ids(queue) == before
        ids = queue.enqueue_many([{"c": i} for i in range(6)], priority=CRITICAL)
        assert queue.pending_count() == 10 and set(ids) <= set(_stored_ids(queue))
        assert queue.get_stats()["evicted_total"] == 4


def test_byte_limit_counts_stored_payload_bytes(db_path: str) -> None:
    item = {"v": "é" * 40}  # 80 bytes of UTF-8 in 40 characters
    size = len(b'{"v":""}') + 80
    with CloudSyncQueue(db_path, max_queue_bytes=10 * size) as queue:
        first = queue.enqueue_many([item] * 10, priority=LOGS)
        newest = queue.enqueue(item, priority=ANOMALY)
        stored = _stored_ids(queue)
        assert first[0] not in stored and first[1:] + [newest] == stored
        (total,) = rawsql.execute(queue, "SELECT SUM(LENGTH(CAST(payload AS BLOB))) FROM sync_queue").fetchone()
        assert total == 10 * size
        with pytest.raises(QueueFullError, match="max_queue_bytes"):
            queue.enqueue({"v": "x" * 11 * size})


def test_limits_hold_with_two_queue_objects_on_one_file(db_path: str) -> None:
    with CloudSyncQueue(db_path, max_queue_items=50) as first, CloudSyncQueue(db_path, max_queue_items=50) as second:
        for i in range(60):
            (first if i % 3 else second).enqueue_many([{"i": i, "j": j} for j in range(3)], priority=LOGS)
            assert first.pending_count() <= 50
        first.ack(_stored_ids(first)[:20])
        second.enqueue_many([{"after": j} for j in range(20)])
        assert second.pending_count() == 50
        assert first.get_stats()["evicted_total"] == 60 * 3 - 50 + 20 - 20


def test_from_dict_accepts_the_storage_keys(db_path: str) -> None:
    config = {
        "db_path": db_path,
        "max_queue_items": 3,
        "max_queue_bytes": 10_000,
        "min_free_disk_bytes": 0,
        "purge_interval": None,
        "on_corrupt": "quarantine",
    }
    with CloudSyncQueue.from_dict(config) as queue:
        for i in range(5):
            queue.enqueue({"i": i})
        assert queue.pending_count() == 3


def test_purge_expired_deletes_and_counts(queue: CloudSyncQueue) -> None:
    now = [1_000_000.0]
    with CloudSyncQueue(queue.db_path, clock=lambda: now[0]) as clocked:
        short = clocked.enqueue_many([{"s": i} for i in range(3)], ttl_seconds=10)
        keep = clocked.enqueue({"long": 1}, ttl_seconds=1000)
        zero = clocked.enqueue({"zero": 1}, ttl_seconds=0)
        assert clocked.purge_expired() == 1  # a TTL of 0 is expired at once
        now[0] += 11
        assert clocked.purge_expired() == 3
        assert _stored_ids(clocked) == [keep]
        assert clocked.get_stats()["expired_purged_total"] == 4
        assert zero not in _stored_ids(clocked) and not set(short) & set(_stored_ids(clocked))


class _Accept:
    def __init__(self) -> None:
        self.sent: List[Any] = []

    def post_batch(self, payloads: List[Any]) -> bool:
        self.sent += payloads
        return True


@pytest.mark.parametrize("interval, purged", [(0.0, 2), (None, 0)])
def test_maybe_flush_purges_on_its_way(db_path: str, interval: Any, purged: int) -> None:
    now = [2_000_000.0]
    with CloudSyncQueue(db_path, clock=lambda: now[0], purge_interval=interval) as queue:
        queue.enqueue_many([{"old": i} for i in range(2)], ttl_seconds=5)
        queue.enqueue({"fresh": 1}, ttl_seconds=500)
        now[0] += 6
        uploader = _Accept()
        assert queue.maybe_flush(uploader) == 1
        assert uploader.sent == [{"fresh": 1}]
        assert queue.get_stats()["expired_purged_total"] == purged
        assert queue.pending_count() == 2 - purged


def test_new_database_gives_space_back(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_storage, "MAINTENANCE_INTERVAL", 0.0)
    with CloudSyncQueue(db_path, durability="fast") as queue:
        conn = rawsql.connection(queue)
        assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
        ids = queue.enqueue_many([{"i": i, "pad": "x" * 300} for i in range(5000)])
        full_pages = conn.execute("PRAGMA page_count").fetchone()[0]
        queue.ack(ids[:4000])
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        assert free <= _storage.KEEP_FREE_PAGES and pages - free < full_pages * 0.3 and pages < full_pages * 0.5
        # The pages kept free are reused before the file grows again.
        queue.enqueue_many([{"i": i, "pad": "x" * 300} for i in range(200)])
        assert conn.execute("PRAGMA page_count").fetchone()[0] <= pages
    assert _integrity(db_path) == "ok"


def test_earlier_release_database_is_converted_only_when_nearly_empty(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_storage, "MAINTENANCE_INTERVAL", 0.0)
    path = os.path.join(tmp_path, "old.db")
    legacy.create(path)
    conn = sqlite3.connect(path)
    conn.executemany(
        "INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds) VALUES (?, 3, 0, 86400)",
        [(f'{{"pad": "{"y" * 500}", "i": {i}}}',) for i in range(3000)],
    )
    conn.commit()
    conn.close()
    with CloudSyncQueue(path) as queue:
        ids = _stored_ids(queue)
        queue.ack(ids[:10])  # maintenance runs, but 1.5 MiB of items is not rewritten unasked
        assert rawsql.execute(queue, "PRAGMA auto_vacuum").fetchone()[0] == 0
        queue.ack(ids[10:])
        assert rawsql.execute(queue, "PRAGMA auto_vacuum").fetchone()[0] == 2
        assert rawsql.execute(queue, "PRAGMA page_count").fetchone()[0] < 20
    assert legacy.enqueue(path, {"old": "still works"}) == ids[-1] + 1
    assert _integrity(path) == "ok"


def test_compact_converts_an_earlier_release_file_on_request(tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "old.db")
    legacy.create(path)
    for i in range(5):
        legacy.enqueue(path, {"i": i})
    with CloudSyncQueue(path) as queue:
        queue.compact()
        assert rawsql.execute(queue, "PRAGMA auto_vacuum").fetchone()[0] == 2
        assert [item.payload for item in queue.dequeue()] == [{"i": i} for i in range(5)]


def test_wal_stays_bounded_under_a_constant_writer(db_path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 256 * 1024
    monkeypatch.setattr(_storage, "WAL_LIMIT_BYTES", limit)
    monkeypatch.setattr(_storage, "MAINTENANCE_INTERVAL", 0.0)
    with CloudSyncQueue(db_path, durability="fast") as queue, CloudSyncQueue(db_path) as reader:
        # No automatic checkpoints, and a reader that keeps starting read transactions: the
        # WAL only stays bounded through the queue's own maintenance.
        rawsql.execute(queue, "PRAGMA wal_autocheckpoint = 0")
        stop = threading.Event()

        def read() -> None:
            while not stop.is_set():
                reader.peek(n=5)
                time.sleep(0.001)

        thread = threading.Thread(target=read)
        thread.start()
        largest = written = 0
        try:
            while written < 12 * limit:
                queue.enqueue_many([{"pad": "z" * 1000, "i": i} for i in range(20)])
                written += 20 * 1000
                largest = max(largest, os.path.getsize(db_path + "-wal"))
        finally:
            stop.set()
            thread.join()
    assert largest < 3 * limit


def test_low_free_disk_evicts_or_refuses_instead_of_growing(db_path: str) -> None:
    with CloudSyncQueue(db_path, min_free_disk_bytes=0) as queue:
        queue.enqueue_many([{"k": i, "pad": "l" * 100} for i in range(3)], priority=LOGS)
        queue.enqueue({"k": 0, "pad": "c" * 100}, priority=CRITICAL)
    stat = os.statvfs(os.path.dirname(db_path))
    above_free = stat.f_bavail * stat.f_frsize + 1024**3  # the margin can never be met here
    with CloudSyncQueue(db_path, min_free_disk_bytes=above_free) as queue:
        before = _stored_ids(queue)
        new = queue.enqueue({"k": 1, "pad": "c" * 100}, priority=CRITICAL)
        assert _stored_ids(queue) == before[1:] + [new]  # the oldest Logs item made room
        queue.enqueue_many([{"k": 2, "pad": "c" * 100}] * 2, priority=CRITICAL)
        with pytest.raises(QueueFullError, match="min_free_disk_bytes"):
            queue.enqueue({"k": 3, "pad": "c" * 100}, priority=CRITICAL)
        assert queue.get_stats()["evicted_total"] == 3


def _fill_until_full(queue: CloudSyncQueue, returned: dict) -> Exception:
    for batch in range(10_000):
        try:
            if batch % 2:
                payload = {"b": batch, "pad": "f" * 2000}
                returned[queue.enqueue(payload)] = payload
            else:
                payloads = [{"b": batch, "j": j, "pad": "m" * 500} for j in range(20)]
                returned.update(zip(queue.enqueue_many(payloads), payloads))
        except Exception as exc:  # noqa: BLE001 - the test inspects it
            return exc
    raise AssertionError("the file system never filled up")


def _check_returned(queue: CloudSyncQueue, returned: dict) -> None:
    rows = dict(rawsql.execute(queue, "SELECT id, payload FROM sync_queue"))
    assert set(rows) == set(returned)
    items = {item.id: item.payload for item in queue.dequeue(batch_size=len(returned) + 1)}
    assert items == returned


def test_full_disk_is_a_clear_error_and_recovers(small_fs: str) -> None:
    path = os.path.join(small_fs, "q.db")
    ballast = os.path.join(small_fs, "ballast")
    with open(ballast, "wb") as handle:
        handle.write(b"\0" * 1024 * 1024)
    returned: dict = {}
    with CloudSyncQueue(path, min_free_disk_bytes=0) as queue:
        error = _fill_until_full(queue, returned)
        assert isinstance(error, DiskFullError) and isinstance(error, QueueFullError)
        assert isinstance(error, OSError) and error.errno == errno.ENOSPC and error.filename == path
        assert queue.verify().ok
        _check_returned(queue, returned)
        os.remove(ballast)
        payload = {"after": "space was freed"}
        returned[queue.enqueue(payload)] = payload
        _check_returned(queue, returned)
    assert _integrity(path) == "ok"


def test_page_limit_full_is_a_clear_error_and_recovers(db_path: str) -> None:
    # The same path without a small file system: SQLite's page limit also gives SQLITE_FULL.
    returned: dict = {}
    with CloudSyncQueue(db_path) as queue:
        rawsql.execute(queue, "PRAGMA max_page_count = 300")
        error = _fill_until_full(queue, returned)
        assert isinstance(error, DiskFullError) and error.filename == db_path
        _check_returned(queue, returned)
        rawsql.execute(queue, "PRAGMA max_page_count = 100000")
        payload = {"after": "limit raised"}
        returned[queue.enqueue(payload)] = payload
        _check_returned(queue, returned)


def test_min_free_disk_margin_keeps_a_small_disk_from_filling(small_fs: str) -> None:
    path = os.path.join(small_fs, "q.db")
    with CloudSyncQueue(path, min_free_disk_bytes=1024 * 1024, durability="fast") as queue:
        least_free = 8 * 1024 * 1024
        for i in range(1500):
            queue.enqueue_many([{"i": i, "j": j, "pad": "t" * 400} for j in range(10)], priority=TELEMETRY)
            stat = os.statvfs(small_fs)
            least_free = min(least_free, stat.f_bavail * stat.f_frsize)
        assert queue.get_stats()["evicted_total"] > 0
        assert least_free > 512 * 1024  # the margin held, give or take SQLite's page reuse
        # Critical items replace the Telemetry ones; once only they are left, refusal.
        for i in range(400):
            try:
                queue.enqueue_many([{"crit": i, "j": j, "pad": "c" * 400} for j in range(50)], priority=CRITICAL)
            except QueueFullError as exc:
                assert not isinstance(exc, DiskFullError)
                break
        else:
            raise AssertionError("Critical items filled the disk without a refusal")
        for i in range(100):  # a batch can be refused while a few smaller ones would fit
            try:
                queue.enqueue({"crit": i, "pad": "c" * 400}, priority=CRITICAL)
            except QueueFullError:
                break
        levels = {row[0] for row in rawsql.execute(queue, "SELECT DISTINCT priority FROM sync_queue")}
        assert levels == {CRITICAL.value}
    assert _integrity(path) == "ok"


def test_full_disk_during_ack_and_nack_is_a_clear_error(small_fs: str) -> None:
    # Deletes and updates need WAL space too; a full disk must not surface as SQLite's
    # "cannot rollback" from a transaction it already rolled back.
    path = os.path.join(small_fs, "q.db")
    reserve = os.path.join(small_fs, "reserve")
    with open(reserve, "wb") as handle:
        handle.write(b"\0" * 1024 * 1024)
    returned: dict = {}
    with CloudSyncQueue(path, min_free_disk_bytes=0) as queue:
        _fill_until_full(queue, returned)
        ballast = os.path.join(small_fs, "ballast")
        with open(ballast, "wb", buffering=0) as handle:  # takes the last free blocks
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError:
                pass
        ids = sorted(returned)
        for call in (lambda: queue.nack(ids[:1500], retry_delay_seconds=0), lambda: queue.ack(ids[:1500])):
            with pytest.raises(DiskFullError):
                call()
        _check_returned(queue, returned)
        os.remove(ballast)
        os.remove(reserve)
        # 1 MiB freed: room for the WAL frames of a smaller call.
        assert queue.nack(ids[:100], retry_delay_seconds=0) == 100
        assert queue.ack(ids[:100]) == 100
        for row_id in ids[:100]:
            del returned[row_id]
        _check_returned(queue, returned)
    assert _integrity(path) == "ok"


def test_limit_holds_under_group_commit(db_path: str) -> None:
    # Concurrent single enqueues share transactions (group commit); the check runs in each.
    with CloudSyncQueue(db_path, max_queue_items=50, durability="fast") as queue:
        errors: List[BaseException] = []

        def produce(worker: int) -> None:
            try:
                for i in range(100):
                    queue.enqueue({"w": worker, "i": i}, priority=LOGS)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(w,)) for w in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert queue.pending_count() == 50
        assert queue.get_stats()["evicted_total"] == 800 - 50
        # Oldest first: the 50 newest ids are the ones left.
        stored = _stored_ids(queue)
        assert stored == list(range(stored[-1] - 49, stored[-1] + 1))
