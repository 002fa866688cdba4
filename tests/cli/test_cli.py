"""The ``cloud-sync`` command, run as a user would: a subprocess, a real database file and a
real loopback ingest server. The subprocess uses the backend under test."""

import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from typing import Any, List

import orjson
import pytest
import urllib3
from clirun import cli_env, run

from pyv_edge_agent.cloud_sync import CloudSyncQueue, Priority, UploadResult
from pyv_edge_agent.cloud_sync._codec._env import no_extensions
from pyv_edge_agent.cloud_sync._metrics import BY_KEY, prometheus_text
from pyv_edge_agent.cloud_sync.testing.ingest_server import IngestServer

KEY = "cli-secret-key-123"


@pytest.fixture
def filled(db_path: str) -> str:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"i": i} for i in range(30)])
        queue.enqueue({"alert": "overheat"}, priority=Priority.CRITICAL)
        queue.nack([1, 2], retry_delay_seconds=3600)
    return db_path


def test_every_subcommand_has_help(backend: str) -> None:
    top = run(backend, "--help")
    assert top.returncode == 0
    commands = "demo stats peek flush purge check dead-letters ingest-server serve check-config bench".split()
    for command in commands:
        assert command in top.stdout
        done = run(backend, command, "--help")
        assert done.returncode == 0 and "usage: cloud-sync" in done.stdout, command


def test_demo_drains_in_priority_order(backend: str) -> None:
    done = run(backend, "demo", "--items", "60")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    table = {
        line.split()[0]: line.split()
        for line in lines
        if line.split()[:1] in (["CRITICAL"], ["ANOMALY"], ["TELEMETRY"], ["LOGS"])
    }
    assert table["CRITICAL"][1:4] == ["2", "2", "1-2"]
    assert table["ANOMALY"][1:4] == ["8", "8", "3-10"]
    assert table["TELEMETRY"][1:4] == ["60", "60", "11-70"]
    assert table["LOGS"][1:4] == ["20", "20", "71-90"]
    assert "0 left in the queue" in done.stdout
    assert "the uplink goes down" in done.stdout


