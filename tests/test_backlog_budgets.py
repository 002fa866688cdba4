"""Backlog budgets per destination (``max_backlog_items``, ``max_backlog_bytes``,
``on_backlog_full``): a destination that is down gives up its own deliveries beyond its
budget, least important first, while the others receive everything; on real files, with
real processes killed while they drop."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from typing import Any, Dict, List

import pytest
import rawsql
from clirun import cli_env

from pyv_edge_agent.cloud_sync import CloudSyncQueue, Priority


class Recording:
    """An uploader that takes every batch and keeps the payloads."""

    def __init__(self) -> None:
        self.received: List[Dict[str, Any]] = []

    def post_batch(self, payloads: list) -> bool:
        self.received += payloads
        return True


def _budgeted(db_path: str, **budget: Any) -> CloudSyncQueue:
    return CloudSyncQueue(db_path, destinations={"live": {}, "down": budget})


def _kept(queue: CloudSyncQueue, destination: str) -> List[int]:
    return sorted(item.payload["n"] for item in queue.peek(100_000, destination=destination))


def _items_in_file(queue: CloudSyncQueue) -> int:
    return int(rawsql.execute(queue, "SELECT COUNT(*) FROM sync_queue").fetchone()[0])


@pytest.mark.parametrize("on_full, kept", [("drop_oldest", range(900, 1000)), ("drop_newest", range(100))])
@pytest.mark.parametrize("chunk", [1000, 50])
def test_a_down_destination_keeps_its_budget_and_the_live_one_receives_everything(
    db_path: str, on_full: str, kept: range, chunk: int
) -> None:
    with _budgeted(db_path, max_backlog_items=100, on_backlog_full=on_full) as queue:
        live = Recording()
        for start in range(0, 1000, chunk):
            queue.enqueue_many([{"n": n} for n in range(start, start + chunk)])
            if start % 200 == 0:
                queue.maybe_flush(live, destination="live")
        queue.maybe_flush(live, destination="live")
        assert sorted(item["n"] for item in live.received) == list(range(1000))
        assert _kept(queue, "down") == list(kept)
        assert queue.pending_count(destination="down") == 100
        assert _items_in_file(queue) == 100  # only what someone still needs
        figures = queue.get_stats()["destinations"]
        assert figures["down"]["dropped_total"] == 900 and figures["live"]["dropped_total"] == 0


def test_a_byte_budget_keeps_the_newest_items_that_fit(db_path: str) -> None:
    with _budgeted(db_path, max_backlog_bytes=2_000) as queue:
        payloads = [{"n": n, "pad": "x" * 80} for n in range(100)]  # about 100 bytes each
        queue.enqueue_many(payloads)
        size = len(json.dumps(payloads[0], separators=(",", ":")))
        kept = _kept(queue, "down")
        assert kept == list(range(100 - len(kept), 100))
        assert len(kept) == 2_000 // size
        (stored,) = rawsql.execute(queue, "SELECT bytes FROM sync_backlog").fetchone()
        assert stored <= 2_000
        assert queue.pending_count(destination="live") == 100
        assert queue.get_stats()["destinations"]["down"]["dropped_total"] == 100 - len(kept)


def test_critical_items_outlive_telemetry_under_a_budget(db_path: str) -> None:
    with _budgeted(db_path, max_backlog_items=10) as queue:
        queue.enqueue_many([{"n": n} for n in range(5)], priority=Priority.CRITICAL)
        queue.enqueue_many([{"n": n} for n in range(5, 25)], priority=Priority.TELEMETRY)
        queue.enqueue_many([{"n": n} for n in range(25, 30)], priority=Priority.LOGS)
        # Logs go first, then the oldest telemetry; every critical item stays.
        assert _kept(queue, "down") == [0, 1, 2, 3, 4, 20, 21, 22, 23, 24]
        queue.enqueue_many([{"n": n} for n in range(30, 45)], priority=Priority.CRITICAL)
        assert _kept(queue, "down") == list(range(35, 45))  # only critical left: the oldest went


def test_a_budget_never_refuses_an_enqueue_and_an_item_no_one_needs_leaves(db_path: str) -> None:
    with _budgeted(db_path, max_backlog_items=1) as queue:
        ids = [queue.enqueue({"n": n}, destinations=("down",)) for n in range(5)]
        assert len(set(ids)) == 5
        assert _kept(queue, "down") == [4]
        assert _items_in_file(queue) == 1


def test_a_destination_that_delivers_stays_within_its_budget_without_dropping(db_path: str) -> None:
    with _budgeted(db_path, max_backlog_items=100) as queue:
        down = Recording()  # this time it is up
        for start in range(0, 1000, 50):
            queue.enqueue_many([{"n": n} for n in range(start, start + 50)])
            queue.maybe_flush(down, destination="down")
        assert len(down.received) == 1000
        assert queue.get_stats()["destinations"]["down"]["dropped_total"] == 0


def test_the_counts_follow_every_way_an_item_leaves(db_path: str) -> None:
    with _budgeted(db_path, max_backlog_items=50) as queue:
        queue.enqueue_many([{"n": n} for n in range(40)])
        queue.enqueue_many([{"n": n} for n in range(40, 60)], destinations=("live",))
        assert queue.ack([1, 2, 3], destination="down") == 3
        queue.maybe_flush(Recording(), destination="live")
        counted = rawsql.execute(queue, "SELECT items, bytes FROM sync_backlog").fetchone()
        recount = rawsql.execute(
            queue,
            "SELECT COUNT(*), SUM(length(CAST(q.payload AS BLOB))) FROM sync_routes AS r"
            " JOIN sync_queue AS q ON q.id = r.item_id WHERE r.destinations & (SELECT 1 << id FROM"
            " sync_destinations WHERE name = 'down')",
        ).fetchone()
        assert tuple(counted) == tuple(recount) == (37, recount[1])
    # Opened without the budget, the file's counts are not kept up; with it again, they are taken afresh.
    with CloudSyncQueue(db_path, destinations=("live", "down")) as queue:
        queue.enqueue_many([{"n": n} for n in range(100, 200)])
    with _budgeted(db_path, max_backlog_items=50) as queue:
        queue.enqueue({"n": 200})
        assert queue.pending_count(destination="down") == 50
        assert _kept(queue, "down")[-1] == 200


@pytest.mark.parametrize(
    "budget, error, match",
    [
        ({"max_backlog_items": 0}, ValueError, r"destinations\['down'\]\['max_backlog_items'\]"),
        ({"max_backlog_bytes": "big"}, TypeError, r"destinations\['down'\]\['max_backlog_bytes'\]"),
        ({"max_backlog_items": 5, "on_backlog_full": "drop_random"}, ValueError, "on_backlog_full"),
        ({"on_backlog_full": "drop_newest"}, ValueError, "needs max_backlog_items or max_backlog_bytes"),
    ],
)
def test_bad_budgets_are_refused_before_the_file_is_made(db_path: str, budget: Any, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        _budgeted(db_path, **budget)
    assert not os.path.exists(db_path)


def test_a_sealed_queue_counts_the_stored_bytes(db_path: str) -> None:
    key = os.urandom(32)
    options = {"live": {}, "down": {"max_backlog_bytes": 5_000}}
    with CloudSyncQueue(db_path, destinations=options, encryption_key=key) as queue:
        queue.enqueue_many([{"n": n, "pad": "y" * 50} for n in range(200)])
        (stored,) = rawsql.execute(queue, "SELECT bytes FROM sync_backlog").fetchone()
        kept = _kept(queue, "down")
        sealed = rawsql.execute(
            queue,
            "SELECT SUM(length(q.payload)), MIN(length(q.payload)) FROM sync_queue AS q JOIN sync_routes AS r"
            " ON r.item_id = q.id WHERE r.destinations & (SELECT 1 << id FROM sync_destinations WHERE name = 'down')",
        ).fetchone()
        assert stored <= 5_000 and stored == sealed[0]
        assert sealed[1] > len('{"n":0,"pad":""}') + 50  # the sealed size was counted, not the plain one
        assert kept == list(range(200 - len(kept), 200))
        assert queue.pending_count(destination="live") == 200


# -- kill -9 while dropping ------------------------------------------------------------------

_CHILD = """
import sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue
queue = CloudSyncQueue(sys.argv[1], destinations={"live": {}, "down": {"max_backlog_items": 30}})
start = int(sys.argv[2])
while True:
    ids = queue.enqueue_many([{"n": n} for n in range(start, start + 20)])
    print(start, flush=True)
    start += 20
