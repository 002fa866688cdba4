"""Scenarios on a real shaped link, run inside a network namespace of their own.

``run(scenario, workdir, **options)`` starts ``unshare -n`` with this file as a script: in
the new namespace it brings ``lo`` up with a 1500-byte MTU (a real uplink's, so that
headers cost what they cost there), shapes it with ``tc ... tbf`` and runs one scenario,
the ``IngestServer`` and the queue both on that ``lo``, so that every byte of the upload
and of its answers crosses the shaped link and never leaves the namespace. The figures
come back as one JSON line. ``unshare_error()`` says why namespaces cannot be made here
(None when they can).

Scenarios:

- ``drain``: a backlog of telemetry drained by a ``SyncWorker`` after an outage (the
  endpoint down while the backlog built up), a critical item enqueued half-way; the drain
  time against the physical limit (bytes that crossed ``lo``, headers included, over the
  link rate) and the critical item's delay.
- ``rate``: a ``max_items_per_second`` pacing, items counted at the endpoint over a window.
- ``cut``: the link cut (``ip link set lo down``) under a running worker and restored; the
  delay from the restore to the end of the backoff (the worker's probe found the link),
  and to the first batch the endpoint receives, against the backoff that was left.
"""

import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

RATE = "256kbit"
RATE_BITS = 256_000
MTU = 1500
CRITICAL_MARK = "shaped-link-alarm"


