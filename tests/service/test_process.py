"""``cloud-sync serve`` as systemd runs it: kill -9 after a 201, SIGTERM with a batch in
flight, SIGHUP with a broken and with a changed file, the notify socket, and a full file."""

import os
import signal
import socket
from typing import List

from servicerun import KEY, TOKEN, HoldingEndpoint, ServiceFiles, ServiceProcess, curl, free_port
from waiting import wait_for

from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer


def post(files: ServiceFiles, body: str, *args: str) -> dict:
    return curl(files, "/v1/items", "-X", "POST", "--data-binary", body, *args)


def test_kill_9_after_201_and_the_item_is_delivered_after_a_restart(backend: str, files: ServiceFiles) -> None:
    port = free_port()
    files.write(f"http://127.0.0.1:{port}/v1/ingest")  # nothing listens there yet
    first = ServiceProcess(backend, files)
    assert post(files, '{"reading": 42}')["status"] == 201
    first.signal(signal.SIGKILL)
    assert first.wait() == -signal.SIGKILL
    with IngestServer(port, api_key=KEY) as endpoint:
        second = ServiceProcess(backend, files)
        assert wait_for(lambda: {"reading": 42} in endpoint.items), second.log
        assert second.stop() == 0


def test_sigterm_answers_503_finishes_the_batch_in_flight_and_exits_0(
    backend: str, files: ServiceFiles, holding: HoldingEndpoint
) -> None:
    files.write(holding.url)
    process = ServiceProcess(backend, files)
    assert post(files, '{"last": "words"}')["status"] == 201
    assert holding.received.wait(30)
    process.signal(signal.SIGTERM)
    assert wait_for(lambda: "stopping" in process.log)
    refused = post(files, '{"too": "late"}', "-i")
    assert refused["status"] == 503 and "Retry-After: 5" in str(refused["body"])
    assert curl(files, "/readyz")["status"] == 503
    holding.release.set()
    assert process.wait() == 0, process.log
    assert "stopped" in process.log and not os.path.exists(files.socket)
    with CloudSyncQueue(files.db, destinations=("cloud",)) as queue:
        assert queue.pending_count() == 0, "the batch in flight was not acked before the exit"
    assert holding.bodies == [b'[{"last":"words"}]']


def test_sighup_keeps_the_running_configuration_when_the_file_is_broken(
    backend: str, files: ServiceFiles, holding: HoldingEndpoint
) -> None:
    holding.release.set()
    files.write(holding.url)
    good = open(files.config).read()
    process = ServiceProcess(backend, files)
    with open(files.config, "w") as handle:
        handle.write(good.replace("max_body_bytes", "").replace("[ingest]", "[ingest]\nport = 1"))
    process.signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused, keeping the running configuration" in process.log)
    assert "ingest.port: unknown key" in process.log
    assert post(files, '{"after": "broken reload"}')["status"] == 201
    assert wait_for(lambda: b'[{"after":"broken reload"}]' in holding.bodies)
    with open(files.config, "w") as handle:
        handle.write(good.replace("retry_max_seconds = 1", "retry_max_seconds = 1\ntimeout = 5"))
    process.signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded: new uploaders for ['cloud']" in process.log), process.log
    assert "take effect at the next restart" not in process.log
    assert post(files, '{"after": "good reload"}')["status"] == 201
    assert wait_for(lambda: b'[{"after":"good reload"}]' in holding.bodies)
    with open(os.path.join(files.dir, "token"), "w") as handle:
        handle.write("a-rotated-token\n")
    process.signal(signal.SIGHUP)
    assert wait_for(lambda: "the new ingest token is in use" in process.log), process.log
    assert wait_for(lambda: "reloaded: no destination's uploader changed" in process.log), process.log
    assert curl(files, "/healthz", tcp=True, token=TOKEN)["status"] == 401
    assert curl(files, "/healthz", tcp=True, token="a-rotated-token")["status"] == 200
    assert process.stop() == 0
    assert KEY not in process.log


def test_notify_socket_gets_ready_watchdog_and_stopping(backend: str, files: ServiceFiles) -> None:
    files.write(f"http://127.0.0.1:{free_port()}/v1/ingest")
    path = os.path.join(files.dir, "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as listener:
        listener.bind(path)
        listener.settimeout(30)
        process = ServiceProcess(backend, files, NOTIFY_SOCKET=path, WATCHDOG_USEC="400000")
        seen: List[str] = []
        while not any("WATCHDOG=1" in message for message in seen):
            seen.append(listener.recv(4096).decode())
        assert seen[0].startswith("READY=1\nSTATUS=serving; 0 items queued")
        process.signal(signal.SIGTERM)
        while not seen[-1].startswith("STOPPING=1"):
            seen.append(listener.recv(4096).decode())
        assert process.wait() == 0


def test_a_full_file_answers_507_with_retry_after(backend: str, files: ServiceFiles) -> None:
    files.write(f"http://127.0.0.1:{free_port()}/v1/ingest", queue="max_queue_items = 2")
    process = ServiceProcess(backend, files)
    for n in range(2):
        assert post(files, f'{{"alarm": {n}}}', "-H", "X-Priority: critical")["status"] == 201
    full = post(files, '{"alarm": 2}', "-H", "X-Priority: critical", "-i")
    assert full["status"] == 507
    assert "Retry-After: 10" in str(full["body"]) and "storage is full" in str(full["body"])
    assert process.stop() == 0
    with CloudSyncQueue(files.db, destinations=("cloud",)) as queue:
        assert queue.pending_count() == 2
