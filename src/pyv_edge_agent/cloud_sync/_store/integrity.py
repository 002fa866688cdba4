"""Opening a queue file safely, telling corruption from other failures, and ``verify()``.

Nothing here writes to a database it has doubts about: the header is read and checked
before SQLite opens the file, a damaged file is either refused (the default) or renamed
aside whole with its ``-wal`` and ``-shm`` (``on_corrupt="quarantine"``), and errors name
the path and say what is wrong with it.
"""

import contextlib
import errno
import os
import sqlite3
import stat
import time
from dataclasses import dataclass, field
from typing import Iterator, List, Optional, Sequence, Tuple

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; quarantine races are not guarded there
    fcntl = None  # type: ignore[assignment]

from .._errors import CorruptDatabaseError, DatabaseError
from . import schema, storage
from .sql import (
    COUNT_UNSEALED_SQL,
    READ_COUNTER_SQL,
    REKEY_TARGET_KEY,
    REKEY_UNFINISHED_SQL,
    SEALED_FROM_ALL,
    SEALED_FROM_KEY,
)

HEADER_MAGIC = b"SQLite format 3\x00"
HEADER_SIZE = 100
WAL_MAGICS = (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83")
SIDE_FILES = ("-wal", "-shm")
ON_CORRUPT_CHOICES = ("raise", "quarantine")
LOCK_SUFFIX = ".quarantine-lock"
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
# Windows has no uids: ownership and directory modes are not checked there.
_POSIX_OWNERS = hasattr(os, "geteuid")
# Queue payloads can be sensitive: files and directories the queue creates are private
# to their owner, whatever the umask.
FILE_MODE = 0o600
DIRECTORY_MODE = 0o700
QUARANTINED_KEY = "quarantined_total"

# Result codes (the low byte of an extended code) that mean the file itself is damaged.
_CORRUPT_CODES = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB
_CORRUPT_MESSAGES = ("database disk image is malformed", "file is not a database")


@dataclass(frozen=True)
class IntegrityReport:
    """The result of ``CloudSyncQueue.verify()``.

    :param ok: True when SQLite's ``integrity_check`` found nothing wrong, nor the checks of
        the queue's own tables (plain items where sealed ones are due; the delivery
        bookkeeping of a file with destinations).
    :param messages: what ``integrity_check`` reported (``["ok"]`` when sound), then one
        message per broken rule of the queue's tables, naming the table and how many rows.
    :param schema_version: ``PRAGMA user_version`` of the file (None if unreadable).
    :param path: the database file.
    :param rekey_unfinished: items not yet under the key an interrupted (or running)
        ``rekey`` moves them to (see ``rekey_unfinished``); 0 when no rekey was cut short.
    """

    ok: bool
    path: str
    schema_version: Optional[int]
    messages: Tuple[str, ...] = field(default_factory=tuple)
    rekey_unfinished: int = 0

    @property
    def message(self) -> str:
        """The messages as one line."""
        return "; ".join(self.messages)


def is_corruption(exc: BaseException) -> bool:
    """True when a SQLite error says the file is damaged or not a database."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    return isinstance(exc, sqlite3.DatabaseError) and any(text in str(exc) for text in _CORRUPT_MESSAGES)


def check_header(path: str) -> None:
    """Read the file's header and raise ``CorruptDatabaseError`` if it is clearly damaged.

    A missing or empty file passes: SQLite creates the database there.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseError(f"cannot use {path!r} as a queue database: {exc.strerror}") from exc
    if not os.path.isfile(path):
        raise DatabaseError(f"cannot use {path!r} as a queue database: it is not a regular file")
    if info.st_size == 0:
        return
    try:
        with open(path, "rb") as handle:
            header = handle.read(HEADER_SIZE)
    except OSError as exc:
        raise DatabaseError(f"cannot read queue database {path!r}: {exc.strerror}") from exc
    if not (header.startswith(HEADER_MAGIC) or HEADER_MAGIC.startswith(header)):
        raise CorruptDatabaseError(f"{path!r} is not a SQLite database (its first bytes are {header[:16]!r})")
    if len(header) < HEADER_SIZE:
        raise CorruptDatabaseError(f"{path!r} is truncated: {info.st_size} bytes, shorter than a SQLite header")
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size
    if page_size < 512 or page_size & (page_size - 1):
        raise CorruptDatabaseError(f"{path!r} is damaged: its header gives an impossible page size {page_size}")
    pages = int.from_bytes(header[28:32], "big")
    # The in-header size is valid only when the two change counters agree. A WAL with
    # content may legitimately hold pages the main file does not have yet.
    if header[24:28] != header[92:96] or info.st_size >= pages * page_size or _has_wal(path):
        return
    # Measured again after the header and the WAL were read: another process's checkpoint
    # writes the new header before the pages that extend the file, and deletes its WAL only
    # after all of them, so a size taken before the header can be short of it for a moment.
    size = _size(path)
    if size < pages * page_size:
        raise CorruptDatabaseError(
            f"{path!r} is truncated: its header says {pages} pages of {page_size} bytes "
            f"({pages * page_size} bytes) but the file has {size}"
        )


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError as exc:
        raise DatabaseError(f"cannot use {path!r} as a queue database: {exc.strerror}") from exc


def _has_wal(path: str) -> bool:
    try:
        with open(path + "-wal", "rb") as handle:
            return handle.read(4) in WAL_MAGICS
    except OSError:
        return False


def _owner_problem(uid: int) -> str:
    return (
        f"it is owned by uid {uid}, not by this process's user (uid {os.geteuid()}),"
        " who could read the queue's items or swap the file"
    )


def check_directory(path: str) -> bool:
    """Refuse a directory other users can write, unless it is sticky (like ``/tmp``), and
    one another user owns: either could swap the queue's files under it. Return whether
    other users can still create names in it (sticky and shared).

    Group write counts only when the group is not this process's own (Debian gives each
    user a private group and a umask of 002)."""
    directory = os.path.dirname(os.path.abspath(path))
    if not _POSIX_OWNERS:
        return False
    try:
        info = os.stat(directory)
    except OSError:
        return False  # opening fails with its own, clearer error
    mode = info.st_mode
    shared = mode & stat.S_IWOTH or (mode & stat.S_IWGRP and info.st_gid != os.getegid())
    if shared and not mode & stat.S_ISVTX:
        raise DatabaseError(
            f"refusing queue database {path!r}: its directory {directory!r} is writable by other users"
            f" (mode {stat.S_IMODE(mode):04o}) and not sticky, so they could swap its files; make it 0700"
        )
    if info.st_uid not in (os.geteuid(), 0):  # its owner can always make it writable
        raise DatabaseError(
            f"refusing queue database {path!r}: its directory {directory!r} {_owner_problem(info.st_uid)}"
        )
    return bool(shared)


def check_own_file(path: str, what: str = "queue file") -> None:
    """Refuse ``path`` if it is a symbolic link, not a regular file, or owned by another
    user; a missing ``path`` passes (the queue creates it, private)."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise DatabaseError(f"cannot use {path!r} as a {what}: {exc.strerror}") from exc
    _check_own_stat(path, info, what)


def _check_own_stat(path: str, info: os.stat_result, what: str) -> None:
    if stat.S_ISLNK(info.st_mode):
        raise DatabaseError(
            f"refusing {what} {path!r}: it is a symbolic link (the queue never follows links to its files)"
        )
    if not stat.S_ISREG(info.st_mode):
        raise DatabaseError(f"cannot use {path!r} as a {what}: it is not a regular file")
    if _POSIX_OWNERS and info.st_uid != os.geteuid():
        raise DatabaseError(f"refusing {what} {path!r}: {_owner_problem(info.st_uid)}")


def check_trust(path: str) -> bool:
    """Before SQLite opens ``path``: its directory, and the database, ``-wal``, ``-shm`` and
    lock file beside it, are not links and belong to this process's user (SQLite follows
    links and, running as root, would adopt a ``-wal`` another user still has open).
    Return whether other users may create names beside it (see ``create_side_files``)."""
    shared = check_directory(path)
    check_own_file(path, "queue database")
    for suffix in SIDE_FILES + (LOCK_SUFFIX,):
        check_own_file(path + suffix)
    return shared


def create_side_files(path: str) -> None:
    """Create the ``-wal`` and ``-shm`` of ``path`` private and exclusively, where missing.

    For a directory like ``/tmp``: another user could create either between the checks and
    SQLite's opening; made now, they are ours, and the sticky bit keeps them so."""
    for suffix in SIDE_FILES:
        side = path + suffix
        try:
            os.close(os.open(side, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, FILE_MODE))
        except FileExistsError:
            check_own_file(side)
        except OSError as exc:
            raise DatabaseError(f"cannot create {side!r}: {exc.strerror}; {describe_access_problem(side)}") from exc


