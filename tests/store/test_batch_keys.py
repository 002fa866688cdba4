"""Idempotency keys that a deduplicating server cannot mistake: each batch gets a random key
when it is first claimed, kept for every retry of exactly that batch and never reused for
other data. Against the loopback IngestServer (which answers a repeated key from its cache
without recording the batch), every item is recorded exactly once in the three ways a key
derived from item ids went wrong."""

import os
import shutil
from typing import Any, List

import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, Priority
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"


def _uploader(server: IngestServer) -> HTTPCloudUploader:
    return HTTPCloudUploader(server.url, KEY, timeout=5)


def _copy_queue(source: str, target: str) -> None:
    """Copy a closed queue file (its last close checkpointed the WAL into it)."""
    for suffix in ("-wal", "-shm"):
        assert not os.path.exists(source + suffix)
        if os.path.exists(target + suffix):
            os.remove(target + suffix)
    shutil.copyfile(source, target)


def _keys(server: IngestServer) -> List[str]:
    return [request.headers["idempotency-key"] for request in server.requests]


def test_a_requeued_dead_letter_is_recorded_once_the_server_is_fixed(db_path: str, server: IngestServer) -> None:
    """The server rejects the item in a 2xx answer, which it caches under the key; once
    fixed, the requeued item must go out under a new key, not replay that rejection."""
    server.set_limits(reject=lambda item: 200 if item.get("unit") == "bar" else False)
    with CloudSyncQueue(db_path, max_attempts=1) as queue:
        queue.enqueue({"sensor": "pressure", "unit": "bar"})
        assert queue.maybe_flush(_uploader(server)) == 0
        assert len(queue.dead_letters()) == 1 and server.items == []
        server.set_limits()  # the endpoint learns about bars
        assert queue.requeue_dead_letters() == 1
        assert queue.maybe_flush(_uploader(server)) == 1
        assert queue.dead_letters() == [] and queue.pending_count() == 0
    assert server.items == [{"sensor": "pressure", "unit": "bar"}] and server.duplicates == 0
    assert len(set(_keys(server))) == 2


def test_gateways_cloned_from_one_image_each_get_their_alarm_recorded(tmp_path: Any, server: IngestServer) -> None:
    """A golden SD-card image taken after a test run: every gateway starts from the same
    file (same ids to come, same queue_id) and each one's data must arrive."""
    image = os.path.join(tmp_path, "image.db")
    with CloudSyncQueue(image) as queue:
        queue.enqueue_many([{"test": i} for i in range(3)])
        assert queue.maybe_flush(_uploader(server)) == 3
    gateways = []
    for name in ("gw1", "gw2"):
        path = os.path.join(tmp_path, f"{name}.db")
        _copy_queue(image, path)
        gateways.append((name, CloudSyncQueue(path)))
    for name, queue in gateways:
        assert queue.enqueue({"alarm": "overheat", "gateway": name}, priority=Priority.CRITICAL) == 4
    for _, queue in gateways:
        assert queue.maybe_flush(_uploader(server)) == 1
        queue.close()
    assert sorted(map(str, server.items)) == sorted(
        map(str, [{"test": 0}, {"test": 1}, {"test": 2}]
            + [{"alarm": "overheat", "gateway": name} for name in ("gw1", "gw2")])
    )  # fmt: skip
    assert server.duplicates == 0


def test_ids_reused_after_a_rollback_still_get_their_data_recorded(tmp_path: Any, server: IngestServer) -> None:
    """``durability="fast"`` and a power cut, or a restore from a backup, roll
    ``sqlite_sequence`` back: new items take ids that were already sent."""
    path = os.path.join(tmp_path, "sync.db")
    backup = os.path.join(tmp_path, "backup.db")
    CloudSyncQueue(path, durability="fast").close()
    _copy_queue(path, backup)
    with CloudSyncQueue(path, durability="fast") as queue:
        assert queue.enqueue_many([{"before": i} for i in range(3)]) == [1, 2, 3]
        assert queue.maybe_flush(_uploader(server)) == 3
    _copy_queue(backup, path)  # the commits since the backup are lost
    with CloudSyncQueue(path, durability="fast") as queue:
        assert queue.enqueue_many([{"after": i} for i in range(3)]) == [1, 2, 3]
        assert queue.maybe_flush(_uploader(server)) == 3
    assert server.items == [{"before": i} for i in range(3)] + [{"after": i} for i in range(3)]
    assert server.duplicates == 0


def test_a_retry_of_the_same_batch_keeps_its_key_in_another_process(db_path: str, server: IngestServer) -> None:
    """A lost answer: the retry, from a new queue object as after a restart, carries the
    same key, so the server answers from its cache and records the batch once."""
    server.fail_next("lost")
    with CloudSyncQueue(db_path, retry_base_seconds=0.0) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)])
        assert queue.maybe_flush(_uploader(server)) == 0
    with CloudSyncQueue(db_path, retry_base_seconds=0.0) as queue:
        assert queue.maybe_flush(_uploader(server)) == 3
    first, retry = _keys(server)
    assert first == retry and server.duplicates == 1
    assert server.items == [{"i": i} for i in range(3)]


def test_a_split_batch_sends_each_part_under_a_new_key(db_path: str, server: IngestServer) -> None:
    server.fail_next(413)
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(4)])
        assert queue.maybe_flush(_uploader(server)) == 4
        assert rawsql.execute(queue, "SELECT COUNT(*) FROM sync_batch_keys").fetchone()[0] == 0
    whole, first_half, second_half = _keys(server)
    assert len({whole, first_half, second_half}) == 3
    assert server.batches == [[{"i": 0}, {"i": 1}], [{"i": 2}, {"i": 3}]]
