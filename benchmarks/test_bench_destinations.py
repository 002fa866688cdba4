"""Several destinations in one queue file (issue 24), each figure a ratio against a baseline
measured in the same run, on both backends:

- ``enqueue_many`` to two destinations against one destination (target <= 1.3x), and
  against a queue without destinations (reported);
- the flush of one destination of two against a queue without destinations (target <= 1.2x);
- isolation: the live destination's drain time beside a dead one, whose endpoint refuses
  connections or accepts them and never answers, against the live destination alone
  (target <= 1.2x);
- the file size with three destinations against one, for the same payloads (target <= 1.35x);
- ``enqueue_many`` with a backlog budget enforced on one destination against none (issue 29,
  reported).

The variants of a scenario take turns call by call, as in the gate (``gate.py``), so that a
busy neighbour slows them alike, and a ratio is the median over the rounds of the times
measured in the same round. When measuring, a time target is asserted the gate's way: a
ratio over its target is measured again once, and the test fails only when it is over both
times. The plain test run (``--benchmark-disable``) runs each scenario once at a small size
and asserts no time. The figures go to ``extra_info["destinations"]`` (``report.py`` prints
them) and are printed.
"""

import os
import socket
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import _cases
import pytest
from _support import Size, SplicingUploader, fresh_queue, payloads, remove_db, run
from gate import Measurement

from pyv_edge_agent.cloud_sync import CloudSyncQueue, HTTPCloudUploader, _codec

# Timed rounds per variant when measuring, after a warm-up round.
ROUNDS = 11
PLAIN = "no destinations"
ONE = "one destination"
TWO = "two destinations"


@dataclass(frozen=True)
class Target:
    """A ratio of two variants' times: ``limit`` is the issue's target (None: reported only)."""

    subject: str
    base: str
    limit: Optional[float] = None

    @property
    def label(self) -> str:
        """How the report names the ratio."""
        return f"{self.subject} vs {self.base}"


# One call of a variant: prepares its state untimed and returns the seconds of its timed part.
Timed = Callable[[], float]


def take_turns(variants: Dict[str, Timed], rounds: int) -> Dict[str, List[float]]:
    """Time ``rounds`` calls of each variant after a warm-up call each, taking turns and
    changing who goes first every round."""
    names = list(variants)
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_ in range(rounds + 1):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            elapsed = variants[name]()
            if round_:
                times[name].append(elapsed)
    return times


def _over(measurement: Measurement, targets: Sequence[Target]) -> List[str]:
    # Compared at the precision of the report, as the gate does.
    return [
        t.label for t in targets if t.limit is not None and round(measurement.ratio(t.subject, t.base), 2) > t.limit
    ]


def judge(
    benchmark: Any,
    measuring: bool,
    scenario: str,
    variants: Dict[str, Timed],
    targets: Sequence[Target],
    items: int,
    rounds: int,
) -> None:
    """Measure the variants taking turns, record and print their ratios, and when
    ``measuring`` fail on a target missed in a measurement and again in a second one."""
    first = run(benchmark, lambda: Measurement(items, take_turns(variants, rounds)), items=items, rounds=1)
    over = _over(first, targets) if measuring else []
    second = Measurement(items, take_turns(variants, rounds)) if over else None
    final = second or first
    figures: Dict[str, Any] = {
        "scenario": scenario,
        "rounds": rounds,
        "ratios": {t.label: round(final.ratio(t.subject, t.base), 3) for t in targets},
        "targets": {t.label: t.limit for t in targets if t.limit is not None},
        "rates": {name: round(final.rate(name)) for name in variants},
    }
    if second is not None:
        figures["first"] = {t.label: round(first.ratio(t.subject, t.base), 3) for t in targets if t.label in over}
    benchmark.extra_info["destinations"] = figures
    print(f"\n{scenario}, {_codec.BACKEND}: {figures}")
    failed = [label for label in _over(final, targets) if label in over]
    assert not failed, f"{scenario}: over the target twice: {failed} ({figures})"


def _path(tmp_path: Any, name: str) -> str:
    return os.path.join(os.fspath(tmp_path), name)


def _options(names: Any) -> Dict[str, Any]:
    """The queue options of ``names``: a sequence of names or a mapping of them to options."""
    if isinstance(names, dict):
        return {"destinations": names}
    return {"destinations": tuple(names)} if names else {}


# -- enqueue_many ----------------------------------------------------------------------------


def _enqueue_many(path: str, names: Any, batch: List[Dict[str, Any]]) -> Timed:
    """One ``enqueue_many`` of ``batch`` (to every destination) into a new file per call."""
    queues: List[CloudSyncQueue] = []

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if queues:
            queues[-1].close()
        queues.append(fresh_queue(path, **_options(names)))
        return (batch,), {}

    case = _cases.Case(
        lambda items: queues[-1].enqueue_many(items), len(batch), lambda: queues[-1].pending_count(), setup
    )
    return lambda: _cases.time_call(case)