class FileHold:
    """A descriptor of the open database file (opened without following links) holding a
    shared ``flock`` for as long as a queue uses the file.

    A quarantine moves a file aside only under an exclusive lock, so it cannot move one that
    another queue is writing to (those writes would land in the copy, under ids already
    handed out). ``flock`` locks are independent of SQLite's POSIX locks on local file
    systems, and belong to the descriptor, so a forked child closing its copy keeps the
    parent's."""

    def __init__(self, fd: Optional[int]) -> None:
        self._fd = fd

    def close(self) -> None:
        """Release the lock (nothing happens the second time)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        with contextlib.suppress(OSError):
            self.close()


def _open_nofollow(path: str, what: str) -> int:
    try:
        return os.open(path, os.O_RDONLY | _NOFOLLOW)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise DatabaseError(
                f"refusing {what} {path!r}: it is a symbolic link (the queue never follows links to its files)"
            ) from exc
        raise DatabaseError(f"cannot open {what} {path!r}: {exc.strerror}") from exc


def hold(path: str) -> FileHold:
    """Open ``path`` without following links, check it is this user's regular file and take
    a shared lock on it; the file found at ``path`` after the lock is the one locked (a
    quarantine that ran meanwhile moved the old one aside: the new one is taken)."""
    if fcntl is None:
        return FileHold(None)
    for _ in range(5):
        fd = _open_nofollow(path, "queue database")
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a quarantine moves the file
            info = os.fstat(fd)
            _check_own_stat(path, info, "queue database")
            try:
                current = os.lstat(path)
            except FileNotFoundError:
                current = None
            if current is not None and (current.st_dev, current.st_ino) == (info.st_dev, info.st_ino):
                return FileHold(fd)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise DatabaseError(f"cannot open queue database {path!r}: it was replaced again and again while opening it")


def check_side_files(path: str) -> None:
    """After SQLite opened ``path``: the ``-wal`` and ``-shm`` it uses are this user's own
    regular files (a link planted between the checks and the opening is caught here)."""
    for suffix in SIDE_FILES:
        check_own_file(path + suffix)


def read_only_uri(path: str) -> str:
    """A read-only SQLite URI for ``path``.

    In a URI SQLite reads ``%`` as an escape and ``?`` and ``#`` as the start of the query
    and the fragment, so those three are escaped (``urllib.parse`` would do it too, at a
    tenth of the package's import time).
    """
    quoted = os.path.abspath(path).replace("%", "%25").replace("?", "%3F").replace("#", "%23")
    return "file:" + quoted + "?mode=ro"


QUEUE_TABLE_SQL = "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'sync_queue'"


def require_queue(path: str) -> None:
    """Refuse, reading ``path`` through a read-only connection only, a file that is not a
    queue database (another application's SQLite file, an empty file): the operator
    commands open existing files only, and opening one as a queue would add the queue's
    tables to it and switch it to WAL."""
    check_header(path)
    if os.path.getsize(path) == 0:
        raise DatabaseError(f"{path!r} is not a queue database: it is an empty file; nothing was changed")
    try:
        conn = sqlite3.connect(read_only_uri(path), uri=True)
    except sqlite3.Error as exc:
        raise open_error(path, exc) from exc
    try:
        found = conn.execute(QUEUE_TABLE_SQL).fetchone()[0]
    except sqlite3.Error as exc:
        raise open_error(path, exc) from exc
    finally:
        conn.close()
    if not found:
        raise DatabaseError(
            f"{path!r} is not a queue database: it has no sync_queue table (another application's"
            " SQLite file?); nothing was changed"
        )


def precheck(path: str, busy_timeout: float, *, thorough: bool) -> None:
    """Check an existing file before the queue opens it for writing.

    The checks run on a read-only connection: closing a read-write connection checkpoints
    the WAL into the file and deletes the WAL, which must not happen to a damaged file.
    ``thorough`` adds SQLite's ``quick_check``, which reads the whole file.
    """
    check_header(path)
    if not os.path.isfile(path):
        return
    # SQLite would quietly open a file it cannot write read-only, and fail on the first write.
    if not os.access(path, os.R_OK | os.W_OK) or _read_only_fs(os.path.dirname(os.path.abspath(path))):
        raise DatabaseError(f"cannot open queue database {path!r} for writing: {describe_access_problem(path)}")
    if os.path.getsize(path) == 0:
        return
    uri = read_only_uri(path)
    try:
        conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout)
    except sqlite3.Error as exc:
        raise open_error(path, exc) from exc
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        if thorough:
            quick_check(conn, path)
    except sqlite3.Error as exc:
        raise open_error(path, exc) from exc
    finally:
        conn.close()


def describe_access_problem(path: str) -> str:
    """Say why ``path`` cannot be opened for writing, as far as the file system tells."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"its directory {directory!r} does not exist (is its file system mounted?)"
    if _read_only_fs(directory):
        return f"its file system at {directory!r} is mounted read-only"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"its directory {directory!r} is not writable (the queue creates -wal and -shm files beside it)"
    if os.path.exists(path) and not os.access(path, os.R_OK | os.W_OK):
        return "the file is not readable and writable by this user"
    for suffix in SIDE_FILES:
        side = path + suffix
        if os.path.exists(side) and not os.access(side, os.R_OK | os.W_OK):
            return f"{side!r} is not readable and writable by this user"
    return "the file system refused access"


def _read_only_fs(directory: str) -> bool:
    try:
        return bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def open_error(path: str, exc: sqlite3.Error) -> DatabaseError:
    """Turn an error from opening or setting up ``path`` into one that names it and says why."""
    if is_corruption(exc):
        return CorruptDatabaseError(f"{path!r} is not a usable queue database (damaged or not SQLite): {exc}")
    return DatabaseError(f"cannot open queue database {path!r}: {exc}; {describe_access_problem(path)}")


def quick_check(conn: sqlite3.Connection, path: str) -> None:
    """Raise ``CorruptDatabaseError`` unless SQLite's ``quick_check`` passes (reads the whole file)."""
    rows = [row[0] for row in conn.execute("PRAGMA quick_check(5)").fetchall()]
    if rows != ["ok"]:
        raise CorruptDatabaseError(f"{path!r} is damaged: {'; '.join(map(str, rows))}")


@contextlib.contextmanager
def quarantine_lock(path: str) -> Iterator[None]:
    """Hold an exclusive lock beside ``path`` across checking, quarantining and creating
    it, so that two processes finding the same damage never both move a file aside: the
    second checks again under the lock and finds the fresh queue the first created."""
    if fcntl is None:
        yield
        return
    lock_path = path + LOCK_SUFFIX
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | _NOFOLLOW, FILE_MODE)
    except OSError as exc:
        check_own_file(lock_path)  # a link: say so
        raise DatabaseError(f"cannot open {lock_path!r}: {exc.strerror}") from exc
    try:
        _check_own_stat(lock_path, os.fstat(fd), "queue file")
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the file stays, as removing it would race


def _reserve(target: str, suffixes: Sequence[str]) -> bool:
    """Create ``target + suffix`` for each suffix exclusively; False (and nothing left
    behind) when one of the names is taken."""
    made: List[str] = []
    try:
        for suffix in suffixes:
            os.close(os.open(target + suffix, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
            made.append(target + suffix)
    except FileExistsError:
        for name in made:
            os.unlink(name)
        return False
    return True


def quarantine(path: str, wall_time: float) -> str:
    """Rename a damaged database and its side files aside; return the new path of the file.

    Each target name is first reserved exclusively, so that no existing file (the
    evidence of an earlier quarantine) is ever replaced. The side files go first: a stale
    WAL left beside a fresh database could be replayed into it. Nothing is deleted.
    """
    fd = _exclusive(path)
    try:
        return _move_aside(path, wall_time)
    finally:
        if fd is not None:
            os.close(fd)


def _exclusive(path: str) -> Optional[int]:
    """A descriptor of ``path`` holding an exclusive lock, or ``CorruptDatabaseError`` when
    another queue holds its shared one (see ``FileHold``)."""
    if fcntl is None or not os.path.lexists(path):
        return None
    fd = _open_nofollow(path, "queue database")
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise CorruptDatabaseError(
            f"{path!r} is damaged, but another queue (this process or another) has it open: not moving it"
            " aside under that queue, whose new items would go with it; close it, then open again"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _move_aside(path: str, wall_time: float) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(wall_time))
    present = [suffix for suffix in SIDE_FILES + ("",) if os.path.lexists(path + suffix)]
    target = f"{path}.corrupt-{stamp}"
    serial = 1
    while any(os.path.lexists(target + suffix) for suffix in ("",) + SIDE_FILES) or not _reserve(target, present):
        serial += 1
        target = f"{path}.corrupt-{stamp}-{serial}"
    for suffix in present:
        os.rename(path + suffix, target + suffix)  # replaces only its own reservation
    fsync_directory(os.path.dirname(os.path.abspath(path)))
    return target


def fsync_directory(directory: str) -> None:
    """Make the directory's entries (a new or renamed file) durable across power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as exc:
        # Some file systems cannot sync a directory; their entries are as durable as they get.
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def make_directories(directory: str, path: str) -> List[str]:
    """Create ``directory`` and its missing parents; return the directories created."""
    missing: List[str] = []
    current = directory
    while not os.path.isdir(current):
        missing.append(current)
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    try:
        os.makedirs(directory, mode=DIRECTORY_MODE, exist_ok=True)
        for created in missing:
            os.chmod(created, DIRECTORY_MODE)  # makedirs' mode is cut by the umask
    except OSError as exc:
        raise type(exc)(
            exc.errno,
            f"cannot create directory {directory!r} for queue database {path!r}: {exc.strerror}"
            f" ({describe_access_problem(os.path.join(current, '_'))})",
        ) from exc
    return missing


def create_private(path: str) -> None:
    """Create an empty ``path`` readable and writable by its owner only, for SQLite to
    make a database of; SQLite gives the ``-wal`` and ``-shm`` it creates the same mode."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), FILE_MODE)
    except FileExistsError:
        return  # another process created it first
    except OSError as exc:
        raise DatabaseError(
            f"cannot create queue database {path!r}: {exc.strerror}; {describe_access_problem(path)}"
        ) from exc
    try:
        os.fchmod(fd, FILE_MODE)  # the umask may have cut it further
    finally:
        os.close(fd)


def rekey_unfinished(conn: sqlite3.Connection) -> int:
    """How many items (dead letters included) are not yet sealed under the key that a
    ``rekey`` which was cut short (killed, a full disk) or is still running moves them to:
    some may still be plain text. 0 when no rekey is unfinished."""
    target = conn.execute(READ_COUNTER_SQL, (REKEY_TARGET_KEY,)).fetchone()
    if target is None:
        return 0
    return int(conn.execute(REKEY_UNFINISHED_SQL, (str(target[0]),)).fetchone()[0])


def verify(conn: sqlite3.Connection, path: str) -> IntegrityReport:
    """Run ``PRAGMA integrity_check`` (reads the whole file, writes nothing), check the
    queue's own tables (sealed items, delivery bookkeeping), and count what an unfinished
    ``rekey`` left behind."""
    version: Optional[int] = None
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        messages = tuple(str(row[0]) for row in conn.execute("PRAGMA integrity_check(20)").fetchall())
        messages += _unsealed_messages(conn)
        messages += _delivery_messages(conn)
    except sqlite3.DatabaseError as exc:
        return IntegrityReport(ok=False, path=path, schema_version=version, messages=(str(exc),))
    try:
        unfinished = rekey_unfinished(conn)
    except sqlite3.DatabaseError:
        unfinished = 0  # not a queue's tables (``cloud-sync check`` says so)
    return IntegrityReport(
        ok=messages == ("ok",), path=path, schema_version=version, messages=messages, rekey_unfinished=unfinished
    )


def _unsealed_messages(conn: sqlite3.Connection) -> Tuple[str, ...]:
    """What ``verify`` says of plain items where items must be sealed (see ``Store.sealed_from``)."""
    try:
        found = conn.execute(READ_COUNTER_SQL, (SEALED_FROM_KEY,)).fetchone()
    except sqlite3.OperationalError:  # no sync_meta: a file of the earlier release
        return ()
    if found is None:
        return ()
    count = int(conn.execute(COUNT_UNSEALED_SQL, (found[0],)).fetchone()[0])
    if not count:
        return ()
    start = "every item" if found[0] == SEALED_FROM_ALL else f"the items from id {found[0]} on"
    return (
        f"{count} items in sync_queue are not sealed, in a file where {start} must be sealed (written"
        " without the key, or replaced): a flush refuses them and moves them to the dead-letter table",
    )


# The delivery bookkeeping of a file with destinations (see ``destinations``): each rule is
# a query counting the rows that break it, and what ``verify`` says of them.
_REGISTERED_BITS = "(SELECT COALESCE(SUM(1 << id), 0) FROM sync_destinations)"
# SQLite has no bit count: the sum of every bit of the route, 0 to 63.
_BITS_SET = " + ".join(f"((destinations >> {bit}) & 1)" for bit in range(64))
ROUTES_WITHOUT_ITEM_SQL = "SELECT COUNT(*) FROM sync_routes WHERE item_id NOT IN (SELECT id FROM sync_queue)"
ROUTES_MISCOUNTED_SQL = f"SELECT COUNT(*) FROM sync_routes WHERE pending != {_BITS_SET}"
ROUTES_TO_UNREGISTERED_SQL = f"SELECT COUNT(*) FROM sync_routes WHERE destinations & ~{_REGISTERED_BITS}"
DELIVERIES_WITHOUT_ITEM_SQL = "SELECT COUNT(*) FROM sync_deliveries WHERE item_id NOT IN (SELECT id FROM sync_queue)"
DELIVERIES_NOT_ROUTED_SQL = (
    "SELECT COUNT(*) FROM sync_deliveries AS d WHERE d.item_id IN (SELECT id FROM sync_queue) AND NOT EXISTS"
    " (SELECT 1 FROM sync_routes AS r WHERE r.item_id = d.item_id AND (r.destinations >> d.destination) & 1)"
)
ITEMS_WITHOUT_ROUTE_SQL = (
    "SELECT COUNT(*) FROM sync_queue WHERE EXISTS (SELECT 1 FROM sync_destinations)"
    " AND id NOT IN (SELECT item_id FROM sync_routes)"
)
CURSORS_OF_UNREGISTERED_SQL = (
    "SELECT COUNT(*) FROM sync_cursors WHERE destination NOT IN (SELECT id FROM sync_destinations)"
)
DELIVERY_RULES = (
    (ROUTES_WITHOUT_ITEM_SQL, "sync_routes: {} rows route an item that is not in sync_queue"),
    (
        ROUTES_MISCOUNTED_SQL,
        "sync_routes: {} rows have a pending count other than the number of destination bits they set",
    ),
    (
        ROUTES_TO_UNREGISTERED_SQL,
        "sync_routes: {} rows set the bit of a destination that is not registered in sync_destinations",
    ),
    (DELIVERIES_WITHOUT_ITEM_SQL, "sync_deliveries: {} rows name an item that is not in sync_queue"),
    (
        DELIVERIES_NOT_ROUTED_SQL,
        "sync_deliveries: {} rows belong to a destination whose bit is not set in their item's route",
    ),
    (
        ITEMS_WITHOUT_ROUTE_SQL,
        "sync_queue: {} items have no row in sync_routes, in a file with registered destinations"
        " (no destination would deliver them)",
    ),
    (CURSORS_OF_UNREGISTERED_SQL, "sync_cursors: {} rows name a destination not registered in sync_destinations"),
)


def _delivery_messages(conn: sqlite3.Connection) -> Tuple[str, ...]:
    """What ``verify`` says of the delivery bookkeeping of a file with destinations: one
    message per broken rule, with how many rows break it (none for a file from before
    destinations)."""
    if conn.execute(HAS_DESTINATIONS_SQL).fetchone() is None:
        return ()
    found = ((conn.execute(sql).fetchone()[0], message) for sql, message in DELIVERY_RULES)
    return tuple(message.format(count) for count, message in found if count)


def open_database(
    path: str, durability: str, busy_timeout: float, *, thorough: bool, created_dirs: Sequence[str] = ()
) -> Tuple[sqlite3.Connection, FileHold]:
    """Open and set up the queue file; nothing is written to a file that fails a check.

    Returns the connection and the ``FileHold`` that keeps the file from being quarantined
    while it is in use (release it when closing the connection).

    :param thorough: run SQLite's ``quick_check`` on an existing file first.
    :param created_dirs: directories just created for the file, to be made durable with it.
    """
    created = False
    held = FileHold(None)
    if storage.is_file_path(path):
        shared = check_trust(path)
        precheck(path, busy_timeout, thorough=thorough)
        created = not os.path.lexists(path)
        if created:
            create_private(path)
        if shared:
            create_side_files(path)
        held = hold(path)
    try:
        conn = sqlite3.connect(
            path,
            timeout=busy_timeout,
            isolation_level=None,
            check_same_thread=False,
            cached_statements=256,
        )
    except sqlite3.Error as exc:
        held.close()
        raise open_error(path, exc) from exc
    try:
        storage.configure(conn)
        schema.configure(conn, durability, busy_timeout)
        schema.migrate(conn, path)
        if storage.is_file_path(path):
            check_side_files(path)
    except sqlite3.Error as exc:
        conn.close()
        held.close()
        raise open_error(path, exc) from exc
    except BaseException:
        conn.close()
        held.close()
        raise
    if created:
        # SQLite syncs a new WAL's directory entry but not a new database file's: without
        # this a power cut soon after creation could lose the file and every id in it.
        # The same holds for directories created for it: their parents get synced too.
        for entry in [path, *created_dirs]:
            fsync_directory(os.path.dirname(os.path.abspath(entry)))
    return conn, held


def translate_error(exc: sqlite3.Error, path: str) -> Optional[Exception]:
    """The package's error for a SQLite error met while using ``path``, or None to let it be."""
    if storage.is_disk_full(exc):
        return storage.disk_full_error(path, exc)
    if is_corruption(exc):
        return CorruptDatabaseError(f"queue database {path!r} is damaged: {exc}")
    if isinstance(exc, sqlite3.OperationalError) and "disk I/O error" in str(exc):
        return DatabaseError(f"queue database {path!r}: {exc}; {describe_access_problem(path)}")
    return None


def destinations_of(path: str) -> Tuple[str, ...]:
    """The destination names registered in the queue file at ``path``, in the order they
    were registered, read through a read-only connection (none for a file without
    destinations or made by a release before them)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"db_path: no queue file at {path!r}")
    check_header(path)
    conn = sqlite3.connect(read_only_uri(path), uri=True)
    try:
        if conn.execute(HAS_DESTINATIONS_SQL).fetchone() is None:
            return ()
        return tuple(name for (name,) in conn.execute(REGISTERED_NAMES_SQL))
    finally:
        conn.close()


HAS_DESTINATIONS_SQL = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sync_destinations'"
REGISTERED_NAMES_SQL = "SELECT name FROM sync_destinations ORDER BY added_at, id"


def verify_file(path: str) -> IntegrityReport:
    """``verify`` through a read-only connection, for a file that may not open as a queue."""
    if not os.path.isfile(path):
        return IntegrityReport(ok=False, path=path, schema_version=None, messages=("no such file",))
    try:
        check_header(path)
    except DatabaseError as exc:
        return IntegrityReport(ok=False, path=path, schema_version=None, messages=(str(exc),))
    uri = read_only_uri(path)
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        return IntegrityReport(ok=False, path=path, schema_version=None, messages=(str(exc),))
    try:
        return verify(conn, path)
    finally:
        conn.close()