def test_stats_table_json_and_prometheus(backend: str, filled: str) -> None:
    table = run(backend, "stats", filled)
    assert table.returncode == 0
    assert any(line.split()[:2] == ["depth", "31"] for line in table.stdout.splitlines())
    assert "ago" in table.stdout  # oldest item shown as an age
    stats = orjson.loads(run(backend, "stats", filled, "--json").stdout)
    assert stats["depth"] == 31 and stats["retrying_items"] == 2 and stats["total_retries"] == 2
    text = run(backend, "stats", filled, "--prometheus").stdout
    samples = {
        line.split("{")[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if not line.startswith("#")
    }
    assert samples["cloud_sync_depth"] == 31 and samples["cloud_sync_retrying_items"] == 2
    assert f'db="{os.path.abspath(filled)}"' in text


def test_peek_json_and_priority_filter(backend: str, filled: str) -> None:
    items = orjson.loads(run(backend, "peek", filled, "-n", "3", "--json").stdout)
    assert [item["payload"] for item in items] == [{"alert": "overheat"}, {"i": 2}, {"i": 3}]
    only = orjson.loads(run(backend, "peek", filled, "--priority", "critical", "--json").stdout)
    assert [item["priority"] for item in only] == [1]
    table = run(backend, "peek", filled, "-n", "2")
    assert table.returncode == 0 and "CRITICAL" in table.stdout and '{"alert":"overheat"}' in table.stdout


def test_flush_with_key_from_environment_and_file(backend: str, filled: str, tmp_path: Any) -> None:
    with IngestServer(api_key=KEY) as server:
        missing = run(backend, "flush", filled, "--endpoint", server.url)
        assert missing.returncode == 2 and "CLOUD_SYNC_API_KEY" in missing.stderr
        done = run(backend, "flush", filled, "--endpoint", server.url, "--json", CLOUD_SYNC_API_KEY=KEY)
        assert done.returncode == 0, done.stderr
        answer = orjson.loads(done.stdout)
        assert answer.pop("next_attempt_in") > 3000  # the two nacked items wait, and the output says so
        assert answer == {"flushed": 29, "pending": 2, "failed": False}
        assert server.items[0] == {"alert": "overheat"}
        with CloudSyncQueue(filled) as queue:
            queue.enqueue({"late": True})
        key_file = os.path.join(tmp_path, "key")
        with open(key_file, "w") as handle:
            handle.write(KEY + "\n")
        done = run(backend, "flush", filled, "--endpoint", server.url, "--api-key-file", key_file)
        assert done.returncode == 0 and "flushed 1 of 1" in done.stdout
        assert KEY not in done.stdout + done.stderr


def test_flush_takes_the_endpoint_from_a_file_or_the_environment(backend: str, filled: str, tmp_path: Any) -> None:
    """An endpoint with a credential in its query string stays out of the command line (and /proc)."""
    secret = "query-secret-0123"
    with IngestServer(api_key=KEY) as server:
        url = f"{server.url}?code={secret}"
        nowhere = run(backend, "flush", filled, CLOUD_SYNC_API_KEY=KEY)
        assert nowhere.returncode == 2
        assert "--endpoint-file" in nowhere.stderr and "CLOUD_SYNC_ENDPOINT" in nowhere.stderr
        endpoint_file = os.path.join(tmp_path, "endpoint")
        with open(endpoint_file, "w") as handle:
            handle.write(url + "\n")
        from_file = run(backend, "flush", filled, "--endpoint-file", endpoint_file, "--json", CLOUD_SYNC_API_KEY=KEY)
        assert from_file.returncode == 0, from_file.stderr
        assert orjson.loads(from_file.stdout)["flushed"] == 29
        with CloudSyncQueue(filled) as queue:
            queue.enqueue({"late": True})
        from_env = run(backend, "flush", filled, CLOUD_SYNC_API_KEY=KEY, CLOUD_SYNC_ENDPOINT=url)
        assert from_env.returncode == 0 and "flushed 1 of 1" in from_env.stdout, from_env.stderr
        both = run(backend, "flush", filled, "--endpoint", url, "--endpoint-file", endpoint_file)
        assert both.returncode == 2 and "not allowed with" in both.stderr
    shown = [nowhere, from_file, from_env, both]
    assert all(secret not in done.stdout + done.stderr for done in shown)
    helptext = run(backend, "flush", "--help").stdout
    assert "--endpoint-file" in helptext and "CLOUD_SYNC_ENDPOINT" in helptext


def test_flush_that_fails_exits_1_and_keeps_items(backend: str, filled: str) -> None:
    with IngestServer(api_key=KEY) as server:
        server.set_outage(503)
        done = run(backend, "flush", filled, "--endpoint", server.url, CLOUD_SYNC_API_KEY=KEY)
    assert done.returncode == 1
    assert "failed batch" in done.stdout and KEY not in done.stdout + done.stderr
    with CloudSyncQueue(filled) as queue:
        assert queue.pending_count() == 31


def test_ingest_server_records_and_stops_on_sigterm(backend: str, tmp_path: Any) -> None:
    record = os.path.join(tmp_path, "received.jsonl")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pyv_edge_agent.cloud_sync",
            "--plain",
            "ingest-server",
            "--port",
            "0",
            "--record",
            record,
            "--fail-first",
            "1",
            "--fail-status",
            "429",
            "--api-key-env",
            "CLOUD_SYNC_TEST_KEY",
        ],
        env=cli_env(backend, CLOUD_SYNC_TEST_KEY=KEY),
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split(" on ")[1].split()[0]
        http = urllib3.PoolManager()
        headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
        statuses = [http.request("POST", url, body=b'[{"a":1},{"b":2}]', headers=headers).status for _ in range(2)]
        assert statuses == [429, 200]
        assert http.request("POST", url, body=b"[]", headers={"Authorization": "Bearer wrong"}).status == 401
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "received 2 items in 1 batches" in out
    with open(record) as handle:
        assert [orjson.loads(line) for line in handle] == [{"a": 1}, {"b": 2}]


def test_bench_prints_both_backends(backend: str) -> None:
    done = run(backend, "bench", "--items", "1000", "--rounds", "2", "--json")
    assert done.returncode == 0, done.stderr
    rows = orjson.loads(done.stdout)
    assert [row["operation"] for row in rows][0].startswith("enqueue")
    # A pure-Python install (PYV_EDGE_AGENT_NO_EXTENSIONS=1) has no compiled column to fill.
    compiled = not no_extensions()
    assert all(row["python"] > 0 and (row["cython"] > 0 if compiled else row["cython"] is None) for row in rows)


