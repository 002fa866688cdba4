"""The MQTT input's rejects file: the messages that were not JSON objects, each kept as
one JSON line with its reason before the broker is told it arrived.

A line holds ``at`` (when it was kept, Unix seconds), ``topic``, ``reason``, ``bytes``
(the payload's size) and, unless the queue seals its items, ``payload_base64``. The file
is created with mode 0600 and each group of lines is synced before the acknowledgement.
``cloud-sync rejects FILE`` lists it.
"""

import base64
import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import orjson


@dataclasses.dataclass(frozen=True)
class Reject:
    """One kept message: its topic, why it was refused, its size, and its bytes (None when
    the queue seals its items, since nothing derived from a payload is written in clear)."""

    at: float
    topic: str
    reason: str
    size: int
    payload: Optional[bytes] = dataclasses.field(repr=False)

    def to_line(self) -> bytes:
        """The file's line for this message (newline included)."""
        record: Dict[str, Any] = {"at": self.at, "topic": self.topic, "reason": self.reason, "bytes": self.size}
        if self.payload is not None:
            record["payload_base64"] = base64.b64encode(self.payload).decode("ascii")
        return orjson.dumps(record) + b"\n"

    def to_dict(self) -> Dict[str, Any]:
        """JSON-ready: the payload as text when it is UTF-8, else under ``payload_base64``."""
        record: Dict[str, Any] = {"at": self.at, "topic": self.topic, "reason": self.reason, "bytes": self.size}
        if self.payload is not None:
            try:
                record["payload"] = self.payload.decode("utf-8")
            except UnicodeDecodeError:
                record["payload_base64"] = base64.b64encode(self.payload).decode("ascii")
        return record


def append(path: str, rejects: Sequence[Reject]) -> None:
    """Add ``rejects`` to the file at ``path`` (made 0600, never through a symlink) and
    sync it, so that they are on disk before the messages are acknowledged."""
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        os.write(fd, b"".join(reject.to_line() for reject in rejects))
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path: str) -> List[Reject]:
    """The messages kept in the file at ``path``, oldest first; a line that is not one of
    the file's records is a ``ValueError`` naming its number (a line cut short by a crash
    while it was written is skipped when it is the last)."""
    with open(path, "rb") as handle:
        lines = handle.read().split(b"\n")
    rejects = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
            payload = record.get("payload_base64")
            rejects.append(
                Reject(
                    float(record["at"]),
                    str(record["topic"]),
                    str(record["reason"]),
                    int(record["bytes"]),
                    None if payload is None else base64.b64decode(payload, validate=True),
                )
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not a record of an MQTT rejects file") from None
    return rejects


def keep_payloads(queue_options: Mapping[str, Any]) -> bool:
    """Rejected payloads are kept only when the queue does not seal its items: a sealed
    queue writes nothing derived from a payload in clear."""
    return queue_options.get("encryption_key") is None
