"""Nothing on disk trusts a stranger: the queue's files are opened without following links
and refused when another user owns them or can swap them, and a quarantine never moves a
file that another queue is still writing to (a returned id means the item is in the live
file). Tests run as root here: "another user" is an unused uid that files are chowned to."""

import hashlib
import os
import sqlite3
import subprocess
import sys
from typing import Any, Iterator, List

import pytest

from pyv_edge_agent.cloud_sync import CloudSyncQueue, CorruptDatabaseError, DatabaseError

STRANGER = 12345  # a uid no account on these machines has
# The codec plays no part in any of these: each test runs once.
pytestmark = pytest.mark.parametrize("backend", ["python"], indirect=True)


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture
def directory(tmp_path: Any) -> str:
    return os.fspath(tmp_path)


@pytest.fixture
def as_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a file to another user")


def test_a_dangling_link_at_the_path_is_refused_and_nothing_is_created_where_it_points(directory: str) -> None:
    path, target = os.path.join(directory, "q.db"), os.path.join(directory, "elsewhere.db")
    os.symlink(target, path)
    with pytest.raises(DatabaseError, match="symbolic link") as excinfo:
        CloudSyncQueue(path)
    assert path in str(excinfo.value)
    assert not os.path.lexists(target)


def test_a_link_to_a_real_queue_is_refused(directory: str) -> None:
    real, path = os.path.join(directory, "real.db"), os.path.join(directory, "q.db")
    with CloudSyncQueue(real) as queue:
        queue.enqueue({"a": 1})
    os.symlink(real, path)
    with pytest.raises(DatabaseError, match="symbolic link"):
        CloudSyncQueue(path)
    with CloudSyncQueue(real) as queue:
        assert queue.pending_count() == 1


@pytest.mark.parametrize("suffix", ["-wal", "-shm", ".quarantine-lock"])
def test_a_linked_side_file_is_refused(directory: str, suffix: str) -> None:
    path, target = os.path.join(directory, "q.db"), os.path.join(directory, "target")
    CloudSyncQueue(path).close()
    os.symlink(target, path + suffix)
    with pytest.raises(DatabaseError, match="symbolic link") as excinfo:
        CloudSyncQueue(path, on_corrupt="quarantine")
    assert path + suffix in str(excinfo.value)
    assert not os.path.lexists(target)


def test_a_wal_another_user_planted_is_refused_before_a_payload_reaches_it(directory: str, as_root: None) -> None:
    path = os.path.join(directory, "q.db")
    CloudSyncQueue(path).close()
    wal = path + "-wal"
    open(wal, "wb").close()
    os.chown(wal, STRANGER, STRANGER)
    os.chmod(wal, 0o666)
    with pytest.raises(DatabaseError, match=f"owned by uid {STRANGER}") as excinfo:
        CloudSyncQueue(path)
    assert wal in str(excinfo.value)
    assert os.path.getsize(wal) == 0 and os.stat(wal).st_uid == STRANGER


@pytest.mark.parametrize("content", ["empty", "queue"])
def test_a_database_another_user_owns_is_refused(directory: str, as_root: None, content: str) -> None:
    path = os.path.join(directory, "q.db")
    if content == "empty":
        open(path, "wb").close()
    else:
        with CloudSyncQueue(path) as queue:
            queue.enqueue({"a": 1})
    os.chown(path, STRANGER, STRANGER)
    digest = _digest(path)
    with pytest.raises(DatabaseError, match=f"owned by uid {STRANGER}") as excinfo:
        CloudSyncQueue(path)
    assert path in str(excinfo.value)
    assert _digest(path) == digest and sorted(os.listdir(directory)) == ["q.db"]


