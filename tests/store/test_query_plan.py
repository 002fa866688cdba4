"""The queries whose cost must not grow with the backlog use the index as intended.

``dequeue`` and the flush's claim ask one priority at a time so that the index
``(priority, next_retry_at)`` (plus the rowid) gives rows already in order and skips items
parked for a later retry by its range; ack, nack and the lease find rows by primary key.
"""

import re
from typing import List

import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync._store import sql as _sql

# SQLite before 3.36 (Bullseye ships 3.34) words a step "SEARCH TABLE t ..." / "SCAN TABLE t";
# later releases drop "TABLE". Only that word is normalised: index, columns and ranges must match.
_OLD_TABLE_WORDING = re.compile(r"^(SEARCH|SCAN) TABLE ")


def _plan(queue: CloudSyncQueue, sql: str, params: tuple) -> List[str]:
    rows = rawsql.execute(queue, "EXPLAIN QUERY PLAN " + sql, params).fetchall()
    return [_OLD_TABLE_WORDING.sub(r"\1 ", row[3]) for row in rows]


@pytest.mark.parametrize("sql", [_sql.SELECT_ELIGIBLE_SQL, _sql.SELECT_CLAIM_SQL])
def test_eligible_rows_come_from_an_index_range_in_order(queue: CloudSyncQueue, sql: str) -> None:
    plan = _plan(queue, sql, (3, 1.0, 1.0, 100))
    assert plan == ["SEARCH sync_queue USING INDEX idx_sync_queue_priority (priority=? AND next_retry_at<?)"]


def test_a_retried_group_is_found_by_index_equality(queue: CloudSyncQueue) -> None:
    plan = _plan(queue, _sql.SELECT_GROUP_SQL, (3, 1.0, 1.0, 100))
    assert plan == ["SEARCH sync_queue USING INDEX idx_sync_queue_priority (priority=? AND next_retry_at=?)"]


@pytest.mark.parametrize("statements", [_sql.ACK_SQL, _sql.NACK_SQL, _sql.RELEASE_SQL])
def test_id_lists_are_found_by_primary_key(queue: CloudSyncQueue, statements: dict) -> None:
    sql = statements[4]
    params = (1, 2, 3, 4) if sql.count("?") == 4 else (0.0, 1, 2, 3, 4)
    plan = _plan(queue, sql, params)
    assert len(plan) == 1 and "USING INTEGER PRIMARY KEY (rowid=?)" in plan[0]
