"""The MQTT input through a real Mosquitto and a paho publisher: a kill -9 mid stream loses
nothing (what was not acknowledged comes again), a message that is not a JSON object is
kept in the rejects file (at least once), acknowledged and listed by ``cloud-sync rejects``,
routes set the priority, and a SIGHUP that reopens the queue mid stream loses nothing."""

import os
import signal
import uuid
from typing import Any, Iterator

import orjson
import pytest
from clirun import run
from mqtt_broker import PASSWORD, READER_PASSWORD, USER, Broker, running_broker
from servicerun import KEY, ServiceFiles, ServiceProcess, curl
from waiting import wait_for

from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

COUNT = 300


@pytest.fixture
def broker() -> Iterator[Broker]:
    with running_broker("cs-broker-") as running:
        yield running


def publisher(broker: Broker) -> Any:
    import paho.mqtt.client as mqtt

    name = f"pub-{uuid.uuid4().hex[:8]}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    client.username_pw_set(USER, PASSWORD)
    client.connect("127.0.0.1", broker.port, 30)
    client.loop_start()
    return client


def publish(client: Any, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(30)


def mqtt_input(files: ServiceFiles, broker: Broker, rejects: str) -> str:
    """The ``[ingest.mqtt]`` table reading ``sensors/#`` from ``broker`` as its reader."""
    with open(os.path.join(files.dir, "mqtt-password"), "w") as handle:
        handle.write(READER_PASSWORD)
    return (
        f'\n[ingest.mqtt]\nhost = "127.0.0.1"\nport = {broker.port}\ntopic = "sensors/#"\n'
        f'username = "reader"\npassword_file = "mqtt-password"\nclient_id = "cs-{uuid.uuid4().hex[:8]}"\n'
        f'rejects_path = "{rejects}"\n'
        '[[ingest.mqtt.routes]]\nfilter = "sensors/alarm/#"\npriority = "critical"\n'
    )


def test_kill_9_mid_stream_loses_nothing(backend: str, files: ServiceFiles, broker: Broker) -> None:
    rejects = os.path.join(files.dir, "rejects.jsonl")
    mqtt_table = mqtt_input(files, broker, rejects)
    with IngestServer(api_key="service-api-key-for-tests") as endpoint:
        # A batch in flight at the kill comes back when its lease ends: keep that short.
        files.write(endpoint.url, mqtt_table, destination="timeout = 2\nlease_seconds = 4")
        first = ServiceProcess(backend, files)
        assert wait_for(lambda: curl(files, "/readyz")["status"] == 200), first.log
        client = publisher(broker)
        publish(client, "sensors/bad", b"not json at all")
        publish(client, "sensors/alarm/boiler", b'{"alarm": "overheat"}')
        assert wait_for(lambda: os.path.exists(rejects))
        for n in range(COUNT // 2):
            publish(client, "sensors/t", orjson.dumps({"id": n}))
        first.signal(signal.SIGKILL)  # mid stream: some received, some committed, some acked
        assert first.wait() == -signal.SIGKILL
        for n in range(COUNT // 2, COUNT):
            publish(client, "sensors/t", orjson.dumps({"id": n}))  # queued by the broker for the session
        second = ServiceProcess(backend, files)

        def delivered() -> set:
            return {item["id"] for item in endpoint.items if "id" in item}

        assert wait_for(lambda: delivered() == set(range(COUNT)), 60), (
            sorted(set(range(COUNT)) - delivered()),
            curl(files, "/v1/stats")["body"],
            second.log,
        )
        assert wait_for(lambda: {"alarm": "overheat"} in endpoint.items)  # perhaps leased at the kill
        metrics = str(curl(files, "/metrics")["body"])
        assert "cloud_sync_ingest_mqtt_stored_total" in metrics
        assert second.stop() == 0
        client.loop_stop()
        client.disconnect()
    # Kept at least once: the kill may come between the rejects file's sync and the PUBACK.
    lines = [orjson.loads(line) for line in open(rejects, "rb")]
    assert 1 <= len(lines) <= 2, lines
    assert all(line["topic"] == "sensors/bad" and line["reason"].startswith("not valid JSON") for line in lines)
    assert "not json at all" not in first.log + second.log
    assert oct(os.stat(rejects).st_mode & 0o777) == "0o600"


def test_sighup_reopening_the_queue_mid_stream_loses_nothing_and_rejects_are_listed(
    backend: str, files: ServiceFiles, broker: Broker, endpoint: IngestServer
) -> None:
    rejects = os.path.join(files.dir, "rejects.jsonl")
    mqtt_table = mqtt_input(files, broker, rejects)
    files.write(endpoint.url, mqtt_table)
    process = ServiceProcess(backend, files)
    assert wait_for(lambda: curl(files, "/readyz")["status"] == 200), process.log
    client = publisher(broker)
    publish(client, "sensors/bad", b"not json at all")
    with IngestServer(api_key=KEY) as archive:
        table = f'[destinations.archive]\ntype = "https"\nendpoint = "{archive.url}"\napi_key_file = "api-key"\n'
        files.write(endpoint.url, mqtt_table, tables=table)
        for n in range(COUNT // 3):
            publish(client, "sensors/t", orjson.dumps({"id": n}))
        process.signal(signal.SIGHUP)  # mid stream: the input holds its messages while the queue reopens
        for n in range(COUNT // 3, COUNT // 3 * 2):
            publish(client, "sensors/t", orjson.dumps({"id": n}))
        assert wait_for(lambda: "reloaded: reopened the queue" in process.log), process.log
        publish(client, "sensors/t", orjson.dumps({"id": "after"}))
        assert wait_for(lambda: {"id": "after"} in archive.items), process.log
        expected = [*range(COUNT // 3 * 2), "after"]

        def delivered() -> list:
            return [item["id"] for item in endpoint.items if "id" in item]

        assert wait_for(lambda: len(delivered()) >= len(expected)), (set(expected) - set(delivered()), process.log)
        assert sorted(delivered(), key=str) == sorted(expected, key=str), "lost or stored twice"
        assert process.stop() == 0
    client.loop_stop()
    client.disconnect()
    listed = run(backend, "rejects", rejects, "--json")
    assert listed.returncode == 0, listed.stderr
    [kept] = orjson.loads(listed.stdout)
    assert kept["topic"] == "sensors/bad" and kept["payload"] == "not json at all"
    assert kept["reason"].startswith("not valid JSON") and kept["bytes"] == 15
    table_output = run(backend, "rejects", rejects)
    assert "1 MQTT messages kept as rejects" in table_output.stdout and "sensors/bad" in table_output.stdout
