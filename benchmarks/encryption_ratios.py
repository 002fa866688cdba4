"""Encryption at rest against no key, as ratios of medians: the ciphers and "none" take turns
in every round, so that a busy machine slows them alike (pytest-benchmark runs one case
after the other, which a shared machine skews).

    python benchmarks/encryption_ratios.py [--rounds 7] [--items 10000]
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List

from pyv_edge_agent.cloud_sync import BACKEND, CloudSyncQueue

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _support import CIPHERS, SplicingUploader, cipher_options, payloads, remove_db  # noqa: E402


def _timed(work: Callable[[], Any]) -> float:
    start = time.perf_counter()
    work()
    return time.perf_counter() - start


def measure(rounds: int, items: int) -> Dict[str, Dict[str, float]]:
    """Median seconds of each operation per cipher."""
    times: Dict[str, Dict[str, List[float]]] = {
        op: {c: [] for c in CIPHERS} for op in ("enqueue_many", "dequeue", "flush")
    }
    batch = payloads(items)
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, "q.db")
        for turn in range(rounds):
            for cipher in CIPHERS[turn % 3 :] + CIPHERS[: turn % 3]:
                remove_db(path)
                with CloudSyncQueue(path, **cipher_options(cipher)) as queue:
                    times["enqueue_many"][cipher].append(_timed(lambda: queue.enqueue_many(batch)))
                    times["dequeue"][cipher].append(_timed(lambda: [queue.dequeue(500) for _ in range(20)]))
                    times["flush"][cipher].append(_timed(lambda: queue.maybe_flush(SplicingUploader())))
    return {op: {c: statistics.median(t) for c, t in by_cipher.items()} for op, by_cipher in times.items()}


def main() -> None:
    """Print the ratio of each cipher to no key, per operation."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--items", type=int, default=10_000)
    args = parser.parse_args()
    medians = measure(args.rounds, args.items)
    print(f"backend {BACKEND}, {args.items} items, {args.rounds} rounds; time relative to no key")
    for op, by_cipher in medians.items():
        base = by_cipher["none"]
        cells = ", ".join(f"{c} {by_cipher[c] / base:.2f}x" for c in CIPHERS[1:])
        print(f"  {op:13} none {base * 1000:8.1f} ms; {cells}")


if __name__ == "__main__":
    main()