def unshare_error() -> Optional[str]:
    """Why this machine cannot run the scenarios (None: it can)."""
    for tool in ("unshare", "ip", "tc"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (iproute2, util-linux)"
    probe = subprocess.run(
        [
            "unshare",
            "-n",
            "sh",
            "-c",
            "ip link set lo up && tc qdisc add dev lo root tbf rate 1mbit burst 4kb latency 50ms",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if probe.returncode != 0:
        return f"cannot make a shaped network namespace here: {probe.stderr.strip() or probe.returncode}"
    return None


def run(scenario: str, workdir: str, timeout: float = 300.0, **options: Any) -> Dict[str, Any]:
    """Run ``scenario`` in a fresh network namespace; return its figures."""
    command = ["unshare", "-n", sys.executable, os.path.abspath(__file__), scenario, workdir, json.dumps(options)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"shaped-link scenario {scenario} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    result: Dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# -- inside the namespace ------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True)


def _shape() -> None:
    if not _interfaces_alone():
        raise SystemExit("refusing to shape: this is not a namespace of our own")
    _ip("link", "set", "lo", "mtu", str(MTU))
    _ip("link", "set", "lo", "up")
    subprocess.run(
        ["tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate", RATE, "burst", "4kb", "latency", "200ms"],
        check=True,
    )


def _interfaces_alone() -> List[str]:
    """The interfaces of this namespace: only ``lo`` in a fresh one."""
    with open("/proc/net/dev") as handle:
        names = [line.split(":")[0].strip() for line in handle.readlines()[2:]]
    return names if names == ["lo"] else []


def _lo_bytes() -> int:
    """Bytes sent on this namespace's ``lo`` (each packet crosses it once)."""
    with open("/proc/net/dev") as handle:
        for line in handle:
            name, _, counters = line.partition(":")
            if name.strip() == "lo":
                return int(counters.split()[8])
    raise RuntimeError("no lo in /proc/net/dev")


class Arrivals:
    """The ``record_to`` of the ingest server: when each accepted batch arrived, how many
    items it held, and when the marked critical item came."""

    def __init__(self) -> None:
        self.batches: List[Tuple[float, int]] = []
        self.critical_at: Optional[float] = None
        self._count = 0
        self._marked = False
        self.changed = threading.Condition()

    def write(self, text: str) -> int:
        self._count += 1
        self._marked = self._marked or CRITICAL_MARK in text
        return len(text)

    def flush(self) -> None:
        now = time.monotonic()
        with self.changed:
            self.batches.append((now, self._count))
            if self._marked and self.critical_at is None:
                self.critical_at = now
            self._count = 0
            self.changed.notify_all()

    @property
    def total(self) -> int:
        return sum(count for _, count in self.batches)

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        with self.changed:
            return bool(self.changed.wait_for(predicate, timeout))


def _telemetry(count: int, start: int = 0) -> List[Dict[str, Any]]:
    noise = random.Random(start)
    return [
        {
            "sensor": f"line-{i % 7}/motor-{i % 23}",
            "seq": start + i,
            "temperature_c": round(20.0 + noise.random() * 60.0, 2),
            "vibration_mm_s": round(noise.random() * 12.0, 3),
            "pressure_kpa": round(95.0 + noise.random() * 15.0, 2),
            "current_a": round(noise.random() * 40.0, 3),
            "humidity_pct": round(noise.random() * 100.0, 1),
            "ts": round(1_764_300_000.0 + (start + i) * 0.1 + noise.random() * 0.01, 3),
        }
        for i in range(count)
    ]


def _queue(workdir: str, **options: Any) -> Any:
    from pyv_edge_agent.cloud_sync import CloudSyncQueue

    return CloudSyncQueue(os.path.join(workdir, "queue.db"), durability="fast", **options)


def _worker(queue: Any, uploader: Any) -> Any:
    from pyv_edge_agent.cloud_sync import SyncWorker

    return SyncWorker(queue, uploader, interval=0.5, handle_sigterm=False)


def drain(workdir: str, items: int, max_batch_seconds: float, max_batch_items: int) -> Dict[str, Any]:
    """Drain ``items`` after an outage; a critical item enqueued when half have arrived
    and half a batch more has gone by."""
    from pyv_edge_agent.cloud_sync import HTTPCloudUploader, Priority
    from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

    queue = _queue(
        workdir, max_batch_seconds=max_batch_seconds, max_batch_items=max_batch_items, max_batch_bytes=16 << 20
    )
    for start in range(0, items, 5000):
        queue.enqueue_many(_telemetry(min(5000, items - start), start))
    arrivals = Arrivals()
    server = IngestServer(record_to=arrivals)  # type: ignore[arg-type]
    server.start()
    uploader = HTTPCloudUploader(server.url, "shaped-link-key", timeout=60.0)
    sent_before = _lo_bytes()
    started = time.monotonic()
    worker = _worker(queue, uploader).start()
    arrivals.wait_for(lambda: arrivals.total >= items // 2, 600)
    # Half-way through the next batch, the worst moment short of its very start.
    time.sleep(max_batch_seconds / 2)
    enqueued_at = time.monotonic()
    queue.enqueue({"sensor": "boiler", "alarm": CRITICAL_MARK}, priority=Priority.CRITICAL)
    finished = arrivals.wait_for(lambda: arrivals.total >= items + 1, 600)
    ended = arrivals.batches[-1][0]
    wire_bytes = _lo_bytes() - sent_before
    worker.stop()
    stats = queue.get_stats()
    server.stop()
    limit = wire_bytes * 8 / RATE_BITS
    critical_delay = None if arrivals.critical_at is None else arrivals.critical_at - enqueued_at
    return {
        "finished": finished,
        "items": items,
        "delivered": arrivals.total,
        "batches": len(arrivals.batches),
        "seconds": ended - started,
        "wire_bytes": wire_bytes,
        "limit_seconds": limit,
        "ratio": (ended - started) / limit,
        "critical_delay": critical_delay,
        "link_bytes_per_second": stats["link_bytes_per_second"],
        "link_items_per_second": stats["link_items_per_second"],
    }


def rate(workdir: str, items_per_second: float, window: float) -> Dict[str, Any]:
    """Items a second the endpoint receives under ``max_items_per_second`` over ``window``
    seconds from the first batch (a small burst, 0.2 s of the rate)."""
    from pyv_edge_agent.cloud_sync import HTTPCloudUploader
    from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

    queue = _queue(workdir, max_items_per_second=items_per_second, pacing_burst_seconds=0.2)
    queue.enqueue_many(_telemetry(int(items_per_second * window * 2) + 100))
    arrivals = Arrivals()
    with IngestServer(record_to=arrivals) as server:  # type: ignore[arg-type]
        uploader = HTTPCloudUploader(server.url, "shaped-link-key", timeout=60.0)
        worker = _worker(queue, uploader).start()
        arrivals.wait_for(lambda: bool(arrivals.batches), 60)
        first = arrivals.batches[0][0]
        time.sleep(window + 0.5)
        worker.stop()
    counted = sum(count for at, count in arrivals.batches if at - first <= window)
    return {"items_per_second": counted / window, "window": window, "batches": len(arrivals.batches)}


def _when_backoff_ends(queue: Any, deadline: float) -> Optional[float]:
    """When the worker's probe ended the backoff of ``queue`` (polled every 10 ms), or None."""
    while time.monotonic() < deadline:
        if queue.backoff_seconds == 0:
            return time.monotonic()
        time.sleep(0.01)
    return None


def cut(workdir: str, probe_interval: float, down_seconds: float) -> Dict[str, Any]:
    """Cut the link under a running worker, restore it; time to the first batch after."""
    from pyv_edge_agent.cloud_sync import HTTPCloudUploader
    from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

    queue = _queue(workdir, probe_interval=probe_interval, retry_base_seconds=300.0, retry_max_seconds=300.0)
    arrivals = Arrivals()
    with IngestServer(record_to=arrivals) as server:  # type: ignore[arg-type]
        uploader = HTTPCloudUploader(server.url, "shaped-link-key", timeout=2.0)
        worker = _worker(queue, uploader).start()
        queue.enqueue_many(_telemetry(10))
        arrivals.wait_for(lambda: arrivals.total >= 10, 30)
        _ip("link", "set", "lo", "down")
        queue.enqueue_many(_telemetry(200, 10))
        deadline = time.monotonic() + 30
        while queue.get_stats()["failed_batches"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        failed = queue.get_stats()["failed_batches"]
        time.sleep(down_seconds)
        backoff_left = queue.backoff_seconds
        restored = time.monotonic()
        _ip("link", "set", "lo", "up")
        resumed_at = _when_backoff_ends(queue, restored + 60)
        resumed = arrivals.wait_for(lambda: arrivals.total > 10, 60)
        first_after = next(at for at, _ in arrivals.batches[1:] if at > restored) if resumed else None
        arrivals.wait_for(lambda: arrivals.total >= 210, 60)
        worker.stop()
        delivered = arrivals.total
    return {
        "failed_batches": failed,
        "backoff_left_at_restore": backoff_left,
        "resume_delay": None if resumed_at is None else resumed_at - restored,
        "first_batch_delay": None if first_after is None else first_after - restored,
        "probe_interval": probe_interval,
        "delivered": delivered,
    }


SCENARIOS = {"drain": drain, "rate": rate, "cut": cut}

if __name__ == "__main__":
    name, directory, arguments = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    _shape()
    print(json.dumps(SCENARIOS[name](directory, **arguments)), flush=True)