class _RejectOdd:
    """A custom uploader that refuses every odd reading for good."""

    def post_batch(self, payloads: List[Any]) -> UploadResult:
        bad = [index for index, payload in enumerate(payloads) if payload.get("i", 0) % 2]
        return UploadResult(rejected=bad, status=422, error="schema: reading out of range")


def test_dead_letters_list_requeue_and_drop(backend: str, db_path: str) -> None:
    with CloudSyncQueue(db_path, max_attempts=1) as queue:
        queue.enqueue_many([{"i": i} for i in range(6)])
        assert queue.maybe_flush(_RejectOdd()) == 3
        assert queue.get_stats()["dead_lettered"] == 3
    table = run(backend, "dead-letters", db_path)
    assert table.returncode == 0 and "422" in table.stdout and "schema: reading out of range" in table.stdout
    listed = orjson.loads(run(backend, "dead-letters", db_path, "--json").stdout)
    assert [letter["payload"] for letter in listed] == [{"i": 1}, {"i": 3}, {"i": 5}]
    first = str(listed[0]["id"])
    assert run(backend, "dead-letters", db_path, "--requeue").returncode == 2  # no ids and no --all
    assert run(backend, "dead-letters", db_path, "--ids", first).returncode == 2  # ids without an action
    requeued = run(backend, "dead-letters", db_path, "--requeue", "--ids", first, "--json")
    assert orjson.loads(requeued.stdout) == {"requeued": 1}
    dropped = run(backend, "dead-letters", db_path, "--drop", "--all")
    assert dropped.returncode == 0 and "dropped 2 dead letters" in dropped.stdout
    with CloudSyncQueue(db_path) as queue:
        assert [item.payload for item in queue.peek(n=10)] == [{"i": 1}]
        assert queue.dead_letters() == []


