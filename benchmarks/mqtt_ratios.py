"""The MQTT flush against a bare paho QoS 1 loop, with 1, 2 and 4 batches in flight, as
same-round ratios: the floor and the flushes take turns in every round on one Mosquitto on
loopback, so that a busy machine slows them alike (pytest-benchmark runs one case after the
other, which a shared machine skews). Prints each count's median of (floor's time / the
flush's time), its throughput as a share of the floor's.

    python benchmarks/mqtt_ratios.py [--rounds 10] [--items 20000]

Needs Mosquitto; the backend is the one in use (``PYV_EDGE_AGENT_NO_EXTENSIONS=1``: pure).
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Dict, List

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests", "support"))
from _support import fresh_queue, rows  # noqa: E402
from mqtt_broker import Broker  # noqa: E402
from test_bench_mqtt import _PahoLoop, _uploader  # noqa: E402

from pyv_edge_agent.cloud_sync import BACKEND  # noqa: E402
from pyv_edge_agent.cloud_sync._flush.outgoing import item_key  # noqa: E402
from pyv_edge_agent.cloud_sync.delivery.mqtt.message import PackedProperties  # noqa: E402

IN_FLIGHT = (1, 2, 4)


def measure(rounds: int, items: int) -> Dict[int, List[float]]:
    """Per number in flight, each round's ratio of the floor's time to the flush's."""
    ratios: Dict[int, List[float]] = {count: [] for count in IN_FLIGHT}
    prepared = rows(items)
    now = time.time()
    messages = [
        (text.encode(), created + ttl - now, item_key("bench", n, text.encode(), created + ttl))
        for n, (text, _, created, ttl) in enumerate(prepared)
    ]
    packed = [PackedProperties(key, ttl_left) for _, ttl_left, key in messages]
    with tempfile.TemporaryDirectory(prefix="mqtt-ratios-") as directory:
        broker = Broker(directory)
        broker.start()
        try:
            loop = _PahoLoop(broker, external=True)
            uploader = _uploader(broker)
            for _ in range(rounds):
                start = time.perf_counter()
                loop.publish_all(messages, packed)
                floor = time.perf_counter() - start
                for count in IN_FLIGHT:
                    path = os.path.join(directory, "q.db")
                    queue = fresh_queue(path, durability="fast", max_in_flight_batches=count)
                    queue._insert_rows(prepared)  # noqa: SLF001 - prepared rows, as the benchmark inserts them
                    start = time.perf_counter()
                    if queue.maybe_flush(uploader) != items:
                        raise RuntimeError("the flush did not deliver every item")
                    ratios[count].append(floor / (time.perf_counter() - start))
                    queue.close()
            loop.client.disconnect()
            uploader.close()
        finally:
            broker.stop()
    return ratios


def main() -> int:
    """Print the medians, and each round's ratio."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--items", type=int, default=20_000)
    args = parser.parse_args()
    for count, each in measure(args.rounds, args.items).items():
        shown = ", ".join(f"{ratio:.2f}" for ratio in each)
        print(f"{BACKEND}, {count} in flight: {statistics.median(each):.2f}x the floor's throughput ({shown})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
