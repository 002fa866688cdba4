"""``cloud-sync bench``: a quick benchmark on the user's own hardware, compiled vs pure.

Each backend runs in its own interpreter (the pure one with
``PYV_EDGE_AGENT_NO_EXTENSIONS=1``), so the figures are what an agent would see. The two
take turns for several rounds, the one that goes first alternating, and each figure is a
median: measured once each, compiled first, a burst of the machine's other work landing on
one side read as a difference between the backends (a 0.84x single enqueue where the two
are level). For the full suite with same-run floors, see ``benchmarks/`` in the source tree.
"""

import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, Optional

import orjson

SCENARIOS = (
    "enqueue, fast mode, one per call",
    "enqueue_many, 1000 per call",
    "dequeue 1000 with decoding",
    "flush: claim, splice, ack",
)


class _AcceptAll:
    """An uploader that accepts every batch at once: measures the queue, not the network."""

    def post_batch(self, payloads: Any) -> bool:
        return True

    def post_encoded_batch(self, body: bytes, count: int) -> bool:
        return True


def _rate(count: int, run: Callable[[], Any]) -> float:
    started = time.perf_counter()
    run()
    return count / max(time.perf_counter() - started, 1e-9)


def measure(items: int) -> Dict[str, Any]:
    """Run every scenario in this interpreter; return items per second by scenario."""
    from .. import BACKEND, CloudSyncQueue

    payloads = [{"sensor": "motor", "rpm": 1400 + i % 50, "seq": i, "unit": "rpm"} for i in range(items)]
    rates: Dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="cloud-sync-bench-") as tmp:
        with CloudSyncQueue(os.path.join(tmp, "single.db"), durability="fast") as queue:
            singles = payloads[: min(items, 5000)]
            rates[SCENARIOS[0]] = _rate(len(singles), lambda: [queue.enqueue(p) for p in singles])
        with CloudSyncQueue(os.path.join(tmp, "bulk.db"), max_batch_items=1000) as queue:
            chunks = [payloads[i : i + 1000] for i in range(0, items, 1000)]
            rates[SCENARIOS[1]] = _rate(items, lambda: [queue.enqueue_many(c) for c in chunks])
            rounds = max(1, items // 1000)
            rates[SCENARIOS[2]] = _rate(rounds * 1000, lambda: [queue.dequeue(1000) for _ in range(rounds)])
            rates[SCENARIOS[3]] = _rate(items, lambda: queue.maybe_flush(_AcceptAll()))
    return {"backend": BACKEND, "rates": rates}


def _run_child(items: int, pure: bool) -> Optional[Dict[str, Any]]:
    env = dict(os.environ)
    env.pop("PYV_EDGE_AGENT_REQUIRE_EXTENSIONS", None)
    if pure:
        env["PYV_EDGE_AGENT_NO_EXTENSIONS"] = "1"
    else:
        env.pop("PYV_EDGE_AGENT_NO_EXTENSIONS", None)
    done = subprocess.run(
        [sys.executable, "-m", "pyv_edge_agent.cloud_sync.cli._bench", str(items)],
        env=env,
        capture_output=True,
        check=True,
    )
    result: Dict[str, Any] = orjson.loads(done.stdout)
    expected = "python" if pure else "cython"
    return result if result["backend"] == expected else None


def run_bench(items: int = 20000, rounds: int = 5) -> List[Dict[str, Any]]:
    """Measure both backends, taking turns for ``rounds`` rounds; one row per scenario with
    the median items/s of each and the median of the rounds' compiled/pure ratios."""
    if items < 1000:
        raise ValueError(f"items must be at least 1000, got {items}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    compiled: List[Dict[str, float]] = []
    pure: List[Dict[str, float]] = []
    for round_ in range(rounds):
        for is_pure in (False, True) if round_ % 2 == 0 else (True, False):
            result = _run_child(items, pure=is_pure)
            if result is not None:
                (pure if is_pure else compiled).append(result["rates"])
    assert len(pure) == rounds  # the pure twin always loads
    rows = []
    for name in SCENARIOS:
        fast = statistics.median(rates[name] for rates in compiled) if compiled else None
        slow = statistics.median(rates[name] for rates in pure)
        ratio = statistics.median(c[name] / p[name] for c, p in zip(compiled, pure)) if compiled else None
        rows.append({"operation": name, "cython": fast, "python": slow, "ratio": f"{ratio:.2f}x" if ratio else "-"})
    return rows


if __name__ == "__main__":
    sys.stdout.write(orjson.dumps(measure(int(sys.argv[1]))).decode())
