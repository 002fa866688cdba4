"""``HTTPCloudUploader`` and what it is made of (public import: ``cloud_sync.uploader``)."""
