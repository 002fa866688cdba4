"""``MQTTUploader`` against a real Mosquitto broker on loopback (see ``mqtt_broker.py``).

The delivery scenarios go through ``maybe_flush`` and run on both backends; the ones that
do not touch the codec (arguments, secrets, TLS, fork, the worker) run once.
"""

import base64
import hashlib
import hmac
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any, Dict, Iterator, List
from urllib.parse import unquote

import pytest
from mqtt_broker import (
    MAX_PACKET_SIZE,
    PASSWORD,
    USER,
    Broker,
    PubackRelay,
    Subscriber,
    mosquitto_or_skip,
)

from pyv_edge_agent.cloud_sync import CloudSyncQueue, Priority, SyncWorker, UploadError
from pyv_edge_agent.cloud_sync._flush import item_key

LOGGER = "pyv_edge_agent.cloud_sync"


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One broker for the module; a test that kills it starts it again."""
    mosquitto_or_skip()
    instance = Broker(str(tmp_path_factory.mktemp("mosquitto")))
    instance.start()
    yield instance
    instance.stop()


@pytest.fixture
def live_broker(broker: Broker) -> Broker:
    """The broker, running (a test before may have killed it)."""
    if broker.process is None or broker.process.poll() is not None:
        broker.start()
    return broker


@pytest.fixture
def once(backend: str) -> None:
    """For tests that do not depend on the codec backend: run them on one of the two."""
    if backend == "cython":
        pytest.skip("does not depend on the backend: runs once, on the python one")


class Clock:
    """A queue clock the test moves forward past a backoff."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def uploader(broker: Broker, topic: str, **options: Any) -> Any:
    from pyv_edge_agent.cloud_sync import MQTTUploader

    port = options.pop("port", broker.port)
    settings: Dict[str, Any] = dict(tls=False, username=USER, password=PASSWORD, timeout=10.0)
    settings.update(options)
    return MQTTUploader("127.0.0.1", port, topic=topic, **settings)


def subscriber(broker: Broker, topic: str, protocol: str = "5") -> Iterator[Subscriber]:
    sub = Subscriber(broker, topic, protocol)
    try:
        yield sub
    finally:
        sub.close()


# -- delivery, on both backends ------------------------------------------------------------


RANK = {p.name.lower(): p.value for p in Priority}


def fill(queue: CloudSyncQueue, count: int, chunk: int = 100) -> Dict[int, int]:
    """``count`` items with ``id`` fields 0.., in chunks whose priority cycles Logs first, so
    that priority order is not the order of insertion; return their queue ids by ``id``."""
    levels = [Priority.LOGS, Priority.TELEMETRY, Priority.ANOMALY, Priority.CRITICAL]
    queue_ids: Dict[int, int] = {}
    for n, start in enumerate(range(0, count, chunk)):
        payloads = [{"id": i, "site": f"s{i % 3}"} for i in range(start, min(count, start + chunk))]
        queue_ids.update(zip(range(start, start + len(payloads)), queue.enqueue_many(payloads, priority=levels[n % 4])))
    return queue_ids


def test_ten_thousand_mixed_items_arrive_in_priority_order(live_broker: Broker, db_path: str) -> None:
    sub = Subscriber(live_broker, "sensors/order/#")
    try:
        with CloudSyncQueue(db_path, durability="fast") as queue:
            fill(queue, 10_000)
            up = uploader(live_broker, "sensors/order/{site}/{priority}")
            assert queue.maybe_flush(up) == 10_000
            assert queue.pending_count() == 0
            up.close()
        sub.wait_for(10_000)
        ids = sub.ids()
        assert sorted(set(ids)) == list(range(10_000))
        assert len(ids) == 10_000  # nothing failed, so nothing was sent twice
        # Batches go in priority order, so the whole run does: Critical first, Logs last.
        ranks = [RANK[topic.rsplit("/", 1)[1]] for topic, _, _ in sub.messages]
        assert ranks == sorted(ranks) and ranks[0] == 1 and ranks[-1] == 4
        for topic, payload, _ in sub.messages[:50]:
            assert topic.startswith(f"sensors/order/s{payload['id'] % 3}/")
    finally:
        sub.close()


def test_mqtt_311_delivers_to_a_persistent_session(live_broker: Broker, db_path: str) -> None:
    sub = Subscriber(live_broker, "sensors/v311/#", protocol="3.1.1")
    try:
        with CloudSyncQueue(db_path) as queue:
            fill(queue, 600)
            up = uploader(live_broker, "sensors/v311/{priority}", protocol="3.1.1", max_inflight=10)
            assert queue.maybe_flush(up) == 600
            up.close()
        sub.wait_for(600)
        assert sorted(sub.ids()) == list(range(600))
        assert all(props is None or not hasattr(props, "UserProperty") for _, _, props in sub.messages)
    finally:
        sub.close()


