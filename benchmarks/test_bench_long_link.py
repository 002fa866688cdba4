"""Long links: the drain time of a backlog against the number of batches in flight, at
200 ms and 600 ms round trips (``tests/support/latencyrelay.py``, a userspace relay on
loopback that holds every chunk for half the round trip in each direction).

Figures, not rates: 3,000 telemetry items in batches of 100 go through an
``HTTPCloudUploader`` to the ``IngestServer``, with ``max_in_flight_batches`` 1, 2, 4 and 8.
The limit each drain is compared with is the bandwidth-delay one: loopback's bandwidth is
all but unlimited, so the link's limit is its round trips, one per batch with N batches
sharing each: ``ceil(30 / N) * RTT``. A plain test run drains 300 items (three batches).
The halving at four in flight is asserted in ``tests/flush/test_in_flight.py``.
"""

import math
import os
import sys
import time
from typing import Any, Callable, Dict

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "support"))
from latencyrelay import LatencyRelay  # noqa: E402 - lives with the tests, which use it too

from pyv_edge_agent.cloud_sync import BACKEND, CloudSyncQueue, HTTPCloudUploader  # noqa: E402
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer  # noqa: E402

pytestmark = pytest.mark.parametrize("backend", [BACKEND], indirect=True)
Size = Callable[[int, int], int]
KEY = "bench-key"
BATCH = 100


def _drain(path: str, items: int, round_trip: float, in_flight: int) -> Dict[str, Any]:
    with IngestServer(api_key=KEY) as server, LatencyRelay(server.port, round_trip / 2) as relay:
        with CloudSyncQueue(path, durability="fast", max_batch_items=BATCH, max_in_flight_batches=in_flight) as queue:
            queue.enqueue_many([{"n": n, "reading": n * 0.5} for n in range(items)])
            uploader = HTTPCloudUploader(f"http://127.0.0.1:{relay.port}/v1/ingest", KEY, timeout=30.0)
            started = time.monotonic()
            delivered = queue.maybe_flush(uploader)
            seconds = time.monotonic() - started
            uploader.close()
    limit = math.ceil(math.ceil(items / BATCH) / in_flight) * round_trip
    return {
        "items": items,
        "round_trip": round_trip,
        "in_flight": in_flight,
        "delivered": delivered,
        "seconds": round(seconds, 3),
        "limit": round(limit, 3),
        "ratio": round(seconds / limit, 3),
        "connections": relay.connections,
    }


@pytest.mark.parametrize("round_trip", [0.2, 0.6])
@pytest.mark.parametrize("in_flight", [1, 2, 4, 8])
def test_drain_a_long_link(benchmark: Any, tmp_path: Any, size: Size, round_trip: float, in_flight: int) -> None:
    items = size(3000, 300)
    benchmark.group = "long link"
    path = os.path.join(os.fspath(tmp_path), "long.db")
    figures: Dict[str, Any] = benchmark.pedantic(
        lambda: _drain(path, items, round_trip, in_flight), rounds=1, iterations=1
    )
    benchmark.extra_info["long_link"] = figures
    print(f"\nlong link: {figures}")
    assert figures["delivered"] == items
