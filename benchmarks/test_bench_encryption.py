"""Encryption at rest: ``enqueue_many``, ``dequeue`` and the flush with each cipher beside the
same operations without a key, in the same run (the groups read as ratios to "none")."""

import os
from typing import Any, Dict, List, Tuple

import pytest
from _support import CIPHERS, Size, SplicingUploader, cipher_options, fresh_queue, payloads, run

from pyv_edge_agent.cloud_sync import CloudSyncQueue

pytest.importorskip("cryptography")


@pytest.mark.parametrize("cipher", CIPHERS)
def test_enqueue_many_sealed(benchmark: Any, tmp_path: Any, size: Size, cipher: str) -> None:
    count = size(10_000, 200)
    benchmark.group = f"enqueue_many {count:,} (encryption)"
    queue = fresh_queue(os.path.join(os.fspath(tmp_path), "q.db"), **cipher_options(cipher))
    items = payloads(count)
    run(benchmark, queue.enqueue_many, items=count, rounds=size(10, 1), cipher=cipher, setup=lambda: ((items,), {}))
    assert queue.pending_count() == count * size(11, 1)
    queue.close()


@pytest.mark.parametrize("cipher", CIPHERS)
def test_dequeue_sealed(benchmark: Any, tmp_path: Any, size: Size, cipher: str) -> None:
    count = 500
    benchmark.group = f"dequeue {count} (encryption)"
    queue = fresh_queue(os.path.join(os.fspath(tmp_path), "q.db"), **cipher_options(cipher))
    queue.enqueue_many(payloads(size(20_000, 600)))
    found = run(benchmark, lambda: queue.dequeue(count), items=count, rounds=size(200, 1), cipher=cipher)
    assert len(found) == count and found[0].payload == payloads(1)[0]
    queue.close()


@pytest.mark.parametrize("cipher", CIPHERS)
def test_flush_sealed(benchmark: Any, tmp_path: Any, size: Size, cipher: str) -> None:
    count = size(20_000, 600)
    benchmark.group = f"flush {count:,} (encryption)"
    path = os.path.join(os.fspath(tmp_path), "flush.db")
    items = payloads(count)
    queues: List[CloudSyncQueue] = []
    uploader = SplicingUploader()

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if queues:
            queues[-1].close()
        queues.append(fresh_queue(path, **cipher_options(cipher)))
        queues[-1].enqueue_many(items)
        return (uploader,), {}

    run(benchmark, lambda up: queues[-1].maybe_flush(up), items=count, rounds=size(8, 1), cipher=cipher, setup=setup)
    assert queues[-1].pending_count() == 0
    queues[-1].close()
