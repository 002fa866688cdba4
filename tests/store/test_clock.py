"""Clock steps in both directions, through the injectable ``clock`` and a real file.

Gateways without a real-time clock boot with a stale date and step it at NTP sync; the
queue's time must never run backwards and a step must neither park items for years nor
expire them.
"""

import logging
import time
from typing import List

import pytest
import rawsql

from pyv_edge_agent.cloud_sync import CloudSyncQueue, QueueItem
from pyv_edge_agent.cloud_sync._store.clock import QueueClock

YEAR = 365 * 24 * 3600.0
T0 = 1_800_000_000.0


class FakeWall:
    """A wall clock the test sets; time.monotonic keeps running underneath it."""

    def __init__(self, value: float = T0) -> None:
        self.value = value
        self._started = time.monotonic()

    def __call__(self) -> float:
        return self.value + (time.monotonic() - self._started)

    def step(self, seconds: float) -> None:
        self.value += seconds


def _ids(items: List[QueueItem]) -> List[int]:
    return [item.id for item in items]


def test_clock_set_back_while_running(db_path: str) -> None:
    wall = FakeWall()
    with CloudSyncQueue(db_path, clock=wall) as queue:
        first = queue.enqueue({"n": 1})
        parked = queue.enqueue({"n": 2})
        queue.nack([parked], retry_delay_seconds=0.3)
        stamp = queue.dequeue()[0].created_at
        wall.step(-5 * YEAR)
        later = queue.enqueue({"n": 3})
        items = {item.id: item for item in queue.peek(n=10)}
        assert items[later].created_at >= stamp  # not stamped in the past
        (row,) = rawsql.execute(queue, "SELECT next_retry_at FROM sync_queue WHERE id = ?", (parked,))
        assert row[0] - queue._clock() <= 0.3  # parked for its delay, not for five years
        time.sleep(0.4)
        # Due after its 0.3 s of real time.
        assert _ids(queue.dequeue()) == [first, later, parked]


def test_restart_with_a_stale_clock_resumes_from_the_high_water_mark(db_path: str) -> None:
    wall = FakeWall()
    with CloudSyncQueue(db_path, clock=wall) as queue:
        old = queue.enqueue({"n": "before reboot"}, ttl_seconds=3600)
        stamp = queue.dequeue()[0].created_at
    stale = FakeWall(T0 - 6 * YEAR)  # the gateway booted with a date from years ago
    with CloudSyncQueue(db_path, clock=stale) as queue:
        new = queue.enqueue({"n": "after reboot"})
        queue.nack([old], retry_delay_seconds=0.3)
        items = {item.id: item for item in queue.peek(n=10)}
        assert items[new].created_at >= stamp
        time.sleep(0.4)
        assert _ids(queue.dequeue()) == [new, old]


def test_forward_step_while_running_expires_nothing(db_path: str, caplog: pytest.LogCaptureFixture) -> None:
    wall = FakeWall(T0 - 6 * YEAR)  # booted with a stale date
    with CloudSyncQueue(db_path, clock=wall) as queue:
        short = queue.enqueue({"n": "short"}, ttl_seconds=600)
        backoff = queue.enqueue({"n": "backoff"}, ttl_seconds=3600)
        queue.nack([backoff], retry_delay_seconds=120)
        with caplog.at_level(logging.WARNING, logger="pyv_edge_agent.cloud_sync"):
            wall.step(6 * YEAR)  # NTP sync
            assert _ids(queue.dequeue()) == [short]  # not expired, and the backoff still runs
        after = queue.enqueue({"n": "after sync"})
        items = {item.id: item for item in queue.peek(n=10)}
        assert items[after].created_at >= T0
        assert items[short].created_at >= T0 - 10  # moved with the step
        stats = queue.get_stats()
        assert stats["clock_jumps_total"] == 1
    assert sum("stepped forward" in r.getMessage() for r in caplog.records) == 1
    # Once the backoff has run its course in real time, the item is due again.
    wall.step(121)
    with CloudSyncQueue(db_path, clock=wall) as queue:
        assert _ids(queue.dequeue()) == [short, after, backoff]  # fresh items sort before retried ones


def test_forward_step_seen_by_two_queues_moves_items_once(db_path: str) -> None:
    wall = FakeWall(T0 - YEAR)
    with CloudSyncQueue(db_path, clock=wall) as first, CloudSyncQueue(db_path, clock=wall) as second:
        item = first.enqueue({"n": 1}, ttl_seconds=600)
        second.peek()
        wall.step(YEAR)
        assert _ids(first.dequeue()) == [item]
        assert _ids(second.dequeue()) == [item]
        created = first.peek()[0].created_at
        assert abs(created - (T0 - 1)) < 30
        assert first.get_stats()["clock_jumps_total"] == 1


def test_downtime_across_a_restart_is_not_a_step(db_path: str) -> None:
    wall = FakeWall()
    with CloudSyncQueue(db_path, clock=wall) as queue:
        queue.enqueue({"n": "expires while the gateway is off"}, ttl_seconds=60)
    wall.step(3600)  # the gateway was off for an hour with a working clock
    with CloudSyncQueue(db_path, clock=wall) as queue:
        assert queue.dequeue() == []
        assert queue.get_stats()["clock_jumps_total"] == 0


def test_queue_clock_never_runs_backwards_and_reports_forward_steps() -> None:
    readings = [100.0]
    elapsed = [0.0]
    clock = QueueClock(lambda: readings[0], elapsed=lambda: elapsed[0])
    clock.start(high_water=150.0)
    assert clock.now() == 150.0  # the mark is ahead of the wall clock
    elapsed[0] = 10.0
    readings[0] = 110.0
    assert clock.now() == 160.0  # runs at the elapsed-time rate from the mark
    readings[0] = 50.0
    elapsed[0] = 11.0
    assert clock.now() == 161.0
    assert clock.take_jump() is None
    readings[0] = 10_000.0  # catches up with the mark (absorbed), then leaps beyond it
    elapsed[0] = 12.0
    assert clock.now() == 10_000.0
    before, step = clock.take_jump()  # type: ignore[misc]
    assert before == 162.0 and step == 10_000.0 - 162.0


@pytest.mark.parametrize("bad", ["now", None, float("nan"), True])
def test_clock_must_return_a_number(db_path: str, bad: object) -> None:
    with pytest.raises(TypeError, match="clock"):
        CloudSyncQueue(db_path, clock=lambda: bad)  # type: ignore[return-value]


def test_clock_must_be_callable(db_path: str) -> None:
    with pytest.raises(TypeError, match="clock"):
        CloudSyncQueue(db_path, clock=12.0)  # type: ignore[arg-type]
