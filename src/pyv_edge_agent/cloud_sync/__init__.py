"""A persistent store-and-forward queue for edge-to-cloud sync, backed by SQLite.

Sensor threads ``enqueue``; a sync loop calls ``maybe_flush`` with an uploader. Items
stay on disk, most important first, until the cloud has accepted them.
"""

from ._schema import check_sqlite_version

check_sqlite_version()

from ._codec import BACKEND  # noqa: E402
from ._errors import (  # noqa: E402
    CloudSyncError,
    CorruptDatabaseError,
    DatabaseError,
    DiskFullError,
    QueueFullError,
    UploadError,
)
from ._integrity import IntegrityReport  # noqa: E402
from ._queue import CloudSyncQueue  # noqa: E402
from ._types import DeadLetter, Priority, QueueItem  # noqa: E402
from .uploader import HTTPCloudUploader, UploadResult  # noqa: E402
from .worker import SyncWorker  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "BACKEND",
    "CloudSyncError",
    "CloudSyncQueue",
    "CorruptDatabaseError",
    "DatabaseError",
    "DeadLetter",
    "DiskFullError",
    "HTTPCloudUploader",
    "IntegrityReport",
    "Priority",
    "QueueFullError",
    "QueueItem",
    "SyncWorker",
    "UploadError",
    "UploadResult",
    "__version__",
]
