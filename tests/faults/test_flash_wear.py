"""Settings that cut bytes written to the flash without weakening durability."""

import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue


def test_secure_delete_does_not_zero_fill_freed_pages(queue: CloudSyncQueue) -> None:
    # 2 = FAST: deleted rows are cleared inside pages written anyway; no extra page writes.
    assert rawsql.execute(queue, "PRAGMA secure_delete").fetchone()[0] == 2
