"""Encryption at rest: the key ring, the AEAD ciphers and the stored format of a sealed item.

A sealed payload stays in the ``payload`` TEXT column as ``~1<c><key id>:<base64>``:
``~`` marks it (a plain payload is a JSON object and starts with ``{``), ``1`` is the
format, ``<c>`` the cipher (``c`` ChaCha20-Poly1305, ``a`` AES-256-GCM), then the key id
and the base64 of a random 12-byte nonce, the ciphertext and the 16-byte tag.

The associated data is that header plus the item's id and priority, the two columns that
nothing changes for the item's life (``created_at`` moves with clock steps and on requeue;
a dead letter keeps its id and priority). The id is not known before the INSERT on SQLite
3.34 (no RETURNING), so a sealing queue inserts with explicit ids: the AUTOINCREMENT
sequence's next ids, read under the write lock of the same transaction (``Store.insert``).
The cipher key is derived from the configured key and the queue file's random
``queue_id`` (HKDF-Expand with HMAC-SHA256), so a ciphertext moved to another row or to
another queue file fails authentication, and a key shared by a fleet of gateways spends
its random-nonce budget per file.

``cryptography`` is imported only when a key is configured: a queue without one never
loads this module's ciphers, and its paths pay nothing.
"""

import binascii
import hashlib
import hmac
import operator
import os
import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple, TypeVar

from .._errors import DecryptionError, MissingExtraError, MissingKeyError
from .._types import Column

CIPHERS = ("chacha20-poly1305", "aes-256-gcm")
DEFAULT_CIPHER = CIPHERS[0]
KEY_BYTES = 32
MARK = "~"
MARK_BYTE = MARK.encode()
_FORMAT = "1"
_LETTER = {"chacha20-poly1305": "c", "aes-256-gcm": "a"}
_CIPHER_OF = {letter: name for name, letter in _LETTER.items()}
_NONCE_BYTES = 12
KEY_ID_PATTERN = re.compile(r"[A-Za-z0-9_.-]{1,32}")
_HEADER = re.compile(r"~1([ca])([A-Za-z0-9_.-]{1,32}):")
# Associated data of a sealed note (an error text) after the header: never a row's "<id>:".
_NOTE = b"note:"
# What a sealed note reads as where it cannot be opened.
SEALED_NOTE = "(sealed: open the queue with its encryption_key to read it)"
_ITEM_KEY_INFO = b"pyv-edge-agent cloud_sync item key v1\x00"
_KEY_ID_INFO = b"pyv-edge-agent cloud_sync key id v1"
EXTRA_HINT = "pip install 'pyv-edge-agent[crypto]'"

KeySource = Callable[[Optional[str]], Any]
_Row = TypeVar("_Row", bound=Tuple[Any, ...])
_Decoded = TypeVar("_Decoded")


def key_id_of(key: bytes) -> str:
    """The key id of a raw key: 8 hex digits of an HMAC of it (a fingerprint, no secret)."""
    return hmac.new(key, _KEY_ID_INFO, hashlib.sha256).hexdigest()[:8]


