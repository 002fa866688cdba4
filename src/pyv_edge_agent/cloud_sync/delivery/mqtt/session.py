"""One MQTT connection of ``MQTTUploader`` and the sliding window that sends a batch over it.

paho's client is driven from the calling thread (no network thread of its own): a batch
publishes up to the window, reads PUBACKs, and publishes more as they come back, all of it
(the connection included) before one deadline.

A broker's packets are followed as paho reads them (``PacketGuard``): one over the Maximum
Packet Size this client announces in CONNECT is refused from its fixed header, before paho
reads and decodes it (paho decodes a 1 MiB CONNACK's properties for about a minute, in one
uninterruptible call).
"""

import os
import select
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Deque, Dict, List, Optional, Tuple

# PUBACK and CONNACK reason codes (MQTT 5; paho maps 3.1.1 CONNACK codes onto them). A
# message too large is refused with DISCONNECT 0x95, never in a PUBACK, which has no such code.
NOT_AUTHORIZED = frozenset({0x86, 0x87, 0x8A, 0x8C})  # bad password, not authorized, banned, bad auth
REJECTED = frozenset({0x90, 0x99})  # topic name invalid, payload format invalid
# Refusals that concern one message only: the batch goes on without it.
_PER_MESSAGE = REJECTED
# The largest packet this client takes from a broker, announced in CONNECT (MQTT 5). A
# publisher gets only CONNACK, PUBACK, PINGRESP and DISCONNECT: a few bytes, or a few
# hundred with a reason string.
INCOMING_PACKET_LIMIT = 16384


def _halts(reason: int) -> bool:
    return reason >= 0x80 and reason not in _PER_MESSAGE


_QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux
_CORK = getattr(socket, "TCP_CORK", None)  # Linux

# (index in the batch, topic, payload, MQTT 5 properties or None)
Message = Tuple[int, str, bytes, Any]


class PacketTooLargeError(ConnectionAbortedError):
    """A broker's packet is over the size this client announced; the connection is dropped."""


class PacketGuard:
    """Follows the packets of a broker through the bytes paho reads (their fixed headers,
    skipping their bodies) and refuses one larger than ``limit`` before paho reads it whole."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.refused = ""
        self._skip = 0
        self._header = bytearray()

    def feed(self, data: bytes) -> None:
        """Follow ``data``, the next bytes read; raise ``PacketTooLargeError`` at a header
        announcing a packet over the limit."""
        skip, end = self._skip, len(data)
        if skip >= end:  # within a body already announced: paho reads a body in one call
            self._skip = skip - end
            return
        self._skip = 0
        at = skip
        header = self._header
        while at < end:
            byte = data[at]
            at += 1
            header.append(byte)
            if len(header) == 1:
                continue  # the packet type
            if byte & 128:  # the remaining length goes on, in at most four bytes
                if len(header) > 4:
                    self.refused = "the broker sent a malformed packet length"
                    raise PacketTooLargeError(self.refused)
                continue
            length = sum((each & 127) << (7 * i) for i, each in enumerate(header[1:]))
            if length + len(header) > self.limit:
                self.refused = (
                    f"the broker sent a packet of {length + len(header)} bytes (type {header[0] >> 4}),"
                    f" over the Maximum Packet Size of {self.limit} this client announced"
                )
                raise PacketTooLargeError(self.refused)
            header.clear()
            step = min(length, end - at)
            at += step
            self._skip = length - step


_GUARDED: Dict[Any, Any] = {}


def guarded_client_class(client_class: Any) -> Any:
    """paho's ``Client`` class, extended so that every read from the broker passes through
    the client's ``packet_guard``."""
    guarded = _GUARDED.get(client_class)
    if guarded is None:

        class GuardedClient(client_class):  # type: ignore[misc]
            """paho's client; the bytes it reads are followed by its ``packet_guard``."""

            packet_guard: PacketGuard

            # paho's one read from its socket, TCP or TLS alike (its OSError is a lost link).
            def _sock_recv(self, bufsize: int) -> bytes:
                data: bytes = super()._sock_recv(bufsize)
                self.packet_guard.feed(data)
                return data

        guarded = _GUARDED[client_class] = GuardedClient
    return guarded


