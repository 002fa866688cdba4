"""The package's exceptions: one base class, subclasses where a caller would catch them."""

from typing import Optional


class CloudSyncError(Exception):
    """Base class of every error this package raises on purpose."""


class DatabaseError(CloudSyncError):
    """The queue file cannot be used: not a SQLite database, corrupt, or from a newer release."""


class QueueFullError(CloudSyncError):
    """The queue cannot take the item without breaking a storage limit; nothing was written."""


class UploadError(CloudSyncError):
    """An upload attempt failed; ``status`` is the HTTP status, or None when no response came.

    ``credentials_refused`` marks a refusal that no HTTP status of the endpoint shows (a
    TLS alert about the client certificate, a proxy's 407, a token endpoint refusing the
    client): the flush treats it like a 401, keeping the items and backing off long.
    """

    def __init__(
        self,
        message: str,
        status: Optional[int] = None,
        retry_after: Optional[float] = None,
        *,
        credentials_refused: bool = False,
    ):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.credentials_refused = credentials_refused


class DiskFullError(QueueFullError, OSError):
    """The disk (or SQLite's page limit) is full: ``errno`` is ENOSPC and ``filename`` the
    database. Nothing of the failed call was written and nothing stored was lost; the queue
    works again once space is freed."""


class CorruptDatabaseError(DatabaseError):
    """The queue file is damaged, truncated or not a SQLite database. It was left untouched
    (or, with ``on_corrupt="quarantine"``, renamed aside)."""


class DecryptionError(CloudSyncError):
    """A sealed item cannot be opened: its stored text was changed or moved to another row,
    or the key under its key id is wrong. ``item_id`` and ``key_id`` name it (never the
    key); nothing stored was changed or deleted."""

    def __init__(self, message: str, item_id: Optional[int] = None, key_id: Optional[str] = None):
        super().__init__(message)
        self.item_id = item_id
        self.key_id = key_id


class MissingKeyError(DecryptionError):
    """A sealed item's key id is not supplied by the queue's ``encryption_key`` (or the
    queue has none)."""


class MissingExtraError(ImportError):
    """An optional dependency is not installed; the message names the ``pip install`` that
    adds it. An ``ImportError``, so code that catches that keeps working; the command line
    shows it as one line (exit 2) rather than a traceback."""
