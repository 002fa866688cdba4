"""SIGHUP to a running ``cloud-sync serve`` that changes its destinations: the queue is
reopened without losing what is enqueued or in flight, and a removal that would drop
undelivered items is refused like a broken file."""

import signal
import threading
from typing import Dict, List, Tuple

import orjson
from servicerun import KEY, HoldingEndpoint, ServiceFiles, ServiceProcess, curl, free_port
from waiting import wait_for

from pyv_edge_agent.cloud_sync import CloudSyncQueue
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer


def archive(url: str) -> str:
    """A second destination's table, posting to ``url``."""
    return (
        f'[destinations.archive]\ntype = "https"\nendpoint = "{url}"\napi_key_file = "api-key"\nretry_max_seconds = 1\n'
    )


def cloud_items(holding: HoldingEndpoint) -> List[Dict[str, str]]:
    return [item for body in holding.bodies for item in orjson.loads(body)]


def post(files: ServiceFiles, body: str, *args: str) -> dict:
    return curl(files, "/v1/items", "-X", "POST", "--data-binary", body, *args)


def test_sighup_adds_and_removes_a_destination_with_a_batch_in_flight(
    backend: str, files: ServiceFiles, holding: HoldingEndpoint, endpoint: IngestServer
) -> None:
    files.write(holding.url)
    process = ServiceProcess(backend, files)
    assert post(files, '{"in": "flight"}')["status"] == 201
    assert holding.received.wait(30)
    files.write(holding.url, tables=archive(endpoint.url))
    process.signal(signal.SIGHUP)
    assert wait_for(lambda: "reload: reopening the queue for ['archive', 'cloud']" in process.log), process.log
    # While the cloud worker settles its batch in flight the old queue still takes items
    # (only the moment the file is closed answers 503): this one goes to cloud alone.
    assert post(files, '{"while": "reopening"}')["status"] == 201
    holding.release.set()
    assert wait_for(lambda: "reloaded: reopened the queue for ['archive', 'cloud']" in process.log), process.log
    assert post(files, '{"after": "adding"}')["status"] == 201
    assert wait_for(lambda: {"after": "adding"} in endpoint.items)
    assert wait_for(lambda: len(cloud_items(holding)) == 3), holding.bodies
    assert "take effect at the next restart" not in process.log

    files.write(holding.url)  # archive delivered everything: it may go
    process.signal(signal.SIGHUP)
    assert wait_for(lambda: "reloaded: reopened the queue for ['cloud']" in process.log), process.log
    unknown = post(files, '{"to": "archive"}', "-H", "X-Destinations: archive")
    assert unknown["status"] == 400
    assert process.stop() == 0
    sent = [{"in": "flight"}, {"while": "reopening"}, {"after": "adding"}]
    assert cloud_items(holding) == sent, "an item was lost or sent twice"
    assert endpoint.items == [{"after": "adding"}]
    with CloudSyncQueue(files.db, destinations=("cloud",)) as queue:
        assert queue.pending_count() == 0
    assert KEY not in process.log


def test_sighup_refuses_to_remove_a_destination_with_items_left_and_keeps_running(
    backend: str, files: ServiceFiles, endpoint: IngestServer
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}/v1/ingest"
    files.write(endpoint.url, tables=archive(unreachable))
    process = ServiceProcess(backend, files)
    assert post(files, '{"kept": 1}')["status"] == 201
    assert wait_for(lambda: {"kept": 1} in endpoint.items)
    files.write(endpoint.url, destination="max_batch_items = 7")  # archive left out with an item
    process.signal(signal.SIGHUP)
    assert wait_for(lambda: "reload refused, keeping the running configuration" in process.log), process.log
    assert "'archive' is missing but still has 1 items to deliver" in process.log
    assert "remove_destination('archive')" in process.log
    assert "reloaded" not in process.log
    assert post(files, '{"kept": 2}')["status"] == 201
    assert wait_for(lambda: {"kept": 2} in endpoint.items), "the running configuration was not kept"
    assert curl(files, "/readyz")["status"] == 200
    assert process.stop() == 0
    with CloudSyncQueue(files.db, destinations=("cloud", "archive")) as queue:
        assert queue.pending_count("archive") == 2 and queue.pending_count("cloud") == 0


def test_producers_posting_through_a_reopen_get_201_or_503_and_lose_nothing(
    backend: str, files: ServiceFiles, endpoint: IngestServer
) -> None:
    files.write(endpoint.url)
    process = ServiceProcess(backend, files)
    answers: List[Tuple[int, str]] = []
    done = threading.Event()

    def produce() -> None:
        n = 0
        while not done.is_set():
            answer = post(files, f'{{"n": {n}}}', "-i")
            answers.append((int(str(answer["status"])), str(answer["body"])))
            n += 1

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert wait_for(lambda: len(answers) >= 5)
        with IngestServer(api_key=KEY) as second:
            files.write(endpoint.url, tables=archive(second.url), destination="max_batch_items = 3")
            process.signal(signal.SIGHUP)
            assert wait_for(lambda: "reloaded: reopened the queue" in process.log), process.log
            count = len(answers)
            assert wait_for(lambda: len(answers) >= count + 5)
            done.set()
            producer.join(60)
            stored = {n for n, (status, _) in enumerate(answers) if status == 201}
            assert wait_for(lambda: {item["n"] for item in endpoint.items} >= stored), process.log
            assert len(endpoint.items) == len(stored), "an item was stored twice or a refused one stored"
            assert wait_for(lambda: second.items), "the added destination gets nothing"
            assert process.stop() == 0
    finally:
        done.set()
        producer.join(60)
    refused = [body for status, body in answers if status != 201]
    assert all("503" in body.splitlines()[0] and "Retry-After: 1" in body for body in refused), refused
