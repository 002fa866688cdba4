"""A FUSE file system that forgets what was not synced: power cuts for the tests.

``CrashFS`` serves a copy of a backing directory. Every write since the last
``fsync``/``fdatasync`` of a file, and every change to a directory (create, unlink, mkdir,
rmdir, rename) since the last fsync of that directory, lives only in a volatile layer;
reads see it, as they would see a page cache. A power cut (``Mount.power_cut``) freezes the
file system, keeps the synced state plus, depending on the mode, nothing, a random prefix,
or a random subset of the volatile writes cut into 4 KiB pieces (a disk cache may write
pages torn and out of order), and writes the result back to the backing directory, which
is then opened without the layer. A clean unmount (``Mount.unmount``) keeps everything.

The layer also counts what a flash card would be asked to store: at each fsync, the 4 KiB
pages written since the file's previous sync (``synced_bytes``).

Locking is left to the kernel (no ``lock`` operation) and the mount is not ``direct_io``, so
SQLite's WAL mode works on it: shared ``mmap`` of the ``-shm`` file, ``ftruncate``,
``unlink`` of open files (``hard_remove``), ``rename`` of files. Renaming a directory and
hard or symbolic links are not supported (SQLite and the queue use none).
"""

import contextlib
import errno
import functools
import json
import os
import posixpath
import random
import shutil
import signal
import socket
import stat
import subprocess
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Set, Tuple

PAGE = 4096
CUT_MODES = ("drop", "prefix", "subset")


def unavailable() -> Optional[str]:
    """Why FUSE mounts cannot be made here, or None when they can."""
    if not os.path.exists("/dev/fuse"):
        return "no /dev/fuse on this machine"
    if shutil.which("fusermount3") is None:
        return "fusermount3 not found (Debian package fuse3, see tools/internal/system-packages.txt)"
    if os.geteuid() != 0:
        return "FUSE mounts for the power-cut tests need root"
    try:
        import mfusepy  # noqa: F401
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse3 ({exc}); install the test extra and Debian fuse3"
    return None


class Node:
    """A file or directory: what reads see, what survives a cut, and the writes between."""

    __slots__ = ("is_dir", "mode", "data", "durable", "pending", "dirty", "mtime_ns", "changed")

    def __init__(self, is_dir: bool, mode: int, data: bytes = b"") -> None:
        self.is_dir = is_dir
        self.mode = mode
        self.data = bytearray(data)
        self.durable = bytearray(data)
        # (sequence number, offset, bytes) for a write; (sequence number, -1, size) for a truncate.
        self.pending: List[Tuple[int, int, Any]] = []
        self.dirty: Set[int] = set()
        self.mtime_ns = time.time_ns()
        self.changed = False


def _apply(target: bytearray, offset: int, piece: Any) -> None:
    if offset < 0:
        del target[piece:]
        target.extend(bytes(max(0, piece - len(target))))
        return
    if offset > len(target):
        target.extend(bytes(offset - len(target)))
    target[offset : offset + len(piece)] = piece