def test_a_quarantine_lock_another_user_owns_is_refused(directory: str, as_root: None) -> None:
    path = os.path.join(directory, "q.db")
    CloudSyncQueue(path).close()
    open(path + ".quarantine-lock", "wb").close()
    os.chown(path + ".quarantine-lock", STRANGER, STRANGER)
    with pytest.raises(DatabaseError, match=f"owned by uid {STRANGER}"):
        CloudSyncQueue(path, on_corrupt="quarantine")


@pytest.mark.parametrize(("mode", "refused"), [(0o777, True), (0o707, True), (0o1777, False), (0o755, False)])
def test_a_directory_others_can_write_is_refused_unless_sticky(directory: str, mode: int, refused: bool) -> None:
    shared = os.path.join(directory, "shared")
    os.mkdir(shared)
    os.chmod(shared, mode)
    path = os.path.join(shared, "q.db")
    if refused:
        with pytest.raises(DatabaseError, match="writable by other users") as excinfo:
            CloudSyncQueue(path)
        assert shared in str(excinfo.value)
        assert os.listdir(shared) == []
    else:
        with CloudSyncQueue(path) as queue:
            queue.enqueue({"a": 1})


def test_a_directory_another_user_owns_is_refused(directory: str, as_root: None) -> None:
    theirs = os.path.join(directory, "theirs")
    os.mkdir(theirs, 0o755)
    os.chown(theirs, STRANGER, STRANGER)
    with pytest.raises(DatabaseError, match=f"owned by uid {STRANGER}"):
        CloudSyncQueue(os.path.join(theirs, "q.db"))
    assert os.listdir(theirs) == []


# -- a quarantine beside a queue in use -----------------------------------------------------

_WRITER = """
import json, sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue
with CloudSyncQueue(sys.argv[1]) as queue:
    print("open", flush=True)
    sys.stdin.readline()
    ids = [queue.enqueue({"from": "writer", "n": n}) for n in range(10)]
    print(json.dumps(ids), flush=True)
    sys.stdin.readline()
"""

_QUARANTINER = """
import sys
from pyv_edge_agent.cloud_sync import CloudSyncQueue
try:
    with CloudSyncQueue(sys.argv[1], on_corrupt="quarantine") as queue:
        queue.enqueue({"from": "quarantiner"})
except Exception as exc:
    print(type(exc).__name__, exc)
else:
    print("opened")
"""


def _damaged_where_the_writer_never_looks(path: str) -> None:
    """A queue file whose damage ``quick_check`` finds (an extra table's last page) but
    that enqueues never touch."""
    CloudSyncQueue(path).close()
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE filler (x BLOB)")
    conn.executemany("INSERT INTO filler VALUES (?)", [(b"f" * 500,) for _ in range(200)])
    conn.commit()
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page_size, pages = (conn.execute(f"PRAGMA {name}").fetchone()[0] for name in ("page_size", "page_count"))
    conn.close()
    with open(path, "r+b") as handle:
        handle.seek((pages - 1) * page_size)
        handle.write(b"\xa5" * page_size)


def _ids_in(path: str) -> List[int]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM sync_queue WHERE payload LIKE '%writer%'")]
    finally:
        conn.close()


@pytest.fixture
def writer(directory: str) -> Iterator["subprocess.Popen[str]"]:
    path = os.path.join(directory, "q.db")
    _damaged_where_the_writer_never_looks(path)
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, path], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "open\n"
    yield proc
    proc.kill()
    proc.wait()


