"""The asyncio API: how late the event loop runs while 1,000 coroutines enqueue durably,
and how many items per second 1,000 coroutines store, each beside its baseline in the same
run: the naive pattern (calling the sync queue from the coroutine) and the sync group
commit with threads.

The lag is measured by a ticker coroutine that asks to sleep 1 ms and records how much
later it wakes. Its percentiles go to ``extra_info`` (the report prints them); nothing here
asserts a time.
"""

import asyncio
import os
import statistics
import threading
import time
from typing import Any, Callable, Dict, List

import pytest
from _support import fresh_queue, payloads, run

from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync.aio import AsyncCloudSyncQueue

Size = Callable[[int, int], int]
COROUTINES = 1000
TICK = 0.001
THREADS = 8
IMPLEMENTATIONS = {
    "async": "AsyncCloudSyncQueue",
    "naive": "sync queue called from the coroutine",
    "threads": f"sync group commit, {THREADS} threads",
    "no I/O": "coroutines with nothing to store",
}


async def _ticker(lags: List[float], done: asyncio.Event) -> None:
    while not done.is_set():
        start = time.perf_counter()
        await asyncio.sleep(TICK)
        lags.append(time.perf_counter() - start - TICK)


async def _coroutines(enqueue: Callable[[Dict[str, Any]], Any], items: List[Dict[str, Any]], each: int) -> None:
    async def one(start: int) -> None:
        for payload in items[start : start + each]:
            result = enqueue(payload)
            if asyncio.iscoroutine(result):
                await result
            else:
                await asyncio.sleep(0)  # the naive pattern at least lets others run between calls

    await asyncio.gather(*(one(start) for start in range(0, len(items), each)))


def _with_ticker(work: Callable[[], Any], lags: List[float]) -> Callable[[], None]:
    async def main() -> None:
        done = asyncio.Event()
        ticker = asyncio.ensure_future(_ticker(lags, done))
        await asyncio.sleep(TICK * 5)  # the ticker is running before the work begins
        await work()
        done.set()
        await ticker

    return lambda: asyncio.run(main())


def _make(impl: str, path: str) -> Any:
    return AsyncCloudSyncQueue.wrap(fresh_queue(path)) if impl == "async" else fresh_queue(path)


def _sync(queue: Any) -> CloudSyncQueue:
    return queue.queue if isinstance(queue, AsyncCloudSyncQueue) else queue


def _close(queue: Any) -> None:
    if isinstance(queue, AsyncCloudSyncQueue):
        asyncio.run(queue.close())
    _sync(queue).close()


@pytest.mark.parametrize("impl", ["async", "naive", "no I/O"])
def test_event_loop_lag(benchmark: Any, tmp_path: Any, size: Size, impl: str) -> None:
    """1,000 coroutines each enqueue items one at a time (durability full) while the ticker
    runs; the figure is the ticker's lateness. "no I/O": the same coroutines waiting about
    as long as a commit instead, the lag that scheduling them costs on this machine (the floor)."""
    benchmark.group = f"event-loop lag, {COROUTINES:,} coroutines enqueueing (full)"
    # Long enough that the start of 1,000 tasks at once (a burst of about 10 ms, also in
    # the floor) is under 1% of the samples; the naive pattern, which stands the loop still
    # for one fsync per item, gets fewer items.
    each = size(3 if impl == "naive" else 50, 1)
    items = payloads(size(COROUTINES, 200) * each)
    queue = _make(impl, os.path.join(os.fspath(tmp_path), "lag.db"))
    enqueue = _no_io if impl == "no I/O" else queue.enqueue
    per_round: List[List[float]] = []

    def setup() -> Any:
        per_round.append([])
        return (), {}

    def work() -> None:
        _with_ticker(lambda: _coroutines(enqueue, items, each), per_round[-1])()

    run(benchmark, work, items=len(items), rounds=size(5, 1), setup=setup, variant=IMPLEMENTATIONS[impl])
    lags = sorted(lag for samples in per_round[1:] or per_round for lag in samples)
    stored = _sync(queue).pending_count()
    _close(queue)
    assert stored == (0 if impl == "no I/O" else len(items) * len(per_round))
    p99 = lags[min(len(lags) - 1, int(len(lags) * 0.99))]
    benchmark.extra_info.update(
        lag_p50_ms=round(statistics.median(lags) * 1000, 2),
        lag_p99_ms=round(p99 * 1000, 2),
        lag_max_ms=round(lags[-1] * 1000, 2),
        lag_samples=len(lags),
    )
    print(f"\n{IMPLEMENTATIONS[impl]}: ticker lag", benchmark.extra_info)


async def _no_io(payload: Dict[str, Any]) -> None:
    await asyncio.sleep(0.002)  # about one commit: the coroutines wake as often as they do enqueueing


@pytest.mark.parametrize("impl", ["async", "threads", "naive"])
def test_coroutines_enqueue_one_each(benchmark: Any, tmp_path: Any, size: Size, impl: str) -> None:
    """1,000 concurrent callers store one item each, durably: coroutines through the
    asyncio API (or the naive pattern), or the sync group commit fed by 8 threads."""
    benchmark.group = f"enqueue x1 from {COROUTINES:,} coroutines (full)"
    items = payloads(size(COROUTINES, 200))
    queue = _make(impl, os.path.join(os.fspath(tmp_path), "one-each.db"))
    if impl == "threads":
        share = len(items) // THREADS

        def work() -> None:
            threads = [
                threading.Thread(target=lambda w=w: [queue.enqueue(p) for p in items[w * share : (w + 1) * share]])
                for w in range(THREADS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()

    else:

        def work() -> None:
            asyncio.run(_coroutines(queue.enqueue, items, 1))

    rounds = size(10 if impl != "naive" else 3, 1)
    run(benchmark, work, items=len(items), rounds=rounds, variant=IMPLEMENTATIONS[impl], baseline=impl == "threads")
    stored = _sync(queue).pending_count()
    _close(queue)
    assert stored == len(items) * (rounds + 1 if rounds > 1 else 1)
