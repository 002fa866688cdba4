"""What the ``cloud-sync`` commands share: exit codes, usage errors, opening a queue file
and printing JSON."""

import argparse
import os
import time
from typing import Any, Callable, List, Optional, Sequence, Union

import orjson

from .. import CloudSyncQueue, DeadLetter, QueueItem
from .._errors import MissingExtraError
from .._store.integrity import require_queue
from .._store.seal import DEFAULT_CIPHER, EXTRA_HINT, KeyRing
from ._render import Output

EXIT_OK, EXIT_INCOMPLETE, EXIT_USAGE, EXIT_DATABASE = 0, 1, 2, 3


class UsageError(Exception):
    """A problem with how the command was called; exits 2."""


def open_queue(path: str, args: Optional[argparse.Namespace] = None, **options: Any) -> CloudSyncQueue:
    """Open an existing queue file; an operator command never creates one by mistake. The
    ``--key-file``s of a command that reads payloads open sealed ones (the last is the newest);
    ``options`` are more constructor arguments (the flush's pacing), a bad one a ``ValueError``
    or ``TypeError`` (exit 2) raised before the file is opened. A file that is not a queue
    database is refused (``DatabaseError``, exit 3) after a read-only look, unchanged."""
    if not os.path.exists(path):
        raise UsageError(f"no queue database at {path!r}")
    require_queue(path)
    key_files = getattr(args, "key_file", None)
    if args is not None and key_files:
        options.update(
            encryption_key=KeyRing.from_files(key_files), encryption_cipher=getattr(args, "cipher", DEFAULT_CIPHER)
        )
    try:
        return CloudSyncQueue(path, **options)
    except MissingExtraError:
        if not key_files:
            raise
        raise MissingExtraError(f"--key-file needs the 'cryptography' package: {EXTRA_HINT}") from None


def print_json(out: Output, value: Any) -> None:
    """Write ``value`` as indented JSON (what ``--json`` prints)."""
    out.stream.write(orjson.dumps(value, option=orjson.OPT_INDENT_2, default=str).decode() + "\n")


def shorten(text: str, width: int) -> str:
    """``text`` cut to ``width`` characters, an ellipsis marking the cut."""
    return text if len(text) <= width else text[: width - 1] + "…"


def show_entries(
    out: Output,
    as_json: bool,
    entries: Sequence[Union[QueueItem, DeadLetter]],
    headers: List[str],
    title: str,
    cells: Callable[[Any, float], Sequence[Any]],
    width: int,
) -> int:
    """Print stored items or dead letters: as JSON with ``--json``, else as a table of their
    id and priority, ``cells(entry, now)``, and the payload cut to ``width`` characters."""
    if as_json:
        print_json(out, [entry.to_dict() for entry in entries])
        return EXIT_OK
    now = time.time()
    rows = [
        [
            entry.id,
            entry.priority.name,
            *cells(entry, now),
            shorten(orjson.dumps(entry.payload, default=str).decode(), width),
        ]
        for entry in entries
    ]
    out.table(headers, rows, title=title)
    return EXIT_OK
