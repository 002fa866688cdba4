"""A persistent store-and-forward queue for edge-to-cloud sync, backed by SQLite.

Sensor threads ``enqueue``; a sync loop calls ``maybe_flush`` with an uploader. Items
stay on disk, most important first, until the cloud has accepted them.
"""

import importlib
from typing import TYPE_CHECKING, Any, List

from ._schema import check_sqlite_version

check_sqlite_version()

from ._codec import BACKEND  # noqa: E402
from ._errors import (  # noqa: E402
    CloudSyncError,
    CorruptDatabaseError,
    DatabaseError,
    DecryptionError,
    DiskFullError,
    MissingKeyError,
    QueueFullError,
    UploadError,
)
from ._integrity import IntegrityReport  # noqa: E402
from ._queue import CloudSyncQueue  # noqa: E402
from ._types import DeadLetter, Priority, QueueItem  # noqa: E402

if TYPE_CHECKING:
    from ._upload_types import UploadResult
    from .uploader import HTTPCloudUploader
    from .worker import SyncWorker

# Imported on first use (PEP 562): a process that only enqueues never needs the uploader,
# the sync worker or the flush machinery behind them, a tenth of the package's import time.
_LAZY = {"HTTPCloudUploader": "uploader", "UploadResult": "_upload_types", "SyncWorker": "worker"}


def __getattr__(name: str) -> Any:
    """Import ``HTTPCloudUploader``, ``UploadResult`` and ``SyncWorker`` when first asked for."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> List[str]:
    """The module's names, including those imported on first use."""
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    "BACKEND",
    "CloudSyncError",
    "CloudSyncQueue",
    "CorruptDatabaseError",
    "DatabaseError",
    "DeadLetter",
    "DecryptionError",
    "DiskFullError",
    "HTTPCloudUploader",
    "IntegrityReport",
    "MissingKeyError",
    "Priority",
    "QueueFullError",
    "QueueItem",
    "SyncWorker",
    "UploadError",
    "UploadResult",
    "__version__",
]
