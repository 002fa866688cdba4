"""``MQTTUploader`` against a real Mosquitto broker on loopback (see ``mqtt_broker.py``).

The delivery scenarios go through ``maybe_flush``; the rest try arguments, secrets, TLS,
fork and the worker. All run once, as the whole folder does (see conftest.py): the queue's
side of a flush runs on both backends in ../flush/.
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
import rawsql
from crypto_extra import import_or_skip
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
from pyv_edge_agent.cloud_sync._flush.outgoing import item_key

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


# -- delivery ------------------------------------------------------------


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


def test_one_queue_feeds_mqtt_and_https_destinations_and_a_dead_broker_holds_back_only_its_own(
    live_broker: Broker, db_path: str
) -> None:
    from waiting import wait_for

    from pyv_edge_agent.cloud_sync import HTTPCloudUploader
    from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

    sub = Subscriber(live_broker, "sensors/two/#")
    try:
        with (
            IngestServer(api_key="k") as server,
            CloudSyncQueue(db_path, destinations=("iot", "archive"), retry_base_seconds=0.2) as queue,
        ):
            iot = uploader(live_broker, "sensors/two/{priority}")
            archive = HTTPCloudUploader(server.url, "k", timeout=5.0)
            with SyncWorker(queue, {"iot": iot, "archive": archive}, interval=0.1, handle_sigterm=False):
                queue.enqueue_many([{"id": n} for n in range(200)])
                queue.enqueue_many([{"id": n} for n in range(200, 250)], destinations=("archive",))
                assert wait_for(lambda: queue.pending_count() == 0)
                sub.wait_for(200)  # the broker forwarded them before it is killed
                live_broker.kill()  # the MQTT destination goes down; HTTPS keeps flowing
                queue.enqueue_many([{"id": n} for n in range(250, 300)])
                assert wait_for(lambda: queue.pending_count(destination="archive") == 0)
                assert queue.pending_count(destination="iot") == 50
                live_broker.start()
                assert wait_for(lambda: queue.pending_count() == 0, timeout=60)
            iot.close()
        # What went before the kill reached the subscriber; what went after it was taken by
        # the restarted broker (PUBACKed: nothing left to deliver), which forwards it only
        # once the subscriber is back, a race of the broker's and not the queue's.
        assert set(range(200)) <= set(sub.ids())
        assert sorted(item["id"] for item in server.items) == list(range(300))
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


def test_broker_killed_mid_batch_loses_nothing_and_acks_only_pubacked_items(live_broker: Broker, db_path: str) -> None:
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
        sub.wait_for_ids(set(range(total)) - first_acked)
        time.sleep(0.2)  # and any duplicates still on their way
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
            stored = rawsql.execute(queue, "SELECT id, CAST(payload AS BLOB), created_at + ttl_seconds FROM sync_queue")
            expected_keys = {row[0]: (row[1], row[2]) for row in stored}
            up = uploader(live_broker, topic)
            for _ in range(3):
                assert queue.maybe_flush(up) == 0
                assert queue.pending_count() == 30 and queue.dead_letters() == []
                assert queue.next_due_in() >= 25  # the long, credentials backoff
                clock.now += 60
            live_broker.allow(topic.split("/")[0] + "/#")
            assert queue.maybe_flush(up) == 30
            up.close()
            queue_id = rawsql.execute(queue, "SELECT value FROM sync_meta WHERE key = 'queue_id'").fetchone()[0]
        records = [r for r in caplog.records if r.name == LOGGER]
        assert [r.levelname for r in records] == ["ERROR", "INFO"]
        assert "0x87" in records[0].getMessage() and PASSWORD not in records[0].getMessage()
        sub.wait_for(30)
        assert sorted(sub.ids()) == list(range(30))
        for _, payload, props in sub.messages:
            item_id = queue_ids[payload["id"]]
            text, expires_at = expected_keys[item_id]
            assert dict(props.UserProperty)["idempotency-key"] == item_key(str(queue_id), item_id, text, expires_at)
            assert 86400 - 3600 <= props.MessageExpiryInterval <= 86400
    finally:
        sub.close()


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_oversize_item_is_dead_lettered_and_the_rest_flow(live_broker: Broker, db_path: str, protocol: str) -> None:
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


def test_item_without_the_topic_field_is_rejected_to_dead_letters_and_the_rest_flow(
    live_broker: Broker, db_path: str
) -> None:
    sub = Subscriber(live_broker, "sensors/fields/#")
    try:
        with CloudSyncQueue(db_path, max_attempts=1) as queue:
            queue.enqueue_many([{"id": 0, "site": "a"}, {"id": 1}, {"id": 2, "site": "a/b"}, {"id": 3, "site": 7}])
            up = uploader(live_broker, "sensors/fields/{site}")
            assert queue.maybe_flush(up) == 2
            dead = {d.payload["id"]: d.last_error or "" for d in queue.dead_letters()}
            assert sorted(dead) == [1, 2]
            assert "no field 'site'" in dead[1] and "cannot be a topic level" in dead[2]
            up.close()
        sub.wait_for(2)
        assert sorted((topic, payload["id"]) for topic, payload, _ in sub.messages) == [
            ("sensors/fields/7", 3),
            ("sensors/fields/a", 0),
        ]
    finally:
        sub.close()


# -- arguments, secrets, TLS, fork and the worker ------------------------------------------


def test_tls_with_client_certificate_works_and_without_it_nothing_is_lost(live_broker: Broker, db_path: str) -> None:
    sub = Subscriber(live_broker, "sensors/tls/#")
    tls = dict(port=live_broker.tls_port, tls=True, ca_certs=live_broker.ca_file, username=None, password=None)
    try:
        with CloudSyncQueue(db_path, retry_base_seconds=0.0, retry_max_seconds=0.0) as queue:
            queue.enqueue_many([{"id": i} for i in range(20)])
            without = uploader(live_broker, "sensors/tls/x", timeout=5.0, **tls)
            assert queue.maybe_flush(without) == 0
            assert queue.pending_count() == 20 and "client certificate" in queue.get_stats()["last_error"]
            # Mutual TLS: the certificate alone identifies the device (its common name is the user).
            mutual = uploader(
                live_broker,
                "sensors/tls/x",
                client_cert=live_broker.client_cert,
                client_key=live_broker.client_key,
                **tls,
            )
            assert queue.maybe_flush(mutual) == 20
            mutual.close()
        sub.wait_for(20)
        assert sorted(sub.ids()) == list(range(20))
        # A broker whose certificate the client cannot verify (no ca_certs: the system CAs).
        system_cas = uploader(live_broker, "sensors/tls/x", **dict(tls, ca_certs=None))
        with pytest.raises(UploadError, match="CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
            system_cas.post_batch([{"id": -1}])
    finally:
        sub.close()


def test_wrong_password_takes_the_credentials_path_and_never_shows_it(
    live_broker: Broker, db_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-pw-Zq81x"
    with CloudSyncQueue(db_path, retry_max_seconds=40.0) as queue, caplog.at_level(logging.DEBUG):
        queue.enqueue_many([{"id": i} for i in range(5)])
        up = uploader(live_broker, "sensors/pw/x", password=wrong)
        assert queue.maybe_flush(up) == 0
        assert queue.pending_count() == 5 and queue.next_due_in() >= 19
        stats = repr(queue.get_stats())
        assert "CONNACK 0x8" in stats
    shown = [repr(up), str(up), stats] + [r.getMessage() for r in caplog.records]
    records = [r for r in caplog.records if r.name == LOGGER]
    assert [r.levelname for r in records] == ["ERROR"]
    assert not any(wrong in text or PASSWORD in text for text in shown)
    # Said as what it is: a broker, and the user name it refused (not "the ingest endpoint").
    logged = records[0].getMessage()
    assert f"the MQTT broker 127.0.0.1:{live_broker.port} refused the user name {USER!r}" in logged
    assert "ingest endpoint" not in logged


def test_callable_password_is_called_at_each_connect(live_broker: Broker) -> None:
    calls: List[float] = []

    def token() -> str:
        calls.append(time.time())
        return PASSWORD

    up = uploader(live_broker, "sensors/token/x", password=token)
    assert up.post_batch([{"id": 1}]) is True
    assert up.post_batch([{"id": 2}]) is True
    assert len(calls) == 1  # one connection across batches
    up.close()
    assert up.post_batch([{"id": 3}]) is True
    assert len(calls) == 2
    live_broker.stop()  # a broker restart: the next batch notices and connects again
    live_broker.start()
    assert up.post_batch([{"id": 4}]) is True
    assert len(calls) == 3
    up.close()


def test_fork_child_makes_its_own_connection(live_broker: Broker) -> None:
    sub = Subscriber(live_broker, "sensors/fork/#")
    try:
        up = uploader(live_broker, "sensors/fork/x")
        assert up.post_batch([{"id": 1}]) is True
        parent_repr = repr(up)
        pid = os.fork()
        if pid == 0:  # the child: its own connection; the parent's socket stays untouched
            # ... under a client id of its own, or the broker would drop the parent's.
            ok = up.post_batch([{"id": 2}]) is True and repr(up) != parent_repr
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert up.post_batch([{"id": 3}]) is True  # the parent's connection still works
        up.close()
        sub.wait_for(3)
        assert sorted(sub.ids()) == [1, 2, 3]
    finally:
        sub.close()


def test_works_under_sync_worker_with_qos_0(live_broker: Broker, db_path: str) -> None:
    sub = Subscriber(live_broker, "sensors/worker/#")
    try:
        with CloudSyncQueue(db_path) as queue:
            up = uploader(live_broker, "sensors/worker/{priority}", qos=0)
            with SyncWorker(queue, up, interval=0.05, handle_sigterm=False):
                queue.enqueue_many([{"id": i} for i in range(200)])
                deadline = time.monotonic() + 20
                while queue.pending_count() and time.monotonic() < deadline:
                    time.sleep(0.02)
            assert queue.pending_count() == 0
            up.close()
        sub.wait_for(200)
        assert sorted(sub.ids()) == list(range(200))  # fire and forget, on a healthy loopback
    finally:
        sub.close()


def test_unreachable_broker_is_transient_and_names_no_secret(db_path: str) -> None:
    from mqtt_broker import free_port

    from pyv_edge_agent.cloud_sync import MQTTUploader

    secret = "s3cret-never-shown"
    up = MQTTUploader("127.0.0.1", free_port(), topic="t", tls=False, username="u", password=secret, timeout=2.0)
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"id": i} for i in range(3)])
        assert queue.maybe_flush(up) == 0
        assert queue.pending_count() == 3
        stats = repr(queue.get_stats())
    with pytest.raises(UploadError) as info:
        up.post_batch([{"id": 1}])
    assert "ConnectionRefusedError" in str(info.value)
    assert not any(secret in text for text in (str(info.value), stats, repr(up)))


@pytest.mark.parametrize(
    "options, message",
    [
        ({"host": "broker.example"}, "plain TCP to 'broker.example'"),
        ({"topic": "a/+/b"}, "wildcard"),
        ({"topic": "a/{x.y}"}, "plain names"),
        ({"topic": "a/{x"}, "unbalanced"),
        ({"topic": ""}, "topic must be a non-empty str"),
        ({"qos": 2}, "qos must be 1, or 0"),
        ({"protocol": "3"}, "protocol must be one of"),
        ({"port": 0}, "port"),
        ({"port": 70000}, "port"),
        ({"timeout": 0}, "timeout"),
        ({"max_inflight": 0}, "max_inflight"),
        ({"ca_certs": "/nonexistent.pem", "tls": True}, "ca_certs: no file at"),
        ({"client_id": "x" * 65536}, "client_id must be at most 65535 bytes"),
        ({"username": "\u00e9" * 40000}, "username must be at most 65535 bytes"),
        ({"max_inflight": 65536}, "max_inflight"),
        ({"client_key": __file__, "tls": True}, "client_key and key_password need client_cert"),
        ({"password": "x", "username": None}, "password needs a username"),
        ({"password": 5}, "password must be"),
    ],
)
def test_bad_arguments_are_refused_naming_them(options: Dict[str, Any], message: str) -> None:
    pytest.importorskip("paho.mqtt")
    from pyv_edge_agent.cloud_sync import MQTTUploader

    settings: Dict[str, Any] = dict(host="127.0.0.1", port=1883, topic="t/x", tls=False, username="u")
    settings.update(options)
    host, port = settings.pop("host"), settings.pop("port")
    with pytest.raises((ValueError, TypeError), match=message.replace("+", r"\+")):
        MQTTUploader(host, port, **settings)


def test_plain_tcp_beyond_loopback_needs_allow_insecure() -> None:
    pytest.importorskip("paho.mqtt")
    from pyv_edge_agent.cloud_sync import MQTTUploader

    up = MQTTUploader("broker.example", 1883, topic="t", tls=False, allow_insecure=True)  # nothing is sent yet
    assert "broker.example" in repr(up) and up.topic == "t"


def test_missing_paho_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['paho'] = None\n"
        "from pyv_edge_agent.cloud_sync import MQTTUploader\n"
        "try:\n    MQTTUploader('127.0.0.1', 1883, topic='t', tls=False)\n"
        "except ImportError as exc:\n    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pyv-edge-agent[mqtt]" in out.stdout, out.stderr


def test_azure_sas_token_is_signed_with_the_key() -> None:
    from pyv_edge_agent.cloud_sync.delivery.mqtt.uploader import azure_iot_sas_token

    key = base64.b64encode(b"device-key-bytes-0123456789abcdef").decode()
    before = int(time.time())
    token = azure_iot_sas_token("myhub.azure-devices.net/devices/dev-1", key, ttl=600)
    assert token.startswith("SharedAccessSignature sr=myhub.azure-devices.net%2Fdevices%2Fdev-1&sig=")
    fields = dict(part.split("=", 1) for part in token[len("SharedAccessSignature ") :].split("&"))
    assert before + 600 <= int(fields["se"]) <= int(time.time()) + 600
    expected = hmac.new(base64.b64decode(key), f"{fields['sr']}\n{fields['se']}".encode(), hashlib.sha256).digest()
    assert base64.b64decode(unquote(fields["sig"])) == expected
    assert "skn=" not in token
    assert azure_iot_sas_token("h/devices/d", key, policy_name="device").endswith("&skn=device")
    with pytest.raises(ValueError, match="base64"):
        azure_iot_sas_token("h/devices/d", "not base64!")


def test_cli_flush_to_mqtt_with_password_from_env_or_file(live_broker: Broker, db_path: str, tmp_path: Any) -> None:
    sub = Subscriber(live_broker, "sensors/cli/#")
    try:
        with CloudSyncQueue(db_path) as queue:
            queue.enqueue_many([{"id": i} for i in range(30)])
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PYV_EDGE_AGENT_", "CLOUD_SYNC_"))}
        env["PYV_EDGE_AGENT_NO_EXTENSIONS"] = "1"
        command = [sys.executable, "-m", "pyv_edge_agent.cloud_sync", "--plain", "flush", db_path]
        target = ["--mqtt", f"mqtt://127.0.0.1:{live_broker.port}", "--topic", "sensors/cli/{priority}"]
        refused_db = str(tmp_path / "refused.db")
        with CloudSyncQueue(refused_db) as queue:
            queue.enqueue_many([{"id": i} for i in range(3)])
        wrong = subprocess.run(
            command[:-1] + [refused_db] + target + ["--username", USER],
            env=dict(env, CLOUD_SYNC_MQTT_PASSWORD="not-it-123"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert wrong.returncode == 1 and "stopped at a failed batch" in wrong.stdout
        assert "not-it-123" not in wrong.stdout + wrong.stderr
        password_file = tmp_path / "mqtt-password"
        password_file.write_text(PASSWORD + "\n")
        done = subprocess.run(
            command + target + ["--username", USER, "--password-file", str(password_file), "--json"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert '"flushed": 30' in done.stdout and PASSWORD not in done.stdout + done.stderr
        sub.wait_for(30)
        assert sorted(sub.ids()) == list(range(30))
        bad = subprocess.run(command + ["--mqtt", "http://x", "--topic", "t"], env=env, capture_output=True, text=True)
        assert bad.returncode == 2 and "--mqtt must be" in bad.stderr
    finally:
        sub.close()


def test_acl_denial_with_a_full_window_in_flight_is_still_a_refusal(live_broker: Broker) -> None:
    # Mosquitto answers a denied publish with 0x87 and closes the connection; the messages
    # behind it in the window make the write fail before the answer is read. The uploader
    # connects again and sends the first unanswered message alone, which gets its answer.
    up = uploader(live_broker, f"denied-{uuid.uuid4().hex[:8]}/x")
    for _ in range(10):
        result = up.post_batch([{"id": i} for i in range(50)])
        assert result is not True
        assert list(result.credentials) == [0] and list(result.retry) == list(range(1, 50)), result.error
        assert "0x87" in (result.error or "")
    up.close()


def test_sealed_queue_publishes_the_opened_json(live_broker: Broker, db_path: str) -> None:
    import_or_skip("cryptography", reason="encryption at rest needs the 'crypto' extra")
    sub = Subscriber(live_broker, "sensors/sealed/#")
    try:
        with CloudSyncQueue(db_path, encryption_key=os.urandom(32)) as queue:
            queue.enqueue_many([{"id": i, "secret_reading": i * 2} for i in range(20)])
            stored = rawsql.execute(queue, "SELECT payload FROM sync_queue LIMIT 1").fetchone()[0]
            assert "secret_reading" not in stored  # sealed at rest
            up = uploader(live_broker, "sensors/sealed/{priority}")
            assert queue.maybe_flush(up) == 20
            up.close()
        sub.wait_for(20)
        assert sorted((p["id"], p["secret_reading"]) for _, p, _ in sub.messages) == [(i, i * 2) for i in range(20)]
    finally:
        sub.close()


# -- settings that only failed at use -------------------------------------------------------


def _encrypted_key(key_path: str, password: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization

    with open(key_path, "rb") as handle:
        key = serialization.load_pem_private_key(handle.read(), None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.BestAvailableEncryption(password),
    )


def test_an_encrypted_client_key_needs_key_password_at_construction_and_then_works(
    live_broker: Broker, db_path: str, tmp_path: Any
) -> None:
    from pyv_edge_agent.cloud_sync import MQTTUploader

    locked = os.path.join(os.fspath(tmp_path), "locked.key")
    with open(locked, "wb") as handle:
        handle.write(_encrypted_key(live_broker.client_key, b"pa55-phrase-9"))
    tls = dict(tls=True, ca_certs=live_broker.ca_file, client_cert=live_broker.client_cert, timeout=5.0)

    def refused(**options: Any) -> str:
        with pytest.raises((ValueError, TypeError)) as info:
            MQTTUploader("127.0.0.1", live_broker.tls_port, topic="sensors/enc/x", **dict(tls, **options))
        return str(info.value)

    # Without its password OpenSSL would prompt on the terminal and block the flush: refused now.
    assert "client_key is encrypted: give key_password" in refused(client_key=locked)
    wrong = refused(client_key=locked, key_password="wrong-phrase-1")
    assert "key_password does not decrypt client_key" in wrong and "wrong-phrase-1" not in wrong
    # Bytes go to OpenSSL as they are, whatever their encoding: a wrong one is only wrong.
    not_utf8 = refused(client_key=locked, key_password=b"\xff\xfepa55")
    assert "key_password does not decrypt client_key" in not_utf8 and "pa55" not in not_utf8
    assert "need client_cert" in refused(client_cert=None, client_key=None, key_password="x")

    sub = Subscriber(live_broker, "sensors/enc/#")
    try:
        with CloudSyncQueue(db_path) as queue:
            queue.enqueue_many([{"id": i} for i in range(3)])
            up = MQTTUploader(
                "127.0.0.1",
                live_broker.tls_port,
                topic="sensors/enc/x",
                client_key=locked,
                key_password=b"pa55-phrase-9",
                **tls,
            )
            assert queue.maybe_flush(up) == 3
            assert "pa55-phrase-9" not in repr(up)
            up.close()
        sub.wait_for(3)
    finally:
        sub.close()


def test_ca_certs_that_is_not_pem_is_refused_alike_by_http_and_mqtt(tmp_path: Any) -> None:
    pytest.importorskip("paho.mqtt")
    from pyv_edge_agent.cloud_sync import HTTPCloudUploader, MQTTUploader

    garbage = os.path.join(os.fspath(tmp_path), "ca.pem")
    with open(garbage, "w") as handle:
        handle.write("-----BEGIN NONSENSE-----\nnot a certificate\n")
    missing = os.path.join(os.fspath(tmp_path), "missing.pem")
    for path, expected in ((garbage, "holds no PEM certificate"), (missing, "no file at")):
        with pytest.raises(ValueError) as http:
            HTTPCloudUploader("https://127.0.0.1:9/v1", "k", ca_certs=path)
        with pytest.raises(ValueError) as mqtt:
            MQTTUploader("127.0.0.1", 8883, topic="t/x", ca_certs=path)
        assert str(http.value) == str(mqtt.value)
        assert str(http.value).startswith("ca_certs") and expected in str(http.value)


def test_batches_in_flight_share_one_connection_and_its_window(live_broker: Broker, db_path: str) -> None:
    sub = Subscriber(live_broker, "sensors/inflight/#")
    try:
        with CloudSyncQueue(db_path, durability="fast", max_batch_items=100, max_in_flight_batches=4) as queue:
            fill(queue, 3000)
            up = uploader(live_broker, "sensors/inflight/{priority}")
            assert queue.maybe_flush(up) == 3000
            assert queue.pending_count() == 0
            up.close()
        sub.wait_for(3000)
        ids = sub.ids()
        assert sorted(ids) == list(range(3000))  # every one, once
        # Batches are claimed in priority order; at most the batches in flight overlap.
        ranks = [RANK[topic.rsplit("/", 1)[1]] for topic, _, _ in sub.messages]
        assert ranks[:100] == [1] * 100
    finally:
        sub.close()


def test_a_broker_killed_under_batches_in_flight_loses_nothing(live_broker: Broker, db_path: str) -> None:
    with CloudSyncQueue(db_path, durability="fast", max_batch_items=100, max_in_flight_batches=3) as queue:
        queue.enqueue_many([{"id": n} for n in range(20_000)])
        up = uploader(live_broker, "sensors/killed/{priority}")
        killer = threading.Timer(0.3, live_broker.kill)
        killer.start()
        first = queue.maybe_flush(up)  # ends when the link breaks, every batch in flight settled
        killer.join()
        assert first < 20_000  # the kill came in the middle
        stats = queue.get_stats()
        assert stats["in_flight"] == 0 and stats["messages_sent_total"] == first
        assert queue.pending_count() == 20_000 - first
        live_broker.start()
        queue.retry_now()  # the batches that failed are due again
        assert queue.maybe_flush(up) == 20_000 - first
        assert queue.pending_count() == 0
        up.close()
