"""One MQTT connection of ``MQTTUploader`` and the sliding window that sends a batch over it.

paho's client is driven from the calling thread (no network thread of its own): a batch
publishes up to the window, reads PUBACKs, and publishes more as they come back.
"""

import os
import select
import socket
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

# PUBACK and CONNACK reason codes (MQTT 5; paho maps 3.1.1 CONNACK codes onto them).
NOT_AUTHORIZED = frozenset({0x86, 0x87, 0x8A, 0x8C})  # bad password, not authorized, banned, bad auth
PACKET_TOO_LARGE = 0x95
REJECTED = frozenset({0x90, 0x99})  # topic name invalid, payload format invalid
# Refusals that concern one message only: the batch goes on without it.
_PER_MESSAGE = REJECTED | {PACKET_TOO_LARGE}


def _halts(reason: int) -> bool:
    return reason >= 0x80 and reason not in _PER_MESSAGE


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux

# (index in the batch, topic, payload, MQTT 5 properties or None)
Message = Tuple[int, str, bytes, Any]


class Session:
    """A paho client, what its CONNACK said, and the PUBACKs not yet read."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.pid = os.getpid()
        self.connack: Optional[int] = None
        self.receive_maximum: Optional[int] = None
        self.maximum_packet_size: Optional[int] = None
        self.acks: List[Tuple[int, int]] = []
        self.used_at = time.monotonic()
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack = int(reason.value)
        self.receive_maximum = getattr(properties, "ReceiveMaximum", None)
        self.maximum_packet_size = getattr(properties, "MaximumPacketSize", None)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        self.acks.append((mid, int(reason.value)))

    def pump(self, timeout: float) -> bool:
        """Read what has arrived, write what is due, waiting up to ``timeout`` seconds for
        either; False once the link is lost.

        paho's external-loop calls, not ``loop()``: that one opens a socket pair to wake a
        network thread, and every publish then writes a byte to it, a system call as costly
        as the publish's own, for a thread this client does not have.

        Called with no wait before each publish: a broker that refuses a message and then
        closes the connection (Mosquitto does, for an ACL denial) has its PUBACK read
        before a write to the closed socket makes paho drop what was still unread.
        """
        client = self.client
        sock = client.socket()
        if sock is None:
            return False
        try:
            if timeout and _QUICKACK is not None:
                # A PUBACK the broker holds back (Nagle) until this side ACKs the last one,
                # while this side delays that ACK: 40 ms lost at the end of every batch.
                sock.setsockopt(socket.IPPROTO_TCP, _QUICKACK, 1)
            pending = getattr(sock, "pending", None)
            if pending is not None and pending():
                readable = True  # TLS records already decrypted: select would not see them
            else:
                wanted = [sock] if client.want_write() else []
                readable = bool(select.select([sock], wanted, [], timeout)[0])
            if readable and client.loop_read() != 0:
                return False
            if client.want_write() and client.loop_write() != 0:
                return False
            return bool(timeout == 0.0 or client.loop_misc() == 0)  # keep-alive: only when waiting
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        """Close the socket, with a DISCONNECT first when the link still works."""
        try:
            if self.client.is_connected():
                self.client.disconnect()
        except (OSError, ValueError):
            pass
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@dataclass
class Delivery:
    """What became of a batch's messages: ``reasons`` by index for those answered (a QoS 0
    message counts as answered, 0, once written), ``unsent`` those never published, and
    ``lost`` why the link broke with messages in flight ("" if it did not)."""

    reasons: Dict[int, int] = field(default_factory=dict)
    in_flight: List[int] = field(default_factory=list)
    unsent: List[int] = field(default_factory=list)
    lost: str = ""

    @property
    def halted(self) -> bool:
        """Whether a refusal stopped the batch (credentials, quota...), not one message alone."""
        return any(_halts(reason) for reason in self.reasons.values())


def merged(*parts: Delivery) -> Delivery:
    """One delivery of several attempts at consecutive parts of a batch."""
    whole = Delivery()
    for part in parts:
        whole.reasons.update(part.reasons)
        whole.in_flight += part.in_flight
        whole.unsent += part.unsent
        whole.lost = whole.lost or part.lost
    return whole


def deliver(session: Session, messages: Deque[Message], window: int, qos: int, timeout: float) -> Delivery:
    """Publish ``messages`` in order with at most ``window`` unanswered; stop publishing at
    the first refusal that is not about one message alone (credentials, quota...), and stop
    waiting when the link breaks or no answer came for ``timeout`` seconds."""
    client = session.client
    done = Delivery()
    inflight: Dict[int, int] = {}
    halted = False
    deadline = time.monotonic() + timeout

    def settle() -> None:
        nonlocal halted, deadline
        for mid, reason in session.acks:
            index = inflight.pop(mid, -1)
            if index >= 0:
                done.reasons[index] = reason
                halted = halted or _halts(reason)
        session.acks.clear()
        deadline = time.monotonic() + timeout

    def wait() -> None:
        """Block until an answer comes (or the link breaks, or ``timeout`` passes)."""
        if not session.pump(min(1.0, timeout)):
            done.lost = "the broker closed the connection"
        if session.acks:
            settle()
        elif not done.lost and time.monotonic() > deadline:
            done.lost = f"no PUBACK within {timeout:g} s"

    while messages and not halted and not done.lost:
        if inflight:
            if not session.pump(0.0):
                done.lost = "the broker closed the connection"
            if session.acks:
                settle()
            while len(inflight) >= window and not done.lost:
                wait()
            if halted or done.lost:
                break
        index, topic, payload, properties = messages[0]
        try:
            info = client.publish(topic, payload, qos=qos, properties=properties)
        except (OSError, ValueError) as exc:
            done.lost = f"{type(exc).__name__}: {exc}"
            break
        if info.rc != 0:
            done.lost = f"the connection was lost (paho error {info.rc})"
            break
        messages.popleft()
        inflight[info.mid] = index
    while inflight and not done.lost:
        wait()
    session.used_at = time.monotonic()
    done.in_flight = sorted(inflight.values())
    done.unsent = [message[0] for message in messages]
    return done
