"""What the queue costs besides time: bytes written to the device per item, memory while
flushing a large backlog, and the time to import the package and open a queue.

Each figure is stored in the benchmark's ``extra_info`` (the report prints it) and printed.
Only the memory bound is asserted: it does not depend on the machine's speed.
"""

import os
import sqlite3
import subprocess
import sys
import time
from typing import Any, Callable, Dict

import orjson
import pytest
from _support import fresh_queue, payloads, run

from pyv_edge_agent.cloud_sync import CloudSyncQueue

Size = Callable[[int, int], int]
PROC_IO = "/proc/self/io"


def _env(backend: str) -> Dict[str, str]:
    """The environment for a fresh interpreter that loads the given backend."""
    env = dict(os.environ, PYV_EDGE_AGENT_NO_EXTENSIONS="1" if backend == "python" else "")
    if backend == "python":  # requiring the compiled backend while switching it off is an error
        env.pop("PYV_EDGE_AGENT_REQUIRE_EXTENSIONS", None)
    return env


def _write_bytes() -> int:
    with open(PROC_IO) as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise AssertionError("no write_bytes in /proc/self/io")


@pytest.mark.skipif(not os.path.exists(PROC_IO), reason="needs Linux /proc/self/io")
@pytest.mark.parametrize("durability", ["full", "fast"])
@pytest.mark.parametrize("pattern", ["single", "batch of 500"])
def test_bytes_written_per_item(benchmark: Any, tmp_path: Any, size: Size, durability: str, pattern: str) -> None:
    """Bytes the kernel was asked to write (pages newly dirtied) per item enqueued and acked:
    one transaction each (``enqueue`` then ``ack([id])``), or 500 at a time."""
    benchmark.group = "bytes written per item"
    count = size(3000, 500) if pattern == "single" else size(50_000, 2000)
    queue = fresh_queue(os.path.join(os.fspath(tmp_path), "wear.db"), durability=durability)
    items = payloads(500)

    def work() -> float:
        before = _write_bytes()
        if pattern == "single":
            for index in range(count):
                queue.ack([queue.enqueue(items[index % 500])])
        else:
            for _ in range(count // 500):
                queue.ack(queue.enqueue_many(items))
        return (_write_bytes() - before) / count

    per_item = run(benchmark, work, items=count, rounds=1, variant=f"{pattern}, {durability}")
    benchmark.extra_info["bytes_per_item"] = round(per_item)
    print(f"\nbytes written per item ({pattern}, durability={durability}): {per_item:.0f}")
    assert queue.pending_count() == 0


# Runs in a fresh interpreter so that its peak RSS belongs to the flush alone.
MEMORY_SCRIPT = """
import sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

class Accept:
    def post_batch(self, payloads):
        return True
    def post_encoded_batch(self, body, count):
        return True

queue = CloudSyncQueue(sys.argv[1])
queue.pending_count()
before = status("VmHWM")
flushed = queue.maybe_flush(Accept())
print(flushed, before, status("VmHWM"))
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_flush_memory(benchmark: Any, tmp_path: Any, size: Size, backend: str) -> None:
    """Peak RSS growth while ``maybe_flush`` drains a large backlog: one batch at a time."""
    benchmark.group = "memory"
    count = size(1_000_000, 20_000)
    path = os.path.join(os.fspath(tmp_path), "memory.db")
    CloudSyncQueue(path).close()
    conn = sqlite3.connect(path, isolation_level=None)
    now = time.time()
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO sync_queue (payload, priority, created_at, ttl_seconds) VALUES (?, 3, ?, 86400)",
        ((orjson.dumps(p).decode(), now) for p in payloads(count)),
    )
    conn.execute("COMMIT")
    conn.close()

    def flush() -> Dict[str, int]:
        out = subprocess.run(
            [sys.executable, "-c", MEMORY_SCRIPT, path],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
            env=_env(backend),
        ).stdout.split()
        flushed, before, after = (int(x) for x in out)
        return {"flushed": flushed, "growth": after - before}

    result = run(benchmark, flush, items=count, rounds=1, variant=f"flush {count:,}")
    growth_mb = result["growth"] / 2**20
    benchmark.extra_info["peak_rss_growth_mb"] = round(growth_mb, 1)
    print(f"\npeak RSS growth flushing {count:,} items: {growth_mb:.1f} MB")
    assert result["flushed"] == count
    assert growth_mb < 50


IMPORT_SCRIPT = """
import sys, time
start = time.perf_counter()
from pyv_edge_agent.cloud_sync import CloudSyncQueue
queue = CloudSyncQueue(sys.argv[1])
print(time.perf_counter() - start)
"""


def test_import_and_open(benchmark: Any, tmp_path: Any, size: Size, backend: str) -> None:
    """Import the package and open an existing queue, in a fresh interpreter (its own start-up
    not counted); the median of several runs."""
    benchmark.group = "memory"
    path = os.path.join(os.fspath(tmp_path), "open.db")
    with CloudSyncQueue(path) as queue:
        queue.enqueue_many(payloads(1000))
    runs = size(9, 1)

    def measure() -> float:
        times = sorted(
            float(
                subprocess.run(
                    [sys.executable, "-c", IMPORT_SCRIPT, path], check=True, capture_output=True, env=_env(backend)
                ).stdout
            )
            for _ in range(runs)
        )
        return times[len(times) // 2]

    seconds = run(benchmark, measure, items=1, rounds=1, variant="import + open")
    benchmark.extra_info["import_open_ms"] = round(seconds * 1000, 1)
    print(f"\nimport + open: {seconds * 1000:.1f} ms")
