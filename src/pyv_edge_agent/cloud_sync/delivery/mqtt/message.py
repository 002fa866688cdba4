"""What goes into each MQTT message besides the payload: its topic, its MQTT 5 properties,
and the size of the packet that carries it.

A topic template may hold ``{priority}`` (the lower-case priority name) and ``{field}``
placeholders filled from the payload's top-level fields. Payloads are parsed only when a
template names one of their fields.
"""

import math
import re
import string
import struct
from typing import Dict, List, Optional, Tuple

import orjson

from ..._types import Priority
from ..._upload_types import OutgoingItem

_FIELD_NAME = re.compile(r"[A-Za-z0-9_\-]+")
# A value that would add a topic level or a wildcard cannot fill a placeholder.
_NOT_IN_LEVEL = ("/", "+", "#", "\x00")
MAX_TOPIC_BYTES = 65535


class TopicTemplate:
    """A checked topic template; ``render`` gives one item's topic, or why it has none."""

    def __init__(self, template: str) -> None:
        if not isinstance(template, str) or not template:
            raise ValueError(f"topic must be a non-empty str, got {template!r:.100}")
        parts: List[Tuple[str, Optional[str]]] = []
        try:
            parsed = list(string.Formatter().parse(template))
        except ValueError:
            raise ValueError(f"topic has an unbalanced brace: {template!r:.200}") from None
        for literal, field, spec, conversion in parsed:
            if any(mark in literal for mark in ("+", "#", "\x00")):
                raise ValueError(f"topic must not hold a wildcard (+ or #) or NUL, got {template!r:.200}")
            parts.append((literal, None))
            if field is None:
                continue
            if spec or conversion or not _FIELD_NAME.fullmatch(field):
                raise ValueError(
                    f"topic placeholders must be plain names such as {{device}} or {{priority}}, got {{{field}}} "
                    f"in {template!r:.200}"
                )
            parts.append(("", field))
        self.template = template
        self._parts = parts
        self._fields = sorted({field for _, field in parts if field is not None and field != "priority"})
        # Without payload fields a topic depends on the priority alone: four strings, made once.
        self._by_priority: Dict[Priority, str] = {}
        if not self._fields:
            self._by_priority = {p: self._fill({"priority": p.name.lower()}) for p in Priority}
            for topic in self._by_priority.values():
                _check_length(topic)
        else:
            _check_length(self._fill({name: "" for name in self._fields + ["priority"]}))

    def _fill(self, values: Dict[str, str]) -> str:
        return "".join(literal if field is None else values[field] for literal, field in self._parts)

    def render(self, item: OutgoingItem) -> Tuple[str, str]:
        """Return ``(topic, "")``, or ``("", why)`` when the item cannot fill the template."""
        if not self._fields:
            return self._by_priority[item.priority], ""
        try:
            payload = orjson.loads(item.text)
        except orjson.JSONDecodeError:
            return "", "its stored payload is not valid JSON"
        values = {"priority": item.priority.name.lower()}
        for name in self._fields:
            value = payload.get(name) if isinstance(payload, dict) else None
            if value is None:
                return "", f"its payload has no field {name!r} for the topic {self.template!r}"
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                return "", f"its field {name!r} is a {type(value).__name__}, not a str or int, for the topic"
            text = str(value)
            if not text or any(mark in text for mark in _NOT_IN_LEVEL):
                return "", f"its field {name!r} = {text!r:.60} cannot be a topic level (empty, or holds / + # NUL)"
            values[name] = text
        topic = self._fill(values)
        if len(topic.encode()) > MAX_TOPIC_BYTES:
            return "", f"its topic is longer than {MAX_TOPIC_BYTES} bytes"
        return topic, ""


def _check_length(topic: str) -> None:
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        raise ValueError(f"topic must be at most {MAX_TOPIC_BYTES} bytes in UTF-8, got {len(topic.encode())}")


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value % 128, value // 128
        out.append(byte | (128 if value else 0))
        if not value:
            return bytes(out)


IDEMPOTENCY_PROPERTY = "idempotency-key"
_USER_PROPERTY = b"\x26" + struct.pack("!H", len(IDEMPOTENCY_PROPERTY)) + IDEMPOTENCY_PROPERTY.encode()
_MESSAGE_EXPIRY = b"\x02"
_MAX_EXPIRY = 2**32 - 1
_U16 = struct.Struct("!H").pack
_U32 = struct.Struct("!I").pack


class PackedProperties:
    """An item's MQTT 5 PUBLISH properties, encoded once: a Message Expiry Interval (its
    remaining TTL, when finite) and the user property ``idempotency-key``.

    paho asks what it is given for ``pack()`` alone; its own ``Properties`` class costs
    tens of microseconds per message to build and encode, the most of any step of a publish.
    """

    __slots__ = ("_packed",)

    def __init__(self, key: str, ttl_left: float) -> None:
        encoded_key = key.encode()
        body = _USER_PROPERTY + _U16(len(encoded_key)) + encoded_key
        if math.isfinite(ttl_left):
            body = _MESSAGE_EXPIRY + _U32(min(_MAX_EXPIRY, max(1, math.ceil(ttl_left)))) + body
        self._packed = _varint(len(body)) + body

    def pack(self) -> bytes:
        """The properties as they go on the wire, length first."""
        return self._packed

    def __len__(self) -> int:
        return len(self._packed)


def _varint_size(value: int) -> int:
    return 1 if value < 128 else 2 if value < 16384 else 3 if value < 2097152 else 4


def publish_packet_size(topic_bytes: int, payload_bytes: int, qos: int, properties_bytes: Optional[int]) -> int:
    """The size of a PUBLISH packet on the wire, fixed header included, as a broker's
    Maximum Packet Size counts it; ``properties_bytes`` (length prefix included) is None
    for MQTT 3.1.1."""
    remaining = 2 + topic_bytes + (2 if qos else 0) + payload_bytes + (properties_bytes or 0)
    return 1 + _varint_size(remaining) + remaining