def test_purge_expired(backend: str, db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        queue.enqueue_many([{"short": i} for i in range(4)], ttl_seconds=0)
        queue.enqueue({"keep": True})
    assert run(backend, "purge", db_path).returncode == 2  # nothing named to purge
    done = run(backend, "purge", db_path, "--expired", "--json")
    assert done.returncode == 0 and orjson.loads(done.stdout) == {"purged_expired": 4}
    assert "purged 0 expired items" in run(backend, "purge", db_path, "--expired").stdout
    with CloudSyncQueue(db_path) as queue:
        assert queue.pending_count() == 1 and queue.get_stats()["expired_purged_total"] == 4


def test_check_reports_integrity_without_writing(backend: str, filled: str, tmp_path: Any) -> None:
    done = run(backend, "check", filled)
    assert done.returncode == 0 and "integrity ok" in done.stdout
    report = orjson.loads(run(backend, "check", filled, "--json").stdout)
    assert report["ok"] is True and report["schema_version"] == report["supported_schema_version"]
    truncated = os.path.join(tmp_path, "truncated.db")
    with open(filled, "rb") as source, open(truncated, "wb") as target:
        target.write(source.read(4096))
    before = open(truncated, "rb").read()
    damaged = run(backend, "check", truncated, "--json")
    assert damaged.returncode == 1
    assert orjson.loads(damaged.stdout)["ok"] is False and "truncated" in damaged.stdout
    assert open(truncated, "rb").read() == before
    assert not any(name.startswith("truncated.db-") for name in os.listdir(tmp_path))
    assert run(backend, "check", os.path.join(tmp_path, "missing.db")).returncode == 2


def test_errors_have_distinct_exit_codes(backend: str, tmp_path: Any) -> None:
    missing = run(backend, "stats", os.path.join(tmp_path, "nope.db"))
    assert missing.returncode == 2 and "no queue database" in missing.stderr
    assert not os.path.exists(os.path.join(tmp_path, "nope.db"))
    junk = os.path.join(tmp_path, "junk.db")
    with open(junk, "wb") as handle:
        handle.write(b"not a database" * 100)
    broken = run(backend, "stats", junk)
    assert broken.returncode == 3 and "junk.db" in broken.stderr
    assert run(backend, "peek", junk, "-n", "0").returncode == 2
    assert run(backend, "frobnicate").returncode == 2


def test_every_stats_key_has_one_metric_definition(queue: CloudSyncQueue) -> None:
    stats = queue.get_stats()
    assert set(stats) <= set(BY_KEY), set(stats) - set(BY_KEY)
    text = prometheus_text(stats, "/data/q.db")
    names = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE")]
    assert len(names) == len(set(names))
    assert "cloud_sync_oldest_item_timestamp" not in text  # None on an empty queue: left out


def test_api_key_file_loses_one_newline_and_must_be_one_line(backend: str, filled: str, tmp_path: Any) -> None:
    key_file = os.path.join(tmp_path, "key")
    with IngestServer(api_key=KEY) as server:
        for content in (KEY + "\n" + "second-line\n", KEY + "\n\n", "\n" + KEY):
            with open(key_file, "w", newline="") as handle:
                handle.write(content)
            done = run(backend, "flush", filled, "--endpoint", server.url, "--api-key-file", key_file)
            assert done.returncode == 2 and "more than one line" in done.stderr, (content, done.stderr)
            assert KEY not in done.stdout + done.stderr and server.requests == []
        with open(key_file, "w", newline="") as handle:
            handle.write(KEY + "\r\n")
        done = run(backend, "flush", filled, "--endpoint", server.url, "--api-key-file", key_file)
        assert done.returncode == 0, done.stderr


def test_ingest_server_refuses_to_serve_without_the_key_it_was_told_to_require(backend: str) -> None:
    unset = run(backend, "ingest-server", "--port", "0", "--api-key-env", "CLOUD_SYNC_UNSET_KEY", timeout=30)
    assert unset.returncode == 2 and "CLOUD_SYNC_UNSET_KEY" in unset.stderr
    exposed = run(backend, "ingest-server", "--port", "0", "--host", "0.0.0.0", timeout=30)
    assert exposed.returncode == 2 and "not loopback" in exposed.stderr


_PEAK_RSS_OF_FLUSH = """
import resource, sys
from pyv_edge_agent.cloud_sync import cli
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = cli.main(["--plain", "flush", sys.argv[1], "--endpoint", sys.argv[2], "--json"])
print(code, (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024)
"""


def test_flush_sizes_its_progress_bar_without_decoding_the_backlog(backend: str, db_path: str) -> None:
    """100,000 stored items of 1 KB decode to well over 100 MiB; counting them costs nothing."""
    with CloudSyncQueue(db_path, durability="fast") as queue:
        queue.enqueue_many([{"i": i, "text": "x" * 1000} for i in range(100_000)])
    with IngestServer(api_key=KEY) as server:
        server.set_outage(503)
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS_OF_FLUSH, db_path, server.url],
            env=cli_env(backend, CLOUD_SYNC_API_KEY=KEY), capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    code, growth = done.stdout.split()[-2:]
    assert code == "1" and int(growth) < 32 * 1024 * 1024, (done.stdout, done.stderr)


# Makes the optional dependencies unimportable in the subprocess, as in an install without
# the extras: a sitecustomize that Python runs at start-up.
BLOCK_EXTRAS = """
import sys

class _Missing:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in ("cryptography", "paho"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Missing())
"""


def test_a_missing_extra_is_one_line_naming_the_install(backend: str, filled: str, tmp_path: Any) -> None:
    shim = os.path.join(tmp_path, "no-extras")
    os.mkdir(shim)
    with open(os.path.join(shim, "sitecustomize.py"), "w") as handle:
        handle.write(BLOCK_EXTRAS)
    key_file = os.path.join(tmp_path, "queue.key")
    with open(key_file, "w") as handle:
        handle.write("00" * 32)
    blocked = {"PYTHONPATH": shim, "CLOUD_SYNC_API_KEY": KEY}
    calls = {
        "crypto": [
            ["peek", filled, "--key-file", key_file],
            ["dead-letters", filled, "--key-file", key_file],
            ["rekey", filled, "--key-file", key_file],
            ["flush", filled, "--endpoint", "http://127.0.0.1:9/ingest", "--key-file", key_file],
        ],
        "mqtt": [["flush", filled, "--mqtt", "mqtt://127.0.0.1:1883", "--topic", "t"]],
    }
    for extra, commands in calls.items():
        for command in commands:
            done = run(backend, *command, **blocked)
            assert done.returncode == 2, (command, done.stderr)
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
            assert f"pip install 'pyv-edge-agent[{extra}]'" in done.stderr, done.stderr
    with CloudSyncQueue(filled) as queue:
        assert queue.pending_count() == 31  # nothing was touched


