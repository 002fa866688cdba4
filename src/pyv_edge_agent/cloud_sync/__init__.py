"""A persistent store-and-forward queue for edge-to-cloud sync, backed by SQLite.

Sensor threads ``enqueue``; a sync loop calls ``maybe_flush`` with an uploader. Items
stay on disk, most important first, until the cloud has accepted them.
"""

import importlib
from typing import TYPE_CHECKING, Any, List

from ._store.schema import check_sqlite_version

check_sqlite_version()

from ._codec import BACKEND  # noqa: E402
from ._errors import (
    CloudSyncError,
    CorruptDatabaseError,
    DatabaseError,
    DecryptionError,
    DiskFullError,
    MissingKeyError,
    QueueFullError,
    UploadError,
)
from ._queue import CloudSyncQueue  # noqa: E402
from ._store.integrity import IntegrityReport  # noqa: E402
from ._types import DeadLetter, Priority, QueueItem  # noqa: E402

if TYPE_CHECKING:
    from ._upload_types import AsyncUploader, OutgoingItem, Uploader, UploadResult
    from .delivery.http.credentials import Credentials, OAuth2ClientCredentials, TokenFileCredentials
    from .delivery.http.uploader import HTTPCloudUploader
    from .delivery.mqtt.uploader import MQTTUploader
    from .worker import SyncWorker

# Imported on first use (PEP 562): a process that only enqueues never needs the uploader,
# the sync worker or the flush machinery behind them, a tenth of the package's import time.
_LAZY = {
    "HTTPCloudUploader": "delivery.http.uploader",
    "MQTTUploader": "delivery.mqtt.uploader",
    "UploadResult": "_upload_types",
    "Uploader": "_upload_types",
    "AsyncUploader": "_upload_types",
    "OutgoingItem": "_upload_types",
    "SyncWorker": "worker",
    "Credentials": "delivery.http.credentials",
    "TokenFileCredentials": "delivery.http.credentials",
    "OAuth2ClientCredentials": "delivery.http.credentials",
}


def __getattr__(name: str) -> Any:
    """Import the uploaders, their contract and credentials, and ``SyncWorker`` when first asked for."""
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
    "AsyncUploader",
    "BACKEND",
    "CloudSyncError",
    "CloudSyncQueue",
    "CorruptDatabaseError",
    "Credentials",
    "DatabaseError",
    "DeadLetter",
    "DecryptionError",
    "DiskFullError",
    "HTTPCloudUploader",
    "IntegrityReport",
    "MQTTUploader",
    "MissingKeyError",
    "OutgoingItem",
    "OAuth2ClientCredentials",
    "Priority",
    "QueueFullError",
    "QueueItem",
    "SyncWorker",
    "TokenFileCredentials",
    "UploadError",
    "UploadResult",
    "Uploader",
    "__version__",
]
