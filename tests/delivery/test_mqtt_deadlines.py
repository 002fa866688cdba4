"""``MQTTUploader`` against a hostile broker (``hostile_broker.py``): a batch, connecting
included, is bounded by ``timeout`` however the broker trickles its answers, a packet over
the announced Maximum Packet Size is refused before it is decoded, and a PUBACK reason code
that no PUBACK may carry is not taken for one."""

import time
from typing import Any

import pytest
from hostile_broker import MAXIMUM_PACKET_SIZE, HostileBroker

from pyv_edge_agent.cloud_sync import CloudSyncQueue

pytest.importorskip("paho.mqtt")


def _uploader(broker: HostileBroker, timeout: float, **options: Any) -> Any:
    from pyv_edge_agent.cloud_sync import MQTTUploader

    return MQTTUploader("127.0.0.1", broker.port, topic="t/x", tls=False, timeout=timeout, **options)


def test_pubacks_one_by_one_cannot_keep_a_batch_past_its_timeout(db_path: str) -> None:
    timeout = 2.0
    with HostileBroker(puback_every=1.5) as broker, CloudSyncQueue(db_path, lease_seconds=5.0) as queue:
        queue.enqueue_many([{"i": i} for i in range(10)])
        up = _uploader(broker, timeout)
        started = time.monotonic()
        sent = queue.maybe_flush(up)
        # Bounded: the whole batch ends by its timeout (one PUBACK every 1.5 s would take 15 s).
        assert time.monotonic() - started < timeout * 3
        up.close()
        # Only what the broker PUBACKed is acked; the rest is kept, nothing dead-lettered.
        assert sent <= len(broker.acked) and sent < 10
        assert queue.pending_count() == 10 - sent
        assert queue.dead_letters() == [] and "timeout" in queue.get_stats()["last_error"]
    # The client told the broker how large a packet it takes.
    assert broker.connects and broker.connects[0].get(MAXIMUM_PACKET_SIZE, 0) > 0


def test_an_oversized_connack_is_refused_before_it_is_decoded(db_path: str) -> None:
    timeout = 3.0
    with HostileBroker(connack_padding=256 * 1024) as broker, CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(3)])
        up = _uploader(broker, timeout)
        started = time.monotonic()
        assert queue.maybe_flush(up) == 0
        assert time.monotonic() - started < timeout * 3
        assert queue.pending_count() == 3 and queue.dead_letters() == []
        assert "Maximum Packet Size" in queue.get_stats()["last_error"]
        assert broker.published == []


def test_a_puback_0x95_keeps_the_items_for_a_retry(db_path: str) -> None:
    # 0x95 (Packet too large) is a DISCONNECT reason; a PUBACK carrying it is malformed
    # (paho drops the connection on it), not a verdict on the item: it is kept and retried,
    # never dead-lettered.
    with HostileBroker(puback_reason=0x95) as broker, CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(2)])
        assert queue.maybe_flush(_uploader(broker, 3.0)) == 0
        assert queue.pending_count() == 2 and queue.dead_letters() == []
        assert broker.published
