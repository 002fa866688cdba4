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
    database is refused (``DatabaseError``, exit 3) after a read-only look, unchanged.

    A file with destinations is opened with all of them, as registered: a command neither
    adds nor drops one. A ``--destination`` it does not have is a ``UsageError`` naming the
    option, the value and the file's destinations, raised before the file is opened."""
    if not os.path.exists(path):
        raise UsageError(f"no queue database at {path!r}")
    require_queue(path)
    registered = CloudSyncQueue.destinations_of(path)
    chosen = getattr(args, "destination", None)
    if chosen is not None and chosen not in registered:
        its = f"its destinations are {list(registered)}" if registered else "it has no destinations"
        raise UsageError(f"--destination {chosen!r}: {path!r} has no such destination; {its}")
    if registered:
        options["destinations"] = registered
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


def one_destination(queue: CloudSyncQueue, args: argparse.Namespace, command: str) -> Optional[str]:
    """The destination ``command`` acts for: ``--destination``, else the file's only one,
    else None (a file without destinations). A file with several needs ``--destination``:
    a ``UsageError`` naming them."""
    if args.destination is not None:
        return str(args.destination)
    if len(queue.destinations) > 1:
        raise UsageError(
            f"{command}: {args.db!r} feeds several destinations {list(queue.destinations)};"
            " name one with --destination NAME"
        )
    return queue.destinations[0] if queue.destinations else None


def add_destination_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """Add ``--destination NAME`` to a command's parser; ``what`` says what it selects."""
    parser.add_argument("--destination", metavar="NAME", help=f"{what} (a file with several destinations)")


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