def test_flush_in_a_backoff_says_so_and_now_ends_it(backend: str, db_path: str) -> None:
    with CloudSyncQueue(db_path) as queue:
        ids = queue.enqueue_many([{"i": i} for i in range(22)])
        queue.nack(ids, retry_delay_seconds=249)  # as a failed upload leaves them
    with IngestServer(api_key=KEY) as server:
        waiting = run(backend, "flush", db_path, "--endpoint", server.url, CLOUD_SYNC_API_KEY=KEY)
        # Not "done": nothing went, and the operator must see why and until when.
        assert waiting.returncode == 1, waiting.stderr
        assert "done" not in waiting.stdout and "backing off" in waiting.stdout, waiting.stdout
        assert "next attempt is due in 4m" in waiting.stdout and "--now" in waiting.stdout, waiting.stdout
        as_json = run(backend, "flush", db_path, "--endpoint", server.url, "--json", CLOUD_SYNC_API_KEY=KEY)
        assert as_json.returncode == 1
        answer = orjson.loads(as_json.stdout)
        assert answer["flushed"] == 0 and answer["pending"] == 22 and 200 < answer["next_attempt_in"] <= 249
        assert server.items == []
        now = run(backend, "flush", db_path, "--endpoint", server.url, "--now", CLOUD_SYNC_API_KEY=KEY)
        assert now.returncode == 0, now.stdout + now.stderr
        assert "flushed 22 of 22 eligible items; 0 stored; done" in now.stdout
        assert sorted(item["i"] for item in server.items) == list(range(22))
    assert "--now" in run(backend, "flush", "--help").stdout


def _foreign_database(path: str, journal: str) -> None:
    """Another application's SQLite file: its own table, its own user_version."""
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA journal_mode = {journal}")
    conn.execute("CREATE TABLE readings (sensor TEXT, value REAL)")
    conn.executemany("INSERT INTO readings VALUES (?, ?)", [("boiler", float(i)) for i in range(100)])
    conn.execute("PRAGMA user_version = 7")
    conn.commit()
    conn.close()


@pytest.mark.parametrize("journal", ["delete", "wal"])
@pytest.mark.parametrize(
    "command",
    [["stats"], ["stats", "--json"], ["peek"], ["dead-letters"], ["check"], ["purge", "--expired"]],
    ids=" ".join,
)
def test_commands_refuse_a_file_that_is_not_a_queue_and_leave_it_alone(
    backend: str, tmp_path: Any, command: List[str], journal: str
) -> None:
    """Inspection used to add the queue's tables to another application's file, set its
    user_version and switch it to WAL. It now reads it read-only and refuses: exit 3 and
    one line on stderr naming the file."""
    path = os.path.join(tmp_path, "other-app.db")
    _foreign_database(path, journal)
    before = {
        name: hashlib.sha256(open(os.path.join(tmp_path, name), "rb").read()).hexdigest()
        for name in os.listdir(tmp_path)
    }
    done = run(backend, command[0], path, *command[1:])
    assert done.returncode == 3, done.stdout + done.stderr
    assert len(done.stderr.splitlines()) == 1 and path in done.stderr and "not a queue" in done.stderr, done.stderr
    after = {
        name: hashlib.sha256(open(os.path.join(tmp_path, name), "rb").read()).hexdigest()
        for name in os.listdir(tmp_path)
    }
    assert {name: after.get(name) for name in before} == before
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == 7
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == journal
        assert [row[0] for row in conn.execute("SELECT name FROM sqlite_master")] == ["readings"]
    finally:
        conn.close()


def test_an_empty_file_is_not_a_queue_either(backend: str, tmp_path: Any) -> None:
    path = os.path.join(tmp_path, "empty.db")
    open(path, "wb").close()
    done = run(backend, "stats", path)
    assert done.returncode == 3 and "not a queue" in done.stderr and len(done.stderr.splitlines()) == 1
    assert os.path.getsize(path) == 0 and os.listdir(tmp_path) == ["empty.db"]
