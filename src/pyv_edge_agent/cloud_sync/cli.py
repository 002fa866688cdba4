"""The ``cloud-sync`` command (also ``python -m pyv_edge_agent.cloud_sync``)."""

import argparse
import logging
import sys
import tempfile
import time
from typing import List, Optional

from . import BACKEND, CloudSyncQueue, HTTPCloudUploader, Priority
from .ingest_server import IngestServer

DEMO_API_KEY = "pyv_demo_local_only"


def _demo(args: argparse.Namespace) -> int:
    """Store-and-forward end to end: queue, outage, backoff, recovery, drain in priority order."""
    out = sys.stdout
    logging.basicConfig(level=logging.INFO, format="  log: %(message)s", stream=out)
    with tempfile.TemporaryDirectory(prefix="cloud-sync-demo-") as tmp, IngestServer(api_key=DEMO_API_KEY) as server:
        queue = CloudSyncQueue(
            f"{tmp}/edge_queue.db", max_batch_items=40, retry_base_seconds=0.2, retry_max_seconds=1.0
        )
        uploader = HTTPCloudUploader(endpoint=server.url, api_key=DEMO_API_KEY, timeout=5.0)
        out.write(f"backend: {BACKEND}; ingest endpoint: {server.url}\n")

        for i in range(args.items):
            queue.enqueue(
                payload={"sensor": "motor", "value": float(i), "timestamp": time.time()},
                priority=Priority.TELEMETRY,
            )
        queue.enqueue_many([{"log": f"boot step {i}"} for i in range(10)], priority=Priority.LOGS)
        queue.enqueue_many([{"sensor": "vibration", "zscore": 4.0 + i} for i in range(5)], priority=Priority.ANOMALY)
        queue.enqueue(
            {"sensor": "boiler", "value": 85.0, "alert": "overheat"}, priority=Priority.CRITICAL, ttl_seconds=3600
        )
        out.write(f"queued: {queue.pending_count()} items\n")
        out.write("next up: " + ", ".join(f"#{item.id} {item.priority.name}" for item in queue.peek(n=3)) + "\n")

        server.stop()
        flushed = queue.maybe_flush(uploader=uploader)
        out.write(f"uplink down: flushed {flushed}, held {queue.pending_count()} on disk, backing off\n")

        server.start()
        deadline = time.monotonic() + 30.0
        while queue.pending_count() and time.monotonic() < deadline:
            flushed += queue.maybe_flush(uploader=uploader)
            time.sleep(0.05)
        order: List[str] = []
        for item in server.items:
            name = (
                "CRITICAL"
                if "alert" in item
                else "ANOMALY"
                if "zscore" in item
                else "LOGS"
                if "log" in item
                else "TELEMETRY"
            )
            if not order or order[-1] != name:
                order.append(name)
        out.write(
            f"uplink up: flushed {flushed} in {len(server.batches)} batches; arrival order: {' > '.join(order)}\n"
        )
        stats = queue.get_stats()
        out.write(f"left in queue: {queue.pending_count()}; stats: {stats}\n")
        queue.close()
        uploader.close()
    return 0 if stats["depth"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``cloud-sync``."""
    parser = argparse.ArgumentParser(
        prog="cloud-sync", description="Persistent store-and-forward queue for edge agents."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="run store-and-forward against a built-in loopback ingest endpoint")
    demo.add_argument("--items", type=int, default=100, help="telemetry readings to queue (default 100)")
    demo.set_defaults(run=_demo)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``cloud-sync`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.run(args))
