"""Argument checks shared by the public entry points.

Each raises ``TypeError`` or ``ValueError`` naming the argument and the value, before
anything is written.
"""

import ipaddress
import math
import os
from typing import Any, Mapping, Optional

from ._types import Priority, shown

INT64_MAX = 2**63 - 1
# A dict lookup is several times cheaper than ``Priority.value`` (an enum property) on the
# per-item enqueue path.
_PRIORITY_VALUES = {member: member.value for member in Priority}


def priority_value(priority: Any) -> int:
    """Return the stored integer for a ``Priority`` member or an int 1..4."""
    if type(priority) is Priority:  # an enum with members cannot be subclassed
        return _PRIORITY_VALUES[priority]
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(
            f"priority must be a Priority or an int 1..4, got {type(priority).__name__}: {shown(priority, 100)}"
        )
    if not 1 <= priority <= 4:
        raise ValueError(f"priority must be one of 1 (CRITICAL) .. 4 (LOGS), got {priority!r}")
    return int(priority)


def integer(name: str, value: Any, minimum: int, maximum: int = INT64_MAX) -> int:
    """Return ``value`` if it is an int (not a bool) within ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}: {shown(value, 100)}")
    if not minimum <= value <= maximum:
        raise ValueError(f"{name} must be between {minimum} and {maximum}, got {value!r}")
    return int(value)


def number(name: str, value: Any, minimum: float, *, allow_equal: bool = True, maximum: float = math.inf) -> float:
    """Return ``value`` as a float if it is a finite real number at or above ``minimum``
    (above it unless ``allow_equal``) and at most ``maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}: {shown(value, 100)}")
    result = float(value)
    if not math.isfinite(result) or result < minimum or (not allow_equal and result == minimum):
        relation = "at least" if allow_equal else "greater than"
        raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")
    if result > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {value!r}")
    return result


def db_path(value: Any) -> str:
    """Return the queue file path ``value`` as a str: a plain file path or ``":memory:"``.

    SQLite reads a name starting with ``file:`` as a URI, and the queue reopens its file
    read-only through a ``file:`` URI, in which a path starting with ``//`` names a host.
    """
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"db_path must be a str or os.PathLike, got {type(value).__name__}: {shown(value, 100)}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise ValueError(f"db_path must be a non-empty text path, got {shown(value, 100)}")
    if path[:5].lower() == "file:":
        raise ValueError(
            f"db_path must be a file path, not a SQLite URI, got {path!r:.200} (a file so named: prefix it with ./)"
        )
    if path != ":memory:" and os.path.abspath(path).startswith("//"):
        raise ValueError(
            f"db_path must not start with '//' (SQLite would read what follows as a host), got {path!r:.200}"
        )
    if "\x00" in path:
        raise ValueError(f"db_path must not contain a NUL character, got {path!r:.200}")
    return path


def file_path(name: str, value: Any) -> str:
    """A path given as ``str`` or ``os.PathLike``, as text; empty is refused."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a path (str or os.PathLike), got {type(value).__name__}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text:
        raise ValueError(f"{name} must be a non-empty text path, got {text!r:.200}")
    return text


def choice(name: str, value: Any, allowed: "tuple[str, ...]") -> str:
    """Return ``value`` if it is one of the ``allowed`` strings."""
    if value not in allowed or not isinstance(value, str):
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {shown(value, 100)}")
    return value


def iterable(name: str, value: Any) -> None:
    """Raise ``TypeError`` naming ``name`` unless ``value`` can be iterated over."""
    try:
        iter(value)
    except TypeError:
        raise TypeError(f"{name} must be a sequence, got {type(value).__name__}: {shown(value, 100)}") from None


def boolean(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool (not merely truthy: ``"false"`` from a configuration
    file would be)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}: {shown(value, 100)}")
    return value


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) is this machine's loopback."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def destination_uploaders(destinations: "tuple[str, ...]", uploader: Any) -> "list[tuple[Optional[str], Any]]":
    """The loops a sync worker runs for ``uploader`` on a queue feeding ``destinations``:
    one per entry of a mapping of destination names to uploaders, else one for the queue
    (refused when the queue has several destinations)."""
    if isinstance(uploader, Mapping):
        if not uploader:
            raise ValueError("uploader: the mapping of destinations to uploaders is empty")
        return [(str(name), each) for name, each in uploader.items()]
    if len(destinations) > 1:
        raise ValueError(
            f"uploader: this queue feeds {sorted(destinations)}; give a mapping of each destination's name to"
            " its uploader"
        )
    return [(None, uploader)]