def _pieces(offset: int, data: bytes) -> Iterator[Tuple[int, bytes]]:
    """``data`` written at ``offset``, cut at page boundaries."""
    position = offset
    end = offset + len(data)
    while position < end:
        stop = min(end, (position // PAGE + 1) * PAGE)
        yield position, data[position - offset : stop - offset]
        position = stop


class CrashFS:
    """The file system's operations (mfusepy ``Operations`` protocol); see the module docstring."""

    use_ns = True

    def __init__(self, backing: str, ignore_syncs: str = "") -> None:
        self.backing = os.path.abspath(backing)
        # The self-tests' broken setups: a disk that acknowledges every fsync without storing
        # anything ("all"), or only those of directories ("directories").
        self.ignore_syncs = ignore_syncs
        self.lock = threading.Lock()
        self.frozen = False
        self.nodes: Dict[int, Node] = {1: Node(True, stat.S_IFDIR | 0o755)}
        self.tree: Dict[str, int] = {"/": 1}
        self.durable_tree: Dict[str, int] = {"/": 1}
        self.on_disk: Dict[str, int] = {"/": 1}
        # Directory path -> (sequence number, child path, node id or None for a removal).
        self.dir_pending: Dict[str, List[Tuple[int, str, Optional[int]]]] = {}
        self.handles: Dict[int, int] = {}
        self.next_id = 2
        self.next_handle = 1
        self.sequence = 0
        self.stats: Dict[str, int] = {"synced_bytes": 0, "file_syncs": 0, "dir_syncs": 0, "written_bytes": 0}
        self._load()

    # -- the backing directory -----------------------------------------------------------

    def _load(self) -> None:
        for top, dirs, files in os.walk(self.backing):
            rel = "/" if top == self.backing else "/" + os.path.relpath(top, self.backing)
            for name in dirs + files:
                full = os.path.join(top, name)
                path = posixpath.join(rel, name)
                info = os.lstat(full)
                if stat.S_ISDIR(info.st_mode):
                    node = Node(True, info.st_mode)
                else:
                    with open(full, "rb") as handle:
                        node = Node(False, info.st_mode, handle.read())
                self.tree[path] = self.durable_tree[path] = self.on_disk[path] = self._add(node)

    def _materialize(self) -> None:
        """Write the durable state back to the backing directory (only what changed)."""
        keep: Dict[str, int] = {"/": 1}
        for path in sorted(self.durable_tree, key=lambda p: p.count("/")):
            parent = posixpath.dirname(path)
            if path != "/" and parent in keep and self.nodes[keep[parent]].is_dir:
                keep[path] = self.durable_tree[path]
        for path in sorted(self.on_disk, key=lambda p: -p.count("/")):
            node_id = keep.get(path)
            if node_id != self.on_disk[path] or (node_id is not None and self.nodes[node_id].changed):
                full = self.backing + path
                if os.path.isdir(full) and not os.path.islink(full):
                    if node_id is None or not self.nodes[node_id].is_dir:
                        shutil.rmtree(full)
                elif os.path.lexists(full):
                    os.unlink(full)
        for path in sorted(keep, key=lambda p: p.count("/")):
            node = self.nodes[keep[path]]
            full = self.backing + path
            if node.is_dir:
                os.makedirs(full, exist_ok=True)
            elif self.on_disk.get(path) != keep[path] or node.changed or not os.path.exists(full):
                with open(full, "wb") as handle:
                    handle.write(node.durable)

    # -- the volatile layer --------------------------------------------------------------

    def _add(self, node: Node) -> int:
        node_id = self.next_id
        self.next_id += 1
        self.nodes[node_id] = node
        return node_id

    def _next(self) -> int:
        self.sequence += 1
        return self.sequence

    def _dir_change(self, path: str, node_id: Optional[int]) -> None:
        self.dir_pending.setdefault(posixpath.dirname(path), []).append((self._next(), path, node_id))

    def _sync_file(self, node: Node) -> None:
        self.stats["file_syncs"] += 1
        if self.ignore_syncs == "all":
            return
        self.stats["synced_bytes"] += len(node.dirty) * PAGE
        for _, offset, piece in node.pending:
            _apply(node.durable, offset, piece)
        node.changed = node.changed or bool(node.pending)
        node.pending.clear()
        node.dirty.clear()

    def _sync_dir(self, path: str) -> None:
        self.stats["dir_syncs"] += 1
        if self.ignore_syncs:
            return
        for _, child, node_id in self.dir_pending.pop(path, []):
            self._set_durable_entry(child, node_id)

    def _set_durable_entry(self, path: str, node_id: Optional[int]) -> None:
        if node_id is None:
            self.durable_tree.pop(path, None)
        else:
            self.durable_tree[path] = node_id

    def cut(self, mode: str, seed: int) -> Dict[str, int]:
        """Freeze, keep the synced state plus what ``mode`` lets through, write it back."""
        rng = random.Random(seed)
        pieces: List[Tuple[int, Callable[[], None]]] = []
        for node in self.nodes.values():
            for sequence, offset, data in node.pending:
                if offset < 0:
                    pieces.append((sequence, functools.partial(_apply, node.durable, -1, data)))
                    continue
                for start, part in _pieces(offset, data):
                    pieces.append((sequence, functools.partial(_apply, node.durable, start, part)))
            node.changed = node.changed or bool(node.pending)
        for entries in self.dir_pending.values():
            for sequence, path, node_id in entries:
                pieces.append((sequence, functools.partial(self._set_durable_entry, path, node_id)))
        pieces.sort(key=lambda piece: piece[0])
        if mode == "drop":
            chosen: List[Tuple[int, Callable[[], None]]] = []
        elif mode == "prefix":
            chosen = pieces[: rng.randint(0, len(pieces))]
        elif mode == "subset":
            share = rng.random()
            chosen = [piece for piece in pieces if rng.random() < share]
        else:
            raise ValueError(f"mode must be one of {CUT_MODES}, got {mode!r}")
        for _, apply in chosen:
            apply()
        self._materialize()
        names = {node_id: path for path, node_id in self.tree.items()}
        # SQLite never syncs its -shm index; unsynced writes elsewhere mean a cut mid-commit
        # (full) or since the last checkpoint (fast).
        caught = sum(
            1 for node_id, node in self.nodes.items() if node.pending and not names.get(node_id, "").endswith("-shm")
        )
        return {**self.stats, "pieces": len(pieces), "applied": len(chosen), "files_unsynced": caught}

    def sync_everything(self) -> Dict[str, int]:
        """A clean shutdown: everything written reaches the backing directory."""
        for node in self.nodes.values():
            for _, offset, piece in node.pending:
                _apply(node.durable, offset, piece)
            node.changed = node.changed or bool(node.pending)
            node.pending.clear()
        for path in list(self.dir_pending):
            for _, child, node_id in self.dir_pending.pop(path):
                self._set_durable_entry(child, node_id)
        self._materialize()
        return dict(self.stats)

    # -- FUSE operations -----------------------------------------------------------------

    def _node(self, path: Optional[str], fh: Optional[int] = None) -> Node:
        if fh is not None and fh in self.handles:
            return self.nodes[self.handles[fh]]
        if path is None or path not in self.tree:
            raise _error(errno.ENOENT)
        return self.nodes[self.tree[path]]

    def _open_handle(self, node_id: int) -> int:
        handle = self.next_handle
        self.next_handle += 1
        self.handles[handle] = node_id
        return handle

    def getattr(self, path: Optional[str], fh: Optional[int] = None) -> Dict[str, Any]:
        """stat(2) of a path, or of an open file (``fh``), as the volatile layer has it."""
        node = self._node(path, fh)
        size = len(node.data)
        return {
            "st_mode": node.mode,
            "st_nlink": 2 if node.is_dir else 1,
            "st_size": size,
            "st_blocks": (size + 511) // 512,
            "st_blksize": PAGE,
            "st_uid": os.geteuid(),
            "st_gid": os.getegid(),
            "st_atime": node.mtime_ns,
            "st_mtime": node.mtime_ns,
            "st_ctime": node.mtime_ns,
        }

    def access(self, path: str, amode: int) -> int:
        """Every existing path is accessible (the tests run as root)."""
        self._node(path)
        return 0

    def readdir(self, path: str, fh: int) -> List[str]:
        """The entries of a directory as the volatile layer has them."""
        prefix = path.rstrip("/") + "/"
        return [".", ".."] + [p[len(prefix) :] for p in self.tree if p != "/" and posixpath.dirname(p) == path]

    def opendir(self, path: str) -> int:
        """Open a directory (for ``fsync`` on it, as SQLite and the queue do)."""
        if not self._node(path).is_dir:
            raise _error(errno.ENOTDIR)
        return 0

    def releasedir(self, path: Optional[str], fh: int) -> int:
        """Close a directory."""
        return 0

    def fsyncdir(self, path: Optional[str], datasync: int, fh: int) -> int:
        """Make the directory's changes since its last sync survive a cut."""
        if path is None:
            raise _error(errno.ENOENT)
        self._sync_dir(path)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        """Make a directory; its entry is volatile until the parent is synced."""
        if path in self.tree:
            raise _error(errno.EEXIST)
        self._parent(path)
        self.tree[path] = self._add(Node(True, stat.S_IFDIR | (mode & 0o7777)))
        self._dir_change(path, self.tree[path])
        return 0

    def rmdir(self, path: str) -> int:
        """Remove an empty directory; volatile until the parent is synced."""
        node = self._node(path)
        if not node.is_dir:
            raise _error(errno.ENOTDIR)
        if any(posixpath.dirname(p) == path for p in self.tree if p != "/"):
            raise _error(errno.ENOTEMPTY)
        del self.tree[path]
        self._dir_change(path, None)
        return 0

    def _parent(self, path: str) -> None:
        parent = self.tree.get(posixpath.dirname(path))
        if parent is None or not self.nodes[parent].is_dir:
            raise _error(errno.ENOENT)

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        """Create (or open) a file; its entry is volatile until the parent is synced."""
        if path not in self.tree:
            self._parent(path)
            self.tree[path] = self._add(Node(False, stat.S_IFREG | (mode & 0o7777)))
            self._dir_change(path, self.tree[path])
        return self._open_handle(self.tree[path])

    def open(self, path: str, flags: int) -> int:
        """Open a file; the handle outlives an unlink (``hard_remove``)."""
        self._node(path)
        return self._open_handle(self.tree[path])

    def release(self, path: Optional[str], fh: int) -> int:
        """Close a file handle."""
        self.handles.pop(fh, None)
        return 0

    def flush(self, path: Optional[str], fh: int) -> int:
        """close(2) on a handle: nothing to do, closing syncs nothing."""
        return 0

    def read(self, path: Optional[str], size: int, offset: int, fh: int) -> bytes:
        """Read what the volatile layer has, as a page cache would."""
        return bytes(self._node(path, fh).data[offset : offset + size])

    def write(self, path: Optional[str], data: bytes, offset: int, fh: int) -> int:
        """Write to the volatile layer; it survives a cut only once the file is synced."""
        node = self._node(path, fh)
        data = bytes(data)
        _apply(node.data, offset, data)
        node.pending.append((self._next(), offset, data))
        if data:
            node.dirty.update(range(offset // PAGE, (offset + len(data) - 1) // PAGE + 1))
        node.mtime_ns = time.time_ns()
        self.stats["written_bytes"] += len(data)
        return len(data)

    def truncate(self, path: Optional[str], length: int, fh: Optional[int] = None) -> int:
        """Set a file's size in the volatile layer (ordered with its writes)."""
        node = self._node(path, fh)
        _apply(node.data, -1, length)
        node.pending.append((self._next(), -1, length))
        if length % PAGE:
            node.dirty.add(length // PAGE)
        node.mtime_ns = time.time_ns()
        return 0

    def fsync(self, path: Optional[str], datasync: int, fh: int) -> int:
        """Make the file's writes since its last sync survive a cut (fsync and fdatasync)."""
        self._sync_file(self._node(path, fh))
        return 0

    def unlink(self, path: str) -> int:
        """Remove a file's entry; volatile until the parent is synced."""
        if self._node(path).is_dir:
            raise _error(errno.EISDIR)
        del self.tree[path]
        self._dir_change(path, None)
        return 0

    def rename(self, old: str, new: str) -> int:
        """Move a file's entry; volatile until both directories are synced."""
        node_id = self.tree.get(old)
        if node_id is None:
            raise _error(errno.ENOENT)
        if self.nodes[node_id].is_dir:
            raise _error(errno.ENOTSUP)
        self._parent(new)
        del self.tree[old]
        self.tree[new] = node_id
        self._dir_change(old, None)
        self._dir_change(new, node_id)
        return 0

    def chmod(self, path: Optional[str], mode: int) -> int:
        """Change the permission bits (not subject to cuts)."""
        node = self._node(path)
        node.mode = (node.mode & ~0o7777) | (mode & 0o7777)
        return 0

    def chown(self, path: Optional[str], uid: int, gid: int) -> int:
        """Accepted and ignored: ownership plays no part here."""
        self._node(path)
        return 0

    def utimens(self, path: Optional[str], times: Optional[Tuple[int, int]] = None) -> int:
        """Set the modification time (not subject to cuts)."""
        self._node(path).mtime_ns = times[1] if times else time.time_ns()
        return 0

    def statfs(self, path: str) -> Dict[str, int]:
        """A roomy file system (16 GiB free): the queue's free-space guard never trips here."""
        blocks = 1 << 22
        return {
            "f_bsize": PAGE,
            "f_frsize": PAGE,
            "f_blocks": blocks,
            "f_bfree": blocks,
            "f_bavail": blocks,
            "f_files": 1 << 20,
            "f_ffree": 1 << 20,
            "f_namemax": 255,
        }


def _error(code: int) -> OSError:
    import mfusepy

    error: OSError = mfusepy.FuseOSError(code)
    return error


OPERATIONS = (
    "getattr access readdir opendir releasedir fsyncdir mkdir rmdir create open release flush read write "
    "truncate fsync unlink rename chmod chown utimens statfs"
).split()


def _operations(fs: CrashFS) -> Any:
    """An mfusepy ``Operations`` object whose every call holds the lock and fails once frozen."""
    import mfusepy

    def guarded(method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            with fs.lock:
                if fs.frozen:
                    raise mfusepy.FuseOSError(errno.EIO)
                return method(*args, **kwargs)

        return call

    namespace: Dict[str, Any] = {"use_ns": True}
    for name in OPERATIONS:
        namespace[name] = staticmethod(guarded(getattr(fs, name)))
    return type("CrashOperations", (mfusepy.Operations,), namespace)()


def _serve(fs: CrashFS, mountpoint: str, control: socket.socket) -> None:
    """Body of the daemon: answer control commands on a thread while FUSE runs."""
    import mfusepy

    def commands() -> None:
        reader = control.makefile("r")
        for line in reader:
            words = line.split()
            with fs.lock:
                if words[0] == "cut":
                    fs.frozen = True
                    reply = fs.cut(words[1], int(words[2]))
                elif words[0] == "sync":
                    fs.frozen = True
                    reply = fs.sync_everything()
                else:
                    reply = dict(fs.stats)
            control.sendall((json.dumps(reply) + "\n").encode())

    threading.Thread(target=commands, daemon=True).start()
    mfusepy.FUSE(
        _operations(fs),
        mountpoint,
        foreground=True,
        hard_remove=True,
        attr_timeout=0,
        entry_timeout=0,
        negative_timeout=0,
        fsname="crashfs",
    )


class Mount:
    """``CrashFS`` over ``backing`` mounted at ``mountpoint`` by a forked daemon."""

    def __init__(self, backing: str, mountpoint: str, ignore_syncs: str = "") -> None:
        self.backing = os.path.abspath(backing)
        self.mountpoint = os.path.abspath(mountpoint)
        os.makedirs(self.backing, exist_ok=True)
        os.makedirs(self.mountpoint, exist_ok=True)
        ours, theirs = socket.socketpair()
        self._pid = os.fork()
        if self._pid == 0:  # pragma: no cover - the daemon
            code = 1
            try:
                ours.close()
                _serve(CrashFS(self.backing, ignore_syncs), self.mountpoint, theirs)
                code = 0
            finally:
                os._exit(code)
        theirs.close()
        self._control = ours
        self._replies = ours.makefile("r")
        deadline = time.monotonic() + 20
        while not os.path.ismount(self.mountpoint):
            finished, _ = os.waitpid(self._pid, os.WNOHANG)
            if finished or time.monotonic() > deadline:
                raise RuntimeError(f"the crash file system did not mount at {self.mountpoint}")
            time.sleep(0.002)
        self.mounted = True

    def _ask(self, command: str) -> Dict[str, int]:
        self._control.sendall((command + "\n").encode())
        line = self._replies.readline()
        if not line:
            raise RuntimeError(f"the crash file system daemon at {self.mountpoint} stopped answering")
        reply: Dict[str, int] = json.loads(line)
        return reply

    def stats(self) -> Dict[str, int]:
        """Bytes written and synced so far (``synced_bytes``: whole 4 KiB pages)."""
        return self._ask("stats")

    def power_cut(self, mode: str, seed: int) -> Dict[str, int]:
        """Lose the volatile layer as ``mode`` says (``CUT_MODES``), then unmount. Stop the
        processes using the mount first."""
        reply = self._ask(f"cut {mode} {seed}")
        self._finish()
        return reply

    def unmount(self) -> Dict[str, int]:
        """A clean shutdown: everything written is kept."""
        reply = self._ask("sync")
        self._finish()
        return reply

    def _finish(self) -> None:
        if not self.mounted:
            return
        self.mounted = False
        result = subprocess.run(["fusermount3", "-u", self.mountpoint], capture_output=True)
        if result.returncode != 0:
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], check=False, capture_output=True)
        # A busy mount (a process still holding a file) detaches lazily and its daemon would
        # wait for that process: it is stopped instead. The daemon writes the kept state out
        # before it exits, which takes seconds on a loaded 2-core machine: the wait is long.
        deadline = time.monotonic() + 60
        finished, status = os.waitpid(self._pid, os.WNOHANG)
        while not finished and time.monotonic() < deadline:
            time.sleep(0.002)
            finished, status = os.waitpid(self._pid, os.WNOHANG)
        if not finished:
            os.kill(self._pid, signal.SIGKILL)
            os.waitpid(self._pid, 0)
            raise RuntimeError(f"the crash file system at {self.mountpoint} was still in use")
        self._control.close()
        if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0:
            raise RuntimeError(f"the crash file system daemon failed (status {status})")

    def abandon(self) -> None:
        """Unmount after a failure elsewhere, keeping nothing new."""
        if self.mounted:
            self.mounted = False
            subprocess.run(["fusermount3", "-u", "-z", self.mountpoint], check=False, capture_output=True)
            with contextlib.suppress(ProcessLookupError):
                os.kill(self._pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
            self._control.close()


@contextlib.contextmanager
def mounted(backing: str, mountpoint: str, ignore_syncs: str = "") -> Iterator[Mount]:
    """A ``Mount`` that is cleaned up whatever happens; the body ends it with ``power_cut``
    or ``unmount``."""
    mount = Mount(backing, mountpoint, ignore_syncs)
    try:
        yield mount
    finally:
        mount.abandon()
