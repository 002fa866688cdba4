"""``cloud-sync`` on a file with several destinations (issue 24): ``--destination`` for stats,
peek, flush and dead-letters, per-destination Prometheus families, and ``check`` of the
delivery bookkeeping. Real files, real loopback ingest servers, the command in a process."""

import hashlib
import sqlite3
from typing import Any, Dict, List

import orjson
import pytest
from clirun import run

from pyv_edge_agent.cloud_sync import CloudSyncQueue, UploadResult
from pyv_edge_agent.cloud_sync._metrics import DESTINATION_BY_KEY, prometheus_text
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "cli-secret-key-123"
TWO = ("iot", "archive")


@pytest.fixture
def two(db_path: str) -> str:
    """A file for iot and archive: 6 items for both, 4 for archive alone, 2 critical for iot alone."""
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        queue.enqueue_many([{"both": n} for n in range(6)])
        queue.enqueue_many([{"archive": n} for n in range(4)], destinations=("archive",))
        queue.enqueue_many([{"alarm": n} for n in range(2)], priority=1, destinations=("iot",))
    return db_path


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.mark.parametrize(
    "command", [["stats"], ["peek"], ["dead-letters"], ["flush", "--endpoint", "http://127.0.0.1:9/ingest"]]
)
def test_an_unknown_destination_is_exit_2_naming_the_option_value_and_choices(
    backend: str, two: str, command: List[str]
) -> None:
    before = _digest(two)
    done = run(backend, command[0], two, *command[1:], "--destination", "cloud", CLOUD_SYNC_API_KEY=KEY)
    assert done.returncode == 2, done.stderr
    assert "--destination 'cloud'" in done.stderr and "['iot', 'archive']" in done.stderr, done.stderr
    assert _digest(two) == before  # refused before the file was opened


def test_a_destination_named_for_a_file_without_destinations_says_it_has_none(backend: str, db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue({"n": 1})
    done = run(backend, "peek", db_path, "--destination", "iot")
    assert done.returncode == 2 and "--destination 'iot'" in done.stderr and "no destinations" in done.stderr


def test_commands_open_the_file_with_every_registered_destination(backend: str, db_path: str) -> None:
    """iot has nothing left to deliver: a queue opened without it would unregister it."""
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        queue.enqueue_many([{"n": n} for n in range(3)], destinations=("archive",))
    for command in (["peek", "--destination", "archive"], ["purge", "--expired"], ["dead-letters"], ["check"]):
        done = run(backend, command[0], db_path, *command[1:])
        assert done.returncode == 0, (command, done.stderr)
    assert CloudSyncQueue.destinations_of(db_path) == TWO


def test_peek_shows_what_one_destination_would_send(backend: str, two: str) -> None:
    iot = orjson.loads(run(backend, "peek", two, "--destination", "iot", "-n", "20", "--json").stdout)
    assert [item["payload"] for item in iot] == [{"alarm": 0}, {"alarm": 1}] + [{"both": n} for n in range(6)]
    archive = run(backend, "peek", two, "--destination", "archive", "-n", "3")
    assert archive.returncode == 0 and "next 3 eligible for archive" in archive.stdout
    several = run(backend, "peek", two)
    assert several.returncode == 2 and "--destination" in several.stderr and "['iot', 'archive']" in several.stderr


def test_flush_delivers_to_the_destination_named_and_leaves_the_other_alone(backend: str, two: str) -> None:
    with IngestServer(api_key=KEY) as server:
        several = run(backend, "flush", two, "--endpoint", server.url, CLOUD_SYNC_API_KEY=KEY)
        assert several.returncode == 2 and "several destinations" in several.stderr, several.stderr
        assert "--destination NAME" in several.stderr and server.requests == []
        done = run(
            backend, "flush", two, "--endpoint", server.url, "--destination", "iot", "--json", CLOUD_SYNC_API_KEY=KEY
        )
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout) == {"flushed": 8, "pending": 0, "failed": False, "destination": "iot"}
        assert server.items[:2] == [{"alarm": 0}, {"alarm": 1}] and len(server.items) == 8
    with IngestServer(api_key=KEY) as down:
        down.set_outage(503)
        failed = run(backend, "flush", two, "--endpoint", down.url, "--destination", "archive", CLOUD_SYNC_API_KEY=KEY)
        assert failed.returncode == 1 and "eligible items to archive" in failed.stdout, failed.stdout
    with CloudSyncQueue(two, destinations=TWO) as queue:
        assert queue.pending_count(destination="iot") == 0
        assert queue.pending_count(destination="archive") == 10


def test_flush_now_ends_the_backoff_of_the_destination_named(backend: str, two: str) -> None:
    with IngestServer(api_key=KEY) as down:
        down.set_outage(503)
        flush = ["flush", two, "--endpoint", down.url, "--destination", "archive"]
        assert run(backend, *flush, CLOUD_SYNC_API_KEY=KEY).returncode == 1
        waiting = run(backend, *flush, CLOUD_SYNC_API_KEY=KEY)
        assert waiting.returncode == 1 and "backing off" in waiting.stdout, waiting.stdout
        down.set_outage(None)
        now = run(backend, *flush, "--now", CLOUD_SYNC_API_KEY=KEY)
        assert now.returncode == 0, now.stdout + now.stderr
        assert "flushed 10 of 10 eligible items to archive; 0 still to deliver to it; done" in now.stdout
    with CloudSyncQueue(two, destinations=TWO) as queue:
        assert queue.pending_count(destination="iot") == 8