def test_a_quarantine_never_moves_a_file_another_process_is_writing(
    directory: str, writer: "subprocess.Popen[str]"
) -> None:
    """Process A has the queue open; process B opens it with ``on_corrupt="quarantine"``,
    and ``quick_check`` finds damage. B must refuse rather than move the file under A: the
    ids A is handed afterwards must be of items in the live file."""
    path = os.path.join(directory, "q.db")
    result = subprocess.run([sys.executable, "-c", _QUARANTINER, path], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("CorruptDatabaseError"), result.stdout + result.stderr
    assert path in result.stdout and "another queue" in result.stdout
    assert [name for name in os.listdir(directory) if ".corrupt-" in name] == []

    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write("enqueue\n")
    writer.stdin.flush()
    ids = [int(i) for i in writer.stdout.readline().strip("[]\n").split(",")]
    assert _ids_in(path) == ids  # every returned id is in the live file
    writer.stdin.write("close\n")
    writer.stdin.flush()
    assert writer.wait(timeout=60) == 0

    # With the writer gone, the quarantine goes ahead and keeps its items in the copy.
    result = subprocess.run([sys.executable, "-c", _QUARANTINER, path], capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "opened", result.stdout + result.stderr
    aside = [name for name in os.listdir(directory) if ".corrupt-" in name and not name.endswith(("-wal", "-shm"))]
    assert len(aside) == 1 and _ids_in(os.path.join(directory, aside[0])) == ids


def test_a_forked_child_does_not_release_its_parents_hold(directory: str, writer: "subprocess.Popen[str]") -> None:
    """A child forked from a process with the queue open closes its inherited copy of the
    lock's descriptor; the parent (here: the quarantiner's own queue in this process) keeps it."""
    path = os.path.join(directory, "q.db")
    writer.kill()
    writer.wait()
    with CloudSyncQueue(path) as queue:
        queue.enqueue({"from": "parent"})
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                queue.enqueue({"from": "child"})
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        with pytest.raises(CorruptDatabaseError, match="another queue"):
            CloudSyncQueue(path, on_corrupt="quarantine")
        assert queue.pending_count() == 2


def test_in_a_sticky_shared_directory_a_wal_planted_just_before_sqlite_opens_gets_nothing(
    directory: str, as_root: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a directory like /tmp another user can create a name between the queue's checks
    and SQLite's opening. Here that user wins the race every time: it creates the -wal, open
    for reading, just before SQLite opens the file (SQLite, as root, would adopt it and
    write the payloads into it). The queue makes its -wal and -shm itself, exclusively,
    before SQLite opens, so the planting fails."""
    shared = os.path.join(directory, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    path = os.path.join(shared, "q.db")
    planted: List[int] = []
    connect = sqlite3.connect

    def plant_then_connect(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        if database == path and not planted:
            try:
                fd = os.open(path + "-wal", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                planted.append(-1)
            else:
                os.fchown(fd, STRANGER, STRANGER)
                os.fchmod(fd, 0o666)
                planted.append(fd)
        return connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", plant_then_connect)
    try:
        with CloudSyncQueue(path) as queue:
            queue.enqueue({"secret": "s3cr3t-reading"})
            monkeypatch.undo()
            if planted[0] >= 0:
                os.lseek(planted[0], 0, os.SEEK_SET)
                assert b"s3cr3t-reading" not in os.read(planted[0], 1 << 20)
            assert planted == [-1]
            for suffix in ("", "-wal", "-shm"):
                info = os.lstat(path + suffix)
                assert info.st_uid == os.geteuid() and info.st_mode & 0o777 == 0o600, suffix
    except DatabaseError as exc:
        assert planted != [-1] and "owned by uid" in str(exc)  # refused: acceptable too
    finally:
        if planted and planted[0] >= 0:
            os.close(planted[0])


def test_in_a_sticky_shared_directory_the_side_files_are_made_private_before_sqlite_opens(directory: str) -> None:
    """In a directory like /tmp another user can create a name between the checks and
    SQLite's opening; the queue makes its -wal and -shm there itself, exclusively, first."""
    shared = os.path.join(directory, "shared")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    path = os.path.join(shared, "q.db")
    with CloudSyncQueue(path) as queue:
        queue.enqueue({"a": 1})
        for suffix in ("", "-wal", "-shm"):
            info = os.lstat(path + suffix)
            assert info.st_uid == os.geteuid() and info.st_mode & 0o777 == 0o600, suffix
    with CloudSyncQueue(path) as queue:
        assert queue.pending_count() == 1
