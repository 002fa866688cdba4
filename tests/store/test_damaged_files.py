"""Files the queue cannot trust: truncated, not a database, damaged pages, read-only files
and directories, a missing mount. Each gives a clear error naming the path and leaves the
file as it was; ``on_corrupt="quarantine"`` moves a damaged file aside and starts afresh."""

import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from typing import Any, Dict, Iterator

import pytest
import rawsql
from mounts import remount_read_only, tmpfs_dir

from pyv_edge_agent.cloud_sync import CloudSyncQueue, CorruptDatabaseError, DatabaseError
from pyv_edge_agent.cloud_sync._store.schema import SCHEMA_VERSION


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _listing(directory: str) -> Dict[str, str]:
    return {name: _digest(os.path.join(directory, name)) for name in sorted(os.listdir(directory))}


def _make_queue_file(path: str, items: int = 3000) -> None:
    with CloudSyncQueue(path, min_free_disk_bytes=0) as queue:
        queue.enqueue_many([{"i": i, "pad": "p" * 200} for i in range(items)])
    assert not os.path.exists(path + "-wal")  # the last close checkpointed into the file


def _damage_a_page(path: str) -> None:
    # A page in the middle of the file holds queue rows, away from the schema and sync_meta.
    conn = sqlite3.connect(path)
    page_size, pages = (conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count"))
    conn.close()
    with open(path, "r+b") as handle:
        handle.seek(pages // 2 * page_size)
        handle.write(b"\xa5" * page_size)


@pytest.fixture
def directory(tmp_path: Any) -> str:
    return os.fspath(tmp_path)


@pytest.mark.parametrize("keep", [50, 4096 * 3 + 100, "half"])
def test_truncated_file_is_refused_and_untouched(directory: str, keep: Any) -> None:
    path = os.path.join(directory, "q.db")
    _make_queue_file(path)
    os.truncate(path, os.path.getsize(path) // 2 if keep == "half" else keep)
    before = _listing(directory)
    with pytest.raises(CorruptDatabaseError, match="truncated") as excinfo:
        CloudSyncQueue(path)
    assert path in str(excinfo.value)
    assert _listing(directory) == before


def test_damaged_page_is_a_clear_error_and_the_file_is_not_written(directory: str) -> None:
    path = os.path.join(directory, "q.db")
    _make_queue_file(path)
    _damage_a_page(path)
    digest = _digest(path)
    with CloudSyncQueue(path) as queue:  # the header is sound: the damage shows on use
        with pytest.raises(CorruptDatabaseError) as excinfo:
            queue.dequeue(batch_size=3000)
        assert path in str(excinfo.value)
        report = queue.verify()
        assert not report.ok and report.schema_version == SCHEMA_VERSION and report.path == path
        assert report.messages and report.message
    assert _digest(path) == digest


def test_verify_reports_a_sound_file(queue: CloudSyncQueue) -> None:
    queue.enqueue({"a": 1})
    report = queue.verify()
    assert report.ok and report.messages == ("ok",) and report.schema_version == SCHEMA_VERSION


@pytest.mark.parametrize("damage", ["truncate", "page", "garbage"])
def test_quarantine_moves_the_file_aside_and_starts_afresh(
    directory: str, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = os.path.join(directory, "q.db")
    _make_queue_file(path)
    if damage == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "page":
        _damage_a_page(path)
    else:
        with open(path, "wb") as handle:
            handle.write(b"\x00garbage" * 1000)
    with open(path + "-wal", "wb") as handle:
        handle.write(b"a stale WAL that must not be replayed into the new file")
    originals = {path: _digest(path), path + "-wal": _digest(path + "-wal")}
    with caplog.at_level(logging.ERROR, logger="pyv_edge_agent.cloud_sync"):
        queue = CloudSyncQueue(path, on_corrupt="quarantine", clock=lambda: 1_800_000_000.0)
    with queue:
        # The -shm (SQLite's scratch index of the WAL) may go aside too.
        aside = sorted(name for name in os.listdir(directory) if ".corrupt-" in name and not name.endswith("-shm"))
        assert aside == ["q.db.corrupt-20270115T080000Z", "q.db.corrupt-20270115T080000Z-wal"]
        assert _digest(os.path.join(directory, aside[0])) == originals[path]
        assert _digest(os.path.join(directory, aside[1])) == originals[path + "-wal"]
        assert queue.pending_count() == 0
        queue.enqueue({"fresh": True})
        assert queue.get_stats()["quarantined_total"] == 1
        assert queue.verify().ok
    assert any("moved it to" in r.getMessage() for r in caplog.records)


def test_damage_found_while_running_is_quarantined_on_the_next_call(directory: str) -> None:
    path = os.path.join(directory, "q.db")
    _make_queue_file(path)
    with CloudSyncQueue(path, on_corrupt="quarantine") as queue:
        _damage_a_page(path)
        rawsql.execute(queue, "PRAGMA cache_size = 0")  # read the damaged page from disk
        with pytest.raises(CorruptDatabaseError):
            queue.dequeue(batch_size=3000)
        assert queue.enqueue({"after": "quarantine"}) == 1
        assert queue.get_stats()["quarantined_total"] == 1
    aside = [name for name in os.listdir(directory) if ".corrupt-" in name and not name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1


def test_newer_schema_is_never_quarantined(db_path: str) -> None:
    CloudSyncQueue(db_path).close()
    conn = sqlite3.connect(db_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(DatabaseError, match="newer release") as excinfo:
        CloudSyncQueue(db_path, on_corrupt="quarantine")
    assert not isinstance(excinfo.value, CorruptDatabaseError)
    # Only the lock that serialises quarantines is new beside it.
    assert sorted(os.listdir(os.path.dirname(db_path))) == ["sync.db", "sync.db.quarantine-lock"]


def test_a_directory_in_place_of_the_file(directory: str) -> None:
    path = os.path.join(directory, "q.db")
    os.mkdir(path)
    with pytest.raises(DatabaseError, match="not a regular file"):
        CloudSyncQueue(path, on_corrupt="quarantine")
    assert os.path.isdir(path)


@pytest.fixture
def mount_point(tmp_path: Any) -> Iterator[str]:
    with tmpfs_dir(os.fspath(tmp_path), "card", 4 * 1024 * 1024) as point:
        yield point


def test_read_only_file_system(mount_point: str) -> None:
    path = os.path.join(mount_point, "q.db")
    _make_queue_file(path, items=10)
    remount_read_only(mount_point)  # as the kernel does to a failing SD card
    before = _listing(mount_point)
    with pytest.raises(DatabaseError) as excinfo:
        CloudSyncQueue(path)
    assert path in str(excinfo.value) and "read-only" in str(excinfo.value)
    assert _listing(mount_point) == before


def test_missing_mount_directory_cannot_be_created(mount_point: str) -> None:
    remount_read_only(mount_point)
    path = os.path.join(mount_point, "agent", "q.db")  # the data partition is not there
    with pytest.raises(OSError) as excinfo:
        CloudSyncQueue(path)
    assert path in str(excinfo.value) and "read-only" in str(excinfo.value)
    assert os.listdir(mount_point) == []


_AS_OTHER_USER = """
import os, sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue
os.setgid(65534)
os.setuid(65534)
try:
    CloudSyncQueue(sys.argv[1])
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("opened")
"""


@pytest.mark.parametrize("what", ["file", "directory"])
def test_read_only_file_or_directory_for_an_ordinary_user(what: str) -> None:
    # Root ignores permission bits, so the opening runs as an unprivileged user (or as
    # ourselves when we are not root).
    top = tempfile.mkdtemp(prefix="pyv-readonly-")
    try:
        os.chmod(top, 0o755)
        path = os.path.join(top, "q.db")
        _make_queue_file(path, items=10)
        # The user owns the file (another user's file is refused before access is looked
        # at) in a directory it may write but not swap files in (sticky, like /tmp).
        for name in os.listdir(top) if os.geteuid() == 0 else ():
            os.chown(os.path.join(top, name), 65534, 65534)
        if what == "file":
            os.chmod(top, 0o1777)
            os.chmod(path, 0o444)
        else:
            os.chmod(path, 0o666)
            os.chmod(top, 0o555)
        before = _listing(top)
        script = (
            _AS_OTHER_USER if os.geteuid() == 0 else _AS_OTHER_USER.replace("os.setgid(65534)\nos.setuid(65534)", "")
        )
        result = subprocess.run([sys.executable, "-c", script, path], capture_output=True, text=True, timeout=60)
        assert result.stdout.startswith("DatabaseError"), result.stdout + result.stderr
        assert path in result.stdout
        expected = "directory" if what == "directory" else "file is not readable and writable"
        assert expected in result.stdout, result.stdout
        assert _listing(top) == before
    finally:
        os.chmod(top, 0o755)
        for name in os.listdir(top):
            os.remove(os.path.join(top, name))
        os.rmdir(top)


@pytest.mark.parametrize("damage", [None, "truncate", "page", "garbage", "missing"])
def test_verify_file_reports_without_opening_a_queue(directory: str, damage: Any) -> None:
    path = os.path.join(directory, "q.db")
    if damage != "missing":
        _make_queue_file(path, items=2000)
    if damage == "truncate":
        os.truncate(path, os.path.getsize(path) // 2)
    elif damage == "page":
        _damage_a_page(path)
    elif damage == "garbage":
        with open(path, "wb") as handle:
            handle.write(b"not a database at all" * 100)
    before = _listing(directory)
    report = CloudSyncQueue.verify_file(path)
    assert report.ok is (damage is None) and report.path == path and report.message
    assert report.schema_version == (SCHEMA_VERSION if damage in (None, "page") else None)
    after = _listing(directory)
    # Only SQLite's scratch files may appear (an empty -wal and the -shm of a read-only reader).
    assert {name: digest for name, digest in after.items() if name in before} == before
    assert set(after) - set(before) <= {"q.db-wal", "q.db-shm"}
    if os.path.exists(path + "-wal") and "q.db-wal" not in before:
        assert os.path.getsize(path + "-wal") == 0


_OPEN_WHEN_TOLD = """
import os, sys, time
from pyv_edge_agent.cloud_sync import CloudSyncQueue
path, go, name, delay = sys.argv[1:]
while not os.path.exists(go):
    time.sleep(0.0005)
time.sleep(float(delay))
with CloudSyncQueue(path, on_corrupt="quarantine", clock=lambda: 1_800_000_000.0) as queue:
    queue.enqueue({"from": name})
"""


@pytest.mark.parametrize("backend", ["python"], indirect=True)  # the codec plays no part
def test_two_processes_quarantining_at_once_keep_the_evidence_and_each_others_items(directory: str) -> None:
    """Both find the same damage in the same second: the file is moved aside once, its copy
    is the damaged original, and both processes' items end up in one fresh queue. The
    second starts a little later each round, so that some round has it finish its check
    of the damaged file after the first has created the fresh one."""
    damaged = os.path.join(directory, "damaged.db")
    _make_queue_file(damaged, items=60000)  # quick_check takes a while: both are checking at once
    _damage_a_page(damaged)
    original = _digest(damaged)
    for attempt, delay in enumerate((0.0, 0.003, 0.006, 0.01, 0.015, 0.02, 0.03, 0.04, 0.06) * 2):
        workdir = os.path.join(directory, str(attempt))
        os.mkdir(workdir)
        path, go = os.path.join(workdir, "q.db"), os.path.join(workdir, "go")
        shutil.copyfile(damaged, path)
        procs = [
            subprocess.Popen([sys.executable, "-c", _OPEN_WHEN_TOLD, path, go, name, str(wait)])
            for name, wait in (("one", 0.0), ("two", delay))
        ]
        open(go, "w").close()
        assert [proc.wait(timeout=120) for proc in procs] == [0, 0]
        aside = [name for name in os.listdir(workdir) if ".corrupt-" in name and not name.endswith(("-wal", "-shm"))]
        assert len(aside) == 1, (delay, aside)
        assert _digest(os.path.join(workdir, aside[0])) == original
        with CloudSyncQueue(path) as queue:
            assert sorted(item.payload["from"] for item in queue.peek(n=10)) == ["one", "two"], delay


def _dead_letter_everything(path: str) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute(
            "INSERT INTO sync_dead_letters (id, payload, priority, created_at, ttl_seconds, last_status, dead_at)"
            " SELECT id, payload, priority, created_at, ttl_seconds, 400, created_at FROM sync_queue"
        )
        conn.execute("DELETE FROM sync_queue")
    conn.execute("VACUUM")
    conn.close()


@pytest.mark.parametrize("call", ["dead_letters", "requeue_dead_letters", "drop_dead_letters"])
def test_damage_met_by_the_dead_letter_calls_is_the_packages_error(directory: str, call: str) -> None:
    # These calls once bypassed the translation and let sqlite3.DatabaseError through.
    path = os.path.join(directory, "q.db")
    _make_queue_file(path)
    _dead_letter_everything(path)
    with CloudSyncQueue(path) as queue:
        _damage_a_page(path)
        rawsql.execute(queue, "PRAGMA cache_size = 0")  # read the damaged page from disk
        method = getattr(queue, call)
        with pytest.raises(CorruptDatabaseError, match="q.db"):
            method(3000) if call == "dead_letters" else method(list(range(1, 3001)))


def test_damage_met_by_peek_is_the_packages_error(directory: str) -> None:
    path = os.path.join(directory, "q.db")
    _make_queue_file(path)
    with CloudSyncQueue(path) as queue:
        _damage_a_page(path)
        rawsql.execute(queue, "PRAGMA cache_size = 0")
        with pytest.raises(CorruptDatabaseError, match="q.db"):
            queue.peek(3000)
