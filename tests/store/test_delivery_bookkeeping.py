"""``verify()`` checks the delivery bookkeeping of a file with destinations (issue 24): a real
file, left by real flushes to real loopback endpoints, damaged by hand with sqlite3 one
rule at a time."""

import sqlite3
from typing import Dict, List, Tuple

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "test-key"


def _made(db_path: str) -> Dict[str, List[int]]:
    """A file with two destinations and every kind of bookkeeping row: items routed to both
    (iot delivered them, archive holds five in a backoff: delivery rows), items routed to
    one, cursors of both. Returns the ids of each kind of item."""
    with IngestServer(api_key=KEY) as live, IngestServer(api_key=KEY) as down:
        down.set_outage(503)
        with CloudSyncQueue(db_path, destinations=("iot", "archive"), max_batch_items=5) as queue:
            both = queue.enqueue_many([{"both": n} for n in range(10)])
            archive_only = queue.enqueue_many([{"archive": n} for n in range(4)], destinations=("archive",))
            for server, name, sent in ((live, "iot", 10), (down, "archive", 0)):
                uploader = HTTPCloudUploader(server.url, KEY, timeout=5.0)
                try:
                    assert queue.maybe_flush(uploader, destination=name) == sent
                finally:
                    uploader.close()
            iot_only = queue.enqueue_many([{"iot": n} for n in range(3)], destinations=("iot",))
    conn = sqlite3.connect(db_path)
    try:
        retrying = [item_id for (item_id,) in conn.execute("SELECT item_id FROM sync_deliveries ORDER BY item_id")]
    finally:
        conn.close()
    assert retrying == both[:5]
    return {"both": both, "archive_only": archive_only, "iot_only": iot_only, "retrying": retrying}


def _damage(db_path: str, sql: str, params: Tuple[int, ...] = ()) -> None:
    conn = sqlite3.connect(db_path)
    try:
        with conn:
            conn.execute(sql, params)
    finally:
        conn.close()


def _problems(db_path: str) -> List[str]:
    report = CloudSyncQueue.verify_file(db_path)
    problems = [message for message in report.messages if message != "ok"]
    assert report.ok == (not problems)
    return problems


def test_an_intact_file_with_destinations_passes(db_path: str) -> None:
    _made(db_path)
    assert _problems(db_path) == []
    with CloudSyncQueue(db_path, destinations=("iot", "archive")) as queue:
        report = queue.verify()
    assert report.ok and report.messages == ("ok",)


ARCHIVE_BIT = "(SELECT 1 << id FROM sync_destinations WHERE name = 'archive')"
ARCHIVE_ID = "(SELECT id FROM sync_destinations WHERE name = 'archive')"


@pytest.mark.parametrize(
    ("sql", "ids_of", "expected"),
    [
        pytest.param(
            "DELETE FROM sync_queue WHERE id = ?",
            ("archive_only", 1),
            "sync_routes: 1 rows route an item that is not in sync_queue",
            id="route-without-item",
        ),
        pytest.param(
            "UPDATE sync_routes SET pending = pending + 1 WHERE item_id IN (?, ?)",
            ("both", 2),
            "sync_routes: 2 rows have a pending count other than the number of destination bits",
            id="pending-miscounted",
        ),
        pytest.param(
            "UPDATE sync_routes SET destinations = destinations | (1 << 40), pending = pending + 1"
            " WHERE item_id IN (?, ?, ?)",
            ("iot_only", 3),
            "sync_routes: 3 rows set the bit of a destination that is not registered",
            id="unregistered-bit",
        ),
        pytest.param(
            f"INSERT INTO sync_deliveries (destination, item_id, priority) VALUES ({ARCHIVE_ID}, ? + 1000, 3)",
            ("both", 1),
            "sync_deliveries: 1 rows name an item that is not in sync_queue",
            id="delivery-without-item",
        ),
        pytest.param(
            f"UPDATE sync_routes SET destinations = destinations & ~{ARCHIVE_BIT}, pending = pending - 1"
            " WHERE item_id IN (?, ?)",
            ("retrying", 2),
            "sync_deliveries: 2 rows belong to a destination whose bit is not set in their item's route",
            id="delivery-not-routed",
        ),
        pytest.param(
            "DELETE FROM sync_routes WHERE item_id = ?",
            ("archive_only", 1),
            "sync_queue: 1 items have no row in sync_routes, in a file with registered destinations",
            id="item-without-route",
        ),
        pytest.param(
            "INSERT INTO sync_cursors (destination, priority, last_id) VALUES (40, 3, ?)",
            ("both", 1),
            "sync_cursors: 1 rows name a destination not registered in sync_destinations",
            id="cursor-of-unregistered",
        ),
    ],
)
def test_each_broken_rule_is_reported_with_its_count(
    db_path: str, sql: str, ids_of: Tuple[str, int], expected: str
) -> None:
    kind, count = ids_of
    ids = _made(db_path)[kind]
    _damage(db_path, sql, tuple(ids[-count:]))
    problems = _problems(db_path)
    assert len(problems) == 1 and problems[0].startswith(expected), problems


def test_a_file_without_destinations_is_not_held_to_them(db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"n": n} for n in range(5)])
    assert _problems(db_path) == []
