"""``cloud-sync demo``: store-and-forward end to end on an embedded default.

A temporary queue and the loopback reference endpoint: readings of every priority arrive,
the uplink goes down and the backlog is held on disk while the flush backs off, then the
uplink returns and the queue drains, most important first.
"""

import os
import tempfile
import time
from typing import Dict, List

from .. import CloudSyncQueue, HTTPCloudUploader, Priority
from ..testing.ingest_server import IngestServer
from ._render import Output, TrackingUploader

DEMO_API_KEY = "pyv_demo_local_only"


def _produce(queue: CloudSyncQueue, telemetry_items: int) -> Dict[Priority, int]:
    now = time.time()
    queue.enqueue_many([{"p": "LOGS", "msg": f"boot step {i}"} for i in range(20)], priority=Priority.LOGS)
    for i in range(telemetry_items):  # one call per reading, as a sensor thread would
        queue.enqueue({"p": "TELEMETRY", "sensor": "motor", "rpm": 1400 + i % 50, "ts": now + i * 0.01})
    anomalies = [{"p": "ANOMALY", "sensor": "vibration", "zscore": 4.2 + i / 10} for i in range(8)]
    queue.enqueue_many(anomalies, priority=Priority.ANOMALY)
    queue.enqueue({"p": "CRITICAL", "sensor": "boiler", "value": 85.0, "alert": "overheat"}, Priority.CRITICAL, 3600)
    return {Priority.LOGS: 20, Priority.TELEMETRY: telemetry_items, Priority.ANOMALY: 8, Priority.CRITICAL: 1}


def run_demo(out: Output, telemetry_items: int = 200) -> bool:
    """Run the narrated demo; return True when every item was delivered exactly once."""
    with tempfile.TemporaryDirectory(prefix="cloud-sync-demo-") as tmp, IngestServer(api_key=DEMO_API_KEY) as server:
        path = os.path.join(tmp, "edge_queue.db")
        queue = CloudSyncQueue(path, max_batch_items=25, retry_base_seconds=0.25, retry_max_seconds=1.0)
        uploader = HTTPCloudUploader(endpoint=server.url, api_key=DEMO_API_KEY, timeout=2.0)
        out.line(f"cloud-sync demo: queue {path}, ingest endpoint {server.url}", style="bold")

        out.line("1. readings arrive from the sensors")
        queued = _produce(queue, telemetry_items)
        out.line(
            f"   {queue.pending_count()} items stored; next up: "
            + ", ".join(f"#{item.id} {item.priority.name}" for item in queue.peek(n=3))
        )

        out.line("2. the uplink goes down", style="bold red")
        server.stop()
        for attempt in range(1, 4):
            flushed = queue.maybe_flush(uploader)
            stats = queue.get_stats()
            out.line(
                f"   flush call {attempt}: sent {flushed}; {stats['depth']} held on disk; "
                f"link backing off for {queue.backoff_seconds:.2f}s more"
            )
            time.sleep(0.3)
        queue.enqueue({"p": "CRITICAL", "sensor": "boiler", "value": 97.5, "alert": "trip"}, Priority.CRITICAL)
        queued[Priority.CRITICAL] += 1
        out.line("   a critical alarm arrives during the outage and is stored too")

        out.line("3. the uplink is back: draining, most important first", style="bold green")
        server.start()
        total = queue.pending_count()
        waited = time.monotonic()
        while len(queue.peek(n=total)) < total and time.monotonic() - waited < 10.0:
            time.sleep(0.05)  # failed batches wait out their backoff before they are retried
        out.line(f"   backoff over after {time.monotonic() - waited:.1f}s; {total} items to send")
        deadline = time.monotonic() + 45.0
        with out.progress("draining", total=total) as advance:
            progress = TrackingUploader(uploader, advance)
            while queue.pending_count() and time.monotonic() < deadline:
                if not queue.maybe_flush(progress):
                    time.sleep(0.05)  # the failed batch's retry time has not come yet

        arrivals: Dict[str, List[int]] = {}
        for position, item in enumerate(server.items):
            arrivals.setdefault(item["p"], []).append(position)
        rows = []
        for level in Priority:
            seen = arrivals.get(level.name, [])
            rows.append([level.name, queued[level], len(seen), f"{min(seen) + 1}-{max(seen) + 1}" if seen else "-"])
        out.table(["priority", "queued", "delivered", "arrival positions"], rows, title="4. delivered")
        stats = queue.get_stats()
        out.line(
            f"   {len(server.batches)} batches; {stats['depth']} left in the queue; "
            f"messages_sent_today={stats['messages_sent_today']}"
        )
        queue.close()
        uploader.close()
        delivered = sum(len(v) for v in arrivals.values())
        return stats["depth"] == 0 and delivered == sum(queued.values())
