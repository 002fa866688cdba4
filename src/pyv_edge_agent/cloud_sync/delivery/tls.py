"""TLS settings of ``HTTPCloudUploader`` and ``MQTTUploader``: the trusted authorities
(checked once, alike for both) and, for mutual TLS, a client certificate that is read again
whenever its files change on disk.

Certificates are rotated by writing new files under a running agent. Before each request
the files are stat()ed (two system calls); when one changed, a new context is built from
them. A pair caught half-written (a new certificate with the old key) does not load: the
old context stays in use, with one warning, until the pair is whole again.
"""

import logging
import os
import ssl
import threading
from typing import Any, Callable, Optional, Tuple

from .. import _validate
from .._redact import Secret

logger = logging.getLogger("pyv_edge_agent.cloud_sync")

# (inode, size, modification time in ns) of each file: a change in any means new contents.
Signature = Tuple[Tuple[int, int, int], ...]

# Alerts a server sends about the client's certificate (OpenSSL's reason names). A TLS
# 1.2 server without a certificate it wants says only "handshake failure"; that (or no
# cipher in common) needs a person too, not a quick retry.
_CERTIFICATE_ALERTS = (
    "ALERT_HANDSHAKE_FAILURE",
    "CERTIFICATE_REQUIRED",
    "BAD_CERTIFICATE",
    "CERTIFICATE_UNKNOWN",
    "CERTIFICATE_EXPIRED",
    "CERTIFICATE_REVOKED",
    "UNSUPPORTED_CERTIFICATE",
    "ALERT_UNKNOWN_CA",
    "ALERT_ACCESS_DENIED",
)


def refused_certificate(exc: BaseException) -> bool:
    """Whether ``exc`` (or an error it wraps) is the server refusing our certificate, as
    opposed to a network failure or our refusing the server's."""
    text = error_chain_text(exc).upper()
    return any(alert in text for alert in _CERTIFICATE_ALERTS)


def _check_file(value: Any, name: str) -> str:
    path = _validate.file_path(name, value)
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except FileNotFoundError:
        raise ValueError(f"{name}: no file at {path!r:.200}") from None
    except OSError as exc:
        raise ValueError(f"{name}: cannot read {path!r:.200} ({exc.strerror or type(exc).__name__})") from None
    except ValueError:  # a NUL in the path
        raise ValueError(f"{name}: {path!r:.200} is not a path (it holds a NUL character)") from None
    return path


def check_ca_certs(value: Any) -> Optional[str]:
    """``ca_certs`` checked at construction (None: the system's authorities): a readable PEM
    file that OpenSSL loads certificate authorities from. The same errors for every uploader."""
    if value is None:
        return None
    path = _check_file(value, "ca_certs")
    try:
        ssl.create_default_context().load_verify_locations(cafile=path)
    except (ssl.SSLError, ValueError):
        raise ValueError(
            f"ca_certs {path!r:.200} holds no PEM certificate OpenSSL can load: expected a PEM file of certificate"
            " authorities (-----BEGIN CERTIFICATE----- blocks)"
        ) from None
    except OSError as exc:
        raise ValueError(f"ca_certs: cannot read {path!r:.200} ({exc.strerror or type(exc).__name__})") from None
    return path


def _no_prompt() -> str:
    # Given to OpenSSL as the password callback when there is no key_password: without one
    # it would prompt for a pass phrase on the terminal and block the flush.
    raise ValueError("client_key is encrypted: give key_password")


def _password_bytes(password: Any) -> bytes:
    """The password as OpenSSL takes it: bytes as given, a str in UTF-8. Errors name the
    argument, never the password."""
    if isinstance(password, bytes):
        return password
    if not isinstance(password, str):
        raise TypeError(f"key_password must be a str or bytes, got {type(password).__name__}")
    try:
        return password.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"key_password is a str that cannot be encoded as UTF-8 (a lone surrogate at position {exc.start}); "
            "give the password as bytes"
        ) from None