class Session:
    """A paho client, what its CONNACK said, and the PUBACKs not yet read."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.guard = PacketGuard(INCOMING_PACKET_LIMIT)
        client.packet_guard = self.guard
        self.pid = os.getpid()
        self.connack: Optional[int] = None
        self.receive_maximum: Optional[int] = None
        self.maximum_packet_size: Optional[int] = None
        self.acks: List[Tuple[int, int]] = []
        self.used_at = time.monotonic()
        # The batches being delivered (see ``deliver``), under ``changed``: which one owns
        # each unanswered message, how many are unanswered, and whether a thread drives paho.
        self.changed = threading.Condition(threading.Lock())
        self.batches: List[_Batch] = []
        self.routes: Dict[int, _Batch] = {}
        self.in_flight = 0
        self.driving = False
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

    def cork(self, on: bool) -> bool:
        """Hold the messages about to be published in the socket (``TCP_CORK``), or send
        what it holds; True when corked.

        Each publish is its own write: on loopback or a LAN the kernel would send each as a
        segment of its own, and the broker would be woken for each. Corked while the window
        is refilled, the messages go out together when it is full.
        """
        sock = self.client.socket()
        if _CORK is None or sock is None:
            return False
        try:
            sock.setsockopt(socket.IPPROTO_TCP, _CORK, 1 if on else 0)
        except (OSError, ValueError):
            return False
        return on

    def usable(self, keepalive: float) -> bool:
        """Whether the connection still works and was used within ``keepalive`` seconds (a
        broker or NAT may have dropped it silently); one that batches are being delivered
        over is in use, and is left alone."""
        with self.changed:
            if self.batches or self.driving:
                return True
            idle = time.monotonic() - self.used_at
            return idle < keepalive and self.pump(0.0) and bool(self.client.is_connected())

    def close(self) -> None:
        """Close the socket, with a DISCONNECT first when the link still works; once the
        thread driving paho for the batches in flight has let go (see ``deliver``)."""
        with self.changed:
            while self.driving:
                self.changed.wait(0.1)
            self._close()

    def _close(self) -> None:
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


@dataclass
class _Batch:
    """One batch being delivered over a session: its messages not yet published, those
    published and unanswered (by message id), what became of it, and its deadline."""

    messages: Deque[Message]
    deadline: float
    late: str
    done: Delivery = field(default_factory=Delivery)
    inflight: Dict[int, int] = field(default_factory=dict)
    halted: bool = False
    finished: bool = False

    def open(self) -> bool:
        """Whether it may publish more."""
        return bool(self.messages) and not self.halted and not self.done.lost


def deliver(
    session: Session, messages: Deque[Message], window: int, qos: int, deadline: float, timeout: float
) -> Delivery:
    """Publish ``messages`` in order with at most ``window`` unanswered; stop publishing at
    the first refusal that is not about one message alone (credentials, quota...), and stop
    when the link breaks or the batch's ``deadline`` (``time.monotonic()``; ``timeout``
    seconds after the batch began) passes, however steadily PUBACKs trickle in.

    The broker is read only when the window is full or nothing is left to publish, as a
    plain publish loop does: a look before each publish costs a system call per message. A
    refusal followed by a close (Mosquitto's answer to an ACL denial) can then be lost when
    a later write meets the closed socket; ``MQTTUploader`` sends the first unanswered
    message again, alone, to get its answer.

    Batches delivered over one session from several threads at once (a flush with several
    batches in flight) share its window: the next batch publishes while the PUBACKs of the
    one before come in. One thread at a time drives paho for all of them (paho's calls are
    not safe from two threads at once); the others wait for their batch to be finished.
    """
    batch = _Batch(messages, deadline, f"the batch did not finish within the timeout of {timeout:g} s")
    with session.changed:
        session.batches.append(batch)
        while not batch.finished:
            if session.driving:
                session.changed.wait(min(1.0, max(0.001, deadline - time.monotonic())))
                continue
            session.driving = True
            try:
                _drive(session, batch, window, qos)
            finally:
                session.driving = False
                session.changed.notify_all()
        session.used_at = time.monotonic()
        done = batch.done
        done.in_flight = sorted(batch.inflight.values())
        done.unsent = [message[0] for message in batch.messages]
    return done


def _drive(session: Session, mine: _Batch, window: int, qos: int) -> None:
    """Publish and read for every batch of ``session`` until ``mine`` is finished; called
    with the session's lock held, released only while waiting for the broker."""
    publish = session.client.publish
    while True:
        _finish(session)
        if mine.finished:
            return
        corked = False
        for batch in session.batches:
            while batch.open() and session.in_flight < window:
                if not corked and window - session.in_flight > 1 and len(batch.messages) > 1:
                    corked = session.cork(True)  # only worth its two system calls for several
                index, topic, payload, properties = batch.messages[0]
                try:
                    info = publish(topic, payload, qos=qos, properties=properties)
                except (OSError, ValueError) as exc:
                    batch.done.lost = f"{type(exc).__name__}: {exc}"
                    break
                if info.rc != 0:
                    batch.done.lost = f"the connection was lost (paho error {info.rc})"
                    break
                batch.messages.popleft()
                batch.inflight[info.mid] = index
                session.routes[info.mid] = batch
                session.in_flight += 1
        if corked:
            session.cork(False)
        _finish(session)
        if mine.finished:
            return
        soonest = min(batch.deadline for batch in session.batches)
        left = soonest - time.monotonic()
        if left > 0:
            session.changed.release()  # other batches may join meanwhile
            try:
                _read(session, min(1.0, left))
            finally:
                session.changed.acquire()


def _read(session: Session, timeout: float) -> None:
    """Pump the session and hand each PUBACK to its batch; a lost link ends every batch."""
    if not session.pump(timeout):
        reason = session.guard.refused or "the broker closed the connection"
        for batch in session.batches:
            batch.done.lost = batch.done.lost or reason
    for mid, reason_code in session.acks:
        owner = session.routes.pop(mid, None)
        if owner is None:
            continue
        session.in_flight -= 1
        if owner.finished:
            continue  # it ended without this answer (late, or its link lost): it keeps the message
        index = owner.inflight.pop(mid, -1)
        if index >= 0:
            owner.done.reasons[index] = reason_code
            owner.halted = owner.halted or _halts(reason_code)
    session.acks.clear()


def _finish(session: Session) -> None:
    """Mark the batches that are done (all answered, halted and answered, lost, or late)
    and take them off the session; wake the threads waiting for them."""
    now = time.monotonic()
    kept = []
    for batch in session.batches:
        if not batch.done.lost and (batch.open() or batch.inflight) and now >= batch.deadline:
            batch.done.lost = batch.late  # the rest stay unsent
        if batch.done.lost or (not batch.inflight and not batch.open()):
            batch.finished = True
            session.changed.notify_all()
        else:
            kept.append(batch)
    session.batches = kept