def test_a_file_with_one_destination_flushes_without_naming_it(backend: str, db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=("iot",)) as queue:
        queue.enqueue_many([{"n": n} for n in range(5)])
    with IngestServer(api_key=KEY) as server:
        done = run(backend, "flush", db_path, "--endpoint", server.url, "--json", CLOUD_SYNC_API_KEY=KEY)
        assert done.returncode == 0, done.stderr
        assert orjson.loads(done.stdout) == {"flushed": 5, "pending": 0, "failed": False, "destination": "iot"}


def test_stats_shows_the_file_then_each_destination(backend: str, two: str) -> None:
    table = run(backend, "stats", two)
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert any(line.split()[:2] == ["depth", "12"] for line in lines)
    iot_at = lines.index(next(line for line in lines if line.startswith("destination iot of")))
    archive_at = lines.index(next(line for line in lines if line.startswith("destination archive of")))
    depth_rows = [line.split()[:2] for line in lines if line.startswith("depth ")]
    assert depth_rows == [["depth", "12"], ["depth", "8"], ["depth", "10"]] and iot_at < archive_at
    everything = orjson.loads(run(backend, "stats", two, "--json").stdout)
    assert everything["depth"] == 12 and set(everything["destinations"]) == set(TWO)
    archive = orjson.loads(run(backend, "stats", two, "--destination", "archive", "--json").stdout)
    assert archive == everything["destinations"]["archive"] and archive["depth"] == 10
    only = run(backend, "stats", two, "--destination", "iot")
    assert only.returncode == 0 and "destination iot of" in only.stdout and "archive" not in only.stdout


def _samples(text: str) -> Dict[str, Dict[str, float]]:
    """Prometheus samples by family, then by destination label."""
    found: Dict[str, Dict[str, float]] = {}
    for line in text.splitlines():
        if line.startswith("#") or 'destination="' not in line:
            continue
        name, rest = line.split("{", 1)
        label = rest.split('destination="', 1)[1].split('"', 1)[0]
        found.setdefault(name, {})[label] = float(line.rsplit(" ", 1)[1])
    return found


def test_prometheus_labels_each_destination_in_one_family_per_figure(backend: str, two: str) -> None:
    text = run(backend, "stats", two, "--prometheus").stdout
    samples = _samples(text)
    assert samples["cloud_sync_destination_depth"] == {"iot": 8.0, "archive": 10.0}
    assert samples["cloud_sync_destination_messages_sent_total"] == {"iot": 0.0, "archive": 0.0}
    assert "cloud_sync_depth{" in text  # the file's figures stay as they were
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(families) == len(set(families))
    one = _samples(run(backend, "stats", two, "--destination", "archive", "--prometheus").stdout)
    assert one["cloud_sync_destination_depth"] == {"archive": 10.0}


def test_every_destination_figure_has_one_metric_definition(db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        queue.enqueue({"n": 1})
        stats = queue.get_stats()
    for figures in stats["destinations"].values():
        assert set(figures) <= set(DESTINATION_BY_KEY), set(figures) - set(DESTINATION_BY_KEY)
    text = prometheus_text(stats, "/data/q.db")
    assert "cloud_sync_destination_last_error" not in text  # text: not exported


class _RejectOdd:
    """A custom uploader that refuses every odd reading for good."""

    def post_batch(self, payloads: List[Any]) -> UploadResult:
        bad = [index for index, payload in enumerate(payloads) if payload.get("n", 0) % 2]
        return UploadResult(rejected=bad, status=422, error="schema: reading out of range")


def test_dead_letters_of_one_destination(backend: str, db_path: str) -> None:
    with CloudSyncQueue(db_path, destinations=TWO, max_attempts=1) as queue:
        queue.enqueue_many([{"n": n} for n in range(6)])
        assert queue.maybe_flush(_RejectOdd(), destination="iot") == 3
    every = run(backend, "dead-letters", db_path)
    assert every.returncode == 0 and "destination" in every.stdout and "iot" in every.stdout, every.stdout
    iot = orjson.loads(run(backend, "dead-letters", db_path, "--destination", "iot", "--json").stdout)
    assert [letter["payload"] for letter in iot] == [{"n": 1}, {"n": 3}, {"n": 5}]
    assert {letter["destination"] for letter in iot} == {"iot"}
    assert orjson.loads(run(backend, "dead-letters", db_path, "--destination", "archive", "--json").stdout) == []
    first = str(iot[0]["id"])
    requeued = run(backend, "dead-letters", db_path, "--destination", "iot", "--requeue", "--ids", first, "--json")
    assert orjson.loads(requeued.stdout) == {"requeued": 1}, requeued.stderr
    dropped = run(backend, "dead-letters", db_path, "--destination", "iot", "--drop", "--all")
    assert dropped.returncode == 0 and "dropped 2 dead letters" in dropped.stdout
    with CloudSyncQueue(db_path, destinations=TWO) as queue:
        assert [item.payload for item in queue.peek(n=10, destination="iot")] == [{"n": 1}]
        assert queue.pending_count(destination="archive") == 6


def test_check_reports_broken_delivery_bookkeeping(backend: str, two: str) -> None:
    assert run(backend, "check", two).returncode == 0
    conn = sqlite3.connect(two)
    with conn:
        conn.execute("UPDATE sync_routes SET pending = pending + 1 WHERE item_id IN (1, 2, 3)")
    conn.close()
    done = run(backend, "check", two)
    assert done.returncode == 1 and "DAMAGED" in done.stdout
    assert "sync_routes: 3 rows have a pending count" in done.stdout, done.stdout
    report = orjson.loads(run(backend, "check", two, "--json").stdout)
    assert report["ok"] is False and any(message.startswith("sync_routes: 3 rows") for message in report["messages"])