def test_broker_killed_mid_batch_loses_nothing_and_acks_only_pubacked_items(
    live_broker: Broker, db_path: str
) -> None:
    total = 4000
    sub = Subscriber(live_broker, "sensors/kill/#")
    relay = PubackRelay(live_broker.port, hold_after=700)
    try:
        with CloudSyncQueue(db_path, durability="fast", retry_base_seconds=0.0, retry_max_seconds=0.0) as queue:
            fill(queue, total)
            up = uploader(live_broker, "sensors/kill/{priority}", port=relay.port, timeout=5.0)
            flushed: List[int] = []
            flusher = threading.Thread(target=lambda: flushed.append(queue.maybe_flush(up)))
            flusher.start()
            assert relay.held.wait(30)
            # PUBACKs stop reaching the uploader; its window fills with unanswered messages.
            deadline = time.monotonic() + 10
            while len(set(relay.published) - relay.pubacked) < 10 and time.monotonic() < deadline:
                time.sleep(0.005)
            live_broker.kill()
            flusher.join(30)
            first_acked = set(range(total)) - {item.payload["id"] for item in queue.peek(total + 1)}
            # The queue let go of exactly the items whose PUBACK reached the uploader.
            assert first_acked == relay.pubacked and flushed == [len(first_acked)]
            unacked_sent = set(relay.published) - relay.pubacked
            assert len(unacked_sent) >= 10

            live_broker.start()
            relay.release()
            assert sub.subscribed.wait(15), "the subscriber did not come back"
            sent = 0
            for _ in range(20):
                sent += queue.maybe_flush(up)
                if queue.pending_count() == 0:
                    break
                queue_clock_wait()
            assert queue.pending_count() == 0 and sent == total - len(first_acked)
            up.close()
        sub.wait_for(total - len(first_acked))
        received = sub.ids()
        # Nothing lost: what the subscriber did not get was PUBACKed before the kill (then
        # the broker, without persistence, may lose it: QoS 1 does not promise more).
        assert set(range(total)) - set(received) <= first_acked
        # Duplicates only for items sent without a PUBACK; each keeps its idempotency key.
        duplicates = {i for i in received if received.count(i) > 1} if len(received) > len(set(received)) else set()
        assert duplicates <= unacked_sent
        keys: Dict[int, str] = {}
        for _, payload, props in sub.messages:
            key = dict(props.UserProperty)["idempotency-key"]
            assert keys.setdefault(payload["id"], key) == key
        assert len(set(keys.values())) == len(keys)
    finally:
        relay.close()
        sub.close()


def queue_clock_wait() -> None:
    time.sleep(0.05)


def test_acl_denied_topic_keeps_items_logs_once_then_delivers(
    live_broker: Broker, db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    topic = f"denied-{uuid.uuid4().hex[:8]}/{{priority}}"
    clock = Clock()
    sub = Subscriber(live_broker, topic.split("/")[0] + "/#")
    try:
        with CloudSyncQueue(db_path, clock=clock, retry_max_seconds=50.0) as queue, caplog.at_level(logging.INFO):
            queue_ids = fill(queue, 30, chunk=10)
            up = uploader(live_broker, topic)
            for _ in range(3):
                assert queue.maybe_flush(up) == 0
                assert queue.pending_count() == 30 and queue.dead_letters() == []
                assert queue.next_due_in() >= 25  # the long, credentials backoff
                clock.now += 60
            live_broker.allow(topic.split("/")[0] + "/#")
            assert queue.maybe_flush(up) == 30
            up.close()
            queue_id = queue._conn().execute("SELECT value FROM sync_meta WHERE key = 'queue_id'").fetchone()[0]
        records = [r for r in caplog.records if r.name == LOGGER]
        assert [r.levelname for r in records] == ["ERROR", "INFO"]
        assert "0x87" in records[0].getMessage() and PASSWORD not in records[0].getMessage()
        sub.wait_for(30)
        assert sorted(sub.ids()) == list(range(30))
        for _, payload, props in sub.messages:
            assert dict(props.UserProperty)["idempotency-key"] == item_key(str(queue_id), queue_ids[payload["id"]])
            assert 86400 - 3600 <= props.MessageExpiryInterval <= 86400
    finally:
        sub.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_oversize_item_is_dead_lettered_and_the_rest_flow(
    live_broker: Broker, db_path: str, protocol: str
) -> None:
    sub = Subscriber(live_broker, "sensors/big/#")
    try:
        with CloudSyncQueue(db_path) as queue:
            fill(queue, 50, chunk=50)
            big = queue.enqueue({"id": 1000, "blob": "x" * MAX_PACKET_SIZE}, priority=Priority.CRITICAL)
            fill(queue, 0)
            queue.enqueue_many([{"id": 50 + i} for i in range(50)], priority=Priority.LOGS)
            # MQTT 5 learns the limit from CONNACK; 3.1.1 must be told.
            limit = {"max_packet_size": MAX_PACKET_SIZE} if protocol == "3.1.1" else {}
            up = uploader(live_broker, "sensors/big/{priority}", protocol=protocol, **limit)
            assert queue.maybe_flush(up) == 100
            (dead,) = queue.dead_letters()
            assert dead.id == big and "packet limit" in (dead.last_error or "")
            assert queue.pending_count() == 0
            up.close()
        sub.wait_for(100)
        assert sorted(sub.ids()) == list(range(100))
    finally:
        sub.close()