"""


def test_kill_9_while_dropping_loses_nothing_a_destination_still_owns(db_path: str, backend: str) -> None:
    env = cli_env(backend)  # the child runs on the backend under test
    _budgeted(db_path, max_backlog_items=30).close()
    committed: List[int] = []
    start = 0
    rng = random.Random(24)
    for _ in range(6):
        child = subprocess.Popen(
            [sys.executable, "-c", _CHILD, db_path, str(start)], stdout=subprocess.PIPE, env=env, text=True
        )
        assert child.stdout is not None
        first = child.stdout.readline()  # running, and one batch committed
        assert first
        time.sleep(rng.uniform(0.01, 0.3))
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        for line in [first, *out.splitlines()]:
            if line.strip():
                committed += range(int(line), int(line) + 20)
        start = max(committed) + 1000  # never reuse a payload number
    with _budgeted(db_path, max_backlog_items=30) as queue:
        assert queue.verify().ok, queue.verify().messages
        live = sorted(item.payload["n"] for item in queue.peek(1_000_000, destination="live"))
        assert set(committed) <= set(live)  # the live destination owns every committed item
        down = _kept(queue, "down")
        assert len(down) <= 30 and set(down) <= set(live)
        (items,) = rawsql.execute(queue, "SELECT items FROM sync_backlog").fetchone()
        assert items == len(down)
        dropped = queue.get_stats()["destinations"]["down"]["dropped_total"]
        assert dropped == len(live) - len(down)
