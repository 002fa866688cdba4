"""The statements of a named destination's delivery rows (``_store.deliveries``), on a real
queue file: the order its claimed and retried items come back in, changes that touch only
its rows, and the index every hot statement uses. The rows are written here as a claim
writes them; tests/test_destinations.py drives the same through the queue."""

import re
import time
from typing import Any, List, Sequence, Tuple

import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, _codec
from pyv_edge_agent.cloud_sync._store import deliveries as _deliveries
from pyv_edge_agent.cloud_sync._store.deliveries import SINGLE, Deliveries, for_destination
from pyv_edge_agent.cloud_sync._types import Column

# SQLite before 3.36 (Bullseye's 3.34) says "SEARCH TABLE sync_deliveries AS d" where newer
# ones say "SEARCH d": both read as the newer wording.
_OLD_TABLE_WORDING = re.compile(r"^(SEARCH|SCAN) (?:TABLE )?(?:\w+ AS )?")
IOT, ARCHIVE = 1, 2


def _fan_out(queue: CloudSyncQueue, ids: Sequence[int], destinations: Sequence[int]) -> None:
    for destination in destinations:
        for item_id in ids:
            (priority,) = rawsql.execute(queue, "SELECT priority FROM sync_queue WHERE id = ?", (item_id,)).fetchone()
            rawsql.execute(
                queue,
                "INSERT INTO sync_deliveries (destination, item_id, priority) VALUES (?, ?, ?)",
                (destination, item_id, priority),
            )


def _run(queue: CloudSyncQueue, sql: str, params: Tuple[Any, ...]) -> List[Tuple[Any, ...]]:
    return list(rawsql.execute(queue, sql, params).fetchall())


def _chunked(queue: CloudSyncQueue, statements: dict, prefix: Tuple[Any, ...], ids: Sequence[int]) -> int:
    return sum(
        int(rawsql.execute(queue, statements[len(chunk)], prefix + chunk).rowcount) for chunk in _codec.id_chunks(ids)
    )


def test_a_destination_claims_its_own_rows_in_priority_order(queue: CloudSyncQueue) -> None:
    logs = queue.enqueue_many([{"n": n} for n in range(3)], priority=4)
    critical = queue.enqueue_many([{"c": n} for n in range(2)], priority=1)
    _fan_out(queue, logs + critical, [IOT])
    _fan_out(queue, logs, [ARCHIVE])
    iot = for_destination(IOT, "iot")
    now = time.time() + 1.0
    claimed = [row for level in (1, 2, 3, 4) for row in _run(queue, iot.claim, iot.key + (level, now, now, 10))]
    assert [row[Column.ID] for row in claimed] == critical + logs
    assert all(isinstance(row[Column.PAYLOAD], bytes) for row in claimed)
    archive = for_destination(ARCHIVE, "archive")
    assert _run(queue, archive.count, archive.key) == [(3,)]


def test_a_nack_and_a_release_move_only_that_destinations_rows(queue: CloudSyncQueue) -> None:
    ids = queue.enqueue_many([{"n": n} for n in range(3)])
    _fan_out(queue, ids, [IOT, ARCHIVE])
    iot = for_destination(IOT, "iot")
    _chunked(queue, iot.nack, iot.key + (500.0,), ids)
    _chunked(queue, iot.release, iot.key + (700.0,), ids[:1])
    rows = _run(queue, "SELECT destination, item_id, retry_count, next_retry_at FROM sync_deliveries ORDER BY 1, 2", ())
    assert rows == [
        (IOT, ids[0], 1, 700.0),
        (IOT, ids[1], 1, 500.0),
        (IOT, ids[2], 1, 500.0),
        (ARCHIVE, ids[0], 0, 0.0),
        (ARCHIVE, ids[1], 0, 0.0),
        (ARCHIVE, ids[2], 0, 0.0),
    ]
    rawsql.execute(queue, iot.resume_held, iot.key + (10.0, 500.0))
    rawsql.execute(queue, iot.restore_retry, iot.key + (20.0, ids[0]))
    due = _run(queue, "SELECT item_id, next_retry_at FROM sync_deliveries WHERE destination = ? ORDER BY 1", (IOT,))
    assert due == [(ids[0], 20.0), (ids[1], 10.0), (ids[2], 10.0)]


def _plan(queue: CloudSyncQueue, sql: str, params: Tuple[Any, ...]) -> List[str]:
    rows = rawsql.execute(queue, "EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return [_OLD_TABLE_WORDING.sub(r"\1 ", row[3]) for row in rows]


@pytest.mark.parametrize("name", ["eligible", "claim"])
def test_a_destinations_claim_walks_its_index_in_order(queue: CloudSyncQueue, name: str) -> None:
    iot = for_destination(IOT, "iot")
    plan = _plan(queue, getattr(iot, name), iot.key + (3, 1.0, 1.0, 100))
    assert plan[0] == (
        "SEARCH d USING INDEX idx_sync_deliveries_due (destination=? AND priority=? AND next_retry_at<?)"
    )
    assert plan[1] == "SEARCH q USING INTEGER PRIMARY KEY (rowid=?)"
    assert not any("TEMP B-TREE" in step for step in plan)  # no sort: the index gives the order


def test_the_single_destination_keeps_the_statements_of_earlier_releases() -> None:
    assert SINGLE.key == () and SINGLE.after_ack == () and SINGLE.fresh is None
    assert SINGLE.claim.startswith("SELECT id, CAST(payload AS BLOB), priority, created_at, ttl_seconds,")
    assert isinstance(for_destination(IOT, "iot"), Deliveries)
    assert _deliveries.ELIGIBLE_SQL.count("?") == 5
