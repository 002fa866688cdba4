"""The HTTPS uploader, where the documentation has always imported it from.

``HTTPCloudUploader`` lives in ``delivery.http``; ``UploadResult`` and ``UploadError`` are
what every uploader hands back (``_upload_types``).
"""

from ._upload_types import UploadError, UploadResult
from .delivery.http.uploader import HTTPCloudUploader

__all__ = ["HTTPCloudUploader", "UploadError", "UploadResult"]
