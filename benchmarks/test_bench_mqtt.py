"""Items per second from the queue into Mosquitto on loopback, QoS 1, each acked on its PUBACK.

The floor, measured in the same run: a bare paho publish loop over one connection with the
same window (the broker's Receive Maximum), the same payloads (the stored JSON texts), the
same topic and the same MQTT 5 properties (packed before the clock starts), driven by the
same paho calls, and nothing else: no queue, no SQLite, no check for an answer before each
publish. Beside it, for scale, the loop a paho user would write (``loop()``, ``Properties``).
"""

import math
import os
import select
import time
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from _support import Size, fresh_queue, rows, run
from report import NAMES

from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync._flush.outgoing import item_key
from pyv_edge_agent.cloud_sync.delivery.mqtt.message import PackedProperties

TOPIC = "bench/telemetry"


@pytest.fixture(scope="module")
def broker() -> Iterator[Any]:
    """A Mosquitto on loopback for the module (the tests' own fixture broker)."""
    from mqtt_broker import running_broker

    with running_broker("bench-mqtt-") as instance:
        yield instance


def _uploader(broker: Any) -> Any:
    from mqtt_broker import PASSWORD, USER

    from pyv_edge_agent.cloud_sync import MQTTUploader

    return MQTTUploader("127.0.0.1", broker.port, topic=TOPIC, tls=False, username=USER, password=PASSWORD)


@pytest.mark.parametrize("in_flight", [1, 2, 4])
def test_mqtt_flush(benchmark: Any, tmp_path: Any, size: Size, broker: Any, backend: str, in_flight: int) -> None:
    count = size(20_000, 500)
    benchmark.group = f"flush {count:,} to Mosquitto (loopback, QoS 1)"
    if in_flight > 1:
        # The window spans batches: the next one publishes while the last one's PUBACKs come in.
        benchmark.extra_info["label"] = f"{NAMES.get(backend, backend)}, {in_flight} batches in flight"
    prepared = rows(count)
    queues: List[CloudSyncQueue] = []

    def setup() -> Tuple[Tuple[Any, ...], Dict[str, Any]]:
        if queues:
            queues[-1].close()
        path = os.path.join(os.fspath(tmp_path), "mqtt.db")
        queues.append(fresh_queue(path, durability="fast", max_in_flight_batches=in_flight))
        queues[-1]._insert_rows(prepared)
        return (), {}

    uploader = _uploader(broker)
    try:
        flushed = run(benchmark, lambda: queues[-1].maybe_flush(uploader), items=count, rounds=size(5, 1), setup=setup)
    finally:
        uploader.close()
    assert flushed == count and queues[-1].pending_count() == 0


class _PahoLoop:
    """A bare paho QoS 1 publish loop over one connection: publish while the window has
    room, else wait for PUBACKs. ``external=True`` drives paho with its external-loop calls
    (as ``MQTTUploader`` does) and publishes properties packed before the clock starts;
    ``external=False`` is the loop a paho user writes: ``loop()`` and ``Properties``."""

    def __init__(self, broker: Any, external: bool) -> None:
        import paho.mqtt.client as mqtt
        from mqtt_broker import PASSWORD, USER

        self.external = external
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.username_pw_set(USER, PASSWORD)
        self.client.max_inflight_messages_set(65535)
        self.window = 0
        self.acked = 0

        def on_connect(client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
            self.window = getattr(properties, "ReceiveMaximum", 20)

        def on_publish(client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
            assert reason.value < 0x80
            self.acked += 1

        self.client.on_connect = on_connect
        self.client.on_publish = on_publish
        self.client.connect("127.0.0.1", broker.port, 60, clean_start=True)
        while not self.window:
            self.wait()

    def wait(self) -> None:
        if not self.external:
            self.client.loop(1.0)
            return
        sock = self.client.socket()
        readable = select.select([sock], [sock] if self.client.want_write() else [], [], 1.0)[0]
        if readable:
            self.client.loop_read()
        if self.client.want_write():
            self.client.loop_write()

    def publish_all(self, messages: List[Tuple[bytes, float, str]], packed: List[Any]) -> int:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.acked = 0
        sent = 0
        for n, (text, ttl_left, key) in enumerate(messages):
            while sent - self.acked >= self.window:
                self.wait()
            if self.external:
                properties = packed[n]
            else:
                properties = Properties(PacketTypes.PUBLISH)
                properties.MessageExpiryInterval = max(1, math.ceil(ttl_left))
                properties.UserProperty = ("idempotency-key", key)
            assert self.client.publish(TOPIC, text, qos=1, properties=properties).rc == 0
            sent += 1
        while self.acked < sent:
            self.wait()
        return self.acked


@pytest.mark.parametrize("backend", ["floor", "paho loop()"])
def test_mqtt_flush_floor(benchmark: Any, size: Size, broker: Any, backend: str) -> None:
    count = size(20_000, 500)
    benchmark.group = f"flush {count:,} to Mosquitto (loopback, QoS 1)"
    now = time.time()
    messages = [
        (text.encode(), created + ttl - now, item_key("bench", n, text.encode(), created + ttl))
        for n, (text, _, created, ttl) in enumerate(rows(count))
    ]
    packed = [PackedProperties(key, ttl_left) for _, ttl_left, key in messages]
    loop = _PahoLoop(broker, external=backend == "floor")
    benchmark.extra_info["label"] = "bare paho loop (floor)" if backend == "floor" else "paho loop() and Properties"
    try:
        acked = run(benchmark, lambda: loop.publish_all(messages, packed), items=count, rounds=size(5, 1))
    finally:
        loop.client.disconnect()
    assert acked == count
