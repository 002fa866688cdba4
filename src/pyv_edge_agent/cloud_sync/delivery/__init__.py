"""The shipped uploaders: how a batch reaches a cloud.

``http`` (``HTTPCloudUploader``: its settings, headers, TLS, proxy, rotating credentials,
deadlines and answer reading) and ``mqtt`` (``MQTTUploader``: its session and messages);
``tls`` is the certificate handling both share. They see the queue only through the public
uploader contract (``Uploader``, ``OutgoingItem``, ``UploadResult``), never the flush or the
store.
"""
