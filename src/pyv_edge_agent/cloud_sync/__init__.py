"""A persistent store-and-forward queue for edge-to-cloud sync, backed by SQLite.

Sensor threads ``enqueue``; a sync loop calls ``maybe_flush`` with an uploader. Items
stay on disk, most important first, until the cloud has accepted them.
"""

from typing import TYPE_CHECKING, Any

from ._schema import check_sqlite_version

check_sqlite_version()

from ._codec import BACKEND  # noqa: E402
from ._errors import CloudSyncError, DatabaseError, QueueFullError, UploadError  # noqa: E402
from ._queue import CloudSyncQueue  # noqa: E402
from ._types import Priority, QueueItem  # noqa: E402

if TYPE_CHECKING:
    from .uploader import HTTPCloudUploader

__version__ = "0.1.0"


__all__ = [
    "BACKEND",
    "CloudSyncError",
    "CloudSyncQueue",
    "DatabaseError",
    "HTTPCloudUploader",
    "Priority",
    "QueueFullError",
    "QueueItem",
    "UploadError",
    "__version__",
]


def __getattr__(name: str) -> Any:
    # The uploader (and urllib3, most of the import time) loads on first use, so that a
    # process that only enqueues starts fast.
    if name == "HTTPCloudUploader":
        from .uploader import HTTPCloudUploader

        return HTTPCloudUploader
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