def _key_bytes(value: Any, what: str) -> bytes:
    if not isinstance(value, (bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be {KEY_BYTES} bytes, got {type(value).__name__}")
    key = bytes(value)
    if len(key) != KEY_BYTES:
        # The length only: never the key itself.
        raise ValueError(f"{what} must be {KEY_BYTES} bytes, got {len(key)} bytes")
    return key


KEY_FORMS = (
    f"a key is {KEY_BYTES} bytes (a bytes object), the path of a key file holding {KEY_BYTES} raw bytes,"
    f" {2 * KEY_BYTES} hex digits or the base64 of {KEY_BYTES} bytes, or a callable returning keys by key id;"
    " a str is always taken for a path, never for key text"
)


def read_key_file(path: "str | os.PathLike[str]", what: str = "encryption_key", *, show_path: bool = False) -> bytes:
    """Read a key file: 32 raw bytes, or 64 hex digits, or the base64 of 32 bytes (text
    around it may end in a newline). Errors never show the content, and show the path only
    with ``show_path`` (a str given as ``encryption_key`` may be key text by mistake)."""
    name = os.fspath(path)
    shown = f" {name!r:.200}" if show_path else ""
    try:
        with open(name, "rb") as handle:
            data = handle.read(4096)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        where = shown or " (the path is not shown: it may be key text)"
        raise ValueError(f"{what}: cannot read the key file{where}: {reason}; {KEY_FORMS}") from None
    if len(data) == KEY_BYTES:
        return data
    text = data.strip()
    try:
        if len(text) == 2 * KEY_BYTES:
            return bytes.fromhex(text.decode("ascii"))
        decoded = binascii.a2b_base64(text)
        if len(decoded) == KEY_BYTES and len(text) == 44:
            return decoded
    except (ValueError, UnicodeDecodeError, binascii.Error):
        pass
    raise ValueError(
        f"{what}: the key file{shown} holds {len(data)} bytes: expected {KEY_BYTES} raw bytes,"
        f" {2 * KEY_BYTES} hex digits or the base64 of {KEY_BYTES} bytes"
    )


class KeyRing:
    """Raw keys, each under its derived key id, the last one the newest; callable the way
    ``encryption_key`` takes a callable (``ring(None)``: the newest ``(key_id, key)``;
    ``ring(key_id)``: that key or None). The command line's ``--key-file``s make one."""

    def __init__(self, keys: Sequence[bytes]) -> None:
        if not keys:
            raise ValueError("a KeyRing needs at least one key")
        self._keys = {key_id_of(key): key for key in (_key_bytes(k, "a KeyRing key") for k in keys)}
        self._newest = key_id_of(bytes(keys[-1]))

    @classmethod
    def from_files(cls, paths: Sequence["str | os.PathLike[str]"]) -> "KeyRing":
        """A ring of the keys in ``paths`` (see ``read_key_file``), the last one the newest."""
        return cls([read_key_file(path, "--key-file", show_path=True) for path in paths])

    def __call__(self, key_id: Optional[str]) -> Any:
        if key_id is None:
            return self._newest, self._keys[self._newest]
        return self._keys.get(key_id)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={list(self._keys)!r}, newest={self._newest!r})"


def _aead_class(cipher: str) -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers import aead
    except ImportError as exc:
        raise MissingExtraError(f"encryption_key needs the 'cryptography' package: {EXTRA_HINT}") from exc
    return aead.ChaCha20Poly1305 if cipher == "chacha20-poly1305" else aead.AESGCM


def _as_source(encryption_key: Any) -> KeySource:
    """``encryption_key`` as a callable key source, validated; nothing about the key leaks
    into an error."""
    if isinstance(encryption_key, (bytes, bytearray, memoryview)):
        return KeyRing([_key_bytes(encryption_key, "encryption_key")])
    if isinstance(encryption_key, (str, os.PathLike)):
        return KeyRing([read_key_file(encryption_key)])
    if callable(encryption_key):
        return encryption_key  # type: ignore[no-any-return]
    raise TypeError(
        f"encryption_key must be {KEY_BYTES} bytes, a key file's path or a callable returning keys by key id,"
        f" got {type(encryption_key).__name__}; {KEY_FORMS}"
    )


class Sealer:
    """Seals and opens payload texts for one queue: ``encryption_key`` and the cipher for new items.

    :param encryption_key: 32 bytes, a key file's path, or a callable: ``f(None)`` returns
        the ``(key_id, key)`` to seal new items with, ``f(key_id)`` that key's 32 bytes or
        None when it does not have it.
    :param cipher: ``"chacha20-poly1305"`` or ``"aes-256-gcm"``, for new items; stored
        items name their own.
    """

    def __init__(self, encryption_key: Any, cipher: str) -> None:
        self._source = _as_source(encryption_key)
        self.cipher = cipher
        self._letter = _LETTER[cipher]
        _aead_class(cipher)  # the ImportError comes now, before anything is opened
        self._keys: Dict[str, bytes] = {}
        self._aeads: Dict[Tuple[bytes, str], Any] = {}
        self.key_id = ""
        self._header = ""
        self.refresh()

    def __repr__(self) -> str:
        return f"Sealer(cipher={self.cipher!r}, key_id={self.key_id!r})"

    def refresh(self) -> None:
        """Ask the key source again for the newest key (new items and ``rekey`` use it);
        older keys are asked for again when next needed."""
        try:
            current = self._source(None)
        except Exception as exc:  # the user's key source: name it, keep its message out
            raise ValueError(f"encryption_key(None) failed: {type(exc).__name__}") from exc
        if not (isinstance(current, tuple) and len(current) == 2):
            raise TypeError(
                f"encryption_key(None) must return the newest (key_id, key) pair, got {type(current).__name__}"
            )
        key_id, key = current
        if not isinstance(key_id, str) or not KEY_ID_PATTERN.fullmatch(key_id):
            raise ValueError(f"encryption_key(None) returned the key id {key_id!r:.60}: use 1-32 of A-Z a-z 0-9 _ . -")
        self._keys = {key_id: _key_bytes(key, f"the key of key id {key_id!r}")}
        self._aeads = {}
        self.key_id = key_id
        self._header = f"{MARK}{_FORMAT}{self._letter}{key_id}:"

    @property
    def header(self) -> str:
        """How every text sealed under the newest key and the configured cipher starts."""
        return self._header

    def is_current(self, text: str) -> bool:
        """Whether ``text`` is sealed under the newest key and the configured cipher."""
        return text.startswith(self._header)

    def _key(self, key_id: str, row_id: int, table: str) -> bytes:
        key = self._keys.get(key_id)
        if key is not None:
            return key
        try:
            found = self._source(key_id)
        except Exception as exc:  # the user's key source
            raise MissingKeyError(
                f"item {row_id} in {table} is sealed under key id {key_id!r}, and the encryption_key"
                f" callable failed for it: {type(exc).__name__}",
                row_id,
                key_id,
            ) from exc
        if found is None:
            raise MissingKeyError(
                f"item {row_id} in {table} is sealed under key id {key_id!r}, which the encryption_key"
                " does not supply; nothing was changed",
                row_id,
                key_id,
            )
        key = _key_bytes(found, f"the key of key id {key_id!r}")
        self._keys[key_id] = key
        return key

    def _aead(self, header: bytes, queue_id: str, row_id: int, table: str) -> Any:
        """The cipher object for items with this header in this queue file (cached)."""
        aead = self._aeads.get((header, queue_id))
        if aead is None:
            head = _HEADER.fullmatch(header.decode("ascii", "replace"))
            if head is None:
                shown = header[:3].decode("ascii", "replace")
                raise DecryptionError(
                    f"item {row_id} in {table} is sealed in an unknown format ({shown!r}); a newer release may"
                    " have written it",
                    row_id,
                    None,
                )
            key = self._key(head.group(2), row_id, table)
            item_key = hmac.new(key, _ITEM_KEY_INFO + queue_id.encode() + b"\x01", hashlib.sha256).digest()
            aead = _aead_class(_CIPHER_OF[head.group(1)])(item_key)
            self._aeads[(header, queue_id)] = aead
        return aead

    def seal_rows(
        self, rows: Sequence[Tuple[str, int, float, int]], first_id: int, queue_id: str
    ) -> List[Tuple[str, int, float, int, int]]:
        """Insert parameters ``(sealed text, priority, created_at, ttl, id)`` for ``rows``,
        which will get the ids ``first_id``, ``first_id + 1``, ..."""
        header = self._header
        prefix = header.encode()
        encrypt = self._aead(prefix, queue_id, first_id, "sync_queue").encrypt
        size = _NONCE_BYTES * len(rows)
        random = os.urandom(size)
        nonces = [random[start : start + _NONCE_BYTES] for start in range(0, size, _NONCE_BYTES)]
        b2a = binascii.b2a_base64
        return [
            (
                header
                + b2a(
                    nonce + encrypt(nonce, text.encode(), prefix + b"%d:%d" % (row_id, priority)), newline=False
                ).decode(),
                priority,
                created_at,
                ttl,
                row_id,
            )
            for row_id, nonce, (text, priority, created_at, ttl) in zip(
                range(first_id, first_id + len(rows)), nonces, rows
            )
        ]

    def reseal(self, text: str, row_id: int, priority: int, queue_id: str, table: str) -> str:
        """``text`` (sealed or plain) sealed under the newest key and the configured cipher."""
        plain = self.open(text, row_id, priority, queue_id, table).decode()
        return self.seal_rows([(plain, priority, 0.0, 0)], row_id, queue_id)[0][0]

    def open(self, text: "str | bytes", row_id: int, priority: int, queue_id: str, table: str) -> bytes:
        """The JSON text of a stored payload, as UTF-8 bytes: opened when sealed, as it is when
        plain. Raises ``MissingKeyError`` or ``DecryptionError`` naming the item and key id."""
        raw = text.encode() if isinstance(text, str) else text
        if raw[:1] != MARK_BYTE:
            return raw
        end = raw.find(b":", 3, 40) + 1
        header = raw[:end] if end else raw[:3]
        aead = self._aead(header, queue_id, row_id, table)
        try:
            box = binascii.a2b_base64(raw[end:])
            return aead.decrypt(box[:_NONCE_BYTES], box[_NONCE_BYTES:], b"%b%d:%d" % (header, row_id, priority))  # type: ignore[no-any-return]
        except Exception:  # InvalidTag, a bad base64 or a short box: all the same to the caller
            raise DecryptionError(
                f"item {row_id} in {table} (key id {header[3:-1].decode()!r}) does not authenticate: its stored"
                " text was changed or moved from another row or queue file, or the key under this id is wrong;"
                " nothing was changed",
                row_id,
                header[3:-1].decode(),
            ) from None

    def seal_note(self, text: str, queue_id: str, what: str) -> str:
        """``text`` (an error text a server may have filled with a payload) sealed under the
        newest key, bound to this queue file and to ``what`` it is (a column's name)."""
        header = self._header
        prefix = header.encode()
        nonce = os.urandom(_NONCE_BYTES)
        box = self._aead(prefix, queue_id, 0, what).encrypt(nonce, text.encode(), prefix + _NOTE + what.encode())
        return header + binascii.b2a_base64(nonce + box, newline=False).decode()

    def open_note(self, text: str, queue_id: str, what: str) -> str:
        """The text ``seal_note`` sealed (a plain text as it is); one that cannot be opened
        (its key is missing, it was changed) reads as a placeholder, never as an error:
        it is a note about an item, not the item."""
        if not text.startswith(MARK):
            return text
        raw = text.encode()
        end = raw.find(b":", 3, 40) + 1
        header = raw[:end] if end else raw[:3]
        try:
            box = binascii.a2b_base64(raw[end:])
            aead = self._aead(header, queue_id, 0, what)
            return aead.decrypt(box[:_NONCE_BYTES], box[_NONCE_BYTES:], header + _NOTE + what.encode()).decode()  # type: ignore[no-any-return]
        except Exception:  # a missing key, InvalidTag, bad base64: the note is unreadable, the item is not
            return SEALED_NOTE

    def open_rows(self, rows: Sequence[_Row], queue_id: str, table: str) -> List[_Row]:
        """Item rows (``_types.Column``) with the text opened; raises on the first item that
        cannot be opened."""
        opened = []
        for row in rows:
            text = row[Column.PAYLOAD]
            if text[:1] == MARK or text[:1] == MARK_BYTE:
                row = (row[Column.ID], self.open(text, row[Column.ID], row[Column.PRIORITY], queue_id, table)) + row[
                    Column.PAYLOAD + 1 :
                ]  # type: ignore[assignment]
            opened.append(row)
        return opened


def any_sealed(rows: Sequence[Tuple[Any, ...]]) -> bool:
    """Whether any row's stored text (second column) is sealed, for a queue without a key.

    Plain texts are JSON objects and start with ``{``; the mark ``~`` sorts after it, so
    the largest text tells: one C-level pass, a few nanoseconds an item.
    """
    if not rows:
        return False
    largest = max(map(operator.itemgetter(Column.PAYLOAD), rows))
    return bool(largest[:1] == MARK or largest[:1] == MARK_BYTE)


def unsealed_ids(rows: Sequence[Tuple[Any, ...]], sealed_from: Optional[int]) -> Set[int]:
    """The ids of ``rows`` (id first, stored text second) that must be sealed and are not:
    in a file whose items are sealed from the id ``sealed_from`` on (None: a file that
    never held a sealed item), a plain text there was written without the key."""
    if sealed_from is None:
        return set()
    return {
        row[Column.ID]
        for row in rows
        if row[Column.ID] >= sealed_from and row[Column.PAYLOAD][:1] not in (MARK, MARK_BYTE)
    }


def refuse_sealed(rows: Sequence[Tuple[Any, ...]], table: str) -> None:
    """Raise ``MissingKeyError`` for the first sealed row, for a queue without a key (after
    its payloads failed to parse); return if none is sealed."""
    for row in rows:
        text = row[Column.PAYLOAD]
        raw = text.encode() if isinstance(text, str) else bytes(text)
        if raw[:1] == MARK_BYTE:
            head = _HEADER.match(raw[:40].decode("ascii", "replace"))
            key_id = head.group(2) if head else None
            raise MissingKeyError(
                f"item {row[Column.ID]} in {table} is sealed under key id {key_id!r}, and this queue has no"
                " encryption_key; nothing was changed",
                row[Column.ID],
                key_id,
            )


def decoded(
    sealer: Optional[Sealer],
    rows: List[_Row],
    queue_id: str,
    table: str,
    decode: Callable[[List[_Row]], _Decoded],
) -> _Decoded:
    """``decode(rows)`` after opening their texts (id, text, priority first). Without a
    sealer the rows go to ``decode`` as they are, and a sealed one among them that fails
    to parse becomes a ``MissingKeyError``: no cost while every text is plain."""
    if sealer is not None:
        return decode(sealer.open_rows(rows, queue_id, table))
    try:
        return decode(rows)
    except ValueError:
        refuse_sealed(rows, table)
        raise


def split_readable(
    sealer: Optional[Sealer], rows: List[_Row], queue_id: str, table: str
) -> Tuple[List[_Row], List[DecryptionError]]:
    """``rows`` with their texts opened, and the errors of those that cannot be opened
    (their rows left out). Without a sealer, plain rows come back as they are."""
    if sealer is None and not any_sealed(rows):
        return rows, []
    readable: List[_Row] = []
    errors: List[DecryptionError] = []
    for row in rows:
        try:
            if sealer is None:
                refuse_sealed([row], table)
                readable.append(row)
            else:
                readable += sealer.open_rows([row], queue_id, table)
        except DecryptionError as exc:
            errors.append(exc)
    return readable, errors