class ClientCertificate:
    """A client certificate and its private key, loaded into an ``ssl.SSLContext``.

    :param cert: PEM file of the certificate (and any intermediates; the key may follow).
    :param key: PEM file of the private key, if not in ``cert``.
    :param password: the password of an encrypted key; never shown.
    """

    def __init__(self, cert: Any, key: Any, password: Any) -> None:
        self._cert = _check_file(cert, "client_cert")
        self._key = None if key is None else _check_file(key, "client_key")
        self._password_bytes = None if password is None else _password_bytes(password)
        self._password = None
        if self._password_bytes is not None:
            # For scrubbing only: what a server or a repr may echo of it.
            try:
                shown = self._password_bytes.decode("utf-8")
            except UnicodeDecodeError:
                shown = self._password_bytes.decode("latin-1")  # a repr shows such bytes as \xff
            self._password = Secret(shown)
        self._lock = threading.Lock()
        self._signature = self._stat()
        self._warned = False

    def paths(self) -> Tuple[str, ...]:
        """The files read, certificate first."""
        return (self._cert,) if self._key is None else (self._cert, self._key)

    def _stat(self) -> Signature:
        out = []
        for path in self.paths():
            try:
                st = os.stat(path)
                out.append((st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((0, -1, 0))
        return tuple(out)

    def secrets(self) -> Tuple[str, ...]:
        """The key password, for scrubbing."""
        return () if self._password is None else (self._password.reveal(),)

    def load_into(self, context: ssl.SSLContext) -> None:
        """Load the pair into ``context``; raise ``ValueError`` naming the argument at fault."""
        key_name = "client_cert" if self._key is None else "client_key"
        try:
            with open(self._cert, "rb") as handle:
                cert_text = handle.read()
            key_text = cert_text
            if self._key is not None:
                with open(self._key, "rb") as handle:
                    key_text = handle.read()
        except OSError as exc:
            raise ValueError(f"{key_name}: cannot read ({exc.strerror or type(exc).__name__})") from None
        if b"-----BEGIN CERTIFICATE-----" not in cert_text:
            raise ValueError(f"client_cert {self._cert!r:.200} holds no PEM certificate")
        if b"PRIVATE KEY-----" not in key_text:
            raise ValueError(f"{key_name} {(self._key or self._cert)!r:.200} holds no PEM private key")
        encrypted = b"ENCRYPTED" in key_text
        if encrypted and self._password is None:
            # Without a password OpenSSL would prompt for one on the terminal.
            raise ValueError(f"{key_name} is encrypted: give key_password")
        password: "bytes | Callable[[], str]" = _no_prompt if self._password_bytes is None else self._password_bytes
        try:
            # Bytes: OpenSSL takes the password as it is, whatever its encoding.
            context.load_cert_chain(self._cert, self._key, password)
        except ValueError as exc:  # from _no_prompt: OpenSSL found the key encrypted after all
            raise ValueError(f"{key_name} is encrypted: give key_password") from exc
        except ssl.SSLError as exc:
            raise ValueError(self._explain(exc, encrypted)) from None
        except OSError as exc:
            raise ValueError(f"{key_name}: cannot read ({exc.strerror or type(exc).__name__})") from None

    @staticmethod
    def _explain(exc: ssl.SSLError, encrypted: bool) -> str:
        if "KEY_VALUES_MISMATCH" in str(exc):
            return "client_key does not belong to client_cert (the key and the certificate do not match)"
        if encrypted:
            return "key_password does not decrypt client_key (wrong password?)"
        return f"client_cert/client_key cannot be loaded: {exc.reason or 'OpenSSL cannot read them'}"

    def changed(self) -> bool:
        """Whether a file changed since the last successful load (cheap: stat only)."""
        return self._stat() != self._signature

    def reload(self, build: Callable[[], ssl.SSLContext]) -> Optional[ssl.SSLContext]:
        """A new context from ``build()`` with the files as they are now, or None when they
        have not changed or do not load (then the old context stays in use)."""
        with self._lock:
            signature = self._stat()
            if signature == self._signature:
                return None
            context = build()
            try:
                self.load_into(context)
            except ValueError as exc:
                if not self._warned:
                    logger.warning("the client certificate files changed but do not load (%s); keeping the old", exc)
                    self._warned = True
                return None
            self._signature = signature
            self._warned = False
            logger.info("loaded the rotated client certificate from %s", self._cert)
            return context


def error_chain_text(exc: BaseException) -> str:
    """The texts of ``exc`` and the errors it wraps (urllib3 nests the cause in ``reason``)."""
    texts = []
    current: Optional[BaseException] = exc
    for _ in range(8):
        if current is None:
            break
        texts.append(str(current))
        reason = getattr(current, "reason", None)
        current = reason if isinstance(reason, BaseException) else current.__context__
    return " | ".join(texts)