def test_enqueue_many_to_two_destinations(benchmark: Any, tmp_path: Any, size: Size, measuring: bool) -> None:
    count = size(10_000, 200)
    benchmark.group = "destinations"
    batch = payloads(count)
    variants = {
        PLAIN: _enqueue_many(_path(tmp_path, "plain.db"), (), batch),
        ONE: _enqueue_many(_path(tmp_path, "one.db"), ("iot",), batch),
        TWO: _enqueue_many(_path(tmp_path, "two.db"), ("iot", "archive"), batch),
    }
    targets = [Target(TWO, ONE, 1.3), Target(TWO, PLAIN), Target(ONE, PLAIN)]
    judge(benchmark, measuring, f"enqueue_many {count:,}", variants, targets, count, size(ROUNDS, 1))
    with CloudSyncQueue(_path(tmp_path, "two.db"), destinations=("iot", "archive")) as queue:
        assert queue.pending_count(destination="archive") == queue.pending_count(destination="iot") == count


BUDGETED = "two destinations, one over its backlog budget"


def test_enqueue_many_with_a_backlog_budget_enforced(
    benchmark: Any, tmp_path: Any, size: Size, measuring: bool
) -> None:
    """Issue 29: the cost of a budget being enforced on every ``enqueue_many`` (the budget
    is a tenth of the batch: nine items in ten are dropped for that destination in the same
    transaction) against the same two destinations without one. Reported, no target."""
    count = size(10_000, 200)
    benchmark.group = "destinations"
    batch = payloads(count)
    budgeted = {"iot": {}, "archive": {"max_backlog_items": count // 10}}
    variants = {
        TWO: _enqueue_many(_path(tmp_path, "two.db"), ("iot", "archive"), batch),
        BUDGETED: _enqueue_many(_path(tmp_path, "budgeted.db"), budgeted, batch),
    }
    targets = [Target(BUDGETED, TWO)]
    judge(benchmark, measuring, f"enqueue_many {count:,} with a budget", variants, targets, count, size(ROUNDS, 1))
    with CloudSyncQueue(_path(tmp_path, "budgeted.db"), destinations=budgeted) as queue:
        assert queue.pending_count(destination="archive") == count // 10
        assert queue.pending_count(destination="iot") == count


# -- the flush of one destination ------------------------------------------------------------


def _flush(path: str, names: Sequence[str], batch: List[Dict[str, Any]]) -> Tuple[Timed, Callable[[], int]]:
    """A flush of the first of ``names`` (or of a queue without destinations) draining
    ``batch``, stored in a new file per call; and how many items that flush left."""
    queues: List[CloudSyncQueue] = []
    uploader = SplicingUploader()
    destination = names[0] if names else None

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if queues:
            queues[-1].close()
        queues.append(fresh_queue(path, **_options(names)))
        queues[-1].enqueue_many(batch)
        return (), {}

    def left() -> int:
        return queues[-1].pending_count(destination=destination)

    flush = _cases.Case(lambda: queues[-1].maybe_flush(uploader, destination=destination), len(batch), left, setup)
    return (lambda: _cases.time_call(flush)), left


def test_flush_of_one_destination(benchmark: Any, tmp_path: Any, size: Size, measuring: bool) -> None:
    count = size(20_000, 300)
    benchmark.group = "destinations"
    batch = payloads(count)
    plain, plain_left = _flush(_path(tmp_path, "plain.db"), (), batch)
    one, one_left = _flush(_path(tmp_path, "one.db"), ("iot",), batch)
    two, two_left = _flush(_path(tmp_path, "two.db"), ("iot", "archive"), batch)
    variants = {PLAIN: plain, ONE: one, f"one of {TWO}": two}
    targets = [Target(f"one of {TWO}", PLAIN, 1.2), Target(ONE, PLAIN)]
    judge(benchmark, measuring, f"flush {count:,}", variants, targets, count, size(ROUNDS, 1))
    assert plain_left() == one_left() == two_left() == 0


# -- isolation: the live destination beside a dead one -----------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Silent:
    """A loopback endpoint that accepts connections (the kernel completes them) and never
    answers: an upload to it times out."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)

    @property
    def url(self) -> str:
        """Where an uploader finds it."""
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/ingest"

    def close(self) -> None:
        """Stop listening."""
        self.sock.close()


DEAD_TIMEOUT = 0.05


def _dead_uploader(dead: str, listeners: List[Silent]) -> HTTPCloudUploader:
    """An uploader whose endpoint refuses connections or (``"timeout"``) never answers."""
    if dead == "timeout":
        listeners.append(Silent())
        return HTTPCloudUploader(listeners[-1].url, "bench-key", timeout=DEAD_TIMEOUT)
    return HTTPCloudUploader(f"http://127.0.0.1:{_free_port()}/ingest", "bench-key", timeout=DEAD_TIMEOUT)


def _drain(
    path: str, dead: Optional[str], chunks: int, per_chunk: int, pause: float = 0.0
) -> Tuple[Timed, Callable[[], List[int]]]:
    """The live destination draining ``chunks`` batches of ``per_chunk`` items, each flushed
    as it arrives; with ``dead`` ("refused" or "timeout") a second destination is flushed
    before it each time, as its own worker loop would, and fails; without, the live one
    waits ``pause`` seconds there instead. Returns the timed call (the live flushes only)
    and what the last call left: (live pending, dead pending)."""
    names = ("live",) if dead is None else ("live", "dead")
    live = SplicingUploader()
    state: List[CloudSyncQueue] = []
    items = [payloads(per_chunk, start=chunk * per_chunk) for chunk in range(chunks)]

    def call() -> float:
        if state:
            state[-1].close()
        queue = fresh_queue(path, destinations=names)
        state.append(queue)
        listeners: List[Silent] = []
        broken = None if dead is None else _dead_uploader(dead, listeners)
        _cases.settle()
        spent = 0.0
        try:
            for chunk in items:
                queue.enqueue_many(chunk)
                if broken is not None:
                    # Each time really tried: the worst case, as if each turn were a probe
                    # the endpoint answered (a worker tries again only then).
                    queue.end_backoff(destination="dead")
                    assert queue.maybe_flush(broken, destination="dead") == 0
                else:
                    time.sleep(pause)
                started = time.perf_counter()
                queue.maybe_flush(live, destination="live")
                spent += time.perf_counter() - started
        finally:
            if broken is not None:
                broken.close()
            for listener in listeners:
                listener.close()
        return spent

    def left() -> List[int]:
        return [state[-1].pending_count(destination=name) for name in names]

    return call, left


@pytest.mark.parametrize("dead", ["refused", "timeout"])
def test_a_dead_destination_does_not_slow_a_live_one(
    benchmark: Any, tmp_path: Any, size: Size, measuring: bool, dead: str
) -> None:
    chunks, per_chunk = size(10, 2), size(2000, 100)
    benchmark.group = "destinations"
    # Alone, the live loop idles as long as a timed-out attempt waits: a flush that follows
    # an idle wait is slower by itself on this machine (up to 1.3x after 50 ms: caches gone
    # cold), which is no cost of the dead destination. A worker waits in another thread.
    pause = DEAD_TIMEOUT if dead == "timeout" else 0.0
    alone, alone_left = _drain(_path(tmp_path, "alone.db"), None, chunks, per_chunk, pause)
    beside, beside_left = _drain(_path(tmp_path, "beside.db"), dead, chunks, per_chunk)
    subject = f"live beside one {'refusing connections' if dead == 'refused' else 'timing out'}"
    base = f"live alone, idle {pause * 1000:.0f} ms a turn" if pause else "live alone"
    variants = {base: alone, subject: beside}
    scenario = f"drain {chunks} x {per_chunk:,} items"
    judge(
        benchmark,
        measuring,
        scenario,
        variants,
        [Target(subject, base, 1.2)],
        chunks * per_chunk,
        size(ROUNDS, 1),
    )
    assert alone_left() == [0]
    assert beside_left() == [0, chunks * per_chunk]  # the dead one still owes every item


# -- file size -------------------------------------------------------------------------------


def _file_size(path: str, names: Sequence[str], batches: Sequence[List[Dict[str, Any]]]) -> int:
    """Bytes of a queue file holding ``batches`` for every one of ``names``, once closed."""
    remove_db(path)
    with CloudSyncQueue(path, **_options(names)) as queue:
        for batch in batches:
            queue.enqueue_many(batch)
    return sum(os.path.getsize(path + suffix) for suffix in ("", "-wal") if os.path.exists(path + suffix))


def test_file_size_with_three_destinations(benchmark: Any, tmp_path: Any, size: Size) -> None:
    """Not a time: asserted in every run."""
    count, per_batch = size(20_000, 2000), 1000
    benchmark.group = "destinations"
    batches = [payloads(per_batch, start=start) for start in range(0, count, per_batch)]
    variants = {PLAIN: (), ONE: ("a",), "three destinations": ("a", "b", "c")}

    def measure() -> Dict[str, int]:
        return {name: _file_size(_path(tmp_path, "size.db"), names, batches) for name, names in variants.items()}

    sizes = run(benchmark, measure, items=count, rounds=1)
    figures = {
        "scenario": f"file size, {count:,} items",
        "bytes": sizes,
        "ratios": {
            f"three destinations vs {ONE}": round(sizes["three destinations"] / sizes[ONE], 3),
            f"{ONE} vs {PLAIN}": round(sizes[ONE] / sizes[PLAIN], 3),
        },
        "targets": {f"three destinations vs {ONE}": 1.35},
    }
    benchmark.extra_info["destinations"] = figures
    print(f"\nfile size, {_codec.BACKEND}: {figures}")
    assert sizes["three destinations"] <= 1.35 * sizes[ONE]
